"""The file-mode benchmark: its figures come from real runs over the same lines."""

from __future__ import annotations

import importlib.util

import pytest

from atnorm.bench import filemode


def test_file_mode_figure_compares_atnorm_with_plain_jsonschema():
    figure, decode = filemode.bench_figures(300, 0.1)
    assert figure["records"] == 300
    assert figure["atnorm_records_per_s"] > 0 and figure["jsonschema_records_per_s"] > 0
    assert figure["ratio"] == pytest.approx(figure["atnorm_records_per_s"] / figure["jsonschema_records_per_s"],
                                            abs=0.01)
    assert decode["json_loads_us"] > 0 and decode["msgspec_loads_us"] > 0


@pytest.mark.parametrize("module, name", [("fastjsonschema", "fastjsonschema"), ("jsonschema_rs", "jsonschema_rs")])
def test_a_compiled_validator_gives_python_jsonschemas_verdicts(module, name):
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'atnorm[bench]')")
    compiled = filemode.OPTIONAL_VALIDATORS[name](filemode.EventFilter.from_schemas().rules)
    assert compiled is not None
    figure, _ = filemode.bench_figures(1000, 0.3)
    # Every mutated record the generator makes is judged alike, or the comparison is unfair.
    assert figure[f"{name}_verdicts_unlike_jsonschema"] == 0
    assert figure[f"{name}_records_per_s"] > 0


def test_a_compiled_validator_that_is_not_installed_is_left_out(monkeypatch):
    monkeypatch.setitem(filemode.OPTIONAL_VALIDATORS, "fastjsonschema", lambda rules: None)
    monkeypatch.setitem(filemode.OPTIONAL_VALIDATORS, "jsonschema_rs", lambda rules: None)
    figure, _ = filemode.bench_figures(100, 0.1)
    assert not [key for key in figure if "fastjsonschema" in key or "jsonschema_rs" in key]
