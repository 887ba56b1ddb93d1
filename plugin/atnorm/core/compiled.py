"""Compile a JSON Schema into a plain Python function for the per-record fast path.

python-jsonschema stays the reference: it explains failures and its verdict is what a
compiled predicate must reproduce (a differential test checks this on generated records).
The compiler writes Python source for each schema (nested `if`s that return False at the
first failure, as fastjsonschema does) and executes it once at start-up. It handles the
keywords the generator and the tuning file emit; any other keyword in a subschema makes
that subschema call the reference validator, so an unknown keyword can cost speed but
never correctness.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional

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


# Types whose keywords guard themselves with a type test, which a known type makes needless.
_GUARDED = ("object", "string", "array")
# Keywords that assert only about objects (anything else satisfies them).
_OBJECT_KEYWORDS = frozenset({"properties", "required", "additionalProperties"})


def _object_only(schema: Any) -> bool:
    """True for a schema without `type` whose assertions are all about objects (`allOf`
    members included), and that has at least one."""
    if not isinstance(schema, dict) or "type" in schema:
        return False
    asserting = set(schema) - _ANNOTATIONS
    if not asserting or not asserting <= _OBJECT_KEYWORDS | {"allOf"}:
        return False
    members = schema.get("allOf", [])
    return isinstance(members, list) and all(
        member is True or _object_only(member) or member == {} for member in members)

# Keywords a member of an object-only allOf may use for it to be folded into its parent.
_FOLDABLE = frozenset({"properties", "required", "allOf"})


def _members(schema: Dict[str, Any], out: List[Dict[str, Any]]) -> bool:
    """Collect `schema` and its allOf members, nested ones too, into `out`; False when one
    of them asserts more than properties and required (additionalProperties, say)."""
    if set(schema) - _ANNOTATIONS - _FOLDABLE:
        return False
    out.append(schema)
    for member in schema.get("allOf", []):
        if member is True:
            continue
        if not isinstance(member, dict) or not _members(member, out):
            return False
    return True


def _folded(schema: Dict[str, Any]) -> Dict[str, Any]:
    """An object-only schema whose allOf members assert only properties and required, as
    one `properties` (a name's subschemas as one allOf) and one `required`.

    The same verdict (every member holds exactly when the folded whole does), written with
    one lookup per name instead of one per member naming it: a warning rule's items
    (`/initiator/name`, `/initiator/typeURI`, ...) each name their parents again."""
    members: List[Dict[str, Any]] = []
    if "allOf" not in schema or not _members(schema, members):
        return schema
    return _joined_objects(members, lambda subs: subs[0] if len(subs) == 1 else {"allOf": subs})


def _joined_objects(members: List[Dict[str, Any]], join: Callable[[List[Any]], Any]) -> Dict[str, Any]:
    """The `properties` and `required` of object schemas as one of each: a name's
    subschemas joined by `join`, the required names in their first order."""
    properties: Dict[str, List[Any]] = {}
    required: Dict[str, None] = {}
    for member in members:
        for name, sub in member.get("properties", {}).items():
            properties.setdefault(name, []).append(sub)
        required.update(dict.fromkeys(member.get("required", [])))
    joined: Dict[str, Any] = {}
    if properties:
        joined["properties"] = {name: join(subs) for name, subs in properties.items()}
    if required:
        joined["required"] = list(required)
    return joined


# Keywords that assert about one value each, independently of the others in their schema
# object: schemas using only these merge into one object (`merged_schema`).
_INDEPENDENT = frozenset({"type", "enum", "const", "pattern", "minLength", "maxLength", "minimum", "maximum"})
_OBJECT_MERGEABLE = frozenset({"type", "properties", "required"})


def _conjuncts(schema: Any, out: List[Any]) -> List[Any]:
    """The schemas that must all hold for `schema` to: its allOf members, flattened, when
    it asserts nothing else."""
    if isinstance(schema, dict) and isinstance(schema.get("allOf"), list) and not (
            set(schema) - _ANNOTATIONS - {"allOf"}):
        for member in schema["allOf"]:
            _conjuncts(member, out)
    elif schema is not True:
        out.append(schema)
    return out


def merged_schema(schemas: List[Any]) -> Any:
    """One schema that holds exactly when every one of `schemas` holds, written so that its
    compiled check reads each property once: objects (type, properties, required only) merge
    into one object whose properties merge again by name; schemas of independent keywords
    (type, enum, pattern, …) merge into one where no keyword is given two values. What does
    not merge stays an allOf member. For a single accept test over several rules."""
    members: List[Any] = []
    for schema in schemas:
        _conjuncts(schema, members)
    if not members:
        return True
    if len(members) == 1:
        return members[0]
    if not all(isinstance(member, dict) for member in members):
        return {"allOf": members}
    keywords = [set(member) - _ANNOTATIONS for member in members]
    if all(k <= _OBJECT_MERGEABLE and m.get("type", "object") == "object" for k, m in zip(keywords, members)):
        joined = _joined_objects(members, merged_schema)
        return {"type": "object", **joined} if any("type" in member for member in members) else joined
    if all(k <= _INDEPENDENT for k in keywords):
        merged: Dict[str, Any] = {}
        for member, keys in zip(members, keywords):
            for key in keys:
                if key in merged and not json_equal(merged[key], member[key]):  # 1 is not true
                    return {"allOf": members}
                merged[key] = member[key]
        return merged
    return {"allOf": members}


# Python expressions for JSON Schema types; `{v}` is the value's variable.
_TYPE_EXPRESSIONS: Dict[str, str] = {
    "string": "isinstance({v}, str)",
    "object": "isinstance({v}, dict)",
    "array": "isinstance({v}, list)",
    "boolean": "isinstance({v}, bool)",
    "null": "{v} is None",
    "integer": "_is_integer({v})",
    "number": "(isinstance({v}, (int, float)) and not isinstance({v}, bool))",
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


class SchemaCompiler:
    """Turns the subschemas of one root document into functions (refs resolved in it)."""

    def __init__(self, root: Dict[str, Any]) -> None:
        self.root = root
        self._reference = Draft202012Validator(root)
        self.namespace: Dict[str, Any] = {"_is_integer": _is_integer, "json_equal": json_equal}
        self._pending: List[str] = []
        self._refs: Dict[str, str] = {}
        self._counter = 0
        # Variables whose JSON type a check already made sure of, where the code being
        # written runs: their keywords need no type guard of their own.
        self._known: Dict[str, str] = {}

    def compile(self, schema: Any) -> Predicate:
        """A function `value -> bool` equal to the reference's `is_valid` for `schema`."""
        name = self._function(schema)
        source = "\n".join(self._pending)
        self._pending = []
        exec(compile(source, f"<schema {self.root.get('$id', '')}>", "exec"), self.namespace)
        return self.namespace[name]  # type: ignore[no-any-return]

    def source_of(self, schema: Any) -> str:
        """The generated source for `schema` (for reading and debugging)."""
        saved, self._pending = self._pending, []
        self._function(schema)
        source, self._pending = "\n".join(self._pending), saved
        return source

    # -- generation ------------------------------------------------------------------

    def _name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def _constant(self, prefix: str, value: Any) -> str:
        name = self._name(prefix)
        self.namespace[name] = value
        return name

    def _function(self, schema: Any, name: Optional[str] = None) -> str:
        name = name or self._name("check")
        lines: List[str] = []
        saved, self._known = self._known, {}  # a new function knows nothing of its `v`
        self._emit(schema, "v", lines, 1)
        self._known = saved
        self._pending.append(f"def {name}(v):\n" + "".join(lines) + "    return True\n")
        return name

    def _emit(self, schema: Any, var: str, out: List[str], depth: int) -> None:
        """Append lines that `return False` when `var` does not satisfy `schema`."""
        pad = "    " * depth
        if schema is True:
            return
        if schema is False:
            out.append(f"{pad}return False\n")
            return
        if not isinstance(schema, dict):
            raise TypeError(f"not a schema: {schema!r}")
        if set(schema) - _SUPPORTED:
            fallback = self._constant("reference", self._reference.evolve(schema=schema).is_valid)
            out.append(f"{pad}if not {fallback}({var}): return False\n")
            return
        # A single type is tested first (every keyword holds or fails alike in any order), so
        # that the keywords after it test no type again. What is learnt holds within this
        # schema only: an `if`'s branches, for one, are written inside it.
        saved = self._known
        kind = schema.get("type")
        if kind in _GUARDED and saved.get(var) != kind:
            self._kw_type(kind, schema, var, out, depth)
            self._known = {**saved, var: kind}
        elif kind is None and saved.get(var) != "object" and _object_only(schema):
            # Keywords that hold for anything but an object (allOf of presence items, say):
            # one isinstance test for all of them instead of one each.
            self._known = {**saved, var: "object"}
            inner: List[str] = []
            self._emit_keywords(_folded(schema), var, inner, depth + 1)
            if inner:
                out.append(f"{pad}if isinstance({var}, dict):\n")
                out.extend(inner)
            self._known = saved
            return
        self._emit_keywords(schema, var, out, depth)
        self._known = saved

    def _emit_keywords(self, schema: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        guarded = schema.get("type") in _GUARDED
        for keyword, value in schema.items():
            if keyword == "type" and guarded:
                continue  # tested first, by _emit
            emit = getattr(self, "_kw_" + keyword.lstrip("$"), None)
            if emit is not None:
                emit(value, schema, var, out, depth)

    def _is(self, var: str, kind: str) -> bool:
        return self._known.get(var) == kind

    def _guard(self, var: str, kind: str) -> str:
        """`isinstance(var, …) and ` for a keyword that asserts only about `kind`; nothing
        where `var` is known to be one."""
        return "" if self._is(var, kind) else _TYPE_EXPRESSIONS[kind].format(v=var) + " and "

    def _block(self, header: str, schema: Any, var: str, out: List[str], depth: int,
               prelude: str = "") -> None:
        """`header:` followed by the checks of `schema`, only if there are any."""
        inner: List[str] = []
        self._emit(schema, var, inner, depth + 1)
        if inner:
            pad = "    " * depth
            out.append(f"{pad}{header}:\n")
            if prelude:
                out.append(f"{pad}    {prelude}\n")
            out.extend(inner)

    # Each `_kw_<keyword>` appends the lines for that keyword alone.

    def _kw_type(self, value: Any, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        names = [value] if isinstance(value, str) else list(value)
        test = " or ".join(_TYPE_EXPRESSIONS[n].format(v=var) for n in names)
        out.append(f"{'    ' * depth}if not ({test}): return False\n")

    def _kw_enum(self, values: List[Any], _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        pad = "    " * depth
        strings = self._constant("strings", frozenset(v for v in values if isinstance(v, str)))
        others = [v for v in values if not isinstance(v, str)]
        if not others:
            if self._is(var, "string"):
                out.append(f"{pad}if {var} not in {strings}: return False\n")
            else:
                out.append(f"{pad}if not (isinstance({var}, str) and {var} in {strings}): return False\n")
            return
        other = self._constant("others", others)
        out.append(f"{pad}if isinstance({var}, str):\n{pad}    if {var} not in {strings}: return False\n"
                   f"{pad}elif not any(json_equal({var}, o) for o in {other}): return False\n")

    def _kw_const(self, expected: Any, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        constant = self._constant("const", expected)
        # Against text, JSON equality is ==: no call needed.
        test = f"{var} == {constant}" if isinstance(expected, str) else f"json_equal({var}, {constant})"
        out.append(f"{'    ' * depth}if not ({test}): return False\n")

    def _kw_pattern(self, pattern: str, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        search = self._constant("search", re.compile(pattern).search)
        guard = self._guard(var, "string")
        out.append(f"{'    ' * depth}if {guard}{search}({var}) is None: return False\n")

    def _length(self, op: str, limit: int, var: str, out: List[str], depth: int) -> None:
        guard = self._guard(var, "string")
        out.append(f"{'    ' * depth}if {guard}len({var}) {op} {int(limit)}: return False\n")

    def _kw_minLength(self, limit: int, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        self._length("<", limit, var, out, depth)

    def _kw_maxLength(self, limit: int, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        self._length(">", limit, var, out, depth)

    def _bound(self, op: str, limit: float, var: str, out: List[str], depth: int) -> None:
        number = _TYPE_EXPRESSIONS["number"].format(v=var)
        constant = self._constant("limit", limit)
        out.append(f"{'    ' * depth}if {number} and {var} {op} {constant}: return False\n")

    def _kw_minimum(self, limit: float, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        self._bound("<", limit, var, out, depth)

    def _kw_maximum(self, limit: float, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        self._bound(">", limit, var, out, depth)

    def _kw_required(self, names: List[str], _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        if not names:
            return
        present = " and ".join(f"{n!r} in {var}" for n in names)
        guard = self._guard(var, "object")
        out.append(f"{'    ' * depth}if {guard}not ({present}): return False\n")

    def _kw_properties(self, properties: Dict[str, Any], _s: Dict[str, Any], var: str,
                       out: List[str], depth: int) -> None:
        inner: List[str] = []
        known = self._is(var, "object")
        for name, sub in properties.items():
            child = self._name("value")
            self._block(f"if {name!r} in {var}", sub, child, inner, depth if known else depth + 1,
                        f"{child} = {var}[{name!r}]")
        if inner and not known:
            out.append(f"{'    ' * depth}if isinstance({var}, dict):\n")
        out.extend(inner)

    def _kw_additionalProperties(self, sub: Any, schema: Dict[str, Any], var: str,
                                 out: List[str], depth: int) -> None:
        declared = self._constant("declared", frozenset(schema.get("properties", {})))
        key, child = self._name("key"), self._name("value")
        inner: List[str] = []
        known = self._is(var, "object")
        self._block(f"if {key} not in {declared}", sub, child, inner, depth + 1 if known else depth + 2,
                    f"{child} = {var}[{key}]")
        if inner:
            pad = "    " * depth
            if known:
                out.append(f"{pad}for {key} in {var}:\n")
            else:
                out.append(f"{pad}if isinstance({var}, dict):\n{pad}    for {key} in {var}:\n")
            out.extend(inner)

    def _kw_items(self, sub: Any, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        child = self._name("item")
        inner: List[str] = []
        known = self._is(var, "array")
        self._block(f"for {child} in {var}", sub, child, inner, depth if known else depth + 1)
        if inner and not known:
            out.append(f"{'    ' * depth}if isinstance({var}, list):\n")
        out.extend(inner)

    def _kw_allOf(self, subs: List[Any], _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        for sub in subs:
            self._emit(sub, var, out, depth)

    def _calls(self, subs: List[Any], var: str) -> List[str]:
        return [f"{self._function(sub)}({var})" for sub in subs]

    def _kw_anyOf(self, subs: List[Any], _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        out.append(f"{'    ' * depth}if not ({' or '.join(self._calls(subs, var))}): return False\n")

    def _kw_oneOf(self, subs: List[Any], _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        total = " + ".join(f"bool({call})" for call in self._calls(subs, var))
        out.append(f"{'    ' * depth}if ({total}) != 1: return False\n")

    def _kw_not(self, sub: Any, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        out.append(f"{'    ' * depth}if {self._calls([sub], var)[0]}: return False\n")

    def _kw_if(self, sub: Any, schema: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        pad = "    " * depth
        condition = self._calls([sub], var)[0]
        then_lines: List[str] = []
        else_lines: List[str] = []
        self._emit(schema.get("then", True), var, then_lines, depth + 1)
        self._emit(schema.get("else", True), var, else_lines, depth + 1)
        out.append(f"{pad}if {condition}:\n")
        out.extend(then_lines or [f"{pad}    pass\n"])
        if else_lines:
            out.append(f"{pad}else:\n")
            out.extend(else_lines)

    def _kw_ref(self, ref: str, _s: Dict[str, Any], var: str, out: List[str], depth: int) -> None:
        pad = "    " * depth
        if not ref.startswith("#"):
            fallback = self._constant("reference", self._reference.evolve(schema={"$ref": ref}).is_valid)
            out.append(f"{pad}if not {fallback}({var}): return False\n")
            return
        if ref not in self._refs:
            # Named before its body is generated, so a recursive reference works.
            self._refs[ref] = self._name("ref")
            self._function(self._resolve_pointer(ref[1:]), self._refs[ref])
        out.append(f"{pad}if not {self._refs[ref]}({var}): return False\n")

    def _resolve_pointer(self, pointer: str) -> Any:
        node: Any = self.root
        for part in filter(None, pointer.split("/")):
            part = part.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node
