"""json_line(): the writability test by encoding, compared with the walk it replaces
(`is_encodable`), with the JSON-lines writer's text (`jsonlines.dumps`) and with the standard
encoder's text, which msgspec must reproduce wherever it writes a line."""

import json
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from atnorm.bench.eventgen import EventGenerator
from atnorm.core import jsonlines
from atnorm.core.pipeline import EventFilter
from atnorm.model.encodable import MAX_DEPTH, MAX_INT, MIN_INT, _plain, encodable, is_encodable, json_line

# Leaves JSON's decoders return, with the ones no destination takes as they are.
ODD_INTEGERS = [MAX_INT, MAX_INT + 1, MIN_INT, MIN_INT - 1, 10 ** 18, -(10 ** 18), 10 ** 19, 1 << 200]
ODD_FLOATS = [float("nan"), float("inf"), float("-inf"), 1e16, 1e-7, -0.0, 1.5e300]
ODD_TEXT = ["\ud800", "a\udcffb", "Zürich", "1234567890123456789", "{[{[", "\u2028", "\x00", "é\udc80"]
leaves = (st.none() | st.booleans() | st.integers() | st.sampled_from(ODD_INTEGERS) | st.floats()
          | st.sampled_from(ODD_FLOATS) | st.text() | st.sampled_from(ODD_TEXT))
keys = st.text(max_size=4) | st.sampled_from(ODD_TEXT)
json_values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(keys, inner, max_size=4), max_leaves=30)


def nested(depth, leaf="x"):
    value = leaf
    for index in range(depth):
        value = [value] if index % 2 else {"k": value}
    return value


def check(value):
    line = json_line(value)
    assert (line is not None) == is_encodable(value), value
    if line is not None:
        assert line == jsonlines.dumps(value) == _dumps_by_the_standard_encoder(value)


@settings(max_examples=2000, deadline=None, database=None, derandomize=True)
@given(json_values)
def test_json_line_says_what_the_walk_says_on_any_json_value(value):
    check(value)


def test_nesting_right_at_the_depth_limit_and_past_it():
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1, 600, 5000):
        check(nested(depth))
    assert json_line(nested(MAX_DEPTH)) is not None and json_line(nested(MAX_DEPTH + 1)) is None
    # Brackets in text are not nesting: walked, and found writable.
    check({"text": "[" * (MAX_DEPTH + 5)})
    assert json_line({"text": "[" * (MAX_DEPTH + 5)}) is not None


def test_integers_at_the_edges_of_64_bits():
    for number in ODD_INTEGERS + [MAX_INT - 1, MIN_INT + 1, -(1 << 63) - 1]:
        check({"n": number})
        check([number, "19 digits: 1234567890123456789"])
    assert json_line({"n": MAX_INT}) is not None and json_line({"n": MAX_INT + 1}) is None


def test_records_decoded_from_json_over_generated_and_mutated_events():
    event_filter = EventFilter.from_schemas()
    rng = random.Random(3)
    compared = 0
    for seed in (1, 2, 3):
        generator = EventGenerator(event_filter.rules, seed)
        for record in generator.mix(1000, 0.3):
            text = json.dumps(record, ensure_ascii=False)
            if rng.random() < 0.3:  # a number or a text made odd in the line itself
                text = text.replace('"', '"\\ud800', 1) if rng.random() < 0.5 else text.replace(
                    ":", ":18446744073709551616,\"x\":", 1)
            value = json.loads(text)
            check(value)
            verdict = event_filter.process_json(text)
            check(verdict.record)
            compared += 2
    assert compared == 6000


def test_every_character_is_escaped_as_the_writer_escapes_it():
    characters = [chr(code) for code in range(0x110000) if not 0xD800 <= code <= 0xDFFF]
    check(characters)
    check({character: character for character in characters[:0x3000]})
    assert json_line(characters) is not None


def test_values_without_floats_and_with_them_give_the_writer_text():
    for value in ({}, [], {"a": {}}, [[]], {"b": True, "n": None, "i": -1, "s": ""}, [0, False, None],
                  {"f": 1.0}, {"f": 1e16}, [1e-7, 1], {"x": [{"y": 2.5}]}):
        check(value)
        assert json_line(value) is not None


def _dumps_by_the_standard_encoder(record):
    """jsonlines.dumps as it was before msgspec wrote any line."""
    try:
        return jsonlines.dumps_as_is(record)
    except jsonlines.UNWRITABLE:
        return jsonlines._encoder.encode(encodable(record))


# Records as msgpack or Python code may make them: keys that are not text, bytes, sets.
ODD_KEYS = [1, -1, 2 ** 70, 1.5, float("nan"), True, False, None, b"k", b"\xff", "\ud800", "é"]
any_keys = keys | st.sampled_from(ODD_KEYS) | st.integers()


def _containers_with_any_keys(inner):
    return st.lists(inner, max_size=4) | st.dictionaries(any_keys, inner, max_size=4)


any_values = st.recursive(leaves | st.binary(max_size=4) | st.sampled_from([b"\xff", frozenset({1}), (1, "a")]),
                          _containers_with_any_keys, max_leaves=30)


@settings(max_examples=2000, deadline=None, database=None, derandomize=True)
@given(any_values)
def test_the_jsonlines_writer_gives_the_standard_encoders_text_on_any_record(value):
    assert jsonlines.dumps(value) == _dumps_by_the_standard_encoder(value)


def test_the_jsonlines_writer_on_dead_letters_of_generated_records():
    event_filter = EventFilter.from_schemas()
    written = 0
    for record in EventGenerator(event_filter.rules, 4).mix(1500, 0.5):
        verdict = event_filter.process(record)
        for value in (verdict.dead_letter(), verdict.record, {"original": record, 1: [b"\xff", 2.5]}):
            assert jsonlines.dumps(value) == _dumps_by_the_standard_encoder(value)
            written += 1
    assert written == 4500


def _writable_walked_value_by_value(value, depth=MAX_DEPTH):
    """is_encodable as specified: one test per value, text without lone surrogates, integers
    in 64 bits, finite floats, str keys, at most MAX_DEPTH levels."""
    if isinstance(value, bool) or value is None:
        return True
    if type(value) is str:
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if type(value) is int:
        return MIN_INT <= value <= MAX_INT
    if type(value) is float:
        return value == value and value not in (float("inf"), float("-inf"))
    if type(value) is dict:
        return depth > 0 and all(type(k) is str and _writable_walked_value_by_value(k) for k in value) and all(
            _writable_walked_value_by_value(item, depth - 1) for item in value.values())
    if type(value) is list:
        return depth > 0 and all(_writable_walked_value_by_value(item, depth - 1) for item in value)
    return False


@settings(max_examples=2000, deadline=None, database=None, derandomize=True)
@given(any_values)
def test_the_writability_walk_says_what_a_value_by_value_walk_says(value):
    assert is_encodable(value) == _writable_walked_value_by_value(value)


def test_the_writability_walk_at_the_depth_limit():
    for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):
        for leaf in ["x", None, True, 1.5, "\ud800", b"x", float("nan")] + ODD_INTEGERS:
            for value in (nested(depth, leaf), nested(depth, [leaf, 1]), {"a": leaf}, [leaf], {"k": [leaf]}):
                assert is_encodable(value) == _writable_walked_value_by_value(value), (depth, leaf)


def _plain_by_recursion(value, depth, keys):
    """The plainness walk as one call per container (what `_plain` does in fewer calls)."""
    if depth <= 0:
        return False
    if isinstance(value, dict):
        if keys and any(type(key) is not str for key in value):
            return False
        value = list(value.values())
    return all(_plain_by_recursion(item, depth - 1, keys) if type(item) in (dict, list)
               else type(item) in (str, bool, type(None)) or (type(item) is int and MIN_INT <= item <= MAX_INT)
               for item in value)


@settings(max_examples=3000, deadline=None, database=None, derandomize=True)
@given(st.lists(any_values, max_size=3) | st.dictionaries(any_keys, any_values, max_size=3),
       st.integers(min_value=-1, max_value=7), st.booleans())
def test_the_plainness_walk_at_every_depth_bound(value, depth, keys):
    assert _plain(value, depth, keys) == _plain_by_recursion(value, depth, keys)


def test_the_plainness_walk_on_nesting_around_the_bound():
    for depth in range(0, 12):
        for leaf in ("x", 1, 1.5, None, [], {}, MAX_INT + 1):
            for value in (nested(depth, leaf), [nested(depth, leaf)], {"k": nested(depth, leaf)}):
                if isinstance(value, (dict, list)):
                    for bound in range(0, 14):
                        assert _plain(value, bound) == _plain_by_recursion(value, bound, False), (value, bound)
