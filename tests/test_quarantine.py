"""A downstream that keeps refusing one chunk: the chunk is quarantined, nothing is lost or stuck.

The downstream here is a real loopback server that resets the connection whenever a chunk
holds a "poison" record (as Fluentd 1.16 does with entries it cannot read) and acks every
other chunk. The relay must give up on that chunk after `retry_max_times`, keep it in the
spool's quarantine with the error, ack the upstream, keep the other chunks flowing, count
and log it, and let `atnorm quarantine` list and re-send it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
import sys
from typing import Any, Dict, List, Optional

import msgpack
from prometheus_client import generate_latest

from atnorm.forward.codec import Entry, EventTime, pack_entries
from atnorm.forward.sender import Refused
from atnorm.monitoring.metrics import build_registry
from atnorm.monitoring.relaystats import RelayStats
from atnorm.relay.delivery import Delivery
from atnorm.relay.service import Relay
from atnorm.relay.spool import Spool
from support import forward_sender, relay_settings, run


class PickyDownstream:
    """Acks every chunk, except that one with a poison record resets the connection."""

    def __init__(self, *, silent: bool = False) -> None:
        self.accept_poison = False
        self.silent = silent  # never ack a poison chunk (keep the connection) instead of resetting
        self.records: List[Dict[str, Any]] = []
        self.resets = 0
        self.port = 0
        self._server: Optional[asyncio.AbstractServer] = None
        self._changed = asyncio.Event()

    async def __aenter__(self) -> "PickyDownstream":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> None:
        async def until() -> None:
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
        await asyncio.wait_for(until(), timeout)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker(raw=False)
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                unpacker.feed(data)
                for _tag, payload, options in unpacker:
                    entries = msgpack.Unpacker(raw=False)
                    entries.feed(payload)
                    records = [record for _, record in entries]
                    if not self.accept_poison and any(r.get("poison") for r in records):
                        if self.silent:
                            continue
                        self.resets += 1
                        sock = writer.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        writer.transport.abort()  # an RST, as Fluentd's in_forward sends
                        return
                    self.records.extend(records)
                    self._changed.set()
                    writer.write(msgpack.packb({"ack": options["chunk"]}))
                    await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.transport.abort()
            self._changed.set()


def payload(records: List[Dict[str, Any]]) -> bytes:
    return pack_entries(Entry(EventTime(1700000000 + i), r) for i, r in enumerate(records))


def test_the_sender_gives_up_on_a_chunk_after_retry_max_times_and_only_that_chunk():
    async def scenario() -> None:
        async with PickyDownstream() as downstream:
            stats = RelayStats()
            sender = forward_sender([("127.0.0.1", downstream.port)], retry_max_times=3, retry_wait=0.01,
                                   retry_max_wait=0.05, flush_interval=0.01, ack_timeout=5.0, stats=stats)
            poison = asyncio.ensure_future(sender.send("a", payload([{"poison": True, "n": 0}]), 1))
            await asyncio.sleep(0.05)
            good = [sender.send("a", payload([{"n": n}]), 1) for n in range(1, 6)]
            results = await asyncio.gather(poison, *good)
            await sender.close()
        assert isinstance(results[0], Refused) and results[0].attempts == 3
        assert "127.0.0.1" in results[0].reason
        assert results[1:] == [True] * 5
        assert downstream.resets == 3
        assert sorted(r["n"] for r in downstream.records) == [1, 2, 3, 4, 5]
    run(scenario())


def test_a_refused_chunk_of_several_batches_is_split_so_only_the_bad_batch_is_given_up():
    async def scenario() -> None:
        async with PickyDownstream() as downstream:
            sender = forward_sender([("127.0.0.1", downstream.port)], retry_max_times=3, retry_wait=0.01,
                                   retry_max_wait=0.05, flush_interval=0.01, ack_timeout=5.0)
            # Submitted together, these share one chunk until the downstream refuses it.
            futures = [sender.submit("a", payload([{"n": n, "poison": n == 2}]), 1) for n in range(5)]
            results = await asyncio.gather(*futures)
            await sender.close()
        assert [bool(r) for r in results] == [True, True, False, True, True]
        assert isinstance(results[2], Refused)
        assert sorted(r["n"] for r in downstream.records) == [0, 1, 3, 4]
    run(scenario())


def test_a_chunk_never_acked_is_quarantined_across_drain_rounds(tmp_path):
    async def scenario() -> None:
        async with PickyDownstream(silent=True) as downstream:
            stats = RelayStats()
            spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20)
            # Each round gives up after one missing ack: the count must carry across rounds.
            sender = forward_sender([("127.0.0.1", downstream.port)], retry_max_times=3, retry_wait=0.01,
                                   retry_max_wait=0.05, flush_interval=0.01, ack_timeout=0.2,
                                   retry_deadline=0.3, stats=stats)
            delivery = Delivery(sender, spool, stats=stats, retry_wait=0.02, retry_max_wait=0.05,
                                refresh_interval=0.05)
            assert await delivery.hand_off("a", payload([{"poison": True, "n": 0}]), 1) is True  # spooled
            assert await delivery.hand_off("b", payload([{"n": 1}]), 1) is True
            while not stats.chunks_quarantined:
                await asyncio.sleep(0.02)
            await downstream.wait_for(lambda: len(downstream.records) >= 1)
            while spool.depth_batches:
                await asyncio.sleep(0.02)
            [kept] = spool.quarantined()
            assert kept.tag == "a" and kept.attempts >= 3
            await delivery.close(1.0)
        assert downstream.records == [{"n": 1}]
    run(scenario())


def test_a_refused_spooled_batch_moves_to_the_quarantine_and_the_rest_drains(tmp_path):
    async def scenario() -> None:
        async with PickyDownstream() as downstream:
            spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20)
            spool.append("a", payload([{"n": 1}]), 1)
            spool.append("b", payload([{"poison": True, "n": 2}]), 1)
            spool.append("c", payload([{"n": 3}]), 1)
            stats = RelayStats()
            sender = forward_sender([("127.0.0.1", downstream.port)], retry_max_times=2, retry_wait=0.01,
                                   retry_max_wait=0.05, flush_interval=0.01, stats=stats)
            delivery = Delivery(sender, spool, stats=stats, retry_wait=0.02, retry_max_wait=0.05,
                                refresh_interval=0.05)
            await delivery.start()
            await downstream.wait_for(lambda: len(downstream.records) >= 2)
            while spool.depth_batches:
                await asyncio.sleep(0.02)
            [kept] = spool.quarantined()
            assert (kept.tag, kept.count, kept.attempts) == ("b", 1, 2)
            assert "127.0.0.1" in kept.error
            assert stats.chunks_quarantined == 1 and stats.records_quarantined == 1

            downstream.accept_poison = True
            assert spool.requeue([kept.id]) == 1
            delivery.drainer.wake()
            await downstream.wait_for(lambda: len(downstream.records) >= 3)
            await delivery.close(1.0)
        assert sorted(r["n"] for r in downstream.records) == [1, 2, 3]
        reopened = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20)
        assert reopened.depth_batches == 0 and reopened.quarantined() == []
        reopened.close()
    run(scenario())


def atnorm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atnorm", *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_relay_quarantines_acks_upstream_keeps_flowing_and_the_cli_resends(tmp_path):
    data_dir = str(tmp_path / "data")

    async def scenario() -> None:
        async with PickyDownstream() as downstream:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{downstream.port}",
                                       "--data-dir", data_dir, "--filter", "off", "--retry-max-times", "3",
                                       "--retry-max-wait", "0.1", "--forward-ack-timeout", "5"))
            await relay.start()
            try:
                upstream = forward_sender([("127.0.0.1", relay.server.port)], batch_max_records=1,
                                         flush_interval=0.001, ack_timeout=30.0, retry_deadline=60.0)
                poison = asyncio.ensure_future(upstream.send("audit.at", payload([{"poison": True, "n": 0}]), 1))
                await asyncio.sleep(0.05)
                others = [upstream.send("audit.at", payload([{"n": n}]), 1) for n in range(1, 21)]
                results = await asyncio.gather(poison, *others)
                assert results == [True] * 21  # all acked upstream, the poison one too
                await upstream.close()
                await downstream.wait_for(lambda: len(downstream.records) >= 20)
                assert relay.relay_stats.chunks_quarantined == 1
                assert relay.relay_stats.snapshot()["records_quarantined"] == 1
                exported = generate_latest(build_registry(relay_stats=relay.relay_stats,
                                                          process_metrics=False)).decode()
                assert "atnorm_quarantined_chunks_total 1.0" in exported
                assert "atnorm_quarantined_records_total 1.0" in exported

                listed = atnorm("quarantine", "list", "--data-dir", data_dir, "--json")
                assert listed.returncode == 0, listed.stderr
                [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
                assert entry["tag"] == "audit.at" and entry["records"] == 1 and entry["attempts"] == 3
                assert "127.0.0.1" in entry["error"]

                downstream.accept_poison = True
                resent = atnorm("quarantine", "resend", str(entry["id"]), "--data-dir", data_dir)
                assert resent.returncode == 0, resent.stderr
                assert "marked" in resent.stderr  # the relay holds the spool: it moves the chunk itself
                await downstream.wait_for(lambda: len(downstream.records) >= 21)
            finally:
                await relay.stop()
        assert sorted(r["n"] for r in downstream.records) == list(range(21))
        assert atnorm("quarantine", "list", "--data-dir", data_dir).stdout == ""
    run(scenario())


def test_quarantine_cli_offline_resend_and_drop_and_clear_errors(tmp_path):
    path = str(tmp_path / "spool.db")
    with Spool(path, max_bytes=1 << 20) as spool:
        first = spool.quarantine_append("a", payload([{"n": 1}]), 1, error="reset", attempts=5)
        second = spool.quarantine_append("b", payload([{"n": 2}]), 1, error="no ack", attempts=5)
    listed = atnorm("quarantine", "list", "--spool-path", path)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2 and "reset" in listed.stdout
    resent = atnorm("quarantine", "resend", str(first), "--spool-path", path)
    assert resent.returncode == 0 and "back in the spool queue" in resent.stderr
    dropped = atnorm("quarantine", "drop", str(second), "--spool-path", path)
    assert dropped.returncode == 0
    with Spool(path, max_bytes=1 << 20) as spool:
        assert spool.quarantined() == []
        [batch] = spool.peek(10)
        assert batch.tag == "a" and batch.count == 1
    bad = atnorm("quarantine", "resend", "--spool-path", path)
    assert bad.returncode == 2 and "ids or --all" in bad.stderr and "Traceback" not in bad.stderr
    missing = atnorm("quarantine", "list", "--spool-path", str(tmp_path / "nope.db"))
    assert missing.returncode == 2 and "no spool here" in missing.stderr
