"""What the fuzz targets share: a byte reader that builds values, sample events, invariant checks.

The targets take plain bytes and use nothing of atheris, so the corpus replays under
pytest on any machine (tests/test_fuzz_corpus.py); atheris only drives them for longer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, List

import msgpack

from atnorm.core.pipeline import EventFilter, FilterSettings
from atnorm.forward.codec import EventTime, packb
from atnorm.model.verdict import ACCEPTED, OUTCOMES, PASSED, REJECTED, Verdict

FUZZ_DIR = Path(__file__).resolve().parent
CORPUS = FUZZ_DIR / "corpus"
FIXTURES = FUZZ_DIR.parent / "fixtures"

# Small enough that fuzz inputs reach the size limits, large enough for every sample event.
MAX_RECORD_BYTES = 8192

_FILTER: Dict[str, EventFilter] = {}


def event_filter() -> EventFilter:
    """One filter per process (compiling the schemas takes a while); counts are compared
    before and after each input, never assumed to start at zero."""
    if "filter" not in _FILTER:
        _FILTER["filter"] = EventFilter.from_schemas(settings=FilterSettings(max_record_bytes=MAX_RECORD_BYTES))
    return _FILTER["filter"]


def sample_events() -> List[Any]:
    """Real-shaped records: the fixture events and the events the wire captures carry."""
    events: List[Any] = []
    for path in sorted((FIXTURES / "events").glob("*.json")):
        events.append(json.loads(path.read_text(encoding="utf-8")))
    for line in (FIXTURES / "wire" / "events.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            events.append(json.loads(line))
    records = json.loads((FIXTURES / "execfilter" / "records.json").read_text(encoding="utf-8"))
    for group in records.values():
        events.extend(group if isinstance(group, list) else [group])
    return events


class Bytes:
    """Reads choices off fuzz bytes; past the end every read is 0, so any input is complete."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def below(self, n: int) -> int:
        return self.byte() % n if n > 0 else 0

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def rest(self) -> bytes:
        out = self.data[self.pos:]
        self.pos = len(self.data)
        return out

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


# Leaves chosen to hit the edges: the 64-bit and 32-bit bounds, non-finite floats, lone
# surrogates, bytes that are not UTF-8, text that looks like JSON or a time.
_EDGE_LEAVES: List[Any] = [
    None, True, False, 0, -1, 1, 2**31, 2**32, 2**32 - 1, 2**63 - 1, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64,
    10**30, 0.0, -0.0, 1.5, math.nan, math.inf, -math.inf, 1e308, "", " ", "\ud800", "a\udcff", "Zürich", "東京",
    b"", b"\xff\xfe", b"bin", "2024-05-01T10:00:00.12Z", "2024-13-45T99:99:99Z", "1714557600000",
    '{"action":"a.b.c"}', "{", "[1,2]", "vmware-solutions.vcs.create", "crn:v1:bluemix:public:kms:us-south:a/1::",
    "success", "failure", "normal", "critical", "x" * 300, [], {}, [None], {"": ""}, EventTime(1, 2),
    msgpack.ExtType(5, b"x"),
]
_KEYS = ["action", "initiator", "target", "eventTime", "outcome", "severity", "message", "id", "name",
         "typeURI", "reason", "reasonCode", "observer", "requestData", "responseData", "logSourceCRN",
         "saveServiceCopy", "dataEvent", "correlationId", "host", "address", "credential", "type",
         "atnorm", "tag", "time", "log", "", "\ud800", "a.b"]


def value(src: Bytes, depth: int = 0) -> Any:
    """A value built from the next bytes: maps, lists, edge leaves and raw text or bytes."""
    kind = src.below(8 if depth < 6 else 4)
    if kind == 0:
        return _EDGE_LEAVES[src.below(len(_EDGE_LEAVES))]
    if kind == 1:
        return int.from_bytes(src.take(src.below(10)), "big", signed=True)
    if kind == 2:
        return src.take(src.below(24)).decode("utf-8", "surrogateescape")
    if kind == 3:
        return src.take(src.below(16))
    if kind in (4, 5, 6):
        out: Dict[Any, Any] = {}
        for _ in range(src.below(6)):
            out[key(src)] = value(src, depth + 1)
        return out
    return [value(src, depth + 1) for _ in range(src.below(4))]


def key(src: Bytes) -> Any:
    choice = src.below(16)
    if choice < 12:
        return _KEYS[src.below(len(_KEYS))]
    if choice == 12:
        return _KEYS[src.below(len(_KEYS))].encode("utf-8", "surrogatepass")
    if choice == 13:
        return [0, -1, 2**64, 1.5, None, True][src.below(6)]
    return src.take(src.below(8)).decode("utf-8", "surrogateescape")


def mutate(record: Any, src: Bytes) -> Any:
    """`record` with a few of its values replaced, removed or added, as the bytes choose."""
    for _ in range(1 + src.below(4)):
        record = _mutate_once(record, src)
    return record


def _mutate_once(node: Any, src: Bytes) -> Any:
    if isinstance(node, dict) and node and src.below(4):
        keys = list(node)
        chosen = keys[src.below(len(keys))]
        action = src.below(6)
        node = dict(node)
        if action == 0:
            del node[chosen]
        elif action == 1:
            node[key(src)] = value(src)
        else:
            node[chosen] = _mutate_once(node[chosen], src)
        return node
    if isinstance(node, list) and node and src.below(4):
        node = list(node)
        index = src.below(len(node))
        node[index] = _mutate_once(node[index], src)
        return node
    return value(src)


# --- invariants -----------------------------------------------------------------------------

def strict_json(value: Any) -> bytes:
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


def check_writable(value: Any, what: str) -> None:
    """Both ways out (msgpack with strict 64-bit ints, strict UTF-8 JSON) encode `value`."""
    try:
        packb(value)
        msgpack.packb(value, use_bin_type=True)
        strict_json(value)
    except Exception as exc:
        raise AssertionError(f"{what} cannot be written: {type(exc).__name__}: {exc}: {value!r:.300}") from None


def check_verdict(verdict: Verdict) -> None:
    """One verdict, of a known outcome, whose output every destination can write."""
    assert type(verdict) is Verdict, verdict
    assert verdict.outcome in OUTCOMES, verdict.outcome
    if verdict.outcome == REJECTED:
        assert verdict.reasons, "a rejection without a reason"
        for reason in verdict.reasons:
            assert reason.rule and isinstance(reason.message, str), reason
    check_writable(verdict.output(), f"{verdict.outcome} output")
    if verdict.outcome in (ACCEPTED, PASSED):
        assert isinstance(verdict.record, dict), f"{verdict.outcome} record is a {type(verdict.record).__name__}"


def counts(event_filter: EventFilter) -> Dict[str, int]:
    outcomes = event_filter.stats.outcomes
    return {"received": event_filter.stats.received, **{o: outcomes[o] for o in OUTCOMES}}


def check_counted(before: Dict[str, int], after: Dict[str, int], outcomes: List[str]) -> None:
    """received grew by the number of outputs and each outcome by its number of outputs."""
    assert after["received"] - before["received"] == len(outcomes), (before, after, len(outcomes))
    for outcome in OUTCOMES:
        assert after[outcome] - before[outcome] == outcomes.count(outcome), (outcome, before, after, outcomes)
    assert after["received"] == after[ACCEPTED] + after[REJECTED] + after[PASSED]
