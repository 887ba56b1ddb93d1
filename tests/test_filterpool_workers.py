"""Filter workers that die (kill -9): their chunks are redone, and shutdown still completes.

Real worker processes, real signals: a relay subprocess with `--filter-workers 2`, and a
FilterPool in this process whose workers are killed with SIGKILL as they appear.
"""

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import threading
import time

import pytest
from fluent.sender import FluentSender

from atnorm.cli.serve import configure_parser
from atnorm.core.settings import resolve_filter_options
from atnorm.core.stats import FilterStats
from atnorm.forward.codec import Entry, pack_entries
from atnorm.relay.filterpool import FilterPool
from atnorm.relay.routing import RouteSettings
from forward_frames import Time, ack_bytes, fluentd_packed_forward, mp
from relay_process import RelayProcess
from support import load_event

ROUTES = RouteSettings(accepted_tag="{tag}", rejected_tag="{tag}.rejected", time_source="event")


def wait_until(predicate, timeout=60.0, context=None):
    """Wait for `predicate`; on a timeout the failure shows what `context()` returns (a
    relay's stderr, say)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time" + (f"\n{context()}" if context else ""))
        time.sleep(0.02)


def read_lines(path):
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def worker_pids(parent):
    """The filter workers among `parent`'s children (not multiprocessing's resource tracker)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as handle:
                ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue
        if ppid == parent and b"spawn_main" in command:
            pids.append(int(name))
    return pids


def filter_options():
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return resolve_filter_options(parser.parse_args([]))


def test_relay_redoes_the_chunk_of_a_killed_worker_and_stops_on_sigterm(tmp_path):
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data), "--filter-workers", "2",
                      "--shutdown-timeout", "5") as relay:
        assert relay.process is not None
        sender = FluentSender("app", host="127.0.0.1", port=relay.port)
        assert sender.emit("audit", load_event("vsi-provision.json"))
        wait_until(lambda: len(read_lines(data / "accepted.jsonl")) == 1)
        workers = worker_pids(relay.process.pid)
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        wait_until(lambda: "a filter worker died" in relay.stderr or workers[0] not in worker_pids(relay.process.pid))
        for _ in range(3):
            assert sender.emit("audit", load_event("vsi-provision.json"))
        sender.close()
        wait_until(lambda: len(read_lines(data / "accepted.jsonl")) == 4, context=lambda: relay.stderr)
        try:
            status = relay.stop(timeout=60)
        except subprocess.TimeoutExpired:
            relay.kill()
            raise AssertionError("SIGTERM did not stop the relay after a worker was killed:\n" + relay.stderr) from None
        assert status == 0
        assert relay.summary()["received"] == 4
    assert len(read_lines(data / "accepted.jsonl")) == 4


class Reaper(threading.Thread):
    """Kills every filter worker of this process with SIGKILL as soon as it appears."""

    def __init__(self):
        super().__init__(daemon=True)
        self.killed = []
        self.stopping = threading.Event()

    def run(self):
        while not self.stopping.is_set():
            for pid in worker_pids(os.getpid()):
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.killed.append(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)


MIXED = pack_entries([Entry(1700000000, load_event("vsi-provision.json")), Entry(1700000000, {"msg": "hello"})])
HELLO = pack_entries([Entry(1700000000, {"msg": "hello"})])


def routes_of(batches):
    return sorted((b.route, b.count) for b in batches)


def on_a_pool(scenario, stats=None, grace=30.0):
    """`scenario(pool)` on a started pool of 2 workers, then close(grace) in a thread:
    (pool, what the scenario returned, the workers still there after the close). Fails if
    close() does not return; workers still there are killed, so this process is never
    left a child to wait for at its exit."""
    pool = FilterPool(2, filter_options(), ROUTES, stats if stats is not None else FilterStats())

    async def started():
        await pool.start()
        return await scenario(pool)

    try:
        result = asyncio.run(started())
    finally:
        closer = threading.Thread(target=pool.close, args=(grace,), daemon=True)
        closer.start()
        closer.join(120)
        deadline = time.monotonic() + 10  # killed workers may still be exiting
        while worker_pids(os.getpid()) and time.monotonic() < deadline:
            time.sleep(0.02)
        left = worker_pids(os.getpid())
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert not closer.is_alive(), "FilterPool.close did not return"
    return pool, result, left


def test_pool_redoes_a_chunk_once_then_decides_it_itself_and_always_closes():
    stats = FilterStats()

    async def scenario(pool):
        first = await pool.route("audit.at", MIXED)  # workers alive: decided there
        assert routes_of(first) == [("accepted", 1), ("passed", 1)]
        reaper = Reaper()
        reaper.start()
        try:
            wait_until(lambda: len(reaper.killed) >= 2)  # both workers gone before the chunk comes
            batches = await asyncio.wait_for(pool.route("audit.at", MIXED), 120)
        finally:
            reaper.stopping.set()
            reaper.join()
        assert reaper.killed
        return batches

    pool, batches, left = on_a_pool(scenario, stats)
    assert routes_of(batches) == [("accepted", 1), ("passed", 1)]
    assert pool.restarts >= 1 and pool.decided_here == 1
    assert (stats.outcomes["accepted"], stats.outcomes["passed"]) == (2, 2)  # each chunk counted once
    assert left == []


def _submit_as_if_before_the_break(executor):
    """Make `executor.submit` do what a submit does when it passed its broken-check just
    before a worker died and adds its work after the executor failed what it held
    (CPython sets the flag without the lock submit holds): a future nobody will finish."""
    real_submit = executor.submit

    def late_submit(fn, *args, **kwargs):
        flags = executor._broken, executor._shutdown_thread
        executor._broken, executor._shutdown_thread = False, False
        try:
            return real_submit(fn, *args, **kwargs)
        finally:
            executor._broken, executor._shutdown_thread = flags

    executor.submit = late_submit


def test_a_chunk_submitted_as_a_worker_dies_is_redone_not_waited_on_forever():
    stats = FilterStats()

    async def scenario(pool):
        executor = pool._executor
        os.kill(worker_pids(os.getpid())[0], signal.SIGKILL)
        wait_until(lambda: executor._broken and not executor._executor_manager_thread.is_alive())
        _submit_as_if_before_the_break(executor)
        return await asyncio.wait_for(pool.route("audit.at", MIXED), 60)

    pool, batches, left = on_a_pool(scenario, stats)
    assert routes_of(batches) == [("accepted", 1), ("passed", 1)]
    assert (pool.restarts, pool.decided_here) == (1, 0)  # redone by the new workers
    assert (stats.outcomes["accepted"], stats.outcomes["passed"]) == (1, 1)
    assert left == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_workers_left_behind_by_a_broken_executor_are_stopped(monkeypatch):
    """CPython's clean-up of a broken executor can itself fail in the same race (seen:
    RuntimeError, dictionary changed size during iteration), after flagging the executor
    broken and before stopping its other workers; one left blocked on the dead worker's
    queue lock stays for ever, and holds the relay's exit. The pool stops them itself."""
    from concurrent.futures import process

    def fails_midway(manager, cause):
        executor = manager.executor_reference()
        executor._broken = "A child process terminated abruptly"
        executor._shutdown_thread = True
        raise RuntimeError("dictionary changed size during iteration")

    monkeypatch.setattr(process._ExecutorManagerThread, "terminate_broken", fails_midway)

    async def scenario(pool):
        executor = pool._executor
        first, survivor = worker_pids(os.getpid())
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: executor._broken and not executor._executor_manager_thread.is_alive())
        assert survivor in worker_pids(os.getpid())  # nothing stopped it
        batches = await asyncio.wait_for(pool.route("audit.at", HELLO), 60)
        wait_until(lambda: survivor not in worker_pids(os.getpid()))
        return batches

    pool, batches, left = on_a_pool(scenario, grace=5)
    assert routes_of(batches) == [("passed", 1)] and pool.restarts == 1
    assert left == []


def _die_holding_the_pools_shared_locks():
    """In a worker: take every lock of the pool's shared values, then be killed holding them
    (as a worker killed while reading the reload generation was)."""
    from atnorm.relay import filterpool

    assert filterpool._worker is not None
    for shared in (filterpool._worker.generation, filterpool._started):
        get_lock = getattr(shared, "get_lock", None)
        if get_lock is not None:
            get_lock().acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_holding_a_shared_lock_stalls_neither_new_workers_nor_reloads():
    from concurrent.futures.process import BrokenProcessPool

    async def scenario(pool):
        with pytest.raises(BrokenProcessPool):
            await asyncio.get_running_loop().run_in_executor(pool._executor, _die_holding_the_pools_shared_locks)
        reload = threading.Thread(target=pool.request_reload, daemon=True)  # as SIGHUP does, in the relay
        reload.start()
        reload.join(30)
        assert not reload.is_alive(), "a reload waited on a lock a dead worker held"
        return await asyncio.wait_for(pool.route("audit.at", HELLO), 60)

    pool, batches, left = on_a_pool(scenario, grace=5)
    assert routes_of(batches) == [("passed", 1)]
    assert (pool.restarts, pool.decided_here) == (1, 0)  # the new workers started and decided it
    assert left == []


def test_close_kills_workers_still_running_after_the_grace(caplog):
    """A worker busy past the grace is killed; so is an idle one, which the executor only
    lets go once nothing is pending. An idle pool closes at once, and without a warning."""
    for busy_for in (120, None):
        pool = FilterPool(2, filter_options(), ROUTES, FilterStats())
        asyncio.run(pool.start())
        if busy_for:
            busy = pool._executor.submit(time.sleep, busy_for)
            wait_until(busy.running)
        caplog.clear()
        started = time.monotonic()
        with caplog.at_level("WARNING", logger="atnorm.relay"):
            pool.close(grace=2 if busy_for else 30)  # an idle worker's exit can take seconds on a busy machine
        took = time.monotonic() - started
        warnings = [r.getMessage() for r in caplog.records if "did not stop" in r.getMessage()]
        if busy_for:
            assert 2 <= took < 60 and len(warnings) == 2, (took, warnings)
        else:
            assert took < 30 and warnings == [], (took, warnings)
        assert worker_pids(os.getpid()) == []


def test_pool_close_returns_after_a_worker_was_killed():
    async def scenario(pool):
        os.kill(worker_pids(os.getpid())[0], signal.SIGKILL)

    _, _, left = on_a_pool(scenario)
    assert left == []


def test_worker_packs_a_record_msgpack_cannot_hold_through_encodable():
    from atnorm.forward.codec import unpack_entries
    from atnorm.relay.filterpool import _packed

    entries = [Entry(1700000000, {"n": 2 ** 70, "ok": 1}), Entry(1700000001, {"fine": True})]
    decoded = unpack_entries(_packed(entries))[0]
    assert [e.record for e in decoded] == [{"n": str(2 ** 70), "ok": 1}, {"fine": True}]


def test_service_names_from_workers_share_the_relays_bound():
    from atnorm.core.pipeline import EventFilter
    from atnorm.core.stats import MAX_TRACKED_UNSCHEMED_SERVICES, OTHER
    from atnorm.relay.filterpool import add_counts

    relay_stats = FilterStats()
    # Two workers, each within its own bound, together over the relay's.
    for first in (0, MAX_TRACKED_UNSCHEMED_SERVICES):
        worker = EventFilter.from_schemas(stats=FilterStats())
        for i in range(first, first + MAX_TRACKED_UNSCHEMED_SERVICES):
            event = load_event("vsi-provision.json")
            event["action"] = f"svc{i}.thing.create"
            worker.process(event)
        stats = worker.stats
        add_counts(relay_stats, (stats.outcomes, stats.by_service, stats.rejections, stats.warnings,
                                 stats.fixes, stats.unknown_actions, stats.unschemed))
    services = {service for _, service in relay_stats.by_service}
    assert len(services) == MAX_TRACKED_UNSCHEMED_SERVICES + 1
    assert relay_stats.by_service[("accepted", OTHER)] == MAX_TRACKED_UNSCHEMED_SERVICES
    assert relay_stats.received == 2 * MAX_TRACKED_UNSCHEMED_SERVICES


def test_a_worker_hands_back_batches_in_the_entry_form_the_downstream_takes():
    import multiprocessing

    from atnorm.forward.codec import EventTime, unpack_entries
    from atnorm.relay.filterpool import _Worker

    invalid = load_event("vsi-provision.json")
    del invalid["outcome"]
    payload = pack_entries([Entry(EventTime(1700000000, 1), load_event("vsi-provision.json"), {"trace": "a"}),
                            Entry(1700000001, invalid),
                            Entry(EventTime(1700000002, 2), {"msg": "hello"}, {"trace": "b"})])
    generation = multiprocessing.get_context("spawn").Value("i", 0)
    for form in ("plain", "metadata"):
        worker = _Worker(filter_options(), ROUTES, generation, form)
        routed, _ = worker.route("audit.at", payload)
        by_route = {b.route: (unpack_entries(b.payload)[0], b.count, b.plain) for b in routed}
        assert sorted(by_route) == ["accepted", "passed", "rejected"]
        if form == "metadata":  # as received; not plain where an entry has metadata
            assert {route: (len(e), [x.metadata for x in e], plain) for route, (e, _, plain) in by_route.items()} == {
                "accepted": (1, [{"trace": "a"}], False), "rejected": (1, [None], True),
                "passed": (1, [{"trace": "b"}], False)}
        else:  # plain: the relay sends these bytes as they are, without looking through them
            assert all(plain and count == len(entries) and all(x.metadata is None for x in entries)
                       for entries, count, plain in by_route.values())


def _odd_records():
    """Records of JSON's own types, and every kind that is not (each changed or refused
    somewhere between msgpack and a JSON line)."""
    import msgpack

    from atnorm.forward.codec import EventTime

    deep = current = {}
    for _ in range(150):
        current["d"] = current = {}
    return [
        load_event("vsi-provision.json"), {"plain": [1, 2.5, None, True, "naïve ✓"]}, {1: "int key", None: 2},
        {"tuple": (1, 2)}, {"bin": b"\x00\xff"}, {"utf8 bin": "é".encode()}, {"ext": msgpack.ExtType(5, b"x")},
        {"stamp": msgpack.Timestamp(1, 2)}, {"time": EventTime(1700000000, 5)}, {"nan": float("nan")},
        {"inf": float("-inf")}, {"lone": "\ud800"}, {"escaped": "a\udcffb"}, {"big": 2 ** 70},
        {"long digits": 10 ** 25}, {"digits as text": "1234567890123456789012"}, deep, {"set": {1}},
    ]


def test_lines_from_a_worker_are_the_lines_its_packed_batch_would_have_written(tmp_path):
    """For the files destination a worker writes JSON lines itself: byte for byte what the
    store wrote for the packed batch it used to send, records of every kind."""
    from atnorm.relay.filterpool import _lines_batch, _packed
    from atnorm.relay.localstore import LocalStore
    from atnorm.relay.routing import PackedBatch, RoutedBatch

    odd = _odd_records()
    batches = [[record] for record in odd] + [odd[:3], odd[:3] + [odd[4]], odd[:3] + [odd[-1]], odd]
    for name in ("packed", "lines"):
        store = LocalStore(str(tmp_path / name))
        for n, records in enumerate(batches):
            entries = [Entry(1700000000 + i, record) for i, record in enumerate(records)]
            routed = RoutedBatch(("accepted", "passed")[n % 2], "audit.at", entries)
            batch = (PackedBatch(routed.route, routed.tag, _packed(entries), len(entries)) if name == "packed"
                     else _lines_batch(routed))
            assert asyncio.run(store.store([batch]))
        asyncio.run(store.close())
    written = {path.name: path.read_bytes() for path in (tmp_path / "packed").iterdir()}
    assert sorted(written) == ["accepted.jsonl", "passed.jsonl", "rejected.jsonl"]
    assert {path.name: path.read_bytes() for path in (tmp_path / "lines").iterdir()} == written


def test_a_relay_with_workers_and_no_downstream_writes_the_lines_its_own_process_writes(tmp_path):
    from atnorm.core.pipeline import EventFilter
    from atnorm.forward.codec import EventTime
    from atnorm.relay.routing import LinesBatch
    from atnorm.relay.service import Relay
    from support import forward_sender, relay_settings, run

    invalid = load_event("vsi-provision.json")
    del invalid["outcome"]
    payload = pack_entries([Entry(EventTime(1700000000 + n, n), record) for n, record in enumerate(
        [load_event("vsi-provision.json"), invalid, {"msg": "hello", "n": [1, 2.5]}] * 3)])

    async def through(workers: int):
        data = tmp_path / str(workers)
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--data-dir", str(data),
                                     "--filter-workers", str(workers)),
                      EventFilter.from_schemas(stats=FilterStats()), filter_options=filter_options())
        await relay.start()
        kinds = []
        deliver = relay.destination.deliver

        async def watched(batches):
            kinds.extend(type(batch).__name__ for batch in batches)
            return await deliver(batches)

        relay.destination.deliver = watched
        try:
            sender = forward_sender([("127.0.0.1", relay.server.port)])
            assert await sender.send("audit.at", payload, 9)
            await sender.close()
        finally:
            await relay.stop()
        return {path.name: path.read_bytes() for path in data.iterdir() if path.suffix == ".jsonl"}, kinds

    own, own_kinds = run(through(1))
    workers, worker_kinds = run(through(2))
    assert sorted(own) == ["accepted.jsonl", "passed.jsonl", "rejected.jsonl"]
    assert workers == own
    assert set(own_kinds) == {"RoutedBatch"} and set(worker_kinds) == {LinesBatch.__name__}


GOOD_ENTRY = mp([Time(1750000000), load_event("vsi-provision.json")])
UNHOLDABLE_RECORD = b"\x82" + mp("action") + mp("x.y.z") + mp("target") + b"\x81" + mp({"id": 1}) + mp("v")
CHUNK_ID = "Y2h1bmstMQ=="
# The same two records as each mode puts them on the wire; Message mode carries one record a frame.
FRAMES = {
    "packed_forward": [fluentd_packed_forward("audit.at", GOOD_ENTRY + b"\x92" + Time(1750000001).encode() +
                                              UNHOLDABLE_RECORD, size=2, chunk_id=CHUNK_ID)],
    "forward": [b"\x93" + mp("audit.at") + b"\x92" + GOOD_ENTRY + b"\x92" + Time(1750000001).encode() +
                UNHOLDABLE_RECORD + mp({"chunk": CHUNK_ID})],
    "message": [b"\x94" + mp("audit.at") + Time(1750000000).encode() + mp(load_event("vsi-provision.json")) +
                mp({"chunk": CHUNK_ID}),
                b"\x94" + mp("audit.at") + Time(1750000001).encode() + UNHOLDABLE_RECORD + mp({"chunk": CHUNK_ID})],
}


@pytest.mark.parametrize("mode", sorted(FRAMES))
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_record_keyed_by_a_map_is_rejected_and_its_chunk_acked_in_the_relay_and_in_workers(
        tmp_path, workers, mode):
    """Valid msgpack Python cannot hold (a map keyed by a map): the scan cannot tell it, so a
    worker may meet it while decoding. It costs its own entry, as a rejection with a
    reason; the chunk is acked, the connection stays open, and no worker dies for it."""
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data), "--filter-workers", workers) as relay:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=30) as connection:
            for _ in range(2):  # and the resend is acked from the dedup window
                for frame in FRAMES[mode]:
                    connection.sendall(frame)
                    assert connection.recv(1024) == ack_bytes(CHUNK_ID)
            wait_until(lambda: len(read_lines(data / "rejected.jsonl")) == 1 and
                       len(read_lines(data / "accepted.jsonl")) == 1)
            connection.sendall(FRAMES[mode][0])  # a good frame after it: the stream reads on
            assert connection.recv(1024) == ack_bytes(CHUNK_ID)
        assert "filter worker died" not in relay.stderr and "closed connection" not in relay.stderr
    [dead_letter] = read_lines(data / "rejected.jsonl")
    assert dead_letter["original"][1] == {"action": "x.y.z", "target": [[{"id": 1}, "v"]]}
    [reason] = dead_letter["reasons"]
    assert (reason["rule"], reason["path"]) == ("entry.record", "/1/target")
    assert read_lines(data / "accepted.jsonl")[0]["action"] == load_event("vsi-provision.json")["action"]
