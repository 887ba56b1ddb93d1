"""Hostile and careless peers on the forward port, over real loopback sockets: text and HTTP,
connection floods, heartbeat-only and trickling connections, memory held by partial frames,
failed TLS handshakes, and what the log says about them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any, List

from test_forward_server import Peer, Recorder, good_chunk, make_certificate, run, serving, until

from atnorm.forward.codec import packb
from atnorm.forward.server import EVICT_IDLE_AFTER
from atnorm.monitoring.relaystats import RelayStats
from forward_frames import ack_bytes, mp
from support import forward_server

GET = b"GET /metrics HTTP/1.1\r\nHost: relay:24224\r\nUser-Agent: probe\r\nAccept: */*\r\n\r\n"


async def open_from(server: Any, source: str) -> Peer:
    """A peer whose connection comes from `source` (any 127.x.y.z address is loopback on Linux)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port, local_addr=(source, 0))
    return Peer(reader, writer)


async def closed_soon(peer: Peer, timeout: float = 10.0) -> bytes:
    """The server must close the connection; the cap only turns a hang into a failure."""
    return await asyncio.wait_for(peer.closed_by_server(), timeout)


def our_warnings(caplog: Any) -> List[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("atnorm") and r.levelno >= logging.WARNING]


# --- 1. text on the forward port ---------------------------------------------------------------

def test_http_request_closes_the_connection_with_one_count_and_one_line(caplog):
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            good = await Peer.open(server)
            probe = await Peer.open(server)
            await probe.send(GET)
            assert await closed_soon(probe) == b""
            assert server.stats.protocol_errors == {"non_array": 1}
            await good.exchange(*good_chunk())
            assert server.stats.connections_active == 1
            await good.close()
    with caplog.at_level(logging.INFO):
        run(scenario())
    lines = our_warnings(caplog)
    assert len(lines) == 1 and "127.0.0.1:" in lines[0] and "HTTP or plain text" in lines[0]


def test_text_from_many_connections_of_one_peer_logs_one_line_with_the_rest_counted(caplog):
    async def scenario():
        async with serving() as server:
            for _ in range(5):
                peer = await Peer.open(server)
                await peer.send(b"hello relay\n")
                assert await closed_soon(peer) == b""
            assert server.stats.protocol_errors == {"non_array": 5}
    with caplog.at_level(logging.INFO):
        run(scenario())
    assert len(our_warnings(caplog)) == 1


# --- 6. the log throttle keeps causes and peers apart ---------------------------------------

def test_log_throttle_is_per_cause_and_per_peer(caplog):
    async def scenario():
        async with serving(max_frame_size=1024) as server:
            for source in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
                peer = await open_from(server, source)
                await peer.send(b"PUT / HTTP/1.0\r\n\r\n")
                await closed_soon(peer)
            big = await open_from(server, "127.0.0.2")
            await big.send(mp(["t", b"x" * 4096, {"chunk": "c"}]))
            await closed_soon(big)
            assert server.stats.protocol_errors == {"non_array": 3, "oversize": 1}
    with caplog.at_level(logging.INFO):
        run(scenario())
    lines = our_warnings(caplog)
    # one line per (cause, peer host): text from .2, text from .3, oversize from .2
    assert len(lines) == 3, lines
    assert sum("127.0.0.2:" in line for line in lines) == 2
    assert sum("127.0.0.3:" in line for line in lines) == 1


# --- 2. connection fairness --------------------------------------------------------------------

def test_connections_per_peer_are_limited_and_other_peers_still_get_in():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, max_connections_per_peer=3) as server:
            flood = [await open_from(server, "127.0.0.2") for _ in range(3)]
            await until(lambda: server.stats.connections_active == 3)
            fourth = await open_from(server, "127.0.0.2")
            assert await closed_soon(fourth) == b""
            assert server.stats.connections_rejected == 1
            good = await open_from(server, "127.0.0.3")
            await good.exchange(*good_chunk())
            assert recorder.calls == 1
            for peer in flood + [good]:
                await peer.close()
    run(scenario())


def test_idle_connections_of_a_host_at_its_limit_make_room_for_a_sender_on_that_host():
    """The same host (or NAT address) holds idle connections up to its limit: a sender from
    it still gets in, by closing the host's most idle connection."""
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, max_connections_per_peer=3) as server:
            flood = [await open_from(server, "127.0.0.2") for _ in range(3)]
            await until(lambda: server.stats.connections_active == 3)
            await asyncio.sleep(EVICT_IDLE_AFTER + 0.2)  # the flood has been idle a while
            good = await open_from(server, "127.0.0.2")
            await good.exchange(*good_chunk())
            assert recorder.calls == 1
            assert server.stats.connections_evicted["max_connections_per_peer"] == 1
            assert server.stats.connections_rejected == 0
            for peer in flood + [good]:
                await peer.close()
    run(scenario())


def test_a_good_sender_gets_in_while_a_flood_holds_every_connection():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, max_connections=8, max_connections_per_peer=8) as server:
            flood = [await open_from(server, "127.0.0.2") for _ in range(8)]
            await until(lambda: server.stats.connections_active == 8)
            goods = [await open_from(server, "127.0.0.3") for _ in range(3)]
            for good in goods:
                await good.exchange(*good_chunk())
            assert server.stats.connections_evicted["max_connections"] == 3
            assert server.stats.connections_rejected == 0
            closed = 0
            for peer in flood:  # the flood lost three of its (idle) connections
                with contextlib.suppress(asyncio.TimeoutError):
                    await closed_soon(peer, timeout=0.2)
                    closed += 1
            assert closed == 3
            for peer in flood + goods:
                await peer.close()
    run(scenario())


def test_with_one_connection_per_host_a_newcomer_displaces_the_most_idle():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, max_connections=4) as server:
            idle = [await open_from(server, f"127.0.1.{i}") for i in range(1, 3)]
            busy = [await open_from(server, f"127.0.2.{i}") for i in range(1, 3)]
            for peer in busy:
                await peer.exchange(*good_chunk())
            await until(lambda: server.stats.connections_active == 4)
            # too soon: every connection is fresh, so the newcomer is refused
            early = await open_from(server, "127.0.3.1")
            assert await closed_soon(early) == b""
            assert server.stats.connections_rejected == 1
            await asyncio.sleep(1.2)  # EVICT_IDLE_AFTER: the two that never sent anything are now idle
            for peer in busy:
                await peer.exchange(*good_chunk())
            newcomer = await open_from(server, "127.0.3.2")
            await newcomer.exchange(*good_chunk())
            assert server.stats.connections_evicted["max_connections"] == 1
            assert await closed_soon(idle[0]) == b""  # the oldest idle one made room
            for peer in busy:  # the busy ones were kept
                await peer.exchange(*good_chunk())
            for peer in idle + busy + [newcomer]:
                await peer.close()
    run(scenario())


def test_heartbeats_alone_do_not_keep_a_connection_open():
    async def scenario():
        async with serving(idle_timeout=0.5) as server:
            peer = await Peer.open(server)

            async def heartbeat() -> None:
                while True:
                    await peer.send(b"\xc0")
                    await asyncio.sleep(0.05)

            beating = asyncio.create_task(heartbeat())
            try:
                assert await closed_soon(peer) == b""
            finally:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await beating
            assert server.stats.protocol_errors == {"idle_timeout": 1}
            assert server.stats.frames["heartbeat"] > 1
    run(scenario())


def test_a_frame_trickled_a_byte_at_a_time_is_cut_off_but_a_connection_sending_messages_is_not():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, idle_timeout=0.5) as server:
            trickle = await Peer.open(server)
            steady = await Peer.open(server)
            frame, _ = good_chunk(tag="trickle")

            async def trickling() -> None:
                for i in range(len(frame)):
                    await trickle.send(frame[i:i + 1])
                    await asyncio.sleep(0.05)

            task = asyncio.create_task(trickling())
            try:
                closed = asyncio.create_task(closed_soon(trickle))
                while not closed.done():  # the steady peer sends a chunk now and then, and is kept
                    await steady.exchange(*good_chunk())
                    await asyncio.sleep(0.05)
                assert closed.result() == b""
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                    await task
            await steady.exchange(*good_chunk())
            assert server.stats.protocol_errors == {"idle_timeout": 1}
            assert all(chunk.tag == "good" for chunk in recorder.chunks)
            await steady.close()
    run(scenario())


# --- 3. one memory budget for buffered input --------------------------------------------------

def test_partial_frames_are_held_to_the_memory_budget_and_a_good_client_is_served():
    # 13 connections share it; a read is charged 3 x 64 KiB (msgpack's buffer doubling, and
    # the copy kept for the resend digest), which must fit in the good client's fair share.
    limit = 3 << 20

    async def scenario():
        recorder = Recorder()
        async with serving(recorder, max_input_memory=limit, max_frame_size=4 << 20,
                           max_connections_per_peer=64) as server:
            most = 0
            frame = packb(["t", b"x" * (3 << 20), {"chunk": "never-finished"}])[:-20]
            hostile = [await open_from(server, "127.0.0.2") for _ in range(12)]

            async def push(peer: Peer) -> None:
                with contextlib.suppress(ConnectionError):
                    for offset in range(0, len(frame), 1 << 16):
                        await peer.send(frame[offset:offset + (1 << 16)])

            pushing = [asyncio.create_task(push(peer)) for peer in hostile]
            # until the budget is spent and reading has paused
            while server.stats.input_paused == 0:
                most = max(most, server.memory.used)
                await asyncio.sleep(0.005)
            good = await open_from(server, "127.0.0.3")
            for _ in range(3):
                await good.exchange(*good_chunk())
                most = max(most, server.memory.used)
            assert most <= limit
            assert len(recorder.chunks) == 3
            for task in pushing:
                task.cancel()
            await asyncio.gather(*pushing, return_exceptions=True)
            for peer in hostile + [good]:
                await peer.close()
        # paused connections are only noticed as gone at their idle timeout, or at stop as here
        assert server.stats.connections_active == 0 and server.memory.used == 0
    run(scenario())


def test_memory_of_chunks_is_given_back_when_they_are_acked():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            peer = await Peer.open(server)
            for _ in range(5):
                await peer.exchange(*good_chunk(count=50))
            await until(lambda: server.memory.used <= 3 << 16)  # at most the next read's reservation
            await peer.close()
            await until(lambda: server.stats.connections_active == 0)
            assert server.memory.used == 0
    run(scenario())


# --- 5. failed TLS handshakes ------------------------------------------------------------------

def test_failed_tls_handshakes_are_counted_and_logged_with_the_peer(tmp_path, caplog):
    cert, key = make_certificate(tmp_path)

    async def scenario():
        async with serving(tls_cert=cert, tls_key=key, handshake_timeout=0.5) as server:
            text = await open_from(server, "127.0.0.2")
            await text.send(GET)
            assert await closed_soon(text) == b""
            silent = await open_from(server, "127.0.0.3")  # connects and never says hello
            assert await closed_soon(silent) == b""
            untrusting = ssl.create_default_context()  # does not trust the relay's certificate
            try:
                await asyncio.open_connection("127.0.0.1", server.port, ssl=untrusting,
                                              server_hostname="localhost", local_addr=("127.0.0.4", 0))
            except ssl.SSLError:
                pass
            else:
                raise AssertionError("the handshake should have failed")
            await until(lambda: server.stats.protocol_errors["tls_handshake"] == 3)
            trusting = ssl.create_default_context(cafile=cert)
            good = await Peer.open(server, ssl=trusting, server_hostname="localhost")
            frame, chunk_id = good_chunk()
            await good.send(frame)
            assert await good.read_raw() == ack_bytes(chunk_id)
            await good.close()
    with caplog.at_level(logging.INFO):
        run(scenario())
    lines = our_warnings(caplog)
    assert len(lines) == 3 and all("TLS handshake failed" in line for line in lines)
    for source in ("127.0.0.2:", "127.0.0.3:", "127.0.0.4:"):
        assert any(source in line for line in lines)
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]


def test_memory_is_given_back_when_stop_cuts_chunks_short():
    async def scenario():
        recorder = Recorder()
        recorder.gate = asyncio.Event()  # never opened: the chunks stay with the handler
        server = forward_server(recorder, listen=[("127.0.0.1", 0)], stats=RelayStats())
        await server.start()
        peer = await Peer.open(server)
        for _ in range(3):
            await peer.send(good_chunk()[0])
        await until(lambda: recorder.calls == 3)
        assert server.memory.used > 0
        await server.stop(grace=0.1)
        assert server.memory.used == 0 and server.stats.input_memory_bytes == 0
        await peer.close()
    run(scenario())
