"""`atnorm explain`: a readable verdict for an event — what was fixed, what failed, why."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, List, Optional

from ..core.jsonlines import dumps
from ..core.normalize import as_text, find_event
from ..core.pipeline import UNKNOWN_ACTION, UNKNOWN_SERVICE, EventFilter
from ..core.rules import to_reason
from ..core.settings import add_filter_arguments, build_filter
from ..model.encodable import encodable, is_encodable
from ..model.verdict import ACCEPTED, REJECTED, Verdict


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="one JSON event (or JSON lines), '-' for stdin")
    parser.add_argument("--show-record", action="store_true", help="also print the normalized record")
    add_filter_arguments(parser)


# What a fix that names no field did.
_FIX_TEXT = {
    "unflatten": "dotted keys (`initiator.id`) became nested objects",
    "wrapper": "the envelope's other fields were kept on the event (wrapper_fields)",
}
MISSING = object()


def _at(record: Any, pointer: str) -> Any:
    node = record
    for part in pointer.lstrip("/").split("/") if pointer not in ("", "/") else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _show(value: Any) -> str:
    if value is MISSING:
        return "(missing)"
    text = json.dumps(encodable(value), ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


class Views:
    """The event as found in the record (before normalization) and after it."""

    def __init__(self, event_filter: Any, record: Any) -> None:
        self.before: Any = MISSING
        self.after: Any = MISSING
        if not isinstance(record, dict):
            return
        try:
            self.before = find_event(as_text(record), [])
            self.after = event_filter.normalizer.normalize(self.before, [])
        except Exception:  # an explanation never fails on odd input: it just says less
            self.before = self.after = MISSING


def _fix_line(fix: str, views: Views) -> str:
    if fix.startswith("unwrap:"):
        return f"{fix}: the event was found inside `{fix[len('unwrap:'):]}`"
    if fix in _FIX_TEXT:
        return f"{fix}: {_FIX_TEXT[fix]}"
    pointer = "/eventTime" if fix == "eventTime" else fix[fix.find(":") + 1:] if ":/" in fix else None
    if pointer is None or views.after is MISSING:
        return fix
    if fix.startswith("alias:"):
        return f"{fix}: renamed to the model's field"
    return f"{fix}: {_show(_at(views.before, pointer))} → {_show(_at(views.after, pointer))}"


def _warning_line(kind: str, verdict: Verdict, event_filter: Any, views: Views) -> str:
    work = views.after
    if kind == UNKNOWN_SERVICE:
        service = (verdict.action or "").partition(".")[0]
        return f"{kind}: no schema declares the service {service!r}: checked against the envelope only"
    if kind == UNKNOWN_ACTION:
        return f"{kind}: {verdict.action!r} is not an action the {verdict.service} tables declare (accepted by tuning)"
    for rule in _rules(event_filter, verdict.service):
        if rule.items and kind.startswith(rule.name + ":") and work is not MISSING:
            title = kind[len(rule.name) + 1:]
            item = next((i for i in rule.schema.get("allOf", ()) if i.get("title") == title), None)
            if item is None:
                break
            value = _at(work, title)
            why = [reason for reason in rule.reference.evolve(schema=item).iter_errors(work)]
            if value is MISSING:
                text = f"{kind}: missing ({rule.description or 'a field the event model expects'})"
            else:
                reasons = [to_reason(error, rule.name) for error in why]
                detail = "; ".join(r.message for r in reasons) or rule.description
                text = f"{kind}: value {_show(value)}: {detail}"
                nearest = next((r.suggestion for r in reasons if r.suggestion), None)
                if nearest:
                    text += f" (nearest allowed: {nearest})"
            return text
        if kind == rule.name and work is not MISSING:
            reasons = rule.reasons(work)
            if reasons:
                value = _at(work, reasons[0].path)
                return f"{kind}: value {_show(value)}: {reasons[0].message}"
    return kind


def _rules(event_filter: Any, service: Optional[str]) -> List[Any]:
    rules = list(event_filter.rules.envelope.rules)
    if service and service in event_filter.rules.services:
        rules += event_filter.rules.services[service].rules
    return rules


def describe(verdict: Verdict, show_record: bool = False, event_filter: Any = None,
             record: Any = None) -> str:
    """The verdict in a few readable lines: each fix as before → after, each failure with its
    rule and suggestion, each warning with the value and why (given the filter and record)."""
    views = Views(event_filter, record) if event_filter is not None else Views(None, None)
    lines: List[str] = [f"verdict: {verdict.outcome}"]
    if verdict.action:
        lines.append(f"action: {verdict.action}")
    if verdict.outcome == "passed":
        lines.append("not an Activity Tracker event (no action/initiator/target): passed on unchanged")
    else:
        lines.append(f"service: {verdict.service or '(no schema declares it)'}")
    if verdict.fixes:
        lines.append("fixed:")
        lines += [f"  - {_fix_line(fix, views)}" for fix in verdict.fixes]
    if verdict.outcome == REJECTED:
        lines.append("failed:")
        for reason in verdict.reasons:
            lines.append(f"  - {reason.path or '/'} [{reason.rule}] {reason.message}")
            if reason.suggestion:
                lines.append(f"    did you mean: {reason.suggestion}")
    if verdict.warnings:
        lines.append("warnings:")
        for warning in verdict.warnings:
            line = _warning_line(warning, verdict, event_filter, views) if event_filter is not None else warning
            lines.append(f"  - {line}")
    if show_record and verdict.outcome == ACCEPTED:
        lines.append("record:")
        shown = verdict.record if is_encodable(verdict.record) else encodable(verdict.record)
        lines.append(json.dumps(shown, indent=2, ensure_ascii=False))
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
        return 2
    documents = _documents(data)
    rejected = False
    for index, document in enumerate(documents):
        if len(documents) > 1:
            print(f"--- record {index + 1}")
        verdict = event_filter.process_json(document)
        try:
            record = json.loads(document)
        except (ValueError, RecursionError):
            record = None
        print(describe(verdict, args.show_record, event_filter, record))
        if verdict.outcome == REJECTED and args.show_record:
            print(dumps(verdict.dead_letter()))
        rejected = rejected or verdict.outcome == REJECTED
    # Like grep and diff: 1 says "an event was rejected", 2 that explain itself could not run.
    return 1 if rejected else 0
