"""The agents benchmark: its configurations, and the Lua checks run for real under luajit.

conf/bench/atnorm-checks.lua is the Fluent Bit row's baseline: atnorm's envelope checks in
Lua. Here it runs under luajit through tests/fixtures/lua_filter_driver.lua, called as
Fluent Bit calls it, on records written as Lua table literals (as Fluent Bit hands a
msgpack map to Lua: null reads as nil). Its verdicts are held against atnorm's own.
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from test_conf_examples import only, parse_classic

from atnorm.bench import agents
from atnorm.bench.eventgen import EventGenerator
from atnorm.core.pipeline import EventFilter
from atnorm.model.verdict import ACCEPTED, PASSED, REJECTED

ROOT = Path(__file__).resolve().parents[1]
BENCH_CONF = ROOT / "conf" / "bench"
CHECKS = BENCH_CONF / "atnorm-checks.lua"
DRIVER = ROOT / "tests" / "fixtures" / "lua_filter_driver.lua"
LUAJIT = shutil.which("luajit")
needs_luajit = pytest.mark.skipif(LUAJIT is None, reason="luajit is not installed (apt-get install luajit)")


def lua_literal(value: Any) -> str:
    """A Lua expression for a decoded msgpack/JSON value, as Fluent Bit builds it for Lua."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    if isinstance(value, str):
        # Printable ASCII as is, every other byte of the UTF-8 as a decimal escape.
        return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}"
                             for b in value.encode("utf-8")) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua_literal(key)}] = {lua_literal(item)}" for key, item in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def run_checks(records: List[Dict[str, Any]], tmp_path: Path) -> List[Tuple[int, str]]:
    """(return code, atnorm_failed or "") of the Lua filter for each record, in order."""
    path = tmp_path / "records.lua"
    path.write_text("".join(lua_literal(record) + "\n" for record in records), encoding="ascii")
    result = subprocess.run([LUAJIT, str(DRIVER), str(CHECKS), "atnorm_check", str(path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(records)
    return [(int(code), failed) for code, failed in (line.split("\t") for line in lines)]


@pytest.fixture(scope="module")
def event_filter() -> EventFilter:
    return EventFilter.from_schemas()


def valid_events(event_filter: EventFilter, count: int, seed: int) -> List[Dict[str, Any]]:
    generator = EventGenerator(event_filter.rules, seed=seed)
    return [generator.valid() for _ in range(count)]


def test_lua_literals_round_trip_through_luajit_as_json_would_read(tmp_path):
    # The literal writer is the harness's own risk: check it on awkward values first.
    if LUAJIT is None:
        pytest.skip("luajit is not installed (apt-get install luajit)")
    value = {"quote \" and \\": "é\n\t\u2028", "n": -12, "f": 200.5, "list": [1, "a", True]}
    script = tmp_path / "echo.lua"
    script.write_text(
        "local v = " + lua_literal(value) + "\n"
        "io.write(v['quote \" and \\\\'], '|', v.n, '|', v.f, '|', v.list[2], '|', tostring(v.list[3]))\n",
        encoding="ascii")
    result = subprocess.run([LUAJIT, str(script)], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8") == "é\n\t\u2028|-12|200.5|a|true"


# --- the Lua checks against atnorm's verdicts ---------------------------------------------------

@needs_luajit
def test_valid_generated_events_are_kept(event_filter, tmp_path):
    events = valid_events(event_filter, 500, seed=11)
    assert all(event_filter.process(copy.deepcopy(event)).outcome == ACCEPTED for event in events)
    results = run_checks(events, tmp_path)
    kept = [index for index, (code, failed) in enumerate(results) if code == 0 and failed == ""]
    assert len(kept) == len(events), [(events[i], results[i]) for i in range(len(events)) if i not in kept][:3]


def _drop(*path: str) -> Callable[[Dict[str, Any], Any], None]:
    def mutate(event: Dict[str, Any], _: Any) -> None:
        node = event
        for part in path[:-1]:
            node = node[part]
        del node[path[-1]]
    return mutate


def _set(*path: str) -> Callable[[Dict[str, Any], Any], None]:
    def mutate(event: Dict[str, Any], value: Any) -> None:
        node = event
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return mutate


# kind → (mutation, the values it sets (None: it drops), the pointer the Lua filter names)
MUTATION_KINDS: Dict[str, Tuple[Callable[[Dict[str, Any], Any], None], List[Any], str]] = {
    "missing action": (_drop("action"), [None], "/action"),
    "action not service.object.verb": (_set("action"), ["create", "a.b", "a..b.c", "a.b.c.d.e.f", "-a.b.c",
                                                         "a.b c.d", 42, ["a", "b", "c"]], "/action"),
    "initiator missing": (_drop("initiator"), [None], "/initiator"),
    "initiator without an id": (_set("initiator"), [{"name": "x"}, {"id": ""}, {"id": "   "}, {"id": 7},
                                                    "someone", ["IBMid-1"]], "/initiator"),
    "target missing": (_drop("target"), [None], "/target"),
    "wrong eventTime": (_set("eventTime"), ["yesterday", "2025-13-01T00:00:00Z", "2025-02-29T00:00:00Z",
                                            "2025-01-01T24:00:00Z", "2025-01-01T10:60:00Z", "1/2/2025", "",
                                            "2025-01-01T10:00:00+5", True, {"t": 1}], "/eventTime"),
    "missing eventTime": (_drop("eventTime"), [None], "/eventTime"),
    "bad outcome": (_set("outcome"), ["done", "", "succeeded", 1, False], "/outcome"),
    "missing outcome": (_drop("outcome"), [None], "/outcome"),
    "wrong types": (lambda event, change: change(event), [
        lambda event: event.update(dataEvent="maybe"),
        lambda event: event.update(saveServiceCopy=1),
        lambda event: event.update(severity="high"),
        lambda event: event.update(message=["x"]),
        lambda event: event.update(requestData="not json"),
        lambda event: event.update(responseData=5),
        lambda event: event["reason"].update(reasonCode="OK"),
        lambda event: event["reason"].update(reasonCode=200.5),
        lambda event: event["initiator"].update(name=3),
        lambda event: event["target"].update(typeURI={"a": 1}),
        lambda event: event.update(observer="ActivityTracker"),
    ], "/"),
}


@needs_luajit
@pytest.mark.parametrize("kind", sorted(MUTATION_KINDS))
def test_each_mutation_kind_is_caught_as_atnorm_rejects_it(kind, event_filter, tmp_path):
    mutate, values, pointer = MUTATION_KINDS[kind]
    records = []
    for value in values:
        for event in valid_events(event_filter, 4, seed=len(records) + 1):
            mutate(event, value)
            records.append(event)
    verdicts = [event_filter.process(copy.deepcopy(record)) for record in records]
    assert [verdict.outcome for verdict in verdicts] == [REJECTED] * len(records)
    # atnorm rejects each for its envelope, not (only) for a service's action table.
    assert all(any(reason.rule.startswith("envelope.") for reason in verdict.reasons) for verdict in verdicts)
    for record, (code, failed) in zip(records, run_checks(records, tmp_path)):
        assert code == 1 and failed.startswith(pointer), (record, code, failed)
        assert failed.endswith((" envelope.required", " envelope.types"))


@needs_luajit
def test_drift_atnorm_repairs_is_kept_and_other_traffic_passes(event_filter, tmp_path):
    kept = valid_events(event_filter, 6, seed=5)
    for event, change in zip(kept, [
            lambda e: e.update(outcome=" SUCCESS "), lambda e: e.update(eventTime="2024-02-29 23:59:60,5 UTC"),
            lambda e: e.update(eventTime=1_750_000_000_123), lambda e: e["reason"].update(reasonCode=" 404 "),
            lambda e: e.update(dataEvent="yes", severity="Critical"),
            lambda e: e.update(requestData=json.dumps({"a": 1}), eventTime="2025-01-01T10:00:00.5-0630")]):
        change(event)
    passing = [{"log": "plain text"}, {"action": "deploy", "user": "x"}, {"message": "hello"}]
    assert [event_filter.process(copy.deepcopy(r)).outcome for r in kept] == [ACCEPTED] * len(kept)
    assert [event_filter.process(copy.deepcopy(r)).outcome for r in passing] == [PASSED] * len(passing)
    assert run_checks(kept + passing, tmp_path) == [(0, "")] * (len(kept) + len(passing))


@needs_luajit
def test_on_the_generated_mix_the_lua_checks_agree_with_atnorms_envelope_verdict(event_filter, tmp_path):
    generator = EventGenerator(event_filter.rules, seed=23)
    # Fluent Bit hands null to Lua as nil (absent): records with a null are left out.
    records = [record for record in (generator.mutated()[1] for _ in range(1500))
               if "null" not in json.dumps(record)]
    envelope_rejected = []
    for record in records:
        verdict = event_filter.process(copy.deepcopy(record))
        envelope_rejected.append(verdict.outcome == REJECTED
                                 and any(reason.rule.startswith("envelope.") for reason in verdict.reasons))
    assert 300 < sum(envelope_rejected) < len(records) - 300  # both sides are well represented
    lua_rejected = [code == 1 for code, _ in run_checks(records, tmp_path)]
    disagreements = [record for record, ours, theirs in zip(records, envelope_rejected, lua_rejected)
                     if ours != theirs]
    assert disagreements == []


# --- the configurations -----------------------------------------------------------------------

def environment_variables(text: str) -> set:
    return set(re.findall(r"#\{ENV\['([A-Z_]+)'\]\}", text)) | set(re.findall(r"\$\{([A-Z_]+)\}", text))


@needs_luajit
def test_the_lua_script_loads_and_defines_the_function_the_fluent_bit_conf_calls():
    sections = parse_classic(BENCH_CONF / "fluent-bit-lua.conf")
    lua = only(sections, "FILTER", name="lua")
    assert lua["script"] == "${ATNORM_BENCH_CONF_DIR}/atnorm-checks.lua"
    result = subprocess.run([LUAJIT, "-e", f"dofile({lua_literal(str(CHECKS))}); "
                             f"assert(type({lua['call']}) == 'function')"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_fluent_bit_conf_checks_rewrites_failures_and_forwards_with_acks():
    sections = parse_classic(BENCH_CONF / "fluent-bit-lua.conf")
    assert [name for name, _ in sections] == ["SERVICE", "INPUT", "FILTER", "FILTER", "OUTPUT"]
    assert only(sections, "INPUT", name="forward")["port"] == "${ATNORM_BENCH_LISTEN_PORT}"
    rewrite = only(sections, "FILTER", name="rewrite_tag")
    assert rewrite["rule"].split() == ["$atnorm_failed", "^.", "$TAG.rejected", "false"]
    # The re-tagged record comes round again: neither filter may match its tag.
    for name in ("lua", "rewrite_tag"):
        pattern = only(sections, "FILTER", name=name)["match_regex"]
        assert re.search(pattern, "audit.bench") and re.search(pattern, "bench.warmup")
        assert not re.search(pattern, "audit.bench.rejected")
    output = only(sections, "OUTPUT", name="forward")
    assert output["port"] == "${ATNORM_BENCH_FORWARD_PORT}"
    assert output["require_ack_response"].lower() == "on"


@pytest.mark.parametrize("name", ["fluentd-record-transformer.conf", "fluentd-exec-filter.conf"])
def test_the_fluentd_confs_take_their_ports_from_the_environment_and_wait_for_acks(name):
    text = (BENCH_CONF / name).read_text(encoding="utf-8")
    # Balanced <section> ... </section> lines, as Fluentd's parser wants them.
    stack = []
    for line in text.splitlines():
        line = line.strip()
        if re.fullmatch(r"<[a-z_]+( [^>]*)?>", line):
            stack.append(line[1:-1].split()[0])
        elif re.fullmatch(r"</[a-z_]+>", line):
            assert stack and stack.pop() == line[2:-1], f"{name}: {line} closes nothing open"
    assert stack == []
    assert "port \"#{ENV['ATNORM_BENCH_LISTEN_PORT']}\"" in text
    assert "port \"#{ENV['ATNORM_BENCH_FORWARD_PORT']}\"" in text
    assert "require_ack_response true" in text
    assert ("@type record_transformer" in text) == (name == "fluentd-record-transformer.conf")
    if name == "fluentd-exec-filter.conf":
        assert "command \"#{ENV['ATNORM_BENCH_EXEC_COMMAND']}\"" in text


def test_every_variable_the_confs_read_is_one_the_bench_sets():
    for path in BENCH_CONF.glob("*.conf"):
        assert environment_variables(path.read_text(encoding="utf-8")) <= set(agents.ENVIRONMENT), path.name
    rows = {conf for _, conf, _ in agents.ROWS.values()}
    assert rows == {path.name for path in BENCH_CONF.glob("*.conf")}


def test_the_conf_directory_can_be_given_for_an_installed_package(monkeypatch, tmp_path):
    # tox installs a wheel, which holds no conf/: tox -e bench sets ATNORM_BENCH_CONF_DIR.
    monkeypatch.setenv("ATNORM_BENCH_CONF_DIR", str(tmp_path))
    assert agents.conf_dir() == tmp_path


def test_the_exec_filter_child_is_atnorm_in_msgpack_both_ways_or_cat(tmp_path):
    import shlex

    command = shlex.split(agents.exec_command("atnorm", str(tmp_path)))
    assert command[1:4] == ["-m", "atnorm", "exec-filter"]
    assert command[command.index("--in-format") + 1] == command[command.index("--out-format") + 1] == "msgpack"
    assert agents.exec_command("echo", str(tmp_path)) == "cat"


# --- which rows run ---------------------------------------------------------------------------

def test_rows_follow_the_agents_found():
    def found(*names: str) -> Callable[[str], Any]:
        return lambda agent: f"/opt/bin/{agent}" if agent in names else None

    assert agents.rows_on_path(found()) == {}
    assert set(agents.rows_on_path(found("fluent-bit"))) == {"fluent_bit_lua"}
    assert set(agents.rows_on_path(found("fluentd"))) == {
        "fluentd_record_transformer", "fluentd_exec_filter_atnorm", "fluentd_exec_filter_echo"}
    assert set(agents.rows_on_path(found("fluentd", "fluent-bit"))) == set(agents.ROWS)


def test_without_the_agents_on_path_there_is_no_figure(tmp_path, monkeypatch):
    if shutil.which("fluentd") or shutil.which("fluent-bit"):
        pytest.skip("an agent is on PATH here")
    monkeypatch.setenv("PATH", str(tmp_path))
    assert agents.bench_figures(1000, 0.1) == []


def test_an_agent_that_does_not_start_is_reported_in_the_figure(tmp_path, monkeypatch):
    if shutil.which("fluentd") or shutil.which("fluent-bit"):
        pytest.skip("an agent is on PATH here")
    # A fluent-bit that rejects its configuration, as a broken install or conf would.
    agent = tmp_path / "fluent-bit"
    agent.write_text("#!/bin/sh\necho '[error] configuration rejected' >&2\nexit 1\n", encoding="utf-8")
    agent.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    # Installed from a wheel (as tox does), the package holds no conf/: point at the tree's.
    monkeypatch.setenv(agents.CONF_DIR_VARIABLE, str(BENCH_CONF))
    [figure] = agents.bench_figures(1000, 0.1)
    assert "fluent-bit did not listen" in figure["failed"]
    assert "configuration rejected" in figure["failed"]
    assert not any(key.endswith("_records_per_s") for key in figure)
