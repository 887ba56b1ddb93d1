"""`atnorm config check FILE`: validate a tuning file without running the filter."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..core.pipeline import EventFilter, FilterSettings
from ..core.tuning import TuningError, load_tuning
from ..core.tuning import _count as count_of
from ..errors import ConfigError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    check = sub.add_parser("check", help="validate a tuning file without running the filter",
                           description="Validate a tuning file against its schema and the loaded "
                                       "service schemas. Exit 0 with a one-line summary, or 2 with "
                                       "one line per mistake.")
    check.add_argument("file", metavar="FILE", help="the tuning file (YAML)")
    check.add_argument("--schemas", action="append", default=[], metavar="DIR",
                       help="extra directory of generated schemas, as given to the filter")


def run(args: argparse.Namespace) -> int:
    """`atnorm config check FILE`: 0 and a summary, or 2 and the mistakes."""
    try:
        tuning = load_tuning(args.file, [Path(d) for d in args.schemas])
        # Building the filter compiles every extra rule, as start-up would.
        EventFilter.from_schemas(settings=tuning.apply(FilterSettings(schema_dirs=[Path(d) for d in args.schemas])))
    except TuningError as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        print(f"atnorm config check: {count_of(len(exc.errors), 'mistake')} in {args.file}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"{args.file}: OK: {tuning.summary()}")
    return 0
