"""Replays of real Fluentd 1.16 / Fluent Bit 4.2 / fluent-logger wire captures against a real relay.

Each `tests/fixtures/wire/<name>.c2s.bin` is sent byte for byte over a loopback TCP connection
(or as UDP datagrams for the heartbeats) to a `Relay` whose downstream is a real forward
receiver. Checked: every record of the capture arrives downstream exactly once, and what the
relay answers is byte for byte what the real server answered (`<name>.s2c.bin`). Handshakes
use a random nonce on our side, so for those the recorded HELO / PING / PONG are checked
against our digest functions in both directions, and the data that followed is replayed.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
from collections import Counter
from pathlib import Path
from typing import Any, List, Optional, Tuple

import msgpack
import pytest

from atnorm.core.pipeline import EventFilter
from atnorm.core.stats import FilterStats
from atnorm.forward.codec import (
    as_bytes,
    check_ping,
    check_pong,
    packb,
    parse_helo,
    password_digest,
    pong_frame,
    unpackb,
)
from atnorm.relay.service import Relay
from forward_receiver import ForwardReceiver, _unpacker
from support import relay_settings, run

WIRE = Path(__file__).parent / "fixtures" / "wire"
SHARED_KEY = "s3cret"

ALL_CAPTURES = sorted(p.name[: -len(".c2s.bin")] for p in WIRE.glob("*.c2s.bin"))
HANDSHAKES = [n for n in ALL_CAPTURES if "handshake" in n]
UDP_HEARTBEATS = ["fd-heartbeat-udp", "fd-in-heartbeat-udp"]
DATA_CAPTURES = [n for n in ALL_CAPTURES if n not in UDP_HEARTBEATS]

# Fluentd's in_forward echoes a bin chunk as bin; Fluent Bit 4.2.8 drops the chunk instead
# (no s2c file). The relay does what Fluentd does, so that capture expects Fluentd's answer.
EXPECTED_S2C = {"fb-in-ack-bin": "fd-in-ack-bin"}

# Captures whose records come as bin (fd-yajl-ack, fd-ltsv-ack, fd-none-ack) and metadata
# entries (fb-meta-*) pass these checks as they are: every record is decided exactly once
# (bin strings are read as text, none is an internal.error). Were one to fail
# for a reason outside the codec, it would be listed here with that reason.
def test_all_31_captures_are_here():
    assert len(ALL_CAPTURES) == 31
    for name in ALL_CAPTURES:  # fluent-logger-python has no config file
        assert (WIRE / f"{name}.conf").exists() or name.startswith("py-"), name
    assert (WIRE / "events.jsonl").exists() and (WIRE / "events.ltsv").exists()


# --- reading the captures --------------------------------------------------------------------

def raw_objects(data: bytes) -> List[Tuple[Any, bytes]]:
    """Every top-level msgpack object of `data` with its exact bytes."""
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False)
    unpacker.feed(data)
    out: List[Tuple[Any, bytes]] = []
    start = 0
    for obj in unpacker:
        end = unpacker.tell()
        out.append((obj, data[start:end]))
        start = end
    assert start == len(data), "capture ends inside an object"
    return out


def is_ping(obj: Any) -> bool:
    return isinstance(obj, list) and len(obj) == 6 and obj[0] == b"PING"


def capture(name: str, side: str) -> bytes:
    path = WIRE / f"{name}.{side}.bin"
    return path.read_bytes() if path.exists() else b""


def data_frames(name: str) -> List[bytes]:
    """The c2s frames a relay gets once past any handshake."""
    return [raw for obj, raw in raw_objects(capture(name, "c2s")) if not is_ping(obj)]


def expected_acks(name: str) -> bytes:
    s2c = capture(EXPECTED_S2C.get(name, name), "s2c")
    return b"".join(raw for obj, raw in raw_objects(s2c) if isinstance(obj, dict))


def expected_entries(name: str) -> List[Tuple[str, Any, Any]]:
    """(tag, time or [time, metadata], record) of every entry in the capture, decoded the way
    the downstream receiver decodes what it gets."""
    out: List[Tuple[str, Any, Any]] = []
    for frame in data_frames(name):
        unpacker = _unpacker()
        unpacker.feed(frame)
        [message] = list(unpacker)
        if not isinstance(message, list):
            continue
        tag, body = message[0], message[1]
        if isinstance(body, list):
            out += [(tag, e[0], e[1]) for e in body]
        elif isinstance(body, (bytes, str)):
            payload = as_bytes(body)
            if len(message) > 2 and message[2].get("compressed") == "gzip":
                payload = gzip.decompress(payload)
            entries = _unpacker()
            entries.feed(payload)
            out += [(tag, e[0], e[1]) for e in entries]
        else:
            out.append((tag, body, message[2]))
    return out


def canonical(entries: List[Tuple[str, Any, Any]]) -> Counter:
    return Counter(msgpack.packb(list(e), use_bin_type=True, unicode_errors="surrogateescape") for e in entries)


# --- a real relay on loopback ----------------------------------------------------------------

async def replay(port: int, frames: List[bytes], expected_reply_size: int) -> bytes:
    """Send `frames` on one connection, read until the expected answer size, then close our
    side and read whatever else the relay says until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(frames))
        await writer.drain()
        reply = b""
        while len(reply) < expected_reply_size:
            data = await reader.read(1 << 16)
            if not data:
                break
            reply += data
        writer.write_eof()
        while True:
            data = await reader.read(1 << 16)
            if not data:
                return reply
            reply += data
    finally:
        writer.close()


async def relay_with_receiver(tmp_path: Path, *, filter_on: bool) -> Tuple[Relay, ForwardReceiver]:
    receiver = await ForwardReceiver().start()
    flags = ["--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}", "--data-dir", str(tmp_path)]
    if not filter_on:
        # Unchanged means metadata entries too: keep them (the default sends plain entries).
        flags += ["--filter", "off", "--forward-entry-form", "metadata"]
    relay = Relay(relay_settings(*flags), EventFilter.from_schemas(stats=FilterStats()) if filter_on else None)
    await relay.start()
    return relay, receiver


def downstream_entries(receiver: ForwardReceiver) -> List[Tuple[str, Any, Any]]:
    return [(tag, when, record) for tag, when, record in receiver.events]


# --- data captures ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", DATA_CAPTURES)
def test_replayed_capture_is_passed_on_exactly_once_with_the_real_servers_acks(tmp_path, name):
    """Filter off: every entry comes out downstream unchanged (tag, time, metadata, record),
    each exactly once, and the relay's answer is byte for byte the real server's."""
    frames = data_frames(name)
    wanted = expected_entries(name)
    acks = expected_acks(name)

    async def scenario() -> None:
        relay, receiver = await relay_with_receiver(tmp_path, filter_on=False)
        try:
            reply = await replay(relay.server.port, frames, len(acks))
            assert reply == acks
            await receiver.wait_for(lambda: len(receiver.events) >= len(wanted))
            await asyncio.sleep(0.2)  # anything extra would show up now
        finally:
            await relay.stop()
            await receiver.stop()
        assert canonical(downstream_entries(receiver)) == canonical(wanted)
        assert relay.relay_stats.duplicate_chunks == 0
        assert not relay.relay_stats.protocol_errors
        assert relay.relay_stats.records_received == len(wanted)
    run(scenario())


@pytest.mark.parametrize("name", [n for n in DATA_CAPTURES if n != "fd-heartbeat-tcp"])
def test_replayed_capture_is_decided_once_per_record(tmp_path, name):
    """Filter on: every record is decided once and leaves on exactly one route."""
    frames = data_frames(name)
    wanted = expected_entries(name)
    acks = expected_acks(name)

    async def scenario() -> None:
        relay, receiver = await relay_with_receiver(tmp_path, filter_on=True)
        try:
            assert await replay(relay.server.port, frames, len(acks)) == acks
            await receiver.wait_for(lambda: len(receiver.events) >= len(wanted))
            await asyncio.sleep(0.2)
        finally:
            await relay.stop()
            await receiver.stop()
        stats = relay.filter_stats.snapshot()
        assert stats["received"] == len(wanted) == len(receiver.events)
        assert stats["accepted"] + stats["rejected"] + stats["passed"] == len(wanted)
        routes = Counter(tag.rsplit(".", 1)[-1] == "rejected" for tag, _, _ in receiver.events)
        assert routes[True] == stats["rejected"]
        # Every record was read as the agent meant it: none failed inside the filter.
        assert not [key for key in stats["rejections"] if key.startswith("internal.error:")]
    run(scenario())


def test_fluent_bit_message_mode_with_one_chunk_id_for_every_message_delivers_all_seven(tmp_path):
    """Fluent Bit's Message mode puts the same chunk id on every message (base64 of SHA-512
    of nothing). Before content was part of the resend key, 3 of these 7 records were
    dropped as duplicates, though each was acked."""
    name = "fb-message-mode-ack"
    frames = data_frames(name)
    acks = expected_acks(name)

    async def scenario() -> None:
        relay, receiver = await relay_with_receiver(tmp_path, filter_on=True)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.server.port)
            reply = b""
            for frame in frames:  # as Fluent Bit does: the next message once the last one is acked
                writer.write(frame)
                await writer.drain()
                unpacker = msgpack.Unpacker()
                while True:
                    data = await reader.read(1 << 16)
                    assert data, "relay closed the connection"
                    reply += data
                    unpacker.feed(data)
                    if list(unpacker):
                        break
            writer.close()
            await receiver.wait_for(lambda: len(receiver.events) >= 7)
        finally:
            await relay.stop()
            await receiver.stop()
        assert reply == acks  # all 7 acked, byte for byte
        assert len(receiver.events) == 7
        assert relay.relay_stats.duplicate_chunks == 0
        assert relay.filter_stats.snapshot()["received"] == 7
    run(scenario())


def test_an_empty_transport_heartbeat_connection_is_harmless(tmp_path):
    assert capture("fd-heartbeat-tcp", "c2s") == b""

    async def scenario() -> None:
        relay, receiver = await relay_with_receiver(tmp_path, filter_on=True)
        try:
            for _ in range(3):
                assert await replay(relay.server.port, [], 0) == b""
        finally:
            await relay.stop()
            await receiver.stop()
        assert relay.relay_stats.connections_opened == 3
        assert not relay.relay_stats.protocol_errors and receiver.frames == []
    run(scenario())


@pytest.mark.parametrize("name", UDP_HEARTBEATS)
def test_udp_heartbeats_are_answered_as_the_real_servers_answered(tmp_path, name):
    datagrams = [raw for _, raw in raw_objects(capture(name, "c2s"))]

    async def scenario() -> bytes:
        relay, receiver = await relay_with_receiver(tmp_path, filter_on=False)
        try:
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(("127.0.0.1", relay.server.port))
            answers = b""
            try:
                for datagram in datagrams:
                    await loop.sock_sendall(sock, datagram)
                    answers += await asyncio.wait_for(loop.sock_recv(sock, 64), 10)
            finally:
                sock.close()
            return answers
        finally:
            await relay.stop()
            await receiver.stop()
    assert run(scenario()) == capture(name, "s2c")


# --- handshakes ------------------------------------------------------------------------------

def handshake_parts(name: str) -> Tuple[Any, Any, Optional[Any], List[bytes]]:
    """(HELO, PING, PONG or None, raw s2c objects) as our codec decodes them."""
    s2c = [raw for _, raw in raw_objects(capture(name, "s2c"))]
    c2s = [raw for _, raw in raw_objects(capture(name, "c2s"))]
    helo, ping = unpackb(s2c[0]), unpackb(c2s[0])
    pong = unpackb(s2c[1]) if len(s2c) > 1 and unpackb(s2c[1])[0] == "PONG" else None
    return helo, ping, pong, s2c


@pytest.mark.parametrize("name", HANDSHAKES)
def test_recorded_handshakes_check_with_our_digest_functions_both_ways(name):
    helo_message, ping, pong, s2c = handshake_parts(name)
    helo = parse_helo(helo_message)
    assert len(helo.nonce) == 16
    server_side = check_ping(ping, nonce=helo.nonce, shared_key=SHARED_KEY, auth_salt=helo.auth_salt)
    if "badkey" in name:
        assert not server_side.ok and server_side.reason == "shared_key mismatch"
        assert check_ping(ping, nonce=helo.nonce, shared_key="wrong-key").ok
        if pong is not None:  # Fluentd answers; Fluent Bit just closes
            assert pong_frame(False, reason="shared_key mismatch") == s2c[1]
        return
    assert server_side.ok, server_side.reason
    assert pong is not None
    client_side = check_pong(pong, shared_key_salt=server_side.shared_key_salt, nonce=helo.nonce,
                             shared_key=SHARED_KEY)
    assert client_side.ok, client_side.reason
    assert not check_pong(pong, shared_key_salt=server_side.shared_key_salt, nonce=helo.nonce,
                          shared_key="wrong-key").ok
    # Our PONG for the same values is byte for byte the one the client accepted.
    assert pong_frame(True, server_hostname=client_side.server_hostname,
                      shared_key_salt=server_side.shared_key_salt, nonce=helo.nonce,
                      shared_key=SHARED_KEY) == s2c[1]
    username, user_digest = ping[4], ping[5]
    if name.startswith(("fd-out", "fb-out")) and (helo.auth_salt or name.startswith("fb-out")):
        # Real out_forward clients prove an (empty) password whenever the HELO has an auth salt.
        assert user_digest == password_digest(helo.auth_salt, username, "")
    assert check_ping(ping, nonce=helo.nonce, shared_key=SHARED_KEY, auth_salt=helo.auth_salt,
                      users={as_bytes(username).decode(): ""}).ok == bool(user_digest)


def test_our_pong_encoding_matches_what_real_fluentd_sent():
    _, _, pong, s2c = handshake_parts("fd-in-handshake-ok")
    assert pong is not None and packb(pong) == s2c[1]


def handshake_server_hostname(name: str) -> str:
    return "srv" if "-in-" in name else "relay-py"


@pytest.mark.parametrize("name", HANDSHAKES)
def test_recorded_handshake_replayed_against_the_relay_with_the_recorded_nonce(tmp_path, monkeypatch, name):
    """With the nonce the real server drew, the whole recorded client side (PING, then data)
    is replayed against a relay with the shared key: its PONG and acks equal the recorded
    ones byte for byte (Fluent Bit sends no PONG on a bad key; the relay answers as Fluentd)."""
    helo_message, _, _, s2c = handshake_parts(name)
    nonce = parse_helo(helo_message).nonce
    source = "fd-in-handshake-badkey" if "badkey" in name else name
    expected = b"".join([raw for _, raw in raw_objects(capture(source, "s2c"))][1:])
    wanted = expected_entries(name)
    monkeypatch.setattr("atnorm.forward.server.os.urandom", lambda size: nonce[:size])

    async def scenario() -> Tuple[bytes, Relay, ForwardReceiver]:
        receiver = await ForwardReceiver().start()
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                   "--data-dir", str(tmp_path), "--filter", "off", "--shared-key", SHARED_KEY,
                                   "--self-hostname", handshake_server_hostname(name)))
        await relay.start()
        try:
            reply = await replay(relay.server.port, [capture(name, "c2s")], 0)
            await receiver.wait_for(lambda: len(receiver.events) >= len(wanted))
        finally:
            await relay.stop()
            await receiver.stop()
        return reply, relay, receiver

    reply, relay, receiver = run(scenario())
    helo = raw_objects(reply)[0][0]
    assert helo[0] == b"HELO" and helo[1][b"nonce"] == nonce
    assert reply[len(raw_objects(reply)[0][1]):] == expected
    assert canonical(downstream_entries(receiver)) == canonical(wanted)
    if "badkey" in name:
        assert relay.relay_stats.protocol_errors["auth"] == 1
