"""The drift log and report: undeclared actions seen in real verdicts, kept, saved, reported."""

import json

import pytest

from atnorm import cli
from atnorm.config.options import ConfigError
from atnorm.core.drift import DriftLog, build_report, format_report
from atnorm.core.pipeline import EventFilter, FilterSettings, ServicePolicy
from atnorm.core.reload import ReloadingFilter
from atnorm.core.settings import FilterOptions
from support import load_event


def event(name, **changes):
    record = load_event(name)
    record.update(changes)
    return record


def traffic():
    """Declared actions, two misspelt or new VMware actions, an undeclared service, other logs."""
    records = [event("vmware-kmip-create.json"), event("vsi-provision.json"),
               event("platform-log-not-an-event.json")]
    for day in (3, 1, 2):
        records.append(event("vmware-kmip-create.json", action="vmware-solutions.kmip-key.rotate",
                             eventTime=f"2025-03-0{day}T10:00:00Z"))
    records.append(event("vmware-kmip-create.json", action="vmware-solutions.kmip-key.craete"))
    records += [event("cos-drifted-types.json", action="object-archive.object.create")] * 2  # no schema
    return records


def observed(event_filter, records, log=None):
    log = log or DriftLog()
    for record in records:
        log.observe(event_filter.process(record), event_filter.rules)
    return log


def test_only_undeclared_actions_are_kept_with_counts_outcomes_and_times(fresh_filter):
    log = observed(fresh_filter, traffic())
    assert log.observed == 9
    assert sorted(log.entries) == ["object-archive.object.create", "vmware-solutions.kmip-key.craete",
                                   "vmware-solutions.kmip-key.rotate"]
    rotate = log.entries["vmware-solutions.kmip-key.rotate"]
    assert (rotate.service, rotate.count, dict(rotate.outcomes)) == ("vmware-solutions", 3, {"rejected": 3})
    assert (rotate.first_seen, rotate.last_seen) == ("2025-03-01T10:00:00.000+0000", "2025-03-03T10:00:00.000+0000")
    cos = log.entries["object-archive.object.create"]
    assert (cos.service, cos.count, dict(cos.outcomes)) == ("object-archive", 2, {"accepted": 2})
    assert cos.first_seen == "2024-01-02T03:04:05.000+0000"


def test_report_groups_by_service_with_the_nearest_declared_action(fresh_filter):
    report = build_report(observed(fresh_filter, traffic()), fresh_filter.rules)
    assert (report["observed"], report["records"], report["actions"]) == (9, 6, 3)
    vmware, cos = report["services"]
    assert (vmware["service"], vmware["declared"], vmware["declared_actions"], vmware["records"]) == (
        "vmware-solutions", True, 26, 4)
    assert [(a["action"], a["count"], a["nearest"]) for a in vmware["actions"]] == [
        ("vmware-solutions.kmip-key.rotate", 3, "vmware-solutions.kmip-key.create"),
        ("vmware-solutions.kmip-key.craete", 1, "vmware-solutions.kmip-key.create"),
    ]
    assert (cos["service"], cos["declared"], cos["actions"][0]["nearest"]) == ("object-archive", False, None)


def test_text_report_is_a_table_per_service(fresh_filter):
    text = format_report(build_report(observed(fresh_filter, traffic()), fresh_filter.rules))
    lines = text.splitlines()
    assert lines[0] == "3 undeclared actions in 6 of 9 records, 2 services"
    assert lines[2] == ("vmware-solutions (declared service, its tables list 26 actions): "
                        "2 undeclared actions, 4 records")
    assert lines[3].split() == ["records", "outcomes", "first", "seen", "last", "seen", "action", "nearest",
                                "declared"]
    assert lines[4].split() == ["3", "rejected", "3", "2025-03-01T10:00:00.000+0000",
                                "2025-03-03T10:00:00.000+0000", "vmware-solutions.kmip-key.rotate",
                                "vmware-solutions.kmip-key.create"]
    assert "object-archive (no schema declares this service): 1 undeclared action, 2 records" in lines


def test_a_misspelt_service_name_gets_a_nearest_declared_action(fresh_filter):
    log = observed(fresh_filter, [event("vmware-kmip-create.json", action="vmware-solution.kmip-key.create")])
    group = build_report(log, fresh_filter.rules)["services"][0]
    assert (group["service"], group["declared"]) == ("vmware-solution", False)
    assert group["actions"][0]["nearest"] == "vmware-solutions.kmip-key.create"


def test_no_drift_says_so(fresh_filter):
    log = observed(fresh_filter, [event("vsi-provision.json"), event("vmware-kmip-create.json")])
    assert format_report(build_report(log, fresh_filter.rules)) == (
        "no drift: every action in 2 records is declared by the loaded tables")


def test_drift_is_seen_whatever_the_policy_does_with_the_record():
    settings = FilterSettings(unknown_service="pass",
                              services={"vmware-solutions": ServicePolicy(mode="off"),
                                        "audit-log": ServicePolicy(unknown_action="pass")})
    event_filter = EventFilter.from_schemas(settings=settings)
    records = [event("cos-drifted-types.json", action="object-archive.object.create"),
               event("vmware-kmip-create.json", action="vmware-solutions.kmip-key.rotate"),
               event("vsi-provision.json", action="audit-log.vsi.teleport")]
    log = observed(event_filter, records)
    assert {a: dict(e.outcomes) for a, e in log.entries.items()} == {
        "object-archive.object.create": {"passed": 1},
        "vmware-solutions.kmip-key.rotate": {"accepted": 1},
        "audit-log.vsi.teleport": {"passed": 1},
    }


def test_the_log_stays_bounded(fresh_filter):
    records = [event("vsi-provision.json", action=f"audit-log.vsi.new-{n}") for n in range(5)]
    log = observed(fresh_filter, records + records[:1], DriftLog(max_actions=2))
    assert sorted(log.entries) == ["audit-log.vsi.new-0", "audit-log.vsi.new-1"]
    assert log.entries["audit-log.vsi.new-0"].count == 2
    assert log.untracked == 3 and log.records == 6
    assert format_report(build_report(log, fresh_filter.rules)).endswith(
        "3 more records had actions beyond the tracking limit")


def test_state_is_saved_and_merged(fresh_filter, tmp_path):
    first = observed(fresh_filter, traffic())
    state = tmp_path / "drift.json"
    first.save(str(state))
    assert json.loads(state.read_text())["format"] == "atnorm-drift/1"
    later = observed(fresh_filter, [event("vmware-kmip-create.json", action="vmware-solutions.kmip-key.rotate",
                                          eventTime="2025-04-01T00:00:00Z")])
    later.merge(DriftLog.load(str(state)))
    rotate = later.entries["vmware-solutions.kmip-key.rotate"]
    assert (rotate.count, rotate.first_seen, rotate.last_seen) == (
        4, "2025-03-01T10:00:00.000+0000", "2025-04-01T00:00:00.000+0000")
    assert later.observed == 10 and later.records == 7


@pytest.mark.parametrize("content, expected", [
    ("{not json", "damaged drift state (not JSON"),
    ('{"format": "something-else"}', "not a drift state file"),
    ('{"format": "atnorm-drift/1", "actions": {"a.b.c": {"count": 1}}}', "damaged drift state (KeyError"),
])
def test_a_damaged_state_file_is_a_clear_error(tmp_path, content, expected):
    state = tmp_path / "drift.json"
    state.write_text(content)
    with pytest.raises(ConfigError) as caught:
        DriftLog.load(str(state))
    assert str(caught.value).startswith(f"{state}: {expected}")


def test_report_uses_the_schemas_loaded_now(fresh_filter, tmp_path):
    state = tmp_path / "drift.json"
    observed(fresh_filter, traffic()).save(str(state))
    generated = tmp_path / "gen"
    page = tmp_path / "object-archive.md"
    page.write_text("| Action | Description |\n|---|---|\n| `object-archive.object.create` | written |\n")
    assert cli.main(["schemas", "build", str(page), "--out", str(generated)]) == 0
    with_cos = EventFilter.from_schemas(settings=FilterSettings(schema_dirs=[generated]))
    report = build_report(DriftLog.load(str(state)), with_cos.rules)
    assert report["now_declared"] == 1
    assert [g["service"] for g in report["services"]] == ["vmware-solutions"]


# ---------------------------------------------------------------------------------------
# `atnorm drift`


def jsonl(tmp_path, records, name="traffic.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "{not json\n\n")
    return path


def test_drift_command_over_json_lines(tmp_path, capsys):
    path = jsonl(tmp_path, traffic())
    assert cli.main(["drift", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("3 undeclared actions in 6 of 10 records, 2 services\n")
    assert "vmware-solutions.kmip-key.rotate  vmware-solutions.kmip-key.create" in out


def test_drift_command_json_state_round_trip_and_exit_code(tmp_path, capsys):
    state = tmp_path / "state.json"
    path = jsonl(tmp_path, traffic())
    assert cli.main(["drift", str(path), "--write-state", str(state), "--exit-code"]) == 1
    capsys.readouterr()
    assert cli.main(["drift", "--state", str(state), "--state", str(state), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["records"] == 12 and report["observed"] == 20, "two copies of the state are added up"
    clean = jsonl(tmp_path, [event("vsi-provision.json")], "clean.jsonl")
    assert cli.main(["drift", str(clean), "--exit-code"]) == 0


def test_drift_command_with_a_tuning_file(tmp_path, capsys):
    generated = tmp_path / "gen"
    page = tmp_path / "object-archive.md"
    page.write_text("| Action | Description |\n|---|---|\n| `object-archive.object.create` | written |\n")
    assert cli.main(["schemas", "build", str(page), "--out", str(generated)]) == 0
    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("schema_dirs: [gen]\n")
    assert cli.main(["drift", str(jsonl(tmp_path, traffic())), "--tuning", str(tuning), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [g["service"] for g in report["services"]] == ["vmware-solutions"]


def test_drift_command_mistakes_are_one_line_errors(tmp_path, capsys):
    assert cli.main(["drift"]) == 2
    assert "give JSON-lines files" in capsys.readouterr().err
    assert cli.main(["drift", str(tmp_path / "absent.jsonl")]) == 2
    assert "absent.jsonl: cannot read: No such file or directory" in capsys.readouterr().err
    assert cli.main(["drift", "--state", str(tmp_path / "absent.json")]) == 2
    assert "cannot read drift state" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# Fed by a running filter


def test_a_reloading_filter_keeps_a_drift_state_across_restarts(tmp_path):
    state = tmp_path / "drift.json"
    values = FilterOptions.defaults()
    first = ReloadingFilter.from_options(values, drift_state=str(state), log=lambda line: None)
    for record in traffic():
        first.process(record)
    first.process_json(json.dumps(event("vsi-provision.json", action="audit-log.vsi.teleport")))
    first.close()
    second = ReloadingFilter.from_options(values, drift_state=str(state), log=lambda line: None)
    second.process(event("vsi-provision.json", action="audit-log.vsi.teleport"))
    second.close()
    saved = DriftLog.load(str(state))
    assert saved.observed == 11
    assert saved.entries["audit-log.vsi.teleport"].count == 2
    assert saved.entries["vmware-solutions.kmip-key.rotate"].count == 3


def test_the_watcher_saves_the_drift_state_only_when_it_changed(tmp_path):
    state = tmp_path / "drift.json"
    values = FilterOptions.defaults()
    holder = ReloadingFilter.from_options(values, drift_state=str(state), log=lambda line: None)
    holder.save_drift()
    assert not state.exists(), "nothing seen yet"
    holder.process(event("vsi-provision.json", action="audit-log.vsi.teleport"))
    holder.save_drift()
    assert DriftLog.load(str(state)).entries["audit-log.vsi.teleport"].count == 1


def test_the_relay_keeps_a_drift_state_that_atnorm_drift_reads(tmp_path, capsys):
    import time

    from fluent.sender import FluentSender

    from relay_process import RelayProcess

    state = tmp_path / "drift.json"
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data), "--drift-state", str(state)) as relay:
        sender = FluentSender("app", host="127.0.0.1", port=relay.port)
        for _ in range(2):
            assert sender.emit("audit", event("vsi-provision.json", action="audit-log.vsi.teleport"))
        sender.close()
        deadline = time.monotonic() + 30
        while not (data / "rejected.jsonl").exists() or len((data / "rejected.jsonl").read_text().splitlines()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert relay.stop() == 0
    assert DriftLog.load(str(state)).entries["audit-log.vsi.teleport"].count == 2
    assert cli.main(["drift", "--state", str(state), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    [group] = report["services"]
    assert group["service"] == "audit-log"


def test_drift_state_and_filter_workers_do_not_go_together(tmp_path, capsys):
    assert cli.main(["serve", "--data-dir", str(tmp_path), "--drift-state", str(tmp_path / "d.json"),
                     "--filter-workers", "2"]) == 2
    assert "drift_state needs filter_workers 1" in capsys.readouterr().err
