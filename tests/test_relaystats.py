"""Relay counts are declared once (RELAY_COUNTS) and every view of them follows that table."""

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from atnorm.core.stats import FilterStats
from atnorm.monitoring.metrics import AtnormCollector
from atnorm.monitoring.relaystats import RELAY_COUNTS, RelayStats
from atnorm.monitoring.stats_record import RELAY_DELTAS, StatsRecorder


def test_each_count_is_a_typed_attribute_and_each_attribute_a_count():
    names = [count.name for count in RELAY_COUNTS]
    assert len(names) == len(set(names))
    assert set(names) == set(RelayStats.__annotations__)
    stats = RelayStats()
    for count in RELAY_COUNTS:
        assert getattr(stats, count.name) == ({} if count.label else 0)


def test_every_count_is_scraped_under_its_family_name():
    stats = RelayStats()
    stats.bytes_received = 7
    stats.frames["forward"] += 2
    registry = CollectorRegistry()
    registry.register(AtnormCollector(relay_stats=stats))
    families = {family.name: family for family in registry.collect()}

    for count in RELAY_COUNTS:
        assert count.metric in families, count.metric
        assert families[count.metric].type == ("gauge" if count.gauge else "counter")
    text = generate_latest(registry).decode()
    assert "atnorm_received_bytes_total 7.0" in text
    assert 'atnorm_frames_total{mode="forward"} 2.0' in text
    assert 'atnorm_frames_total{mode="heartbeat"} 0.0' in text


def test_the_stats_record_carries_every_count_and_the_declared_deltas():
    stats = RelayStats()
    records = []
    recorder = StatsRecorder(FilterStats(), lambda tag, when, record: records.append(record), stats)
    recorder.emit_once()
    stats.bytes_received += 100
    stats.retries += 1
    recorder.emit_once()

    relay = records[-1]["relay"]
    assert set(count.name for count in RELAY_COUNTS) <= set(relay)
    assert RELAY_DELTAS == tuple(count.name for count in RELAY_COUNTS if count.delta)
    since_last = records[-1]["since_last"]
    assert since_last["bytes_received"] == 100 and since_last["retries"] == 1
    assert since_last["chunks_sent"] == 0
