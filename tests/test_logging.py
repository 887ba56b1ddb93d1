"""`--log-level` and `--log-format` of the long-running commands, and what they log."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
from fluent.sender import FluentSender

from atnorm.core.reload import ReloadingFilter
from atnorm.core.settings import FilterOptions
from relay_process import RelayProcess
from support import load_event


def wait_until(predicate, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_serve_logs_json_lines_with_one_debug_line_per_connection_and_chunk(tmp_path):
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data),
                      "--log-format", "json", "--log-level", "debug") as relay:
        sender = FluentSender("app", host="127.0.0.1", port=relay.port)
        assert sender.emit("audit", load_event("vsi-provision.json"))
        sender.close()
        wait_until(lambda: (data / "accepted.jsonl").exists() and (data / "accepted.jsonl").read_text())
        wait_until(lambda: any("closed" in line for line in relay.lines))
        assert relay.stop() == 0
    entries = [json.loads(line) for line in relay.lines]  # every line is one JSON object
    assert {entry["command"] for entry in entries} == {"serve"}
    messages = [(entry["level"], entry["message"]) for entry in entries]
    assert any(level == "info" and "listening on 127.0.0.1:" in text for level, text in messages)
    assert [text for level, text in messages if level == "debug" and "opened" in text]
    [chunk] = [text for level, text in messages if level == "debug" and text.startswith("chunk from")]
    assert "tag app.audit, 1 records" in chunk and "accepted=1" in chunk
    assert any(text.startswith("stopped: received=1") for _, text in messages)


def test_serve_at_info_has_no_debug_lines(tmp_path):
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)) as relay:
        sender = FluentSender("app", host="127.0.0.1", port=relay.port)
        assert sender.emit("audit", load_event("vsi-provision.json"))
        sender.close()
        wait_until(lambda: (tmp_path / "accepted.jsonl").exists() and (tmp_path / "accepted.jsonl").read_text())
        assert relay.stop() == 0
    assert " INFO atnorm serve: listening on" in relay.stderr
    assert "DEBUG" not in relay.stderr and "chunk from" not in relay.stderr


def test_a_successful_reload_is_logged_at_info_and_a_failed_one_at_warning(tmp_path, caplog):
    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("defaults:\n  mode: enforce\n")
    values = FilterOptions.defaults(tuning=str(tuning))
    holder = ReloadingFilter.from_options(values)
    with caplog.at_level(logging.INFO, logger="atnorm.reload"):
        holder.request_reload()
        holder.check_for_changes()
        tuning.write_text("defaults: [not, a, mapping]\n")
        holder.request_reload()
        holder.check_for_changes()
    holder.close()
    levels = {record.levelname: record.getMessage() for record in caplog.records}
    assert levels["INFO"].startswith("reloaded (")
    assert levels["WARNING"].startswith("reload failed (")


def test_exec_filter_log_file_in_json_at_debug(tmp_path):
    log = tmp_path / "exec-filter.log"
    line = json.dumps(load_event("vsi-provision.json")).encode() + b"\n"
    result = subprocess.run([sys.executable, "-m", "atnorm", "exec-filter", "--out-format", "json",
                             "--log-file", str(log), "--log-format", "json", "--log-level", "debug"],
                            input=line + b"not json\n", capture_output=True)
    assert result.returncode == 0, result.stderr
    entries = [json.loads(text) for text in log.read_text().splitlines()]
    assert {entry["command"] for entry in entries} == {"exec-filter"}
    assert any(entry["level"] == "debug" and entry["message"].startswith("read ") for entry in entries)
    assert entries[-1]["message"].startswith("stopped on eof: received=2 accepted=1 rejected=1")


def test_exec_filter_at_warning_keeps_only_trouble_and_the_summary(tmp_path):
    log = tmp_path / "exec-filter.log"
    subprocess.run([sys.executable, "-m", "atnorm", "exec-filter", "--log-file", str(log),
                    "--log-level", "warning"], input=b"", capture_output=True, check=True)
    lines = log.read_text().splitlines()
    assert len(lines) == 1 and "stopped on eof" in lines[0]  # no "started" line


@pytest.mark.parametrize("command", ["serve", "exec-filter"])
def test_every_long_running_command_takes_both_options(command):
    result = subprocess.run([sys.executable, "-m", "atnorm", command, "--help"], capture_output=True, text=True)
    assert "--log-level" in result.stdout and "--log-format" in result.stdout
