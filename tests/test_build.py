"""The build (setup.py) on a machine where the C compile cannot run: by default it installs
the modules' sources and says why; with ATNORM_COMPILE=required it fails.

Builds a wheel from a copy of the project with pip, the compiler set to `false`, so the
mypyc translation runs and the compile fails, as on a machine without gcc.
"""

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mypyc") is None or importlib.util.find_spec("setuptools.command.bdist_wheel") is None,
    reason="building without isolation needs mypy and setuptools 70.1 or later here")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of what the build reads, so that it writes nothing into the work tree."""
    copy = tmp_path_factory.mktemp("project")
    for name in PROJECT_FILES:
        shutil.copy(ROOT / name, copy / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.egg-info")
    shutil.copytree(ROOT / "plugin", copy / "plugin", ignore=ignore)
    shutil.copytree(ROOT / "schemas", copy / "schemas", ignore=ignore)
    return copy


def _build(project, out, choice):
    env = {**os.environ, "CC": "false", "ATNORM_COMPILE": choice}
    return subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                           "--no-index", "-w", str(out), str(project)],
                          env=env, capture_output=True, text=True, timeout=600)


def test_a_build_that_cannot_compile_installs_the_sources_and_says_so(project, tmp_path):
    run = _build(project, tmp_path, "auto")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "atnorm: the C compile failed" in run.stdout + run.stderr
    names = zipfile.ZipFile(next(tmp_path.glob("atnorm-*.whl"))).namelist()
    assert [name for name in names if name.endswith(".so")] == []
    assert {"atnorm/core/normalize.py", "atnorm/core/pipeline.py", "atnorm/version.py"} <= set(names)


def test_a_build_that_must_compile_fails_when_it_cannot(project, tmp_path):
    run = _build(project, tmp_path, "required")
    assert run.returncode != 0
    assert list(tmp_path.glob("*.whl")) == []
