"""Several relays behind one load-balancing sender, as Fluent Bit's `Upstream` (round robin
over forward nodes) or Fluentd's out_forward with several `<server>`s run them: one relay is
killed with -9 mid-stream and restarted on its own spool and port, and every acked record
still arrives downstream.

What holds across relays is what holds for one: a record is acked only once it is handed on
or spooled, so nothing acked is lost; a chunk the killed relay had handed on but not acked
is resent by the sender (to another relay) and arrives twice: at-least-once, duplicates
bounded by what was in flight at the kill.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Sequence, Tuple

from faults.harness import chunks, receiver_seqs, scale, sender
from faults.test_faults import STALLED, free_port, relay_args, run, watch_rss
from forward_receiver import ReceiverThread
from relay_process import RelayProcess

RELAYS = 3


class RoundRobin:
    """A sender over several relays: chunk i goes to relay i mod N first; a relay that does
    not ack it (down, reset, ack timeout) hands it to the next one, round and round, as Fluent
    Bit's Upstream retries a chunk on another node."""

    def __init__(self, ports: Sequence[int]) -> None:
        # A short give-up per try, so a dead node costs seconds, not the sender's whole deadline.
        self.nodes = [sender(port, retry_deadline=1.0, retry_max_wait=0.2, ack_timeout=5.0) for port in ports]
        self.tries_elsewhere = 0

    async def send(self, index: int, payload: bytes, count: int, *, limit: float) -> bool:
        loop = asyncio.get_running_loop()
        started = loop.time()
        node = index % len(self.nodes)
        while not await self.nodes[node].send("audit.at", payload, count):
            if loop.time() - started > limit:
                return False
            node = (node + 1) % len(self.nodes)
            self.tries_elsewhere += 1
        return True

    async def close(self) -> None:
        for node in self.nodes:
            await node.close()


def test_three_relays_behind_a_round_robin_sender_survive_kill_9_of_one(tmp_path, tally):
    per_chunk, count = 100, scale(60, 1000)
    payloads: List[Tuple[bytes, int, Any]] = chunks(0, per_chunk * count, per_chunk)
    ports = [free_port() for _ in range(RELAYS)]
    with ReceiverThread() as downstream:
        def relay(n: int) -> RelayProcess:
            return RelayProcess(*relay_args(ports[n], tmp_path / f"relay{n}", "--forward",
                                            f"127.0.0.1:{downstream.port}", "--retry-max-wait", "0.5")).start()

        relays = [relay(n) for n in range(RELAYS)]
        restarted: List[RelayProcess] = []
        acked = [False] * count
        balancer = RoundRobin(ports)

        async def one(index: int) -> None:
            payload, records, _ = payloads[index]
            acked[index] = await balancer.send(index, payload, records, limit=STALLED)

        async def scenario() -> None:
            sending = asyncio.ensure_future(asyncio.gather(*(one(i) for i in range(count))))
            while sum(acked) < count // 3:
                await asyncio.sleep(0.002)
            watch_rss(relays[1], tally)
            relays[1].kill()
            tally.extra["acked_before_kill"] = sum(acked) * per_chunk
            await asyncio.sleep(0.5)
            restarted.append(await asyncio.get_running_loop().run_in_executor(None, lambda: relay(1)))
            await sending
            await balancer.close()

        try:
            run(scenario())
            tally.add_sent(payloads, acked)
            tally.extra["tries_on_another_relay"] = balancer.tries_elsewhere
            assert all(acked), "every chunk is acked by one relay or another"
            downstream.wait_for(lambda: tally.acked <= set(receiver_seqs(downstream.receiver)), timeout=STALLED)
            survivors = [relays[0], relays[2], restarted[0]]
            for process in survivors:
                watch_rss(process, tally)
            summaries = []
            for process in survivors:
                assert process.stop() == 0
                summaries.append(process.summary())
        finally:
            for process in relays + restarted:
                process.kill()
        tally.arrivals(receiver_seqs(downstream.receiver))
    assert tally.lost == 0
    # Each relay counts what it received; the two that ran throughout took their share.
    assert summaries[0]["received"] > 0 and summaries[1]["received"] > 0
    # At-least-once across relays: only chunks in flight at the kill can arrive twice.
    assert tally.duplicated <= tally.sent - tally.extra["acked_before_kill"]
