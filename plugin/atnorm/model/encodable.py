"""Values every destination can encode: strict JSON (UTF-8, no NaN) and msgpack alike.

Records come from traffic, so they can hold what one of the ways out cannot write: lone
surrogates (a JSON `"\\ud800"`, or the bytes of a msgpack str that was not UTF-8, kept by
`surrogateescape`), bytes that are not UTF-8, integers outside msgpack's 64-bit range (or
too long for `str()`), NaN and infinities, keys that are not strings, nesting deeper than
an encoder goes. `encodable(value)` returns a copy in which each of those is replaced by
text that says what it was; anything already fine is returned as it is (same objects).

Writers (JSON lines, the forward sender, the exec-filter's output) call it when encoding a
record fails, and the filter calls it for the original of a record it could not decide.
"""

from __future__ import annotations

import base64
import json
import math
import re
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import msgspec

from .jsoncodec import compact_json

# msgpack's integer range (int64 for negatives, uint64 for the rest).
MIN_INT = -(1 << 63)
MAX_INT = (1 << 64) - 1
# Deeper than this, a value is kept as its JSON text (msgpack's packer stops at 511 levels,
# Python's json at about 1000, other parsers earlier).
MAX_DEPTH = 100
# JSON text of a too-deep value is cut at about this many characters.
MAX_TEXT = 1 << 20

# A lone surrogate, in regex escapes: no surrogate stands in the source itself.
SURROGATE = re.compile(r"[\ud800-\udfff]")


def _escape_surrogate(match: "re.Match[str]") -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # one byte that was not UTF-8, kept by surrogateescape
        return "\\x%02x" % (code - 0xDC00)
    return "\\u%04x" % code


def text(value: str) -> str:
    """`value` with lone surrogates written out as `\\uXXXX` (or `\\xNN` for escaped bytes)."""
    if value.isascii():
        return value
    return SURROGATE.sub(_escape_surrogate, value)


def bytes_text(value: bytes) -> str:
    """Bytes as text: decoded when they are UTF-8, else with `\\xNN` for each bad byte."""
    return value.decode("utf-8", "backslashreplace")


def pointer_part(part: str) -> str:
    """A JSON pointer reference token (RFC 6901): `~` as `~0`, `/` as `~1`."""
    return part.replace("~", "~0").replace("/", "~1")


def key_pointer_part(key: Any) -> str:
    """The reference token of a map key of any type, named as `encodable` writes the key."""
    return pointer_part(_key(key))


def integer(value: int) -> Any:
    """`value`, or its decimal text when msgpack cannot hold it (hex when too long for decimal)."""
    if MIN_INT <= value <= MAX_INT:
        return value
    try:
        return str(value)
    except ValueError:  # more digits than int→str converts (sys.get_int_max_str_digits)
        return hex(value)


def _key(key: Any) -> str:
    kind = type(key)
    if kind is str:
        return text(key)
    if kind is bytes or kind is bytearray:
        return bytes_text(bytes(key))
    if key is None:
        return "null"
    if kind is bool:
        return "true" if key else "false"
    leaf = _leaf(key)
    return leaf if isinstance(leaf, str) else str(leaf)


def _leaf(value: Any) -> Any:
    kind = type(value)
    if value is None or kind is bool:
        return value
    if kind is str:
        return text(value)
    if kind is int:
        return integer(value)
    if kind is float:
        if math.isfinite(value):
            return value
        return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    if kind is bytes or kind is bytearray or kind is memoryview:
        return bytes_text(bytes(value))
    if isinstance(value, str):
        return text(str(value))
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return integer(int(value))
    if isinstance(value, float):
        return _leaf(float(value))
    to_float = getattr(value, "to_float", None)  # forward_codec.EventTime
    if callable(to_float):
        return _leaf(to_float())
    if isinstance(value, msgpack.ExtType):
        return {"ext": value.code, "base64": base64.b64encode(value.data).decode("ascii")}
    try:
        return text(repr(value))
    except Exception:  # a repr that fails is still a value we must be able to write
        return "<%s>" % type(value).__name__


def encodable(value: Any, max_depth: int = MAX_DEPTH) -> Any:
    """A copy of `value` that strict JSON and msgpack can both encode (see the module doc).

    Maps keep their order; keys become text (`null`/`true`/`false` for those values); lists,
    tuples and sets become lists; anything nested deeper than `max_depth` becomes its JSON
    text (`json_text`), so nothing of it is lost. Never raises for any input.
    """
    return _encodable(value, max_depth)


def _encodable(value: Any, depth: int) -> Any:
    if isinstance(value, dict):
        if depth <= 0:
            return json_text(value)
        out: Dict[str, Any] = {}
        for key, item in list(value.items()):
            name = _key(key)
            while name in out:  # two keys that read the same (b"a" and "a", 1 and "1")
                name += "'"
            out[name] = _encodable(item, depth - 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)) and not isinstance(value, msgpack.ExtType):
        if depth <= 0:
            return json_text(value)
        return [_encodable(item, depth - 1) for item in list(value)]
    return _leaf(value)


def json_text(value: Any, limit: int = MAX_TEXT) -> str:
    """JSON text of `value` built without recursion, so any nesting depth encodes; leaves and
    keys as `encodable` makes them. Cut (with `...(cut)`) at about `limit` characters."""
    parts: List[str] = []
    size = 0
    stack: List[Any] = [value]
    while stack:
        item = stack.pop()
        if type(item) is _Syntax:
            piece = item.text
        elif isinstance(item, dict):
            piece = "{"
            entries = list(item.items())
            stack.append(_Syntax("}"))
            for index in range(len(entries) - 1, -1, -1):
                key, child = entries[index]
                stack.append(child)
                stack.append(_Syntax(("," if index else "") + json.dumps(_key(key), ensure_ascii=False) + ":"))
        elif isinstance(item, (list, tuple, set, frozenset)) and not isinstance(item, msgpack.ExtType):
            piece = "["
            items = list(item)
            stack.append(_Syntax("]"))
            for index in range(len(items) - 1, -1, -1):
                stack.append(items[index])
                if index:
                    stack.append(_Syntax(","))
        else:
            piece = json.dumps(_leaf(item), ensure_ascii=False, allow_nan=False)
        parts.append(piece)
        size += len(piece)
        if size > limit:
            parts.append(" ...(cut)")
            break
    return "".join(parts)


class _Syntax:
    """A piece of JSON syntax on `json_text`'s stack."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def is_encodable(value: Any, max_depth: int = MAX_DEPTH) -> bool:
    """True when `encodable(value)` would change nothing: `value` can be written as it is."""
    try:
        return _fine(value, max_depth)
    except RecursionError:
        return False


def _fine(value: Any, depth: int) -> bool:
    # Text, integers, booleans and None, most of a record, are tested in the loops, not by
    # a call each.
    kind = type(value)
    if kind is str:
        return value.isascii() or SURROGATE.search(value) is None
    if kind is dict:
        if depth <= 0:
            return False
        for key, item in value.items():
            if type(key) is not str or not key.isascii() and SURROGATE.search(key) is not None:
                return False
            kind = type(item)
            if kind is str:
                if not item.isascii() and SURROGATE.search(item) is not None:
                    return False
            elif kind is int:
                if not MIN_INT <= item <= MAX_INT:
                    return False
            elif item is not None and kind is not bool and not _fine(item, depth - 1):
                return False
        return True
    if kind is list:
        if depth <= 0:
            return False
        for item in value:
            kind = type(item)
            if kind is str:
                if not item.isascii() and SURROGATE.search(item) is not None:
                    return False
            elif kind is int:
                if not MIN_INT <= item <= MAX_INT:
                    return False
            elif item is not None and kind is not bool and not _fine(item, depth - 1):
                return False
        return True
    if kind is int:
        return MIN_INT <= value <= MAX_INT
    if kind is float:
        return math.isfinite(value)
    return value is None or kind is bool


# Compact strict JSON, as the JSON-lines writers make it (jsonlines.dumps): for values of
# JSON's own types the same text. No cycle check: json_line takes decoded values only.
_strict_json = compact_json()
# Bytes of a line by class, for counting in C: 1 a digit, 2 an opening bracket, 0 the rest.
_CLASSES = bytes(1 if 0x30 <= b <= 0x39 else 2 if b in b"{[" else 0 for b in range(256))
# An integer outside msgpack's range has at least 19 digits (one inside may too: then the walk decides).
_LONG_NUMBER = b"\x01" * 19


# msgspec (C) writes JSON's own types without floats as `_strict_json` does, every character
# escaped alike, in a fraction of the time; its floats differ (`1e16`, NaN as null).
_msgspec_json = msgspec.json.Encoder().encode


def _plain(value: Any, depth: int, keys: bool = False) -> bool:
    """True when `value`, a dict or list of JSON's own types (str keys, tested too if `keys`),
    holds no float, integers in msgpack's range only and at most `depth` levels: then msgspec
    writes it as `_strict_json` does, or raises UnicodeEncodeError for a lone surrogate.
    Text, the most of a record, costs one type test here. The objects inside (an event's
    initiator, target, reason) are walked in their parent's loop: a call each would cost
    more than their few values."""
    if depth <= 0:
        return False
    if type(value) is dict:
        if keys and not _str_keys(value):
            return False
        value = value.values()
    for item in value:
        kind = type(item)
        if kind is str:
            continue
        if kind is dict or kind is list:
            if depth <= 1:
                return False
            if kind is dict:
                if keys and not _str_keys(item):
                    return False
                item = item.values()
            for child in item:
                kind = type(child)
                if kind is str:
                    continue
                if kind is dict or kind is list:
                    if not _plain(child, depth - 2, keys):
                        return False
                elif kind is int:
                    if not MIN_INT <= child <= MAX_INT:
                        return False
                elif child is not None and kind is not bool:
                    return False
        elif kind is int:
            if not MIN_INT <= item <= MAX_INT:
                return False
        elif item is not None and kind is not bool:
            return False  # a float (msgspec writes 1e16, NaN otherwise) or no JSON type at all
    return True


def _str_keys(value: Dict[Any, Any]) -> bool:
    try:
        "".join(value)  # in C: TypeError for a key that is not a str
    except TypeError:
        return False
    return True


def plain_json_line(value: Any, keys: bool = True) -> Optional[str]:
    """The compact strict JSON text of `value` (any value) written by msgspec, where that is
    the standard encoder's text: a dict or list of JSON's own types, str keys, no float, no
    lone surrogate, within MAX_DEPTH and 64 bits. None otherwise, for the caller's own way.
    `keys` False: the keys are known to be str (a value a JSON decoder returned)."""
    try:
        if (type(value) is dict or type(value) is list) and _plain(value, MAX_DEPTH, keys):
            return _msgspec_json(value).decode("utf-8")
    except (RecursionError, UnicodeEncodeError, TypeError):
        pass
    return None


def json_line(value: Any) -> Optional[str]:
    """The compact strict JSON text of `value` when `is_encodable(value)`, else None.

    Only for a value of JSON's own types (dicts with str keys, lists, str, int, float, bool,
    None), as a JSON decoder returns them. One without floats that the walk finds writable
    is written by msgspec. Otherwise the standard encoder (C) refuses NaN and infinities;
    what it lets through shows in the text: a lone surrogate fails UTF-8, an integer past 64
    bits is 19 digits in a row, nesting past MAX_DEPTH needs more brackets. Only a line that
    shows one of these is walked by `is_encodable` (19 digits may be text, brackets too).
    """
    line = plain_json_line(value, keys=False)
    if line is not None:
        return line
    try:
        line = _strict_json(value)
    except (ValueError, RecursionError, TypeError):  # NaN, infinity, too many digits, too deep
        return None
    try:
        classes = line.encode("utf-8").translate(_CLASSES)
    except UnicodeEncodeError:  # a lone surrogate
        return None
    if _LONG_NUMBER not in classes and classes.count(2) <= MAX_DEPTH:
        return line
    return line if is_encodable(value) else None


def first_unencodable(value: Any, max_depth: int = MAX_DEPTH) -> Tuple[str, str]:
    """(JSON pointer, what it is) of the first part of `value` that `is_encodable` refuses;
    ("", ...) when none is found (call it only for a value that is not encodable)."""
    stack: List[Tuple[str, Any, int]] = [("", value, max_depth)]
    while stack:
        path, item, depth = stack.pop()
        kind = type(item)
        if kind is dict or kind is list:
            if depth <= 0:
                return path, f"nesting deeper than {max_depth} levels"
            if kind is list:
                pairs = [(str(i), child) for i, child in enumerate(item)]
            else:
                pairs = []
                for key, child in item.items():
                    if type(key) is not str or not _fine(key, 1):
                        return path, f"a key that is not text: {_key(key)!r}"
                    pairs.append((pointer_part(key), child))
            stack.extend((f"{path}/{name}", child, depth - 1) for name, child in pairs[::-1])
        elif not _fine(item, 1):
            leaf = _leaf(item)
            shown = leaf if isinstance(leaf, str) else repr(item)
            return path, f"a {kind.__name__} value {shown[:80]!r}"
    return "", "a value that cannot be written"


def describe_error(exc: BaseException, limit: int = 500) -> str:
    """`Type: message` for a reason, bounded in length and itself encodable."""
    try:
        message = str(exc)
    except Exception:
        message = ""
    described = text(type(exc).__name__ + (": " + message if message else ""))
    if len(described) > limit:
        described = described[:limit] + "…"
    return described
