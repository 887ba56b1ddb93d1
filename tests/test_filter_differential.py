"""The fast paths of the filter against the reference path, record by record.

Reference: `EventFilter.process` on the record `json.loads` makes of a line (writability by
the `is_encodable` walk, output written by `jsonlines.dumps`), every normalization step run
on every event. Fast: `process_json` on the line itself (msgspec decode, writability by
encoding, the line kept on the verdict, steps skipped for events that need none). Over
10,000+ generated events (several seeds), events mutated field by field, events given the
drift the steps repair (whitespace of every kind, upper-case enums, odd CRNs, values of
other types), and lines mutated byte by byte, both must give the same outcome, reasons,
warnings, fixes and output, and count the same.
"""

import json
import random

from atnorm.bench.eventgen import EventGenerator
from atnorm.core import jsonlines
from atnorm.core.normalize import Normalizer
from atnorm.core.pipeline import EventFilter, FilterSettings
from atnorm.model.verdict import REJECTED

SEEDS = (1, 2, 3, 4)
PER_SEED = 2600
# Byte-level changes of a line that keep it JSON: odd numbers, escapes, nesting, spaces.
SPLICES = [':NaN,"x":', ':1e400,"x":', ':18446744073709551616,"x":', ':-9223372036854775809,"x":',
           ':9223372036854775807,"x":', ':"\\ud800",  "x":', ':"\\udcff\\u00e9",  "x":', ':"  padded ",  "x":',
           ':' + "[" * 120 + "]" * 120 + ',"x":', ':' + "[" * 99 + "]" * 99 + ',"x":', ':1.5e16,"x":',
           ':"\\u2028 Zürich",  "x":', ':"1234567890123456789012",  "x":']


# Fields the normalization steps read, and values that test each branch of their fast path.
DRIFTED_FIELDS = [("action",), ("outcome",), ("severity",), ("eventTime",), ("message",), ("logSourceCRN",),
                  ("initiator", "id"), ("initiator", "name"), ("initiator", "typeURI"),
                  ("initiator", "host", "address"), ("initiator", "credential", "type"),
                  ("target", "id"), ("target", "name"), ("target", "typeURI"), ("observer", "name"),
                  ("reason", "reasonCode"), ("dataEvent",), ("saveServiceCopy",), ("requestData",),
                  ("responseData",), ("initiator",), ("target",), ("reason",), ("observer",),
                  ("initiator", "host"), ("initiator", "credential")]
SPACES = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1f", "\x85", "\xa0", "\u1680", "\u2003",
          "\u2028", "\u202f", "\u3000", "\u200b"]  # the last one is no whitespace to str.strip
ODD_CRNS = ["crn:v1:bluemix:public:kms:us-south-1:a/abc:inst::", "v1:bluemix:public:kms:eu-de:a/x:i:type:res",
            "crn:v1:::::", "crn:v2:bluemix:public:kms:us-south:a/1:2::", "crn:v1:a:b:c:d:e:f:g:h:i:j",
            "crn:v1:bluemix:public:kms:us-south:a/", "crn:v1:bluemix:public:kms:us-south:a/acct",
            "crn:v1:bluemix:public:kms:us-south-10:s/xyz:i:t:r", "crn:v1:bluemix:public:kms", "crn",
            "crn:v1:bluemix:public:appid:mars-1:a/1:2::", "v1:bluemix:public", ":::::::::",
            "crn:v1:bluemix:public:kms:us-south:a/1:2:key:k:with:colons", " crn:v1:bluemix:public:kms:eu-gb:a/1:2::"]
ODD_VALUES = [None, 0, 200, -1, 1.5, True, False, [], {}, ["x"], {"id": "x"}, "", "200", " 201 ", "\uff12\uff10\uff10",
              "1234567890123456789", "true", "TRUE", " yes", "no", "False ", '{"a":1}', ' {"b": [1]} ', "[1]", "{",
              "/service/security/account/user", "//x", " /x", "/ x", "Success", "SUCCESS", " failure",
              "Warning", "APIKEY", "apiKey ", "\u01c5", "\u00df", "\u0130", "ok", "normal", "token",
              # JSON text whose parse brings in floats, integers past 64 bits, NaN; such values as they are
              '{"a": 1.5}', '{"b": [1e16, 12345678901234567890]}', '{"c": NaN}', 2.5e-08, 1e16,
              12345678901234567890]


def _drifted(record, rng):
    """`record` with one to three fields the normalization steps read set to an odd value."""
    record = json.loads(json.dumps(record))
    event = record.get("payload") if isinstance(record.get("payload"), dict) else record
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(DRIFTED_FIELDS)
        node = event
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        current = node.get(path[-1])
        roll = rng.random()
        if roll < 0.4 and isinstance(current, str):
            space = rng.choice(SPACES)
            node[path[-1]] = space + current if rng.random() < 0.5 else current + space
        elif roll < 0.5 and isinstance(current, str):
            node[path[-1]] = rng.choice([current.upper(), current.title(), "/" + current])
        elif roll < 0.65:
            node[path[-1]] = rng.choice(ODD_CRNS)
        else:
            node[path[-1]] = rng.choice(ODD_VALUES)
    return record


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
            if rng.random() < 0.3:
                yield json.dumps(_drifted(record, rng), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _reference_filter():
    """The filter with every normalization step run on every event."""
    event_filter = EventFilter.from_schemas()
    settings = event_filter.settings
    event_filter.normalizer = Normalizer(fraction_digits=settings.fraction_digits,
                                         derived_fields=settings.derived_fields,
                                         annotation_key=settings.annotation_key,
                                         record_fixes=settings.record_fixes, fast_path=False)
    return event_filter


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
    fast, reference = EventFilter.from_schemas(), _reference_filter()
    compared = unreadable = mutated_outcomes = 0
    rules = set()
    fixes = set()
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
        fixes.update(fix.partition(":")[0] for fix in verdict.fixes)
    assert compared >= 10_000 and unreadable > 0 and mutated_outcomes > 1000
    # The splices reach the writability test both ways (an accepted record that cannot go
    # on as it is) and the text check before any decision.
    assert {"record.encoding", "envelope.required"} <= rules, rules
    # The drift reaches every step the fast path skips.
    assert {"trim", "coerce", "casefold", "typeURI", "eventTime"} <= fixes, fixes
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
            # As the warning steps ask: the whole rule in one call, its items only when it fails.
            kinds = [] if rule.check(verdict.record) else rule.failed_kinds(verdict.record)
            assert kinds == [kind for kind, check in rule.items if not check(verdict.record)]
            failing += bool(kinds)
    assert failing > 100


def test_steps_a_normalizer_skips_would_have_changed_nothing():
    # Drift in up to three fields at once, so one step's change (a trim) meets what another
    # step reads (a case-folded value, a typeURI).
    fast, reference = Normalizer(), Normalizer(fast_path=False)
    rng = random.Random(12)
    events = 0
    for seed in SEEDS:
        for record in EventGenerator(EventFilter.from_schemas().rules, seed).mix(PER_SEED, 0.3):
            if not isinstance(record, dict):
                continue
            event = _drifted(record, rng) if rng.random() < 0.7 else record
            before = json.dumps(event)
            fast_fixes, reference_fixes = [], []
            worked = fast.normalize(event, fast_fixes)
            expected = reference.normalize(event, reference_fixes)
            assert (json.dumps(worked), fast_fixes) == (json.dumps(expected), reference_fixes), before
            assert json.dumps(event) == before  # the event itself is left as it was
            events += 1
    assert events >= 10_000


# Lines where reading bytes in one C call could part from decoding them as UTF-8 first.
EDGE_LINES = [b"", b" ", b"null", b"1", b'"text"', b"[]", b"{}", b' {"action": "x"} ', b'{"a":1}\n',
              b"\xef\xbb\xbf{}", '{"a":"é"}'.encode("utf-16"), '{"a":"é"}'.encode("utf-16-le"),
              b'{"a":"\xff"}', b'{"a":"\xed\xa0\x80"}', b'{"a":"\\ud800"}', b'{"a":"\\udc00\\u00e9"}',
              b'{"a":"\\ud83d\\ude00"}', b'{"a":NaN}', b'{"a":1e400}', b'{"a":18446744073709551616}',
              b"[" * 600 + b"]" * 600, b"[" * 499 + b"]" * 499, b'{"a":' + b"[" * 520 + b"]" * 520 + b"}",
              b'{"a":1,"a":2}', b'{"a":1', b"\x00", b'{"x":"' + b"y" * 2000 + b'"}']


def test_bytes_read_in_one_call_equal_the_same_bytes_decoded_first():
    """`process_json` reads a `bytes` line with msgspec directly; a bytearray (or text)
    goes the way every line went before, decoding UTF-8 first: on every line, unreadable
    ones included, both give the same verdict, output line and counts."""
    # A lower size limit, so that generated lines are over it too.
    settings = FilterSettings(max_record_bytes=1000)
    direct, decoded_first = EventFilter.from_schemas(settings=settings), EventFilter.from_schemas(settings=settings)
    lines = [line if isinstance(line, bytes) else line.encode("utf-8") for line in _lines()] + EDGE_LINES
    unreadable = oversized = 0
    for line in lines:
        verdict, expected = direct.process_json(line), decoded_first.process_json(bytearray(line))
        assert (_seen(verdict), verdict.json_line, verdict.record) == (
            _seen(expected), expected.json_line, expected.record), line
        unreadable += verdict.outcome == REJECTED and verdict.reasons[0].rule.startswith("record.")
        oversized += verdict.outcome == REJECTED and verdict.reasons[0].rule == "record.size"
    assert len(lines) >= 10_000 and unreadable >= len(EDGE_LINES) // 2 and oversized > 100
    assert direct.stats.snapshot() == decoded_first.stats.snapshot()
