"""JSON-lines output shared by the file-based ways out (batch filter, embedded store)."""

from __future__ import annotations

import base64
import json
from typing import Any


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


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_fallback)


def dumps(record: Any) -> str:
    """One compact JSON line (no newline)."""
    return _encoder.encode(record)
