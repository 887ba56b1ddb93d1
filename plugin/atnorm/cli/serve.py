"""`atnorm serve`: run the forward-protocol relay (see `atnorm.relay.service`)."""

from __future__ import annotations

import argparse
import asyncio
import signal

from ..config.logs import configure_logging
from ..config.options import add_arguments, resolve
from ..core.heap import settle_after_start
from ..core.settings import FILTER_OPTIONS, add_filter_arguments
from ..core.stats import FilterStats
from ..monitoring.stats_record import STATS_OPTIONS
from ..relay.service import OPTIONS, Relay, build_event_filter, load_settings, serve


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags for `atnorm serve`: relay, stats record and filter options, plus `--config FILE`."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with the same keys as the flags (flags win)")
    add_arguments(parser, OPTIONS)
    add_arguments(parser, STATS_OPTIONS)
    add_filter_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """`atnorm serve`: load settings, build the filter, serve until told to stop."""
    # Until `serve` handles it, SIGHUP's default action would end the process (exit 129):
    # one that arrives while the schemas load is ignored (the files are read just now anyway).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings, file_values = load_settings(args)
    configure_logging("serve", settings["log_level"], settings["log_format"])
    filter_stats = FilterStats()
    event_filter = (build_event_filter(args, file_values, filter_stats, settings["drift_state"])
                    if settings["filter"] else None)
    relay = Relay(settings, event_filter, filter_stats, resolve(FILTER_OPTIONS, args, file_values))
    settle_after_start()  # schemas loaded: keep them out of every later collection
    asyncio.run(serve(relay))
    return 0
