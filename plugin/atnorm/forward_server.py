"""Forward-protocol server: takes chunks from Fluentd / Fluent Bit and acks them once handed on.

Each connection (TCP, TLS or unix socket) may first prove a shared key, then sends msgpack
frames; every frame becomes a `Chunk` passed to `handler(chunk)`. The ack
`{"ack": <chunk id>}` goes back only when the handler returns True, i.e. when every record
is acked downstream or durably spooled: that is the at-least-once point. A connection's
frames are taken in order and at most `max_inflight` of its chunks wait on the handler at
once; beyond that the connection is not read, so a stalled downstream slows senders
through TCP instead of filling memory. A peer that breaks the protocol or a limit is
disconnected and counted; no other connection notices.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
import time
from collections import Counter, OrderedDict
from typing import Any, Awaitable, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from .forward_codec import (
    Chunk,
    FrameReader,
    ProtocolError,
    ack_frame,
    check_ping,
    helo_frame,
    parse_frame,
    pong_frame,
)
from .relaystats import RelayStats

ListenAddress = Union[Tuple[str, int], str]  # ("host", port) or "unix:///path"
Handler = Callable[[Chunk], Awaitable[bool]]

READ_SIZE = 1 << 16
HEARTBEAT = "heartbeat"
UDP_HEARTBEAT = "udp_heartbeat"

log = logging.getLogger("atnorm.forward")


class _LogThrottle:
    """At most one warning per kind per interval, so a storm of bad peers cannot flood the log."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next: Dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def warning(self, kind: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] += 1
            return
        self._next[kind] = now + self.interval
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += " (and %d more like it)"
            args += (suppressed,)
        log.warning(message, *args)


class DedupWindow:
    """Keys of recently acked chunks, forgotten after `max_age` seconds or beyond `max_count`."""

    def __init__(self, max_count: int, max_age: float) -> None:
        self.max_count = max_count
        self.max_age = max_age
        self._seen: "OrderedDict[Hashable, float]" = OrderedDict()

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            key, added = next(iter(seen.items()))
            if now - added <= self.max_age:
                break
            del seen[key]

    def __contains__(self, key: Hashable) -> bool:
        self._expire(time.monotonic())
        return key in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, key: Hashable) -> None:
        if self.max_count <= 0:
            return
        self._seen[key] = time.monotonic()
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_count:
            self._seen.popitem(last=False)


def _dedup_key(chunk: Chunk) -> Optional[Hashable]:
    """(tag, chunk id, content digest): a chunk is a resend only if all three match. An id
    alone would drop real records: Fluent Bit's Message mode sends the same id every time.
    None (ack, but don't remember) without an id or with one that is a map or an array."""
    return chunk.resend_key


def _peer_name(writer: asyncio.StreamWriter) -> str:
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), peer[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    where = writer.get_extra_info("sockname")
    return f"unix:{where}" if where else "unix"


def _unix_path(address: ListenAddress) -> Optional[str]:
    text = address if isinstance(address, str) else address[0]
    if text.startswith("unix://"):
        return text[len("unix://"):]
    if isinstance(address, str):
        raise ValueError(f"listen address {address!r}: expected (host, port) or 'unix:///path'")
    return None


def _clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous run; refuse to touch a live one or a non-socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise OSError(f"cannot listen on unix://{path}: the path exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise OSError(f"cannot listen on unix://{path}: another process is listening there")
    finally:
        probe.close()


class _HeartbeatEcho(asyncio.DatagramProtocol):
    """UDP on the forward port: answer each datagram with one 0x00 byte (never more than asked)."""

    def __init__(self, stats: RelayStats) -> None:
        self.stats = stats
        self.transport: Optional[asyncio.DatagramTransport] = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.stats.frames[UDP_HEARTBEAT] += 1
        if self.transport is not None and data:
            self.transport.sendto(b"\x00", addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable from a gone peer
        pass


class ForwardServer:
    """Accepts forward-protocol connections and passes each chunk to `handler`.

    `handler(chunk)` returns True once all of the chunk's records are safely handed on;
    only then is the chunk acked. False or an exception means "not now": no ack, the
    sender resends, the connection stays open. Chunks of one connection are handed to
    the handler in arrival order, at most `max_inflight` at a time. A resend (same tag,
    chunk id and content, see `Chunk.resend_key`) of a chunk acked within the dedup window
    (`dedup_chunks` chunks, `dedup_seconds` old) is acked again without calling the
    handler; a resend that arrives while the first copy is still with the handler waits
    for that outcome instead of handing the records on twice. Another chunk under the same
    id is handed on like any other.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        listen: Sequence[ListenAddress] = (("127.0.0.1", 24224),),
        tls_cert: Optional[str] = None,
        tls_key: Optional[str] = None,
        shared_key: Optional[str] = None,
        users: Optional[Mapping[str, str]] = None,
        self_hostname: Optional[str] = None,
        max_frame_size: int = 16 << 20,
        max_decompressed_size: int = 64 << 20,
        idle_timeout: float = 120.0,
        handshake_timeout: float = 10.0,
        max_connections: int = 256,
        max_inflight: int = 4,
        dedup_chunks: int = 65536,
        dedup_seconds: float = 900.0,
        udp_heartbeat: bool = True,
        stats: Optional[RelayStats] = None,
    ) -> None:
        if tls_key and not tls_cert:
            raise ValueError("tls_key given without tls_cert")
        if users and shared_key is None:
            raise ValueError("user authentication needs a shared_key too")
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        for address in listen:
            _unix_path(address)  # reject a malformed address before anything is bound
        self.handler = handler
        self.listen = list(listen)
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.shared_key = shared_key
        self.users = dict(users) if users else None
        self.self_hostname = self_hostname or socket.gethostname()
        self.max_frame_size = max_frame_size
        self.max_decompressed_size = max_decompressed_size
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.max_connections = max_connections
        self.max_inflight = max_inflight
        self.udp_heartbeat = udp_heartbeat
        self.stats = stats if stats is not None else RelayStats()
        self._acked = DedupWindow(dedup_chunks, dedup_seconds)
        self._running: Dict[Hashable, "asyncio.Future[bool]"] = {}
        self._servers: List[asyncio.AbstractServer] = []
        self._udp: List[asyncio.BaseTransport] = []
        self._unix_paths: List[str] = []
        self._addresses: List[ListenAddress] = []
        self._connections: Set["_Connection"] = set()
        self._stopping = False
        self._throttle = _LogThrottle()

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def addresses(self) -> List[ListenAddress]:
        """Where the server listens: bound (host, port) pairs and 'unix:///path' strings."""
        return list(self._addresses)

    @property
    def port(self) -> int:
        """The first bound TCP port (useful when listening on port 0)."""
        for address in self._addresses:
            if isinstance(address, tuple):
                return address[1]
        raise RuntimeError("not listening on TCP")

    def _ssl_context(self) -> Optional[ssl.SSLContext]:
        if not self.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot load TLS certificate {self.tls_cert!r} / key {self.tls_key!r}: {exc}") from None
        return context

    async def start(self) -> None:
        """Bind every listen address (and the UDP heartbeat beside each TCP one).

        Port 0 picks a free port per bound socket, so give a literal address with it
        ("127.0.0.1", not "localhost", which may bind two sockets on two ports)."""
        loop = asyncio.get_running_loop()
        context = self._ssl_context()
        tls: Dict[str, Any] = {"ssl": context, "ssl_handshake_timeout": self.handshake_timeout} if context else {}
        try:
            for address in self.listen:
                path = _unix_path(address)
                if path is not None:
                    _clear_stale_socket(path)
                    server = await asyncio.start_unix_server(self._accept, path, limit=READ_SIZE, **tls)
                    self._servers.append(server)
                    self._unix_paths.append(path)
                    self._addresses.append("unix://" + path)
                    continue
                host, port = str(address[0]), int(address[1])
                try:
                    server = await asyncio.start_server(self._accept, host, port, limit=READ_SIZE,
                                                        reuse_address=True, **tls)
                except OSError as exc:
                    raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
                self._servers.append(server)
                for sock in server.sockets:
                    bound = sock.getsockname()
                    self._addresses.append((bound[0], bound[1]))
                    if self.udp_heartbeat:
                        transport, _ = await loop.create_datagram_endpoint(
                            lambda: _HeartbeatEcho(self.stats), local_addr=(bound[0], bound[1]))
                        self._udp.append(transport)
        except BaseException:
            await self.stop(grace=0)
            raise

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting and reading; give chunks already taken `grace` seconds to be
        handed on and acked, then close every connection."""
        self._stopping = True
        for server in self._servers:
            server.close()
        for transport in self._udp:
            transport.close()
        connections = list(self._connections)
        for connection in connections:
            connection.stop_reading()
        tasks = [c.task for c in connections if c.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace) if grace > 0 else (set(), set(tasks))
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for server in self._servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 1.0)
            except (asyncio.TimeoutError, OSError):
                pass
        for path in self._unix_paths:
            try:
                os.unlink(path)
            except OSError:
                pass
        self._servers, self._udp, self._unix_paths = [], [], []

    async def __aenter__(self) -> "ForwardServer":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.stop()

    # --- connections -----------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        if self._stopping or len(self._connections) >= self.max_connections:
            self.stats.connections_rejected += 1
            self._throttle.warning("max_connections", "refused connection from %s: %d connections open "
                                   "(max_connections)", peer, len(self._connections))
            writer.transport.abort()
            return
        connection = _Connection(self, reader, writer, peer)
        connection.task = asyncio.current_task()
        self._connections.add(connection)
        self.stats.connections_opened += 1
        self.stats.connections_active += 1
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            self.stats.connections_active -= 1

    def _protocol_error(self, kind: str, peer: str, detail: str) -> None:
        self.stats.protocol_errors[kind] += 1
        self._throttle.warning(kind, "closed connection from %s: %s", peer, detail)

    # --- handing chunks on -----------------------------------------------------------------

    async def _deliver(self, chunk: Chunk) -> bool:
        """Hand a chunk on once: True when it may be acked. Never raises (except on cancel)."""
        if not chunk.entries:
            return True
        key = _dedup_key(chunk)
        if key is None:
            return await self._hand_on(chunk)
        while True:
            if key in self._acked:
                self.stats.duplicate_chunks += 1
                return True
            running = self._running.get(key)
            if running is None:
                break
            # The same chunk is with the handler via another connection: take its outcome.
            if await asyncio.shield(running):
                self.stats.duplicate_chunks += 1
                return True
        future: "asyncio.Future[bool]" = asyncio.get_running_loop().create_future()
        self._running[key] = future
        delivered = False
        try:
            delivered = await self._hand_on(chunk)
        finally:
            del self._running[key]
            future.set_result(delivered)
            if delivered:
                self._acked.add(key)
        return delivered

    async def _hand_on(self, chunk: Chunk) -> bool:
        try:
            delivered = bool(await self.handler(chunk))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.stats.handler_failures += 1
            self._throttle.warning("handler", "could not hand on %d records of tag %s from %s, left unacked "
                                   "for a resend: %s: %s", len(chunk.entries), chunk.tag, chunk.peer,
                                   type(exc).__name__, exc)
            return False
        if not delivered:
            self.stats.handler_failures += 1
        return delivered


class _Connection:
    """One peer: a read side (handshake, frames → handler tasks) and an ack side (in order)."""

    def __init__(self, server: ForwardServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: str) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.task: Optional["asyncio.Task[Any]"] = None
        self._frames = FrameReader(server.max_frame_size, READ_SIZE, keep_frames=True)
        self._slots = asyncio.Semaphore(server.max_inflight)
        self._pending: "asyncio.Queue[Tuple[Chunk, asyncio.Task[bool]]]" = asyncio.Queue()
        self._handler_tasks: Set["asyncio.Task[bool]"] = set()
        self._inflight = 0
        self._read_task: Optional["asyncio.Task[None]"] = None
        self._stop_reading = False

    def stop_reading(self) -> None:
        self._stop_reading = True
        if self._read_task is not None:
            self._read_task.cancel()

    async def run(self) -> None:
        ack_task = asyncio.create_task(self._send_acks())
        self._read_task = asyncio.create_task(self._read_side())
        if self._stop_reading:
            self._read_task.cancel()
        try:
            await asyncio.wait({self._read_task})
            # Chunks already taken are still handed on (and acked while the peer listens).
            await self._pending.join()
        finally:
            self._read_task.cancel()
            ack_task.cancel()
            for task in self._handler_tasks:
                task.cancel()
            await self._close()

    async def _close(self) -> None:
        writer = self.writer
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (asyncio.TimeoutError, OSError, asyncio.CancelledError):
            writer.transport.abort()

    # --- read side -------------------------------------------------------------------------

    async def _read_side(self) -> None:
        server = self.server
        try:
            if server.shared_key is not None:
                await self._handshake()
            await self._read_frames()
        except ProtocolError as exc:
            server._protocol_error(exc.kind, self.peer, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the peer went away; nothing of ours is lost
        except OSError as exc:
            log.debug("connection from %s failed: %s", self.peer, exc)
        except Exception as exc:  # a bug here must cost one connection, not the server
            server.stats.protocol_errors["internal"] += 1
            log.error("closed connection from %s after an internal error: %s: %s", self.peer,
                      type(exc).__name__, exc)

    async def _read(self) -> bytes:
        server = self.server
        while True:
            try:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), server.idle_timeout)
            except asyncio.TimeoutError:
                if self._inflight:
                    continue  # the peer is waiting for our ack, not idle
                raise ProtocolError("idle_timeout", f"nothing received for {server.idle_timeout:g} s") from None
            server.stats.bytes_received += len(data)
            return data

    async def _read_frames(self) -> None:
        frames = self._frames
        while True:
            for frame in frames:
                await self._dispatch(frame)
            data = await self._read()
            if not data:
                if frames.buffered:
                    raise ProtocolError("truncated", f"connection closed inside a frame ({frames.buffered} bytes)")
                return
            frames.feed(data)

    async def _dispatch(self, frame: Any) -> None:
        server = self.server
        stats = server.stats
        if frame is None:
            stats.frames[HEARTBEAT] += 1
            return
        if type(frame) is not list:
            stats.protocol_errors["non_array"] += 1  # ignored, as the spec says
            return
        chunk = parse_frame(frame, max_decompressed_size=server.max_decompressed_size, peer=self.peer,
                            raw=self._frames.last_frame)
        stats.frames[chunk.mode] += 1
        stats.records_received += len(chunk.entries)
        if chunk.invalid:
            server._throttle.warning("invalid_event", "%d entries without a usable time or shape in a chunk of "
                                     "tag %s from %s: they go to the rejected route", chunk.invalid, chunk.tag,
                                     self.peer)
        await self._slots.acquire()  # backpressure: no more reading while the handler is behind
        self._inflight += 1
        task = asyncio.create_task(server._deliver(chunk))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)
        self._pending.put_nowait((chunk, task))

    async def _handshake(self) -> None:
        server = self.server
        nonce = os.urandom(16)
        auth_salt = os.urandom(16) if server.users else b""
        try:
            await asyncio.wait_for(self._authenticate(nonce, auth_salt), server.handshake_timeout)
        except asyncio.TimeoutError:
            raise ProtocolError("handshake_timeout",
                                f"no PING within {server.handshake_timeout:g} s of HELO") from None

    async def _authenticate(self, nonce: bytes, auth_salt: bytes) -> None:
        server = self.server
        assert server.shared_key is not None
        self.writer.write(helo_frame(nonce, auth_salt if server.users else "", keepalive=True))
        await self.writer.drain()
        message = await self._first_message()
        result = check_ping(message, nonce=nonce, shared_key=server.shared_key, auth_salt=auth_salt,
                            users=server.users)
        if not result.ok:
            self.writer.write(pong_frame(False, reason=result.reason))
            await self.writer.drain()
            raise ProtocolError("auth", f"handshake failed: {result.reason}"
                                + (f" (client hostname {result.client_hostname!r})" if result.client_hostname else ""))
        self.writer.write(pong_frame(True, server_hostname=server.self_hostname,
                                     shared_key_salt=result.shared_key_salt, nonce=nonce,
                                     shared_key=server.shared_key))
        await self.writer.drain()

    async def _first_message(self) -> Any:
        while True:
            for message in self._frames:
                return message
            data = await self.reader.read(READ_SIZE)
            if not data:
                raise ConnectionResetError("closed during the handshake")
            self.server.stats.bytes_received += len(data)
            self._frames.feed(data)

    # --- ack side --------------------------------------------------------------------------

    async def _send_acks(self) -> None:
        stats = self.server.stats
        writer = self.writer
        while True:
            chunk, task = await self._pending.get()
            try:
                delivered = await task
                if delivered and chunk.chunk_id is not None and not writer.is_closing():
                    writer.write(ack_frame(chunk.chunk_id))
                    await writer.drain()
                    stats.acks_sent += 1
            except (ConnectionError, OSError):
                pass  # the peer left; it will resend and the dedup window answers
            finally:
                self._inflight -= 1
                self._slots.release()
                self._pending.task_done()
