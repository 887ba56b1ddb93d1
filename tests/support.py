"""Helpers shared by the tests: fixtures, events, relay settings, running a coroutine.

Imported as `from support import ...` (pytest puts this folder on the path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import struct
from pathlib import Path
from typing import Any, Dict

import msgpack

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]

# Longest a test's coroutine may run before it is cancelled: a hang guard, under pytest-timeout's
# 300 s so a stuck test fails with the coroutine's own traceback.
HANG_GUARD_SECONDS = 280


def load_event(name: str) -> Dict[str, Any]:
    """A fresh copy of the event fixture `tests/fixtures/events/<name>`."""
    return json.loads((FIXTURES / "events" / name).read_text(encoding="utf-8"))


def run(coro: Any, limit: float = HANG_GUARD_SECONDS) -> Any:
    """Run a coroutine to its end on a new event loop (cancelled after `limit` seconds)."""
    return asyncio.run(asyncio.wait_for(coro, limit))


def relay_settings(*argv: str) -> Any:
    """The relay settings `atnorm serve ARGV` would run with."""
    from atnorm.cli.serve import configure_parser
    from atnorm.relay.service import load_settings

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    settings, _ = load_settings(parser.parse_args(list(argv)))
    return settings


def forward_sender(servers: Any, stats: Any = None, **settings: Any) -> Any:
    """A ForwardSender to `servers` with SenderSettings(**settings)."""
    from atnorm.forward.sender import ForwardSender, SenderSettings

    return ForwardSender(servers, SenderSettings(**settings), stats=stats)


def forward_server(handler: Any, stats: Any = None, **settings: Any) -> Any:
    """A ForwardServer calling `handler`, with ServerSettings(**settings)."""
    from atnorm.forward.server import ForwardServer, ServerSettings

    return ForwardServer(handler, ServerSettings(**settings), stats=stats)


def crn_parts_as_specified(value: Any) -> Any:
    """The CRN parts, the plain way: split, pad to ten segments, pick."""
    if not isinstance(value, str):
        return None
    parts = value.split(":")
    if parts and parts[0] != "crn":
        parts = ["crn"] + parts
    if len(parts) < 7 or parts[1] != "v1":
        return None
    parts += [""] * (10 - len(parts))
    out: Dict[str, str] = {}
    if parts[4]:
        out["crnServiceName"] = parts[4]
    if parts[5]:
        out["region"] = re.sub(r"-[0-9]+$", "", parts[5])
    if parts[6].startswith("a/") and len(parts[6]) > 2:
        out["account"] = parts[6][2:]
    if parts[8]:
        out["resourceType"] = parts[8]
    return out


def random_float(rng: Any) -> float:
    """A float of any bit pattern: NaN payloads, infinities, subnormals, -0.0."""
    return float(struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0])


def reference_pack(entries: Any, plain: bool = False) -> bytes:
    """The packing the codec's fast paths stand in for: msgpack-python with surrogateescape,
    one entry at a time (`plain`: metadata left out)."""
    from atnorm.forward.codec import _pack_default

    packer = msgpack.Packer(use_bin_type=True, unicode_errors="surrogateescape", default=_pack_default,
                            autoreset=False)
    for entry in entries:
        if entry.problem is not None:
            packer.pack(entry.record)
        elif entry.metadata is None or plain:
            packer.pack([entry.time, entry.record])
        else:
            packer.pack([[entry.time, entry.metadata], entry.record])
    return bytes(packer.bytes())


# Integers at msgpack's format edges and whose bytes hold header bytes (0xC4 bin, 0xCB float64).
MSGPACK_EDGE_INTEGERS = [0, 127, 128, 0xC4, 0xCB, 255, 65535, 0xCBCB, (1 << 32) - 1, (1 << 63) - 1, 1 << 63,
                         (1 << 64) - 1, -1, -33, -(1 << 31) - 1, -(1 << 63)]
# Text whose bytes hold a bin, ext or float64 header, or map and array headers (UTF-8
# continuation bytes), and strings whose str8 length byte is such a header.
HEADER_LOOKALIKE_TEXT = ["Ā", "ċ", "ˋ", "ÀÁÂÃÄÅ" * 20, "x" * 0xC4, "y" * 0xCB, "z" * 0x9F, "é中😀"]


def nested_maps(depth: int) -> Dict[str, Any]:
    """`depth` maps, each the only value of the one around it."""
    value: Dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value
