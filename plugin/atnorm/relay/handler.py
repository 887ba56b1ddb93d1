"""Python API: check and normalize audit events in the application, then send them with fluent-logger.

For applications that emit Activity Tracker events themselves and want the same rules
without running a relay:

    from atnorm import AuditSender

    audit = AuditSender("app.audit", host="fluent-bit.local", port=24224)
    audit.emit("iam", event)          # True once fluent-logger has sent it
    audit.last_verdict.outcome        # "accepted", "rejected" or "passed"

Accepted events go out normalized under the tag (stamped with their normalized
eventTime), rejected ones as `{"original", "reasons"}` under the dead-letter tag
(default `<tag>.rejected`), anything else unchanged: the routes of `atnorm serve`.
`AuditHandler` does the same for `logging` records whose message is an event dict.

Sending is fluent-logger's `FluentSender` (Message mode, no acks): when the Fluentd /
Fluent Bit it talks to is away it buffers up to `bufmax` bytes and then calls its
`buffer_overflow_handler`.
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any, Dict, Optional

from fluent import sender as fluent_sender

from ..core.interfaces import Filter
from ..forward.codec import Entry, EventTime
from ..model.verdict import Verdict
from .routing import TAG_PLACEHOLDER, Router

_FLUENT_TIME = struct.Struct(">II")


def _fluent_time(when: Any) -> Any:
    """A time fluent-logger can pack: its EventTime for ours, else unchanged."""
    if isinstance(when, EventTime):
        return fluent_sender.EventTime(when.seconds, when.nanoseconds)
    return when


class AuditSender:
    """Filters each event with `EventFilter`, then emits it with fluent-logger on its route's tag.

    `tag` is the base tag; `emit(label, event)` sends under `tag.label` (as FluentSender
    does). `event_filter` defaults to one built from the bundled schemas. Pass `sender` to
    use a FluentSender of your own (e.g. `fluent.asyncsender.FluentSender`); it must have
    been created with an empty tag, since this class computes the full tag of each route.
    """

    def __init__(self, tag: str, host: str = "localhost", port: int = 24224, *,
                 event_filter: Optional[Filter] = None, rejected_tag: str = TAG_PLACEHOLDER + ".rejected",
                 accepted_tag: str = TAG_PLACEHOLDER, time_source: str = "event",
                 sender: Optional[fluent_sender.FluentSender] = None, **sender_options: Any) -> None:
        if event_filter is None:
            from ..core.pipeline import EventFilter

            event_filter = EventFilter.from_schemas()
        self.tag = tag
        self.filter = event_filter
        self.router = Router(event_filter.process, accepted_tag=accepted_tag, rejected_tag=rejected_tag,
                             time_source=time_source)
        sender_options.setdefault("nanosecond_precision", True)
        self.sender = sender if sender is not None else fluent_sender.FluentSender(
            "", host=host, port=port, **sender_options)
        self.last_verdict: Optional[Verdict] = None

    @property
    def stats(self) -> Any:
        """The filter's counters (FilterStats)."""
        return self.filter.stats

    def check(self, event: Any) -> Verdict:
        """The verdict on `event` without sending anything (counted in `stats`)."""
        return self.filter.process(event)

    def emit(self, label: Optional[str], event: Any) -> bool:
        """Filter and send `event` now; True when fluent-logger sent it (see FluentSender.emit)."""
        seconds, nanoseconds = divmod(time.time_ns(), 1_000_000_000)
        return self.emit_with_time(label, EventTime(seconds, nanoseconds), event)

    def emit_with_time(self, label: Optional[str], timestamp: Any, event: Any) -> bool:
        """Like `emit`, with the time to use when the event carries no usable eventTime
        (int or float seconds, or an EventTime)."""
        if isinstance(timestamp, fluent_sender.EventTime):
            timestamp = EventTime(*_FLUENT_TIME.unpack(timestamp.data))
        verdict = self.filter.process(event)
        self.last_verdict = verdict
        tag = f"{self.tag}.{label}" if label else self.tag
        _, out_tag, entry = self.router.place(tag, Entry(timestamp, event), verdict)
        return bool(self.sender.emit_with_time(out_tag, _fluent_time(entry.time), entry.record))

    @property
    def last_error(self) -> Optional[BaseException]:
        """fluent-logger's last send error in this thread, if any."""
        return self.sender.last_error

    def close(self) -> None:
        """Send what fluent-logger still buffers, then close its connection."""
        self.sender.close()

    def __enter__(self) -> "AuditSender":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class AuditHandler(logging.Handler):
    """A `logging.Handler` that sends each log record through an `AuditSender`.

    A record whose message is a dict (`log.info(event)`) is filtered as an event; any
    other record becomes `{"message", "level", "logger"}` (passed through unchanged, since
    it is not an Activity Tracker event). The record's creation time is the fallback time.
    """

    def __init__(self, tag: str, host: str = "localhost", port: int = 24224, *,
                 audit_sender: Optional[AuditSender] = None, level: int = logging.NOTSET,
                 **sender_options: Any) -> None:
        super().__init__(level)
        self.audit_sender = audit_sender if audit_sender is not None else AuditSender(
            tag, host, port, **sender_options)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data: Dict[str, Any]
            if isinstance(record.msg, dict):
                data = record.msg
            else:
                data = {"message": self.format(record), "level": record.levelname, "logger": record.name}
            seconds = int(record.created)
            when = EventTime(seconds, int((record.created - seconds) * 1e9))
            self.audit_sender.emit_with_time(None, when, data)
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.acquire()
        try:
            self.audit_sender.close()
        finally:
            self.release()
            super().close()
