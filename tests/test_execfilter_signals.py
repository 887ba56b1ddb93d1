"""Signals and start-up of `atnorm exec-filter`, as Fluentd and logrotate send them to the
real child process: SIGTERM with records still in the stdin pipe, SIGHUP with and without
a tuning file, and start-up errors that must reach --log-file."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_execfilter import Child, exec_filter_command, json_outputs, mixed_items, read_json_record, tagged

TUNING = Path(__file__).resolve().parents[1] / "conf" / "tuning.yaml"


def wait_for(condition, what: str, timeout: float = 60.0) -> None:
    """Poll `condition` until it holds (generous deadline: this only waits for an event)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def fill_until_the_child_stalls(child: Child, lines) -> int:
    """Write lines (each below PIPE_BUF, so each write is all or nothing) without reading
    stdout, until stdin stays full: the child is then blocked writing its output and the
    stdin pipe holds records it has not read. Returns how many lines went in."""
    fd = child.proc.stdin.fileno()
    os.set_blocking(fd, False)
    written = 0
    for line in lines:
        while True:
            try:
                os.write(fd, line)
                written += 1
                break
            except BlockingIOError:
                # Writable again within a few seconds means the child is still reading.
                _, writable, _ = select.select([], [fd], [], 3.0)
                if not writable:
                    return written
    raise AssertionError("the child never stalled; write more lines")


@pytest.mark.parametrize("in_format", ["json", "msgpack"])
def test_sigterm_decides_the_records_still_in_the_stdin_pipe(tmp_path, in_format):
    import msgpack

    items = mixed_items(40000, seed=31)
    encode = ((lambda item: json.dumps(tagged(item)).encode() + b"\n") if in_format == "json"
              else (lambda item: msgpack.packb(tagged(item))))
    child = Child(tmp_path, "--in-format", in_format, "--out-format", "json", "--tag-key", "tag")
    written = fill_until_the_child_stalls(child, (encode(item) for item in items))
    # Fluentd at shutdown: close the child's stdin, send SIGTERM, read what comes back.
    child.proc.send_signal(signal.SIGTERM)
    child.proc.stdin.close()
    out, status = child.finish()
    assert status == 0 and child.stderr == b""
    outputs = json_outputs(out)
    assert len(outputs) == written  # was: the records left in the pipe were lost silently
    assert [o["tag"].removesuffix(".rejected") for o in outputs] == [
        item.tag for item in items[:written]]
    assert "stop signal: read the " in child.log
    assert f"stopped on SIGTERM: received={written} " in child.log


def test_sighup_without_tuning_keeps_running_and_reopens_the_log(tmp_path):
    child = Child(tmp_path, "--tag-key", "tag", "--out-format", "json")
    first, second = mixed_items(2, seed=32)
    child.write(json.dumps(tagged(first)).encode() + b"\n")
    read_json_record(child.proc.stdout)
    rotated = tmp_path / "exec-filter.log.1"
    os.rename(child.log_path, rotated)  # logrotate moves the file, then sends SIGHUP
    child.proc.send_signal(signal.SIGHUP)
    wait_for(child.log_path.exists, "the log file to be reopened")
    child.write(json.dumps(tagged(second)).encode() + b"\n")
    read_json_record(child.proc.stdout)
    child.proc.stdin.close()
    rest, status = child.finish()
    assert status == 0 and rest.strip() == b"" and child.stderr == b""  # was: killed, exit -1/129
    assert "started" in rotated.read_text()
    log = child.log
    assert "SIGHUP: log file reopened (no tuning file to reload)" in log
    assert "stopped on eof: received=2 " in log


def test_sighup_with_tuning_reloads_it(tmp_path):
    tuning = tmp_path / "tuning.yaml"
    tuning.write_bytes(TUNING.read_bytes())
    child = Child(tmp_path, "--tag-key", "tag", "--out-format", "json", "--tuning", str(tuning))
    item, = mixed_items(1, seed=33)
    child.write(json.dumps(tagged(item)).encode() + b"\n")
    read_json_record(child.proc.stdout)
    child.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: log file reopened, reloading" in child.log, "the SIGHUP")
    wait_for(lambda: "reloaded (reload requested)" in child.log, "the reload")
    child.proc.stdin.close()
    _, status = child.finish()
    assert status == 0 and child.stderr == b""


@pytest.mark.parametrize("args, message", [
    (["--in-format", "xml"], "expected one of json, msgpack, tsv"),
    (["--metrics-listen", "not-a-port"], "expected HOST:PORT"),
    (["--in-fromat", "json"], "unrecognized arguments: --in-fromat"),
    (["--schemas", "/nonexistent-schema-dir"], "schema directory does not exist"),
])
def test_startup_errors_reach_the_log_file_too(tmp_path, args, message):
    log = tmp_path / "exec-filter.log"
    result = subprocess.run(exec_filter_command(*args, "--log-file", str(log)), input=b"",
                            capture_output=True)
    assert result.returncode == 2 and result.stdout == b""
    assert message in result.stderr.decode()
    assert log.exists(), "the error went to stderr only"
    assert "cannot start" in log.read_text() and message in log.read_text()
