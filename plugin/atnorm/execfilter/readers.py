"""Readers: bytes from Fluentd (JSON lines, TSV, a msgpack stream) → output records."""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import msgpack

from ..forward.codec import text_object, unpack_with_pairs
from .diagnostics import DiagnosticLog
from .shaping import RecordRouter

# One os.read per batch; a pipe rarely holds more than 64 KiB, a file gives big batches.
READ_SIZE = 1 << 20
# How much of an unreadable input is quoted in a log line.
LOG_PREVIEW_BYTES = 32


class LineInput:
    """Splits a byte stream into lines, keeping a partial line across reads."""

    def __init__(self, router: RecordRouter) -> None:
        self.router = router
        self._parts: List[bytes] = []
        self._partial_size = 0
        self._oversize: Optional[bytes] = None  # head of a line being skipped for its size
        self._oversize_bytes = 0
        # Whether the line being skipped is whitespace so far: a blank line is no record,
        # however long, just as when it arrives in one read.
        self._oversize_blank = False

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
            self._oversize_blank = self._oversize_blank and (not first or first.isspace())
            outputs.extend(self._too_large())
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
            return self._too_large()
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
            self._oversize_blank = self._oversize_blank and data.isspace()
            return
        self._parts.append(data)
        self._partial_size += len(data)
        if self._partial_size > self.router.max_record_bytes:
            joined = b"".join(self._parts)
            self._oversize, self._oversize_bytes = joined[:1024], len(joined)
            self._oversize_blank = joined.isspace()
            self._parts, self._partial_size = [], 0

    def _too_large(self) -> List[Any]:
        """The rejection of the line skipped for its size (none for a blank one)."""
        head, size, blank = self._oversize or b"", self._oversize_bytes, self._oversize_blank
        self._oversize, self._oversize_bytes, self._oversize_blank = None, 0, False
        if blank:
            return []
        return [self.router.unreadable(
            head.decode("utf-8", "backslashreplace"), "record.size",
            f"record of {size} bytes is over the {self.router.max_record_bytes}-byte limit; "
            "original holds its first 1024 bytes")]


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


# --- msgpack framing ------------------------------------------------------------------------
#
# Fluentd's msgpack formatter writes one map per record, back to back, with nothing between
# them. So a record starts with a map header (fixmap 0x80-0x8f, map16 0xde, map32 0xdf) and
# its keys are strings (str, or bin from parsers that leave text untyped). Anything else at
# a record boundary is damage. After damage, the next record starts at the first later
# offset where a *plausible record* decodes completely: a non-empty map with text keys only
# and, with --tag-key, the tag key holding text. Everything from the damage to that offset
# is one damaged region and becomes one rejected record. No declared length is believed
# beyond what a record may be: a record that fits is decoded with every declared length
# and item count bounded by max_record_size; an oversized one is streamed past (without
# buffering it) and rejected as one `record.size` as long as it stays within
# SKIP_FACTOR × max_record_size bytes, declared lengths and counts included.

# Bytes that open a msgpack map (fixmap, map16, map32): where a record can start.
_MAP_START = re.compile(rb"[\x80-\x8f\xde\xdf]")
_RESYNC_STEP = 4096
# Times one run of decoding goes back to text keys after an object it had to read with
# any key (a nested int key, say): each time costs a copy of the rest of the buffer.
_TEXT_KEY_RESTARTS = 16
# An oversized record is skipped by its declared sizes up to this many times the record
# size limit; anything declaring more is damage, not a record.
SKIP_FACTOR = 16
# Bytes of an oversized record kept as the rejection's original.
KEPT_BYTES = 1024

_WALK_DONE, _WALK_MORE, _WALK_INVALID = "done", "more", "invalid"


def _is_map_header(byte: int) -> bool:
    return 0x80 <= byte <= 0x8f or byte in (0xde, 0xdf)


def _is_text_header(byte: int) -> bool:
    return 0xa0 <= byte <= 0xbf or byte in (0xd9, 0xda, 0xdb, 0xc4, 0xc5, 0xc6)


# For each first byte of a msgpack object that is not a fix* type: (bytes of length field,
# fixed payload bytes, kind) with kind "len" (payload of the given length), "ext" (payload
# plus one type byte), "array", "map" or "" (fixed size).
_HEADERS: Dict[int, Tuple[int, int, str]] = {
    0xc0: (0, 0, ""), 0xc2: (0, 0, ""), 0xc3: (0, 0, ""),
    0xc4: (1, 0, "len"), 0xc5: (2, 0, "len"), 0xc6: (4, 0, "len"),
    0xc7: (1, 1, "ext"), 0xc8: (2, 1, "ext"), 0xc9: (4, 1, "ext"),
    0xca: (0, 4, ""), 0xcb: (0, 8, ""),
    0xcc: (0, 1, ""), 0xcd: (0, 2, ""), 0xce: (0, 4, ""), 0xcf: (0, 8, ""),
    0xd0: (0, 1, ""), 0xd1: (0, 2, ""), 0xd2: (0, 4, ""), 0xd3: (0, 8, ""),
    0xd4: (0, 2, ""), 0xd5: (0, 3, ""), 0xd6: (0, 5, ""), 0xd7: (0, 9, ""), 0xd8: (0, 17, ""),
    0xd9: (1, 0, "len"), 0xda: (2, 0, "len"), 0xdb: (4, 0, "len"),
    0xdc: (2, 0, "array"), 0xdd: (4, 0, "array"), 0xde: (2, 0, "map"), 0xdf: (4, 0, "map"),
}


class RecordWalker:
    """Follows the structure of one msgpack record through any number of chunks without
    keeping its bytes: only header bytes are looked at, payloads are counted past.

    The record must be a map with text keys and at most `max_size` bytes: a container
    declaring more items, a payload declaring more bytes, or a walk going further means
    the bytes are not a record (`invalid`)."""

    def __init__(self, max_size: int) -> None:
        self._max_size = max_size
        self._stack = [1]      # items still to come in each open container
        self._skip = 0         # payload bytes still to pass
        self._head = b""       # a header cut off by the end of a chunk
        self.size = 0          # bytes walked so far
        # Short text items directly in the record are read on the way, so that the tag of
        # a record too large to keep can still be found (`top_text`).
        self.top_text: Dict[bytes, bytes] = {}
        self._capture: Optional[bytearray] = None
        self._capture_key = False
        self._last_key: Optional[bytes] = None

    @property
    def known_size(self) -> int:
        """Bytes the record has at least: walked plus the rest of the current payload."""
        return self.size + self._skip

    def walk(self, chunk: Any) -> Tuple[str, int]:
        """(`done`, bytes of `chunk` up to the end of the record), (`more`, len(chunk)) or
        (`invalid`, offset in `chunk` of the byte that cannot be part of a record)."""
        back = len(self._head)
        data = self._head + bytes(chunk) if back else chunk
        self._head = b""
        state, pos = self._walk(data)
        used = max(pos - back, 0)
        self.size += used
        if self.known_size > self._max_size:
            return _WALK_INVALID, used
        return state, used

    def _walk(self, data: Any) -> Tuple[str, int]:
        stack, size = self._stack, len(data)
        pos = 0
        while True:
            if self._skip:
                take = min(self._skip, size - pos)
                if self._capture is not None:
                    self._capture += data[pos:pos + take]
                self._skip -= take
                pos += take
                if self._skip:
                    return _WALK_MORE, pos
                if self._capture is not None:
                    self._captured()
                if self._item_done():
                    return _WALK_DONE, pos
                continue
            if pos >= size:
                return _WALK_MORE, pos
            byte = data[pos]
            if len(stack) == 1 and not _is_map_header(byte):
                return _WALK_INVALID, pos
            at_top = len(stack) == 2
            at_key = at_top and stack[1] % 2 == 0
            if at_key and not _is_text_header(byte):
                return _WALK_INVALID, pos  # a key of the record that is not text
            count, payload, width = 0, 0, 1
            if byte <= 0x7f or byte >= 0xe0:
                pass
            elif byte <= 0x8f:
                count = 2 * (byte & 0x0f)
            elif byte <= 0x9f:
                count = byte & 0x0f
            elif byte <= 0xbf:
                payload = byte & 0x1f
            elif byte == 0xc1:
                return _WALK_INVALID, pos
            else:
                length_bytes, fixed, kind = _HEADERS[byte]
                width = 1 + length_bytes
                if pos + width > size:
                    self._head = bytes(data[pos:])
                    return _WALK_MORE, size
                length = int.from_bytes(data[pos + 1:pos + width], "big") if length_bytes else 0
                if length > self._max_size:
                    return _WALK_INVALID, pos
                if kind in ("array", "map"):
                    count = length * 2 if kind == "map" else length
                elif kind in ("len", "ext"):
                    payload = length + fixed
                else:
                    payload = fixed
            pos += width
            if at_top:
                if payload and payload <= 256 and _is_text_header(byte):
                    self._capture, self._capture_key = bytearray(), at_key
                elif not at_key:
                    self._last_key = None
            if count:
                stack.append(count)
            elif payload:
                self._skip = payload
            elif self._item_done():
                return _WALK_DONE, pos

    def _captured(self) -> None:
        value, self._capture = bytes(self._capture or b""), None
        if self._capture_key:
            self._last_key = value
        elif self._last_key is not None:
            if len(self.top_text) < 64:
                self.top_text[self._last_key] = value
            self._last_key = None

    def _item_done(self) -> bool:
        """One item ended; True when that completes the record."""
        stack = self._stack
        stack[-1] -= 1
        while stack[-1] == 0:
            stack.pop()
            if not stack:
                return True
            stack[-1] -= 1
        return False


def _text_key(record: Dict[Any, Any], key: str) -> Any:
    """The key of `record` that is `key` as str or as bin (bytes), or None."""
    if key in record:
        return key
    raw = key.encode("utf-8")
    return raw if raw in record else None


# The types of a record's keys: text, as str or bin.
_KEY_TYPES = frozenset((str, bytes))


def plausible_record(obj: Any, required_key: Optional[str] = None) -> bool:
    """A non-empty map with text keys only, and `required_key` holding text (when given):
    what Fluentd's msgpack formatter writes for a record with tag_key injected."""
    # The key types are compared as a set (in C): this runs once per record.
    if type(obj) is not dict or not obj or not _KEY_TYPES.issuperset(map(type, obj)):
        return False
    if required_key is None:
        return True
    found = _text_key(obj, required_key)
    return found is not None and isinstance(obj[found], (str, bytes))


def _bounded_unpacker(limit: int, raw: bool = False, text_keys: bool = False) -> msgpack.Unpacker:
    return msgpack.Unpacker(raw=raw, strict_map_key=text_keys, max_buffer_size=0,
                            max_str_len=limit, max_bin_len=limit, max_ext_len=limit,
                            max_array_len=limit, max_map_len=limit)


def record_at(data: Any, offset: int, limit: int,
              required_key: Optional[str] = None, raw: bool = False) -> Optional[bool]:
    """Whether a plausible record decodes completely at `offset` of `data`: True, False,
    or None when it is cut off by the end of `data` without a decoding error so far.
    A map that frames as a record but holds text that is not UTF-8 starts a record too
    (it is rejected alone), so two such records in a row stay two."""
    view = memoryview(data)
    unpacker = _bounded_unpacker(limit, raw)
    position = offset
    while True:
        if position >= len(view):
            return None
        unpacker.feed(view[position:position + _RESYNC_STEP])
        position += _RESYNC_STEP
        try:
            obj = unpacker.unpack()
        except msgpack.OutOfData:
            if position - offset > limit:
                return False
            continue
        except UnicodeDecodeError:
            return False if raw else record_at(data, offset, limit, required_key, raw=True)
        except Exception:  # a decoding error: not a record boundary
            return False
        return plausible_record(obj, required_key)


def resync_offset(data: Union[bytes, bytearray], required_key: Optional[str] = None, *,
                  start: int = 1, end: Optional[int] = None, eof: bool = True,
                  limit: int = 1 << 20) -> Optional[int]:
    """The first offset from `start` (and before `end`) in `data` where a plausible record
    starts completely, or None. A candidate cut off by the end of `data` counts as no
    record when `eof`; otherwise the search stops there and returns -1 (wait for more)."""
    return scan_for_record(data, required_key, start, end, eof, limit)[0]


def scan_for_record(data: Union[bytes, bytearray], required_key: Optional[str], start: int,
                    end: Optional[int], eof: bool, limit: int) -> Tuple[Optional[int], int]:
    """`resync_offset`, plus the offset before which every candidate is known not to
    start a record (so a later search after more input can begin there)."""
    stop = len(data) if end is None else end
    for match in _MAP_START.finditer(data, start, stop):
        found = record_at(data, match.start(), limit, required_key)
        if found:
            return match.start(), match.start()
        if found is None and not eof:
            return -1, match.start()
    return None, stop


def _describe(exc: Optional[BaseException]) -> str:
    text_of = str(exc)
    name = type(exc).__name__
    return f"{name}: {text_of}" if text_of else f"{name}: invalid byte"


class MsgpackInput:
    """Fluentd `<format> @type msgpack`: a stream of msgpack maps, split anywhere.

    Records are decoded straight from the buffered input. What is not a plausible
    record at a record boundary (see the framing rule above) is dealt with as follows:
    - a map that frames correctly but is over max_record_size: one `record.size`
      rejection; a map whose declared sizes already exceed the limit is streamed past
      (RecordWalker), never buffered;
    - a map that frames correctly but does not decode as text (invalid UTF-8 in a
      string): read again without text decoding and rejected alone, byte for byte;
    - a complete object that is not a record and holds no record start inside (`[1, 2]`,
      a bare string): rejected alone, decoded;
    - anything else is damage: the bytes up to the next plausible record start are one
      rejected record, and decoding resumes there. While that start cannot be seen yet
      (the bytes after the damage are still arriving) the damage waits, at most about
      2 × max_record_size bytes.
    """

    def __init__(self, router: RecordRouter, keep_raw: Callable[[Any], Any],
                 log: Optional["DiagnosticLog"] = None, fast_path: bool = True) -> None:
        self.router = router
        # False: every object is read as any key allows and decided with the walks (the
        # reference the text proof is tested against).
        self._fast_path = fast_path
        self._keep_raw = keep_raw
        self._log = log
        self._limit = router.max_record_bytes
        self._tag_key = router.tag_key
        self._buf = bytearray()   # input not decided yet
        self._offset = 0          # stream offset of _buf[0]
        # An oversized record being streamed past: (walker, stream offset, first bytes).
        self._skipping: Optional[Tuple[RecordWalker, int, bytes]] = None
        self._pos = 0             # where deciding has got to in _buf
        self._clean_to = 0        # stream offset before which no candidate starts a record

    def feed(self, chunk: bytes) -> List[Any]:
        """Outputs for every record decided with `chunk` (plus what was kept from before)."""
        outputs: List[Any] = []
        view = memoryview(chunk)
        if self._skipping is not None:
            view = self._skip(view, outputs)
        if view:
            self._buf += view
        self._decide(outputs, eof=False)
        return outputs

    def close(self) -> List[Any]:
        """At end of input: what is left is decided, an unfinished object as damage."""
        outputs: List[Any] = []
        if self._skipping is not None:
            walker, start, head = self._skipping
            self._skipping = None
            outputs.append(self._oversized(start, walker.size, head, "input ended inside an object",
                                           walker))
        self._decide(outputs, eof=True)
        return outputs

    # -- deciding --------------------------------------------------------------------------

    def _decide(self, outputs: List[Any], eof: bool) -> None:
        buf = self._buf
        self._pos = 0
        while self._pos < len(buf) and self._skipping is None:
            try:
                waiting = self._decode_run(outputs, eof)
            except Exception as exc:  # a bug of ours must not stall or kill the stream
                outputs.append(self._internal_error(self._pos, len(buf), exc))
                self._pos, waiting = len(buf), False
            if waiting:
                break
        pos = len(buf) if self._skipping is not None else self._pos
        del buf[:pos]
        self._offset += pos
        self._pos = 0

    def _decode_run(self, outputs: List[Any], eof: bool) -> bool:
        """Decode records from `self._pos` on until something is not a plain record,
        moving `self._pos` past what was decided; True to wait for more input."""
        buf, limit, key = self._buf, self._limit, self._tag_key
        base = pos = self._pos
        # Map keys str or bin only, at every depth: with strict UTF-8, the bytes of such a
        # record then show whether it is text as it is (`codec.text_object`), and one that
        # is is decided without the walks for bin values and writability (`route_text`).
        text_keys = self._fast_path

        def unpacker_from(start: int, text: bool) -> msgpack.Unpacker:
            """A fresh unpacker over the rest of the buffer, from `start`."""
            unpacker = _bounded_unpacker(limit, text_keys=text)
            unpacker.feed(memoryview(buf)[start:])
            return unpacker

        unpacker = unpacker_from(pos, text_keys)
        route, route_text = self.router.record, self.router.record_text
        # Objects read again as any key allows in this run, and whether text keys resume
        # after the one being read so: each restart feeds the rest of the buffer again, so
        # past a few the run goes on as any key allows.
        restarts, resume = 0, False
        while True:
            try:
                obj = unpacker.unpack()
            except msgpack.OutOfData:
                if pos >= len(buf):
                    return self._settle(None, pos)
                return self._settle(self._incomplete(pos, eof, outputs), pos)
            except Exception as exc:  # the peer's bytes, or a string that is not UTF-8
                if text_keys:
                    # Or a key of another type: this object is read again as any key
                    # allows, and decided with the walks.
                    restarts += 1
                    text_keys, resume, base = False, restarts <= _TEXT_KEY_RESTARTS, pos
                    unpacker = unpacker_from(pos, False)
                    continue
                return self._settle(self._undecodable(pos, exc, eof, outputs), pos)
            end = base + unpacker.tell()
            text = text_keys and text_object(buf[pos:end])
            if not plausible_record(obj, key):
                if not plausible_record(obj):
                    # Not shaped like a record at all: damage, up to the next record.
                    return self._settle(self._not_a_record(pos, end, obj, eof, outputs), pos)
                # A record without its tag, unless a record starts inside it.
                inside = self._record_inside(pos, end, eof)
                if inside == -1:
                    return self._settle(None, pos)
                if inside is not None:
                    outputs.append(self._reject_bytes(pos, inside, "not a record"))
                    return self._settle(inside, pos)
            if end - pos > limit:
                outputs.append(self.router.reject(
                    obj, "record.size",
                    f"record of {end - pos} bytes is over the {limit}-byte limit"))
            else:
                outputs.append(route_text(obj) if text else route(obj))
            pos = self._pos = end
            if resume:
                text_keys, resume, base = True, False, pos
                unpacker = unpacker_from(pos, True)

    def _settle(self, step: Optional[int], pos: int) -> bool:
        """Go on from `step` (True: wait at `pos` for more input)."""
        if step is None:
            self._pos = pos
            return True
        self._pos = step
        return False

    def _not_a_record(self, pos: int, end: int, obj: Any, eof: bool,
                      outputs: List[Any]) -> Optional[int]:
        """A complete object that is not a record at `pos`: it and whatever follows up to
        the next record are one rejection (the object itself as original when alone)."""
        overflowing = self._overflowing(pos)
        found = self._next_record(pos, eof or overflowing)
        if found == -1 or (found is None and not (eof or overflowing)):
            return None
        if found == end or (found is None and end == len(self._buf)):
            outputs.append(self.router.unreadable(
                self._keep_raw(obj), "input.msgpack",
                f"msgpack {type(obj).__name__} of {end - pos} bytes at input offset "
                f"{self._offset + pos} is not a record (a map with text keys)"))
            return end
        found = len(self._buf) if found is None else found
        outputs.append(self._reject_bytes(pos, found, "not a record"))
        return found

    def _next_record(self, pos: int, eof: bool) -> Optional[int]:
        """The first plausible record start after `pos` in what is buffered (None: none,
        -1: cannot be known yet). Candidates already ruled out by an earlier search are
        not tried again, so damage arriving in many small reads costs no more than once."""
        start = max(pos + 1, self._clean_to - self._offset)
        found, clean = scan_for_record(self._buf, self._tag_key, start, None, eof, self._limit)
        self._clean_to = max(self._clean_to, self._offset + clean)
        return found

    def _record_inside(self, pos: int, end: int, eof: bool) -> Optional[int]:
        """The first plausible record start after `pos` and before `end`, None, or -1
        when that cannot be known before more input arrives."""
        return resync_offset(self._buf, self._tag_key, start=pos + 1, end=end,
                             eof=eof or self._overflowing(pos), limit=self._limit)

    def _overflowing(self, pos: int) -> bool:
        """Too much undecided input: decide with what there is."""
        return len(self._buf) - pos > 2 * self._limit + READ_SIZE

    def _incomplete(self, pos: int, eof: bool, outputs: List[Any]) -> Optional[int]:
        buf = self._buf
        if _is_map_header(buf[pos]):
            walker = RecordWalker(SKIP_FACTOR * self._limit)
            # While the record may still fit, only its first bytes are checked (is its first
            # key text?); past the limit it is walked through for its declared sizes.
            state, _ = (walker.walk(memoryview(buf)[pos:pos + 64])
                        if len(buf) - pos <= self._limit else walker.walk(memoryview(buf)[pos:]))
            if state == _WALK_INVALID:
                return self._damage(pos, eof, outputs)
            if walker.known_size > self._limit or len(buf) - pos > self._limit:
                return self._start_skipping(pos, outputs)
            if not eof:
                return None  # a record still arriving
        return self._damage(pos, eof, outputs)

    def _undecodable(self, pos: int, exc: Exception, eof: bool, outputs: List[Any]) -> Optional[int]:
        buf = self._buf
        if not _is_map_header(buf[pos]):
            return self._damage(pos, eof, outputs)
        walker = RecordWalker(SKIP_FACTOR * self._limit)
        state, used = walker.walk(memoryview(buf)[pos:])
        if state == _WALK_INVALID:
            return self._damage(pos, eof, outputs)
        if state == _WALK_MORE:
            if walker.known_size > self._limit or len(buf) - pos > self._limit:
                return self._start_skipping(pos, outputs)
            return None if not eof else self._damage(pos, eof, outputs)
        end = pos + used
        if used > self._limit:
            outputs.append(self._oversized(self._offset + pos, used, bytes(buf[pos:pos + KEPT_BYTES]),
                                           walker=walker))
            return end
        data = bytes(buf[pos:end])
        try:  # framed as a record: only its text is bad; keep it byte for byte
            raw_obj = msgpack.unpackb(data, raw=True, strict_map_key=False)
        except TypeError:  # a map keyed by a map or an array: one record, which Python cannot hold
            try:
                path, raw_obj = unpack_with_pairs(data, raw=True)
            except ValueError:
                return self._damage(pos, eof, outputs)
            problem = (f"holds a map keyed by a map or an array at '{path}', which a record cannot hold; "
                       "original shows that map as its [key, value] pairs, with strings undecoded")
        except Exception:
            return self._damage(pos, eof, outputs)
        else:
            if type(raw_obj) is not dict:
                return self._damage(pos, eof, outputs)
            problem = f"cannot be decoded as a record ({_describe(exc)}); original holds it with strings undecoded"
        # Alone only if a record (or the end of input) follows; else it is part of damage.
        # The search starts after the map: a map inside it is one of its values (as for a
        # record that decodes), not a record of its own.
        overflowing = self._overflowing(pos)
        found = self._next_record(end - 1, eof or overflowing)
        if found == -1 or (found is None and not (eof or overflowing)):
            return None
        if found is not None and found != end or found is None and end != len(buf):
            outputs.append(self._reject_bytes(pos, len(buf) if found is None else found,
                                              "not a record"))
            return len(buf) if found is None else found
        message = f"msgpack object of {used} bytes {problem}"
        if self._log is not None:
            self._log.write(message, problem=True)
        outputs.append(self.router.unreadable(self._keep_raw(raw_obj), "input.msgpack", message))
        return end

    def _damage(self, pos: int, eof: bool, outputs: List[Any]) -> Optional[int]:
        """The bytes from `pos` to the next plausible record start as one rejection."""
        buf = self._buf
        overflowing = self._overflowing(pos)
        found = self._next_record(pos, eof or overflowing)
        if found == -1:
            return None
        if found is None:
            if not (eof or overflowing):
                return None  # the damage may go on in the next read
            found = len(buf)
        why = "input ended inside an object" if eof and found == len(buf) else "not a record"
        outputs.append(self._reject_bytes(pos, found, why))
        return found

    # -- oversized records -----------------------------------------------------------------

    def _start_skipping(self, pos: int, outputs: List[Any]) -> int:
        """Stream past the record at `pos` without buffering it."""
        walker = RecordWalker(SKIP_FACTOR * self._limit)
        head = bytes(self._buf[pos:pos + KEPT_BYTES])
        self._skipping = (walker, self._offset + pos, head)
        rest = self._skip(memoryview(self._buf)[pos:], outputs)
        if rest:  # the record ended inside what was buffered
            return len(self._buf) - len(rest)
        return len(self._buf)

    def _skip(self, view: memoryview, outputs: List[Any]) -> memoryview:
        """Feed `view` to the record being skipped; returns the bytes after its end."""
        assert self._skipping is not None
        walker, start, head = self._skipping
        state, used = walker.walk(view)
        if state == _WALK_MORE:
            return view[len(view):]
        self._skipping = None
        if state == _WALK_DONE:
            outputs.append(self._oversized(start, walker.size, head, walker=walker))
        else:
            outputs.append(self._reject_region(head, start, walker.size,
                                               "an oversized object that turned out not to be a record"))
        return view[used:]

    def _oversized(self, start: int, size: int, head: bytes, why: str = "",
                   walker: Optional[RecordWalker] = None) -> Any:
        message = (f"record of {size} bytes at input offset {start} is over the "
                   f"{self._limit}-byte limit; original holds its first {len(head)} bytes")
        if why:
            message += f" ({why})"
        if self._log is not None:
            self._log.write(message, problem=True)
        tag = self._tag_in(head)
        if tag is None and walker is not None and self._tag_key:
            tag = walker.top_text.get(self._tag_key.encode("utf-8"))
        if tag is not None and self._tag_key:
            return self.router.reject({self._tag_key: tag, "original": self._keep_raw(head)},
                                      "record.size", message, unwrap="original")
        return self.router.unreadable(self._keep_raw(head), "record.size", message)

    def _tag_in(self, head: bytes) -> Any:
        """The tag of a record whose first bytes are `head`, if it is among them."""
        if not self._tag_key:
            return None
        unpacker = _bounded_unpacker(self._limit)
        unpacker.feed(head)
        try:
            for _ in range(unpacker.read_map_header()):
                key = unpacker.unpack()
                value = unpacker.unpack()
                if key in (self._tag_key, self._tag_key.encode("utf-8")):
                    return value if isinstance(value, (str, bytes)) else None
        except Exception:  # cut off by the end of `head`, or not decodable
            pass
        return None

    # -- rejections of raw bytes -------------------------------------------------------------

    def _reject_bytes(self, pos: int, end: int, why: str) -> Any:
        """The buffered bytes from `pos` to `end` as one rejected record."""
        data = bytes(self._buf[pos:end])
        return self._reject_region(data, self._offset + pos, len(data), why)

    def _reject_region(self, data: bytes, start: int, size: int, why: str) -> Any:
        kept = data[:self._limit]
        message = f"{size} bytes at input offset {start} are not a msgpack record ({why})"
        if size > len(kept):
            message += f"; original holds the first {len(kept)}"
        if self._log is not None:
            self._log.write(f"{message}; first bytes: {kept[:LOG_PREVIEW_BYTES].hex()}", problem=True)
        return self.router.unreadable(self._keep_raw(kept), "input.msgpack", message)

    def _internal_error(self, pos: int, end: int, exc: Exception) -> Any:
        data = bytes(self._buf[pos:end])
        message = (f"internal error while reading {len(data)} bytes at input offset "
                   f"{self._offset + pos}: {type(exc).__name__}: {exc}")
        if self._log is not None:
            self._log.write(message, problem=True)
        return self.router.unreadable(self._keep_raw(data[:KEPT_BYTES]), "internal.error", message)


RecordInput = Union[JsonLinesInput, TsvInput, MsgpackInput]
