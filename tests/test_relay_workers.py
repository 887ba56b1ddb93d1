"""`atnorm serve --workers N`: N relay processes under a supervisor that deals them the connections it accepts."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import errno
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import msgpack
import pytest
from fluent.sender import FluentSender
from test_forward_server import make_certificate

from atnorm.forward.codec import Entry, EventTime, pack_entries
from atnorm.relay.service import Relay
from atnorm.relay.spool import Spool
from atnorm.relay.workers import RelayWorkers, left_behind, worker_settings
from forward_receiver import ForwardReceiver
from relay_process import RelayProcess
from support import forward_sender, load_event, relay_settings, run

# The workers answer UDP heartbeats on one port each.
pytestmark = pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")

WORKER_LINE = re.compile(r"worker (\d+) \(pid (\d+)\)")


def worker_pids(relay: RelayProcess) -> Dict[int, int]:
    """Worker index → pid, from the supervisor's start-up lines (all of them read: the
    relay counts as started at the first one)."""
    wait_for(lambda: any("workers serving" in line for line in relay.lines), relay)
    return {int(index): int(pid) for line in relay.lines for index, pid in WORKER_LINE.findall(line)}


def supervisor_summary(relay: RelayProcess) -> Dict[str, int]:
    """The counts of the supervisor's `stopped:` line, which follows the workers' own."""
    wait_for(lambda: any("stopped:" in line and "worker_restarts=" in line for line in relay.lines), relay)
    return relay.summary()


def records_in(directory: Path) -> List[dict]:
    """The records of every route's file in a files-mode data directory."""
    records = []
    for route in ("accepted", "rejected", "passed"):
        path = directory / f"{route}.jsonl"
        if path.exists():
            records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def wait_for(condition: Callable[[], bool], relay: RelayProcess, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        assert time.monotonic() < deadline, relay.stderr
        time.sleep(0.02)


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atnorm", "serve", *args], capture_output=True, text=True,
                          timeout=120)


def test_each_worker_has_its_own_data_directory_spool_and_metrics_port():
    settings = relay_settings("--data-dir", "/var/lib/atnorm", "--workers", "3", "--metrics-listen", "0.0.0.0:9880",
                              "--drift-state", "/var/lib/atnorm/drift.json")
    first = worker_settings(settings, 0, ("127.0.0.1:24224",))
    assert (first.data_dir, first.spool_path, first.metrics_listen, first.drift_state) == (
        "/var/lib/atnorm", "/var/lib/atnorm/spool.db", "0.0.0.0:9880", "/var/lib/atnorm/drift.json")
    third = worker_settings(settings, 2, ("127.0.0.1:24224",))
    assert (third.data_dir, third.spool_path, third.metrics_listen, third.drift_state) == (
        "/var/lib/atnorm/worker-2", "/var/lib/atnorm/worker-2/spool.db", "0.0.0.0:9882",
        "/var/lib/atnorm/drift.worker-2.json")
    assert third.workers == 1 and third.listen == ("127.0.0.1:24224",)


def test_a_spool_path_set_by_hand_gets_one_file_per_worker():
    settings = relay_settings("--data-dir", "/data", "--spool-path", "/fast/atnorm.db", "--workers", "2",
                              "--metrics-listen", "[::1]:0")
    second = worker_settings(settings, 1, ("[::1]:24224",))
    assert second.spool_path == "/fast/atnorm.worker-1.db"
    assert second.metrics_listen == "[::1]:0"  # port 0: each worker picks its own


def test_records_left_in_the_spool_of_a_worker_no_longer_started_stop_start_up(tmp_path):
    settings = relay_settings("--data-dir", str(tmp_path), "--workers", "2", "--forward", "127.0.0.1:1")
    assert left_behind(settings) == []
    orphan = worker_settings(dataclasses.replace(settings, workers=3), 2, settings.listen).spool_path
    spool = Spool(str(orphan), max_bytes=1 << 20)
    spool.append("audit", pack_entries([Entry(EventTime(1, 0), {"a": 1})]), 1)
    spool.close()
    [problem] = left_behind(settings)
    assert problem.key == "workers" and "worker 2" in str(problem) and "1 records" in str(problem)
    result = serve("--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                   "--forward", "127.0.0.1:1")
    assert result.returncode == 2
    assert "worker-2/spool.db holds 1 records" in result.stderr and "Traceback" not in result.stderr
    checked = serve("--dry-run", "--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                    "--forward", "127.0.0.1:1")
    assert checked.returncode == 2 and "worker-2/spool.db holds 1 records" in checked.stderr


def test_workers_refuse_a_port_another_process_listens_on(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve("--workers", "2", "--listen", f"127.0.0.1:{port}", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "key 'listen'" in result.stderr
    assert "address already in use" in result.stderr.lower() and "Traceback" not in result.stderr


def test_workers_serve_a_unix_socket_and_its_file_goes_with_them(tmp_path):
    path = tmp_path / "atnorm.sock"
    event = load_event("vsi-provision.json")
    with RelayProcess("--workers", "2", "--listen", f"unix://{path}", "--data-dir", str(tmp_path)) as relay:
        senders = [FluentSender("audit", host=f"unix://{path}") for _ in range(2)]
        for n, sender in enumerate(senders):
            assert sender.emit("at", dict(event, requestData={"n": n}))
        wait_for(lambda: len(records_in(tmp_path)) + len(records_in(tmp_path / "worker-1")) == 2, relay)
        for sender in senders:
            sender.close()
        assert relay.stop() == 0
    assert len(records_in(tmp_path)) == 1 and len(records_in(tmp_path / "worker-1")) == 1
    assert not path.exists()


def test_dealt_connections_keep_tls_and_the_shared_key_handshake(tmp_path):
    cert, key = make_certificate(tmp_path)
    payload = pack_entries([Entry(EventTime(1_750_000_000, 0), {"n": n}) for n in range(3)])

    async def send_on_two_connections(port: int) -> List[bool]:
        senders = [forward_sender([("127.0.0.1", port)], tls=True, tls_ca_file=cert, shared_key="k",
                                  tls_server_hostname="localhost", ack_timeout=10.0, retry_deadline=30.0)
                   for _ in range(2)]
        try:
            return [bool(await sender.send("audit", payload, 3)) for sender in senders]
        finally:
            for sender in senders:
                await sender.close()

    with RelayProcess("--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                      "--tls-cert", cert, "--tls-key", key, "--shared-key", "k") as relay:
        assert asyncio.run(send_on_two_connections(relay.port)) == [True, True]
        assert relay.stop() == 0
    # Each worker did its own TLS and handshake on the connection it was dealt.
    assert len(records_in(tmp_path)) == len(records_in(tmp_path / "worker-1")) == 3


def test_a_worker_that_cannot_start_stops_start_up_with_its_reason(tmp_path):
    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("services: [\n")
    result = serve("--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                   "--tuning", str(tuning))
    assert result.returncode == 2
    assert f"{tuning}:" in result.stderr and "Traceback" not in result.stderr


def test_connections_are_dealt_evenly_and_every_record_is_written_once(tmp_path):
    event = load_event("vsi-provision.json")
    with RelayProcess("--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)) as relay:
        assert sorted(worker_pids(relay)) == [0, 1]
        # Long-lived connections, as agents keep: each new one goes to the worker with the
        # fewest open (SO_REUSEPORT's hash would split 8 of them 4/4 a quarter of the time).
        senders = [FluentSender("audit", host="127.0.0.1", port=relay.port) for _ in range(8)]
        sent = 0
        for _ in range(3):
            for sender in senders:
                assert sender.emit("at", dict(event, requestData={"n": sent}))
                sent += 1
        wait_for(lambda: len(records_in(tmp_path)) + len(records_in(tmp_path / "worker-1")) == sent, relay)
        assert len(records_in(tmp_path)) == len(records_in(tmp_path / "worker-1")) == sent // 2
        for sender in senders:
            sender.close()
        relay.process.send_signal(signal.SIGHUP)
        wait_for(lambda: relay.stderr.count("SIGHUP: reopening the record files") == 2, relay)
        assert relay.stop() == 0
    first, second = records_in(tmp_path), records_in(tmp_path / "worker-1")
    assert first and second, "both workers took connections"
    numbers = sorted(record["requestData"]["n"] for record in first + second)
    assert numbers == list(range(sent))
    # The supervisor's last line sums the workers' own.
    worker_lines = [line for line in relay.lines if "serve worker" in line and "stopped:" in line]
    assert len(worker_lines) == 2
    summary = supervisor_summary(relay)
    assert summary["received"] == sent
    assert summary["workers"] == 2 and summary["worker_restarts"] == 0


def test_a_killed_worker_is_started_again_on_the_same_port(tmp_path):
    with RelayProcess("--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)) as relay:
        killed = worker_pids(relay)[1]
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: "worker 1 restarted" in relay.stderr, relay, limit=60)
        assert "worker 1 (pid %d) ended (killed by SIGKILL)" % killed in relay.stderr
        # Both workers serve again: every one of many new connections is answered.
        for n in range(16):
            sender = FluentSender("audit", host="127.0.0.1", port=relay.port)
            assert sender.emit("at", {"n": n})
            sender.close()
        assert relay.stop() == 0
    assert supervisor_summary(relay)["worker_restarts"] == 1


def test_workers_stop_when_their_supervisor_is_killed(tmp_path):
    relay = RelayProcess("--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)).start()
    try:
        pids = list(worker_pids(relay).values())
        relay.kill()
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in pids):
            assert time.monotonic() < deadline, "workers outlived their supervisor"
            time.sleep(0.05)
    finally:
        relay.kill()
        for pid in worker_pids(relay).values():
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    assert relay.stderr.count("is gone; stopping") == 2


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not reaped by its dead parent's heir, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_workers_stats_record_says_which_worker_sent_it(tmp_path):
    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                         "--data-dir", str(tmp_path), "--stats-interval", "0.05",
                                         "--stats-tag", "relay.stats"), worker=1)
            await relay.start()
            try:
                await receiver.wait_for(lambda: any(tag == "relay.stats" for tag, _, _ in receiver.events))
            finally:
                await relay.stop()
            assert all(record["worker"] == 1 for tag, _, record in receiver.events if tag == "relay.stats")
    run(scenario())


def test_a_worker_that_is_stopping_is_dealt_no_new_connections(tmp_path):
    """SIGTERM to one worker: while it finishes its chunks (here it waits on a downstream
    that never acks, up to shutdown_timeout), the connections that come meanwhile go to the
    other worker, not to one that would close them at once."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # accepts (in the backlog), never reads, never acks
    with RelayProcess("--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                      "--forward", f"127.0.0.1:{silent.getsockname()[1]}", "--shutdown-timeout", "5",
                      "--log-level", "debug") as relay:
        pids = worker_pids(relay)
        busy = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(2)]  # one per worker
        for n, sock in enumerate(busy):
            sock.sendall(msgpack.packb(["audit", [[1_750_000_000, {"n": n}]], {"chunk": f"c{n}"}]))
        wait_for(lambda: sum(" dealt to worker " in line for line in relay.lines) == 2, relay)
        os.kill(pids[1], signal.SIGTERM)
        wait_for(lambda: any("serve worker 1: stopping" in line for line in relay.lines), relay)
        time.sleep(0.2)
        newcomers = [socket.create_connection(("127.0.0.1", relay.port)) for _ in range(6)]
        wait_for(lambda: sum(" dealt to worker " in line for line in relay.lines) == 8, relay)
        dealt = [line for line in relay.lines if " dealt to worker " in line][2:]
        assert all(" dealt to worker 0 " in line for line in dealt), dealt
        for sock in newcomers:  # open, not closed by a stopping worker
            sock.settimeout(0.2)
            with pytest.raises(socket.timeout):
                sock.recv(1)
        for sock in busy + newcomers:
            sock.close()
        relay.kill()
    silent.close()


def test_a_worker_that_cannot_be_started_again_is_retried_with_a_growing_pause(tmp_path, monkeypatch, caplog):
    """Restarting a worker can fail before it runs (no file descriptors, no memory to fork):
    the supervisor logs it and tries again later rather than leaving the index empty."""
    settings = relay_settings("--workers", "2", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path))
    workers = RelayWorkers(settings, argparse.Namespace(), {})
    attempts: List[float] = []

    def spawn(index: int, pause: float) -> str:
        attempts.append(pause)
        if len(attempts) < 3:
            raise OSError(errno.EMFILE, "Too many open files")
        return f"worker {index}"

    monkeypatch.setattr(workers, "_spawn", spawn)

    async def scenario() -> Optional[str]:
        workers._stopping = asyncio.Event()
        return await workers._respawn(1, 0.01)

    with caplog.at_level(logging.ERROR):
        assert asyncio.run(scenario()) == "worker 1"
    assert attempts == [0.02, 0.04, 0.08]
    assert [r.getMessage() for r in caplog.records] == [
        "worker 1 cannot be started: Too many open files; trying again in 0 s"] * 2

    async def stopped() -> Optional[str]:
        workers._stopping = asyncio.Event()
        workers._stopping.set()
        return await workers._respawn(1, 0.01)

    assert asyncio.run(stopped()) is None
