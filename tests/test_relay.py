"""`atnorm serve` wired end to end on loopback: senders → relay → files or a downstream receiver."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import msgpack
import pytest
from fluent.sender import FluentSender

from atnorm.cli.serve import configure_parser
from atnorm.config.options import ConfigError
from atnorm.core.pipeline import EventFilter
from atnorm.core.settings import FilterOptions, resolve_filter_options
from atnorm.core.stats import FilterStats
from atnorm.forward.codec import Entry, EventTime, pack_entries
from atnorm.relay.service import Relay
from forward_frames import Time, fluentbit_entry, fluentbit_forward
from forward_receiver import EventTime as ReceivedTime
from forward_receiver import ForwardReceiver
from relay_process import RelayProcess
from support import forward_sender, load_event, relay_settings, run


def valid_event() -> Dict[str, Any]:
    """An audit event the bundled schemas accept (its eventTime needs normalizing)."""
    return load_event("vsi-provision.json")


def invalid_event() -> Dict[str, Any]:
    """The same event without the required `outcome`."""
    broken = valid_event()
    del broken["outcome"]
    return broken


def other_record() -> Dict[str, Any]:
    """A platform log line: not an audit event, so it passes through."""
    return load_event("platform-log-not-an-event.json")


# The valid event's eventTime, 2021-05-19T10:11:12.5+0000, normalized and as an EventTime.
NORMALIZED_TIME = "2021-05-19T10:11:12.500+0000"
NORMALIZED_EVENT_TIME = ReceivedTime(1621419072, 500_000_000)


def filter_options(*argv: str) -> FilterOptions:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    return resolve_filter_options(parser.parse_args(list(argv)))


def new_filter() -> EventFilter:
    return EventFilter.from_schemas(stats=FilterStats())


async def exchange(port: int, frames: List[bytes], replies: int) -> List[Any]:
    """Send raw frames on one connection and read `replies` msgpack answers (acks)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for frame in frames:
            writer.write(frame)
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False)
        answers: List[Any] = []
        while len(answers) < replies:
            data = await reader.read(1 << 16)
            if not data:
                break
            unpacker.feed(data)
            answers.extend(unpacker)
        return answers
    finally:
        writer.close()


def read_lines(path: Path) -> List[Any]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def wait_until(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


# --- the embedded default: a real process, fluent-logger in front, files behind ------------------

def test_fluent_logger_events_land_in_the_file_of_their_route(tmp_path):
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data)) as relay:
        assert f"writing records to {data / 'accepted.jsonl'}" in relay.stderr
        sender = FluentSender("app", host="127.0.0.1", port=relay.port, nanosecond_precision=True)
        assert sender.emit("audit", valid_event())
        assert sender.emit("audit", invalid_event())
        assert sender.emit("logs", other_record())
        sender.close()
        wait_until(lambda: all(read_lines(data / f"{route}.jsonl")
                               for route in ("accepted", "rejected", "passed")))
        status = relay.stop()

    assert status == 0
    [accepted] = read_lines(data / "accepted.jsonl")
    assert accepted["eventTime"] == NORMALIZED_TIME
    assert accepted["action"] == "audit-log.vsi.provision"
    [rejected] = read_lines(data / "rejected.jsonl")
    assert rejected["original"] == invalid_event()
    assert [(r["path"], r["rule"]) for r in rejected["reasons"]] == [("/outcome", "envelope.required")]
    assert read_lines(data / "passed.jsonl") == [other_record()]
    summary = relay.summary()
    assert (summary["received"], summary["accepted"], summary["rejected"], summary["passed"]) == (3, 1, 1, 1)
    assert "Traceback" not in relay.stderr


def test_the_console_command_starts_with_only_a_data_dir(tmp_path):
    # What the README tells a new user to type, from a fresh directory (default listen address
    # aside, so a relay already running on the machine cannot interfere).
    atnorm = Path(sys.executable).with_name("atnorm")
    if not atnorm.exists():
        pytest.skip("the atnorm console script is not installed next to this Python")
    relay = RelayProcess("--data-dir", "./atnorm-data", "--listen", "127.0.0.1:0", cwd=str(tmp_path))
    relay.args = [str(atnorm), "serve", "--data-dir", "./atnorm-data", "--listen", "127.0.0.1:0"]
    with relay:
        sender = FluentSender("app", host="127.0.0.1", port=relay.port)
        assert sender.emit("audit", valid_event())
        sender.close()
        wait_until(lambda: read_lines(tmp_path / "atnorm-data" / "accepted.jsonl"))
        assert relay.stop() == 0
    [start_line] = [line for line in relay.lines if "listening on" in line]
    assert "atnorm-data/accepted.jsonl" in start_line


def test_chunks_are_acked_only_after_their_records_are_in_the_files(tmp_path):
    async def scenario() -> None:
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)), new_filter())
        await relay.start()
        try:
            entries = [fluentbit_entry(Time(1700000000), valid_event(), {"source": "node-1"}),
                       fluentbit_entry(Time(1700000001), invalid_event(), {})]
            frame, chunk_id = fluentbit_forward("audit.at", entries, ack=True)
            [answer] = await exchange(relay.server.port, [frame], replies=1)
            assert answer == {"ack": chunk_id}
            # The ack is only sent once the store has synced: the lines are there already.
            assert len(read_lines(tmp_path / "accepted.jsonl")) == 1
            assert len(read_lines(tmp_path / "rejected.jsonl")) == 1
        finally:
            await relay.stop()
    run(scenario())


# --- forward mode: a real downstream receiver ------------------------------------------------

def fluentbit_chunk(tag: str, records: List[Tuple[Time, Dict[str, Any], Optional[Dict[str, Any]]]]
                    ) -> Tuple[bytes, str]:
    frame, chunk_id = fluentbit_forward(tag, [fluentbit_entry(t, r, m) for t, r, m in records], ack=True)
    assert chunk_id is not None
    return frame, chunk_id


def by_tag(receiver: ForwardReceiver) -> Dict[str, List[Tuple[Any, Any]]]:
    out: Dict[str, List[Tuple[Any, Any]]] = {}
    for tag, when, record in receiver.events:
        out.setdefault(tag, []).append((when, record))
    return out


def test_forwarded_records_take_their_route_tag_time_and_metadata(tmp_path):
    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                       "--data-dir", str(tmp_path), "--forward-entry-form", "metadata"),
                          new_filter())
            await relay.start()
            try:
                frame, chunk_id = fluentbit_chunk("audit.at", [
                    (Time(1700000000, 5), valid_event(), {"source": "node-1"}),
                    (Time(1700000001, 6), invalid_event(), {"source": "node-2"}),
                    (Time(1700000002, 7), other_record(), {}),
                ])
                assert await exchange(relay.server.port, [frame], replies=1) == [{"ack": chunk_id}]
                await receiver.wait_for(lambda: len(receiver.events) == 3)
            finally:
                await relay.stop()
        routes = by_tag(receiver)
        assert sorted(routes) == ["audit.at", "audit.at.rejected"]

        accepted, passed = routes["audit.at"]
        (when, metadata), record = accepted
        assert when == NORMALIZED_EVENT_TIME
        assert metadata == {"source": "node-1"}
        assert record["eventTime"] == NORMALIZED_TIME and record["outcome"] == "success"
        assert passed == ([ReceivedTime(1700000002, 7), {}], other_record())

        [((when, metadata), dead_letter)] = routes["audit.at.rejected"]
        assert when == ReceivedTime(1700000001, 6)  # no normalized time: the time it came with
        assert metadata == {"source": "node-2"}
        assert dead_letter["original"] == invalid_event()
        assert dead_letter["reasons"][0]["rule"] == "envelope.required"
        assert relay.filter_stats.snapshot()["received"] == 3
    run(scenario())


def test_tags_and_time_source_follow_the_settings(tmp_path):
    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                       "--data-dir", str(tmp_path), "--accepted-tag", "clean.{tag}",
                                       "--rejected-tag", "deadletter", "--time-source", "original"),
                          new_filter())
            await relay.start()
            try:
                frame, chunk_id = fluentbit_chunk("audit.at", [(Time(1700000000), valid_event(), None),
                                                               (Time(1700000001), invalid_event(), None)])
                assert await exchange(relay.server.port, [frame], replies=1) == [{"ack": chunk_id}]
                await receiver.wait_for(lambda: len(receiver.events) == 2)
            finally:
                await relay.stop()
        routes = by_tag(receiver)
        assert sorted(routes) == ["clean.audit.at", "deadletter"]
        [(when, record)] = routes["clean.audit.at"]
        assert when == ReceivedTime(1700000000, 0)
        assert record["eventTime"] == NORMALIZED_TIME
    run(scenario())


def test_a_resent_chunk_is_acked_again_but_forwarded_once_and_counted(tmp_path):
    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                       "--data-dir", str(tmp_path)), new_filter())
            await relay.start()
            try:
                frame, chunk_id = fluentbit_chunk("audit.at", [(Time(1700000000), valid_event(), None)])
                assert await exchange(relay.server.port, [frame], replies=1) == [{"ack": chunk_id}]
                assert await exchange(relay.server.port, [frame], replies=1) == [{"ack": chunk_id}]
                await receiver.wait_for(lambda: len(receiver.events) >= 1)
            finally:
                await relay.stop()
        assert len(receiver.events) == 1
        assert relay.relay_stats.duplicate_chunks == 1
        assert relay.filter_stats.snapshot()["received"] == 1  # decided once, counted once
    run(scenario())


def test_rejected_records_can_have_their_own_downstream(tmp_path):
    async def scenario() -> None:
        async with ForwardReceiver() as main, ForwardReceiver() as dead_letters:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{main.port}",
                                       "--rejected-forward", f"127.0.0.1:{dead_letters.port}",
                                       "--data-dir", str(tmp_path)), new_filter())
            await relay.start()
            try:
                frame, chunk_id = fluentbit_chunk("audit.at", [(Time(1700000000), valid_event(), None),
                                                               (Time(1700000001), invalid_event(), None)])
                assert await exchange(relay.server.port, [frame], replies=1) == [{"ack": chunk_id}]
                await main.wait_for(lambda: len(main.events) == 1)
                await dead_letters.wait_for(lambda: len(dead_letters.events) == 1)
            finally:
                await relay.stop()
        assert [tag for tag, _, _ in main.events] == ["audit.at"]
        assert [tag for tag, _, _ in dead_letters.events] == ["audit.at.rejected"]
        assert (tmp_path / "spool-rejected.db").exists()
    run(scenario())


def test_filter_off_passes_every_record_through_unchanged(tmp_path):
    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                       "--data-dir", str(tmp_path), "--filter", "off"), None)
            await relay.start()
            try:
                sender = forward_sender([("127.0.0.1", relay.server.port)])
                entries = [Entry(EventTime(1700000000), valid_event()), Entry(EventTime(1700000001), invalid_event())]
                assert await sender.send("audit.at", pack_entries(entries), 2)
                await sender.close()
                await receiver.wait_for(lambda: len(receiver.events) == 2)
            finally:
                await relay.stop()
        assert receiver.events == [("audit.at", ReceivedTime(1700000000, 0), valid_event()),
                                   ("audit.at", ReceivedTime(1700000001, 0), invalid_event())]
        # received = accepted + rejected + passed holds without the filter too, so a healthy
        # pass-through relay does not look idle to the no-records alert.
        counts = relay.filter_stats.snapshot()
        assert (counts["received"], counts["accepted"], counts["rejected"], counts["passed"]) == (2, 0, 0, 2)
        assert counts["by_service"] == {"passed:": 2}
    run(scenario())


def test_a_shared_key_is_required_from_senders(tmp_path):
    async def scenario() -> None:
        relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path),
                                   "--shared-key", "s3cret"), new_filter())
        await relay.start()
        try:
            good = forward_sender([("127.0.0.1", relay.server.port)], shared_key="s3cret")
            assert await good.send("audit.at", pack_entries([Entry(1700000000, valid_event())]), 1)
            await good.close()
            wrong = forward_sender([("127.0.0.1", relay.server.port)], shared_key="guess", retry_deadline=0.5)
            assert not await wrong.send("audit.at", pack_entries([Entry(1700000000, valid_event())]), 1)
            await wrong.close()
        finally:
            await relay.stop()
        assert len(read_lines(tmp_path / "accepted.jsonl")) == 1
        assert relay.relay_stats.protocol_errors["auth"] >= 1
    run(scenario())


def test_stats_records_and_metrics_are_served_while_relaying(tmp_path):
    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                       "--data-dir", str(tmp_path), "--metrics-listen", "127.0.0.1:0",
                                       "--stats-interval", "0.05", "--stats-tag", "relay.stats"), new_filter())
            await relay.start()
            try:
                frame, chunk_id = fluentbit_chunk("audit.at", [(Time(1700000000), valid_event(), None)])
                assert await exchange(relay.server.port, [frame], replies=1) == [{"ack": chunk_id}]
                await receiver.wait_for(lambda: any(tag == "relay.stats" and record["accepted"] == 1
                                                    for tag, _, record in receiver.events))
                assert relay.metrics is not None
                url = relay.metrics.url
                ready = await asyncio.to_thread(lambda: urllib.request.urlopen(url + "/readyz").read())
                metrics = await asyncio.to_thread(lambda: urllib.request.urlopen(url + "/metrics").read())
            finally:
                await relay.stop()
        assert ready == b"ready\n"
        text = metrics.decode()
        assert 'atnorm_records_total{outcome="accepted",service="audit-log"} 1.0' in text
        assert "atnorm_spool_depth_records 0.0" in text
        assert "atnorm_received_records_total 1.0" in text
    run(scenario())


# --- configuration -------------------------------------------------------------------------

def test_flags_win_over_the_config_file_which_wins_over_defaults(tmp_path):
    config = tmp_path / "atnorm.yaml"
    config.write_text("listen: [127.0.0.1:25000, 127.0.0.1:25001]\n"
                      "rejected_tag: 'dlq.{tag}'\n"
                      "spool_max_size: 64M\n"
                      "time_fraction_digits: 6\n", encoding="utf-8")
    settings = relay_settings("--config", str(config), "--rejected-tag", "{tag}.bad")
    assert list(settings.listen) == ["127.0.0.1:25000", "127.0.0.1:25001"]
    assert settings.rejected_tag == "{tag}.bad"          # flag over file
    assert settings.spool_max_size == 64 << 20             # file over default
    assert settings.accepted_tag == "{tag}"                # default
    assert settings.spool_path == "atnorm-data/spool.db"   # derived from data_dir


def test_a_mistake_in_the_config_file_names_file_line_and_key(tmp_path):
    config = tmp_path / "atnorm.yaml"
    config.write_text("listen: 127.0.0.1:24224\n\nspool_max_size: lots\n", encoding="utf-8")
    with pytest.raises(ConfigError) as raised:
        relay_settings("--config", str(config))
    assert str(raised.value).startswith(f"{config}:3: key 'spool_max_size': ")


def test_a_bad_config_stops_start_up_with_one_line_and_status_2(tmp_path):
    config = tmp_path / "atnorm.yaml"
    config.write_text("listen: 127.0.0.1:24224\nforwrd: 10.0.0.1:24224\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "atnorm", "serve", "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"atnorm serve: error: {config}:2: key 'forwrd': unknown option")
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_listen_address_in_use_is_a_one_line_error(tmp_path):
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "a")) as first:
        result = subprocess.run([sys.executable, "-m", "atnorm", "serve", "--listen", f"127.0.0.1:{first.port}",
                                 "--data-dir", str(tmp_path / "b")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "error: cannot listen on 127.0.0.1" in result.stderr
    assert "Traceback" not in result.stderr


def test_sighup_reloads_the_tuning_file_between_records(tmp_path):
    import signal

    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("defaults:\n  annotate: derived\n", encoding="utf-8")
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data), "--tuning", str(tuning)) as relay:
        assert f"tuning {tuning}" in relay.stderr
        sender = FluentSender("app", host="127.0.0.1", port=relay.port)
        assert sender.emit("audit", valid_event())
        wait_until(lambda: len(read_lines(data / "accepted.jsonl")) == 1)

        tuning.write_text("defaults:\n  annotate: meta\n", encoding="utf-8")
        assert relay.process is not None
        relay.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in relay.stderr)
        assert sender.emit("audit", valid_event())
        sender.close()
        wait_until(lambda: len(read_lines(data / "accepted.jsonl")) == 2)
        assert relay.stop() == 0
    first, second = read_lines(data / "accepted.jsonl")
    assert "derived" in first and "meta" not in first
    assert "meta" in second and "derived" not in second


def test_filter_workers_decide_like_the_relay_and_count_into_one_set_of_counters(tmp_path):
    async def scenario() -> None:
        async with ForwardReceiver() as receiver:
            relay = Relay(relay_settings("--listen", "127.0.0.1:0", "--forward", f"127.0.0.1:{receiver.port}",
                                       "--data-dir", str(tmp_path), "--filter-workers", "2",
                                       "--forward-entry-form", "metadata"),
                          new_filter(), filter_options=filter_options())
            await relay.start()
            try:
                frames = []
                for n in range(4):
                    frame, _ = fluentbit_chunk("audit.at", [(Time(1700000000 + n), valid_event(), {"n": n}),
                                                            (Time(1700000000 + n), invalid_event(), None),
                                                            (Time(1700000000 + n), other_record(), None)])
                    frames.append(frame)
                assert len(await exchange(relay.server.port, frames, replies=4)) == 4
                await receiver.wait_for(lambda: len(receiver.events) == 12)
            finally:
                await relay.stop()
        routes = by_tag(receiver)
        accepted = [(when, record) for when, record in routes["audit.at"] if "atnorm" in record]
        assert len(accepted) == 4 and all(when[0] == NORMALIZED_EVENT_TIME for when, _ in accepted)
        assert sorted(when[1]["n"] for when, _ in accepted) == [0, 1, 2, 3]
        assert all(record["original"] == invalid_event() for _, record in routes["audit.at.rejected"])
        counts = relay.filter_stats.snapshot()
        assert (counts["accepted"], counts["rejected"], counts["passed"]) == (4, 4, 4)
        assert counts["by_service"]["accepted:audit-log"] == 4
    run(scenario())


def test_sighup_reaches_the_filter_workers(tmp_path):
    import signal

    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("defaults:\n  annotate: derived\n", encoding="utf-8")
    data = tmp_path / "data"
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(data), "--tuning", str(tuning),
                      "--filter-workers", "2") as relay:
        assert "in 2 worker processes" in relay.stderr
        tuning.write_text("defaults:\n  annotate: meta\n", encoding="utf-8")
        assert relay.process is not None
        relay.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reloaded" in relay.stderr)

        async def send_after_the_reload() -> None:
            # The workers are told before "reloaded" is logged: every chunk from then on,
            # whichever worker takes it, is decided with the new rules.
            sender = forward_sender([("127.0.0.1", relay.port)])
            for k in range(6):
                assert await sender.send("audit.at", pack_entries([Entry(1700000000 + k, valid_event())]), 1)
            await sender.close()
        run(send_after_the_reload())
        assert relay.stop() == 0
    lines = read_lines(data / "accepted.jsonl")
    annotated = [("meta" in line, "derived" in line) for line in lines]  # (new key, old key) per record
    assert annotated == [(True, False)] * 6, annotated


@pytest.mark.parametrize("text", ["2021-05-19T10:11:12.500+0000", "2024-02-29T23:59:59+0000",
                                  "2024-01-01T00:30:00.123456789-0130", "2023-12-31T23:00:00.1+0545"])
def test_normalized_event_time_text_becomes_the_same_instant_as_event_time(text):
    from datetime import datetime

    from atnorm.relay.routing import parse_event_time

    whole, _, rest = text[:19], text[19:20], text[19:]
    fraction = rest[1:-5] if rest.startswith(".") else ""
    expected = datetime.strptime(whole + rest[-5:], "%Y-%m-%dT%H:%M:%S%z")
    parsed = parse_event_time(text)
    assert parsed is not None
    assert parsed.seconds == int(expected.timestamp())
    assert parsed.nanoseconds == int(fraction.ljust(9, "0") or 0)


@pytest.mark.parametrize("text", [None, 1714557600, "", "2024-05-01 10:00:00+0000", "2024-05-01T10:00:00.x+0000",
                                  "2024-05-01T10:00:00.000Z", "1969-12-31T23:59:59+0000"])
def test_event_time_that_cannot_be_read_leaves_the_original_time(text):
    from atnorm.relay.routing import parse_event_time

    assert parse_event_time(text) is None


def test_event_time_caches_stay_bounded_and_right_past_their_limits(monkeypatch):
    import random
    from datetime import datetime, timezone

    from atnorm.relay import routing

    monkeypatch.setattr(routing, "_MAX_CACHED_MINUTES", 50)
    monkeypatch.setattr(routing, "_MAX_CACHED_DAYS", 5)
    parse = routing._EventTimeParser()
    rng = random.Random(3)
    for _ in range(3000):  # times over a few decades: far more days and minutes than the caches hold
        moment = datetime.fromtimestamp(rng.randrange(0, 1 << 31), timezone.utc)
        text = moment.strftime("%Y-%m-%dT%H:%M:%S.123+0000")
        parsed = parse(text)
        assert (parsed.seconds, parsed.nanoseconds) == (int(moment.timestamp()), 123_000_000)
        assert len(parse._minutes) <= 50 and len(parse._days) <= 5
        # New times are still cached once a cache was full.
        assert text[:16] in parse._minutes and text[:10] in parse._days


def test_reloads_are_counted_in_the_metrics(tmp_path):
    import signal

    tuning = tmp_path / "tuning.yaml"
    tuning.write_text("defaults:\n  annotate: derived\n", encoding="utf-8")
    with RelayProcess("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), "--tuning", str(tuning),
                      "--metrics-listen", "127.0.0.1:0") as relay:
        url = next(line.split("metrics on ")[1].split("/metrics")[0] for line in relay.lines if "metrics on" in line)
        tuning.write_text("defaults:\n  annotate: [not, a, key]\n", encoding="utf-8")
        assert relay.process is not None
        relay.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload failed" in relay.stderr)
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
        assert relay.stop() == 0
    assert 'atnorm_config_reloads_total{result="failure"} 1.0' in metrics
    assert "atnorm_config_last_reload_successful 0.0" in metrics
