"""Hypothesis properties of the promises: every input gives exactly one output; received =
accepted + rejected + passed; nothing acked is dropped.

Derandomized with modest example counts, so the file runs the same in CI every time.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import subprocess
import sys
from typing import Any, Dict, List

import msgpack
from fuzz.fuzzlib import Bytes, check_verdict, mutate, sample_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atnorm.core.pipeline import EventFilter, FilterSettings
from atnorm.execfilter.readers import JsonLinesInput, MsgpackInput
from atnorm.execfilter.shaping import RecordRouter
from atnorm.execfilter.writers import _keep_bytes
from atnorm.forward.codec import EventTime, parse_frame
from atnorm.model.verdict import ACCEPTED, OUTCOMES, PASSED, REJECTED
from atnorm.relay.service import Relay
from forward_receiver import ForwardReceiver
from support import relay_settings

SAMPLES = [event for event in sample_events() if isinstance(event, dict)]
FILTER = EventFilter.from_schemas(settings=FilterSettings(max_record_bytes=8192))

PROPERTY = settings(derandomize=True, max_examples=30, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(PROPERTY, max_examples=4)

leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
          | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_ish = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=16)
event_keys = st.sampled_from(["action", "initiator", "target", "eventTime", "outcome", "severity", "message",
                              "reason", "observer", "requestData", "log"])
records = st.one_of(
    st.builds(lambda index, data: mutate(SAMPLES[index % len(SAMPLES)], Bytes(data)),
              st.integers(min_value=0, max_value=len(SAMPLES) - 1), st.binary(max_size=40)),
    st.dictionaries(event_keys | st.text(max_size=8), json_ish, max_size=6),
    json_ish,
)
# Records Fluentd's formatters write: non-empty maps with text keys, values msgpack holds.
wire_leaves = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
               | st.floats() | st.text(max_size=12))
wire_values = st.recursive(wire_leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
plain_records = st.dictionaries(event_keys | st.text(min_size=1, max_size=8), wire_values, min_size=1, max_size=6) | \
    st.builds(lambda index: SAMPLES[index % len(SAMPLES)], st.integers(min_value=0, max_value=len(SAMPLES) - 1))
# The same with raw byte values: packed without the bin type they are str that need not be UTF-8,
# as Fluentd's msgpack formatter writes what a parser left as binary.
byte_records = st.dictionaries(event_keys | st.text(min_size=1, max_size=8),
                               wire_values | st.binary(max_size=6), min_size=1, max_size=4)


def counts() -> Dict[str, int]:
    return {"received": FILTER.stats.received, **{o: FILTER.stats.outcomes[o] for o in OUTCOMES}}


def assert_counted(before: Dict[str, int], outcomes: List[str]) -> None:
    after = counts()
    assert after["received"] - before["received"] == len(outcomes)
    for outcome in OUTCOMES:
        assert after[outcome] - before[outcome] == outcomes.count(outcome)
    assert after["received"] == after[ACCEPTED] + after[REJECTED] + after[PASSED]


def pieces(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def json_line(record: Any) -> bytes:
    # The mutated samples may hold bytes (and other values JSON has no type for): as text here.
    return json.dumps(record, ensure_ascii=False, default=repr).encode("utf-8", "surrogatepass")


# --- the filter core ---------------------------------------------------------------------------

@PROPERTY
@given(st.lists(records, max_size=8))
def test_the_filter_gives_every_record_exactly_one_verdict_and_the_counts_add_up(batch):
    before = counts()
    verdicts = [FILTER.process(record) for record in batch]
    for verdict in verdicts:
        check_verdict(verdict)
    assert_counted(before, [verdict.outcome for verdict in verdicts])


# --- the exec-filter readers -------------------------------------------------------------------

@PROPERTY
@given(st.lists(records, max_size=6), st.lists(st.sampled_from([b"", b"  ", b"\t\r", b" " * 9000]), max_size=4),
       st.lists(st.integers(min_value=0), max_size=8))
def test_the_json_reader_gives_one_output_per_non_blank_line_however_it_is_split(batch, blanks, cuts):
    lines = [json_line(record) for record in batch] + blanks
    data = b"\n".join(lines)
    expected = sum(1 for line in data.split(b"\n") if line and not line.isspace())
    router = RecordRouter(FILTER)
    reader = JsonLinesInput(router)
    before = counts()
    outputs = [out for piece in pieces(data, cuts) for out in reader.feed(piece)] + reader.close()
    assert len(outputs) == expected
    assert_counted(before, router.take_outcomes())


@PROPERTY
@given(st.lists(plain_records | byte_records, max_size=6), st.booleans(), st.lists(st.integers(min_value=0), max_size=8))
def test_the_msgpack_reader_gives_one_output_per_record_however_it_is_split(batch, bin_text, cuts):
    data = b"".join(msgpack.packb(record, use_bin_type=not bin_text) for record in batch)
    router = RecordRouter(FILTER)
    reader = MsgpackInput(router, _keep_bytes)
    before = counts()
    outputs = [out for piece in pieces(data, cuts) for out in reader.feed(piece)] + reader.close()
    assert len(outputs) == len(batch)
    assert_counted(before, router.take_outcomes())


@SLOW
@given(st.lists(plain_records, min_size=1, max_size=12), st.sampled_from(["json", "msgpack"]))
def test_the_exec_filter_child_writes_one_output_per_record_and_sums_its_counts(tmp_path_factory, batch, in_format):
    log = tmp_path_factory.mktemp("child") / "exec-filter.log"
    if in_format == "json":
        data = b"".join(json_line(record) + b"\n" for record in batch)
    else:
        data = b"".join(msgpack.packb(record, use_bin_type=True) for record in batch)
    result = subprocess.run([sys.executable, "-m", "atnorm", "exec-filter", "--in-format", in_format,
                             "--out-format", "msgpack", "--log-file", str(log)],
                            input=data, capture_output=True, timeout=120)
    assert result.returncode == 0 and result.stderr == b""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    unpacker.feed(result.stdout)
    outputs = list(unpacker)
    assert len(outputs) == len(batch)
    summary = log.read_text(encoding="utf-8").splitlines()[-1]
    fields = dict(part.split("=", 1) for part in summary.split() if "=" in part)
    received, accepted, rejected, passed = (int(fields[k]) for k in ("received", "accepted", "rejected", "passed"))
    assert received == len(batch) == accepted + rejected + passed


# --- the forward codec -------------------------------------------------------------------------

times = st.one_of(st.integers(min_value=-(2**40), max_value=2**40), st.floats(allow_nan=True),
                  st.builds(EventTime, st.integers(min_value=0, max_value=2**32 - 1),
                            st.integers(min_value=0, max_value=2**32 - 1)),
                  st.none(), st.text(max_size=3))
entries = st.lists(st.one_of(st.tuples(times, plain_records | wire_values).map(list), wire_values), max_size=8)


def _event_time(value: Any) -> msgpack.ExtType:
    if not isinstance(value, EventTime):
        raise TypeError(f"cannot pack {type(value).__name__}")
    return msgpack.ExtType(0, value.seconds.to_bytes(4, "big") + value.nanoseconds.to_bytes(4, "big"))


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True, default=_event_time)


@PROPERTY
@given(entries, st.sampled_from(["forward", "packed", "gzip", "message"]))
def test_every_entry_a_frame_holds_becomes_exactly_one_entry(items, mode):
    try:
        payload = b"".join(_pack(item) for item in items)
    except (TypeError, ValueError, OverflowError):
        return  # values msgpack cannot hold never arrive on the wire
    if mode == "message":
        item = items[0] if items and isinstance(items[0], list) and len(items[0]) == 2 else [0, {}]
        frame = ["t", item[0], item[1], {"chunk": "c"}]
        expected = 1
    else:
        body = items if mode == "forward" else payload if mode == "packed" else gzip.compress(payload)
        frame = ["t", body, {"compressed": "gzip"} if mode == "gzip" else {}]
        expected = len(items)
    frame = msgpack.unpackb(_pack(frame), raw=False, strict_map_key=False,
                            ext_hook=lambda code, data: EventTime(int.from_bytes(data[:4], "big"),
                                                                  int.from_bytes(data[4:], "big")))
    chunk = parse_frame(frame, max_decompressed_size=1 << 22)
    assert len(chunk.entries) == expected
    assert chunk.invalid == sum(1 for entry in chunk.entries if entry.problem is not None)
    for entry in chunk.entries:
        if entry.problem is None:
            seconds = entry.time.seconds if isinstance(entry.time, EventTime) else entry.time
            assert 0 <= seconds < 2**32 and isinstance(entry.record, dict)


# --- the relay: nothing acked is dropped -------------------------------------------------------

def _marked(records_: List[Dict[str, Any]], start: int) -> List[Dict[str, Any]]:
    return [dict(record, fuzzMarker=f"m-{start + i}") for i, record in enumerate(records_)]


def _markers(value: Any, found: List[str]) -> List[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "fuzzMarker" and isinstance(item, str):
                found.append(item)
            else:
                _markers(item, found)
    elif isinstance(value, list):
        for item in value:
            _markers(item, found)
    return found


async def _send_and_collect(tmp_path: Any, chunks: List[List[Dict[str, Any]]]) -> None:
    async with ForwardReceiver() as receiver:
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                     "--data-dir", str(tmp_path)), FILTER)
        await relay.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
            acked: List[str] = []
            try:
                for index, chunk in enumerate(chunks):
                    marked = _marked(chunk, 1000 * index)
                    entries = [[EventTime(1741064767, 123), record] for record in marked]
                    writer.write(_pack(["audit.at", entries, {"chunk": f"chunk-{index}", "size": len(entries)}]))
                    await writer.drain()
                    unpacker = msgpack.Unpacker(raw=False)
                    while True:
                        unpacker.feed(await reader.read(1 << 16))
                        answers = list(unpacker)
                        if answers:
                            break
                    assert answers == [{"ack": f"chunk-{index}"}]
                    acked += [record["fuzzMarker"] for record in marked]
            finally:
                writer.close()
            await receiver.wait_for(lambda: len(receiver.events) >= len(acked))
        finally:
            await relay.stop()
        delivered = _markers([record for _, _, record in receiver.events], [])
        assert sorted(delivered) == sorted(acked), "an acked record did not arrive downstream once"


@SLOW
@given(st.lists(st.lists(plain_records, min_size=1, max_size=5), min_size=1, max_size=4))
def test_every_record_of_an_acked_chunk_arrives_downstream_once(tmp_path_factory, chunks):
    before = counts()
    asyncio.run(asyncio.wait_for(_send_and_collect(tmp_path_factory.mktemp("relay"), chunks), 120))
    after = counts()
    assert after["received"] - before["received"] == sum(len(chunk) for chunk in chunks)
    assert after["received"] == after[ACCEPTED] + after[REJECTED] + after[PASSED]
