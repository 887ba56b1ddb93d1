"""`atnorm exec-filter`: the filter as a child of Fluentd's out_exec_filter.

Fluentd writes records to our stdin (JSON lines, a msgpack stream or TSV) and parses our
stdout back into events. There is no acknowledgement from the child, so this loop must
never die on bad input and must give exactly one output record per input record:

- accepted and passed records keep their tag (`--tag-key`), rejected ones get the tag plus
  `--rejected-tag-suffix` and the dead-letter form `{"original", "reasons"}`;
- input that cannot be read (bad JSON, invalid UTF-8, msgpack garbage, a TSV line with the
  wrong number of fields) becomes one rejected record saying why;
- each read from stdin is one batch: its outputs leave in one write, so a quiet period never
  leaves records waiting in our buffers;
- stderr stays silent (a chatty child has blocked pipelines before): diagnostics and the
  summary line at exit go to `--log-file`.

`--time-key KEY` carries the event time for Fluentd's `<extract> time_key`: accepted records
get the normalized eventTime (`2024-05-01T10:00:00.000+0000`, i.e. Fluentd
`time_type string`, `time_format %Y-%m-%dT%H:%M:%S.%N%z`); records that have no normalized
time keep the value that came in under that key, if any.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
from typing import Any, Callable, List, Optional, Tuple

from ..config.options import (
    host_port,
)
from ..core.heap import settle_after_start
from ..core.reload import ReloadingFilter
from ..errors import ConfigError
from ..model.encodable import encodable
from ..monitoring.metrics import start_metrics_server
from .diagnostics import DiagnosticLog
from .readers import READ_SIZE, JsonLinesInput, MsgpackInput, RecordInput, TsvInput
from .settings import ExecFilterSettings, load_settings
from .shaping import RecordRouter
from .writers import OutputEncoder, _keep_bytes


class StopSignal:
    """Turns SIGTERM/SIGINT into a readable wake-up fd, so a blocked wait ends at once
    while a batch in progress still finishes and is written. SIGHUP never stops the loop:
    it is noted (`hangup`) and handled between batches."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.hangup = False
        self.wakeup_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        os.set_blocking(self.wakeup_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}
        self._previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, self._on_hangup)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signum

    def _on_hangup(self, signum: int, frame: Any) -> None:
        self.hangup = True

    def drain(self) -> None:
        """Empty the wake-up pipe (so a stray byte cannot keep waking the loop)."""
        try:
            while os.read(self.wakeup_fd, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self.wakeup_fd)
        os.close(self._write_fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (a pipe may take fewer than asked, or be non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


# On SIGTERM, what is already in the stdin pipe is read and decided before exiting; a
# writer that never pauses cannot hold the exit back beyond this many bytes.
DRAIN_LIMIT = 64 << 20


def pump(reader: RecordInput, encode: Callable[[List[Any]], bytes], in_fd: int, out_fd: int,
         stop: StopSignal, on_hangup: Optional[Callable[[], None]] = None,
         log: Optional["DiagnosticLog"] = None) -> str:
    """Read batches until EOF or a stop signal; returns `"eof"` or `"signal"`.

    Each read is one batch: all complete records in it are filtered and their outputs
    leave in one write, so nothing waits in our buffers when Fluentd goes quiet. On a
    stop signal, the input that has already arrived is read and decided first (Fluentd
    closes our stdin and sends SIGTERM at the same moment when it shuts down).
    """
    watched = [in_fd, stop.wakeup_fd]
    while True:
        if stop.hangup:
            stop.hangup = False
            if on_hangup is not None:
                on_hangup()
        if stop.received is not None:
            how = "signal"
            break
        ready, _, _ = select.select(watched, [], [])
        if stop.received is not None:
            how = "signal"
            break
        if in_fd not in ready:
            stop.drain()
            continue
        try:
            chunk = os.read(in_fd, READ_SIZE)
        except BlockingIOError:  # stdin inherited in non-blocking mode
            continue
        if not chunk:
            how = "eof"
            break
        outputs = feed_safely(reader, chunk, log)
        if log is not None:
            log.debug(f"read {len(chunk)} bytes: {len(outputs)} records out")
        if outputs:
            write_all(out_fd, encode(outputs))
    if how == "signal":
        drained, flushed = drain_input(reader, encode, in_fd, out_fd)
        if log is not None:
            log.write(f"stop signal: read the {drained} bytes already in stdin and wrote "
                      f"{flushed} records for them before exiting")
    outputs = reader.close()
    if outputs:
        write_all(out_fd, encode(outputs))
    return how


def feed_safely(reader: RecordInput, chunk: bytes,
                log: Optional["DiagnosticLog"] = None) -> List[Any]:
    """`reader.feed(chunk)`; should the reader itself fail, the chunk becomes one
    internal.error rejection instead of a dead child (the readers catch their own
    record-level errors, so this is the last net)."""
    try:
        return reader.feed(chunk)
    except Exception as exc:
        message = (f"internal error while reading {len(chunk)} bytes of input: "
                   f"{type(exc).__name__}: {exc}")
        if log is not None:
            log.write(message, problem=True)
        router = reader.router
        return [router.unreadable(encodable(chunk[:router.max_record_bytes]), "internal.error",
                                  message)]


def drain_input(reader: RecordInput, encode: Callable[[List[Any]], bytes], in_fd: int,
                out_fd: int) -> Tuple[int, int]:
    """Read and decide what is in `in_fd` now, without waiting for more; returns (bytes
    read, outputs written)."""
    was_blocking = os.get_blocking(in_fd)
    drained = written = 0
    try:
        os.set_blocking(in_fd, False)
        while drained < DRAIN_LIMIT:
            try:
                chunk = os.read(in_fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            drained += len(chunk)
            outputs = feed_safely(reader, chunk)
            if outputs:
                write_all(out_fd, encode(outputs))
                written += len(outputs)
    except OSError:
        pass  # stdin went away: what was read is decided
    finally:
        try:
            os.set_blocking(in_fd, was_blocking)
        except OSError:
            pass
    return drained, written


def build_reader(settings: ExecFilterSettings, router: RecordRouter,
                 log: Optional[DiagnosticLog] = None) -> RecordInput:
    """The input decoder named by `in_format`."""
    if settings.in_format == "msgpack":
        keep = _keep_bytes if settings.out_format == "msgpack" else encodable
        return MsgpackInput(router, keep, log)
    if settings.in_format == "tsv":
        return TsvInput(router, settings.tsv_keys or ())
    return JsonLinesInput(router)


def run(args: argparse.Namespace) -> int:
    """Filter stdin to stdout until EOF or SIGTERM; exit 0 after writing what was read.
    SIGHUP reopens --log-file (logrotate) and reloads the tuning file, if any."""
    try:
        settings, file_values = load_settings(args)
    except ConfigError as exc:
        startup_error(getattr(args, "log_file", None), exc)
        raise
    log = DiagnosticLog(settings.log_file, settings.quiet, settings.log_level, settings.log_format)
    metrics = None
    event_filter = None
    try:
        try:
            # The holder swaps in a rebuilt filter on SIGHUP or a tuning-file change,
            # between records; its one FilterStats is what monitoring reads.
            event_filter = ReloadingFilter.from_args(args, file_values, log=log.write,
                                                     drift_state=settings.drift_state)
            tuning = getattr(args, "tuning", None) or file_values.get("tuning")
            if tuning:
                event_filter.start_watching()
            if settings.metrics_listen:
                metrics = start_metrics_server(host_port(settings.metrics_listen),
                                               event_filter.stats,
                                               schemas_loaded=lambda: len(event_filter.rules.services),
                                               reload_counts=event_filter)
        except ConfigError as exc:
            log.summary(f"cannot start: {exc}")
            raise
        except (OSError, ValueError) as exc:
            log.summary(f"cannot start: {exc}")
            raise ConfigError(f"cannot start: {exc}") from None
        router = RecordRouter(event_filter, settings.tag_key, settings.rejected_tag_suffix,
                              settings.default_tag, settings.time_key, log,
                              json_out=settings.out_format == "json",
                              msgpack_out=settings.out_format == "msgpack")
        reader = build_reader(settings, router, log)
        encode = OutputEncoder(router, settings.out_format, settings.json_block_size, log)
        settle_after_start()  # schemas loaded: keep them out of every later collection
        services = event_filter.rules.services
        log.write(f"started: {settings.in_format} in, {settings.out_format} out; {len(services)} "
                  f"services, {sum(len(d.actions) for d in services.values())} actions loaded")

        reloading = event_filter

        def on_hangup() -> None:
            log.reopen()
            if tuning:
                reloading.request_reload()
                log.write(f"SIGHUP: log file reopened, reloading {tuning}")
            else:
                log.write("SIGHUP: log file reopened (no tuning file to reload)")

        stop = StopSignal()
        try:
            how = pump(reader, encode, sys.stdin.fileno(), sys.stdout.fileno(), stop,
                       on_hangup, log)
        except BrokenPipeError:
            how = "stdout closed"
        except OSError as exc:  # nothing more can reach Fluentd; say so and stop cleanly
            how = f"stdout error ({exc.strerror or exc})"
        finally:
            stop.close()
        if how == "signal" and stop.received is not None:
            how = signal.Signals(stop.received).name
        log.summary(f"stopped on {how}: {router.stats.summary_line()}")
    finally:
        if metrics is not None:
            metrics.stop()
        if event_filter is not None:
            event_filter.close()
        log.close()
    return 0


def startup_error(path: Any, exc: Any) -> None:
    """Put a start-up error in the log file as well (Fluentd keeps the child's stderr
    only in its own log, if at all)."""
    if not isinstance(path, str) or not path:
        return
    try:
        log = DiagnosticLog(path)
    except ConfigError:
        return
    log.summary(f"cannot start: {exc}")
    log.close()
