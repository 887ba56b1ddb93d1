"""The tuning file: each knob changes real verdicts; each kind of mistake is reported with
file, line, key and what was expected."""

import copy
import textwrap
from pathlib import Path

import pytest

from atnorm import cli
from atnorm.config.options import ConfigError
from atnorm.core.pipeline import EventFilter, FilterSettings
from atnorm.core.settings import FilterOptions, filter_settings
from atnorm.core.tuning import TuningError, apply_tuning_file, load_tuning
from support import FIXTURES, REPO, load_event


def tuning_file(tmp_path, text, name="tuning.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def tuned(tmp_path, text):
    """A real filter built with the tuning file `text`."""
    path = tuning_file(tmp_path, text)
    return EventFilter.from_schemas(settings=apply_tuning_file(str(path), FilterSettings()))


def mistakes(tmp_path, text):
    path = tuning_file(tmp_path, text)
    with pytest.raises(TuningError) as caught:
        load_tuning(str(path))
    return path, caught.value.errors


# Every service the shipped schemas declare, as the tuning errors list them.
KNOWN = ", ".join(sorted(p.stem for p in (REPO / "schemas" / "generated" / "services").glob("*.json")))


def unknown_service_event():
    """The Key Protect sample (no logSourceCRN) under a service no shipped page declares."""
    return dict(load_event("kms-cadf-zulu-no-source.json"), action="hs-crypto.secrets.delete")


def kmip_event(**changes):
    event = load_event("vmware-kmip-create.json")
    event.update(changes)
    return event


def in_sydney(event):
    """A VMware event from a region the docs do not mark Yes."""
    event = copy.deepcopy(event)
    event["logSourceCRN"] = event["logSourceCRN"].replace("us-south", "au-syd")
    event["target"]["id"] = event["target"]["id"].replace("us-south", "au-syd")
    return event


# ---------------------------------------------------------------------------------------
# Each knob, on the same event


def test_without_a_tuning_file_the_kmip_initiator_rule_rejects(shared_filter):
    event = kmip_event()
    event["initiator"] = dict(event["initiator"], host={"address": "192.0.2.9"})
    verdict = shared_filter.process(event)
    assert verdict.outcome == "rejected"
    assert [r.rule for r in verdict.reasons] == ["vmware-solutions.kmip-initiator"]


@pytest.mark.parametrize("mode, outcome, warnings", [
    ("enforce", "rejected", []),
    ("warn", "accepted", ["vmware-solutions.kmip-initiator"]),
    ("off", "accepted", []),
])
def test_service_mode_decides_what_a_failed_service_rule_means(tmp_path, mode, outcome, warnings):
    event_filter = tuned(tmp_path, f"""
        services:
          vmware-solutions:
            mode: {mode}
        """)
    event = kmip_event()
    event["initiator"] = dict(event["initiator"], host={"address": "192.0.2.9"})
    verdict = event_filter.process(event)
    assert verdict.outcome == outcome
    assert verdict.warnings == warnings


def test_mode_off_is_read_as_the_word_off_not_a_yaml_boolean(tmp_path):
    tuning = load_tuning(str(tuning_file(tmp_path, "defaults:\n  mode: off\n")))
    assert tuning.apply(FilterSettings()).default_policy.mode == "off"


@pytest.mark.parametrize("policy, outcome, warnings", [
    ("reject", "rejected", []),
    ("warn", "accepted", ["unknown_action"]),
    ("pass", "passed", []),
])
def test_unknown_action_policy(tmp_path, policy, outcome, warnings):
    event_filter = tuned(tmp_path, f"""
        services:
          vmware-solutions:
            unknown_action: {policy}
        """)
    event = kmip_event(action="vmware-solutions.kmip-key.rotate")
    verdict = event_filter.process(event)
    assert verdict.outcome == outcome
    assert verdict.warnings == warnings
    if outcome == "rejected":
        assert verdict.reasons[0].suggestion == "vmware-solutions.kmip-key.create"
    if outcome == "passed":
        assert verdict.record is event
    assert event_filter.stats.unknown_actions[("vmware-solutions", "vmware-solutions.kmip-key.rotate")] == 1


def test_defaults_apply_to_every_service_and_a_service_section_overrides_them(tmp_path):
    event_filter = tuned(tmp_path, """
        defaults:
          unknown_action: warn
        services:
          vmware-solutions:
            unknown_action: reject
        """)
    vsi = load_event("vsi-provision.json")
    vsi["action"] = "audit-log.vsi.teleport"
    assert event_filter.process(vsi).outcome == "accepted"
    assert event_filter.process(kmip_event(action="vmware-solutions.kmip-key.rotate")).outcome == "rejected"


@pytest.mark.parametrize("level, outcome, warnings", [
    (None, "accepted", ["vmware-solutions.regions"]),
    ("enforce", "rejected", []),
    ("off", "accepted", []),
])
def test_regions_level(tmp_path, level, outcome, warnings):
    text = "services:\n  vmware-solutions:\n" + (f"    regions: {level}\n" if level else "    mode: enforce\n")
    verdict = tuned(tmp_path, text).process(in_sydney(kmip_event()))
    assert verdict.outcome == outcome
    assert verdict.warnings == warnings
    if outcome == "rejected":
        assert [(r.path, r.rule) for r in verdict.reasons] == [("/logSourceCRN", "vmware-solutions.regions")]
        # Which location was found and which regions the table allows, not the rule's regex.
        assert verdict.reasons[0].message == (
            "the CRN location 'au-syd' is not a region where vmware-solutions generates events "
            "(its table allows: ca-tor, eu-de, jp-tok, us-east, us-south)")
        assert verdict.reasons[0].suggestion is None


def test_regions_in_defaults_reach_every_service_with_a_region_rule(tmp_path):
    verdict = tuned(tmp_path, "defaults:\n  regions: enforce\n").process(in_sydney(kmip_event()))
    assert verdict.outcome == "rejected"


def test_rule_levels_by_name(tmp_path):
    event = kmip_event()
    event["initiator"] = dict(event["initiator"], id="IBMid-000")
    verdict = tuned(tmp_path, """
        services:
          vmware-solutions:
            levels: {kmip-initiator: warn}
        """).process(event)
    assert verdict.outcome == "accepted"
    assert verdict.warnings == ["vmware-solutions.kmip-initiator"]


def test_envelope_levels(tmp_path, shared_filter):
    event = load_event("cos-drifted-types.json")  # initiator.typeURI spelled service-id
    assert shared_filter.process(event).outcome == "accepted"
    verdict = tuned(tmp_path, "defaults:\n  envelope: {vocabulary: enforce}\n").process(event)
    assert verdict.outcome == "rejected"
    assert {r.rule for r in verdict.reasons} == {"envelope.vocabulary"}
    assert "/initiator/typeURI" in {r.path for r in verdict.reasons}


def test_expected_field_made_required_for_one_service(tmp_path, shared_filter):
    event = kmip_event()
    del event["observer"]
    assert shared_filter.process(event).warnings == ["envelope.expected:/observer/name"]
    event_filter = tuned(tmp_path, """
        services:
          vmware-solutions:
            expected_fields:
              require: [/observer/name]
        """)
    verdict = event_filter.process(event)
    assert verdict.outcome == "rejected"
    assert [(r.path, r.rule, r.message) for r in verdict.reasons] == [
        ("/observer", "vmware-solutions.require", "'observer' is a required property")]
    assert verdict.warnings == []  # the EXPECTED warning would only repeat the reason
    other = load_event("vsi-provision.json")
    del other["observer"]
    assert event_filter.process(other).outcome == "accepted", "other services are not affected"


def test_required_field_in_a_warn_mode_service_is_a_named_warning(tmp_path):
    event = kmip_event()
    event["observer"] = {}
    verdict = tuned(tmp_path, """
        services:
          vmware-solutions:
            mode: warn
            expected_fields: {require: [/observer/name]}
        """).process(event)
    assert verdict.outcome == "accepted"
    assert verdict.warnings == ["vmware-solutions.require:/observer/name"]


def test_expected_field_required_in_defaults_applies_to_unknown_services_too(tmp_path):
    event = unknown_service_event()  # no logSourceCRN, no schema for hs-crypto
    verdict = tuned(tmp_path, "defaults:\n  expected_fields: {require: [/logSourceCRN]}\n").process(event)
    assert verdict.outcome == "rejected"
    assert [(r.path, r.rule) for r in verdict.reasons] == [("/logSourceCRN", "tuning.require")]


def test_expected_field_ignored_for_one_service(tmp_path, shared_filter):
    vsi = load_event("vsi-provision.json")  # audit-log, no logSourceCRN
    assert "envelope.expected:/logSourceCRN" in shared_filter.process(vsi).warnings
    event_filter = tuned(tmp_path, """
        services:
          audit-log:
            expected_fields: {ignore: [/logSourceCRN]}
        """)
    assert event_filter.process(vsi).warnings == []
    kmip = kmip_event()
    del kmip["logSourceCRN"]
    assert event_filter.process(kmip).warnings == ["envelope.expected:/logSourceCRN"]
    assert event_filter.stats.warnings["envelope.expected:/logSourceCRN"] == 1


def test_expected_field_ignored_in_defaults_for_every_event(tmp_path):
    event = unknown_service_event()
    verdict = tuned(tmp_path, "defaults:\n  expected_fields: {ignore: [/logSourceCRN]}\n").process(event)
    assert verdict.outcome == "accepted"
    assert "envelope.expected:/logSourceCRN" not in verdict.warnings


def test_extra_field_rule_rejects_with_a_jsonschema_reason(tmp_path):
    event_filter = tuned(tmp_path, """
        services:
          audit-log:
            rules:
              - field: /initiator/id
                pattern: "^IBMid-[0-9A-Z]+$"
        """)
    good = load_event("vsi-provision.json")
    assert event_filter.process(good).outcome == "accepted"
    bad = copy.deepcopy(good)
    bad["initiator"]["id"] = "iam-ServiceId-1"
    verdict = event_filter.process(bad)
    assert verdict.outcome == "rejected"
    reason = verdict.reasons[0]
    assert (reason.path, reason.rule) == ("/initiator/id", "audit-log.rule:/initiator/id")
    assert reason.message == "'iam-ServiceId-1' does not match '^IBMid-[0-9A-Z]+$'"
    assert verdict.record is bad


def test_extra_field_rule_at_warn_level_and_with_a_name(tmp_path):
    verdict = tuned(tmp_path, """
        defaults:
          rules:
            - {field: /severity, enum: [normal, warning], level: warn, name: calm-severity}
        """).process(kmip_event(severity="critical"))
    assert verdict.outcome == "accepted"
    assert verdict.warnings == ["tuning.rule:calm-severity"]


def test_extra_field_rule_required_type_and_range(tmp_path):
    event_filter = tuned(tmp_path, """
        defaults:
          rules:
            - {field: /reason/reasonCode, type: integer, minimum: 100, maximum: 599, required: true}
        """)
    assert event_filter.process(kmip_event()).outcome == "accepted"
    for reason in ({"reasonCode": 42}, {"reasonType": "OK"}, {"reasonCode": "many"}):
        verdict = event_filter.process(kmip_event(reason=reason))
        assert verdict.outcome == "rejected", reason
        assert "tuning.rule:/reason/reasonCode" in {r.rule for r in verdict.reasons}


def test_extra_field_rule_only_for_matching_actions(tmp_path):
    event_filter = tuned(tmp_path, r"""
        services:
          vmware-solutions:
            rules:
              - field: /target/name
                pattern: "^k-"
                when_action: "\\.kmip-"
        """)
    kmip = kmip_event()
    kmip["target"] = dict(kmip["target"], name="cluster-7")
    assert event_filter.process(kmip).outcome == "rejected"
    vcs = kmip_event(action="vmware-solutions.vcs.create")
    vcs["target"] = dict(vcs["target"], name="cluster-7")
    assert event_filter.process(vcs).outcome == "accepted"


def test_aliases_rename_fields_before_validation(tmp_path, shared_filter):
    event = load_event("vsi-provision.json")
    event["actor"] = event.pop("initiator")
    assert shared_filter.process(event).outcome == "rejected"
    verdict = tuned(tmp_path, """
        defaults:
          aliases: {actor: initiator}
        """).process(event)
    assert verdict.outcome == "accepted", verdict.reasons
    assert verdict.record["initiator"]["id"] == "IBMid-0000TEST05"
    assert "actor" not in verdict.record
    assert "alias:/actor" in verdict.fixes


def test_event_time_fraction_digits(tmp_path):
    verdict = tuned(tmp_path, "defaults:\n  event_time: {fraction_digits: 6}\n").process(kmip_event())
    assert verdict.event_time == "2025-03-04T05:06:07.123000+0000"
    assert verdict.record["eventTime"] == "2025-03-04T05:06:07.123000+0000"


def test_annotation_key_derived_fields_and_fixes(tmp_path):
    event = load_event("vsi-provision.json")
    verdict = tuned(tmp_path, """
        defaults:
          annotate: meta_atnorm
          derived_fields: [service, verb]
          record_fixes: false
        """).process(event)
    assert verdict.record["meta_atnorm"] == {"service": "audit-log", "verb": "provision"}
    assert "atnorm" not in verdict.record
    assert tuned(tmp_path, "defaults:\n  annotate: null\n").process(event).record.keys() == (
        set(event) | set()), "no annotation at all"


@pytest.mark.parametrize("policy, outcome", [("warn", "accepted"), ("reject", "rejected"), ("pass", "passed")])
def test_unknown_service_policy(tmp_path, policy, outcome):
    event = unknown_service_event()
    verdict = tuned(tmp_path, f"defaults:\n  unknown_service: {policy}\n").process(event)
    assert verdict.outcome == outcome
    if outcome == "rejected":
        assert verdict.reasons[-1].rule == "unknown_service"


def test_schema_dirs_add_a_service_generated_from_a_page(tmp_path):
    generated = tmp_path / "conf" / "schemas-local"
    page = FIXTURES / "tuning" / "object-store-events.md"
    assert cli.main(["schemas", "build", str(page), "--out", str(generated)]) == 0
    event = load_event("cos-drifted-types.json")
    event_filter = tuned(tmp_path / "conf", """
        schema_dirs: [schemas-local]
        services:
          cloud-object-storage:
            unknown_action: warn
        """)
    verdict = event_filter.process(event)
    assert verdict.service == "cloud-object-storage"
    assert "unknown_service" not in verdict.warnings
    event["action"] = "cloud-object-storage.object.shred"
    assert event_filter.process(event).warnings[-1] == "unknown_action"


def test_tuning_file_wins_over_the_flags(tmp_path):
    path = tuning_file(tmp_path, "defaults:\n  event_time: {fraction_digits: 0}\n")
    settings = filter_settings(FilterOptions.defaults(time_fraction_digits=6, tuning=str(path), annotate="x"))
    assert settings.fraction_digits == 0
    assert settings.annotation_key == "x", "keys the file does not set keep the flag's value"


def test_an_empty_tuning_file_changes_nothing(tmp_path, shared_filter):
    event_filter = tuned(tmp_path, "# nothing tuned yet\n")
    for name in ("vsi-provision.json", "cos-drifted-types.json", "platform-log-not-an-event.json"):
        mine, theirs = event_filter.process(load_event(name)), shared_filter.process(load_event(name))
        assert (mine.outcome, mine.warnings) == (theirs.outcome, theirs.warnings)


def test_the_shipped_example_is_valid_and_tunes_both_services():
    tuning = load_tuning(str(REPO / "conf" / "tuning.yaml"))
    settings = tuning.apply(FilterSettings())
    assert set(settings.services) == {"vmware-solutions", "audit-log"}
    assert settings.services["audit-log"].unknown_action == "warn"
    event = load_event("vsi-provision.json")
    event["action"] = "audit-log.vsi.teleport"
    verdict = EventFilter.from_schemas(settings=settings).process(event)
    assert verdict.outcome == "accepted" and "unknown_action" in verdict.warnings


# ---------------------------------------------------------------------------------------
# Mistakes: file, line, key, expectation


def only(errors):
    assert len(errors) == 1, [str(e) for e in errors]
    return errors[0]


def test_value_not_among_the_choices(tmp_path):
    path, errors = mistakes(tmp_path, """
        defaults:
          mode: enforce
        services:
          vmware-solutions:
            mode: strict
        """)
    error = only(errors)
    assert str(error) == (f"{path}:5: key 'services.vmware-solutions.mode': "
                          f"expected one of enforce, warn, off, got 'strict'")
    assert (error.file, error.line, error.key) == (str(path), 5, "services.vmware-solutions.mode")


def test_unknown_key(tmp_path):
    path, errors = mistakes(tmp_path, """
        defaults:
          unknown_actions: warn
        """)
    assert str(only(errors)).startswith(f"{path}:2: key 'defaults.unknown_actions': unknown key (expected one of ")
    assert "unknown_action," in str(errors[0])


def test_global_only_key_under_a_service_says_where_it_belongs(tmp_path):
    path, errors = mistakes(tmp_path, """
        services:
          audit-log:
            event_time: {fraction_digits: 0}
        """)
    assert str(only(errors)) == (f"{path}:3: key 'services.audit-log.event_time': 'event_time' acts before "
                                 f"the service of an event is known, so it can only be set under defaults")


def test_wrong_type(tmp_path):
    path, errors = mistakes(tmp_path, """
        services:
          - vmware-solutions
        """)
    assert str(only(errors)) == f"{path}:1: key 'services': expected a mapping or null, got a list"


def test_number_out_of_range(tmp_path):
    path, errors = mistakes(tmp_path, """
        defaults:
          event_time:
            fraction_digits: 12
        """)
    assert str(only(errors)) == f"{path}:3: key 'defaults.event_time.fraction_digits': expected 0 to 9, got 12"


def test_unknown_derived_field(tmp_path):
    path, errors = mistakes(tmp_path, """
        defaults:
          derived_fields:
            - service
            - regoin
        """)
    error = only(errors)
    assert (error.line, error.key) == (4, "defaults.derived_fields[1]")
    assert error.detail == ("expected one of service, objectType, verb, region, account, crnServiceName, "
                            "resourceType, got 'regoin'")


def test_unknown_service_is_an_error_listing_the_known_ones(tmp_path):
    path, errors = mistakes(tmp_path, """
        defaults:
          mode: warn
        services:
          vmware-solution:
            mode: enforce
        """)
    assert str(only(errors)) == (
        f"{path}:4: key 'services.vmware-solution': unknown service: did you mean 'vmware-solutions'? "
        f"expected one of {KNOWN} (a new service needs its schemas under schema_dirs)")


def test_bad_regex_in_a_rule(tmp_path):
    path, errors = mistakes(tmp_path, """
        services:
          audit-log:
            rules:
              - field: /initiator/id
                pattern: "^IBMid-[0-9"
        """)
    error = only(errors)
    assert (error.line, error.key) == (5, "services.audit-log.rules[0].pattern")
    assert error.detail.startswith("expected a regular expression, got '^IBMid-[0-9' (unterminated character set")


def test_bad_regex_in_when_action(tmp_path):
    _, errors = mistakes(tmp_path, """
        defaults:
          rules:
            - {field: /target/id, type: string, when_action: "(kmip"}
        """)
    assert only(errors).key == "defaults.rules[0].when_action"


def test_rule_field_must_be_a_json_pointer(tmp_path):
    path, errors = mistakes(tmp_path, """
        defaults:
          rules:
            - field: initiator.id
              type: string
        """)
    assert str(only(errors)) == (f"{path}:3: key 'defaults.rules[0].field': "
                                 f"expected a JSON pointer such as /initiator/id, got 'initiator.id'")


def test_rule_without_a_constraint(tmp_path):
    _, errors = mistakes(tmp_path, """
        defaults:
          rules:
            - field: /initiator/id
        """)
    error = only(errors)
    assert (error.line, error.key) == (3, "defaults.rules[0]")
    assert error.detail.startswith("a rule needs at least one of type, pattern")


def test_required_field_that_is_not_an_expected_one(tmp_path):
    _, errors = mistakes(tmp_path, """
        services:
          vmware-solutions:
            expected_fields:
              require: [/observer/nam]
        """)
    error = only(errors)
    assert (error.line, error.key) == (4, "services.vmware-solutions.expected_fields.require[0]")
    assert error.detail.startswith("expected one of the EXPECTED fields /severity, /message")
    assert error.detail.endswith("got '/observer/nam' (did you mean /observer/name?)")


def test_ignoring_a_field_the_defaults_require(tmp_path):
    _, errors = mistakes(tmp_path, """
        defaults:
          expected_fields: {require: [/severity]}
        services:
          audit-log:
            expected_fields: {ignore: [/severity]}
        """)
    error = only(errors)
    assert (error.line, error.key) == (5, "services.audit-log.expected_fields.ignore[0]")
    assert error.detail == "/severity cannot be ignored: defaults requires it"


def test_regions_for_a_service_without_a_region_rule(tmp_path):
    _, errors = mistakes(tmp_path, """
        services:
          audit-log:
            regions: enforce
        """)
    error = only(errors)
    assert (error.line, error.key) == (3, "services.audit-log.regions")
    assert error.detail == "service 'audit-log' has no region rule (its rules: action)"


def test_unknown_rule_name_in_levels(tmp_path):
    _, errors = mistakes(tmp_path, """
        services:
          vmware-solutions:
            levels: {kmip-initiatr: warn}
        """)
    assert only(errors).detail == "unknown rule (expected one of kmip-initiator, regions)"


def test_unknown_envelope_rule(tmp_path):
    _, errors = mistakes(tmp_path, "defaults:\n  envelope: {expectd: off}\n")
    assert only(errors).detail == "unknown envelope rule (expected one of expected, required, types, vocabulary)"


def test_duplicate_key(tmp_path):
    path, errors = mistakes(tmp_path, """
        services:
          vmware-solutions:
            mode: warn
            mode: enforce
        """)
    assert str(only(errors)) == f"{path}:4: key 'services.vmware-solutions.mode': duplicate key (first on line 3)"


def test_missing_schema_dir(tmp_path):
    path, errors = mistakes(tmp_path, "schema_dirs:\n  - nowhere\n")
    error = only(errors)
    assert (error.line, error.key) == (2, "schema_dirs[0]")
    assert error.detail == f"expected a directory, but {tmp_path / 'nowhere'} is not one"


def test_yaml_syntax_error_has_a_line(tmp_path):
    path = tuning_file(tmp_path, "defaults:\n  mode: [enforce\n")
    with pytest.raises(ConfigError) as caught:
        load_tuning(str(path))
    assert caught.value.file == str(path) and caught.value.line == 3
    assert "not valid YAML" in str(caught.value)


def test_every_mistake_is_reported_at_once_in_line_order(tmp_path):
    _, errors = mistakes(tmp_path, """
        defaults:
          unknown_service: maybe
          record_fixes: no
        services:
          audit-log:
            unknown_action: drop
        """)
    assert [(e.line, e.key) for e in errors] == [
        (2, "defaults.unknown_service"), (3, "defaults.record_fixes"), (6, "services.audit-log.unknown_action")]
    assert errors[1].detail == "expected true or false, got 'no'"


def test_a_mistake_stops_start_up(tmp_path):
    path = tuning_file(tmp_path, "defaults:\n  mode: strict\n")
    with pytest.raises(ConfigError):
        filter_settings(FilterOptions.defaults(tuning=str(path)))


# ---------------------------------------------------------------------------------------
# `atnorm config check`


def test_config_check_ok_prints_one_line_summary(capsys):
    assert cli.main(["config", "check", str(REPO / "conf" / "tuning.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert out.startswith(f"{REPO / 'conf' / 'tuning.yaml'}: OK: defaults: mode enforce, unknown_action reject")
    assert "audit-log, vmware-solutions" in out


def test_config_check_reports_each_mistake_and_exits_2(tmp_path, capsys):
    path = tuning_file(tmp_path, """
        defaults:
          mode: strict
        services:
          vmware-solution: {}
          audit-log:
            unknown_action: drop
        """)
    assert cli.main(["config", "check", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{path}:2: key 'defaults.mode': expected one of enforce, warn, off, got 'strict'",
        f"{path}:4: key 'services.vmware-solution': unknown service: did you mean 'vmware-solutions'? "
        f"expected one of {KNOWN} (a new service needs its schemas under schema_dirs)",
        f"{path}:6: key 'services.audit-log.unknown_action': expected one of reject, warn, pass, got 'drop'",
        f"atnorm config check: 3 mistakes in {path}",
    ]


def test_config_check_of_a_missing_file(tmp_path, capsys):
    assert cli.main(["config", "check", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml: cannot read: No such file or directory" in capsys.readouterr().err


def test_config_check_sees_schemas_given_on_the_command_line(tmp_path, capsys):
    generated = tmp_path / "gen"
    page = tmp_path / "object-archive.md"
    page.write_text("| Action | Description |\n|---|---|\n| `object-archive.object.create` | written |\n")
    assert cli.main(["schemas", "build", str(page), "--out", str(generated)]) == 0
    path = tuning_file(tmp_path, "services:\n  object-archive:\n    mode: warn\n")
    assert cli.main(["config", "check", str(path)]) == 2
    capsys.readouterr()
    assert cli.main(["config", "check", str(path), "--schemas", str(generated)]) == 0
    assert f"{len(KNOWN.split(', ')) + 1} services known" in capsys.readouterr().out


def test_paths_in_schema_dirs_are_relative_to_the_tuning_file(tmp_path):
    (tmp_path / "sub").mkdir()
    generated = tmp_path / "sub" / "gen"
    assert cli.main(["schemas", "build", str(FIXTURES / "tuning" / "object-store-events.md"),
                     "--out", str(generated)]) == 0
    tuning = load_tuning(str(tuning_file(tmp_path / "sub", "schema_dirs: [gen]\n")))
    assert tuning.schema_dirs == [Path(generated).resolve()]
    assert "cloud-object-storage" in tuning.known_services
