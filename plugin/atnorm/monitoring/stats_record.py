"""The filter and relay counts as a periodic log record, for chains without Prometheus.

`StatsRecorder` builds one record from `FilterStats` (and `RelayStats`, when given) and
hands it to an `emit(tag, timestamp, record)` callback; `StatsThread` and
`StatsRecorder.start_task` call it every `interval` seconds from a thread or from the
asyncio loop. Totals are cumulative since start; `since_last` holds the growth since the
previous record so a log backend can chart rates without differencing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, Optional, Union

from ..config.options import Option, positive_float, text
from ..core.stats import FilterStats
from .relaystats import LATENCY_BUCKETS, RELAY_COUNTS, RelayStats

log = logging.getLogger(__name__)

DEFAULT_TAG = "atnorm.stats"

# Cumulative counts whose growth since the previous record is worth stating.
FILTER_DELTAS = ("received", "accepted", "rejected", "passed", "warnings")
RELAY_DELTAS = tuple(count.name for count in RELAY_COUNTS if count.delta)

# emit(tag, unix_time, record); may return an awaitable when run from the asyncio loop.
Emit = Callable[[str, float, Dict[str, Any]], Union[None, Awaitable[None]]]

STATS_INTERVAL = Option("stats_interval", positive_float, None,
                        "emit a stats record every SECONDS (off when unset)", metavar="SECONDS",
                        group="stats record")
STATS_TAG = Option("stats_tag", text, DEFAULT_TAG, "tag of the periodic stats records", group="stats record")
STATS_OPTIONS = (STATS_INTERVAL, STATS_TAG)


def format_time(timestamp: float) -> str:
    """Unix time → `2024-05-01T10:00:00.000+0000` (the canonical eventTime form)."""
    moment = datetime.fromtimestamp(timestamp, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}+0000"


def build_stats_record(filter_stats: FilterStats, relay_stats: Optional[RelayStats] = None,
                       timestamp: Optional[float] = None) -> Dict[str, Any]:
    """One JSON-ready record with every count: filter totals, and a `relay` part if given."""
    timestamp = time.time() if timestamp is None else timestamp
    record: Dict[str, Any] = {"time": format_time(timestamp)}
    record.update(filter_stats.snapshot())
    record["unknown_actions"] = {
        f"{service}:{action}": count
        for (service, action), count in sorted(dict(filter_stats.unknown_actions).items())
    }
    if relay_stats is not None:
        relay = relay_stats.snapshot()
        relay["downstream_ack_latency"] = _latency_summary(relay_stats)
        record["relay"] = relay
    return record


def _latency_summary(stats: RelayStats) -> Dict[str, Any]:
    per_bucket = list(stats.ack_latency_buckets)
    cumulative: Dict[str, int] = {}
    running = 0
    for bound, count in zip(LATENCY_BUCKETS, per_bucket):
        running += count
        cumulative[f"le_{bound:g}"] = running
    running += per_bucket[-1]
    cumulative["le_inf"] = running
    return {"count": running, "sum_seconds": round(stats.ack_latency_sum, 6),
            "buckets": cumulative}


class StatsRecorder:
    """Builds successive stats records and hands them to `emit` under `tag`."""

    def __init__(self, filter_stats: FilterStats, emit: Emit,
                 relay_stats: Optional[RelayStats] = None, tag: str = DEFAULT_TAG,
                 clock: Callable[[], float] = time.time) -> None:
        self.filter_stats = filter_stats
        self.relay_stats = relay_stats
        self.emit = emit
        self.tag = tag
        self.clock = clock
        self._previous: Optional[Dict[str, Any]] = None
        self._previous_time: Optional[float] = None

    def next_record(self) -> Dict[str, Any]:
        """The current counts plus `since_last` (growth since the previous record)."""
        return self._record_at(self.clock())

    def _record_at(self, now: float) -> Dict[str, Any]:
        record = build_stats_record(self.filter_stats, self.relay_stats, now)
        previous = self._previous or {}
        since_last: Dict[str, Any] = {k: record[k] - previous.get(k, 0) for k in FILTER_DELTAS}
        if "relay" in record:
            before = previous.get("relay", {})
            for key in RELAY_DELTAS:
                since_last[key] = record["relay"][key] - before.get(key, 0)
        start = self._previous_time
        since_last["seconds"] = round(now - start, 3) if start is not None else None
        record["since_last"] = since_last
        self._previous, self._previous_time = record, now
        return record

    def emit_once(self) -> Union[None, Awaitable[None]]:
        """Build the next record and emit it; returns what `emit` returned."""
        now = self.clock()
        return self.emit(self.tag, now, self._record_at(now))

    def start_task(self, interval: float) -> "asyncio.Task[None]":
        """Emit every `interval` seconds from the running asyncio loop; cancel to stop."""
        return asyncio.get_running_loop().create_task(self.run_periodically(interval))

    async def run_periodically(self, interval: float) -> None:
        """Emit every `interval` seconds until cancelled; an emit failure is logged, not fatal."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            deadline = _next_deadline(deadline, interval, loop.time())
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            try:
                result = self.emit_once()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.warning("could not emit stats record: %r", exc)


def _next_deadline(previous: float, interval: float, now: float) -> float:
    # Fixed cadence without drift; ticks missed while the process was stalled are skipped.
    deadline = previous + interval
    if deadline <= now:
        deadline += ((now - deadline) // interval + 1) * interval
    return deadline


class StatsThread:
    """Calls `recorder.emit_once()` every `interval` seconds from a daemon thread.

    For synchronous loops (e.g. exec-filter over stdin/stdout); `emit` runs in this
    thread, so it must lock whatever it shares with the main loop.
    """

    def __init__(self, recorder: StatsRecorder, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.recorder = recorder
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="atnorm-stats", daemon=True)

    def start(self) -> "StatsThread":
        self._thread.start()
        return self

    def stop(self, emit_final: bool = False) -> None:
        """Stop the timer; with `emit_final`, emit one last record with the final counts."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if emit_final:
            self._emit()

    def _run(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline = _next_deadline(deadline, self.interval, time.monotonic())
            if self._stop.wait(max(0.0, deadline - time.monotonic())):
                return
            self._emit()

    def _emit(self) -> None:
        try:
            self.recorder.emit_once()
        except Exception as exc:
            log.warning("could not emit stats record: %r", exc)
