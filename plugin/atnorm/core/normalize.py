"""Normalization: small named steps that bring drifting real-world events to canonical form.

Two stages, each a chain of steps configured once (structlog-style):
- `find_event` looks through envelopes (`payload`, `line`, a JSON string in `log` /
  `message`) and flattened dotted keys to the event inside a record; it never changes the
  record it was given.
- `Normalizer.normalize` works on a copy of the event: trims stray whitespace, makes
  `eventTime` canonical, coerces type drift, case-folds enumerated values, fixes
  `typeURI`s, and finally adds derived fields under one key without overwriting any
  source field.
Every change is named (`unwrap:payload`, `coerce:/reason/reasonCode`, …) in the list of
fixes, which the pipeline counts and can attach to the record.
"""

from __future__ import annotations

import datetime as _dt
import json
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..model.encodable import MAX_INT, MIN_INT, SURROGATE, bytes_text, pointer_part
from ..model.encodable import text as readable
from ..model.event import CREDENTIAL_TYPES, EVENT_MARKERS, OUTCOMES, SEVERITIES
from ..model.jsoncodec import MAX_NESTING

Fixes = List[str]
Step = Callable[[Dict[str, Any], Dict[str, Any], Fixes], None]  # (work, original event, fixes)

# ---------------------------------------------------------------------------------------
# Stage 0: text, before any decision
#
# Fluentd sends keys and values as msgpack bin with its ltsv / none parsers and with yajl;
# a msgpack str that is not UTF-8 arrives as a str holding surrogateescape'd bytes; a JSON
# string may hold a lone surrogate ("\ud800"). Bin that is UTF-8 is text like any other;
# the rest cannot be validated or written as text, and the record is rejected for it.


class EncodingProblem(Exception):
    """A record holding something that is not text: `pointer` says where, `rule` which check."""

    def __init__(self, pointer: str, message: str, rule: str = "record.encoding") -> None:
        super().__init__(message)
        self.pointer = pointer
        self.message = message
        self.rule = rule


def _needs_text(value: Any, depth: int) -> bool:
    """True when `value` holds bytes, a key that is not a str, a str that is not Unicode
    text, or maps and lists nested deeper than `depth` levels.

    On the path of every record, so written for speed: ASCII strings (most) cost one check.
    """
    kind = type(value)
    if kind is dict:
        if depth <= 0:
            return True
        for key, item in value.items():
            if type(key) is not str or not key.isascii() and SURROGATE.search(key) is not None:
                return True
            kind = type(item)
            if kind is str:
                if not item.isascii() and SURROGATE.search(item) is not None:
                    return True
            elif (kind is dict or kind is list or kind is bytes) and _needs_text(item, depth - 1):
                return True
        return False
    if kind is list:
        if depth <= 0:
            return True
        for item in value:
            kind = type(item)
            if kind is str:
                if not item.isascii() and SURROGATE.search(item) is not None:
                    return True
            elif (kind is dict or kind is list or kind is bytes) and _needs_text(item, depth - 1):
                return True
        return False
    if kind is str:
        return not value.isascii() and SURROGATE.search(value) is not None
    return kind is bytes


def _text(value: Any, pointer: str, where: str) -> str:
    """`value` (bytes or str) as text, or EncodingProblem pointing at it."""
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise EncodingProblem(pointer, f"{where}invalid UTF-8 at byte {exc.start}: {exc.reason}") from None
    match = SURROGATE.search(value)
    if match is not None:
        code = ord(match.group())
        what = f"byte 0x{code - 0xDC00:02x} that is not UTF-8" if 0xDC80 <= code <= 0xDCFF \
            else f"lone surrogate \\u{code:04x}"
        raise EncodingProblem(pointer, f"{where}not Unicode text: {what} at character {match.start()}")
    return value


def _as_text(value: Any, pointer: str, depth: int) -> Any:
    kind = type(value)
    if (kind is dict or kind is list) and depth <= 0:
        raise EncodingProblem(pointer, f"nesting deeper than {MAX_NESTING} levels")
    if kind is dict:
        out: Dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is bytes:
                name = _text(key, pointer + "/" + pointer_part(bytes_text(key)), "key: ")
            elif type(key) is str:
                name = _text(key, pointer + "/" + pointer_part(readable(key)), "key: ")
            else:
                raise EncodingProblem(pointer, f"a key must be a string, not {type(key).__name__} ({key!r})",
                                      "record.type")
            if name in out:
                raise EncodingProblem(pointer + "/" + pointer_part(name), f"key {name!r} appears twice",
                                      "record.type")
            out[name] = _as_text(item, pointer + "/" + pointer_part(name), depth - 1)
        return out
    if kind is list:
        items: List[Any] = []
        for index, item in enumerate(value):  # a comprehension would be a frame more per level
            items.append(_as_text(item, f"{pointer}/{index}", depth - 1))
        return items
    if kind is bytes or kind is str:
        return _text(value, pointer, "")
    return value


def as_text(record: Any) -> Any:
    """`record` with every bin key and value as str; the same object when it has none.

    Raises EncodingProblem for bytes that are not UTF-8, strings holding lone surrogates,
    and keys that are neither bin nor str.
    """
    if not _needs_text(record, MAX_NESTING):
        return record
    return _as_text(record, "", MAX_NESTING)


# ---------------------------------------------------------------------------------------
# Stage 1: find the event inside a record


_ACTION, _INITIATOR, _TARGET = EVENT_MARKERS


def is_event(record: Dict[str, Any]) -> bool:
    """An Activity Tracker event carries at least two of action, initiator and target.

    One of them alone is too common in other logs (an app's own `action` field) to mean
    the record is an audit event; two make it one, and a missing third is then a reason
    to reject rather than to pass the record on unchecked.
    """
    return (_ACTION in record) + (_INITIATOR in record) + (_TARGET in record) >= 2


def _bounded_int(digits: str) -> Any:
    """An integer of JSON text found inside a record, or its digits when msgpack cannot hold it.

    What is unwrapped goes downstream as msgpack, which stops at 64 bits; the schema then
    sees text where a number was, and says so.
    """
    value = int(digits)
    return value if MIN_INT <= value <= MAX_INT else digits


def _json_object(text: Any) -> Optional[Dict[str, Any]]:
    if not isinstance(text, str):
        return None
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped, parse_int=_bounded_int)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _unwrap_payload(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    payload = record.get("payload")
    if not isinstance(payload, dict):
        payload = _json_object(payload)
    if payload is None:
        return None
    # Legacy envelope: logSourceCRN, saveServiceCopy and meta sit beside the event.
    event = dict(payload)
    for key, value in record.items():
        if key != "payload" and key not in event:
            event[key] = value
    return event


def _unwrap_line(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    line = record.get("line")
    return line if isinstance(line, dict) else _json_object(line)


def _unwrap_string_field(name: str) -> Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]:
    def unwrap(record: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        return _json_object(record.get(name))
    return unwrap


UNWRAPPERS: Sequence[Tuple[str, Callable[[Dict[str, Any]], Optional[Dict[str, Any]]]]] = (
    ("unwrap:payload", _unwrap_payload),
    ("unwrap:line", _unwrap_line),
    ("unwrap:log", _unwrap_string_field("log")),
    ("unwrap:message", _unwrap_string_field("message")),
)
MAX_UNWRAP_DEPTH = 3


def unflatten(record: Dict[Any, Any]) -> Optional[Dict[str, Any]]:
    """`{"initiator.id": x}` → `{"initiator": {"id": x}}`; None when no key is dotted.

    A dotted key that would clash with a non-object value is left as it is.
    """
    try:
        dotted = "." in "".join(record)  # str keys, as a record's are once it is text: one scan in C
    except TypeError:
        dotted = any(type(key) is str and "." in key for key in record)
    if not dotted:
        return None
    result: Dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in record.items()
                              if type(k) is not str or "." not in k}
    for key, value in record.items():
        if type(key) is not str or "." not in key:
            continue
        parts = key.split(".")
        node = result
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                node = None  # type: ignore[assignment]
                break
            else:
                child = node[part] = dict(child)
            node = child
        if node is None or parts[-1] in node:
            result[key] = value
        else:
            node[parts[-1]] = value
    return result


def find_event(record: Dict[str, Any], fixes: Fixes,
               wrapper: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The event a record carries: itself, or what an envelope holds. `record` is not changed.

    With `wrapper`, the envelope's other fields are gathered there (an outer envelope's
    first): `kubernetes`, `stream`, `time` beside a `log` string, or a field beside a
    `payload` that the payload also holds, so that nothing of the record need be lost.
    """
    event = record
    for _ in range(MAX_UNWRAP_DEPTH):
        if "action" in event:
            break
        for fix, unwrap in UNWRAPPERS:
            inner = unwrap(event)
            if inner is not None and (is_event(inner) or _unwrappable(inner)):
                if wrapper is not None:
                    _gather_wrapper(event, fix, inner, wrapper)
                event = inner
                fixes.append(fix)
                break
        else:
            break
    flat = unflatten(event)
    if flat is not None:
        fixes.append("unflatten")
        event = flat
    return event


def _gather_wrapper(envelope: Dict[str, Any], fix: str, inner: Dict[str, Any],
                    wrapper: Dict[str, Any]) -> None:
    field = fix[len("unwrap:"):]
    if field == "payload":
        # The legacy envelope's own fields are already beside the event; only the ones the
        # payload also holds would be lost.
        for key, value in envelope.items():
            if key != field and key in inner and inner[key] is not value:
                wrapper.setdefault(key, value)
        return
    for key, value in envelope.items():
        if key != field:
            wrapper.setdefault(key, value)


WRAPPER_MODES = ("merge", "nest", "drop")
WRAPPER_CLASH = ("event", "wrapper")
WrapperStep = Callable[[Dict[str, Any], Dict[str, Any]], None]


def _free_key(work: Dict[str, Any], key: str) -> str:
    # A field of the event already named like the wrapper key is the event's: never replaced.
    while key in work:
        key = "_" + key
    return key


def make_wrapper_step(mode: str, key: str, clash: str) -> Optional[WrapperStep]:
    """Where an envelope's other fields go on the accepted event; None for `drop`.

    - merge: beside the event's fields (as Fluent Bit's `Merge_Log` does); on a name
      clash `clash` says which value keeps the name (`event` or `wrapper`), and the other
      one is kept under `key`;
    - nest: all of them under `key`.
    """
    if mode not in WRAPPER_MODES:
        raise ValueError(f"wrapper_fields must be one of {', '.join(WRAPPER_MODES)}, got {mode!r}")
    if clash not in WRAPPER_CLASH:
        raise ValueError(f"wrapper_clash must be one of {', '.join(WRAPPER_CLASH)}, got {clash!r}")
    if mode == "drop":
        return None
    if mode == "nest":
        def nest(work: Dict[str, Any], wrapper: Dict[str, Any]) -> None:
            work[_free_key(work, key)] = wrapper
        return nest
    wrapper_wins = clash == "wrapper"

    def merge(work: Dict[str, Any], wrapper: Dict[str, Any]) -> None:
        displaced: Dict[str, Any] = {}
        for name, value in wrapper.items():
            if name not in work:
                work[name] = value
            elif wrapper_wins:
                displaced[name] = work[name]
                work[name] = value
            else:
                displaced[name] = value
        if displaced:
            work[_free_key(work, key)] = displaced
    return merge


def _unwrappable(inner: Dict[str, Any]) -> bool:
    # An envelope inside an envelope (e.g. a `log` string holding a `payload` record).
    return "payload" in inner or "line" in inner or any(type(k) is str and "." in k for k in inner)


# ---------------------------------------------------------------------------------------
# Stage 2: steps on a working copy of the event

def owned(work: Dict[str, Any], event: Dict[str, Any], path: Tuple[str, ...]) -> Optional[Dict[str, Any]]:
    """The object at `path` in `work`, copied first if it is still shared with `event`.

    The working copy starts as a shallow copy of the event; nested objects are copied
    only when a step changes them (copy on write), so the original record stays
    untouched and records that need no fix cost no copies.
    """
    node: Any = work
    original: Any = event
    for part in path:
        child = node.get(part)
        if not isinstance(child, dict):
            return None
        original_child = original.get(part) if isinstance(original, dict) else None
        if child is original_child:
            child = dict(child)  # type: ignore[arg-type]
            node[part] = child
        node, original = child, original_child
    return node  # type: ignore[no-any-return]


def _get(record: Dict[str, Any], path: Tuple[str, ...]) -> Tuple[Optional[Dict[str, Any]], Any]:
    node: Any = record
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict) and path[-1] in node:
        return node, node[path[-1]]
    return None, None


def _pointer(path: Tuple[str, ...]) -> str:
    return "/" + "/".join(path)


# Fields whose stray whitespace is trimmed, grouped by the object that holds them.
TRIMMED_FIELDS: Sequence[Tuple[Tuple[str, ...], Tuple[str, ...]]] = (
    ((), ("action", "outcome", "severity", "eventTime", "message", "logSourceCRN")),
    (("initiator",), ("id", "name", "typeURI")),
    (("initiator", "host"), ("address",)),
    (("initiator", "credential"), ("type",)),
    (("target",), ("id", "name", "typeURI")),
    (("observer",), ("name",)),
)


def trim_whitespace(work: Dict[str, Any], event: Dict[str, Any], fixes: Fixes) -> None:
    for parent_path, keys in TRIMMED_FIELDS:
        node: Any = work
        for part in parent_path:
            node = node.get(part)
            if not isinstance(node, dict):
                break
        else:
            for key in keys:
                value = node.get(key)
                if isinstance(value, str):
                    stripped = value.strip()
                    if stripped != value:
                        node = owned(work, event, parent_path)
                        node[key] = stripped
                        fixes.append("trim:" + _pointer(parent_path + (key,)))


_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?"
    r"\s*(Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?"
)
_UTC = _dt.timezone.utc


def make_reference_time_formatter(fraction_digits: int) -> Callable[[Any], Optional[str]]:
    """A function turning any eventTime we can read into canonical form, or None.

    Canonical: UTC, `+0000`, exactly `fraction_digits` fractional digits (0 to 9). This
    is the general path (any offset, epoch numbers, Unicode digits, surrounding space);
    `make_time_formatter` puts a fast path for the common UTC forms in front of it, and the
    differential tests hold the two equal.
    """
    if not 0 <= fraction_digits <= 9:
        raise ValueError("fraction digits must be 0 to 9")

    def fraction(nanos: int) -> str:
        if fraction_digits == 0:
            return ""
        return "." + f"{nanos:09d}"[:fraction_digits]

    def from_datetime(moment: _dt.datetime, nanos: int) -> str:
        return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T"
                f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}{fraction(nanos)}+0000")

    def canonical(value: Any) -> Optional[str]:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # Epoch seconds, or milliseconds when too large to be seconds. Numbers no date
            # can have (too large for a float, NaN, infinite, past year 9999) are left as
            # they are, for the schema to reject.
            try:
                seconds = value / 1000 if abs(value) > 1e11 else value
                moment = _dt.datetime.fromtimestamp(int(seconds // 1), _UTC)
                nanos = int(round((seconds % 1) * 1e9)) % 1_000_000_000
            except (OverflowError, OSError, ValueError):
                return None
            return from_datetime(moment, nanos)
        if not isinstance(value, str):
            return None
        match = _TIME.fullmatch(value.strip())
        if match is None:
            return None
        year, month, day, hour, minute, second, frac, zone = match.groups()
        try:
            moment = _dt.datetime(int(year), int(month), int(day), int(hour), int(minute),
                                  min(int(second), 59))
        except ValueError:
            return None
        nanos = int((frac or "")[:9].ljust(9, "0"))
        if zone and zone not in ("Z", "z", "UTC"):
            sign = -1 if zone[0] == "-" else 1
            digits = zone[1:].replace(":", "")
            try:
                moment -= sign * _dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
            except OverflowError:  # in UTC it falls before year 1 or after year 9999
                return None
        return from_datetime(moment, nanos)

    return canonical


# The common forms (ASCII digits only, no space around): anything else takes the reference path.
_ISO_TIME = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[Tt ]([0-9]{2}):([0-9]{2}):([0-9]{2})"
                       r"(?:[.,]([0-9]+))?(?:Z|z|UTC|([+-])([0-9]{2})(?::?([0-9]{2}))?)?").fullmatch
_DATE_CACHE_SIZE = 4096  # days seen; audit streams span few, so this is rarely cleared
_MINUTES_A_DAY = 24 * 60


def make_time_formatter(fraction_digits: int) -> Callable[[Any], Optional[str]]:
    """`make_reference_time_formatter`, with the common ISO forms done by slicing.

    `YYYY-MM-DDThh:mm:ss[.fraction][Z|UTC|±hh[[:]mm]]`, the canonical form included, needs
    no datetime: the date is checked once per distinct day (cached), the time by its
    digits, an offset moves the clock in minutes and, past midnight, the date by whole
    days (cached too), and the text is rebuilt from its parts. Everything else (epoch
    numbers, spaces around, non-ASCII digits) goes the reference way. Specialised here, so
    the per-record path does no option checks.
    """
    reference = make_reference_time_formatter(fraction_digits)
    valid_dates: Dict[str, bool] = {}
    shifted_dates: Dict[Tuple[str, int], Optional[str]] = {}

    def date_is_valid(date: str) -> bool:
        known = valid_dates.get(date)
        if known is None:
            try:
                _dt.date(int(date[:4]), int(date[5:7]), int(date[8:10]))
                known = True
            except ValueError:
                known = False
            if len(valid_dates) >= _DATE_CACHE_SIZE:
                valid_dates.clear()
            valid_dates[date] = known
        return known

    def shifted(date: str, days: int) -> Optional[str]:
        key = (date, days)
        if key in shifted_dates:
            return shifted_dates[key]
        try:
            moved: Optional[str] = (_dt.date.fromisoformat(date) + _dt.timedelta(days=days)).isoformat()
        except OverflowError:  # before year 1 or after year 9999, as the reference finds too
            moved = None
        if len(shifted_dates) >= _DATE_CACHE_SIZE:
            shifted_dates.clear()
        shifted_dates[key] = moved
        return moved

    point = "." if fraction_digits else ""

    def canonical(value: Any) -> Optional[str]:
        if type(value) is not str:
            return reference(value)
        match = _ISO_TIME(value)
        if match is None:
            return reference(value)
        date, hour, minute, second, fraction, sign, zone_hours, zone_minutes = match.groups()
        if hour > "23" or minute > "59" or not (valid_dates.get(date) or date_is_valid(date)):
            return None  # as the reference: no such time
        if second > "59":
            second = "59"
        if sign is not None and (zone_hours != "00" or zone_minutes not in (None, "00")):
            offset = int(zone_hours) * 60 + int(zone_minutes or 0)
            days, minutes = divmod(int(hour) * 60 + int(minute) + (offset if sign == "-" else -offset),
                                   _MINUTES_A_DAY)
            if days:
                moved = shifted(date, days)
                if moved is None:
                    return None
                date = moved
            hour, minute = f"{minutes // 60:02d}", f"{minutes % 60:02d}"
        fraction = (fraction or "")[:fraction_digits].ljust(fraction_digits, "0")
        return f"{date}T{hour}:{minute}:{second}{point}{fraction}+0000"

    return canonical


def make_event_time_step(fraction_digits: int) -> Step:
    canonical = make_time_formatter(fraction_digits)

    def event_time(work: Dict[str, Any], event: Dict[str, Any], fixes: Fixes) -> None:
        value = work.get("eventTime")
        if value is None:
            return
        fixed = canonical(value)
        if fixed is not None and fixed != value:
            work["eventTime"] = fixed
            fixes.append("eventTime")
    return event_time


# ASCII digits only (str.isdigit also takes "²" and other digits int() refuses), and few
# enough that the number fits every integer type downstream; anything else stays text.
_REASON_CODE = re.compile(r"[0-9]{1,18}")
_TRUE = frozenset({"true", "True", "TRUE", "yes"})
_FALSE = frozenset({"false", "False", "FALSE", "no"})


def coerce_types(work: Dict[str, Any], event: Dict[str, Any], fixes: Fixes) -> None:
    reason = work.get("reason")
    if isinstance(reason, dict):
        code = reason.get("reasonCode")
        if isinstance(code, str) and _REASON_CODE.fullmatch(code.strip()):
            owned(work, event, ("reason",))["reasonCode"] = int(code.strip())  # type: ignore[index]
            fixes.append("coerce:/reason/reasonCode")
    for key in ("dataEvent", "saveServiceCopy"):
        value = work.get(key)
        if isinstance(value, str):
            text = value.strip()
            if text in _TRUE or text in _FALSE:
                work[key] = text in _TRUE
                fixes.append("coerce:/" + key)
    for key in ("requestData", "responseData"):
        value = work.get(key)
        if isinstance(value, str):
            parsed = _json_object(value)
            if parsed is not None:
                work[key] = parsed
                fixes.append("coerce:/" + key)


CASE_FOLDED_FIELDS = (("outcome",), ("severity",), ("initiator", "credential", "type"))


def casefold_enums(work: Dict[str, Any], event: Dict[str, Any], fixes: Fixes) -> None:
    for path in CASE_FOLDED_FIELDS:
        node, value = _get(work, path)
        if node is not None and isinstance(value, str) and not value.islower() and value.lower() != value:
            owned(work, event, path[:-1])[path[-1]] = value.lower()  # type: ignore[index]
            fixes.append("casefold:" + _pointer(path))


def fix_type_uris(work: Dict[str, Any], event: Dict[str, Any], fixes: Fixes) -> None:
    for path in (("initiator", "typeURI"), ("target", "typeURI")):
        node, value = _get(work, path)
        if node is not None and isinstance(value, str) and value.startswith("/"):
            owned(work, event, path[:-1])[path[-1]] = value.lstrip("/")  # type: ignore[index]
            fixes.append("typeURI:" + _pointer(path))


# ---------------------------------------------------------------------------------------
# Derived fields

DERIVED_FIELDS = ("service", "objectType", "verb", "region", "account", "crnServiceName", "resourceType")
_ZONE_SUFFIX = re.compile(r"-[0-9]+$")


# Keys come from traffic: the caches are cleared when they reach this size.
_CACHE_LIMIT = 4096
_CRN_PARTS: Dict[str, Optional[Dict[str, str]]] = {}
# CRNs with all ten segments, by all but the last (the resource, which the parts do not use):
# a target.id names one resource of an instance that recurs.
_CRN_PARTS_BY_INSTANCE: Dict[str, Optional[Dict[str, str]]] = {}


def parse_crn(value: Any) -> Optional[Dict[str, str]]:
    """Parse a CRN (cached: a source's logSourceCRN repeats in every event it sends, and a
    target's CRN but for its resource). The parts are shared: read them, do not change them."""
    if not isinstance(value, str):
        return None
    if value.count(":") >= 9:  # segment 8 (the resource type) and those before it end at the last colon
        cache, key = _CRN_PARTS_BY_INSTANCE, value[:value.rindex(":")]
    else:
        cache, key = _CRN_PARTS, value
    parts = cache.get(key)
    if parts is None and key not in cache:
        parts = _parse_and_keep(cache, key, value)
    return parts


def _parse_and_keep(cache: Dict[str, Optional[Dict[str, str]]], key: str, value: str) -> Optional[Dict[str, str]]:
    """The parts of `value`, kept in `cache` under `key` (a cache found full is emptied first)."""
    parts = _parse_crn(value)
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = parts
    return parts


def _parse_crn(value: str) -> Optional[Dict[str, str]]:
    """`crn:v1:cname:ctype:service-name:location:scope:instance:resource-type:resource` → parts.

    Tolerates a missing `crn:` prefix; empty segments become absent keys.
    """
    if not isinstance(value, str):
        return None
    parts = value.split(":")
    if parts[0] != "crn":
        parts.insert(0, "crn")
    if len(parts) < 7 or parts[1] != "v1":
        return None
    out: Dict[str, str] = {}
    if parts[4]:
        out["crnServiceName"] = parts[4]
    location = parts[5]
    if location:
        region = _REGIONS.get(location)
        if region is None:
            region = _ZONE_SUFFIX.sub("", location)
            if len(_REGIONS) >= _CACHE_LIMIT:
                _REGIONS.clear()
            _REGIONS[location] = region
        out["region"] = region
    scope = parts[6]
    if len(scope) > 2 and scope.startswith("a/"):
        out["account"] = scope[2:]
    if len(parts) > 8 and parts[8]:
        out["resourceType"] = parts[8]
    return out


# The region of a CRN location: the location without a zone suffix (`us-south-1`).
_REGIONS: Dict[str, str] = {}


# CRN scopes (`crn:v1:cname:ctype:service-name:location:scope`) → their parts: every
# instance and resource of one account's service in one location shares one entry.
_CRN_SCOPES: Dict[str, Optional[Dict[str, str]]] = {}


def _crn_scope(value: Any) -> Optional[Tuple[Dict[str, str], str, str]]:
    """(the parts of a CRN but its resource type, its resource type or "", its scope text or
    ""), the parts as parse_crn has them; None where parse_crn says None. The parts are
    shared: read them only."""
    if not isinstance(value, str):
        return None
    if value.count(":") == 9 and value.startswith("crn:"):
        scope, _, resource_type, _ = value.rsplit(":", 3)
        parts = _CRN_SCOPES.get(scope)
        if parts is None and scope not in _CRN_SCOPES:
            parts = _parse_and_keep(_CRN_SCOPES, scope, scope)
        return None if parts is None else (parts, resource_type, scope)
    parts = parse_crn(value)
    return None if parts is None else (parts, "", "")


_ACTION_PARTS: Dict[Tuple[str, Optional[str]], Dict[str, str]] = {}


def _action_parts(action: str, service: Optional[str]) -> Dict[str, str]:
    """Service, object type and verb of an action of three segments or more; {} otherwise."""
    key = (action, service)
    parts = _ACTION_PARTS.get(key)
    if parts is None:
        if action.count(".") >= 2:
            segments = action.split(".")
            service = service or segments[0]
            rest = action[len(service) + 1:].split(".") if action.startswith(service + ".") else segments[1:]
            parts = {"service": service, "objectType": ".".join(rest[:-1]), "verb": rest[-1]}
        else:
            parts = {}
        if len(_ACTION_PARTS) >= _CACHE_LIMIT:
            _ACTION_PARTS.clear()
        _ACTION_PARTS[key] = parts
    return parts


def derive(work: Dict[str, Any], service: Optional[str]) -> Dict[str, str]:
    """Service, object type and verb from the action; region, account, … from the CRNs."""
    action = work.get("action")
    if isinstance(action, str):
        derived = dict(_ACTION_PARTS.get((action, service)) or _action_parts(action, service))
    else:
        derived = {}
    target = work.get("target")
    found = _crn_scope(target.get("id")) if isinstance(target, dict) else None
    scope = None
    source_crn = work.get("logSourceCRN")
    if found is not None:
        scope, resource_type, scope_text = found
        derived.update(scope)
        if resource_type:
            derived["resourceType"] = resource_type
        # Most often the source is the target's instance (`<scope>:<instance>::`): it has
        # nothing to add, which its text shows without parsing it.
        if (scope_text and type(source_crn) is str and source_crn.endswith("::")
                and source_crn.startswith(scope_text) and source_crn[len(scope_text)] == ":"
                and source_crn.count(":") == 9):
            return derived
    source = _crn_scope(source_crn)
    if source is not None:
        source_scope, resource_type, _ = source
        if source_scope is not scope:  # the target's scope: nothing to add
            for key, value in source_scope.items():
                derived.setdefault(key, value)
        if resource_type:
            derived.setdefault("resourceType", resource_type)
    return derived


# Documented values of the case-folded fields: trimmed and lower case already, so one set
# lookup tells that neither trim nor casefold would change them.
_CLEAN_ENUMS = frozenset(value for value in OUTCOMES + SEVERITIES + CREDENTIAL_TYPES
                         if value.strip() == value and value.lower() == value)


# The steps after the eventTime step may skip, as bits of what `steps_needed` says.
TRIM, COERCE, CASEFOLD, TYPE_URI = 1, 2, 4, 8
ALL_STEPS = TRIM | COERCE | CASEFOLD | TYPE_URI


def steps_needed(event: Dict[str, Any]) -> int:
    """Which of trim_whitespace, coerce_types, casefold_enums and fix_type_uris could change
    `event`, in one pass over the fields they read: 0, as in most valid events, or bits.

    It may name a step that then changes nothing (an undocumented enum value, a str reason
    code that is no number): the step runs and decides. It never leaves out one that would
    change something, counting what trimming does for the steps after it (` Success`,
    ` /typeURI`).
    """
    need = 0
    get = event.get
    for key in ("action", "eventTime", "message", "logSourceCRN"):
        value = get(key)
        if isinstance(value, str) and value.strip() != value:
            need = TRIM
    for key in ("outcome", "severity"):
        value = get(key)
        if isinstance(value, str) and value not in _CLEAN_ENUMS:
            need |= TRIM | CASEFOLD if value.strip() != value else CASEFOLD
    for key in ("dataEvent", "saveServiceCopy", "requestData", "responseData"):
        if isinstance(get(key), str):
            need |= COERCE
    reason = get("reason")
    if isinstance(reason, dict) and isinstance(reason.get("reasonCode"), str):
        need |= COERCE
    initiator, target = get("initiator"), get("target")
    for part in (initiator, target):
        if isinstance(part, dict):
            for key in ("id", "name"):
                value = part.get(key)
                if isinstance(value, str) and value.strip() != value:
                    need |= TRIM
            value = part.get("typeURI")
            if isinstance(value, str):
                if value.strip() != value:
                    need |= TRIM | TYPE_URI
                elif value.startswith("/"):
                    need |= TYPE_URI
    if isinstance(initiator, dict):
        host = initiator.get("host")
        if isinstance(host, dict):
            value = host.get("address")
            if isinstance(value, str) and value.strip() != value:
                need |= TRIM
        credential = initiator.get("credential")
        if isinstance(credential, dict):
            value = credential.get("type")
            if isinstance(value, str) and value not in _CLEAN_ENUMS:
                need |= TRIM | CASEFOLD if value.strip() != value else CASEFOLD
    observer = get("observer")
    if isinstance(observer, dict):
        value = observer.get("name")
        if isinstance(value, str) and value.strip() != value:
            need |= TRIM
    return need


def _all_steps(event: Dict[str, Any]) -> int:
    return ALL_STEPS


class Normalizer:
    """The configured chain of steps. Build once; `normalize` runs per record.

    `fast_path` False runs every step on every event: the reference that the fast path
    (the eventTime step, and only the other steps `steps_needed` names) is tested against.
    """

    def __init__(self, *, fraction_digits: int = 3, derived_fields: Sequence[str] = DERIVED_FIELDS,
                 annotation_key: Optional[str] = "atnorm", record_fixes: bool = True,
                 aliases: Optional[Dict[str, str]] = None, fast_path: bool = True) -> None:
        unknown = set(derived_fields) - set(DERIVED_FIELDS)
        if unknown:
            raise ValueError(f"unknown derived fields: {', '.join(sorted(unknown))}")
        first: List[Step] = [_make_alias_step(aliases)] if aliases else []
        event_time = make_event_time_step(fraction_digits)
        # The chain for each set of needed steps, in the one order (trimming comes before the
        # steps that read trimmed values, the order of the fixes is the output's).
        self._chains: Tuple[Tuple[Step, ...], ...] = tuple(
            tuple(first + [step for bit, step in ((TRIM, trim_whitespace), (0, event_time), (COERCE, coerce_types),
                                                  (CASEFOLD, casefold_enums), (TYPE_URI, fix_type_uris))
                           if bit == 0 or needed & bit])
            for needed in range(ALL_STEPS + 1))
        self.steps: List[Step] = list(self._chains[ALL_STEPS])
        # Renamed keys would escape the test: with aliases, every step runs.
        self._needed: Callable[[Dict[str, Any]], int] = steps_needed if fast_path and not aliases else _all_steps
        self.derived_fields = tuple(derived_fields)
        self.annotation_key = annotation_key
        self.record_fixes = record_fixes
        # annotate(work, service, fixes): derived fields (and the fixes) under the annotation
        # key, if it is free; specialised to these settings here, not checked per record.
        self.annotate: Annotate = make_annotator(annotation_key, self.derived_fields, record_fixes)

    def normalize(self, event: Dict[str, Any], fixes: Fixes) -> Dict[str, Any]:
        """A normalized copy of `event`; the names of the changes are appended to `fixes`."""
        work = dict(event)
        for step in self._chains[self._needed(event)]:
            step(work, event, fixes)
        return work


Annotate = Callable[[Dict[str, Any], Optional[str], Fixes], None]


def _no_annotation(work: Dict[str, Any], service: Optional[str], fixes: Fixes) -> None:
    return None


def _no_derived_fields(work: Dict[str, Any], service: Optional[str]) -> Dict[str, Any]:
    return {}


def make_annotator(key: Optional[str], derived_fields: Sequence[str], record_fixes: bool) -> Annotate:
    """The annotate function for these settings: adds the derived fields (and the fixes)
    under `key` when the event does not use that key itself; `key` None adds nothing."""
    if key is None:
        return _no_annotation
    chosen = tuple(derived_fields)
    derived: Callable[[Dict[str, Any], Optional[str]], Dict[str, Any]]
    if not chosen:
        derived = _no_derived_fields
    elif set(chosen) == set(DERIVED_FIELDS):
        derived = derive  # a fresh dict
    else:
        def derived(work: Dict[str, Any], service: Optional[str]) -> Dict[str, Any]:
            annotation = derive(work, service)
            return {k: annotation[k] for k in chosen if k in annotation}

    if record_fixes:
        def annotate(work: Dict[str, Any], service: Optional[str], fixes: Fixes) -> None:
            if key in work:
                return
            annotation: Dict[str, Any] = derived(work, service)
            if fixes:
                annotation["fixes"] = list(fixes)
            if annotation:
                work[key] = annotation
    else:
        def annotate(work: Dict[str, Any], service: Optional[str], fixes: Fixes) -> None:
            if key in work:
                return
            annotation: Dict[str, Any] = derived(work, service)
            if annotation:
                work[key] = annotation
    return annotate


def _writable_parent(work: Dict[str, Any], path: Tuple[str, ...], create: bool) -> Optional[Dict[str, Any]]:
    """The dict holding `path[-1]`, copied along the way so the original stays untouched."""
    node = work
    for part in path[:-1]:
        child = node.get(part)
        if child is None and create:
            child = {}
        elif not isinstance(child, dict):
            return None
        else:
            child = dict(child)
        node[part] = child
        node = child
    return node


def _make_alias_step(aliases: Dict[str, str]) -> Step:
    """Rename source keys (dotted paths) to the model's names before validation."""
    pairs = [(tuple(src.split(".")), tuple(dst.split("."))) for src, dst in aliases.items()]

    def rename(work: Dict[str, Any], event: Dict[str, Any], fixes: Fixes) -> None:
        for src, dst in pairs:
            holder, _ = _get(work, src)
            if holder is None:
                continue
            source_parent = _writable_parent(work, src, create=False)
            if source_parent is None:
                continue
            value = source_parent.pop(src[-1])
            target_parent = _writable_parent(work, dst, create=True)
            if target_parent is None or dst[-1] in target_parent:
                source_parent[src[-1]] = value  # the model's own field wins; keep both
                continue
            target_parent[dst[-1]] = value
            fixes.append("alias:" + _pointer(src))
    return rename
