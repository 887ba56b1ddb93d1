"""Realistic generated events, valid and mutated, for the benchmark and the differential test.

Valid events use every action the loaded schemas declare and the drift real events show
(eventTime forms, string reason codes, stray spaces); mutated events break one thing each.
Deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..core.rules import RuleSet

REGIONS = ["us-south", "us-east", "ca-tor", "br-sao", "jp-tok", "au-syd", "jp-osa", "eu-de", "eu-gb", "eu-es"]
TIME_FORMS = [
    "{d}T{t}.{f2}+0000", "{d}T{t}.{f3}Z", "{d}T{t}Z", "{d}T{t}+00:00", "{d}T{t}.{f2}-06:00", "{d}T{t}.{f3}+0000",
]


def _account(rng: random.Random) -> str:
    return "".join(rng.choice("0123456789abcdef") for _ in range(32))


ACCOUNTS = [_account(random.Random(n)) for n in range(5)]


def _fingerprint(rng: random.Random) -> str:
    return ":".join(f"{rng.randrange(256):02X}" for _ in range(20))


def _event_time(rng: random.Random) -> str:
    form = rng.choice(TIME_FORMS)
    return form.format(
        d=f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        t=f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
        f2=f"{rng.randrange(100):02d}", f3=f"{rng.randrange(1000):03d}",
    )


def valid_event(rng: random.Random, action: str, service: str, regions: Optional[List[str]]) -> Dict[str, Any]:
    """One event that the filter accepts for `action` (given the allowed `regions`)."""
    # A realistic stream comes from a few instances of each service, in a few accounts.
    region = rng.choice(regions) if regions else rng.choice(REGIONS)
    account = ACCOUNTS[rng.randrange(len(ACCOUNTS))]
    object_type = action.split(".")[-2]
    crn = f"crn:v1:bluemix:public:{service}:{region}:a/{account}:{rng.randrange(8):08d}::"
    kmip = ".kmip-" in action
    initiator: Dict[str, Any] = {
        "id": f"CertificateID-{_fingerprint(rng)}" if kmip else f"IBMid-{rng.randrange(10**9):09d}",
        "name": "vcenter" if kmip else f"user{rng.randrange(1000)}@example.com",
        "typeURI": "service/security/client/certificateid" if kmip else "service/security/account/user",
        "credential": {"type": "certificate" if kmip else rng.choice(["token", "apikey", "user"])},
    }
    if not kmip:
        initiator["host"] = {"address": f"192.0.2.{rng.randrange(1, 255)}", "addressType": "IPv4",
                             "agent": "ibmcloud-cli/2.20"}
    outcome = rng.choice(["success", "success", "success", "failure", "pending"])
    event: Dict[str, Any] = {
        "eventTime": _event_time(rng),
        "action": action,
        "outcome": outcome,
        "severity": rng.choice(["normal", "normal", "warning", "critical"]),
        "message": f"{service}: {action.split('.')[-1]} {object_type}" + (" -failure" if outcome == "failure" else ""),
        "logSourceCRN": crn,
        "saveServiceCopy": True,
        "dataEvent": False,
        "initiator": initiator,
        "target": {"id": crn[:-1] + f"{object_type}:{rng.randrange(10**6)}", "name": f"{object_type}-{rng.randrange(100)}",
                   "typeURI": f"{service}/{object_type}"},
        "reason": {"reasonCode": rng.choice([200, 201, 204, 400, 403]), "reasonType": "OK"},
        "observer": {"name": "ActivityTracker"},
        "requestData": {"requestId": f"{rng.randrange(10**12):012d}"},
        "responseData": {},
        "correlationId": f"{rng.randrange(10**12):012d}",
    }
    # Drift the normalizer repairs: still a valid event.
    drift = rng.random()
    if drift < 0.1:
        event["reason"]["reasonCode"] = str(event["reason"]["reasonCode"])
    elif drift < 0.2:
        event["outcome"] = event["outcome"].capitalize()
    elif drift < 0.25:
        event["requestData"] = json.dumps(event["requestData"])
    elif drift < 0.3 and "host" in initiator:
        initiator["host"]["address"] = " " + initiator["host"]["address"]
    return event


def _drop(path: Tuple[str, ...]) -> Callable[[Dict[str, Any], random.Random], None]:
    def mutate(event: Dict[str, Any], rng: random.Random) -> None:
        node = event
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    return mutate


def _set(path: Tuple[str, ...], values: List[Any]) -> Callable[[Dict[str, Any], random.Random], None]:
    def mutate(event: Dict[str, Any], rng: random.Random) -> None:
        node = event
        for part in path[:-1]:
            node = node.setdefault(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[path[-1]] = rng.choice(values)
    return mutate


def _typo_action(event: Dict[str, Any], rng: random.Random) -> None:
    action = event["action"]
    position = rng.randrange(len(action.split(".")[0]) + 1, len(action))
    event["action"] = action[:position] + rng.choice("xqz") + action[position + 1:]


MUTATIONS: List[Tuple[str, Callable[[Dict[str, Any], random.Random], None]]] = [
    ("drop-eventTime", _drop(("eventTime",))),
    ("drop-outcome", _drop(("outcome",))),
    ("drop-initiator-id", _drop(("initiator", "id"))),
    ("drop-target", _drop(("target",))),
    ("bad-outcome", _set(("outcome",), ["done", "", 1, None])),
    ("bad-eventTime", _set(("eventTime",), ["yesterday", "2025-13-01T00:00:00Z", "", "1/2/2025"])),
    ("bad-severity", _set(("severity",), ["high", 3, None])),
    ("bad-reasonCode", _set(("reason", "reasonCode"), ["OK", 200.5, [], True])),
    ("bad-dataEvent", _set(("dataEvent",), ["maybe", 1, {}])),
    ("bad-action-form", _set(("action",), ["create", "a.b", "a..b.c", 42])),
    ("typo-action", _typo_action),
    ("bad-initiator", _set(("initiator",), ["someone", [], None])),
    ("bad-requestData", _set(("requestData",), ["not json", 5, ["x"]])),
    ("kmip-with-address", _set(("initiator", "host", "address"), ["10.0.0.1"])),
    ("kmip-bad-id", _set(("initiator", "id"), ["IBMid-123", "CertificateID-zz"])),
    ("drop-observer", _drop(("observer",))),
    ("region", _set(("logSourceCRN",), ["crn:v1:bluemix:public:x:br-sao:a/1::", "crn:v1:bluemix:public:x:eu-gb-2:a/1::"])),
    ("odd-typeURI", _set(("initiator", "typeURI"), ["User", "/service/security/account/user"])),
]


class EventGenerator:
    """Generates events over every action the rule set declares."""

    def __init__(self, rules: RuleSet, seed: int = 1) -> None:
        self.rng = random.Random(seed)
        self.actions: List[Tuple[str, str, Optional[List[str]]]] = []
        for name, document in sorted(rules.services.items()):
            regions = document.raw.get("x-atnorm", {}).get("regions") or {}
            allowed = sorted(r for r, ok in regions.items() if ok) or None
            self.actions += [(action, name, allowed) for action in sorted(document.actions)]
        if not self.actions:
            raise ValueError("the rule set declares no actions to generate events for")

    def valid(self) -> Dict[str, Any]:
        action, service, regions = self.rng.choice(self.actions)
        return valid_event(self.rng, action, service, regions)

    def mutated(self) -> Tuple[str, Dict[str, Any]]:
        event = self.valid()
        name, mutate = self.rng.choice(MUTATIONS)
        if name.startswith("kmip") and ".kmip-" not in event["action"]:
            event["action"] = next((a for a, _, _ in self.actions if ".kmip-" in a), event["action"])
            event["initiator"]["id"] = f"CertificateID-{_fingerprint(self.rng)}"
        mutate(event, self.rng)
        return name, event

    def mix(self, count: int, invalid_ratio: float = 0.1) -> List[Dict[str, Any]]:
        """`count` events, about `invalid_ratio` of them mutated."""
        return [self.mutated()[1] if self.rng.random() < invalid_ratio else self.valid() for _ in range(count)]

