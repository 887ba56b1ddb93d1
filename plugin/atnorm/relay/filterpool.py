"""Deciding chunks in worker processes, so the relay's filter can use more than one core.

The relay's event loop reads frames and moves bytes; with `filter_workers: N` (N > 1)
each chunk's payload goes to one of N worker processes as it was received (a verbatim
chunk, see `Chunk.verbatim`; any other chunk's entries are packed once), is decoded,
decided and routed there, and comes back per route ready to hand on, so the relay's
process never goes through it record by record: packed in the entry form the
downstream takes (metadata stripped unless it is kept), or for the files destination
as the JSON lines to append. Each worker builds its own `EventFilter` from the same
`FilterOptions` (they reach it pickled); the counts it makes for a chunk travel back
with the result and are added to the relay's `FilterStats`, so metrics and the stats
record see one set of counters. A reload (SIGHUP, tuning file change) bumps a shared
generation number; each worker rebuilds its filter before its next chunk, and keeps the
old one if the new configuration fails to build.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import wait as wait_for_exit
from typing import Any, Dict, List, Optional, Tuple

from ..core.heap import settle_after_start
from ..core.pipeline import EventFilter
from ..core.settings import FilterOptions, filter_settings
from ..core.stats import FilterStats
from ..forward.codec import Entry, pack_entries, text_records, unpack_entries, unpack_text_entries
from ..model.encodable import encodable, json_line
from .localstore import json_lines
from .routing import Batch, LinesBatch, PackedBatch, RoutedBatch, Router, RouteSettings

log = logging.getLogger("atnorm.relay")

Counts = Tuple[Any, ...]  # the FilterStats counters of one chunk, and its unschemed labels
# What a worker makes of each routed batch: a payload in the downstream's entry form, or
# the JSON lines of the files destination.
OUTPUT_FORMS = ("plain", "metadata", "json-lines")


def output_form(forward: bool, entry_form: str) -> str:
    """The form of a worker's batches for a relay with (or without) a downstream."""
    return entry_form if forward else "json-lines"


class _Worker:
    """What one worker process holds: its filter, its router and the generation it was
    built for; `form` (one of OUTPUT_FORMS) is what it makes of each routed batch."""

    def __init__(self, filter_options: FilterOptions, routes: RouteSettings, generation: Any,
                 form: str = "plain") -> None:
        if form not in OUTPUT_FORMS:
            raise ValueError(f"form must be one of {', '.join(OUTPUT_FORMS)}, got {form!r}")
        self.filter_options = filter_options
        self.form = form
        self.generation = generation
        self.built_for = generation.value
        self.filter = EventFilter.from_schemas(settings=filter_settings(filter_options))
        self.router = Router.with_settings(self.decide, routes, count=lambda verdict: self.filter.stats.count(verdict),
                                           decide_text=self.decide_text)

    def decide(self, record: Any) -> Any:
        return self.filter.process(record)

    def decide_text(self, record: Any) -> Any:
        return self.filter.process_text(record)

    def refresh(self) -> None:
        wanted = self.generation.value
        if wanted == self.built_for:
            return
        self.built_for = wanted
        try:
            self.filter = EventFilter.from_schemas(settings=filter_settings(self.filter_options))
        except Exception:  # the relay's own reload reports the mistake; keep deciding with the old rules
            pass

    def route(self, tag: str, payload: bytes) -> Tuple[List[Batch], Counts]:
        self.refresh()
        stats = self.filter.stats = FilterStats()  # this chunk's counts only
        entries, _, ends = unpack_text_entries(payload)
        text = text_records(payload, ends) if ends is not None else None
        form = self.form
        routed: List[Batch] = [_lines_batch(b) if form == "json-lines" else _packed_batch(b, form == "metadata")
                               for b in self.router.route(tag, entries, text)]
        counts = (stats.outcomes, stats.by_service, stats.rejections, stats.warnings, stats.fixes,
                  stats.unknown_actions, stats.unschemed)
        return routed, counts


def _packed_batch(batch: RoutedBatch, keep_metadata: bool) -> PackedBatch:
    """A routed batch packed as the downstream is to get it, and whether it is plain (no
    entry in the metadata form): the packing ForwardDestination does for a batch decided
    in the relay's own process."""
    entries = batch.entries
    if keep_metadata and any(entry.metadata is not None for entry in entries):
        return PackedBatch(batch.route, batch.tag, _packed(entries), len(entries), False)
    try:
        payload = batch.plain_packed()
    except (TypeError, ValueError, OverflowError):
        payload = _packed([Entry(entry.time, entry.record) for entry in entries])
    return PackedBatch(batch.route, batch.tag, payload, len(entries), True)


def _lines_batch(batch: RoutedBatch) -> LinesBatch:
    """A routed batch as the JSON lines the files destination appends: the lines it would
    write for the batch packed (`_packed`) and read back. A record of JSON's own types is
    the same after that round trip, so its line is made at once; a batch with any other
    record takes the round trip."""
    lines: List[str] = []
    for entry in batch.entries:
        line = json_line(entry.record)
        if line is None:
            break
        lines.append(line)
    else:
        texts = {batch.route: "\n".join(lines)} if lines else {}
        return LinesBatch(batch.route, batch.tag, len(batch.entries), texts, [])
    out: Dict[str, List[str]] = {}
    warnings: List[str] = []
    records = (entry.record for entry in unpack_entries(_packed(batch.entries))[0])
    json_lines(batch.route, records, out, warnings)
    texts = {route: "\n".join(group) for route, group in out.items() if group}
    return LinesBatch(batch.route, batch.tag, len(batch.entries), texts, warnings)


def _packed(entries: List[Entry]) -> bytes:
    """The entries as a payload; a record msgpack cannot hold is sent as its encodable() form."""
    try:
        return pack_entries(entries)
    except (TypeError, ValueError, OverflowError):
        return pack_entries([entry._replace(record=encodable(entry.record)) for entry in entries])


_worker: Optional[_Worker] = None
_started: Any = None  # how many workers of the executor have built their filter (a shared int)


def _start_worker(filter_options: FilterOptions, routes: RouteSettings, generation: Any, form: str,
                  started: Any) -> None:
    global _worker, _started
    # Ctrl-C and SIGHUP reach the whole process group: the relay decides what they mean.
    # SIGTERM keeps its default: it is how the pool stops a worker (ProcessPoolExecutor
    # terminates the survivors when one dies; a worker ignoring it blocked that forever).
    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _worker = _Worker(filter_options, routes, generation, form)
    settle_after_start()  # schemas loaded: keep them out of every later collection
    _started = started
    with started.get_lock():
        started.value += 1


def _route_in_worker(tag: str, payload: bytes) -> Tuple[List[Batch], Counts]:
    assert _worker is not None
    return _worker.route(tag, payload)


def _all_started(workers: int, timeout: float) -> bool:
    """Wait (in a worker) until `workers` workers have built their filter. Each worker holds
    one of these calls, so the pool has to start all of them to answer every call."""
    deadline = time.monotonic() + timeout
    while _started.value < workers:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# How often a chunk waiting on a worker checks that its executor is still whole.
ORPHAN_CHECK_INTERVAL = 1.0


def _broken(executor: concurrent.futures.ProcessPoolExecutor) -> bool:
    """Whether a worker of `executor` died: its own flag, set before it fails what it holds."""
    return bool(getattr(executor, "_broken", False))


def _hand_over(loop: asyncio.AbstractEventLoop, work: "concurrent.futures.Future[Any]",
               outcome: "asyncio.Future[Any]") -> None:
    """In the executor's thread as `work` ends: its outcome goes to `outcome`, on the loop."""
    try:
        loop.call_soon_threadsafe(_settle, work, outcome)
    except RuntimeError:  # the loop is closed: nobody waits for it any more
        pass


def _settle(work: "concurrent.futures.Future[Any]", outcome: "asyncio.Future[Any]") -> None:
    if outcome.done():  # the pool found the executor broken first, or the chunk's task was cancelled
        return
    if work.cancelled():  # the pool is closing
        outcome.cancel()
        return
    error = work.exception()
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(work.result())


def _processes(executor: concurrent.futures.ProcessPoolExecutor) -> List[Any]:
    """The worker processes `executor` started (none once it was shut down)."""
    return list((getattr(executor, "_processes", None) or {}).values())


def add_counts(stats: FilterStats, counts: Counts) -> None:
    """Add one chunk's counts from a worker to the relay's counters."""
    outcomes, by_service, rejections, warnings, fixes, unknown, unschemed = counts
    stats.outcomes.update(outcomes)
    # A worker names services without schemas within its own bound; the relay's bound decides.
    for (outcome, service), count in by_service.items():
        stats.by_service[(outcome, stats.unschemed_label(service) if service in unschemed else service)] += count
    for (rule, service), count in rejections.items():
        stats.rejections[(rule, stats.unschemed_label(service) if service in unschemed else service)] += count
    stats.warnings.update(warnings)
    stats.fixes.update(fixes)
    for (service, action), count in unknown.items():
        stats.count_unknown_action(service, action, count)


class FilterPool:
    """N worker processes that decide and route chunks; results are packed per route.

    A worker that dies (killed, out of memory) takes its executor with it: every chunk in
    flight there fails with BrokenProcessPool. The pool then starts a new executor and
    redoes each of those chunks once; a chunk that breaks the new workers too is decided
    in the relay's own process, so no chunk waits on workers that will not come back.
    """

    def __init__(self, workers: int, filter_options: FilterOptions, routes: RouteSettings,
                 stats: FilterStats, form: str = "plain") -> None:
        if workers < 2:
            raise ValueError("a filter pool needs at least 2 workers")
        self.workers = workers
        self.stats = stats
        self.restarts = 0  # executors replaced after a worker died
        self.decided_here = 0  # chunks decided in this process after breaking workers twice
        # spawn, not fork: the relay has threads (spool, metrics) that a fork would copy mid-lock.
        self._context = multiprocessing.get_context("spawn")
        # No lock in shared memory that a worker can die holding (SIGKILL while reading it
        # left every later worker, and the relay's next reload, waiting on it for ever): the
        # relay is the only writer of the generation, each worker counts itself in on a
        # counter of its own executor's, and a broken executor is never started again.
        self._generation = self._context.RawValue("i", 0)
        self._reload_lock = threading.Lock()
        self._arguments = (filter_options, routes, self._generation, form)
        self._executor = self._new_executor()
        self._local: Optional[_Worker] = None
        self._closing = False

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        return concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=self._context,
                                                      initializer=_start_worker,
                                                      initargs=(*self._arguments, self._context.Value("i", 0)))

    async def start(self, timeout: float = 120.0) -> None:
        """Start every worker and wait until each has built its filter: a worker started
        later would read the tuning file as it is then, not as the relay's filter read it."""
        loop = asyncio.get_running_loop()
        ready = await asyncio.gather(*(loop.run_in_executor(self._executor, _all_started, self.workers, timeout)
                                       for _ in range(self.workers)))
        if not all(ready):
            raise RuntimeError(f"the filter workers did not all start within {timeout:.0f} s")

    async def route(self, tag: str, payload: bytes) -> List[Batch]:
        """A chunk's records, as a PackedForward payload, decided in a worker: one batch per
        route, in the pool's form."""
        for attempt in range(2):
            if self._closing:
                break
            executor = self._executor
            try:
                routed, counts = await self._decided(executor, tag, payload)
            except BrokenProcessPool:
                self._replace(executor, attempt)
                continue
            add_counts(self.stats, counts)
            return routed
        return self._route_here(tag, payload)

    async def _decided(self, executor: concurrent.futures.ProcessPoolExecutor, tag: str, payload: bytes) -> Any:
        """What a worker of `executor` made of a chunk, or BrokenProcessPool once it broke.

        The executor fails every chunk it holds when a worker dies, but CPython (3.9 to
        3.12 at least) flags it broken without the lock `submit` holds: a chunk submitted
        in that instant is never failed and never run. So a chunk still waiting after
        ORPHAN_CHECK_INTERVAL looks whether its executor broke or was replaced, and if so
        is redone; a worker's late answer is never taken. (A timer, not a wait with a
        timeout: that cost the relay 50 µs of CPU per chunk.)"""
        loop = asyncio.get_running_loop()
        work = executor.submit(_route_in_worker, tag, payload)  # BrokenProcessPool if it already broke
        # Its own hand-over, not asyncio.wrap_future: the watch then fails the chunk on the
        # relay's side only, and this measured cheaper (about 30 µs less CPU per chunk).
        outcome: "asyncio.Future[Any]" = loop.create_future()
        work.add_done_callback(lambda done: _hand_over(loop, done, outcome))
        watch: List[asyncio.TimerHandle] = []

        def check() -> None:
            if outcome.done():
                return
            if self._executor is not executor or _broken(executor):
                outcome.set_exception(BrokenProcessPool("the executor holding this chunk broke before deciding it"))
                work.cancel()
            else:
                watch[0] = loop.call_later(ORPHAN_CHECK_INTERVAL, check)

        watch.append(loop.call_later(ORPHAN_CHECK_INTERVAL, check))
        try:
            return await outcome
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            watch[0].cancel()

    def _replace(self, broken: concurrent.futures.ProcessPoolExecutor, attempt: int) -> None:
        """A worker of `broken` died: new workers for what comes next (once per broken executor)."""
        if attempt > 0:
            log.error("a filter worker died again on a chunk it was redoing; deciding that chunk in the relay")
        if self._executor is broken and not self._closing:
            log.error("a filter worker died; starting new workers and redoing the chunks it held")
            # Its survivors are useless now, and may never exit: when the executor's own
            # clean-up fails in the race `_decided` describes, nothing stops them, and a
            # worker left blocked on the dead one's queue lock would hold the relay's exit.
            for process in _processes(broken):
                process.kill()  # a no-op for one already reaped; a signal to a zombie is harmless
            broken.shutdown(wait=False, cancel_futures=True)
            self._executor = self._new_executor()
            self.restarts += 1

    def _route_here(self, tag: str, payload: bytes) -> List[Batch]:
        """Decide a chunk in this process, exactly as a worker would (same options, same reloads)."""
        if self._local is None:
            self._local = _Worker(*self._arguments)
        routed, counts = self._local.route(tag, payload)
        add_counts(self.stats, counts)
        self.decided_here += 1
        return routed

    def request_reload(self) -> None:
        """Have every worker rebuild its filter before its next chunk."""
        with self._reload_lock:
            self._generation.value += 1

    def close(self, grace: float = 30.0) -> None:
        """Stop the workers: those still running after `grace` seconds are killed, so this always returns."""
        self._closing = True
        executor = self._executor
        processes = _processes(executor)
        executor.shutdown(wait=False, cancel_futures=True)
        # Wait on their exit pipes, not join(): the executor's thread reaps them as they exit,
        # and a join racing it lost the exit status and called an exited worker busy.
        running = {process.sentinel: process for process in processes}
        deadline = time.monotonic() + max(grace, 0.0)
        while running:
            left = deadline - time.monotonic()
            exited = wait_for_exit(list(running), left) if left > 0 else []
            if not exited:
                break
            for sentinel in exited:
                del running[sentinel]
        for process in running.values():
            log.warning("filter worker %s did not stop within %.0f s; killing it", process.pid, grace)
            process.kill()
        # With every worker gone, the executor's own shutdown finishes at once.
        executor.shutdown(wait=True)
