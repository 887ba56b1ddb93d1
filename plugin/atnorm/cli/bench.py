"""`atnorm bench`: throughput figures, each next to its baseline (see `atnorm.bench`)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import resource
import sys
from typing import Any, Dict, List

from ..bench.core import filter_core_figure
from ..errors import UsageError
from ..version import build_text

# Other ways of running the filter add figures by providing `bench_figures(records, invalid_ratio, rounds)`.
# atnorm.bench.agents adds a figure only when fluentd or fluent-bit is on PATH.
EXTRA_FIGURES = ("atnorm.bench.filemode", "atnorm.bench.execfilter", "atnorm.bench.relay",
                 "atnorm.bench.agents")


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--records", type=int, default=20_000, help="records per run (default: 20000)")
    parser.add_argument("--invalid-ratio", type=float, default=0.1, help="share of mutated records (default: 0.1)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per figure; the best counts (default: 3)")
    parser.add_argument("--only-core", action="store_true", help="measure only the filter core")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args: argparse.Namespace) -> int:
    if args.records <= 0 or args.rounds <= 0 or not 0 <= args.invalid_ratio <= 1:
        raise UsageError("--records and --rounds must be positive, --invalid-ratio within 0..1")
    figures: List[Dict[str, Any]] = [filter_core_figure(args.records, args.invalid_ratio, args.rounds)]
    if not args.only_core:
        for module_name in EXTRA_FIGURES:
            try:
                module = importlib.import_module(module_name)
            except ModuleNotFoundError:
                continue
            figures += module.bench_figures(args.records, args.invalid_ratio, args.rounds)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = {"machine": machine(), "build": build_text(), "peak_rss_mib": round(peak_rss_mib, 1), "figures": figures}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"machine: {report['machine']}")
    print(f"build: {report['build']}")
    for figure in figures:
        name = figure["figure"]
        values = ", ".join(f"{k}={v}" for k, v in figure.items() if k != "figure")
        print(f"{name}: {values}")
    print(f"peak memory (RSS of this process): {report['peak_rss_mib']} MiB")
    sys.stdout.flush()
    return 0
