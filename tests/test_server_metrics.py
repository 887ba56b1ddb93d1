"""The forward server's fairness and memory counters as the metrics endpoint exports them."""

from __future__ import annotations

from test_metrics import samples, scrape, served  # noqa: F401  (served is a fixture)

from atnorm.core.stats import FilterStats
from atnorm.monitoring.relaystats import RelayStats


def test_evictions_pauses_and_input_memory_are_exported(served):  # noqa: F811
    relay = RelayStats()
    relay.connections_rejected = 2
    relay.connections_evicted["max_connections"] += 3
    relay.input_paused = 7
    relay.input_memory_bytes = 65536
    relay.protocol_errors["tls_handshake"] += 4
    server = served(filter_stats=FilterStats(), relay_stats=relay)

    families = scrape(server.url)

    def value(family: str, suffix: str = "", **labels) -> float:
        return samples(families, family, suffix)[tuple(sorted(labels.items()))]

    assert value("atnorm_connections_rejected", "_total") == 2
    assert value("atnorm_connections_evicted", "_total", reason="max_connections") == 3
    assert value("atnorm_connections_evicted", "_total", reason="input_memory") == 0
    assert value("atnorm_input_paused", "_total") == 7
    assert value("atnorm_input_memory_bytes") == 65536
    assert value("atnorm_protocol_errors", "_total", kind="tls_handshake") == 4
