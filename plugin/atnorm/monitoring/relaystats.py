"""Plain counters for the forward-protocol transport (server side and sender side).

Like `FilterStats`, these are cheap increments on the hot path; monitoring reads them
when scraped. `RELAY_COUNTS` declares each count once: it makes the `RelayStats`
attributes, the Prometheus families (`metrics`) and the stats record's part and deltas
(`stats_record`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

# Upper bounds (seconds) of the downstream ack latency histogram buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class RelayCount:
    """One count of the relay's network side."""

    name: str  # the RelayStats attribute, also the key in the stats record's `relay` part
    metric: str  # the Prometheus family
    help: str
    gauge: bool = False  # a level now, not a running total
    label: Optional[str] = None  # counted per label value (a Counter), e.g. by `reason`
    label_values: Tuple[str, ...] = ()  # label values exported even while 0
    delta: bool = False  # the stats record also says how much it grew since the previous one


RELAY_COUNTS: Tuple[RelayCount, ...] = (
    # inbound
    RelayCount("connections_opened", "atnorm_connections", "Forward connections accepted."),
    RelayCount("connections_active", "atnorm_connections_active", "Forward connections open now.",
               gauge=True),
    RelayCount("connections_rejected", "atnorm_connections_rejected",
               "Forward connections refused (over max_connections or max_connections_per_peer)."),
    RelayCount("connections_evicted", "atnorm_connections_evicted",
               "Forward connections closed to make room, by reason (max_connections, input_memory).",
               label="reason", label_values=("input_memory", "max_connections")),
    RelayCount("input_paused", "atnorm_input_paused",
               "Times a connection's reading paused because max_input_memory was in use."),
    RelayCount("input_memory_bytes", "atnorm_input_memory_bytes",
               "Bytes buffered from forward connections now (counted against max_input_memory).",
               gauge=True),
    RelayCount("bytes_received", "atnorm_received_bytes", "Bytes read from forward connections.",
               delta=True),
    RelayCount("records_received", "atnorm_received_records", "Records read from forward connections."),
    RelayCount("frames", "atnorm_frames", "Forward frames received, by mode.", label="mode",
               label_values=("message", "forward", "packed_forward", "compressed_packed_forward",
                             "heartbeat")),
    RelayCount("protocol_errors", "atnorm_protocol_errors", "Forward protocol errors, by kind.",
               label="kind"),
    RelayCount("acks_sent", "atnorm_acks_sent", "Acks sent to forward clients.", delta=True),
    RelayCount("duplicate_chunks", "atnorm_duplicate_chunks",
               "Chunks received again after they had been handed on (not re-sent)."),
    RelayCount("handler_failures", "atnorm_handoff_failures",
               "Chunks that could not be handed on (spool full or failing), left unacked "
               "so the sender resends."),
    # outbound
    RelayCount("bytes_sent", "atnorm_sent_bytes", "Bytes written to the downstream aggregator.",
               delta=True),
    RelayCount("chunks_sent", "atnorm_sent_chunks", "Chunks written to the downstream aggregator.",
               delta=True),
    RelayCount("chunks_acked", "atnorm_acked_chunks", "Chunks the downstream aggregator acked."),
    RelayCount("retries", "atnorm_retries", "Chunk sends retried.", delta=True),
    RelayCount("failovers", "atnorm_failovers", "Switches to another downstream server.", delta=True),
    RelayCount("handshake_failures", "atnorm_downstream_handshake_failures",
               "Shared-key handshakes with the downstream that failed (refused, wrong key)."),
    RelayCount("unknown_acks", "atnorm_downstream_unknown_acks",
               "Acks from the downstream for a chunk id that was not waiting for one."),
    RelayCount("chunks_quarantined", "atnorm_quarantined_chunks",
               "Chunks the downstream kept refusing, moved to the spool's quarantine."),
    RelayCount("records_quarantined", "atnorm_quarantined_records",
               "Records in chunks moved to the quarantine."),
    # spool
    RelayCount("spool_depth_records", "atnorm_spool_depth_records", "Records waiting in the durable spool.",
               gauge=True),
    RelayCount("spool_depth_bytes", "atnorm_spool_depth_bytes", "Bytes waiting in the durable spool.",
               gauge=True),
    RelayCount("spool_oldest_age_seconds", "atnorm_spool_oldest_age_seconds",
               "Age of the oldest record in the spool (0 when empty).", gauge=True),
)


class RelayStats:
    """Counts of what the relay's network side did: one attribute per `RELAY_COUNTS` entry
    (an int, a float for the spool age, or a Counter for a labelled count), plus the
    downstream ack latency histogram."""

    # The types of the counts, for type checkers; `RELAY_COUNTS` says what each one means.
    connections_opened: int
    connections_active: int
    connections_rejected: int
    connections_evicted: Counter[str]
    input_paused: int
    input_memory_bytes: int
    bytes_received: int
    records_received: int
    frames: Counter[str]
    protocol_errors: Counter[str]
    acks_sent: int
    duplicate_chunks: int
    handler_failures: int
    bytes_sent: int
    chunks_sent: int
    chunks_acked: int
    retries: int
    failovers: int
    handshake_failures: int
    unknown_acks: int
    chunks_quarantined: int
    records_quarantined: int
    spool_depth_records: int
    spool_depth_bytes: int
    spool_oldest_age_seconds: float

    def __init__(self) -> None:
        for count in RELAY_COUNTS:
            setattr(self, count.name, Counter() if count.label else 0)
        self.spool_oldest_age_seconds = 0.0
        self.ack_latency_buckets: List[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self.ack_latency_sum = 0.0
        self.ack_latency_count = 0

    def observe_ack_latency(self, seconds: float) -> None:
        for index, bound in enumerate(LATENCY_BUCKETS):
            if seconds <= bound:
                self.ack_latency_buckets[index] += 1
                break
        else:
            self.ack_latency_buckets[-1] += 1
        self.ack_latency_sum += seconds
        self.ack_latency_count += 1

    def snapshot(self) -> Dict[str, Any]:
        """Every count by name (a labelled count as a plain dict), copied now."""
        out: Dict[str, Any] = {}
        for count in RELAY_COUNTS:
            value = getattr(self, count.name)
            out[count.name] = dict(value) if count.label else value
        return out
