"""The core's Prometheus metrics (default registry). Every stage of the data flow is
observable; labels are bounded (device ids are configured, reasons are short labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

import gateway

BUILD_INFO = Info("edge_gw_build", "Gateway build information")
BUILD_INFO.info({"version": gateway.__version__})

DEVICE_UP = Gauge(
    "edge_gw_device_up", "1 when the device answered its last poll, else 0", ["device", "cls", "driver"]
)
POLL_DURATION = Histogram(
    "edge_gw_poll_duration_seconds",
    "Time one device poll took, including bus waiting",
    ["driver"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
POLLS = Counter("edge_gw_polls_total", "Device polls by outcome", ["driver", "outcome"])
READ_ERRORS = Counter(
    "edge_gw_read_errors_total", "Failed device or point reads by reason", ["device", "reason"]
)
POLL_REQUESTS = Gauge(
    "edge_gw_poll_requests", "Protocol requests one full poll of the device needs", ["device"]
)
POLL_LATENESS = Histogram(
    "edge_gw_poll_lateness_seconds",
    "How late a poll started relative to its schedule (jitter)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
POLLS_SKIPPED = Counter(
    "edge_gw_polls_skipped_total", "Scheduled polls skipped (overrun or device backed off)", ["reason"]
)
RECORDS = Counter(
    "edge_gw_records_total", "Canonical records produced by the pipeline", ["cls", "kind"]
)
PIPELINE_DROPS = Counter(
    "edge_gw_pipeline_drops_total", "Values the pipeline did not turn into records", ["reason"]
)
MAPPING_ERRORS = Counter(
    "edge_gw_mapping_errors_total", "Raw values that could not be mapped", ["profile", "point"]
)
BUS_UP = Gauge("edge_gw_bus_up", "1 when the bus is open", ["bus", "driver"])
BUS_OPEN_FAILURES = Counter(
    "edge_gw_bus_open_failures_total", "Failed attempts to open a bus", ["bus", "reason"]
)
DEVICES = Gauge("edge_gw_devices", "Configured devices by class and state", ["cls", "state"])
COMMANDS = Counter("edge_gw_commands_total", "Downlink commands by outcome", ["outcome"])
EVENTS_PUSHED = Counter(
    "edge_gw_pushed_events_total", "Events pushed by devices (not polled)", ["driver"]
)
INGEST_REFUSED = Counter(
    "edge_gw_ingest_refused_total", "Records the buffer refused (not accepted)", ["reason"]
)
CONFIG_RELOADS = Counter("edge_gw_config_reloads_total", "SIGHUP reloads by outcome", ["outcome"])
API_REQUESTS = Counter(
    "edge_gw_api_requests_total", "Local API requests", ["route", "status"]
)
