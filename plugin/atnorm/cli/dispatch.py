"""The `atnorm` command: one subcommand per way of running the filter.

Each subcommand lives in its own module exposing `configure_parser(parser)` and
`run(args) -> int`; this file only dispatches and turns user mistakes into one-line errors.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import List, Optional

from ..errors import ConfigError, UsageError
from ..version import __version__

# name → (module, one-line help)
COMMANDS = {
    "filter": ("atnorm.cli.filter", "filter JSON-lines files: accepted to stdout, rejected to a file"),
    "explain": ("atnorm.cli.explain", "show the verdict for one event: fixes, failures, suggestions"),
    "schemas": ("atnorm.cli.schemas", "build JSON Schemas from Activity Tracker docs pages"),
    "serve": ("atnorm.cli.serve", "run the forward-protocol relay (Fluent Bit / Fluentd hop)"),
    "exec-filter": ("atnorm.cli.exec_filter", "run as a child of Fluentd's out_exec_filter"),
    "config": ("atnorm.cli.config", "check a tuning file without running"),
    "drift": ("atnorm.cli.drift", "report actions seen in traffic that no table declares"),
    "quarantine": ("atnorm.cli.quarantine", "list, re-send or drop chunks the downstream kept refusing"),
    "bench": ("atnorm.cli.bench", "measure throughput against the reference validator"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atnorm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"atnorm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.configure_parser(command_parser)
        command_parser.set_defaults(run=module.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (ConfigError, UsageError) as exc:
        print(f"atnorm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); not an error of ours to report.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
