"""`atnorm filter` on files as a user meets them: dead letters kept, pipes, pretty JSON, progress."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from support import FIXTURES

ATNORM = [sys.executable, "-m", "atnorm"]


def event(name: str = "vsi-provision.json") -> dict:
    return json.loads((FIXTURES / "events" / name).read_text())


def broken(name: str = "vsi-provision.json") -> dict:
    record = event(name)
    del record["outcome"]
    return record


def filter_run(tmp_path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(ATNORM + ["filter", *args], input=stdin, capture_output=True, text=True,
                          cwd=str(tmp_path))


def test_an_unreadable_input_leaves_an_existing_dead_letter_file_as_it_was(tmp_path):
    rejected = tmp_path / "rejected.jsonl"
    rejected.write_text('{"original": "from yesterday", "reasons": []}\n')
    result = filter_run(tmp_path, str(tmp_path / "absent.jsonl"), "--rejected", str(rejected))
    assert result.returncode == 1
    assert "cannot read" in result.stderr and "absent.jsonl" in result.stderr
    assert "Traceback" not in result.stderr
    assert rejected.read_text() == '{"original": "from yesterday", "reasons": []}\n'


def test_a_directory_as_input_is_an_error_before_any_output(tmp_path):
    result = filter_run(tmp_path, str(tmp_path))
    assert result.returncode == 1 and "cannot read" in result.stderr
    assert not (tmp_path / "rejected.jsonl").exists()


def test_dead_letters_are_appended_to_an_existing_file(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(broken()) + "\n")
    for _ in range(2):
        assert filter_run(tmp_path, str(source)).returncode == 0
    dead = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert len(dead) == 2 and all(d["original"] == broken() for d in dead)


def test_rejected_records_name_their_input_file_and_line(tmp_path):
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text(json.dumps(event()) + "\n\n" + json.dumps(broken()) + "\n")
    second.write_text("{not json\n")
    assert filter_run(tmp_path, str(first), str(second)).returncode == 0
    dead = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert [d["input"] for d in dead] == [{"file": str(first), "line": 3}, {"file": str(second), "line": 1}]
    from_stdin = filter_run(tmp_path, "--rejected", "-", stdin="[1]\n")
    assert json.loads(from_stdin.stderr.splitlines()[0])["input"] == {"file": "<stdin>", "line": 1}


def test_a_pretty_printed_document_is_read_as_one_record(tmp_path):
    source = tmp_path / "one.json"
    source.write_text(json.dumps(event(), indent=2))
    result = filter_run(tmp_path, str(source))
    assert result.returncode == 0
    assert result.stderr.strip().startswith("received=1 accepted=1 rejected=0")


def test_a_pretty_printed_array_is_read_item_by_item(tmp_path):
    source = tmp_path / "many.json"
    source.write_text(json.dumps([event(), broken(), event("platform-log-not-an-event.json")], indent=2))
    result = filter_run(tmp_path, str(source))
    assert result.stderr.strip().startswith("received=3 accepted=1 rejected=1 passed=1")
    [dead] = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert dead["input"] == {"file": str(source), "item": 2}
    piped = filter_run(tmp_path, "-", stdin=json.dumps([event()], indent=2))
    assert piped.stderr.strip().startswith("received=1 accepted=1")


def test_broken_pretty_json_gets_a_hint_and_is_still_read_line_by_line(tmp_path):
    source = tmp_path / "broken.json"
    source.write_text('{\n  "action": "x.y.z",\n')
    result = filter_run(tmp_path, str(source))
    assert result.returncode == 0
    assert "hint: " in result.stderr and "neither JSON lines nor one JSON document" in result.stderr
    assert "received=2" in result.stderr


def test_a_reader_that_goes_away_ends_the_run_quietly_with_0(tmp_path):
    source = tmp_path / "many.jsonl"
    source.write_text((json.dumps(event()) + "\n") * 20000)
    pipeline = subprocess.run(f"{sys.executable} -m atnorm filter {source} | head -n 1",
                              shell=True, capture_output=True, text=True, cwd=str(tmp_path),
                              executable="/bin/bash")
    assert len(pipeline.stdout.splitlines()) == 1
    status = subprocess.run(f"set -o pipefail; {sys.executable} -m atnorm filter {source} | head -n 1 >/dev/null",
                            shell=True, capture_output=True, text=True, cwd=str(tmp_path), executable="/bin/bash")
    assert status.returncode == 0, status.stderr
    assert status.stderr == ""


def run_on_a_terminal(tmp_path, *args: str) -> str:
    """stderr of `atnorm filter ARGS` when it is a terminal (a pseudo-terminal here)."""
    master, slave = pty.openpty()
    with open(os.devnull, "wb") as devnull:
        process = subprocess.Popen(ATNORM + ["filter", *args], stdout=devnull, stderr=slave,
                                   stdin=subprocess.DEVNULL, cwd=str(tmp_path))
    os.close(slave)
    output = b""
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        output += data
    process.wait()
    os.close(master)
    return output.decode()


def test_progress_shows_on_a_terminal_and_not_when_piped(tmp_path):
    source = tmp_path / "many.jsonl"
    source.write_text((json.dumps(event()) + "\n") * 3000)
    on_terminal = run_on_a_terminal(tmp_path, str(source))
    assert "3000 records, " in on_terminal and " records/s" in on_terminal
    assert "received=3000" in on_terminal
    piped = filter_run(tmp_path, str(source))
    assert piped.stderr.strip() == "received=3000 accepted=3000 rejected=0 passed=0 warnings=3000"


def test_help_reads_as_user_text_and_version_answers():
    text = subprocess.run(ATNORM + ["--help"], capture_output=True, text=True).stdout
    assert "Activity Tracker" in text and "examples:" in text
    assert "subcommand" not in text and "module" not in text and "`atnorm` command" not in text
    for command in ("filter", "explain", "serve", "exec-filter", "config", "drift", "schemas"):
        assert f"    {command}" in text
    version = subprocess.run(ATNORM + ["--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("atnorm ")
