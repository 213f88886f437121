"""Prometheus metrics of the uplinks (default registry). Labels are bounded: ``uplink`` is
a configured name, ``outcome``/``reason`` come from fixed sets."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UPLINK_CONNECTED = Gauge(
    "edge_gw_uplink_connected",
    "1 while the uplink has a working connection to the platform, else 0",
    ["uplink"],
)
UPLINK_BATCHES = Counter(
    "edge_gw_uplink_batches_total",
    "Record batches by outcome: sent (handed to the transport), acked (PUBACK/2xx/409), "
    "failed (to be retried), rejected (dead-lettered by a 4xx answer)",
    ["uplink", "outcome"],
)
UPLINK_RECORDS = Counter(
    "edge_gw_uplink_records_total",
    "Records by outcome, same outcomes as edge_gw_uplink_batches_total",
    ["uplink", "outcome"],
)
UPLINK_BACKLOG_RECORDS = Counter(
    "edge_gw_uplink_backlog_records_total",
    "Records sent as backlog replay (hist=true)",
    ["uplink"],
)
UPLINK_BYTES = Counter(
    "edge_gw_uplink_sent_bytes_total",
    "Payload bytes handed to the transport (after compression)",
    ["uplink"],
)
UPLINK_LAG = Gauge(
    "edge_gw_uplink_lag_seconds",
    "Age of the oldest record not yet acknowledged by this uplink's platform",
    ["uplink"],
)
UPLINK_PENDING = Gauge(
    "edge_gw_uplink_pending_records",
    "Records in the buffer not yet acknowledged by this uplink",
    ["uplink"],
)
UPLINK_INFLIGHT = Gauge(
    "edge_gw_uplink_inflight_batches",
    "Batches sent and waiting for the platform's acknowledgement",
    ["uplink"],
)
UPLINK_RECONNECTS = Counter(
    "edge_gw_uplink_reconnects_total",
    "Successful connections after the first one (MQTT) or recoveries after an outage (HTTPS)",
    ["uplink"],
)
UPLINK_ERRORS = Counter(
    "edge_gw_uplink_errors_total",
    "Connection or delivery errors by reason (tls, auth, refused, timeout, http_5xx, "
    "http_429, protocol, other)",
    ["uplink", "reason"],
)
UPLINK_ACK_SECONDS = Histogram(
    "edge_gw_uplink_ack_seconds",
    "Time from handing a batch to the transport to its acknowledgement",
    ["uplink"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
COMMANDS = Counter(
    "edge_gw_uplink_commands_total",
    "Downlink commands received on this uplink by outcome (ok, rejected, failed, expired, "
    "malformed); the core's edge_gw_commands_total counts every command source together",
    ["uplink", "outcome"],
)

OUTCOMES = ("sent", "acked", "failed", "rejected")
ERROR_REASONS = ("tls", "auth", "refused", "timeout", "http_5xx", "http_429", "protocol", "other")
COMMAND_OUTCOMES = ("ok", "rejected", "failed", "expired", "malformed")


def init_uplink(name: str) -> None:
    """Create every series of an uplink at zero so dashboards see them before any event."""
    UPLINK_CONNECTED.labels(name).set(0)
    for outcome in OUTCOMES:
        UPLINK_BATCHES.labels(name, outcome)
        UPLINK_RECORDS.labels(name, outcome)
    UPLINK_BACKLOG_RECORDS.labels(name)
    UPLINK_BYTES.labels(name)
    UPLINK_LAG.labels(name)
    UPLINK_PENDING.labels(name)
    UPLINK_INFLIGHT.labels(name)
    UPLINK_RECONNECTS.labels(name)
    for reason in ERROR_REASONS:
        UPLINK_ERRORS.labels(name, reason)
    for outcome in COMMAND_OUTCOMES:
        COMMANDS.labels(name, outcome)
