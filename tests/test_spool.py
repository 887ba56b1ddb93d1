"""The durable spool: bounded, in order, atomic, and intact after the process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import msgpack
import pytest

from atnorm.monitoring.relaystats import RelayStats
from atnorm.relay.spool import Spool, SpoolError, SpoolFull


def packed(*records: dict) -> bytes:
    """Packed PackedForward entries for these records (integer times, like Fluentd)."""
    packer = msgpack.Packer(autoreset=False)
    for index, record in enumerate(records):
        packer.pack([1714557600 + index, record])
    return packer.bytes()


def _unpack(payload: bytes):
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload)
    return list(unpacker)


def test_batches_come_back_oldest_first_with_tag_payload_and_count(tmp_path):
    with Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20) as spool:
        first = spool.append("at.accepted", packed({"action": "iam.login"}), 1)
        second = spool.append("at.rejected", packed({"a": 1}, {"a": 2}), 2)
        batches = spool.peek(10)
        assert [b.seq for b in batches] == [first, second]
        assert first < second
        assert batches[1].tag == "at.rejected"
        assert batches[1].count == 2
        assert _unpack(batches[1].payload) == [[1714557600, {"a": 1}], [1714557601, {"a": 2}]]
        assert spool.depth_records == 3
        assert spool.depth_batches == 2


def test_peek_respects_limit_byte_budget_and_after(tmp_path):
    with Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20) as spool:
        seqs = [spool.append("t", packed({"n": n, "pad": "x" * 100}), 1) for n in range(5)]
        assert [b.seq for b in spool.peek(2)] == seqs[:2]
        one_batch = len(spool.peek(1)[0].payload)
        assert [b.seq for b in spool.peek(10, max_bytes=one_batch + 1)] == seqs[:2]
        assert [b.seq for b in spool.peek(10, after=seqs[2])] == seqs[3:]


def test_remove_deletes_only_the_given_batches_and_updates_depth(tmp_path):
    stats = RelayStats()
    with Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20, stats=stats) as spool:
        a = spool.append("t", packed({"n": 1}), 1)
        b = spool.append("t", packed({"n": 2}, {"n": 3}), 2)
        c = spool.append("t", packed({"n": 4}), 1)
        assert stats.spool_depth_records == 4
        spool.remove([a, c, 999999])
        assert [x.seq for x in spool.peek(10)] == [b]
        assert spool.depth_records == 2
        assert stats.spool_depth_records == 2
        assert stats.spool_depth_bytes == len(packed({"n": 2}, {"n": 3}))
        spool.remove([b])
        assert spool.peek(10) == []
        assert (spool.depth_records, spool.depth_bytes, spool.oldest_age_seconds) == (0, 0, 0.0)


def test_append_raises_spool_full_at_the_byte_bound_and_stores_nothing(tmp_path):
    payload = packed({"pad": "y" * 200})
    with Spool(str(tmp_path / "spool.db"), max_bytes=len(payload) * 3) as spool:
        for _ in range(3):
            spool.append("t", payload, 1)
        assert spool.is_full
        with pytest.raises(SpoolFull):
            spool.append("t", payload, 1)
        assert spool.depth_batches == 3
        spool.remove([spool.peek(1)[0].seq])
        assert not spool.is_full
        spool.append("t", payload, 1)
        assert spool.depth_batches == 3


def test_append_raises_spool_full_at_the_record_bound(tmp_path):
    with Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20, max_records=5) as spool:
        spool.append("t", packed(*[{"n": n} for n in range(4)]), 4)
        with pytest.raises(SpoolFull):
            spool.append("t", packed({"n": 4}, {"n": 5}), 2)
        spool.append("t", packed({"n": 4}), 1)
        assert spool.is_full
        assert spool.depth_records == 5


def test_contents_depth_and_order_survive_reopening(tmp_path):
    path = str(tmp_path / "spool.db")
    with Spool(path, max_bytes=1 << 20) as spool:
        seqs = [spool.append("t", packed({"n": n}), 1) for n in range(4)]
        spool.remove(seqs[:1])
    with Spool(path, max_bytes=1 << 20) as spool:
        assert [b.seq for b in spool.peek(10)] == seqs[1:]
        assert spool.depth_records == 3
        assert spool.oldest_age_seconds > 0.0


def test_sequence_numbers_are_never_reused_after_draining(tmp_path):
    path = str(tmp_path / "spool.db")
    with Spool(path, max_bytes=1 << 20) as spool:
        last = spool.append("t", packed({"n": 1}), 1)
        spool.remove([last])
    with Spool(path, max_bytes=1 << 20) as spool:
        assert spool.append("t", packed({"n": 2}), 1) > last


def test_second_open_of_the_same_spool_is_refused(tmp_path):
    path = str(tmp_path / "spool.db")
    with Spool(path, max_bytes=1 << 20), pytest.raises(SpoolError, match="in use"):
        Spool(path, max_bytes=1 << 20)
    Spool(path, max_bytes=1 << 20).close()  # free again once closed


def test_a_file_that_is_not_a_spool_is_reported(tmp_path):
    path = tmp_path / "spool.db"
    path.write_bytes(b"these are not the bytes of an SQLite database" * 100)
    with pytest.raises(SpoolError, match="cannot open spool"):
        Spool(str(path), max_bytes=1 << 20)


def test_full_sync_mode_stores_and_reads_back(tmp_path):
    with Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20, sync="full") as spool:
        seq = spool.append("t", packed({"n": 1}), 1)
        assert [b.seq for b in spool.peek(1)] == [seq]


def test_unknown_sync_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sync"):
        Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20, sync="sometimes")


def test_closed_spool_refuses_use(tmp_path):
    spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20)
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.append("t", packed({"n": 1}), 1)


# A child appends numbered batches and reports each sequence number only after append
# returned; the parent kills it with SIGKILL mid-stream.
_APPENDER = textwrap.dedent("""
    import sys
    import msgpack
    from atnorm.relay.spool import Spool

    spool = Spool(sys.argv[1], max_bytes=1 << 30)
    n = 0
    while True:
        payload = msgpack.packb([1714557600, {"n": n, "pad": "z" * (n % 300)}])
        seq = spool.append("at.accepted", payload, 1)
        sys.stdout.write(f"{seq} {n}\\n")
        sys.stdout.flush()
        n += 1
""")


def test_every_append_that_returned_survives_kill_9_in_order(tmp_path):
    path = str(tmp_path / "spool.db")
    child = subprocess.Popen([sys.executable, "-c", _APPENDER, path],
                             stdout=subprocess.PIPE, text=True)
    reported = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            reported.append(tuple(int(x) for x in line.split()))
            if len(reported) >= 2000:
                break
        os.kill(child.pid, signal.SIGKILL)
        # Lines already written before the kill count too: each was printed after its append.
        for line in child.stdout:
            if line.endswith("\n"):
                reported.append(tuple(int(x) for x in line.split()))
    finally:
        child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(reported) >= 2000

    with Spool(path, max_bytes=1 << 30) as spool:
        stored = spool.peek(len(reported) + 1000)
    by_seq = {b.seq: b for b in stored}
    for seq, n in reported:
        batch = by_seq[seq]
        assert _unpack(batch.payload) == [[1714557600, {"n": n, "pad": "z" * (n % 300)}]]
    # Stored order is append order: n increases with seq, with no gaps among those reported.
    numbers = [_unpack(b.payload)[0][1]["n"] for b in stored]
    assert numbers == list(range(len(numbers)))
    assert len(numbers) >= len(reported)
