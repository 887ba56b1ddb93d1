"""`atnorm filter` and `atnorm explain` as a user runs them: real subprocesses."""

import json
import subprocess
import sys

from support import load_event

ATNORM = [sys.executable, "-m", "atnorm"]


def test_filter_routes_each_line_and_summarises(tmp_path):
    bad_action = load_event("vmware-kmip-create.json")
    bad_action["action"] = "vmware-solutions.kmip-key.craete"
    lines = [
        json.dumps(load_event("vsi-provision.json")),
        json.dumps(load_event("platform-log-not-an-event.json")),
        json.dumps(bad_action),
        "{not json",
        "",
        "[1, 2]",
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(("\n".join(lines) + "\n").encode() + b'{"x": "\xff"}\n')
    rejected = tmp_path / "rejected.jsonl"
    result = subprocess.run(ATNORM + ["filter", str(source), "--rejected", str(rejected)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("action") for r in out] == ["audit-log.vsi.provision", None]
    dead = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert len(dead) == 4
    assert dead[0]["original"] == bad_action
    assert dead[0]["reasons"][0]["suggestion"] == "vmware-solutions.kmip-key.create"
    assert [d["reasons"][0]["rule"] for d in dead[1:]] == ["record.json", "record.type", "record.encoding"]
    assert result.stderr.strip() == "received=6 accepted=1 rejected=4 passed=1 warnings=1"


def test_filter_reads_stdin_and_separates_passed_records(tmp_path):
    passed = tmp_path / "passed.jsonl"
    lines = json.dumps(load_event("platform-log-not-an-event.json")) + "\n" + json.dumps(load_event("vsi-provision.json")) + "\n"
    result = subprocess.run(ATNORM + ["filter", "-", "--passed", str(passed), "--rejected", str(tmp_path / "r"),
                                      "--summary-format", "json"],
                            input=lines, capture_output=True, text=True)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1 and len(passed.read_text().splitlines()) == 1
    assert json.loads(result.stderr)["received"] == 2


def test_filter_missing_file_is_an_io_error_without_traceback(tmp_path):
    result = subprocess.run(ATNORM + ["filter", str(tmp_path / "absent.jsonl"), "--rejected", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "absent.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_filter_bad_option_value_is_a_usage_error(tmp_path):
    result = subprocess.run(ATNORM + ["filter", "--time-fraction-digits", "12", "--rejected", str(tmp_path / "r")],
                            input="", capture_output=True, text=True)
    assert result.returncode == 2
    assert "--time-fraction-digits" in result.stderr and "Traceback" not in result.stderr


def test_explain_shows_fixes_failures_and_suggestion(tmp_path):
    event = load_event("cos-drifted-types.json")
    event["action"] = "audit-log.vsi.reboto"
    path = tmp_path / "e.json"
    path.write_text(json.dumps(event, indent=2))
    result = subprocess.run(ATNORM + ["explain", str(path)], capture_output=True, text=True)
    assert result.returncode == 0
    text = result.stdout
    assert "verdict: rejected" in text
    assert "coerce:/reason/reasonCode" in text
    assert "/action [audit-log.action]" in text
    assert "did you mean: audit-log.vsi.reboot" in text


def test_explain_reads_stdin_and_handles_garbage():
    result = subprocess.run(ATNORM + ["explain", "-"], input="\xff not json", capture_output=True, text=True)
    assert result.returncode == 0 and "verdict: rejected" in result.stdout and "record.json" in result.stdout


def test_no_command_prints_help_and_exits_2():
    result = subprocess.run(ATNORM, capture_output=True, text=True)
    assert result.returncode == 2 and "filter" in result.stderr
