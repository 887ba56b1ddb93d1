"""Verbatim chunks: a PackedForward payload whose entries can all go on byte for byte is
scanned, not decoded, and handed on as received.

The scan (`scan_packed`) must agree with the decoder (`unpack_entries`) on every payload:
it vouches for a payload only when every entry would take the decoder's inline path
(`[time, map]`, time kept as it is) and the payload decodes without error; then decoding
the chunk later gives exactly the entries decoding it at once gives. Generated payloads mix
clean entries with every case that is not: times 0 / nil / float / bool / out of range,
EventTime with seconds 0 or nanoseconds out of range, the metadata form, records that are
not maps, entries that are not pairs, bin strings, ext types, truncation, trailing bytes.
Then a pass-through relay is run between a real sender and a real receiver on loopback.
"""

from __future__ import annotations

import gzip
import random
import struct
import time
from typing import Any, Dict, List, Tuple

import msgpack
import pytest

from atnorm.forward.codec import (
    Entry,
    EventTime,
    ProtocolError,
    _ext_hook,
    pack_entries,
    packed_forward_frame,
    parse_frame,
    scan_packed,
    unpack_entries,
    unpack_text_entries,
    unpackb,
)
from forward_frames import Time, mp, wide
from forward_receiver import EventTime as ReceivedTime
from forward_receiver import ForwardReceiver
from support import forward_sender, load_event, relay_settings, run

NANOSECONDS = 1_000_000_000


# --- generated payloads ---------------------------------------------------------------------

def _record(rng: random.Random) -> Dict[str, Any]:
    record: Dict[str, Any] = {"action": rng.choice(["iam.login", "is.instance.create", "x"]),
                              "n": rng.randrange(0, 1 << 20), "nested": {"list": [1, "two", 3.5]}}
    extra = rng.randrange(30)  # mostly plain records, so that whole payloads stay clean
    if extra == 0:
        record["blob"] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))  # bin, maybe 0xff
    elif extra == 1:
        record["minus_one"] = -1  # packs as 0xff
    elif extra == 2:
        record["ext"] = msgpack.ExtType(rng.choice([1, 5, 42]), b"data")
    elif extra == 3:
        record["stamp"] = msgpack.Timestamp(1700000000, 5)  # a valid ext -1 inside a record
    elif extra == 4:
        record["float"] = rng.random() * 1e6
    elif extra == 5:
        record["text"] = "naïve – ünïcode ✓"
    return record


def _clean_time(rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return Time(rng.randrange(1, 1 << 32), rng.randrange(NANOSECONDS)).encode()
    if choice == 1:
        return Time(rng.randrange(1, 1 << 32), rng.randrange(NANOSECONDS), ext8=True).encode()
    if choice == 2:
        return mp(rng.randrange(1, 1 << 32))
    return b"\xce" + struct.pack(">I", rng.randrange(1, 128))  # a small int written wide


# Entry times the decoder does not keep as they are (it replaces them or rejects the entry).
UNKEPT_TIMES = [
    mp(0), mp(None), mp(1.5), mp(0.0), mp(True), mp(-5), mp(1 << 32), mp("1700000000"),
    Time(0, 5).encode(), Time(1700000000, NANOSECONDS).encode(), Time(1700000000, 0xFFFFFFFF).encode(),
    msgpack.packb(msgpack.ExtType(0, b"\x00\x01")),  # EventTime of the wrong size
    msgpack.packb(msgpack.ExtType(7, b"12345678")),
    msgpack.packb(msgpack.Timestamp(1700000000, 0)),
    mp([1, 2]), mp({"t": 1}),
]


def _unclean_entry(rng: random.Random) -> bytes:
    record = mp(_record(rng))
    choice = rng.randrange(7)
    if choice == 6:  # a record map keyed by a map or an array: valid msgpack Python cannot hold
        key = rng.choice([mp({"k": 1}), mp([1, 2]), b"\x81" + mp([1]) + mp(2)])
        return b"\x92" + _clean_time(rng) + b"\x82" + mp("a") + mp(1) + key + mp("v")
    if choice == 0:
        return b"\x92" + rng.choice(UNKEPT_TIMES) + record
    if choice == 1:  # Fluent Bit's metadata form
        return b"\x92" + b"\x92" + _clean_time(rng) + mp({"m": 1}) + record
    if choice == 2:  # a record that is not a map
        return b"\x92" + _clean_time(rng) + mp(rng.choice(["text", [1, 2], None, 7, b"bin"]))
    if choice == 3:  # not a pair
        return rng.choice([mp({"a": 1}), mp(5), mp("x"), mp(None), b"\x93" + _clean_time(rng) + record + mp(1),
                           b"\x91" + _clean_time(rng)])
    if choice == 4:  # a record map keyed by an int: decodes fine, still a map
        return b"\x92" + _clean_time(rng) + mp({1: "one", "k": "v"})
    return b"\x92" + _clean_time(rng) + wide(_record(rng))  # clean after all, written wide


def _clean_entry(rng: random.Random) -> bytes:
    encode = wide if rng.randrange(3) == 0 else mp
    head = b"\xdc\x00\x02" if rng.randrange(10) == 0 else b"\x92"  # array16 of 2 is a pair too
    return head + _clean_time(rng) + encode(_record(rng))


def _payload(rng: random.Random) -> bytes:
    entries = rng.randrange(1, 40)
    unclean_share = rng.choice([0.0, 0.0, 0.02, 0.2])
    body = b"".join(_unclean_entry(rng) if rng.random() < unclean_share else _clean_entry(rng)
                    for _ in range(entries))
    damage = rng.randrange(10)
    if damage == 0:
        body = body[: rng.randrange(len(body))]  # truncated
    elif damage == 1:
        body += rng.choice([b"\xc1", b"\x92", b"\x01", b"\xd7\x00", mp({"x": 1})])  # trailing bytes
    elif damage == 2:
        position = rng.randrange(len(body))  # one byte changed anywhere
        body = body[:position] + bytes([rng.randrange(256)]) + body[position + 1:]
    return body


def _kept_as_is(item: Any) -> bool:
    """The decoder's inline path, restated: [time, map], time an EventTime with seconds != 0
    and nanoseconds < 1e9, or an int in (0, 2**32)."""
    if type(item) is not list or len(item) != 2 or type(item[1]) is not dict:
        return False
    stamp = item[0]
    if type(stamp) is EventTime:
        return stamp.seconds != 0 and stamp.nanoseconds < NANOSECONDS
    return type(stamp) is int and 0 < stamp < 1 << 32


def _feed(payload: bytes) -> msgpack.Unpacker:
    unpacker = msgpack.Unpacker(ext_hook=_ext_hook, raw=False, unicode_errors="surrogateescape",
                                strict_map_key=False)
    unpacker.feed(payload)
    return unpacker


def _skipped_objects(payload: bytes) -> int:
    unpacker = _feed(payload)
    count = 0
    while unpacker.tell() < len(payload):
        unpacker.skip()
        count += 1
    return count


def _records_hold_0xff(payload: bytes) -> bool:
    """Whether some entry's record holds the byte 0xff (the scan then lets the decoder decide)."""
    unpacker = _feed(payload)
    while unpacker.tell() < len(payload):
        unpacker.read_array_header()
        unpacker.skip()
        start = unpacker.tell()
        unpacker.skip()
        if b"\xff" in payload[start:unpacker.tell()]:
            return True
    return False


def _unholdable(entries: List[Entry]) -> int:
    """How many entries hold a map keyed by a map or an array (kept as their bytes)."""
    return sum(entry.problem is not None and entry.problem.raw is not None for entry in entries)


def _eager(payload: bytes) -> Tuple[str, Any]:
    try:
        entries, invalid = unpack_entries(payload)
    except ProtocolError as exc:
        return "error", (exc.kind, str(exc))
    return "ok", (entries, invalid)


def test_the_scan_vouches_for_a_payload_exactly_when_the_decoder_keeps_every_entry_as_it_is():
    rng = random.Random(20240501)
    totals = {"entries": 0, "verbatim": 0, "decoded": 0, "errors": 0, "0xff": 0, "unholdable": 0}
    while totals["entries"] < 12_000 or totals["errors"] < 300:
        payload = _payload(rng)
        verdict = scan_packed(payload)
        outcome, value = _eager(payload)
        if outcome == "error":
            totals["errors"] += 1
            kind, message = value
            assert kind == "malformed"
            assert verdict is None, payload
            continue
        entries, invalid = value
        totals["entries"] += len(entries)
        if _unholdable(entries):
            # A map keyed by a map or an array: valid msgpack, which skipping cannot tell
            # from any other; decoding makes its entry a rejection (see the docstring).
            totals["unholdable"] += 1
            assert verdict is None or verdict == _skipped_objects(payload)
            continue
        items = list(_feed(payload))
        every_kept = bool(items) and all(_kept_as_is(item) for item in items)
        holds_0xff = every_kept and _records_hold_0xff(payload)
        totals["0xff"] += holds_0xff
        if every_kept and not holds_0xff:
            assert verdict == len(entries), payload
            assert invalid == 0
            totals["verbatim"] += 1
        else:
            assert verdict is None, payload
            totals["decoded"] += 1
    # The corpus really mixes the cases it is meant to.
    assert totals["verbatim"] > 100 and totals["decoded"] > 100 and totals["0xff"] > 10
    assert totals["unholdable"] > 100


# Maps holding the byte 0xff: valid ones, and a Timestamp (ext -1) of a length it cannot have,
# which only decoding refuses.
_HOLDING_0XFF = [mp({"n": -1}), mp({"n": 255}), mp({"s": "x" * 255}), mp({"t": msgpack.Timestamp(1, 2)}),
                 b"\x81" + mp("bad") + b"\xd4\xff\x00"]


def _metadata_entry(rng: random.Random) -> bytes:
    """Fluent Bit's `[[time, metadata], record]`: mostly one a worker may decode later, else
    one with something the scan must not vouch for."""
    record = mp(_record(rng))
    choice = rng.randrange(12)
    if choice == 0:
        return b"\x92" + b"\x92" + rng.choice(UNKEPT_TIMES) + mp({"m": 1}) + record
    if choice == 1:  # metadata that is not a map
        return b"\x92" + b"\x92" + _clean_time(rng) + mp(rng.choice([None, [1], "m", 5])) + record
    if choice == 2:  # a head of 1 or 3 elements
        return b"\x92" + rng.choice([b"\x91" + _clean_time(rng), b"\x93" + _clean_time(rng) + mp({}) + mp(1)]) + record
    if choice == 3:  # the byte 0xff in the metadata: -1, 255, a Timestamp (ext -1), one that is not
        return b"\x92" + b"\x92" + _clean_time(rng) + rng.choice(_HOLDING_0XFF) + record
    if choice == 4:  # a record that is not a map
        return b"\x92" + b"\x92" + _clean_time(rng) + mp({"m": 1}) + mp(rng.choice(["text", None, 7]))
    head = b"\xdc\x00\x02" if rng.randrange(5) == 0 else b"\x92"
    metadata = rng.choice([{}, {"m": 1}, {"trace": "abc", "n": [1, 2]}, {1: "int key"}])
    return b"\x92" + head + _clean_time(rng) + rng.choice([mp, wide])(metadata) + record


def _holding_0xff_entry(rng: random.Random) -> bytes:
    return b"\x92" + _clean_time(rng) + rng.choice(_HOLDING_0XFF)


def _metadata_payload(rng: random.Random) -> bytes:
    body = b"".join(_metadata_entry(rng) if rng.random() < 0.3 else
                    (_unclean_entry(rng) if rng.random() < 0.01 else
                     _holding_0xff_entry(rng) if rng.random() < 0.03 else _clean_entry(rng))
                    for _ in range(rng.randrange(1, 20)))
    damage = rng.randrange(12)
    if damage == 0:
        body = body[: rng.randrange(len(body))]
    elif damage == 1:
        body += rng.choice([b"\xc1", b"\x92", b"\x92\x92", b"\xd7\x00"])
    return body


def _kept_with_metadata(item: Any) -> bool:
    """What a worker may decode later: kept as is, or the metadata form of it."""
    if type(item) is list and len(item) == 2 and type(item[0]) is list:
        head = item[0]
        return len(head) == 2 and type(head[1]) is dict and _kept_as_is([head[0], item[1]])
    return _kept_as_is(item)


def test_scanned_for_a_worker_a_payload_is_vouched_for_exactly_when_it_decodes_as_is():
    """For a handler that decodes elsewhere, the scan also takes the metadata form, and
    records or metadata holding the byte 0xff once they decode alone: then exactly every
    payload that decodes with every entry kept as it is."""
    rng = random.Random(20251202)
    totals = {"verbatim": 0, "with_metadata": 0, "with_0xff": 0, "decoded": 0, "errors": 0, "unholdable": 0}
    for _ in range(3000):
        payload = _metadata_payload(rng)
        verdict = scan_packed(payload, decoded_elsewhere=True)
        outcome, value = _eager(payload)
        if outcome == "error":
            totals["errors"] += 1
            assert verdict is None, payload
            continue
        entries, invalid = value
        if _unholdable(entries):  # the worker decodes it as this process would: either may
            totals["unholdable"] += 1
            assert verdict is None or verdict == len(entries), payload
            continue
        items = list(_feed(payload))
        if bool(items) and all(_kept_with_metadata(item) for item in items):
            assert verdict == len(entries), payload
            assert invalid == 0
            totals["verbatim"] += 1
            if any(entry.metadata is not None for entry in entries):
                totals["with_metadata"] += 1
                assert scan_packed(payload) is None  # not for a relay that hands it on as it is
            if b"\xff" in payload:
                totals["with_0xff"] += 1
        else:
            assert verdict is None, payload
            totals["decoded"] += 1
    assert totals["with_metadata"] > 300 and totals["with_0xff"] > 100
    assert totals["decoded"] > 300 and totals["errors"] > 100 and totals["unholdable"] > 10


@pytest.mark.parametrize("compressed", [None, "gzip"])
@pytest.mark.parametrize("metadata", [False, True])
def test_a_verbatim_chunk_decodes_later_to_exactly_the_entries_of_decoding_at_once(compressed, metadata):
    rng = random.Random((7 if compressed else 8) + (10 if metadata else 0))
    started = int(time.time())
    verbatim = 0
    for n in range(400):
        payload = _metadata_payload(rng) if metadata else _payload(rng)
        body = gzip.compress(payload) if compressed else payload
        frame = unpackb(packed_forward_frame("audit.at", body, chunk_id=f"c{n}", compressed=compressed))
        try:
            eager = parse_frame(frame, max_decompressed_size=1 << 20)
        except ProtocolError as exc:
            with pytest.raises(ProtocolError) as raised:
                parse_frame(unpackb(packed_forward_frame("audit.at", body, chunk_id=f"c{n}", compressed=compressed)),
                            max_decompressed_size=1 << 20, scan=True, decoded_elsewhere=metadata)
            assert (raised.value.kind, str(raised.value)) == (exc.kind, str(exc))
            continue
        lazy = parse_frame(unpackb(packed_forward_frame("audit.at", body, chunk_id=f"c{n}", compressed=compressed)),
                           max_decompressed_size=1 << 20, scan=True, decoded_elsewhere=metadata)
        # A verbatim chunk counts its unusable entries once decoded: only an unholdable
        # one (a map keyed by a map or an array) can be in one, as skipping cannot tell it.
        unholdable = _unholdable(eager.entries)
        assert lazy.invalid == (eager.invalid - unholdable if lazy.verbatim is not None else eager.invalid)
        assert (lazy.tag, lazy.chunk_id, lazy.mode, lazy.digest, lazy.resend_key) == \
               (eager.tag, eager.chunk_id, eager.mode, eager.digest, eager.resend_key)
        assert lazy.entry_count == eager.entry_count == len(eager.entries)
        if lazy.verbatim is not None:
            verbatim += 1
            assert lazy.verbatim == payload and lazy.decoded is None
            assert _arrival_times_marked(lazy.entries, started) == _arrival_times_marked(eager.entries, started)
        else:  # decoded at once, as without the scan; an arrival time is the time of decoding
            assert _arrival_times_marked(lazy.entries, started) == _arrival_times_marked(eager.entries, started)
    assert verbatim > 50


def _arrival_times_marked(entries: List[Entry], started: int) -> List[Entry]:
    return [entry._replace(time="arrival") if type(entry.time) is EventTime and entry.time.seconds >= started
            else entry for entry in entries]


def test_a_payload_cut_short_anywhere_inside_an_entry_is_malformed_not_one_entry_short():
    payload = mp([1700000000, {"a": 1}]) + b"\x92" + Time(1700000001, 5).encode() + mp({"b": "xyz"})
    first_entry = len(mp([1700000000, {"a": 1}]))
    for cut in range(first_entry + 1, len(payload)):
        assert scan_packed(payload[:cut]) is None
        with pytest.raises(ProtocolError) as raised:
            unpack_entries(payload[:cut])
        assert raised.value.kind == "malformed", cut
    assert len(unpack_entries(payload[:first_entry])[0]) == 1 and scan_packed(payload) == 2


def test_message_and_forward_modes_are_never_verbatim():
    record = load_event("vsi-provision.json")
    forward = parse_frame(["t", [[1700000000, record]]], max_decompressed_size=1 << 20, scan=True)
    message = parse_frame(["t", 1700000000, record], max_decompressed_size=1 << 20, scan=True)
    assert forward.verbatim is None and message.verbatim is None
    assert forward.entry_count == message.entry_count == 1


def test_a_map_keyed_by_a_map_goes_on_verbatim_and_is_an_unusable_entry_where_it_is_decoded():
    # Valid msgpack that Python cannot hold as a dict: skipping a record does not build it.
    payload = b"\x92" + mp(1700000000) + b"\x81\x81\xa1k\xa1v\xa1x"
    assert scan_packed(payload) == 1
    chunk = parse_frame(["t", payload], max_decompressed_size=1 << 20, scan=True)
    assert chunk.verbatim == payload
    [entry] = chunk.entries
    assert entry.record == [1700000000, [[{"k": "v"}, "x"]]]  # the map as its [key, value] pairs
    assert entry.problem is not None
    assert entry.problem[:2] == ("entry.record", "/1")
    assert "keyed by a map or an array" in entry.problem.message
    assert entry.problem.raw == payload


def test_an_unholdable_entry_costs_itself_only_and_packs_again_as_its_bytes():
    good = mp([1700000000, {"a": 1}])
    nested = b"\x92" + mp(1700000001) + b"\x82" + mp("ok") + mp(1) + mp("in") + b"\x81" + mp([1, 2]) + mp(3)
    metadata = b"\x92\x92" + mp(1700000002) + b"\x81" + mp({"m": 1}) + mp(2) + mp({"b": 2})
    payload = good + nested + good + metadata
    entries, invalid = unpack_entries(payload)
    assert invalid == 2 and len(entries) == 4
    assert entries[0] == entries[2] == Entry(1700000000, {"a": 1})
    assert entries[1].record == [1700000001, {"ok": 1, "in": [[[1, 2], 3]]}]
    assert entries[1].problem is not None and entries[1].problem[:2] == ("entry.record", "/1/in")
    assert entries[3].problem is not None and entries[3].problem[:2] == ("entry.shape", "/0/1")
    assert [entry.problem.raw for entry in entries if entry.problem] == [nested, metadata]
    # Handed to a worker (packed again), each decodes to what it was.
    assert pack_entries(entries) == payload
    again, invalid_again = unpack_entries(pack_entries(entries))
    assert invalid_again == 2
    assert [(e.record, e.problem) for e in again] == [(e.record, e.problem) for e in entries]
    # The text decoder's first attempt refuses the keys, and the payload is decoded as always.
    text_entries, _, ends = unpack_text_entries(payload)
    assert ends is None and [(e.record, e.problem) for e in text_entries] == [(e.record, e.problem) for e in entries]


# --- a pass-through relay on loopback -------------------------------------------------------

def _passthrough(tmp_path: Any, receiver_port: int, *extra: str) -> Any:
    from atnorm.relay.service import Relay

    return Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver_port}",
                                "--data-dir", str(tmp_path), "--filter", "off", *extra), None)


def _through_passthrough(tmp_path, payload: bytes, count: int, **sender_options: Any) -> Any:
    """Sends one PackedForward chunk of `count` entries through a pass-through relay and
    waits for all of them downstream; returns the stopped relay and the receiver."""
    async def scenario() -> Any:
        async with ForwardReceiver() as receiver:
            relay = _passthrough(tmp_path, receiver.port)
            await relay.start()
            try:
                sender = forward_sender([("127.0.0.1", relay.server.port)], **sender_options)
                assert await sender.send("audit.at", payload, count)
                await sender.close()
                await receiver.wait_for(lambda: len(receiver.events) == count)
            finally:
                await relay.stop()
        return relay, receiver

    return run(scenario())


def test_a_pass_through_relay_forwards_a_clean_payload_byte_for_byte(tmp_path):
    event = load_event("vsi-provision.json")
    other = load_event("platform-log-not-an-event.json")
    # Fluent Bit's wide headers: packing the decoded entries again would give other bytes.
    payload = b"".join(b"\x92" + Time(1700000000 + n, n).encode() + wide(record)
                       for n, record in enumerate([event, other, event]))
    assert scan_packed(payload) == 3

    relay, receiver = _through_passthrough(tmp_path, payload, 3, compress="gzip")
    assert relay.server.verbatim_chunks
    [frame] = receiver.frames
    assert frame.tag == "audit.at" and frame.payload == payload
    counts = relay.filter_stats.snapshot()
    assert (counts["received"], counts["passed"], counts["rejected"]) == (3, 3, 0)
    assert relay.relay_stats.records_received == 3


def test_a_pass_through_relay_decodes_a_payload_it_cannot_hand_on_as_it_is(tmp_path):
    event = load_event("vsi-provision.json")
    # A zero time becomes the arrival time and Fluent Bit's metadata goes (plain entry form):
    # both need the entries decoded; the nil record is rejected.
    payload = (b"\x92" + Time(1700000000, 1).encode() + wide(event)
               + b"\x92" + mp(0) + mp(event)
               + b"\x92" + b"\x92" + Time(1700000002, 0).encode() + mp({"trace": 1}) + mp(event)
               + b"\x92" + mp(1700000003) + mp(None))
    assert scan_packed(payload) is None

    relay, receiver = _through_passthrough(tmp_path, payload, 4)
    passed = [(t, r) for tag, t, r in receiver.events if tag == "audit.at"]
    rejected = [r for tag, t, r in receiver.events if tag == "audit.at.rejected"]
    assert [t for t, _ in passed][0] == ReceivedTime(1700000000, 1)
    assert [t for t, _ in passed][2] == ReceivedTime(1700000002, 0)
    assert all(r == event for _, r in passed) and len(passed) == 3
    assert isinstance(passed[1][0], ReceivedTime) and passed[1][0].seconds > 1700000003  # arrival time
    assert [r["reasons"][0]["rule"] for r in rejected] == ["entry.record"]
    counts = relay.filter_stats.snapshot()
    assert (counts["received"], counts["passed"], counts["rejected"]) == (4, 3, 1)


def test_only_relays_that_hand_payloads_on_undecoded_scan_them(tmp_path):
    from atnorm.core.pipeline import EventFilter
    from atnorm.relay.service import Relay

    filtering = Relay(relay_settings("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)),
                      EventFilter.from_schemas())
    passing = Relay(relay_settings("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--filter", "off"),
                    None)
    assert not filtering.server.verbatim_chunks
    assert passing.server.verbatim_chunks and not passing.server.verbatim_decoded_elsewhere


def test_filter_workers_get_verbatim_payloads_undecoded_and_every_record_leaves_once(tmp_path):
    import argparse

    from atnorm.cli.serve import configure_parser
    from atnorm.core.pipeline import EventFilter
    from atnorm.core.settings import resolve_filter_options
    from atnorm.core.stats import FilterStats
    from atnorm.relay.service import Relay

    valid = load_event("vsi-provision.json")
    invalid = load_event("vsi-provision.json")
    del invalid["outcome"]
    other = load_event("platform-log-not-an-event.json")
    clean = [b"".join(b"\x92" + Time(1700000000 + n).encode() + mp(record) for record in (valid, invalid, other))
             for n in range(3)]
    # Fluent Bit's metadata form: decoded by the worker too, and sent on plain.
    clean.append(b"".join(b"\x92" + b"\x92" + Time(1700000010 + n).encode() + mp({"trace": n}) + mp(record)
                          for n, record in enumerate((valid, invalid, other))))
    # Records holding the byte 0xff (here -1): they decode, so the worker takes them undecoded.
    clean.append(b"\x92" + Time(1700000020).encode() + mp(valid)
                 + b"\x92" + Time(1700000021).encode() + mp(dict(other, level=-1)))
    unclean = b"\x92" + mp(0) + mp(valid) + b"\x92" + mp(1700000009) + mp("not a map")
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    handled: List[Any] = []

    async def scenario() -> Any:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                         "--data-dir", str(tmp_path), "--filter-workers", "2"),
                          EventFilter.from_schemas(stats=FilterStats()),
                          filter_options=resolve_filter_options(parser.parse_args([])))
            handle = relay.server.handler

            async def watched(chunk: Any) -> bool:
                delivered = await handle(chunk)
                handled.append((chunk.verbatim is not None, chunk.decoded is None, delivered))
                return delivered

            relay.server.handler = watched
            await relay.start()
            try:
                assert relay.server.verbatim_chunks and relay.server.verbatim_decoded_elsewhere
                sender = forward_sender([("127.0.0.1", relay.server.port)])
                for payload in clean:
                    assert await sender.send("audit.at", payload, len(unpack_entries(payload)[0]))
                assert await sender.send("audit.at", unclean, 2)
                await sender.close()
                await receiver.wait_for(lambda: len(receiver.events) == 16)
            finally:
                await relay.stop()
        return relay, receiver

    relay, receiver = run(scenario(), 300)
    # The relay's process never decoded a verbatim chunk: its workers did.
    assert sorted(handled) == [(False, False, True)] + [(True, True, True)] * 5
    tags = [tag for tag, _, _ in receiver.events]
    assert len(receiver.events) == 16
    assert tags.count("audit.at.rejected") == 5 and tags.count("audit.at") == 11
    assert not any(isinstance(head, list) for frame in receiver.frames for head, _ in frame.entries)
    counts = relay.filter_stats.snapshot()
    assert (counts["received"], counts["accepted"], counts["rejected"], counts["passed"]) == (16, 6, 5, 5)
