"""Writers: output records → bytes for Fluentd's `<parse>`."""

from __future__ import annotations

from typing import Any, Callable, List, Optional

import msgpack

from ..model.encodable import encodable
from ..model.jsoncodec import compact_json
from .diagnostics import DiagnosticLog
from .shaping import EncodedOutput, PackedOutput, RecordRouter


def _keep_bytes(value: Any) -> Any:
    # msgpack output carries bytes as bin, so raw originals stay byte for byte.
    return value


class OutputEncoder:
    """Output records → bytes for Fluentd's `<parse>`, one batch at a time.

    JSON output is padded with whitespace to a multiple of `block_size` bytes after each
    batch: Fluentd's JSON parser (Yajl, `<parse> stream_buffer_size`, 8192 by default)
    reads the child's stdout in blocks of that size and hands records on only when a block
    is full, so unpadded output leaves the last records of a batch waiting, and lost when
    Fluentd shuts down before the child's stdout ends.

    A record that does not encode as it is (NaN, a string with lone surrogates, an int
    beyond 64 bits, bytes in JSON) is written in its `encodable` form; one that cannot be
    encoded at all (nested deeper than the encoder goes) becomes a rejected record with
    rule `internal.error`, its original kept as JSON text. Either way one record in, one
    record out, and the batch goes on. JSON output is strict JSON in UTF-8.
    """

    def __init__(self, router: "RecordRouter", out_format: str, block_size: int = 0,
                 log: Optional["DiagnosticLog"] = None) -> None:
        self.router = router
        self._log = log
        self._json = out_format == "json"
        self._block = block_size if self._json else 0
        self._written = 0
        self._dumps = compact_json()
        self._pack = msgpack.Packer(use_bin_type=True).pack
        self._one: Callable[[Any], bytes] = self._json_bytes if self._json else self._packed

    def _packed(self, output: Any) -> bytes:
        return output.data if type(output) is PackedOutput else self._pack(output)

    def _json_text(self, output: Any) -> str:
        return output.text if type(output) is EncodedOutput else self._dumps(output)

    def _json_bytes(self, output: Any) -> bytes:
        # Strict UTF-8: a lone surrogate raises here instead of leaving as "\ud800".
        return self._json_text(output).encode("utf-8")

    def __call__(self, outputs: List[Any]) -> bytes:
        outcomes = self.router.take_outcomes()
        try:
            if self._json:
                data = ("\n".join(map(self._json_text, outputs)) + "\n").encode("utf-8")
            else:
                pack = self._one
                data = b"".join([pack(output) for output in outputs])
        except Exception:
            data = b"".join(self._encode_one(output, outcomes[index] if index < len(outcomes) else None)
                            for index, output in enumerate(outputs))
        return self._pad(data)

    def _encode_one(self, output: Any, outcome: Optional[str]) -> bytes:
        suffix = b"\n" if self._json else b""
        try:
            return self._one(output) + suffix
        except Exception:
            pass
        try:
            return self._one(encodable(output)) + suffix
        except Exception as exc:
            failed = self.router.encode_failed(output, outcome, exc)
            return self._one(failed) + suffix

    def _pad(self, data: bytes) -> bytes:
        if not self._block:
            return data
        total = self._written + len(data)
        short = -total % self._block
        if short:
            data += b" " * (short - 1) + b"\n"
        self._written = total + short
        return data
