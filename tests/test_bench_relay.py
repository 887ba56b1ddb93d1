"""The relay benchmark's shared parts: the payloads, one hop measured end to end, best of rounds."""

from __future__ import annotations

import asyncio

import msgpack

from atnorm.bench.relay import CHUNK_RECORDS, RelayProcess, bench_payloads, measure_best, measure_hop, start_relay


def test_the_payloads_are_packed_chunks_of_the_generated_traffic():
    payloads = bench_payloads(2500, 0.1)
    assert [count for _, count in payloads] == [CHUNK_RECORDS, CHUNK_RECORDS, 500]
    for payload, count in payloads:
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
        unpacker.feed(payload)
        entries = list(unpacker)
        assert len(entries) == count
        assert all(isinstance(record, dict) for _, record in entries)


def test_one_hop_is_measured_once_every_record_has_arrived_and_every_chunk_is_acked():
    payloads = bench_payloads(2000, 0.1)
    started = []

    def start(downstream_port: int, workdir: str) -> RelayProcess:
        relay = RelayProcess(downstream_port, workdir, ["--filter", "off"])
        started.append(relay)
        return relay

    result = asyncio.run(measure_hop(payloads, start))
    assert result["records"] == 2000 and result["acked"]
    assert result["records_per_s"] > 0
    assert result["harness_cpu_s_per_1m"] > 0  # the sender and the receiver run in this process
    [relay] = started
    assert relay.process.poll() is not None  # stopped after the measurement


def test_best_of_rounds_keeps_each_hop_apart():
    best = measure_best(bench_payloads(1000, 0.1), {"passthrough": start_relay(["--filter", "off"]),
                                                    "filtered": start_relay([])}, 1)
    assert set(best) == {"passthrough", "filtered"}
    for figures in best.values():
        assert figures["records_per_s"] > 0 and figures["acked"]


def test_a_relay_with_workers_is_measured_over_several_connections():
    result = asyncio.run(measure_hop(bench_payloads(2000, 0.1), start_relay(["--workers", "2"])))
    assert result["records"] == 2000 and result["acked"]
    # The supervisor and two workers: the largest one process is a part of their sum.
    if result["peak_rss_mib"] is not None:
        assert 0 < result["largest_process_rss_mib"] < result["peak_rss_mib"]
