"""Errors say what happened, and /readyz means a chunk sent now would be acked.

* A record that cannot be written as JSON is not a disk error: it must not be reported as
  "cannot write to '<data_dir>'", and it must not hold up the chunks written with it.
* Acks from the downstream with a chunk id nobody waits for are counted and logged.
* Readiness turns false when nothing can be handed on: the downstream is away and the
  spool is full, or SQLite says "database or disk is full".
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgpack

from atnorm.forward.codec import Entry, EventTime, pack_entries
from atnorm.monitoring.relaystats import RelayStats
from atnorm.relay.localstore import LocalStore
from atnorm.relay.routing import RoutedBatch
from atnorm.relay.service import Relay
from forward_frames import Time, fluentbit_entry, fluentbit_forward
from forward_receiver import ForwardReceiver
from support import forward_sender, relay_settings, run


def test_a_record_json_cannot_hold_is_not_reported_as_a_disk_error_and_does_not_block_others(tmp_path, caplog):
    async def scenario() -> None:
        store = LocalStore(str(tmp_path))
        odd = {b"\xff\xfe": 1, (1, 2): "tuple key", "ok": True}  # keys JSON cannot have
        good = {"msg": "fine"}
        results = await asyncio.gather(
            store.store([RoutedBatch("passed", "t", [Entry(EventTime(1700000000), odd)])]),
            store.store([RoutedBatch("passed", "t", [Entry(EventTime(1700000001), good)])]))
        assert results == [True, True]
        assert store.last_error is None
        await store.close()

    with caplog.at_level("WARNING"):
        run(scenario())
    assert "cannot write to" not in caplog.text
    lines = [json.loads(line) for line in (tmp_path / "passed.jsonl").read_text().splitlines()]
    assert {"msg": "fine"} in lines
    assert len(lines) == 2  # the odd record is kept, its keys made text
    [kept] = [line for line in lines if line != {"msg": "fine"}]
    assert kept["ok"] is True and "tuple key" in kept.values()


def test_a_record_that_cannot_be_written_at_all_becomes_a_rejection_with_a_reason(tmp_path):
    async def scenario() -> None:
        store = LocalStore(str(tmp_path))
        deep: Any = {}
        for _ in range(100_000):  # deeper than any JSON encoder goes
            deep = {"d": deep}
        ok = await store.store([RoutedBatch("passed", "t", [Entry(EventTime(1700000000), deep),
                                                           Entry(EventTime(1700000001), {"n": 1})])])
        assert ok is True
        await store.close()

    run(scenario())
    assert [json.loads(line) for line in (tmp_path / "passed.jsonl").read_text().splitlines()] == [{"n": 1}]
    [dead] = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text().splitlines()]
    assert dead["reasons"][0]["rule"] == "unwritable"
    assert "JSON" in dead["reasons"][0]["message"]


def test_acks_with_a_wrong_chunk_id_are_counted_and_logged(caplog):
    async def scenario() -> RelayStats:
        async def liar(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            unpacker = msgpack.Unpacker(raw=False)
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    writer.write(msgpack.packb({"ack": "bm90LXRoaXMtb25l"}))  # not the chunk sent
                    writer.write(msgpack.packb({"ack": message[2]["chunk"]}))
                    await writer.drain()

        server = await asyncio.start_server(liar, "127.0.0.1", 0)
        stats = RelayStats()
        sender = forward_sender([("127.0.0.1", server.sockets[0].getsockname()[1])], stats=stats,
                               flush_interval=0.01)
        payload = pack_entries([Entry(EventTime(1700000000), {"n": 1})])
        assert await sender.send("t", payload, 1) is True
        await sender.close()
        server.close()
        await server.wait_closed()
        return stats

    with caplog.at_level("WARNING", logger="atnorm"):
        stats = run(scenario())
    assert stats.unknown_acks == 1
    assert stats.snapshot()["unknown_acks"] == 1
    assert "bm90LXRoaXMtb25l" in caplog.text


async def _wait(predicate: Any, timeout: float = 20.0) -> None:
    async def until() -> None:
        while not predicate():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(until(), timeout)


def test_readyz_is_false_while_the_spool_cannot_take_a_chunk_and_the_downstream_is_away(tmp_path):
    async def scenario() -> None:
        receiver = await ForwardReceiver().start()
        await receiver.go_down()
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                   "--data-dir", str(tmp_path), "--filter", "off", "--spool-max-size", "4k",
                                   "--retry-max-wait", "0.1"))
        await relay.start()
        try:
            assert relay.readiness()[0] is True
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
            big = {"pad": "x" * 3000}
            frame, _ = fluentbit_forward("a", [fluentbit_entry(Time(1700000000), big)], ack=True)
            writer.write(frame)
            await _wait(lambda: relay.relay_stats.acks_sent == 1)
            frame, _ = fluentbit_forward("a", [fluentbit_entry(Time(1700000001), big)], ack=True)
            writer.write(frame)  # does not fit in the spool: refused
            await _wait(lambda: relay.relay_stats.handler_failures >= 1)
            ready, why = relay.readiness()
            assert ready is False and "spool full" in why  # not full to the byte, but the chunk did not fit

            await receiver.come_up()
            await _wait(lambda: relay.readiness()[0])  # drained and connected: ready again
            writer.close()
        finally:
            await relay.stop()
            await receiver.stop()
    run(scenario())


def test_readyz_is_false_while_sqlite_reports_the_disk_full(tmp_path):
    async def scenario() -> None:
        receiver = await ForwardReceiver().start()
        await receiver.go_down()
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                   "--data-dir", str(tmp_path), "--filter", "off", "--retry-max-wait", "0.1"))
        await relay.start()
        spool = relay.destination.main.spool  # type: ignore[union-attr]
        pages = spool._db.execute("PRAGMA page_count").fetchone()[0]
        spool._db.execute(f"PRAGMA max_page_count={pages}")  # the disk is full
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
            frame, _ = fluentbit_forward("a", [fluentbit_entry(Time(1700000000), {"pad": "x" * 9000})], ack=True)
            writer.write(frame)
            await _wait(lambda: relay.relay_stats.handler_failures >= 1)
            ready, why = relay.readiness()
            assert ready is False and "full" in why
            writer.close()
        finally:
            await relay.stop()
            await receiver.stop()
    run(scenario())
