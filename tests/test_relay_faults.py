"""The relay under failure: downstream outages, a full spool, `kill -9`, hostile and slow peers.

Every scenario runs real processes and sockets on loopback. What is checked is the
promise: a chunk acked upstream is never lost, nothing is dropped when the spool is full,
counts reconcile, and one bad peer costs only its own connection.
"""

from __future__ import annotations

import asyncio
import json
import random
import urllib.request
from typing import Any, Dict, List, Tuple

from atnorm.core.pipeline import EventFilter
from atnorm.core.stats import FilterStats
from atnorm.forward.codec import Entry, EventTime, pack_entries
from atnorm.forward.sender import ForwardSender
from atnorm.relay.service import Relay
from forward_frames import Time, fluentbit_entry, fluentbit_forward
from forward_receiver import ForwardReceiver, ReceiverThread
from relay_process import RelayProcess
from support import forward_sender, load_event, relay_settings, run

VALID = load_event("vsi-provision.json")
INVALID = {k: v for k, v in VALID.items() if k != "outcome"}
OTHER = load_event("platform-log-not-an-event.json")


def record(seq: int) -> Dict[str, Any]:
    """Record number `seq`: mostly valid events, some invalid ones, some other logs; the
    number travels in `requestData.seq` on every route."""
    kind = seq % 10
    template = INVALID if kind == 8 else OTHER if kind == 9 else VALID
    out = dict(template)
    out["requestData"] = {"seq": seq}
    return out


def seq_of(tag: str, rec: Dict[str, Any]) -> int:
    body = rec["original"] if tag.endswith(".rejected") else rec
    return body["requestData"]["seq"]


def _numbered(body: Any) -> bool:
    """Whether `body` is one of `record`'s records (it carries `requestData.seq`)."""
    return isinstance(body, dict) and isinstance(body.get("requestData"), dict) and "seq" in body["requestData"]


def payloads(first: int, count: int, per_chunk: int) -> List[Tuple[bytes, int, range]]:
    """PackedForward entries for records first .. first+count-1, `per_chunk` per chunk."""
    out = []
    for start in range(first, first + count, per_chunk):
        seqs = range(start, min(start + per_chunk, first + count))
        entries = [Entry(EventTime(1700000000 + s), record(s)) for s in seqs]
        out.append((pack_entries(entries), len(seqs), seqs))
    return out


def upstream(port: int, **options: Any) -> ForwardSender:
    settings: Dict[str, Any] = dict(batch_max_records=1000, flush_interval=0.005, ack_timeout=20.0)
    settings.update(options)
    return forward_sender([("127.0.0.1", port)], **settings)


def received_seqs(receiver: ForwardReceiver) -> List[int]:
    return [seq_of(tag, rec) for tag, _, rec in receiver.events if not tag.startswith("atnorm.")]


def test_an_outage_downstream_loses_nothing_and_the_counts_reconcile(tmp_path):
    total, per_chunk, resent = 100_000, 1000, 5
    with ReceiverThread() as downstream:
        downstream.call(lambda r: r.go_down())
        with RelayProcess("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{downstream.port}",
                          "--data-dir", str(tmp_path), "--retry-max-wait", "0.5") as relay:
            chunks = payloads(0, total, per_chunk)

            async def send_all() -> List[bool]:
                sender = upstream(relay.port)
                results = await asyncio.gather(*(sender.send("audit.at", p, n) for p, n, _ in chunks))
                # The same chunks again, as a sender does when an ack went missing.
                results += await asyncio.gather(*(sender.send("audit.at", p, n) for p, n, _ in chunks[:resent]))
                await sender.close()
                return list(results)

            assert all(run(send_all()))  # every chunk acked while the downstream was away (spooled)
            assert downstream.receiver.frames == []
            downstream.call(lambda r: r.come_up())
            downstream.wait_for(lambda: len(downstream.receiver.events) >= total, timeout=90)
            assert relay.stop() == 0

        seqs = received_seqs(downstream.receiver)
        assert set(seqs) == set(range(total))  # every record arrived at least once
        summary = relay.summary()
        assert summary["received"] == total == summary["accepted"] + summary["rejected"] + summary["passed"]
        assert summary["duplicate_chunks"] == resent
        assert summary["spool_depth_records"] == 0
        by_route = {"accepted": set(), "rejected": set(), "passed": set()}  # type: Dict[str, Set[int]]
        for tag, _, rec in downstream.receiver.events:
            route = "rejected" if tag.endswith(".rejected") else "passed" if "atnorm" not in rec else "accepted"
            by_route[route].add(seq_of(tag, rec))
        assert {route: len(s) for route, s in by_route.items()} == {
            route: summary[route] for route in ("accepted", "rejected", "passed")}


def test_a_relay_killed_mid_stream_keeps_every_acked_chunk_in_its_spool(tmp_path):
    per_chunk, count = 500, 40
    chunks = payloads(0, per_chunk * count, per_chunk)
    with ReceiverThread() as downstream:
        downstream.call(lambda r: r.go_down())
        relay = RelayProcess("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{downstream.port}",
                             "--data-dir", str(tmp_path)).start()
        acked: List[int] = []

        async def send_and_kill() -> None:
            sender = upstream(relay.port, retry_deadline=2.0, retry_max_wait=0.2)

            async def send_one(index: int) -> None:
                payload, n, _ = chunks[index]
                if await sender.send("audit.at", payload, n):
                    acked.append(index)

            tasks = [asyncio.ensure_future(send_one(i)) for i in range(count)]
            while len(acked) < count // 4:
                await asyncio.sleep(0.002)
            relay.kill()  # SIGKILL: no flush, no close
            await asyncio.gather(*tasks)
            await sender.close()

        run(send_and_kill())
        assert count // 4 <= len(acked) < count
        with RelayProcess("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{downstream.port}",
                          "--data-dir", str(tmp_path), "--retry-max-wait", "0.5") as restarted:
            downstream.call(lambda r: r.come_up())
            must_arrive = {s for i in acked for s in chunks[i][2]}
            downstream.wait_for(lambda: must_arrive <= set(received_seqs(downstream.receiver)), timeout=60)

            # The chunks that were not acked are still with their sender, which sends them again.
            async def resend() -> bool:
                sender = upstream(restarted.port)
                missing = [chunks[i] for i in range(count) if i not in acked]
                results = await asyncio.gather(*(sender.send("audit.at", p, n) for p, n, _ in missing))
                await sender.close()
                return all(results)

            assert run(resend())
            everything = set(range(per_chunk * count))
            downstream.wait_for(lambda: everything <= set(received_seqs(downstream.receiver)), timeout=60)
            assert restarted.stop() == 0


def test_a_full_spool_leaves_the_chunk_unacked_until_there_is_room(tmp_path):
    async def scenario() -> None:
        receiver = await ForwardReceiver().start()
        await receiver.go_down()
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                   "--data-dir", str(tmp_path), "--spool-max-size", "30k",
                                   "--retry-max-wait", "0.2"),
                      EventFilter.from_schemas(stats=FilterStats()))
        await relay.start()
        stats = relay.relay_stats
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
        try:
            first, first_id = fluentbit_forward("audit.at", [fluentbit_entry(Time(1700000000 + s), record(s))
                                                             for s in range(40)], ack=True)
            second, second_id = fluentbit_forward("audit.at", [fluentbit_entry(Time(1700000000 + s), record(s))
                                                               for s in range(40, 80)], ack=True)
            writer.write(first)
            assert await read_reply(reader) == {"ack": first_id}  # spooled
            assert stats.spool_depth_records == 40

            writer.write(second)  # does not fit: refused, not acked, nothing dropped
            while stats.handler_failures == 0:
                await asyncio.sleep(0.005)
            assert stats.acks_sent == 1 and 40 <= stats.spool_depth_records < 80

            await receiver.come_up()
            while True:  # the sender resends until acked, as Fluent Bit does
                failures = stats.handler_failures
                writer.write(second)
                reply = await first_of(read_reply(reader), until_failure(stats, failures))
                if reply == {"ack": second_id}:
                    break
            await receiver.wait_for(lambda: len(receiver.events) >= 80)
        finally:
            writer.close()
            await relay.stop()
            await receiver.stop()
        assert sorted(seq_of(tag, rec) for tag, _, rec in receiver.events) == list(range(80))
        assert relay.filter_stats.snapshot()["received"] == 80  # the resends were not decided again
    run(scenario())


async def read_reply(reader: asyncio.StreamReader) -> Any:
    import msgpack

    unpacker = msgpack.Unpacker(raw=False)
    while True:
        data = await reader.read(4096)
        assert data, "the relay closed the connection"
        unpacker.feed(data)
        for message in unpacker:
            return message


async def until_failure(stats: Any, before: int) -> None:
    while stats.handler_failures == before:
        await asyncio.sleep(0.005)


async def first_of(*aws: Any) -> Any:
    tasks = [asyncio.ensure_future(a) for a in aws]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return next(iter(done)).result()


def test_garbage_and_slow_peers_do_not_hold_up_a_well_behaved_sender(tmp_path):
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data), "--metrics-listen", "127.0.0.1:0",
                      "--idle-timeout", "30") as relay:
        port = relay.port
        metrics_url = next(line.split("metrics on ")[1].split("/metrics")[0]
                           for line in relay.lines if "metrics on" in line)

        async def scenario() -> Tuple[int, List[bool]]:
            good_done = asyncio.Event()
            rng = random.Random(5)

            async def garbage_peer() -> int:
                closed_by_relay = 0
                while not good_done.is_set():
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    try:
                        while True:  # spew until the relay hangs up
                            writer.write(bytes(rng.getrandbits(8) for _ in range(4096)))
                            await writer.drain()
                            await asyncio.sleep(0)
                    except ConnectionError:
                        closed_by_relay += 1
                    finally:
                        writer.transport.abort()
                return closed_by_relay

            async def slow_peer() -> bool:
                frame, chunk_id = fluentbit_forward("audit.slow", [fluentbit_entry(Time(1700000000), record(10**6))],
                                                    ack=True)
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(frame[:len(frame) // 2])  # half a frame, then nothing until the others are done
                await writer.drain()
                await good_done.wait()
                writer.write(frame[len(frame) // 2:])
                reply = await read_reply(reader)
                writer.close()
                return reply == {"ack": chunk_id}

            async def good_sender() -> List[bool]:
                sender = upstream(port)
                try:
                    return list(await asyncio.gather(*(sender.send("audit.good", p, n)
                                                       for p, n, _ in payloads(0, 2000, 100))))
                finally:
                    await sender.close()
                    good_done.set()

            garbage = asyncio.ensure_future(garbage_peer())
            slow = asyncio.ensure_future(slow_peer())
            good = await good_sender()
            assert await slow
            return await garbage, good

        closed, good = run(scenario())
        assert all(good)
        assert closed >= 1
        metrics = urllib.request.urlopen(metrics_url + "/metrics").read().decode()
        assert relay.stop() == 0

    lines = [json.loads(line) for name in ("accepted", "rejected", "passed")
             for line in (data / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()]
    # Random bytes now and then hold a well-formed forward message: its entries are the
    # garbage peer's, decided like any others, not the senders' numbered records.
    ours = [rec for rec in lines if _numbered(rec.get("original", rec) if "reasons" in rec else rec)]
    seqs = sorted(seq_of("x.rejected" if "original" in rec else "x", rec) for rec in ours)
    assert seqs == list(range(2000)) + [10**6]
    malformed = [line for line in metrics.splitlines() if line.startswith("atnorm_protocol_errors_total")]
    assert malformed and sum(float(line.rsplit(" ", 1)[1]) for line in malformed) >= closed
