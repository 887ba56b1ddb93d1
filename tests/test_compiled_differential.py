"""The compiled per-record modules against their own sources.

A wheel runs the modules setup.py lists as C extensions compiled by mypyc; the .py sources
beside them are the same code, interpreted, and the reference here. A child process imports
atnorm with every module loaded from its source (tests/interpreted.py), and both sides decide
the same 14,000+ lines: the filter differential's generated, mutated and drifted events and
its edge lines. Every verdict (outcome, service, action, reasons, warnings, fixes,
eventTime, output line, and the JSON line and msgpack bytes kept on it) and the counts must
be equal.

Where nothing is compiled (an editable install, ATNORM_COMPILE=no, no C compiler) there is
nothing to compare and the test skips, unless ATNORM_EXPECT_COMPILED is set, as the test
environment sets it: there a build that fell back to the sources fails.
"""

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from interpreted import decisions
from test_filter_differential import EDGE_LINES, _lines

from atnorm.model.verdict import ACCEPTED, PASSED, REJECTED
from atnorm.version import build_text, compiled_modules

ROOT = Path(__file__).resolve().parent.parent


def _listed_in_setup():
    """The modules setup.py compiles, dotted."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(node.value for node in tree.body if isinstance(node, ast.Assign)
                  and getattr(node.targets[0], "id", None) == "COMPILED_MODULES")
    return sorted(path[len("plugin/"):-len(".py")].replace("/", ".") for path in ast.literal_eval(listed))


@pytest.fixture(scope="module")
def compiled():
    modules = compiled_modules()
    if not modules:
        if os.environ.get("ATNORM_EXPECT_COMPILED"):
            pytest.fail("ATNORM_EXPECT_COMPILED is set but no atnorm module is compiled")
        pytest.skip("this install runs atnorm's sources (editable, ATNORM_COMPILE=no or no compiler)")
    return modules


def test_the_build_compiles_the_modules_setup_lists_and_says_so(compiled):
    assert compiled == _listed_in_setup()
    for name in compiled:
        assert sys.modules.get(name) is None or sys.modules[name].__file__.endswith(".so")
    assert build_text().endswith(f"({len(compiled)} modules compiled)")
    version = subprocess.run([sys.executable, "-m", "atnorm", "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == build_text()


def test_compiled_modules_decide_every_line_as_their_sources_do(compiled, tmp_path):
    lines = [line if isinstance(line, bytes) else line.encode("utf-8") for line in _lines()] + EDGE_LINES
    lines_file = tmp_path / "lines.hex"
    lines_file.write_text("\n".join(line.hex() for line in lines))
    child = subprocess.run([sys.executable, str(Path(__file__).with_name("interpreted.py")), str(lines_file)],
                           capture_output=True, timeout=900)
    assert child.returncode == 0, child.stderr.decode()[-3000:]
    interpreted = json.loads(child.stdout)
    assert interpreted.pop("extensions_loaded") == []  # the child really ran the sources

    here = json.loads(json.dumps(decisions(lines)))  # the same JSON round trip as the child's
    assert len(here["results"]) == len(interpreted["results"]) == len(lines) >= 10_000
    for line, mine, reference in zip(lines, here["results"], interpreted["results"]):
        assert mine == reference, line
    assert here["line_counts"] == interpreted["line_counts"]
    assert here["record_counts"] == interpreted["record_counts"]
    # What the comparison covered: every outcome, both output forms, records kept as text.
    outcomes = {result["line"][0] for result in here["results"]}
    assert {ACCEPTED, REJECTED, PASSED} <= outcomes
    assert sum(result["line"][-1] is not None for result in here["results"]) > 5_000
    assert sum(result.get("text", [None])[-1] is not None for result in here["results"]) > 5_000
