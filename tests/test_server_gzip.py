"""A compressed chunk near the decompressed-size limit is inflated off the event loop, step by
step within the input memory budget, so other connections are served meanwhile."""

from __future__ import annotations

import asyncio

import pytest
from test_forward_server import EVENT, Peer, Recorder, good_chunk, run, serving, until

from atnorm.forward.codec import Entry, EventTime, gzip_payload, pack_entries, packb, parse_frame, unpackb
from forward_frames import ack_bytes, fluentd_packed_forward, gzip_members

LIMIT = 64 << 20


def near_limit_gzip_frame(chunk_id: str) -> bytes:
    """One entry whose record carries a string just under the 64 MiB default limit, gzipped (small on the wire)."""
    payload = pack_entries([Entry(EventTime(1714557600, 0), dict(EVENT, padding="x" * (LIMIT - 4096)))])
    assert len(payload) <= LIMIT
    return fluentd_packed_forward("big", gzip_payload(payload, 9), size=1, chunk_id=chunk_id, compressed="gzip")


def test_a_good_clients_ack_arrives_while_a_near_limit_gzip_chunk_is_inflated():
    big_frame = near_limit_gzip_frame("big-chunk")

    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            big = await Peer.open(server)
            good = await Peer.open(server)
            await big.exchange(*good_chunk())  # both connections are established and served
            await good.exchange(*good_chunk())
            received = server.stats.bytes_received
            await big.send(big_frame)
            await until(lambda: server.stats.bytes_received >= received + len(big_frame))
            # The whole big frame is in; while it is inflated, the good client is served.
            frame, chunk_id = good_chunk()
            await good.send(frame)
            big_ack = asyncio.create_task(big.read_raw())
            assert await good.read_raw() == ack_bytes(chunk_id)
            assert not big_ack.done()
            assert await big_ack == ack_bytes("big-chunk")
            assert [c.tag for c in recorder.chunks][-2:] == ["good", "big"]
            assert len(recorder.chunks[-1].entries[0].record["padding"]) == LIMIT - 4096
            assert server.stats.frames["compressed_packed_forward"] == 1
            await big.close()
            await good.close()
    run(scenario())


def test_inflating_stops_at_the_limit_and_gives_its_memory_back():
    bomb = gzip_payload(b"\0" * (8 << 20), 9)

    async def scenario():
        async with serving(max_decompressed_size=1 << 20) as server:
            bad = await Peer.open(server)
            await bad.send(fluentd_packed_forward("bomb", bomb, size=1, chunk_id="b", compressed="gzip"))
            assert await bad.closed_by_server() == b""
            assert server.stats.protocol_errors == {"decompress_limit": 1}
            await until(lambda: server.stats.connections_active == 0)
            assert server.memory.used == 0
    run(scenario())


def test_gzip_members_back_to_back_and_a_truncated_one():
    entries = [Entry(EventTime(1714557600, i), dict(EVENT, seq=i)) for i in range(3)]
    whole = gzip_members([pack_entries([entry]) for entry in entries])

    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            peer = await Peer.open(server)
            await peer.exchange(fluentd_packed_forward("m", whole, size=3, chunk_id="m1", compressed="gzip"), "m1")
            assert [e.record["seq"] for e in recorder.chunks[0].entries] == [0, 1, 2]
            await peer.send(fluentd_packed_forward("m", whole[:-7], size=3, chunk_id="m2", compressed="gzip"))
            assert await peer.closed_by_server() == b""
            assert server.stats.protocol_errors == {"malformed": 1}
    run(scenario())


def test_a_compressed_chunk_comes_out_exactly_as_the_codec_decodes_it():
    entries = [Entry(EventTime(1714557600, i), dict(EVENT, seq=i)) for i in range(5)]
    frame = fluentd_packed_forward("same", gzip_members([pack_entries(entries[:2]), pack_entries(entries[2:])]),
                                   size=5, chunk_id="same-1", compressed="gzip")

    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            peer = await Peer.open(server)
            await peer.exchange(frame, "same-1")
            await peer.close()
        return recorder.chunks[0]

    chunk = run(scenario())
    assert chunk == parse_frame(unpackb(frame), max_decompressed_size=LIMIT, peer=chunk.peer)
    assert chunk.mode == "compressed_packed_forward" and chunk.options["compressed"] == "gzip"


def test_zstd_chunk_is_inflated_off_the_loop_and_its_memory_given_back():
    zstandard = pytest.importorskip("zstandard")
    entries = [Entry(EventTime(1714557600, i), dict(EVENT, seq=i)) for i in range(3)]
    payload = zstandard.ZstdCompressor().compress(pack_entries(entries))

    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            peer = await Peer.open(server)
            await peer.exchange(packb(["z", payload, {"compressed": "zstd", "chunk": "z1"}]), "z1")
            assert [e.record["seq"] for e in recorder.chunks[0].entries] == [0, 1, 2]
            await peer.close()
            await until(lambda: server.stats.connections_active == 0)
            assert server.memory.used == 0
    run(scenario())
