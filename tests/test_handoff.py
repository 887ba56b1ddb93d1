"""forward.handoff: the supervisor's dealer and a worker's end, over real sockets in one process.

Each "worker" here is a HandedConnections whose serve() keeps the connection until the
peer closes it and records which worker got it; the dealer deals over real socket pairs
(SCM_RIGHTS), as between the supervisor and its worker processes.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest

from atnorm.forward.handoff import ConnectionDealer, HandedConnections


class Workers:
    """A dealer on `listen` and N workers' ends, each serving a dealt connection by
    answering its first line with the worker's index, then holding it until the peer
    closes. Used as a context manager: the dealer and the ends close at its exit."""

    def __init__(self, count: int, ready: bool = True, listen: str = "127.0.0.1:0") -> None:
        self.dealer = ConnectionDealer([listen])
        address = self.dealer.listen[0]
        self.port = None if address.startswith("unix://") else int(address.rsplit(":", 1)[1])
        self.ends: Dict[int, HandedConnections] = {}
        self.served: Dict[int, int] = {index: 0 for index in range(count)}
        for index in range(count):
            self.join(index, ready)

    def join(self, index: int, ready: bool = True) -> None:
        end = HandedConnections(self.dealer.seat(index), lambda sock, index=index: self._serve(index, sock))
        end.start()
        self.ends[index] = end
        if ready:
            self.dealer.ready(index)

    async def _serve(self, index: int, sock: socket.socket) -> None:
        self.served[index] += 1
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"%d\n" % index)
        await writer.drain()
        await reader.read()  # until the peer closes
        writer.close()
        await writer.wait_closed()

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.dealer.close()
        for end in self.ends.values():
            end.close()


# Every client connection a test opens, kept open until the test ends (a writer that is
# garbage collected closes its connection, which the dealer would see).
OPEN: List[asyncio.StreamWriter] = []


async def connect(port: int) -> Tuple[int, asyncio.StreamWriter]:
    """Connect, and return which worker answered (and the open connection)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    OPEN.append(writer)
    line = await asyncio.wait_for(reader.readline(), 10)
    return int(line), writer


async def settle(condition, limit: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)


def run(coroutine):
    try:
        return asyncio.run(asyncio.wait_for(coroutine, 60))
    finally:
        OPEN.clear()


def test_long_lived_connections_are_dealt_evenly():
    async def scenario() -> List[int]:
        with Workers(3) as workers:
            opened = [await connect(workers.port) for _ in range(9)]
            return [index for index, _ in opened]

    got = run(scenario())
    # SO_REUSEPORT's hash would split 9 connections 3/3/3 about one time in 5.
    assert sorted(got.count(index) for index in range(3)) == [3, 3, 3]
    assert got[:3] == [0, 1, 2], "among equally loaded workers, the one dealt to longest ago"


def test_a_new_connection_goes_to_the_worker_with_the_fewest_open():
    async def scenario() -> None:
        with Workers(2) as workers:
            dealer, port = workers.dealer, workers.port
            opened = [await connect(port) for _ in range(4)]
            assert [index for index, _ in opened] == [0, 1, 0, 1]
            # Worker 1's two connections close: the next two go to it, not round robin.
            for index, writer in opened:
                if index == 1:
                    writer.close()
            await settle(lambda: dealer.loads()[1][0] == 0)
            assert [(await connect(port))[0] for _ in range(2)] == [1, 1]
            assert dealer.loads() == {0: (2, 2), 1: (2, 4)}

    run(scenario())


def test_a_worker_not_ready_or_gone_is_dealt_nothing_and_connections_wait_for_a_ready_one():
    async def scenario() -> None:
        with Workers(2, ready=False) as workers:
            dealer, port = workers.dealer, workers.port
            # No worker ready: the connection waits in the listen backlog, not accepted and closed.
            waiting = asyncio.ensure_future(connect(port))
            await asyncio.sleep(0.3)
            assert not waiting.done() and workers.served == {0: 0, 1: 0}
            dealer.ready(1)
            index, _ = await waiting
            assert index == 1
            assert (await connect(port))[0] == 1, "worker 0 is not ready yet"
            # Worker 1 goes away (its end closes, as when its process dies): only 0 is dealt to.
            dealer.ready(0)
            workers.ends[1].close()
            await settle(lambda: 1 not in dealer.loads())
            assert [(await connect(port))[0] for _ in range(3)] == [0, 0, 0]
            # Its replacement is dealt to again once ready, first as the least loaded.
            workers.join(1)
            assert (await connect(port))[0] == 1

    run(scenario())


def test_a_port_in_use_is_refused_and_a_unix_socket_is_dealt_too(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError, match="address already in use|Address already in use"):
            ConnectionDealer([f"127.0.0.1:{taken.getsockname()[1]}"])

    path = tmp_path / "relay.sock"

    async def scenario() -> List[int]:
        with Workers(2, listen=f"unix://{path}") as workers:
            dealer = workers.dealer
            assert dealer.listen == (f"unix://{path}",)
            got = []
            for _ in range(4):
                reader, writer = await asyncio.open_unix_connection(str(path))
                OPEN.append(writer)
                got.append(int(await reader.readline()))
            return got

    assert run(scenario()) == [0, 1, 0, 1]
    assert not path.exists(), "the socket file goes with the dealer"


def test_a_closed_connection_is_reported_once_however_many_close_together():
    async def scenario() -> None:
        with Workers(1) as workers:
            dealer, port = workers.dealer, workers.port
            opened = [await connect(port) for _ in range(50)]
            assert dealer.loads() == {0: (50, 50)}
            for _, writer in opened:
                writer.close()
            await settle(lambda: dealer.loads()[0][0] == 0)
            await asyncio.sleep(0.1)
            assert dealer.loads() == {0: (0, 50)}

    run(scenario())


def test_a_burst_of_connections_reset_at_once_leaves_the_dealer_serving():
    async def connect_and_reset(port: int) -> None:
        sock = socket.socket()
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST, perhaps before it is accepted or dealt

    async def scenario() -> None:
        with Workers(2) as workers:
            dealer, port = workers.dealer, workers.port
            await asyncio.gather(*(connect_and_reset(port) for _ in range(300)))
            await settle(lambda: all(open_ == 0 for open_, _ in dealer.loads().values()))
            assert sum(dealt for _, dealt in dealer.loads().values()) <= 300
            assert sorted([(await connect(port))[0] for _ in range(2)]) == [0, 1]

    run(scenario())


def test_closes_the_dealer_cannot_take_now_are_reported_once_it_can():
    """The worker's end reports each close with one byte; when the pair is full (the
    supervisor busy), the rest go as soon as there is room, not with the next close."""
    async def scenario() -> None:
        dealer_end, worker_end = socket.socketpair()
        dealer_end.setblocking(False)

        async def serve(sock: socket.socket) -> None:
            sock.close()

        end = HandedConnections(worker_end, serve)
        end.start()
        dealt = 3000  # far more one-byte notices than the pair holds unread
        try:
            for _ in range(dealt):
                mine, theirs = socket.socketpair()
                socket.send_fds(dealer_end, [b"c"], [theirs.fileno()])
                mine.close()
                theirs.close()
                await asyncio.sleep(0)
            await asyncio.sleep(0.1)
            reported = 0
            deadline = asyncio.get_running_loop().time() + 10
            while reported < dealt and asyncio.get_running_loop().time() < deadline:
                try:
                    reported += len(dealer_end.recv(65536))
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            assert reported == dealt
        finally:
            end.close()
            dealer_end.close()

    run(scenario())


# A worker's end in its own process that runs out of file descriptors for a while: the
# connections dealt meanwhile arrive as the byte without the descriptor.
_STARVED_WORKER = """
import asyncio, os, resource, socket, sys
from atnorm.forward.handoff import HandedConnections

async def main():
    held = []
    async def serve(sock):
        held.append(sock)
        await asyncio.sleep(3600)
    HandedConnections(socket.socket(fileno=int(sys.argv[1])), serve).start()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    filler = []
    try:
        while True:
            filler.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    told = asyncio.Event()
    asyncio.get_running_loop().add_reader(0, told.set)  # the test writes a line: free them
    print("full", flush=True)
    await told.wait()
    for descriptor in filler:
        os.close(descriptor)
    print("free", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_connection_dealt_to_a_worker_out_of_descriptors_is_not_counted_open_for_good():
    async def scenario() -> None:
        with Workers(0) as workers:  # the dealer only: the worker is the child process
            dealer, port = workers.dealer, workers.port
            theirs = dealer.seat(0)
            child = subprocess.Popen([sys.executable, "-c", _STARVED_WORKER, str(theirs.fileno())],
                                     pass_fds=[theirs.fileno()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
            theirs.close()
            loop = asyncio.get_running_loop()
            try:
                assert await loop.run_in_executor(None, child.stdout.readline) == "full\n"
                dealer.ready(0)
                readers = []
                for _ in range(5):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    OPEN.append(writer)
                    readers.append(reader)
                # The kernel closed each descriptor it could not pass: the senders see the end...
                assert [await asyncio.wait_for(reader.read(), 10) for reader in readers] == [b""] * 5
                # ...and the dealer hears of each, instead of counting 5 open connections for good.
                await settle(lambda: dealer.loads()[0] == (0, 5))
                child.stdin.write("\n")
                child.stdin.flush()
                assert await loop.run_in_executor(None, child.stdout.readline) == "free\n"
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                OPEN.append(writer)
                await settle(lambda: dealer.loads()[0] == (1, 6))
            finally:
                child.kill()
                child.wait()

    run(scenario())
