"""What the signal and fault tests share: numbered records, chunks of them, an acking sender,
reading back what arrived, and the peak RSS of a child process.

Every record carries its number in `requestData.seq` on every route (the rejected route
wraps it in `original`), so what arrived can be checked against what was acked, record by
record: lost = acked but never arrived; duplicated = arrived more than once.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from atnorm.forward.codec import Entry, EventTime, pack_entries
from atnorm.forward.sender import ForwardSender
from support import forward_sender

EVENTS = Path(__file__).resolve().parents[1] / "fixtures" / "events"
ROUTES = ("accepted", "rejected", "passed")


def _event(name: str) -> Dict[str, Any]:
    return json.loads((EVENTS / name).read_text(encoding="utf-8"))


VALID = _event("vsi-provision.json")
INVALID = {k: v for k, v in VALID.items() if k != "outcome"}
OTHER = _event("platform-log-not-an-event.json")


def scale(small: int, full: int) -> int:
    """`small` in the normal test run; `full` with ATNORM_FAULT_SCALE=full (`tox -e faults`);
    a number N in ATNORM_FAULT_SCALE multiplies `small` by N (at most `full`)."""
    setting = os.environ.get("ATNORM_FAULT_SCALE", "small").strip().lower()
    if setting in ("", "small"):
        return small
    if setting == "full":
        return full
    try:
        factor = float(setting)
    except ValueError:
        raise ValueError(f"ATNORM_FAULT_SCALE: expected small, full or a number, got {setting!r}") from None
    return max(1, min(full, int(small * factor)))


def record(seq: int) -> Dict[str, Any]:
    """Record number `seq`: mostly valid events, some invalid ones, some other logs."""
    kind = seq % 10
    template = INVALID if kind == 8 else OTHER if kind == 9 else VALID
    out = dict(template)
    out["requestData"] = {"seq": seq}
    return out


def seq_of(rec: Dict[str, Any]) -> int:
    body = rec["original"] if "original" in rec and "reasons" in rec else rec
    return body["requestData"]["seq"]


def chunks(first: int, count: int, per_chunk: int) -> List[Tuple[bytes, int, range]]:
    """PackedForward payloads for records first .. first+count-1: (payload, records, seqs)."""
    out = []
    for start in range(first, first + count, per_chunk):
        seqs = range(start, min(start + per_chunk, first + count))
        entries = [Entry(EventTime(1700000000 + s), record(s)) for s in seqs]
        out.append((pack_entries(entries), len(seqs), seqs))
    return out


def sender(port: int, **options: Any) -> ForwardSender:
    """An upstream with acks, as Fluent Bit with Require_ack_response On: each payload goes
    as its own chunk, whose id stays the same on every resend (batch_max_records=1)."""
    settings: Dict[str, Any] = dict(batch_max_records=1, flush_interval=0.005, ack_timeout=20.0)
    settings.update(options)
    return forward_sender([("127.0.0.1", port)], **settings)


async def send_all(port: int, payloads: Sequence[Tuple[bytes, int, Any]], tag: str = "audit.at",
                   **options: Any) -> List[bool]:
    """Send every payload on one sender; True per payload that was acked."""
    upstream = sender(port, **options)
    try:
        return list(await asyncio.gather(*(upstream.send(tag, p, n) for p, n, _ in payloads)))
    finally:
        await upstream.close()


async def send_until_acked(port: int, payloads: Sequence[Tuple[bytes, int, Any]], *, limit: float = 120.0,
                           tag: str = "audit.at", acked: Optional[List[bool]] = None,
                           **options: Any) -> Tuple[List[bool], float]:
    """Send every payload and resend each one until it is acked, as Fluent Bit does with
    `Retry_Limit no_limits` (the same payload keeps its chunk id); give up on a payload after
    `limit` seconds. Returns (acked per payload, the longest time from first try to ack)."""
    # The sender's own resends of one try stop within the limit too.
    options.setdefault("retry_deadline", max(limit, 2.0))
    upstream = sender(port, **options)
    results = acked if acked is not None else [False] * len(payloads)
    longest = 0.0
    loop = asyncio.get_running_loop()

    async def one(index: int) -> None:
        nonlocal longest
        payload, count, _ = payloads[index]
        started = loop.time()
        while not await upstream.send(tag, payload, count):
            if loop.time() - started > limit:
                return
            await asyncio.sleep(0.2)
        results[index] = True
        longest = max(longest, loop.time() - started)

    try:
        await asyncio.gather(*(one(i) for i in range(len(payloads))))
    finally:
        await upstream.close()
    return results, longest


def file_seqs(data_dir: Path, names: Iterable[str] = ROUTES) -> List[int]:
    """The record numbers in the JSON-lines files of a files-mode data directory."""
    seqs = []
    for name in names:
        path = data_dir / f"{name}.jsonl"
        if path.exists():
            seqs += [seq_of(json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines()]
    return seqs


def receiver_seqs(receiver: Any) -> List[int]:
    """The record numbers a ForwardReceiver acked (the stats records left out)."""
    return [seq_of(rec) for tag, _, rec in receiver.events if not tag.startswith("atnorm.")]


def metrics_url(relay: Any) -> str:
    """The base URL of a RelayProcess started with `--metrics-listen 127.0.0.1:0`."""
    line = next(line for line in relay.lines if "metrics on " in line)
    return line.split("metrics on ", 1)[1].split("/metrics")[0]


def metric(url: str, name: str) -> float:
    """The sum of every sample of `name` on the relay's /metrics page."""
    import urllib.request

    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"))


def peak_rss_kib(pid: int) -> Optional[int]:
    """VmHWM of a live process, in KiB (None when /proc does not tell)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Tally:
    """sent / acked / delivered / lost / duplicated for one fault, with the relay's peak RSS."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sent = 0
        self.acked: set = set()
        self.arrived: Counter = Counter()
        self.peak_rss_kib: Optional[int] = None
        self.extra: Dict[str, Any] = {}

    def add_sent(self, payloads: Sequence[Tuple[bytes, int, Sequence[int]]], results: Sequence[bool]) -> None:
        self.sent += sum(n for _, n, _ in payloads)
        for (_, _, seqs), ok in zip(payloads, results):
            if ok:
                self.acked.update(seqs)

    def arrivals(self, seqs: Iterable[int]) -> None:
        self.arrived = Counter(seqs)

    def rss(self, pid: int) -> None:
        value = peak_rss_kib(pid)
        if value is not None:
            self.peak_rss_kib = max(value, self.peak_rss_kib or 0)

    @property
    def lost(self) -> int:
        return len(self.acked - set(self.arrived))

    @property
    def duplicated(self) -> int:
        return sum(count - 1 for count in self.arrived.values() if count > 1)

    def figures(self) -> Dict[str, Any]:
        return dict(fault=self.name, sent=self.sent, acked=len(self.acked), delivered=len(self.arrived),
                    lost=self.lost, duplicated=self.duplicated, peak_rss_kib=self.peak_rss_kib, **self.extra)
