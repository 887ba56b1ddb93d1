"""Fuzz target: the exec-filter stdin readers (JSON lines, TSV, msgpack) and output encoder.

Invariants checked for every input:
- every record decided exactly once: the outputs written equal the verdicts counted, by
  outcome, and decode back from the encoded output one for one;
- JSON lines and TSV: one output per non-blank line, however the input is split;
- msgpack: one output per record when the input is records back to back; for any bytes,
  at least one output when there are any, and never more outputs than bytes;
- the outcomes do not depend on how the input is split into reads (no hang, no merge,
  no split of records across reads).
"""

from __future__ import annotations

import json
import sys
from typing import Any, List, Tuple

import msgpack
from fuzzlib import Bytes, check_counted, counts, event_filter, mutate, sample_events, value

from atnorm.execfilter.readers import JsonLinesInput, MsgpackInput, TsvInput
from atnorm.execfilter.shaping import RecordRouter
from atnorm.execfilter.writers import OutputEncoder, _keep_bytes
from atnorm.model.encodable import encodable

TSV_KEYS = ["action", "outcome", "message"]
_SAMPLES = sample_events()


def _reader(kind: str, router: RecordRouter, out_format: str) -> Any:
    if kind == "msgpack":
        return MsgpackInput(router, _keep_bytes if out_format == "msgpack" else encodable)
    if kind == "tsv":
        return TsvInput(router, TSV_KEYS)
    return JsonLinesInput(router)


def _decode(out_format: str, data: bytes) -> List[Any]:
    if out_format == "msgpack":
        return _unpack_all(data)
    return [json.loads(line) for line in data.split(b"\n") if line.strip()]


def _unpack_all(data: bytes) -> List[Any]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(data), 1))
    unpacker.feed(data)
    out = list(unpacker)
    assert unpacker.tell() == len(data), "output ends inside a record"
    return out


def run_reader(kind: str, out_format: str, keys: Tuple[Any, Any], data: bytes, step: int) -> List[str]:
    """Feeds `data` in reads of `step` bytes, then closes; returns the outcomes in order."""
    event_filter_ = event_filter()
    # As the child builds it: the filter's JSON line or packed record reused for the output.
    router = RecordRouter(event_filter_, tag_key=keys[0], time_key=keys[1], json_out=out_format == "json",
                          msgpack_out=out_format == "msgpack")
    reader = _reader(kind, router, out_format)
    encoder = OutputEncoder(router, out_format, block_size=64 if out_format == "json" else 0)
    before = counts(event_filter_)
    outcomes: List[str] = []
    written = 0
    decoded: List[Any] = []
    pieces = [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces + [None]:
        batch = reader.close() if piece is None else reader.feed(piece)
        pending = list(router._outcomes)
        assert len(pending) == len(batch), (len(pending), len(batch))
        outcomes += pending
        if batch:
            encoded = encoder(batch)
            decoded += _decode(out_format, encoded)
            written += len(batch)
    assert not router.take_outcomes(), "outcomes left without an output"
    assert len(decoded) == written, (len(decoded), written)
    after = counts(event_filter_)
    # An output the encoder had to turn into a rejection moved one count from its outcome.
    moved = sum(1 for item in decoded if type(item) is dict and _internal(item))
    if not moved:
        check_counted(before, after, outcomes)
    assert after["received"] - before["received"] == len(outcomes)
    return outcomes


def _internal(item: dict) -> bool:
    reasons = item.get("reasons")
    return type(reasons) is list and any(type(r) is dict and r.get("rule") == "internal.error" for r in reasons)


def _lines_expected(data: bytes) -> int:
    return sum(1 for line in data.split(b"\n") if line and not line.isspace())


def _records(src: Bytes) -> List[Any]:
    records = []
    for _ in range(1 + src.below(4)):
        record = mutate(_SAMPLES[src.below(len(_SAMPLES))], src) if src.below(2) else value(src)
        records.append(record)
    return records


def _input(src: Bytes) -> Tuple[str, bytes, int]:
    """(reader, bytes, expected outputs or -1) from the fuzz bytes."""
    mode = src.below(6)
    if mode == 0:
        return "json", src.rest(), -1
    if mode == 1:
        return "tsv", src.rest(), -1
    if mode == 2:
        return "msgpack", src.rest(), -1
    if mode == 3:  # JSON lines made from records, with blank and whitespace lines between
        lines = []
        for record in _records(src):
            try:
                lines.append(json.dumps(record, ensure_ascii=bool(src.below(2))).encode("utf-8", "surrogatepass"))
            except (TypeError, ValueError, RecursionError):
                lines.append(repr(record).encode("utf-8", "surrogatepass"))
            lines.append(b" " * src.below(3) * (1 + src.below(4000)))
        return "json", b"\n".join(lines), -1
    records = _records(src)
    packed = []
    for record in records:
        try:
            packed.append(msgpack.packb(record, use_bin_type=bool(mode == 4), strict_types=False,
                                        unicode_errors="surrogateescape"))
        except Exception:
            packed.append(msgpack.packb({"unpackable": repr(record)}))
    # Only records Fluentd's formatter could write (non-empty maps with text keys) are
    # promised one output each; anything else is damage, which may take a neighbour with it.
    plain = all(type(r) is dict and r and all(type(k) in (str, bytes) for k in r) for r in records)
    return "msgpack", b"".join(packed), len(records) if plain else -1


def test_one_input(data: bytes) -> None:
    src = Bytes(data)
    out_format = "json" if src.below(2) else "msgpack"
    keys = [(None, None), ("tag", None), ("tag", "time"), (None, "time")][src.below(4)]
    step = 1 + src.byte() * 13
    kind, stream, expected = _input(src)
    whole = run_reader(kind, out_format, keys, stream, max(len(stream), 1))
    split = run_reader(kind, out_format, keys, stream, step)
    assert len(whole) == len(split), f"{kind}: {len(whole)} outputs read whole, {len(split)} read in {step}s"
    assert whole == split, f"{kind}: outcomes depend on the reads"
    if kind in ("json", "tsv"):
        assert len(whole) == _lines_expected(stream), (len(whole), _lines_expected(stream))
    elif stream:
        assert 1 <= len(whole) <= len(stream), (len(whole), len(stream))
        if expected >= 0 and keys[0] is None:
            assert len(whole) == expected, (len(whole), expected)
    else:
        assert not whole


def main(argv: list) -> None:
    from fuzz_all import run_target
    run_target(test_one_input, "execfilter", argv)


if __name__ == "__main__":
    main(sys.argv)
