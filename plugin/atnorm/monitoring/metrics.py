"""Prometheus exposition of the filter and relay counters, plus health and readiness.

The hot path only bumps plain counters (`FilterStats`, `RelayStats`); `AtnormCollector`
turns them into metric families when Prometheus scrapes, so recording costs nothing
extra per record. `MetricsServer` serves `/metrics`, `/healthz` and `/readyz` from a
daemon thread, so a slow scraper never stalls the asyncio relay loop.
"""

from __future__ import annotations

import logging
import socket
import threading
from socketserver import ThreadingMixIn
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Tuple, Union
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..config.options import Option, address
from ..core.stats import FilterStats
from ..errors import ConfigError
from ..model.verdict import OUTCOMES
from ..version import __version__, compiled_modules
from .relaystats import LATENCY_BUCKETS, RELAY_COUNTS, RelayStats

log = logging.getLogger(__name__)

# Both long-running commands serve metrics; one declaration, one parser for the address.
METRICS_LISTEN = Option("metrics_listen", address, None, "serve Prometheus /metrics, /healthz and /readyz here",
                        metavar="HOST:PORT", group="operations")

# Label value for records that carry no service (passed-through traffic, unparseable input).
NO_SERVICE = "_none"

# Frame modes of the forward protocol, exported at zero so rates exist from the start.

# A readiness check answers True, False, or (False, "why not").
Readiness = Callable[[], Union[bool, Tuple[bool, str]]]


class ReloadCounts(Protocol):
    """Anything that counts configuration reloads (e.g. a reloading filter)."""

    reloads: int
    failed_reloads: int
    last_error: Optional[str]  # None while the latest reload (or start-up) succeeded


def _copy(counter: Dict[Any, int]) -> Dict[Any, int]:
    # dict(d) of a dict copies in one C call under the GIL, so a scrape thread never sees
    # "dictionary changed size during iteration" while the hot path adds keys.
    return dict(counter)


class AtnormCollector(Collector):
    """Reads `FilterStats` (and `RelayStats`, when given) at scrape time.

    `schemas_loaded`, when given, is called at scrape time and exported as
    `atnorm_schemas_loaded`; `reload_counts` as `atnorm_config_reloads_total{result}` and
    `atnorm_config_last_reload_successful`.
    """

    def __init__(self, filter_stats: Optional[FilterStats] = None,
                 relay_stats: Optional[RelayStats] = None,
                 schemas_loaded: Optional[Callable[[], int]] = None,
                 reload_counts: Optional[ReloadCounts] = None) -> None:
        self.filter_stats = filter_stats
        self.relay_stats = relay_stats
        self.schemas_loaded = schemas_loaded
        self.reload_counts = reload_counts
        self._compiled = "true" if compiled_modules() else "false"

    def collect(self) -> Iterable[Metric]:
        build = GaugeMetricFamily("atnorm_build_info",
                                  "atnorm version, and whether its per-record modules are compiled; always 1.",
                                  labels=["version", "compiled"])
        build.add_metric([__version__, self._compiled], 1)
        yield build
        if self.schemas_loaded is not None:
            yield GaugeMetricFamily("atnorm_schemas_loaded",
                                    "Number of service schemas the filter has loaded.",
                                    value=self.schemas_loaded())
        if self.reload_counts is not None:
            reloads = CounterMetricFamily(
                "atnorm_config_reloads",
                "Configuration reloads; on failure the previous configuration keeps running.",
                labels=["result"])
            reloads.add_metric(["success"], self.reload_counts.reloads)
            reloads.add_metric(["failure"], self.reload_counts.failed_reloads)
            yield reloads
            yield GaugeMetricFamily(
                "atnorm_config_last_reload_successful",
                "1 if the latest configuration reload worked (or none was tried), else 0.",
                value=0 if self.reload_counts.last_error is not None else 1)
        if self.filter_stats is not None:
            yield from self._filter_metrics(self.filter_stats)
        if self.relay_stats is not None:
            yield from self._relay_metrics(self.relay_stats)

    @staticmethod
    def _filter_metrics(stats: FilterStats) -> Iterator[Metric]:
        records = CounterMetricFamily(
            "atnorm_records", "Records the filter decided on, by outcome and service.",
            labels=["outcome", "service"])
        by_service = _copy(stats.by_service)
        # The service-less series always exist so sum(rate(...)) is defined from the start.
        for outcome in OUTCOMES:
            by_service.setdefault((outcome, ""), 0)
        for (outcome, service), count in sorted(by_service.items()):
            records.add_metric([outcome, service or NO_SERVICE], count)
        yield records

        rejections = CounterMetricFamily(
            "atnorm_rejections",
            "Rejection reasons by schema rule and service (a record may carry several).",
            labels=["rule", "service"])
        for (rule, service), count in sorted(_copy(stats.rejections).items()):
            rejections.add_metric([rule, service or NO_SERVICE], count)
        yield rejections

        warnings = CounterMetricFamily(
            "atnorm_warnings", "Warnings the filter raised, by kind (a record may carry several).",
            labels=["kind"])
        for kind, count in sorted(_copy(stats.warnings).items()):
            warnings.add_metric([kind], count)
        yield warnings

        fixes = CounterMetricFamily(
            "atnorm_normalization_fixes", "Normalization steps that changed a record, by fix.",
            labels=["fix"])
        for fix, count in sorted(_copy(stats.fixes).items()):
            fixes.add_metric([fix], count)
        yield fixes

        unknown = CounterMetricFamily(
            "atnorm_unknown_actions",
            "Actions no table declares, by service; beyond the tracking bound counted as "
            "action=\"_other\".",
            labels=["service", "action"])
        for (service, action), count in sorted(_copy(stats.unknown_actions).items()):
            unknown.add_metric([service or NO_SERVICE, action], count)
        yield unknown

    @staticmethod
    def _relay_metrics(stats: RelayStats) -> Iterator[Metric]:
        for count in RELAY_COUNTS:
            family = GaugeMetricFamily if count.gauge else CounterMetricFamily
            value = getattr(stats, count.name)
            if count.label is None:
                yield family(count.metric, count.help, value=value)
                continue
            labelled = family(count.metric, count.help, labels=[count.label])
            per_label = _copy(value)
            for label_value in count.label_values:
                per_label.setdefault(label_value, 0)
            for label_value, number in sorted(per_label.items()):
                labelled.add_metric([label_value], number)
            yield labelled
        yield _ack_latency_histogram(stats)


def _ack_latency_histogram(stats: RelayStats) -> HistogramMetricFamily:
    per_bucket = list(stats.ack_latency_buckets)  # one snapshot, so count == +Inf bucket
    cumulative: List[Tuple[str, float]] = []
    running = 0
    for bound, count in zip(LATENCY_BUCKETS, per_bucket):
        running += count
        cumulative.append((repr(float(bound)), running))
    running += per_bucket[-1]
    cumulative.append(("+Inf", running))
    return HistogramMetricFamily(
        "atnorm_downstream_ack_latency_seconds",
        "Time from sending a chunk downstream to receiving its ack.",
        buckets=cumulative, sum_value=stats.ack_latency_sum)


def build_registry(filter_stats: Optional[FilterStats] = None,
                   relay_stats: Optional[RelayStats] = None,
                   schemas_loaded: Optional[Callable[[], int]] = None,
                   process_metrics: bool = True,
                   reload_counts: Optional[ReloadCounts] = None) -> CollectorRegistry:
    """A private registry holding the atnorm collector (and process metrics by default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AtnormCollector(filter_stats, relay_stats, schemas_loaded, reload_counts))
    if process_metrics:
        from prometheus_client import PlatformCollector, ProcessCollector

        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
    return registry


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    # One thread per scrape; daemon threads never hold up process exit.
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    # Scrapes every few seconds would flood stderr, which may be a data channel.
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        pass


class MetricsServer:
    """HTTP endpoint with `/metrics`, `/healthz` and `/readyz`, served from daemon threads.

    `/healthz` answers 200 while the process serves requests. `/readyz` answers 200 when
    `readiness()` returns True, else 503 with the reason as text. Port 0 picks a free
    port; `port` tells which one after `start()`.
    """

    def __init__(self, registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0,
                 readiness: Optional[Readiness] = None) -> None:
        self.registry = registry
        self.host = host
        self.requested_port = port
        self.readiness = readiness
        self._metrics_app = make_wsgi_app(registry)
        self._server: Optional[WSGIServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        """The bound port (after `start()`)."""
        if self._server is None:
            raise RuntimeError("metrics server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> "MetricsServer":
        """Bind and start serving; a bind failure is a ConfigError (one-line message)."""
        if self._server is not None:
            return self
        if self.host.startswith("unix://"):
            raise ConfigError("metrics endpoint: expected HOST:PORT, unix sockets are not served",
                              key="metrics_listen")
        try:
            family = socket.getaddrinfo(self.host, self.requested_port, type=socket.SOCK_STREAM,
                                        flags=socket.AI_PASSIVE)[0][0]
        except socket.gaierror as exc:
            raise ConfigError(f"metrics endpoint: cannot resolve {self.host!r}: {exc.strerror}",
                              key="metrics_listen") from None

        class Server(_ThreadingWSGIServer):
            address_family = family

        try:
            self._server = make_server(self.host, self.requested_port, self._app, Server,
                                       handler_class=_QuietHandler)
        except OSError as exc:
            raise ConfigError(
                f"metrics endpoint: cannot listen on {self.host}:{self.requested_port}: "
                f"{exc.strerror or exc}", key="metrics_listen") from None
        # A short poll interval only makes stop() prompt; requests are served at once.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,),
                                        name="atnorm-metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "MetricsServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def check_readiness(self) -> Tuple[bool, str]:
        """Ask the readiness callable; a failing check counts as not ready, with its error."""
        if self.readiness is None:
            return True, "ready"
        try:
            answer = self.readiness()
        except Exception as exc:  # a broken check must not break the endpoint
            log.warning("readiness check failed: %r", exc)
            return False, f"readiness check failed: {exc}"
        if isinstance(answer, tuple):
            ready, reason = bool(answer[0]), str(answer[1])
        else:
            ready, reason = bool(answer), ""
        return ready, reason or ("ready" if ready else "not ready")

    def _app(self, environ: Dict[str, Any], start_response: Callable[..., Any]) -> List[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics_app(environ, start_response)
        if path == "/healthz":
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            ready, reason = self.check_readiness()
            return _text(start_response, "200 OK" if ready else "503 Service Unavailable", reason)
        if path == "/":
            return _text(start_response, "200 OK", "atnorm: /metrics /healthz /readyz")
        return _text(start_response, "404 Not Found", "not found: use /metrics, /healthz or /readyz")


def _text(start_response: Callable[..., Any], status: str, body: str) -> List[bytes]:
    data = (body + "\n").encode("utf-8")
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]


def start_metrics_server(address: Tuple[str, int], filter_stats: Optional[FilterStats] = None,
                         relay_stats: Optional[RelayStats] = None,
                         readiness: Optional[Readiness] = None,
                         schemas_loaded: Optional[Callable[[], int]] = None,
                         reload_counts: Optional[ReloadCounts] = None) -> MetricsServer:
    """Build the registry and start serving on `address` (as parsed by `options.host_port`)."""
    registry = build_registry(filter_stats, relay_stats, schemas_loaded,
                              reload_counts=reload_counts)
    host, port = address
    return MetricsServer(registry, host, port, readiness).start()
