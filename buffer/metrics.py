"""Prometheus metrics of the store-and-forward buffer (default registry).

Labels are bounded: ``lane`` (event/state/telemetry), ``state`` (pending/in_flight),
``uplink`` (configured uplink names), ``reason`` (a short fixed vocabulary).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Gauge(
    "edge_gw_buffer_records", "Records stored in the buffer, by lane", ["lane"]
)
BYTES = Gauge(
    "edge_gw_buffer_bytes",
    "Encoded payload bytes of the records stored in the buffer, by lane",
    ["lane"],
)
UPLINK_RECORDS = Gauge(
    "edge_gw_buffer_uplink_records",
    "Records not yet acknowledged by an uplink, by lane and state (pending or in_flight)",
    ["uplink", "lane", "state"],
)
UPLINK_BYTES = Gauge(
    "edge_gw_buffer_uplink_bytes",
    "Estimated payload bytes not yet acknowledged by an uplink, by lane and state",
    ["uplink", "lane", "state"],
)
FILE_BYTES = Gauge(
    "edge_gw_buffer_file_bytes", "Size of the buffer database file plus its write-ahead log"
)
USED_BYTES = Gauge(
    "edge_gw_buffer_used_bytes", "Bytes of the buffer database in use (pages not on the free list)"
)
BUDGET_BYTES = Gauge("edge_gw_buffer_budget_bytes", "Configured disk budget (0 = none)")
LAST_SEQ = Gauge("edge_gw_buffer_last_seq", "Highest seq committed")
WAL_SYNCS = Counter(
    "edge_gw_buffer_wal_syncs_total",
    "fsyncs of the WAL before telemetry committed without one was handed to an uplink",
)
APPENDED = Counter(
    "edge_gw_buffer_appended_records_total", "Records committed to the buffer, by lane", ["lane"]
)
APPEND_LATENCY = Histogram(
    "edge_gw_buffer_append_latency_seconds",
    "Time from append() to the commit of its records",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
COMMIT_DURATION = Histogram(
    "edge_gw_buffer_commit_duration_seconds",
    "Duration of one group-commit transaction",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
COMMIT_RECORDS = Histogram(
    "edge_gw_buffer_commit_records",
    "Records per group-commit transaction",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
)
QUEUE_RECORDS = Gauge(
    "edge_gw_buffer_queue_records", "Records waiting in the bounded queue in front of the writer"
)
BACKPRESSURE_WAITS = Counter(
    "edge_gw_buffer_backpressure_waits_total",
    "append() calls that had to wait because the writer queue was full",
)
EVICTED = Counter(
    "edge_gw_buffer_evicted_records_total",
    "Records removed before every uplink acknowledged them, by lane and reason "
    "(budget, max_age, downsampled)",
    ["lane", "reason"],
)
SUMMARIES = Counter(
    "edge_gw_buffer_downsample_summaries_total",
    "Summary records written in place of downsampled telemetry",
)
GAPS = Counter(
    "edge_gw_buffer_gap_records_total", "Gap lifecycle records emitted, by lane", ["lane"]
)
DISK_FULL = Counter(
    "edge_gw_buffer_disk_full_events_total",
    "Times a commit failed because the disk was full or read-only, by reason",
    ["reason"],
)
DEGRADED = Gauge(
    "edge_gw_buffer_degraded",
    "1 while the buffer cannot write (disk full or read-only), else 0",
)
RESERVE_RECORDS = Gauge(
    "edge_gw_buffer_reserve_records",
    "Event and lifecycle records held in memory while the disk cannot be written",
)
REFUSED = Counter(
    "edge_gw_buffer_refused_records_total",
    "Records the buffer refused to accept, by reason",
    ["reason"],
)
DEAD_LETTERS = Counter(
    "edge_gw_buffer_dead_letters_total",
    "Records moved to the dead-letter table after the platform refused them, by uplink",
    ["uplink"],
)
DEAD_LETTERS_STORED = Gauge(
    "edge_gw_buffer_dead_letter_records", "Records currently in the dead-letter table"
)
OLDEST_PENDING_AGE = Gauge(
    "edge_gw_buffer_oldest_pending_age_seconds",
    "Age of the oldest record an uplink has not acknowledged (0 when none)",
    ["uplink"],
)
RESETS = Counter(
    "edge_gw_buffer_resets_total",
    "Times an unreadable buffer database was moved aside and a new one created",
)
