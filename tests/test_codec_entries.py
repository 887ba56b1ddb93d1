"""Every entry that arrives is decided: unusable times and shapes become rejections with a reason,
payloads that do not decompress completely are refused, and bin tags are text. Through a real
relay on loopback, with frames built byte for byte."""

from __future__ import annotations

import argparse
import asyncio
import time
import zlib
from typing import Any, List, Tuple

import msgpack
import pytest

from atnorm.cli.serve import configure_parser
from atnorm.core.pipeline import EventFilter
from atnorm.core.stats import FilterStats
from atnorm.forward import codec as forward_codec
from atnorm.forward.codec import EventTime, FrameReader, ProtocolError, inflate_gzip, inflate_zstd, parse_frame
from atnorm.model.encodable import encodable
from atnorm.relay.service import Relay
from forward_frames import Time, fluentd_entries, fluentd_packed_forward, gzip_members, mp, str32
from forward_receiver import EventTime as ReceivedTime
from forward_receiver import ForwardReceiver, _unpacker
from support import relay_settings, run

LIMIT = 1 << 20
RECORD = {"msg": "hello"}
START = int(time.time()) - 5

# (item as sent, rule, path). Each is one entry of a Forward / PackedForward chunk.
UNUSABLE: List[Tuple[Any, str, str]] = [
    ([msgpack.ExtType(0, b"\x00\x00\x00\x01"), RECORD], "entry.time", "/0"),          # EventTime of 4 bytes
    ([msgpack.ExtType(0, b"\x00" * 12), RECORD], "entry.time", "/0"),                 # EventTime of 12 bytes
    ([msgpack.Timestamp(1714557600, 5), RECORD], "entry.time", "/0"),                 # msgpack Timestamp, ext -1
    ([msgpack.ExtType(5, b"\x00" * 8), RECORD], "entry.time", "/0"),                  # some other ext type
    (["2024-05-01T10:00:00Z", RECORD], "entry.time", "/0"),
    ([True, RECORD], "entry.time", "/0"),
    ([{"t": 1}, RECORD], "entry.time", "/0"),
    ([-5, RECORD], "entry.time", "/0"),
    ([[msgpack.ExtType(7, b"x"), {"m": 1}], RECORD], "entry.time", "/0/0"),
    ([1714557600, RECORD, "third"], "entry.shape", ""),
    ([1714557600], "entry.shape", ""),
    ("not an entry", "entry.shape", ""),
    ([[1714557600, "metadata that is not a map"], RECORD], "entry.shape", "/0"),
    ([1714557600, None], "entry.record", "/1"),
    ([1714557600, "a string record"], "entry.record", "/1"),
    ([1714557600, [1, 2]], "entry.record", "/1"),
]


async def exchange(port: int, frames: List[bytes], replies: int) -> Tuple[List[Any], bool]:
    """Send raw frames on one connection; (answers, whether the relay closed the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(frames))
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False)
        answers: List[Any] = []
        while len(answers) < replies:
            data = await asyncio.wait_for(reader.read(1 << 16), 30)
            if not data:
                return answers, True
            unpacker.feed(data)
            answers.extend(unpacker)
        return answers, False
    finally:
        writer.close()


def decode_frame(frame: bytes) -> forward_codec.Chunk:
    reader = FrameReader(max_frame_size=LIMIT, max_feed=len(frame) + 1)
    reader.feed(frame)
    [message] = list(reader)
    return parse_frame(message, max_decompressed_size=LIMIT)


def as_received(value: Any) -> Any:
    """`value` as the test receiver decodes it."""
    unpacker = _unpacker()
    unpacker.feed(msgpack.packb(value, use_bin_type=True))
    return next(unpacker)


# --- codec ---------------------------------------------------------------------------------

def test_unusable_entries_are_kept_with_their_problem_not_dropped():
    items = [item for item, _, _ in UNUSABLE] + [[0, {"a": 1}], [None, {"b": 2}], [Time(0, 0), {"c": 3}]]
    chunk = decode_frame(b"\x93" + mp("t") + mp(items) + mp({}))
    assert len(chunk.entries) == len(items) and chunk.invalid == len(UNUSABLE)
    for entry, (item, rule, path) in zip(chunk.entries, UNUSABLE):
        assert entry.problem is not None, item
        assert (entry.problem.rule, entry.problem.path) == (rule, path), item
        assert isinstance(entry.time, EventTime) and entry.time.seconds >= START
    valid = chunk.entries[len(UNUSABLE):]
    assert [e.problem for e in valid] == [None, None, None]
    # nil, 0 and an EventTime of 0 mean "no time": the arrival time, as Fluentd's in_forward does
    assert all(isinstance(e.time, EventTime) and e.time.seconds >= START for e in valid)


def test_an_unusable_entry_packs_back_as_it_came_and_decodes_to_the_same_problem():
    payload = b"".join(mp(item) for item, _, _ in UNUSABLE)
    entries, invalid = forward_codec.unpack_entries(payload)
    assert invalid == len(UNUSABLE)
    assert forward_codec.pack_entries(entries) == payload
    again, _ = forward_codec.unpack_entries(forward_codec.pack_entries(entries))
    assert [e.problem for e in again] == [e.problem for e in entries]


def test_message_mode_with_an_unusable_time_is_one_entry_with_a_problem():
    chunk = decode_frame(b"\x94" + mp("t") + mp(True) + mp(RECORD) + mp({"chunk": "c1"}))
    [entry] = chunk.entries
    assert entry.problem is not None and entry.problem.rule == "entry.time"
    assert entry.record == [True, RECORD]


# --- through the relay ------------------------------------------------------------------------

def bad_chunk_frames() -> Tuple[List[bytes], int]:
    """One PackedForward (Fluentd style), one Forward chunk and one Message, all with unusable
    entries beside good ones; (frames, number of unusable entries)."""
    items = [item for item, _, _ in UNUSABLE]
    packed = fluentd_packed_forward("audit.at", b"".join(mp(i) for i in items) + fluentd_entries([(Time(1714557600), RECORD)]),
                                    size=len(items) + 1, chunk_id="packed-1\n")
    forward = b"\x93" + mp("audit.at") + mp([[1714557601, RECORD]] + items) + mp({"chunk": "forward-1"})
    message = b"\x94" + mp("audit.at") + mp({"when": "yesterday"}) + mp(RECORD) + mp({"chunk": "message-1"})
    return [packed, forward, message], 2 * len(items) + 1


@pytest.mark.parametrize("mode", ["filter", "no-filter", "filter-workers"])
def test_every_unusable_entry_is_acked_and_rejected_once_with_its_reason(tmp_path, mode):
    frames, unusable = bad_chunk_frames()
    total = unusable + 2

    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            flags = ["--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}", "--data-dir", str(tmp_path)]
            event_filter = EventFilter.from_schemas(stats=FilterStats())
            values = None
            if mode == "no-filter":
                flags += ["--filter", "off"]
                event_filter = None
            if mode == "filter-workers":
                flags += ["--filter-workers", "2"]
                parser = argparse.ArgumentParser()
                configure_parser(parser)
                from atnorm.core.settings import resolve_filter_options
                values = resolve_filter_options(parser.parse_args(flags))
            relay = Relay(relay_settings(*flags), event_filter, filter_options=values)
            await relay.start()
            try:
                answers, closed = await exchange(relay.server.port, frames, 3)
                assert answers == [{"ack": "packed-1\n"}, {"ack": "forward-1"}, {"ack": "message-1"}]
                await receiver.wait_for(lambda: len(receiver.events) >= total)
                await asyncio.sleep(0.2)
            finally:
                await relay.stop()
        rejected = [(when, record) for tag, when, record in receiver.events if tag == "audit.at.rejected"]
        others = [record for tag, _, record in receiver.events if tag != "audit.at.rejected"]
        assert len(receiver.events) == total and len(rejected) == unusable and others == [RECORD, RECORD]
        # The original is kept in the one form both JSON files and msgpack downstreams can write.
        expected = [(as_received(encodable(item)), rule, path) for item, rule, path in UNUSABLE] * 2 + \
            [([{"when": "yesterday"}, RECORD], "entry.time", "/0")]
        got = [(dead["original"], dead["reasons"][0]["rule"], dead["reasons"][0]["path"]) for _, dead in rejected]
        assert sorted(map(repr, got)) == sorted(map(repr, expected))
        for when, dead in rejected:
            if isinstance(when, list):  # [time, metadata]: the metadata travels with it
                when = when[0]
            assert isinstance(when, ReceivedTime) and when.seconds >= START  # the arrival time
            [reason] = dead["reasons"]
            assert reason["message"]
        stats = relay.filter_stats.snapshot()
        assert stats["rejected"] == unusable  # counted once each
        assert sum(n for key, n in stats["rejections"].items() if key.startswith("entry.")) == unusable
        assert relay.relay_stats.records_received == total
    run(scenario())


def test_unusable_entries_land_in_the_rejected_file_without_a_downstream(tmp_path):
    frames, unusable = bad_chunk_frames()

    async def scenario() -> None:
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)),
                      EventFilter.from_schemas(stats=FilterStats()))
        await relay.start()
        try:
            answers, _ = await exchange(relay.server.port, frames, 3)
            assert len(answers) == 3
        finally:
            await relay.stop()
    run(scenario())
    import json
    lines = [json.loads(line) for line in (tmp_path / "rejected.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(lines) == unusable
    assert {line["reasons"][0]["rule"] for line in lines} == {"entry.time", "entry.shape", "entry.record"}


# --- decompression --------------------------------------------------------------------------

def zstd_module() -> Any:
    return pytest.importorskip("zstandard")


def records_payload(count: int) -> bytes:
    return fluentd_entries([(Time(1714557600, n), {"n": n, "msg": "x" * 40}) for n in range(count)])


@pytest.mark.parametrize("damage", ["truncated", "trailing garbage", "second frame truncated", "garbage only"])
def test_zstd_payload_that_does_not_decompress_completely_is_malformed(damage):
    zstandard = zstd_module()
    body = records_payload(100)
    frame = zstandard.ZstdCompressor().compress(body)
    data = {"truncated": frame[:-7], "trailing garbage": frame + b"garbage!",
            "second frame truncated": frame + frame[:-3], "garbage only": b"not zstd at all"}[damage]
    with pytest.raises(ProtocolError) as caught:
        inflate_zstd(data, LIMIT)
    assert caught.value.kind == "malformed"


def test_zstd_frames_back_to_back_and_streamed_frames_decompress():
    zstandard = zstd_module()
    body = records_payload(50)
    streamed = zstandard.ZstdCompressor().compressobj()
    data = zstandard.ZstdCompressor().compress(body[:999]) + streamed.compress(body[999:]) + streamed.flush()
    assert bytes(inflate_zstd(data, LIMIT)) == body


def test_zstd_bomb_stops_near_the_limit():
    zstandard = zstd_module()
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))
    with pytest.raises(ProtocolError) as caught:
        inflate_zstd(bomb, 1 << 20)
    assert caught.value.kind == "decompress_limit"


@pytest.mark.parametrize("damage", ["truncated member", "trailing garbage"])
def test_gzip_payload_that_does_not_decompress_completely_is_malformed(damage):
    members = gzip_members([records_payload(3), records_payload(2)])
    data = {"truncated member": members[:-9], "trailing garbage": members + b"\x1f\x8bjunk"}[damage]
    with pytest.raises(ProtocolError) as caught:
        inflate_gzip(data, LIMIT)
    assert caught.value.kind == "malformed"


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_truncated_compressed_chunk_is_refused_not_acked(tmp_path, compression):
    """Before: a truncated zstd payload of 100 records was acked with no entries."""
    body = records_payload(100)
    if compression == "zstd":
        packed = zstd_module().ZstdCompressor().compress(body)
    else:
        compressor = zlib.compressobj(6, zlib.DEFLATED, 31)
        packed = compressor.compress(body) + compressor.flush()
    frame = b"\x93" + mp("audit.at") + str32(packed[: len(packed) // 2]) + \
        mp({"size": 100, "compressed": compression, "chunk": "cut-1\n"})

    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                       "--data-dir", str(tmp_path)), EventFilter.from_schemas(stats=FilterStats()))
            await relay.start()
            try:
                answers, closed = await exchange(relay.server.port, [frame], 1)
            finally:
                await relay.stop()
            assert answers == [] and closed
            assert relay.relay_stats.protocol_errors["malformed"] == 1
            assert relay.relay_stats.acks_sent == 0 and receiver.frames == []
    run(scenario())


# --- tags -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["forward", "message", "packed"])
def test_a_bin_tag_is_text(tmp_path, mode):
    tag = "audit.zürich".encode()
    bin_tag = b"\xc4" + bytes([len(tag)]) + tag
    if mode == "forward":
        frame = b"\x93" + bin_tag + mp([[1714557600, RECORD]]) + mp({"chunk": "bt"})
    elif mode == "message":
        frame = b"\x94" + bin_tag + mp(1714557600) + mp(RECORD) + mp({"chunk": "bt"})
    else:
        frame = b"\x93" + bin_tag + str32(mp([1714557600, RECORD])) + mp({"chunk": "bt"})
    chunk = decode_frame(frame)
    assert chunk.tag == "audit.zürich" and type(chunk.tag) is str

    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                       "--data-dir", str(tmp_path)), EventFilter.from_schemas(stats=FilterStats()))
            await relay.start()
            try:
                answers, _ = await exchange(relay.server.port, [frame], 1)
                assert answers == [{"ack": "bt"}]
                await receiver.wait_for(lambda: len(receiver.events) == 1)
            finally:
                await relay.stop()
        assert receiver.events == [("audit.zürich", 1714557600, RECORD)]
    run(scenario())


def test_bin_keys_and_values_in_records_do_not_trouble_the_codec():
    record = b"\x82\xc4\x03msg\xc4\x02hi\xc4\x01n\x01"  # {bin "msg": bin "hi", bin "n": 1}
    chunk = decode_frame(b"\x93" + mp("t") + b"\x91\x92" + mp(1714557600) + record + mp({}))
    assert chunk.entries[0].record == {b"msg": b"hi", b"n": 1} and chunk.entries[0].problem is None


def test_an_unusable_entry_with_bin_keys_is_written_to_the_rejected_file_and_acked(tmp_path):
    """Its original skips the filter (which reads bin keys as text), so the dead letter itself
    must be writable as JSON; before, the file store failed and the chunk was never acked."""
    record = b"\x82\xc4\x06action\xc4\x03x.y\xc4\x01\xff\x01"  # {bin "action": bin "x.y", bin b"\xff": 1}
    frame = b"\x93" + mp("audit.at") + b"\x91\x92" + mp(msgpack.ExtType(0, b"\0\0\0\1")) + record + \
        mp({"chunk": "binkeys"})

    async def scenario() -> None:
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)),
                      EventFilter.from_schemas(stats=FilterStats()))
        await relay.start()
        try:
            answers, _ = await exchange(relay.server.port, [frame], 1)
        finally:
            await relay.stop()
        assert answers == [{"ack": "binkeys"}]
    run(scenario())
    import json
    # The file is strict UTF-8 JSON: bytes that are not UTF-8 are written as \xNN escapes,
    # as in tags.
    text = (tmp_path / "rejected.jsonl").read_bytes().decode("utf-8")
    [line] = [json.loads(row) for row in text.splitlines()]
    assert line["original"][1] == {"action": "x.y", "\\xff": 1}
    assert line["reasons"][0]["rule"] == "entry.time"


@pytest.mark.parametrize("kind", ["bin", "str"])
def test_a_tag_that_is_not_utf8_becomes_text_with_escapes(kind):
    tag = b"audit.\xff\xfe.at"
    encoded = (b"\xc4" + bytes([len(tag)]) + tag) if kind == "bin" else bytes([0xA0 | len(tag)]) + tag
    chunk = decode_frame(b"\x93" + encoded + mp([[1714557600, RECORD]]) + mp({}))
    assert chunk.tag == "audit.\\xff\\xfe.at"
    chunk.tag.encode("utf-8")  # plain text: no surrogates left


def test_a_chunk_with_a_tag_that_is_not_utf8_is_spooled_and_acked_while_the_downstream_is_away(tmp_path):
    """Before, the tag kept its bytes as surrogates, the spool could not store it, and the
    chunk was never acked: its sender retried it forever."""
    import socket

    with socket.socket() as probe:  # a port where nothing listens
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    tag = b"audit.\xff.at"
    frame = b"\x93" + b"\xc4" + bytes([len(tag)]) + tag + mp([[1714557600, RECORD]]) + mp({"chunk": "spool-me"})

    async def scenario() -> None:
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{closed_port}",
                                   "--data-dir", str(tmp_path), "--retry-max-wait", "1"),
                      EventFilter.from_schemas(stats=FilterStats()))
        await relay.start()
        try:
            answers, _ = await exchange(relay.server.port, [frame], 1)
        finally:
            await relay.stop()
        assert answers == [{"ack": "spool-me"}]
        assert relay.relay_stats.spool_depth_records == 1
    run(scenario())
