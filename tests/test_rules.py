"""Rules: compiled checks agree with python-jsonschema, and reasons read as it shapes them."""

import random
import shutil

import pytest
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match, relevance

from atnorm.core.compiled import SchemaCompiler
from atnorm.core.rules import RuleSet, json_pointer, standalone_rule
from atnorm.errors import ConfigError
from support import REPO

SCHEMA = {
    "type": "object",
    "required": ["id", "kind"],
    "properties": {
        "count": {"type": "integer", "minimum": 0},
        "kind": {"enum": ["a", "b"]},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
}
INSTANCES = [
    {"id": 1, "kind": "a"},
    {"id": 1, "kind": "c"},
    {"kind": "a", "count": -1},
    {"count": "x", "kind": 3, "tags": [1, "ok", None]},
    {"id": 1, "kind": "b", "tags": []},
    {"id": True, "kind": "b", "count": 1.0},
    [],
    "text",
    None,
]


def test_a_compiled_check_gives_the_reference_verdict_on_each_instance():
    check = SchemaCompiler(SCHEMA).compile(SCHEMA)
    reference = Draft202012Validator(SCHEMA)
    assert [check(value) for value in INSTANCES] == [reference.is_valid(value) for value in INSTANCES]
    assert any(reference.is_valid(value) for value in INSTANCES)
    assert not all(reference.is_valid(value) for value in INSTANCES)


# A type once tested guards the keywords after it: only where that test has run.
TYPED_SCHEMAS = [
    {"type": "string", "pattern": "^a", "minLength": 2, "maxLength": 3, "enum": ["ab", "abc", "b"]},
    {"type": "object", "properties": {"n": {"type": "array", "items": {"type": "string", "enum": ["x"]}}},
     "additionalProperties": {"type": "object", "required": ["k"]}, "required": ["n"]},
    {"if": {"type": "object"}, "then": {"type": "object", "required": ["a"]}, "else": {"pattern": "^z"}},
    {"if": {"required": ["a"]}, "then": {"type": "string"}, "else": {"minLength": 2}},
    {"allOf": [{"type": "object", "required": ["a"]}, {"required": ["b"]}, {"minLength": 2}]},
    {"anyOf": [{"type": "string", "minLength": 3}, {"type": "array", "items": {"type": "object"}}, {"required": ["q"]}]},
    {"properties": {"a": {"type": "object", "properties": {"b": {"not": {"type": "string"}, "minLength": 2}}}},
     "required": ["a"]},
    {"type": ["string", "object"], "minLength": 2, "required": ["a"]},
    {"type": "object", "allOf": [{"type": "object", "properties": {"a": {"const": 1}}}, {"type": "string"}]},
    {"type": "object", "properties": {"a": {"anyOf": [{"required": ["x"]}, {"minLength": 5}]}}},
    {"allOf": [{"title": "/a", "required": ["a"]}, {"properties": {"a": {"required": ["b"]}}}, {}, True]},
    {"allOf": [{"required": ["a"]}, {"minLength": 2}]},
    {"allOf": [{"required": ["a"]}, {"title": "only a title"}]},
    {"properties": {"a": {"allOf": [{"required": ["x"]}, {"properties": {"x": {"enum": ["y"]}}}]}}},
    {"title": "t", "additionalProperties": {"required": ["k"]}, "properties": {"n": {"pattern": "^x"}}},
]
TYPED_INSTANCES = ["", "a", "ab", "abc", "abcd", "b", "z", "zz", 1, None, True, [], ["x"], ["y"], [{}], [1],
                   {}, {"a": 1}, {"a": 1, "b": 2}, {"n": []}, {"n": ["x"]}, {"n": ["y"]}, {"n": "x"},
                   {"n": [], "o": {"k": 1}}, {"n": [], "o": {}}, {"n": [], "o": 1}, {"q": 1},
                   {"a": {"b": "xy"}}, {"a": {"b": "x"}}, {"a": {"b": 12}}, {"a": "s"}, {"a": 2},
                   {"a": "abc"}, {"a": "xyz"}, {"a": {"x": 1}}, {"a": {}}, {"a": {"b": 1}}, {"a": {"x": "y"}},
                   {"a": {"x": "z"}}, {"n": "xa", "m": {"k": 1}}, {"n": "ya"}, {"n": "xa", "m": {}}]


@pytest.mark.parametrize("schema", TYPED_SCHEMAS)
def test_a_check_after_a_known_type_gives_the_reference_verdict(schema):
    check = SchemaCompiler(schema).compile(schema)
    reference = Draft202012Validator(schema)
    assert [check(value) for value in TYPED_INSTANCES] == [reference.is_valid(value) for value in TYPED_INSTANCES]


NAMES = ["a", "b", "c"]


def _object_only_schema(rng, depth):
    """An allOf of members about objects (properties, required, nested allOf), now and then
    one the compiler must not fold (additionalProperties, a type, a length)."""
    members = []
    for _ in range(rng.randint(1, 4)):
        member = {"title": "item"} if rng.random() < 0.3 else {}
        if rng.random() < 0.7:
            member["properties"] = {name: (_object_only_schema(rng, depth - 1) if depth and rng.random() < 0.5
                                           else rng.choice([{"enum": ["x", 1]}, {"const": "x"}, {"type": "string"},
                                                            True, False, {}]))
                                    for name in rng.sample(NAMES, rng.randint(1, 2))}
        if rng.random() < 0.6:
            member["required"] = rng.sample(NAMES, rng.randint(1, 2))
        if depth and rng.random() < 0.2:
            member["allOf"] = [_object_only_schema(rng, depth - 1)]
        if rng.random() < 0.08:
            keyword, value = rng.choice([("additionalProperties", {"const": 1}), ("type", "object"), ("minLength", 1)])
            member[keyword] = value
        members.append(True if rng.random() < 0.05 else member)
    return {"allOf": members}


def _instance(rng, depth):
    if depth and rng.random() < 0.7:
        return {name: _instance(rng, depth - 1) for name in rng.sample(NAMES, rng.randint(0, 3))}
    return rng.choice(["x", "y", 1, None, [], {}, True])


def test_folded_allof_members_give_the_reference_verdict():
    rng = random.Random(11)
    compared = failing = 0
    for _ in range(400):
        schema = _object_only_schema(rng, 2)
        check = SchemaCompiler(schema).compile(schema)
        reference = Draft202012Validator(schema)
        for _ in range(30):
            value = _instance(rng, 3)
            assert check(value) == reference.is_valid(value), (schema, value)
            compared += 1
            failing += not reference.is_valid(value)
    assert compared >= 10_000 and 1_000 < failing < compared - 1_000


def test_reasons_come_most_relevant_first_like_best_match():
    rule = standalone_rule("demo.record", "enforce", SCHEMA)
    record = {"count": "x", "kind": 3, "tags": [1, "ok", None]}
    errors = list(Draft202012Validator(SCHEMA).iter_errors(record))
    assert len(errors) > 2

    reasons = rule.reasons(record)

    assert reasons[0].message == best_match(errors).message
    expected = sorted(errors, key=relevance, reverse=True)
    assert [r.message for r in reasons] == [e.message for e in expected]


def test_each_reason_keeps_the_failing_keyword_and_its_schema_path():
    rule = standalone_rule("demo.record", "enforce", SCHEMA)
    record = {"id": 1, "kind": "c", "tags": ["ok", 2]}
    errors = list(Draft202012Validator(SCHEMA).iter_errors(record))

    reasons = rule.reasons(record)

    # A rule checks only the failing properties, yet reports them as the whole schema would.
    assert sorted((r.validator, r.schema_path) for r in reasons) == sorted(
        (e.validator, json_pointer(e.relative_schema_path)) for e in errors)
    assert {(r.path, r.validator, r.schema_path) for r in reasons} == {
        ("/kind", "enum", "/properties/kind/enum"),
        ("/tags/1", "type", "/properties/tags/items/type"),
    }
    assert all(set(r.as_dict()) >= {"path", "rule", "message", "validator", "schema_path"} for r in reasons)


def _schema_copy(tmp_path, services=("appid", "billing")):
    generated = REPO / "schemas" / "generated"
    target = tmp_path / "schemas"
    (target / "services").mkdir(parents=True)
    shutil.copy(generated / "envelope.json", target / "envelope.json")
    for name in services:
        shutil.copy(generated / "services" / f"{name}.json", target / "services" / f"{name}.json")
    return target


def test_the_same_schema_files_are_compiled_once_and_levels_reuse_the_compiled_rules(tmp_path):
    schemas = _schema_copy(tmp_path)
    first = RuleSet.load([schemas])
    assert RuleSet.load([schemas]) is first

    leveled = RuleSet.load([schemas], {"envelope": {"expected": "enforce"}})
    before, after = first.envelope.rule("expected"), leveled.envelope.rule("expected")
    assert (before.level, after.level) == ("warn", "enforce")
    assert after.check is before.check  # the compiled predicate is shared, not rebuilt
    assert first.envelope.rule("expected").level == "warn"  # the compiled set is untouched


def test_a_changed_schema_file_is_compiled_again(tmp_path):
    schemas = _schema_copy(tmp_path)
    first = RuleSet.load([schemas])
    (schemas / "services" / "billing.json").unlink()
    shutil.copy(REPO / "schemas" / "generated" / "services" / "appid.json", schemas / "services" / "extra.json")
    again = RuleSet.load([schemas])
    assert again is not first
    assert sorted(again.services) == ["appid"]  # extra.json declares appid again


def test_a_level_outside_the_known_ones_is_a_config_error(tmp_path):
    schemas = _schema_copy(tmp_path)
    with pytest.raises(ConfigError, match="rule level must be one of"):
        RuleSet.load([schemas], {"envelope": {"expected": "loud"}})
