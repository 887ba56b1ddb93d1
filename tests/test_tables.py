"""The action-table reader: one test per page quirk, exact tests for the two seed pages."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from atnorm.schemagen.cells import names_in_cell
from atnorm.schemagen.pagedata import DATA, MANAGEMENT, UNSPECIFIED, service_of
from atnorm.schemagen.tables import read_file, read_page

HERE = Path(__file__).parent
FIXTURES = HERE / "fixtures" / "pages"
SEED_PAGES = HERE.parent / "schemas" / "pages"
VALID_ACTION = re.compile(r"[A-Za-z][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+){2,4}\Z")


def read(name):
    return read_file(FIXTURES / name)


def names(tables):
    return [a.name for a in tables.actions]


def problems(tables):
    return [(p.line, p.why) for p in tables.problems]


# --- the two seed pages ----------------------------------------------------------------


VSI_ACTIONS = [
    "audit-log.vsi.provision",
    "audit-log.vsi-port.disable",
    "audit-log.vsi-port.enable",
    "audit-log.vsi-port-speed.update",
    "audit-log.vsi-image-template.create",
    "audit-log.vsi.power-off",
    "audit-log.vsi.soft-power-off",
    "audit-log.vsi.force-power-off",
    "audit-log.vsi.reboot",
    "audit-log.vsi.soft-reboot",
    "audit-log.vsi.hard-reboot",
    "audit-log.vsi.power-on",
    "audit-log.vsi.rename",
    "audit-log.vsi.rescue",
    "audit-log.vsi-security-group.add",
    "audit-log.vsi-security-group.remove",
    "audit-log.vsi.reload",
    "audit-log.vsi.boot",
    "audit-log.vsi.reclaim",
    "audit-log.vsi.pause",
]

VMWARE_MANAGEMENT = [
    "vmware-solutions.account-apikey.update",
    "vmware-solutions.account-notification.update",
    "vmware-solutions.instance-secure-data.wipe",
    "vmware-solutions.instance-bss-account.migrate",
    "vmware-solutions.vcs.create",
    "vmware-solutions.vcs.delete",
    "vmware-solutions.vcs-host.add",
    "vmware-solutions.vcs-host.remove",
    "vmware-solutions.vcs.update",
    "vmware-solutions.vcs-cluster.create",
    "vmware-solutions.vcs-cluster.delete",
    "vmware-solutions.vcs-nsx-license.update",
    "vmware-solutions.vcs-nfs-storage.add",
    "vmware-solutions.vcs-nfs-storage.remove",
    "vmware-solutions.vcs-plan.update",
    "vmware-solutions.vss.create",
    "vmware-solutions.vss.update",
    "vmware-solutions.vss-template.remove",
    "vmware-solutions.service.create",
    "vmware-solutions.service.delete",
]

VMWARE_KMIP = [
    "vmware-solutions.kmip-key.create",
    "vmware-solutions.kmip-key.read",
    "vmware-solutions.kmip-key-attributes.retrieve",
    "vmware-solutions.kmip-key.activate",
    "vmware-solutions.kmip-key.revoke",
    "vmware-solutions.kmip-key.destroy",
]


def test_vsi_seed_yields_exactly_its_twenty_actions():
    page = read_file(SEED_PAGES / "vsi-at-events.md")
    assert names(page) == VSI_ACTIONS
    assert page.services == ["audit-log"]
    assert page.title == "Activity Tracker events"
    assert {a.heading for a in page.actions} == {"Virtual server instance events"}
    assert page.actions[0].line == 44 and page.actions[-1].line == 63
    assert page.actions[0].description == (
        "An event is generated when an initiator provisions an instance."
    )
    assert page.problems == [] and page.skipped_tables == []
    assert page.regions == {} and page.renames == {} and page.severities == {}


def test_vmware_seed_yields_twenty_management_and_six_kmip_actions_and_its_regions():
    page = read_file(SEED_PAGES / "vmware-solutions-at-events.md")
    assert names(page) == VMWARE_MANAGEMENT + VMWARE_KMIP
    kinds = {a.name: a.event_kind for a in page.actions}
    assert all(kinds[n] == MANAGEMENT for n in VMWARE_MANAGEMENT)
    assert all(kinds[n] == UNSPECIFIED for n in VMWARE_KMIP)
    assert page.services == ["vmware-solutions"]
    assert page.regions == {
        "us-south": True,
        "us-east": True,
        "ca-tor": True,
        "jp-tok": True,
        "eu-de": True,
        "br-sao": False,
        "au-syd": False,
        "jp-osa": False,
        "in-che": False,
        "eu-gb": False,
        "eu-es": False,
    }
    assert page.actions[-1].heading == "Events for KMIP for VMware"
    assert page.actions[0].heading == "Events for VCF for Classic instance management"
    assert page.problems == [] and page.skipped_tables == []


# --- one test per page quirk -----------------------------------------------------------


def test_front_matter_attribute_lines_and_keywords_in_names_text_and_captions():
    page = read("front_matter_and_keywords.md")
    # {{site.data.keyword.widgets_short}} in the action names: the front matter says
    # subcollection widget-svc and the page's other table uses that prefix.
    assert names(page) == [
        "widget-svc.instance.create",
        "widget-svc.instance.delete",
        "widget-svc.widget.paint",
        "widget-svc.widget.fold",
    ]
    descriptions = [a.description for a in page.actions]
    assert descriptions[0] == "A widget instance on IBM Cloud is made."
    assert descriptions[1] == "A widget instance is removed."  # `{: .note}` dropped
    assert descriptions[2] == "A widget is painted green."  # `[green]{: tag-green}`
    assert page.title == "Audit events for widgets_short"  # unknown keyword: its own name
    assert page.problems == []


def test_keyword_in_a_name_that_the_page_cannot_explain_is_a_problem_not_a_guess():
    page = read("keyword_unresolved.md")
    assert names(page) == ["gizmo.part.attach", "thingamajig.part.detach"]
    assert [t.name for t in page.templates] == ["<gadget_name>.gadget.spin"]
    ((line, why),) = problems(page)
    assert line == 5 and "{{site.data.keyword.gadget_name}}" in why


def test_keyword_resolution_prefers_the_page_over_the_built_in_pairing():
    page = read_page(
        "# T\n\n| Action | Description |\n|---|---|\n"
        "| `{{site.data.keyword.dns_short}}.zone.create` | x |\n"
        "| `other-dns.zone.delete` | y |\n"
    )
    # The built-in pairing (dns-svcs) is not used on this page; the only prefix in use is.
    assert names(page) == ["other-dns.zone.create", "other-dns.zone.delete"]
    alone = read_page("| Action |\n|---|\n| `{{site.data.keyword.dns_short}}.zone.create` |\n")
    assert names(alone) == ["dns-svcs.zone.create"]  # no page evidence: the built-in pairing


def test_separator_styles_and_tables_without_outer_pipes():
    page = read("separators.md")
    assert names(page) == [
        "lamp.bulb.switch-on",
        "lamp.bulb.switch-off",
        "lamp.shade.tilt",
        "lamp.cord.plug",
    ]
    assert [a.heading for a in page.actions] == ["Tight", "Aligned", "Spaced", "No outer pipes"]
    assert page.problems == []


def test_action_in_the_second_column():
    page = read("action_in_second_column.md")
    assert names(page) == ["harbor.sail.hoist", "harbor.anchor.drop", "harbor.rope-knot.tie"]
    assert page.actions[0].description == "The sail goes up."
    assert [a.line for a in page.actions] == [5, 6, 7]


def test_event_action_name_and_actions_headers():
    page = read("header_variants.md")
    assert names(page) == ["kitchen.oven.preheat", "kitchen.kettle.boil", "kitchen.toaster.pop"]
    assert page.actions[2].description == "Bread pops."  # two columns: the other one


def test_several_actions_in_one_cell():
    page = read("several_per_cell.md")
    assert names(page) == [
        "garden.seed.plant",
        "garden.seed.water",
        "garden.hedge.trim",
        "garden.hedge.shape",
        "garden.pond.fill",
        "garden.pond.drain",
        "garden.shed.lock",
        "garden.shed.unlock",
        "garden.fence.paint",
        "garden.fence.mend",
        "garden.gate.oil",
    ]
    assert {a.line for a in page.actions[:2]} == {5}
    assert page.problems == []


def test_brace_expansion_and_its_failures():
    page = read("brace_expansion.md")
    assert names(page) == [
        "library.book.lend",
        "library.book.return",
        "library.shelf.add",
        "library.shelf.remove",
        "library.cart.add",
        "library.cart.remove",
        "library.card.issue",
        "library.card.renew",
    ]
    assert problems(page) == [
        (8, "'library.fine.{pay' is not a valid action name (unbalanced or nested braces)"),
        (9, "'library..audit' is not a valid action name (empty segment, from 'library.{}.audit')"),
    ]


def test_brace_expansion_is_bounded():
    nine = ",".join(f"v{i}" for i in range(9))
    cell = f"a.{{{nine}}}.{{{nine}}}"  # 9 x 9 = 81 names
    reading = names_in_cell(cell)
    assert reading.names == [] and "81 names" in reading.invalid[0][1]


def test_placeholder_services_become_templates_and_problems_never_actions():
    page = read("placeholder_service.md")
    assert names(page) == ["label-svc.label.create"]
    assert [t.name for t in page.templates] == [
        "<service-name>.label.attach",
        "service_name.label.detach",
        "<service_id>.label.list",
    ]
    assert [line for line, _ in problems(page)] == [6, 7, 8]
    assert all("placeholder service" in why for _, why in problems(page))


def test_rename_tables_give_old_to_current_names():
    page = read("renames.md")
    assert page.renames == {
        "printer.papertray.fill": "printer.paper-tray.fill",
        "printer.inkcart.swap": "printer.ink-cartridge.swap",
        "printer.inkcart.check": "printer.ink-cartridge.check",
        "printer.jam.default": "printer.jam.request",
        "printer.print.start": "printer.job.submit",
        "printer.print.stop": "printer.job.cancel",
    }
    # Rows of action tables come first; the current names of a rename-only table are
    # declared actions too (issue 10: Key Protect's kms.governance-config.read).
    assert names(page) == [
        "printer.job.submit", "printer.job.cancel", "printer.job.pause",
        "printer.paper-tray.fill", "printer.ink-cartridge.swap", "printer.ink-cartridge.check",
        "printer.jam.request",
    ]
    renamed = {a.name: a for a in page.actions}["printer.ink-cartridge.check"]
    assert (renamed.description, renamed.line) == ("formerly printer.inkcart.check", 8)
    assert "printer.papertray.fill" not in names(page)  # a legacy name is no action
    assert page.problems == []


def test_severity_per_action_tables():
    page = read("severities.md")
    assert page.severities == {
        "vault.alarm.trigger": "critical",
        "vault.door.open": "warning",
        "vault.door.force": "warning",
        "vault.lock.jam": "warning",
        "vault.door.close": "normal",
    }
    # Names only the severity table lists are declared actions too; the action table's
    # row stays the one kept for a name both list.
    assert names(page) == ["vault.door.open", "vault.door.close", "vault.alarm.trigger",
                           "vault.door.force", "vault.lock.jam", "vault.bell.ring"]
    assert {a.name: a.description for a in page.actions}["vault.door.open"] == "The door opens."
    assert problems(page) == [(16, "severity 'urgent' is not one of normal, warning, critical")]
    assert page.skipped_tables == [(18, "no action column (headers: Severity, Status Code)")]


def test_definition_lists_with_code_terms_declare_actions():
    page = read("definition_lists.md")
    assert names(page) == [
        "net.gateway.create",
        "net.router.router.create", "net.router.router.update",
        "net.router.router.read", "net.router.router.list",
        "net.gateway.gateway.list", "net.gateway.gateway.read",
    ]
    by_name = {a.name: a for a in page.actions}
    assert by_name["net.router.router.list"].description == "Includes a `dns` property in response data."
    assert by_name["net.router.router.list"].line == 15
    assert by_name["net.router.router.list"].heading == "Gateway events"
    # A prose term is no action; a code term whose brace never closes is reported.
    assert page.skipped_tables == [(25, "column 'Action' holds no action names")]
    assert page.problems == []


def test_prose_definition_lists_are_not_tables():
    page = read_page("# T\n\nGetting the ID of a request\n:    Look at `correlationId`.\n", "p")
    assert page.actions == [] and page.skipped_tables == [] and page.problems == []


def test_action_headed_tables_of_request_fields_are_skipped_with_a_reason():
    page = read("field_name_tables.md")
    assert names(page) == ["settings.profile.update"]
    assert page.skipped_tables == [
        (9, "the action column holds event field names (requestData...), not actions"),
        (15, "no action column (headers: Field, Type, Description)"),
        (19, "column 'Actions' holds no action names"),
    ]
    assert page.problems == []


def test_html_tables():
    page = read("html_table.md")
    assert names(page) == ["bakery.oven.light", "bakery.bread.rise", "bakery.bread.bake"]
    assert [a.line for a in page.actions] == [10, 14, 14]
    assert page.actions[1].description == "Dough becomes bread & cools."


def test_tables_inside_lists_and_blockquotes():
    page = read("tables_in_lists.md")
    assert names(page) == ["station.platform.open", "station.signal.change", "station.ticket.punch"]
    assert page.problems == []


def test_broken_rows_are_reported_with_line_and_why():
    page = read("broken_rows.md")
    assert names(page) == [
        "clock.hand.move",
        "clock.alarm.set",
        "clock.chime.ring",
        "clock.face.light",
        "clock.spring.wind",
    ]
    assert problems(page) == [
        (
            6,
            (
                "row has 1 of 2 cells; text that is not an action name: "
                "'An alarm is set, but the pipe went missing.'"
            ),
        ),
        (7, "row has 3 cells, header has 2: extra cells ignored"),
        (8, "row does not end with '|'"),
        (9, "empty action cell"),
        (
            10,
            "stray ':' after 'clock.spring.wind': read as clock.spring.wind",
        ),
        (11, "'clock.tick' is not a valid action name (2 segments, an action has 3 to 5)"),
        (13, "2 lines look like a table but have no |---| separator row: not read"),
    ]
    assert all(p.page == "broken_rows.md" for p in page.problems)


def test_region_tables_yes_no_tags_and_bad_values():
    page = read("regions.md")
    assert page.regions == {
        "us-south": True,
        "ca-tor": False,
        "br-sao": True,
        "eu-de": True,
        "eu-gb": False,
    }
    assert problems(page) == [
        (5, "region br-sao: says Yes but is tagged red: the text is used"),
        (11, "region eu-es: '[Maybe]{: tag-red}' is neither Yes nor No"),
    ]
    assert page.skipped_tables == [
        (13, "no action column (headers: Deployment region, Log region)")
    ]
    assert names(page) == ["ferry.boat.sail"]


def test_event_kind_comes_from_captions_and_headings_saying_so():
    page = read("event_kinds.md")
    kinds = {a.name: (a.event_kind, a.heading) for a in page.actions}
    assert kinds == {
        "mill.wheel.start": (MANAGEMENT, "Wheel events"),  # from the parent heading
        # "Stone management events" names a topic, the parent heading says the kind.
        "mill.stone.replace": (MANAGEMENT, "Stone management events"),
        "mill.flour.read": (DATA, "Data events"),
        "mill.sack.fill": (DATA, "Other events"),  # from its caption
        "mill.door.lock": (UNSPECIFIED, "Other events"),
    }


def test_code_fences_and_comments_hide_tables_and_an_open_fence_is_reported():
    page = read("code_and_comments.md")
    assert names(page) == ["pantry.jar.open"]
    assert problems(page) == [(19, "code fence is never closed: the rest of the page is code")]


def test_duplicates_keep_the_first_row_and_conflicting_kinds_are_problems():
    page = read("duplicates.md")
    assert names(page) == ["kite.string.pull", "kite.tail.add", "kte.frame.bend", "kite.frame.fix"]
    assert [(a.name, a.line) for a in page.duplicates] == [
        ("kite.string.pull", 9),
        ("kite.tail.add", 15),
    ]
    assert page.actions[1].event_kind == MANAGEMENT
    assert problems(page) == [
        (
            15,
            (
                "kite.tail.add is listed as a data event here and as a management event "
                "at line 8: the first one is kept"
            ),
        ),
        (16, "service 'kte' (1 action) is one letter away from 'kite' (3 actions): a typo?"),
    ]


# --- the smaller pieces ----------------------------------------------------------------


@pytest.mark.parametrize(
    "action, known, service",
    [
        ("vmware-solutions.vcs.create", (), "vmware-solutions"),
        ("audit-log.vsi.provision", (), "audit-log"),
        ("is.snapshot.create", (), "is"),
        ("is.vpc.subnet.create", ("is", "is.vpc"), "is.vpc"),
        ("is.vpc.create", ("is.vpc",), "is"),  # a service must leave objectType.action
        ("lonely", (), "lonely"),
    ],
)
def test_service_of(action, known, service):
    assert service_of(action, known) == service


def test_cell_reading_separates_names_fields_templates_and_words():
    reading = names_in_cell("`a.b.c` or `requestData.x.y`, <service>.q.r (see notes)")
    assert reading.names == ["a.b.c"]
    assert reading.fields == ["requestData.x.y"]
    assert reading.templates == ["<service>.q.r"]
    assert reading.prose == "(see notes)"


def test_bytes_that_are_not_utf8_are_read_and_reported():
    data = b"# T\n\n| Action |\n|---|\n| `a.b.c` |\n\xff\n"
    page = read_page(data, "bad.md")
    assert names(page) == ["a.b.c"]
    assert problems(page) == [(6, "not valid UTF-8: undecodable bytes replaced")]


def test_unclosed_front_matter_and_html_table_are_reported():
    page = read_page("---\ntitle: x\n\n<table><tr><th>Action</th></tr>\n<tr><td>a.b.c</td></tr>\n")
    assert names(page) == ["a.b.c"]
    assert [why for _, why in problems(page)] == [
        "front matter is never closed: read as page text",
        "HTML table is never closed: rows read up to the end of the page",
    ]


# --- never crash -----------------------------------------------------------------------

_PIECES = [
    "|",
    "| ",
    "|-|",
    "|:--|",
    "---",
    "\n",
    "\n\n",
    "# ",
    "## ",
    "```",
    "~~~",
    "<!--",
    "-->",
    "<table>",
    "<tr>",
    "<td>",
    "</table>",
    "<br>",
    "\\n",
    "{",
    "}",
    "{: tag-red}",
    "[Yes]",
    "{{site.data.keyword.x}}",
    "`",
    ",",
    ".",
    "a",
    "b.c",
    "Action",
    "Event",
    "Severity",
    "Reference",
    "Current",
    "Description",
    "(`us-south`)",
    "<service-name>",
    "requestData.",
    " and ",
    "Critical",
    "Legacy action name",
    "\t",
    "\r",
    "\x00",
    "é",
    "a.b.{c,d}",
    ">",
]


def _random_page(rng):
    return "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 120)))


def _mutated_seed(rng, text):
    lines = text.split("\n")
    for _ in range(rng.randint(1, 12)):
        i = rng.randrange(len(lines))
        choice = rng.random()
        if choice < 0.3:
            del lines[i]
        elif choice < 0.6:
            lines.insert(i, lines[rng.randrange(len(lines))])
        else:
            pos = rng.randint(0, len(lines[i]))
            lines[i] = lines[i][:pos] + rng.choice(_PIECES) + lines[i][pos:]
    return "\n".join(lines)


def test_random_text_never_crashes_and_never_yields_an_invalid_action():
    rng = random.Random(20240501)
    seeds = [p.read_text(encoding="utf-8") for p in sorted(SEED_PAGES.glob("*.md"))]
    for round_ in range(400):
        text = _random_page(rng) if round_ % 2 else _mutated_seed(rng, rng.choice(seeds))
        page = read_page(text, "fuzz")
        lines = text.count("\n") + 1
        for action in page.actions:
            assert VALID_ACTION.match(action.name) and "<" not in action.name
            assert 1 <= action.line <= lines
        assert len(names(page)) == len(set(names(page)))
        assert all(1 <= p.line <= lines for p in page.problems)
        assert all(VALID_ACTION.match(k) and VALID_ACTION.match(v) for k, v in page.renames.items())
        assert all(v in ("normal", "warning", "critical") for v in page.severities.values())
