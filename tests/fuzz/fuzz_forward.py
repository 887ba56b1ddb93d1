"""Fuzz target: the forward codec (frames, Forward entries, PackedForward and
CompressedPackedForward payloads, handshake messages) and the relay's routing of what it decodes.

Invariants checked for every input:
- a byte stream gives frames or a ProtocolError, never another exception;
- every entry a frame holds becomes exactly one Entry (none dropped, none made up), and
  `invalid` counts the ones with a problem; a usable entry has a time in [0, 2**32) and a
  map record, an unusable one a problem with a known rule;
- routing the chunk through the filter puts every entry on exactly one route, counted
  once, and every routed batch packs for the downstream as it is.
"""

from __future__ import annotations

import sys
import zlib
from typing import Any, List

import msgpack
from fuzzlib import Bytes, check_counted, counts, event_filter, value

from atnorm.forward.codec import (
    EventTime,
    FrameReader,
    ProtocolError,
    ack_chunk_id,
    check_ping,
    check_pong,
    inflate_zstd,
    pack_entries,
    parse_frame,
    parse_helo,
    unpack_entries,
)
from atnorm.model.verdict import ACCEPTED, PASSED, REJECTED
from atnorm.relay.routing import Router

MAX_FRAME = 1 << 16
MAX_INFLATED = 1 << 18
PROBLEM_RULES = {"entry.shape", "entry.time", "entry.record"}
_ROUTER = {}


def router() -> Router:
    if "router" not in _ROUTER:
        _ROUTER["router"] = Router(event_filter().process, time_source="event")
    return _ROUTER["router"]


def _items_in(frame: List[Any], inflated: Any) -> int:
    """How many entries the frame holds, counted independently of parse_frame."""
    body = frame[1]
    if type(body) is list:
        return len(body)
    if type(body) in (str, bytes):
        # Skipped, not decoded: an object Python cannot hold (a map keyed by a map) counts too.
        unpacker = msgpack.Unpacker(max_buffer_size=max(len(inflated), 1))
        unpacker.feed(inflated)
        count = 0
        while unpacker.tell() < len(inflated):
            unpacker.skip()
            count += 1
        return count
    return 1


def _payload(frame: List[Any]) -> bytes:
    body = frame[1]
    raw = body if type(body) is bytes else body.encode("utf-8", "surrogateescape")
    options = frame[2] if len(frame) > 2 and type(frame[2]) is dict else {}
    if options.get("compressed") == "zstd":
        return bytes(inflate_zstd(raw, MAX_INFLATED))
    if options.get("compressed") == "gzip":
        out, rest = b"", raw
        while rest:
            member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += member.decompress(rest)
            rest = member.unused_data
        return out
    return raw


def check_chunk(frame: Any, raw: bytes) -> None:
    try:
        chunk = parse_frame(frame, max_decompressed_size=MAX_INFLATED, peer="fuzz", raw=raw)
    except ProtocolError as exc:
        assert exc.kind, exc
        return
    body = frame[1]
    expected = len(body) if type(body) is list else (1 if type(body) not in (str, bytes) else None)
    if expected is None:
        expected = _items_in(frame, _payload(frame))
    assert len(chunk.entries) == expected, (len(chunk.entries), expected)
    problems = [entry for entry in chunk.entries if entry.problem is not None]
    assert chunk.invalid == len(problems), (chunk.invalid, len(problems))
    for entry in chunk.entries:
        if entry.problem is not None:
            assert entry.problem.rule in PROBLEM_RULES, entry.problem
            continue
        assert type(entry.record) is dict, entry
        when = entry.time
        seconds = when.seconds if type(when) is EventTime else when
        assert type(when) in (int, float, EventTime), when
        assert 0 <= seconds < 2**32, f"entry time {when!r} outside [0, 2**32) was accepted"
    # What the relay sends on is the entries packed again: they decode to as many entries.
    again, _ = unpack_entries(pack_entries(chunk.entries))
    assert len(again) == len(chunk.entries)
    route(chunk.tag, chunk.entries)


def route(tag: str, entries: List[Any]) -> None:
    before = counts(event_filter())
    batches = router().route(tag, entries)
    outcomes: List[str] = []
    for batch in batches:
        assert batch.route in (ACCEPTED, REJECTED, PASSED), batch.route
        assert batch.entries, "an empty batch"
        outcomes += [batch.route] * len(batch.entries)
        payload = pack_entries(batch.entries)  # the downstream gets exactly these bytes
        assert len(unpack_entries(payload)[0]) == len(batch.entries)
    assert len(outcomes) == len(entries), (len(outcomes), len(entries))
    check_counted(before, counts(event_filter()), outcomes)


def _frames(data: bytes) -> List[Any]:
    """Feeds the stream in pieces the first byte sizes, as a socket would deliver it."""
    src = Bytes(data)
    step = 1 + src.below(64) * 37
    reader = FrameReader(MAX_FRAME, keep_frames=True)
    out = []
    stream = src.rest()
    try:
        for start in range(0, len(stream), step):
            reader.feed(stream[start:start + step])
            for frame in reader:
                out.append((frame, bytes(reader.last_frame or b"")))
    except ProtocolError as exc:
        assert exc.kind in ("oversize", "malformed"), exc.kind
    return out


def test_one_input(data: bytes) -> None:
    if data[:1] == b"\xc1":  # 0xc1 is never valid msgpack: the rest builds a frame instead
        src = Bytes(data[1:])
        entries = [[value(src) if src.below(4) == 0 else src.below(2**16) * (1 + src.below(70000)),
                    value(src)] for _ in range(src.below(5))]
        frame = [value(src) if src.below(8) == 0 else "fuzz.tag", entries,
                 {"chunk": "c"} if src.below(2) else None]
        check_chunk(frame, b"")
        return
    for frame, raw in _frames(data):
        check_handshake(frame)
        if type(frame) is list and len(frame) >= 2:
            check_chunk(frame, raw)


def check_handshake(message: Any) -> None:
    """The server's and the client's handshake checks decide any message, never raise."""
    try:
        helo = parse_helo(message)
        assert type(helo.nonce) is bytes and type(helo.auth_salt) is bytes
    except ProtocolError as exc:
        assert exc.kind == "auth"
    ping = check_ping(message, nonce=b"n" * 16, shared_key="s3cret", auth_salt=b"a" * 16, users={"u": "p"})
    assert isinstance(ping.ok, bool) and (ping.ok or ping.reason)
    pong = check_pong(message, shared_key_salt=b"s" * 16, nonce=b"n" * 16, shared_key="s3cret")
    assert isinstance(pong.ok, bool) and (pong.ok or pong.reason)
    ack_chunk_id(message)


def main(argv: list) -> None:
    from fuzz_all import run_target
    run_target(test_one_input, "forward", argv)


if __name__ == "__main__":
    main(sys.argv)
