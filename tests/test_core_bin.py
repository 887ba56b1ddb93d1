"""Bin-typed strings, as Fluentd sends them (ltsv / none parsers, yajl): text before any decision.

The records are the real ones from Fluentd 1.16 captures (tests/fixtures/wire), decoded by
the project's codec, which keeps msgpack bin as bytes.
"""

import json

import msgpack
import pytest

from atnorm.forward.codec import FrameReader, pack_entries, packb, parse_frame, unpack_entries
from atnorm.relay.routing import Router
from support import FIXTURES

WIRE = FIXTURES / "wire"


def capture_entries(name):
    reader = FrameReader(max_frame_size=1 << 24)
    reader.feed((WIRE / f"{name}.c2s.bin").read_bytes())
    frames = list(reader)
    assert len(frames) == 1
    return parse_frame(frames[0], max_decompressed_size=1 << 24).entries


def holds_bytes(value):
    if isinstance(value, bytes):
        return True
    if isinstance(value, dict):
        return any(holds_bytes(k) or holds_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_bytes(v) for v in value)
    return False


def test_captures_really_carry_bin():
    for name in ("fd-ltsv-ack", "fd-yajl-ack"):
        assert all(all(type(k) is bytes for k in e.record) for e in capture_entries(name))
    assert all(type(e.record["message"]) is bytes for e in capture_entries("fd-none-ack"))


def test_yajl_bin_records_get_the_verdicts_of_the_same_events_as_text(fresh_filter, shared_filter):
    none_records = [e.record for e in capture_entries("fd-none-ack")]
    as_text = [json.loads(r["message"]) for r in none_records]
    expected = [shared_filter.process(r).outcome for r in as_text]
    assert set(expected) == {"accepted", "rejected", "passed"}
    yajl = [fresh_filter.process(e.record) for e in capture_entries("fd-yajl-ack")]
    assert [v.outcome for v in yajl] == expected
    for verdict, text_record in zip(yajl, as_text):
        same = shared_filter.process(text_record)
        assert verdict.reasons == same.reasons and verdict.warnings == same.warnings
        assert not holds_bytes(verdict.output())


def test_none_parser_bin_message_is_unwrapped_not_passed_unchecked(shared_filter):
    records = [e.record for e in capture_entries("fd-none-ack")]
    verdicts = [shared_filter.process(r) for r in records]
    expected = [shared_filter.process(json.loads(r["message"])).outcome for r in records]
    assert [v.outcome for v in verdicts] == expected
    assert expected.count("passed") == 1  # only {"msg": "hello"}
    accepted = [v for v in verdicts if v.outcome == "accepted"]
    assert accepted and all("unwrap:message" in v.fixes for v in accepted)
    passed = [v for v in verdicts if v.outcome == "passed"]
    assert passed[0].record == {"message": '{"msg":"hello"}'}


def test_ltsv_bin_flat_records_are_unflattened_and_decided(shared_filter):
    verdicts = [shared_filter.process(e.record) for e in capture_entries("fd-ltsv-ack")]
    assert "accepted" in [v.outcome for v in verdicts]
    accepted = next(v for v in verdicts if v.outcome == "accepted")
    assert "unflatten" in accepted.fixes and isinstance(accepted.record["initiator"], dict)
    for verdict in verdicts:
        assert not holds_bytes(verdict.output())


def test_routed_chunk_goes_downstream_as_well_formed_str(shared_filter):
    entries = capture_entries("fd-yajl-ack") + capture_entries("fd-ltsv-ack") + capture_entries("fd-none-ack")
    router = Router(shared_filter.process)
    batches = router.route("audit.at", entries)
    assert sum(len(b.entries) for b in batches) == len(entries)
    for batch in batches:
        # A strict decoder: any bin or non-UTF-8 str would show up as bytes or fail here.
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, unicode_errors="strict")
        unpacker.feed(pack_entries(batch.entries))
        for _time, record in unpacker:
            assert not holds_bytes(record)



@pytest.mark.parametrize("changes, pointer", [
    ({b"message": b"caf\xc3"}, "/message"),
    ({b"initiator": {b"id": b"IBMid-1", b"name": b"\xff\xfe"}}, "/initiator/name"),
    ({b"na\xffme": b"x"}, "/na\\xffme"),
])
def test_bin_that_is_not_utf8_is_a_rejection_pointing_at_the_field(fresh_filter, changes, pointer):
    record = dict(capture_entries("fd-yajl-ack")[0].record)
    record.update(changes)
    record = unpack_entries(packb([0, record]))[0][0].record  # through real msgpack, as received
    verdict = fresh_filter.process(record)
    assert verdict.outcome == "rejected"
    assert [(r.path, r.rule) for r in verdict.reasons] == [(pointer, "record.encoding")]
    assert "invalid UTF-8" in verdict.reasons[0].message
    assert fresh_filter.stats.rejections[("record.encoding", "")] == 1
    msgpack.packb(verdict.output(), use_bin_type=True)
    json.dumps(verdict.output(), allow_nan=False).encode("utf-8")
    assert not holds_bytes(verdict.output())


def test_records_without_bin_are_not_copied(shared_filter):
    record = {"msg": "hello", "nested": {"list": [1, "two"]}}
    assert shared_filter.process(record).record is record
