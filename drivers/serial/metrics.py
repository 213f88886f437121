"""Metrics of the serial drivers (default registry). Labels are bounded: bus names come from
the configuration, protocol/reason/outcome from small fixed sets."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DISCARDED_BYTES = Counter(
    "edge_gw_serial_discarded_bytes_total",
    "Bytes skipped by the receive parsers while resynchronising (junk, stray bytes, broken frames)",
    ["bus"],
)
BAD_FRAMES = Counter(
    "edge_gw_serial_bad_frames_total",
    "Frame candidates rejected by the receive parsers",
    ["bus", "protocol", "reason"],
)
ERROR_REPLIES = Counter(
    "edge_gw_serial_error_replies_total",
    "Abnormal (error) replies from meters, by decoded reason",
    ["bus", "protocol", "reason"],
)
TIMEOUTS = Counter(
    "edge_gw_serial_timeouts_total",
    "Exchanges without a valid reply: silent (no byte at all) or incomplete (bytes, no valid frame)",
    ["bus", "kind"],
)
RETRIES = Counter("edge_gw_serial_retries_total", "Requests repeated after a failed exchange", ["bus"])
ECHO_BYTES = Counter(
    "edge_gw_serial_echo_bytes_total", "Local-echo bytes suppressed after transmitting", ["bus"]
)
UNSOLICITED = Counter(
    "edge_gw_serial_unsolicited_frames_total",
    "Device-initiated frames received (outcome: event, unknown_device, unknown_command, dropped)",
    ["bus", "outcome"],
)
TIME_SYNCS = Counter(
    "edge_gw_serial_time_syncs_total", "Broadcast time-sync frames sent (DL/T 645 C=08)", ["bus"]
)
RECONNECTS = Counter(
    "edge_gw_serial_port_opens_total", "Port or TCP serial-server (re)opens, by outcome", ["bus", "outcome"]
)
EXCHANGE_SECONDS = Histogram(
    "edge_gw_serial_exchange_seconds",
    "Time from the end of the request write to a valid reply",
    ["bus"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0),
)
