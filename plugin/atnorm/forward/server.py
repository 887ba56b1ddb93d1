"""Forward-protocol server: takes chunks from Fluentd / Fluent Bit and acks them once handed on.

Each connection (TCP, TLS or unix socket) may first prove a shared key, then sends msgpack
frames; every frame becomes a `Chunk` passed to `handler(chunk)`. The ack
`{"ack": <chunk id>}` goes back only when the handler returns True, i.e. when every record
is acked downstream or durably spooled: that is the at-least-once point. A connection's
frames are taken in order and at most `max_inflight` of its chunks wait on the handler at
once; beyond that the connection is not read, so a stalled downstream slows senders
through TCP instead of filling memory. A peer that breaks the protocol or a limit is
disconnected and counted; no other connection notices.

Hostile or careless peers cannot crowd out good ones: input that is not a forward message
(HTTP, text) closes its connection at once; connections are limited per peer host, and a
newcomer from a less busy host displaces the busiest host's most idle connection rather
than being refused; a connection must complete a forward message within `idle_timeout`
(heartbeats and trickled bytes do not count); every byte buffered from peers, compressed
payloads being inflated (in a thread, step by step) included, comes out of one memory
budget, and reading pauses while it is spent. Log lines are throttled per (cause, peer).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
import time
import zlib
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Set, Tuple, Union

from ..config.options import host_port_text
from ..monitoring.relaystats import RelayStats
from .codec import (
    COMPRESSED_PACKED_FORWARD,
    Chunk,
    FrameReader,
    ProtocolError,
    ack_frame,
    as_bytes,
    check_ping,
    helo_frame,
    inflate_zstd,
    parse_frame,
    pong_frame,
)

ListenAddress = Union[Tuple[str, int], str]  # ("host", port) or "unix:///path"
Handler = Callable[[Chunk], Awaitable[bool]]

READ_SIZE = 1 << 16
# When every host has as few connections as a newcomer's, only a connection idle this long is displaced.
EVICT_IDLE_AFTER = 1.0
MIN_INPUT_MEMORY = 4 * READ_SIZE  # each connection reserves one read before it reads
HEARTBEAT = "heartbeat"
UDP_HEARTBEAT = "udp_heartbeat"

log = logging.getLogger("atnorm.forward")


class LogThrottle:
    """At most one warning per (cause, peer host) per interval, and at most `per_cause` per cause.

    A bad peer cannot hide another peer's different trouble, and a storm of bad peers
    cannot flood the log: what is held back is counted in the next line of that kind."""

    def __init__(self, interval: float = 10.0, per_cause: int = 20, max_keys: int = 4096) -> None:
        self.interval = interval
        self.per_cause = per_cause
        self.max_keys = max_keys
        self._next: Dict[Tuple[str, str], float] = {}
        self._suppressed: Counter[Tuple[str, str]] = Counter()
        self._window: Dict[str, Tuple[float, int]] = {}  # cause -> (window end, lines in it)

    def warning(self, kind: str, peer: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        key = (kind, peer)
        if now < self._next.get(key, 0.0):
            self._suppressed[key] += 1
            return
        end, lines = self._window.get(kind, (0.0, 0))
        if now >= end:
            end, lines = now + self.interval, 0
        if lines >= self.per_cause:
            self._suppressed[key] += 1
            return
        self._window[kind] = (end, lines + 1)
        if len(self._next) >= self.max_keys:
            self._forget(now)
        self._next[key] = now + self.interval
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (and %d more like it)"
            args += (suppressed,)
        log.warning(message, *args)

    def _forget(self, now: float) -> None:
        for key in [key for key, until in self._next.items() if until <= now]:
            del self._next[key]
        if len(self._next) >= self.max_keys:  # all recent: forget the oldest half
            for key in sorted(self._next, key=self._next.__getitem__)[: len(self._next) // 2]:
                del self._next[key]
        for key in [key for key in self._suppressed if key not in self._next]:
            del self._suppressed[key]


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
    return peer_text(writer.get_extra_info("peername"), writer.get_extra_info("sockname"))


def peer_text(peer: Any, where: Any = None) -> str:
    """A peer's name in logs and limits: `HOST:PORT`, or `unix:PATH` (`where` it connected)
    for a unix-socket peer, which has no address of its own."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return host_port_text(str(peer[0]), peer[1])
    return f"unix:{where}" if where else "unix"


def _peer_host(name: str) -> str:
    """The host part of a peer name ("10.0.0.1:5170" -> "10.0.0.1"): connections are limited per host."""
    if name.startswith("unix"):
        return "unix"
    host = name.rpartition(":")[0] or name
    return host[1:-1] if host.startswith("[") else host


def _unix_path(address: ListenAddress) -> Optional[str]:
    text = address if isinstance(address, str) else address[0]
    if text.startswith("unix://"):
        return text[len("unix://"):]
    if isinstance(address, str):
        raise ValueError(f"listen address {address!r}: expected (host, port) or 'unix:///path'")
    return None


def clear_stale_socket(path: str) -> None:
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


class _MemoryBudget:
    """One budget for all buffered input: partial frames, chunks being inflated or handed on.

    `take` charges bytes to a connection at once (a transfer that cannot wait); `reserve`
    waits while the budget is spent, so a connection that needs more is simply not read
    (TCP slows its sender) until acks or closed connections give bytes back. A waiter that
    holds less than its fair share may have the server close the connection with the
    largest partial frame, so peers that trickle frames they never finish cannot hold the
    whole budget and starve everyone else.
    """

    def __init__(self, limit: int, stats: RelayStats) -> None:
        self.limit = limit
        self.used = 0
        self.stats = stats
        self._waiters: List["asyncio.Future[None]"] = []

    def take(self, amount: int) -> None:
        self.used += amount
        self.stats.input_memory_bytes = self.used

    def give(self, amount: int) -> None:
        if amount <= 0:
            return
        self.used -= amount
        self.stats.input_memory_bytes = self.used
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def fits(self, amount: int) -> bool:
        return self.used + amount <= self.limit

    async def freed(self) -> None:
        waiter: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)


# The server's defaults, named once: the relay's option declarations show the same values.
LISTEN: Tuple[ListenAddress, ...] = (("127.0.0.1", 24224),)
MAX_FRAME_SIZE = 16 << 20
MAX_DECOMPRESSED_SIZE = 64 << 20
IDLE_TIMEOUT = 120.0
HANDSHAKE_TIMEOUT = 10.0
MAX_CONNECTIONS = 256
MAX_CONNECTIONS_PER_PEER = 32
MAX_INPUT_MEMORY = 256 << 20
MAX_INFLIGHT = 4
DEDUP_CHUNKS = 65536
DEDUP_SECONDS = 900.0


@dataclass(frozen=True)
class ServerSettings:
    """How a `ForwardServer` listens and what it allows its peers (see its docstring);
    a combination that cannot work is refused here, before anything is bound."""

    listen: Sequence[ListenAddress] = LISTEN
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    shared_key: Optional[str] = None
    users: Optional[Mapping[str, str]] = None
    self_hostname: Optional[str] = None
    max_frame_size: int = MAX_FRAME_SIZE
    max_decompressed_size: int = MAX_DECOMPRESSED_SIZE
    idle_timeout: float = IDLE_TIMEOUT
    handshake_timeout: float = HANDSHAKE_TIMEOUT
    max_connections: int = MAX_CONNECTIONS
    max_connections_per_peer: int = MAX_CONNECTIONS_PER_PEER
    max_input_memory: int = MAX_INPUT_MEMORY
    max_inflight: int = MAX_INFLIGHT
    dedup_chunks: int = DEDUP_CHUNKS
    dedup_seconds: float = DEDUP_SECONDS
    udp_heartbeat: bool = True
    # Scan (Compressed)PackedForward payloads and leave those whose entries can all go on
    # byte for byte undecoded (`Chunk.verbatim`): for a handler that hands payloads on as
    # they are (a pass-through relay, filter workers); others would pay the scan for nothing.
    verbatim_chunks: bool = False
    # With verbatim_chunks, for a handler that decodes payloads elsewhere (filter workers)
    # rather than handing them on as they are: a payload is left undecoded whenever
    # decoding it there gives what decoding it here would (`scan_packed`'s
    # decoded_elsewhere), Fluent Bit's metadata form included.
    verbatim_decoded_elsewhere: bool = False
    # Connections come from another process that listens (`adopt`, see handoff.py):
    # bind no TCP or unix listener, only the UDP heartbeats, with SO_REUSEPORT since the
    # other workers answer heartbeats on the same ports.
    handed_connections: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "listen", tuple(self.listen))  # a list given stays the caller's
        if self.tls_key and not self.tls_cert:
            raise ValueError("tls_key given without tls_cert")
        if self.users and self.shared_key is None:
            raise ValueError("user authentication needs a shared_key too")
        if self.max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        if self.max_connections < 1 or self.max_connections_per_peer < 1:
            raise ValueError("max_connections and max_connections_per_peer must be at least 1")
        if self.max_input_memory < MIN_INPUT_MEMORY:
            raise ValueError(f"max_input_memory must be at least {MIN_INPUT_MEMORY} bytes")


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

    Fairness: at most `max_connections_per_peer` connections per peer host; when all
    `max_connections` are taken, a newcomer from a host with fewer connections than the
    busiest host closes that host's most idle connection instead of being refused. A
    connection must complete a forward message (heartbeats do not count) within
    `idle_timeout` unless it is waiting for an ack. Everything buffered from peers shares
    `max_input_memory`; when it is spent, reading pauses until it frees.
    """

    def __init__(self, handler: Handler, settings: ServerSettings = ServerSettings(), *,
                 stats: Optional[RelayStats] = None) -> None:
        for address in settings.listen:
            _unix_path(address)  # reject a malformed address before anything is bound
        self.settings = settings
        self.handler = handler
        self.listen = list(settings.listen)
        self.tls_cert = settings.tls_cert
        self.tls_key = settings.tls_key
        self.shared_key = settings.shared_key
        self.users = dict(settings.users) if settings.users else None
        self.self_hostname = settings.self_hostname or socket.gethostname()
        self.max_frame_size = settings.max_frame_size
        self.max_decompressed_size = settings.max_decompressed_size
        self.idle_timeout = settings.idle_timeout
        self.handshake_timeout = settings.handshake_timeout
        self.max_connections = settings.max_connections
        self.max_connections_per_peer = settings.max_connections_per_peer
        self.max_input_memory = settings.max_input_memory
        self.max_inflight = settings.max_inflight
        self.udp_heartbeat = settings.udp_heartbeat
        self.verbatim_chunks = settings.verbatim_chunks
        self.verbatim_decoded_elsewhere = settings.verbatim_decoded_elsewhere
        self.handed_connections = settings.handed_connections
        self.stats = stats if stats is not None else RelayStats()
        self.memory = _MemoryBudget(settings.max_input_memory, self.stats)
        self._acked = DedupWindow(settings.dedup_chunks, settings.dedup_seconds)
        self._running: Dict[Hashable, "asyncio.Future[bool]"] = {}
        self._servers: List[asyncio.AbstractServer] = []
        self._udp: List[asyncio.BaseTransport] = []
        self._unix_paths: List[str] = []
        self._addresses: List[ListenAddress] = []
        self._connections: Set["_Connection"] = set()  # admitted and not evicted
        self._by_host: Dict[str, Set["_Connection"]] = {}
        self._tasks: Set["asyncio.Task[Any]"] = set()  # every connection's task, evicted ones too
        self._tls: Optional[ssl.SSLContext] = None
        self._stopping = False
        self._throttle = LogThrottle()

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
        """Bind every listen address (and the UDP heartbeat beside each TCP one); with
        `handed_connections`, only the heartbeats, at the ports the dealer bound.

        Port 0 picks a free port per bound socket, so give a literal address with it
        ("127.0.0.1", not "localhost", which may bind two sockets on two ports)."""
        loop = asyncio.get_running_loop()
        # TLS is started per connection after it is admitted, so a failed handshake is
        # seen (counted, logged) and a handshaking peer counts against the limits.
        self._tls = self._ssl_context()
        try:
            for address in self.listen:
                path = _unix_path(address)
                if path is not None:
                    if not self.handed_connections:
                        clear_stale_socket(path)
                        server = await asyncio.start_unix_server(self._accept, path, limit=READ_SIZE)
                        self._servers.append(server)
                        self._unix_paths.append(path)
                    self._addresses.append("unix://" + path)
                    continue
                host, port = str(address[0]), int(address[1])
                if self.handed_connections:
                    bound_addresses = [(host, port)]
                else:
                    try:
                        server = await asyncio.start_server(self._accept, host, port, limit=READ_SIZE,
                                                            reuse_address=True)
                    except OSError as exc:
                        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
                    self._servers.append(server)
                    bound_addresses = [sock.getsockname()[:2] for sock in server.sockets]
                for bound in bound_addresses:
                    self._addresses.append((bound[0], bound[1]))
                    if self.udp_heartbeat:
                        transport, _ = await loop.create_datagram_endpoint(
                            lambda: _HeartbeatEcho(self.stats), local_addr=(bound[0], bound[1]),
                            reuse_port=self.handed_connections or None)
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
        for connection in list(self._connections):
            connection.stop_reading()
        tasks = list(self._tasks)
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

    async def adopt(self, sock: socket.socket) -> None:
        """Serve a connection another process accepted (`handed_connections`) as one
        accepted here, until it is closed."""
        if self._stopping:
            sock.close()
            return
        loop = asyncio.get_running_loop()
        ended = loop.create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await self._accept(reader, writer)
            finally:
                if not ended.done():
                    ended.set_result(None)

        # The server side of the stream, as start_server makes it (so TLS starts as a server).
        try:
            await loop.connect_accepted_socket(
                lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=READ_SIZE), serve), sock)
        except OSError:
            sock.close()
            return
        await ended

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = _peer_name(writer)
        host = _peer_host(peer)
        if not self._admit(peer, host):
            self.stats.connections_rejected += 1
            writer.transport.abort()
            return
        connection = _Connection(self, reader, writer, peer, host)
        connection.task = task = asyncio.current_task()
        assert task is not None
        self._connections.add(connection)
        self._by_host.setdefault(host, set()).add(connection)
        self._tasks.add(task)
        self.stats.connections_opened += 1
        self.stats.connections_active += 1
        log.debug("connection from %s opened (%d open)", peer, self.stats.connections_active)
        try:
            if self._tls is not None and not await connection.start_tls(self._tls):
                return
            await connection.run()
        finally:
            log.debug("connection from %s closed", peer)
            self._forget(connection)
            self._tasks.discard(task)
            connection.release_memory()
            self.stats.connections_active -= 1

    def _admit(self, peer: str, host: str) -> bool:
        """May a connection from `host` open now? Makes room by evicting when that is fair."""
        if self._stopping:
            return False
        same_host = self._by_host.get(host, ())
        mine = len(same_host)
        if mine >= self.max_connections_per_peer:
            # The host's own most idle connection makes room (one that sent no forward message
            # for a while and waits for no ack), so idle connections from a host cannot lock a
            # sender on the same host (or behind the same NAT address) out.
            idle_since = asyncio.get_running_loop().time() - EVICT_IDLE_AFTER
            idle = [c for c in same_host if c.inflight == 0 and c.progress <= idle_since]
            if not idle:
                self._throttle.warning("max_connections_per_peer", host, "refused connection from %s: %d "
                                       "connections from that host are open and busy (max_connections_per_peer)",
                                       peer, mine)
                return False
            idlest = min(idle, key=lambda c: c.progress)
            self.evict(idlest, "max_connections_per_peer",
                       f"closed to make room for {peer} ({mine} connections from {host}: max_connections_per_peer)")
            return True
        if len(self._connections) < self.max_connections:
            return True
        # Full: a host with fewer connections than the busiest one still gets in, by
        # closing the busiest host's most idle connection (one not waiting for an ack first).
        # When no host is busier (e.g. many hosts with one connection each), the most idle
        # connection of a host with at least as many closes, if it has been idle a while.
        busiest = max(self._by_host.values(), key=len)
        victim: Optional[_Connection] = None
        if len(busiest) > mine + 1:
            victim = min(busiest, key=lambda c: (c.inflight > 0, c.progress))
        else:
            idle_since = asyncio.get_running_loop().time() - EVICT_IDLE_AFTER
            idle = [c for c in self._connections if c.inflight == 0 and c.progress <= idle_since
                    and len(self._by_host[c.host]) > mine]
            victim = min(idle, key=lambda c: c.progress) if idle else None
        if victim is None:
            self._throttle.warning("max_connections", host, "refused connection from %s: %d connections open "
                                   "(max_connections), none from a busier host or idle to close", peer,
                                   len(self._connections))
            return False
        self.evict(victim, "max_connections",
                   f"closed to make room for {peer} ({len(self._by_host[victim.host])} connections from "
                   f"{victim.host}, {self.max_connections} open: max_connections)")
        return True

    def _forget(self, connection: "_Connection") -> None:
        self._connections.discard(connection)
        same_host = self._by_host.get(connection.host)
        if same_host is not None:
            same_host.discard(connection)
            if not same_host:
                del self._by_host[connection.host]

    def evict(self, connection: "_Connection", reason: str, detail: str) -> None:
        """Close `connection` now to free what it holds; chunks it already handed on still finish."""
        if connection.evicted:
            return
        self.stats.connections_evicted[reason] += 1
        self._throttle.warning("evicted_" + reason, connection.host, "closed connection from %s: %s",
                               connection.peer, detail)
        self._forget(connection)
        connection.evict()

    def _protocol_error(self, kind: str, connection: "_Connection", detail: str) -> None:
        self.stats.protocol_errors[kind] += 1
        self._throttle.warning(kind, connection.host, "closed connection from %s: %s", connection.peer, detail)

    # --- input memory ----------------------------------------------------------------------

    async def reserve(self, connection: "_Connection", amount: int) -> None:
        """Charge `amount` bytes to `connection`, waiting while the budget is spent.

        The wait counts against the connection's idle_timeout like a read does: a peer
        that cannot complete its frame in time is closed and what it held is freed, so
        connections that wait on each other cannot wait for ever."""
        memory = self.memory
        loop = asyncio.get_running_loop()
        paused = False
        while not memory.fits(amount):
            victim = self._memory_victim(connection, amount)
            if victim is not None:
                self.evict(victim, "input_memory",
                           f"its {victim.partial}-byte partial frame was the largest while input memory "
                           f"({self.max_input_memory} bytes, max_input_memory) was spent")
                continue
            if not paused:
                self.stats.input_paused += 1
                paused = True
            left = connection.progress + self.idle_timeout - loop.time()
            if left <= 0:
                if connection.inflight:  # its acks will free memory: not stuck
                    connection.progress = loop.time()
                    continue
                raise ProtocolError("input_memory", f"no input memory for its frame within {self.idle_timeout:g} s "
                                    f"({self.max_input_memory} bytes, max_input_memory, all in use)")
            try:
                await asyncio.wait_for(memory.freed(), left)
            except asyncio.TimeoutError:
                pass
        memory.take(amount)

    def _memory_victim(self, requester: "_Connection", amount: int) -> Optional["_Connection"]:
        """The connection with the largest partial frame, if it holds more than a fair share
        and the requester (which needs `amount` more) would still be within its own."""
        holders = [c for c in self._connections if c.partial > 0 and c is not requester]
        share = self.max_input_memory // (len(holders) + 1)
        if requester.partial + amount > share or not holders:
            return None
        victim = max(holders, key=lambda c: c.partial)
        return victim if victim.partial > share else None

    # --- handing chunks on -----------------------------------------------------------------

    async def _deliver(self, chunk: Chunk) -> bool:
        """Hand a chunk on once: True when it may be acked. Never raises (except on cancel)."""
        if not chunk.entry_count:
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
            self._throttle.warning("handler", _peer_host(chunk.peer), "could not hand on %d records of tag %s "
                                   "from %s, left unacked for a resend: %s: %s", chunk.entry_count, chunk.tag,
                                   chunk.peer, type(exc).__name__, exc)
            return False
        if not delivered:
            self.stats.handler_failures += 1
        return delivered


# Frames at least this large are decoded in a thread, so the event loop keeps serving others.
THREAD_DECODE_SIZE = 1 << 20
# A frame buffer that held this much is replaced once empty (msgpack's buffer never shrinks).
BIG_BUFFER = 1 << 20
# Inflate this much at a time, charging the input memory budget as the output grows.
INFLATE_STEP = 1 << 20


def _printable(data: bytes) -> bool:
    return bool(data) and all(32 <= byte < 127 or byte in (9, 10, 13) for byte in data)


class _Connection:
    """One peer: a read side (handshake, frames → handler tasks) and an ack side (in order)."""

    def __init__(self, server: ForwardServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 peer: str, host: str) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.host = host
        self.task: Optional["asyncio.Task[Any]"] = None
        self._frames = self._new_frame_reader()
        self._slots = asyncio.Semaphore(server.max_inflight)
        self._pending: "asyncio.Queue[Tuple[Chunk, asyncio.Task[bool], int]]" = asyncio.Queue()
        self._handler_tasks: Set["asyncio.Task[bool]"] = set()
        self.inflight = 0
        self._read_task: Optional["asyncio.Task[None]"] = None
        self._stop_reading = False
        self.evicted = False
        self.partial = 0  # input memory charged for bytes of a frame not yet complete
        self.held = 0  # input memory charged for chunks taken but not yet acked
        self._inflated = 0  # input memory charged for the payload being inflated
        self._high = 0  # most bytes the frame buffer held since it was last replaced
        self._head = b""  # the first bytes the peer sent, to describe a peer that is not a forward client
        self.progress = asyncio.get_running_loop().time()  # last forward message or ack

    def _new_frame_reader(self) -> FrameReader:
        # Frames are kept as received so a resend is recognised by a digest of its bytes.
        return FrameReader(self.server.max_frame_size, READ_SIZE, keep_frames=True)

    def stop_reading(self) -> None:
        self._stop_reading = True
        if self._read_task is not None:
            self._read_task.cancel()

    def evict(self) -> None:
        self.evicted = True
        self.stop_reading()
        self._set_partial(0)
        self._frames = self._new_frame_reader()  # drop the partial frame now
        self.writer.transport.abort()

    def release_memory(self) -> None:
        """Give back all the connection still holds (chunks never acked when it was cut short)."""
        self._set_partial(0)
        self.server.memory.give(self.held)
        self.held = 0

    def _settle(self) -> None:
        """Charge what the frame buffer holds now; drop a buffer grown by a big frame once it is empty.

        msgpack's buffer doubles as it grows and never shrinks, so a partial frame is
        charged twice its bytes (up to the buffer's cap), plus once more for the copy kept
        for the resend digest; an emptied buffer that once held a megabyte or more is
        replaced so the memory really goes back."""
        frames = self._frames
        buffered = frames.buffered
        if buffered == 0:
            if self._high >= BIG_BUFFER:
                self._frames = self._new_frame_reader()
            self._high = 0
        self._high = max(self._high, buffered)
        cap = self.server.max_frame_size + READ_SIZE
        self._set_partial(min(2 * buffered, cap) + min(buffered, cap))

    def _set_partial(self, size: int) -> None:
        memory = self.server.memory
        if size < self.partial:
            memory.give(self.partial - size)
        else:
            memory.take(size - self.partial)
        self.partial = size

    async def start_tls(self, context: ssl.SSLContext) -> bool:
        """TLS handshake on an admitted connection; a failure is counted and logged."""
        server = self.server
        try:
            await self.writer.start_tls(context, ssl_handshake_timeout=server.handshake_timeout)
            return True
        except asyncio.CancelledError:
            raise
        except (OSError, EOFError, asyncio.TimeoutError, ValueError) as exc:
            if self.evicted:
                return False
            reason = str(getattr(exc, "reason", "") or exc or type(exc).__name__)
            server._protocol_error("tls_handshake", self, f"TLS handshake failed: {reason}")
            self.writer.transport.abort()
            return False

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
            # Let the ack side finish its bookkeeping before the memory it held is counted back.
            await asyncio.gather(ack_task, return_exceptions=True)
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
            if not self.evicted:
                server._protocol_error(exc.kind, self, str(exc))
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the peer went away; nothing of ours is lost
        except OSError as exc:
            log.debug("connection from %s failed: %s", self.peer, exc)
        except Exception as exc:  # a bug here must cost one connection, not the server
            server.stats.protocol_errors["internal"] += 1
            log.error("closed connection from %s after an internal error: %s: %s", self.peer,
                      type(exc).__name__, exc)
        finally:
            self._set_partial(0)

    async def _receive(self, deadline: bool) -> bytes:
        """Read up to READ_SIZE bytes, charged to the input memory budget first."""
        server = self.server
        # A read grows the buffer by up to twice its size, and the kept copy by its size.
        await server.reserve(self, 3 * READ_SIZE)
        self.partial += 3 * READ_SIZE
        data = await (self._read() if deadline else self.reader.read(READ_SIZE))
        server.stats.bytes_received += len(data)
        if len(self._head) < 16:
            self._head += data[: 16 - len(self._head)]
        return data

    async def _read(self) -> bytes:
        """The next bytes; a peer must complete a forward message within idle_timeout of the
        last one (bytes of a partial frame and heartbeats do not reset that clock), unless it
        is waiting for our ack."""
        server = self.server
        loop = asyncio.get_running_loop()
        while True:
            left = self.progress + server.idle_timeout - loop.time()
            if left <= 0:
                if self.inflight:
                    self.progress = loop.time()  # the peer is waiting for our ack, not idle
                    continue
                if self._frames.buffered:
                    raise ProtocolError("idle_timeout", f"no complete forward message within "
                                        f"{server.idle_timeout:g} s ({self._frames.buffered} bytes of a frame)")
                raise ProtocolError("idle_timeout", f"no forward message within {server.idle_timeout:g} s")
            try:
                return await asyncio.wait_for(self.reader.read(READ_SIZE), left)
            except asyncio.TimeoutError:
                continue

    async def _read_frames(self) -> None:
        while True:
            await self._take_frames()
            data = await self._receive(deadline=True)
            if not data:
                if self._frames.buffered:
                    raise ProtocolError("truncated", f"connection closed inside a frame "
                                        f"({self._frames.buffered} bytes)")
                return
            self._frames.feed(data)

    async def _take_frames(self) -> None:
        """Dispatch every complete frame; each moves its bytes from `partial` to its chunk."""
        frames = self._frames
        before = frames.buffered
        for frame in frames:
            size = before - frames.buffered
            before = frames.buffered
            self.partial -= size  # the frame's bytes now belong to it, not to the partial frame
            if frame is not None:  # a heartbeat is not progress
                self.progress = asyncio.get_running_loop().time()
            await self._dispatch(frame, size)
        self._settle()

    async def _dispatch(self, frame: Any, size: int) -> None:
        server = self.server
        stats = server.stats
        if frame is None:
            stats.frames[HEARTBEAT] += 1
            self.server.memory.give(size)
            return
        charge = size
        try:
            if type(frame) is not list:
                # Not a forward client (an HTTP probe, text, a stray value): like Fluent Bit's
                # in_forward, drop the connection at the first such object rather than
                # decoding the rest of its bytes one object at a time.
                hint = " (looks like HTTP or plain text)" if _printable(self._head) else ""
                raise ProtocolError("non_array", f"sent a {type(frame).__name__} where a forward message "
                                    f"(an array) belongs{hint}; first bytes {self._head!r}")
            compression = _compression(frame)
            if compression is not None:
                chunk, inflated = await self._inflate(frame, compression)
                charge += inflated
            elif size >= THREAD_DECODE_SIZE:
                chunk = await asyncio.to_thread(parse_frame, frame, max_decompressed_size=server.max_decompressed_size,
                                                peer=self.peer, raw=self._frames.last_frame,
                                                scan=server.verbatim_chunks,
                                                decoded_elsewhere=server.verbatim_decoded_elsewhere)
            else:
                chunk = parse_frame(frame, max_decompressed_size=server.max_decompressed_size, peer=self.peer,
                                    raw=self._frames.last_frame, scan=server.verbatim_chunks,
                                    decoded_elsewhere=server.verbatim_decoded_elsewhere)
        except BaseException:
            self.server.memory.give(charge)
            raise
        del frame
        stats.frames[chunk.mode] += 1
        stats.records_received += chunk.entry_count
        if chunk.invalid:
            server._throttle.warning("invalid_event", self.host, "%d entries without a usable time or shape in a "
                                     "chunk of tag %s from %s: they go to the rejected route", chunk.invalid,
                                     chunk.tag, self.peer)
        self.held += charge
        try:
            await self._slots.acquire()  # backpressure: no more reading while the handler is behind
        except BaseException:
            self.held -= charge
            self.server.memory.give(charge)
            raise
        self.inflight += 1
        task = asyncio.create_task(server._deliver(chunk))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)
        self._pending.put_nowait((chunk, task, charge))

    async def _inflate(self, frame: List[Any], compression: str) -> Tuple[Chunk, int]:
        """A CompressedPackedForward frame → its chunk, inflated and decoded off the event loop.

        gzip is inflated step by step in a thread, each step paid from the input memory
        budget before it is produced, and stopped as soon as max_decompressed_size is
        passed. The payload is then decoded by the codec, in a thread, as the
        PackedForward frame it stands for, so the chunk is exactly what `parse_frame`
        makes of the compressed frame. Returns the chunk and the bytes charged for it."""
        server = self.server
        options = frame[2]
        raw = as_bytes(frame[1])
        frame[1] = b""
        self._inflated = 0
        try:
            if compression == "gzip":
                payload = await self._inflate_gzip(raw)
            else:
                payload = await self._inflate_zstd(raw)
            del raw
            await self._grow(payload, len(payload))  # the copy below, until the bytearray is dropped
            plain = [frame[0], await asyncio.to_thread(bytes, payload),
                     {key: value for key, value in options.items() if key != "compressed"}]
            size = len(payload)
            del payload
            server.memory.give(self._inflated - size)
            self._inflated = size
            chunk = await asyncio.to_thread(parse_frame, plain, max_decompressed_size=server.max_decompressed_size,
                                            peer=self.peer, scan=server.verbatim_chunks,
                                            decoded_elsewhere=server.verbatim_decoded_elsewhere)
        except BaseException:
            server.memory.give(self._inflated)
            raise
        finally:
            charged, self._inflated = self._inflated, 0
        chunk.mode = COMPRESSED_PACKED_FORWARD
        chunk.options = options
        return chunk, charged

    async def _grow(self, out: bytearray, step: int) -> None:
        """Make sure `step` more bytes beyond `out` are paid for (in `_inflated`) before they are made."""
        need = len(out) + step - self._inflated
        if need > 0:
            await self.server.reserve(self, need)
            self._inflated += need

    async def _inflate_gzip(self, raw: bytes) -> bytearray:
        limit = self.server.max_decompressed_size
        out = bytearray()
        rest: bytes = raw
        try:
            while rest:
                member = zlib.decompressobj(16 + zlib.MAX_WBITS)
                pending = rest
                while not member.eof:
                    # Asking for one byte over the limit is how we learn it would be passed.
                    step = min(INFLATE_STEP, limit - len(out) + 1)
                    await self._grow(out, step)
                    piece = await asyncio.to_thread(member.decompress, pending, step)
                    out += piece
                    if len(out) > limit:
                        raise ProtocolError("decompress_limit", f"gzip payload inflates past the {limit}-byte limit")
                    if not piece and len(member.unconsumed_tail) == len(pending):
                        break  # no progress: the input ended before the member did
                    pending = member.unconsumed_tail
                if not member.eof:
                    raise ProtocolError("malformed", "truncated gzip payload")
                rest = member.unused_data
        except zlib.error as exc:
            raise ProtocolError("malformed", f"invalid gzip payload: {exc}") from None
        return out

    async def _inflate_zstd(self, raw: bytes) -> bytearray:
        """zstd (rare: recent Fluentd only) is inflated by the codec in one go in a thread,
        with the whole max_decompressed_size paid for first and the unused part given back."""
        limit = self.server.max_decompressed_size
        await self._grow(bytearray(), limit)
        out = await asyncio.to_thread(inflate_zstd, raw, limit)
        self.server.memory.give(self._inflated - len(out))
        self._inflated = len(out)
        return out

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
                self._settle()
                return message
            self._settle()
            data = await self._receive(deadline=False)
            if not data:
                raise ConnectionResetError("closed during the handshake")
            self._frames.feed(data)

    # --- ack side --------------------------------------------------------------------------

    async def _send_acks(self) -> None:
        server = self.server
        stats = server.stats
        writer = self.writer
        while True:
            chunk, task, charge = await self._pending.get()
            try:
                delivered = await task
                if delivered and chunk.chunk_id is not None and not writer.is_closing():
                    writer.write(ack_frame(chunk.chunk_id))
                    await writer.drain()
                    stats.acks_sent += 1
            except (ConnectionError, OSError):
                pass  # the peer left; it will resend and the dedup window answers
            finally:
                self.progress = asyncio.get_running_loop().time()
                self.held -= charge
                server.memory.give(charge)
                self.inflight -= 1
                self._slots.release()
                self._pending.task_done()


def _compression(frame: List[Any]) -> Optional[str]:
    """"gzip" or "zstd" for a CompressedPackedForward frame, else None (decoded as any frame)."""
    if len(frame) != 3 or type(frame[1]) not in (str, bytes) or type(frame[2]) is not dict:
        return None
    compressed = frame[2].get("compressed")
    return compressed if compressed in ("gzip", "zstd") else None
