"""Forward-protocol frames built byte for byte the way Fluentd and Fluent Bit put them on the wire.

Independent of atnorm's own codec on purpose: what these build is what real peers send,
so tests that use them check the server against the peers, not against itself.

- Fluentd out_forward: `0x93`, tag, the chunk as **str32** (`0xdb`, even when gzipped),
  options `{"size", "compressed": "text"|"gzip", "chunk": base64 + "\\n"}`; gzip chunks are
  several members back to back (one per buffer append). EventTime as fixext8 `d7 00`.
- Fluent Bit out_forward: 32-bit array/map headers (`0xdd`/`0xdf`) even for small
  containers, EventTime `d7 00`, entries `[[time, {metadata}], record]`, options
  `{chunk, size, fluent_signal}` with the chunk id = base64(sha512(entries)[:16]).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import struct
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import msgpack


class Time:
    """An EventTime to be encoded as ext type 0 (fixext8 by default, ext8 when `ext8`)."""

    def __init__(self, seconds: int, nanoseconds: int = 0, ext8: bool = False) -> None:
        self.seconds, self.nanoseconds, self.ext8 = seconds, nanoseconds, ext8

    def encode(self) -> bytes:
        header = b"\xc7\x08\x00" if self.ext8 else b"\xd7\x00"
        return header + struct.pack(">II", self.seconds, self.nanoseconds)


def mp(value: Any) -> bytes:
    """Plain msgpack with the smallest headers (what msgpack-ruby and msgpack-c emit by default)."""
    if isinstance(value, Time):
        return value.encode()
    if isinstance(value, list):
        return _array_header(len(value)) + b"".join(mp(v) for v in value)
    if isinstance(value, dict):
        return _map_header(len(value)) + b"".join(mp(k) + mp(v) for k, v in value.items())
    return msgpack.packb(value, use_bin_type=True)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x90 | n])
    return b"\xdc" + struct.pack(">H", n) if n < 65536 else b"\xdd" + struct.pack(">I", n)


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes([0x80 | n])
    return b"\xde" + struct.pack(">H", n) if n < 65536 else b"\xdf" + struct.pack(">I", n)


def wide(value: Any) -> bytes:
    """msgpack with 32-bit array and map headers everywhere, as Fluent Bit writes them."""
    if isinstance(value, Time):
        return value.encode()
    if isinstance(value, list):
        return b"\xdd" + struct.pack(">I", len(value)) + b"".join(wide(v) for v in value)
    if isinstance(value, dict):
        return b"\xdf" + struct.pack(">I", len(value)) + b"".join(wide(k) + wide(v) for k, v in value.items())
    return msgpack.packb(value, use_bin_type=True)


def str32(data: bytes) -> bytes:
    """A msgpack str32 holding raw bytes (not necessarily UTF-8)."""
    return b"\xdb" + struct.pack(">I", len(data)) + data


def bin32(data: bytes) -> bytes:
    return b"\xc6" + struct.pack(">I", len(data)) + data


def ack_bytes(chunk_id: Any) -> bytes:
    """What the server must answer, built independently: fixmap(1) "ack" + the same value."""
    return b"\x81\xa3ack" + mp(chunk_id)


# --- Fluentd -------------------------------------------------------------------------------

def fluentd_chunk_id() -> str:
    """Fluentd's chunk option: Base64.encode64(16-byte unique id), which ends in a newline."""
    return base64.encodebytes(os.urandom(16)).decode("ascii")


def fluentd_entries(events: Iterable[Tuple[Time, Dict[str, Any]]]) -> bytes:
    """A Fluentd buffer chunk: `[EventTime, record]` entries back to back."""
    return b"".join(mp([t, record]) for t, record in events)


def fluentd_packed_forward(tag: str, chunk: bytes, *, size: int, chunk_id: Optional[str] = None,
                           compressed: str = "text") -> bytes:
    """out_forward's frame: fixarray(3), tag, str32 chunk, options {size, compressed[, chunk]}."""
    options: Dict[str, Any] = {"size": size, "compressed": compressed}
    if chunk_id is not None:
        options["chunk"] = chunk_id
    return b"\x93" + mp(tag) + str32(chunk) + mp(options)


def gzip_members(parts: Sequence[bytes]) -> bytes:
    """Each part compressed as its own gzip member, concatenated (Fluentd's compressed chunk)."""
    return b"".join(gzip.compress(part) for part in parts)


def fluentd_message(tag: str, time: Any, record: Dict[str, Any], options: Optional[Dict[str, Any]] = None) -> bytes:
    frame = [tag, time, record] + ([options] if options is not None else [])
    return mp(frame)


# --- Fluent Bit ----------------------------------------------------------------------------

def fluentbit_entry(t: Time, record: Dict[str, Any], metadata: Optional[Dict[str, Any]] = None) -> List[Any]:
    return [[t, metadata], record] if metadata is not None else [t, record]


def fluentbit_chunk_id(entries_bytes: bytes) -> str:
    """base64 of the first 16 bytes of the SHA-512 of the entries (same on every retry)."""
    return base64.b64encode(hashlib.sha512(entries_bytes).digest()[:16]).decode("ascii")


def fluentbit_forward(tag: str, entries: Sequence[List[Any]], *, ack: bool = False,
                      signal: int = 0) -> Tuple[bytes, Optional[str]]:
    """Forward mode `[tag, [entries...](, options)]` with 32-bit headers → (frame, chunk id or None)."""
    body = b"".join(wide(entry) for entry in entries)
    chunk_id = fluentbit_chunk_id(body) if ack else None
    parts = wide(tag) + b"\xdd" + struct.pack(">I", len(entries)) + body
    if ack:
        parts += wide({"chunk": chunk_id, "size": len(entries), "fluent_signal": signal})
    return b"\xdd" + struct.pack(">I", 3 if ack else 2) + parts, chunk_id


def fluentbit_compressed(tag: str, entries: Sequence[List[Any]], *, signal: int = 0) -> Tuple[bytes, str]:
    """`Compress gzip`: CompressedPackedForward with a bin payload and an ack request."""
    body = b"".join(wide(entry) for entry in entries)
    chunk_id = fluentbit_chunk_id(body)
    options = {"chunk": chunk_id, "size": len(entries), "compressed": "gzip", "fluent_signal": signal}
    frame = b"\xdd" + struct.pack(">I", 3) + wide(tag) + bin32(gzip.compress(body)) + wide(options)
    return frame, chunk_id


def fluentbit_ping(hostname: str, salt: bytes, nonce: bytes, shared_key: str) -> bytes:
    """PING with the 16-byte salt packed as a msgpack *str* (raw bytes, likely not UTF-8)."""
    digest = hashlib.sha512(salt + hostname.encode() + nonce + shared_key.encode()).hexdigest()
    return (b"\x96" + mp("PING") + mp(hostname) + bytes([0xa0 | len(salt)]) + salt
            + mp(digest) + mp("") + mp(""))
