"""Plain in-process counters for the filter, cheap enough for the per-record path.

Monitoring (Prometheus, stats records, summaries) reads these at its own pace; the hot
path only increments dict entries.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Dict, Optional, Set, Tuple, TypeVar

from ..model.verdict import ACCEPTED, PASSED, REJECTED, Verdict

# Unknown actions come from traffic, so their label set must stay bounded.
MAX_TRACKED_UNKNOWN_ACTIONS = 100
OTHER = "_other"
# Services no schema declares are counted by name too (so per-service alerts see them), but
# their names come from traffic: past this many distinct names they are counted as `_other`.
MAX_TRACKED_UNSCHEMED_SERVICES = 50
# What may serve as a service label: the first segment of an action, as IBM names services.
_SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


Key = TypeVar("Key")


class Counts(Counter[Key]):
    """A Counter whose `counts[key] += 1` costs what it costs on a dict.

    Counter's own `__delitem__` (Python code, there only to ignore a missing key) makes
    every item store go through Python-level slots, at twice the cost; dict's is put back.
    Deleting a key that is not there raises KeyError, as on a dict.
    """

    __delitem__ = dict.__delitem__  # type: ignore[assignment]


def unschemed_service(action: Optional[str]) -> str:
    """The service an action names (its first segment), or "" when it names none plausibly."""
    if type(action) is not str:
        return ""
    name = action.partition(".")[0]
    return name if _SERVICE_NAME.fullmatch(name) else ""


class FilterStats:
    """Counts of what the filter decided, by outcome, service, rule, warning and fix."""

    def __init__(self, max_unknown_actions: int = MAX_TRACKED_UNKNOWN_ACTIONS) -> None:
        self.outcomes: Counter[str] = Counts({ACCEPTED: 0, REJECTED: 0, PASSED: 0})
        self.by_service: Counter[Tuple[str, str]] = Counts()
        self.rejections: Counter[Tuple[str, str]] = Counts()
        self.warnings: Counter[str] = Counts()
        self.fixes: Counter[str] = Counts()
        self.unknown_actions: Counter[Tuple[str, str]] = Counts()
        self._max_unknown_actions = max_unknown_actions
        # Labels given to services no schema declares (bounded, see service_label).
        self.unschemed: Set[str] = set()

    @property
    def received(self) -> int:
        return sum(self.outcomes.values())

    def count(self, verdict: Verdict) -> None:
        """Add one verdict to the counts."""
        outcome = verdict.outcome
        service = verdict.service or (self.unschemed_label(unschemed_service(verdict.action))
                                      if verdict.action is not None else "")
        self.outcomes[outcome] += 1
        self.by_service[(outcome, service)] += 1
        if verdict.reasons:
            rejections = self.rejections
            for reason in verdict.reasons:
                rejections[(reason.rule, service)] += 1
        if verdict.warnings:
            warnings = self.warnings
            for warning in verdict.warnings:
                warnings[warning] += 1
        if verdict.fixes:
            fixes = self.fixes
            for fix in verdict.fixes:
                fixes[fix] += 1

    def count_passed(self, records: int) -> None:
        """Count records passed on without being decided (a relay with the filter off)."""
        self.outcomes[PASSED] += records
        self.by_service[(PASSED, "")] += records

    def unschemed_label(self, service: str) -> str:
        """The label of a service no schema declares: its name, or `_other` past the bound."""
        if not service or service in self.unschemed:
            return service
        if len(self.unschemed) >= MAX_TRACKED_UNSCHEMED_SERVICES:
            return OTHER
        self.unschemed.add(service)
        return service

    def count_unknown_action(self, service: str, action: str, count: int = 1) -> None:
        """Count an undeclared action; past the tracking bound it is counted as `_other`."""
        key = (service, action)
        if key not in self.unknown_actions and len(self.unknown_actions) >= self._max_unknown_actions:
            key = (service, OTHER)
        self.unknown_actions[key] += count

    def snapshot(self) -> Dict[str, Any]:
        """A JSON-ready copy of every count (for stats records and summaries)."""
        return {
            "received": self.received,
            "accepted": self.outcomes[ACCEPTED],
            "rejected": self.outcomes[REJECTED],
            "passed": self.outcomes[PASSED],
            "warnings": sum(self.warnings.values()),
            "by_service": {f"{o}:{s}": n for (o, s), n in sorted(self.by_service.items())},
            "rejections": {f"{r}:{s}": n for (r, s), n in sorted(self.rejections.items())},
            "warning_kinds": dict(sorted(self.warnings.items())),
            "fixes": dict(sorted(self.fixes.items())),
        }

    def summary_counts(self) -> Dict[str, int]:
        """The counts of a summary line, by name, in its order."""
        return {"received": self.received, "accepted": self.outcomes[ACCEPTED],
                "rejected": self.outcomes[REJECTED], "passed": self.outcomes[PASSED],
                "warnings": sum(self.warnings.values())}

    def summary_line(self) -> str:
        """`received=… accepted=… rejected=… passed=… warnings=…` on one line."""
        return summary_text(self.summary_counts())


def summary_text(counts: Dict[str, int]) -> str:
    """`name=value` for each count, on one line."""
    return " ".join(f"{name}={value}" for name, value in counts.items())
