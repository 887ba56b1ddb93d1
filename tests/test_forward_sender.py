"""The acknowledged forward sender against a real loopback forward receiver."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from typing import Any, Awaitable, Callable, List

import pytest

from atnorm.forward.codec import Entry, encode_event_time, pack_entries
from atnorm.forward.sender import ForwardSender, NotAcked, Refused, chunk_id
from atnorm.monitoring.relaystats import RelayStats
from forward_receiver import EventTime, ForwardReceiver
from support import forward_sender


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(test(), 30))


def login_events(first: int, count: int) -> List[dict]:
    return [{"action": "iam-identity.user-apikey.login", "outcome": "success", "n": n}
            for n in range(first, first + count)]


def payload_of(records: List[dict], seconds: int = 1714557600) -> bytes:
    return pack_entries(Entry(encode_event_time(seconds, 250_000_000), r) for r in records)


def fast_sender(*servers: int, **options: Any) -> ForwardSender:
    settings = {"ack_timeout": 2.0, "connect_timeout": 2.0, "retry_deadline": 10.0, "retry_wait": 0.01,
                "retry_max_wait": 0.05, "flush_interval": 0.01, "stats": RelayStats()}
    settings.update(options)
    return forward_sender([("127.0.0.1", port) for port in servers], **settings)


def test_a_batch_goes_out_as_packed_forward_with_chunk_and_size_and_is_acked():
    async def scenario():
        async with ForwardReceiver() as receiver:
            sender = fast_sender(receiver.port)
            records = login_events(0, 3)
            assert await sender.send("at.accepted", payload_of(records), 3) is True
            await sender.close()
            [frame] = receiver.frames
            assert frame.mode == "packed_forward"
            assert frame.tag == "at.accepted"
            assert frame.options["size"] == 3
            assert frame.chunk == chunk_id("at.accepted", payload_of(records))
            assert frame.acked
            assert [r for _, r in frame.entries] == records
            assert frame.entries[0][0] == EventTime(1714557600, 250_000_000)
            assert sender.stats.chunks_sent == sender.stats.chunks_acked == 1
            assert sender.stats.ack_latency_count == 1
            assert sender.stats.bytes_sent > len(payload_of(records))
    run(scenario)


def test_concurrent_sends_for_a_tag_are_coalesced_and_keep_their_order():
    async def scenario():
        async with ForwardReceiver() as receiver:
            sender = fast_sender(receiver.port)
            records = login_events(0, 300)
            results = await asyncio.gather(*(sender.send("at.accepted", payload_of([r]), 1)
                                             for r in records))
            await sender.close()
            assert all(results)
            assert receiver.records == records
            assert len(receiver.frames) < len(records)
            assert sum(f.options["size"] for f in receiver.frames) == 300
    run(scenario)


def test_batches_respect_the_record_limit_and_tags_stay_apart():
    async def scenario():
        async with ForwardReceiver() as receiver:
            sender = fast_sender(receiver.port, batch_max_records=10)
            sends = [sender.send("at.accepted" if n % 2 else "at.rejected", payload_of([r]), 1)
                     for n, r in enumerate(login_events(0, 60))]
            assert all(await asyncio.gather(*sends))
            await sender.close()
            for frame in receiver.frames:
                assert 1 <= frame.options["size"] == len(frame.entries) <= 10
                assert all((r["n"] % 2 == 1) == (frame.tag == "at.accepted") for _, r in frame.entries)
            assert sorted(r["n"] for r in receiver.records) == list(range(60))
    run(scenario)


def test_gzip_compression_sends_compressed_packed_forward():
    async def scenario():
        async with ForwardReceiver() as receiver:
            sender = fast_sender(receiver.port, compress="gzip")
            records = login_events(0, 50)
            assert await sender.send("at.accepted", payload_of(records), 50)
            await sender.close()
            [frame] = receiver.frames
            assert frame.mode == "compressed_packed_forward"
            assert frame.options["compressed"] == "gzip"
            assert [r for _, r in frame.entries] == records
    run(scenario)


def test_connection_dropped_before_the_ack_resends_the_same_chunk_id():
    async def scenario():
        async with ForwardReceiver() as receiver:
            receiver.drop_before_ack = 1
            sender = fast_sender(receiver.port)
            records = login_events(0, 5)
            assert await sender.send("at.accepted", payload_of(records), 5)
            await sender.close()
            first, second = receiver.chunk_ids
            assert first == second
            assert receiver.connections == 2
            assert receiver.records == records  # only the acked copy counts as delivered
            assert sender.stats.retries == 1
            assert sender.stats.chunks_sent == 2 and sender.stats.chunks_acked == 1
    run(scenario)


def test_a_missing_ack_times_out_and_the_chunk_is_resent():
    async def scenario():
        async with ForwardReceiver(ack=False) as receiver:
            sender = fast_sender(receiver.port, ack_timeout=0.2)
            sending = asyncio.ensure_future(sender.send("at.accepted", payload_of(login_events(0, 2)), 2))
            await receiver.wait_for(lambda: len(receiver.frames) == 1)
            receiver.ack = True
            assert await sending
            await sender.close()
            assert len(receiver.chunk_ids) == 2
            assert len(set(receiver.chunk_ids)) == 1
            assert sender.stats.retries == 1
    run(scenario)


def test_primary_down_fails_over_to_the_secondary():
    async def scenario():
        async with ForwardReceiver() as primary, ForwardReceiver() as secondary:
            await primary.go_down()
            sender = fast_sender(primary.port, secondary.port)
            assert await sender.send("at.accepted", payload_of(login_events(0, 4)), 4)
            assert sender.connected_server == ("127.0.0.1", secondary.port)
            await sender.close()
            assert len(secondary.records) == 4
            assert sender.stats.failovers == 1
    run(scenario)


def test_a_chunk_lost_on_the_primary_is_resent_with_the_same_id_on_the_secondary():
    async def scenario():
        async with ForwardReceiver() as primary, ForwardReceiver() as secondary:
            primary.drop_before_ack = 1
            sender = fast_sender(primary.port, secondary.port)
            records = login_events(0, 3)
            assert await sender.send("at.accepted", payload_of(records), 3)
            await sender.close()
            assert primary.chunk_ids == secondary.chunk_ids
            assert len(primary.chunk_ids) == 1
            assert primary.records == [] and secondary.records == records
    run(scenario)


def test_the_sender_returns_to_the_primary_once_it_is_back():
    async def scenario():
        async with ForwardReceiver() as primary, ForwardReceiver() as secondary:
            await primary.go_down()
            sender = fast_sender(primary.port, secondary.port, failback_after=0.0)
            assert await sender.send("at.accepted", payload_of(login_events(0, 1)), 1)
            await primary.come_up()
            assert await sender.send("at.accepted", payload_of(login_events(1, 1)), 1)
            await sender.close()
            assert [r["n"] for r in secondary.records] == [0]
            assert [r["n"] for r in primary.records] == [1]
    run(scenario)


def test_send_returns_false_when_every_server_is_down():
    async def scenario():
        async with ForwardReceiver() as first, ForwardReceiver() as second:
            await first.go_down()
            await second.go_down()
            sender = fast_sender(first.port, second.port, retry_wait=0.5, retry_max_wait=1.0)
            assert await sender.send("at.accepted", payload_of(login_events(0, 2)), 2) is False
            assert sender.last_error and str(second.port) in sender.last_error
            # While the servers just failed, new batches are refused at once so they can be
            # spooled, rather than each waiting through another round.
            assert sender.down_for() > 0
            assert await sender.send("at.accepted", payload_of(login_events(2, 1)), 1) is False
            assert sender.stats.chunks_sent == 0
            await sender.close()
    run(scenario)


def test_a_downstream_that_never_acks_makes_send_return_false_at_the_deadline():
    async def scenario():
        async with ForwardReceiver(ack=False) as receiver:
            sender = fast_sender(receiver.port, ack_timeout=0.1, retry_deadline=0.5)
            result = await sender.send("at.accepted", payload_of(login_events(0, 1)), 1)
            assert not result and isinstance(result, NotAcked) and not isinstance(result, Refused)
            assert result.attempts >= 2  # each missing ack is counted for quarantine decisions
            assert len(receiver.chunk_ids) >= 2 and len(set(receiver.chunk_ids)) == 1
            assert "retry_deadline" in (sender.last_error or "") or "ack" in (sender.last_error or "")
            await sender.close()
    run(scenario)


def test_close_fails_batches_still_waiting_for_an_ack():
    async def scenario():
        async with ForwardReceiver(ack=False) as receiver:
            sender = fast_sender(receiver.port)
            sending = asyncio.ensure_future(sender.send("at.accepted", payload_of(login_events(0, 1)), 1))
            await receiver.wait_for(lambda: len(receiver.frames) == 1)
            await sender.close(timeout=0.1)
            assert await sending is False
            assert await sender.send("at.accepted", payload_of(login_events(1, 1)), 1) is False
    run(scenario)


def test_shared_key_handshake_with_the_right_key_delivers():
    async def scenario():
        async with ForwardReceiver(shared_key="s3cret-key") as receiver:
            sender = fast_sender(receiver.port, shared_key="s3cret-key", self_hostname="relay-1")
            assert await sender.send("at.accepted", payload_of(login_events(0, 2)), 2)
            await sender.close()
            assert receiver.auth_failures == 0
            assert len(receiver.records) == 2
    run(scenario)


def test_shared_key_handshake_with_a_wrong_key_is_refused_and_nothing_is_sent():
    async def scenario():
        async with ForwardReceiver(shared_key="s3cret-key") as receiver:
            sender = fast_sender(receiver.port, shared_key="guessed", retry_wait=0.5)
            assert await sender.send("at.accepted", payload_of(login_events(0, 2)), 2) is False
            await sender.close()
            assert receiver.auth_failures == 1
            assert receiver.frames == []
            assert "refused the handshake" in (sender.last_error or "")
    run(scenario)


def test_a_server_that_does_not_know_the_key_is_detected_by_its_pong_digest():
    async def scenario():
        async with ForwardReceiver(shared_key="other-key", check_ping=False) as impostor:
            sender = fast_sender(impostor.port, shared_key="s3cret-key", retry_wait=0.5)
            assert await sender.send("at.accepted", payload_of(login_events(0, 1)), 1) is False
            await sender.close()
            assert impostor.frames == []
            assert "digest does not match" in (sender.last_error or "")
    run(scenario)


def test_a_server_that_asks_for_a_key_we_do_not_have_is_reported():
    async def scenario():
        async with ForwardReceiver(shared_key="s3cret-key") as receiver:
            sender = fast_sender(receiver.port, retry_deadline=0.3, retry_wait=0.05)
            assert await sender.send("at.accepted", payload_of(login_events(0, 1)), 1) is False
            await sender.close()
            assert receiver.records == []
            assert "shared key" in (sender.last_error or "")
    run(scenario)


def test_garbage_from_the_downstream_ends_that_connection_only():
    async def scenario():
        async def babble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)
            writer.write(b"\xc1\xc1\xc1 not msgpack")  # 0xc1 is never valid msgpack
            await writer.drain()
            await reader.read(1 << 16)
            writer.close()

        server = await asyncio.start_server(babble, "127.0.0.1", 0)
        bad_port = server.sockets[0].getsockname()[1]
        async with ForwardReceiver() as good:
            sender = fast_sender(bad_port, good.port)
            assert await sender.send("at.accepted", payload_of(login_events(0, 2)), 2)
            await sender.close()
            assert len(good.records) == 2
        server.close()
        await server.wait_closed()
    run(scenario)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A throwaway CA and a server certificate for 127.0.0.1 signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make test certificates")
    where = tmp_path_factory.mktemp("tls")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=where, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=atnorm test CA",
            "-keyout", "ca.key", "-out", "ca.pem",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
            "-keyout", "server.key", "-out", "server.csr")
    (where / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", "ext.cnf", "-out", "server.pem")
    return where


def server_context(tls_files) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(tls_files / "server.pem"), str(tls_files / "server.key"))
    return context


def test_tls_with_the_servers_ca_delivers(tls_files):
    async def scenario():
        async with ForwardReceiver(ssl=server_context(tls_files)) as receiver:
            sender = fast_sender(receiver.port, tls=True, tls_ca_file=str(tls_files / "ca.pem"))
            assert await sender.send("at.accepted", payload_of(login_events(0, 2)), 2)
            await sender.close()
            assert len(receiver.records) == 2
    run(scenario)


def test_tls_refuses_a_server_it_cannot_verify(tls_files):
    async def scenario():
        async with ForwardReceiver(ssl=server_context(tls_files)) as receiver:
            sender = fast_sender(receiver.port, tls=True, retry_wait=0.5)
            assert await sender.send("at.accepted", payload_of(login_events(0, 1)), 1) is False
            await sender.close()
            assert receiver.frames == []
            assert "certificate" in (sender.last_error or "").lower()
    run(scenario)


def test_tls_without_verification_still_encrypts_and_delivers(tls_files):
    async def scenario():
        async with ForwardReceiver(ssl=server_context(tls_files), shared_key="k") as receiver:
            sender = fast_sender(receiver.port, tls=True, tls_verify=False, shared_key="k")
            assert await sender.send("at.accepted", payload_of(login_events(0, 2)), 2)
            await sender.close()
            assert len(receiver.records) == 2
    run(scenario)
