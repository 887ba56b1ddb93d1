"""`atnorm exec-filter`: the filter as a child of Fluentd's out_exec_filter.

Fluentd writes records to our stdin (JSON lines, a msgpack stream or TSV) and parses our
stdout back into events. There is no acknowledgement from the child, so this loop must
never die on bad input and must give exactly one output record per input record:

- accepted and passed records keep their tag (`--tag-key`), rejected ones get the tag plus
  `--rejected-tag-suffix` and the dead-letter form `{"original", "reasons"}`;
- input that cannot be read (bad JSON, invalid UTF-8, msgpack garbage, a TSV line with the
  wrong number of fields) becomes one rejected record saying why;
- each read from stdin is one batch: its outputs leave in one write, so a quiet period never
  leaves records waiting in our buffers;
- stderr stays silent (a chatty child has blocked pipelines before): diagnostics and the
  summary line at exit go to `--log-file`.

`--time-key KEY` carries the event time for Fluentd's `<extract> time_key`: accepted records
get the normalized eventTime (`2024-05-01T10:00:00.000+0000`, i.e. Fluentd
`time_type string`, `time_format %Y-%m-%dT%H:%M:%S.%N%z`); records that have no normalized
time keep the value that came in under that key, if any.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import select
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import msgpack

from .metrics import start_metrics_server
from .options import ConfigError, Option, add_arguments, boolean, host_port, load_config_file, resolve, text
from .reload import ReloadingFilter
from .settings import FILTER_OPTIONS, add_filter_arguments
from .stats import FilterStats
from .verdict import ACCEPTED, REJECTED, RejectReason, Verdict

# One os.read per batch; a pipe rarely holds more than 64 KiB, a file gives big batches.
READ_SIZE = 1 << 20
# How much of an unreadable input is quoted in a log line.
LOG_PREVIEW_BYTES = 32


def key_list(value: Any) -> List[str]:
    """`a,b,c` or a YAML list → `["a", "b", "c"]`."""
    items = value if isinstance(value, list) else str(value).split(",")
    keys = [text(item).strip() for item in items]
    if not keys or any(not key for key in keys):
        raise ValueError(f"expected a comma-separated list of keys, got {value!r}")
    return keys


OPTIONS = (
    Option("in_format", text, "json",
           "what Fluentd writes to stdin (its <format> @type)", choices=("json", "msgpack", "tsv"),
           metavar="json|msgpack|tsv"),
    Option("out_format", text, None,
           "what to write to stdout for Fluentd's <parse>; default: msgpack for msgpack input, "
           "json otherwise", choices=("json", "msgpack"), metavar="json|msgpack"),
    Option("tag_key", text, None,
           "record key that carries the tag (Fluentd <inject>/<extract> tag_key); removed before "
           "filtering, put back on every output record", metavar="KEY"),
    Option("rejected_tag_suffix", text, ".rejected",
           "appended to the tag of rejected records (needs tag_key)", metavar="SUFFIX"),
    Option("default_tag", text, "atnorm",
           "tag for records that arrive without one, and for input that cannot be parsed "
           "(needs tag_key)", metavar="TAG"),
    Option("time_key", text, None,
           "record key for the event time, for Fluentd's <extract> time_key with time_type "
           "string: the normalized eventTime (2024-05-01T10:00:00.000+0000) on accepted "
           "records, the incoming value otherwise", metavar="KEY"),
    Option("tsv_keys", key_list, None,
           "field names of the TSV columns, in order (required with in_format tsv)",
           metavar="K1,K2,..."),
    Option("log_file", text, None,
           "append diagnostics and the summary line at exit to FILE (stderr stays silent)",
           metavar="FILE"),
    Option("quiet", boolean, False,
           "write only the summary line at exit to the log file"),
    Option("metrics_listen", text, None,
           "serve Prometheus /metrics, /healthz and /readyz on HOST:PORT", metavar="HOST:PORT"),
    Option("drift_state", text, None,
           "keep the actions no table declares in this JSON file (read it with `atnorm drift --state`)",
           metavar="FILE"),
)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags for `atnorm exec-filter` and the shared filter options, plus `--config FILE`."""
    # `--quiet` is a switch, not `--quiet VALUE`; the config file takes `quiet: true`.
    add_arguments(parser, [option for option in OPTIONS if option.key != "quiet"])
    quiet = next(option for option in OPTIONS if option.key == "quiet")
    parser.add_argument(quiet.flag, dest=quiet.key, action="store_const", const=True,
                        default=None, help=quiet.help)
    add_filter_arguments(parser)
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file with the same keys as the flags (flags win)")


def load_settings(args: argparse.Namespace) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """(exec-filter settings, raw config file values): defaults < `--config` file < flags,
    checked for combinations that cannot work."""
    config_path = getattr(args, "config", None)
    file_values = (load_config_file(config_path, list(OPTIONS) + list(FILTER_OPTIONS))
                   if config_path else {})
    settings = resolve(OPTIONS, args, file_values)
    if settings["out_format"] is None:
        settings["out_format"] = "msgpack" if settings["in_format"] == "msgpack" else "json"
    if settings["in_format"] == "tsv":
        if not settings["tsv_keys"]:
            raise ConfigError("in_format tsv needs tsv_keys (the column names, in order)",
                              key="tsv_keys")
        if settings["tag_key"] and settings["tag_key"] not in settings["tsv_keys"]:
            raise ConfigError(f"tag_key {settings['tag_key']!r} is not one of the tsv_keys, so "
                              "no tag would ever arrive", key="tag_key")
    return settings, file_values


# --- one record in, one record out -------------------------------------------------------

_MISSING = object()


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

    def __init__(self, event_filter: Any, tag_key: Optional[str] = None,
                 rejected_tag_suffix: str = ".rejected", default_tag: str = "atnorm",
                 time_key: Optional[str] = None, log: Optional["DiagnosticLog"] = None) -> None:
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

    def _take_transport_keys(self, record: Any) -> Tuple[Any, Any]:
        tag: Any = None
        when: Any = _MISSING
        if self._transport_keys and type(record) is dict:
            if self._tag_key:
                tag = record.pop(self._tag_key, None)
            if self._time_key:
                when = record.pop(self._time_key, _MISSING)
        return tag, when

    def record(self, record: Any) -> Any:
        """A parsed input record → its output record."""
        tag, when = self._take_transport_keys(record)
        try:
            verdict = self._process(record)
        except Exception as exc:  # a filter bug must not take the whole stream down
            verdict = self._failed(record, exc)
        return self.shape(verdict, tag, when)

    def json_line(self, line: bytes) -> Any:
        """One JSON document (bytes) → its output record; unreadable ones are rejected."""
        if self._transport_keys and len(line) <= self.max_record_bytes:
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):
                pass  # the filter core words the reason below; the tag is unknowable
            else:
                return self.record(record)
        try:
            verdict = self._process_json(line)
        except Exception as exc:
            verdict = self._failed(line.decode("utf-8", "backslashreplace"), exc)
        return self.shape(verdict, None, _MISSING)

    def reject(self, record: Any, rule: str, message: str) -> Any:
        """A parsed record refused before filtering (e.g. too large) → its rejected output,
        under its own tag."""
        tag, when = self._take_transport_keys(record)
        verdict = input_rejected(record, rule, message)
        self.stats.count(verdict)
        return self.shape(verdict, tag, when)

    def unreadable(self, original: Any, rule: str, message: str) -> Any:
        """Input that is not a record at all → one counted, rejected output record."""
        verdict = input_rejected(original, rule, message)
        self.stats.count(verdict)
        return self.shape(verdict, None, _MISSING)

    def shape(self, verdict: Verdict, tag: Any, when: Any) -> Any:
        """The output of `verdict` with the transport keys put back."""
        out = verdict.output()
        if not self._transport_keys:
            return out
        if type(out) is not dict:
            # Only maps can carry a tag back to Fluentd.
            out = {"original": out, "reasons": []}
        if self._tag_key:
            if not isinstance(tag, str) or not tag:
                tag = self._default_tag
            out[self._tag_key] = tag + self._suffix if verdict.outcome == REJECTED else tag
        if self._time_key:
            if verdict.outcome == ACCEPTED and verdict.event_time is not None:
                out[self._time_key] = verdict.event_time
            elif when is not _MISSING:
                out[self._time_key] = when
        return out

    def _failed(self, original: Any, exc: Exception) -> Verdict:
        message = f"internal error while filtering: {type(exc).__name__}: {exc}"
        if self._log is not None:
            self._log.write(message)
        verdict = input_rejected(original, "internal.error", message)
        self.stats.count(verdict)
        return verdict


# --- readers: bytes from Fluentd → output records ------------------------------------------

class LineInput:
    """Splits a byte stream into lines, keeping a partial line across reads."""

    def __init__(self, router: RecordRouter) -> None:
        self.router = router
        self._parts: List[bytes] = []
        self._partial_size = 0
        self._oversize: Optional[bytes] = None  # head of a line being skipped for its size
        self._oversize_bytes = 0

    def line(self, line: bytes) -> Any:
        raise NotImplementedError

    def feed(self, chunk: bytes) -> List[Any]:
        """Outputs for every complete line in `chunk` (plus what was kept from before)."""
        newline = chunk.rfind(b"\n")
        if newline < 0:
            self._keep(chunk)
            return []
        head, rest = chunk[:newline], chunk[newline + 1:]
        outputs: List[Any] = []
        if self._oversize is not None:
            first, _, head = head.partition(b"\n")
            self._oversize_bytes += len(first)
            outputs.append(self._too_large())
        elif self._parts:
            self._parts.append(head)
            head = b"".join(self._parts)
            self._parts, self._partial_size = [], 0
        if head:
            line = self.line
            outputs.extend(line(item) for item in head.split(b"\n")
                           if item and not item.isspace())
        self._keep(rest)
        return outputs

    def close(self) -> List[Any]:
        """Outputs for what is left when the input ends (a last line without newline)."""
        if self._oversize is not None:
            return [self._too_large()]
        data = b"".join(self._parts)
        self._parts, self._partial_size = [], 0
        if not data or data.isspace():
            return []
        return [self.line(data)]

    def _keep(self, data: bytes) -> None:
        if not data:
            return
        if self._oversize is not None:
            self._oversize_bytes += len(data)
            return
        self._parts.append(data)
        self._partial_size += len(data)
        if self._partial_size > self.router.max_record_bytes:
            joined = b"".join(self._parts)
            self._oversize, self._oversize_bytes = joined[:1024], len(joined)
            self._parts, self._partial_size = [], 0

    def _too_large(self) -> Any:
        head, size = self._oversize or b"", self._oversize_bytes
        self._oversize, self._oversize_bytes = None, 0
        return self.router.unreadable(
            head.decode("utf-8", "backslashreplace"), "record.size",
            f"record of {size} bytes is over the {self.router.max_record_bytes}-byte limit; "
            "original holds its first 1024 bytes")


class JsonLinesInput(LineInput):
    """Fluentd `<format> @type json`: one JSON object per line."""

    def __init__(self, router: RecordRouter) -> None:
        super().__init__(router)
        self.line = router.json_line  # type: ignore[assignment]


class TsvInput(LineInput):
    """Fluentd `<format> @type tsv`: values of `keys`, tab-separated, as strings."""

    def __init__(self, router: RecordRouter, keys: Sequence[str]) -> None:
        super().__init__(router)
        self._keys = list(keys)

    def line(self, line: bytes) -> Any:
        if len(line) > self.router.max_record_bytes:
            return self.router.unreadable(
                line[:1024].decode("utf-8", "backslashreplace"), "record.size",
                f"record of {len(line)} bytes is over the {self.router.max_record_bytes}-byte "
                "limit; original holds its first 1024 bytes")
        fields = line.rstrip(b"\r").split(b"\t")
        if len(fields) != len(self._keys):
            return self.router.unreadable(
                line.decode("utf-8", "backslashreplace"), "input.tsv",
                f"expected {len(self._keys)} tab-separated fields "
                f"({','.join(self._keys)}), got {len(fields)}")
        try:
            values = [field.decode("utf-8") for field in fields]
        except UnicodeDecodeError as exc:
            return self.router.unreadable(
                line.decode("utf-8", "backslashreplace"), "input.tsv",
                f"not valid UTF-8: {exc.reason} at byte {exc.start}")
        return self.router.record(dict(zip(self._keys, values)))


# Bytes that open a msgpack map (fixmap, map16, map32): where a record can start.
_MAP_START = re.compile(rb"[\x80-\x8f\xde\xdf]")
# Candidate resync points tried before the rest of what was read is given up as garbage.
RESYNC_TRIES = 4096
_RESYNC_STEP = 4096


def resync_offset(data: bytes, required_key: Optional[str] = None) -> Optional[int]:
    """The first offset after 0 in `data` where a record plausibly starts, or None.

    Plausible: a map with text keys only (and `required_key` among them, when given: the
    tag Fluentd injects into every record), complete, or cut off by the end of `data`
    without a decoding error so far.
    """
    view = memoryview(data)
    for tries, match in enumerate(_MAP_START.finditer(data, 1)):
        if tries >= RESYNC_TRIES:
            return None
        if _record_starts_at(view, match.start(), required_key):
            return match.start()
    return None


def _record_starts_at(view: memoryview, offset: int, required_key: Optional[str]) -> bool:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
    position = offset
    while True:
        if position >= len(view):
            return True  # cut off by the end of what was read: plausible so far
        unpacker.feed(view[position:position + _RESYNC_STEP])
        position += _RESYNC_STEP
        try:
            obj = unpacker.unpack()
        except msgpack.OutOfData:
            continue
        except Exception:  # a decoding error: not a record boundary
            return False
        return (type(obj) is dict and len(obj) > 0
                and all(type(key) is str for key in obj)
                and (required_key is None or required_key in obj))


def _describe(exc: Optional[BaseException]) -> str:
    text_of = str(exc)
    name = type(exc).__name__
    return f"{name}: {text_of}" if text_of else f"{name}: invalid byte"


class MsgpackInput:
    """Fluentd `<format> @type msgpack`: a stream of msgpack maps, split anywhere.

    Recovery when the object starting at stream offset P cannot be decoded:
    - if it is well-framed but not decodable as text (invalid UTF-8 in a string, an
      unhashable map key), it is read again without text decoding and rejected alone;
    - otherwise the bytes from P up to the next offset where a record plausibly starts
      (`resync_offset`; else up to the end of what was read) become one rejected record,
      their bytes its original, and decoding resumes there.
    The bytes from the last good object on are kept so either step can re-read them.
    """

    def __init__(self, router: RecordRouter, keep_raw: Callable[[Any], Any],
                 log: Optional["DiagnosticLog"] = None) -> None:
        self.router = router
        self._keep_raw = keep_raw
        self._log = log
        self._limit = router.max_record_bytes
        self._chunks: List[bytes] = []   # unconsumed input, starting at _chunks_start
        self._chunks_start = 0
        self._fed = 0                    # stream offset of the end of the input so far
        self._raw = False                # re-reading one object without text decoding
        self._raw_error: Optional[BaseException] = None
        self._base = 0                   # stream offset where the current unpacker starts
        # Stream offset where the next object starts (the unpacker's tell() runs ahead
        # into an object that is still incomplete).
        self._next = 0
        self._unpacker = self._new_unpacker(raw=False)

    def _new_unpacker(self, raw: bool) -> msgpack.Unpacker:
        # Room for one record at the size limit plus the read that completes it.
        return msgpack.Unpacker(raw=raw, strict_map_key=False,
                                max_buffer_size=2 * self._limit + READ_SIZE)

    def feed(self, chunk: bytes) -> List[Any]:
        """Outputs for every complete object in `chunk` (plus what was kept from before)."""
        self._chunks.append(chunk)
        self._fed += len(chunk)
        outputs: List[Any] = []
        try:
            self._unpacker.feed(chunk)
        except msgpack.BufferFull:
            outputs.append(self._reject_bytes(self._next, self._fed,
                                              "an object over the size limit"))
            self._restart(self._fed, raw=False)
            return outputs
        self._drain(outputs)
        return outputs

    def close(self) -> List[Any]:
        """At end of input, the bytes of an unfinished object become one rejected record."""
        if self._next >= self._fed:
            return []
        return [self._reject_bytes(self._next, self._fed, "input ended inside an object")]

    def _drain(self, outputs: List[Any]) -> None:
        unpacker = self._unpacker
        route = self.router.record
        start = self._next
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                break
            except Exception as exc:  # any decoding failure is the peer's garbage
                if self._raw:
                    end = self._garbage_end(start)
                    outputs.append(self._reject_bytes(start, end, _describe(exc)))
                    self._restart(end, raw=False)
                else:
                    self._restart(start, raw=True)
                    self._raw_error = exc
                unpacker = self._unpacker
                start = self._next
                continue
            end = self._base + unpacker.tell()
            if self._raw:
                outputs.append(self._undecodable(obj, end - start))
                self._restart(end, raw=False)
                unpacker = self._unpacker
            elif end - start > self._limit:
                outputs.append(self.router.reject(
                    obj, "record.size",
                    f"record of {end - start} bytes is over the {self._limit}-byte limit"))
            else:
                outputs.append(route(obj))
            start = self._next = end
        self._trim(start)

    def _pending(self, offset: int) -> bytes:
        """The input kept from stream `offset` on."""
        self._trim(offset)
        return b"".join(self._chunks)[offset - self._chunks_start:]

    def _restart(self, offset: int, raw: bool) -> None:
        """Decode again from stream `offset` with a fresh unpacker."""
        unpacker = self._new_unpacker(raw)
        pending = self._pending(offset)
        if pending:
            unpacker.feed(pending)
        self._unpacker, self._raw, self._base, self._next = unpacker, raw, offset, offset

    def _trim(self, offset: int) -> None:
        """Forget input chunks that end before `offset`."""
        while self._chunks and self._chunks_start + len(self._chunks[0]) <= offset:
            self._chunks_start += len(self._chunks.pop(0))

    def _garbage_end(self, start: int) -> int:
        """Where records start again after garbage at `start` (else the end of the input)."""
        skip = resync_offset(self._pending(start), self.router.tag_key)
        return self._fed if skip is None else start + skip

    def _undecodable(self, raw_obj: Any, size: int) -> Any:
        exc = self._raw_error
        message = (f"msgpack object of {size} bytes cannot be decoded as a record "
                   f"({_describe(exc)}); original holds it with strings undecoded")
        if self._log is not None:
            self._log.write(message)
        return self.router.unreadable(self._keep_raw(raw_obj), "input.msgpack", message)

    def _reject_bytes(self, start: int, end: int, why: str) -> Any:
        """The input bytes from `start` to `end` as one rejected record."""
        data = self._pending(start)[:end - start]
        message = f"{len(data)} bytes at input offset {start} are not a msgpack record ({why})"
        if self._log is not None:
            self._log.write(f"{message}; first bytes: {data[:LOG_PREVIEW_BYTES].hex()}")
        return self.router.unreadable(self._keep_raw(data), "input.msgpack", message)


RecordInput = Union[JsonLinesInput, TsvInput, MsgpackInput]


# --- writers: output records → bytes for Fluentd --------------------------------------------

_INT_RANGE = (-(1 << 63), (1 << 64) - 1)


def printable(value: Any) -> Any:
    """A copy of `value` that any JSON or msgpack encoder takes: text keys, finite numbers,
    bytes and odd types as text. Used only when a record does not encode as it is."""
    if isinstance(value, dict):
        return {_printable_key(k): printable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if _INT_RANGE[0] <= value <= _INT_RANGE[1] else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, msgpack.ExtType):
        return {"ext_type": value.code, "data": value.data.hex()}
    return str(value)


def _printable_key(key: Any) -> str:
    value = printable(key)
    return value if isinstance(value, str) else json.dumps(value)


def _keep_bytes(value: Any) -> Any:
    # msgpack output carries bytes as bin, so raw originals stay byte for byte.
    return value


def json_encoder() -> Callable[[List[Any]], bytes]:
    """Output records → JSON lines (ASCII, so any string encodes)."""
    dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode

    def encode(outputs: List[Any]) -> bytes:
        try:
            text_out = "\n".join(map(dumps, outputs))
        except (TypeError, ValueError, RecursionError):
            text_out = "\n".join(_one_json(dumps, output) for output in outputs)
        return (text_out + "\n").encode("ascii")

    return encode


def _one_json(dumps: Callable[[Any], str], output: Any) -> str:
    try:
        return dumps(output)
    except (TypeError, ValueError, RecursionError):
        try:
            return dumps(printable(output))
        except RecursionError:
            return dumps(_too_deep(output))


def _too_deep(output: Any) -> Dict[str, Any]:
    # Last resort, for nesting deeper than the interpreter can walk: still one record out.
    return {"original": repr(output)[:65536], "reasons": [
        {"path": "", "rule": "output.encode", "message": "record nested too deeply to encode"}]}


def msgpack_encoder() -> Callable[[List[Any]], bytes]:
    """Output records → a msgpack stream."""
    pack = msgpack.Packer(use_bin_type=True).pack

    def encode(outputs: List[Any]) -> bytes:
        parts = []
        for output in outputs:
            try:
                parts.append(pack(output))
            except (TypeError, ValueError, OverflowError, RecursionError):
                try:
                    parts.append(pack(printable(output)))
                except RecursionError:
                    parts.append(pack(_too_deep(output)))
        return b"".join(parts)

    return encode


# --- diagnostics ----------------------------------------------------------------------------

class DiagnosticLog:
    """Appends timestamped lines to the log file; silent without one (stderr stays quiet).

    Opened in append mode and never truncated, so a child respawned by Fluentd, or several
    children (`num_children`), share the file safely.
    """

    def __init__(self, path: Optional[str], quiet: bool = False) -> None:
        self._quiet = quiet
        self._handle = None
        if path:
            try:
                self._handle = open(path, "a", encoding="utf-8", buffering=1)
            except OSError as exc:
                raise ConfigError(f"cannot open for appending: {exc.strerror}", file=path,
                                  key="log_file") from None

    def write(self, message: str) -> None:
        """A diagnostic line (dropped with `--quiet`)."""
        if not self._quiet:
            self._line(message)

    def summary(self, message: str) -> None:
        """The line written at exit, even with `--quiet`."""
        self._line(message)

    def _line(self, message: str) -> None:
        if self._handle is None:
            return
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            self._handle.write(f"{stamp} atnorm exec-filter[{os.getpid()}]: {message}\n")
        except (OSError, ValueError):
            pass  # a full disk must not stop the records

    def close(self) -> None:
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError:
                pass


# --- the loop ---------------------------------------------------------------------------------

class StopSignal:
    """Turns SIGTERM/SIGINT into a readable wake-up fd, so a blocked wait ends at once
    while a batch in progress still finishes and is written."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self.wakeup_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        os.set_blocking(self.wakeup_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in self.SIGNALS}

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.received = signum

    def drain(self) -> None:
        """Empty the wake-up pipe (so a stray byte cannot keep waking the loop)."""
        try:
            while os.read(self.wakeup_fd, 512):
                pass
        except BlockingIOError:
            pass

    def close(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self.wakeup_fd)
        os.close(self._write_fd)


def write_all(fd: int, data: bytes) -> None:
    """Write every byte (a pipe may take fewer than asked, or be non-blocking)."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[written:]


def pump(reader: RecordInput, encode: Callable[[List[Any]], bytes], in_fd: int, out_fd: int,
         stop: StopSignal) -> str:
    """Read batches until EOF or a stop signal; returns `"eof"` or `"signal"`.

    Each read is one batch: all complete records in it are filtered and their outputs
    leave in one write, so nothing waits in our buffers when Fluentd goes quiet.
    """
    watched = [in_fd, stop.wakeup_fd]
    while True:
        if stop.received is not None:
            how = "signal"
            break
        ready, _, _ = select.select(watched, [], [])
        if stop.received is not None:
            how = "signal"
            break
        if in_fd not in ready:
            stop.drain()
            continue
        try:
            chunk = os.read(in_fd, READ_SIZE)
        except BlockingIOError:  # stdin inherited in non-blocking mode
            continue
        if not chunk:
            how = "eof"
            break
        outputs = reader.feed(chunk)
        if outputs:
            write_all(out_fd, encode(outputs))
    outputs = reader.close()
    if outputs:
        write_all(out_fd, encode(outputs))
    return how


def build_reader(settings: Dict[str, Any], router: RecordRouter,
                 log: Optional[DiagnosticLog] = None) -> RecordInput:
    """The input decoder named by `in_format`."""
    if settings["in_format"] == "msgpack":
        keep = _keep_bytes if settings["out_format"] == "msgpack" else printable
        return MsgpackInput(router, keep, log)
    if settings["in_format"] == "tsv":
        return TsvInput(router, settings["tsv_keys"])
    return JsonLinesInput(router)


def run(args: argparse.Namespace) -> int:
    """Filter stdin to stdout until EOF or SIGTERM; exit 0 after writing what was read."""
    settings, file_values = load_settings(args)
    log = DiagnosticLog(settings["log_file"], settings["quiet"])
    metrics = None
    event_filter = None
    try:
        # The holder swaps in a rebuilt filter on SIGHUP or a tuning-file change, between
        # records; its one FilterStats is what monitoring reads.
        event_filter = ReloadingFilter.from_args(args, file_values, log=log.write,
                                                 drift_state=settings["drift_state"])
        if getattr(args, "tuning", None) or file_values.get("tuning"):
            event_filter.install_sighup()
            event_filter.start_watching()
        if settings["metrics_listen"]:
            metrics = start_metrics_server(host_port(settings["metrics_listen"]), event_filter.stats,
                                           schemas_loaded=lambda: len(event_filter.rules.services),
                                           reload_counts=event_filter)
        router = RecordRouter(event_filter, settings["tag_key"], settings["rejected_tag_suffix"],
                              settings["default_tag"], settings["time_key"], log)
        reader = build_reader(settings, router, log)
        encode = msgpack_encoder() if settings["out_format"] == "msgpack" else json_encoder()
        log.write(f"started: {settings['in_format']} in, {settings['out_format']} out")
        stop = StopSignal()
        try:
            how = pump(reader, encode, sys.stdin.fileno(), sys.stdout.fileno(), stop)
        except BrokenPipeError:
            how = "stdout closed"
        finally:
            stop.close()
        if how == "signal" and stop.received is not None:
            how = signal.Signals(stop.received).name
        log.summary(f"stopped on {how}: {router.stats.summary_line()}")
    finally:
        if metrics is not None:
            metrics.stop()
        if event_filter is not None:
            event_filter.close()
        log.close()
    return 0
