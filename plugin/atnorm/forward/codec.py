"""Fluent Forward protocol v1 as data: frames in, chunks out; entries, acks and handshake out.

No sockets and no logging here, so the server (`forward_server`) and the sender share one
byte-exact encoding. Strings are decoded with ``surrogateescape``: a str that is not valid
UTF-8 (Fluentd writes gzip payloads as str32) survives decoding and re-encoding byte for
byte, and the packers below use the same error handler to restore the original bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import struct
import time as _time
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, Hashable, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import msgpack
import msgspec

from ..model.encodable import key_pointer_part
from ..model.packed import BIN_HEADERS, CONTAINER_HEADERS, bin_header

try:  # optional: only needed when a sender compresses with zstd
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None  # type: ignore[assignment]

EVENT_TIME_EXT_CODE = 0
_EVENT_TIME = struct.Struct(">II")

MESSAGE = "message"
FORWARD = "forward"
PACKED_FORWARD = "packed_forward"
COMPRESSED_PACKED_FORWARD = "compressed_packed_forward"

# One place for the decoding rules every unpacker in this module follows.
_UNPACK_OPTIONS: Dict[str, Any] = {
    "raw": False,
    "unicode_errors": "surrogateescape",
    "strict_map_key": False,
}


class ProtocolError(Exception):
    """A peer broke the protocol. `kind` is the label it is counted under in RelayStats."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> Tuple[Any, Tuple[str, str]]:
        # Raised in a filter worker, it is pickled back: by default unpickling would call
        # ProtocolError(message) and fail, which breaks the whole worker pool.
        return ProtocolError, (self.kind, str(self))


class EventTime:
    """Fluentd EventTime (msgpack ext type 0): whole seconds plus nanoseconds."""

    __slots__ = ("seconds", "nanoseconds")

    def __init__(self, seconds: int, nanoseconds: int = 0) -> None:
        self.seconds = seconds
        self.nanoseconds = nanoseconds

    @classmethod
    def now(cls) -> "EventTime":
        """The current wall-clock time."""
        seconds, nanoseconds = divmod(_time.time_ns(), 1_000_000_000)
        return cls(seconds, nanoseconds)

    def to_float(self) -> float:
        """Seconds since the epoch as a float (loses sub-microsecond precision)."""
        return self.seconds + self.nanoseconds / 1e9

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventTime):
            return NotImplemented
        return self.seconds == other.seconds and self.nanoseconds == other.nanoseconds

    def __hash__(self) -> int:
        return hash((self.seconds, self.nanoseconds))

    def __repr__(self) -> str:
        return f"EventTime({self.seconds}, {self.nanoseconds})"


Time = Union[int, float, EventTime]


def encode_event_time(seconds: int, nanoseconds: int = 0) -> msgpack.ExtType:
    """EventTime as the msgpack ext value a Fluentd peer expects (packs as fixext8 `d7 00`)."""
    return msgpack.ExtType(EVENT_TIME_EXT_CODE, _EVENT_TIME.pack(seconds, nanoseconds))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == EVENT_TIME_EXT_CODE and len(data) == 8:
        return EventTime(*_EVENT_TIME.unpack(data))
    return msgpack.ExtType(code, data)


def _pack_default(value: Any) -> Any:
    if isinstance(value, EventTime):
        return msgpack.ExtType(EVENT_TIME_EXT_CODE, _EVENT_TIME.pack(value.seconds, value.nanoseconds))
    raise TypeError(f"cannot pack {type(value).__name__} as msgpack")


def _packer(unicode_errors: Optional[str] = "surrogateescape") -> msgpack.Packer:
    return msgpack.Packer(use_bin_type=True, unicode_errors=unicode_errors, default=_pack_default,
                          autoreset=False)


def packb(value: Any) -> bytes:
    """msgpack with the protocol's rules: bytes as bin, str as str (original bytes kept), EventTime as ext 0."""
    return msgpack.packb(value, use_bin_type=True, unicode_errors="surrogateescape", default=_pack_default)


def unpackb(data: bytes) -> Any:
    """Decode one msgpack object with the same rules the server uses (EventTime, surrogateescape)."""
    return msgpack.unpackb(data, ext_hook=_ext_hook, **_UNPACK_OPTIONS)


def as_bytes(value: Union[str, bytes]) -> bytes:
    """The wire bytes of a msgpack str or bin value (a str decoded here keeps its original bytes)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise TypeError(f"expected str or bytes, got {type(value).__name__}")


class EntryProblem(NamedTuple):
    """Why an entry cannot be handed on as an event: `rule` (`entry.shape`, `entry.time` or
    `entry.record`), `path` (a JSON pointer into the entry as received) and a message.
    `raw` holds the entry's bytes as received when Python cannot hold it as it is (a map
    keyed by a map or an array): it is packed again as those bytes."""

    rule: str
    path: str
    message: str
    raw: Optional[bytes] = None


class Entry(NamedTuple):
    """One event. `time` keeps the form it arrived in (int seconds, float, or EventTime);
    `metadata` is the map of Fluent Bit's `[[time, metadata], record]` form, else None.

    An entry that arrived but cannot be an event (no usable time, not `[time, record]`, a
    record that is not a map) is kept too, so that it is decided like every other one: then
    `problem` says why, `record` is the entry exactly as received, and `time` is the
    arrival time. The router sends such an entry to the rejected route."""

    time: Time
    record: Any
    metadata: Optional[Dict[Any, Any]] = None
    problem: Optional[EntryProblem] = None


@dataclass
class Chunk:
    """The events of one frame. `chunk_id` is the `chunk` option exactly as received
    (str stays str, bytes stay bytes) so the ack can echo it; None when no ack is wanted.

    A verbatim chunk (see `scan_packed`) carries its PackedForward payload as received
    (decompressed) in `verbatim` and `verbatim_count` entries; its `entries` are decoded
    only when first asked for, so a relay that hands the payload on never decodes it."""

    tag: str
    decoded: Optional[List[Entry]]  # None: a verbatim chunk not decoded yet
    chunk_id: Any = None
    mode: str = FORWARD
    peer: str = ""
    options: Dict[Any, Any] = field(default_factory=dict)
    invalid: int = 0  # entries kept with a `problem` (no usable time or shape): they go to the rejected route
    digest: Optional[bytes] = None  # of the chunk's content as received (entries or payload), when it has an id
    # the payload, when every entry can be handed on byte for byte (or, scanned for a
    # handler that decodes it elsewhere, decoded there as here: see scan_packed)
    verbatim: Optional[bytes] = None
    verbatim_count: int = 0
    # the payload the entries were decoded from as strict text, and where each entry ends
    # (see `unpack_text_entries`), for `text_records`
    text_spans: Optional[Tuple[Union[bytes, bytearray], List[int]]] = field(default=None, repr=False, compare=False)

    @property
    def entries(self) -> List[Entry]:
        if self.decoded is None:
            assert self.verbatim is not None
            self.decoded = unpack_entries(self.verbatim)[0]
        return self.decoded

    @entries.setter
    def entries(self, entries: List[Entry]) -> None:
        self.decoded = entries
        self.verbatim = None  # the payload no longer says what the chunk holds
        self.text_spans = None

    def text_records(self) -> Optional[List[bool]]:
        """Per entry, whether its record is known to be text as it is (see `text_records`);
        None when that is not known of any (the chunk did not decode as strict text).
        Asked once: the spans are let go, so the payload does not live on beside the
        decoded entries while they are handed on."""
        spans, self.text_spans = self.text_spans, None
        if spans is None or self.decoded is None:
            return None
        return text_records(*spans)

    @property
    def entry_count(self) -> int:
        """How many entries the chunk holds, without decoding a verbatim one."""
        return len(self.decoded) if self.decoded is not None else self.verbatim_count

    @property
    def wants_ack(self) -> bool:
        return self.chunk_id is not None

    @property
    def resend_key(self) -> Optional[Hashable]:
        """What makes a later chunk a resend of this one: same tag, same chunk id AND same
        content. The id alone is not enough: Fluent Bit's Message mode sends one constant
        id on every message. None when the chunk has no id, or one that cannot be a key."""
        if self.chunk_id is None or self.digest is None:
            return None
        key = (self.tag, self.chunk_id, self.digest)
        try:
            hash(key)
        except TypeError:  # a chunk value that is a map or an array
            return None
        return key


class FrameReader:
    """Splits a byte stream into msgpack objects, refusing any frame larger than `max_frame_size`.

    Feed at most `max_feed` bytes at a time; iterate to get complete objects. Errors are
    raised as ProtocolError ('oversize' or 'malformed') and leave the stream unusable.
    With `keep_frames`, `last_frame` holds the exact bytes of the object last returned
    (a server digests them to recognise a resend without packing the frame again).

    A frame holding a map keyed by a map or an array (valid msgpack, which Python cannot
    hold as a dict) is not malformed: with `keep_frames`, that frame is read again with
    such maps as lists of [key, value] pairs, and each Forward or Message entry that holds
    one comes as an `Unholdable` item, which the codec makes an unusable entry.
    """

    def __init__(self, max_frame_size: int, max_feed: int = 1 << 16, keep_frames: bool = False) -> None:
        self.max_frame_size = max_frame_size
        self.max_feed = max_feed
        self.keep_frames = keep_frames
        self._raw = bytearray()  # with keep_frames: bytes fed, not yet part of a returned object
        self.last_frame: Optional[bytearray] = None
        self._unpacker = self._new_unpacker()
        self._fed = 0
        self._consumed = 0
        self._pairs: Optional[_PairsHook] = None  # while reading a frame with a map that cannot be a dict

    def _new_unpacker(self, **options: Any) -> msgpack.Unpacker:
        limit = self.max_frame_size
        return msgpack.Unpacker(
            max_buffer_size=limit + self.max_feed, max_str_len=limit, max_bin_len=limit, max_ext_len=limit,
            max_array_len=limit, max_map_len=limit // 2, ext_hook=_ext_hook, **options, **_UNPACK_OPTIONS)

    def _read_again(self, pairs: Optional["_PairsHook"]) -> None:
        """A fresh unpacker over the bytes not returned yet (they start a frame). With
        `pairs`, for the frame that holds a map keyed by a map or an array, every map is
        built in Python (slower) and that one is a list of its pairs; without, the frames
        after it are read at full speed again."""
        self._pairs = pairs
        self._unpacker = self._new_unpacker(object_pairs_hook=pairs) if pairs else self._new_unpacker()
        self._unpacker.feed(bytes(self._raw))
        self._fed, self._consumed = len(self._raw), 0

    def feed(self, data: bytes) -> None:
        """Add received bytes."""
        try:
            self._unpacker.feed(data)
        except msgpack.BufferFull:
            raise ProtocolError("oversize", f"frame larger than the {self.max_frame_size}-byte limit") from None
        self._fed += len(data)
        if self.keep_frames:
            self._raw += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete object."""
        return self._fed - self._consumed

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            obj = next(self._unpacker)
        except StopIteration:
            if self.buffered > self.max_frame_size:
                raise ProtocolError("oversize", f"frame larger than the {self.max_frame_size}-byte limit") from None
            raise
        except ValueError as exc:  # includes msgpack's FormatError, StackError and declared-size checks
            if "exceeds max" in str(exc):
                raise ProtocolError("oversize", f"declared size over the {self.max_frame_size}-byte limit") from None
            raise ProtocolError("malformed", f"invalid msgpack: {exc or type(exc).__name__}") from None
        except TypeError as exc:  # a map key that cannot be hashed (a map or an array)
            if not self.keep_frames or self._pairs is not None:
                raise ProtocolError("malformed", f"invalid msgpack: {exc or type(exc).__name__}") from None
            self._read_again(_PairsHook())
            return next(self)
        except Exception as exc:
            raise ProtocolError("malformed", f"invalid msgpack: {exc or type(exc).__name__}") from None
        position = self._unpacker.tell()
        size, self._consumed = position - self._consumed, position
        if self.keep_frames:
            self.last_frame = self._raw[:size]
            del self._raw[:size]  # cheap: bytearray drops its head without moving the rest
        if size > self.max_frame_size:
            raise ProtocolError("oversize", f"{size}-byte frame over the {self.max_frame_size}-byte limit")
        if self._pairs is not None:
            self._read_again(None)
            assert self.last_frame is not None
            return _unholdable_entries(obj, bytes(self.last_frame))
        return obj


def inflate_gzip(data: bytes, limit: int) -> bytearray:
    """Decompress one or more gzip members back to back, never producing more than `limit` bytes."""
    out = bytearray()
    rest = memoryview(data)
    try:
        while rest:
            member = zlib.decompressobj(16 + zlib.MAX_WBITS)
            # Asking for one byte over the budget is how we learn it would be exceeded.
            out += member.decompress(rest, limit - len(out) + 1)
            if len(out) > limit:
                raise ProtocolError("decompress_limit", f"gzip payload inflates past the {limit}-byte limit")
            if not member.eof:
                raise ProtocolError("malformed", "truncated gzip payload")
            rest = memoryview(member.unused_data)
    except zlib.error as exc:
        raise ProtocolError("malformed", f"invalid gzip payload: {exc}") from None
    return out


# zstd can turn 4 input bytes into a 128 KiB block: feeding the decompressor input in
# pieces of at most (budget left / this) bytes keeps one step's output near the budget.
_ZSTD_MAX_RATIO = 1 << 15


def inflate_zstd(data: bytes, limit: int) -> bytearray:
    """Decompress zstd frames back to back, never producing much more than `limit` bytes
    (needs `zstandard`). Every frame must be complete: a truncated frame or bytes after the
    last one make the payload malformed, as for gzip."""
    if zstandard is None:
        raise ProtocolError("unsupported_compression",
                            "chunk compressed with zstd, which needs the 'zstandard' package; "
                            "install it or set the sender's compression to gzip")
    out = bytearray()
    view = memoryview(data)
    position, end = 0, len(data)
    decompressor = zstandard.ZstdDecompressor()
    try:
        while position < end:
            frame = decompressor.decompressobj()
            while not frame.eof:
                if position >= end:
                    raise ProtocolError("malformed", "truncated zstd payload")
                step = max(64, (limit - len(out)) // _ZSTD_MAX_RATIO)
                piece = view[position:position + step]
                position += len(piece)
                out += frame.decompress(piece)
                if len(out) > limit:
                    raise ProtocolError("decompress_limit", f"zstd payload inflates past the {limit}-byte limit")
            position -= len(frame.unused_data)
    except zstandard.ZstdError as exc:
        raise ProtocolError("malformed", f"invalid zstd payload: {exc}") from None
    return out


_NANOSECONDS = 1_000_000_000
# Entry times are uint32 seconds on the wire (EventTime holds 4 bytes of them); a time at
# or past 2**32 cannot be sent on as one, so it is a rejection, not a record to relay.
_TIME_LIMIT = 1 << 32


def _time_problem(value: Any) -> str:
    """Why `value` is not a usable entry time (for the rejection's message)."""
    if isinstance(value, msgpack.Timestamp):
        return "a msgpack Timestamp (ext type -1) is not a forward-protocol time; send EventTime (ext type 0)"
    if isinstance(value, msgpack.ExtType):
        if value.code == EVENT_TIME_EXT_CODE:
            return f"EventTime (ext type 0) must hold 8 bytes, got {len(value.data)}"
        return f"msgpack ext type {value.code} is not a time (expected EventTime, ext type 0)"
    if isinstance(value, EventTime):
        return f"EventTime nanoseconds {value.nanoseconds} out of range"
    if type(value) is int:
        return f"time {value} is outside [0, 2**32) seconds"
    if type(value) is float:
        return f"time {value!r} is not a finite number in [0, 2**32) seconds"
    kind = "nil" if value is None else "bool" if type(value) is bool else type(value).__name__
    return f"time is a {kind}, not an integer or EventTime"


def _valid_time(value: Any) -> Optional[Time]:
    """The entry time to use, or None when `value` cannot be one. As Fluentd's in_forward
    does, a missing time (nil) or a zero one is the arrival time."""
    kind = type(value)
    if kind is EventTime:
        if value.nanoseconds >= _NANOSECONDS:
            return None
        return value if value.seconds != 0 else EventTime.now()
    if kind is int:
        if 0 < value < _TIME_LIMIT:
            return value
        return EventTime.now() if value == 0 else None
    if kind is float:
        if 0 < value < _TIME_LIMIT:  # NaN and infinities compare False
            return value
        return EventTime.now() if value == 0 else None  # NaN and negatives compare False
    if value is None:
        return EventTime.now()
    return None


def _kept_as_sent(stamp: Any) -> bool:
    """Whether an entry time goes on exactly as it came: an EventTime with seconds != 0 and
    nanoseconds < 1e9, or an int in (0, 2**32). Other usable times (nil, zero, floats) are
    replaced or checked by `_valid_time`."""
    kind = type(stamp)
    return ((kind is EventTime and stamp.seconds != 0 and stamp.nanoseconds < _NANOSECONDS)
            or (kind is int and 0 < stamp < _TIME_LIMIT))


def _unusable(item: Any, rule: str, path: str, message: str, metadata: Optional[Dict[Any, Any]] = None) -> Entry:
    return Entry(EventTime.now(), item, metadata, EntryProblem(rule, path, message))


def _check_item(item: Any) -> Entry:
    """One item of a Forward array or packed payload → Entry (with a `problem` if unusable)."""
    if type(item) is Unholdable:
        rule = "entry.record" if item.path.startswith("/1/") or item.path == "/1" else "entry.shape"
        return Entry(EventTime.now(), item.item, None, EntryProblem(
            rule, item.path, "a map keyed by a map or an array cannot be an event's (it is shown as its "
            "[key, value] pairs)", item.raw))
    if type(item) is not list or len(item) != 2:
        shape = f"an array of {len(item)} elements" if type(item) is list else \
            ("nil" if item is None else f"a {type(item).__name__}")
        return _unusable(item, "entry.shape", "", f"an entry must be [time, record], got {shape}")
    stamp, record = item
    metadata = None
    time_path = "/0"
    if type(stamp) is list:
        if len(stamp) != 2 or type(stamp[1]) is not dict:
            return _unusable(item, "entry.shape", "/0",
                             "an entry's head must be a time or [time, metadata map]")
        stamp, metadata = stamp
        time_path = "/0/0"
    when = _valid_time(stamp)
    if when is None:
        return _unusable(item, "entry.time", time_path, _time_problem(stamp), metadata)
    if type(record) is not dict:
        kind = "nil" if record is None else type(record).__name__
        return _unusable(item, "entry.record", "/1", f"a record must be a map, not {kind}", metadata)
    return Entry(when, record, metadata)


def entries_from_list(items: Iterable[Any]) -> Tuple[List[Entry], int]:
    """`[time, record]` / `[[time, metadata], record]` items → (entries, how many of them have a
    `problem`). Every item becomes one entry: none is dropped."""
    entries: List[Entry] = []
    append = entries.append
    invalid = 0
    for item in items:
        # The common case first: [time, map] with a time that goes on as it came.
        if type(item) is list and len(item) == 2:
            stamp, record = item
            if type(record) is dict and _kept_as_sent(stamp):
                append(Entry(stamp, record))
                continue
        entry = _check_item(item)
        if entry.problem is not None:
            invalid += 1
        append(entry)
    return entries, invalid


def unpack_entries(payload: Union[bytes, bytearray]) -> Tuple[List[Entry], int]:
    """A PackedForward payload (concatenated msgpack entries) → (entries, how many have a `problem`)."""
    return entries_from_list(_unpack_items(payload, _UNPACK_OPTIONS)[0])


def _unpack_items(payload: Union[bytes, bytearray], options: Dict[str, Any],
                  pairs: Optional["_PairsHook"] = None) -> Tuple[List[Any], List[int]]:
    """The msgpack objects of a payload, decoded with `options`, and where each one ends;
    with `pairs`, every map is built by it (see `_unpack_unholdable`)."""
    hook: Dict[str, Any] = {} if pairs is None else {"object_pairs_hook": pairs}
    unpacker = msgpack.Unpacker(max_buffer_size=max(len(payload), 1), ext_hook=_ext_hook, **hook, **options)
    items: List[Any] = []
    ends: List[int] = []
    append, mark, tell = items.append, ends.append, unpacker.tell
    try:
        unpacker.feed(payload)
        for item in unpacker:
            append(item)
            mark(tell())
    except Exception as exc:
        if isinstance(exc, TypeError) and pairs is None:  # valid msgpack Python cannot hold as it is:
            return _unpack_unholdable(payload, options)  # a map keyed by a map or an array
        raise ProtocolError("malformed", f"invalid entries in packed payload: {exc or type(exc).__name__}") from None
    # Where the last whole entry ended: after an entry cut short inside an ext value, the
    # unpacker's position can already stand at the end of the payload.
    if (ends[-1] if ends else 0) != len(payload):
        raise ProtocolError("malformed", "packed payload ends in the middle of an entry")
    return items, ends


class _Pairs(list):  # type: ignore[type-arg]
    """A map decoded as its [key, value] pairs, because a key is a map or an array."""


class Unholdable(NamedTuple):
    """A payload item Python cannot hold as it is: `item` with each map keyed by a map or an
    array given as a list of its [key, value] pairs, `path` the JSON pointer of the first such
    map, `raw` the item's bytes as received."""

    item: Any
    path: str
    raw: bytes


class _PairsHook:
    """msgpack's object_pairs_hook: a map as a dict or, when a key is a map or an array, as
    `_Pairs`; `made` tells that one was, since it was last cleared."""

    def __init__(self) -> None:
        self.made = False

    def __call__(self, pairs: List[Tuple[Any, Any]]) -> Any:
        try:
            return dict(pairs)
        except TypeError:  # a key that is a list (a map already given as pairs, or an array)
            self.made = True
            return _Pairs([key, value] for key, value in pairs)


def _unpack_unholdable(payload: Union[bytes, bytearray], options: Dict[str, Any]) -> Tuple[List[Any], List[int]]:
    """`_unpack_items` of a payload that holds a map keyed by a map or an array: the items
    that hold one come as `Unholdable`, the others as always. Such a payload is rare, so
    every map is built in Python here."""
    items, ends = _unpack_items(payload, options, _PairsHook())
    start = 0
    for index, end in enumerate(ends):
        items[index] = _held(items[index], bytes(payload[start:end]))
        start = end
    return items, ends


def _held(item: Any, raw: bytes) -> Any:
    """`item`, read with maps as pairs, with each such map a plain list: an `Unholdable`
    (with `raw`, its bytes) when it holds one."""
    path, item = _plain_pairs(item)
    return item if path is None else Unholdable(item, path, raw)


def unpack_with_pairs(data: bytes, raw: bool = False) -> Tuple[str, Any]:
    """One msgpack object that holds a map keyed by a map or an array → (the JSON pointer of
    the first such map, the object with each such map as a list of its [key, value] pairs).
    ValueError when `data` is not one such object."""
    pairs = _PairsHook()
    options = dict(_UNPACK_OPTIONS, raw=raw)
    try:
        value = msgpack.unpackb(data, ext_hook=_ext_hook, object_pairs_hook=pairs, **options)
    except Exception as exc:
        raise ValueError(f"not one msgpack object: {exc or type(exc).__name__}") from None
    path, value = _plain_pairs(value)
    if path is None:
        raise ValueError("no map keyed by a map or an array")
    return path, value


def _plain_pairs(item: Any) -> Tuple[Optional[str], Any]:
    """The JSON pointer of the first map of `item` given as pairs (None if none is), and `item`
    with every such map a plain list. Iterative: msgpack nests up to its own stack limit."""
    first: Optional[str] = None
    root = [item]
    stack: List[Tuple[Any, Any, str]] = [(root, 0, "")]
    while stack:
        parent, key, pointer = stack.pop()
        value = parent[key]
        kind = type(value)
        if kind is _Pairs:
            if first is None:
                first = pointer
            value = parent[key] = list(value)
            kind = list
        if kind is list:
            stack.extend((value, index, f"{pointer}/{index}") for index in range(len(value) - 1, -1, -1))
        elif kind is dict:
            stack.extend((value, name, f"{pointer}/{key_pointer_part(name)}") for name in reversed(list(value)))
    return first, root[0]


def _unholdable_entries(frame: Any, raw: bytes) -> Any:
    """A frame read with maps as pairs (`FrameReader`), `raw` its bytes: each Forward entry,
    or the Message, that holds such a map becomes an `Unholdable` item with its own bytes
    (a Message's as the entry `[time, record]`); every other such map becomes a plain list,
    which the frame checks refuse where a map belongs (the options)."""
    if type(frame) is list and len(frame) >= 2:
        try:
            reader = msgpack.Unpacker(max_buffer_size=max(len(raw), 1), ext_hook=_ext_hook, **_UNPACK_OPTIONS)
            reader.feed(raw)
            reader.read_array_header()
            reader.skip()  # the tag
            body = frame[1]
            if type(body) is list:  # Forward: [tag, [entry, ...], options]
                for index in range(reader.read_array_header()):
                    start = reader.tell()
                    reader.skip()
                    body[index] = _held(body[index], raw[start:reader.tell()])
            elif type(body) not in (str, bytes) and len(frame) >= 3:  # Message: [tag, time, record, ...]
                start = reader.tell()
                reader.skip()
                reader.skip()
                entry = _held([body, frame[2]], b"\x92" + raw[start:reader.tell()])
                if type(entry) is Unholdable:
                    frame[2] = entry
        except Exception:  # not the shape of a forward frame: the frame checks say what is wrong
            pass
    return _plain_pairs(frame)[1]


# Strict UTF-8 (no surrogateescape) and str or bin map keys only: a payload that decodes so
# holds no string that is not Unicode text and no key of another type.
_TEXT_UNPACK_OPTIONS: Dict[str, Any] = {"raw": False, "strict_map_key": True}


def unpack_text_entries(payload: Union[bytes, bytearray]) -> Tuple[List[Entry], int, Optional[List[int]]]:
    """`unpack_entries`, and where each entry ends when the payload decodes as strict text
    (see `text_records`); None when it does not (then it is decoded as `unpack_entries` does)."""
    try:
        items, ends = _unpack_items(payload, _TEXT_UNPACK_OPTIONS)
    except ProtocolError:  # not UTF-8, a key that is not text, or not valid at all: decoded as always
        return (*unpack_entries(payload), None)
    return (*entries_from_list(items), ends)


# Bytes of the time that heads an entry `[time, record]`, by its first byte (an integer, a
# float, an EventTime or other fixed-size ext, nil); 0 for any other: then it is read too.
_TIME_SIZES = bytes([1] * 0x80) + bytes(0x40) + bytes([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 9, 2, 3, 5, 9, 2, 3, 5, 9,
                                                     3, 4, 6, 10, 18, 0, 0, 0, 0, 0, 0, 0]) + bytes([1] * 0x20)
# Every byte but msgpack's bin headers and its map and array headers (each level of nesting
# starts with one).
_OTHER_BYTES = bytes(b for b in range(256) if b not in BIN_HEADERS + CONTAINER_HEADERS)
# A record with at most this many map and array headers nests at most this deep: far from
# where walking it could meet the interpreter's recursion limit.
_TEXT_MAX_CONTAINERS = 100


def text_records(payload: Union[bytes, bytearray], ends: List[int]) -> List[bool]:
    """Per entry of a payload that decoded as strict text (`unpack_text_entries`), whether
    its record is known to be text as it is: every key a str, no bin, no lone surrogate
    (`normalize.as_text` would return it unchanged), at most 100 levels deep.

    Strict decoding leaves bin as the only way out of text, and each bin value or key
    starts with a bin header byte: a record whose bytes hold none (nor more than 100 map
    or array headers) is text. Bytes that only look like one (a UTF-8 lead byte, a byte of
    a number) make a False, which costs that record a look, never a wrong True."""
    flags: List[bool] = []
    append = flags.append
    start = 0
    for end in ends:
        head = start + 1  # past the entry's array header; past its time too, when of a known size
        if payload[start] == 0x92:
            head += _TIME_SIZES[payload[head]]
        append(text_object(payload[head:end]))
        start = end
    return flags


def text_object(data: Union[bytes, bytearray]) -> bool:
    """Whether the bytes of one msgpack object, decoded as strict text (strict UTF-8, str or
    bin map keys only), show that it is text as it is: no bin header, at most 100 map and
    array headers (see `text_records`). False may be wrong (a byte of a number or of UTF-8
    text that looks like a header), True never is."""
    marks = data.translate(None, _OTHER_BYTES)
    return len(marks) <= _TEXT_MAX_CONTAINERS and not marks.translate(None, CONTAINER_HEADERS)


_MAP_HEADERS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}
# First bytes of an array (a metadata entry's head is a [time, metadata] pair).
_PAIR_HEADERS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
# First bytes of a time that may be kept: fixext8 or ext8 (EventTime), or an integer.
_TIME_HEADS = frozenset(range(0x01, 0x80)) | {0xD7, 0xC7, 0xCC, 0xCD, 0xCE, 0xCF, 0xD0, 0xD1, 0xD2, 0xD3}
# msgpack-python checks an ext -1 (Timestamp) while decoding, which skipping does not do; a
# record holding the byte 0xff (also -1, bin data, some floats) is therefore decoded to decide.
_TIMESTAMP_TYPE = b"\xff"


def scan_packed(payload: Union[bytes, bytearray], decoded_elsewhere: bool = False) -> Optional[int]:
    """How many entries a PackedForward payload holds, when every one of them can be handed
    on byte for byte: `[time, map]` with a time kept as it is (EventTime with seconds != 0
    and nanoseconds < 1e9, or an int in (0, 2**32)), none in the metadata form. Else None:
    the payload must be decoded (`unpack_entries`), which also raises the ProtocolError of
    a payload that is not valid.

    With `decoded_elsewhere`, for a handler that decodes the payload elsewhere (a filter
    worker) rather than handing it on, what decoding it there would give as decoding it
    here does counts too: Fluent Bit's `[[time, map], map]` entries (such a time, a
    metadata map), and a record or metadata map holding the byte 0xff once decoding that
    map alone shows it decodes.

    Records are skipped, not decoded (about a tenth of the cost). Skipping checks their
    msgpack structure but not what only building Python objects finds: a map key that is
    itself a map or an array (valid msgpack that Python cannot hold as a dict key) goes on
    verbatim and is refused only where the records have to be decoded.
    """
    end = len(payload)
    if not end:
        return None
    unpacker = msgpack.Unpacker(max_buffer_size=end, ext_hook=_ext_hook, **_UNPACK_OPTIONS)
    unpacker.feed(payload)
    read_header, unpack, skip, tell = unpacker.read_array_header, unpacker.unpack, unpacker.skip, unpacker.tell
    find = payload.find
    read_time = _EVENT_TIME.unpack_from
    count = 0
    try:
        while True:
            if read_header() != 2:
                return None
            head = payload[tell()]
            with_metadata = decoded_elsewhere and head in _PAIR_HEADERS
            if with_metadata:  # [time, metadata map]
                if read_header() != 2:
                    return None
                head = payload[tell()]
            if head == 0xD7 and payload[tell() + 1] == EVENT_TIME_EXT_CODE:
                # An EventTime (fixext8), read in place: no object made for it.
                seconds, nanoseconds = read_time(payload, tell() + 2)
                if not seconds or nanoseconds >= _NANOSECONDS:
                    return None
                skip()
            elif head not in _TIME_HEADS or not _kept_as_sent(unpack()):
                return None
            if with_metadata:  # a map that skipping may vouch for, as a record
                start = tell()
                if payload[start] not in _MAP_HEADERS:
                    return None
                skip()
                if find(_TIMESTAMP_TYPE, start, tell()) != -1 and not _decodes(payload, start, tell()):
                    return None
            start = tell()
            if payload[start] not in _MAP_HEADERS:
                return None
            skip()
            position = tell()
            if find(_TIMESTAMP_TYPE, start, position) != -1 and not (
                    decoded_elsewhere and _decodes(payload, start, position)):
                return None
            count += 1
            if position == end:
                return count
    except Exception:  # not valid, or cut short: decoding says how, with today's error
        return None


def _decodes(payload: Union[bytes, bytearray], start: int, end: int) -> bool:
    """Whether the msgpack object at payload[start:end] (skipped already) decodes."""
    try:
        msgpack.unpackb(payload[start:end], ext_hook=_ext_hook, **_UNPACK_OPTIONS)
    except Exception:
        return False
    return True


def _options(frame: List[Any], index: int) -> Dict[Any, Any]:
    if len(frame) > index + 1:
        raise ProtocolError("malformed", f"frame has {len(frame)} elements")
    if len(frame) <= index or frame[index] is None:
        return {}
    options = frame[index]
    if type(options) is not dict:
        raise ProtocolError("malformed", f"options is a {type(options).__name__}, not a map")
    return options


def _content_digest(data: Union[bytes, bytearray]) -> bytes:
    # SHA-256 (in hardware: about twice blake2b's speed here), cut to 16 bytes.
    return hashlib.sha256(data).digest()[:16]


def _packed_digest(value: Any) -> Optional[bytes]:
    """Digest of decoded entries packed again (the same content always packs the same)."""
    try:
        return _content_digest(packb(value))
    except (TypeError, ValueError, OverflowError):  # pragma: no cover - decoded msgpack packs again
        return None


def _text_tag(tag: Any) -> str:
    """The tag as text: a bin tag is read as UTF-8 like a str one. Bytes that are not UTF-8
    become `\\xNN` escapes, so the tag is text every sink can write (a spool, a file),
    and the bytes stay visible."""
    kind = type(tag)
    if kind is str:
        if tag.isascii():
            return tag
        raw = tag.encode("utf-8", "surrogateescape")  # undecodable bytes were kept as surrogates
    elif kind is bytes:
        raw = tag
    else:
        raise ProtocolError("malformed", f"tag is a {kind.__name__}, not a string")
    return raw.decode("utf-8", "backslashreplace")


def parse_frame(frame: List[Any], *, max_decompressed_size: int, peer: str = "",
                raw: Optional[Union[bytes, bytearray]] = None, scan: bool = False,
                decoded_elsewhere: bool = False) -> Chunk:
    """One decoded msgpack array → Chunk, by the mode element [1] selects.

    Every entry the frame holds becomes one Entry; those that cannot be events carry a
    `problem` (see `Entry`). A chunk with an id also gets the digest of its content, so a
    resend can be told from another chunk under the same id (`Chunk.resend_key`): of the
    payload once decompressed, or of the frame's bytes `raw` when given (else of the frame
    packed again).
    With `scan`, a (Compressed)PackedForward payload whose entries can all be handed on
    byte for byte (`scan_packed`) makes a verbatim chunk, decoded only when asked; with
    `decoded_elsewhere` too, one whose entries a handler that decodes them elsewhere may
    take undecoded (see `scan_packed`).
    Raises ProtocolError for a frame that cannot be a forward message, an unsupported
    compression, a payload that does not decompress completely, or one over
    `max_decompressed_size` once inflated.
    """
    if len(frame) < 2:
        raise ProtocolError("malformed", f"frame has {len(frame)} elements")
    tag = _text_tag(frame[0])
    body = frame[1]
    kind = type(body)
    digest: Optional[bytes] = None
    if kind is list:
        options = _options(frame, 2)
        entries, invalid = entries_from_list(body)
        mode = FORWARD
        if options.get("chunk") is not None:
            digest = _content_digest(raw) if raw is not None else _packed_digest(body)
    elif kind is str or kind is bytes:
        options = _options(frame, 2)
        raw = as_bytes(body)
        payload: Union[bytes, bytearray] = raw
        compressed = options.get("compressed")
        if compressed is None or compressed == "text":
            mode = PACKED_FORWARD
        elif compressed == "gzip":
            payload = inflate_gzip(raw, max_decompressed_size)
            mode = COMPRESSED_PACKED_FORWARD
        elif compressed == "zstd":
            payload = inflate_zstd(raw, max_decompressed_size)
            mode = COMPRESSED_PACKED_FORWARD
        else:
            raise ProtocolError("unsupported_compression", f"unknown compression {compressed!r}")
        if options.get("chunk") is not None:
            digest = _content_digest(payload)
        count = scan_packed(payload, decoded_elsewhere) if scan else None
        if count is not None:
            return Chunk(tag, None, options.get("chunk"), mode, peer, options, 0, digest,
                         payload if type(payload) is bytes else bytes(payload), count)
        entries, invalid, ends = unpack_text_entries(payload)
        return Chunk(tag, entries, options.get("chunk"), mode, peer, options, invalid, digest,
                     text_spans=(payload, ends) if ends is not None else None)
    else:
        # Anything else in [1] is a Message's time (as in Fluentd's in_forward).
        if len(frame) < 3:
            raise ProtocolError("malformed", "message frame without a record")
        options = _options(frame, 3)
        item = frame[2] if type(frame[2]) is Unholdable else [body, frame[2]]
        entries, invalid = entries_from_list((item,))
        mode = MESSAGE
        if options.get("chunk") is not None:
            digest = _content_digest(raw) if raw is not None else _packed_digest(item)
    return Chunk(tag, entries, options.get("chunk"), mode, peer, options, invalid, digest)


def pack_entries(entries: Iterable[Entry]) -> bytes:
    """Entries → a PackedForward payload, each in the form it arrived in (metadata kept; an
    entry with a `problem` exactly as it was received, so it decodes to the same problem)."""
    entries = entries if type(entries) is list else list(entries)
    try:
        # Strict UTF-8 first: msgpack-python's own encoding, much faster than an error handler's.
        return _pack_into(_packer(None), entries)
    except UnicodeEncodeError:  # a str holding surrogates: its original bytes, by surrogateescape
        return _pack_into(_packer(), entries)


def _pack_into(packer: msgpack.Packer, entries: List[Entry]) -> bytes:
    pack = packer.pack
    parts: List[bytes] = []
    for entry in entries:
        if entry.problem is not None:
            if entry.problem.raw is not None:  # bytes that decode to no Python object as they are
                parts += (packer.bytes(), entry.problem.raw)
                packer.reset()
                continue
            pack(entry.record)  # as received: decoding it again finds the same problem
        elif entry.metadata is None:
            pack([entry.time, entry.record])
        else:
            pack([[entry.time, entry.metadata], entry.record])
    if parts:
        return b"".join(parts) + packer.bytes()
    return packer.bytes()


def _msgspec_time(value: Any) -> Any:
    if type(value) is EventTime:
        return msgspec.msgpack.Ext(EVENT_TIME_EXT_CODE, _EVENT_TIME.pack(value.seconds, value.nanoseconds))
    raise TypeError(f"not packed by msgspec: {type(value).__name__}")


# msgspec (C) writes dicts, lists, str, int, float, bool and None as msgpack-python does,
# byte for byte, in about half the time. Not other types: it writes a tuple subclass such
# as msgpack.ExtType as an array, and sets, dates, UUIDs where msgpack-python refuses them.
_encode_plain = msgspec.msgpack.Encoder(enc_hook=_msgspec_time).encode


def _array_header_size(length: int) -> int:
    return 1 if length < 16 else 3 if length < 1 << 16 else 5


def pack_plain_entries(entries: Sequence[Entry]) -> bytes:
    """`pack_entries` of the entries in the plain form `[time, record]` (metadata left out),
    for entries without a `problem` whose records hold JSON's types only: what a filter's
    verdicts hand on (`EventFilter.process` makes every record it returns writable as it
    is, see `is_encodable`). The same bytes, packed by msgspec; a record msgspec refuses (a
    lone surrogate, an integer past 64 bits, a type it does not take) goes by `pack_entries`."""
    items = [(entry.time, entry.record) for entry in entries]
    try:
        packed = _encode_plain(items)
    except Exception:  # msgpack-python decides, and raises what it raises
        return pack_entries(Entry(time, record) for time, record in items)
    # The list's array header off: the entries back to back, as PackedForward carries them.
    return packed[_array_header_size(len(items)):]


# An entry's array header of 2, then its EventTime's fixext 8 header.
_EVENT_TIME_ENTRY_HEAD = b"\x92\xd7" + bytes([EVENT_TIME_EXT_CODE])


def join_packed_entries(entries: Sequence[Entry], packed_records: Sequence[Optional[bytes]]) -> bytes:
    """`pack_plain_entries` of entries whose records are mostly packed already (one msgpack
    object each, as `model.packed` makes them; None: not packed yet): `[time, record]` per
    entry, back to back. Raises what msgspec raises for a record it refuses."""
    parts: List[bytes] = []
    append = parts.append
    event_time = _EVENT_TIME.pack
    for entry, record in zip(entries, packed_records):
        when = entry.time
        if record is None:
            record = _encode_plain(entry.record)
        if type(when) is EventTime:
            append(_EVENT_TIME_ENTRY_HEAD + event_time(when.seconds, when.nanoseconds) + record)
        else:
            append(b"\x92" + _encode_plain(when) + record)
    return b"".join(parts)


def gzip_payload(payload: bytes, level: int = 6) -> bytes:
    """One gzip member, as CompressedPackedForward carries it."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(payload) + compressor.flush()


def new_chunk_id() -> str:
    """A fresh chunk id: base64 of 16 random bytes."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def packed_forward_frame(tag: str, payload: bytes, *, chunk_id: Any = None, size: Optional[int] = None,
                         compressed: Optional[str] = None) -> bytes:
    """`[tag, bin payload, options]`; `payload` is already packed (and gzipped if `compressed`)."""
    options: Dict[str, Any] = {}
    if size is not None:
        options["size"] = size
    if compressed is not None:
        options["compressed"] = compressed
    if chunk_id is not None:
        options["chunk"] = chunk_id
    # What packb([tag, payload, options]) writes, with the payload copied once: packing it
    # would copy it into the packer's buffer, then out of it.
    return b"".join((b"\x93", packb(tag), bin_header(len(payload)), payload, packb(options)))


def ack_frame(chunk_id: Any) -> bytes:
    """`{"ack": chunk_id}` with the chunk value echoed as received (str as str, bin as bin)."""
    return packb({"ack": chunk_id})


def ack_chunk_id(message: Any) -> Any:
    """The chunk value of a decoded ack, or None if `message` is not an ack."""
    if type(message) is dict:
        return message.get("ack")
    return None


# --- shared-key handshake ------------------------------------------------------------------

def _sha512_hex(*parts: Union[str, bytes]) -> str:
    digest = hashlib.sha512()
    for part in parts:
        digest.update(as_bytes(part))
    return digest.hexdigest()


def ping_digest(shared_key_salt: Union[str, bytes], client_hostname: str, nonce: Union[str, bytes],
                shared_key: str) -> str:
    """The PING's proof of the shared key: sha512_hex(salt + client_hostname + nonce + key)."""
    return _sha512_hex(shared_key_salt, client_hostname, nonce, shared_key)


def pong_digest(shared_key_salt: Union[str, bytes], server_hostname: str, nonce: Union[str, bytes],
                shared_key: str) -> str:
    """The PONG's proof of the shared key: sha512_hex(salt + server_hostname + nonce + key)."""
    return _sha512_hex(shared_key_salt, server_hostname, nonce, shared_key)


def password_digest(auth_salt: Union[str, bytes], username: str, password: str) -> str:
    """The PING's user proof: sha512_hex(auth_salt + username + password)."""
    return _sha512_hex(auth_salt, username, password)


def _same(expected: str, given: Any) -> bool:
    try:
        return hmac.compare_digest(expected.encode("ascii"), as_bytes(given))
    except TypeError:
        return False


def helo_frame(nonce: bytes, auth_salt: Union[str, bytes] = "", keepalive: bool = True) -> bytes:
    """Server's opening message. `auth_salt` is "" unless user authentication is on."""
    return packb(["HELO", {"nonce": nonce, "auth": auth_salt, "keepalive": keepalive}])


@dataclass
class Helo:
    nonce: bytes
    auth_salt: bytes
    keepalive: bool


def parse_helo(message: Any) -> Helo:
    """A decoded HELO → its nonce, user-auth salt and keepalive flag."""
    if type(message) is not list or len(message) != 2 or message[0] != "HELO" or type(message[1]) is not dict:
        raise ProtocolError("auth", "expected a HELO message")
    options = message[1]
    try:
        nonce = as_bytes(options["nonce"])
        auth = as_bytes(options.get("auth") or b"")
    except (KeyError, TypeError):
        raise ProtocolError("auth", "HELO without a usable nonce") from None
    return Helo(nonce, auth, bool(options.get("keepalive", True)))


def ping_frame(client_hostname: str, shared_key: str, nonce: bytes, *, shared_key_salt: Optional[bytes] = None,
               username: str = "", password: str = "", auth_salt: bytes = b"") -> Tuple[bytes, bytes]:
    """Client's answer to HELO → (frame bytes, the salt used, needed to check the PONG)."""
    salt = os.urandom(16) if shared_key_salt is None else shared_key_salt
    user_proof = password_digest(auth_salt, username, password) if auth_salt else ""
    frame = packb(["PING", client_hostname, salt, ping_digest(salt, client_hostname, nonce, shared_key),
                   username, user_proof])
    return frame, salt


@dataclass
class PingCheck:
    ok: bool
    reason: str = ""
    client_hostname: str = ""
    shared_key_salt: bytes = b""


def check_ping(message: Any, *, nonce: bytes, shared_key: str, auth_salt: bytes = b"",
               users: Optional[Mapping[str, str]] = None) -> PingCheck:
    """Server side: does this PING prove the shared key (and a user's password when `users`)?"""
    if type(message) is not list or len(message) != 6 or message[0] != "PING":
        return PingCheck(False, "invalid ping message")
    _, hostname, salt, key_digest, username, user_digest = message
    if type(hostname) is not str:
        return PingCheck(False, "invalid ping message")
    try:
        salt_bytes = as_bytes(salt)
    except TypeError:
        return PingCheck(False, "invalid ping message")
    if not _same(ping_digest(salt_bytes, hostname, nonce, shared_key), key_digest):
        return PingCheck(False, "shared_key mismatch", hostname)
    if users:
        password = users.get(username) if type(username) is str else None
        if password is None or not _same(password_digest(auth_salt, username, password), user_digest):
            return PingCheck(False, "username/password mismatch", hostname)
    return PingCheck(True, "", hostname, salt_bytes)


def pong_frame(ok: bool, *, reason: str = "", server_hostname: str = "", shared_key_salt: bytes = b"",
               nonce: bytes = b"", shared_key: str = "") -> bytes:
    """Server's verdict: `["PONG", true, "", hostname, digest]` or `["PONG", false, reason, "", ""]`."""
    if not ok:
        return packb(["PONG", False, reason, "", ""])
    return packb(["PONG", True, "", server_hostname,
                  pong_digest(shared_key_salt, server_hostname, nonce, shared_key)])


@dataclass
class PongCheck:
    ok: bool
    reason: str = ""
    server_hostname: str = ""


def check_pong(message: Any, *, shared_key_salt: bytes, nonce: bytes, shared_key: str) -> PongCheck:
    """Client side: did the server accept us, and does its digest prove it knows the key?"""
    if type(message) is not list or len(message) != 5 or message[0] != "PONG":
        return PongCheck(False, "invalid pong message")
    _, accepted, reason, hostname, digest = message
    if accepted is not True:
        return PongCheck(False, str(reason) or "authentication refused")
    if type(hostname) is not str or not _same(pong_digest(shared_key_salt, hostname, nonce, shared_key), digest):
        return PongCheck(False, "server's shared key digest does not match", str(hostname))
    return PongCheck(True, "", hostname)
