"""Records a payload vouches for as text must be decided as if they had been looked at.

The relay decodes a PackedForward payload as strict text first (`unpack_text_entries`) and
marks each record whose bytes show it is text as it is (`text_records`); those records are
decided by `process_text`, which does not walk them for bin, keys that are not str and
lone surrogates. 12,000+ records (generated events and mutated ones) are packed into
payloads and then changed at the msgpack level: bin values and bin keys (UTF-8 or not),
integer, nil, bool and float keys, array keys, strings that are not UTF-8, non-ASCII text,
integers whose bytes look like bin headers, NaN, ext values, Fluent Bit's metadata form,
odd times, items that are not entries, nesting around 100 levels and deeper, truncation
and random bytes. Each payload is routed both ways, by the fast path and by the
reference (`unpack_entries`, every record decided by `process`): the same batches, the
same bytes for the downstream, the same counts, or the same ProtocolError.
"""

import random

import msgpack
import pytest

from atnorm.bench.eventgen import EventGenerator
from atnorm.core.drift import DriftLog
from atnorm.core.pipeline import EventFilter, FilterSettings
from atnorm.core.reload import ReloadingFilter
from atnorm.forward.codec import EventTime, ProtocolError, packb, text_records, unpack_entries, unpack_text_entries
from atnorm.relay.routing import Router

RECORDS = 12_000
CHUNK = 40


def _time(rng):
    pick = rng.randrange(8)
    if pick < 4:
        return EventTime(rng.randrange(1, 1 << 32), rng.randrange(10 ** 9))
    if pick == 4:
        return rng.randrange(1, 1 << 32)
    if pick == 5:
        return rng.uniform(1, 1 << 32)
    return rng.choice([None, 0, -5, "now", msgpack.Timestamp(5, 0), 1 << 40])


def _maps_with_a_leaf(depth):
    """`depth` maps, each the only value of the one around it, the innermost holding text
    (unlike `support.nested_maps`, whose innermost map is empty)."""
    value = {"leaf": "x"}
    for _ in range(depth - 1):
        value = {"n": value}
    return value


def _mutate_record(rng, record):
    """A value-level change that decides whether the record is text, or how it is seen."""
    kind = rng.randrange(16)
    if kind == 0:
        record["blob"] = rng.choice([b"utf8 text", b"\xff\xfe", b""])
    elif kind == 1:
        record[rng.choice([b"key", b"\xc3\x28"])] = "bin key"
    elif kind == 2 and rng.random() < 0.1:  # rarely: its whole payload then decodes as always
        record[rng.choice([1, None, True, 1.5])] = "odd key"
    elif kind == 3:
        record.setdefault("initiator", {})
        if isinstance(record["initiator"], dict):
            record["initiator"]["name"] = rng.choice(["Łódź Ćma", "é中😀", "ĄĆĘ"])
    elif kind == 4:
        record["reason"] = {"reasonCode": rng.choice([196, 197, 198, 200, -60, 65535, 1 << 40])}
    elif kind == 5:
        record["f"] = rng.choice([float("nan"), float("inf"), 1.5, -0.0])
    elif kind == 6:
        record["ext"] = rng.choice([msgpack.ExtType(5, b"\xc4x"), EventTime(1, 2), msgpack.Timestamp(1, 2)])
    elif kind == 7:
        record["deep"] = _maps_with_a_leaf(rng.choice([50, 97, 98, 99, 100, 101, 150, 400, 960, 990, 1000, 1020]))
    elif kind == 8:
        record["many"] = [{"i": i} for i in range(rng.choice([10, 90, 99, 100, 101, 150]))]
    elif kind == 9:
        record["message"] = rng.choice([" padded ", "\u2028", "tab\tbed"])
    return record


def _encode(rng, entry_time, record):
    """One entry's bytes: plain, in the metadata form, or not an entry at all."""
    pick = rng.randrange(20)
    if pick == 0:
        return packb([[entry_time, {"trace": rng.choice(["t", b"\xc5"])}], record])
    if pick == 1:
        return packb(rng.choice([[entry_time], [entry_time, record, 1], "text", [entry_time, [1, 2]]]))
    return packb([entry_time, record])


def _byte_mutation(rng, payload):
    kind = rng.randrange(40)
    if kind == 0:  # a string that is not UTF-8
        at = payload.find(b"\xa5")  # a fixstr of 5 characters
        if at != -1:
            return payload[:at + 1] + b"\xff" + payload[at + 2:]
    if kind == 1:  # a map key that is an array: not a map Python can hold
        return payload + packb([EventTime(7, 0), {"k": 1}]).replace(b"\x81\xa1k", b"\x81\x91\x01", 1)
    if kind == 2:  # truncated
        return payload[:rng.randrange(1, len(payload))]
    if kind == 3:  # one random byte replaced
        at = rng.randrange(len(payload))
        return payload[:at] + bytes([rng.randrange(256)]) + payload[at + 1:]
    return payload


@pytest.fixture(scope="module")
def payloads():
    generator = EventGenerator(EventFilter.from_schemas().rules, seed=20261204)
    rng = random.Random(21)
    records = generator.mix(RECORDS, invalid_ratio=0.3)
    out = []
    for start in range(0, len(records), CHUNK):
        parts = []
        for record in records[start:start + CHUNK]:
            if rng.random() < 0.5:
                record = _mutate_record(rng, record)
            try:
                parts.append(_encode(rng, _time(rng), record))
            except (TypeError, ValueError, OverflowError):
                continue  # a value msgpack cannot hold: not a payload a sender could send
        out.append(_byte_mutation(rng, b"".join(parts)))
    return out


def _fingerprint(batches):
    return [(b.route, b.tag, b.count, b.decided, b.plain_packed(), b.packed()) for b in batches]


def _stats(event_filter):
    stats = event_filter.stats
    return (stats.outcomes, stats.by_service, stats.rejections, stats.warnings, stats.fixes, stats.unknown_actions)


def _outcome(call, *args):
    try:
        return "ok", call(*args)
    except ProtocolError as exc:
        return "ProtocolError", (exc.kind, str(exc))


def test_text_records_are_routed_as_the_reference_routes_them_on_12000_records(payloads, monkeypatch):
    # Entries without a usable time get the arrival time: the same one on both sides.
    monkeypatch.setattr(EventTime, "now", classmethod(lambda cls: cls(1_750_000_000, 0)))
    fast_filter, reference_filter = EventFilter.from_schemas(), EventFilter.from_schemas()
    fast, reference = Router(fast_filter.process), Router(reference_filter.process)
    assert fast.decide_text is not None and reference.decide_text is not None
    records = text = 0
    kinds = set()

    def fast_route(payload):
        entries, _, ends = unpack_text_entries(payload)
        flags = text_records(payload, ends) if ends is not None else None
        return flags, _fingerprint(fast.route("audit", entries, flags))

    def reference_route(payload):
        return _fingerprint(reference.route("audit", unpack_entries(payload)[0]))

    for payload in payloads:
        ours, theirs = _outcome(fast_route, payload), _outcome(reference_route, payload)
        kinds.add(ours[0])
        if ours[0] == "ok":
            flags, ours = ours[1]
            ours = ("ok", ours)
            if flags is not None:
                records += len(flags)
                text += sum(flags)
        assert ours == theirs
    assert _stats(fast_filter) == _stats(reference_filter)
    assert sum(_stats(fast_filter)[0].values()) >= 10_000
    # Both sides of each test are reached: most records are vouched for, many are not, and
    # some payloads do not decode at all.
    assert kinds == {"ok", "ProtocolError"}
    assert text > records // 2
    assert records - text > 1000


def test_a_record_with_bin_keys_that_are_not_text_or_deep_nesting_is_not_vouched_for():
    entries = [[EventTime(1, 0), record] for record in (
        {"a": "b"}, {"a": b"x"}, {b"a": "x"}, {"a": [{"b": b""}]}, _maps_with_a_leaf(101), _maps_with_a_leaf(100), {"a": "Ą"},
        {"n": 197})]
    payload = b"".join(packb(entry) for entry in entries)
    _, _, ends = unpack_text_entries(payload)
    assert text_records(payload, ends) == [True, False, False, False, False, True, False, False]


def test_a_payload_with_text_that_is_not_utf8_or_keys_that_are_not_text_is_not_vouched_for():
    for record in ({"a": "\udcff"}, {1: "x"}, {None: "x"}):
        payload = msgpack.packb([1, record], use_bin_type=True, unicode_errors="surrogateescape")
        entries, invalid, ends = unpack_text_entries(payload)
        assert ends is None and (entries, invalid) == unpack_entries(payload)


def test_a_reloading_filter_decides_text_records_as_it_decides_others_drift_log_included():
    generator = EventGenerator(EventFilter.from_schemas().rules, seed=3)
    records = generator.mix(300, invalid_ratio=0.3)
    plain = ReloadingFilter(FilterSettings, drift=DriftLog())
    text = ReloadingFilter(FilterSettings, drift=DriftLog())
    for record in records:
        ours, theirs = text.process_text(dict(record)), plain.process(dict(record))
        assert (ours.outcome, ours.record, ours.reasons) == (theirs.outcome, theirs.record, theirs.reasons)
    ours, theirs = text.drift.to_json(), plain.drift.to_json()
    assert (ours["observed"], ours["actions"].keys()) == (theirs["observed"], theirs["actions"].keys())
    assert text.drift.records == plain.drift.records > 0
    assert _stats(text) == _stats(plain)
