"""The msgspec JSON decoder must give the standard library's values, or its errors.

12,000+ JSON lines (the sample events and generated ones, written several ways, then
mutated at the byte level: NaN / Infinity literals, big and long integers, floats of every
bit pattern, duplicate keys, escaped lone surrogates, invalid UTF-8, control characters,
a BOM, truncation, deep nesting) are decoded by `jsoncodec.loads` and by `json.loads`:
same values (types, key order, -0.0 and NaN included) or the same exception type. The
decoded records then go through the filter: same verdicts, and their outputs are the same
JSON lines.
"""

import json
import math
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from atnorm.bench.eventgen import EventGenerator
from atnorm.core import jsonlines
from atnorm.core.pipeline import EventFilter
from atnorm.model.jsoncodec import loads
from support import random_float

FIXTURES = Path(__file__).parent / "fixtures" / "events"
LINES = 12_000



def _outcome(call, *args):
    """(kind, value) where kind is "ok" or the exception type's name; `value` in a form
    that tells int from float, -0.0 from 0.0 and keeps NaN equal to itself."""
    try:
        value = call(*args)
    except Exception as exc:
        return type(exc).__name__, None
    return "ok", _exact(value)


def _exact(value):
    # A flat list of tokens, built without recursion: values nest deeper than the stack.
    tokens, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            tokens.append(("dict", len(item)))
            for key, inner in reversed(list(item.items())):
                stack += [inner, key]
        elif isinstance(item, list):
            tokens.append(("list", len(item)))
            stack += reversed(item)
        elif isinstance(item, float):
            tokens.append(("float", "nan" if math.isnan(item) else item.hex()))
        else:
            tokens.append((type(item).__name__, item))
    return tokens



NUMBER_TEXTS = ["NaN", "-Infinity", "Infinity", "1e400", "-1e400", "1E5", "1.0e+5", "-0", "-0.0", "0.1",
                "1e16", "5e-324", "2.2250738585072014e-308", "123456789012345678901234567890",
                "-9223372036854775809", "18446744073709551616", "9" * 5000, "1.5", "01", "1.", ".5", "+1"]


def _mutate(rng, line):
    """One byte-level change to a JSON line (bytes), often one that makes it odd or invalid."""
    kind = rng.randrange(13)
    if kind == 0:  # a number in an odd form, in place of a string value
        return line.replace(b':"', b":" + rng.choice(NUMBER_TEXTS).encode() + b',"x":"', 1)
    if kind == 1:  # a float of any bit pattern, as repr writes it
        return line[:-1] + b',"f":' + repr(random_float(rng)).encode() + b"}"
    if kind == 2:  # a duplicate key
        return line[:-1] + b',"action":"dup.' + str(rng.randrange(9)).encode() + b'"}'
    if kind == 3:  # an escaped surrogate, lone or paired
        escape = rng.choice([b"\\ud800", b"\\udfff", b"\\ud83d\\ude00", b"\\ude00\\ud83d", b"\\ud800x"])
        return line.replace(b':"', b':"' + escape, 1)
    if kind == 4:  # invalid or odd UTF-8 (an encoded surrogate, a stray continuation byte, overlong)
        bad = rng.choice([b"\xed\xa0\x80", b"\x80", b"\xc0\xaf", b"\xff", b"\xf4\x90\x80\x80"])
        at = rng.randrange(len(line))
        return line[:at] + bad + line[at:]
    if kind == 5:  # a raw control character inside a string
        return line.replace(b':"', b':"' + bytes([rng.randrange(32)]), 1)
    if kind == 6:  # a BOM
        return b"\xef\xbb\xbf" + line
    if kind == 7:  # truncated
        return line[:rng.randrange(len(line))]
    if kind == 8:  # nested around the recursion limit, inside the record
        depth = rng.choice([10, 499, 501, 900, 990, 995, 999, 1005, 3000])
        return line[:-1] + b',"deep":' + b"[" * depth + b"1" + b"]" * depth + b"}"
    if kind == 9:  # non-ASCII text, raw and escaped
        return line.replace(b':"', ':"é中😀\\u00e9\\u4e2d'.encode("utf-8"), 1)
    if kind == 10:  # whitespace around and inside
        return b" \t\n" + line.replace(b":", b" : ").replace(b",", b" ,\n ") + b" \r\n"
    if kind == 11:  # one random byte replaced
        at = rng.randrange(len(line))
        return line[:at] + bytes([rng.randrange(256)]) + line[at + 1:]
    return line  # unchanged


def _lines():
    event_filter = EventFilter.from_schemas()
    generator = EventGenerator(event_filter.rules, seed=20261202)
    rng = random.Random(12)
    samples = [json.loads(path.read_text(encoding="utf-8")) for path in sorted(FIXTURES.glob("*.json"))]
    lines = []
    while len(lines) < LINES:
        pick = rng.randrange(4)
        record = (rng.choice(samples) if pick == 0 else generator.mutated()[1] if pick == 1
                  else generator.valid())
        line = json.dumps(record, ensure_ascii=rng.random() < 0.5,
                          separators=rng.choice([(",", ":"), (", ", ": ")])).encode("utf-8")
        lines.append(line if rng.random() < 0.25 else _mutate(rng, line))
    return event_filter, lines


@pytest.fixture(scope="module")
def decoded():
    event_filter, lines = _lines()
    return event_filter, lines, [(_outcome(loads, line), _outcome(json.loads, line)) for line in lines]


def test_decoded_values_equal_the_reference_on_12000_lines(decoded):
    _, lines, pairs = decoded
    assert len(lines) >= 10_000
    differing = [(line[:120], ours[0], theirs[0]) for line, (ours, theirs) in zip(lines, pairs) if ours != theirs]
    assert differing == []
    # The mutations reach both sides of the fallback: most lines decode, many do not.
    kinds = [ours[0] for ours, _ in pairs]
    assert kinds.count("ok") > LINES // 2
    assert {"JSONDecodeError", "RecursionError", "UnicodeDecodeError"} <= set(kinds)


def test_text_lines_decode_as_the_reference_does(decoded):
    _, lines, _ = decoded
    for line in lines[:3000]:
        text = line.decode("utf-8", "surrogatepass") if b"\xed\xa0" in line else line.decode("utf-8", "replace")
        assert _outcome(loads, text) == _outcome(json.loads, text), text[:120]


def test_verdicts_and_outputs_equal_the_reference(decoded):
    event_filter, lines, _ = decoded
    compared = 0
    for line in lines:
        try:
            ours, theirs = loads(line), json.loads(line)
        except (ValueError, RecursionError):
            continue
        mine, reference = event_filter.process(ours), event_filter.process(theirs)
        assert (mine.outcome, mine.reasons, mine.warnings) == (reference.outcome, reference.reasons,
                                                              reference.warnings)
        assert jsonlines.dumps(mine.output()) == jsonlines.dumps(reference.output())
        compared += 1
    assert compared > LINES // 2


def test_floats_of_every_bit_pattern_decode_as_the_reference_does():
    rng = random.Random(3)
    values = [random_float(rng) for _ in range(20_000)]
    for start in range(0, len(values), 100):
        text = "[" + ",".join(map(repr, values[start:start + 100])) + "]"
        assert _outcome(loads, text) == _outcome(json.loads, text)


def _nested(depth):
    return "[" * depth + "1" + "]" * depth


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers(min_value=-(2 ** 80), max_value=2 ** 80) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES)
def test_generated_values_decode_as_the_reference_does(value):
    try:
        text = json.dumps(value, ensure_ascii=False)
    except ValueError:
        return
    assert _outcome(loads, text) == _outcome(json.loads, text)
    raw = text.encode("utf-8", "surrogatepass")
    assert _outcome(loads, raw) == _outcome(json.loads, raw)


def test_nesting_stops_at_the_reference_depth():
    # Every depth across both decoders' limits. Either way the limit is the interpreter's
    # recursion limit counted from the caller: `loads` is one call level on the way to the
    # reference, so the reference here is called through one level too.
    for depth in range(800, 1010):
        text = _nested(depth)
        assert _outcome(loads, text) == _outcome(lambda data: json.loads(data), text), depth


def test_file_mode_decides_every_line_as_the_reference_decoder_would(decoded):
    """`process_json` (atnorm filter, the Python API) reads a line with msgspec; the same
    line read as UTF-8 then by json.loads and decided as a decoded record
    (`process_decoded_json`, the text check included) gets the same verdict, output and
    line kept for a JSON writer, and a line either refuses is rejected as unreadable. The
    reference decoder is called here, not patched into the pipeline: compiled, the
    pipeline's own call would not see it."""
    _, lines, _ = decoded
    event_filter, reference = EventFilter.from_schemas(), EventFilter.from_schemas()
    compared = unreadable = 0
    outcomes = set()
    for line in lines:
        verdict = event_filter.process_json(line)
        outcomes.add(verdict.outcome)
        try:
            record = json.loads(line.decode("utf-8"))  # as text: json.loads would take a BOM in bytes
        except (ValueError, RecursionError):
            assert verdict.outcome == "rejected" and verdict.reasons[0].rule.startswith("record."), line[:120]
            unreadable += 1
            continue
        expected = reference.process_decoded_json(record, False)
        assert (verdict.outcome, verdict.reasons, verdict.warnings, jsonlines.dumps(verdict.output()),
                verdict.json_line) == (expected.outcome, expected.reasons, expected.warnings,
                                       jsonlines.dumps(expected.output()), expected.json_line), line[:120]
        compared += 1
    assert compared > LINES // 2 and unreadable > 100
    assert outcomes >= {"accepted", "rejected"}
