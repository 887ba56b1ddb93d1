"""Acknowledged forward-protocol client: PackedForward chunks, acks, retry and failover.

`ForwardSender.send(tag, entries_payload, count)` hands over already-packed msgpack entries
and returns True once the downstream has answered `{"ack": chunk}` for them, or False once
every server has failed (or the retry deadline has passed); the caller then spools.

How batches move:

* Calls for the same tag are concatenated into one open batch (PackedForward entries are
  just msgpack values back to back). When nothing is in flight the batch goes out at the
  end of the current event-loop pass; while chunks are in flight it grows until an ack
  arrives, `flush_interval` passes, or it reaches `batch_max_records` / `batch_max_bytes`.
  So a quiet link sends at once and a busy one sends big chunks, with no await per record.
* Each sealed batch becomes one frame `[tag, bin entries, {"chunk", "size"[, "compressed"]}]`
  built once; a retry writes the same bytes, so the chunk id is the same. The id is
  base64 of the first 16 bytes of SHA-512 over tag and entries (Fluent Bit derives its ids
  the same way), so a downstream can recognise a resend.
* One connection carries many chunks in flight; a reader task matches acks by chunk id.
  A chunk not acked within `ack_timeout`, or a lost connection, sends every in-flight chunk
  again, in order, on the next server after a backoff. If no server accepts a connection
  in one round, all waiting chunks return False at once and new calls return False until
  the backoff has passed, so an outage turns into spooling rather than stalled acks.
* A connection to a secondary server is given up for the primary after `failback_after`
  seconds, at a moment with nothing in flight.

With `shared_key` the client side of the handshake runs (HELO → PING → PONG, checking the
server's digest); with `tls` the connection is TLS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import os
import socket
import ssl as ssl_module
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple, Union

import msgpack

from ..monitoring.relaystats import RelayStats
from . import codec

log = logging.getLogger(__name__)

Server = Tuple[str, int]
# A misbehaving downstream may send us anything; acks and handshake replies are tiny.
_MAX_REPLY_SIZE = 1 << 20


def chunk_id(tag: str, entries_payload: bytes) -> str:
    """The chunk id for a batch: base64 of the first 16 bytes of SHA-256(tag, NUL, entries),
    the same on every resend. SHA-256 because CPUs compute it in hardware (1.6 GB/s against
    SHA-512's 0.7 on x86_64 here): a relay hashes every byte it hands on."""
    digest = hashlib.sha256(tag.encode("utf-8", "surrogateescape") + b"\0")
    digest.update(entries_payload)
    return base64.b64encode(digest.digest()[:16]).decode("ascii")


def client_ssl_context(*, verify: bool = True, ca_file: Optional[str] = None,
                       cert_file: Optional[str] = None,
                       key_file: Optional[str] = None) -> ssl_module.SSLContext:
    """A TLS client context: verify the server against `ca_file` (or the system store), or not."""
    context = ssl_module.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl_module.CERT_NONE
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    return context


ENTRY_FORMS = ("plain", "metadata")


def plain_entries(payload: bytes) -> bytes:
    """A PackedForward payload with every `[[time, metadata], record]` entry as `[time, record]`.

    Fluentd (1.16 and older) resets the connection on entries in Fluent Bit's metadata
    form; the plain form is what every Fluentd and Fluent Bit accepts. A payload with no
    metadata entry is returned as it is, without re-packing.
    """
    if not _has_metadata_entries(payload):
        return payload
    entries, _ = codec.unpack_entries(payload)
    return codec.pack_entries(codec.Entry(e.time, e.record) for e in entries)


def _has_metadata_entries(payload: bytes) -> bool:
    """Whether any entry's first element is an array (the metadata form); skips records unread."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(payload)
    view = memoryview(payload)
    try:
        while unpacker.tell() < len(payload):
            if unpacker.read_array_header() < 1:
                return False  # not an entry: leave the payload to the codec as it is
            first = view[unpacker.tell()]
            if 0x90 <= first <= 0x9F or first in (0xDC, 0xDD):
                return True
            unpacker.skip()  # time
            unpacker.skip()  # record
    except (msgpack.OutOfData, ValueError, msgpack.UnpackException):
        return False
    return False


class NotAcked:
    """A batch given up on at the retry deadline after the downstream refused its chunk
    `attempts` times (connection reset, or no ack, while it was the oldest waiting).

    Falsy like False. A downstream that is simply away (no refusal) gives plain False.
    """

    __slots__ = ("reason", "attempts")

    def __init__(self, reason: str, attempts: int) -> None:
        self.reason = reason
        self.attempts = attempts

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, attempts={self.attempts})"


class Refused(NotAcked):
    """A batch the downstream refused `retry_max_times` times: to be quarantined, not retried."""


class HandshakeError(Exception):
    """The shared-key handshake failed (wrong key, unexpected reply, server refused)."""


class _OpenBatch:
    """Payloads for one tag collected since the last flush, and who is waiting on them."""

    __slots__ = ("parts", "counts", "size", "count", "waiters")

    def __init__(self) -> None:
        self.parts: List[bytes] = []
        self.counts: List[int] = []
        self.size = 0
        self.count = 0
        self.waiters: List["asyncio.Future[Any]"] = []


class _Chunk:
    """A sealed batch: its wire frame (reused verbatim on every retry) and its waiters."""

    __slots__ = ("tag", "count", "size", "chunk_id", "frame", "waiters", "created", "sent_at",
                 "attempts", "failures", "parts", "counts")

    def __init__(self, tag: str, count: int, size: int, chunk_id: str, frame: bytes,
                 waiters: List["asyncio.Future[Any]"], created: float,
                 parts: Sequence[bytes] = (), counts: Sequence[int] = ()) -> None:
        self.tag = tag
        self.parts = list(parts)  # the submitted payloads, one per waiter (to split a refused chunk)
        self.counts = list(counts)
        self.count = count
        self.size = size
        self.chunk_id = chunk_id
        self.frame = frame
        self.waiters = waiters
        self.created = created
        self.sent_at = 0.0
        self.attempts = 0
        self.failures = 0  # sends that ended in a reset or an ack timeout with this chunk oldest


class _Connection:
    __slots__ = ("index", "reader", "writer", "replies", "opened_at", "reader_task",
                 "ack_timer", "lost")

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 replies: codec.FrameReader, opened_at: float) -> None:
        self.index = index
        self.reader = reader
        self.writer = writer
        self.replies = replies
        self.opened_at = opened_at
        self.reader_task: Optional["asyncio.Task[None]"] = None
        self.ack_timer: Optional[asyncio.TimerHandle] = None
        self.lost = False


# The sender's defaults, named once: the relay's option declarations show the same values.
ACK_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
RETRY_DEADLINE = 60.0
RETRY_WAIT = 0.1
RETRY_MAX_WAIT = 10.0
FAILBACK_AFTER = 60.0
BATCH_MAX_RECORDS = 10000
BATCH_MAX_BYTES = 4 << 20
FLUSH_INTERVAL = 0.05
MAX_BUFFER_BYTES = 64 << 20


@dataclass(frozen=True)
class SenderSettings:
    """How a `ForwardSender` reaches its servers, batches, waits for acks and retries.

    `tls`: True for a context from `tls_verify` / `tls_ca_file`, or a ready SSLContext.
    `retry_deadline`: how long a chunk is retried before `send` gives up on it;
    `retry_max_times`: refusals (reset or no ack while oldest) before it is `Refused`."""

    tls: Union[bool, ssl_module.SSLContext, None] = None
    tls_verify: bool = True
    tls_ca_file: Optional[str] = None
    tls_server_hostname: Optional[str] = None
    shared_key: Optional[str] = None
    self_hostname: Optional[str] = None
    username: str = ""
    password: str = field(default="", repr=False)
    ack_timeout: float = ACK_TIMEOUT
    connect_timeout: float = CONNECT_TIMEOUT
    retry_deadline: float = RETRY_DEADLINE
    retry_max_times: Optional[int] = None
    retry_wait: float = RETRY_WAIT
    retry_max_wait: float = RETRY_MAX_WAIT
    failback_after: float = FAILBACK_AFTER
    batch_max_records: int = BATCH_MAX_RECORDS
    batch_max_bytes: int = BATCH_MAX_BYTES
    flush_interval: float = FLUSH_INTERVAL
    max_buffer_bytes: int = MAX_BUFFER_BYTES
    compress: Optional[str] = None

    def __post_init__(self) -> None:
        if self.compress not in (None, "gzip"):
            raise ValueError(f"compress must be None or 'gzip', got {self.compress!r}")
        if self.retry_max_times is not None and self.retry_max_times < 1:
            raise ValueError("retry_max_times must be at least 1")


class ForwardSender:
    """Sends PackedForward chunks to the first working server and waits for their acks."""

    def __init__(self, servers: Sequence[Server], settings: SenderSettings = SenderSettings(), *,
                 stats: Optional[RelayStats] = None) -> None:
        if not servers:
            raise ValueError("at least one downstream server is needed")
        self.settings = settings
        self.servers: List[Server] = [(str(h), int(p)) for h, p in servers]
        if isinstance(settings.tls, ssl_module.SSLContext):
            self._ssl: Optional[ssl_module.SSLContext] = settings.tls
        elif settings.tls:
            self._ssl = client_ssl_context(verify=settings.tls_verify, ca_file=settings.tls_ca_file)
        else:
            self._ssl = None
        self.tls_server_hostname = settings.tls_server_hostname
        self.shared_key = settings.shared_key
        self.self_hostname = settings.self_hostname or socket.gethostname()
        self.username = settings.username
        self.password = settings.password
        # Like Fluentd's out_forward: 32 hex characters, made once per sender.
        self._shared_key_salt = os.urandom(16).hex()
        self._handshake_error: Optional[str] = None
        self.ack_timeout = settings.ack_timeout
        self.connect_timeout = settings.connect_timeout
        self.retry_deadline = settings.retry_deadline
        self.retry_max_times = settings.retry_max_times
        self.retry_wait = settings.retry_wait
        self.retry_max_wait = settings.retry_max_wait
        self.failback_after = settings.failback_after
        self.batch_max_records = settings.batch_max_records
        self.batch_max_bytes = settings.batch_max_bytes
        self.flush_interval = settings.flush_interval
        self.max_buffer_bytes = settings.max_buffer_bytes
        self.compress = settings.compress
        self.stats = stats if stats is not None else RelayStats()
        self.last_error: Optional[str] = None  # why the last connection or chunk failed

        self._open: Dict[str, _OpenBatch] = {}
        self._pending: Deque[_Chunk] = deque()
        self._in_flight: Dict[int, _Chunk] = {}  # serial → chunk, in send order
        self._by_id: Dict[str, Deque[int]] = {}
        self._serials = itertools.count()
        self._conn: Optional[_Connection] = None
        self._server_index = 0
        self._backoff = settings.retry_wait
        self._retry_at = 0.0
        self._down_until = 0.0
        self._buffered = 0  # payload bytes accepted and not yet resolved
        self._flush_handle: Optional[asyncio.Handle] = None
        self._flush_is_soon = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._space: Optional[asyncio.Event] = None
        self._idle: Optional[asyncio.Event] = None
        self._task: Optional["asyncio.Task[None]"] = None
        self._closing = False

    # -- public API --------------------------------------------------------------

    async def send(self, tag: str, entries_payload: bytes, count: int) -> Union[bool, NotAcked]:
        """Deliver one batch of packed entries; True once acked downstream, False if not
        (a `NotAcked` or `Refused`, also falsy, when the downstream refused its chunk).

        Waits first while `max_buffer_bytes` of earlier batches are still unresolved, so a
        slow downstream slows the caller instead of growing memory.
        """
        self._start()
        assert self._space is not None
        while self._buffered >= self.max_buffer_bytes and not self._closing:
            self._space.clear()
            await self._space.wait()
        return await self.submit(tag, entries_payload, count)

    def submit(self, tag: str, entries_payload: bytes, count: int) -> "asyncio.Future[Any]":
        """Queue one batch without waiting; the future resolves like `send`'s result.

        Batches submitted in order for one tag reach the downstream in that order.
        """
        loop = self._start()
        future: "asyncio.Future[Any]" = loop.create_future()
        if self._closing or (self._conn is None and loop.time() < self._down_until):
            future.set_result(False)  # closing, or every server just failed: spool it now
            return future
        size = len(entries_payload)
        batch = self._open.get(tag)
        if batch is not None and batch.size + size > self.batch_max_bytes:
            self._seal(tag)
            batch = None
        if batch is None:
            batch = self._open[tag] = _OpenBatch()
        batch.parts.append(entries_payload)
        batch.counts.append(count)
        batch.size += size
        batch.count += count
        batch.waiters.append(future)
        self._buffered += size
        if batch.size >= self.batch_max_bytes or batch.count >= self.batch_max_records:
            self._seal(tag)
        self._schedule_flush()
        return future

    def down_for(self) -> float:
        """Seconds until the sender will try the servers again after they all failed (0 if not down)."""
        if self._loop is None or self._conn is not None:
            return 0.0
        return max(0.0, self._down_until - self._loop.time())

    @property
    def connected_server(self) -> Optional[Server]:
        """The server of the open connection, if any."""
        return self.servers[self._conn.index] if self._conn is not None else None

    async def close(self, timeout: float = 10.0) -> None:
        """Send what is buffered, wait up to `timeout` for acks, then fail the rest (False)."""
        if self._loop is None:
            self._closing = True
            return
        self._closing = True
        self._flush_all()
        assert self._idle is not None and self._space is not None
        self._space.set()
        if self._pending or self._in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                pass
        for chunk in list(self._pending) + list(self._in_flight.values()):
            self._resolve(chunk, False)
        self._pending.clear()
        self._in_flight.clear()
        self._by_id.clear()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._conn is not None:
            self._drop_connection(self._conn)

    # -- batching ----------------------------------------------------------------

    def _start(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._space = asyncio.Event()
            self._idle = asyncio.Event()
            self._task = self._loop.create_task(self._run())
        return self._loop

    def _schedule_flush(self) -> None:
        if not self._open:
            return
        assert self._loop is not None
        if not self._in_flight and not self._pending:
            if self._flush_handle is not None and self._flush_is_soon:
                return
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = self._loop.call_soon(self._flush_all)
            self._flush_is_soon = True
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self.flush_interval, self._flush_all)
            self._flush_is_soon = False

    def _flush_all(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for tag in list(self._open):
            self._seal(tag)

    def _seal(self, tag: str) -> None:
        batch = self._open.pop(tag)
        assert self._loop is not None and self._wake is not None
        self._pending.append(self._chunk(tag, batch.parts, batch.counts, batch.waiters, self._loop.time()))
        self._wake.set()

    def _chunk(self, tag: str, parts: List[bytes], counts: List[int], waiters: List["asyncio.Future[Any]"],
               created: float) -> _Chunk:
        payload = parts[0] if len(parts) == 1 else b"".join(parts)
        count = sum(counts)
        cid = chunk_id(tag, payload)
        if self.compress == "gzip":
            frame = codec.packed_forward_frame(tag, codec.gzip_payload(payload), chunk_id=cid,
                                               size=count, compressed="gzip")
        else:
            frame = codec.packed_forward_frame(tag, payload, chunk_id=cid, size=count)
        return _Chunk(tag, count, len(payload), cid, frame, waiters, created, parts, counts)

    def _split(self, chunk: _Chunk) -> List[_Chunk]:
        """A refused chunk of several submitted batches → one chunk per batch, so the next
        attempts find the batch the downstream chokes on and let the others through."""
        if len(chunk.parts) <= 1:
            return [chunk]
        pieces = []
        for part, count, waiter in zip(chunk.parts, chunk.counts, chunk.waiters):
            piece = self._chunk(chunk.tag, [part], [count], [waiter], chunk.created)
            piece.failures = chunk.failures
            piece.attempts = chunk.attempts
            pieces.append(piece)
        return pieces

    def _resolve(self, chunk: _Chunk, delivered: Union[bool, NotAcked]) -> None:
        for future in chunk.waiters:
            if not future.done():
                future.set_result(delivered)
        chunk.waiters = []
        self._buffered -= chunk.size
        if self._space is not None and self._buffered < self.max_buffer_bytes:
            self._space.set()
        if self._idle is not None and not self._pending and not self._in_flight:
            self._idle.set()

    # -- the send loop -----------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None and self._loop is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                conn = self._conn
                try:
                    if conn is not None and self._should_fail_back(conn):
                        log.info("returning to primary downstream %s:%d", *self.servers[0])
                        self._drop_connection(conn)
                        self._server_index = 0
                        conn = None
                    if conn is None:
                        conn = await self._connect_round()
                        if conn is None:
                            continue
                    self._write_pending(conn)
                    await conn.writer.drain()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # this loop must outlive any one failure
                    if conn is not None:
                        self._connection_lost(conn, exc)
                    else:
                        log.exception("forward sender: unexpected failure")
                        while self._pending:
                            self._fail(self._pending.popleft())

    def _should_fail_back(self, conn: _Connection) -> bool:
        return (conn.index != 0 and not self._in_flight
                and self._loop is not None
                and self._loop.time() - conn.opened_at >= self.failback_after)

    def _write_pending(self, conn: _Connection) -> None:
        assert self._loop is not None
        now = self._loop.time()
        stats = self.stats
        write = conn.writer.write
        while self._pending:
            chunk = self._pending.popleft()
            if chunk.attempts:
                stats.retries += 1
            chunk.attempts += 1
            chunk.sent_at = now
            serial = next(self._serials)
            self._in_flight[serial] = chunk
            self._by_id.setdefault(chunk.chunk_id, deque()).append(serial)
            write(chunk.frame)
            stats.chunks_sent += 1
            stats.bytes_sent += len(chunk.frame)
        self._arm_ack_timer(conn)

    async def _connect_round(self) -> Optional[_Connection]:
        """Try each server once, starting with the current one; None if all failed."""
        assert self._loop is not None
        delay = self._retry_at - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self._expire_pending()
        if not self._pending:
            return None
        count = len(self.servers)
        for step in range(count):
            index = (self._server_index + step) % count
            try:
                conn = await self._open_connection(index)
            except Exception as exc:  # refused, timeout, TLS, handshake, bad address: next server
                host, port = self.servers[index]
                reason = str(exc) or type(exc).__name__
                self.last_error = f"{host}:{port}: {reason}"
                if isinstance(exc, HandshakeError):
                    self.stats.handshake_failures += 1
                    # One line per new reason (and now and then), not one per retry.
                    if reason != self._handshake_error or _worth_logging(self.stats.handshake_failures):
                        log.error("downstream %s:%d: shared-key handshake failed: %s; chunks stay spooled "
                                  "(%d failed handshakes so far)", host, port, reason,
                                  self.stats.handshake_failures)
                    self._handshake_error = reason
                else:
                    log.warning("downstream %s:%d unusable: %s", host, port, reason)
                if step < count - 1:
                    self.stats.failovers += 1
                continue
            self._server_index = index
            self._conn = conn
            self._handshake_error = None
            return conn
        # Nobody answered: fail what waits now so it can be spooled, and hold new work
        # back until the backoff has passed.
        self._server_index = 0
        now = self._loop.time()
        self._down_until = self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_wait)
        while self._pending:
            self._fail(self._pending.popleft())
        self._flush_all()
        while self._pending:
            self._fail(self._pending.popleft())
        return None

    def _expire_pending(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        if self._pending and now - self._pending[0].created >= self.retry_deadline:
            keep: Deque[_Chunk] = deque()
            for chunk in self._pending:
                if now - chunk.created >= self.retry_deadline:
                    self._give_up(chunk)
                else:
                    keep.append(chunk)
            self._pending = keep

    async def _open_connection(self, index: int) -> _Connection:
        host, port = self.servers[index]
        assert self._loop is not None

        async def establish() -> Tuple[asyncio.StreamReader, asyncio.StreamWriter,
                                       codec.FrameReader]:
            if host.startswith("unix://"):
                reader, writer = await asyncio.open_unix_connection(host[len("unix://"):],
                                                                    ssl=self._ssl)
            else:
                server_hostname = (self.tls_server_hostname or host) if self._ssl else None
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=self._ssl, server_hostname=server_hostname)
            replies = codec.FrameReader(_MAX_REPLY_SIZE)
            try:
                if self.shared_key is not None:
                    await self._handshake(reader, writer, replies)
            except BaseException:
                writer.transport.abort()
                raise
            return reader, writer, replies

        reader, writer, replies = await asyncio.wait_for(establish(), self.connect_timeout)
        conn = _Connection(index, reader, writer, replies, self._loop.time())
        conn.reader_task = self._loop.create_task(self._read_acks(conn))
        log.info("connected to downstream %s:%d", host, port)
        return conn

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                         replies: codec.FrameReader) -> None:
        """HELO → PING → PONG, as Fluentd's out_forward does it.

        Real servers (Fluentd and Fluent Bit in_forward) always put a non-empty auth salt in
        the HELO, with or without user authentication; so, like Fluentd, the PING carries
        the password digest sha512_hex(auth_salt + username + password) whenever the salt is
        non-empty (with an empty username and password unless they are set), and empty
        fields when it is empty. The PONG must be `true` and prove the shared key.
        """
        try:
            helo = codec.parse_helo(await _read_one(reader, replies))
        except codec.ProtocolError as exc:
            raise HandshakeError(f"{exc} from the server") from None
        key = str(self.shared_key)
        salt = self._shared_key_salt
        if helo.auth_salt:
            user_proof = codec.password_digest(helo.auth_salt, self.username, self.password)
            username = self.username
        else:
            user_proof = username = ""
        writer.write(codec.packb(["PING", self.self_hostname, salt,
                                  codec.ping_digest(salt, self.self_hostname, helo.nonce, key),
                                  username, user_proof]))
        await writer.drain()
        try:
            reply = await _read_one(reader, replies)
        except ConnectionError:
            # Fluent Bit answers a wrong key by closing without a PONG.
            raise HandshakeError("the server closed the connection instead of answering the PING "
                                 "(wrong shared key?)") from None
        pong = codec.check_pong(reply, shared_key_salt=salt.encode("ascii"), nonce=helo.nonce,
                                shared_key=key)
        if not pong.ok:
            raise HandshakeError(f"the server refused the handshake: {pong.reason}")

    # -- acks and failures -------------------------------------------------------

    async def _read_acks(self, conn: _Connection) -> None:
        try:
            while True:
                data = await conn.reader.read(1 << 16)
                if not data:
                    raise ConnectionResetError("downstream closed the connection")
                conn.replies.feed(data)
                for message in conn.replies:
                    self._on_reply(conn, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure of this peer ends this connection only
            self._connection_lost(conn, exc)

    def _on_reply(self, conn: _Connection, message: Any) -> None:
        ack = codec.ack_chunk_id(message)
        if ack is not None:
            if isinstance(ack, bytes):
                ack = ack.decode("utf-8", "surrogateescape")
            serials = self._by_id.get(ack) if isinstance(ack, str) else None
            if not serials:
                # A wrong chunk id (a confused or hostile downstream), or one we gave up on.
                self.stats.unknown_acks += 1
                if _worth_logging(self.stats.unknown_acks):
                    host, port = self.servers[conn.index]
                    log.warning("downstream %s:%d acked chunk id %.60r, which is not waiting for an ack "
                                "(%d such acks so far)", host, port, ack, self.stats.unknown_acks)
                return
            serial = serials.popleft()
            if not serials:
                del self._by_id[ack]
            chunk = self._in_flight.pop(serial)
            assert self._loop is not None
            self.stats.chunks_acked += 1
            self.stats.observe_ack_latency(self._loop.time() - chunk.sent_at)
            self._backoff = self.retry_wait
            self._resolve(chunk, True)
            if not self._in_flight:
                self._schedule_flush_now()
            self._arm_ack_timer(conn)
        elif isinstance(message, list) and message and message[0] == "HELO":
            raise HandshakeError("the downstream asks for a shared key (sent HELO)")

    def _schedule_flush_now(self) -> None:
        # The link is idle again: whatever collected meanwhile goes out at once.
        if self._open and not self._pending:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            self._schedule_flush()

    def _arm_ack_timer(self, conn: _Connection) -> None:
        if conn.ack_timer is not None:
            conn.ack_timer.cancel()
            conn.ack_timer = None
        if not self._in_flight or conn.lost:
            return
        assert self._loop is not None
        oldest = next(iter(self._in_flight.values()))
        delay = max(0.0, oldest.sent_at + self.ack_timeout - self._loop.time())
        conn.ack_timer = self._loop.call_later(delay, self._check_ack_timeout, conn)

    def _check_ack_timeout(self, conn: _Connection) -> None:
        conn.ack_timer = None
        if conn.lost or not self._in_flight:
            return
        assert self._loop is not None
        oldest = next(iter(self._in_flight.values()))
        if self._loop.time() - oldest.sent_at >= self.ack_timeout:
            self._connection_lost(conn, asyncio.TimeoutError(
                f"no ack within ack_timeout={self.ack_timeout}s"))
        else:
            self._arm_ack_timer(conn)

    def _connection_lost(self, conn: _Connection, exc: BaseException) -> None:
        """Close `conn`; send its unacked chunks again, in order, on the next server."""
        if conn.lost:
            return
        self._drop_connection(conn)
        chunks = list(self._in_flight.values())
        self._in_flight.clear()
        self._by_id.clear()
        if not chunks:
            return  # an idle connection closed (keepalive timeout): just reconnect later
        host, port = self.servers[conn.index]
        reason = str(exc) or type(exc).__name__
        self.last_error = f"{host}:{port}: {reason}"
        log.warning("downstream %s:%d failed with %d chunk(s) unacked: %s",
                    host, port, len(chunks), reason)
        assert self._loop is not None and self._wake is not None
        now = self._loop.time()
        # The oldest unacked chunk is the one the downstream choked on (it handles a
        # connection's chunks in order); the ones behind it are innocent.
        # A HELO we have no key for is the link's configuration, not this chunk's fault.
        suspect = chunks[0]
        if not isinstance(exc, HandshakeError):
            suspect.failures += 1
            if len(suspect.parts) > 1:
                chunks[:1] = self._split(suspect)
            elif self.retry_max_times is not None and suspect.failures >= self.retry_max_times:
                chunks = chunks[1:]
                self._refuse(suspect, self.last_error)
        retry = [c for c in chunks if now - c.created < self.retry_deadline]
        for chunk in chunks:
            if now - chunk.created >= self.retry_deadline:
                self._give_up(chunk)
        self._pending.extendleft(reversed(retry))
        if len(self.servers) > 1:
            self._server_index = (conn.index + 1) % len(self.servers)
            self.stats.failovers += 1
        self._retry_at = now + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_wait)
        if self._pending:
            self._wake.set()
        elif self._idle is not None:
            self._idle.set()

    def _refuse(self, chunk: _Chunk, reason: str) -> None:
        log.warning("downstream refused a chunk of %d records (tag %s) %d times, last: %s; giving up on it",
                    chunk.count, chunk.tag, chunk.failures, reason)
        self._resolve(chunk, Refused(reason, chunk.failures))

    def _fail(self, chunk: _Chunk) -> None:
        """Not delivered now (no server answers): False, or NotAcked if it was refused before."""
        self._resolve(chunk, NotAcked(self.last_error or "no ack", chunk.failures) if chunk.failures else False)

    def _give_up(self, chunk: _Chunk) -> None:
        cause = self.last_error or "no ack"
        if not cause.startswith("not acked within"):
            self.last_error = f"not acked within retry_deadline={self.retry_deadline}s: {cause}"
        self._resolve(chunk, NotAcked(cause, chunk.failures) if chunk.failures else False)

    def _drop_connection(self, conn: _Connection) -> None:
        conn.lost = True
        if conn.ack_timer is not None:
            conn.ack_timer.cancel()
            conn.ack_timer = None
        if conn.reader_task is not None and conn.reader_task is not asyncio.current_task():
            conn.reader_task.cancel()
        conn.writer.transport.abort()
        if self._conn is conn:
            self._conn = None


def _worth_logging(count: int) -> bool:
    """Log the 1st..10th occurrence, then every power of two: visible, but no log flood."""
    return count <= 10 or count & (count - 1) == 0


async def _read_one(reader: asyncio.StreamReader, replies: codec.FrameReader) -> Any:
    """The next msgpack value from the stream (used during the handshake)."""
    while True:
        try:
            return next(replies)
        except StopIteration:
            pass
        data = await reader.read(4096)
        if not data:
            raise ConnectionResetError("the server closed the connection during the handshake")
        replies.feed(data)
