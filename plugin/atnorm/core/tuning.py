"""The tuning file: how strictly each service is checked, and how events are normalized.

A YAML file with global `defaults` and per-service `services: {<name>: {...}}` sections
(see conf/tuning.yaml). It is checked against its own JSON Schema (`TUNING_SCHEMA`) and
then against the loaded schemas (service names, rule names, EXPECTED fields, regexes), and
every mistake is reported as `file:line: key 'a.b.c': expected …, got …`, so a typo
stops start-up (or, on reload, keeps the running configuration) instead of silently
weakening a check. A checked file becomes `FilterSettings`; what the settings cannot say
directly (EXPECTED fields made REQUIRED or ignored, extra field rules) becomes extra
rules compiled by the pipeline like the generated ones.

`atnorm config check FILE` runs all of this without filtering anything.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from ..config.yamlfile import read_yaml
from ..errors import ConfigError
from ..resources import bundled_schema_dir
from .normalize import DERIVED_FIELDS
from .pipeline import (
    MODES,
    UNKNOWN_ACTION_POLICIES,
    UNKNOWN_SERVICE_POLICIES,
    FilterSettings,
    ServicePolicy,
)
from .rules import LEVELS, RuleSet

JSON_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
_POINTER = {"type": "string", "pattern": "^(/[^/]+)+$",
            "description": "a JSON pointer such as /initiator/id"}
_DOTTED = {"type": "string", "pattern": r"^[^.\s]+(\.[^.\s]+)*$",
           "description": "a dotted field path such as initiator.id"}
_RULE_CONSTRAINTS = ("type", "pattern", "enum", "minimum", "maximum", "required")

_COMMON_PROPERTIES: Dict[str, Any] = {
    "mode": {"enum": list(MODES)},
    "unknown_action": {"enum": list(UNKNOWN_ACTION_POLICIES)},
    "expected_fields": {
        "type": "object", "additionalProperties": False,
        "properties": {"require": {"type": "array", "items": _POINTER},
                       "ignore": {"type": "array", "items": _POINTER}},
    },
    "rules": {"type": "array", "items": {"$ref": "#/$defs/rule"}},
    "regions": {"enum": list(LEVELS)},
    "levels": {"type": "object", "additionalProperties": {"enum": list(LEVELS)}},
}

TUNING_SCHEMA: Dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "atnorm tuning file",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "schema_dirs": {"type": "array", "items": {"type": "string", "minLength": 1,
                                                   "description": "a directory path"}},
        "defaults": {"$ref": "#/$defs/defaults"},
        "services": {"type": ["object", "null"], "additionalProperties": {"$ref": "#/$defs/service"}},
    },
    "$defs": {
        # An empty section (`audit-log:` with nothing under it) is null: it changes nothing.
        "service": {"type": ["object", "null"], "additionalProperties": False, "properties": _COMMON_PROPERTIES},
        "defaults": {
            "type": ["object", "null"], "additionalProperties": False,
            "properties": dict(_COMMON_PROPERTIES, **{
                "unknown_service": {"enum": list(UNKNOWN_SERVICE_POLICIES)},
                "envelope": {"type": "object", "additionalProperties": {"enum": list(LEVELS)}},
                "event_time": {"type": "object", "additionalProperties": False,
                               "properties": {"fraction_digits": {"type": "integer", "minimum": 0,
                                                                  "maximum": 9}}},
                "derived_fields": {"type": "array", "items": {"enum": list(DERIVED_FIELDS)}},
                "annotate": {"type": ["string", "null"]},
                "record_fixes": {"type": "boolean"},
                "aliases": {"type": "object", "propertyNames": _DOTTED, "additionalProperties": _DOTTED},
            }),
        },
        "rule": {
            "type": "object", "additionalProperties": False, "required": ["field"],
            "properties": {
                "field": _POINTER,
                "name": {"type": "string", "pattern": "^[A-Za-z0-9_:/.-]+$",
                         "description": "a name of letters, digits and _ : / . -"},
                "level": {"enum": ["enforce", "warn"]},
                "type": {"enum": list(JSON_TYPES)},
                "pattern": {"type": "string"},
                "enum": {"type": "array", "minItems": 1},
                "minimum": {"type": "number"},
                "maximum": {"type": "number"},
                "required": {"type": "boolean"},
                "when_action": {"type": "string"},
            },
        },
    },
}
Draft202012Validator.check_schema(TUNING_SCHEMA)
_VALIDATOR = Draft202012Validator(TUNING_SCHEMA)

# Keys that act before the service of an event is known, so only `defaults` can hold them.
_GLOBAL_ONLY = ("unknown_service", "envelope", "event_time", "derived_fields", "annotate",
                "record_fixes", "aliases")


class TuningError(ConfigError):
    """Every mistake found in one tuning file; `str()` gives one `file:line: …` line each."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        first = errors[0]
        super().__init__(first.detail, file=first.file, line=first.line, key=first.key)
        self.errors = list(errors)
        self.args = ("\n".join(str(error) for error in self.errors),)


# ---------------------------------------------------------------------------------------
# Where in the YAML file each key is


def _key_path(parts: Sequence[Any]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class _Located:
    """Maps a path in the loaded data to the line it came from."""

    def __init__(self, path: str, root: Optional[yaml.Node]) -> None:
        self.path = path
        self.root = root

    def line(self, parts: Sequence[Any]) -> Optional[int]:
        """Line of the key (or list item) at `parts`; the nearest enclosing one if not found."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in parts:
            if isinstance(node, yaml.MappingNode):
                for key_node, value_node in node.value:
                    if str(key_node.value) == str(part):
                        line, node = key_node.start_mark.line + 1, value_node
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                return line
        return line

    def error(self, parts: Sequence[Any], message: str) -> ConfigError:
        return ConfigError(message, file=self.path, line=self.line(parts), key=_key_path(parts) or None)

    def duplicate_keys(self) -> Iterator[ConfigError]:
        """YAML keeps the last of two equal keys; a tuning file should not have them."""
        def walk(node: Optional[yaml.Node], parts: List[Any]) -> Iterator[ConfigError]:
            if isinstance(node, yaml.MappingNode):
                seen: Dict[str, int] = {}
                for key_node, value_node in node.value:
                    key = str(key_node.value)
                    if key in seen:
                        yield ConfigError(f"duplicate key (first on line {seen[key]})", file=self.path,
                                          line=key_node.start_mark.line + 1, key=_key_path(parts + [key]))
                    else:
                        seen[key] = key_node.start_mark.line + 1
                    yield from walk(value_node, parts + [key])
            elif isinstance(node, yaml.SequenceNode):
                for index, item in enumerate(node.value):
                    yield from walk(item, parts + [index])
        return walk(self.root, [])


# ---------------------------------------------------------------------------------------
# Schema errors in the file's own words


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return repr(value)


_TYPE_WORDS = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}


def _schema_error(located: _Located, error: ValidationError) -> List[ConfigError]:
    parts = list(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    value = error.instance
    if error.validator == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(schema.get("properties", {}))
        errors = []
        for key in value:
            if key in schema.get("properties", {}):
                continue
            message = f"unknown key (expected one of {', '.join(allowed)})"
            if parts and parts[0] == "services" and key in _GLOBAL_ONLY:
                message = (f"'{key}' acts before the service of an event is known, "
                           f"so it can only be set under defaults")
            errors.append(located.error(parts + [key], message))
        return errors
    if error.validator == "enum":
        choices = ", ".join(str(choice) for choice in error.validator_value)
        return [located.error(parts, f"expected one of {choices}, got {_describe(value)}")]
    if error.validator == "type":
        names = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        wanted = " or ".join(_TYPE_WORDS.get(str(name), str(name)) for name in names)
        return [located.error(parts, f"expected {wanted}, got {_describe(value)}")]
    if error.validator in ("minimum", "maximum") and "minimum" in schema and "maximum" in schema:
        return [located.error(parts, f"expected {schema['minimum']} to {schema['maximum']}, got {_describe(value)}")]
    if error.validator == "required":
        missing = [name for name in error.validator_value if name not in value]
        return [located.error(parts, f"missing key '{missing[0] if missing else '?'}'")]
    if error.validator == "minItems":
        return [located.error(parts, f"expected at least {error.validator_value} item(s)")]
    if "propertyNames" in error.schema_path:
        # jsonschema reports a bad key at its mapping; point at the key itself.
        return [located.error(parts + [value], f"expected {_DOTTED['description']}, got {_describe(value)}")]
    if "description" in schema:
        return [located.error(parts, f"expected {schema['description']}, got {_describe(value)}")]
    return [located.error(parts, error.message)]


# ---------------------------------------------------------------------------------------
# The checked file


@dataclass
class Tuning:
    """A tuning file that passed every check; `apply` turns it into FilterSettings."""

    path: str
    data: Dict[str, Any]
    schema_dirs: List[Path]
    known_services: List[str]
    expected_fields: Dict[str, Dict[str, Any]]  # EXPECTED field pointer → its envelope check
    region_services: List[str]  # services that have a `regions` rule
    extra_rules: Dict[str, List[Dict[str, Any]]] = field(default_factory=dict)
    ignored_warnings: Dict[str, List[str]] = field(default_factory=dict)

    @property
    def defaults(self) -> Dict[str, Any]:
        return self.data.get("defaults") or {}

    @property
    def services(self) -> Dict[str, Dict[str, Any]]:
        return self.data.get("services") or {}

    def apply(self, base: FilterSettings) -> FilterSettings:
        """`base` (from the command line) with this file's settings on top."""
        d = self.defaults
        default_policy = ServicePolicy(mode=d.get("mode", base.default_policy.mode),
                                       unknown_action=d.get("unknown_action", base.default_policy.unknown_action),
                                       rule_levels=dict(base.default_policy.rule_levels))
        default_levels = dict(d.get("levels") or {})
        if "regions" in d:
            default_levels["regions"] = d["regions"]
        services = {name: replace(policy, rule_levels=dict(policy.rule_levels))
                    for name, policy in base.services.items()}
        for name in self.known_services:
            overrides = self.services.get(name)
            if overrides is None and not default_levels:
                continue
            overrides = overrides or {}
            policy = services.get(name) or replace(default_policy, rule_levels={})
            policy.mode = overrides.get("mode", default_policy.mode)
            policy.unknown_action = overrides.get("unknown_action", default_policy.unknown_action)
            levels = dict(default_levels)
            levels.update(overrides.get("levels") or {})
            if "regions" in overrides:
                levels["regions"] = overrides["regions"]
            policy.rule_levels.update(levels)
            services[name] = policy
        event_time = d.get("event_time") or {}
        annotation_key = (d["annotate"] or None) if "annotate" in d else base.annotation_key
        return replace(
            base,
            schema_dirs=list(base.schema_dirs) + [d for d in self.schema_dirs if d not in base.schema_dirs],
            default_policy=default_policy,
            services=services,
            envelope_levels=dict(base.envelope_levels, **(d.get("envelope") or {})),
            unknown_service=d.get("unknown_service", base.unknown_service),
            fraction_digits=event_time.get("fraction_digits", base.fraction_digits),
            derived_fields=tuple(d["derived_fields"]) if "derived_fields" in d else base.derived_fields,
            annotation_key=annotation_key,
            record_fixes=d.get("record_fixes", base.record_fixes),
            aliases=dict(base.aliases, **(d.get("aliases") or {})),
            extra_rules=_merged(base.extra_rules, self.extra_rules),
            ignored_warnings=_merged(base.ignored_warnings, self.ignored_warnings),
        )

    def summary(self) -> str:
        """One line saying what the file sets."""
        d = self.defaults
        parts = [f"defaults: mode {d.get('mode', 'enforce')}, unknown_action {d.get('unknown_action', 'reject')}, "
                 f"unknown_service {d.get('unknown_service', 'warn')}"]
        if self.services:
            parts.append(f"{_count(len(self.services), 'service')} tuned: {', '.join(sorted(self.services))}")
        rules = sum(len(specs) for specs in self.extra_rules.values())
        if rules:
            parts.append(f"{_count(rules, 'extra rule')}")
        if self.schema_dirs:
            parts.append(f"{_count(len(self.schema_dirs), 'extra schema directory', 'extra schema directories')}")
        parts.append(f"{_count(len(self.known_services), 'service')} known")
        return "; ".join(parts)


def _count(number: int, singular: str, plural: Optional[str] = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


def _merged(one: Dict[str, List[Any]], two: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
    result = {scope: list(items) for scope, items in one.items()}
    for scope, items in two.items():
        result.setdefault(scope, []).extend(items)
    return result


def _pointer_parts(pointer: str) -> List[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]


def field_rule_schema(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON Schema of one `rules:` entry: constraints on the field, nested by its pointer."""
    schema: Dict[str, Any] = {key: spec[key] for key in ("type", "pattern", "enum", "minimum", "maximum")
                              if key in spec}
    for part in reversed(_pointer_parts(spec["field"])):
        wrapper: Dict[str, Any] = {"properties": {part: schema}}
        if spec.get("required"):
            wrapper["required"] = [part]
        schema = wrapper
    if "when_action" in spec:
        schema = {"if": {"required": ["action"],
                         "properties": {"action": {"type": "string", "pattern": spec["when_action"]}}},
                  "then": schema}
    return schema


def _unknown_services(located: _Located, data: Any, rules: RuleSet) -> List[ConfigError]:
    """A service section no loaded schema declares: most likely a typo."""
    services = data.get("services") if isinstance(data, dict) else None
    if not isinstance(services, dict):
        return []
    errors = []
    known = ", ".join(sorted(rules.services))
    for name in services:
        if name not in rules.services:
            near = difflib.get_close_matches(str(name), list(rules.services), n=1)
            hint = f"did you mean '{near[0]}'? " if near else ""
            errors.append(located.error(["services", name], f"unknown service: {hint}expected one of {known} "
                                                            f"(a new service needs its schemas under schema_dirs)"))
    return errors


def _schema_dirs(located: _Located, data: Any) -> Tuple[List[Path], List[ConfigError]]:
    """`schema_dirs` resolved against the tuning file's directory (entries of the wrong type
    are left to the schema check)."""
    entries = data.get("schema_dirs") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return [], []
    base_dir = Path(located.path).resolve().parent
    directories: List[Path] = []
    errors: List[ConfigError] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, str) or not entry:
            continue
        directory = Path(entry).expanduser()
        directory = directory if directory.is_absolute() else base_dir / directory
        if not directory.is_dir():
            errors.append(located.error(["schema_dirs", index], f"expected a directory, but {directory} is not one"))
        directories.append(directory)
    return directories, errors


class _Checker:
    """Checks a schema-valid tuning file against the loaded schemas and builds the Tuning."""

    def __init__(self, located: _Located, data: Dict[str, Any], rules: RuleSet,
                 schema_dirs: List[Path]) -> None:
        self.located = located
        self.data = data
        self.rules = rules
        self.errors: List[ConfigError] = []
        expected = rules.envelope.rule("expected")
        items = expected.schema.get("allOf", []) if expected is not None else []
        self.expected = {item["title"]: {k: v for k, v in item.items() if k != "title"}
                         for item in items if isinstance(item, dict) and "title" in item}
        self.tuning = Tuning(located.path, data, schema_dirs, sorted(rules.services), self.expected,
                             sorted(name for name, doc in rules.services.items() if doc.rule("regions")))

    def fail(self, parts: Sequence[Any], message: str) -> None:
        self.errors.append(self.located.error(parts, message))

    def check(self) -> Tuning:
        defaults = self.data.get("defaults") or {}
        self.scope(["defaults"], "*", "tuning", defaults)
        envelope_rules = sorted(r.name.split(".", 1)[1] for r in self.rules.envelope.rules)
        for name in defaults.get("envelope") or {}:
            if name not in envelope_rules:
                self.fail(["defaults", "envelope", name],
                          f"unknown envelope rule (expected one of {', '.join(envelope_rules)})")
        self.errors += _unknown_services(self.located, self.data, self.rules)
        for name, section in (self.data.get("services") or {}).items():
            if name in self.rules.services:
                self.scope(["services", name], str(name), str(name), section or {})
        return self.tuning

    def scope(self, parts: List[Any], scope: str, prefix: str, section: Dict[str, Any]) -> None:
        """Checks and extra rules of one section (`defaults` is scope "*")."""
        self.levels(parts, scope, section)
        expected = section.get("expected_fields") or {}
        required = self.expected_list(parts + ["expected_fields", "require"], expected.get("require") or [])
        ignored = self.expected_list(parts + ["expected_fields", "ignore"], expected.get("ignore") or [])
        global_required = set((self.data.get("defaults") or {}).get("expected_fields", {}).get("require") or [])
        for index, pointer in enumerate(expected.get("ignore") or []):
            if pointer in required or (scope != "*" and pointer in global_required):
                where = "this section" if pointer in required else "defaults"
                self.fail(parts + ["expected_fields", "ignore", index],
                          f"{pointer} cannot be ignored: {where} requires it")
        if required:
            schema = {"allOf": [dict(self.expected[p], title=p) for p in required]}
            self.tuning.extra_rules.setdefault(scope, []).append(
                {"name": f"{prefix}.require", "level": "enforce", "schema": schema})
        # A required field's EXPECTED warning would only repeat the new rule's verdict.
        silenced = ignored + [p for p in required if p not in ignored]
        if silenced:
            self.tuning.ignored_warnings.setdefault(scope, []).extend(f"envelope.expected:{p}" for p in silenced)
        for index, spec in enumerate(section.get("rules") or []):
            self.field_rule(parts + ["rules", index], scope, prefix, spec)

    def expected_list(self, parts: List[Any], pointers: List[str]) -> List[str]:
        good = []
        for index, pointer in enumerate(pointers):
            if pointer in self.expected:
                good.append(pointer)
            else:
                near = difflib.get_close_matches(str(pointer), list(self.expected), n=1)
                hint = f" (did you mean {near[0]}?)" if near else ""
                self.fail(parts + [index], f"expected one of the EXPECTED fields "
                                           f"{', '.join(self.expected)}, got {pointer!r}{hint}")
        return good

    def levels(self, parts: List[Any], scope: str, section: Dict[str, Any]) -> None:
        names = {**(section.get("levels") or {})}
        if scope == "*":
            documents = list(self.rules.services.values())
        else:
            documents = [self.rules.services[scope]]
        declared = sorted({r.name.split(".", 1)[1] for doc in documents for r in doc.rules})
        if "regions" in section and "regions" not in declared:
            whose = "no loaded service has" if scope == "*" else f"service '{scope}' has"
            self.fail(parts + ["regions"], f"{whose} no region rule (its rules: {', '.join(declared) or 'none'})")
        for name in names:
            if name == "action":
                self.fail(parts + ["levels", name], "the action rule is set with unknown_action, not a level")
            elif name not in declared:
                self.fail(parts + ["levels", name],
                          f"unknown rule (expected one of {', '.join(n for n in declared if n != 'action')})")

    def field_rule(self, parts: List[Any], scope: str, prefix: str, spec: Dict[str, Any]) -> None:
        if not any(key in spec for key in _RULE_CONSTRAINTS):
            self.fail(parts, f"a rule needs at least one of {', '.join(_RULE_CONSTRAINTS)}")
            return
        for key in ("pattern", "when_action"):
            if key in spec:
                try:
                    re.compile(spec[key])
                except re.error as exc:
                    self.fail(parts + [key], f"expected a regular expression, got {spec[key]!r} ({exc})")
                    return
        if "minimum" in spec and "maximum" in spec and spec["minimum"] > spec["maximum"]:
            self.fail(parts + ["minimum"], f"minimum {spec['minimum']} is above maximum {spec['maximum']}")
            return
        name = spec.get("name") or spec["field"]
        self.tuning.extra_rules.setdefault(scope, []).append(
            {"name": f"{prefix}.rule:{name}", "level": spec.get("level", "enforce"),
             "schema": field_rule_schema(spec)})


# ---------------------------------------------------------------------------------------
# Public entry points


def load_tuning(path: str, base_schema_dirs: Sequence[Path] = ()) -> Tuning:
    """Read and check a tuning file; raises TuningError (a ConfigError) listing every mistake."""
    path = str(path)
    data, node = read_yaml(path)
    if data is None:
        data = {}
    located = _Located(path, node)
    errors = list(located.duplicate_keys())
    for error in _VALIDATOR.iter_errors(data):
        errors += _schema_error(located, error)
    schema_dirs, dir_errors = _schema_dirs(located, data)
    errors += dir_errors
    if errors:
        if not dir_errors:
            # Service names are the likeliest typo: report them with the first round.
            rules = RuleSet.load([bundled_schema_dir()] + [Path(d) for d in base_schema_dirs] + schema_dirs)
            errors += _unknown_services(located, data, rules)
        raise TuningError(sorted(errors, key=lambda e: e.line or 0))
    rules = RuleSet.load([bundled_schema_dir()] + [Path(d) for d in base_schema_dirs] + schema_dirs)
    checker = _Checker(located, data, rules, schema_dirs)
    tuning = checker.check()
    if checker.errors:
        raise TuningError(sorted(checker.errors, key=lambda e: e.line or 0))
    return tuning


def apply_tuning_file(path: str, settings: FilterSettings) -> FilterSettings:
    """`settings` with the tuning file at `path` applied (its keys win over the flags')."""
    return load_tuning(path, settings.schema_dirs).apply(settings)
