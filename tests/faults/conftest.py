"""The fault suite: every test here is marked `faults`, and each one's figures (sent, acked,
delivered, lost, duplicated, peak RSS of the relay) are printed at the end of the run and
written as JSON to the run's temporary directory (or to $ATNORM_FAULT_FIGURES)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

import pytest

from faults.harness import Tally

HERE = Path(__file__).resolve().parent

_FIGURES: List[Dict[str, Any]] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault suite (tests/faults; ATNORM_FAULT_SCALE=full for "
                                       "full scale)")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.faults)


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Any:
    """A Tally for this test, whose figures are reported even when the test fails."""
    entry = Tally(request.node.name)
    yield entry
    if entry.sent or entry.extra:  # not for a test that was skipped before it did anything
        _FIGURES.append(entry.figures())


@pytest.fixture(scope="session", autouse=True)
def _figures_file(tmp_path_factory: pytest.TempPathFactory) -> Any:
    yield
    if not _FIGURES:
        return
    path = Path(os.environ.get("ATNORM_FAULT_FIGURES") or tmp_path_factory.getbasetemp() / "fault-figures.json")
    path.write_text(json.dumps({"scale": os.environ.get("ATNORM_FAULT_SCALE", "small"), "faults": _FIGURES},
                               indent=2) + "\n", encoding="utf-8")
    _FIGURES.append({"__file__": str(path)})


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = [f for f in _FIGURES if "fault" in f]
    if not rows:
        return
    write = terminalreporter.write_line
    terminalreporter.section(f"fault figures (scale: {os.environ.get('ATNORM_FAULT_SCALE', 'small')})")
    write(f"{'fault':72} {'sent':>8} {'acked':>8} {'deliv':>8} {'lost':>5} {'dup':>6} {'peakRSS':>9}")
    for row in rows:
        rss = f"{row['peak_rss_kib'] / 1024:.0f}MiB" if row.get("peak_rss_kib") else "-"
        write(f"{row['fault'][:72]:72} {row['sent']:>8} {row['acked']:>8} {row['delivered']:>8} "
              f"{row['lost']:>5} {row['duplicated']:>6} {rss:>9}")
        extra = {k: v for k, v in row.items() if k not in ("fault", "sent", "acked", "delivered", "lost",
                                                           "duplicated", "peak_rss_kib")}
        if extra:
            write(f"    {json.dumps(extra)}")
    for f in _FIGURES:
        if "__file__" in f:
            write(f"figures written to {f['__file__']}")
