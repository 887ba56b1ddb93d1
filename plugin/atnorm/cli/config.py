"""`atnorm config check FILE`: check a relay, exec-filter or tuning file without running.

Like `fluent-bit --dry-run` and `fluentd --dry-run`: every mistake at once, one line each
(file:line, key, what was expected, "did you mean" for a misspelt key), exit 2; or one OK
line, exit 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from ..config.options import Option, check_config_values, load_yaml_mapping
from ..core.pipeline import EventFilter, FilterSettings
from ..core.settings import FILTER_OPTIONS, filter_settings, resolve_filter_options
from ..core.tuning import TUNING_SCHEMA, TuningError, load_tuning
from ..core.tuning import _count as count_of
from ..errors import ConfigError, ConfigErrors
from ..execfilter import settings as exec_filter
from ..relay import service as relay
from .serve import startup_problems

KINDS = ("auto", "relay", "exec-filter", "tuning")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    check = sub.add_parser("check", help="check a relay, exec-filter or tuning file without running",
                           description="Check a config file of `atnorm serve` or `atnorm exec-filter`, or "
                                       "a tuning file, as start-up would. Exit 0 with a one-line summary, "
                                       "or 2 with one line per mistake.")
    check.add_argument("file", metavar="FILE", help="the file (YAML)")
    check.add_argument("--kind", choices=KINDS, default="auto",
                       help="what the file configures (default: told from its keys)")
    check.add_argument("--schemas", action="append", default=[], metavar="DIR",
                       help="extra directory of generated schemas, as given to the filter")


def _options(kind: str) -> Tuple[Option, ...]:
    if kind == "relay":
        return relay.ALL_OPTIONS
    return tuple(exec_filter.OPTIONS) + tuple(FILTER_OPTIONS)


def kind_of(values: Dict[Any, Any]) -> str:
    """relay, exec-filter or tuning: the kind most of the file's keys belong to (relay on a tie)."""
    keys = {str(key).replace("-", "_") for key in values}
    relay_keys = {option.key for option in relay.ALL_OPTIONS}
    exec_keys = {option.key for option in _options("exec-filter")}
    scores = {
        "relay": len(keys & (relay_keys - exec_keys)),
        "exec-filter": len(keys & (exec_keys - relay_keys)),
        "tuning": len(keys & set(TUNING_SCHEMA["properties"])),
    }
    best = max(scores.values())
    return "relay" if best == 0 else next(kind for kind in ("relay", "exec-filter", "tuning")
                                          if scores[kind] == best)


def _check_tuning(path: str, schema_dirs: Sequence[Path]) -> Tuple[str, List[ConfigError]]:
    try:
        tuning = load_tuning(path, schema_dirs)
        # Building the filter compiles every extra rule, as start-up would.
        EventFilter.from_schemas(settings=tuning.apply(FilterSettings(schema_dirs=list(schema_dirs))))
    except TuningError as exc:
        return "", list(exc.errors)
    return tuning.summary(), []


def _check_options(path: str, kind: str, values: Dict[Any, Any], lines: Dict[str, int],
                   schema_dirs: Sequence[Path]) -> Tuple[str, List[ConfigError]]:
    checked, errors = check_config_values(path, values, lines, _options(kind))
    if errors:
        return "", errors  # combinations of values wrong in themselves say nothing more
    args = argparse.Namespace(config=path)
    given = resolve_filter_options(argparse.Namespace(), checked)
    filter_options = dataclasses.replace(given, schemas=tuple(str(d) for d in schema_dirs) + given.schemas)
    try:
        if kind == "relay":
            settings, _ = relay.load_settings(args, check=False)
            errors += relay.settings_problems(settings)
            # The checks `serve --dry-run` makes, listening aside (the relay may be running).
            errors += startup_problems(settings, filter_options, bind=False)
        else:
            exec_filter.load_settings(args)
            EventFilter.from_schemas(settings=filter_settings(filter_options))
    except ConfigErrors as exc:
        errors += exc.errors
    except ConfigError as exc:
        errors.append(exc)
    # A mistake about a key of the file is reported at that key's line.
    located = [ConfigError(e.detail, file=path, line=lines.get(str(e.key or "")), key=e.key)
               if e.file is None else e for e in errors]
    return f"{kind} configuration, {count_of(len(values), 'key')} set", located


def run(args: argparse.Namespace) -> int:
    """`atnorm config check FILE`: 0 and a summary, or 2 and every mistake."""
    path = args.file
    schema_dirs = [Path(d) for d in args.schemas]
    try:
        values, lines = load_yaml_mapping(path)
        kind = kind_of(values) if args.kind == "auto" else args.kind
        if kind == "tuning":
            summary, errors = _check_tuning(path, schema_dirs)
        else:
            summary, errors = _check_options(path, kind, values, lines, schema_dirs)
    except ConfigError as exc:  # unreadable, not YAML, not a mapping
        summary, errors = "", [exc]
    if errors:
        for error in sorted(errors, key=lambda e: (e.file != path, e.line or 0)):
            print(error, file=sys.stderr)
        print(f"atnorm config check: {count_of(len(errors), 'mistake')} in {path}", file=sys.stderr)
        return 2
    print(f"{path}: OK: {summary}")
    return 0
