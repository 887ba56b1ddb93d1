"""A filter that can be rebuilt while records flow: on SIGHUP, or when its files change.

`ReloadingFilter` holds the current `EventFilter`. Callers use it like the filter itself
(`process`, `process_json`, `stats`). A reload builds a whole new filter off to the side
and swaps it in with one attribute assignment, so every record is decided by exactly one
configuration, old or new, and counted once: both filters share one `FilterStats`.
A reload that fails (a mistake in the tuning file, a broken schema) keeps the running
configuration, is counted in `failed_reloads`, and its message is logged and kept in
`last_error`.

What is watched: the tuning file and the extra schema directories (their `envelope.json`
and `services/*.json`), by inode, size and modification time, polled with `os.stat`.
A signal handler never rebuilds anything itself; it only asks, and the rebuild happens
in the watcher thread (`start_watching`) or in the caller's loop (`check_for_changes`).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from ..model.verdict import Verdict
from .drift import DriftLog
from .pipeline import EventFilter, FilterSettings
from .rules import RuleSet
from .settings import FilterOptions, filter_settings, resolve_filter_options
from .stats import FilterStats

Signature = Tuple[Tuple[str, int, int, int], ...]
_LOG = logging.getLogger("atnorm.reload")


def _stat(path: Path) -> Tuple[str, int, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (str(path), -1, -1, -1)  # missing now: a change when it comes back
    return (str(path), st.st_ino, st.st_size, st.st_mtime_ns)


def files_signature(tuning: Optional[str], schema_dirs: Sequence[Path]) -> Signature:
    """Identity of every watched file; any difference means "reload"."""
    entries = []
    if tuning:
        entries.append(_stat(Path(tuning)))
    for directory in schema_dirs:
        directory = Path(directory)
        entries.append(_stat(directory / "envelope.json"))
        try:
            names = sorted(p.name for p in (directory / "services").glob("*.json"))
        except OSError:
            names = []
        entries += [_stat(directory / "services" / name) for name in names]
    return tuple(entries)


class ReloadingFilter:
    """An EventFilter that is rebuilt on request or file change, between records.

    `make_settings` returns fresh FilterSettings each time (reading the tuning file);
    a ConfigError from it (or from loading schemas) keeps the previous filter.
    """

    def __init__(self, make_settings: Callable[[], FilterSettings], tuning_path: Optional[str] = None, *,
                 stats: Optional[FilterStats] = None, log: Optional[Callable[[str], None]] = None,
                 drift: Optional[DriftLog] = None, drift_state: Optional[str] = None) -> None:
        self.stats = stats if stats is not None else FilterStats()
        self.tuning_path = tuning_path
        if drift is None and drift_state:
            drift = DriftLog.load(drift_state) if os.path.exists(drift_state) else DriftLog()
        self.drift: Optional[DriftLog] = drift
        if drift is not None:  # decided once: the per-record path does not ask
            self.process = self._observing(EventFilter.process, drift)  # type: ignore[method-assign]
            self.process_text = self._observing(EventFilter.process_text, drift)  # type: ignore[method-assign]
            self.process_json = self._observing(EventFilter.process_json, drift)  # type: ignore[method-assign]
            self.process_decoded_json = self._observing(  # type: ignore[method-assign]
                EventFilter.process_decoded_json, drift)
        self.drift_state = drift_state
        self.reloads = 0
        # Called (from the thread that reloaded) once a new configuration is in place, before
        # it is logged: whatever else decides records with copies of it follows at once.
        self.on_reload: List[Callable[[], None]] = []
        self.failed_reloads = 0
        self.last_error: Optional[str] = None
        self._make_settings = make_settings
        self._log = log or _LOG.warning
        # A reload that worked is news, not a problem: INFO where the log has levels.
        self._log_success = log or _LOG.info
        self._lock = threading.Lock()
        self._requested = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._poll_interval = 2.0
        self._last_poll = time.monotonic()
        # Start-up: a mistake here is the caller's ConfigError, there is nothing to keep.
        signature = files_signature(tuning_path, [])
        settings = make_settings()
        self.filter: EventFilter = EventFilter.from_schemas(settings=settings, stats=self.stats)
        self._schema_dirs = list(settings.schema_dirs)
        self._signature = signature[:1] + files_signature(None, self._schema_dirs)

    @classmethod
    def from_options(cls, options: FilterOptions, **kwargs: Any) -> "ReloadingFilter":
        """From the filter options (as `settings.filter_settings` takes them)."""
        return cls(lambda: filter_settings(options), options.tuning, **kwargs)

    @classmethod
    def from_args(cls, args: argparse.Namespace, file_values: Optional[Dict[str, Any]] = None,
                  **kwargs: Any) -> "ReloadingFilter":
        """From a command's parsed flags (and config-file values), like `settings.build_filter`.

        Keyword arguments: `stats`, `log` (a callable taking one line), `drift` (a
        `drift.DriftLog` fed with every verdict) and `drift_state` (a JSON file the drift
        log is loaded from now and saved to by the watcher and by `close`).
        """
        return cls.from_options(resolve_filter_options(args, file_values), **kwargs)

    @property
    def rules(self) -> RuleSet:
        """The rule set of the configuration running now."""
        return self.filter.rules

    @property
    def settings(self) -> FilterSettings:
        """The settings of the configuration running now."""
        return self.filter.settings

    # -- the per-record path ---------------------------------------------------------

    # With a drift log, __init__ puts the observing versions in place of these two.

    def process(self, record: Any) -> Verdict:
        """Decide one parsed record with the current configuration."""
        return self.filter.process(record)

    def process_text(self, record: Any) -> Verdict:
        """Decide one record known to be text as it is (see `EventFilter.process_text`)."""
        return self.filter.process_text(record)

    def process_json(self, line: Any) -> Verdict:
        """Decide one JSON document (bytes or text) with the current configuration."""
        return self.filter.process_json(line)

    def process_decoded_json(self, record: Any, plain: bool) -> Verdict:
        """Decide one record decoded from JSON text (see `EventFilter.process_decoded_json`)."""
        return self.filter.process_decoded_json(record, plain)

    def _observing(self, decide: Callable[..., Verdict], drift: DriftLog) -> Callable[..., Verdict]:
        """`decide` (an EventFilter method) on the filter running now, each verdict given to
        the drift log too."""
        observe = drift.observe

        def observed(*args: Any) -> Verdict:
            event_filter = self.filter  # one read: the record is decided by this filter only
            verdict = decide(event_filter, *args)
            observe(verdict, event_filter.rules)
            return verdict
        return observed

    # -- reloading -------------------------------------------------------------------

    def reload(self, why: str = "requested") -> bool:
        """Rebuild now. True if the new configuration runs; False if the old one stays."""
        with self._lock:
            signature = files_signature(self.tuning_path, self._schema_dirs)
            try:
                settings = self._make_settings()
                new = EventFilter.from_schemas(settings=settings, stats=self.stats)
            except ConfigError as exc:
                return self._failed(signature, why, str(exc))
            except Exception as exc:  # a reload must never take the running filter down
                return self._failed(signature, why, f"{type(exc).__name__}: {exc}")
            self.filter = new
            self.reloads += 1
            self.last_error = None
            if settings.schema_dirs != self._schema_dirs:
                self._schema_dirs = list(settings.schema_dirs)
                signature = files_signature(self.tuning_path, self._schema_dirs)
            self._signature = signature
            for listener in self.on_reload:
                listener()
        self._log_success(f"reloaded ({why}): {self.tuning_path or 'no tuning file'}; {self.stats.summary_line()}")
        return True

    def _failed(self, signature: Signature, why: str, message: str) -> bool:
        # Remember the files as they were, so the same mistake is not retried every poll.
        self._signature = signature
        self.failed_reloads += 1
        self.last_error = message
        self._log(f"reload failed ({why}), the previous configuration keeps running: {message}")
        return False

    def request_reload(self) -> None:
        """Ask for a reload at the next check (safe from a signal handler or another thread)."""
        self._requested.set()
        self._wake.set()

    def check_for_changes(self, force: bool = False) -> Optional[bool]:
        """Reload if asked to, or if a watched file changed since the last look.

        Cheap enough to call from a busy loop: files are looked at only once per poll
        interval unless `force`. Returns None if nothing was due, else `reload`'s result.
        """
        if self._requested.is_set():
            self._requested.clear()
            return self.reload("reload requested")
        now = time.monotonic()
        if not force and now - self._last_poll < self._poll_interval:
            return None
        self._last_poll = now
        if files_signature(self.tuning_path, self._schema_dirs) != self._signature:
            return self.reload("file changed")
        return None

    def install_sighup(self) -> Any:
        """Reload on SIGHUP (call from the main thread). Returns the previous handler."""
        previous = signal.getsignal(signal.SIGHUP)

        def on_sighup(signum: int, frame: Any) -> None:
            self.request_reload()
        signal.signal(signal.SIGHUP, on_sighup)
        return previous

    def start_watching(self, interval: float = 2.0) -> None:
        """Poll the watched files every `interval` seconds in a daemon thread, and reload
        at once on `request_reload` / SIGHUP; the drift state (if any) is saved each round."""
        if self._thread is not None:
            return
        self._poll_interval = interval
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="atnorm-reload", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                break
            self.check_for_changes(force=True)
            self.save_drift()

    def save_drift(self, force: bool = False) -> None:
        """Write the drift log to `drift_state` if it changed, or if `force` (errors are
        logged, not raised: losing a drift report must not stop the filter)."""
        if self.drift is None or not self.drift_state:
            return
        try:
            if force:
                self.drift.save(self.drift_state)
            else:
                self.drift.save_if_changed(self.drift_state)
        except OSError as exc:
            self._log(f"cannot save drift state to {self.drift_state}: {exc.strerror or exc}")

    def close(self) -> None:
        """Stop the watcher thread and save the drift state."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.save_drift(force=True)

    def status(self) -> Dict[str, Any]:
        """Reload counts and the last error, for logs and monitoring."""
        return {"reloads": self.reloads, "failed_reloads": self.failed_reloads, "last_error": self.last_error}

    @property
    def watched_files(self) -> List[str]:
        return [entry[0] for entry in self._signature]
