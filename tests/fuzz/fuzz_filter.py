"""Fuzz target: EventFilter.process on arbitrary JSON-ish records.

Invariants checked for every input: exactly one verdict, never an exception, the counts
grow by exactly that one verdict, and what leaves (an accepted or passed record, or a
dead letter) is encodable by msgpack and by strict JSON as it is.

The first byte picks how the record is made: a sample event mutated by the rest (most
inputs reach the deep checks that way), a value built from the bytes, msgpack, or JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import msgpack
from fuzzlib import Bytes, check_counted, check_verdict, counts, event_filter, mutate, sample_events, value

_SAMPLES = sample_events()


def record_from(data: bytes) -> Any:
    src = Bytes(data)
    mode = src.below(4)
    if mode == 0:
        return mutate(_SAMPLES[src.below(len(_SAMPLES))], src)
    if mode == 1:
        return value(src)
    if mode == 2:
        try:
            return msgpack.unpackb(src.rest(), raw=bool(src.data[0] & 0x80), strict_map_key=False,
                                   max_buffer_size=1 << 16)
        except Exception:
            return src.data
    try:
        return json.loads(src.rest())
    except (ValueError, RecursionError):
        return src.data


def test_one_input(data: bytes) -> None:
    event_filter_ = event_filter()
    record = record_from(data)
    before = counts(event_filter_)
    verdict = event_filter_.process(record)
    check_verdict(verdict)
    check_counted(before, counts(event_filter_), [verdict.outcome])
    # The same record as JSON text takes the text path and keeps the same promise.
    try:
        text = json.dumps(record)
    except (TypeError, ValueError, RecursionError):
        return
    before = counts(event_filter_)
    verdict = event_filter_.process_json(text.encode("utf-8", "surrogatepass"))
    check_verdict(verdict)
    check_counted(before, counts(event_filter_), [verdict.outcome])


def main(argv: list) -> None:
    from fuzz_all import run_target
    run_target(test_one_input, "filter", argv)


if __name__ == "__main__":
    main(sys.argv)
