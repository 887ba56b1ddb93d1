"""JSON decode through msgspec (C), with the standard library as the reference.

`loads(data)` returns exactly what `json.loads(data)` returns (the same values, types and
key order; the last of duplicate keys wins, in the first one's place) or raises what it
raises: msgspec takes the common case and every input where it could differ goes to
`json.loads`:
- NaN / Infinity literals, numbers beyond a double (``1e400``), lone surrogates
  (``\\ud800``), invalid UTF-8, a BOM and anything else msgspec refuses: it raises, and
  `json.loads` decides (and words the error).
- Nesting: both stop at the interpreter's recursion limit, but msgspec a few levels
  deeper, so a document with many brackets goes to `json.loads` without trying msgspec.

Encoding stays with the standard library, but for one case: msgspec writes NaN as null,
bytes as base64, dates and UUIDs as text and ``1e16`` without its ``+``. Only a value of
JSON's own types without a float, found writable by a walk, is written by msgspec
(`encodable.json_line`): there the two give the same text.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec

# msgspec goes a few levels deeper than the standard library before RecursionError (about
# 1000 levels less the caller's stack); a document with fewer opening brackets than this,
# or shorter than twice as many bytes, is nowhere near either limit.
_BRACKETS = 500
_SHORT = 2 * _BRACKETS

_decode = msgspec.json.Decoder().decode
_json_loads = json.loads
_REFUSED = (msgspec.MsgspecError, ValueError, TypeError, RecursionError, OverflowError)


def _brackets(data: Any) -> int:
    if isinstance(data, str):
        return data.count("[") + data.count("{")
    return data.count(b"[") + data.count(b"{")


def loads(data: Any) -> Any:
    """`json.loads(data)` for str or bytes, decoded by msgspec where that is the same."""
    if len(data) < _SHORT or _brackets(data) < _BRACKETS:
        try:
            return _decode(data)
        except _REFUSED:
            pass  # the reference decides, and words the error
    return _json_loads(data)
