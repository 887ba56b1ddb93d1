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

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Sequence

import yaml

from ..config.options import ConfigError
from ..model import event as eventmodel
from .tables import PageTables, read_file, read_page, service_of

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


def bundled_dir() -> Path:
    """Where the installed package keeps its schemas, pages and overlays."""
    from importlib.resources import files

    return Path(str(files("atnorm.bundled_schemas")))


# --- command line -----------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="schemas_command", metavar="ACTION", required=True)
    build = sub.add_parser("build", help="generate schemas from docs pages",
                           description="Generate JSON Schemas from Activity Tracker docs pages.")
    build.add_argument("pages", nargs="+", metavar="PAGE",
                       help="markdown docs page(s) with action tables, or directories of *.md pages")
    build.add_argument("--out", required=True, metavar="DIR", help="directory to write the schemas to")
    build.add_argument("--overlays", action="append", metavar="DIR", default=None,
                       help="directory of per-service rule overlays (*.yaml); default: the bundled ones")
    build.add_argument("--check", action="store_true",
                       help="write nothing; exit 1 if DIR differs from what would be written")
    build.add_argument("--report", action="store_true", help="also print each page's problems and skipped tables")


def page_paths(given: Sequence[str]) -> List[str]:
    """The pages named on the command line; a directory stands for its *.md pages."""
    from ..cli.dispatch import UsageError

    paths: List[str] = []
    for name in given:
        if os.path.isdir(name):
            found = sorted(str(p) for p in Path(name).glob("*.md") if p.is_file())
            if not found:
                raise UsageError(f"no *.md pages in directory {name}")
            paths.extend(found)
        elif os.path.exists(name):
            paths.append(name)
        else:
            raise UsageError(f"no such page: {name}")
    return list(dict.fromkeys(paths))  # a page named twice is read once


def read_pages(paths: Sequence[str]) -> List[PageTables]:
    """Read every page; a page that cannot be opened is a one-line error."""
    from ..cli.dispatch import UsageError

    pages = []
    for path in paths:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read page {path}: {exc.strerror or exc}") from None
        pages.append(read_page(data, os.path.basename(path)))
    return pages


def _no_actions_why(page: PageTables) -> str:
    """Why a page without actions yields nothing, for its report line."""
    if any(p.why.startswith(("not valid UTF-8", "NUL bytes")) for p in page.problems):
        return "not a markdown docs page (binary or not UTF-8)"
    if page.templates:
        return "no action table"
    if page.skipped_tables:
        return f"no action table ({_plural(len(page.skipped_tables), 'table')}, none lists actions)"
    return "no action table"


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _summary(page: PageTables) -> str:
    if page.actions:
        return (f"{page.page}: {_plural(len(page.actions), 'action')} "
                f"(services {', '.join(page.services)}), {_plural(len(page.regions), 'region')}, "
                f"{_plural(len(page.problems), 'problem')}, "
                f"{_plural(len(page.skipped_tables), 'skipped table')}")
    if page.templates:
        # Pages such as the Activity Tracker Event Routing or Cloud Databases ones only
        # show `<service_name>.x.create`: a pattern, no service to check events against.
        example = page.templates[0].name
        return (f"{page.page}: 0 actions: only {_plural(len(page.templates), 'placeholder template')} "
                f"(e.g. {example}), no service schema")
    return f"{page.page}: error: {_no_actions_why(page)}"


def _report(page: PageTables) -> None:
    for problem in page.problems:
        print(f"  {problem.page}:{problem.line}: {problem.why}", file=sys.stderr)
    for line, why in page.skipped_tables:
        print(f"  {page.page}:{line}: skipped table: {why}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from ..cli.dispatch import UsageError

    paths = page_paths(args.pages)
    overlay_dirs = [Path(d) for d in args.overlays] if args.overlays else [bundled_dir() / "overlays"]
    pages = read_pages(paths)
    failed = []
    for page in pages:
        print(_summary(page), file=sys.stderr)
        if args.report:
            _report(page)
        if not page.actions and not page.templates:
            failed.append(page.page)
    if failed:
        raise UsageError(f"{_plural(len(failed), 'page')} without an action table "
                         f"({', '.join(failed)}): nothing written")
    documents = documents_from_pages(pages, overlay_dirs)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")
    try:
        if args.check:
            return _check(out, documents)
        for rel, text in documents.items():
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
        raise UsageError(f"cannot write schemas to {out}: {exc.strerror or exc}{where}") from None
    services = len(documents) - 1
    actions = sum(len(p.actions) for p in pages)
    print(f"wrote {len(documents)} schemas ({_plural(services, 'service')}, "
          f"{_plural(actions, 'action')} from {_plural(len(pages), 'page')}) to {out}", file=sys.stderr)
    return 0


def _check(out: Path, documents: Dict[str, str]) -> int:
    stale = [rel for rel, text in documents.items()
             if not (out / rel).is_file() or (out / rel).read_text(encoding="utf-8") != text]
    existing = {str(p.relative_to(out)) for p in out.rglob("*.json")} if out.is_dir() else set()
    extra = sorted(existing - set(documents))
    for rel in stale:
        print(f"stale: {out / rel}", file=sys.stderr)
    for rel in extra:
        print(f"not generated from these pages: {out / rel}", file=sys.stderr)
    return 1 if stale or extra else 0
