"""`atnorm serve`: run the forward-protocol relay (see `atnorm.relay.service`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import ssl
from typing import List

from ..config.logs import configure_logging
from ..config.options import add_arguments, host_port
from ..core.heap import settle_after_start
from ..core.pipeline import EventFilter
from ..core.settings import FilterOptions, add_filter_arguments, filter_settings, resolve_filter_options
from ..core.stats import FilterStats
from ..errors import ConfigError, ConfigErrors
from ..relay.service import OPTIONS, Relay, RelaySettings, build_event_filter, load_settings, serve
from ..relay.workers import RelayWorkers, left_behind


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Flags for `atnorm serve`: relay, stats record and filter options, plus `--config FILE`."""
    parser.add_argument("--config", metavar="FILE", help="YAML file with the same keys as the flags (flags win)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the whole start-up (config, schemas, tuning, TLS files, data "
                             "directory, ports) and exit: 0 if it would start, 2 with every problem")
    add_arguments(parser, OPTIONS)
    add_filter_arguments(parser)


def _writable_directory(path: str) -> str:
    """Why `path` cannot be the data directory ("" if it can: it exists and is writable, or
    its nearest existing parent is, so start-up can create it)."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            return "exists and is not a directory"
        return "" if os.access(path, os.W_OK | os.X_OK) else "is not writable"
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
        return f"does not exist, and {parent} is not a writable directory to create it in"
    return ""


def _bind_problem(text: str) -> str:
    """Why the relay could not listen on `text` now ("" if it could)."""
    host, port = host_port(text)
    if host.startswith("unix://"):
        directory = os.path.dirname(host[len("unix://"):]) or "."
        return "" if os.access(directory, os.W_OK) else f"{directory} is not writable"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot resolve {host}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            return f"cannot listen there: {exc.strerror}"
    return ""


def startup_problems(settings: RelaySettings, filter_options: FilterOptions,
                     bind: bool = True) -> List[ConfigError]:
    """Every reason start-up would fail with these settings, found without starting: schemas
    and tuning, TLS files, the data directory and (with `bind`) the addresses to listen on."""
    problems: List[ConfigError] = []
    try:
        EventFilter.from_schemas(settings=filter_settings(filter_options))
    except ConfigErrors as exc:
        problems += exc.errors
    except ConfigError as exc:
        problems.append(exc)
    if settings.tls_cert:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(settings.tls_cert, settings.tls_key)
        except (OSError, ssl.SSLError) as exc:
            problems.append(ConfigError(f"cannot load the certificate and key: {exc.strerror or exc}",
                                        key="tls_cert"))
    if settings.forward_tls_ca:
        try:
            ssl.create_default_context(cafile=settings.forward_tls_ca)
        except (OSError, ssl.SSLError) as exc:
            problems.append(ConfigError(f"cannot load the CA bundle: {exc.strerror or exc}", key="forward_tls_ca"))
    why = _writable_directory(settings.data_dir)
    if why:
        problems.append(ConfigError(f"{settings.data_dir} {why}", key="data_dir"))
    elif settings.workers > 1:
        problems += left_behind(settings)
    if bind:
        wanted = [("listen", address) for address in settings.listen]
        if settings.metrics_listen:
            wanted.append(("metrics_listen", settings.metrics_listen))
        for key, address in wanted:
            why = _bind_problem(address)
            if why:
                problems.append(ConfigError(f"{address}: {why}", key=key))
    return problems


def dry_run(settings: RelaySettings, filter_options: FilterOptions) -> int:
    problems = startup_problems(settings, filter_options)
    if problems:
        raise ConfigErrors(problems) if len(problems) > 1 else problems[0]
    rules = EventFilter.from_schemas(settings=filter_settings(filter_options)).rules
    actions = sum(len(document.actions) for document in rules.services.values())
    where = (f"forwarding to {', '.join(settings.forward)}" if settings.forward
             else f"writing records to {settings.data_dir}")
    print(f"atnorm serve: dry run OK: would listen on {', '.join(settings.listen)}; {where}; "
          f"{len(rules.services)} services, {actions} actions loaded")
    return 0


def run(args: argparse.Namespace) -> int:
    """`atnorm serve`: load settings, build the filter, serve until told to stop."""
    # Until `serve` handles it, SIGHUP's default action would end the process (exit 129):
    # one that arrives while the schemas load is ignored (the files are read just now anyway).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    settings, file_values = load_settings(args)
    if args.dry_run:
        return dry_run(settings, resolve_filter_options(args, file_values))
    configure_logging("serve", settings.log_level, settings.log_format)
    if settings.workers > 1:
        # The supervisor loads no schemas: each worker builds its own filter.
        asyncio.run(RelayWorkers(settings, args, file_values).run())
        return 0
    filter_stats = FilterStats()
    event_filter = (build_event_filter(args, file_values, filter_stats, settings.drift_state)
                    if settings.filter else None)
    relay = Relay(settings, event_filter, filter_stats, resolve_filter_options(args, file_values))
    settle_after_start()  # schemas loaded: keep them out of every later collection
    asyncio.run(serve(relay))
    return 0
