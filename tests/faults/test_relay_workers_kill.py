"""`atnorm serve --workers 2` under kill -9 of one worker mid-stream: the supervisor starts
it again on the same port and spool, senders whose connection it held reconnect (to either
worker) and resend what was not acked, and every acked record arrives downstream."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any, List, Tuple

from test_relay_workers import supervisor_summary, wait_for, worker_pids

from faults.harness import chunks, file_seqs, receiver_seqs, scale, send_until_acked
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


def test_a_hung_worker_is_dealt_no_more_connections_and_loses_nothing(tmp_path, tally):
    """SIGSTOP one of 2 workers (a hung process: alive, reading nothing). The connections it
    was dealt never report closed, so the dealer counts them as open and deals every new
    connection to the other worker: senders whose acks time out reconnect there and resend."""
    per_chunk, count = 50, scale(20, 200)
    payloads = chunks(0, per_chunk * count, per_chunk)
    port = free_port()
    relay = RelayProcess(*relay_args(port, tmp_path, "--workers", "2", "--log-level", "debug")).start()
    hung = worker_pids(relay)[1]
    os.kill(hung, signal.SIGSTOP)
    try:
        async def scenario() -> List[bool]:
            shares = [list(range(n, count, CONNECTIONS)) for n in range(CONNECTIONS)]
            results = await asyncio.gather(*(
                send_until_acked(port, [payloads[i] for i in share], limit=STALLED, ack_timeout=2.0,
                                 retry_max_wait=0.2)
                for share in shares))
            acked = [False] * count
            for share, (result, _) in zip(shares, results):
                for index, ok in zip(share, result):
                    acked[index] = ok
            return acked

        acked = run(scenario())
        tally.add_sent(payloads, acked)
        assert all(acked), "every chunk is acked, by the worker that is not hung"
        # Worker 0 holds every record; the hung one wrote none yet, and was dealt only the
        # connections opened before any had closed (one of every two).
        assert tally.acked <= set(file_seqs(tmp_path)) and not file_seqs(tmp_path / "worker-1")
        dealt = [line for line in relay.lines if " dealt to worker " in line]
        assert len([line for line in dealt if " dealt to worker 1 " in line]) == CONNECTIONS // 2
        assert len(dealt) > CONNECTIONS, "senders whose acks timed out connected again"
        os.kill(hung, signal.SIGCONT)
        assert relay.stop() == 0
    finally:
        if _alive(hung):
            os.kill(hung, signal.SIGCONT)
        relay.kill()
    # Woken, the hung worker reads what was sent to it before those senders gave up: at-least-once.
    tally.arrivals(file_seqs(tmp_path) + file_seqs(tmp_path / "worker-1"))
    assert tally.lost == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
