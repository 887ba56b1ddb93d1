"""Plain counters for the forward-protocol transport (server side and sender side).

Like `FilterStats`, these are cheap increments on the hot path; monitoring reads them
when scraped.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Dict, List

# Upper bounds (seconds) of the downstream ack latency histogram buckets.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class RelayStats:
    """Counts of what the relay's network side did."""

    def __init__(self) -> None:
        # inbound
        self.connections_opened = 0
        self.connections_active = 0
        self.connections_rejected = 0  # refused: over max_connections / max_connections_per_peer
        self.connections_evicted: Counter[str] = Counter()  # closed to make room, by reason: max_connections, input_memory
        self.input_paused = 0  # times a connection's reading waited for input memory (max_input_memory)
        self.input_memory_bytes = 0  # bytes buffered from connections now, against max_input_memory
        self.bytes_received = 0
        self.records_received = 0
        self.frames: Counter[str] = Counter()  # by mode: message, forward, packed_forward, compressed_packed_forward, heartbeat
        self.protocol_errors: Counter[str] = Counter()  # by kind: malformed, oversize, decompress_limit, auth, idle_timeout, ...
        self.acks_sent = 0
        self.duplicate_chunks = 0
        self.handler_failures = 0  # chunks not handed on (handler said no or failed): left unacked for a resend
        # outbound
        self.bytes_sent = 0
        self.chunks_sent = 0
        self.chunks_acked = 0
        self.retries = 0
        self.failovers = 0
        self.handshake_failures = 0  # downstream refused our shared-key handshake (or failed its own)
        self.unknown_acks = 0  # acks from the downstream for a chunk id we are not waiting for
        self.chunks_quarantined = 0  # chunks the downstream kept refusing, moved to the quarantine
        self.records_quarantined = 0
        self.ack_latency_buckets: List[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self.ack_latency_sum = 0.0
        self.ack_latency_count = 0
        # spool
        self.spool_depth_records = 0
        self.spool_depth_bytes = 0
        self.spool_oldest_age_seconds = 0.0

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
        return {
            "connections_opened": self.connections_opened,
            "connections_active": self.connections_active,
            "connections_rejected": self.connections_rejected,
            "connections_evicted": dict(self.connections_evicted),
            "input_paused": self.input_paused,
            "input_memory_bytes": self.input_memory_bytes,
            "bytes_received": self.bytes_received,
            "records_received": self.records_received,
            "frames": dict(self.frames),
            "protocol_errors": dict(self.protocol_errors),
            "acks_sent": self.acks_sent,
            "duplicate_chunks": self.duplicate_chunks,
            "handler_failures": self.handler_failures,
            "bytes_sent": self.bytes_sent,
            "chunks_sent": self.chunks_sent,
            "chunks_acked": self.chunks_acked,
            "retries": self.retries,
            "failovers": self.failovers,
            "handshake_failures": self.handshake_failures,
            "unknown_acks": self.unknown_acks,
            "chunks_quarantined": self.chunks_quarantined,
            "records_quarantined": self.records_quarantined,
            "spool_depth_records": self.spool_depth_records,
            "spool_oldest_age_seconds": self.spool_oldest_age_seconds,
        }
