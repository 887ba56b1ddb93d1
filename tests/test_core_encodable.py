"""encodable(): any value becomes one that strict JSON and msgpack both encode."""

import json
import math

import msgpack

from atnorm.forward.codec import EventTime, packb
from atnorm.model.encodable import MAX_DEPTH, describe_error, encodable


def strict_json(value):
    return json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")


def both(value):
    out = encodable(value)
    strict_json(out)
    msgpack.packb(out, use_bin_type=True)  # strict UTF-8, 64-bit ints
    return out


def test_values_already_fine_come_back_unchanged():
    record = {"action": "a.b.c", "n": 1, "f": 1.5, "ok": True, "none": None, "list": [1, "two", {"x": "Zürich"}]}
    assert both(record) == record


def test_lone_surrogates_and_escaped_bytes_become_readable_text():
    assert both("a\ud800b") == "a\\ud800b"
    assert both("caf\udcc3") == "caf\\xc3"  # a byte surrogateescape kept from a non-UTF-8 msgpack str
    assert both({"k\udcff": "v"}) == {"k\\xff": "v"}


def test_bytes_become_text():
    assert both(b"Z\xc3\xbcrich") == "Zürich"
    assert both(b"\xff\xfe") == "\\xff\\xfe"
    assert both({b"key": [b"v"]}) == {"key": ["v"]}


def test_integers_outside_64_bits_become_text_even_past_the_str_digit_limit():
    assert both(2 ** 64) == str(2 ** 64)
    assert both(-(2 ** 63) - 1) == str(-(2 ** 63) - 1)
    assert both(2 ** 64 - 1) == 2 ** 64 - 1
    huge = 7 ** 6000  # more than 4,300 decimal digits: str() refuses it
    assert both(huge) == hex(huge)


def test_nan_and_infinities_become_text():
    assert both([math.nan, math.inf, -math.inf]) == ["NaN", "Infinity", "-Infinity"]


def test_keys_that_are_not_strings_become_text_without_losing_a_value():
    assert both({1: "a", "1": "b", None: "c", 2.5: "d", (1, 2): "e"}) == {
        "1": "a", "1'": "b", "null": "c", "2.5": "d", "(1, 2)": "e"}


def test_nesting_deeper_than_the_cut_is_kept_as_json_text():
    deep = ["bottom"]
    for _ in range(50_000):
        deep = [deep]
    out = both({"deep": deep})
    depth = 0
    node = out["deep"]
    while isinstance(node, list):
        node, depth = node[0], depth + 1
    assert depth == MAX_DEPTH - 1
    # nothing is lost: the rest of the value is its JSON text
    assert node == "[" * (50_001 - depth) + '"bottom"' + "]" * (50_001 - depth)


def test_other_types_become_something_writable():
    out = both({"t": EventTime(1, 500_000_000), "s": {3}, "x": msgpack.ExtType(5, b"\x01"), "o": object()})
    assert out["t"] == 1.5 and out["s"] == [3] and out["x"] == {"ext": 5, "base64": "AQ=="}
    assert out["o"].startswith("<object object")
    packb(out)


def test_describe_error_is_bounded_and_encodable():
    text = describe_error(ValueError("x\ud800" * 1000))
    assert text.startswith("ValueError: x\\ud800") and len(text) <= 501
    strict_json(text)
