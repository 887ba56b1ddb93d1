"""Getting batches to the downstream safely: acked by it, or else in the durable spool.

`Delivery.hand_off(tag, entries_payload, count)` is the relay's one call per outgoing batch.
It returns True when the batch is safe — acked downstream, or appended to the spool — so
the upstream chunk may be acked; False only when the spool is full, in which case nothing
was stored and the upstream must not be acked (its sender keeps the data and retries).

`SpoolDrainer` runs beside it: while the spool holds batches it sends them downstream
oldest first, removes each only after its ack, and backs off while the downstream is down.
Spool calls run on one worker thread, so a `sync="full"` fsync never stalls the event loop
and spool operations keep their order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, Callable, Dict, Optional, Tuple, TypeVar, Union

from ..forward.sender import ForwardSender, NotAcked, Refused
from ..monitoring.relaystats import RelayStats
from .spool import Spool, SpoolError, SpoolFull

log = logging.getLogger(__name__)

# After a spool disk error, /readyz stays false this long (or until an append works).
SPOOL_ERROR_HOLD = 30.0

T = TypeVar("T")


class _SpoolWorker:
    """Runs spool calls, one at a time and in order, on a private thread."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                               thread_name_prefix="atnorm-spool")

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: function(*args, **kwargs))

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)


def note_quarantined(stats: RelayStats, tag: str, count: int, refused: Refused) -> None:
    stats.chunks_quarantined += 1
    stats.records_quarantined += count
    log.warning("quarantined %d records of tag %s: the downstream refused them %d times (%s); "
                "see `atnorm quarantine list`", count, tag, refused.attempts, refused.reason)


class SpoolDrainer:
    """Sends spooled batches downstream in order; removes each only after its ack."""

    def __init__(self, spool: Spool, sender: ForwardSender, *,
                 stats: Optional[RelayStats] = None, window_batches: int = 512,
                 window_bytes: int = 8 << 20, retry_wait: float = 1.0,
                 retry_max_wait: float = 30.0, refresh_interval: float = 1.0,
                 worker: Optional[_SpoolWorker] = None) -> None:
        self.spool = spool
        self.sender = sender
        self.stats = stats if stats is not None else sender.stats
        self.window_batches = window_batches
        self.window_bytes = window_bytes
        self.retry_wait = retry_wait
        self.retry_max_wait = retry_max_wait
        self.refresh_interval = refresh_interval
        self._worker = worker or _SpoolWorker()
        self._owns_worker = worker is None
        self._wake: Optional[asyncio.Event] = None
        self._stopping = False
        self._task: Optional["asyncio.Task[None]"] = None
        self._requeue_error: Optional[str] = None
        # Refusals of spooled batches across drain rounds (seq → count), for retry_max_times.
        self._failures: Dict[int, int] = {}

    def start(self) -> "asyncio.Task[None]":
        """Run the drain loop as a task on the running event loop."""
        if self._task is None:
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self.run())
        return self._task

    def wake(self) -> None:
        """Tell the loop the spool has new batches (it also checks every `refresh_interval`)."""
        if self._wake is not None:
            self._wake.set()

    async def run(self) -> None:
        """Drain until `stop()`: wait while empty, back off while the downstream fails."""
        if self._wake is None:
            self._wake = asyncio.Event()
        backoff = self.retry_wait
        while not self._stopping:
            self._wake.clear()  # before looking, so a wake() from now on is not missed
            await self._requeue_requested()
            if self.spool.depth_batches == 0:
                self.spool.publish_stats()
                await self._pause(self.refresh_interval)
                continue
            down_for = self.sender.down_for()
            if down_for > 0:
                await self._pause(down_for)
                continue
            _, failed = await self.drain_once()
            self.spool.publish_stats()
            if failed:
                self.stats.retries += failed
                log.info("spool: %d batch(es) not delivered, retrying in %.1fs (%s)",
                         failed, backoff, self.sender.last_error)
                await self._pause(backoff)
                backoff = min(backoff * 2, self.retry_max_wait)
            else:
                backoff = self.retry_wait

    async def drain_once(self) -> Tuple[int, int]:
        """Send one window of the oldest batches; returns (records delivered, batches failed)."""
        batches = await self._worker.call(self.spool.peek, self.window_batches,
                                          max_bytes=self.window_bytes)
        if not batches:
            return 0, 0
        # submit() in spool order: same-tag batches share chunks and keep their order.
        futures = [self.sender.submit(b.tag, b.payload, b.count) for b in batches]
        results = await asyncio.gather(*futures)
        acked = [b for b, ok in zip(batches, results) if ok]
        if acked:
            await self._worker.call(self.spool.remove, [b.seq for b in acked])
        for batch in acked:
            self._failures.pop(batch.seq, None)
        refused = 0
        limit = self.sender.retry_max_times
        for batch, result in zip(batches, results):
            if not isinstance(result, NotAcked):
                continue
            failures = self._failures.get(batch.seq, 0) + result.attempts
            if not isinstance(result, Refused) and (limit is None or failures < limit):
                self._failures[batch.seq] = failures  # refused again in a later round counts on
                continue
            try:
                await self._worker.call(self.spool.quarantine_batch, batch.seq, error=result.reason,
                                        attempts=failures)
            except SpoolError as exc:
                log.error("spool: cannot quarantine a refused batch, it stays queued: %s", exc)
                continue
            self._failures.pop(batch.seq, None)
            refused += 1
            note_quarantined(self.stats, batch.tag, batch.count, Refused(result.reason, failures))
        return sum(b.count for b in acked), len(batches) - len(acked) - refused

    def note_failures(self, seq: int, failures: int) -> None:
        """A batch just spooled had already been refused `failures` times on its way in."""
        if failures:
            self._failures[seq] = self._failures.get(seq, 0) + failures

    async def _requeue_requested(self) -> None:
        """Chunks `atnorm quarantine resend` marked while this relay runs go back in the queue."""
        try:
            moved = await self._worker.call(self.spool.requeue, requested_only=True)
        except SpoolError as exc:  # SpoolFull included: try again at the next round
            if str(exc) != self._requeue_error:
                log.warning("quarantine: cannot re-queue chunks marked for re-sending yet: %s", exc)
            self._requeue_error = str(exc)
            return
        self._requeue_error = None
        if moved:
            log.info("quarantine: %d chunk(s) marked for re-sending are back in the spool queue", moved)

    def request_stop(self) -> None:
        """Ask the loop to end after the current window; `stop()` waits for it."""
        self._stopping = True
        self.wake()

    async def stop(self) -> None:
        """End the loop after the current window (its unacked batches stay spooled)."""
        self.request_stop()
        if self._task is not None:
            await self._task
            self._task = None
        if self._owns_worker:
            self._worker.shutdown()

    async def _pause(self, seconds: float) -> None:
        assert self._wake is not None
        if self._stopping:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass


class Delivery:
    """Sender + spool + drainer: the outbound side of the relay behind one call.

    Takes ownership of `sender` and `spool`; `close()` closes both.
    """

    def __init__(self, sender: ForwardSender, spool: Spool, *,
                 stats: Optional[RelayStats] = None, **drainer_options: Any) -> None:
        self.sender = sender
        self.spool = spool
        self.stats = stats if stats is not None else sender.stats
        self._worker = _SpoolWorker()
        self.drainer = SpoolDrainer(spool, sender, stats=self.stats, worker=self._worker,
                                    **drainer_options)
        self._active = 0
        self._quiet: Optional[asyncio.Event] = None
        # Why the last append to the spool failed (full, or a disk error); None once one works.
        self.spool_error: Optional[str] = None
        self._spool_error_at = 0.0  # monotonic time of that failure
        self._spool_bytes_at_error = 0

    async def start(self) -> None:
        """Start draining whatever the spool holds from before (e.g. a previous run)."""
        self._quiet = asyncio.Event()
        self._quiet.set()
        self.drainer.start()

    async def hand_off(self, tag: str, entries_payload: bytes, count: int) -> bool:
        """True once the batch is acked downstream or durably spooled; False if the spool is full.

        On False nothing was stored: do not ack upstream (the sender will retry).
        """
        if self._quiet is None:
            await self.start()
        assert self._quiet is not None
        self._active += 1
        self._quiet.clear()
        try:
            # While the spool holds a backlog, new batches queue behind it: the downstream is
            # away or not acking, and waiting for it would hold every upstream ack for up
            # to retry_timeout; the drainer delivers the spool in order once it answers.
            result: Union[bool, NotAcked] = False
            if self.spool.depth_records == 0:
                result = await self.sender.send(tag, entries_payload, count)
                if result:
                    return True
                if isinstance(result, Refused):
                    return await self._quarantine(tag, entries_payload, count, result)
            try:
                seq = await self._worker.call(self.spool.append, tag, entries_payload, count)
            except SpoolFull as exc:
                self._spool_failed(str(exc), full=True)
                return False
            except SpoolError as exc:  # e.g. "database or disk is full": not stored, not acked
                self._spool_failed(str(exc), full=False)
                return False
            if self.spool_error is not None:
                log.info("spool: appending works again")
                self.spool_error = None
            if isinstance(result, NotAcked):
                self.drainer.note_failures(seq, result.attempts)
            self.drainer.wake()
            return True
        finally:
            self._active -= 1
            if self._active == 0:
                self._quiet.set()

    async def _quarantine(self, tag: str, entries_payload: bytes, count: int, refused: Refused) -> bool:
        try:
            await self._worker.call(self.spool.quarantine_append, tag, entries_payload, count,
                                    error=refused.reason, attempts=refused.attempts)
        except SpoolError as exc:
            self._spool_failed(str(exc), full=False)
            return False
        note_quarantined(self.stats, tag, count, refused)
        return True

    def readiness(self) -> Tuple[bool, str]:
        """Would a batch handed off now be safe (acked downstream or spooled)?

        Not when the downstream is not connected and the spool cannot take it: full to the
        byte, or the last append failed and nothing changed since (the spool has not shrunk,
        and a disk error is less than SPOOL_ERROR_HOLD seconds old).
        """
        sender = self.sender
        if sender.connected_server is not None and sender.down_for() == 0:
            return True, "ready"
        away = f"downstream not connected ({sender.last_error or 'not tried yet'})"
        if self.spool.is_full:
            return False, f"{away} and the spool is full ({self.spool.depth_bytes} bytes)"
        error = self.spool_error
        if error is not None:
            if error.startswith("spool full"):
                if self.spool.depth_bytes >= self._spool_bytes_at_error:
                    return False, f"{away} and the spool cannot take more: {error}"
            elif time.monotonic() - self._spool_error_at < SPOOL_ERROR_HOLD:
                return False, f"{away} and the spool cannot be written: {error}"
        return True, "ready"

    def _spool_failed(self, message: str, *, full: bool) -> None:
        self._spool_error_at = time.monotonic()
        self._spool_bytes_at_error = self.spool.depth_bytes
        was_full = self.spool_error is not None and self.spool_error.startswith("spool full")
        if self.spool_error is None or was_full != full:  # one line per change, not per chunk
            if full:
                log.warning("%s; chunks are left unacked for their senders to resend", message)
            else:
                log.error("%s; chunks are left unacked for their senders to resend", message)
        self.spool_error = message

    async def close(self, timeout: float = 10.0) -> None:
        """Stop draining, give in-flight batches `timeout` to be acked, spool the rest, close."""
        self.drainer.request_stop()
        await self.sender.close(timeout)  # resolves the drainer's window too
        await self.drainer.stop()
        if self._quiet is not None:
            await self._quiet.wait()  # hand-offs that just failed are appending to the spool
        await self._worker.call(self.spool.close)
        self._worker.shutdown()
