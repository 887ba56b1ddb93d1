"""Connections accepted by one process and served by others: how `--workers N` shares them.

A `ConnectionDealer` (in the supervisor) listens on the relay's addresses, accepts each
connection and deals it to the worker process with the fewest open connections (among
equals, the one dealt to longest ago), passing the socket over a unix socket pair
(SCM_RIGHTS). The worker's `HandedConnections` gives each socket it receives to its forward
server (`ForwardServer.adopt`) and sends back one byte for every one it has closed, so the
dealer knows each worker's load.

Why not every worker listening with SO_REUSEPORT: the kernel then picks a listener by a hash
of each connection's addresses, blind to load, and log senders keep few, long-lived
connections. Two Fluent Bit connections land on one of two workers half the time and
leave the other idle for as long as they last (8 connections split 4/4 only a quarter of
the time). Dealing by open connections keeps the workers even, the way HAProxy's leastconn
or Fluentd's shared socket with an idle acceptor do.

A worker that is starting or restarting is dealt nothing; while no worker can take a
connection the dealer does not accept, so new connections wait in the listen backlog (the
senders' connect timeout and retry apply) and none is accepted only to be closed.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Set, Tuple

from ..config.options import host_port, host_port_text
from .server import LogThrottle, clear_stale_socket, peer_text

log = logging.getLogger("atnorm.forward")

# Connections accepted per wake-up of a listener, so one busy port cannot starve the others.
ACCEPT_BATCH = 64
# After accept fails for want of file descriptors or memory, how long the dealer pauses.
ACCEPT_PAUSE = 1.0
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
# Passing a connection to a worker failed because the worker is gone.
_GONE = {errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN, errno.EBADF}
# What the dealer sends with each socket, and a worker sends back per closed connection.
_DEALT = b"c"
_CLOSED = b"x"


def _listeners(text: str) -> List[socket.socket]:
    """Listening sockets for `text` (`HOST:PORT` or `unix:///path`): every address the host
    resolves to, all on one port (port 0: the free port the first one got)."""
    host, wanted = host_port(text)
    if host.startswith("unix://"):
        path = host[len("unix://"):]
        clear_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            sock.listen(socket.SOMAXCONN)
        except OSError:
            sock.close()
            raise
        return [sock]
    bound: List[socket.socket] = []
    seen: Set[Any] = set()
    try:
        for family, kind, proto, _, resolved in socket.getaddrinfo(
                host, wanted, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE):
            if (family, resolved) in seen:
                continue
            seen.add((family, resolved))
            address: Any = resolved
            if bound and not wanted:  # port 0: the rest share the first one's port
                address = (resolved[0], bound[0].getsockname()[1]) + tuple(resolved[2:])
            sock = socket.socket(family, kind, proto)
            bound.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(socket.SOMAXCONN)
    except OSError:
        for sock in bound:
            sock.close()
        raise
    return bound


def _address_text(sock: socket.socket) -> str:
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return "unix://" + (name.decode() if isinstance(name, bytes) else name)
    return host_port_text(name[0], name[1])


@dataclass
class _Seat:
    """One worker index as the dealer sees it."""

    index: int
    channel: socket.socket  # the dealer's end of the pair
    ready: bool = False
    open: int = 0  # dealt and not yet reported closed
    last_dealt: int = 0
    dealt: int = 0  # in this worker's life


class ConnectionDealer:
    """Listens on `listen` and deals accepted connections to workers (module docstring).

    Binding happens at construction, so a port in use fails start-up before any worker
    starts, and port 0 is resolved once: `listen` holds the bound addresses, which stay
    bound while workers restart."""

    def __init__(self, listen: Sequence[str]) -> None:
        self._listeners: List[socket.socket] = []
        self._seats: Dict[int, _Seat] = {}
        self._accepting = False
        self._closed = False
        self._deals = 0
        self._paused: Optional[asyncio.TimerHandle] = None
        self._throttle = LogThrottle()
        texts: List[str] = []
        for text in listen:
            try:
                sockets = _listeners(text)
            except OSError as exc:
                self.close()
                raise OSError(exc.errno, f"cannot listen on {text}: {exc.strerror or exc}") from None
            for sock in sockets:
                sock.setblocking(False)
            self._listeners.extend(sockets)
            texts.extend(_address_text(sock) for sock in sockets)
        self.listen: Tuple[str, ...] = tuple(texts)

    def seat(self, index: int) -> socket.socket:
        """A fresh pair for worker `index` (replacing a gone one's); returns the worker's end,
        to pass to its process. It is dealt connections once `ready(index)`."""
        self.leave(index)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        mine.setblocking(False)
        seat = self._seats[index] = _Seat(index, mine)
        asyncio.get_running_loop().add_reader(mine.fileno(), self._notices, seat)
        return theirs

    def ready(self, index: int) -> None:
        """Worker `index` serves connections now."""
        seat = self._seats.get(index)
        if seat is not None:
            seat.ready = True
        self._update_accepting()

    def leave(self, index: int) -> None:
        """Worker `index` is gone (or going): deal it nothing more."""
        seat = self._seats.pop(index, None)
        if seat is not None:
            self._drop(seat)
        self._update_accepting()

    def loads(self) -> Dict[int, Tuple[int, int]]:
        """(open, dealt) connections per worker index."""
        return {index: (seat.open, seat.dealt) for index, seat in self._seats.items()}

    def close(self) -> None:
        """Stop accepting and let the addresses go (a unix socket file is removed)."""
        self._closed = True
        self._update_accepting()
        for seat in list(self._seats.values()):
            self._drop(seat)
        self._seats.clear()
        for sock in self._listeners:
            path = sock.getsockname() if sock.family == socket.AF_UNIX else None
            sock.close()
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        self._listeners = []

    # --- inside ------------------------------------------------------------------------------

    def _drop(self, seat: _Seat) -> None:
        seat.ready = False
        try:
            asyncio.get_running_loop().remove_reader(seat.channel.fileno())
        except (RuntimeError, ValueError):
            pass
        seat.channel.close()

    def _update_accepting(self) -> None:
        """Accept while some worker can take a connection, and not while none can."""
        should = not self._closed and self._paused is None and any(s.ready for s in self._seats.values())
        if should == self._accepting:
            return
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            if should:
                loop.add_reader(sock.fileno(), self._accept, sock)
            else:
                loop.remove_reader(sock.fileno())
        self._accepting = should

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                connection, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _OUT_OF_RESOURCES:
                    self._throttle.warning("accept", _address_text(listener), "cannot accept connections on "
                                           "%s: %s; pausing %.0f s", _address_text(listener), exc.strerror,
                                           ACCEPT_PAUSE)
                    self._pause()
                    return
                continue  # e.g. ECONNABORTED: that peer gave up; the next may be waiting
            self._deal(connection, peer, listener)
            if not self._accepting:
                return

    def _pause(self) -> None:
        loop = asyncio.get_running_loop()

        def resume() -> None:
            self._paused = None
            self._update_accepting()

        self._paused = loop.call_later(ACCEPT_PAUSE, resume)
        self._update_accepting()

    def _deal(self, connection: socket.socket, peer: Any, listener: socket.socket) -> None:
        """Pass `connection` to the least loaded ready worker; if none takes it, close it
        (nothing was read from it: the sender connects again)."""
        try:
            for seat in sorted((s for s in self._seats.values() if s.ready), key=lambda s: (s.open, s.last_dealt)):
                try:
                    socket.send_fds(seat.channel, [_DEALT], [connection.fileno()])
                except OSError as exc:
                    if exc.errno in _GONE:
                        seat.ready = False  # its end of the pair reports EOF next
                    # Otherwise its end is full, or too many descriptors are in flight to
                    # workers not taking them (ETOOMANYREFS): try the next one.
                    continue
                self._deals += 1
                seat.open += 1
                seat.dealt += 1
                seat.last_dealt = self._deals
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("connection from %s dealt to worker %d (open per worker: %s)",
                              peer_text(peer, listener.getsockname()),
                              seat.index, ", ".join(f"{s.index}: {s.open}" for s in self._seats.values()))
                return
            self._throttle.warning("undealt", "", "no worker could take a connection now; closed it (the "
                                   "sender connects again)")
        finally:
            connection.close()  # the worker holds its own descriptor now
            self._update_accepting()

    def _notices(self, seat: _Seat) -> None:
        """Closed-connection notices from a worker, or its end's EOF (the worker is gone)."""
        try:
            data = seat.channel.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if data:
            seat.open = max(0, seat.open - data.count(_CLOSED))
            return
        if self._seats.get(seat.index) is seat:
            self.leave(seat.index)


class HandedConnections:
    """A worker's end of the pair: each socket dealt goes to `serve(sock)`, which owns it and
    returns once the connection is closed; each return is reported back to the dealer.
    `close()` when the worker stops serving: the dealer sees the pair end and deals it
    nothing more (a connection still queued in the pair is closed unread; its sender
    connects again)."""

    def __init__(self, channel: socket.socket, serve: Callable[[socket.socket], Awaitable[None]]) -> None:
        self.channel = channel
        self.serve = serve
        self.channel.setblocking(False)
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._unreported = 0
        self._reading = False
        self._writing = False
        self._closed = False
        self._throttle = LogThrottle()

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._receive)
        self._reading = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop_reading()
        self._stop_writing()
        self.channel.close()

    def _stop_reading(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self._reading = False

    def _stop_writing(self) -> None:
        if self._writing:
            asyncio.get_running_loop().remove_writer(self.channel.fileno())
            self._writing = False

    def _receive(self) -> None:
        while True:
            try:
                data, descriptors, _, _ = socket.recv_fds(self.channel, 256, 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, descriptors = b"", []
            if not data and not descriptors:
                # The dealer (the supervisor) is gone; the worker notices and stops by itself.
                self._stop_reading()
                return
            for descriptor in descriptors:
                task = asyncio.get_running_loop().create_task(self._serve(socket.socket(fileno=descriptor)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            # Each deal is one byte with one descriptor. Out of file descriptors, the kernel
            # delivers the byte and closes the descriptor: that connection is gone, and
            # the dealer must hear so, or it would count it open for good.
            lost = data.count(_DEALT) - len(descriptors)
            if lost > 0:
                self._throttle.warning("lost_descriptor", "", "%d dealt connection(s) arrived without their "
                                       "descriptor (out of file descriptors?); their senders connect again", lost)
                self._closed_connections(lost)

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self.serve(sock)  # owns the socket: closes it before returning
        except Exception:  # one connection's failure is its own; the worker serves on
            log.exception("serving a dealt connection failed")
            sock.close()
        finally:
            self._closed_connections(1)

    def _closed_connections(self, count: int) -> None:
        self._unreported += count
        self._report()

    def _report(self) -> None:
        """Send the dealer one byte per unreported close; what does not fit now is sent as
        soon as the pair has room."""
        if self._closed or not self._unreported:
            self._stop_writing()
            return
        try:
            sent = self.channel.send(_CLOSED * self._unreported)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._unreported = 0  # the dealer is gone
            self._stop_writing()
            return
        self._unreported -= sent
        if not self._unreported:
            self._stop_writing()
        elif not self._writing:
            asyncio.get_running_loop().add_writer(self.channel.fileno(), self._report)
            self._writing = True
