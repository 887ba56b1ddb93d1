"""`atnorm filter`: JSON lines in; accepted (and passed-through) out; rejected to a file.

A one-line summary goes to stderr at the end. Bad input lines are rejections with a
reason; the exit status is non-zero only for usage or I/O errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, Iterator, List, Optional

from ..core.jsonlines import dumps
from ..core.settings import add_filter_arguments, build_filter
from ..model.verdict import ACCEPTED, PASSED


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="*", metavar="FILE",
                        help="JSON-lines input files; '-' or none for stdin")
    parser.add_argument("--rejected", metavar="FILE", default="rejected.jsonl",
                        help="where rejected records go, each as {original, reasons} "
                             "(default: rejected.jsonl; '-' for stderr)")
    parser.add_argument("--passed", metavar="FILE", default=None,
                        help="where passed-through (non Activity Tracker) records go (default: stdout)")
    parser.add_argument("--summary-format", choices=("text", "json"), default="text",
                        help="the closing summary on stderr: one text line or one JSON object")
    add_filter_arguments(parser)


def _lines(paths: List[str]) -> Iterator[bytes]:
    for path in paths or ["-"]:
        if path == "-":
            yield from sys.stdin.buffer
            continue
        with open(path, "rb") as handle:
            yield from handle


def _open_out(path: Optional[str], default: IO[str]) -> IO[str]:
    if path is None:
        return default
    if path == "-":
        return sys.stderr
    return open(path, "w", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    event_filter = build_filter(args)
    accepted_out = sys.stdout
    try:
        rejected_out = _open_out(args.rejected, sys.stderr)
        passed_out = _open_out(args.passed, sys.stdout)
    except OSError as exc:
        print(f"atnorm filter: error: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        for line in _lines(args.files):
            if not line.strip():
                continue  # blank lines carry no record
            verdict = event_filter.process_json(line.rstrip(b"\r\n"))
            out = accepted_out if verdict.outcome == ACCEPTED else passed_out if verdict.outcome == PASSED else rejected_out
            out.write(dumps(verdict.output()) + "\n")
    except OSError as exc:
        print(f"atnorm filter: error: {exc.filename or 'input'}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        for handle in (rejected_out, passed_out):
            if handle not in (sys.stdout, sys.stderr):
                handle.close()
        accepted_out.flush()
    stats = event_filter.stats
    if args.summary_format == "json":
        print(dumps(stats.snapshot()), file=sys.stderr)
    else:
        print(stats.summary_line(), file=sys.stderr)
    return 0
