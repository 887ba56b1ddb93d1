"""Relay throughput: records/s end to end, sender → `atnorm serve` → receiver, acks on.

The relay runs as its own process (`python -m atnorm serve`) between an acknowledged
sender (ForwardSender, PackedForward chunks packed up front) and a receiver (ForwardServer
acking every chunk) on loopback. The receiver counts entries by scanning each payload, as
a pass-through relay does, rather than decoding it: the sender and receiver share the
machine's cores with the relay, and what they spend is taken from it. The same run
measures the relay:

- with `--filter off`: the transport alone; a chunk whose entries can all go on byte for
  byte is forwarded as the payload received, neither decoded nor packed again;
- filtering in its own process (the default, `--filter-workers 1`);
- with 2 filter worker processes, and with one per core when there are more than 2 cores:
  the relay hands each payload to a worker as received, the worker decodes and decides;
- as 2 relay processes on one port (`--workers 2`), and one per core when there are more
  than 2: each is dealt whole connections (4 of the 8 each), decodes, decides and hands on.

The sender spreads its chunks round robin over SENDER_CONNECTIONS connections.
`workers_2_speedup` and `processes_2_speedup` are each over the one-process relay: how the
relay grows with cores. A record counts once the receiver has it and the sender has the
relay's ack for it.
Next to records/s, the CPU seconds the relay's processes (workers included) spent per
million records, and the peak RSS of that process tree (the sum of each process's
VmHWM, and the largest one process's): on a machine that other work shares, CPU moves less
than the wall-clock figure (Linux only; elsewhere both are left out). The CPU seconds the
sender and the receiver (this process) spent per million records tell how much of the
machine's cores the harness itself takes from the relay.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Protocol, Tuple

from ..core.pipeline import EventFilter
from ..forward.codec import Chunk, Entry, EventTime, pack_entries
from ..forward.sender import ForwardSender, SenderSettings
from ..forward.server import ForwardServer, ServerSettings
from .eventgen import EventGenerator

CHUNK_RECORDS = 1000
# Sender connections, chunks spread round robin: with `--workers`, each connection is served
# by one relay process, so one connection would keep all but one idle.
SENDER_CONNECTIONS = 8
TAG = "audit.bench"
_LISTENING = re.compile(r"listening on (\S+):(\d+)")


Payloads = List[Tuple[bytes, int]]


def bench_payloads(records: int, invalid_ratio: float) -> Payloads:
    """The bench traffic, packed once up front: (PackedForward entries, count) per chunk."""
    rules = EventFilter.from_schemas().rules
    events = EventGenerator(rules, seed=7).mix(records, invalid_ratio)
    base = 1_750_000_000
    payloads = []
    for start in range(0, len(events), CHUNK_RECORDS):
        part = events[start:start + CHUNK_RECORDS]
        entries = [Entry(EventTime(base + start + n, 0), record) for n, record in enumerate(part)]
        payloads.append((pack_entries(entries), len(part)))
    return payloads


def _process_tree(root: int) -> Optional[Dict[int, Tuple[int, int]]]:
    """pid → (parent pid, user + system CPU ticks) of `root` and its live descendants, from /proc."""
    try:
        processes: Dict[int, Tuple[int, int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat", "rb") as handle:
                    fields = handle.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            processes[int(name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    except (OSError, ValueError):
        return None
    if root not in processes:
        return None
    tree = {root}
    changed = True
    while changed:
        changed = False
        for pid, (parent, _) in processes.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                changed = True
    return {pid: processes[pid] for pid in tree}


def _cpu_seconds(root: int) -> Optional[float]:
    """User + system CPU seconds of process `root` and its live descendants."""
    tree = _process_tree(root)
    if tree is None:
        return None
    try:
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, AttributeError):
        return None
    return sum(used for _, used in tree.values()) / ticks


def _peak_rss_mib(root: int) -> Tuple[Optional[float], Optional[float]]:
    """The peak RSS (VmHWM) of `root` and its live descendants, in MiB: their sum, and the
    largest of one process."""
    tree = _process_tree(root)
    if tree is None:
        return None, None
    peaks_kib = []
    for pid in tree:
        try:
            with open(f"/proc/{pid}/status", "rb") as handle:
                for line in handle:
                    if line.startswith(b"VmHWM:"):
                        peaks_kib.append(int(line.split()[1]))
                        break
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return sum(peaks_kib) / 1024, max(peaks_kib, default=0) / 1024


class Hop(Protocol):
    """What is measured between the sender and the receiver: a process listening for
    forward on `port`, whose process tree (rooted at `pid`) is charged the CPU and RSS."""

    port: int

    @property
    def pid(self) -> int: ...

    def stop(self) -> None: ...


# Starts a hop that forwards to the given receiver port, with a scratch directory of its own,
# and returns it once it accepts connections.
StartHop = Callable[[int, str], Hop]


class ChildProcessHop:
    """A hop that is a child process (`process`): its pid, and a stop that waits for it."""

    process: "subprocess.Popen[Any]"

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class RelayProcess(ChildProcessHop):
    """`atnorm serve` in a child process, forwarding to `downstream_port`."""

    def __init__(self, downstream_port: int, data_dir: str, extra: List[str]) -> None:
        command = [sys.executable, "-m", "atnorm", "serve", "--listen", "127.0.0.1:0",
                   "--forward", f"127.0.0.1:{downstream_port}", "--data-dir", data_dir,
                   "--log-level", "info"] + extra
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, text=True)
        self.port = self._wait_for_port()

    def _wait_for_port(self) -> int:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            match = _LISTENING.search(line)
            if match:
                return int(match.group(2))
        raise RuntimeError(f"the relay did not start (exit status {self.process.wait()})")


async def measure_hop(payloads: Payloads, start: StartHop) -> Dict[str, Any]:
    """Records/s through one hop started by `start`, from an acknowledged sender to a
    receiver acking every chunk, after a warm-up chunk has gone all the way through."""
    total = sum(count for _, count in payloads)
    warmup = payloads[0][1] * SENDER_CONNECTIONS
    received = 0
    expected, arrived = warmup, asyncio.Event()

    async def count(chunk: Chunk) -> bool:
        nonlocal received
        received += chunk.entry_count
        if received >= expected:
            arrived.set()
        return True

    # verbatim_chunks: entries are counted by a scan, not decoded (see the docstring).
    receiver = ForwardServer(count, ServerSettings(listen=[("127.0.0.1", 0)], udp_heartbeat=False,
                                                   verbatim_chunks=True))
    await receiver.start()
    try:
        with tempfile.TemporaryDirectory(prefix="atnorm-bench-") as workdir:
            hop = start(receiver.port, workdir)
            senders = [ForwardSender([("127.0.0.1", hop.port)], SenderSettings(
                flush_interval=0.005, batch_max_records=CHUNK_RECORDS, max_buffer_bytes=16 << 20))
                for _ in range(SENDER_CONNECTIONS)]
            try:
                # A warm-up chunk per connection: connections open and the hop's first-use
                # costs are paid. An agent may ack a chunk before handing it on, so the
                # receiver must have them too.
                # (One tag per connection: the same tag and content again would be a resend.)
                warmed = await asyncio.gather(*(sender.send(f"bench.warmup.{n}", payloads[0][0], payloads[0][1])
                                                for n, sender in enumerate(senders)))
                if not all(warmed):
                    raise RuntimeError("a warm-up chunk was not acked")
                await asyncio.wait_for(arrived.wait(), 120)
                received, expected = 0, total
                arrived.clear()
                cpu_start = _cpu_seconds(hop.pid)
                harness_start = time.process_time()
                start_time = time.perf_counter()
                results = await asyncio.gather(*(senders[n % SENDER_CONNECTIONS].send(TAG, p, count)
                                                 for n, (p, count) in enumerate(payloads)))
                await asyncio.wait_for(arrived.wait(), 300)
                elapsed = time.perf_counter() - start_time
                harness = time.process_time() - harness_start
                cpu_end = _cpu_seconds(hop.pid)
                peak_rss, largest_rss = _peak_rss_mib(hop.pid)
            finally:
                await asyncio.gather(*(sender.close() for sender in senders))
                hop.stop()
    finally:
        await receiver.stop()
    cpu = cpu_end - cpu_start if cpu_start is not None and cpu_end is not None else None
    return {"records": total, "seconds": elapsed, "acked": all(results),
            "records_per_s": total / elapsed if elapsed > 0 else 0.0,
            "cpu_s_per_1m": cpu * 1e6 / total if cpu is not None and total else None,
            "harness_cpu_s_per_1m": harness * 1e6 / total if total else None,
            "peak_rss_mib": peak_rss, "largest_process_rss_mib": largest_rss}


def measure_best(payloads: Payloads, starts: Dict[str, StartHop], rounds: int) -> Dict[str, Dict[str, Any]]:
    """Each hop measured `rounds` times, interleaved; per hop the best records/s (the run
    least disturbed by whatever else the machine does), the least CPU and peak RSS seen,
    and whether every chunk was acked."""
    best: Dict[str, Dict[str, Any]] = {
        name: {"records_per_s": 0.0, "cpu_s_per_1m": None, "harness_cpu_s_per_1m": None, "peak_rss_mib": None,
               "largest_process_rss_mib": None, "acked": True}
        for name in starts}
    for _ in range(rounds):
        for name, start in starts.items():
            result = asyncio.run(measure_hop(payloads, start))
            figures = best[name]
            figures["records_per_s"] = max(figures["records_per_s"], result["records_per_s"])
            for key in ("cpu_s_per_1m", "harness_cpu_s_per_1m", "peak_rss_mib", "largest_process_rss_mib"):
                value, known = result[key], figures[key]
                if value is not None:
                    figures[key] = value if known is None else min(known, value)
            figures["acked"] = figures["acked"] and result["acked"]
    return best


def rounded(value: Optional[float]) -> Optional[float]:
    return round(value, 1) if value is not None else None


ROUNDS = 3


def relay_configurations(cores: int) -> Dict[str, List[str]]:
    """The relays measured, by name: pass-through, filtering in one process, 2 filter
    workers behind one relay, 2 relay processes on one port (`--workers`) and, with more
    than 2 cores, one of each per core."""
    configurations = {
        "passthrough": ["--filter", "off"],
        "filtered": [],
        "filtered_2_workers": ["--filter-workers", "2"],
        "filtered_2_processes": ["--workers", "2"],
    }
    if cores > 2:
        configurations[f"filtered_{cores}_workers"] = ["--filter-workers", str(cores)]
        configurations[f"filtered_{cores}_processes"] = ["--workers", str(cores)]
    return configurations


def start_relay(flags: List[str]) -> StartHop:
    """A start function for `measure_hop`: `atnorm serve` with `flags`."""
    return lambda downstream_port, workdir: RelayProcess(downstream_port, workdir, flags)


def bench_figures(records: int, invalid_ratio: float, rounds: int = ROUNDS) -> List[Dict[str, Any]]:
    """The relay figure: pass-through, filtered, and filtered in workers, measured in the same run.

    Each configuration runs `rounds` times, interleaved, and the best run counts (the one
    least disturbed by whatever else the machine does); CPU and peak RSS are the least seen.
    """
    payloads = bench_payloads(max(records, CHUNK_RECORDS), invalid_ratio)
    configurations = relay_configurations(os.cpu_count() or 1)
    best = measure_best(payloads, {name: start_relay(flags) for name, flags in configurations.items()},
                        rounds)

    def ratio(name: str, base: str) -> Optional[float]:
        rate, base_rate = best[name]["records_per_s"], best[base]["records_per_s"]
        return round(rate / base_rate, 2) if base_rate else None

    figure: Dict[str, Any] = {
        "figure": "relay (sender -> atnorm serve -> receiver, loopback, acks on)",
        "records": sum(count for _, count in payloads),
        "invalid_ratio": invalid_ratio,
        "chunk_records": CHUNK_RECORDS,
    }
    for name in configurations:
        figure[f"{name}_records_per_s"] = round(best[name]["records_per_s"])
        if name != "passthrough":
            figure[f"{name}_ratio"] = ratio(name, "passthrough")
    figure["workers_2_speedup"] = ratio("filtered_2_workers", "filtered")
    figure["processes_2_speedup"] = ratio("filtered_2_processes", "filtered")
    for name in configurations:
        figure[f"{name}_cpu_s_per_1m_records"] = rounded(best[name]["cpu_s_per_1m"])
    # What the sender and the receiver (this process) spent meanwhile: taken from the cores
    # the relay could have used.
    for name in configurations:
        figure[f"{name}_harness_cpu_s_per_1m_records"] = rounded(best[name]["harness_cpu_s_per_1m"])
    for name in configurations:
        figure[f"{name}_peak_rss_mib"] = rounded(best[name]["peak_rss_mib"])
    for name in configurations:
        figure[f"{name}_largest_process_rss_mib"] = rounded(best[name]["largest_process_rss_mib"])
    figure["all_acked"] = all(best[name]["acked"] for name in configurations)
    return [figure]


if __name__ == "__main__":  # pragma: no cover - manual run
    import json

    print(json.dumps(bench_figures(int(os.environ.get("RECORDS", "20000")), 0.1), indent=2))
