"""One accept test per document must say what all of its rules say together.

The filter asks a document's accept test first (its rules' schemas merged into one, see
`compiled.merged_schema`) and each rule only when it fails. Over 12,000+ generated events,
normalized, half of them with one to three fields set to odd values or removed, the accept
test of the envelope and of every service an event names must be True exactly when every
rule's python-jsonschema validator finds it valid; and the filter with accept tests must
give the verdicts of the one without.
"""

import copy
import json
import random

import pytest

from atnorm.bench.eventgen import EventGenerator
from atnorm.core.compiled import merged_schema
from atnorm.core.normalize import Normalizer
from atnorm.core.pipeline import EventFilter, _never

SEEDS = (1, 2, 3)
PER_SEED = 4200
# Fields the envelope and the services' rules read, and values of every kind for them.
FIELDS = [("action",), ("outcome",), ("severity",), ("eventTime",), ("message",), ("logSourceCRN",),
          ("initiator",), ("initiator", "id"), ("initiator", "name"), ("initiator", "typeURI"),
          ("initiator", "host"), ("initiator", "host", "address"), ("initiator", "host", "addressType"),
          ("initiator", "credential"), ("initiator", "credential", "type"), ("initiator", "authnId"),
          ("target",), ("target", "id"), ("target", "name"), ("target", "typeURI"), ("observer",),
          ("observer", "name"), ("reason",), ("reason", "reasonCode"), ("reason", "reasonType"),
          ("dataEvent",), ("saveServiceCopy",), ("requestData",), ("responseData",), ("correlationId",)]
ODD_VALUES = [None, 0, 1, 200, -1, 1.0, 1.5, True, False, [], {}, ["x"], {"id": "x"}, "", " ", "x",
              "success", "SUCCESS", "normal", "critical", "apikey", "user", "crn:v1:bluemix:public:kms:us-south:a/1:2::",
              "2025-01-02T03:04:05.000+0000", "not a time", "service/security/account/user", "é中😀"]
REMOVED = object()


def _changed(event, rng):
    event = copy.deepcopy(event)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(FIELDS)
        node = event
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        value = rng.choice(ODD_VALUES + [REMOVED])
        if value is REMOVED:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(value)
    return event


def _works():
    rules = EventFilter.from_schemas().rules
    normalizer = Normalizer()
    rng = random.Random(20261203)
    for seed in SEEDS:
        for record in EventGenerator(rules, seed).mix(PER_SEED, 0.2):
            if not isinstance(record, dict):
                continue
            event = _changed(record, rng) if rng.random() < 0.5 else record
            yield normalizer.normalize(event, [])


def test_an_accept_test_holds_exactly_when_every_rule_does():
    rules = EventFilter.from_schemas().rules
    envelope_rules = [r for r in rules.envelope.rules if r.level != "off"]
    envelope_test = rules.envelope.accept_test(envelope_rules)
    service_tests = {}
    for name, document in rules.services.items():
        action_rule = document.rule("action")
        kept = [r for r in document.rules if r.level != "off" and r is not action_rule]
        service_tests[name] = (document.accept_test(kept), kept)
    records = failing = services = 0
    for work in _works():
        expected = all(rule.reference.is_valid(work) for rule in envelope_rules)
        assert envelope_test(work) == expected, json.dumps(work, default=repr)
        failing += not expected
        action = work.get("action")
        service = rules.service_for(action) if isinstance(action, str) else None
        if service is not None:
            test, kept = service_tests[service]
            assert test(work) == all(rule.reference.is_valid(work) for rule in kept), json.dumps(work, default=repr)
            services += 1
        records += 1
    assert records >= 10_000
    assert failing > 1_000 and services > 5_000


def test_the_filter_decides_with_its_accept_tests_as_without_them():
    with_tests, without = EventFilter.from_schemas(), EventFilter.from_schemas()
    without._envelope_holds = _never
    for compiled in without._services.values():
        compiled.holds = _never
    rng = random.Random(7)
    for record in EventGenerator(with_tests.rules, 4).mix(3000, 0.3):
        if isinstance(record, dict) and rng.random() < 0.5:
            record = _changed(record, rng)
        ours, reference = with_tests.process(copy.deepcopy(record)), without.process(copy.deepcopy(record))
        assert (ours.outcome, ours.record, ours.reasons, ours.warnings, ours.fixes) == (
            reference.outcome, reference.record, reference.reasons, reference.warnings, reference.fixes)
    assert with_tests.stats.snapshot() == without.stats.snapshot()


@pytest.mark.parametrize("schemas, merged", [
    # objects: one properties map, the subschemas of a name merged again, one required
    ([{"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
      {"properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "integer"}}, "required": ["b", "a"]}],
     {"type": "object", "properties": {"a": {"type": "string", "enum": ["x", "y"]}, "b": {"type": "integer"}},
      "required": ["a", "b"]}),
    # allOf members are flattened; titles annotate only
    ([{"allOf": [{"title": "one", "properties": {"a": {"type": "string"}}},
                 {"title": "two", "required": ["a"]}]}],
     {"properties": {"a": {"type": "string"}}, "required": ["a"]}),
    # a keyword given two values (1 and true are two) is not merged
    ([{"const": 1}, {"const": True}], {"allOf": [{"const": 1}, {"const": True}]}),
    ([{"type": "string", "pattern": "a"}, {"pattern": "b"}],
     {"allOf": [{"type": "string", "pattern": "a"}, {"pattern": "b"}]}),
    # additionalProperties reads its own schema's properties: not merged with another's
    ([{"properties": {"a": {}}, "additionalProperties": False}, {"properties": {"b": {}}}],
     {"allOf": [{"properties": {"a": {}}, "additionalProperties": False}, {"properties": {"b": {}}}]}),
    ([{"type": "object"}, {"type": "array"}], {"allOf": [{"type": "object"}, {"type": "array"}]}),
    ([True, {"type": "string"}], {"type": "string"}),
    ([], True),
])
def test_merged_schemas(schemas, merged):
    assert merged_schema(schemas) == merged
