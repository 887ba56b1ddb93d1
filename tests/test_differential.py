"""The compiled fast path must give python-jsonschema's verdict on every record.

10,000+ generated records (valid, mutated one way each, and randomly fuzzed leaves) are
normalized, then (1) every rule's compiled predicate and every warning item is compared
with the reference validator on the same subschema, and (2) the filter's accepted /
rejected verdict is compared with the reference validating the whole generated documents.
"""

import random

from jsonschema import Draft202012Validator

from atnorm.bench.eventgen import EventGenerator
from atnorm.core.normalize import find_event, is_event
from atnorm.core.pipeline import EventFilter
from atnorm.core.rules import json_pointer, to_reason

RECORDS = 10_000
ODD_VALUES = [None, 0, 1, 1.0, 1.5, True, False, "", " x ", "Success", [], {}, ["a"], {"id": 1}]


def _fuzz(rng, record):
    """Replace one random leaf (at any depth) with an odd value."""
    node = record
    while True:
        keys = list(node)
        if not keys:
            return
        key = rng.choice(keys)
        if isinstance(node[key], dict) and node[key] and rng.random() < 0.6:
            node = node[key]
            continue
        node[key] = rng.choice(ODD_VALUES)
        return


def _records():
    event_filter = EventFilter.from_schemas()
    generator = EventGenerator(event_filter.rules, seed=20261120)
    rng = random.Random(7)
    records = []
    for index in range(RECORDS):
        kind = index % 3
        if kind == 0:
            records.append(generator.valid())
        elif kind == 1:
            records.append(generator.mutated()[1])
        else:
            record = generator.valid()
            for _ in range(rng.randint(1, 3)):
                _fuzz(rng, record)
            records.append(record)
    return event_filter, records


def test_compiled_verdicts_equal_the_reference_on_10000_records():
    event_filter, records = _records()
    rules = event_filter.rules
    documents = [rules.envelope] + list(rules.services.values())
    all_rules = [rule for document in documents for rule in document.rules]
    references = {document.name: Draft202012Validator(document.raw) for document in documents}

    compared = mismatches = accepted = rejected = 0
    for record in records:
        event = find_event(record, [])
        if not is_event(event):
            continue
        work = event_filter.normalizer.normalize(event, [])
        for rule in all_rules:
            compared += 1
            if rule.check(work) != rule.reference.is_valid(work):
                mismatches += 1
                raise AssertionError(f"{rule.name} disagrees with the reference on {work!r}")
            if rule.narrowed is not None and not rule.check(work):
                # Reasons asked property by property are the reference's reasons for the whole.
                whole = sorted((json_pointer(e.absolute_path), to_reason(e, rule.name).message)
                               for e in rule.reference.iter_errors(work))
                narrowed = sorted((r.path, r.message) for r in rule.reasons(work)
                                  if not r.message.endswith("is a required property"))
                assert narrowed == [w for w in whole if not w[1].endswith("is a required property")], (rule.name, work)
                # Required fields missing included (the rule without its properties is asked
                # only when its own predicate fails).
                every = sorted((reason.path, reason.message) for reason in
                               (to_reason(error, rule.name) for error in rule.reference.iter_errors(work)))
                assert sorted((r.path, r.message) for r in rule.reasons(work)) == every, (rule.name, work)
            for kind, check in rule.items:
                title = kind.split(":", 1)[1]
                item = next(i for i in rule.schema["allOf"] if i["title"] == title)
                assert check(work) == rule.reference.evolve(schema=item).is_valid(work), (kind, work)

        # Whole verdict: the filter against the plain documents (default levels).
        verdict = event_filter.process(record)
        service = rules.service_for(work["action"]) if isinstance(work.get("action"), str) else None
        reference_ok = references["envelope"].is_valid(work) and (
            service is None or references[service].is_valid(work))
        assert (verdict.outcome == "accepted") == reference_ok, (verdict.reasons, work)
        if verdict.outcome == "rejected":
            rejected += 1
            assert verdict.reasons, "a rejection always carries reasons"
        else:
            accepted += 1

    assert mismatches == 0
    assert compared >= RECORDS * len(all_rules) * 0.9
    # The generated mix must exercise both verdicts substantially.
    assert accepted > RECORDS * 0.3 and rejected > RECORDS * 0.3
