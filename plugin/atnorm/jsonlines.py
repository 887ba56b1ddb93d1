"""JSON-lines output shared by the file-based ways out (batch filter, embedded store).

Every line is strict JSON in UTF-8: no NaN / Infinity literals, no lone surrogates, no
integers longer than a parser takes. A record that would break one of these is written
through `encodable` (see there for what each value becomes); the rest cost one encode.
"""

from __future__ import annotations

import base64
import json
from typing import Any

from .encodable import encodable


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


def dumps(record: Any) -> str:
    """One compact JSON line (no newline), strict JSON that encodes as UTF-8."""
    try:
        line = _encoder.encode(record)
        if not line.isascii():
            line.encode("utf-8")  # a lone surrogate would fail only where the line is written
        return line
    except (ValueError, TypeError, RecursionError, UnicodeEncodeError):
        return _encoder.encode(encodable(record))
