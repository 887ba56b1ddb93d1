"""`atnorm bench`: throughput figures, each measured against a baseline in the same run.

- filter core: records/s of `EventFilter.process` (normalize + validate + count) on a
  realistic mix (≈90% valid events over every declared action, ≈10% mutated), next to
  python-jsonschema's reused validators checking the same records (verdict only);
- exec-filter and relay figures, where those modes are installed, each next to its own
  baseline (see their modules).
Speed is only ever reported here, never asserted by a test.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import json
import os
import platform
import resource
import sys
import time
from typing import Any, Callable, Dict, List

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
            errors = sorted(envelope.iter_errors(record), key=relevance)
            if not errors:
                action = record.get("action")
                service = event_filter.rules.service_for(action) if isinstance(action, str) else None
                if service is not None:
                    errors = sorted(services[service].iter_errors(record), key=relevance)
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


# Other ways of running the filter add figures by providing `bench_figures(records, invalid_ratio)`.
EXTRA_FIGURES = ("atnorm.bench.execfilter", "atnorm.bench.relay")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=20_000, help="records per run (default: 20000)")
    parser.add_argument("--invalid-ratio", type=float, default=0.1, help="share of mutated records (default: 0.1)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure; the best counts (default: 3)")
    parser.add_argument("--only-core", action="store_true", help="measure only the filter core")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    from ..cli.dispatch import UsageError

    if args.records <= 0 or args.rounds <= 0 or not 0 <= args.invalid_ratio <= 1:
        raise UsageError("--records and --rounds must be positive, --invalid-ratio within 0..1")
    figures: List[Dict[str, Any]] = [filter_core_figure(args.records, args.invalid_ratio, args.rounds)]
    if not args.only_core:
        for module_name in EXTRA_FIGURES:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                continue
            figures += module.bench_figures(args.records, args.invalid_ratio)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"machine": machine(), "peak_rss_mib": round(peak_rss_mib, 1), "figures": figures}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {report['machine']}")
    for figure in figures:
        name = figure["figure"]
        values = ", ".join(f"{k}={v}" for k, v in figure.items() if k != "figure")
        print(f"{name}: {values}")
    print(f"peak memory (RSS of this process): {report['peak_rss_mib']} MiB")
    sys.stdout.flush()
    return 0
