"""The downstream shared-key handshake against the real HELO and PONG bytes of Fluentd and Fluent Bit.

A scripted server on loopback replays the HELO that a real in_forward sent (captures in
tests/fixtures/wire/handshake, copied from the wire corpus), checks our PING the way the
real server and Fluentd's own out_forward compute it, and answers with a PONG.
Both real servers always put a non-empty auth salt in the HELO, even without user auth.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any, List, Optional

import msgpack
import pytest

from atnorm.forward.codec import Entry, encode_event_time, pack_entries
from atnorm.forward.sender import ForwardSender
from atnorm.monitoring.relaystats import RelayStats
from atnorm.relay.delivery import Delivery
from atnorm.relay.spool import Spool
from support import forward_sender

CAPTURES = Path(__file__).parent / "fixtures" / "wire" / "handshake"
KEY = b"s3cret"


def objects_with_bytes(name: str) -> List[tuple]:
    """(decoded object, its exact bytes) for every msgpack object of a capture file."""
    data = (CAPTURES / name).read_bytes()
    unpacker = msgpack.Unpacker(raw=True)
    unpacker.feed(data)
    out, start = [], 0
    for obj in unpacker:
        end = unpacker.tell()
        out.append((obj, data[start:end]))
        start = end
    return out


def sha512_hex(*parts: bytes) -> str:
    return hashlib.sha512(b"".join(parts)).hexdigest()


def as_bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")


class ScriptedServer:
    """Sends a captured HELO verbatim, records the PING, then PONGs (or replays a refusal)."""

    def __init__(self, helo_capture: str, *, hostname: bytes = b"srv",
                 refusal: Optional[bytes] = None, close_instead_of_pong: bool = False) -> None:
        (self.helo, self.helo_bytes), *_ = objects_with_bytes(helo_capture)
        self.hostname = hostname
        self.refusal = refusal
        self.close_instead_of_pong = close_instead_of_pong
        self.pings: List[list] = []
        self.records: List[Any] = []
        self.port = 0
        self._server: Optional[asyncio.AbstractServer] = None

    async def __aenter__(self) -> "ScriptedServer":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        unpacker = msgpack.Unpacker(raw=True)
        writer.write(self.helo_bytes)
        try:
            ping = await self._next(reader, unpacker)
            self.pings.append(ping)
            if self.close_instead_of_pong:
                return
            if self.refusal is not None:
                writer.write(self.refusal)
                await writer.drain()
                return
            salt = ping[2]
            writer.write(msgpack.packb([b"PONG", True, b"", self.hostname,
                                        sha512_hex(salt, self.hostname, self.helo[1][b"nonce"], KEY)],
                                       use_bin_type=False))
            while True:
                frame = await self._next(reader, unpacker)
                options = frame[2]
                entries = msgpack.Unpacker(raw=False)
                entries.feed(frame[1])
                self.records.extend(record for _, record in entries)
                writer.write(msgpack.packb({"ack": options[b"chunk"]}, use_bin_type=False))
                await writer.drain()
        except (ConnectionError, EOFError):
            pass
        finally:
            writer.transport.abort()

    @staticmethod
    async def _next(reader: asyncio.StreamReader, unpacker: msgpack.Unpacker) -> Any:
        while True:
            try:
                return next(unpacker)
            except StopIteration:
                pass
            data = await reader.read(65536)
            if not data:
                raise EOFError
            unpacker.feed(data)


def run(test: Any) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 60))


def payload(n: int) -> bytes:
    return pack_entries(Entry(encode_event_time(1714557600 + i), {"n": i}) for i in range(n))


def sender_for(port: int, stats: RelayStats, **options: Any) -> ForwardSender:
    settings = dict(shared_key="s3cret", self_hostname="relay-1", ack_timeout=5.0, connect_timeout=5.0,
                    retry_deadline=0.5, retry_wait=0.05, retry_max_wait=0.1, flush_interval=0.01,
                    stats=stats)
    settings.update(options)
    return forward_sender([("127.0.0.1", port)], **settings)


@pytest.mark.parametrize("capture", ["fd-in-handshake-ok.s2c.bin", "fb-in-handshake-ok.s2c.bin"])
def test_the_real_helo_with_an_auth_salt_gets_fluentds_ping_and_records_are_delivered(capture):
    async def scenario() -> None:
        async with ScriptedServer(capture) as server:
            stats = RelayStats()
            sender = sender_for(server.port, stats)
            assert await sender.send("audit.at", payload(3), 3) is True
            await sender.close()
        [ping] = server.pings
        assert len(ping) == 6 and ping[0] == b"PING" and ping[1] == b"relay-1"
        salt = ping[2]
        assert len(salt) == 32 and all(c in b"0123456789abcdef" for c in salt)  # as Fluentd: hex(16)
        nonce, auth = server.helo[1][b"nonce"], server.helo[1][b"auth"]
        assert auth  # both real servers always send one
        assert ping[3] == sha512_hex(salt, b"relay-1", nonce, KEY).encode()
        assert ping[4] == b""
        assert ping[5] == sha512_hex(auth, b"", b"").encode()  # what fd-out-handshake-salt sent
        assert server.records == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert stats.handshake_failures == 0
    run(scenario)


def test_our_ping_has_the_shape_fluentds_out_forward_sent_in_the_capture():
    (ping, _), *_ = objects_with_bytes("fd-out-handshake-salt.c2s.bin")
    (helo, _), *_ = objects_with_bytes("fd-out-handshake-salt.s2c.bin")
    # The recorded formula: password digest = sha512_hex(auth_salt + "" + "") with no user auth set.
    assert ping[5] == sha512_hex(helo[1][b"auth"], b"", b"").encode()
    assert ping[3] == sha512_hex(ping[2], ping[1], helo[1][b"nonce"], KEY).encode()

    async def scenario() -> None:
        async with ScriptedServer("fd-out-handshake-salt.s2c.bin", hostname=b"relay-py") as server:
            sender = sender_for(server.port, RelayStats(), self_hostname="shipper-fd")
            assert await sender.send("audit.at", payload(1), 1) is True
            await sender.close()
        [ours] = server.pings
        assert [type(v) for v in ours] == [type(v) for v in ping]
        assert ours[5] == ping[5] and len(ours[2]) == len(ping[2])
    run(scenario)


def test_username_and_password_are_used_in_the_password_digest_when_set():
    async def scenario() -> None:
        async with ScriptedServer("fd-in-handshake-ok.s2c.bin") as server:
            sender = sender_for(server.port, RelayStats(), username="alice", password="pw")
            assert await sender.send("audit.at", payload(1), 1) is True
            await sender.close()
        [ping] = server.pings
        assert ping[4] == b"alice"
        assert ping[5] == sha512_hex(server.helo[1][b"auth"], b"alice", b"pw").encode()
    run(scenario)


def test_a_pong_false_is_a_counted_logged_refusal_and_the_chunk_stays_spooled(tmp_path, caplog):
    # Fluentd's real answer to a wrong key, replayed byte for byte.
    (_, refusal) = objects_with_bytes("fd-in-handshake-badkey.s2c.bin")[1]

    async def scenario() -> None:
        async with ScriptedServer("fd-in-handshake-badkey.s2c.bin", refusal=refusal) as server:
            stats = RelayStats()
            spool = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20)
            delivery = Delivery(sender_for(server.port, stats), spool, stats=stats, retry_wait=0.05,
                                retry_max_wait=0.1)
            assert await delivery.hand_off("audit.at", payload(2), 2) is True  # safe: in the spool
            assert spool.depth_records == 2
            deadline = asyncio.get_running_loop().time() + 10
            while stats.handshake_failures < 2 and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            assert spool.depth_records == 2  # the drainer keeps failing; nothing is lost
            await delivery.close(1.0)
        assert stats.handshake_failures >= 2
        assert server.records == []
        reopened = Spool(str(tmp_path / "spool.db"), max_bytes=1 << 20)
        assert reopened.depth_records == 2
        reopened.close()
    with caplog.at_level("ERROR", logger="atnorm"):
        run(scenario)
    assert "shared_key mismatch" in caplog.text


def test_fluent_bits_close_without_a_pong_is_reported_as_a_refusal():
    async def scenario() -> None:
        async with ScriptedServer("fb-in-handshake-badkey.s2c.bin", close_instead_of_pong=True) as server:
            stats = RelayStats()
            sender = sender_for(server.port, stats)
            assert await sender.send("audit.at", payload(1), 1) is False
            await sender.close()
        assert stats.handshake_failures >= 1
        assert "PING" in (sender.last_error or "")
    run(scenario)
