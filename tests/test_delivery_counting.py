"""Counting and duplicates when handing on fails part-way: every record decided and counted once.

Two fault paths, each with a real relay, real sockets and a real SQLite spool:

* the spool's disk is full (SQLite "database or disk is full", not the spool's own bound)
  while the downstream comes and goes;
* more chunks are partly handed on than the relay remembers (MAX_UNFINISHED_CHUNKS) while
  the downstream is away and the spool is full.

A chunk that was partly handed on is resent by its sender; the relay must hand on only the
rest, never decide or count its records again, and never deliver a record twice.
ATNORM_COUNTING_SCALE=10 runs the sizes of the original report (20,000 and 4,000 records).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Tuple

from atnorm.core.pipeline import EventFilter
from atnorm.core.stats import FilterStats
from atnorm.forward.codec import Entry, EventTime, pack_entries
from atnorm.relay.service import MAX_UNFINISHED_CHUNKS, Relay
from forward_receiver import ForwardReceiver
from support import forward_sender, relay_settings, run

EVENTS = Path(__file__).parent / "fixtures" / "events"
VALID = json.loads((EVENTS / "vsi-provision.json").read_text(encoding="utf-8"))
INVALID = {k: v for k, v in VALID.items() if k != "outcome"}
OTHER = json.loads((EVENTS / "platform-log-not-an-event.json").read_text(encoding="utf-8"))
SCALE = int(os.environ.get("ATNORM_COUNTING_SCALE", "1"))


def record(seq: int) -> Dict[str, Any]:
    kind = seq % 10
    out = dict(INVALID if kind == 8 else OTHER if kind == 9 else VALID)
    out["requestData"] = {"seq": seq}
    return out


def seq_of(tag: str, rec: Dict[str, Any]) -> int:
    body = rec["original"] if tag.endswith(".rejected") else rec
    return body["requestData"]["seq"]


def chunks(total: int, per_chunk: int) -> List[Tuple[bytes, int]]:
    out = []
    for start in range(0, total, per_chunk):
        seqs = range(start, min(start + per_chunk, total))
        out.append((pack_entries(Entry(EventTime(1700000000 + s), record(s)) for s in seqs), len(seqs)))
    return out


async def send_until_acked(port: int, batches: List[Tuple[bytes, int]]) -> None:
    """What Fluent Bit does: resend each chunk (same id) until it is acked."""
    sender = forward_sender([("127.0.0.1", port)], batch_max_records=1, flush_interval=0.001,
                           ack_timeout=2.0, retry_deadline=4.0, retry_wait=0.05, retry_max_wait=0.2)

    async def one(payload: bytes, count: int) -> None:
        while not await sender.send("audit.at", payload, count):
            await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(one(p, n) for p, n in batches))
    finally:
        await sender.close()


def tally(receiver: ForwardReceiver, relay: Relay, total: int) -> Dict[str, int]:
    seqs = [seq_of(tag, rec) for tag, _, rec in receiver.events if not tag.startswith("atnorm.")]
    return {"sent": total, "delivered": len(set(seqs)), "counted": relay.filter_stats.snapshot()["received"],
            "dup": len(seqs) - len(set(seqs))}


def test_a_disk_full_spool_neither_counts_nor_delivers_a_record_twice(tmp_path):
    total = 2000 * SCALE

    async def scenario() -> Dict[str, int]:
        receiver = await ForwardReceiver().start()
        await receiver.go_down()
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                   "--data-dir", str(tmp_path), "--retry-max-wait", "0.2"),
                      EventFilter.from_schemas(stats=FilterStats()))
        await relay.start()
        spool = relay.destination.main.spool  # type: ignore[union-attr]
        pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
        spool._db.execute(f"PRAGMA max_page_count={pages + 8}")  # the disk fills after a few batches
        try:
            sending = asyncio.ensure_future(send_until_acked(relay.server.port, chunks(total, 100)))
            await asyncio.sleep(1.5)
            await receiver.come_up()
            await asyncio.wait_for(sending, 240)
            await receiver.wait_for(lambda: tally(receiver, relay, total)["delivered"] >= total, timeout=60)
        finally:
            await relay.stop()
            await receiver.stop()
        return tally(receiver, relay, total)

    result = run(scenario())
    print("disk full:", result)
    assert result == {"sent": total, "delivered": total, "counted": total, "dup": 0}


def test_more_unfinished_chunks_than_remembered_back_pressure_instead_of_replaying(tmp_path):
    total, per_chunk = 4000, 10
    assert total // per_chunk > MAX_UNFINISHED_CHUNKS

    async def scenario() -> Dict[str, int]:
        receiver = await ForwardReceiver().start()
        await receiver.go_down()
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                   "--data-dir", str(tmp_path), "--spool-max-size", "40k",
                                   "--retry-max-wait", "0.2"),
                      EventFilter.from_schemas(stats=FilterStats()))
        await relay.start()
        try:
            sending = asyncio.ensure_future(send_until_acked(relay.server.port, chunks(total, per_chunk)))
            await asyncio.sleep(3)
            await receiver.come_up()
            await asyncio.wait_for(sending, 240)
            await receiver.wait_for(lambda: tally(receiver, relay, total)["delivered"] >= total, timeout=60)
        finally:
            await relay.stop()
            await receiver.stop()
        return tally(receiver, relay, total)

    result = run(scenario())
    print("unfinished bound:", result)
    assert result == {"sent": total, "delivered": total, "counted": total, "dup": 0}
