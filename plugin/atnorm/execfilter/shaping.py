"""One record in, one record out: the tag and time keys, the filter's verdict, the output record Fluentd routes."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import msgpack
import msgspec

from ..core.interfaces import Filter
from ..core.stats import FilterStats
from ..model.encodable import is_encodable, json_text
from ..model.jsoncodec import compact_json, loads_plain
from ..model.packed import map_count, map_header
from ..model.verdict import ACCEPTED, REJECTED, RejectReason, Verdict
from .diagnostics import DiagnosticLog

_MISSING = object()


class EncodedOutput:
    """An output record already written as its JSON text (compact, strict, one line):
    what `OutputEncoder` would write for it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class PackedOutput:
    """An output record already packed as msgpack: what `OutputEncoder` would write for it."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


# msgspec (C) packs JSON's types (str keys) byte for byte as msgpack-python's Packer with
# use_bin_type does, in about half the time (`tests/test_pack_differential.py`).
_pack_json_types = msgspec.msgpack.Encoder().encode
_json_of_text = msgspec.json.Encoder().encode
# float64's header: msgspec packs every float so, so a packed record without this byte has none.
_FLOAT64 = b"\xcb"


def _appended_pairs(record: Dict[Any, Any], transport: List[Tuple[str, Any]], encode: Callable[[str, Any], Any],
                    errors: Tuple[Type[Exception], ...]) -> Optional[List[Any]]:
    """Each transport (key, value) encoded for appending after `record`'s own pairs; None
    where appending would not give what putting them on the dict gives: a key the record
    has already (it is put in its place, not at the end), a value `encode` refuses."""
    parts = []
    for key, value in transport:
        if key in record:
            return None
        try:
            parts.append(encode(key, value))
        except errors:
            return None
    return parts


def _pop_text_key(record: Dict[Any, Any], key: str, default: Any) -> Any:
    """Take `key` off `record`, whether it arrived as str or as bin (bytes)."""
    if key in record:
        return record.pop(key)
    return record.pop(key.encode("utf-8"), default)


def _utf8_or_none(value: bytes) -> Optional[str]:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def input_rejected(original: Any, rule: str, message: str) -> Verdict:
    """A rejected verdict for input that could not be read as a record at all."""
    return Verdict(REJECTED, original, reasons=[RejectReason(path="", rule=rule, message=message)])


class RecordRouter:
    """Filters one input record and shapes the output record Fluentd will route.

    The tag and time keys are transport, not event: they are taken off before filtering
    and put back on the output. An exception inside the filter becomes a rejected record
    (and a log line) instead of a dead child, since a dying child loses every record in
    flight.
    """

    def __init__(self, event_filter: Filter, tag_key: Optional[str] = None,
                 rejected_tag_suffix: str = ".rejected", default_tag: str = "atnorm",
                 time_key: Optional[str] = None, log: Optional["DiagnosticLog"] = None,
                 json_out: bool = False, msgpack_out: bool = False) -> None:
        self.event_filter = event_filter
        self.stats: FilterStats = event_filter.stats
        self.max_record_bytes: int = event_filter.settings.max_record_bytes
        self.tag_key = self._tag_key = tag_key
        self._suffix = rejected_tag_suffix
        self._default_tag = default_tag
        self._time_key = time_key
        self._transport_keys = bool(tag_key or time_key)
        self._log = log
        self._process = event_filter.process
        self._process_json = event_filter.process_json
        self._process_decoded_json = event_filter.process_decoded_json
        self._process_text = event_filter.process_text
        # With JSON out, an accepted or passed record whose JSON line the filter made
        # (`Verdict.json_line`) leaves as that line, the transport keys appended to it,
        # instead of being written again (`EncodedOutput`). Not when both keys are one.
        distinct_keys = not (tag_key and tag_key == time_key)
        self._reuse_lines = json_out and distinct_keys
        # With msgpack out, the same for the record the filter packed (`Verdict.packed`,
        # a record decoded as text): its bytes, the map header counting the keys appended.
        self._reuse_packed = msgpack_out and distinct_keys
        self._msgpack_out = msgpack_out
        self._pack = msgpack.Packer(use_bin_type=True).pack  # as OutputEncoder packs
        self._dumps = compact_json()
        self._outcomes: List[str] = []  # outcome of each output shaped since the last take

    def take_outcomes(self) -> List[str]:
        """The outcomes of the outputs shaped since the last call, in order."""
        outcomes, self._outcomes = self._outcomes, []
        return outcomes

    def _take_transport_keys(self, record: Any) -> Tuple[Any, Any]:
        tag: Any = None
        when: Any = _MISSING
        if self._transport_keys and type(record) is dict:
            # msgpack from Fluentd's ltsv/none parsers carries text as bin: the keys and
            # the tag may arrive as bytes.
            if self._tag_key:
                tag = _pop_text_key(record, self._tag_key, None)
                if type(tag) is bytes:
                    tag = _utf8_or_none(tag)
            if self._time_key:
                when = _pop_text_key(record, self._time_key, _MISSING)
                if type(when) is bytes:
                    when = _utf8_or_none(when) or when
        return tag, when

    def record(self, record: Any) -> Any:
        """A parsed input record → its output record."""
        return self._decided(record, self._process)

    def record_text(self, record: Any) -> Any:
        """`record` for a parsed record known to be text as it is (`codec.text_object`)."""
        return self._decided(record, self._process_text)

    def _decided(self, record: Any, decide: Callable[..., Verdict], *args: Any) -> Any:
        """The output of `decide(record, *args)`, the transport keys taken off before and
        put back after."""
        tag, when = self._take_transport_keys(record)
        try:
            return self.shape(decide(record, *args), tag, when)
        except Exception as exc:  # a filter bug must not take the whole stream down
            return self.shape(self._failed(record, exc), tag, when)

    def json_line(self, line: bytes) -> Any:
        """One JSON document (bytes) → its output record; unreadable ones are rejected."""
        if self._transport_keys and len(line) <= self.max_record_bytes:
            try:
                record, plain = loads_plain(line)
            except (ValueError, RecursionError):
                pass  # the filter core words the reason below; the tag is unknowable
            else:
                return self._decided(record, self._process_decoded_json, plain)
        try:
            return self.shape(self._process_json(line), None, _MISSING)
        except Exception as exc:
            return self.shape(self._failed(line.decode("utf-8", "backslashreplace"), exc),
                              None, _MISSING)

    def reject(self, record: Any, rule: str, message: str, unwrap: Optional[str] = None) -> Any:
        """A parsed record refused before filtering (e.g. too large) → its rejected output,
        under its own tag. With `unwrap`, the original is `record[unwrap]` (what is left
        once the transport keys are taken)."""
        tag, when = self._take_transport_keys(record)
        verdict = input_rejected(record[unwrap] if unwrap else record, rule, message)
        self.stats.count(verdict)
        return self.shape(verdict, tag, when)

    def unreadable(self, original: Any, rule: str, message: str) -> Any:
        """Input that is not a record at all → one counted, rejected output record."""
        verdict = input_rejected(original, rule, message)
        self.stats.count(verdict)
        return self.shape(verdict, None, _MISSING)

    def shape(self, verdict: Verdict, tag: Any, when: Any) -> Any:
        """The output of `verdict` with the transport keys put back."""
        self._outcomes.append(verdict.outcome)
        transport = self._transport_values(verdict, tag, when) if self._transport_keys else []
        if self._reuse_lines and verdict.outcome != REJECTED:
            if verdict.json_line is None and verdict.packed is not None and _FLOAT64 not in verdict.packed:
                # Decided as text and packed without a float: JSON's types, which msgspec
                # writes as the writer does (`encodable.plain_json_line`).
                verdict.json_line = _json_of_text(verdict.record).decode("utf-8")
            encoded = self._line_with(verdict, transport)
            if encoded is not None:
                return encoded
        elif self._reuse_packed and verdict.outcome != REJECTED and verdict.packed is not None:
            packed = self._packed_with(verdict, verdict.packed, transport)
            if packed is not None:
                return packed
        out = verdict.output()
        if transport:
            if type(out) is not dict:
                # Only maps can carry a tag back to Fluentd.
                out = {"original": out, "reasons": []}
            for key, value in transport:
                out[key] = value
        if self._msgpack_out and verdict.json_line is not None and verdict.outcome != REJECTED:
            # Read from JSON text and found writable: JSON's types only, as are the
            # transport keys read with it, which msgspec packs as msgpack-python does.
            try:
                return PackedOutput(_pack_json_types(out))
            except Exception:  # a lone surrogate in a transport value: the writer decides
                pass
        return out

    def _transport_values(self, verdict: Verdict, tag: Any, when: Any) -> List[Tuple[str, Any]]:
        """(key, value) of the transport keys to put on the output, in order: the tag
        (the default one if it had none, with the suffix if rejected), and the time (the
        normalized eventTime if accepted, else the time as received, if any)."""
        values: List[Tuple[str, Any]] = []
        if self._tag_key:
            if not isinstance(tag, str) or not tag:
                tag = self._default_tag
            values.append((self._tag_key, tag + self._suffix if verdict.outcome == REJECTED else tag))
        if self._time_key:
            if verdict.outcome == ACCEPTED and verdict.event_time is not None:
                values.append((self._time_key, verdict.event_time))
            elif when is not _MISSING:
                values.append((self._time_key, when))
        return values

    def _line_with(self, verdict: Verdict, transport: List[Tuple[str, Any]]) -> Optional[EncodedOutput]:
        """The verdict's JSON line with the transport keys added at the end, as the dict
        with them put on would be written; None where it would not be the same text (a key
        the record has already, a value strict JSON or UTF-8 cannot hold)."""
        line = verdict.json_line
        record = verdict.record
        if line is None or type(record) is not dict:
            return None
        if not transport:
            return EncodedOutput(line)
        dumps = self._dumps
        parts = _appended_pairs(record, transport, lambda key, value: dumps(key) + ":" + dumps(value),
                                (ValueError, TypeError, RecursionError))
        if parts is None:
            return None
        added = ",".join(parts)
        if not is_encodable(added):  # a lone surrogate: strict UTF-8 cannot hold it
            return None
        return EncodedOutput(line[:-1] + ("," if record else "") + added + "}")

    def _packed_with(self, verdict: Verdict, data: bytes,
                     transport: List[Tuple[str, Any]]) -> Optional[PackedOutput]:
        """The verdict's packed record with the transport keys added at the end, as the
        dict with them put on would be packed; None where it would not be the same bytes
        (a key the record has already, a value the packer refuses)."""
        record = verdict.record
        if type(record) is not dict:
            return None
        if not transport:
            return PackedOutput(data)
        count, header = map_count(data)
        if count != len(record):
            return None
        pack = self._pack
        # What the packer refuses, the encoder's own fallback handles.
        parts = _appended_pairs(record, transport, lambda key, value: pack(key) + pack(value), (Exception,))
        if parts is None:
            return None
        return PackedOutput(map_header(count + len(parts)) + data[header:] + b"".join(parts))

    def encode_failed(self, output: Any, outcome: Optional[str], exc: Exception) -> Any:
        """An output that cannot be encoded at all → a rejected record whose original is
        the output (without transport keys) as JSON text; counted as a rejection."""
        tag: Any = None
        when: Any = _MISSING
        if type(output) is dict and self._transport_keys:
            output = dict(output)
            tag = output.pop(self._tag_key, None) if self._tag_key else None
            if self._time_key:
                when = output.pop(self._time_key, _MISSING)
            if outcome == REJECTED and isinstance(tag, str) and tag.endswith(self._suffix):
                tag = tag[:-len(self._suffix)] if self._suffix else tag
        if type(output) is dict and outcome == REJECTED and "original" in output:
            output = output["original"]
        message = (f"internal error while encoding the output: {type(exc).__name__}: {exc}; "
                   "original holds the record as JSON text")
        if self._log is not None:
            self._log.write(message, problem=True)
        verdict = input_rejected(json_text(output, self.max_record_bytes), "internal.error", message)
        if outcome is not None and outcome != REJECTED:
            # It was counted under its first outcome; it leaves as a rejection.
            self.stats.outcomes[outcome] -= 1
            self.stats.outcomes[REJECTED] += 1
            self.stats.rejections[("internal.error", "")] += 1
        out = self.shape(verdict, tag if isinstance(tag, str) else None,
                         when if isinstance(when, str) else _MISSING)
        self._outcomes.pop()
        return out

    def _failed(self, original: Any, exc: Exception) -> Verdict:
        message = f"internal error while filtering: {type(exc).__name__}: {exc}"
        if self._log is not None:
            self._log.write(message, problem=True)
        verdict = input_rejected(original, "internal.error", message)
        self.stats.count(verdict)
        return verdict
