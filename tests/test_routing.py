"""Routing: each entry of a chunk leaves on exactly one route, under that route's tag."""

import pytest

from atnorm.core.pipeline import EventFilter
from atnorm.core.stats import FilterStats
from atnorm.forward.codec import Entry, EntryProblem, EventTime, unpack_entries
from atnorm.model.verdict import ACCEPTED, PASSED, REJECTED
from atnorm.relay.routing import Router, check_tag_template, tag_function
from support import load_event

ARRIVED = EventTime(1_600_000_000, 5)


def chunk():
    valid = load_event("vsi-provision.json")
    invalid = load_event("vsi-provision.json")
    del invalid["outcome"]
    not_an_event = load_event("platform-log-not-an-event.json")
    broken = Entry(ARRIVED, [1, 2], problem=EntryProblem("entry.shape", "", "not [time, record]"))
    return [Entry(ARRIVED, valid, {"source": "node-1"}), Entry(ARRIVED, invalid), Entry(ARRIVED, not_an_event),
            broken]


@pytest.mark.parametrize("template, tag, expected", [
    ("{tag}", "audit.at", "audit.at"),
    ("{tag}.rejected", "audit.at", "audit.at.rejected"),
    ("dead.{tag}", "audit.at", "dead.audit.at"),
    ("fixed", "audit.at", "fixed"),
    ("{tag}.{tag}", "a", "a.a"),
])
def test_a_tag_template_is_applied_to_the_incoming_tag(template, tag, expected):
    assert tag_function(check_tag_template(template))(tag) == expected


@pytest.mark.parametrize("template", ["", "  ", "{tags}.x", "{tag"])
def test_a_template_with_other_braces_or_nothing_is_refused(template):
    with pytest.raises(ValueError):
        check_tag_template(template)


def test_every_entry_leaves_once_on_its_route_with_its_tag():
    stats = FilterStats()
    router = Router(EventFilter.from_schemas(stats=stats).process, rejected_tag="dead.{tag}")
    entries = chunk()

    batches = router.route("audit.at", entries)

    assert [(b.route, b.tag, b.count) for b in batches] == [
        (ACCEPTED, "audit.at", 1), (REJECTED, "dead.audit.at", 2), (PASSED, "audit.at", 1)]
    assert sum(b.count for b in batches) == len(entries)
    accepted, rejected, passed = batches
    assert accepted.entries[0].metadata == {"source": "node-1"}
    assert {e.record["reasons"][0]["rule"] for e in rejected.entries} == {"envelope.required", "entry.shape"}
    assert passed.entries[0] is entries[2]  # handed on as it came
    assert stats.snapshot()["received"] == len(entries)  # the unusable entry is counted too
    unpacked, problems = unpack_entries(accepted.packed())
    assert problems == 0 and unpacked[0].record == accepted.entries[0].record


def test_an_accepted_record_is_stamped_with_its_event_time_unless_told_otherwise():
    process = EventFilter.from_schemas().process
    [entry] = chunk()[:1]
    by_event = Router(process).route("t", [entry])[0].entries[0]
    by_arrival = Router(process, time_source="original").route("t", [entry])[0].entries[0]
    assert by_arrival.time is ARRIVED
    assert isinstance(by_event.time, EventTime) and by_event.time.seconds != ARRIVED.seconds


def test_a_record_whose_deciding_raises_is_rejected_alone():
    def decide(record):
        if record.get("boom"):
            raise RuntimeError("no")
        return EventFilter.from_schemas().process(record)

    batches = Router(decide).route("t", [Entry(ARRIVED, {"boom": 1}), chunk()[0]])

    assert [(b.route, b.count) for b in batches] == [(ACCEPTED, 1), (REJECTED, 1)]
    assert batches[1].entries[0].record["reasons"][0]["rule"] == "internal.error"


def test_without_a_filter_every_record_passes_unchanged_and_unusable_entries_are_rejected():
    entries = chunk()
    batches = Router(None).route("t", entries)
    assert [(b.route, b.count) for b in batches] == [(REJECTED, 1), (PASSED, 3)]
    assert batches[1].entries == entries[:3]
