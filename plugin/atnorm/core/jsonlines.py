"""JSON-lines output shared by the file-based ways out (batch filter, embedded store).

Every line is strict JSON in UTF-8: no NaN / Infinity literals, no lone surrogates, no
integers longer than a parser takes. A record that would break one of these is written
through `encodable` (see there for what each value becomes); the rest cost one encode.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from ..model.encodable import encodable, plain_json_line
from ..model.verdict import Verdict


def _fallback(value: Any) -> Any:
    # Records from msgpack may carry bytes; keep them readable rather than fail.
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(raw).decode("ascii")}
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return repr(value)


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_fallback, allow_nan=False)


UNWRITABLE = (ValueError, TypeError, RecursionError, UnicodeEncodeError)


def dumps_as_is(record: Any) -> str:
    """One compact JSON line (no newline) holding `record` unchanged; raises one of
    UNWRITABLE when strict JSON in UTF-8 cannot hold it as it is."""
    line = plain_json_line(record)  # the same text, by msgspec, for most records
    if line is not None:
        return line
    line = _encoder.encode(record)
    if not line.isascii():
        line.encode("utf-8")  # a lone surrogate would fail only where the line is written
    return line


def dumps(record: Any) -> str:
    """One compact JSON line (no newline), strict JSON that encodes as UTF-8; a record that
    cannot be written as it is goes through `encodable`."""
    try:
        return dumps_as_is(record)
    except UNWRITABLE:
        return _encoder.encode(encodable(record))


def record_line(verdict: Verdict) -> str:
    """The line of an accepted or passed verdict's record: the one the filter already made
    when it read the record from JSON (the same text), else `dumps`."""
    line = verdict.json_line
    return line if line is not None else dumps(verdict.record)
