"""Compile a JSON Schema into a plain Python predicate for the per-record fast path.

python-jsonschema stays the reference: it explains failures and its verdict is what a
compiled predicate must reproduce (a differential test checks this on generated records).
The compiler handles the keywords the generator and the tuning file emit; any other
keyword in a subschema makes that subschema fall back to the reference validator, so an
unknown keyword can cost speed but never correctness.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List

from jsonschema import Draft202012Validator

Predicate = Callable[[Any], bool]

# Keywords that only annotate in draft 2020-12 (`format` is not asserted by default).
_ANNOTATIONS = frozenset({
    "$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples",
    "format", "deprecated", "readOnly", "writeOnly", "x-atnorm",
})
_SUPPORTED = frozenset({
    "type", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "required", "properties", "additionalProperties", "items", "allOf", "anyOf", "oneOf",
    "not", "if", "then", "else", "$ref",
}) | _ANNOTATIONS


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, float) and value.is_integer())


_TYPE_CHECKS: Dict[str, Predicate] = {
    "string": lambda v: isinstance(v, str),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "integer": _is_integer,
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
}


def json_equal(one: Any, two: Any) -> bool:
    """Equality as JSON Schema means it: booleans are not numbers; 1 == 1.0."""
    if isinstance(one, str) or isinstance(two, str):
        return bool(one == two)
    if isinstance(one, bool) or isinstance(two, bool):
        return isinstance(one, bool) and isinstance(two, bool) and one == two
    if isinstance(one, dict) and isinstance(two, dict):
        return one.keys() == two.keys() and all(json_equal(one[k], two[k]) for k in one)
    if isinstance(one, list) and isinstance(two, list):
        return len(one) == len(two) and all(json_equal(a, b) for a, b in zip(one, two))
    if isinstance(one, (dict, list)) or isinstance(two, (dict, list)):
        return False
    return bool(one == two)


def _all(checks: List[Predicate]) -> Predicate:
    if not checks:
        return lambda value: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda value: first(value) and second(value)
    return lambda value: all(check(value) for check in checks)


class SchemaCompiler:
    """Turns the subschemas of one root document into predicates (refs resolved in it)."""

    def __init__(self, root: Dict[str, Any]) -> None:
        self.root = root
        self._reference = Draft202012Validator(root)
        self._refs: Dict[str, Predicate] = {}

    def compile(self, schema: Any) -> Predicate:
        if schema is True or schema == {}:
            return lambda value: True
        if schema is False:
            return lambda value: False
        if not isinstance(schema, dict):
            raise TypeError(f"not a schema: {schema!r}")
        if set(schema) - _SUPPORTED:
            return self._reference.evolve(schema=schema).is_valid
        checks: List[Predicate] = []
        for keyword, value in schema.items():
            builder = getattr(self, "_kw_" + keyword.lstrip("$").replace("-", "_"), None)
            if builder is not None:
                checks.append(builder(value, schema))
        return _all(checks)

    # Each `_kw_<keyword>` returns the predicate for that keyword alone.

    def _kw_type(self, value: Any, _schema: Dict[str, Any]) -> Predicate:
        if isinstance(value, str):
            return _TYPE_CHECKS[value]
        checks = [_TYPE_CHECKS[name] for name in value]
        return lambda v: any(check(v) for check in checks)

    def _kw_enum(self, values: List[Any], _schema: Dict[str, Any]) -> Predicate:
        strings = frozenset(v for v in values if isinstance(v, str))
        others = [v for v in values if not isinstance(v, str)]

        def check(v: Any) -> bool:
            if isinstance(v, str):
                return v in strings
            return any(json_equal(v, other) for other in others)
        return check

    def _kw_const(self, expected: Any, _schema: Dict[str, Any]) -> Predicate:
        return lambda v: json_equal(v, expected)

    def _kw_pattern(self, pattern: str, _schema: Dict[str, Any]) -> Predicate:
        search = re.compile(pattern).search
        return lambda v: not isinstance(v, str) or search(v) is not None

    def _kw_minLength(self, limit: int, _schema: Dict[str, Any]) -> Predicate:
        return lambda v: not isinstance(v, str) or len(v) >= limit

    def _kw_maxLength(self, limit: int, _schema: Dict[str, Any]) -> Predicate:
        return lambda v: not isinstance(v, str) or len(v) <= limit

    def _kw_minimum(self, limit: float, _schema: Dict[str, Any]) -> Predicate:
        number = _TYPE_CHECKS["number"]
        return lambda v: not number(v) or v >= limit

    def _kw_maximum(self, limit: float, _schema: Dict[str, Any]) -> Predicate:
        number = _TYPE_CHECKS["number"]
        return lambda v: not number(v) or v <= limit

    def _kw_required(self, names: List[str], _schema: Dict[str, Any]) -> Predicate:
        if len(names) == 1:
            name = names[0]
            return lambda v: not isinstance(v, dict) or name in v
        return lambda v: not isinstance(v, dict) or all(n in v for n in names)

    def _kw_properties(self, properties: Dict[str, Any], _schema: Dict[str, Any]) -> Predicate:
        compiled = [(name, self.compile(sub)) for name, sub in properties.items()]

        def check(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for name, predicate in compiled:
                if name in v and not predicate(v[name]):
                    return False
            return True
        return check

    def _kw_additionalProperties(self, sub: Any, schema: Dict[str, Any]) -> Predicate:
        if "patternProperties" in schema:  # pragma: no cover - routed to the reference
            return self._reference.evolve(schema=schema).is_valid
        declared = frozenset(schema.get("properties", {}))
        predicate = self.compile(sub)
        return lambda v: not isinstance(v, dict) or all(
            predicate(v[k]) for k in v if k not in declared)

    def _kw_items(self, sub: Any, _schema: Dict[str, Any]) -> Predicate:
        predicate = self.compile(sub)
        return lambda v: not isinstance(v, list) or all(predicate(item) for item in v)

    def _kw_allOf(self, subs: List[Any], _schema: Dict[str, Any]) -> Predicate:
        return _all([self.compile(sub) for sub in subs])

    def _kw_anyOf(self, subs: List[Any], _schema: Dict[str, Any]) -> Predicate:
        checks = [self.compile(sub) for sub in subs]
        return lambda v: any(check(v) for check in checks)

    def _kw_oneOf(self, subs: List[Any], _schema: Dict[str, Any]) -> Predicate:
        checks = [self.compile(sub) for sub in subs]
        return lambda v: sum(1 for check in checks if check(v)) == 1

    def _kw_not(self, sub: Any, _schema: Dict[str, Any]) -> Predicate:
        check = self.compile(sub)
        return lambda v: not check(v)

    def _kw_if(self, sub: Any, schema: Dict[str, Any]) -> Predicate:
        condition = self.compile(sub)
        then = self.compile(schema.get("then", True))
        otherwise = self.compile(schema.get("else", True))
        return lambda v: then(v) if condition(v) else otherwise(v)

    def _kw_then(self, _sub: Any, _schema: Dict[str, Any]) -> Predicate:
        return lambda v: True  # evaluated by `if` (alone, `then` does nothing)

    _kw_else = _kw_then

    def _kw_ref(self, ref: str, _schema: Dict[str, Any]) -> Predicate:
        if not ref.startswith("#"):
            return self._reference.evolve(schema={"$ref": ref}).is_valid
        if ref not in self._refs:
            # Placeholder first, so a recursive reference compiles.
            self._refs[ref] = lambda v: resolved(v)
            target = self._resolve_pointer(ref[1:])
            resolved = self.compile(target)
            self._refs[ref] = resolved
        cached = self._refs
        return lambda v: cached[ref](v)

    def _resolve_pointer(self, pointer: str) -> Any:
        node: Any = self.root
        for part in filter(None, pointer.split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node
