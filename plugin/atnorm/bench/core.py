"""`atnorm bench`: throughput figures, each measured against a baseline in the same run.

- filter core: records/s of `EventFilter.process` (normalize + validate + count) on a
  realistic mix (≈90% valid events over every declared action, ≈10% mutated), next to
  python-jsonschema's reused validators checking the same records (verdict only);
- exec-filter and relay figures, where those modes are installed, each next to its own
  baseline (see their modules).
Speed is only ever reported here, never asserted by a test.
"""

from __future__ import annotations

import copy
import gc
import time
from typing import Any, Callable, Dict

from jsonschema import Draft202012Validator
from jsonschema.exceptions import relevance

from ..core.pipeline import EventFilter
from .eventgen import EventGenerator


def _best_rate(run: Callable[[], int], rounds: int) -> float:
    """Records per second of the fastest of `rounds` runs (least disturbed by the machine)."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        count = run()
        elapsed = time.perf_counter() - start
        best = max(best, count / elapsed if elapsed > 0 else 0.0)
    return best


def filter_core_figure(count: int, invalid_ratio: float, rounds: int, seed: int = 1) -> Dict[str, Any]:
    event_filter = EventFilter.from_schemas()
    records = EventGenerator(event_filter.rules, seed).mix(count, invalid_ratio)
    # Each run gets its own copy, so no run profits from work a previous one did.
    batches = [copy.deepcopy(records) for _ in range(rounds)]

    envelope = Draft202012Validator(event_filter.rules.envelope.raw)
    services = {name: Draft202012Validator(doc.raw) for name, doc in event_filter.rules.services.items()}

    def reference() -> int:
        # The same job done with python-jsonschema alone: a verdict and, for a failing
        # record, its errors (the filter gives reasons too).
        batch = batches[0]
        for record in batch:
            errors = sorted(envelope.iter_errors(record), key=relevance, reverse=True)
            if not errors:
                action = record.get("action")
                service = event_filter.rules.service_for(action) if isinstance(action, str) else None
                if service is not None:
                    errors = sorted(services[service].iter_errors(record), key=relevance, reverse=True)
        return len(batch)

    def ours() -> int:
        batch = batches.pop()
        process = event_filter.process
        for record in batch:
            process(record)
        return len(batch)

    # The prepared input is long-lived; keep the collector from rescanning it, as it would
    # not exist in a process that receives records and lets them go.
    gc.collect()
    gc.freeze()
    reference_rate = _best_rate(reference, rounds)
    filter_rate = _best_rate(ours, rounds)
    gc.unfreeze()
    stats = event_filter.stats
    return {
        "figure": "filter core",
        "records": count,
        "invalid_ratio": invalid_ratio,
        "atnorm_records_per_s": round(filter_rate),
        "jsonschema_records_per_s": round(reference_rate),
        "ratio": round(filter_rate / reference_rate, 2) if reference_rate else None,
        "accepted": stats.outcomes["accepted"] // rounds,
        "rejected": stats.outcomes["rejected"] // rounds,
    }
