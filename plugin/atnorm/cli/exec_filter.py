"""`atnorm exec-filter`: run as a child of Fluentd's out_exec_filter (see `atnorm.execfilter`)."""

from __future__ import annotations

import argparse

from ..config.options import add_arguments
from ..core.settings import add_filter_arguments
from ..execfilter import loop
from ..execfilter.settings import OPTIONS


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags for `atnorm exec-filter` and the shared filter options, plus `--config FILE`."""
    # `--quiet` is a switch, not `--quiet VALUE`; the config file takes `quiet: true`.
    add_arguments(parser, [option for option in OPTIONS if option.key != "quiet"])
    quiet = next(option for option in OPTIONS if option.key == "quiet")
    parser.add_argument(quiet.flag, dest=quiet.key, action="store_const", const=True,
                        default=None, help=quiet.help)
    add_filter_arguments(parser)
    parser.add_argument("--config", metavar="FILE",
                        help="YAML file with the same keys as the flags (flags win)")


def run(args: argparse.Namespace) -> int:
    """Filter stdin to stdout until EOF or SIGTERM (see `atnorm.execfilter.loop.run`)."""
    return loop.run(args)
