"""`atnorm serve --workers N`: N relay processes serving the same addresses.

Like Fluentd's `workers`: a supervisor starts N worker processes, each a whole relay
(`service.Relay`) that decodes, decides, hands on and acks the chunks of the connections it
serves, on its own core. The supervisor listens on the addresses itself and deals each
connection it accepts to the worker with the fewest open connections (`forward.handoff`),
rather than every worker listening with SO_REUSEPORT, where the kernel's hash of the
addresses leaves workers idle when senders keep few connections. Fluent Bit and Fluentd
keep a connection open and send chunk after chunk on it, so a sender that should use
several workers opens several connections (Fluent Bit `workers` on its forward output, or
several Fluentd `<server>`s / processes).

Each worker has its own spool, rather than all sharing one. A spool has one writer and one
deliverer, so nothing has to decide which process sends a spooled batch, and a worker
killed with SIGKILL leaves a file that only its replacement (same index, same paths)
reopens: SQLite's journal makes it whole, its batches are resent, and the upstream chunks
it had not acked are resent by their senders. A shared spool would need the processes to
claim batches and to release a killed one's claims. Worker 0 uses the paths of a single
relay (so going from 1 to N workers keeps draining the same spool), worker i > 0 those
under DATA_DIR/worker-i; a spool left with records by a worker index no longer started
stops start-up, as those records would wait there unseen.

The supervisor restarts a worker that dies (with a growing pause if it keeps dying), deals
it connections again once it is ready, passes SIGHUP on, and on SIGTERM / SIGINT stops
accepting, stops every worker and logs their summed counts. A worker whose supervisor is
gone (killed) stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import multiprocessing
import os
import signal
import socket
import time
from multiprocessing.connection import Connection
from typing import Any, Dict, List, Optional, Tuple

from ..config.logs import configure_logging
from ..config.options import host_port, host_port_text
from ..core.heap import settle_after_start
from ..core.settings import resolve_filter_options
from ..core.stats import FilterStats, summary_text
from ..errors import ConfigError, ConfigErrors
from ..forward.handoff import ConnectionDealer, HandedConnections
from .service import Relay, RelaySettings, build_event_filter, rejected_spool_path, serve
from .spool import Spool, SpoolError

log = logging.getLogger("atnorm.relay")

# How long a worker may take to load its schemas and bind before start-up gives up.
START_TIMEOUT = 120.0
# Pause before restarting a worker that died; doubled while it keeps dying soon after start.
RESTART_PAUSE = 1.0
RESTART_PAUSE_MAX = 60.0
# A worker that ran this long before dying is restarted after the shortest pause again.
STABLE_AFTER = 60.0
# How often a worker checks that its supervisor still runs.
PARENT_CHECK_INTERVAL = 1.0
# Beyond shutdown_timeout, how long workers get to log their counts and exit before they are killed.
EXIT_MARGIN = 15.0


def _suffixed(path: str, index: int) -> str:
    """`spool.db` → `spool.worker-2.db`: worker `index`'s own copy of a file path set by hand."""
    root, extension = os.path.splitext(path)
    return f"{root}.worker-{index}{extension}"


def worker_settings(settings: RelaySettings, index: int, listen: Tuple[str, ...]) -> RelaySettings:
    """What worker `index` runs with: the same settings, on `listen` (the ports the
    supervisor holds), with its own data directory, spool, drift state and metrics port."""
    changes: Dict[str, Any] = {"listen": listen, "workers": 1}
    if index > 0:
        data_dir = os.path.join(settings.data_dir, f"worker-{index}")
        derived_spool = settings.spool_path == os.path.join(settings.data_dir, "spool.db")
        changes["data_dir"] = data_dir
        changes["spool_path"] = (os.path.join(data_dir, "spool.db") if derived_spool
                                 else _suffixed(str(settings.spool_path), index))
        if settings.drift_state:
            changes["drift_state"] = _suffixed(settings.drift_state, index)
        if settings.metrics_listen:
            host, port = host_port(settings.metrics_listen)
            if port:  # port 0: every worker picks its own
                changes["metrics_listen"] = host_port_text(host, port + index)
    return dataclasses.replace(settings, **changes)


def _spool_paths(settings: RelaySettings) -> List[str]:
    paths = [str(settings.spool_path)]
    if settings.rejected_forward:
        paths.append(rejected_spool_path(paths[0]))
    return paths


def left_behind(settings: RelaySettings, highest: int = 64) -> List[ConfigError]:
    """Spools of worker indexes at or above `settings.workers` that still hold records."""
    problems: List[ConfigError] = []
    for index in range(settings.workers, highest):
        for path in _spool_paths(worker_settings(settings, index, settings.listen)):
            if not os.path.exists(path):
                continue
            try:
                spool = Spool(path, max_bytes=settings.spool_max_size)
            except SpoolError as exc:
                problems.append(ConfigError(str(exc), key="workers"))
                continue
            try:
                depth, quarantined = spool.depth_records, len(spool.quarantined())
            finally:
                spool.close()
            if depth or quarantined:
                problems.append(ConfigError(
                    f"{path} holds {depth} records and {quarantined} quarantined chunks of worker {index}, "
                    f"which workers {settings.workers} would not start: run with workers {index + 1} or "
                    f"more until it is empty (atnorm quarantine for the quarantined ones)", key="workers"))
    return problems


def _run_worker(index: int, settings: RelaySettings, args: argparse.Namespace,
                file_values: Dict[str, Any], channel: Connection, dealt: socket.socket) -> None:
    """A worker process: one relay, serving the connections dealt over `dealt`, which
    reports ("ready", description), or ("failed", why) if it cannot start, and ("stopped",
    counts) at the end."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until serve() handles it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # while starting: a Ctrl-C reaches the supervisor too, which stops us
    configure_logging(f"serve worker {index}", settings.log_level, settings.log_format)
    try:
        filter_options = resolve_filter_options(args, file_values)
        filter_stats = FilterStats()
        event_filter = (build_event_filter(args, file_values, filter_stats, settings.drift_state)
                        if settings.filter else None)
        relay = Relay(settings, event_filter, filter_stats, filter_options, worker=index)
    except (ConfigError, ConfigErrors) as exc:
        _tell(channel, ("failed", str(exc)))
        return
    settle_after_start()
    supervisor = os.getppid()
    connections = HandedConnections(dealt, relay.server.adopt)

    def ready(started: Relay) -> None:
        connections.start()
        _tell(channel, ("ready", started.describe()))
        asyncio.get_running_loop().create_task(_stop_when_orphaned(supervisor))

    try:
        # Stopping, the worker closes its end of the pair first, so that the supervisor
        # deals the connections that come meanwhile to the others, not to a worker that
        # would close them at once.
        asyncio.run(serve(relay, ready=ready, log_start=False, stopping_hook=connections.close))
    except (ConfigError, ConfigErrors) as exc:
        _tell(channel, ("failed", str(exc)))
        return
    _tell(channel, ("stopped", relay.summary_counts()))


def _tell(channel: Connection, message: Tuple[str, Any]) -> None:
    """Send the supervisor `message`, unless it is gone (then nobody is listening)."""
    try:
        channel.send(message)
    except OSError:
        pass


async def _stop_when_orphaned(supervisor: int) -> None:
    """SIGTERM ourselves (a clean stop) once the supervisor is gone, e.g. killed."""
    while os.getppid() == supervisor:
        await asyncio.sleep(PARENT_CHECK_INTERVAL)
    log.warning("the supervisor (pid %s) is gone; stopping", supervisor)
    os.kill(os.getpid(), signal.SIGTERM)


@dataclasses.dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing.Process (spawn context)
    channel: Connection
    started: float
    pause: float


async def _readable(fd: int, timeout: Optional[float]) -> bool:
    """Wait until `fd` is readable (a message, EOF, a process's end); False after `timeout`."""
    loop = asyncio.get_running_loop()
    readable: "asyncio.Future[bool]" = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(True)

    loop.add_reader(fd, ready)
    try:
        await asyncio.wait_for(readable, timeout)
        return True
    except asyncio.TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)


async def _message(worker: _Worker, timeout: Optional[float]) -> Optional[Tuple[str, Any]]:
    """The worker's next message; None if it is gone without one, or after `timeout`."""
    if not await _readable(worker.channel.fileno(), timeout):
        return None
    try:
        message: Tuple[str, Any] = worker.channel.recv()
    except (EOFError, OSError):
        return None
    return message


def _last_message(worker: _Worker) -> Optional[Tuple[str, Any]]:
    """What an ended worker left in its channel last, if anything."""
    message: Optional[Tuple[str, Any]] = None
    try:
        while worker.channel.poll():
            message = worker.channel.recv()
    except (EOFError, OSError):
        pass
    return message


class RelayWorkers:
    """The supervisor of `settings.workers` relay processes (see the module docstring)."""

    def __init__(self, settings: RelaySettings, args: argparse.Namespace, file_values: Dict[str, Any]) -> None:
        self.settings = settings
        self.args = args
        self.file_values = file_values
        # spawn, not fork: a clean interpreter per worker, as the filter pool's.
        self._context = multiprocessing.get_context("spawn")
        self._workers: Dict[int, _Worker] = {}
        self._dealer: Optional[ConnectionDealer] = None
        self._tasks: List["asyncio.Task[None]"] = []
        self._stopping: Optional[asyncio.Event] = None
        self.restarts = 0
        self.counts: Dict[str, int] = {}

    def _spawn(self, index: int, pause: float) -> _Worker:
        """Start worker `index`; OSError (no descriptors, no memory to fork) leaves nothing open."""
        assert self._dealer is not None
        receiving, sending = self._context.Pipe(duplex=False)
        try:
            dealt = self._dealer.seat(index)
        except OSError:
            receiving.close()
            sending.close()
            raise
        process = self._context.Process(
            target=_run_worker, name=f"atnorm-serve-worker-{index}",
            args=(index, worker_settings(self.settings, index, self._dealer.listen), self.args,
                  self.file_values, sending, dealt))
        try:
            process.start()
        except OSError:
            receiving.close()
            self._dealer.leave(index)
            raise
        finally:
            sending.close()  # the worker holds the only writing end: EOF once it is gone
            dealt.close()
        worker = _Worker(index, process, receiving, time.monotonic(), pause)
        self._workers[index] = worker
        return worker

    async def start(self) -> None:
        """Listen, start every worker and wait until each is ready; if one cannot start,
        stop the others and raise its reason."""
        self._stopping = asyncio.Event()
        problems = left_behind(self.settings)
        if problems:
            raise problems[0] if len(problems) == 1 else ConfigErrors(problems)
        try:
            self._dealer = ConnectionDealer(self.settings.listen)
        except OSError as exc:
            raise ConfigError(exc.strerror or str(exc), key="listen") from None
        loop = asyncio.get_running_loop()
        first_replies: List["asyncio.Future[Optional[Tuple[str, Any]]]"] = []
        for index in range(self.settings.workers):
            first_reply: "asyncio.Future[Optional[Tuple[str, Any]]]" = loop.create_future()
            first_replies.append(first_reply)
            try:
                worker = self._spawn(index, RESTART_PAUSE)
            except OSError as exc:
                await self.stop(grace=0)
                raise ConfigError(f"cannot start worker {index}: {exc.strerror or exc}", key="workers") from None
            self._tasks.append(loop.create_task(self._keep(worker, first_reply)))
        replies = await asyncio.gather(*first_replies)
        failed = [(index, reply) for index, reply in enumerate(replies) if reply is None or reply[0] != "ready"]
        if failed:
            await self.stop(grace=0)
            index, reply = failed[0]
            raise ConfigError(reply[1] if reply is not None else f"worker {index} did not start")
        for index, reply in enumerate(replies):
            assert reply is not None
            log.info("worker %d (pid %d): %s", index, self._workers[index].process.pid, reply[1])
        log.info("%d workers serving %s (each new connection to the one with the fewest open); SIGHUP "
                 "reaches each, a worker that dies is restarted", self.settings.workers,
                 ", ".join(self._dealer.listen))

    async def _keep(self, worker: _Worker, first_reply: "asyncio.Future[Optional[Tuple[str, Any]]]") -> None:
        """One worker index for the supervisor's life: wait for the worker to be ready (the
        first time, `first_reply` gets its answer) and for its end; then, unless stopping,
        start it again after a pause that grows while it keeps dying young."""
        assert self._stopping is not None and self._dealer is not None
        while True:
            reply = await _message(worker, START_TIMEOUT)
            if reply is not None and reply[0] == "ready":
                self._dealer.ready(worker.index)
            if reply is None and worker.process.is_alive():
                log.error("worker %d did not start within %.0f s; killing it", worker.index, START_TIMEOUT)
                worker.process.kill()
            if not first_reply.done():
                first_reply.set_result(reply)
            elif reply is not None and reply[0] == "ready":
                log.info("worker %d restarted (pid %d): %s", worker.index, worker.process.pid, reply[1])
            elif reply is not None:
                log.error("worker %d could not start again: %s", worker.index, reply[1])
            await _readable(worker.process.sentinel, None)
            self._dealer.leave(worker.index)
            worker.process.join()
            final = _last_message(worker)
            if final is not None and final[0] == "stopped":
                self._add_counts(final[1])
            worker.channel.close()
            if self._stopping.is_set():
                return
            lived = time.monotonic() - worker.started
            pause = RESTART_PAUSE if lived >= STABLE_AFTER else worker.pause
            log.error("worker %d (pid %d) ended (%s); starting it again in %.0f s", worker.index,
                      worker.process.pid, _exit_text(worker.process.exitcode), pause)
            replacement = await self._respawn(worker.index, pause)
            if replacement is None:
                return
            worker = replacement
            self.restarts += 1

    async def _respawn(self, index: int, pause: float) -> Optional[_Worker]:
        """Worker `index` started again after `pause` (and again, pausing longer, while it
        cannot be started at all); None if stopping meanwhile."""
        assert self._stopping is not None
        while True:
            try:
                await asyncio.wait_for(self._stopping.wait(), pause)
                return None
            except asyncio.TimeoutError:
                pass
            pause = min(pause * 2, RESTART_PAUSE_MAX)
            try:
                return self._spawn(index, pause)
            except OSError as exc:
                log.error("worker %d cannot be started: %s; trying again in %.0f s", index,
                          exc.strerror or exc, pause)

    def _add_counts(self, counts: Dict[str, int]) -> None:
        for name, value in counts.items():
            self.counts[name] = self.counts.get(name, 0) + value

    def signal_all(self, signum: int) -> None:
        for worker in self._workers.values():
            if worker.process.exitcode is None:
                try:
                    os.kill(worker.process.pid, signum)
                except ProcessLookupError:
                    pass

    async def stop(self, grace: float) -> None:
        """SIGTERM every worker, give them `grace` seconds (and a margin to log and exit),
        kill those still running, and let the ports go."""
        assert self._stopping is not None
        self._stopping.set()
        if self._dealer is not None:
            self._dealer.close()  # new connections are refused while the workers finish theirs
        self.signal_all(signal.SIGTERM)
        tasks = asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(asyncio.shield(tasks), grace + EXIT_MARGIN)
        except asyncio.TimeoutError:
            for worker in self._workers.values():
                if worker.process.exitcode is None:
                    log.warning("worker %d (pid %d) still running after %.0f s; killing it", worker.index,
                                worker.process.pid, grace + EXIT_MARGIN)
                    worker.process.kill()
            await tasks

    async def run(self) -> None:
        """Start the workers, keep them running until SIGTERM / SIGINT, then stop them."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.start()
            await stop_requested.wait()
            log.info("stopping: every worker finishes its chunks in flight")
            await self.stop(grace=self.settings.shutdown_timeout)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        log.info("stopped: %s workers=%d worker_restarts=%d", summary_text(self.counts),
                 self.settings.workers, self.restarts)

    def _on_sighup(self) -> None:
        log.info("SIGHUP: passing it on to the %d workers", len(self._workers))
        self.signal_all(signal.SIGHUP)


def _exit_text(exitcode: Optional[int]) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"
