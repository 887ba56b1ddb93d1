"""The shipped schemas: one per service whose Activity Tracker page is under schemas/pages."""

import json
import subprocess
import sys

import pytest

from atnorm.schemagen.tables import read_file
from support import REPO, load_event

PAGES = REPO / "schemas" / "pages"
GENERATED = REPO / "schemas" / "generated"

# page → services its tables declare (issue 10: every page of the corpus ships).
SERVICES_BY_PAGE = {
    "CDN__at-events.md": ["cdn-powered-by-akamai"],
    "EventStreams__activity_tracker_events.md": ["event-streams"],
    "account__at-events-am.md": ["billing", "carbon-calculator", "global-search-tagging", "iam-groups",
                                 "iam-identity", "user-management"],
    "appid__at-events.md": ["appid", "ppid"],  # ppid: two rows with a typo on the page, reported
    "cis__at_events.md": ["internet-svcs"],
    "cloud-logs__core_at_events.md": ["logs"],
    "cloud-object-storage__at.md": ["cloud-object-storage"],
    "codeengine__at-events.md": ["codeengine"],
    "dns-svcs__at_events.md": ["dns-svcs"],
    "key-protect__at-events.md": ["kms"],
    "logs-router__activity-tracker.md": ["logs-router"],
    "openshift__at-events-ref.md": ["containers-kubernetes"],
    "power-iaas__at-events.md": ["power-iaas"],
    "satellite__at-events.md": ["satellite"],
    "secrets-manager__framework_at-events.md": ["secrets-manager"],
    "speech-to-text__at-events.md": ["speech-to-text"],
    "transit-gateway__at_events.md": ["transit"],
    "vmware-solutions-at-events.md": ["vmware-solutions"],
    "vsi-at-events.md": ["audit-log"],
}
# Pages whose tables only show `<service_name>.x.y` patterns: reported, no actions invented.
PLACEHOLDER_ONLY = ["atracker__services_at_events_rc.md", "cloud-databases__at-events.md"]


def test_every_page_yields_its_services_and_placeholder_pages_none():
    pages = sorted(p.name for p in PAGES.glob("*.md"))
    assert pages == sorted([*SERVICES_BY_PAGE, *PLACEHOLDER_ONLY])
    for name, services in SERVICES_BY_PAGE.items():
        assert read_file(PAGES / name).services == services, name
    for name in PLACEHOLDER_ONLY:
        page = read_file(PAGES / name)
        assert page.actions == [] and len(page.templates) >= 10, name
    shipped = sorted(p.stem for p in (GENERATED / "services").glob("*.json"))
    assert shipped == sorted(s for services in SERVICES_BY_PAGE.values() for s in services)


KP_CURRENT_ONLY_IN_RENAME_TABLE = {
    "kms.governance-config.read": "kms.governance.configread",
    "kms.instance-allowed-ip-port.read": "kms.instance.readallowedipport",
    "kms.instance-ip-allowlist-port.read": "kms.instance.readipwhitelistport",
    "kms.secrets-alias.request": "kms.secrets.defaultalias",
}


def minimal(action):
    return {"action": action, "initiator": {"id": "iam-ServiceId-1"}, "target": {"id": "crn:v1:x"},
            "eventTime": "2024-01-01T00:00:00Z", "outcome": "success"}


@pytest.mark.parametrize("current, legacy", sorted(KP_CURRENT_ONLY_IN_RENAME_TABLE.items()))
def test_key_protect_current_names_are_accepted_and_legacy_names_suggest_them(shared_filter, current, legacy):
    assert shared_filter.process(minimal(current)).outcome == "accepted"
    verdict = shared_filter.process(minimal(legacy))
    assert verdict.outcome == "rejected"
    assert (verdict.reasons[0].rule, verdict.reasons[0].suggestion) == ("kms.action", current)


def test_actions_of_the_key_protect_severity_table_are_declared(shared_filter):
    for action in ("kms.registrations.delete", "kms.registrations.merge", "kms.secrets.ack-rotate"):
        assert shared_filter.process(minimal(action)).outcome == "accepted", action


# Real sample events (copies under tests/fixtures/events) → (service, outcome, rule of the
# first reason). Each is now checked against its own service's tables.
SAMPLE_VERDICTS = {
    "cos-drifted-types.json": ("cloud-object-storage", "accepted", None),
    "power-observer-cloud-logs.json": ("power-iaas", "accepted", None),
    # 2019 sample: today's account page has no user-management.user.create.
    "user-mgmt-pending-padded-address.json": ("user-management", "rejected", "user-management.action"),
    # 2022 crypto-shredding sample: kms.secrets.endtoenddelete is on no current table.
    "kms-cadf-zulu-no-source.json": ("kms", "rejected", "kms.action"),
}


@pytest.mark.parametrize("name", sorted(SAMPLE_VERDICTS))
def test_sample_events_are_checked_against_their_own_tables(shared_filter, name):
    service, outcome, rule = SAMPLE_VERDICTS[name]
    verdict = shared_filter.process(load_event(name))
    assert "unknown_service" not in verdict.warnings
    assert (verdict.service, verdict.outcome) == (service, outcome), verdict.reasons
    assert (verdict.reasons[0].rule if verdict.reasons else None) == rule


def test_generated_schemas_stay_small():
    sizes = {p.name: p.stat().st_size for p in GENERATED.rglob("*.json")}
    assert max(sizes.values()) < 64 * 1024, sizes
    assert sum(sizes.values()) < 512 * 1024


def test_the_documented_build_command_reads_the_pages_directory():
    result = subprocess.run([sys.executable, "-m", "atnorm", "schemas", "build", str(PAGES),
                             "--out", str(GENERATED), "--check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "key-protect__at-events.md: 63 actions (services kms)" in result.stderr
    assert "atracker__services_at_events_rc.md: 0 actions: only 12 placeholder templates" in result.stderr
    document = GENERATED / "services" / "kms.json"
    assert json.loads(document.read_text())["x-atnorm"]["renames"]["kms.governance.configread"] == (
        "kms.governance-config.read")
