"""Regenerates the seed corpus in tests/fuzz/corpus/<target>/ from the wire captures and
the fixtures' sample events:  python tests/fuzz/seed_corpus.py

Seeds are named by content (`seed-<sha1>`), so running this again adds nothing twice;
inputs atheris found worth keeping are added by hand under other names and left alone.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from typing import Dict, List

import msgpack
from fuzzlib import CORPUS, FIXTURES, sample_events

WIRE = FIXTURES / "wire"
# First bytes of an exec-filter input: output format, transport keys, read size, input mode.
_JSON_OUT, _MSGPACK_OUT = 0, 1
_NO_KEYS, _TAG_KEY, _TAG_AND_TIME = 0, 1, 2
_RAW_JSON, _RAW_TSV, _RAW_MSGPACK = 0, 1, 2


def _event_time(seconds: int, nanoseconds: int = 0) -> msgpack.ExtType:
    return msgpack.ExtType(0, seconds.to_bytes(4, "big") + nanoseconds.to_bytes(4, "big"))


def forward_seeds(events: List[dict]) -> List[bytes]:
    # Both directions: c2s holds PING and data frames, s2c the HELO, PONG and acks.
    seeds = [b"\x00" + path.read_bytes() for path in sorted(WIRE.glob("*.bin")) if path.stat().st_size]
    pack = msgpack.Packer(use_bin_type=True).pack
    entries = [[_event_time(1741064767, 123000000), events[0]], [1741064767, events[1]]]
    payload = b"".join(pack(entry) for entry in entries)
    seeds += [
        b"\x07" + pack(["audit.at", entries, {"chunk": "Y2h1bmstMQ==", "size": 2}]),
        b"\x07" + pack(["audit.at", payload, {"chunk": "Y2h1bmstMg==", "size": 2}]),
        b"\x07" + pack(["audit.at", gzip.compress(payload), {"compressed": "gzip", "chunk": "Y2h1bmstMw=="}]),
        b"\x07" + pack(["audit.at", _event_time(1741064767), events[2], {"chunk": "Y2h1bmstNA=="}]),
        # Times at the edges of [0, 2**32), metadata entries, a record that is not a map.
        b"\x07" + pack(["audit.at", [[2**32 - 1, {"a": 1}], [2**32, {"a": 2}], [-1, {"a": 3}],
                                     [[_event_time(5), {"m": 1}], {"a": 4}], [7, "not a map"]]]),
    ]
    # A record map keyed by a map (valid msgpack Python cannot hold as a dict), in a Forward
    # frame, a Message and a PackedForward payload, each followed by a plain frame.
    keyed = b"\x92" + pack(1741064767) + b"\x82\xa1a\x01\xa1m\x81\x81\xa1k\x91\x01\xa1v"
    plain = pack(["audit.at", [entries[0]], {"chunk": "Y2h1bmstNQ=="}])
    seeds += [
        b"\x07" + b"\x93" + pack("audit.at") + b"\x92" + pack(entries[0]) + keyed + pack({"chunk": "Y2h1bmstNg=="})
        + plain,
        b"\x07" + b"\x93" + pack("audit.at") + keyed[1:] + pack({"chunk": "Y2h1bmstNw=="}) + plain,
        b"\x07" + pack(["audit.at", payload + keyed, {"chunk": "Y2h1bmstOA==", "size": 3}]) + plain,
    ]
    return seeds


def execfilter_seeds(events: List[dict]) -> List[bytes]:
    jsonl = (WIRE / "events.jsonl").read_bytes()
    packed_text = b"".join(msgpack.packb(e, use_bin_type=True) for e in events[:6])
    packed_bin = b"".join(msgpack.packb(e, use_bin_type=False) for e in events[:6])
    tsv = b"".join(f"{e.get('action', '')}\t{e.get('outcome', '')}\t{e.get('message', '')}\n".encode()
                   for e in events if isinstance(e, dict))
    seeds = []
    for out in (_JSON_OUT, _MSGPACK_OUT):
        seeds += [
            bytes([out, _NO_KEYS, 7, _RAW_JSON]) + jsonl,
            bytes([out, _TAG_AND_TIME, 3, _RAW_JSON]) + jsonl,
            bytes([out, _NO_KEYS, 11, _RAW_TSV]) + tsv,
            bytes([out, _NO_KEYS, 5, _RAW_MSGPACK]) + packed_text,
            bytes([out, _TAG_KEY, 2, _RAW_MSGPACK]) + packed_bin,
            # Damage between records, and a non-UTF-8 str right before another record.
            bytes([out, _NO_KEYS, 1, _RAW_MSGPACK]) + packed_text[:40] + b"\xc1\xc1" + packed_text,
            bytes([out, _NO_KEYS, 9, _RAW_MSGPACK]) + b"\x81\xa1k\xa2\xff\xfe" + b"\x81\xa1k\xa1v" * 2,
            bytes([out, _NO_KEYS, 2, _RAW_MSGPACK]) + b"\x81\xa1k\xa2\xff1\x81\xa1k\xa2\xfe2",
            bytes([out, _NO_KEYS, 3, _RAW_MSGPACK]) + b"\x82\xa6action\x81\xa0\xc0\xa10\xa1\x80",
            bytes([out, _NO_KEYS, 4, _RAW_JSON]) + b"{}\n   \n" + b" " * 9000 + b"\n{\"a\":1}\n",
            # A record holding a map keyed by a map, between two records.
            bytes([out, _TAG_KEY, 6, _RAW_MSGPACK]) + msgpack.packb(events[0]) +
            b"\x82\xa3tag\xa1t\xa1m\x81\x81\xa1k\x91\x01\xa1v" + msgpack.packb(events[1]),
        ]
    return seeds


def filter_seeds(events: List[dict]) -> List[bytes]:
    seeds = [b"\x03" + json.dumps(event, ensure_ascii=False).encode("utf-8") for event in events]
    seeds += [bytes([0, index]) + bytes(range(7, 40, 3)) for index in range(len(events))]
    seeds += [b"\x02" + msgpack.packb(event, use_bin_type=False) for event in events[:4]]
    return seeds


def write(target: str, seeds: List[bytes]) -> int:
    folder = CORPUS / target
    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (folder / f"seed-{hashlib.sha1(seed).hexdigest()[:16]}").write_bytes(seed)
    return len(seeds)


def main() -> Dict[str, int]:
    events = [e for e in sample_events() if isinstance(e, dict)]
    written = {
        "forward": write("forward", forward_seeds(events)),
        "execfilter": write("execfilter", execfilter_seeds(events)),
        "filter": write("filter", filter_seeds(events)),
    }
    for target, count in written.items():
        print(f"{target}: {count} seeds in {CORPUS / target}")
    return written


if __name__ == "__main__":
    main()
