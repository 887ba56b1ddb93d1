"""exec-filter, msgpack in and out: the text proof and the reused packed record must write
what the walks and packing the output record again write.

12,000+ records (generated events, a fifth of them invalid, and other logs; a third changed at the value
level with what the bytes could hide or fake: bin values and keys, keys that are not text
at any depth, ExtType and EventTime values, floats of every kind, integers at the 64-bit
edges, text whose UTF-8 holds header bytes, nesting around the 100-level limit, maps whose
header grows past 15 and 65,535 pairs once the transport keys are back, records holding the
annotation or time key) are given tag and time keys of every kind, packed as Fluentd's
msgpack formatter packs them, mixed with strings that are not UTF-8 and garbage, and read
in chunks of random size by two exec-filter readers: the one the child runs (strict map
keys, `route_text` for a record whose bytes show it is text, the packed record reused with
the transport keys appended) and the reference (`fast_path=False`: every object read as any
key allows, `process` with its walks, the output packed by the writer). Same bytes out,
same outcomes and counts. With JSON out, the same for a record decided as text and packed
without a float, written by msgspec, against the writer's JSON.
"""

import random
import struct

import msgpack
import pytest

from atnorm.bench.eventgen import EventGenerator
from atnorm.core.pipeline import EventFilter
from atnorm.execfilter.readers import MsgpackInput
from atnorm.execfilter.shaping import EncodedOutput, PackedOutput, RecordRouter
from atnorm.execfilter.writers import OutputEncoder, _keep_bytes
from atnorm.model.encodable import encodable
from support import HEADER_LOOKALIKE_TEXT, MSGPACK_EDGE_INTEGERS, nested_maps, random_float

RECORDS = 12_000

TAGS = ["audit.at", "", "é.tag", b"bin.tag", b"\xff\xfe", 7, None, ["x"]]
TIMES = ["2025-01-02T03:04:05Z", 1735787045, 1735787045.25, b"bin time", msgpack.ExtType(0, b"\x00" * 8),
         {"t": 1}, None, float("nan")]


def _mutate(rng, record):
    kind = rng.randrange(16)
    if kind == 0:
        record["raw"] = rng.choice([b"", b"\x00\xff", b"text as bin"])
    elif kind == 1:
        record[b"bin key"] = "x"
    elif kind == 2:
        record["requestData"] = {rng.choice([1, -1, 2.5, True, None, b"k"]): "x"}
    elif kind == 3:
        record["n"] = rng.choice(MSGPACK_EDGE_INTEGERS)
    elif kind == 4:
        record["f"] = rng.choice([float("nan"), float("inf"), -0.0, 1.5, random_float(rng)])
    elif kind == 5:
        record["ext"] = rng.choice([msgpack.ExtType(rng.choice([0, 1, 127]), rng.choice([b"\x00" * 8, b"xy"])),
                                    msgpack.Timestamp(1735787045, 250)])
    elif kind == 6:
        record["t"] = rng.choice(HEADER_LOOKALIKE_TEXT)
    elif kind == 7:
        record["deep"] = nested_maps(rng.choice([90, 97, 98, 99, 100, 101]))
    elif kind == 8:  # 14 or 15 pairs, so that the transport keys take the header past 15
        for index in range(rng.choice([13, 14, 15, 16]) - len(record)):
            record[f"k{index}"] = index
    elif kind == 9:
        for index in range(65_530 if rng.random() < 0.002 else 40):
            record[f"p{index}"] = ""
    elif kind == 10:
        record["atnorm"] = {"mine": 1}
    elif kind == 11:
        record["time"] = "already here"
    elif kind == 12:
        target = record.get("target")
        if isinstance(target, dict):
            record["target"] = {**target, "name": rng.choice(HEADER_LOOKALIKE_TEXT + ["  padded "])}
    elif kind == 13:
        record["list"] = [rng.choice(MSGPACK_EDGE_INTEGERS), "s", None, [b"x"], {"k": 1.5}]
    elif kind == 14:
        record["message"] = b"\xe9t\xe9"  # latin-1 bytes as bin, not UTF-8
    return record


def _stream(rng):
    event_filter = EventFilter.from_schemas()
    parts = []
    for record in EventGenerator(event_filter.rules, seed=7).mix(RECORDS, invalid_ratio=0.2):
        if not isinstance(record, dict):
            record = {"value": record}
        if rng.random() < 0.03:  # not an event: passed on as it came
            record = {"log": "GET /healthz 200", "stream": "stdout", "n": rng.choice(MSGPACK_EDGE_INTEGERS)}
        if rng.random() < 0.35:
            record = _mutate(rng, dict(record))
        if rng.random() < 0.9:
            record["tag"] = rng.choice(TAGS)
        if rng.random() < 0.6:
            record["time"] = rng.choice(TIMES)
        try:
            parts.append(msgpack.packb(record, use_bin_type=True))
        except (ValueError, OverflowError):
            continue  # deeper than msgpack-python packs: no such input can arrive
        pick = rng.random()
        if pick < 0.003:  # a string that is not UTF-8 in a record that frames as one
            parts.append(b"\x82\xa3tag\xa2t1\xa1m\xa2\xff\xfe")
        elif pick < 0.005:
            parts.append(rng.choice([b"\xc1", b"\x92\x01\x02", b"\xa4text"]))
    return b"".join(parts)


@pytest.fixture(scope="module")
def stream():
    return _stream(random.Random(20261203))


def _run(stream, rng, tag_key, time_key, fast, out_format="msgpack"):
    event_filter = EventFilter.from_schemas()
    router = RecordRouter(event_filter, tag_key=tag_key, time_key=time_key,
                          msgpack_out=fast and out_format == "msgpack", json_out=fast and out_format == "json")
    reader = MsgpackInput(router, _keep_bytes if out_format == "msgpack" else encodable, fast_path=fast)
    encode = OutputEncoder(router, out_format)
    written, reused, position = [], 0, 0
    while position < len(stream):
        size = rng.choice([1, 7, 4096, 65536, 1 << 20])
        outputs = reader.feed(stream[position:position + size])
        position += size
        reused += sum(type(output) in (PackedOutput, EncodedOutput) for output in outputs)
        written.append(encode(outputs))
    written.append(encode(reader.close()))
    return b"".join(written), reused, event_filter.stats.snapshot()


# (tag key, time key, how many outputs leave as the filter's packed record): never with
# both keys one; with the time key the annotation key, only for records not annotated.
@pytest.mark.parametrize("out_format", ["msgpack", "json"])
@pytest.mark.parametrize("tag_key, time_key, reuse", [
    ("tag", "time", "most"), ("tag", None, "most"), (None, None, "most"), ("tag", "tag", "none"),
    ("tag", "atnorm", "few")])
def test_reused_packed_records_are_the_bytes_the_writer_writes(stream, tag_key, time_key, reuse, out_format):
    ours, reused, ours_counts = _run(stream, random.Random(1), tag_key, time_key, True, out_format)
    reference, none, reference_counts = _run(stream, random.Random(1), tag_key, time_key, False, out_format)
    assert none == 0
    assert ours == reference
    assert ours_counts == reference_counts
    assert ours_counts["received"] >= 10_000
    if reuse == "most":
        assert reused > RECORDS // 3
    elif reuse == "few":
        assert 0 < reused < RECORDS // 10
    else:
        assert reused == 0


def test_the_map_header_grows_as_the_transport_keys_are_appended():
    router = RecordRouter(EventFilter.from_schemas(), tag_key="tag", time_key="time", msgpack_out=True)
    reference = RecordRouter(EventFilter.from_schemas(), tag_key="tag", time_key="time")
    for pairs in (13, 14, 15, 65_534, 65_535):
        record = {f"k{index}": "" for index in range(pairs)}
        record.update(tag="a.b", time=struct.pack(">I", 1).decode("latin-1"))
        output = router.record_text(dict(record))
        assert type(output) is PackedOutput
        assert OutputEncoder(router, "msgpack")([output]) == OutputEncoder(reference, "msgpack")(
            [reference.record(dict(record))])
