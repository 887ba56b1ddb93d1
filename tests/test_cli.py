"""`atnorm filter` and `atnorm explain` as a user runs them: real subprocesses."""

import json
import subprocess
import sys

from support import load_event

ATNORM = [sys.executable, "-m", "atnorm"]


def test_filter_routes_each_line_and_summarises(tmp_path):
    bad_action = load_event("vmware-kmip-create.json")
    bad_action["action"] = "vmware-solutions.kmip-key.craete"
    lines = [
        json.dumps(load_event("vsi-provision.json")),
        json.dumps(load_event("platform-log-not-an-event.json")),
        json.dumps(bad_action),
        "{not json",
        "",
        "[1, 2]",
    ]
    source = tmp_path / "in.jsonl"
    source.write_bytes(("\n".join(lines) + "\n").encode() + b'{"x": "\xff"}\n')
    rejected = tmp_path / "rejected.jsonl"
    result = subprocess.run(ATNORM + ["filter", str(source), "--rejected", str(rejected)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r.get("action") for r in out] == ["audit-log.vsi.provision", None]
    dead = [json.loads(line) for line in rejected.read_text().splitlines()]
    assert len(dead) == 4
    assert dead[0]["original"] == bad_action
    assert dead[0]["reasons"][0]["suggestion"] == "vmware-solutions.kmip-key.create"
    assert [d["reasons"][0]["rule"] for d in dead[1:]] == ["record.json", "record.type", "record.encoding"]
    assert result.stderr.strip() == "received=6 accepted=1 rejected=4 passed=1 warnings=1"


def test_filter_reads_stdin_and_separates_passed_records(tmp_path):
    passed = tmp_path / "passed.jsonl"
    lines = json.dumps(load_event("platform-log-not-an-event.json")) + "\n" + json.dumps(load_event("vsi-provision.json")) + "\n"
    result = subprocess.run(ATNORM + ["filter", "-", "--passed", str(passed), "--rejected", str(tmp_path / "r"),
                                      "--summary-format", "json"],
                            input=lines, capture_output=True, text=True)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 1 and len(passed.read_text().splitlines()) == 1
    assert json.loads(result.stderr)["received"] == 2


def test_filter_missing_file_is_an_io_error_without_traceback(tmp_path):
    result = subprocess.run(ATNORM + ["filter", str(tmp_path / "absent.jsonl"), "--rejected", str(tmp_path / "r")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "absent.jsonl" in result.stderr and "Traceback" not in result.stderr


def test_filter_bad_option_value_is_a_usage_error(tmp_path):
    result = subprocess.run(ATNORM + ["filter", "--time-fraction-digits", "12", "--rejected", str(tmp_path / "r")],
                            input="", capture_output=True, text=True)
    assert result.returncode == 2
    assert "--time-fraction-digits" in result.stderr and "Traceback" not in result.stderr


def test_explain_shows_fixes_failures_and_suggestion(tmp_path):
    event = load_event("cos-drifted-types.json")
    event["action"] = "audit-log.vsi.reboto"
    path = tmp_path / "e.json"
    path.write_text(json.dumps(event, indent=2))
    result = subprocess.run(ATNORM + ["explain", str(path)], capture_output=True, text=True)
    assert result.returncode == 1  # rejected
    text = result.stdout
    assert "verdict: rejected" in text
    assert "coerce:/reason/reasonCode" in text
    assert "/action [audit-log.action]" in text
    assert "did you mean: audit-log.vsi.reboot" in text


def test_explain_reads_stdin_and_handles_garbage():
    result = subprocess.run(ATNORM + ["explain", "-"], input="\xff not json", capture_output=True, text=True)
    assert result.returncode == 1 and "verdict: rejected" in result.stdout and "record.json" in result.stdout


def test_no_command_prints_help_and_exits_2():
    result = subprocess.run(ATNORM, capture_output=True, text=True)
    assert result.returncode == 2 and "filter" in result.stderr


def explain(tmp_path, event) -> subprocess.CompletedProcess:
    path = tmp_path / "e.json"
    path.write_text(json.dumps(event))
    return subprocess.run(ATNORM + ["explain", str(path)], capture_output=True, text=True)


def test_explain_exits_0_for_an_accepted_event_and_2_for_a_file_it_cannot_read(tmp_path):
    assert explain(tmp_path, load_event("vmware-kmip-create.json")).returncode == 0
    missing = subprocess.run(ATNORM + ["explain", str(tmp_path / "absent.json")], capture_output=True, text=True)
    assert missing.returncode == 2 and "absent.json: No such file or directory" in missing.stderr


def test_explain_shows_each_fix_as_before_and_after(tmp_path):
    event = load_event("vmware-kmip-create.json")
    event["outcome"] = " Success"
    event["eventTime"] = "2025-01-02T03:04:05+01:00"
    text = explain(tmp_path, event).stdout
    assert '  - trim:/outcome: " Success" → "success"' in text
    assert '  - eventTime: "2025-01-02T03:04:05+01:00" → "2025-01-02T02:04:05.000+0000"' in text


def test_explain_shows_each_warning_with_its_value_and_why(tmp_path):
    event = load_event("vmware-kmip-create.json")
    event["initiator"]["typeURI"] = "service/security/account/usr"
    event["logSourceCRN"] = event["logSourceCRN"].replace("us-south", "au-syd")
    del event["message"]
    result = explain(tmp_path, event)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.splitlines()
    assert "  - envelope.expected:/message: missing (EXPECTED fields; absence is a counted warning)" in lines
    [vocabulary] = [line for line in lines if "envelope.vocabulary:/initiator/typeURI" in line]
    assert 'value "service/security/account/usr"' in vocabulary
    assert "(nearest allowed: service/security/account/user)" in vocabulary
    [region] = [line for line in lines if "vmware-solutions.regions" in line]
    assert "the CRN location 'au-syd' is not a region where vmware-solutions generates events" in region
    assert "its table allows: ca-tor, eu-de, jp-tok, us-east, us-south" in region
    assert "(?!" not in result.stdout  # no regex


def test_explain_suggests_the_nearest_allowed_value_of_an_enumeration(tmp_path):
    event = load_event("vmware-kmip-create.json")
    event["outcome"] = "OK"
    text = explain(tmp_path, event).stdout
    assert "/outcome [envelope.required]" in text and "did you mean: success" in text


def test_an_unknown_action_names_a_few_nearest_actions_not_the_whole_table(tmp_path):
    event = load_event("vmware-kmip-create.json")
    event["action"] = "vmware-solutions.kmip-key.craete"
    text = explain(tmp_path, event).stdout
    [line] = [line for line in text.splitlines() if "[vmware-solutions.action]" in line]
    assert "is not one of the" in line and "actions the vmware-solutions tables declare; nearest: " in line
    nearest = line.split("nearest: ", 1)[1].split(", ")
    assert nearest[0] == "vmware-solutions.kmip-key.create" and 1 <= len(nearest) <= 3
    assert "vmware-solutions.vcs.create" not in line
