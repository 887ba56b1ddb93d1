"""Schemas generated from the seed pages: exact action sets, rules, determinism, staleness."""

import json
import random
import socket
import subprocess
import sys

from jsonschema import Draft202012Validator

from atnorm.schemagen.documents import build_documents
from support import REPO

PAGES = sorted(str(p) for p in (REPO / "schemas" / "pages").glob("*.md"))
OVERLAYS = [REPO / "schemas" / "overlays"]
GENERATED = REPO / "schemas" / "generated"


def documents():
    return {rel: json.loads(text) for rel, text in build_documents(PAGES, OVERLAYS).items()}


def test_checked_in_schemas_are_not_stale():
    for rel, text in build_documents(PAGES, OVERLAYS).items():
        path = GENERATED / rel
        assert path.is_file(), f"{rel} is not checked in; run atnorm schemas build"
        assert path.read_text(encoding="utf-8") == text, (
            f"{path} is stale: run `atnorm schemas build schemas/pages --out schemas/generated`")
    checked_in = {str(p.relative_to(GENERATED)) for p in GENERATED.rglob("*.json")}
    assert checked_in == set(build_documents(PAGES, OVERLAYS))


def test_generation_is_deterministic():
    assert build_documents(PAGES, OVERLAYS) == build_documents(list(reversed(PAGES)), OVERLAYS)


def test_every_document_is_a_valid_draft_2020_12_schema():
    for document in documents().values():
        Draft202012Validator.check_schema(document)
        assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_vsi_seed_yields_exactly_its_20_actions():
    vsi = documents()["services/audit-log.json"]
    actions = vsi["$defs"]["action"]["properties"]["action"]["enum"]
    assert len(actions) == 20
    assert all(a.startswith("audit-log.vsi") for a in actions)
    assert "audit-log.vsi-port-speed.update" in actions and "audit-log.vsi.pause" in actions


def test_vmware_seed_yields_20_management_and_6_kmip_actions():
    vmware = documents()["services/vmware-solutions.json"]
    actions = vmware["$defs"]["action"]["properties"]["action"]["enum"]
    kmip = [a for a in actions if ".kmip-" in a]
    assert len(actions) == 26 and len(kmip) == 6
    headings = {vmware["x-atnorm"]["actions"][a]["heading"] for a in kmip}
    assert headings == {"Events for KMIP for VMware"}


def test_vmware_region_table_becomes_a_warning_level_rule():
    vmware = documents()["services/vmware-solutions.json"]
    rules = {r["name"]: r["level"] for r in vmware["x-atnorm"]["rules"]}
    assert rules["regions"] == "warn"
    regions = vmware["x-atnorm"]["regions"]
    assert sorted(r for r, ok in regions.items() if ok) == ["ca-tor", "eu-de", "jp-tok", "us-east", "us-south"]
    assert sorted(r for r, ok in regions.items() if not ok) == ["au-syd", "br-sao", "eu-es", "eu-gb", "in-che", "jp-osa"]


def test_overlay_rule_is_merged_and_enforced_by_the_document_alone():
    vmware = documents()["services/vmware-solutions.json"]
    assert {"$ref": "#/$defs/kmip-initiator"} in vmware["allOf"]
    validator = Draft202012Validator(vmware)
    kmip = {"action": "vmware-solutions.kmip-key.read",
            "initiator": {"id": "CertificateID-" + "AB" * 20, "host": {"address": "10.0.0.1"}}}
    assert not validator.is_valid(kmip)
    kmip["initiator"]["host"]["address"] = ""
    assert validator.is_valid(kmip)


def test_envelope_has_required_and_expected_levels():
    envelope = documents()["envelope.json"]
    levels = {r["name"]: r["level"] for r in envelope["x-atnorm"]["rules"]}
    assert levels == {"required": "enforce", "types": "enforce", "expected": "warn", "vocabulary": "warn"}
    assert envelope["$defs"]["required"]["required"] == ["action", "initiator", "target", "eventTime", "outcome"]


def test_build_command_writes_and_checks(tmp_path):
    page = tmp_path / "svc.md"
    page.write_text("# Events\n\n| Action | Description |\n|---|---|\n"
                    "| `demo-svc.widget.create` | A widget is created. |\n"
                    "| `demo-svc.widget.delete` | A widget is deleted. |\n", encoding="utf-8")
    out = tmp_path / "out"
    run = [sys.executable, "-m", "atnorm", "schemas", "build", str(page), "--out", str(out)]
    assert subprocess.run(run, capture_output=True).returncode == 0
    service = json.loads((out / "services" / "demo-svc.json").read_text())
    assert service["x-atnorm"]["actions"].keys() == {"demo-svc.widget.create", "demo-svc.widget.delete"}
    assert subprocess.run(run + ["--check"], capture_output=True).returncode == 0
    (out / "services" / "demo-svc.json").write_text("{}")
    check = subprocess.run(run + ["--check"], capture_output=True, text=True)
    assert check.returncode == 1 and "stale" in check.stderr


def test_build_command_reports_a_missing_page_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "atnorm", "schemas", "build", str(tmp_path / "nope.md"),
                             "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "no such page" in result.stderr and "Traceback" not in result.stderr


def test_added_service_directory_is_used_by_the_filter(tmp_path):
    from atnorm.core.pipeline import EventFilter

    page = tmp_path / "svc.md"
    page.write_text("| Action | Description |\n|---|---|\n| `demo-svc.widget.create` | created |\n", encoding="utf-8")
    out = tmp_path / "out"
    for rel, text in build_documents([str(page)], []).items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text(text)
    event_filter = EventFilter.from_schemas([out])
    event = {"action": "demo-svc.widget.craete", "initiator": {"id": "x"}, "target": {"id": "y"},
             "eventTime": "2024-01-01T00:00:00Z", "outcome": "success"}
    verdict = event_filter.process(event)
    assert verdict.outcome == "rejected" and verdict.reasons[0].suggestion == "demo-svc.widget.create"
    assert "vmware-solutions" in event_filter.rules.services  # bundled services stay


# --- `atnorm schemas build`: every input mistake is one line, never a traceback ----------

def build(*argv):
    return subprocess.run([sys.executable, "-m", "atnorm", "schemas", "build", *map(str, argv)],
                          capture_output=True, text=True, timeout=120)


def one_line_error(result, *phrases):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("atnorm schemas: error: ")
    for phrase in phrases:
        assert phrase in result.stderr


DEMO = ("# Events\n\n| Action | Description |\n|---|---|\n"
        "| `demo-svc.widget.create` | A widget is created. |\n"
        "| `demo-svc.widget.delete` | A widget is deleted. |\n")


def test_build_reports_actions_per_page(tmp_path):
    page = tmp_path / "svc.md"
    page.write_text(DEMO, encoding="utf-8")
    result = build(page, "--out", tmp_path / "out")
    assert result.returncode == 0
    assert "svc.md: 2 actions (services demo-svc)" in result.stderr
    assert "wrote 2 schemas (1 service, 2 actions from 1 page)" in result.stderr


def test_build_rejects_a_page_without_action_table(tmp_path):
    page = tmp_path / "prose.md"
    page.write_text("# About\n\nNo table here.\n\n| Field | Description |\n|---|---|\n| `a` | b |\n")
    result = build(page, "--out", tmp_path / "out")
    one_line_error(result, "prose.md: error: no action table", "without an action table (prose.md)")
    assert not (tmp_path / "out").exists(), "nothing is written when a page is wrong"


def test_build_rejects_random_bytes(tmp_path):
    page = tmp_path / "noise.md"
    page.write_bytes(bytes(random.Random(7).randrange(256) for _ in range(4096)))
    one_line_error(build(page, "--out", tmp_path / "out"), "noise.md: error: not a markdown docs page")


def test_build_of_a_directory_builds_every_page_in_it(tmp_path):
    pages = tmp_path / "pages"
    pages.mkdir()
    (pages / "a.md").write_text(DEMO, encoding="utf-8")
    (pages / "b.md").write_text("| Action | Notes |\n|---|---|\n| `other-svc.thing.read` | read |\n")
    (pages / "notes.txt").write_text("not a page")
    result = build(pages, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "services").iterdir()) == ["demo-svc.json", "other-svc.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(build(empty, "--out", tmp_path / "out"), "no *.md pages in directory")


def test_build_of_an_unreadable_page_is_one_line(tmp_path):
    # A socket exists but cannot be read as a file, whoever runs the test.
    path = tmp_path / "sock.md"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        one_line_error(build(path, "--out", tmp_path / "out"), f"cannot read page {path}")


def test_build_to_an_unwritable_out_is_one_line(tmp_path):
    page = tmp_path / "svc.md"
    page.write_text(DEMO, encoding="utf-8")
    a_file = tmp_path / "file"
    a_file.write_text("")
    one_line_error(build(page, "--out", a_file), "is not a directory")
    blocked = tmp_path / "blocked"
    (blocked / "envelope.json").mkdir(parents=True)  # a directory where a schema goes
    one_line_error(build(page, "--out", blocked), f"cannot write schemas to {blocked}", "envelope.json")


def test_placeholder_only_page_is_reported_not_invented(tmp_path):
    page = tmp_path / "rc.md"
    page.write_text("| Action | Description |\n|---|---|\n| `service_name.instance.create` | made |\n")
    result = build(page, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert "rc.md: 0 actions: only 1 placeholder template (e.g. service_name.instance.create)" in result.stderr
    assert not (tmp_path / "out" / "services").exists()
