"""The Python API: events checked in the application, then sent with fluent-logger to a real receiver."""

from __future__ import annotations

import logging

import pytest

from atnorm.core.pipeline import EventFilter
from atnorm.core.stats import FilterStats
from atnorm.relay.handler import AuditHandler, AuditSender
from forward_receiver import EventTime, ReceiverThread
from support import load_event

# eventTime 2021-06-01T12:00:00Z; an action the Key Protect tables declare
VALID = dict(load_event("kms-cadf-zulu-no-source.json"), action="kms.secrets.delete")
INVALID = {k: v for k, v in VALID.items() if k != "action"}
OTHER = load_event("platform-log-not-an-event.json")


@pytest.fixture
def receiver():
    with ReceiverThread() as thread:
        yield thread


def new_filter() -> EventFilter:
    return EventFilter.from_schemas(stats=FilterStats())


def test_each_event_goes_out_on_its_route(receiver):
    with AuditSender("app", "127.0.0.1", receiver.port, event_filter=new_filter()) as audit:
        assert audit.emit("kms", VALID)
        assert audit.last_verdict is not None and audit.last_verdict.outcome == "accepted"
        assert audit.emit("kms", INVALID)
        assert audit.last_verdict.outcome == "rejected"
        assert audit.emit_with_time(None, 1700000000, OTHER)
        receiver.wait_for(lambda: len(receiver.receiver.events) == 3)
        counts = audit.stats.snapshot()

    (tag, when, accepted), (dead_tag, _, dead_letter), passed = receiver.receiver.events
    assert tag == "app.kms"
    assert when == EventTime(1622548800, 0)  # the normalized eventTime, not the time of sending
    assert accepted["eventTime"] == "2021-06-01T12:00:00.000+0000"
    assert dead_tag == "app.kms.rejected"
    assert dead_letter["original"] == INVALID
    assert any(reason["path"] == "/action" for reason in dead_letter["reasons"])
    assert passed == ("app", 1700000000, OTHER)
    assert (counts["accepted"], counts["rejected"], counts["passed"]) == (1, 1, 1)


def test_check_gives_the_verdict_without_sending(receiver):
    with AuditSender("app", "127.0.0.1", receiver.port, event_filter=new_filter()) as audit:
        assert audit.check(INVALID).outcome == "rejected"
    assert receiver.receiver.connections == 0


def test_rejected_tag_is_configurable(receiver):
    with AuditSender("app", "127.0.0.1", receiver.port, event_filter=new_filter(),
                     rejected_tag="deadletter.{tag}") as audit:
        assert audit.emit("kms", INVALID)
        receiver.wait_for(lambda: len(receiver.receiver.events) == 1)
    assert receiver.receiver.events[0][0] == "deadletter.app.kms"


def test_events_emitted_while_the_receiver_is_away_follow_once_it_is_back(receiver):
    receiver.call(lambda r: r.go_down())
    with AuditSender("app", "127.0.0.1", receiver.port, event_filter=new_filter()) as audit:
        assert not audit.emit("kms", VALID)  # buffered by fluent-logger
        assert audit.last_error is not None
        receiver.call(lambda r: r.come_up())
        assert audit.emit("kms", OTHER)
        receiver.wait_for(lambda: len(receiver.receiver.events) == 2)
    assert [record.get("action") for _, _, record in receiver.receiver.events] == [VALID["action"], None]


def test_logging_handler_filters_event_dicts_and_passes_other_messages(receiver):
    logger = logging.getLogger("test_handler.audit")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = AuditHandler("app.log", "127.0.0.1", receiver.port, event_filter=new_filter())
    logger.addHandler(handler)
    try:
        logger.info(VALID)
        logger.warning("disk %s is full", "/var")
        receiver.wait_for(lambda: len(receiver.receiver.events) == 2)
    finally:
        logger.removeHandler(handler)
        handler.close()
    (tag, when, accepted), (other_tag, other_when, message) = receiver.receiver.events
    assert (tag, when) == ("app.log", EventTime(1622548800, 0))
    assert accepted["eventTime"] == "2021-06-01T12:00:00.000+0000"
    assert other_tag == "app.log"
    assert isinstance(other_when, EventTime)
    assert message == {"message": "disk /var is full", "level": "WARNING", "logger": "test_handler.audit"}
