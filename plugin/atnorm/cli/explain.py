"""`atnorm explain`: a readable verdict for an event — what was fixed, what failed, why."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List

from ..core.jsonlines import dumps
from ..core.pipeline import EventFilter
from ..core.settings import add_filter_arguments, build_filter
from ..model.encodable import encodable, is_encodable
from ..model.verdict import ACCEPTED, REJECTED, Verdict


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="one JSON event (or JSON lines), '-' for stdin")
    parser.add_argument("--show-record", action="store_true", help="also print the normalized record")
    add_filter_arguments(parser)


def describe(verdict: Verdict, show_record: bool = False) -> str:
    """The verdict in a few readable lines."""
    lines: List[str] = [f"verdict: {verdict.outcome}"]
    if verdict.action:
        lines.append(f"action: {verdict.action}")
    if verdict.outcome == "passed":
        lines.append("not an Activity Tracker event (no action/initiator/target): passed on unchanged")
    else:
        lines.append(f"service: {verdict.service or '(no schema declares it)'}")
    if verdict.fixes:
        lines.append("fixed:")
        lines += [f"  - {fix}" for fix in verdict.fixes]
    if verdict.outcome == REJECTED:
        lines.append("failed:")
        for reason in verdict.reasons:
            lines.append(f"  - {reason.path or '/'} [{reason.rule}] {reason.message}")
            if reason.suggestion:
                lines.append(f"    did you mean: {reason.suggestion}")
    if verdict.warnings:
        lines.append("warnings:")
        lines += [f"  - {warning}" for warning in verdict.warnings]
    if show_record and verdict.outcome == ACCEPTED:
        lines.append("record:")
        record = verdict.record if is_encodable(verdict.record) else encodable(verdict.record)
        lines.append(json.dumps(record, indent=2, ensure_ascii=False))
    return "\n".join(lines)


def _documents(data: bytes) -> List[bytes]:
    # One JSON document (possibly pretty-printed) or JSON lines.
    try:
        json.loads(data)
        return [data]
    except ValueError:
        return [line for line in data.splitlines() if line.strip()] or [data]


def run(args: argparse.Namespace) -> int:
    event_filter: EventFilter = build_filter(args)
    try:
        if args.file == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as handle:
                data = handle.read()
    except OSError as exc:
        print(f"atnorm explain: error: {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    documents = _documents(data)
    for index, document in enumerate(documents):
        if len(documents) > 1:
            print(f"--- record {index + 1}")
        verdict = event_filter.process_json(document)
        print(describe(verdict, args.show_record))
        if verdict.outcome == REJECTED and args.show_record:
            print(dumps(verdict.dead_letter()))
    return 0
