"""Signals to a real `atnorm serve`: SIGHUP never stops it; it reopens the record files (so
logrotate can move them) and reloads what can be reloaded; SIGTERM still ends it cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
from faults.harness import chunks, file_seqs, send_all

from relay_process import RelayProcess


def wait_for_line(relay: RelayProcess, text: str, count: int = 1, limit: float = 60.0) -> None:
    """Wait until the relay has logged `text` `count` times (the limit only stops a hang)."""
    deadline = time.monotonic() + limit
    while sum(text in line for line in relay.lines) < count:
        assert relay.process.poll() is None, f"relay exited ({relay.process.returncode}):\n{relay.stderr}"
        assert time.monotonic() < deadline, f"no {text!r} in:\n{relay.stderr}"
        time.sleep(0.01)


def send(port: int, first: int, count: int) -> None:
    assert all(asyncio.run(asyncio.wait_for(send_all(port, chunks(first, count, 50)), 60)))


def test_sighup_without_a_tuning_file_reopens_the_record_files_and_keeps_running(tmp_path):
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data)) as relay:
        send(relay.port, 0, 200)
        rotated = tmp_path / "rotated"
        rotated.mkdir()
        for name in ("accepted", "rejected", "passed"):
            os.rename(data / f"{name}.jsonl", rotated / f"{name}.jsonl")  # what logrotate does
        relay.process.send_signal(signal.SIGHUP)
        wait_for_line(relay, "SIGHUP: reopening the record files")
        send(relay.port, 200, 200)
        relay.process.send_signal(signal.SIGHUP)  # a second one, with nothing moved: same files
        wait_for_line(relay, "SIGHUP:", count=2)
        send(relay.port, 400, 100)
        assert relay.process.poll() is None, "SIGHUP must not stop the relay"
        assert relay.stop() == 0
    assert sorted(file_seqs(rotated)) == list(range(200))  # the old files end where they were moved
    assert sorted(file_seqs(data)) == list(range(200, 500))  # new files, created by name
    summary = relay.summary()
    assert summary["received"] == 500 == summary["accepted"] + summary["rejected"] + summary["passed"]


def test_sighup_with_a_downstream_and_no_files_is_harmless(tmp_path):
    # Nothing listens on the downstream port: records are spooled, and acked.
    with RelayProcess("--listen", "127.0.0.1:0", "--forward", "127.0.0.1:9", "--data-dir", str(tmp_path),
                      "--retry-max-wait", "0.5") as relay:
        for count in range(1, 4):
            relay.process.send_signal(signal.SIGHUP)
            wait_for_line(relay, "SIGHUP: nothing to reload or reopen", count=count)
        send(relay.port, 0, 100)
        assert relay.stop() == 0
    assert relay.summary()["spool_depth_records"] == 100


@pytest.mark.parametrize("files", [True, False], ids=["files", "forward"])
def test_sighup_during_shutdown_does_not_cut_it_short(tmp_path, files):
    args = ["--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)]
    if not files:
        args += ["--forward", "127.0.0.1:9", "--retry-max-wait", "0.5"]
    with RelayProcess(*args) as relay:
        send(relay.port, 0, 50)
        relay.process.send_signal(signal.SIGTERM)
        relay.process.send_signal(signal.SIGHUP)
        assert relay.process.wait(60) == 0, "the SIGHUP during the shutdown did not end the process"
        deadline = time.monotonic() + 5  # the stderr reader thread may still be catching up
        while not any("stopped:" in line for line in relay.lines) and time.monotonic() < deadline:
            time.sleep(0.01)
    assert relay.summary()["received"] == 50
