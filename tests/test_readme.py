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
    assert commands[-1] == test_command


def test_the_option_tables_are_the_declarations():
    from atnorm import execfilter, relay
    from atnorm.options import markdown_table

    text = README.read_text(encoding="utf-8")
    assert markdown_table(relay.ALL_OPTIONS) in text
    assert markdown_table(execfilter.OPTIONS) in text


def test_the_example_config_shows_every_relay_option_and_nothing_else():
    from atnorm import relay

    text = (ROOT / "conf" / "atnorm.yaml").read_text(encoding="utf-8")
    shown = set(re.findall(r"^(?:# )?([a-z_]+):", text, re.M))
    assert shown == {option.key for option in relay.ALL_OPTIONS}
