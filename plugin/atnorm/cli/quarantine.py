"""`atnorm quarantine`: list, re-send or drop the chunks the downstream kept refusing.

`atnorm serve` moves a chunk into its spool's quarantine when the downstream refused it
`retry_max_times` times (connection reset or no ack while it was the oldest waiting), so
it stops holding up its senders and the other chunks. The chunk is kept with the
downstream's last error until an operator acts:

    atnorm quarantine list  [--data-dir DIR | --spool-path FILE | --config FILE] [--json]
    atnorm quarantine resend (ID... | --all)
    atnorm quarantine drop   (ID... | --all)

`resend` puts chunks back at the end of the spool's queue. While a relay is running on the
spool it holds its lock: the chunks are then marked, and the relay moves them back within
about a second.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import List, Optional

from ..config.options import load_config_file
from ..errors import ConfigError
from ..relay.spool import QuarantineAccess, SpoolError


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("list", "resend", "drop"),
                        help="list the quarantined chunks, re-send some, or drop some for good")
    parser.add_argument("ids", nargs="*", type=int, metavar="ID", help="chunk ids (from `list`)")
    parser.add_argument("--all", action="store_true", help="every quarantined chunk (resend, drop)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="the relay's data_dir (default: atnorm-data); the spool is DIR/spool.db")
    parser.add_argument("--spool-path", default=None, metavar="FILE", help="the spool file itself")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="take data_dir / spool_path from the relay's config file")
    parser.add_argument("--json", action="store_true", help="list: one JSON object per chunk")


def spool_path(args: argparse.Namespace) -> str:
    values = {}
    if args.config:
        from ..relay.service import ALL_OPTIONS

        values = load_config_file(args.config, ALL_OPTIONS)
    if args.spool_path:
        return str(args.spool_path)
    if values.get("spool_path") and not args.data_dir:
        return str(values["spool_path"])
    data_dir = args.data_dir or values.get("data_dir") or "atnorm-data"
    return os.path.join(str(data_dir), "spool.db")


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: argparse.Namespace) -> int:
    path = spool_path(args)
    ids: Optional[List[int]] = None
    if args.action != "list":
        if args.all == bool(args.ids):
            raise ConfigError(f"quarantine {args.action}: give chunk ids or --all (not both)")
        ids = None if args.all else list(args.ids)
    elif args.ids or args.all:
        raise ConfigError("quarantine list takes no ids")
    try:
        access = QuarantineAccess(path)
    except SpoolError as exc:
        raise ConfigError(str(exc)) from None
    try:
        if args.action == "list":
            chunks = access.list()
            for chunk in chunks:
                if args.json:
                    print(json.dumps({"id": chunk.id, "tag": chunk.tag, "records": chunk.count,
                                      "bytes": chunk.size, "quarantined": _when(chunk.quarantined),
                                      "attempts": chunk.attempts, "error": chunk.error,
                                      "resend_pending": chunk.resend}))
                else:
                    pending = "  (re-send pending)" if chunk.resend else ""
                    print(f"{chunk.id}\t{_when(chunk.quarantined)}\t{chunk.tag}\t{chunk.count} records\t"
                          f"{chunk.attempts} attempts\t{chunk.error}{pending}")
            if not args.json:
                print(f"{len(chunks)} quarantined chunk(s) in {path}", file=sys.stderr)
            return 0
        if args.action == "resend":
            moved = access.resend(ids)
            if access.relay_running:
                print(f"{moved} chunk(s) marked for re-sending; the running relay puts them back in its queue",
                      file=sys.stderr)
            else:
                print(f"{moved} chunk(s) back in the spool queue; the relay sends them when it runs",
                      file=sys.stderr)
        else:
            dropped = access.drop(ids)
            print(f"{dropped} quarantined chunk(s) dropped", file=sys.stderr)
        if ids is not None and (moved if args.action == "resend" else dropped) < len(set(ids)):
            print("some ids were not in the quarantine", file=sys.stderr)
            return 1
        return 0
    except SpoolError as exc:
        raise ConfigError(str(exc)) from None
    finally:
        access.close()
