"""Action tables + event model + rule overlays → JSON Schema documents (draft 2020-12).

Output layout (deterministic: sorted keys, sorted lists, no timestamps):
    OUT/envelope.json              the event envelope, with REQUIRED and EXPECTED rules
    OUT/services/<service>.json    one per service: its action set and per-service rules

Every document keeps its rules as named `$defs`; `x-atnorm.rules` gives each rule's
level (`enforce` rejects, `warn` counts a warning) and the document's top-level `allOf`
refers to the enforce-level ones, so the document on its own is a plain JSON Schema that
accepts exactly what the filter accepts (before tuning).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

import yaml

from ..errors import ConfigError
from ..model import event as eventmodel
from .pagedata import PageTables, service_of
from .tables import read_file

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
LEVELS = ("enforce", "warn", "off")


@dataclass
class ServiceSpec:
    """Everything the pages and overlays say about one service."""

    name: str
    title: str = ""
    sources: List[str] = field(default_factory=list)
    actions: Dict[str, Dict[str, str]] = field(default_factory=dict)
    regions: Dict[str, bool] = field(default_factory=dict)
    severities: Dict[str, str] = field(default_factory=dict)
    renames: Dict[str, str] = field(default_factory=dict)
    overlay_rules: List[Dict[str, Any]] = field(default_factory=list)


def collect_services(pages: Iterable[PageTables]) -> Dict[str, ServiceSpec]:
    """Group what the pages declare by service (a page may declare several)."""
    services: Dict[str, ServiceSpec] = {}
    for page in pages:
        page_services = sorted({service_of(a.name) for a in page.actions})
        for action in page.actions:
            spec = services.setdefault(service_of(action.name), ServiceSpec(service_of(action.name)))
            spec.actions.setdefault(action.name, {
                "description": action.description,
                "heading": action.heading,
                "eventKind": action.event_kind,
            })
        for name in page_services:
            spec = services[name]
            if page.page not in spec.sources:
                spec.sources.append(page.page)
            spec.title = spec.title or page.title
            spec.regions.update(page.regions)
            spec.severities.update({a: s for a, s in page.severities.items() if service_of(a) == name})
            spec.renames.update({o: n for o, n in page.renames.items() if service_of(n) == name})
    return services


def load_overlay(path: Path) -> Dict[str, Any]:
    """Read a human-written rule overlay (YAML) and check its shape."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=str(path),
                          line=mark.line + 1 if mark else None) from None
    if not isinstance(data, dict) or not isinstance(data.get("service"), str):
        raise ConfigError("expected a mapping with a 'service' name", file=str(path), key="service")
    rules = data.get("rules", [])
    if not isinstance(rules, list):
        raise ConfigError("expected a list of rules", file=str(path), key="rules")
    for index, rule in enumerate(rules):
        where = f"rules[{index}]"
        if not isinstance(rule, dict) or not re.fullmatch(r"[a-z][a-z0-9-]*", str(rule.get("name", ""))):
            raise ConfigError("each rule needs a lower-case 'name'", file=str(path), key=where)
        if rule.get("level", "enforce") not in LEVELS:
            raise ConfigError(f"level must be one of {', '.join(LEVELS)}", file=str(path), key=f"{where}.level")
        if not isinstance(rule.get("schema"), dict):
            raise ConfigError("each rule needs a 'schema' mapping", file=str(path), key=f"{where}.schema")
    return data


def attach_overlays(services: Dict[str, ServiceSpec], overlay_dirs: Sequence[Path]) -> None:
    for directory in overlay_dirs:
        for path in sorted(Path(directory).glob("*.yaml")):
            try:
                overlay = load_overlay(path)
            except OSError as exc:
                raise ConfigError(f"cannot read overlay: {exc.strerror or exc}", file=str(path)) from None
            spec = services.get(overlay["service"])
            if spec is None:
                continue  # an overlay for a service no page declares has nothing to refine
            spec.overlay_rules.extend(overlay.get("rules", []))


def _document(kind: str, ident: str, title: str, description: str,
              rules: List[Dict[str, Any]], defs: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    return {
        "$schema": SCHEMA_DIALECT,
        "$id": f"urn:atnorm:{kind}:{ident}",
        "title": title,
        "description": description,
        "x-atnorm": {"kind": kind, "rules": rules, **extra},
        "$defs": defs,
        "allOf": [{"$ref": f"#/$defs/{r['name']}"} for r in rules if r["level"] == "enforce"],
    }


def envelope_document() -> Dict[str, Any]:
    rules, defs = [], {}
    for name, (level, description, build) in eventmodel.ENVELOPE_RULES.items():
        rules.append({"name": name, "level": level, "description": description})
        defs[name] = build()
    return _document(
        "envelope", "activity-tracker", "Activity Tracker event envelope",
        "Fields every Activity Tracker event carries (IBM Cloud event model, CADF).",
        rules, defs, {},
    )


def _crn_location_pattern(regions: Sequence[str]) -> str:
    # A CRN's 6th segment is its location; a zone (`us-south-1`) belongs to its region.
    # Values that are not CRNs (an IBMid target) are not the rule's business.
    alternatives = "|".join(re.escape(r) for r in sorted(regions))
    return rf"^(?!(crn:)?v1:)|^(crn:)?v1:[^:]*:[^:]*:[^:]*:({alternatives})(-[0-9]+)?:"


def service_document(spec: ServiceSpec) -> Dict[str, Any]:
    rules: List[Dict[str, Any]] = []
    defs: Dict[str, Any] = {}
    actions = sorted(spec.actions)
    rules.append({"name": "action", "level": "enforce",
                  "description": f"the action is one the {spec.name} tables declare"})
    defs["action"] = {"properties": {"action": {"enum": actions}}}

    allowed = sorted(r for r, generated in spec.regions.items() if generated)
    if spec.regions:
        rules.append({"name": "regions", "level": "warn",
                      "description": "the CRN location is a region where the service generates events"})
        pattern = _crn_location_pattern(allowed) if allowed else "^(?!(crn:)?v1:)"
        defs["regions"] = {
            "if": {"required": ["logSourceCRN"]},
            "then": {"properties": {"logSourceCRN": {"type": "string", "pattern": pattern}}},
            "else": {"properties": {"target": {"properties": {"id": {"type": "string", "pattern": pattern}}}}},
        }

    if spec.severities:
        by_severity: Dict[str, List[str]] = {}
        for action, severity in spec.severities.items():
            by_severity.setdefault(severity.lower(), []).append(action)
        rules.append({"name": "severity", "level": "warn",
                      "description": "the severity is the one the tables give for the action"})
        defs["severity"] = {"allOf": [
            {
                "title": f"/severity={severity}",
                "if": {"properties": {"action": {"enum": sorted(names)}}, "required": ["action"]},
                "then": {"properties": {"severity": {"const": severity}}},
            }
            for severity, names in sorted(by_severity.items())
        ]}

    for rule in spec.overlay_rules:
        rules.append({"name": rule["name"], "level": rule.get("level", "enforce"),
                      "description": str(rule.get("description", "")).strip()})
        schema = rule["schema"]
        if rule.get("actions"):
            # Only events whose action matches carry this rule.
            schema = {
                "if": {"properties": {"action": {"type": "string", "pattern": rule["actions"]}},
                       "required": ["action"]},
                "then": schema,
            }
        defs[rule["name"]] = schema

    extra = {
        "service": spec.name,
        "sources": sorted(spec.sources),
        "actions": {name: spec.actions[name] for name in actions},
        "renames": dict(sorted(spec.renames.items())),
        "regions": dict(sorted(spec.regions.items())),
    }
    return _document("service", spec.name, spec.title or spec.name,
                     f"Actions and rules of the {spec.name} service, generated from its Activity Tracker docs pages.",
                     rules, defs, extra)


def render(document: Dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def build_documents(page_paths: Sequence[str], overlay_dirs: Sequence[Path]) -> Dict[str, str]:
    """Relative output path → file text, for the given pages and overlays."""
    return documents_from_pages([read_file(p) for p in page_paths], overlay_dirs)


def documents_from_pages(pages: Sequence[PageTables], overlay_dirs: Sequence[Path]) -> Dict[str, str]:
    """Relative output path → file text, for pages already read."""
    services = collect_services(pages)
    attach_overlays(services, overlay_dirs)
    out = {"envelope.json": render(envelope_document())}
    for name, spec in sorted(services.items()):
        out[f"services/{name}.json"] = render(service_document(spec))
    return out
