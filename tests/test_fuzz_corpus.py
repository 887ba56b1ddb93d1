"""The fuzz corpus replayed through every target, and a short seeded atheris run of each.

The replay needs nothing but the package: each file in tests/fuzz/corpus/<target>/ goes
through that target's `test_one_input`, which asserts the invariants (one output per
record, counts that add up, output writable as it is). The coverage-guided run needs
atheris (the `fuzz` extra) and is skipped without it.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
TARGETS = ("forward", "execfilter", "filter")
sys.path.insert(0, str(FUZZ_DIR))


def corpus_files(target):
    return sorted((FUZZ_DIR / "corpus" / target).iterdir())


def test_every_target_has_a_seed_corpus_and_the_whole_corpus_stays_small():
    total = 0
    for target in TARGETS:
        files = corpus_files(target)
        assert len(files) >= 10, target
        total += sum(path.stat().st_size for path in files)
    assert total < 1 << 20


@pytest.mark.parametrize("target", TARGETS)
def test_corpus_replays_with_every_invariant_holding(target):
    test_one_input = importlib.import_module(f"fuzz_{target}").test_one_input
    failures = []
    for path in corpus_files(target):
        try:
            test_one_input(path.read_bytes())
        except Exception as exc:  # collect them all, so one run names every failing input
            failures.append(f"{path.name}: {type(exc).__name__}: {exc}"[:500])
    assert not failures, "\n".join(failures)


def test_the_targets_check_invariants_not_only_that_nothing_raises(monkeypatch):
    """A target that cannot fail is no test: feed each one an input it must refuse."""
    forward = importlib.import_module("fuzz_forward")
    real = forward.parse_frame
    # A codec that dropped the last entry of a frame must be caught.
    monkeypatch.setattr(forward, "parse_frame", lambda frame, **kw: _drop_last(real(frame, **kw)))
    with pytest.raises(AssertionError):
        forward.check_chunk(["t", [[1, {"a": 1}], [2, {"b": 2}]]], b"")
    fuzzlib = importlib.import_module("fuzzlib")
    with pytest.raises(AssertionError):
        fuzzlib.check_writable({"n": 2**64}, "passed output")
    execfilter = importlib.import_module("fuzz_execfilter")
    assert execfilter._lines_expected(b'{"a":1}\n   \n\n{"b":2}') == 2


def _drop_last(chunk):
    chunk.entries = chunk.entries[:-1]
    return chunk




def _has_atheris():
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_atheris(), reason="atheris not installed (pip install .[fuzz])")
@pytest.mark.parametrize("target", TARGETS)
def test_a_short_seeded_atheris_run_finds_nothing(target, tmp_path):
    """Two hundred coverage-guided inputs per target, from a fixed seed, so CI exercises
    the fuzzing itself; `tox -e fuzz` runs the same for longer."""
    result = subprocess.run(
        [sys.executable, str(FUZZ_DIR / f"fuzz_{target}.py"), "-runs=200", "-seed=1", "-max_len=8192",
         "-max_total_time=120", "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/", "-print_final_stats=1",
         str(tmp_path), str(FUZZ_DIR / "corpus" / target)],
        capture_output=True, text=True, timeout=280, env=dict(os.environ, PYTHONHASHSEED="0", ATNORM_FUZZ_INSTRUMENT="atnorm"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(tmp_path.glob("crash-*"))
    executed = [line for line in result.stderr.splitlines() if line.startswith("stat::number_of_executed_units")]
    assert executed and int(executed[0].split(":")[-1]) > 0, result.stderr[-2000:]
