"""`atnorm drift`: actions seen in traffic (or saved drift state) that no table declares."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator, List

from ..core.drift import DEFAULT_MAX_ACTIONS, DriftLog, build_report, format_report
from ..core.settings import add_filter_arguments, build_filter
from ..errors import ConfigError, UsageError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="JSON-lines files to filter and report on ('-' for stdin)")
    parser.add_argument("--state", action="append", default=[], metavar="FILE",
                        help="a drift state file saved by a running filter (repeatable; merged)")
    parser.add_argument("--write-state", metavar="FILE",
                        help="save the merged drift (state files plus what the input showed) to FILE")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--exit-code", action="store_true",
                        help="exit 1 when there is drift (for scripts and CI)")
    parser.add_argument("--max-actions", type=int, default=DEFAULT_MAX_ACTIONS, metavar="N",
                        help=f"distinct actions tracked (default: {DEFAULT_MAX_ACTIONS})")
    add_filter_arguments(parser)


def _lines(paths: List[str]) -> Iterator[bytes]:
    for path in paths:
        if path == "-":
            yield from sys.stdin.buffer
            continue
        try:
            handle = open(path, "rb")
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
        with handle:
            yield from handle


def run(args: argparse.Namespace) -> int:
    """Report the drift of the given input and state files."""
    if not args.files and not args.state:
        raise UsageError("give JSON-lines files to filter ('-' for stdin) or --state FILE")
    if args.max_actions <= 0:
        raise UsageError("--max-actions must be positive")
    event_filter = build_filter(args)
    log = DriftLog(args.max_actions)
    for path in args.state:
        log.merge(DriftLog.load(path))
    for line in _lines(args.files):
        if line.strip():
            log.observe(event_filter.process_json(line.rstrip(b"\r\n")), event_filter.rules)
    if args.write_state:
        try:
            log.save(args.write_state)
        except OSError as exc:
            raise ConfigError(f"cannot write drift state: {exc.strerror}", file=args.write_state) from None
    report = build_report(log, event_filter.rules)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report))
    return 1 if args.exit_code and (report["actions"] or report["untracked_records"]) else 0
