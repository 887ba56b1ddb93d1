"""The fast paths of the filter against the reference path, record by record.

Reference: `EventFilter.process` on the record `json.loads` makes of a line (writability by
the `is_encodable` walk, output written by `jsonlines.dumps`). Fast: `process_json` on the
line itself (msgspec decode, writability by encoding, the line kept on the verdict). Over
10,000+ generated events (several seeds), events mutated field by field, and lines mutated
byte by byte, both must give the same outcome, reasons, warnings, fixes and output, and
count the same.
"""

import json
import random

from atnorm.bench.eventgen import EventGenerator
from atnorm.core import jsonlines
from atnorm.core.pipeline import EventFilter
from atnorm.model.verdict import REJECTED

SEEDS = (1, 2, 3, 4)
PER_SEED = 2600
# Byte-level changes of a line that keep it JSON: odd numbers, escapes, nesting, spaces.
SPLICES = [':NaN,"x":', ':1e400,"x":', ':18446744073709551616,"x":', ':-9223372036854775809,"x":',
           ':9223372036854775807,"x":', ':"\\ud800",  "x":', ':"\\udcff\\u00e9",  "x":', ':"  padded ",  "x":',
           ':' + "[" * 120 + "]" * 120 + ',"x":', ':' + "[" * 99 + "]" * 99 + ',"x":', ':1.5e16,"x":',
           ':"\\u2028 Zürich",  "x":', ':"1234567890123456789012",  "x":']


def _line_mutations(line, rng):
    """The line with one splice after a random key, or a random byte changed (which may leave
    it unreadable: both paths must then agree too)."""
    colons = [i for i, c in enumerate(line) if c == ":" and line[i - 1] == '"']
    if rng.random() < 0.8 and colons:
        at = rng.choice(colons)
        return line[:at] + rng.choice(SPLICES) + line[at + 1:]
    data = bytearray(line.encode("utf-8"))
    data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def _lines():
    event_filter = EventFilter.from_schemas()
    rng = random.Random(20261202)
    for seed in SEEDS:
        generator = EventGenerator(event_filter.rules, seed)
        for record in generator.mix(PER_SEED, 0.3):  # valid and mutated field by field
            line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
            yield line.encode("utf-8")
            if rng.random() < 0.25:
                yield _line_mutations(line, rng)


def _reference(event_filter, line):
    try:
        record = json.loads(line)
    except ValueError:
        return None  # unreadable: only the fast path reads lines (compared with its own rules below)
    return event_filter.process(record)


def _seen(verdict):
    return (verdict.outcome, verdict.service, verdict.action, [r.as_dict() for r in verdict.reasons],
            verdict.warnings, verdict.fixes, verdict.event_time,
            jsonlines.dumps(verdict.output()))


def test_process_json_equals_the_reference_path_on_10000_generated_and_mutated_records():
    fast, reference = EventFilter.from_schemas(), EventFilter.from_schemas()
    compared = unreadable = mutated_outcomes = 0
    rules = set()
    for line in _lines():
        verdict = fast.process_json(line)
        expected = _reference(reference, line)
        if expected is None:
            unreadable += 1
            assert verdict.outcome == REJECTED and verdict.reasons[0].rule.startswith("record.")
            reference.stats.count(verdict)  # both counted it once
            continue
        assert _seen(verdict) == _seen(expected), line
        if verdict.outcome != REJECTED:
            assert verdict.json_line == jsonlines.dumps(verdict.record)
        compared += 1
        mutated_outcomes += verdict.outcome == REJECTED
        rules.update(reason.rule for reason in verdict.reasons)
    assert compared >= 10_000 and unreadable > 0 and mutated_outcomes > 1000
    # The splices reach the writability test both ways (an accepted record that cannot go
    # on as it is) and the text check before any decision.
    assert {"record.encoding", "envelope.required"} <= rules, rules
    assert fast.stats.snapshot() == reference.stats.snapshot()


def test_a_warning_rule_tested_whole_first_names_the_same_items_as_item_by_item():
    event_filter = EventFilter.from_schemas()
    rules = [rule for rule in event_filter._envelope_warn if rule.items]
    rules += [rule for service in event_filter._services.values() for rule in service.warn if rule.items]
    assert rules
    failing = 0
    for line in _lines():
        verdict = event_filter.process_json(line)
        if not isinstance(verdict.record, dict):
            continue
        for rule in rules:
            kinds = rule.warning_kinds(verdict.record)
            assert kinds == [kind for kind, check in rule.items if not check(verdict.record)]
            failing += bool(kinds)
    assert failing > 100
