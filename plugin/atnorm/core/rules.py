"""Schema documents → named rules, each with a level, a fast predicate and the reference.

A rule is one `$defs` entry of a generated document (`envelope.required`,
`vmware-solutions.action`, …). Its level says what a failure means: `enforce` rejects,
`warn` counts a warning, `off` skips it. Warning rules whose schema is an `allOf` of
titled items are split into one check per item, so a warning names the field it is
about without asking the reference validator.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, relevance

from ..errors import ConfigError
from ..model.verdict import RejectReason
from .compiled import Predicate, SchemaCompiler, merged_schema
from .nearest import NearestActions

LEVELS = ("enforce", "warn", "off")


def json_pointer(parts: Iterable[Any]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


@dataclass
class Rule:
    """One named check of a schema document."""

    name: str  # qualified: `<document>.<rule>`, e.g. `envelope.required`
    level: str
    schema: Dict[str, Any]
    check: Predicate
    reference: Draft202012Validator
    description: str = ""
    # For split warning rules: (kind, predicate) per titled item.
    items: List[Tuple[str, Predicate]] = field(default_factory=list)
    # For object rules: the rule without `properties`, and per property (name, predicate,
    # reference), so a failure is explained by asking the reference about the failing
    # properties only (the same errors, for a fraction of the work).
    # The rule without `properties` comes with its predicate, so that it is asked only when
    # it fails (most rejections are about a property's value, not a missing field).
    narrowed: Optional[Tuple[Draft202012Validator, Predicate,
                             List[Tuple[str, Predicate, Draft202012Validator]]]] = None

    def reasons(self, record: Any, suggestion: Optional[str] = None,
                nearest: Optional[List[str]] = None) -> List[RejectReason]:
        """Why `record` fails this rule, in python-jsonschema's words (told in the table's
        terms where those say more; `nearest` names the closest allowed values, if known)."""
        if self.narrowed is not None and isinstance(record, dict):
            rest, rest_check, properties = self.narrowed
            errors = [] if rest_check(record) else list(rest.iter_errors(record))
            for name, check, reference in properties:
                if name in record and not check(record[name]):
                    for error in reference.iter_errors(record[name]):
                        error.path.appendleft(name)
                        error.schema_path.extendleft([name, "properties"])  # as if checked whole
                        errors.append(error)
        else:
            errors = list(self.reference.iter_errors(record))
        # Most relevant first, as python-jsonschema's `best_match` ranks them (it takes the max).
        errors.sort(key=relevance, reverse=True)
        return [to_reason(error, self.name, suggestion, nearest) for error in errors]

    def failed_kinds(self, record: Any) -> List[str]:
        """The kinds of a record that fails the rule (`check` said so): its failing items, or
        the rule's own name when it has none."""
        if self.items:
            return [kind for kind, check in self.items if not check(record)]
        return [self.name]


# An enumeration longer than this is not listed in a reason: its nearest values are.
MAX_LISTED_VALUES = 6
NEAREST_SHOWN = 3
# Words senders use for a documented value that no spelling distance finds.
SYNONYMS = {
    "ok": "success", "succeeded": "success", "successful": "success", "passed": "success",
    "true": "success", "fail": "failure", "failed": "failure", "error": "failure", "false": "failure",
    "denied": "failure", "in-progress": "pending", "started": "pending",
    "info": "normal", "information": "normal", "low": "normal", "warn": "warning", "medium": "warning",
    "high": "critical", "error-severity": "critical", "severe": "critical",
}
# The CRN location alternatives of a generated region rule: `...:(au\-syd|eu\-de)(-[0-9]+)?:`.
_REGION_ALTERNATIVES = re.compile(r":\(([^()]*)\)\(-\[0-9\]\+\)\?:")


# Text longer than this is not a misspelling of a documented value: not compared.
MAX_COMPARED_LENGTH = 80
_nearest_cache: Dict[Tuple[str, Tuple[str, ...], int, float], List[str]] = {}


def nearest_values(value: Any, allowed: Sequence[Any], count: int = NEAREST_SHOWN,
                   cutoff: float = 0.5) -> List[str]:
    """The allowed values closest to `value` (a known synonym first), best first.

    Values come from traffic and comparing is quadratic in their length, so long ones are
    not compared and answers are cached (bounded) per value and list of allowed values.
    """
    if not isinstance(value, str) or len(value) > MAX_COMPARED_LENGTH:
        return []
    texts = tuple(str(a) for a in allowed)
    key = (value, texts, count, cutoff)
    cached = _nearest_cache.get(key)
    if cached is not None:
        return cached
    if len(_nearest_cache) >= 4096:
        _nearest_cache.clear()
    found = _nearest_cache[key] = _nearest(value, list(texts), count, cutoff)
    return found


def _nearest(value: str, texts: List[str], count: int, cutoff: float) -> List[str]:
    folded = value.strip().lower()
    found: List[str] = []
    synonym = SYNONYMS.get(folded)
    if synonym in texts:
        found.append(synonym)  # type: ignore[arg-type]
    for match in difflib.get_close_matches(folded, texts, n=count, cutoff=cutoff):
        if match not in found:
            found.append(match)
    return found[:count]


def _message(error: ValidationError, rule: str, nearest: Optional[List[str]] = None) -> Tuple[str, Optional[str]]:
    """python-jsonschema's message, told in the terms of the table behind it where that helps,
    and the nearest allowed value as a suggestion."""
    if error.validator == "enum" and isinstance(error.validator_value, list):
        allowed = error.validator_value
        if nearest is None:
            # An action list is long, and the filter names its nearest actions itself (cached
            # per document); other lists are short enough to compare here.
            long_actions = rule.endswith(".action") and len(allowed) > MAX_LISTED_VALUES
            nearest = [] if long_actions else nearest_values(error.instance, allowed)
        suggestion = nearest[0] if nearest else None
        if len(allowed) <= MAX_LISTED_VALUES:
            return error.message, suggestion
        near = f"; nearest: {', '.join(nearest)}" if nearest else ""
        if rule.endswith(".action"):
            what = f"the {len(allowed)} actions the {rule[:-len('.action')]} tables declare"
        else:
            what = f"the {len(allowed)} values {rule} allows"
        return f"{error.instance!r} is not one of {what}{near}", suggestion
    if error.validator == "pattern" and rule.endswith(".regions") and isinstance(error.instance, str):
        match = _REGION_ALTERNATIVES.search(str(error.validator_value))
        parts = error.instance.split(":")
        if match and len(parts) > 5:
            regions = [r.replace("\\", "") for r in match.group(1).split("|")]
            found = parts[5]
            service = rule[:-len(".regions")]
            # Only a near miss is a suggestion (`us-soth`); another region is not a typo of it.
            nearest = nearest_values(re.sub(r"-[0-9]+$", "", found), regions, 1, cutoff=0.8)
            return (f"the CRN location {found!r} is not a region where {service} generates events "
                    f"(its table allows: {', '.join(regions)})", nearest[0] if nearest else None)
    return error.message, None


def to_reason(error: ValidationError, rule: str, suggestion: Optional[str] = None,
              nearest: Optional[List[str]] = None) -> RejectReason:
    path = list(error.absolute_path)
    if error.validator == "required" and isinstance(error.instance, dict):
        # Point at the missing field itself, not at its parent.
        missing = [n for n in error.validator_value if n not in error.instance]
        if missing:
            path.append(missing[0])
    message, best = _message(error, rule, nearest)
    return RejectReason(json_pointer(path), rule, message, suggestion if suggestion is not None else best,
                        validator=str(error.validator), schema_path=json_pointer(error.relative_schema_path))


@dataclass
class SchemaDocument:
    """A generated document, loaded: its kind, its rules, and (for services) its actions."""

    kind: str
    name: str
    path: str
    rules: List[Rule]
    actions: frozenset = frozenset()
    renames: Dict[str, str] = field(default_factory=dict)
    raw: Dict[str, Any] = field(default_factory=dict)
    # Accept tests compiled so far, by the names of their rules (shared by the copies
    # other rule levels make: a level changes no schema).
    _accept_tests: Dict[Tuple[str, ...], Predicate] = field(default_factory=dict, repr=False, compare=False)

    def accept_test(self, rules: Sequence[Rule]) -> Predicate:
        """One check that holds exactly when every one of `rules` (rules of this document)
        holds: their schemas merged (`compiled.merged_schema`), so that a record which
        breaks none is read once instead of once per rule. Compiled once per set of rules."""
        key = tuple(rule.name for rule in rules)
        test = self._accept_tests.get(key)
        if test is None:
            test = self._accept_tests[key] = SchemaCompiler(self.raw).compile(
                merged_schema([rule.schema for rule in rules]))
        return test

    def rule(self, short_name: str) -> Optional[Rule]:
        for rule in self.rules:
            if rule.name == f"{self.name}.{short_name}":
                return rule
        return None

    def nearest_action(self, action: str) -> Optional[str]:
        """The declared action closest to an unknown one (a renamed one first)."""
        nearest = self.nearest_actions(action)
        return nearest[0] if nearest else None

    def nearest_actions(self, action: str, count: int = NEAREST_SHOWN) -> List[str]:
        """The few declared actions closest to an unknown one, best first; for the legacy
        name of a renamed action, its current name comes first."""
        if action in self._nearest:
            return self._nearest[action][:count]
        matches = self._nearest_of(action, NEAREST_SHOWN, 0.6) if len(action) <= MAX_COMPARED_LENGTH else []
        renamed = self.renames.get(action)
        if renamed is not None:
            matches = [renamed] + [m for m in matches if m != renamed]
        if len(self._nearest) >= 4096:  # unknown actions come from traffic: stay bounded
            self._nearest.clear()
        self._nearest[action] = matches
        return matches[:count]

    def __post_init__(self) -> None:
        self._nearest_of = NearestActions(self.actions)
        self._nearest: Dict[str, List[str]] = {}


# Compiled rule sets by the schema files they came from (path, inode, size, mtime), as the
# reloading filter tells a changed file; a few only.
_COMPILED: Dict[Tuple[Tuple[str, Tuple[int, int, int]], ...], "RuleSet"] = {}
_COMPILED_KEPT = 2


def _stat(path: Path) -> Tuple[int, int, int]:
    try:
        info = path.stat()
    except OSError:
        return (-1, -1, -1)  # gone since listed: loading it reports the error
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _schema_files(directories: Sequence[Path]) -> List[Tuple[bool, Path]]:
    """(is the envelope, path) of each directory's `envelope.json` and `services/*.json`,
    in load order."""
    files: List[Tuple[bool, Path]] = []
    for directory in directories:
        directory = Path(directory)
        if not directory.is_dir():
            raise ConfigError("schema directory does not exist", file=str(directory))
        services = sorted((directory / "services").glob("*.json"))
        if (directory / "envelope.json").is_file():
            files.append((True, directory / "envelope.json"))
        elif not services:
            raise ConfigError("holds no schema (no envelope.json, no services/*.json); build one with "
                              "`atnorm schemas build PAGE --out DIR`", file=str(directory))
        files.extend((False, path) for path in services)
    return files


def _with_levels(document: SchemaDocument, levels: Optional[Dict[str, str]]) -> SchemaDocument:
    """`document` with its rules' levels overridden by short rule name (as `load_document`)."""
    if not levels:
        return document
    rules = []
    for rule in document.rules:
        short = rule.name[len(document.name) + 1:]
        level = levels.get(short)
        if level is None or level == rule.level:
            rules.append(rule)
            continue
        if level not in LEVELS:
            raise ConfigError(f"rule level must be one of {', '.join(LEVELS)}", file=document.path, key=short)
        rules.append(replace(rule, level=level))
    return replace(document, rules=rules)


def load_document(path: Path, levels: Optional[Dict[str, str]] = None) -> SchemaDocument:
    """Load one generated document; `levels` overrides rule levels by short rule name."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load schema: {exc}", file=str(path)) from None
    meta = raw.get("x-atnorm") if isinstance(raw, dict) else None
    if not isinstance(meta, dict) or meta.get("kind") not in ("envelope", "service"):
        raise ConfigError("not an atnorm schema document (no x-atnorm kind)", file=str(path))
    try:
        Draft202012Validator.check_schema(raw)
    except Exception as exc:  # jsonschema.SchemaError; message says where
        raise ConfigError(f"invalid JSON Schema: {getattr(exc, 'message', exc)}", file=str(path)) from None
    kind = meta["kind"]
    name = "envelope" if kind == "envelope" else str(meta["service"])
    compiler = SchemaCompiler(raw)
    reference = Draft202012Validator(raw)
    rules = []
    for entry in meta.get("rules", []):
        short = entry["name"]
        level = (levels or {}).get(short, entry.get("level", "enforce"))
        if level not in LEVELS:
            raise ConfigError(f"rule level must be one of {', '.join(LEVELS)}", file=str(path), key=short)
        schema = raw["$defs"][short]
        rule = Rule(f"{name}.{short}", level, schema, compiler.compile(schema),
                    reference.evolve(schema=schema), entry.get("description", ""))
        _split_titled_items(rule, compiler)
        _narrow(rule, compiler)
        rules.append(rule)
    return SchemaDocument(kind, name, str(path), rules,
                          frozenset(meta.get("actions", {})), dict(meta.get("renames", {})), raw)


_NARROWABLE = frozenset({"type", "required", "properties", "title", "description", "$comment"})


def _narrow(rule: Rule, compiler: SchemaCompiler) -> None:
    properties = rule.schema.get("properties")
    if not isinstance(properties, dict) or not set(rule.schema) <= _NARROWABLE:
        return
    rest_schema = {k: v for k, v in rule.schema.items() if k != "properties"}
    rule.narrowed = (rule.reference.evolve(schema=rest_schema), compiler.compile(rest_schema),
                     [(name, compiler.compile(sub), rule.reference.evolve(schema=sub))
                      for name, sub in properties.items()])


def _split_titled_items(rule: Rule, compiler: SchemaCompiler) -> None:
    schema = rule.schema
    if isinstance(schema.get("allOf"), list) and all(
            isinstance(item, dict) and "title" in item for item in schema["allOf"]):
        rule.items = [(f"{rule.name}:{item['title']}", compiler.compile(item)) for item in schema["allOf"]]


def standalone_rule(name: str, level: str, schema: Dict[str, Any], description: str = "") -> Rule:
    """A rule from a self-contained schema (no `$ref` outside it), e.g. one a tuning file adds.

    Compiled like the generated rules, with python-jsonschema as its reference, so its
    reasons read the same.
    """
    if level not in LEVELS:
        raise ValueError(f"rule level must be one of {', '.join(LEVELS)}, got {level!r}")
    Draft202012Validator.check_schema(schema)
    compiler = SchemaCompiler(schema)
    rule = Rule(name, level, schema, compiler.compile(schema), Draft202012Validator(schema), description)
    _split_titled_items(rule, compiler)
    _narrow(rule, compiler)
    return rule


@dataclass
class RuleSet:
    """The envelope and every service document from one or more schema directories."""

    envelope: SchemaDocument
    services: Dict[str, SchemaDocument]

    @classmethod
    def load(cls, directories: Sequence[Path],
             levels: Optional[Dict[str, Dict[str, str]]] = None) -> "RuleSet":
        """Load `envelope.json` and `services/*.json`; later directories add or replace services.

        `levels` maps a document name (`envelope` or a service) to rule-level overrides.
        """
        files = _schema_files(directories)
        # Compiling is the costly part: a tuning file's check, the filter built from it and
        # a reload that changed no schema file all use the rules compiled once here.
        signature = tuple((str(path), _stat(path)) for _, path in files)
        compiled = _COMPILED.get(signature)
        if compiled is None:
            compiled = cls._compile(files, directories)
            if len(_COMPILED) >= _COMPILED_KEPT:
                _COMPILED.pop(next(iter(_COMPILED)))
            _COMPILED[signature] = compiled
        return compiled.with_levels(levels or {})

    @classmethod
    def _compile(cls, files: List[Tuple[bool, Path]], directories: Sequence[Path]) -> "RuleSet":
        envelope: Optional[SchemaDocument] = None
        services: Dict[str, SchemaDocument] = {}
        for is_envelope, path in files:
            if is_envelope:
                envelope = load_document(path)
            else:
                document = load_document(path)
                services[document.name] = document
        if envelope is None:
            raise ConfigError("no envelope.json in the schema directories",
                              file=", ".join(str(d) for d in directories))
        return cls(envelope, services)

    def with_levels(self, levels: Dict[str, Dict[str, str]]) -> "RuleSet":
        """This rule set with rule levels overridden: `levels` maps `envelope` or a service's
        file name to {short rule name: level}. Rules are shared, not compiled again."""
        if not any(levels.values()):
            return self
        return RuleSet(_with_levels(self.envelope, levels.get("envelope")),
                       {name: _with_levels(document, levels.get(Path(document.path).stem))
                        for name, document in self.services.items()})

    def service_for(self, action: str) -> Optional[str]:
        """The declared service whose name is the longest dotted prefix of `action`."""
        parts = action.split(".")
        for end in range(len(parts) - 2, 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in self.services:
                return candidate
        return None
