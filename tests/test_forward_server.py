"""The forward server over real loopback sockets, fed frames as Fluentd, Fluent Bit and fluent-logger send them."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import gzip
import hashlib
import ipaddress
import itertools
import logging
import os
import random
import shutil
import socket
import ssl
import subprocess
from typing import Any, List, Optional

import msgpack
import pytest
from fluent.sender import FluentSender

from atnorm.forward.codec import COMPRESSED_PACKED_FORWARD, FORWARD, MESSAGE, PACKED_FORWARD, Entry, EventTime, unpackb
from atnorm.forward.server import ForwardServer
from atnorm.monitoring.relaystats import RelayStats
from forward_frames import (
    Time,
    ack_bytes,
    fluentbit_compressed,
    fluentbit_entry,
    fluentbit_forward,
    fluentbit_ping,
    fluentd_chunk_id,
    fluentd_entries,
    fluentd_message,
    fluentd_packed_forward,
    gzip_members,
    mp,
)
from support import forward_server, run

EVENT = {"action": "iam-identity.apikey.create", "outcome": "success", "eventTime": "2024-05-01T10:00:00.00+0000"}
_sequence = itertools.count()


async def until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.002)


class Recorder:
    """Handler that keeps what it was given; can be held closed, refuse, or fail."""

    def __init__(self) -> None:
        self.chunks: List[Any] = []
        self.calls = 0
        self.gate: Optional[asyncio.Event] = None
        self.answers: List[Any] = []  # consumed one per call; True when empty

    async def __call__(self, chunk: Any) -> bool:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.pop(0) if self.answers else True
        if isinstance(answer, Exception):
            raise answer
        if answer:
            self.chunks.append(chunk)
        return answer

    @property
    def records(self) -> List[Any]:
        return [entry.record for chunk in self.chunks for entry in chunk.entries]


@contextlib.asynccontextmanager
async def serving(handler: Any = None, **options: Any):
    options.setdefault("listen", [("127.0.0.1", 0)])
    server = forward_server(handler or Recorder(), stats=RelayStats(), **options)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=1)


class Peer:
    """A raw forward-protocol client on a real socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._buffer = b""

    @classmethod
    async def open(cls, server: Optional[ForwardServer] = None, *, host: str = "127.0.0.1", port: Optional[int] = None,
                   path: Optional[str] = None, **tls: Any) -> "Peer":
        if path is not None:
            reader, writer = await asyncio.open_unix_connection(path, **tls)
        else:
            reader, writer = await asyncio.open_connection(host, port if port is not None else server.port, **tls)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_raw(self) -> bytes:
        """The exact bytes of the next msgpack object from the server."""
        while True:
            if self._buffer:
                unpacker = msgpack.Unpacker(raw=True)
                unpacker.feed(self._buffer)
                try:
                    next(unpacker)
                except StopIteration:
                    pass
                else:
                    size = unpacker.tell()
                    raw, self._buffer = self._buffer[:size], self._buffer[size:]
                    return raw
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self._buffer += data

    async def read(self) -> Any:
        return unpackb(await self.read_raw())

    async def exchange(self, frame: bytes, chunk_id: Any) -> None:
        """Send a chunk and require its ack, byte for byte."""
        await self.send(frame)
        assert await self.read_raw() == ack_bytes(chunk_id)

    async def closed_by_server(self) -> bytes:
        """Wait for the server to close; returns whatever it sent before closing."""
        rest = self._buffer
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return rest
                rest += data
        except ConnectionResetError:
            return rest

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def good_chunk(tag: str = "good", count: int = 1, metadata: Optional[dict] = None):
    """A Fluent Bit chunk asking for an ack; records are unique so ids never repeat by accident."""
    entries = [fluentbit_entry(Time(1714557600, i), dict(EVENT, seq=next(_sequence)), metadata) for i in range(count)]
    return fluentbit_forward(tag, entries, ack=True)


# --- modes as real peers send them ----------------------------------------------------------

def test_fluent_logger_message_mode_with_nanosecond_event_time():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            sender = FluentSender("app", host="127.0.0.1", port=server.port, nanosecond_precision=True)

            def emit_two() -> None:
                assert sender.emit_with_time("audit", 1714557600.25, EVENT), sender.last_error
                assert sender.emit("audit", {"second": True}), sender.last_error
                sender.close()

            await asyncio.to_thread(emit_two)
            await until(lambda: len(recorder.chunks) == 2)
            first, second = recorder.chunks
            assert (first.tag, first.mode, first.chunk_id) == ("app.audit", MESSAGE, None)
            assert first.entries == [Entry(EventTime(1714557600, 250000000), EVENT, None)]
            assert isinstance(second.entries[0].time, EventTime) and second.entries[0].record == {"second": True}
            assert server.stats.frames[MESSAGE] == 2 and server.stats.records_received == 2
    run(scenario())


def test_fluent_logger_over_a_unix_socket(tmp_path):
    async def scenario():
        recorder = Recorder()
        path = str(tmp_path / "forward.sock")
        async with serving(recorder, listen=["unix://" + path]) as server:
            assert server.addresses == ["unix://" + path]
            sender = FluentSender("app", host="unix://" + path, nanosecond_precision=True)
            await asyncio.to_thread(lambda: (sender.emit("unix", EVENT), sender.close()))
            await until(lambda: len(recorder.chunks) == 1)
            assert recorder.chunks[0].tag == "app.unix" and recorder.records == [EVENT]
        assert not os.path.exists(path)
    run(scenario())


def test_fluent_bit_default_forward_mode_of_20k_records_is_handed_on_without_an_ack():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            entries = [fluentbit_entry(Time(1714557600 + i // 1000, i), {"log": f"line {i}", "n": i}) for i in range(20000)]
            big, no_id = fluentbit_forward("fb.default", entries)
            assert no_id is None and len(big) > 500_000
            follow_up, follow_up_id = good_chunk()
            peer = await Peer.open(server)
            await peer.send(big + follow_up)
            # Acks come in frame order, so the first ack being the follow-up's proves the big one got none.
            assert await peer.read_raw() == ack_bytes(follow_up_id)
            chunk = recorder.chunks[0]
            assert chunk.mode == FORWARD and len(chunk.entries) == 20000
            assert chunk.entries[12345] == Entry(EventTime(1714557612, 12345), {"log": "line 12345", "n": 12345}, None)
            assert server.stats.acks_sent == 1 and server.stats.frames[FORWARD] == 2
            await peer.close()
    run(scenario())


def test_fluent_bit_chunk_with_options_is_acked_byte_for_byte_and_keeps_metadata():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            frame, chunk_id = good_chunk(count=3, metadata={})
            peer = await Peer.open(server)
            await peer.exchange(frame, chunk_id)
            chunk = recorder.chunks[0]
            assert chunk.options == {"chunk": chunk_id, "size": 3, "fluent_signal": 0}
            assert [e.metadata for e in chunk.entries] == [{}, {}, {}]
            assert isinstance(chunk.entries[0].time, EventTime)
            gz_frame, gz_id = fluentbit_compressed("fb.gz", [fluentbit_entry(Time(5, 5), {"k": "v"}, {"m": 1})])
            await peer.exchange(gz_frame, gz_id)
            assert recorder.chunks[1].mode == COMPRESSED_PACKED_FORWARD
            assert recorder.chunks[1].entries == [Entry(EventTime(5, 5), {"k": "v"}, {"m": 1})]
            await peer.close()
    run(scenario())


def test_fluentd_packed_forward_str32_plain_and_gzip_of_several_members_are_acked():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            peer = await Peer.open(server)
            plain_id = fluentd_chunk_id()
            plain = fluentd_entries([(Time(1714557600, 1), EVENT), (Time(1714557601, 2), {"other": 1})])
            await peer.exchange(fluentd_packed_forward("fd.plain", plain, size=2, chunk_id=plain_id), plain_id)
            gz_id = fluentd_chunk_id()
            members = gzip_members([fluentd_entries([(Time(1714557602 + i, 0), {"i": i})]) for i in range(4)])
            await peer.exchange(fluentd_packed_forward("fd.gz", members, size=4, chunk_id=gz_id,
                                                       compressed="gzip"), gz_id)
            assert [c.mode for c in recorder.chunks] == [PACKED_FORWARD, COMPRESSED_PACKED_FORWARD]
            assert recorder.chunks[0].chunk_id == plain_id and plain_id.endswith("\n")
            assert recorder.records == [EVENT, {"other": 1}, {"i": 0}, {"i": 1}, {"i": 2}, {"i": 3}]
            await peer.close()
    run(scenario())


def test_bin_chunk_id_is_acked_as_bin_and_ext8_time_is_read():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            peer = await Peer.open(server)
            frame = fluentd_message("m", Time(1714557600, 7, ext8=True), EVENT, {"chunk": b"\x00\x01id"})
            await peer.exchange(frame, b"\x00\x01id")
            assert recorder.chunks[0].entries[0].time == EventTime(1714557600, 7)
            await peer.close()
    run(scenario())


def test_heartbeats_are_ignored_and_the_connection_kept():
    async def scenario():
        async with serving() as server:
            peer = await Peer.open(server)
            frame, chunk_id = good_chunk()
            await peer.exchange(b"\xc0\xc0" + frame, chunk_id)
            await peer.exchange(b"\xc0" + frame, chunk_id)
            assert server.stats.frames["heartbeat"] == 3
            assert not server.stats.protocol_errors
            await peer.close()
    run(scenario())


def test_a_non_array_object_closes_the_connection_and_is_counted_once():
    async def scenario():
        async with serving() as server:
            peer = await Peer.open(server)
            frame, chunk_id = good_chunk()
            await peer.exchange(frame, chunk_id)
            await peer.send(mp("stray string") + mp({"a": 1}) + frame)
            assert await peer.closed_by_server() == b""
            assert server.stats.protocol_errors == {"non_array": 1}
    run(scenario())


# --- acks and the handler -----------------------------------------------------------------

def test_refused_or_failed_chunk_is_not_acked_and_its_resend_is(caplog):
    async def scenario():
        recorder = Recorder()
        recorder.answers = [False, RuntimeError("downstream unreachable")]
        async with serving(recorder) as server:
            peer = await Peer.open(server)
            frame, chunk_id = good_chunk()
            await peer.send(frame)  # refused
            await peer.send(frame)  # handler raises
            await peer.exchange(frame, chunk_id)  # third copy: handed on, acked once
            other, other_id = good_chunk()
            await peer.exchange(other, other_id)  # the next ack is the next chunk's: no stray acks
            assert recorder.calls == 4 and server.stats.handler_failures == 2
            assert server.stats.acks_sent == 2
            await peer.close()
    with caplog.at_level(logging.WARNING):
        run(scenario())
    failures = [r for r in caplog.records if "downstream unreachable" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None and "\n" not in failures[0].getMessage()


def test_resend_of_an_acked_chunk_is_acked_again_without_the_handler():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            frame, chunk_id = good_chunk()
            first = await Peer.open(server)
            await first.exchange(frame, chunk_id)
            await first.close()
            retry = await Peer.open(server)  # Fluent Bit retries on a new connection with the same id
            await retry.exchange(frame, chunk_id)
            assert recorder.calls == 1 and server.stats.duplicate_chunks == 1
            await retry.close()
    run(scenario())


def test_dedup_window_forgets_beyond_its_size():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, dedup_chunks=2) as server:
            peer = await Peer.open(server)
            chunks = [good_chunk() for _ in range(3)]
            for frame, chunk_id in chunks:
                await peer.exchange(frame, chunk_id)
            await peer.exchange(*chunks[0])  # pushed out of the window: handed on again
            await peer.exchange(*chunks[2])  # still remembered
            assert recorder.calls == 4 and server.stats.duplicate_chunks == 1
            await peer.close()
    run(scenario())


def test_resend_while_the_first_copy_is_with_the_handler_waits_for_it():
    async def scenario():
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        async with serving(recorder) as server:
            frame, chunk_id = good_chunk()
            first, second = await Peer.open(server), await Peer.open(server)
            await first.send(frame)
            await until(lambda: recorder.calls == 1)
            await second.send(frame)
            await until(lambda: server.stats.frames[FORWARD] == 2)
            recorder.gate.set()
            assert await first.read_raw() == ack_bytes(chunk_id)
            assert await second.read_raw() == ack_bytes(chunk_id)
            assert recorder.calls == 1 and len(recorder.chunks) == 1 and server.stats.duplicate_chunks == 1
            await first.close()
            await second.close()
    run(scenario())


def test_a_stalled_handler_stops_reading_so_the_sender_is_held_back_by_tcp():
    async def scenario():
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        async with serving(recorder, max_inflight=2) as server:
            chunks = [good_chunk(count=1) for _ in range(400)]
            padding = [(fluentbit_forward("bulk", [fluentbit_entry(Time(1, 0), {"pad": "x" * 50_000, "i": i})],
                                          ack=True)) for i in range(400)]
            frames = [f for pair in zip(chunks, padding) for f in pair]
            total = sum(len(f) for f, _ in frames)
            peer = await Peer.open(server)

            async def write_all() -> None:
                for frame, _ in frames:
                    await peer.send(frame)

            writer = asyncio.create_task(write_all())
            await until(lambda: recorder.calls == 2)
            await asyncio.sleep(0.3)  # room for a broken server to read on; a correct one cannot
            assert recorder.calls == 2
            assert server.stats.bytes_received < total // 4
            assert not writer.done()
            recorder.gate.set()
            for _, chunk_id in frames:
                assert await peer.read_raw() == ack_bytes(chunk_id)
            await writer
            assert recorder.calls == 800 and server.stats.bytes_received == total
            await peer.close()
    run(scenario())


# --- handshake -----------------------------------------------------------------------------

def test_shared_key_handshake_as_fluent_bit_does_it():
    async def scenario():
        async with serving(shared_key="s3cret", self_hostname="relay-1") as server:
            peer = await Peer.open(server)
            helo = await peer.read()
            assert helo[0] == "HELO" and helo[1]["auth"] == "" and helo[1]["keepalive"] is True
            nonce = helo[1]["nonce"]
            assert isinstance(nonce, bytes) and len(nonce) == 16
            salt = bytes(range(200, 216))  # not UTF-8: Fluent Bit packs it as a str anyway
            await peer.send(fluentbit_ping("fb-host", salt, nonce, "s3cret"))
            pong = await peer.read()
            expected = hashlib.sha512(salt + b"relay-1" + nonce + b"s3cret").hexdigest()
            assert pong == ["PONG", True, "", "relay-1", expected]
            frame, chunk_id = good_chunk()
            await peer.exchange(frame, chunk_id)
            await peer.close()
    run(scenario())


def test_wrong_shared_key_gets_pong_false_and_is_disconnected():
    async def scenario():
        async with serving(shared_key="s3cret") as server:
            peer = await Peer.open(server)
            nonce = (await peer.read())[1]["nonce"]
            await peer.send(fluentbit_ping("intruder", os.urandom(16), nonce, "guess"))
            assert await peer.read() == ["PONG", False, "shared_key mismatch", "", ""]
            assert await peer.closed_by_server() == b""
            assert server.stats.protocol_errors["auth"] == 1
    run(scenario())


def test_data_before_the_handshake_is_refused():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, shared_key="s3cret") as server:
            peer = await Peer.open(server)
            await peer.read()  # HELO
            frame, _ = good_chunk()
            await peer.send(frame)
            assert (await peer.read())[:3] == ["PONG", False, "invalid ping message"]
            await peer.closed_by_server()
            assert recorder.calls == 0
    run(scenario())


def test_a_client_that_never_answers_helo_is_timed_out():
    async def scenario():
        async with serving(shared_key="s3cret", handshake_timeout=0.2) as server:
            peer = await Peer.open(server)
            assert (await peer.read())[0] == "HELO"
            assert await peer.closed_by_server() == b""
            assert server.stats.protocol_errors["handshake_timeout"] == 1
    run(scenario())


# --- transports ----------------------------------------------------------------------------

def make_certificate(directory: Any) -> tuple:
    """A self-signed certificate for localhost / 127.0.0.1, made now for this test run."""
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("making a test certificate needs the 'cryptography' package or the openssl command")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = private.public_key()
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(private, hashes.SHA256())
    )
    with open(cert, "wb") as out:
        out.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key, "wb") as out:
        out.write(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    return cert, key


def test_tls_connection_with_handshake_is_acked_and_a_plaintext_peer_does_not_disturb_it(tmp_path, caplog):
    cert, key = make_certificate(tmp_path)

    async def scenario():
        async with serving(tls_cert=cert, tls_key=key, shared_key="k", self_hostname="relay") as server:
            client_context = ssl.create_default_context(cafile=cert)
            peer = await Peer.open(server, ssl=client_context, server_hostname="localhost")
            plaintext = await Peer.open(server)
            await plaintext.send(mp(["t", [[1, {}]]]))
            assert await plaintext.closed_by_server() == b""
            nonce = (await peer.read())[1]["nonce"]
            await peer.send(fluentbit_ping("fb", b"0123456789abcdef", nonce, "k"))
            assert (await peer.read())[1] is True
            frame, chunk_id = good_chunk()
            await peer.exchange(frame, chunk_id)
            assert peer.writer.get_extra_info("ssl_object").version().startswith("TLS")
            await peer.close()
            assert server.stats.protocol_errors == {"tls_handshake": 1}
    with caplog.at_level(logging.DEBUG):
        run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "127.0.0.1:" in warnings[0] and "TLS handshake failed" in warnings[0]


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_loopback_available(), reason="this host has no IPv6 loopback (::1)")
def test_ipv6_listener_alongside_ipv4():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, listen=[("::1", 0), ("127.0.0.1", 0)]) as server:
            (v6_host, v6_port), (v4_host, v4_port) = server.addresses
            assert v6_host == "::1" and v4_host == "127.0.0.1"
            for host, port in server.addresses:
                peer = await Peer.open(host=host, port=port)
                await peer.exchange(*good_chunk())
                await peer.close()
            assert recorder.chunks[0].peer.startswith("[::1]:") and recorder.chunks[1].peer.startswith("127.0.0.1:")
    run(scenario())


def test_unix_socket_with_acks(tmp_path):
    async def scenario():
        path = str(tmp_path / "relay.sock")
        async with serving(listen=["unix://" + path]) as server:
            peer = await Peer.open(path=path)
            await peer.exchange(*good_chunk())
            assert server.stats.acks_sent == 1
            await peer.close()
    run(scenario())


def test_udp_heartbeat_on_the_same_port_is_echoed():
    async def scenario():
        async with serving() as server:
            loop = asyncio.get_running_loop()
            answered: asyncio.Future = loop.create_future()

            class Probe(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    if not answered.done():
                        answered.set_result(data)

            transport, _ = await loop.create_datagram_endpoint(Probe, remote_addr=("127.0.0.1", server.port))
            transport.sendto(b"\x00")
            assert await answered == b"\x00"
            transport.close()
            assert server.stats.frames["udp_heartbeat"] == 1
    run(scenario())


# --- limits and hostile peers: only the offender is cut off --------------------------------

async def limited_offense(offense: Any, expected_kind: str, **options: Any) -> RelayStats:
    """A good peer sends before and after `offense(server)`; the offender must be cut off alone."""
    recorder = Recorder()
    async with serving(recorder, **options) as server:
        good = await Peer.open(server)
        await good.exchange(*good_chunk())
        await offense(server, good)
        await good.exchange(*good_chunk())
        assert len(recorder.chunks) == 2 and all(c.tag == "good" for c in recorder.chunks)
        assert server.stats.protocol_errors[expected_kind] == 1
        assert server.stats.connections_active == 1
        await good.close()
        return server.stats


def test_oversize_frame_disconnects_only_its_sender():
    async def offense(server: ForwardServer, good: Peer) -> None:
        bad = await Peer.open(server)
        await bad.send(fluentbit_forward("big", [fluentbit_entry(Time(1, 0), {"blob": "x" * 200_000})], ack=True)[0])
        assert await bad.closed_by_server() == b""
    run(limited_offense(offense, "oversize", max_frame_size=64 << 10))


def test_declared_huge_string_disconnects_before_the_data_arrives():
    async def offense(server: ForwardServer, good: Peer) -> None:
        bad = await Peer.open(server)
        await bad.send(b"\x93\xa3tag\xdb\x7f\xff\xff\xff" + b"\x00" * (128 << 10))
        await bad.closed_by_server()
    stats = run(limited_offense(offense, "oversize", max_frame_size=64 << 10))
    assert stats.bytes_received < 1 << 20


def test_gzip_bomb_disconnects_only_its_sender():
    async def offense(server: ForwardServer, good: Peer) -> None:
        bad = await Peer.open(server)
        bomb = gzip.compress(b"\x00" * (32 << 20), 9)
        await bad.send(fluentd_packed_forward("bomb", bomb, size=1, chunk_id=fluentd_chunk_id(), compressed="gzip"))
        assert await bad.closed_by_server() == b""
    run(limited_offense(offense, "decompress_limit", max_decompressed_size=1 << 20))


def test_zstd_chunk_without_zstandard_is_a_counted_protocol_error(monkeypatch):
    from atnorm.forward import codec as forward_codec
    monkeypatch.setattr(forward_codec, "zstandard", None)

    async def offense(server: ForwardServer, good: Peer) -> None:
        bad = await Peer.open(server)
        await bad.send(mp(["z", b"\x28\xb5\x2f\xfd\x00", {"compressed": "zstd", "chunk": "zid"}]))
        assert await bad.closed_by_server() == b""
    run(limited_offense(offense, "unsupported_compression"))


def test_idle_connection_is_closed_but_a_peer_waiting_for_its_ack_is_not():
    async def scenario():
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        async with serving(recorder, idle_timeout=0.2) as server:
            waiting = await Peer.open(server)
            frame, chunk_id = good_chunk()
            await waiting.send(frame)
            await until(lambda: recorder.calls == 1)  # its chunk is with the handler from now on
            idle = await Peer.open(server)
            assert await idle.closed_by_server() == b""
            await asyncio.sleep(0.5)  # more idle timeouts pass while the handler holds the chunk
            recorder.gate.set()
            assert await waiting.read_raw() == ack_bytes(chunk_id)
            assert server.stats.protocol_errors["idle_timeout"] == 1
            await waiting.close()
    run(scenario())


def test_connections_over_the_limit_are_refused_and_the_others_served():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder, max_connections=2) as server:
            first, second = await Peer.open(server), await Peer.open(server)
            await until(lambda: server.stats.connections_active == 2)
            third = await Peer.open(server)
            assert await third.closed_by_server() == b""
            assert server.stats.connections_rejected == 1
            await first.exchange(*good_chunk())
            await second.exchange(*good_chunk())
            await first.close()
            await until(lambda: server.stats.connections_active == 1)
            fourth = await Peer.open(server)  # a slot is free again
            await fourth.exchange(*good_chunk())
            assert len(recorder.chunks) == 3
            await second.close()
            await fourth.close()
    run(scenario())


def test_garbage_spewing_and_byte_at_a_time_peers_do_not_hurt_a_good_one(caplog):
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            good = await Peer.open(server)
            noise = random.Random(7)

            async def garbage() -> None:
                for _ in range(20):
                    bad = await Peer.open(server)
                    with contextlib.suppress(ConnectionError):
                        await bad.send(bytes([0xc1]) + bytes(noise.getrandbits(8) for _ in range(4096)))
                        await bad.closed_by_server()
                    await bad.close()

            slow_frame, slow_id = good_chunk(tag="slow")

            async def slow() -> None:
                peer = await Peer.open(server)
                for i in range(len(slow_frame)):
                    await peer.send(slow_frame[i:i + 1])
                    await asyncio.sleep(0)
                assert await peer.read_raw() == ack_bytes(slow_id)
                await peer.close()

            async def well_behaved() -> None:
                for _ in range(50):
                    await good.exchange(*good_chunk())

            await asyncio.gather(garbage(), slow(), well_behaved())
            assert sorted(c.tag for c in recorder.chunks) == ["good"] * 50 + ["slow"]
            assert server.stats.protocol_errors["malformed"] == 20
            await good.close()
    with caplog.at_level(logging.DEBUG):
        run(scenario())
    ours = [r for r in caplog.records if r.name.startswith("atnorm")]
    assert ours and all(r.exc_info is None and "\n" not in r.getMessage() for r in ours)
    assert len([r for r in ours if r.levelno >= logging.WARNING]) < 20  # throttled, not one per peer
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.WARNING]


def test_truncated_frame_at_disconnect_is_counted():
    async def scenario():
        recorder = Recorder()
        async with serving(recorder) as server:
            peer = await Peer.open(server)
            frame, _ = good_chunk()
            await peer.send(frame[:-5])
            await peer.close()
            await until(lambda: server.stats.connections_active == 0)
            assert server.stats.protocol_errors["truncated"] == 1 and recorder.calls == 0
    run(scenario())


def test_stop_lets_a_chunk_with_the_handler_finish_and_be_acked():
    async def scenario():
        recorder = Recorder()
        recorder.gate = asyncio.Event()
        server = forward_server(recorder, listen=[("127.0.0.1", 0)], stats=RelayStats())
        await server.start()
        peer = await Peer.open(server)
        frame, chunk_id = good_chunk()
        await peer.send(frame)
        await until(lambda: recorder.calls == 1)
        stopping = asyncio.create_task(server.stop(grace=5))
        await asyncio.sleep(0.05)
        recorder.gate.set()
        assert await peer.read_raw() == ack_bytes(chunk_id)
        assert await peer.closed_by_server() == b""
        await stopping
        with pytest.raises(OSError):
            await Peer.open(port=server.port)
    run(scenario())
