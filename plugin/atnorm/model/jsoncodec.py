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

Encoding stays with the standard library (`compact_json`: its C encoder made once), but
for one case: msgspec writes NaN as null,
bytes as base64, dates and UUIDs as text and ``1e16`` without its ``+``. Only a value of
JSON's own types without a float, found writable by a walk, is written by msgspec
(`encodable.json_line`): there the two give the same text.
"""

from __future__ import annotations

import json
from json import encoder as json_encoder
from typing import Any, Callable, Tuple

import msgspec

# Deeper than this, a record is not read at all: it is rejected before any decision
# (normalize.as_text). Below msgpack's 511 levels and Python's recursion limit (about 1000),
# and a bound of its own: compiled (setup.py), the walks recurse in C, where no recursion
# limit would stop them. msgspec goes a few levels deeper than the standard library before
# RecursionError (about 1000 levels less the caller's stack): a document `within_nesting`
# is nowhere near either limit.
MAX_NESTING = 500
_SHORT = 2 * MAX_NESTING

_decode = msgspec.json.Decoder().decode
_json_loads = json.loads
_REFUSED = (msgspec.MsgspecError, ValueError, TypeError, RecursionError, OverflowError)


def within_nesting(data: Any) -> bool:
    """True when JSON text (str or bytes) that parses is nested less than MAX_NESTING
    levels: fewer opening brackets than that, or too short to hold as many pairs."""
    if len(data) < _SHORT:
        return True
    if isinstance(data, str):
        return data.count("[") + data.count("{") < MAX_NESTING
    return data.count(b"[") + data.count(b"{") < MAX_NESTING


def loads(data: Any) -> Any:
    """`json.loads(data)` for str or bytes, decoded by msgspec where that is the same."""
    if within_nesting(data):
        try:
            return _decode(data)
        except _REFUSED:
            pass  # the reference decides, and words the error
    return _json_loads(data)


def loads_plain(data: Any) -> Tuple[Any, bool]:
    """`loads(data)`, and whether msgspec decoded it: then the value holds no lone surrogate
    (msgspec refuses them, escaped or raw) and is nested less than MAX_NESTING levels, as well
    as JSON's types only. False says nothing: the standard library decided."""
    decoded, value = decoded_plain(data)
    if decoded:
        return value, True
    return _json_loads(data), False


def decoded_plain(data: Any) -> Tuple[bool, Any]:
    """(True, the value) when msgspec decodes `data` (str, or bytes as UTF-8) to what
    `loads` returns, as `loads_plain` says it; (False, None) when it does not try or
    refuses (not JSON, not UTF-8, a lone surrogate, ...), for the caller's own way, which
    words the error. Bytes msgspec accepts are valid UTF-8: decoding them first would give
    msgspec the same text."""
    if within_nesting(data):
        try:
            return True, _decode(data)
        except _REFUSED:
            pass
    return False, None


# What `compact_json` is checked against when it is made: escapes, non-ASCII text, floats,
# big integers, nesting, empty containers.
_SAMPLE = {"a\"\\\n\t\x00\x7f/": ["é\u2028\U0001f600", 1.5, -0.0, 1e16, 2.5e-08, 1 << 70, True, None,
                                   {"k": [[], {}]}], "": ""}


def compact_json() -> Callable[[Any], str]:
    """Compact strict JSON text of a value: what `json.JSONEncoder(ensure_ascii=False,
    separators=(",", ":"), allow_nan=False).encode` returns, through one C encoder made
    once (`encode` makes a new one for every value it is given).

    Without the circular-reference check: output records come from decoded input and
    hold no cycles. Where the C encoder is missing or not the one expected, `encode`."""
    reference = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    make = getattr(json_encoder, "c_make_encoder", None)
    if make is None or json_encoder.encode_basestring is not getattr(json_encoder, "c_encode_basestring", None):
        return reference.encode
    try:
        chunks = make(None, reference.default, json_encoder.encode_basestring, None, ":", ",",
                      False, False, False)
    except TypeError:  # another signature
        return reference.encode
    join = "".join

    def encode(value: Any) -> str:
        return join(chunks(value, 0))

    try:
        same = encode(_SAMPLE) == reference.encode(_SAMPLE)
    except Exception:
        same = False
    return encode if same else reference.encode
