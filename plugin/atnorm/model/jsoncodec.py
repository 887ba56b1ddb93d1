"""JSON decode / encode through msgspec (C), with the standard library as the reference.

`loads` and `dumps` give exactly what `json.loads` and a compact strict
`json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)` give, value
for value and byte for byte, or raise what they raise: msgspec takes the common case and
every input where it could differ goes to the standard library.

Where msgspec differs, and what happens:
- NaN / Infinity literals, numbers beyond a double (``1e400``), lone surrogates (``\\ud800``),
  invalid UTF-8 and anything else it refuses: it raises, and `json.loads` decides.
- Nesting: both stop at the interpreter's recursion limit, but not at the same depth, so
  documents with many brackets go to `json.loads` without trying msgspec.
- Encoding: msgspec writes NaN as null, bytes as base64, datetimes and UUIDs as text,
  floats without the ``+`` in ``1e+16``, and raises on bool or None keys. So each encoded
  line is read back; unless it decodes to a value equal to the input with every float
  written as Python's ``repr`` writes it, the standard encoder writes it instead.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Optional

import msgspec

# msgspec goes a few levels deeper than the standard library before RecursionError
# (about 1000 levels less the caller's stack); a document with fewer opening brackets than
# this, or shorter than twice as many bytes, is nowhere near either limit.
_BRACKETS = 500
_SHORT = 2 * _BRACKETS

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode
_json_loads = json.loads
_MsgspecError = (msgspec.MsgspecError, ValueError, TypeError, RecursionError, OverflowError)


def _brackets(data: Any) -> int:
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    return data.count(b"[") + data.count(b"{")


def loads(data: Any) -> Any:
    """`json.loads(data)` for str or bytes, decoded by msgspec when that is the same."""
    if len(data) < _SHORT or _brackets(data) < _BRACKETS:
        try:
            return _decode(data)
        except _MsgspecError:
            pass  # the reference decides, and words the error
    return _json_loads(data)


class _NotAsRepr(Exception):
    """A float that msgspec wrote otherwise than `float.__repr__` does."""


def _float_as_repr(literal: str) -> float:
    value = float(literal)
    if repr(value) != literal:
        raise _NotAsRepr(literal)
    return value


_read_back = msgspec.json.Decoder(float_hook=_float_as_repr).decode


class Dumps:
    """A compact strict JSON encoder: `Dumps().encode(value)` is the `str` the reference
    encoder (compact separators, ``ensure_ascii=False``, ``allow_nan=False``, `default`)
    returns. Methods, not ``__call__``: calling an instance costs an extra recursion level,
    and the reference must hit its nesting limit at the same depth as before."""

    def __init__(self, default: Optional[Callable[[Any], Any]] = None) -> None:
        self._reference = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                           allow_nan=False, default=default).encode

    def encode(self, value: Any) -> str:
        encoded = self.fast(value)
        return self._reference(value) if encoded is None else encoded.decode("utf-8")

    def to_bytes(self, value: Any) -> bytes:
        """UTF-8 bytes of the line; a lone surrogate raises UnicodeEncodeError, as the
        reference's ``encode(...).encode("utf-8")`` does."""
        encoded = self.fast(value)
        return self._reference(value).encode("utf-8") if encoded is None else encoded

    @staticmethod
    def fast(value: Any) -> Optional[bytes]:
        """The line as msgspec writes it when that is the reference's line, else None."""
        try:
            encoded = _encode(value)
            # Deep nesting: the reference may stop where msgspec does not.
            if len(encoded) >= _SHORT and _brackets(encoded) >= _BRACKETS:
                return None
            same = _read_back(encoded) == value
        except Exception:  # any refusal or difference: the reference decides
            return None
        return encoded if same else None
