"""Plain in-process counters for the filter, cheap enough for the per-record path.

Monitoring (Prometheus, stats records, summaries) reads these at its own pace; the hot
path only increments dict entries.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, Tuple

from ..model.verdict import ACCEPTED, PASSED, REJECTED, Verdict

# Unknown actions come from traffic, so their label set must stay bounded.
MAX_TRACKED_UNKNOWN_ACTIONS = 100
OTHER = "_other"


class FilterStats:
    """Counts of what the filter decided, by outcome, service, rule, warning and fix."""

    def __init__(self, max_unknown_actions: int = MAX_TRACKED_UNKNOWN_ACTIONS) -> None:
        self.outcomes: Counter[str] = Counter({ACCEPTED: 0, REJECTED: 0, PASSED: 0})
        self.by_service: Counter[Tuple[str, str]] = Counter()
        self.rejections: Counter[Tuple[str, str]] = Counter()
        self.warnings: Counter[str] = Counter()
        self.fixes: Counter[str] = Counter()
        self.unknown_actions: Counter[Tuple[str, str]] = Counter()
        self._max_unknown_actions = max_unknown_actions

    @property
    def received(self) -> int:
        return sum(self.outcomes.values())

    def count(self, verdict: Verdict) -> None:
        """Add one verdict to the counts."""
        outcome = verdict.outcome
        service = verdict.service or ""
        self.outcomes[outcome] += 1
        self.by_service[(outcome, service)] += 1
        for reason in verdict.reasons:
            self.rejections[(reason.rule, service)] += 1
        for warning in verdict.warnings:
            self.warnings[warning] += 1
        for fix in verdict.fixes:
            self.fixes[fix] += 1

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

    def summary_line(self) -> str:
        """`received=… accepted=… rejected=… passed=… warnings=…` on one line."""
        return (
            f"received={self.received} accepted={self.outcomes[ACCEPTED]} "
            f"rejected={self.outcomes[REJECTED]} passed={self.outcomes[PASSED]} "
            f"warnings={sum(self.warnings.values())}"
        )
