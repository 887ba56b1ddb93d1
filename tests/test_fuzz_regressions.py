"""Inputs fuzzing found to break a promise, each kept as a test of the mechanism that fixed it.

Every record decided once, counted once, and what leaves writable as it is; an acked
chunk never loses an entry. Replays of the fuzz targets themselves are in test_fuzz_corpus.py.
"""

from __future__ import annotations

import json
import math

import msgpack
import pytest

from atnorm.core.pipeline import EventFilter, FilterSettings
from atnorm.execfilter.readers import JsonLinesInput, MsgpackInput
from atnorm.execfilter.shaping import RecordRouter
from atnorm.forward.codec import EventTime, pack_entries, parse_frame, unpack_entries
from atnorm.relay.routing import Router


def writable(value):
    msgpack.packb(value, use_bin_type=True)
    json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


@pytest.fixture
def small_filter():
    return EventFilter.from_schemas(settings=FilterSettings(max_record_bytes=8192))


# --- forward: entry times the wire cannot carry -----------------------------------------------

@pytest.mark.parametrize("stamp", [2**32, 2**32 + 5, 2**63, 2**64 - 1, float(2**32), 1e300, -1, -1.5])
def test_entry_time_outside_uint32_seconds_is_a_rejection_with_reason_entry_time(stamp):
    chunk = parse_frame(["audit.at", [[stamp, {"a": 1}], [1741064767, {"a": 2}]]], max_decompressed_size=1 << 20)
    first, second = chunk.entries
    assert first.problem is not None and first.problem.rule == "entry.time"
    assert "[0, 2**32)" in first.problem.message
    assert second.problem is None and chunk.invalid == 1


def test_an_entry_at_the_last_uint32_second_is_still_an_event():
    chunk = parse_frame(["audit.at", [[2**32 - 1, {"a": 1}], [float(2**32 - 1), {"a": 2}]]],
                        max_decompressed_size=1 << 20)
    assert [entry.problem for entry in chunk.entries] == [None, None]


def test_a_chunk_with_an_out_of_range_time_routes_every_entry_and_packs(small_filter):
    chunk = parse_frame(["audit.at", [[2**40, {"msg": "late"}], [EventTime(5, 0), {"msg": "ok"}]]],
                        max_decompressed_size=1 << 20)
    batches = Router(small_filter.process).route(chunk.tag, chunk.entries)
    routed = {batch.route: batch.entries for batch in batches}
    assert [e.record["reasons"][0]["rule"] for e in routed["rejected"]] == ["entry.time"]
    assert [e.record["msg"] for e in routed["passed"]] == ["ok"]
    for batch in batches:  # before, packing the rejected batch's time raised in the sender
        assert len(unpack_entries(pack_entries(batch.entries))[0]) == len(batch.entries)
    assert small_filter.stats.received == 2


# --- filter core: what would leave as accepted or passed must be writable as it is ------------

@pytest.mark.parametrize("record, path", [
    ({"a": 2**64}, "/a"),
    ({"a": {"b": [1, -(2**63) - 1]}}, "/a/b/1"),
    ({"x": math.nan}, "/x"),
    ({"x/y": {"z": -math.inf}}, "/x~1y/z"),
])
def test_a_record_not_writable_as_it_is_is_rejected_not_passed_changed(small_filter, record, path):
    verdict = small_filter.process(record)
    assert verdict.outcome == "rejected"
    assert [(r.rule, r.path) for r in verdict.reasons] == [("record.encoding", path)]
    writable(verdict.output())
    assert small_filter.stats.snapshot()["rejected"] == 1 and small_filter.stats.received == 1


def test_an_event_whose_accepted_form_is_not_writable_is_rejected(small_filter):
    from support import load_event
    event = load_event("vsi-provision.json")
    event["requestData"] = {"size": 2**64}
    verdict = small_filter.process(event)
    assert verdict.outcome == "rejected"
    assert verdict.reasons[-1].rule == "record.encoding"
    writable(verdict.output())


def test_the_json_text_path_keeps_the_promise_for_nan(small_filter):
    verdict = small_filter.process_json(b'{"msg": NaN}')
    assert verdict.outcome == "rejected" and verdict.reasons[0].rule == "record.encoding"
    writable(verdict.output())


# --- exec-filter readers: the outcome must not depend on how the input is split ---------------

def _read(small_filter, data, step):
    router = RecordRouter(small_filter)
    reader = JsonLinesInput(router)
    outputs = []
    for start in range(0, len(data), step):
        outputs += reader.feed(data[start:start + step])
    return outputs + reader.close()


@pytest.mark.parametrize("step", [1, 53, 4096, 100_000])
def test_an_oversized_blank_line_is_no_record_however_it_is_split(small_filter, step):
    data = b'{"a": 1}\n' + b" " * 9000 + b"\t \r\n" + b'{"b": 2}\n' + b" " * 20000
    outputs = _read(small_filter, data, step)
    assert outputs == [{"a": 1}, {"b": 2}]
    assert small_filter.stats.received == 2


@pytest.mark.parametrize("step", [1, 53, 100_000])
def test_an_oversized_line_with_text_after_blanks_is_still_one_rejection(small_filter, step):
    data = b" " * 9000 + b"x\n" + b'{"b": 2}\n'
    outputs = _read(small_filter, data, step)
    assert len(outputs) == 2 and outputs[1] == {"b": 2}
    assert outputs[0]["reasons"][0]["rule"] == "record.size"


# --- exec-filter msgpack: a record whose text is not UTF-8 is one record, alone ---------------

def _not_utf8(value: bytes, key: bytes = b"k") -> bytes:
    """A one-key map whose str value is not UTF-8 (as a parser that left text binary writes it)."""
    return bytes([0x81, 0xa0 | len(key)]) + key + bytes([0xa0 | len(value)]) + value


def _read_msgpack(small_filter, data, step):
    router = RecordRouter(small_filter)
    reader = MsgpackInput(router, lambda value: value)
    outputs = []
    for start in range(0, len(data), step):
        outputs += reader.feed(data[start:start + step])
    return outputs + reader.close()


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_consecutive_records_that_are_not_utf8_stay_one_rejection_each(small_filter, step):
    good = msgpack.packb({"k": "v"})
    data = _not_utf8(b"\xff1") + _not_utf8(b"\xfe2") + good + _not_utf8(b"\xfd3")
    outputs = _read_msgpack(small_filter, data, step)
    assert [out.get("original") for out in outputs] == [{b"k": b"\xff1"}, {b"k": b"\xfe2"}, None, {b"k": b"\xfd3"}]
    assert outputs[2] == {"k": "v"}
    assert small_filter.stats.received == 4


@pytest.mark.parametrize("step", [1, 1000])
def test_a_map_value_inside_a_record_that_is_not_utf8_does_not_split_it(small_filter, step):
    # {"action": {"": nil}, "0": "\x80"}: the inner {"": nil} looks like a record start.
    data = b"\x82\xa6action\x81\xa0\xc0\xa10\xa1\x80"
    outputs = _read_msgpack(small_filter, data, step)
    assert len(outputs) == 1
    assert outputs[0]["original"] == {b"action": {b"": None}, b"0": b"\x80"}
    assert outputs[0]["reasons"][0]["rule"] == "input.msgpack"


# --- local store: a route with no records writes nothing ---------------------------------------

def test_an_empty_batch_writes_no_line_to_its_route_file(tmp_path):
    import asyncio

    from atnorm.forward.codec import Entry
    from atnorm.relay.localstore import LocalStore
    from atnorm.relay.routing import RoutedBatch

    async def scenario():
        store = LocalStore(str(tmp_path))
        try:
            assert await store.store([RoutedBatch("passed", "t", []), RoutedBatch("accepted", "t", [Entry(1, {"a": 1})])])
            assert await store.store([RoutedBatch("rejected", "t", [])])
        finally:
            await store.close()

    asyncio.run(scenario())
    assert (tmp_path / "accepted.jsonl").read_text(encoding="utf-8") == '{"a":1}\n'
    # Every line of a route file is one JSON document: no blank line for an empty batch.
    for route in ("passed", "rejected"):
        path = tmp_path / f"{route}.jsonl"
        assert not path.exists() or path.read_text(encoding="utf-8") == ""
