"""A decided record packed once (`model.packed`) must be what the walk and msgpack-python say.

12,000+ records (generated events and the filter's outputs of them) are changed at the
value level with what the bytes could hide or fake: floats of every bit pattern (NaN,
infinities), integers at the 64-bit edges and past them, lone surrogates, bytes, ExtType,
EventTime and Timestamp values, nesting around MAX_DEPTH, many small maps, text whose UTF-8
holds the header bytes looked for (`Ā`, `ˋ`), strings whose lengths are those bytes.
`packed_text_record` must either say nothing (None) or give msgpack-python's bytes for a
record `is_encodable` finds writable as it is.

Then whole chunks go the relay's way: packed, decoded as text (`unpack_text_entries`,
`text_records`), routed with `process_text` for the records known to be text: the same
verdicts as `process`, and every batch packed for the downstream as msgpack-python packs it.
"""

import random

import msgpack
import pytest

from atnorm.bench.eventgen import EventGenerator
from atnorm.core.pipeline import EventFilter
from atnorm.forward.codec import (
    Entry,
    EventTime,
    _pack_default,
    join_packed_entries,
    pack_entries,
    pack_plain_entries,
    text_records,
    unpack_text_entries,
)
from atnorm.model.encodable import MAX_DEPTH, is_encodable
from atnorm.model.packed import packed_text_record
from atnorm.model.verdict import ACCEPTED
from atnorm.relay.routing import Router
from support import HEADER_LOOKALIKE_TEXT, MSGPACK_EDGE_INTEGERS, nested_maps, random_float, reference_pack

RECORDS = 12_000

PAST_64_BITS = [1 << 64, -(1 << 63) - 1]
FLOATS = [float("nan"), float("inf"), float("-inf"), -0.0, 1.5, 1e308, 5e-324]


def reference_packb(value):
    return msgpack.packb(value, use_bin_type=True, unicode_errors="surrogateescape", default=_pack_default)



def _mutate(rng, record):
    kind = rng.randrange(14)
    if kind == 0:
        record["n"] = rng.choice(MSGPACK_EDGE_INTEGERS)
    elif kind == 1:
        record["f"] = rng.choice(FLOATS + [random_float(rng)])
    elif kind == 2:
        record["big"] = rng.choice(PAST_64_BITS)
    elif kind == 3:
        record["s"] = rng.choice(["\udcff", "x\ud800y"])
    elif kind == 4:
        record["raw"] = rng.choice([b"", b"\x00\xff", bytearray(b"ab")])
    elif kind == 5:
        record["ext"] = rng.choice([msgpack.ExtType(5, b"xy"), msgpack.ExtType(0, b"\x00" * 8),
                                    EventTime(1, 2), msgpack.Timestamp(1, 2)])
    elif kind == 6:  # the record itself is one level: the deepest nesting is depth + 1
        record["deep"] = nested_maps(rng.choice([MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 5]))
    elif kind == 7:
        record["maps"] = [{} for _ in range(rng.choice([10, 95, 99, 100, 150]))]
    elif kind == 8:
        record["t"] = rng.choice(HEADER_LOOKALIKE_TEXT)
    elif kind == 9:
        record["floats"] = [random_float(rng) for _ in range(rng.randrange(1, 5))]
    elif kind == 10:
        record[rng.choice(HEADER_LOOKALIKE_TEXT)] = rng.choice(HEADER_LOOKALIKE_TEXT)
    elif kind == 11:
        record["nested"] = {"f": {"g": [rng.choice(FLOATS), rng.choice(MSGPACK_EDGE_INTEGERS)]}}
    elif kind == 12:
        record.pop(rng.choice(list(record)), None)
    return record


@pytest.fixture(scope="module")
def records():
    event_filter = EventFilter.from_schemas()
    generator = EventGenerator(event_filter.rules, seed=20261202)
    rng = random.Random(12)
    out = []
    for record in generator.mix(RECORDS, invalid_ratio=0.2):
        if rng.random() < 0.5:
            record = event_filter.process(record).output()
        for _ in range(rng.choice([0, 1, 1, 2])):
            record = _mutate(rng, record)
        out.append(record)
    return out


def test_packed_record_is_the_references_bytes_of_a_writable_record(records):
    assert len(records) >= 10_000
    answered = 0
    for record in records:
        packed = packed_text_record(record)
        if packed is None:
            continue
        answered += 1
        assert is_encodable(record), record
        assert packed == reference_packb(record)
    # The mutations reach both answers: the bytes tell for most records, not for all.
    assert len(records) // 2 < answered < len(records)


def test_the_bytes_tell_for_plain_events_and_not_for_what_the_walk_refuses():
    event_filter = EventFilter.from_schemas()
    outputs = [event_filter.process(record).record
               for record in EventGenerator(event_filter.rules, seed=3).mix(2000, invalid_ratio=0.0)]
    assert sum(packed_text_record(output) is not None for output in outputs) > 0.95 * len(outputs)
    for unwritable in ({"f": float("nan")}, {"f": [1.0, float("-inf")]}, {"n": 1 << 64}, {"s": "\ud800"},
                       {"b": b"x"}, {"e": msgpack.ExtType(1, b"")}, {"t": EventTime(1, 0)},
                       nested_maps(MAX_DEPTH)):
        assert not is_encodable(unwritable)
        assert packed_text_record(unwritable) is None
    assert packed_text_record(nested_maps(MAX_DEPTH - 1)) == reference_packb(nested_maps(MAX_DEPTH - 1))


def test_joined_entries_are_the_plain_packing():
    rng = random.Random(4)
    event_filter = EventFilter.from_schemas()
    outputs = [event_filter.process(record).record
               for record in EventGenerator(event_filter.rules, seed=4).mix(500, invalid_ratio=0.0)]
    times = [rng.choice([EventTime(rng.randrange(1, 1 << 32), rng.randrange(10 ** 9)), rng.randrange(1, 1 << 32),
                         rng.uniform(1, 1 << 32)]) for _ in outputs]
    entries = [Entry(when, output, {"m": 1} if rng.random() < 0.3 else None) for when, output in zip(times, outputs)]
    # Most records packed already, some not (then packed here).
    packed = [reference_packb(output) if rng.random() < 0.9 else None for output in outputs]
    assert None in packed
    assert join_packed_entries(entries, packed) == pack_plain_entries(entries)
    assert join_packed_entries([], []) == b""


def _chunks(records):
    """The records as the relay receives them: PackedForward payloads, decoded as text."""
    for start in range(0, len(records), 200):
        payload = pack_entries(Entry(EventTime(1_750_000_000 + n, 0), record)
                               for n, record in enumerate(records[start:start + 200]))
        entries, _, ends = unpack_text_entries(payload)
        yield entries, text_records(payload, ends) if ends is not None else None


def test_the_relays_way_gives_process_verdicts_and_the_reference_packing(records):
    # Most chunks as senders send them, strict UTF-8 throughout; every tenth with records
    # holding text that is not (a surrogateescape'd str), which the whole chunk then shows.
    strict = [record for record in records if _packable(record, "strict")]
    loose = [record for record in records if _packable(record) and not _packable(record, "strict")]
    assert loose
    writable = []
    for start in range(0, len(strict), 200):
        writable += strict[start:start + 200] if start % 2000 else strict[start:start + 195] + loose[:5]
    event_filter = EventFilter.from_schemas()
    reference_filter = EventFilter.from_schemas()
    router = Router(event_filter.process, decide_text=event_filter.process_text)
    joined = text_chunks = 0
    for entries, text in _chunks(writable):
        text_chunks += text is not None
        for entry, is_text in zip(entries, text or [False] * len(entries)):
            decide = event_filter.process_text if is_text else event_filter.process
            ours, reference = decide(entry.record), reference_filter.process(entry.record)
            assert (ours.outcome, ours.record, ours.reasons, ours.fixes) == \
                (reference.outcome, reference.record, reference.reasons, reference.fixes)
            assert ours.packed is None or (is_text and ours.packed == reference_packb(ours.record))
        for batch in router.route("audit", entries, text):
            if batch.route == ACCEPTED and batch.packed_records is not None:
                joined += 1
            assert batch.plain_packed() == reference_pack(batch.entries, plain=True)
            assert batch.packed_records is None  # used once, then let go
            assert batch.plain_packed() == reference_pack(batch.entries, plain=True)
    # Some chunks hold text that is not strict UTF-8 (a surrogateescape'd str): all of it
    # is then decided by `process`; the others go the text way, and batches are joined.
    assert 0 < text_chunks < len(writable) // 200 and joined >= text_chunks // 2


def _packable(record, unicode_errors="surrogateescape"):
    """Records a sender could have sent: msgpack-python packs them."""
    try:
        msgpack.packb(record, use_bin_type=True, unicode_errors=unicode_errors, default=_pack_default)
    except Exception:
        return False
    return True


def _reference_plain(entries):
    packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape", default=_pack_default,
                            autoreset=False)
    for entry in entries:
        packer.pack([entry.time, entry.record])
    return packer.bytes()
