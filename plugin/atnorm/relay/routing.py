"""Where each record of a chunk goes: verdict → (route, tag, time, record), grouped per chunk.

Every record of a chunk leaves on exactly one route:

- ``accepted``: the normalized event under the accepted tag (the incoming tag unless
  rewritten), stamped with its normalized ``eventTime`` as an EventTime (or with the
  time it arrived with, if so configured);
- ``rejected``: ``{"original", "reasons"}`` under the dead-letter tag (default
  ``<tag>.rejected``), with the time it arrived with;
- ``passed``: the record unchanged, under its tag, with the time it arrived with.

An entry the codec could not read as an event (no usable time, not ``[time, record]``, a
record that is not a map: it carries a ``problem``) is rejected whatever the filter says,
also with the filter off: ``{"original": <the entry as received>, "reasons": [{"path",
"rule": "entry.time" | "entry.shape" | "entry.record", "message"}]}`` with its arrival
time, counted once like any other rejection. A record whose deciding raises an exception
is rejected the same way (rule ``internal.error``): one record's bug never holds up its chunk.

Fluent Bit's per-record metadata travels with the record on every route. Tag templates
and the time source are turned into small functions once, so `Router.route` only loops.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from itertools import repeat
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..forward.codec import Entry, EventTime, Time, join_packed_entries, pack_entries, pack_plain_entries, unpack_entries
from ..model.encodable import describe_error, encodable
from ..model.verdict import ACCEPTED, INTERNAL_ERROR, PASSED, REJECTED, RejectReason, Verdict

TAG_PLACEHOLDER = "{tag}"
TIME_SOURCES = ("event", "original")
ROUTES = (ACCEPTED, REJECTED, PASSED)

# Bound the caches of minute → epoch seconds (a month of traffic, minute by minute) and of
# day → epoch seconds; each starts afresh when full, so new times are cached again.
_MAX_CACHED_MINUTES = 50_000
_MAX_CACHED_DAYS = 4_096
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


class RoutedBatch:
    """The records of one chunk that leave on one route, under one tag. `decided`: every
    record is a verdict's output (JSON's types only, see `pack_plain_entries`), not a record
    as received, and no entry has a `problem`. `packed_records`: per entry, its record as
    the filter packed it (`Verdict.packed`, None where it did not), or None for none."""

    __slots__ = ("route", "tag", "entries", "decided", "packed_records")

    def __init__(self, route: str, tag: str, entries: List[Entry], decided: bool = False,
                 packed_records: Optional[List[Optional[bytes]]] = None) -> None:
        self.route = route
        self.tag = tag
        self.entries = entries
        self.decided = decided
        self.packed_records = packed_records

    @property
    def count(self) -> int:
        return len(self.entries)

    def extend(self, other: "RoutedBatch") -> None:
        """Add the entries of `other`, routed the same way (another slice of one chunk)."""
        self.entries.extend(other.entries)
        self.decided = self.decided and other.decided
        if self.packed_records is not None and other.packed_records is not None:
            self.packed_records.extend(other.packed_records)
        else:
            self.packed_records = None

    def packed(self) -> bytes:
        """The entries as a PackedForward payload."""
        return pack_entries(self.entries)

    def plain_packed(self) -> bytes:
        """The entries as a PackedForward payload in the plain form `[time, record]`, with
        Fluent Bit's metadata left out (see the relay's forward_entry_form)."""
        entries = self.entries
        if self.decided:
            packed_records, self.packed_records = self.packed_records, None  # used once: let them go
            if packed_records is not None and any(packed_records):  # none packed: one batch call below
                try:
                    return join_packed_entries(entries, packed_records)
                except Exception:  # a record msgspec refuses: msgpack-python decides
                    pass
            return pack_plain_entries(entries)
        if all(entry.metadata is None for entry in entries):
            return pack_entries(entries)
        return pack_entries(Entry(entry.time, entry.record) for entry in entries)

    def records(self) -> List[Entry]:
        return self.entries

    def __repr__(self) -> str:
        return f"RoutedBatch({self.route!r}, {self.tag!r}, {len(self.entries)} entries)"


class PackedBatch:
    """A routed batch already packed: where it was decided (a filter worker), or a verbatim
    chunk's payload as received (a pass-through relay). `plain` says no entry is in the
    metadata form, so the payload needs no look for one before it goes downstream."""

    __slots__ = ("route", "tag", "payload", "count", "plain")

    def __init__(self, route: str, tag: str, payload: bytes, count: int, plain: bool = False) -> None:
        self.route = route
        self.tag = tag
        self.payload = payload
        self.count = count
        self.plain = plain

    def packed(self) -> bytes:
        return self.payload

    def records(self) -> List[Entry]:
        return unpack_entries(self.payload)[0]

    def __repr__(self) -> str:
        return f"PackedBatch({self.route!r}, {self.tag!r}, {self.count} entries)"


class LinesBatch:
    """A routed batch already written as JSON lines, where it was decided (a filter worker,
    for the files destination): per file route, the text of its lines (joined by newlines,
    none empty), and the warnings for records that had to go to another file."""

    __slots__ = ("route", "tag", "count", "lines", "warnings")

    def __init__(self, route: str, tag: str, count: int, lines: Dict[str, str], warnings: List[str]) -> None:
        self.route = route
        self.tag = tag
        self.count = count
        self.lines = lines
        self.warnings = warnings

    def __repr__(self) -> str:
        return f"LinesBatch({self.route!r}, {self.tag!r}, {self.count} entries)"


Batch = Union[RoutedBatch, PackedBatch, LinesBatch]


def check_tag_template(template: str) -> str:
    """Accept `{tag}`-templates such as `{tag}.rejected` or `audit.{tag}`, or a fixed tag."""
    template = str(template)
    if not template.strip():
        raise ValueError("expected a tag or a template such as {tag}.rejected, got an empty string")
    rest = template.replace(TAG_PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise ValueError(f"only {TAG_PLACEHOLDER} may appear in braces, got {template!r}")
    return template


def tag_function(template: str) -> Callable[[str], str]:
    """A function incoming tag → outgoing tag for `template` (specialised once)."""
    if template == TAG_PLACEHOLDER:
        return lambda tag: tag
    if TAG_PLACEHOLDER not in template:
        return lambda tag: template
    if template.count(TAG_PLACEHOLDER) == 1:
        prefix, suffix = template.split(TAG_PLACEHOLDER)
        return lambda tag: prefix + tag + suffix
    return lambda tag: template.replace(TAG_PLACEHOLDER, tag)


class _EventTimeParser:
    """Canonical eventTime text (`2024-05-01T10:00:00.000+0000`) → EventTime, or None."""

    def __init__(self) -> None:
        # Events of a stream cluster in time: most share the minute of the one before.
        self._minutes: Dict[str, int] = {}
        # Events spread over many minutes (a backlog, a replay) still share days.
        self._days: Dict[str, int] = {}

    def __call__(self, text: Any) -> Optional[EventTime]:
        if type(text) is not str or len(text) < 24 or text[10] != "T" or text[16] != ":":
            return None
        try:
            minute = self._minutes.get(text[:16])
            if minute is None:
                minute = self._minute_seconds(text[:16])
            seconds = minute + int(text[17:19])
            rest = text[19:]
            nanoseconds = 0
            if rest[0] == ".":
                digits = rest[1:-5]
                if not digits.isdigit() or len(digits) > 9:
                    return None
                nanoseconds = int(digits.ljust(9, "0"))
            zone = rest[-5:]
            if zone != "+0000":
                if zone[0] not in "+-" or not zone[1:].isdigit():
                    return None
                offset = int(zone[1:3]) * 3600 + int(zone[3:5]) * 60
                seconds -= offset if zone[0] == "+" else -offset
        except ValueError:
            return None
        if seconds < 0 or seconds >= 1 << 32:
            return None  # EventTime carries an unsigned 32-bit second count
        return EventTime(seconds, nanoseconds)

    def _minute_seconds(self, text: str) -> int:
        day = self._days.get(text[:10])
        if day is None:
            day = (date(int(text[0:4]), int(text[5:7]), int(text[8:10])).toordinal() - _EPOCH_ORDINAL) * 86400
            if len(self._days) >= _MAX_CACHED_DAYS:
                self._days.clear()
            self._days[text[:10]] = day
        seconds = day + int(text[11:13]) * 3600 + int(text[14:16]) * 60
        if len(self._minutes) >= _MAX_CACHED_MINUTES:
            self._minutes.clear()
        self._minutes[text] = seconds
        return seconds


parse_event_time = _EventTimeParser()


@dataclass(frozen=True)
class RouteSettings:
    """Where each verdict's records go and with which time: the relay's output options."""

    accepted_tag: str = TAG_PLACEHOLDER
    rejected_tag: str = TAG_PLACEHOLDER + ".rejected"
    time_source: str = "event"


class Router:
    """Splits a chunk's entries into at most three `RoutedBatch`es, by verdict.

    `decide` is the filter's per-record call (`EventFilter.process`), or None for a
    pass-through relay: every record then leaves on the passed route unchanged (a
    verbatim chunk as the payload received, see `pass_verbatim`). The records of its
    verdicts must be writable as they are (`is_encodable`), as a `Filter`'s are: the
    batches of decided records are packed as such (`RoutedBatch.decided`).
    """

    def __init__(self, decide: Optional[Callable[[Any], Verdict]], *, accepted_tag: str = TAG_PLACEHOLDER,
                 rejected_tag: str = TAG_PLACEHOLDER + ".rejected", passed_tag: str = TAG_PLACEHOLDER,
                 time_source: str = "event", count: Optional[Callable[[Verdict], None]] = None,
                 count_passed: Optional[Callable[[int], None]] = None,
                 decide_text: Optional[Callable[[Any], Verdict]] = None) -> None:
        if time_source not in TIME_SOURCES:
            raise ValueError(f"time_source must be one of {', '.join(TIME_SOURCES)}, got {time_source!r}")
        self.decide = decide
        # `decide` for a record known to be text already (see `route`); by default the
        # filter's `process_text` when `decide` is its `process`.
        self.decide_text = decide_text if decide_text is not None else _text_decider(decide)
        self.accepted_tag = tag_function(check_tag_template(accepted_tag))
        self.rejected_tag = tag_function(check_tag_template(rejected_tag))
        self.passed_tag = tag_function(check_tag_template(passed_tag))
        self.time_source = time_source
        # Chosen once: which time an accepted record leaves with.
        self.accepted_time: Callable[[Verdict, Entry], Time] = _ACCEPTED_TIME[time_source]
        # Counts the verdicts made here, not by `decide` (entries with a problem); by default
        # into the stats of the filter `decide` belongs to, if it has any.
        self.count = count if count is not None else _stats_counter(decide)
        # Records a pass-through relay hands on undecided still count as received and passed.
        self.count_passed = count_passed

    @classmethod
    def with_settings(cls, decide: Optional[Callable[[Any], Verdict]], routes: RouteSettings, *,
                      count: Optional[Callable[[Verdict], None]] = None,
                      count_passed: Optional[Callable[[int], None]] = None,
                      decide_text: Optional[Callable[[Any], Verdict]] = None) -> "Router":
        """A router for `routes` (the relay's and each filter worker's)."""
        return cls(decide, accepted_tag=routes.accepted_tag, rejected_tag=routes.rejected_tag,
                   time_source=routes.time_source, count=count, count_passed=count_passed,
                   decide_text=decide_text)

    def unusable(self, entry: Entry) -> Entry:
        """The dead-letter entry for an entry with a `problem`, counted as a rejection."""
        problem = entry.problem
        assert problem is not None
        verdict = Verdict(REJECTED, encodable(entry.record),
                          reasons=[RejectReason(problem.path, problem.rule, problem.message)])
        if self.count is not None:
            self.count(verdict)
        return Entry(entry.time, verdict.dead_letter(), entry.metadata)

    def failed(self, entry: Entry, exc: Exception) -> Entry:
        """The dead-letter entry for a record whose deciding raised, counted as a rejection."""
        reason = RejectReason("", INTERNAL_ERROR, f"the filter failed on this record: {describe_error(exc)}")
        verdict = Verdict(REJECTED, encodable(entry.record), reasons=[reason])
        if self.count is not None:
            self.count(verdict)
        return Entry(entry.time, verdict.dead_letter(), entry.metadata)

    def place(self, tag: str, entry: Entry, verdict: Verdict) -> Tuple[str, str, Entry]:
        """(route, tag, entry) for one record already decided (for callers that emit one at a time)."""
        if entry.problem is not None:
            return REJECTED, self.rejected_tag(tag), self.unusable(entry)
        outcome = verdict.outcome
        if outcome == ACCEPTED:
            return ACCEPTED, self.accepted_tag(tag), Entry(self.accepted_time(verdict, entry), verdict.record,
                                                           entry.metadata)
        if outcome == REJECTED:
            return REJECTED, self.rejected_tag(tag), Entry(entry.time, verdict.dead_letter(), entry.metadata)
        # The filter hands back bin (bytes) strings as str: pass on its record, not the raw one.
        record = verdict.record
        return PASSED, self.passed_tag(tag), entry if record is entry.record else entry._replace(record=record)

    def pass_verbatim(self, tag: str, payload: bytes, count: int) -> List[PackedBatch]:
        """A pass-through relay's verbatim chunk (every entry `[time, map]`, none with a
        problem): its payload as received, on the passed route, counted as passed."""
        assert self.decide is None, "a filtering router decides every record"
        if self.count_passed is not None:
            self.count_passed(count)
        return [PackedBatch(PASSED, self.passed_tag(tag), payload, count, plain=True)]

    def route(self, tag: str, entries: List[Entry], text: Optional[Sequence[bool]] = None) -> List[RoutedBatch]:
        """The chunk's records, decided and grouped by route (empty groups left out).

        `text`, per entry, says its record is known to be text as it is (`codec.text_records`):
        it is decided by `decide_text`, which does not look for what is not text again."""
        if self.decide is None:
            if any(entry.problem is not None for entry in entries):
                return self._route_unfiltered(tag, entries)
            if self.count_passed is not None and entries:
                self.count_passed(len(entries))
            return [RoutedBatch(PASSED, self.passed_tag(tag), list(entries))] if entries else []
        decide = self.decide
        # Per entry, the call that decides it: `decide`, or `decide_text` where `text` says so.
        deciders = (decide, self.decide_text or decide)
        known_text: Iterable[bool] = repeat(False)
        if text is not None and self.decide_text is not None and len(text) == len(entries):
            known_text = text
        accepted_time = self.accepted_time
        accepted: List[Entry] = []
        rejected: List[Entry] = []
        passed: List[Entry] = []
        # The records of the accepted and passed entries as the filter packed them.
        accepted_packed: List[Optional[bytes]] = []
        passed_packed: List[Optional[bytes]] = []
        for entry, is_text in zip(entries, known_text):
            if entry.problem is not None:
                rejected.append(self.unusable(entry))
                continue
            try:
                verdict = deciders[is_text](entry.record)
            except Exception as exc:  # a bug met by one record costs that record, not the chunk
                rejected.append(self.failed(entry, exc))
                continue
            outcome = verdict.outcome
            if outcome == ACCEPTED:
                accepted.append(Entry(accepted_time(verdict, entry), verdict.record, entry.metadata))
                accepted_packed.append(verdict.packed)
            elif outcome == REJECTED:
                rejected.append(Entry(entry.time, verdict.dead_letter(), entry.metadata))
            else:
                record = verdict.record
                passed.append(entry if record is entry.record else entry._replace(record=record))
                passed_packed.append(verdict.packed)
        batches: List[RoutedBatch] = []
        if accepted:
            batches.append(RoutedBatch(ACCEPTED, self.accepted_tag(tag), accepted, True, accepted_packed))
        if rejected:
            batches.append(RoutedBatch(REJECTED, self.rejected_tag(tag), rejected, True))
        if passed:
            batches.append(RoutedBatch(PASSED, self.passed_tag(tag), passed, True, passed_packed))
        return batches

    def _route_unfiltered(self, tag: str, entries: List[Entry]) -> List[RoutedBatch]:
        rejected = [self.unusable(entry) for entry in entries if entry.problem is not None]
        passed = [entry for entry in entries if entry.problem is None]
        if self.count_passed is not None and passed:
            self.count_passed(len(passed))
        batches = [RoutedBatch(REJECTED, self.rejected_tag(tag), rejected)]
        if passed:
            batches.append(RoutedBatch(PASSED, self.passed_tag(tag), passed))
        return batches


def _event_time(verdict: Verdict, entry: Entry) -> Time:
    """The normalized eventTime, or the arrival time if the event has none."""
    when = parse_event_time(verdict.event_time)
    return when if when is not None else entry.time


def _arrival_time(verdict: Verdict, entry: Entry) -> Time:
    return entry.time


_ACCEPTED_TIME: Dict[str, Callable[[Verdict, Entry], Time]] = {"event": _event_time, "original": _arrival_time}


def _text_decider(decide: Optional[Callable[[Any], Verdict]]) -> Optional[Callable[[Any], Verdict]]:
    """`owner.process_text` for a `decide` that is `owner.process` of a filter that has one
    (EventFilter, ReloadingFilter), else None."""
    owner = getattr(decide, "__self__", None)
    process_text = getattr(owner, "process_text", None)
    if process_text is None or decide != getattr(owner, "process", None):
        return None
    return process_text  # type: ignore[no-any-return]


def _stats_counter(decide: Optional[Callable[[Any], Verdict]]) -> Optional[Callable[[Verdict], None]]:
    """`owner.stats.count` for a bound `decide` whose owner keeps FilterStats (looked up at
    each call, since an owner may replace its stats), else None."""
    owner = getattr(decide, "__self__", None)
    if owner is None or not hasattr(owner, "stats"):
        return None
    return lambda verdict: owner.stats.count(verdict)
