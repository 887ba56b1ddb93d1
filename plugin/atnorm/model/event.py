"""The Activity Tracker event model as JSON Schema fragments (draft 2020-12).

This is the envelope every event is checked against, whatever its service. It has two
levels, following design/event-model.md: REQUIRED (absence or a wrong type rejects) and
EXPECTED (absence or an undocumented value is only a counted warning). Each level is a
named rule; warning rules are lists of small items, each titled with the JSON pointer it
is about, so a warning's kind is known without re-running the reference validator.
"""

from __future__ import annotations

from typing import Any, Dict, List

# `serviceName.objectType.action`; VPC's serviceName has two parts, so 3 to 5 segments.
ACTION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9][A-Za-z0-9_-]*){2,4}$"

# Canonical eventTime after normalization: UTC, `+0000`, optional fraction.
EVENT_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?\+0000$"

OUTCOMES = ["failure", "pending", "success", "unknown"]
SEVERITIES = ["critical", "normal", "warning"]
INITIATOR_TYPE_URIS = [
    "service/security/account/serviceid",
    "service/security/account/user",
    "service/security/client/certificateid",
    "service/security/clientid",
]
CREDENTIAL_TYPES = [
    "apikey", "apikey-serviceid", "certificate", "compute-resource", "hmac",
    "instance-identity-token", "public-access", "s2s-authorization", "token", "user",
]
ADDRESS_TYPES = ["CSE", "IPv4", "IPv6", "subnet"]
OBSERVER_NAME = "ActivityTracker"

# The fields that make a record an Activity Tracker event at all.
EVENT_MARKERS = ("action", "initiator", "target")

STRING = {"type": "string"}
OBJECT_OR_NULL = {"type": ["object", "null"]}


def _object(properties: Dict[str, Any], required: List[str] = ()) -> Dict[str, Any]:  # type: ignore[assignment]
    schema: Dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def required_rule() -> Dict[str, Any]:
    """REQUIRED: without these an event is rejected."""
    return _object(
        {
            "action": {"type": "string", "pattern": ACTION_PATTERN},
            "initiator": _object({"id": {"type": "string", "minLength": 1}}, ["id"]),
            "target": _object({"id": {"type": "string", "minLength": 1}}, ["id"]),
            "eventTime": {"type": "string", "pattern": EVENT_TIME_PATTERN},
            "outcome": {"enum": OUTCOMES},
        },
        ["action", "initiator", "target", "eventTime", "outcome"],
    )


def types_rule() -> Dict[str, Any]:
    """Documented types of the optional fields, when present (after type-drift coercion)."""
    return _object(
        {
            "id": STRING,
            "correlationId": STRING,
            "message": STRING,
            "logSourceCRN": STRING,
            "severity": {"enum": SEVERITIES},
            "dataEvent": {"type": "boolean"},
            "saveServiceCopy": {"type": "boolean"},
            "observer": _object({"name": STRING}),
            "initiator": _object(
                {
                    "name": STRING,
                    "typeURI": STRING,
                    "authnId": STRING,
                    "authnName": STRING,
                    "credential": _object({"type": STRING}),
                    "host": _object({"address": STRING, "addressType": STRING, "agent": STRING}),
                }
            ),
            "target": _object(
                {"name": STRING, "typeURI": STRING, "resourceGroupId": STRING, "alias": STRING}
            ),
            "reason": _object(
                {"reasonCode": {"type": "integer"}, "reasonType": STRING, "reasonForFailure": STRING}
            ),
            "requestData": OBJECT_OR_NULL,
            "responseData": OBJECT_OR_NULL,
        }
    )


def _presence(pointer: str) -> Dict[str, Any]:
    """An item that holds when the field at `pointer` (e.g. /initiator/name) is present."""
    parts = pointer.strip("/").split("/")
    schema: Dict[str, Any] = {"required": [parts[-1]]}
    for parent in reversed(parts[:-1]):
        schema = {"properties": {parent: schema}, "required": [parent]}
    return {"title": pointer, **schema}


def _value_in(pointer: str, values: Any) -> Dict[str, Any]:
    """An item that holds when the field at `pointer`, if present, is one of `values`."""
    parts = pointer.strip("/").split("/")
    schema: Dict[str, Any] = {"enum": values} if isinstance(values, list) else {"const": values}
    for parent in reversed(parts):
        schema = {"properties": {parent: schema}}
    return {"title": pointer, **schema}


EXPECTED_FIELDS = [
    "/severity", "/message", "/logSourceCRN", "/observer/name", "/reason/reasonCode",
    "/initiator/name", "/initiator/typeURI", "/initiator/credential/type",
    "/target/name", "/target/typeURI",
]


def expected_rule() -> Dict[str, Any]:
    """EXPECTED: fields the model documents; their absence is a counted warning."""
    return {"allOf": [_presence(pointer) for pointer in EXPECTED_FIELDS]}


def vocabulary_rule() -> Dict[str, Any]:
    """Documented values of enumerated fields; anything else is a counted warning."""
    return {
        "allOf": [
            _value_in("/initiator/typeURI", INITIATOR_TYPE_URIS),
            _value_in("/initiator/credential/type", CREDENTIAL_TYPES),
            _value_in("/initiator/host/addressType", ADDRESS_TYPES),
            _value_in("/observer/name", OBSERVER_NAME),
        ]
    }


# rule name → (level, description, builder)
ENVELOPE_RULES = {
    "required": ("enforce", "REQUIRED fields of every event; absence or a wrong form rejects", required_rule),
    "types": ("enforce", "documented types of optional fields, when present", types_rule),
    "expected": ("warn", "EXPECTED fields; absence is a counted warning", expected_rule),
    "vocabulary": ("warn", "documented values of enumerated fields; others are counted warnings", vocabulary_rule),
}
