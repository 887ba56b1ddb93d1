"""`atnorm serve`: the forward-protocol relay between log shippers and an aggregator.

Fluent Bit / Fluentd (or any forward client) send chunks; each chunk is filtered record
by record, split by verdict (accepted / rejected / passed, see `routing`) and handed on
per route in one batch:

- with `forward` servers: to the downstream aggregator with acks, or into the durable
  spool while it is away (`delivery`); rejected records may have their own downstream;
- without: into JSON-lines files in the data directory, fsync'd (`localstore`).

The upstream chunk is acked only when every one of its records is safe in one of those
places; if the spool is full it is not acked and the sender keeps it. Chunk ids already
acked are answered without handing the records on again (the server's dedup window).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Hashable, List, Optional, Protocol, Sequence, Tuple, Union

from ..config.logs import LOG_FORMAT, LOG_LEVEL
from ..config.options import (
    ConfigError,
    Option,
    address,
    boolean,
    host_port,
    host_port_text,
    load_config_file,
    options_of,
    positive_float,
    positive_int,
    resolve,
    seconds_text,
    setting,
    settings_from,
    shared,
    size_bytes,
    size_text,
    text,
)
from ..core.interfaces import Filter, ReloadableFilter
from ..core.reload import ReloadingFilter
from ..core.settings import DRIFT_STATE, FILTER_OPTIONS, FilterOptions, build_filter, resolve_filter_options
from ..core.stats import FilterStats, summary_text
from ..errors import ConfigErrors
from ..forward import sender as sender_defaults
from ..forward import server as server_defaults
from ..forward.codec import Chunk, Entry, EventTime, pack_entries
from ..forward.sender import ENTRY_FORMS, ForwardSender, SenderSettings, plain_entries
from ..forward.server import MIN_INPUT_MEMORY, ForwardServer, ServerSettings
from ..model.verdict import REJECTED
from ..monitoring.metrics import METRICS_LISTEN, MetricsServer, build_registry
from ..monitoring.relaystats import RelayStats
from ..monitoring.stats_record import STATS_INTERVAL, STATS_TAG, StatsRecorder
from .delivery import Delivery
from .filterpool import FilterPool, output_form
from .localstore import STATS_ROUTE, LocalStore, LocalStoreError
from .routing import TIME_SOURCES, Batch, LinesBatch, RoutedBatch, Router, RouteSettings, check_tag_template
from .spool import Spool, SpoolError

log = logging.getLogger("atnorm.relay")

DEFAULT_LISTEN = "127.0.0.1:24224"
# Records filtered between two yields to the event loop, so one big chunk cannot hold up
# every other connection's acks and reads for the length of its filtering.
ROUTE_SLICE = 512
# Chunks whose hand-off failed half-way, remembered so a resend of the same chunk id
# hands on only what is still missing (and is not decided and counted twice). When this
# many are unfinished, new chunks wait for room (back-pressure) rather than push one out.
MAX_UNFINISHED_CHUNKS = 256
# An unfinished chunk its sender has not resent for this long is let go (the sender gave up).
UNFINISHED_MAX_AGE = 900


def input_memory(value: Any) -> int:
    """A size, at least four reads' worth (each connection reserves one read before reading)."""
    number = size_bytes(value)
    if number < MIN_INPUT_MEMORY:
        raise ValueError(f"expected a size of at least {MIN_INPUT_MEMORY >> 10}k, got {value!r}")
    return number


def tag_template(value: Any) -> str:
    return check_tag_template(text(value))


@dataclass(frozen=True)
class RelaySettings:
    """What `atnorm serve` runs with: one typed field per option, each declared here once
    (the flag, the config key, `--help`, the README table and conf/atnorm.yaml follow)."""

    # upstream: where shippers connect
    listen: Tuple[str, ...] = setting(address, [DEFAULT_LISTEN], "forward-protocol address to listen on (repeatable)",
           multiple=True, metavar="HOST:PORT", group="upstream")
    shared_key: Optional[str] = setting(text, None, "require this shared key from senders (forward-protocol handshake)",
           metavar="KEY", group="upstream")
    self_hostname: Optional[str] = setting(text, None, "hostname this relay gives in handshakes (default: the host's name)",
           metavar="NAME", group="upstream")
    tls_cert: Optional[str] = setting(text, None, "serve TLS with this certificate (PEM)", metavar="FILE", group="upstream")
    tls_key: Optional[str] = setting(text, None, "private key of tls_cert (PEM; omit if it is in the certificate file)",
           metavar="FILE", group="upstream")
    max_frame_size: int = setting(size_bytes, size_text(server_defaults.MAX_FRAME_SIZE),
           "largest forward frame accepted from a sender",
           metavar="SIZE", group="upstream")
    max_decompressed_size: int = setting(size_bytes, size_text(server_defaults.MAX_DECOMPRESSED_SIZE),
           "largest size a compressed chunk may inflate to",
           metavar="SIZE", group="upstream")
    idle_timeout: float = setting(positive_float, seconds_text(server_defaults.IDLE_TIMEOUT),
           "close a sender's connection that completes no forward "
           "message (heartbeats do not count) within this many seconds", metavar="SECONDS", group="upstream")
    max_connections: int = setting(positive_int, server_defaults.MAX_CONNECTIONS,
           "most sender connections open at once", metavar="N", group="upstream")
    max_connections_per_peer: int = setting(positive_int, server_defaults.MAX_CONNECTIONS_PER_PEER,
           "most connections open at once from one sender host",
           metavar="N", group="upstream")
    max_input_memory: int = setting(input_memory, size_text(server_defaults.MAX_INPUT_MEMORY),
           "most bytes buffered from senders at once (partial frames, "
           "chunks being inflated or handed on); beyond it reading pauses", metavar="SIZE", group="upstream")
    # downstream: where records go
    forward: Tuple[str, ...] = setting(address, [], "downstream aggregator (repeatable: the next one is the failover); "
           "unset: write JSON-lines files in data_dir", multiple=True, metavar="HOST:PORT", group="downstream")
    rejected_forward: Tuple[str, ...] = setting(address, [], "separate downstream for rejected records (repeatable; "
           "default: the forward servers)", multiple=True, metavar="HOST:PORT", group="downstream")
    forward_shared_key: Optional[str] = setting(text, None, "shared key for the downstream handshake", metavar="KEY",
                                                group="downstream")
    forward_username: str = setting(text, "", "username for the downstream handshake, if it authenticates users "
           "(sent with forward_shared_key)", metavar="NAME", group="downstream")
    forward_password: str = setting(text, "", "password of forward_username", metavar="PASSWORD", group="downstream")
    forward_tls: bool = setting(boolean, "off", "connect to the downstream with TLS", metavar="BOOL",
                                group="downstream")
    forward_tls_verify: bool = setting(boolean, "on", "verify the downstream's TLS certificate", metavar="BOOL",
                                       group="downstream")
    forward_tls_ca: Optional[str] = setting(text, None, "CA bundle for the downstream's certificate (default: "
                                            "system store)", metavar="FILE", group="downstream")
    forward_compress: str = setting(text, "none", "compress chunks sent downstream", choices=("none", "gzip"),
           metavar="none|gzip", group="downstream")
    forward_entry_form: str = setting(text, "plain", "entry form sent downstream: plain [time, record] (every "
           "Fluentd accepts it) or metadata (keep Fluent Bit's [[time, metadata], record], for Fluent Bit "
           "aggregators)", choices=ENTRY_FORMS, metavar="plain|metadata", group="downstream")
    forward_ack_timeout: float = setting(positive_float, seconds_text(sender_defaults.ACK_TIMEOUT),
           "resend a downstream chunk not acked within this time",
           metavar="SECONDS", group="downstream")
    retry_max_wait: float = setting(positive_float, seconds_text(sender_defaults.RETRY_MAX_WAIT),
           "longest wait between attempts to reach the downstream",
           metavar="SECONDS", group="downstream")
    retry_timeout: float = setting(positive_float, seconds_text(sender_defaults.RETRY_DEADLINE),
           "how long a chunk is retried in memory before it is "
           "spooled (the upstream waits meanwhile)", metavar="SECONDS", group="downstream")
    retry_max_times: int = setting(positive_int, 5, "a chunk the downstream refuses this many times (connection "
           "reset or no ack while it was the oldest waiting) is quarantined in the spool", metavar="N", group="downstream")
    # what the records look like on the way out
    accepted_tag: str = setting(tag_template, "{tag}", "tag of accepted records ({tag} is the incoming tag)",
           metavar="TEMPLATE", group="output")
    rejected_tag: str = setting(tag_template, "{tag}.rejected",
           "dead-letter tag of rejected records, sent as {original, reasons}", metavar="TEMPLATE", group="output")
    time_source: str = setting(text, "event", "time sent on with accepted records: the normalized eventTime "
           "(event) or the time the record arrived with (original)", choices=TIME_SOURCES,
           metavar="event|original", group="output")
    filter: bool = setting(boolean, "on", "validate and normalize (off: pass every record through unchanged)",
           metavar="on|off", group="output")
    filter_workers: int = setting(positive_int, 1, "processes that decide records; more than 1 lets the filter "
           "use more cores (e.g. the number of cores)", metavar="N", group="output")
    workers: int = setting(positive_int, 1, "relay processes serving the same addresses (like Fluentd's "
           "workers): each new sender connection goes to the one with the fewest open; each has its own "
           "filter, spool and record files (worker i > 0 in DATA_DIR/worker-i) and metrics port "
           "(metrics_listen's port + i)", metavar="N", group="output")
    # local state
    data_dir: str = setting(text, "atnorm-data", "directory for the spool, and for the record files when no "
           "downstream is set", metavar="DIR", group="local state")
    spool_path: str = setting(text, None, "spool file (default: DATA_DIR/spool.db)", metavar="FILE", group="local state")
    spool_max_size: int = setting(size_bytes, "1G", "most bytes the spool holds; when full, chunks are "
           "not acked and senders keep them", metavar="SIZE", group="local state")
    spool_sync: str = setting(text, "normal", "spool durability: normal survives a crash of the process, full "
           "also a power loss", choices=("normal", "full"), metavar="normal|full", group="local state")
    # operations
    metrics_listen: Optional[str] = shared(METRICS_LISTEN)
    shutdown_timeout: float = setting(positive_float, "10", "on SIGTERM, how long chunks in flight may take to "
           "finish", metavar="SECONDS", group="operations")
    log_level: str = shared(LOG_LEVEL)
    log_format: str = shared(LOG_FORMAT)
    drift_state: Optional[str] = shared(DRIFT_STATE)
    # the periodic stats record
    stats_interval: Optional[float] = shared(STATS_INTERVAL)
    stats_tag: str = shared(STATS_TAG)


OPTIONS: Tuple[Option, ...] = options_of(RelaySettings)
ALL_OPTIONS: Tuple[Option, ...] = OPTIONS + tuple(FILTER_OPTIONS)


def load_settings(args: argparse.Namespace, check: bool = True) -> Tuple[RelaySettings, Dict[str, Any]]:
    """(relay settings, raw config-file values): defaults < `--config` file < environment <
    flags; with `check`, combinations that cannot work raise (every one of them at once)."""
    config_path = getattr(args, "config", None)
    file_values = load_config_file(config_path, ALL_OPTIONS) if config_path else {}
    values = resolve(OPTIONS, args, file_values)
    settings = settings_from(RelaySettings, values)
    if settings.spool_path is None:  # its default depends on another option
        settings = dataclasses.replace(settings, spool_path=os.path.join(settings.data_dir, "spool.db"))
    problems = settings_problems(settings) if check else []
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigErrors(problems)
    return settings, file_values


def settings_problems(settings: RelaySettings) -> List[ConfigError]:
    """The combinations of relay settings that cannot work, each as a ConfigError."""
    problems: List[ConfigError] = []
    if settings.tls_key and not settings.tls_cert:
        problems.append(ConfigError("tls_key needs tls_cert too", key="tls_key"))
    if not settings.listen:
        problems.append(ConfigError("at least one listen address is needed", key="listen"))
    if settings.rejected_forward and not settings.forward:
        problems.append(ConfigError("rejected_forward needs forward too (without a downstream, records go "
                                    "to files in data_dir)", key="rejected_forward"))
    if settings.drift_state and settings.filter_workers > 1:
        problems.append(ConfigError("drift_state needs filter_workers 1: the workers' verdicts do not "
                                    "reach the drift log", key="drift_state"))
    return problems


def server_settings(settings: RelaySettings) -> ServerSettings:
    """What the relay's forward server runs with (the rest at the server's defaults)."""
    return ServerSettings(
        listen=[_listen_address(a) for a in settings.listen],
        tls_cert=settings.tls_cert, tls_key=settings.tls_key,
        shared_key=settings.shared_key, self_hostname=settings.self_hostname,
        max_frame_size=settings.max_frame_size, max_decompressed_size=settings.max_decompressed_size,
        idle_timeout=settings.idle_timeout, max_connections=settings.max_connections,
        max_connections_per_peer=settings.max_connections_per_peer,
        max_input_memory=settings.max_input_memory)


def sender_settings(settings: RelaySettings) -> SenderSettings:
    """What each downstream sender runs with (the rest at the sender's defaults)."""
    return SenderSettings(
        tls=settings.forward_tls, tls_verify=settings.forward_tls_verify,
        tls_ca_file=settings.forward_tls_ca, shared_key=settings.forward_shared_key,
        username=settings.forward_username, password=settings.forward_password,
        self_hostname=settings.self_hostname, ack_timeout=settings.forward_ack_timeout,
        retry_max_wait=settings.retry_max_wait, retry_deadline=settings.retry_timeout,
        retry_max_times=settings.retry_max_times,
        compress=None if settings.forward_compress == "none" else settings.forward_compress)


def _chunk_id_text(chunk_id: Any) -> str:
    if chunk_id is None:
        return "none, no ack"
    return chunk_id if isinstance(chunk_id, str) else repr(chunk_id)


def _listen_address(text_address: str) -> Union[Tuple[str, int], str]:
    host, port = host_port(text_address)
    return host if host.startswith("unix://") else (host, port)


def _show(address: Union[Tuple[str, int], str]) -> str:
    if isinstance(address, str):
        return address
    return host_port_text(*address)


def rejected_spool_path(spool_path: str) -> str:
    base, extension = os.path.splitext(spool_path)
    return f"{base}-rejected{extension or '.db'}"


def build_event_filter(args: argparse.Namespace, file_values: Dict[str, Any], stats: FilterStats,
                       drift_state: Optional[str] = None) -> Filter:
    """The filter the options describe; with a tuning file, one that reloads it on SIGHUP or
    change; with a drift state file, one that keeps the drift log there."""
    options = resolve_filter_options(args, file_values)
    if options.tuning or drift_state:
        return ReloadingFilter.from_options(options, stats=stats, drift_state=drift_state)
    return build_filter(args, file_values, stats)


# --- destinations ----------------------------------------------------------------------------

class _SpoolGauges:
    """Lets several spools publish into one RelayStats: each writes its share, the sum is shown."""

    _shares: List["_SpoolGauges"]

    def __init__(self, stats: RelayStats, shares: List["_SpoolGauges"]) -> None:
        self._stats = stats
        self._shares = shares
        self.records, self.size, self.age = 0, 0, 0.0
        shares.append(self)

    def _sum(self) -> None:
        self._stats.spool_depth_records = sum(s.records for s in self._shares)
        self._stats.spool_depth_bytes = sum(s.size for s in self._shares)
        self._stats.spool_oldest_age_seconds = max(s.age for s in self._shares)

    @property
    def spool_depth_records(self) -> int:
        return self.records

    @spool_depth_records.setter
    def spool_depth_records(self, value: int) -> None:
        self.records = value
        self._sum()

    @property
    def spool_depth_bytes(self) -> int:
        return self.size

    @spool_depth_bytes.setter
    def spool_depth_bytes(self, value: int) -> None:
        self.size = value
        self._sum()

    @property
    def spool_oldest_age_seconds(self) -> float:
        return self.age

    @spool_oldest_age_seconds.setter
    def spool_oldest_age_seconds(self, value: float) -> None:
        self.age = value
        self._sum()


class Destination(Protocol):
    """Where routed batches go: downstream with acks (and a spool), or local files."""

    async def start(self) -> None:
        """Open connections or files; before the first batch."""
        ...

    async def deliver(self, batches: Sequence[Batch]) -> List[bool]:
        """Per batch, True once it is safe (acked downstream, spooled or synced)."""
        ...

    def readiness(self) -> Tuple[bool, str]:
        """Whether records can be taken now, and why not."""
        ...

    async def close(self, timeout: float) -> None:
        """Hand on or keep what is in flight, within `timeout` seconds."""
        ...


class ForwardDestination:
    """Batches go to the downstream (acked) or the spool; rejected ones maybe to their own."""

    def __init__(self, main: Delivery, rejected: Optional[Delivery] = None, *,
                 entry_form: str = "plain") -> None:
        if entry_form not in ENTRY_FORMS:
            raise ValueError(f"entry_form must be one of {', '.join(ENTRY_FORMS)}, got {entry_form!r}")
        self.main = main
        self.rejected = rejected
        self.entry_form = entry_form
        self.deliveries = [main] + ([rejected] if rejected is not None else [])

    async def start(self) -> None:
        for delivery in self.deliveries:
            await delivery.start()

    async def deliver(self, batches: Sequence[Batch]) -> List[bool]:
        """Hand each batch off; True per batch once acked downstream or spooled."""
        rejected = self.rejected
        calls: List[Awaitable[bool]] = []
        for batch in batches:
            delivery = rejected if rejected is not None and batch.route == REJECTED else self.main
            calls.append(delivery.hand_off(batch.tag, self._payload(batch), batch.count))
        results = await asyncio.gather(*calls, return_exceptions=True)
        out = []
        for batch, result in zip(batches, results):
            if isinstance(result, BaseException):
                if isinstance(result, asyncio.CancelledError):
                    raise result
                log.error("handing on %d records of tag %s failed: %s: %s", batch.count, batch.tag,
                          type(result).__name__, result)
                result = False
            out.append(bool(result))
        return out

    def _payload(self, batch: Batch) -> bytes:
        """The batch's entries in the form the downstream is to get (see forward_entry_form)."""
        if isinstance(batch, LinesBatch):
            raise TypeError("JSON lines are for the files destination, not a downstream")
        if self.entry_form == "metadata":
            return batch.packed()
        if isinstance(batch, RoutedBatch):
            return batch.plain_packed()
        if batch.plain:
            return batch.payload
        return plain_entries(batch.packed())

    def readiness(self) -> Tuple[bool, str]:
        for delivery in self.deliveries:
            ready, why = delivery.readiness()
            if not ready:
                return False, why
        return True, "ready"

    async def close(self, timeout: float) -> None:
        for delivery in self.deliveries:
            await delivery.close(timeout)


class FileDestination:
    """Batches go to the JSON-lines files of the data directory, synced before the ack."""

    def __init__(self, store: LocalStore) -> None:
        self.store = store

    async def start(self) -> None:
        pass

    async def deliver(self, batches: Sequence[Batch]) -> List[bool]:
        ok = await self.store.store(list(batches))
        return [ok] * len(batches)

    def readiness(self) -> Tuple[bool, str]:
        if self.store.last_error is not None:
            return False, self.store.last_error
        return True, "ready"

    async def close(self, timeout: float) -> None:
        await self.store.close()




# --- the relay -------------------------------------------------------------------------------

class Relay:
    """Forward server → router → destination, with metrics and the periodic stats record."""

    def __init__(self, settings: RelaySettings, event_filter: Optional[Filter] = None,
                 filter_stats: Optional[FilterStats] = None,
                 filter_options: Optional[FilterOptions] = None, worker: Optional[int] = None) -> None:
        self.settings = settings
        # Which of `workers` relay processes this is (None: the only one).
        self.worker = worker
        self.event_filter = event_filter
        self.filter_stats = filter_stats or (event_filter.stats if event_filter is not None else FilterStats())
        self.relay_stats = RelayStats()
        routes = RouteSettings(accepted_tag=settings.accepted_tag, rejected_tag=settings.rejected_tag,
                               time_source=settings.time_source)
        decide = self._decide_function()
        self.router = Router.with_settings(decide, routes, count=self.filter_stats.count,
                                           count_passed=self.filter_stats.count_passed,
                                           decide_text=self.event_filter.process_text
                                           if decide is not None and self.event_filter is not None else None)
        self.pool: Optional[FilterPool] = None
        if self.router.decide is not None and settings.filter_workers > 1:
            # Workers build their filters from the options the relay's filter was built from.
            if filter_options is None:
                raise ValueError("filter workers need the filter options")
            # Workers hand back each batch as the destination takes it (see _payload, LocalStore).
            self.pool = FilterPool(settings.filter_workers, filter_options, routes, self.filter_stats,
                                   form=output_form(bool(settings.forward), settings.forward_entry_form))
        # Scanning for verbatim chunks pays where their payload goes on undecoded: passed
        # through, or sent to a worker. A relay deciding records itself decodes them anyway.
        verbatim_chunks = self.router.decide is None or self.pool is not None
        # A worker decodes whatever it gets, Fluent Bit's metadata form included; a
        # pass-through relay hands on as received only what needs no decoding.
        self.server = ForwardServer(self.handle_chunk, dataclasses.replace(
            server_settings(settings), verbatim_chunks=verbatim_chunks,
            verbatim_decoded_elsewhere=self.pool is not None, handed_connections=worker is not None),
            stats=self.relay_stats)
        self.destination: Optional[Destination] = None
        self.metrics: Optional[MetricsServer] = None
        self._stats_task: Optional["asyncio.Task[None]"] = None
        self._unfinished: "OrderedDict[Hashable, _Unfinished]" = OrderedDict()
        self._unfinished_room: Optional[asyncio.Event] = None

    def _decide_function(self) -> Optional[Callable[[Any], Any]]:
        if not self.settings.filter or self.event_filter is None:
            return None
        return self.event_filter.process

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the filter workers, open the destination, bind the listeners, start metrics
        and the stats record. On a failure, whatever was started is closed again."""
        try:
            if self.pool is not None:
                await self.pool.start()
            self.destination = self._open_destination()
            await self.destination.start()
            try:
                await self.server.start()
            except OSError as exc:
                raise ConfigError(exc.strerror or str(exc)) from None
            if self.settings.metrics_listen:
                host, port = host_port(self.settings.metrics_listen)
                reloads = self.event_filter if isinstance(self.event_filter, ReloadableFilter) else None
                registry = build_registry(self.filter_stats, self.relay_stats, self._schemas_loaded,
                                          reload_counts=reloads)
                self.metrics = MetricsServer(registry, host, port, readiness=self.readiness)
                self.metrics.start()
        except BaseException:
            await self._close(grace=0)
            raise
        if isinstance(self.event_filter, ReloadableFilter):
            self.event_filter.start_watching()  # a changed tuning file is picked up between records
            if self.pool is not None:
                # Workers rebuild before their next chunk, so once "reloaded" is logged no
                # chunk is decided with the old configuration.
                self.event_filter.on_reload.append(self.pool.request_reload)
        if self.settings.stats_interval:
            recorder = StatsRecorder(self.filter_stats, self._emit_stats_record, self.relay_stats,
                                     tag=self.settings.stats_tag)
            self._stats_task = recorder.start_task(self.settings.stats_interval)

    def _open_destination(self) -> Destination:
        settings = self.settings
        if not settings.forward:
            try:
                return FileDestination(LocalStore(settings.data_dir))
            except LocalStoreError as exc:
                raise ConfigError(str(exc), key="data_dir") from None
        shares: List[_SpoolGauges] = []
        main = self._delivery(settings.forward, settings.spool_path, _SpoolGauges(self.relay_stats, shares))
        rejected = None
        if settings.rejected_forward:
            try:
                rejected = self._delivery(settings.rejected_forward, rejected_spool_path(settings.spool_path),
                                          _SpoolGauges(self.relay_stats, shares))
            except ConfigError:
                main.spool.close()
                raise
        return ForwardDestination(main, rejected, entry_form=settings.forward_entry_form)

    def _delivery(self, servers: Sequence[str], spool_path: str, gauges: _SpoolGauges) -> Delivery:
        settings = self.settings
        try:
            spool = Spool(spool_path, max_bytes=settings.spool_max_size, sync=settings.spool_sync,
                          stats=gauges)
        except SpoolError as exc:
            raise ConfigError(str(exc), key="spool_path") from None
        try:
            sender = ForwardSender([host_port(s) for s in servers], sender_settings(settings),
                                   stats=self.relay_stats)
        except (OSError, ValueError) as exc:
            spool.close()
            raise ConfigError(f"downstream: {exc}", key="forward") from None
        return Delivery(sender, spool, stats=self.relay_stats, retry_max_wait=settings.retry_max_wait)

    async def stop(self) -> None:
        """Stop accepting, let chunks in flight finish, flush and close the destination."""
        await self._close(grace=self.settings.shutdown_timeout)

    async def _close(self, grace: float) -> None:
        await self.server.stop(grace=grace)
        if self._stats_task is not None:
            self._stats_task.cancel()
            await asyncio.gather(self._stats_task, return_exceptions=True)
        if self.pool is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.pool.close, grace)
        if self.destination is not None:
            await self.destination.close(grace)
        if self.metrics is not None:
            self.metrics.stop()
        if isinstance(self.event_filter, ReloadableFilter):
            self.event_filter.close()

    # --- per chunk ---------------------------------------------------------------------------

    async def handle_chunk(self, chunk: Chunk) -> bool:
        """The ForwardServer handler: True once every record of `chunk` is safely handed on.

        A chunk with an id is decided once: its batches are remembered (before any is handed
        on) until all of them are safe, so a resend of a chunk that was partly handed on
        hands on only the rest and is neither decided nor counted again. At most
        MAX_UNFINISHED_CHUNKS such chunks are remembered; a new chunk beyond that waits (its
        connection stops being read) instead of pushing one out.
        """
        assert self.destination is not None
        key = _chunk_key(chunk)
        if key is None:
            return all(await self._deliver(await self._decide(chunk)))
        unfinished = self._unfinished.get(key)
        if unfinished is None:
            await self._room_for_unfinished()
            unfinished = self._unfinished.get(key)  # decided meanwhile (the server runs one copy at a time)
        elif unfinished.hand_on is not None and not unfinished.hand_on.done():
            # A copy whose handler was cancelled is still being handed on: take its outcome.
            await asyncio.wait({unfinished.hand_on})
        fresh = unfinished is None
        if unfinished is None:
            unfinished = self._unfinished[key] = _Unfinished()
        unfinished.active = True
        if fresh:
            try:
                unfinished.batches = list(await self._decide(chunk))
            except BaseException:
                self._forget(key)  # nothing was decided or handed on: a resend starts afresh
                raise
        batches = unfinished.batches
        hand_on = unfinished.hand_on = asyncio.ensure_future(self._deliver(batches))

        def settle(task: "asyncio.Future[List[bool]]") -> None:
            # Runs when the hand-on ends, even if this handler was cancelled meanwhile (the
            # server stopping): what became safe is never handed on again.
            unfinished.active = False
            unfinished.touched = time.monotonic()
            if task.cancelled() or task.exception() is not None:
                return
            unfinished.batches = [b for b, ok in zip(batches, task.result()) if not ok]
            if not unfinished.batches and self._unfinished.get(key) is unfinished:
                self._forget(key)

        hand_on.add_done_callback(settle)
        results = await asyncio.shield(hand_on)
        return all(results)

    async def _decide(self, chunk: Chunk) -> Sequence[Batch]:
        batches: Sequence[Batch]
        verbatim = chunk.verbatim
        if self.pool is not None:
            # A verbatim payload goes to the worker as received: decoded there, not here.
            batches = await self.pool.route(chunk.tag, verbatim if verbatim is not None
                                            else pack_entries(chunk.entries))
        elif verbatim is not None and self.router.decide is None:
            batches = self.router.pass_verbatim(chunk.tag, verbatim, chunk.entry_count)
        else:
            batches = await self._route(chunk.tag, chunk.entries, chunk.text_records())
        if log.isEnabledFor(logging.DEBUG):
            routes = " ".join(f"{batch.route}={batch.count}" for batch in batches) or "nothing"
            log.debug("chunk from %s: tag %s, %d records (%s mode, chunk id %s): %s", chunk.peer or "-",
                      chunk.tag, chunk.entry_count, chunk.mode, _chunk_id_text(chunk.chunk_id), routes)
        return batches

    async def _deliver(self, batches: Sequence[Batch]) -> List[bool]:
        """One result per batch; a failure of the destination is a False, never an exception."""
        assert self.destination is not None
        if not batches:
            return []
        try:
            return await self.destination.deliver(batches)
        except Exception as exc:  # a bug or an unforeseen error must not lose the partial state
            log.error("handing on %d batch(es) failed: %s: %s", len(batches), type(exc).__name__, exc)
            return [False] * len(batches)

    def _forget(self, key: Hashable) -> None:
        self._unfinished.pop(key, None)
        if self._unfinished_room is not None and len(self._unfinished) < MAX_UNFINISHED_CHUNKS:
            self._unfinished_room.set()

    async def _room_for_unfinished(self) -> None:
        """Wait until fewer than MAX_UNFINISHED_CHUNKS chunks are unfinished.

        Back-pressure, not eviction: dropping the memory of a partly handed-on chunk would
        make its resend decide and hand on its records twice. Only a chunk whose sender has
        not resent it for UNFINISHED_MAX_AGE seconds (it gave up) is let go, with a warning.
        """
        if self._unfinished_room is None:
            self._unfinished_room = asyncio.Event()
        room = self._unfinished_room
        while len(self._unfinished) >= MAX_UNFINISHED_CHUNKS:
            room.clear()
            self._expire_unfinished()
            if len(self._unfinished) < MAX_UNFINISHED_CHUNKS:
                break
            try:
                await asyncio.wait_for(room.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    def _expire_unfinished(self) -> None:
        now = time.monotonic()
        stale = [key for key, u in self._unfinished.items()
                 if not u.active and now - u.touched >= UNFINISHED_MAX_AGE]
        for key in stale:
            records = sum(b.count for b in self._unfinished[key].batches)
            log.warning("forgetting chunk %r: partly handed on, %d records still missing, and not resent by its "
                        "sender for %d s", key, records, UNFINISHED_MAX_AGE)
            self._forget(key)

    async def _route(self, tag: str, entries: List[Entry], text: Optional[List[bool]] = None) -> Sequence[Batch]:
        route = self.router.route
        if len(entries) <= ROUTE_SLICE:
            return route(tag, entries, text)
        groups: Dict[Tuple[str, str], RoutedBatch] = {}
        for start in range(0, len(entries), ROUTE_SLICE):
            part = text[start:start + ROUTE_SLICE] if text is not None else None
            for batch in route(tag, entries[start:start + ROUTE_SLICE], part):
                group = groups.get((batch.route, batch.tag))
                if group is None:
                    groups[(batch.route, batch.tag)] = batch
                else:
                    group.extend(batch)
            await asyncio.sleep(0)
        return list(groups.values())

    def on_sighup(self) -> None:
        """SIGHUP: reload the tuning file (if there is one) and reopen the record files of the
        files destination, so that after logrotate moved them new records go to new files."""
        reloading = self.event_filter if isinstance(self.event_filter, ReloadableFilter) else None
        if reloading is not None:
            reloading.request_reload()
        if isinstance(self.destination, FileDestination):
            self.destination.store.reopen()
        done = (["reloading the tuning file"] if reloading is not None else []) + (
            ["reopening the record files"] if isinstance(self.destination, FileDestination) else [])
        log.info("SIGHUP: %s", " and ".join(done) or "nothing to reload or reopen")

    async def _emit_stats_record(self, tag: str, timestamp: float, record: Dict[str, Any]) -> None:
        assert self.destination is not None
        seconds = int(timestamp)
        when = EventTime(seconds, int((timestamp - seconds) * 1e9))
        if self.worker is not None:
            record["worker"] = self.worker
        results = await self.destination.deliver([RoutedBatch(STATS_ROUTE, tag, [Entry(when, record)])])
        if not all(results):
            log.warning("stats record not delivered (downstream and spool unavailable)")

    # --- state -------------------------------------------------------------------------------

    def _schemas_loaded(self) -> int:
        return len(self.event_filter.rules.services) if self.event_filter is not None else 0

    def readiness(self) -> Tuple[bool, str]:
        """Ready: schemas loaded (unless the filter is off) and records have somewhere to go."""
        if self.settings.filter and self._schemas_loaded() == 0:
            return False, "no schemas loaded"
        if self.destination is None:
            return False, "starting"
        if len(self._unfinished) >= MAX_UNFINISHED_CHUNKS:
            return False, f"{len(self._unfinished)} chunks are partly handed on; new chunks wait for them"
        return self.destination.readiness()

    def describe(self) -> str:
        """One line: where the relay listens and where records go."""
        settings = self.settings
        listening = ", ".join(_show(a) for a in self.server.addresses)
        if settings.forward:
            where = f"forwarding with acks to {', '.join(settings.forward)}"
            if settings.rejected_forward:
                where += f" (rejected records to {', '.join(settings.rejected_forward)})"
            where += f", spooling to {settings.spool_path} while the downstream is away"
        else:
            directory = settings.data_dir
            where = (f"writing records to {os.path.join(directory, 'accepted.jsonl')}, rejected.jsonl "
                     f"and passed.jsonl (synced before each ack)")
        mode = "filter off, records pass through unchanged"
        if self.router.decide is not None:
            rules = getattr(self.event_filter, "rules", None)
            loaded = (f" ({len(rules.services)} services, "
                      f"{sum(len(d.actions) for d in rules.services.values())} actions)") if rules is not None else ""
            mode = "filter on" + loaded
        if self.pool is not None:
            mode += f" in {self.pool.workers} worker processes"
        tuning = self.event_filter.tuning_path if isinstance(self.event_filter, ReloadableFilter) else None
        if tuning and self.router.decide is not None:
            mode += f" with tuning {tuning} (SIGHUP or a change reloads it)"
        metrics = f"; metrics on {self.metrics.url}/metrics" if self.metrics is not None else ""
        return f"listening on {listening} (forward protocol); {where}; {mode}{metrics}"

    def summary_counts(self) -> Dict[str, int]:
        """The counts of the `stopped:` line, by name: the filter's, then the transport's."""
        relay_stats = self.relay_stats
        return {**self.filter_stats.summary_counts(), "acks_sent": relay_stats.acks_sent,
                "duplicate_chunks": relay_stats.duplicate_chunks,
                "spool_depth_records": relay_stats.spool_depth_records}

    def summary(self) -> str:
        return summary_text(self.summary_counts())


class _Unfinished:
    """A decided chunk whose batches are not all safe yet: the ones still to hand on."""

    __slots__ = ("batches", "active", "touched", "hand_on")

    def __init__(self) -> None:
        self.batches: List[Batch] = []
        self.hand_on: "Optional[asyncio.Future[List[bool]]]" = None
        self.active = False
        self.touched = time.monotonic()


def _chunk_key(chunk: Chunk) -> Optional[Hashable]:
    # Tag, id AND content: only a real resend may take the unfinished part of an earlier chunk.
    return chunk.resend_key


# --- the command -----------------------------------------------------------------------------

async def serve(relay: Relay, ready: Optional[Callable[[Relay], None]] = None, log_start: bool = True,
                stopping_hook: Optional[Callable[[], None]] = None) -> None:
    """Run `relay` until SIGTERM or SIGINT, then shut it down cleanly. SIGHUP never stops it:
    it reloads the tuning file (if any) and reopens the record files (after logrotate).
    Without `log_start`, the start-up line (`relay.describe()`) is left to `ready`;
    `stopping_hook` runs once stopping begins, before the relay stops."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    previous_sighup = signal.getsignal(signal.SIGHUP)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, relay.on_sighup)
    await relay.start()
    if log_start:
        log.info("%s", relay.describe())
    if ready is not None:
        ready(relay)
    try:
        await stopping.wait()
        log.info("stopping: no new connections; finishing chunks in flight")
        if stopping_hook is not None:
            stopping_hook()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        # remove_signal_handler restores SIGHUP's default action, which ends the process:
        # a SIGHUP during shutdown must not cut the flush short.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            await relay.stop()
        finally:
            if previous_sighup is not None:  # None: set from outside Python, nothing to restore
                signal.signal(signal.SIGHUP, previous_sighup)
    log.info("stopped: %s", relay.summary())

