"""The accepted / rejected / passed contract, on events written after real IBM samples."""

import copy

import pytest

from support import load_event

# fixture → (outcome, warnings that must be there)
SAMPLES = {
    # Checked against their own services' tables (issue 10). The 2019 user-management and
    # 2022 Key Protect samples name actions today's pages no longer declare.
    "cos-drifted-types.json": ("accepted", {"envelope.vocabulary:/initiator/typeURI"}),
    "user-mgmt-pending-padded-address.json": ("rejected", {"envelope.expected:/message"}),
    "kms-cadf-zulu-no-source.json": ("rejected", {"envelope.expected:/logSourceCRN"}),
    "platform-log-not-an-event.json": ("passed", set()),
    "power-observer-cloud-logs.json": ("accepted", {"envelope.vocabulary:/observer/name"}),
    "pcloud-legacy-payload.json": ("accepted", {"unknown_service"}),
    "vpc-crn-empty-cname.json": ("accepted", {"unknown_service"}),
    "vmware-kmip-create.json": ("accepted", set()),
    "vsi-provision.json": ("accepted", {"envelope.expected:/logSourceCRN"}),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_real_world_samples_get_the_verdict_the_contract_implies(shared_filter, name):
    record = load_event(name)
    original = copy.deepcopy(record)
    verdict = shared_filter.process(record)
    outcome, warnings = SAMPLES[name]
    assert verdict.outcome == outcome, verdict.reasons
    assert warnings <= set(verdict.warnings)
    assert record == original, "the input record must never be changed"


def test_passed_record_is_the_original_object_unchanged(shared_filter):
    record = load_event("platform-log-not-an-event.json")
    verdict = shared_filter.process(record)
    assert verdict.outcome == "passed" and verdict.record is record


def test_accepted_record_is_canonical_and_carries_fixes_and_derived_fields(shared_filter):
    verdict = shared_filter.process(load_event("cos-drifted-types.json"))
    record = verdict.record
    assert record["eventTime"] == "2024-01-02T03:04:05.000+0000"
    assert record["reason"]["reasonCode"] == 200
    assert record["dataEvent"] is True
    annotation = record["atnorm"]
    assert annotation["service"] == "cloud-object-storage"
    assert annotation["objectType"] == "object" and annotation["verb"] == "create"
    assert annotation["account"] == "0a1b2c3d4e5f"
    assert annotation["resourceType"] == "bucket"
    assert annotation["region"] == "global"
    assert "coerce:/reason/reasonCode" in annotation["fixes"]
    assert verdict.event_time == "2024-01-02T03:04:05.000+0000"


def test_legacy_payload_envelope_is_unwrapped_with_outer_fields(shared_filter):
    verdict = shared_filter.process(load_event("pcloud-legacy-payload.json"))
    assert verdict.outcome == "accepted"
    assert "unwrap:payload" in verdict.fixes
    assert verdict.record["logSourceCRN"].startswith("crn:v1:bluemix:public:power-iaas")
    assert verdict.record["responseData"] == {"tenantID": "acct0001", "enabled": True}


def test_event_inside_a_log_line_string_is_found(shared_filter):
    import json

    event = load_event("vsi-provision.json")
    verdict = shared_filter.process({"log": json.dumps(event), "stream": "stdout"})
    assert verdict.outcome == "accepted" and "unwrap:log" in verdict.fixes


def test_event_under_line_key_is_found(shared_filter):
    event = load_event("vsi-provision.json")
    verdict = shared_filter.process({"Time": 1, "line": event, "Hostname": "h1"})
    assert verdict.outcome == "accepted" and "unwrap:line" in verdict.fixes


def test_flattened_dotted_keys_are_nested(shared_filter):
    event = load_event("vsi-provision.json")
    flat = {k: v for k, v in event.items() if k not in ("initiator", "target")}
    flat.update({"initiator.id": "IBMid-1", "initiator.host.address": "192.0.2.1", "target.id": "vsi-9"})
    verdict = shared_filter.process(flat)
    assert verdict.outcome == "accepted", verdict.reasons
    assert verdict.record["initiator"] == {"id": "IBMid-1", "host": {"address": "192.0.2.1"}}


def test_unknown_action_of_declared_service_is_rejected_with_nearest_action(shared_filter):
    event = load_event("vmware-kmip-create.json")
    event["action"] = "vmware-solutions.kmip-key.craete"
    verdict = shared_filter.process(event)
    assert verdict.outcome == "rejected"
    reason = verdict.reasons[0]
    assert reason.path == "/action" and reason.rule == "vmware-solutions.action"
    assert reason.suggestion == "vmware-solutions.kmip-key.create"
    assert "is not one of" in reason.message
    assert verdict.record["action"] == "vmware-solutions.kmip-key.craete"


def test_missing_required_field_is_rejected_with_pointer_to_it(shared_filter):
    event = load_event("vsi-provision.json")
    del event["outcome"]
    verdict = shared_filter.process(event)
    assert verdict.outcome == "rejected"
    assert [(r.path, r.rule) for r in verdict.reasons] == [("/outcome", "envelope.required")]
    assert verdict.reasons[0].message == "'outcome' is a required property"


def test_rejected_keeps_original_untouched_even_when_fixes_applied(shared_filter):
    event = load_event("cos-drifted-types.json")
    event["severity"] = "extreme"
    verdict = shared_filter.process(event)
    assert verdict.outcome == "rejected"
    assert verdict.record is event and event["reason"]["reasonCode"] == "200"
    dead = verdict.dead_letter()
    assert dead["original"] is event
    assert dead["reasons"][0]["path"] == "/severity"


def test_kmip_event_with_initiator_address_is_rejected(shared_filter):
    event = load_event("vmware-kmip-create.json")
    event["initiator"]["host"] = {"address": "10.0.0.1"}
    verdict = shared_filter.process(event)
    assert verdict.outcome == "rejected"
    assert verdict.reasons[0].rule == "vmware-solutions.kmip-initiator"
    assert verdict.reasons[0].path == "/initiator/host/address"


def test_kmip_event_with_non_certificate_initiator_is_rejected(shared_filter):
    event = load_event("vmware-kmip-create.json")
    event["initiator"]["id"] = "IBMid-123"
    verdict = shared_filter.process(event)
    assert verdict.outcome == "rejected"
    assert verdict.reasons[0].path == "/initiator/id"


def test_non_kmip_vmware_action_may_carry_an_address(shared_filter):
    event = load_event("vmware-kmip-create.json")
    event["action"] = "vmware-solutions.vcs.create"
    event["initiator"] = {"id": "IBMid-1", "name": "n", "typeURI": "service/security/account/user",
                          "credential": {"type": "token"}, "host": {"address": "10.0.0.1"}}
    assert shared_filter.process(event).outcome == "accepted"


def test_event_from_a_region_without_events_is_a_warning_not_a_rejection(shared_filter):
    event = load_event("vmware-kmip-create.json")
    event["logSourceCRN"] = "crn:v1:bluemix:public:vmware-solutions:br-sao:a/acct0003:kmip0001::"
    verdict = shared_filter.process(event)
    assert verdict.outcome == "accepted"
    assert "vmware-solutions.regions" in verdict.warnings


def test_zone_location_counts_as_its_region(shared_filter):
    event = load_event("vmware-kmip-create.json")
    event["logSourceCRN"] = "crn:v1:bluemix:public:vmware-solutions:us-south-2:a/acct0003:kmip0001::"
    assert "vmware-solutions.regions" not in shared_filter.process(event).warnings


@pytest.mark.parametrize("record,rule", [
    ([1, 2], "record.type"),
    ("text", "record.type"),
    (None, "record.type"),
])
def test_non_object_records_are_rejected_with_a_reason(shared_filter, record, rule):
    verdict = shared_filter.process(record)
    assert verdict.outcome == "rejected" and verdict.reasons[0].rule == rule


@pytest.mark.parametrize("line,rule", [
    (b"{not json", "record.json"),
    (b'{"a": "\xff\xfe"}', "record.encoding"),
    (b"[1]", "record.type"),
    (b"{" + b" " * (2 << 20) + b"}", "record.size"),
])
def test_unreadable_lines_are_rejected_with_a_reason(fresh_filter, line, rule):
    verdict = fresh_filter.process_json(line)
    assert verdict.outcome == "rejected"
    assert verdict.reasons[0].rule == rule
    assert fresh_filter.stats.outcomes["rejected"] == 1


def test_counts_reconcile(fresh_filter):
    names = sorted(SAMPLES)
    for name in names:
        fresh_filter.process(load_event(name))
    fresh_filter.process_json(b"garbage")
    stats = fresh_filter.stats
    assert stats.received == len(names) + 1
    assert stats.outcomes["accepted"] + stats.outcomes["rejected"] + stats.outcomes["passed"] == stats.received
    assert stats.outcomes["passed"] == 1 and stats.outcomes["rejected"] == 3
    assert stats.warnings["unknown_service"] == 2  # pcloud (legacy) and is (VPC): no page shipped


def test_one_marker_alone_does_not_make_an_event(shared_filter):
    record = {"action": "login", "user": "bob"}
    assert shared_filter.process(record).outcome == "passed"


def test_two_markers_make_an_event_and_the_missing_one_rejects(shared_filter):
    event = load_event("vsi-provision.json")
    del event["target"]
    verdict = shared_filter.process(event)
    assert verdict.outcome == "rejected"
    assert ("/target", "envelope.required") in [(r.path, r.rule) for r in verdict.reasons]


def test_json_nested_deeper_than_the_parser_goes_is_rejected(fresh_filter):
    verdict = fresh_filter.process_json(b"[" * 100_000 + b"]" * 100_000)
    assert verdict.outcome == "rejected" and verdict.reasons[0].rule == "record.json"
