"""The entry form sent downstream: plain `[time, record]` by default, metadata kept on request.

Fluent Bit with `Retain_Metadata_In_Forward_Mode` sends `[[time, metadata], record]`
entries (the real bytes of captures fb-meta-ack and fb-meta-dummy-ack are replayed here);
Fluentd 1.16 resets the connection on them, so by default they leave the relay plain.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, List

import msgpack
import pytest

from atnorm.forward.codec import Entry, EventTime, pack_entries
from atnorm.forward.sender import plain_entries
from atnorm.relay.service import Relay
from forward_receiver import ForwardReceiver
from support import relay_settings

CAPTURES = Path(__file__).parent / "fixtures" / "wire" / "metadata"


async def replay(port: int, capture: str) -> Any:
    """Send a real Fluent Bit connection's bytes to the relay; return its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((CAPTURES / f"{capture}.c2s.bin").read_bytes())
    unpacker = msgpack.Unpacker(raw=False)
    try:
        while True:
            data = await reader.read(4096)
            assert data, "the relay closed the connection"
            unpacker.feed(data)
            for message in unpacker:
                return message
    finally:
        writer.close()


def sent_entries(capture: str) -> List[list]:
    frame = msgpack.unpackb((CAPTURES / f"{capture}.c2s.bin").read_bytes(), raw=False, strict_map_key=False)
    return frame[1]


@pytest.mark.parametrize("capture", ["fb-meta-ack", "fb-meta-dummy-ack"])
@pytest.mark.parametrize("form", [None, "plain", "metadata"])
def test_entries_leave_in_the_configured_form(tmp_path, capture, form):
    async def scenario() -> List[tuple]:
        async with ForwardReceiver() as receiver:
            argv = ["--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                    "--data-dir", str(tmp_path), "--filter", "off"]
            if form is not None:
                argv += ["--forward-entry-form", form]
            relay = Relay(relay_settings(*argv))
            await relay.start()
            try:
                reply = await replay(relay.server.port, capture)
                assert isinstance(reply, dict) and "ack" in reply
                expected = len(sent_entries(capture))
                await receiver.wait_for(lambda: len(receiver.events) >= expected)
            finally:
                await relay.stop()
            return [(t, r) for f in receiver.frames for t, r in f.entries]

    got = asyncio.run(asyncio.wait_for(scenario(), 60))
    sent = sent_entries(capture)
    assert [r for _, r in got] == [r for _, r in sent]
    if form == "metadata":
        assert all(isinstance(t, list) and len(t) == 2 for t, _ in got)
        assert [t[1] for t, _ in got] == [head[1] for head, _ in sent]
    else:  # the default is plain: [time, record], as every Fluentd accepts
        assert not any(isinstance(t, list) for t, _ in got)
        assert [(t.seconds, t.nanoseconds) for t, _ in got] == [
            (int.from_bytes(h[0].data[:4], "big"), int.from_bytes(h[0].data[4:], "big")) for h, _ in sent]


def test_plain_entries_strips_metadata_and_leaves_plain_payloads_untouched():
    plain = pack_entries([Entry(EventTime(1700000000, 5), {"a": 1}), Entry(1700000001, {"b": 2})])
    assert plain_entries(plain) is plain
    mixed = pack_entries([Entry(EventTime(1700000000, 5), {"a": 1}, {"src": "x"}), Entry(1700000001, {"b": 2})])
    assert plain_entries(mixed) == plain


def test_an_unknown_entry_form_is_a_clear_config_error():
    from atnorm.config.options import ConfigError

    with pytest.raises((ConfigError, SystemExit)):
        relay_settings("--forward", "127.0.0.1:1", "--forward-entry-form", "fancy")


def _metadata_chunk() -> bytes:
    """Fluent Bit's metadata form and the plain form mixed, with records for every route."""
    from support import load_event

    valid = load_event("vsi-provision.json")
    invalid = load_event("vsi-provision.json")
    del invalid["outcome"]
    other = load_event("platform-log-not-an-event.json")
    return pack_entries([Entry(EventTime(1700000000, 1), valid, {"trace": "a"}),
                         Entry(EventTime(1700000001, 2), invalid, {"trace": "b"}),
                         Entry(1700000002, other),
                         Entry(EventTime(1700000003, 3), other, {"trace": "c"}),
                         Entry(1700000004, valid)])


def _filtering_relay(tmp_path: Path, receiver_port: int, workers: int, form: str) -> Relay:
    import argparse

    from atnorm.cli.serve import configure_parser
    from atnorm.core.pipeline import EventFilter
    from atnorm.core.settings import resolve_filter_options
    from atnorm.core.stats import FilterStats

    parser = argparse.ArgumentParser()
    configure_parser(parser)
    settings = relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver_port}",
                              "--data-dir", str(tmp_path), "--filter-workers", str(workers),
                              "--forward-entry-form", form)
    return Relay(settings, EventFilter.from_schemas(stats=FilterStats()),
                 filter_options=resolve_filter_options(parser.parse_args([])))


@pytest.mark.parametrize("form", ["plain", "metadata"])
def test_filter_workers_send_the_bytes_the_relays_own_process_sends(tmp_path, form):
    """Workers pack each batch in the configured entry form: downstream gets, per tag, the
    very payload a relay deciding in its own process sends."""
    from support import forward_sender, run

    payload = _metadata_chunk()

    async def through(workers: int) -> dict:
        async with ForwardReceiver() as receiver:
            relay = _filtering_relay(tmp_path / str(workers), receiver.port, workers, form)
            await relay.start()
            try:
                sender = forward_sender([("127.0.0.1", relay.server.port)])
                assert await sender.send("audit.at", payload, 5)
                await sender.close()
                await receiver.wait_for(lambda: len(receiver.events) == 5, 120)
            finally:
                await relay.stop()
            assert len(receiver.frames) == len({frame.tag for frame in receiver.frames})
            return {frame.tag: frame for frame in receiver.frames}

    own = run(through(1))
    workers = run(through(2))
    assert sorted(own) == ["audit.at", "audit.at.rejected"]
    assert {tag: frame.payload for tag, frame in workers.items()} == \
        {tag: frame.payload for tag, frame in own.items()}
    heads = [t for frame in workers.values() for t, _ in frame.entries]
    if form == "metadata":
        assert sum(isinstance(t, list) for t in heads) == 3
    else:
        assert not any(isinstance(t, list) for t in heads)
