"""msgpack framing in `atnorm exec-filter`: oversized records, garbage headers that declare
huge or swallowing lengths, and the resynchronisation rule, driven through the real child
process (and, for the property test, through the real reader in-process)."""

from __future__ import annotations

import os
import random
from typing import Any, Dict, List

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_execfilter import Child, msgpack_outputs, run_child

from atnorm.core.pipeline import EventFilter
from atnorm.execfilter.readers import MsgpackInput
from atnorm.execfilter.shaping import RecordRouter
from atnorm.execfilter.writers import _keep_bytes

ARGS = ["--in-format", "msgpack", "--tag-key", "tag"]


def plain(index: int) -> Dict[str, Any]:
    """A record that is not an Activity Tracker event: it passes through unchanged."""
    return {"level": "info", "message": f"line {index}", "tag": f"app.{index}"}


def read_outputs(child: Child, count: int) -> List[Any]:
    """Read `count` outputs from the running child (blocks until they arrive)."""
    unpacker = msgpack.Unpacker(raw=False)
    outputs: List[Any] = []
    while len(outputs) < count:
        data = os.read(child.proc.stdout.fileno(), 65536)
        assert data, f"stdout closed after {len(outputs)} of {count} outputs"
        unpacker.feed(data)
        outputs.extend(unpacker)
    return outputs


# --- item: an oversized record is one rejection, streamed past --------------------------

def test_5mib_record_is_one_record_size_rejection_and_the_rest_pass(tmp_path):
    records = [plain(i) for i in range(6)]
    big = {"level": "info", "message": "x" * (5 << 20), "tag": "app.big"}
    data = b"".join(msgpack.packb(r) for r in records[:3]) + msgpack.packb(big) + b"".join(
        msgpack.packb(r) for r in records[3:])
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    out, child = run_child(tmp_path, ARGS, chunks)
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(out)
    outputs = list(unpacker)
    assert len(outputs) == 7  # was 2,031,715 outputs: decoding restarted inside the record
    assert outputs[:3] + outputs[4:] == records
    refused = outputs[3]
    assert refused["tag"] == "app.big.rejected"
    assert [reason["rule"] for reason in refused["reasons"]] == ["record.size"]
    assert refused["original"] == msgpack.packb(big)[:1024]
    assert f"record of {len(msgpack.packb(big))} bytes at input offset 111 is over" in child.log


def test_record_oversized_by_many_small_items_is_one_rejection(tmp_path):
    big = {"tag": "app.big", "items": list(range(300000))}  # ~1.4 MB of one-byte ints
    data = msgpack.packb(plain(1)) + msgpack.packb(big) + msgpack.packb(plain(2))
    out, _ = run_child(tmp_path, ARGS, [data[i:i + 4096] for i in range(0, len(data), 4096)])
    outputs = msgpack_outputs(out)
    assert [o["tag"] for o in outputs] == ["app.1", "app.big.rejected", "app.2"]
    assert outputs[1]["reasons"][0]["rule"] == "record.size"


# --- item: garbage never swallows the records after it ------------------------------------

HUGE_HEADERS = [b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff", b"\xdb\x7f\xff\xff\xff",
                b"\xdf\x7f\xff\xff\xff", b"\xdc\x00\x05", b"\x9f", b"\x85", b"\xc1\xc1",
                # a map whose text key is not UTF-8, then more damage: still one region
                b"\x81\xa1\xc6\xff\xff\xff\xff"]


def test_2000_records_with_194_garbage_headers_give_2194_outputs(tmp_path):
    rng = random.Random(7)
    parts: List[bytes] = []
    expected: List[Any] = []
    for index in range(2000):
        parts.append(msgpack.packb(plain(index)))
        expected.append(plain(index))
        if index % 10 == 5 and expected.count(None) < 194:
            parts.append(rng.choice(HUGE_HEADERS))
            expected.append(None)
    data = b"".join(parts)
    cuts = sorted(rng.sample(range(1, len(data)), 60))
    chunks = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    out, _ = run_child(tmp_path, ARGS, chunks)
    outputs = msgpack_outputs(out)
    assert len(outputs) == 2194  # was 23-57: a huge declared length held all that followed
    for want, got in zip(expected, outputs):
        if want is None:
            assert got["tag"] == "atnorm.rejected"
            assert got["reasons"][0]["rule"] == "input.msgpack"
        else:
            assert got == want


@pytest.mark.parametrize("garbage", [b"\xdc\x00\x05", b"\x9f", b"\xde\x00\x05", b"\x85",
                                     b"\xc6\x00\x00\x10\x00", b"\xdf\xff\xff\xff\xff"])
def test_garbage_header_does_not_hold_the_next_records_back(tmp_path, garbage):
    """The records after the garbage come out while the input stays open (nothing waits
    for more bytes to fill what the garbage declared)."""
    child = Child(tmp_path, *ARGS)
    try:
        child.write(msgpack.packb(plain(0)) + garbage
                    + b"".join(msgpack.packb(plain(i)) for i in range(1, 4)))
        outputs = read_outputs(child, 5)
    finally:
        child.proc.stdin.close()
        rest, status = child.finish()
    assert status == 0 and rest == b""
    assert outputs[0] == plain(0) and outputs[2:] == [plain(i) for i in range(1, 4)]
    assert outputs[1]["tag"] == "atnorm.rejected"
    assert outputs[1]["original"] == garbage


# --- the invariant, as a property ---------------------------------------------------------

_FILTER: List[EventFilter] = []


def reader() -> MsgpackInput:
    if not _FILTER:
        _FILTER.append(EventFilter.from_schemas())
    return MsgpackInput(RecordRouter(_FILTER[0], tag_key="tag"), _keep_bytes)


# Garbage: the headers that used to swallow records, and arbitrary bytes that do not open a
# map (a map at a record boundary is read as a record: that is the framing rule).
garbage_blobs = st.one_of(
    st.sampled_from(HUGE_HEADERS),
    st.binary(min_size=1, max_size=40).filter(lambda b: not (0x80 <= b[0] <= 0x8f or b[0] in (0xde, 0xdf))),
)
records = st.builds(lambda i, text: {"tag": f"app.{i}", "message": text},
                    st.integers(0, 10 ** 6), st.text(max_size=60))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(units=st.lists(st.one_of(records, garbage_blobs), min_size=1, max_size=40),
       cuts=st.lists(st.integers(1, 200), min_size=1, max_size=20))
def test_outputs_are_records_plus_damaged_regions(units, cuts):
    data = b"".join(u if isinstance(u, bytes) else msgpack.packb(u) for u in units)
    regions = sum(1 for i, u in enumerate(units)
                  if isinstance(u, bytes) and (i == 0 or not isinstance(units[i - 1], bytes)))
    good = [u for u in units if not isinstance(u, bytes)]
    feeder = reader()
    outputs: List[Any] = []
    position, turn = 0, 0
    while position < len(data):
        size = cuts[turn % len(cuts)]
        outputs.extend(feeder.feed(data[position:position + size]))
        position, turn = position + size, turn + 1
    outputs.extend(feeder.close())
    assert len(outputs) == len(good) + regions
    assert [o for o in outputs if "reasons" not in o] == good  # unchanged, in order
    rejected = [o for o in outputs if "reasons" in o]
    assert len(rejected) == regions
    assert all(o["tag"] == "atnorm.rejected" for o in rejected)


def test_long_damage_in_small_reads_is_one_rejection_and_spares_the_next_record():
    rng = random.Random(3)
    garbage = b"\xc1" + bytes(rng.getrandbits(8) for _ in range(300_000))
    records = [plain(i) for i in range(4)]
    data = msgpack.packb(records[0]) + garbage + b"".join(msgpack.packb(r) for r in records[1:])
    feeder = reader()
    outputs: List[Any] = []
    for start in range(0, len(data), 900):
        outputs.extend(feeder.feed(data[start:start + 900]))
    outputs.extend(feeder.close())
    assert [o for o in outputs if "reasons" not in o] == records
    assert len(outputs) == 5 and outputs[1]["tag"] == "atnorm.rejected"


def test_record_with_more_items_than_the_limit_is_one_rejection(tmp_path):
    """More items than max_record_size bytes can hold: oversized, not damage."""
    big = {"tag": "app.big", "items": list(range(100)) * 1000}  # 100,000 items, ~100 KB
    data = msgpack.packb(plain(1)) + msgpack.packb(big) + msgpack.packb(plain(2))
    out, _ = run_child(tmp_path, ARGS + ["--max-record-size", "64k"],
                       [data[i:i + 4096] for i in range(0, len(data), 4096)])
    outputs = msgpack_outputs(out)
    assert [o["tag"] for o in outputs] == ["app.1", "app.big.rejected", "app.2"]
    assert outputs[1]["reasons"][0]["rule"] == "record.size"


@pytest.mark.parametrize("step", [1, 5, 64, 1 << 20])
def test_a_record_keyed_by_a_map_is_one_rejection_not_pieces_of_records(step):
    """Valid msgpack Python cannot hold as a dict: the record is one rejection, its inner map
    shown as [key, value] pairs; the inner map is never taken for a record of its own."""
    keyed = (b"\x83" + msgpack.packb("tag") + msgpack.packb("app.x") + msgpack.packb("target") + b"\x81" +
             msgpack.packb({"id": 1}) + msgpack.packb("v") + msgpack.packb("n") + b"\x81" +
             msgpack.packb([1, 2]) + msgpack.packb(3))
    records = [plain(i) for i in range(3)]
    data = msgpack.packb(records[0]) + keyed + msgpack.packb(records[1]) + keyed + msgpack.packb(records[2])
    feeder = reader()
    outputs: List[Any] = []
    for start in range(0, len(data), step):
        outputs.extend(feeder.feed(data[start:start + step]))
    outputs.extend(feeder.close())
    assert len(outputs) == 5
    assert [o for o in outputs if "reasons" not in o] == records
    for rejected in (outputs[1], outputs[3]):
        assert rejected["original"] == {b"tag": b"app.x", b"target": [[{b"id": 1}, b"v"]], b"n": [[[1, 2], 3]]}
        [reason] = rejected["reasons"]
        assert reason["rule"] == "input.msgpack"
        assert "keyed by a map or an array at '/target'" in reason["message"]
