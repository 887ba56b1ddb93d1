"""Throughput of `atnorm exec-filter` as Fluentd runs it: a child process, stdin → stdout.

`measure_exec_filter` starts the real command once per wire format (JSON lines and
msgpack, both ways), warms it up, then keeps its stdin full for a time budget while the
parent counts the records that come back. The filter's own counts (from the summary line
the child writes at exit) are returned alongside, so a benchmark can tell how the traffic
split into accepted, rejected and passed.

`measure_echo_child` runs the same harness on the same records with `cat` as the child:
one that writes back every byte it reads, the least any exec_filter child can cost. It is
the baseline a Fluentd user compares with; `bench_figures` reports atnorm / echo per format.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any, Dict, List, Optional, Sequence, Tuple

import msgpack

FORMATS = ("json", "msgpack")
# Records written per write(2): about what one Fluentd buffer chunk flush hands over.
BLOCK_BYTES = 256 << 10
TAG = "bench.at"

_SUMMARY = re.compile(r"received=(\d+) accepted=(\d+) rejected=(\d+) passed=(\d+)")


def measure_exec_filter(records: List[Dict[str, Any]], seconds_budget: float = 4.0,
                        formats: Sequence[str] = FORMATS) -> Dict[str, Dict[str, Any]]:
    """Records/s of the `atnorm exec-filter` subprocess, per wire format.

    `seconds_budget` is shared by the formats. Returns, per format:
    `records` (counted on stdout after the warm-up), `seconds`, `records_per_s`,
    `warmup_records`, and `outcomes` (accepted/rejected/passed over all records,
    warm-up included, as the child counted them).
    """
    if not records:
        raise ValueError("measure_exec_filter needs at least one record")
    share = seconds_budget / len(formats)
    return {fmt: _measure_one(records, fmt, share, None) for fmt in formats}


def measure_echo_child(records: List[Dict[str, Any]], seconds_budget: float = 4.0,
                       formats: Sequence[str] = FORMATS) -> Dict[str, Dict[str, Any]]:
    """Records/s of an echo child (`cat`) in the same harness, per wire format: the same
    blocks in, the same counting out. Returns what `measure_exec_filter` does, without
    `outcomes` (an echo child decides nothing)."""
    if not records:
        raise ValueError("measure_echo_child needs at least one record")
    cat = shutil.which("cat")
    if cat is None:
        raise RuntimeError("no `cat` on PATH for the echo child")
    share = seconds_budget / len(formats)
    return {fmt: _measure_one(records, fmt, share, [cat]) for fmt in formats}


def _encode_blocks(records: List[Dict[str, Any]], fmt: str) -> List[Tuple[bytes, int]]:
    """The tagged records as (bytes, record count) blocks of about BLOCK_BYTES each."""
    encode = ((lambda record: json.dumps(record).encode("utf-8") + b"\n") if fmt == "json"
              else msgpack.packb)
    encoded = [encode({**record, "tag": TAG}) for record in records]
    blocks: List[Tuple[bytes, int]] = []
    start, size = 0, 0
    for index, data in enumerate(encoded):
        size += len(data)
        if size >= BLOCK_BYTES:
            blocks.append((b"".join(encoded[start:index + 1]), index + 1 - start))
            start, size = index + 1, 0
    if start < len(encoded):
        tail = b"".join(encoded[start:])
        repeats = max(1, BLOCK_BYTES // len(tail)) if not blocks else 1
        blocks.append((tail * repeats, (len(encoded) - start) * repeats))
    return blocks


class _OutputCounter:
    """Counts whole records in the child's stdout without building them."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.count = 0
        self._unpacker = msgpack.Unpacker() if fmt == "msgpack" else None
        self._last = b""

    def feed(self, data: bytes) -> None:
        if self._unpacker is None:
            # Each record is one JSON object line; whitespace lines are exec-filter's
            # padding to Fluentd's read blocks.
            self.count += data.count(b"}\n") + (self._last == b"}" and data[:1] == b"\n")
            self._last = data[-1:]
            return
        self._unpacker.feed(data)
        while True:
            try:
                self._unpacker.skip()
            except msgpack.OutOfData:
                return
            self.count += 1


def _measure_one(records: List[Dict[str, Any]], fmt: str, seconds: float,
                 command: Optional[List[str]]) -> Dict[str, Any]:
    """One child, one format: `command`, or `atnorm exec-filter` when None."""
    blocks = _encode_blocks(records, fmt)
    warmup_block, per_block = blocks[0]
    with tempfile.TemporaryDirectory(prefix="atnorm-bench-") as workdir:
        log_path = os.path.join(workdir, "exec-filter.log")
        stderr_path = os.path.join(workdir, "stderr")
        is_atnorm = command is None
        name = "atnorm exec-filter" if command is None else os.path.basename(command[0])
        if command is None:
            command = [sys.executable, "-m", "atnorm", "exec-filter", "--in-format", fmt,
                       "--out-format", fmt, "--tag-key", "tag", "--quiet", "--log-file", log_path]
        with open(stderr_path, "wb") as stderr:
            child = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=stderr)
        assert child.stdout is not None and child.stdin is not None
        stdin = child.stdin
        out_fd = child.stdout.fileno()
        counter = _OutputCounter(fmt)
        finished = False
        try:
            # Warm-up: start-up (schema loading) is not throughput. Written from a thread,
            # as all input is: the child blocks on a full stdout until it is read.
            warm = threading.Thread(target=_write_until, args=(stdin, [blocks[0]], None),
                                    daemon=True)
            warm.start()
            while counter.count < per_block:
                data = os.read(out_fd, 1 << 20)
                if not data:
                    break
                counter.feed(data)
            warm.join()
            warmup = counter.count
            started = time.perf_counter()
            deadline = started + seconds
            writer = threading.Thread(target=_write_until, args=(stdin, blocks, deadline),
                                      daemon=True)
            writer.start()
            while True:
                data = os.read(out_fd, 1 << 20)
                if not data:
                    break
                counter.feed(data)
            elapsed = time.perf_counter() - started
            writer.join()
            finished = True
        finally:
            # Its stdout at EOF, the child is exiting: a fast one (cat) may not have yet.
            # Killed at once only when the measurement broke off.
            try:
                child.wait(30 if finished else 0)
            except subprocess.TimeoutExpired:
                child.kill()
            status = child.wait()
            child.stdout.close()
            if not stdin.closed:
                stdin.close()
        with open(stderr_path, "rb") as handle:
            stderr_text = handle.read().decode("utf-8", "replace")
        log_text = ""
        if os.path.exists(log_path):
            with open(log_path, encoding="utf-8") as handle:
                log_text = handle.read()
    if status != 0 or stderr_text:
        raise RuntimeError(f"{name} ({fmt}) exited {status}: {stderr_text.strip()}")
    if counter.count <= warmup:
        raise RuntimeError(f"{name} ({fmt}) returned no records after the warm-up")
    measured = counter.count - warmup
    result: Dict[str, Any] = {
        "records": measured,
        "seconds": round(elapsed, 3),
        "records_per_s": round(measured / elapsed) if elapsed > 0 else 0,
        "warmup_records": warmup,
    }
    if is_atnorm:
        match = _SUMMARY.search(log_text)
        result["outcomes"] = ({"accepted": int(match.group(2)), "rejected": int(match.group(3)),
                               "passed": int(match.group(4))} if match else {})
    return result


def bench_figures(records: int, invalid_ratio: float, rounds: int = 2,
                  seconds_budget: float = 16.0) -> List[Dict[str, Any]]:
    """The exec-filter figure for `atnorm bench`: generated events, about `invalid_ratio`
    of them broken, through the child in JSON and in msgpack, and through an echo child
    (`cat`) in the same harness; `<format>_ratio` is atnorm / echo.

    Each format runs atnorm then the echo child back to back, so both see about the same
    machine, `rounds` times; the best run of each counts. `seconds_budget` is shared by all
    the runs.
    """
    from ..core.pipeline import EventFilter
    from .eventgen import EventGenerator

    generator = EventGenerator(EventFilter.from_schemas().rules, seed=1)
    events = generator.mix(records, invalid_ratio)
    share = seconds_budget / (2 * len(FORMATS) * rounds)
    figure: Dict[str, Any] = {
        "figure": "exec-filter (Fluentd out_exec_filter child, stdin -> stdout)",
        "records": 0,
        "invalid_ratio": invalid_ratio,
    }
    for fmt in FORMATS:
        atnorm_rate = echo_rate = 0.0
        for _ in range(rounds):
            atnorm = measure_exec_filter(events, share, (fmt,))[fmt]
            echo = measure_echo_child(events, share, (fmt,))[fmt]
            figure["records"] += atnorm["records"]
            atnorm_rate = max(atnorm_rate, atnorm["records_per_s"])
            echo_rate = max(echo_rate, echo["records_per_s"])
        figure[f"{fmt}_records_per_s"] = atnorm_rate
        figure[f"{fmt}_echo_records_per_s"] = echo_rate
        figure[f"{fmt}_ratio"] = round(atnorm_rate / echo_rate, 2) if echo_rate else None
    return [figure]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_until(stdin: IO[bytes], blocks: List[Tuple[bytes, int]],
                 deadline: Optional[float]) -> None:
    """Write the blocks to the child's stdin: once (`deadline` None), or over and over
    until `deadline` and then close it (EOF ends the child)."""
    try:
        while True:
            for block, _ in blocks:
                _write_all(stdin.fileno(), block)
                if deadline is not None and time.perf_counter() >= deadline:
                    break
            if deadline is None or time.perf_counter() >= deadline:
                break
    except (BrokenPipeError, ValueError):
        return  # the child is gone (or stdin closed); its exit status tells why
    if deadline is not None:
        stdin.close()
