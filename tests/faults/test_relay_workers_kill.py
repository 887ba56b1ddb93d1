"""`atnorm serve --workers 2` under kill -9 of one worker mid-stream: the supervisor starts
it again on the same port and spool, senders whose connection it held reconnect (to either
worker) and resend what was not acked, and every acked record arrives downstream."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, List, Tuple

from test_relay_workers import supervisor_summary, wait_for, worker_pids

from faults.harness import chunks, receiver_seqs, scale, send_until_acked
from faults.test_faults import STALLED, free_port, relay_args, run
from forward_receiver import ReceiverThread
from relay_process import RelayProcess

CONNECTIONS = 4


def test_kill_9_of_a_worker_loses_no_acked_record(tmp_path, tally):
    per_chunk, count = 100, scale(60, 1000)
    payloads: List[Tuple[bytes, int, Any]] = chunks(0, per_chunk * count, per_chunk)
    port = free_port()
    with ReceiverThread() as downstream:
        relay = RelayProcess(*relay_args(port, tmp_path, "--workers", "2", "--forward",
                                         f"127.0.0.1:{downstream.port}", "--retry-max-wait", "0.5")).start()
        acked = [False] * count
        try:
            killed = worker_pids(relay)[1]

            async def scenario() -> None:
                # Several connections, so that both workers hold some; each resends until acked.
                shares = [list(range(n, count, CONNECTIONS)) for n in range(CONNECTIONS)]
                results = [[False] * len(share) for share in shares]
                sending = asyncio.ensure_future(asyncio.gather(*(
                    send_until_acked(port, [payloads[i] for i in share], limit=STALLED, acked=result,
                                     retry_max_wait=0.2)
                    for share, result in zip(shares, results))))
                while sum(map(sum, results)) < count // 3:
                    await asyncio.sleep(0.002)
                for pid in worker_pids(relay).values():
                    tally.rss(pid)
                os.kill(killed, signal.SIGKILL)
                tally.extra["acked_before_kill"] = sum(map(sum, results)) * per_chunk
                await sending
                for share, result in zip(shares, results):
                    for index, ok in zip(share, result):
                        acked[index] = ok

            run(scenario())
            tally.add_sent(payloads, acked)
            assert all(acked), "every chunk is acked by one worker or the other"
            downstream.wait_for(lambda: tally.acked <= set(receiver_seqs(downstream.receiver)), timeout=STALLED)
            wait_for(lambda: "worker 1 restarted" in relay.stderr, relay, limit=60)
            assert relay.stop() == 0
        finally:
            relay.kill()
        tally.arrivals(receiver_seqs(downstream.receiver))
    assert f"worker 1 (pid {killed}) ended (killed by SIGKILL)" in relay.stderr
    summary = supervisor_summary(relay)
    tally.extra["worker_restarts"] = summary["worker_restarts"]
    assert summary["worker_restarts"] == 1
    assert tally.lost == 0
    # At-least-once: only chunks in flight at the kill can arrive twice.
    assert tally.duplicated <= tally.sent - tally.extra["acked_before_kill"]
