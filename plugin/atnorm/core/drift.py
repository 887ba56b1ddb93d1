"""Table drift: actions seen in traffic that no loaded table declares.

Two kinds, both worth a look: an unknown action of a declared service (the docs page
gained an action, or a sender misspells one), and any action of a service no schema
declares. A `DriftLog` is fed every verdict (`observe`, cheap for declared actions),
keeps per action its count, outcomes and first/last seen time, stays bounded
(`max_actions`; records of further actions are only counted), and is saved as JSON
(`save`, atomically) so a long-running relay or exec-filter can leave a state file.

`atnorm drift` reports it:
- `atnorm drift FILE.jsonl ...` filters JSON lines with the given options (`--tuning`,
  `--schemas`, …) and reports what it saw;
- `atnorm drift --state FILE` reports a saved state (several are merged);
- both can be combined, and `--write-state FILE` keeps the merged result.
The report is always computed against the schemas loaded now: actions that a newly added
schema declares drop out, and the nearest declared action is looked up again.
"First/last seen" are the events' own eventTime (UTC); a record without a readable
eventTime counts at the time it was seen.
"""

from __future__ import annotations

import datetime as _dt
import difflib
import json
import os
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, List

from ..errors import ConfigError
from ..model.verdict import Verdict
from .normalize import find_event, make_time_formatter
from .rules import RuleSet

STATE_FORMAT = "atnorm-drift/1"
DEFAULT_MAX_ACTIONS = 1000
_canonical_time = make_time_formatter(3)


def _now() -> str:
    moment = _dt.datetime.now(_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def _event_time(verdict: Verdict) -> str:
    """The event's own time in canonical form (3 digits), or now if it has none."""
    value = verdict.event_time
    if value is None and isinstance(verdict.record, dict):
        value = find_event(verdict.record, []).get("eventTime")
    return _canonical_time(value) or _now()


def service_guess(action: str) -> str:
    """The service an undeclared action names: its first segment, as the derived `service` field."""
    return action.split(".", 1)[0]


@dataclass
class DriftEntry:
    """One undeclared action: how often, with what outcome, and when it was seen."""

    action: str
    service: str
    count: int = 0
    outcomes: Counter = field(default_factory=Counter)
    first_seen: str = ""
    last_seen: str = ""

    def add(self, outcome: str, when: str, count: int = 1) -> None:
        self.count += count
        self.outcomes[outcome] += count
        if not self.first_seen or when < self.first_seen:
            self.first_seen = when
        if when > self.last_seen:
            self.last_seen = when

    def as_dict(self) -> Dict[str, Any]:
        return {"service": self.service, "count": self.count, "outcomes": dict(sorted(self.outcomes.items())),
                "first_seen": self.first_seen, "last_seen": self.last_seen}


class DriftLog:
    """Undeclared actions seen in verdicts, bounded, mergeable, saved as JSON."""

    def __init__(self, max_actions: int = DEFAULT_MAX_ACTIONS) -> None:
        self.max_actions = max_actions
        self.entries: Dict[str, DriftEntry] = {}
        self.observed = 0  # verdicts looked at
        self.untracked = 0  # records of actions beyond max_actions
        self._lock = threading.Lock()  # new entries vs. a snapshot taken by another thread
        self._saved_at = 0  # `records` when last saved or loaded

    def observe(self, verdict: Verdict, rules: RuleSet) -> None:
        """Look at one verdict; keep it if its action is one no loaded table declares."""
        self.observed += 1
        action = verdict.action
        if action is None:
            return
        service = verdict.service
        if service is not None:
            document = rules.services.get(service)
            if document is None or action in document.actions:
                return
        entry = self.entries.get(action)
        if entry is None:
            if len(self.entries) >= self.max_actions:
                self.untracked += 1
                return
            with self._lock:
                entry = self.entries.setdefault(action, DriftEntry(action, service or service_guess(action)))
        entry.add(verdict.outcome, _event_time(verdict))

    @property
    def records(self) -> int:
        """Records with an undeclared action (tracked or not)."""
        return sum(entry.count for entry in list(self.entries.values())) + self.untracked

    def merge(self, other: "DriftLog") -> None:
        """Add another log's counts (e.g. a saved state) to this one."""
        self.observed += other.observed
        self.untracked += other.untracked
        for action, theirs in other.entries.items():
            mine = self.entries.get(action)
            if mine is None:
                if len(self.entries) >= self.max_actions:
                    self.untracked += theirs.count
                    continue
                with self._lock:
                    mine = self.entries.setdefault(action, DriftEntry(action, theirs.service))
            for outcome, count in theirs.outcomes.items():
                mine.add(outcome, theirs.first_seen, 0)
                mine.add(outcome, theirs.last_seen, count)

    # -- persistence -----------------------------------------------------------------

    def to_json(self) -> Dict[str, Any]:
        with self._lock:
            entries = list(self.entries.values())
        return {"format": STATE_FORMAT, "saved": _now(), "observed": self.observed, "untracked": self.untracked,
                "actions": {entry.action: entry.as_dict() for entry in sorted(entries, key=lambda e: e.action)}}

    @classmethod
    def from_json(cls, data: Any, source: str = "drift state",
                  max_actions: int = DEFAULT_MAX_ACTIONS) -> "DriftLog":
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise ConfigError(f"not a drift state file (expected \"format\": \"{STATE_FORMAT}\")", file=source)
        log = cls(max_actions)
        try:
            log.observed = int(data.get("observed", 0))
            log.untracked = int(data.get("untracked", 0))
            for action, item in dict(data.get("actions") or {}).items():
                entry = DriftEntry(str(action), str(item["service"]))
                for outcome, count in dict(item["outcomes"]).items():
                    entry.add(str(outcome), str(item["first_seen"]), 0)
                    entry.add(str(outcome), str(item["last_seen"]), int(count))
                log.entries[entry.action] = entry
            log._saved_at = log.records
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"damaged drift state ({type(exc).__name__}: {exc})", file=source) from None
        return log

    @classmethod
    def load(cls, path: str, max_actions: int = DEFAULT_MAX_ACTIONS) -> "DriftLog":
        """Read a state file written by `save`."""
        try:
            with open(path, "r", encoding="utf-8") as handle:
                data = json.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read drift state: {exc.strerror}", file=path) from None
        except ValueError as exc:
            raise ConfigError(f"damaged drift state (not JSON: {exc})", file=path) from None
        return cls.from_json(data, path, max_actions)

    def save(self, path: str) -> None:
        """Write the state atomically (a reader never sees half a file)."""
        data = self.to_json()
        directory = os.path.dirname(os.path.abspath(path))
        handle, temporary = tempfile.mkstemp(prefix=".drift-", suffix=".json", dir=directory)
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(data, out, indent=1, sort_keys=True)
                out.write("\n")
            os.replace(temporary, path)
        except BaseException:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise
        self._saved_at = self.records

    def save_if_changed(self, path: str) -> bool:
        """`save` unless no undeclared action was seen since the last save."""
        if self.records == self._saved_at:
            return False
        self.save(path)
        return True


# ---------------------------------------------------------------------------------------
# The report


def build_report(log: DriftLog, rules: RuleSet) -> Dict[str, Any]:
    """The drift against the schemas loaded now, grouped by service, as plain data."""
    services: Dict[str, Dict[str, Any]] = {}
    now_declared = 0
    all_actions = sorted(a for doc in rules.services.values() for a in doc.actions)
    with log._lock:
        entries = list(log.entries.values())
    for entry in entries:
        service = rules.service_for(entry.action)
        document = rules.services.get(service) if service else None
        if document is not None and entry.action in document.actions:
            now_declared += 1
            continue
        if document is not None:
            nearest = document.nearest_action(entry.action)
        else:
            # No table for this service: a misspelt service name is the likely story.
            matches = difflib.get_close_matches(entry.action, all_actions, n=1, cutoff=0.8)
            nearest = matches[0] if matches else None
        name = service or entry.service
        group = services.setdefault(name, {
            "service": name, "declared": document is not None,
            "declared_actions": len(document.actions) if document is not None else 0,
            "records": 0, "actions": []})
        group["records"] += entry.count
        group["actions"].append(dict(entry.as_dict(), action=entry.action, nearest=nearest))
    for group in services.values():
        group["actions"].sort(key=lambda item: (-item["count"], item["action"]))
    ordered = sorted(services.values(), key=lambda g: (not g["declared"], -g["records"], g["service"]))
    return {
        "observed": log.observed,
        "records": sum(g["records"] for g in ordered) + log.untracked,
        "actions": sum(len(g["actions"]) for g in ordered),
        "untracked_records": log.untracked,
        "now_declared": now_declared,
        "services": ordered,
    }


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _outcomes_text(outcomes: Dict[str, int]) -> str:
    return ", ".join(f"{outcome} {count}" for outcome, count in outcomes.items())


def format_report(report: Dict[str, Any]) -> str:
    """The report as readable text: a summary line, then a table per service."""
    lines: List[str] = []
    observed = f" of {report['observed']}" if report["observed"] else ""
    if not report["actions"] and not report["untracked_records"]:
        lines.append(f"no drift: every action in {report['observed']} records is declared by the loaded tables")
    else:
        lines.append(f"{_count(report['actions'], 'undeclared action')} in {report['records']}{observed} "
                     f"records, {_count(len(report['services']), 'service')}")
    for group in report["services"]:
        if group["declared"]:
            what = f"declared service, its tables list {group['declared_actions']} actions"
        else:
            what = "no schema declares this service"
        lines.append("")
        lines.append(f"{group['service']} ({what}): {_count(len(group['actions']), 'undeclared action')}, "
                     f"{_count(group['records'], 'record')}")
        header = ("records", "outcomes", "first seen", "last seen", "action", "nearest declared")
        rows = [(str(a["count"]), _outcomes_text(a["outcomes"]), a["first_seen"], a["last_seen"], a["action"],
                 a["nearest"] or "-") for a in group["actions"]]
        widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
        for row in [header] + rows:
            cells = [row[0].rjust(widths[0])] + [cell.ljust(width) for cell, width in zip(row[1:], widths[1:])]
            lines.append(("  " + "  ".join(cells)).rstrip())
    if report["untracked_records"]:
        lines.append("")
        lines.append(f"{report['untracked_records']} more records had actions beyond the tracking limit")
    if report["now_declared"]:
        lines.append("")
        lines.append(f"{_count(report['now_declared'], 'action')} in the state "
                     f"{'is' if report['now_declared'] == 1 else 'are'} declared by the loaded schemas now "
                     f"and left out")
    return "\n".join(lines)
