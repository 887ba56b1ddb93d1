"""The `atnorm` command: one subcommand per way of running the filter.

Each subcommand lives in its own module exposing `configure_parser(parser)` and
`run(args) -> int`; this file only dispatches and turns user mistakes into one-line errors.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import List, NoReturn, Optional

from ..errors import ConfigError, UsageError
from ..version import build_text

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


class _VersionAction(argparse.Action):
    """--version: the version and the build (compiled or not), looked up only when asked."""

    def __init__(self, option_strings: List[str], dest: str, help: Optional[str] = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: Optional[str] = None) -> None:
        print(build_text())
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse, remembering its last usage error so it can reach a log file too."""

    last_error: Optional[str] = None

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        _Parser.last_error = f"{self.prog}: error: {message}"
        super().error(message)


def _log_file_in(argv: List[str]) -> Optional[str]:
    """The `--log-file` an exec-filter command line names, read without argparse."""
    for i, arg in enumerate(argv):
        if arg == "--log-file" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--log-file="):
            return arg.split("=", 1)[1]
    return None


DESCRIPTION = """\
Check IBM Cloud Activity Tracker audit events against the action tables of IBM's docs
and normalize them, in a Fluent Bit / Fluentd forwarding chain or on files. Every record
comes out exactly once: accepted (normalized), rejected (with the reasons) or passed
(not an audit event)."""

EPILOG = """\
examples:
  atnorm serve --data-dir ./atnorm-data          relay on 127.0.0.1:24224, records to files
  atnorm serve --config /etc/atnorm/atnorm.yaml  relay with every option in one file
  atnorm filter events.jsonl > accepted.jsonl    rejected records go to rejected.jsonl
  atnorm explain event.json                      what was fixed, what failed and why
  atnorm config check /etc/atnorm/atnorm.yaml    check a config file without running

Run `atnorm COMMAND --help` for the options of a command."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="atnorm", description=DESCRIPTION, epilog=EPILOG,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        words = list(sys.argv[1:] if argv is None else argv)
        if exc.code == 2 and words[:1] == ["exec-filter"] and _Parser.last_error:
            # Fluentd keeps the child's stderr nowhere a person looks: say it in the log file too.
            from ..execfilter.loop import startup_error

            startup_error(_log_file_in(words), _Parser.last_error)
        raise
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args) or 0)
    except (ConfigError, UsageError) as exc:
        for line in str(exc).splitlines() or [""]:  # several mistakes: one line each
            print(f"atnorm {args.command}: error: {line}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (e.g. `| head`); not an error of ours to report. What is left
        # in stdout's buffer goes nowhere, so the flush at exit cannot fail (exit 120).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
