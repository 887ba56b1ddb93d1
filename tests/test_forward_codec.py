"""The forward-protocol codec on frames built byte for byte as Fluentd and Fluent Bit send them."""

from __future__ import annotations

import gzip
import hashlib
import struct
import tracemalloc

import msgpack
import pytest

from atnorm.forward import codec as forward_codec
from atnorm.forward.codec import (
    COMPRESSED_PACKED_FORWARD,
    FORWARD,
    MESSAGE,
    PACKED_FORWARD,
    Entry,
    EventTime,
    FrameReader,
    ProtocolError,
    ack_chunk_id,
    ack_frame,
    check_ping,
    check_pong,
    encode_event_time,
    gzip_payload,
    helo_frame,
    inflate_gzip,
    pack_entries,
    packed_forward_frame,
    parse_frame,
    parse_helo,
    ping_digest,
    ping_frame,
    pong_digest,
    pong_frame,
    unpack_entries,
    unpackb,
)
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
    wide,
)

LIMIT = 1 << 20
EVENT = {"action": "iam-identity.apikey.create", "outcome": "success", "initiator": {"id": "IBMid-1"}}


def decode(frame_bytes: bytes, limit: int = LIMIT):
    reader = FrameReader(max_frame_size=limit, max_feed=len(frame_bytes) + 1)
    reader.feed(frame_bytes)
    frames = list(reader)
    assert len(frames) == 1
    return parse_frame(frames[0], max_decompressed_size=limit, peer="test")


# --- modes and time ------------------------------------------------------------------------

def test_message_mode_with_integer_time_keeps_the_integer():
    chunk = decode(fluentd_message("at.events", 1714557600, EVENT))
    assert chunk.mode == MESSAGE and chunk.tag == "at.events"
    assert chunk.entries == [Entry(1714557600, EVENT, None)]
    assert chunk.chunk_id is None and not chunk.wants_ack


def test_event_time_as_fixext8_and_ext8_decodes_to_the_same_time():
    short = decode(fluentd_message("t", Time(1714557600, 123456789), EVENT))
    long = decode(fluentd_message("t", Time(1714557600, 123456789, ext8=True), EVENT))
    assert short.entries[0].time == long.entries[0].time == EventTime(1714557600, 123456789)


def test_message_mode_option_chunk_is_taken():
    chunk = decode(fluentd_message("t", 1, EVENT, {"chunk": "abc=", "size": 1}))
    assert chunk.chunk_id == "abc=" and chunk.options["size"] == 1


def test_forward_mode_as_fluent_bit_sends_it_with_32bit_headers():
    entries = [fluentbit_entry(Time(1714557600 + i, i), {"n": i, "log": "x" * i}) for i in range(5)]
    frame, chunk_id = fluentbit_forward("fb.logs", entries, ack=True)
    assert frame[:1] == b"\xdd"
    chunk = decode(frame)
    assert chunk.mode == FORWARD and chunk.tag == "fb.logs"
    assert chunk.chunk_id == chunk_id
    assert chunk.options == {"chunk": chunk_id, "size": 5, "fluent_signal": 0}
    assert [e.record["n"] for e in chunk.entries] == list(range(5))
    assert chunk.entries[3].time == EventTime(1714557603, 3)


def test_fluent_bit_metadata_entries_keep_their_metadata():
    entries = [fluentbit_entry(Time(10, 1), {"a": 1}, {}), fluentbit_entry(Time(11, 2), {"b": 2}, {"otlp": {"x": 1}})]
    chunk = decode(fluentbit_forward("t", entries)[0])
    assert chunk.entries == [Entry(EventTime(10, 1), {"a": 1}, {}), Entry(EventTime(11, 2), {"b": 2}, {"otlp": {"x": 1}})]


def test_packed_forward_str32_payload_is_read_as_bytes_not_text():
    # A record string that is not valid UTF-8 must come back byte for byte when re-packed.
    body = fluentd_entries([(Time(1, 2), {"msg": "ok"})]) + mp([Time(3, 4), {}])[:-1] + b"\x81\xa3bad\xa2\xff\xfe"
    chunk = decode(fluentd_packed_forward("fd.logs", body, size=2, chunk_id=fluentd_chunk_id()))
    assert chunk.mode == PACKED_FORWARD
    assert chunk.entries[0].record == {"msg": "ok"}
    assert isinstance(next(iter(chunk.entries[1].record)), str)
    assert pack_entries(chunk.entries) == body


def test_packed_forward_with_bin_payload():
    body = fluentd_entries([(Time(5, 0), EVENT)])
    chunk = decode(mp(["t", body, {"size": 1}]))
    assert chunk.mode == PACKED_FORWARD and chunk.entries[0].record == EVENT


def test_compressed_text_option_means_not_compressed():
    body = fluentd_entries([(Time(5, 0), EVENT)])
    chunk = decode(fluentd_packed_forward("t", body, size=1, compressed="text"))
    assert chunk.mode == PACKED_FORWARD and len(chunk.entries) == 1


def test_gzip_chunk_of_several_members_in_a_str32():
    parts = [fluentd_entries([(Time(100 + i, 0), {"i": i})]) for i in range(3)]
    chunk = decode(fluentd_packed_forward("t", gzip_members(parts), size=3, compressed="gzip", chunk_id="id\n"))
    assert chunk.mode == COMPRESSED_PACKED_FORWARD
    assert [e.record["i"] for e in chunk.entries] == [0, 1, 2]
    assert chunk.chunk_id == "id\n"


def test_fluent_bit_gzip_chunk_with_bin_payload():
    frame, chunk_id = fluentbit_compressed("t", [fluentbit_entry(Time(7, 7), {"k": "v"}, {})])
    chunk = decode(frame)
    assert chunk.mode == COMPRESSED_PACKED_FORWARD and chunk.chunk_id == chunk_id
    assert chunk.entries == [Entry(EventTime(7, 7), {"k": "v"}, {})]


def test_unknown_options_are_ignored():
    chunk = decode(mp(["t", [[1, {"a": 1}]], {"size": 1, "future_option": [1, 2], "fluent_signal": 2}]))
    assert chunk.entries == [Entry(1, {"a": 1})]


def test_unknown_compression_is_a_protocol_error():
    with pytest.raises(ProtocolError) as caught:
        decode(mp(["t", b"\x00", {"compressed": "lz4"}]))
    assert caught.value.kind == "unsupported_compression"


def test_zstd_without_the_zstandard_package_says_what_to_do(monkeypatch):
    monkeypatch.setattr(forward_codec, "zstandard", None)
    with pytest.raises(ProtocolError) as caught:
        decode(mp(["t", b"\x28\xb5\x2f\xfd", {"compressed": "zstd"}]))
    assert caught.value.kind == "unsupported_compression"
    assert "zstandard" in str(caught.value) and "gzip" in str(caught.value)


def test_zstd_chunk_when_zstandard_is_installed():
    zstandard = pytest.importorskip("zstandard")
    body = fluentd_entries([(Time(1, 0), {"z": 1}), (Time(2, 0), {"z": 2})])
    payload = zstandard.ZstdCompressor().compress(body[:10]) + zstandard.ZstdCompressor().compress(body[10:])
    chunk = decode(mp(["t", payload, {"compressed": "zstd"}]))
    assert [e.record["z"] for e in chunk.entries] == [1, 2]


def test_zstd_bomb_stops_at_the_limit_when_zstandard_is_installed():
    zstandard = pytest.importorskip("zstandard")
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\x00" * (64 << 20))
    with pytest.raises(ProtocolError) as caught:
        forward_codec.inflate_zstd(bomb, 1 << 20)
    assert caught.value.kind == "decompress_limit"


# --- entries -------------------------------------------------------------------------------

def test_missing_time_is_stamped_with_arrival_time_and_bad_entries_are_kept_with_their_problem():
    items = [[0, {"a": 1}], [None, {"b": 2}], ["yesterday", {"c": 3}], [1, None], "junk", [1, 2, 3],
             [[1, "not a map"], {"d": 4}], [5, "not a map record"]]
    entries, invalid = forward_codec.entries_from_list(items)
    assert invalid == 6 and len(entries) == len(items)
    assert [e.record for e in entries[:2]] == [{"a": 1}, {"b": 2}]
    assert [e.problem.rule for e in entries[2:]] == ["entry.time", "entry.record", "entry.shape", "entry.shape",
                                                     "entry.shape", "entry.record"]
    assert [e.record for e in entries[2:]] == items[2:]  # kept as received
    assert all(isinstance(e.time, EventTime) and e.time.seconds > 1_600_000_000 for e in entries)


def test_packed_payload_ending_inside_an_entry_is_malformed():
    body = fluentd_entries([(Time(1, 0), EVENT)])
    with pytest.raises(ProtocolError) as caught:
        unpack_entries(body[:-3])
    assert caught.value.kind == "malformed"


def test_pack_entries_reproduces_fluent_bit_and_fluentd_entries_byte_for_byte():
    fluentd = fluentd_entries([(Time(1714557600, 5), EVENT), (Time(1714557601, 6), {"x": [1, 2.5, None, True]})])
    assert pack_entries(unpack_entries(fluentd)[0]) == fluentd
    fluent_bit = mp([[Time(9, 9), {}], {"log": "l"}]) + mp([[Time(10, 0), {"m": 1}], {"log": b"\x00bin"}])
    assert pack_entries(unpack_entries(fluent_bit)[0]) == fluent_bit


def test_encode_event_time_is_fixext8_type_0():
    assert msgpack.packb(encode_event_time(1714557600, 42)) == b"\xd7\x00" + struct.pack(">II", 1714557600, 42)


def test_sender_frame_round_trips_through_the_server_decoder():
    entries = [Entry(EventTime(1, 2), {"a": "b"}, {}), Entry(3, {"c": 1})]
    frame = packed_forward_frame("out.tag", gzip_payload(pack_entries(entries)), chunk_id="cid", size=2,
                                 compressed="gzip")
    chunk = decode(frame)
    assert chunk.entries == entries and chunk.chunk_id == "cid" and chunk.tag == "out.tag"


# --- acks ----------------------------------------------------------------------------------

def test_ack_echoes_a_str_chunk_id_with_its_newline():
    chunk_id = fluentd_chunk_id()
    assert chunk_id.endswith("\n")
    assert ack_frame(chunk_id) == ack_bytes(chunk_id)


def test_ack_keeps_a_bin_chunk_id_as_bin():
    assert ack_frame(b"\x01\x02raw") == b"\x81\xa3ack\xc4\x05\x01\x02raw"


def test_ack_of_a_str_chunk_id_that_is_not_utf8_is_byte_exact():
    frame = b"\x93\xa1t" + wide([[1, {}]]) + b"\x81\xa5chunk\xa3\xff\xfe\x41"
    chunk = decode(frame)
    assert ack_frame(chunk.chunk_id) == b"\x81\xa3ack\xa3\xff\xfe\x41"
    assert ack_chunk_id(unpackb(ack_frame(chunk.chunk_id))) == chunk.chunk_id


# --- gzip limits ---------------------------------------------------------------------------

def test_gzip_bomb_stops_at_the_limit_without_allocating_the_whole_thing():
    bomb = gzip.compress(b"\x00" * (64 << 20), 9)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as caught:
            inflate_gzip(bomb, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.kind == "decompress_limit"
    assert peak < 8 << 20


def test_gzip_limit_counts_all_members_together():
    data = gzip_members([b"a" * 600, b"b" * 600])
    assert len(inflate_gzip(data, 1200)) == 1200
    with pytest.raises(ProtocolError) as caught:
        inflate_gzip(data, 1199)
    assert caught.value.kind == "decompress_limit"


@pytest.mark.parametrize("damage", ["truncated", "trailing garbage", "not gzip"])
def test_broken_gzip_is_malformed(damage):
    good = gzip.compress(b"payload")
    data = {"truncated": good[:-5], "trailing garbage": good + b"garbage!", "not gzip": b"plain text"}[damage]
    with pytest.raises(ProtocolError) as caught:
        inflate_gzip(data, LIMIT)
    assert caught.value.kind == "malformed"


# --- frame reader --------------------------------------------------------------------------

def test_frame_reader_assembles_frames_fed_a_byte_at_a_time():
    stream = mp(["a", 1, {"x": 1}]) + b"\xc0" + wide(["b", [[Time(1, 1), {"y": 2}]]])
    reader = FrameReader(max_frame_size=1024)
    got = []
    for byte in stream:
        reader.feed(bytes([byte]))
        got.extend(reader)
    assert got == [["a", 1, {"x": 1}], None, ["b", [[EventTime(1, 1), {"y": 2}]]]]
    assert reader.buffered == 0


@pytest.mark.parametrize("header", [b"\xdb\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff", b"\xdd\x7f\xff\xff\xff"])
def test_frame_reader_refuses_huge_declared_sizes_early(header):
    reader = FrameReader(max_frame_size=1024, max_feed=4096)
    with pytest.raises(ProtocolError) as caught:
        reader.feed(header)
        list(reader)
        reader.feed(b"\x00" * 2000)
        list(reader)
    assert caught.value.kind == "oversize"


def test_frame_reader_refuses_a_frame_just_over_the_limit():
    frame = mp(["t", "x" * 100])
    exact = FrameReader(max_frame_size=len(frame))
    exact.feed(frame)
    assert list(exact) == [["t", "x" * 100]]
    over = FrameReader(max_frame_size=len(frame) - 1)
    over.feed(frame)
    with pytest.raises(ProtocolError) as caught:
        list(over)
    assert caught.value.kind == "oversize"


def test_frame_reader_reports_garbage_as_malformed():
    reader = FrameReader(max_frame_size=1024)
    reader.feed(b"\xc1\xc1\xc1")
    with pytest.raises(ProtocolError) as caught:
        list(reader)
    assert caught.value.kind == "malformed"


@pytest.mark.parametrize("frame", [["t"], [1, [[1, {}]]], ["t", [[1, {}]], "opts"], ["t", [], {}, "extra"], ["t", 1]])
def test_frames_that_cannot_be_forward_messages_are_malformed(frame):
    with pytest.raises(ProtocolError) as caught:
        parse_frame(frame, max_decompressed_size=LIMIT)
    assert caught.value.kind == "malformed"


# --- handshake -----------------------------------------------------------------------------

def test_ping_and_pong_digests_follow_the_spec_formula():
    salt, nonce = b"\x00\xffsalt", b"\x10nonce"
    assert ping_digest(salt, "client", nonce, "key") == hashlib.sha512(salt + b"client" + nonce + b"key").hexdigest()
    assert pong_digest(salt, "server", nonce, "key") == hashlib.sha512(salt + b"server" + nonce + b"key").hexdigest()


def test_fluent_bit_ping_with_a_str_salt_is_accepted():
    salt, nonce = bytes(range(240, 256)), b"n" * 16
    message = unpackb(fluentbit_ping("fb-host", salt, nonce, "s3cret"))
    assert isinstance(message[2], str)  # decoded as str, yet checked as the original bytes
    result = check_ping(message, nonce=nonce, shared_key="s3cret")
    assert result.ok and result.client_hostname == "fb-host" and result.shared_key_salt == salt


def test_ping_with_the_wrong_key_or_shape_is_refused():
    nonce = b"n" * 16
    wrong = check_ping(unpackb(fluentbit_ping("h", b"s" * 16, nonce, "other")), nonce=nonce, shared_key="s3cret")
    assert not wrong.ok and wrong.reason == "shared_key mismatch"
    five = unpackb(fluentbit_ping("h", b"s" * 16, nonce, "s3cret"))[:5]
    assert check_ping(five, nonce=nonce, shared_key="s3cret").reason == "invalid ping message"


def test_client_and_server_halves_of_the_handshake_agree():
    nonce = b"N" * 16
    helo = parse_helo(unpackb(helo_frame(nonce, b"A" * 16)))
    assert helo.nonce == nonce and helo.auth_salt == b"A" * 16 and helo.keepalive
    ping, salt = ping_frame("client-1", "k", helo.nonce, username="alice", password="pw", auth_salt=helo.auth_salt)
    checked = check_ping(unpackb(ping), nonce=nonce, shared_key="k", auth_salt=helo.auth_salt, users={"alice": "pw"})
    assert checked.ok
    bad_user = check_ping(unpackb(ping), nonce=nonce, shared_key="k", auth_salt=helo.auth_salt, users={"alice": "no"})
    assert bad_user.reason == "username/password mismatch"
    pong = unpackb(pong_frame(True, server_hostname="relay", shared_key_salt=checked.shared_key_salt, nonce=nonce,
                              shared_key="k"))
    assert check_pong(pong, shared_key_salt=salt, nonce=nonce, shared_key="k").server_hostname == "relay"
    assert not check_pong(pong, shared_key_salt=salt, nonce=nonce, shared_key="other key").ok
    refused = check_pong(unpackb(pong_frame(False, reason="shared_key mismatch")), shared_key_salt=salt,
                         nonce=nonce, shared_key="k")
    assert not refused.ok and refused.reason == "shared_key mismatch"


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, 1 << 20])
def test_a_packed_forward_frame_is_what_packing_the_message_writes(size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for tag, options in [("t", {}), ("é.x" * 100, {"size": 3, "chunk": "abc"}),
                         ("a", {"size": 1, "compressed": "gzip", "chunk": b"\xff\x00"})]:
        frame = packed_forward_frame(tag, payload, chunk_id=options.get("chunk"), size=options.get("size"),
                                     compressed=options.get("compressed"))
        assert frame == msgpack.packb([tag, payload, options], use_bin_type=True)


def test_a_protocol_error_comes_back_whole_from_another_process():
    # A filter worker's exception is pickled back to the relay; one that cannot be
    # unpickled breaks the worker pool instead of reaching the handler.
    import pickle

    error = pickle.loads(pickle.dumps(ProtocolError("malformed", "invalid entries in packed payload")))
    assert type(error) is ProtocolError
    assert (error.kind, str(error)) == ("malformed", "invalid entries in packed payload")


# A record map keyed by a map, as Forward and Message frames carry it.
_KEYED_BY_MAP = b"\x82" + mp("a") + mp(1) + mp("m") + b"\x81" + mp({"k": [1]}) + mp("v")


def _frames_read(stream: bytes, step: int) -> list:
    reader = FrameReader(1 << 20, keep_frames=True)
    frames = []
    for start in range(0, len(stream), step):
        reader.feed(stream[start:start + step])
        for frame in reader:
            frames.append((parse_frame(frame, max_decompressed_size=1 << 20, raw=reader.last_frame),
                           bytes(reader.last_frame)))
    assert reader.buffered == 0
    return frames


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
def test_a_forward_or_message_entry_keyed_by_a_map_is_an_unusable_entry_and_the_stream_reads_on(step):
    good = mp([Time(1700000000), {"x": 1}])
    keyed = b"\x92" + Time(1700000001).encode() + _KEYED_BY_MAP
    forward = b"\x93" + mp("t") + b"\x93" + good + keyed + good + mp({"chunk": "c1"})
    message = b"\x94" + mp("t") + Time(1700000002).encode() + _KEYED_BY_MAP + mp({"chunk": "c2"})
    plain = b"\x93" + mp("t") + b"\x91" + good + mp({"chunk": "c3"})
    stream = plain + forward + message + plain + forward
    frames = _frames_read(stream, step)
    assert [raw for _, raw in frames] == [plain, forward, message, plain, forward]
    chunks = [chunk for chunk, _ in frames]
    assert [(c.mode, c.chunk_id, c.invalid, c.entry_count) for c in chunks] == [
        (FORWARD, "c3", 0, 1), (FORWARD, "c1", 1, 3), (MESSAGE, "c2", 1, 1), (FORWARD, "c3", 0, 1),
        (FORWARD, "c1", 1, 3)]
    forward_chunk, message_chunk = chunks[1], chunks[2]
    assert forward_chunk.entries[0] == forward_chunk.entries[2] == Entry(EventTime(1700000000, 0), {"x": 1})
    unusable = forward_chunk.entries[1]
    assert unusable.record == [EventTime(1700000001, 0), {"a": 1, "m": [[{"k": [1]}, "v"]]}]
    assert unusable.problem is not None and unusable.problem[:2] == ("entry.record", "/1/m")
    assert unusable.problem.raw == keyed
    [from_message] = message_chunk.entries
    assert from_message.problem is not None and from_message.problem[:2] == ("entry.record", "/1/m")
    assert from_message.problem.raw == b"\x92" + Time(1700000002).encode() + _KEYED_BY_MAP
    # Packed again (as for a filter worker), each unusable entry decodes to what it was.
    again, invalid = unpack_entries(pack_entries(forward_chunk.entries + message_chunk.entries))
    assert invalid == 2 and [e.problem for e in again if e.problem] == [unusable.problem, from_message.problem]
    # The chunks that hold no such map are what reading them alone makes.
    assert chunks[0].entries == chunks[3].entries == _frames_read(plain, 1 << 20)[0][0].entries


def test_options_keyed_by_a_map_still_make_the_frame_malformed():
    frame = b"\x93" + mp("t") + b"\x91" + mp([Time(1700000000), {"x": 1}]) + b"\x81" + mp({"k": 1}) + mp(1)
    reader = FrameReader(1 << 20, keep_frames=True)
    reader.feed(frame)
    [read] = list(reader)
    with pytest.raises(ProtocolError) as raised:
        parse_frame(read, max_decompressed_size=1 << 20, raw=reader.last_frame)
    assert raised.value.kind == "malformed"


def test_maps_read_as_pairs_keep_the_frame_size_limit():
    big = b"\x93" + mp("t") + b"\x92" + b"\x92" + Time(1700000001).encode() + _KEYED_BY_MAP + \
        mp([Time(1700000000), {"x": "y" * 5000}]) + mp({})
    reader = FrameReader(4096, max_feed=1024, keep_frames=True)
    with pytest.raises(ProtocolError) as raised:
        for start in range(0, len(big), 1024):
            reader.feed(big[start:start + 1024])
            list(reader)
    assert raised.value.kind == "oversize"


def test_without_kept_frames_a_map_keyed_by_a_map_is_malformed():
    reader = FrameReader(1 << 20)  # a sender reading acks: nothing there may hold one
    reader.feed(b"\x81" + mp({"k": 1}) + mp(1))
    with pytest.raises(ProtocolError) as raised:
        list(reader)
    assert raised.value.kind == "malformed"
