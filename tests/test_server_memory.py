"""A real `atnorm serve` under many connections that each send most of a big frame and stop:
its memory stays within max_input_memory plus a fixed overhead, and a good client is still acked."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.request
from typing import Dict, List

from prometheus_client.parser import text_string_to_metric_families

from atnorm.forward.codec import EventTime, packb
from relay_process import RelayProcess

BUDGET_MB = 64
OVERHEAD_MB = 100  # what the README states on top of max_input_memory and the idle process
HOSTILE = 40
PARTIAL_MB = 15


def memory_mb(pid: int) -> Dict[str, int]:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        return {key: int(value.split()[0]) >> 10 for key, value in
                (line.split(":", 1) for line in status if line.startswith(("VmHWM", "VmRSS")))}


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode("utf-8")
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)


async def until_metric(url: str, name: str, least: float, timeout: float = 120.0) -> None:
    """Wait (polling the relay's own metrics) until `name` reaches `least`; the cap turns a hang into a failure."""
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(metric, url, name) < least:
        assert time.monotonic() < deadline, f"{name} never reached {least}"
        await asyncio.sleep(0.1)


async def good_exchange(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
    writer.write(packb(["good", [[EventTime(1714557600, 0), {"action": "a.b.c"}]], {"chunk": "good-1"}]))
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(1024), 120)
    writer.close()
    return answer


def test_partial_frames_from_many_connections_stay_within_the_memory_budget(tmp_path):
    frame = packb(["t", b"x" * ((PARTIAL_MB + 1) << 20), {"chunk": "never"}])[: PARTIAL_MB << 20]
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--metrics-listen", "127.0.0.1:0",
                      "--max-input-memory", f"{BUDGET_MB}M", "--max-connections-per-peer", str(HOSTILE)) as relay:
        url = next(line.split("metrics on ")[1].split("/metrics")[0] for line in relay.lines if "metrics on" in line)
        pid = relay.process.pid
        idle = memory_mb(pid)["VmRSS"]

        async def scenario() -> bytes:
            writers: List[asyncio.StreamWriter] = []

            async def push() -> None:
                _, writer = await asyncio.open_connection("127.0.0.1", relay.port, local_addr=("127.0.0.2", 0))
                writers.append(writer)
                with contextlib.suppress(ConnectionError):
                    for offset in range(0, len(frame), 1 << 16):
                        writer.write(frame[offset:offset + (1 << 16)])
                        await writer.drain()

            pushing = [asyncio.create_task(push()) for _ in range(HOSTILE)]
            try:
                # The relay has spent its budget (partial frames are charged three times their
                # bytes: msgpack's buffer doubles when it grows, and a copy is kept for the
                # resend digest) and had to pause reading.
                await until_metric(url, "atnorm_input_paused_total", 1)
                await until_metric(url, "atnorm_received_bytes_total", (BUDGET_MB << 20) // 3)
                return await good_exchange(relay.port)
            finally:
                for task in pushing:
                    task.cancel()
                await asyncio.gather(*pushing, return_exceptions=True)
                for writer in writers:
                    writer.transport.abort()

        answer = asyncio.run(scenario())
        peak = memory_mb(pid)["VmHWM"]
    assert answer == packb({"ack": "good-1"})
    assert peak <= idle + BUDGET_MB + OVERHEAD_MB, (idle, peak)
