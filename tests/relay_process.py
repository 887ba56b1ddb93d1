"""`atnorm serve` as a real child process for tests: started, asked where it listens, stopped."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional

_LISTENING = re.compile(r"listening on (unix://\S+|(\S+):(\d+))")


class RelayProcess:
    """Runs `python -m atnorm serve ARGS`; stderr is collected by a thread so it never blocks."""

    def __init__(self, *args: str, cwd: Optional[str] = None) -> None:
        self.args = [sys.executable, "-m", "atnorm", "serve", *args]
        self.cwd = cwd
        self.lines: List[str] = []
        self.port: Optional[int] = None  # the first TCP port it listens on
        self.address: Optional[str] = None  # the first address it listens on
        self.process: Optional[subprocess.Popen] = None
        self._started = threading.Event()

    def start(self, timeout: float = 60.0) -> "RelayProcess":
        """Start and wait for the start-up line; fails with the child's stderr if it exits."""
        self.process = subprocess.Popen(self.args, cwd=self.cwd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if not self._started.wait(timeout) or self.address is None:
            self.kill()
            raise AssertionError("relay did not start:\n" + self.stderr)
        return self

    def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match and self.address is None:
                self.address = match.group(1)
                self.port = int(match.group(3)) if match.group(3) else None
                self._started.set()
        self._started.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for a clean exit; returns the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout)
        deadline = time.monotonic() + 5
        while not any("stopped:" in line for line in self.lines) and time.monotonic() < deadline:
            time.sleep(0.01)  # the reader thread may still be catching up with the last lines
        return status

    def kill(self) -> None:
        """SIGKILL (nothing is flushed or closed)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def summary(self) -> dict:
        """The counts of the `stopped:` line as a dict of ints."""
        line = next(line for line in reversed(self.lines) if "stopped:" in line)
        return {key: int(value) for key, value in re.findall(r"(\w+)=(\d+)", line)}

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.kill()
