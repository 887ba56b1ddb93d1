"""The JSON output encoder (`jsoncodec.compact_json`, one C encoder made once, used by the
exec-filter's writer and by `encodable.json_line`)
must write what `json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
allow_nan=False).encode` writes, or fail where it fails.

Held against it: 12,000 generated events, about half of them mutated with values JSON
finds hard (floats of every bit pattern, NaN and infinities, integers past 64 bits, escapes,
control characters, non-ASCII and lone surrogates, non-str keys, bytes, deep and empty
containers); and the whole exec-filter output, JSON lines and msgpack in, JSON out, for
10,000 records each, byte for byte against the same encoder on `JSONEncoder.encode`.
"""

from __future__ import annotations

import json
import math
import random
import struct
from typing import Any, Callable, List

import msgpack
import pytest

from atnorm.bench.eventgen import EventGenerator
from atnorm.core.pipeline import EventFilter
from atnorm.execfilter.readers import JsonLinesInput, MsgpackInput
from atnorm.execfilter.shaping import RecordRouter
from atnorm.execfilter.writers import OutputEncoder
from atnorm.model.encodable import encodable
from atnorm.model.jsoncodec import compact_json

REFERENCE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
VALUES = 12_000
RECORDS = 10_000


@pytest.fixture(scope="module")
def event_filter() -> EventFilter:
    return EventFilter.from_schemas()


def hard_value(rng: random.Random) -> Any:
    """One value of the kinds where two JSON encoders could write different text."""
    pick = rng.randrange(14)
    if pick == 0:
        return struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0]
    if pick == 1:
        return rng.choice([math.nan, math.inf, -math.inf, -0.0, 0.0, 1e16, 1e-7, 5e-324, 1.7976931348623157e308])
    if pick == 2:
        return rng.choice([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30, -(10**40)])
    if pick == 3:
        return "".join(chr(rng.randrange(0x00, 0x80)) for _ in range(rng.randrange(12)))
    if pick == 4:
        return "".join(rng.choice(["é", "\u2028", "\u2029", "\U0001f600", "\x7f", "\ufeff", "/", "\\", '"'])
                       for _ in range(rng.randrange(1, 8)))
    if pick == 5:
        return "a\ud800b" if rng.random() < 0.5 else "\udfff"
    if pick == 6:
        return {rng.choice([1, 2.5, True, False, None, -0.0, 10**20]): "non-str key"}
    if pick == 7:
        return b"raw bytes"
    if pick == 8:
        value: Any = "bottom"
        for _ in range(rng.randrange(1, 60)):
            value = [value] if rng.random() < 0.5 else {"k": value}
        return value
    if pick == 9:
        return rng.choice([[], {}, [[]], {"": {}}, ("a", 1), ""])
    if pick == 10:
        return rng.choice([True, False, None])
    if pick == 11:
        return rng.randrange(-(2**70), 2**70)
    if pick == 12:
        return {"k\x00\n": [1, "x", None]}
    return object()


def mutate(record: Any, rng: random.Random) -> Any:
    """`record` with a few hard values set at random places in it."""
    for _ in range(rng.randrange(1, 4)):
        place = record
        while isinstance(place, dict) and place and rng.random() < 0.6:
            inner = place[rng.choice(list(place))]
            if not isinstance(inner, dict):
                break
            place = inner
        if isinstance(place, dict):
            key = rng.choice(list(place) + ["added"]) if place else "added"
            place[key] = hard_value(rng)
    return record


def outcome(encode: Callable[[Any], str], value: Any) -> Any:
    try:
        return encode(value)
    except Exception as exc:
        return type(exc).__name__


def test_compact_json_writes_what_the_reference_encoder_writes(event_filter):
    rng = random.Random(7)
    generator = EventGenerator(event_filter.rules, seed=7)
    encode = compact_json()
    assert not hasattr(encode, "__self__")  # the C encoder, not JSONEncoder.encode
    values: List[Any] = []
    for record in generator.mix(VALUES // 2, invalid_ratio=0.2):
        values.append(record)
        values.append(mutate(json.loads(json.dumps(record)), rng))
    values += [hard_value(rng) for _ in range(2_000)]
    differing = [value for value in values if outcome(encode, value) != outcome(REFERENCE, value)]
    assert not differing, differing[:3]
    # The mutations reach the cases that fail, so those are held against the reference too.
    assert sum(isinstance(outcome(REFERENCE, value), str) and outcome(REFERENCE, value) in
               ("ValueError", "TypeError") for value in values) > 100


def inputs(event_filter: EventFilter, in_format: str) -> bytes:
    """RECORDS tagged records, a third of them mutated, in the wire format."""
    rng = random.Random(11)
    generator = EventGenerator(event_filter.rules, seed=11)
    pack = msgpack.Packer(use_bin_type=True, strict_types=False).pack
    parts = []
    for index, record in enumerate(generator.mix(RECORDS, invalid_ratio=0.2)):
        if index % 3 == 0:
            record = mutate(record, rng)
        record["tag"] = f"app.{index % 5}"
        try:
            parts.append(json.dumps(record).encode("utf-8", "surrogatepass") + b"\n" if in_format == "json"
                         else pack(record))
        except (TypeError, ValueError, OverflowError):
            parts.append(b'{"tag": "app.cut", "action": "kms.secrets.cre\n' if in_format == "json"
                         else b"\xc1\xc1")  # what cannot be sent goes in as damage
    return b"".join(parts)


@pytest.mark.parametrize("in_format", ["json", "msgpack"])
def test_json_output_of_the_exec_filter_is_the_reference_encoding(event_filter, in_format):
    data = inputs(event_filter, in_format)
    written = []
    for fast in (True, False):
        router = RecordRouter(event_filter, tag_key="tag")
        reader = (JsonLinesInput(router) if in_format == "json"
                  else MsgpackInput(router, encodable))
        encoder = OutputEncoder(router, "json", 8192)
        if not fast:
            encoder._dumps = REFERENCE
        out, count = [], 0
        for start in range(0, len(data), 65536):
            outputs = reader.feed(data[start:start + 65536])
            count += len(outputs)
            out.append(encoder(outputs))
        outputs = reader.close()
        count += len(outputs)
        out.append(encoder(outputs))
        written.append((count, b"".join(out)))
    assert written[0][0] >= RECORDS
    assert written[0] == written[1]
