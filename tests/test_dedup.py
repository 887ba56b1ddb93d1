"""A chunk is a resend only when tag, chunk id AND content match: a different record under the
same id is never dropped (Fluent Bit's Message mode sends one constant id on every message)."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

import msgpack

from atnorm.core.pipeline import EventFilter
from atnorm.core.stats import FilterStats
from atnorm.forward.codec import Entry, EventTime, FrameReader, parse_frame
from atnorm.relay.routing import RoutedBatch
from atnorm.relay.service import Relay, _chunk_key
from forward_frames import Time, fluentbit_entry, fluentbit_forward, fluentd_entries, fluentd_packed_forward, gzip_members, mp
from forward_receiver import ForwardReceiver
from support import relay_settings, run

# base64 of the first 16 bytes of SHA-512 of nothing: Fluent Bit's Message-mode chunk id.
FLUENT_BIT_MESSAGE_ID = "z4PhNX7vuL3xVChQ1m2ABw=="
LIMIT = 1 << 20


def message(tag: str, seconds: int, record: Dict[str, Any], chunk: str = FLUENT_BIT_MESSAGE_ID) -> bytes:
    """Fluent Bit's Message mode: `[tag, fixext8, record, map32 {chunk, fluent_signal}]`."""
    options = b"\xdf\x00\x00\x00\x02" + mp("chunk") + mp(chunk) + mp("fluent_signal") + mp(0)
    return b"\x94" + mp(tag) + Time(seconds, 0).encode() + mp(record) + options


def decode(frame: bytes) -> Any:
    reader = FrameReader(max_frame_size=LIMIT, max_feed=len(frame) + 1)
    reader.feed(frame)
    [obj] = list(reader)
    return parse_frame(obj, max_decompressed_size=LIMIT)


async def exchange(port: int, frames: List[bytes], replies: int) -> List[Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(frames))
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False)
        answers: List[Any] = []
        while len(answers) < replies:
            data = await asyncio.wait_for(reader.read(1 << 16), 30)
            if not data:
                break
            unpacker.feed(data)
            answers.extend(unpacker)
        return answers
    finally:
        writer.close()


async def started_relay(tmp_path: Any, receiver: ForwardReceiver) -> Relay:
    relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                               "--data-dir", str(tmp_path)), EventFilter.from_schemas(stats=FilterStats()))
    await relay.start()
    return relay


# --- the key ---------------------------------------------------------------------------------

def test_same_id_with_other_content_is_another_chunk_and_same_content_is_a_resend():
    first = decode(message("fb.normal", 1796108126, {"n": 1}))
    again = decode(message("fb.normal", 1796108126, {"n": 1}))
    other = decode(message("fb.normal", 1796108127, {"n": 2}))
    other_tag = decode(message("fb.warning", 1796108126, {"n": 1}))
    assert first.chunk_id == other.chunk_id == FLUENT_BIT_MESSAGE_ID
    assert first.resend_key == again.resend_key
    assert len({first.resend_key, other.resend_key, other_tag.resend_key}) == 3


def test_resend_key_covers_forward_packed_and_compressed_content():
    entries = [fluentbit_entry(Time(10, n), {"n": n}) for n in range(3)]
    forward, _ = fluentbit_forward("t", entries, ack=True)
    fewer, _ = fluentbit_forward("t", entries[:2], ack=True)
    a, b = decode(forward), decode(fewer)
    assert a.resend_key is not None and a.resend_key != b.resend_key
    body = fluentd_entries([(Time(1, 0), {"a": 1})])
    packed = decode(fluentd_packed_forward("t", body, size=1, chunk_id="same\n"))
    packed_other = decode(fluentd_packed_forward("t", fluentd_entries([(Time(1, 0), {"a": 2})]), size=1,
                                                 chunk_id="same\n"))
    gzipped = decode(fluentd_packed_forward("t", gzip_members([body]), size=1, chunk_id="same\n", compressed="gzip"))
    assert packed.resend_key != packed_other.resend_key
    assert packed.resend_key == gzipped.resend_key  # the same entries, whatever the compression


def test_no_id_or_an_id_that_cannot_be_a_key_is_never_remembered():
    assert decode(b"\x93" + mp("t") + mp([[1, {"a": 1}]]) + mp({})).resend_key is None
    assert decode(b"\x93" + mp("t") + mp([[1, {"a": 1}]]) + mp({"chunk": {"a": 1}})).resend_key is None


# --- through the relay ------------------------------------------------------------------------

def test_fluent_bit_messages_under_one_id_are_all_passed_on_and_acked(tmp_path):
    frames = [message("fb.normal", 1796108126 + n, {"msg": f"record {n}"}) for n in range(5)]

    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = await started_relay(tmp_path, receiver)
            try:
                answers = []
                for frame in frames:  # one at a time, each after the last one's ack
                    answers += await exchange(relay.server.port, [frame], 1)
                await receiver.wait_for(lambda: len(receiver.events) >= 5)
            finally:
                await relay.stop()
        assert answers == [{"ack": FLUENT_BIT_MESSAGE_ID}] * 5
        assert sorted(r["msg"] for r in receiver.records) == [f"record {n}" for n in range(5)]
        assert relay.relay_stats.duplicate_chunks == 0
    run(scenario())


def test_a_real_resend_is_acked_again_but_passed_on_once(tmp_path):
    frame = message("fb.normal", 1796108126, {"msg": "once"})

    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = await started_relay(tmp_path, receiver)
            try:
                assert await exchange(relay.server.port, [frame], 1) == [{"ack": FLUENT_BIT_MESSAGE_ID}]
                assert await exchange(relay.server.port, [frame, frame], 2) == [{"ack": FLUENT_BIT_MESSAGE_ID}] * 2
                await receiver.wait_for(lambda: len(receiver.events) >= 1)
                await asyncio.sleep(0.2)
            finally:
                await relay.stop()
        assert receiver.records == [{"msg": "once"}]
        assert relay.relay_stats.duplicate_chunks == 2
        assert relay.filter_stats.snapshot()["received"] == 1
    run(scenario())


def test_another_chunk_under_the_id_of_an_unfinished_one_does_not_take_its_place(tmp_path):
    """The relay remembers a chunk that was only partly handed on, so its resend hands on just
    the missing part. A different chunk under the same id must not be taken for that resend:
    before, its records were replaced by the old chunk's leftovers and lost, though acked."""
    first = message("fb.normal", 1796108126, {"msg": "first"})
    second = message("fb.normal", 1796108127, {"msg": "second"})

    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = await started_relay(tmp_path, receiver)
            try:
                leftover = RoutedBatch("passed", "fb.normal", [Entry(EventTime(1796108126), {"msg": "first"})])
                relay._unfinished[_chunk_key(decode(first))] = [leftover]
                assert await exchange(relay.server.port, [second], 1) == [{"ack": FLUENT_BIT_MESSAGE_ID}]
                await receiver.wait_for(lambda: len(receiver.events) >= 1)
                await asyncio.sleep(0.2)
            finally:
                await relay.stop()
        assert receiver.records == [{"msg": "second"}]
    run(scenario())


def test_frame_reader_keeps_the_exact_bytes_of_each_frame_for_the_digest():
    frames = [message("fb.normal", 1796108126 + n, {"n": n}) for n in range(3)] + [b"\xc0"]
    stream = b"".join(frames)
    reader = FrameReader(max_frame_size=LIMIT, max_feed=16, keep_frames=True)
    seen: List[bytes] = []
    for start in range(0, len(stream), 7):  # pieces that cut frames anywhere
        reader.feed(stream[start:start + 7])
        for _ in reader:
            assert reader.last_frame is not None
            seen.append(bytes(reader.last_frame))
    assert seen == frames
    assert reader.buffered == 0
    chunk = parse_frame(unpackb_frame(frames[0]), max_decompressed_size=LIMIT, raw=frames[0])
    assert chunk.resend_key is not None and chunk.resend_key != decode(frames[1]).resend_key


def unpackb_frame(frame: bytes) -> Any:
    reader = FrameReader(max_frame_size=LIMIT, max_feed=len(frame) + 1)
    reader.feed(frame)
    return next(reader)
