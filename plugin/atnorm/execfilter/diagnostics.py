"""The exec-filter's log file: diagnostics and the summary line (stderr stays silent)."""

from __future__ import annotations

import json
import os
import time
from typing import Optional

from ..errors import ConfigError


class DiagnosticLog:
    """Appends timestamped lines to the log file; silent without one (stderr stays quiet).

    Opened in append mode and never truncated, so a child respawned by Fluentd, or several
    children (`num_children`), share the file safely.
    """

    def __init__(self, path: Optional[str], quiet: bool = False, level: str = "info",
                 log_format: str = "text") -> None:
        self._quiet = quiet
        self._debug = level == "debug"
        # warning / error keep the lines that report trouble (write(..., problem=True)).
        self._routine = level in ("debug", "info")
        self._json = log_format == "json"
        self._path = path
        self._handle = None
        if path:
            try:
                self._handle = open(path, "a", encoding="utf-8", buffering=1)
            except OSError as exc:
                raise ConfigError(f"cannot open for appending: {exc.strerror}", file=path,
                                  key="log_file") from None

    def reopen(self) -> None:
        """Close and open the file again (after logrotate moved it); on failure the old
        handle stays."""
        if self._handle is None or self._path is None:
            return
        try:
            handle = open(self._path, "a", encoding="utf-8", buffering=1)
        except OSError as exc:
            self.write(f"cannot reopen the log file: {exc.strerror}")
            return
        old, self._handle = self._handle, handle
        try:
            old.close()
        except OSError:
            pass

    def write(self, message: str, problem: bool = False) -> None:
        """A diagnostic line (dropped with `--quiet`; routine lines also below log_level info)."""
        if not self._quiet and (problem or self._routine):
            self._line(message, "warning" if problem else "info")

    def debug(self, message: str) -> None:
        """A line only `--log-level debug` writes."""
        if self._debug and not self._quiet:
            self._line(message, "debug")

    def summary(self, message: str) -> None:
        """The line written at exit, even with `--quiet`."""
        self._line(message, "info")

    def _line(self, message: str, level: str) -> None:
        if self._handle is None:
            return
        if self._json:
            line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "level": level,
                               "command": "exec-filter", "pid": os.getpid(), "message": message},
                              ensure_ascii=False)
        else:
            line = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} atnorm exec-filter[{os.getpid()}]: {message}"
        try:
            self._handle.write(line + "\n")
        except (OSError, ValueError):
            pass  # a full disk must not stop the records

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass
