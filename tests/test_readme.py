"""The README as a new user reads it: its set-up commands, and the examples after them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else None]


def code_blocks(text: str, language: str) -> List[str]:
    return [m.group(1) for m in re.finditer(rf"```{language}\n(.*?)```", text, re.S)]


def setup_commands() -> List[str]:
    return [block.strip() for block in code_blocks(section("Set-up"), "sh")]


def test_the_set_up_has_two_commands_that_never_install_into_the_system_python():
    commands = setup_commands()
    assert len(commands) == 2
    for command in commands:
        assert "\n" not in command
        # Debian's system Python refuses `pip install` (externally-managed-environment).
        assert command.startswith("python3 -m venv .venv && .venv/bin/pip install ")
        assert "python3 -m pip" not in command


def test_ci_runs_exactly_the_readme_test_command():
    test_command = next(c for c in setup_commands() if "tox -e tests" in c)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    commands = [line for line in ci if line and not line.startswith((" ", "#", "\t"))
                and not line.startswith(("set ", "cd ", "if ", "fi"))]
    assert commands[0] == test_command
    # What else CI runs uses the venv the README's command made, never the system Python.
    assert all(command.startswith(".venv/bin/") for command in commands[1:])


def test_the_option_tables_are_the_declarations():
    from atnorm.config.options import markdown_table
    from atnorm.execfilter import settings
    from atnorm.relay import service

    text = README.read_text(encoding="utf-8")
    assert markdown_table(service.ALL_OPTIONS) in text
    assert markdown_table(settings.OPTIONS) in text


def test_the_example_config_shows_every_relay_option_and_nothing_else():
    from atnorm.relay.service import ALL_OPTIONS

    text = (ROOT / "conf" / "atnorm.yaml").read_text(encoding="utf-8")
    shown = set(re.findall(r"^(?:# )?([a-z_]+):", text, re.M))
    assert shown == {option.key for option in ALL_OPTIONS}


# --- the examples after the set-up, run as written against a real relay ------------------------

def relay_for_examples(tmp_path):
    from relay_process import RelayProcess

    return RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "atnorm-data"),
                        cwd=str(tmp_path))


def run_example(source: str, port: int, cwd: Path):
    import subprocess
    import sys

    # The examples talk to the README's relay on 24224; this one listens on a free port.
    assert "24224" in source
    return subprocess.run([sys.executable, "-"], input=source.replace("24224", str(port)), text=True,
                          capture_output=True, cwd=str(cwd), timeout=120)


def records(path: Path) -> List[dict]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def wait_for_records(path: Path, count: int) -> List[dict]:
    import time

    deadline = time.monotonic() + 30
    while len(records(path)) < count:
        assert time.monotonic() < deadline, f"{path.name}: {len(records(path))} of {count} records"
        time.sleep(0.02)
    return records(path)


def test_the_trying_it_example_puts_one_event_in_each_file(tmp_path):
    [block] = [b for b in code_blocks(section("Trying it"), "sh") if "FluentSender" in b]
    source = block.split("<<'EOF'\n", 1)[1].split("\nEOF\n", 1)[0]
    with relay_for_examples(tmp_path) as relay:
        result = run_example(source, relay.port, tmp_path)
        assert result.returncode == 0, result.stderr
        data = tmp_path / "atnorm-data"
        [accepted] = wait_for_records(data / "accepted.jsonl", 1)
        [rejected] = wait_for_records(data / "rejected.jsonl", 1)
        relay.stop()
    assert accepted["action"] == "vmware-solutions.vcs.create"
    assert rejected["reasons"][0]["suggestion"] == "vmware-solutions.vcs.create"


def test_the_quick_start_example_is_accepted(tmp_path):
    [source] = code_blocks(section("The forward relay: `atnorm serve`").split("### Quick start", 1)[1]
                           .split("###", 1)[0], "python")
    with relay_for_examples(tmp_path) as relay:
        result = run_example(source, relay.port, tmp_path)
        assert result.returncode == 0, result.stderr
        [accepted] = wait_for_records(tmp_path / "atnorm-data" / "accepted.jsonl", 1)
        relay.stop()
    assert accepted["action"] == "kms.secrets.create"


def test_the_python_api_example_runs_and_both_ways_of_sending_arrive(tmp_path):
    text = README.read_text(encoding="utf-8")
    api = text[text.index("### Python API"):]
    [source] = code_blocks(api[:api.index("\n### ", 1)], "python")
    with relay_for_examples(tmp_path) as relay:
        result = run_example(source, relay.port, tmp_path)
        assert result.returncode == 0, result.stderr
        accepted = wait_for_records(tmp_path / "atnorm-data" / "accepted.jsonl", 2)
        relay.stop()
    assert result.stdout.splitlines()[:2] == ["True", "accepted"]
    assert "outcome" in result.stdout.splitlines()[2]  # the reasons of the checked event
    assert [record["action"] for record in accepted] == ["kms.secrets.create"] * 2
