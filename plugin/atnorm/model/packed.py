"""A decided record packed as msgpack once, where packing it also proves it writable.

A record decoded as text from msgpack and normalized (`EventFilter.process_text`) must be
writable as it is (`encodable.is_encodable`) before it goes on; the relay then packs it
for downstream. Packing it first with msgspec (C) answers most of the first question from
the bytes, and the bytes are the ones the relay sends (`forward.codec.join_packed_entries`):
one pass instead of a Python walk and a pack.

The msgpack headers that code writing packed bytes by hand needs (a bin header before a
payload joined as is, a map header rewritten when pairs are appended) are here too, so
the byte-level knowledge of msgpack's format lives in one module.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple

import msgspec

from .encodable import MAX_DEPTH

# msgspec writes dicts, lists, str, int, float, bool and None as msgpack-python does, byte
# for byte; it refuses a lone surrogate, an integer past 64 bits and types it does not know
# (EventTime, msgpack's Timestamp), and raises then.
_encode = msgspec.msgpack.Encoder().encode

# First bytes that may stand for what is not writable as it is: a map or array header
# (each level of nesting starts with one), a bin header (bytes, and the data of an ExtType,
# which msgspec writes as the array [code, bin]), and float64's header (NaN, infinities).
# The same bytes also occur inside text, lengths and numbers: then the walk decides.
CONTAINER_HEADERS = bytes(range(0x80, 0xA0)) + b"\xdc\xdd\xde\xdf"
BIN_HEADERS = b"\xc4\xc5\xc6"
_FLOAT64_HEADER = b"\xcb"
_OTHER_BYTES = bytes(b for b in range(256) if b not in CONTAINER_HEADERS + BIN_HEADERS + _FLOAT64_HEADER)
# float64 with all exponent bits set: an infinity or a NaN.
_NON_FINITE = re.compile(rb"\xcb[\x7f\xff][\xf0-\xff]").search


def packed_text_record(record: Any) -> Optional[bytes]:
    """`record` packed as msgpack-python packs it, when the bytes prove that it is writable
    as it is (`is_encodable` True); None when they do not tell (then walk it).

    For a record whose keys are all str and that holds no tuple but msgpack's ExtType, as a
    record decoded as text and normalized does: msgspec would write an int key, or a tuple
    of text, without a byte to tell. Proof from the bytes: msgspec packed it (no lone
    surrogate, integers within 64 bits, no type but JSON's and ExtType), no bin header (no
    bytes, no ExtType), no non-finite float, and at most MAX_DEPTH map and array headers
    (so no deeper nesting)."""
    try:
        packed = _encode(record)
    except Exception:  # what msgspec refuses, the walk explains
        return None
    marks = packed.translate(None, _OTHER_BYTES)
    if len(marks) > MAX_DEPTH:
        return None
    others = marks.translate(None, CONTAINER_HEADERS)
    if others and (others.translate(None, _FLOAT64_HEADER) or _NON_FINITE(packed) is not None):
        return None
    return packed


# --- headers, as msgpack-python writes them ---------------------------------------------

def bin_header(size: int) -> bytes:
    """msgpack's smallest bin header for `size` bytes, as msgpack-python writes it."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    if size < 1 << 32:
        return b"\xc6" + size.to_bytes(4, "big")
    raise ValueError("bin object is too large for msgpack")


def map_header(count: int) -> bytes:
    """msgpack's smallest map header for `count` pairs, as msgpack-python writes it."""
    if count < 16:
        return bytes((0x80 | count,))
    if count < 1 << 16:
        return b"\xde" + count.to_bytes(2, "big")
    return b"\xdf" + count.to_bytes(4, "big")


def map_count(data: bytes) -> Tuple[int, int]:
    """(pairs, header bytes) of the msgpack map that `data` starts with; (-1, 0) if none."""
    head = data[0] if data else 0
    if 0x80 <= head <= 0x8F:
        return head & 0x0F, 1
    if head == 0xDE:
        return int.from_bytes(data[1:3], "big"), 3
    if head == 0xDF:
        return int.from_bytes(data[1:5], "big"), 5
    return -1, 0
