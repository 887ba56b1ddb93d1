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
