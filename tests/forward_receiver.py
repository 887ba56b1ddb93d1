"""A small real forward-protocol receiver for tests (asyncio TCP on loopback).

It decodes Message, Forward, PackedForward and CompressedPackedForward with msgpack,
records every frame, answers `{"ack": chunk}`, and can be told to misbehave: stop acking,
drop the connection instead of acking the next chunks, or be down (not listening) and come
back on the same port. With `shared_key` it runs the server side of the handshake; with
`ssl` it speaks TLS.

Use `ForwardReceiver` inside an asyncio test, or `ReceiverThread` from plain code (its
receiver runs on a private event loop in a daemon thread).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import ssl as ssl_module
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

import msgpack


class EventTime(NamedTuple):
    seconds: int
    nanoseconds: int


def _ext_hook(code: int, data: bytes) -> Any:
    if code == 0 and len(data) == 8:
        return EventTime(*struct.unpack(">II", data))
    return msgpack.ExtType(code, data)


def _unpacker() -> msgpack.Unpacker:
    # surrogateescape keeps str-typed binary (Fluentd writes payloads as str) recoverable.
    return msgpack.Unpacker(raw=False, ext_hook=_ext_hook, unicode_errors="surrogateescape",
                            strict_map_key=False)


def _as_bytes(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return bytes(value or b"")


def _sha512_hex(*parts: bytes) -> str:
    digest = hashlib.sha512()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


@dataclass
class ReceivedFrame:
    """One decoded message: mode, tag, entries as (time, record), options, ack outcome."""

    connection: int
    mode: str
    tag: str
    entries: List[Tuple[Any, Any]]
    options: Dict[str, Any] = field(default_factory=dict)
    acked: bool = False
    payload: Optional[bytes] = None  # a (Compressed)PackedForward payload as received, decompressed

    @property
    def chunk(self) -> Optional[str]:
        return self.options.get("chunk")


class ForwardReceiver:
    """Loopback forward server with switches for the failures a sender must survive."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, shared_key: Optional[str] = None,
                 hostname: str = "receiver.test", ssl: Optional[ssl_module.SSLContext] = None,
                 ack: bool = True, check_ping: bool = True) -> None:
        self.host = host
        self.port = port
        self.shared_key = shared_key
        self.hostname = hostname
        self.ssl = ssl
        self.check_ping = check_ping  # False: accept any PING (a server without the key)
        self.ack = ack  # False: read and record chunks but never answer
        self.drop_before_ack = 0  # close the connection instead of acking the next N chunks
        self.frames: List[ReceivedFrame] = []
        self.connections = 0
        self.auth_failures = 0
        self.errors: List[str] = []
        self._server: Optional[asyncio.AbstractServer] = None
        self._writers: Set[asyncio.StreamWriter] = set()
        self._changed: Optional[asyncio.Event] = None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> "ForwardReceiver":
        """Listen; the first start picks a free port when `port` is 0."""
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.ssl,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def go_down(self) -> None:
        """Stop listening and cut every open connection (the port then refuses connects)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def come_up(self) -> None:
        """Listen again on the same port."""
        await self.start()

    async def stop(self) -> None:
        await self.go_down()

    async def __aenter__(self) -> "ForwardReceiver":
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- what arrived ------------------------------------------------------------

    @property
    def chunk_ids(self) -> List[str]:
        """Every chunk id received, in arrival order, duplicates included."""
        return [f.chunk for f in self.frames if f.chunk is not None]

    @property
    def events(self) -> List[Tuple[str, Any, Any]]:
        """(tag, time, record) of every frame that was acked or needed no ack."""
        return [(f.tag, t, r) for f in self.frames if f.acked or f.chunk is None
                for t, r in f.entries]

    @property
    def records(self) -> List[Any]:
        return [record for _, _, record in self.events]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until `predicate()` holds (checked after every frame or connection)."""
        assert self._changed is not None, "receiver not started"
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("receiver did not reach the expected state in time")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
            except asyncio.TimeoutError:
                pass

    # -- protocol ----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        connection = self.connections
        self._writers.add(writer)
        self._notify()
        unpacker = _unpacker()
        try:
            if self.shared_key is not None and not await self._handshake(reader, writer, unpacker):
                return
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    return
                unpacker.feed(data)
                for message in unpacker:
                    if not await self._handle(connection, message, writer):
                        return
        except (ConnectionError, ssl_module.SSLError, asyncio.IncompleteReadError) as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # garbage from a peer is recorded, never raised
            self.errors.append(f"malformed: {type(exc).__name__}: {exc}")
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._notify()

    async def _read_one(self, reader: asyncio.StreamReader, unpacker: msgpack.Unpacker) -> Any:
        while True:
            try:
                return next(unpacker)
            except StopIteration:
                pass
            data = await reader.read(1 << 16)
            if not data:
                raise ConnectionResetError("client closed during handshake")
            unpacker.feed(data)

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         unpacker: msgpack.Unpacker) -> bool:
        key = _as_bytes(self.shared_key)
        nonce = os.urandom(16)
        writer.write(msgpack.packb(["HELO", {"nonce": nonce, "auth": "", "keepalive": True}],
                                   use_bin_type=True))
        ping = await self._read_one(reader, unpacker)
        if not (isinstance(ping, list) and len(ping) == 6 and ping[0] == "PING"):
            self.auth_failures += 1
            self.errors.append(f"bad PING: {ping!r}")
            return False
        client_host, salt, digest = _as_bytes(ping[1]), _as_bytes(ping[2]), ping[3]
        if self.check_ping and digest != _sha512_hex(salt, client_host, nonce, key):
            self.auth_failures += 1
            writer.write(msgpack.packb(["PONG", False, "shared_key mismatch", "", ""]))
            await writer.drain()
            return False
        server_digest = _sha512_hex(salt, self.hostname.encode(), nonce, key)
        writer.write(msgpack.packb(["PONG", True, "", self.hostname, server_digest]))
        await writer.drain()
        return True

    async def _handle(self, connection: int, message: Any, writer: asyncio.StreamWriter) -> bool:
        """Record one message; False when the connection is to be dropped."""
        if message is None or not isinstance(message, list) or len(message) < 2:
            return True  # heartbeat or junk: ignored, as the spec says
        frame = self._decode(connection, message)
        self.frames.append(frame)
        self._notify()
        chunk = frame.chunk
        if chunk is None:
            return True
        if self.drop_before_ack > 0:
            self.drop_before_ack -= 1
            return False
        if self.ack:
            writer.write(msgpack.packb({"ack": chunk}))
            await writer.drain()
            frame.acked = True
            self._notify()
        return True

    @staticmethod
    def _decode(connection: int, message: list) -> ReceivedFrame:
        tag, body = message[0], message[1]
        if isinstance(body, list):
            options = message[2] if len(message) > 2 and isinstance(message[2], dict) else {}
            return ReceivedFrame(connection, "forward", tag, [(e[0], e[1]) for e in body], options)
        if isinstance(body, (bytes, str)):
            options = message[2] if len(message) > 2 and isinstance(message[2], dict) else {}
            payload = _as_bytes(body)
            mode = "packed_forward"
            if options.get("compressed") == "gzip":
                payload = gzip.decompress(payload)  # handles several members back to back
                mode = "compressed_packed_forward"
            unpacker = _unpacker()
            unpacker.feed(payload)
            return ReceivedFrame(connection, mode, tag, [(e[0], e[1]) for e in unpacker], options, payload=payload)
        options = message[3] if len(message) > 3 and isinstance(message[3], dict) else {}
        return ReceivedFrame(connection, "message", tag, [(body, message[2])], options)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()


class ReceiverThread:
    """A `ForwardReceiver` on its own event loop in a daemon thread, for synchronous tests.

    `receiver` is the live object (read its lists; set `ack`/`drop_before_ack`);
    `call(lambda r: r.go_down())` runs one of its coroutines on the receiver's loop.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.receiver = ForwardReceiver(**kwargs)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name="forward-receiver")

    @property
    def port(self) -> int:
        return self.receiver.port

    def start(self) -> "ReceiverThread":
        self._thread.start()
        self.call(lambda r: r.start())
        return self

    def call(self, action: Callable[[ForwardReceiver], Awaitable[Any]], timeout: float = 10.0) -> Any:
        future = asyncio.run_coroutine_threadsafe(self._run(action), self._loop)
        return future.result(timeout)

    async def _run(self, action: Callable[[ForwardReceiver], Awaitable[Any]]) -> Any:
        return await action(self.receiver)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        self.call(lambda r: r.wait_for(predicate, timeout), timeout + 1.0)

    def stop(self) -> None:
        try:
            self.call(lambda r: r.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5.0)
            self._loop.close()

    def __enter__(self) -> "ReceiverThread":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
