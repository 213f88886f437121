"""ONVIF-specific metrics (the core already counts per-device up, poll duration and read
errors). Label ``bus`` is the camera's bus name (for cameras: the device id, bounded by the
configuration); ``reason``/``result`` values are fixed words."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

NOTIFICATIONS = Counter(
    "edge_gw_onvif_notifications_total",
    "ONVIF notifications pulled, by result (mapped, unknown_topic, parse_error, initial_skipped)",
    ["bus", "result"],
)
SUBSCRIPTIONS = Counter(
    "edge_gw_onvif_subscriptions_total",
    "PullPoint subscriptions created, by reason (start, expired, error, reconnect)",
    ["bus", "reason"],
)
RENEWALS = Counter(
    "edge_gw_onvif_renewals_total",
    "PullPoint subscription renewals, by result (ok, failed)",
    ["bus", "result"],
)
PULL_ERRORS = Counter(
    "edge_gw_onvif_pull_errors_total",
    "Failed PullMessages calls, by reason",
    ["bus", "reason"],
)
CLOCK_SKEW = Gauge(
    "edge_gw_onvif_clock_skew_seconds",
    "Camera clock minus gateway clock, measured with GetSystemDateAndTime at connect",
    ["bus"],
)
SNAPSHOTS = Counter(
    "edge_gw_onvif_snapshots_total",
    "Snapshots on event, by result (stored, failed, auth, not_jpeg)",
    ["bus", "result"],
)
SNAPSHOT_STORE_BYTES = Gauge(
    "edge_gw_onvif_snapshot_store_bytes",
    "Bytes of JPEG snapshots kept in the local store",
)
SNAPSHOT_EVICTIONS = Counter(
    "edge_gw_onvif_snapshot_evictions_total",
    "Snapshots deleted by the retention limit (count or bytes)",
)
AUTH_FAILURES = Counter(
    "edge_gw_onvif_auth_failures_total",
    "Requests the camera refused for their credentials (each one a failed login on the camera)",
    ["bus"],
)
EVENTS_SUPPORTED = Gauge(
    "edge_gw_onvif_events_supported",
    "1 when the camera offers PullPoint events, 0 when it has no events service (found at connect)",
    ["bus"],
)
