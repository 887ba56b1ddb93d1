"""Hand-off to the downstream or the spool, and draining the spool in order once it is back."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, List

import msgpack

from atnorm.forward.codec import Entry, pack_entries
from atnorm.forward.sender import ForwardSender
from atnorm.monitoring.relaystats import RelayStats
from atnorm.relay.delivery import Delivery, SpoolDrainer
from atnorm.relay.spool import Spool
from forward_receiver import ForwardReceiver
from support import forward_sender


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


def events(first: int, count: int) -> List[dict]:
    return [{"action": "cloud-object-storage.bucket.create", "n": n} for n in range(first, first + count)]


def payload_of(records: List[dict]) -> bytes:
    return pack_entries(Entry(1714557600, r) for r in records)


def sender_for(port: int, stats: RelayStats, **options: Any) -> ForwardSender:
    settings = dict(ack_timeout=2.0, connect_timeout=2.0, retry_deadline=5.0, retry_wait=0.05,
                    retry_max_wait=0.1, flush_interval=0.01, stats=stats)
    settings.update(options)
    return forward_sender([("127.0.0.1", port)], **settings)


def drain_options() -> dict:
    return dict(retry_wait=0.05, retry_max_wait=0.1, refresh_interval=0.05, window_batches=7)


def test_batches_spooled_while_down_are_drained_in_order_when_the_receiver_returns(tmp_path):
    async def scenario():
        stats = RelayStats()
        async with ForwardReceiver() as receiver:
            await receiver.go_down()
            spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20, stats=stats)
            delivery = Delivery(sender_for(receiver.port, stats), spool, **drain_options())
            await delivery.start()
            for first in range(0, 100, 4):
                assert await delivery.hand_off("at.accepted", payload_of(events(first, 4)), 4)
            assert spool.depth_records == 100
            assert stats.spool_depth_records == 100
            assert receiver.frames == []

            await receiver.come_up()
            await receiver.wait_for(lambda: len(receiver.records) >= 100)
            await delivery.close()
            assert [r["n"] for r in receiver.records] == list(range(100))
            assert stats.spool_depth_records == 0
            with Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20) as reopened:
                assert reopened.depth_batches == 0
    run(scenario)


def test_a_full_spool_refuses_the_hand_off_and_keeps_what_it_has(tmp_path):
    async def scenario():
        stats = RelayStats()
        async with ForwardReceiver() as receiver:
            await receiver.go_down()
            payload = payload_of(events(0, 10))
            spool = Spool(str(tmp_path / "spool.db"), max_bytes=len(payload) * 2, stats=stats)
            delivery = Delivery(sender_for(receiver.port, stats), spool, **drain_options())
            assert await delivery.hand_off("at.accepted", payload, 10)
            assert await delivery.hand_off("at.accepted", payload_of(events(10, 10)), 10)
            assert await delivery.hand_off("at.accepted", payload_of(events(20, 10)), 10) is False
            assert spool.depth_records == 20
            await delivery.close()
        with Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20) as reopened:
            kept = [record["n"] for b in reopened.peek(10) for _, record in entries_of(b.payload)]
        assert kept == list(range(20))
    run(scenario)


def entries_of(payload: bytes) -> list:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload)
    return list(unpacker)


def test_a_spool_left_by_an_earlier_run_is_drained_on_start(tmp_path):
    path = str(tmp_path / "spool.db")
    with Spool(path, max_bytes=1 << 20) as earlier:
        earlier.append("at.accepted", payload_of(events(0, 3)), 3)
        earlier.append("at.rejected", payload_of(events(3, 2)), 2)

    async def scenario():
        stats = RelayStats()
        async with ForwardReceiver() as receiver:
            spool = Spool(path, max_bytes=1 << 20, stats=stats)
            delivery = Delivery(sender_for(receiver.port, stats), spool, **drain_options())
            await delivery.start()
            await receiver.wait_for(lambda: len(receiver.records) == 5)
            await delivery.close()
            assert [(tag, r["n"]) for tag, _, r in receiver.events] == [
                ("at.accepted", 0), ("at.accepted", 1), ("at.accepted", 2),
                ("at.rejected", 3), ("at.rejected", 4)]
        with Spool(path, max_bytes=1 << 20) as reopened:
            assert reopened.depth_batches == 0
    run(scenario)


def test_batches_are_removed_only_after_their_ack(tmp_path):
    async def scenario():
        stats = RelayStats()
        async with ForwardReceiver(ack=False) as receiver:
            spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20, stats=stats)
            spool.append("at.accepted", payload_of(events(0, 2)), 2)
            sender = sender_for(receiver.port, stats, ack_timeout=0.1, retry_deadline=0.3)
            drainer = SpoolDrainer(spool, sender, stats=stats, **drain_options())
            assert await drainer.drain_once() == (0, 1)  # sent, never acked: still spooled
            assert spool.depth_records == 2
            assert len(receiver.chunk_ids) >= 1

            receiver.ack = True
            assert await drainer.drain_once() == (2, 0)
            assert spool.depth_records == 0
            await sender.close()
            await drainer.stop()
            spool.close()
    run(scenario)


def test_drain_failures_back_off_and_count_as_retries(tmp_path):
    async def scenario():
        stats = RelayStats()
        async with ForwardReceiver() as receiver:
            await receiver.go_down()
            spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20, stats=stats)
            spool.append("at.accepted", payload_of(events(0, 1)), 1)
            delivery = Delivery(sender_for(receiver.port, stats), spool, **drain_options())
            await delivery.start()
            while stats.retries < 2:
                await asyncio.sleep(0.02)
            assert spool.depth_records == 1
            await receiver.come_up()
            await receiver.wait_for(lambda: len(receiver.records) == 1)
            await delivery.close()
    run(scenario)


def test_hand_off_while_the_downstream_is_up_does_not_touch_the_spool(tmp_path):
    async def scenario():
        stats = RelayStats()
        async with ForwardReceiver() as receiver:
            spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20, stats=stats)
            delivery = Delivery(sender_for(receiver.port, stats), spool, **drain_options())
            results = await asyncio.gather(*(delivery.hand_off("at.accepted", payload_of(events(n, 1)), 1)
                                             for n in range(50)))
            assert all(results)
            assert spool.depth_batches == 0
            await delivery.close()
            assert [r["n"] for r in receiver.records] == list(range(50))
    run(scenario)
