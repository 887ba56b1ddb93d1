"""Each normalization step, on the drift real events show."""

import random

import pytest

from atnorm.core.normalize import Normalizer, find_event, make_time_formatter, parse_crn, unflatten
from support import crn_parts_as_specified


@pytest.mark.parametrize("given,expected", [
    ("2017-10-19T19:07:50.32+0000", "2017-10-19T19:07:50.320+0000"),
    ("2019-12-20T16:38:06Z", "2019-12-20T16:38:06.000+0000"),
    ("2020-03-08T12:22:01+00:00", "2020-03-08T12:22:01.000+0000"),
    ("2024-01-01T18:30:00.5-06:00", "2024-01-02T00:30:00.500+0000"),
    ("2024-01-01T00:30:00.123456789+0130", "2023-12-31T23:00:00.123+0000"),
    ("2024-01-01 00:00:00", "2024-01-01T00:00:00.000+0000"),
    (1700000000, "2023-11-14T22:13:20.000+0000"),
    (1700000000250, "2023-11-14T22:13:20.250+0000"),
])
def test_event_time_becomes_canonical_utc(given, expected):
    assert make_time_formatter(3)(given) == expected


@pytest.mark.parametrize("given", ["yesterday", "2024-13-01T00:00:00Z", "", None, True, "2024-01-01"])
def test_unreadable_event_time_is_left_for_the_validator(given):
    assert make_time_formatter(3)(given) is None


def test_fraction_digits_are_configurable():
    assert make_time_formatter(0)("2024-01-01T00:00:00.999Z") == "2024-01-01T00:00:00+0000"
    assert make_time_formatter(2)("2024-01-01T00:00:00.999Z") == "2024-01-01T00:00:00.99+0000"
    assert make_time_formatter(6)("2024-01-01T00:00:00.5Z") == "2024-01-01T00:00:00.500000+0000"
    with pytest.raises(ValueError):
        make_time_formatter(10)


def _normalize(event, **options):
    fixes = []
    return Normalizer(**options).normalize(event, fixes), fixes


def test_type_drift_is_coerced():
    work, fixes = _normalize({"reason": {"reasonCode": "404"}, "dataEvent": "false", "saveServiceCopy": "true",
                              "requestData": '{"a": 1}', "responseData": "not json"})
    assert work["reason"]["reasonCode"] == 404
    assert work["dataEvent"] is False and work["saveServiceCopy"] is True
    assert work["requestData"] == {"a": 1}
    assert work["responseData"] == "not json"  # not an object: left for the validator
    assert set(fixes) == {"coerce:/reason/reasonCode", "coerce:/dataEvent", "coerce:/saveServiceCopy",
                          "coerce:/requestData"}


def test_enumerated_values_are_case_folded_and_whitespace_trimmed():
    work, fixes = _normalize({"outcome": "Success", "severity": " WARNING",
                              "initiator": {"host": {"address": " 10.0.0.1"}, "credential": {"type": "ApiKey"}}})
    assert work["outcome"] == "success" and work["severity"] == "warning"
    assert work["initiator"]["host"]["address"] == "10.0.0.1"
    assert work["initiator"]["credential"]["type"] == "apikey"
    assert "casefold:/outcome" in fixes and "trim:/initiator/host/address" in fixes


def test_type_uri_leading_slash_is_removed():
    work, fixes = _normalize({"initiator": {"typeURI": "/service/security/account/user"}, "target": {"typeURI": "x/y"}})
    assert work["initiator"]["typeURI"] == "service/security/account/user"
    assert fixes == ["typeURI:/initiator/typeURI"]


def test_original_nested_objects_are_not_changed():
    event = {"initiator": {"host": {"address": " 1.2.3.4"}}, "reason": {"reasonCode": "200"}}
    _normalize(event)
    assert event == {"initiator": {"host": {"address": " 1.2.3.4"}}, "reason": {"reasonCode": "200"}}


def test_canonical_event_needs_no_fix():
    work, fixes = _normalize({"eventTime": "2024-01-01T00:00:00.000+0000", "outcome": "success"})
    assert fixes == []


def test_unflatten_nests_dotted_keys_and_keeps_clashes():
    assert unflatten({"a": 1}) is None
    assert unflatten({"initiator.id": "x", "initiator.host.address": "y", "action": "a"}) == {
        "initiator": {"id": "x", "host": {"address": "y"}}, "action": "a"}
    assert unflatten({"target": "plain", "target.id": "x"}) == {"target": "plain", "target.id": "x"}
    # Keys that are not text are never dotted, beside dotted ones or not.
    assert unflatten({1: "a", b"x.y": 2, ("a.b",): 3}) is None
    assert unflatten({1: "a", "x.y": 2}) == {1: "a", "x": {"y": 2}}
    assert unflatten({"": 1, "a": 2, ".": 3}) == {"": 1, "a": 2, ".": 3}


def test_find_event_does_not_unwrap_non_events():
    record = {"log": '{"level": "info"}'}
    fixes = []
    assert find_event(record, fixes) is record and fixes == []


@pytest.mark.parametrize("crn,expected", [
    ("crn:v1:bluemix:public:kms:us-south:a/abc:inst:key:k1",
     {"crnServiceName": "kms", "region": "us-south", "account": "abc", "resourceType": "key"}),
    ("v1:bluemix:public:kms:eu-de-2:a/abc:inst::", {"crnServiceName": "kms", "region": "eu-de", "account": "abc"}),
    ("crn:v1::public:is::a/a1234567::snapshot:r1", {"crnServiceName": "is", "account": "a1234567",
                                                    "resourceType": "snapshot"}),
    ("IBMid-123", None),
])
def test_crn_parts(crn, expected):
    assert parse_crn(crn) == expected


def test_cached_crn_parts_equal_a_fresh_parse_whatever_came_before():
    # Resources of one instance share a cache entry: each must still get its own parts.
    segments = ["crn", "v1", "", "bluemix", "public", "kms", "us-south", "us-south-12", "a/", "a/abc", "s/x", "inst",
                "key", "", "k1", "k:2", "CRN", "V1", " crn", "crn "]
    rng = random.Random(5)
    values = [":".join(rng.choice(segments) for _ in range(rng.randint(1, 13))) for _ in range(3000)]
    values += [None, 7, "", ":", ":" * 9, ":" * 12, "crn:v1:a:b:c:d:e:f:g:h", "crn:v1:a:b:c:d:e:f:g:h:i:j",
               "v1:a:b:c:d:e:f:g:h", "v1:a:b:c:d:e:f:g:h:i", "crn:v1:a:b:c:d:e:f:g"]
    # Values that differ in their last segment only, at every length around ten segments.
    for length in range(5, 12):
        head = ":".join(["crn", "v1", "bluemix", "public", "kms", "us-south-1", "a/abc", "inst", "key", "r"][:length])
        values += [f"{head}:{last}" for last in ("", "x", "key", "k:2")]
        values += [f"{head[4:]}:{last}" for last in ("", "x", "key")]
    for value in values + values[::-1]:
        assert parse_crn(value) == crn_parts_as_specified(value), value


def test_derived_fields_never_overwrite_source_fields():
    normalizer = Normalizer()
    work = {"action": "is.snapshot.create", "atnorm": "mine"}
    normalizer.annotate(work, "is", ["x"])
    assert work["atnorm"] == "mine"


def test_derived_fields_can_be_limited():
    normalizer = Normalizer(derived_fields=("verb",), record_fixes=False)
    work = {"action": "is.snapshot.create"}
    normalizer.annotate(work, None, ["eventTime"])
    assert work["atnorm"] == {"verb": "create"}


def test_aliases_rename_before_validation_without_touching_the_original():
    event = {"actor": {"id": "IBMid-1"}, "initiator": {"name": "n"}}
    work, fixes = _normalize(event, aliases={"actor.id": "initiator.id"})
    assert work["initiator"] == {"name": "n", "id": "IBMid-1"}
    assert work["actor"] == {}
    assert event == {"actor": {"id": "IBMid-1"}, "initiator": {"name": "n"}}
    assert fixes == ["alias:/actor/id"]


def test_a_reason_code_padded_with_what_strip_takes_and_int_does_not_is_coerced():
    # str.strip takes the separators \x1c-\x1f, int() refuses them: the code is read stripped.
    for padded in ("\x1c200", "201\x1f", " 404\x1d"):
        work, fixes = _normalize({"reason": {"reasonCode": padded}})
        assert work["reason"]["reasonCode"] == int(padded.strip())
        assert "coerce:/reason/reasonCode" in fixes
