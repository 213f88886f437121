"""The core's Prometheus metrics (default registry).

Every stage of the data flow is observable. Labels are bounded: ``device``, ``bus``,
``profile`` and ``uplink`` values come from the configuration, ``cls``/``kind`` from the
class catalogue, ``reason``/``outcome``/``action`` from short fixed vocabularies, and
``field`` from configured privacy-rule selectors. Record ids, values and person data are
never used as labels. ``gateway/METRICS.md`` documents the whole catalogue (core, buffer,
uplinks, drivers); a test compares it with a real scrape.
"""

from __future__ import annotations

import asyncio
import copy
import platform
from collections.abc import Iterable
from typing import Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    Metric,
    disable_created_metrics,
    generate_latest,
)

import gateway

# ``*_created`` series (one per counter/histogram child) double the series count of the text
# format and carry nothing an alert or dashboard uses: the process start time is exported.
disable_created_metrics()  # type: ignore[no-untyped-call]

BUILD_INFO = Info("edge_gw_build", "Gateway build information (version, Python, machine)")
BUILD_INFO.info(
    {
        "version": gateway.__version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "machine": platform.machine() or "unknown",
    }
)

# ------------------------------------------------------------------ devices and polls
DEVICE_UP = Gauge(
    "edge_gw_device_up", "1 when the device answered its last poll, else 0", ["device", "cls", "driver"]
)
POLL_DURATION = Histogram(
    "edge_gw_poll_duration_seconds",
    "Time one answered device poll took, including waiting for the bus",
    ["device", "driver"],
    # per device, so few buckets: Modbus TCP ~ms, RTU and meters 10-250 ms, cameras to 1 s
    buckets=(0.005, 0.025, 0.1, 0.25, 1, 5),
)
POLLS = Counter("edge_gw_polls_total", "Device polls by outcome (ok, failed)", ["driver", "outcome"])
READ_ERRORS = Counter(
    "edge_gw_read_errors_total",
    "Failed device or point reads by reason (a driver's short reason, e.g. timeout, crc, "
    "exception_02, hung, driver_error, bus_unavailable)",
    ["device", "reason"],
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
DEVICES = Gauge(
    "edge_gw_devices",
    "Configured devices by class and state (online, offline, unknown, misconfigured)",
    ["cls", "state"],
)
POINT_ERRORS = Gauge(
    "edge_gw_point_errors",
    "1 while a point of an answering device cannot be read or decoded, with the reason (the "
    "driver's short reason or mapping); the series is removed when the point reads again",
    ["device", "point", "reason"],
)
BUS_UP = Gauge("edge_gw_bus_up", "1 when the bus is open", ["bus", "driver"])
BUS_OPEN_FAILURES = Counter(
    "edge_gw_bus_open_failures_total", "Failed attempts to open a bus", ["bus", "reason"]
)
EVENTS_PUSHED = Counter(
    "edge_gw_pushed_events_total", "Events pushed by devices (not polled)", ["driver"]
)

# ------------------------------------------------------------------ pipeline
RECORDS = Counter(
    "edge_gw_records_total", "Canonical records produced by the pipeline", ["cls", "kind"]
)
PIPELINE_DROPS = Counter(
    "edge_gw_pipeline_drops_total",
    "Values the pipeline did not turn into records, by reason (unchanged, unknown_point, "
    "unknown_device, privacy)",
    ["reason"],
)
MAPPING_ERRORS = Counter(
    "edge_gw_mapping_errors_total", "Raw values that could not be mapped", ["profile", "point"]
)
INGEST_REFUSED = Counter(
    "edge_gw_ingest_refused_total", "Records the buffer refused (not accepted), by reason", ["reason"]
)
PRIVACY_ACTIONS = Counter(
    "edge_gw_privacy_actions_total",
    "Privacy policy actions applied before the buffer, by field selector (a configured rule "
    "selector such as attrs.card_no, or detected:<kind> for pattern/binary detection) and "
    "action (drop, hmac, mask, generalise, aggregate, fail_closed)",
    ["field", "action"],
)

# ------------------------------------------------------------------ commands, API, process
COMMANDS = Counter(
    "edge_gw_commands_total",
    "Commands from every source (local API and uplinks) by outcome (ok, rejected, failed, "
    "expired, duplicate)",
    ["outcome"],
)
LOOP_ERRORS = Counter(
    "edge_gw_loop_errors_total",
    "Errors no task handled, caught by the event loop's handler (reason = exception type)",
    ["reason"],
)
CONFIG_RELOADS = Counter("edge_gw_config_reloads_total", "SIGHUP reloads by outcome (ok, invalid)", ["outcome"])
API_REQUESTS = Counter(
    "edge_gw_api_requests_total", "Local API requests by route and HTTP status", ["route", "status"]
)
EVENT_LOOP_LAG = Histogram(
    "edge_gw_event_loop_lag_seconds",
    "How late a periodic 1 s timer fired on the asyncio event loop (measured all the time, "
    "with or without systemd)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
WATCHDOG_PINGS = Counter(
    "edge_gw_watchdog_pings_total",
    "WATCHDOG=1 notifications sent to the service manager",
)
WATCHDOG_WITHHELD = Counter(
    "edge_gw_watchdog_withheld_total",
    "Watchdog pings withheld because the event loop lagged or a health check failed",
    ["reason"],
)

# fixed vocabularies (series created at zero at start so dashboards see them at once)
POLL_OUTCOMES = ("ok", "failed")
SKIP_REASONS = ("overrun", "backoff")
DROP_REASONS = ("unchanged", "unknown_point", "unknown_device", "privacy")
COMMAND_OUTCOMES = ("ok", "rejected", "failed", "expired", "duplicate")
RELOAD_OUTCOMES = ("ok", "invalid")
WITHHELD_REASONS = ("lag", "health")
# the buffer's vocabularies (buffer/metrics.py documents them)
BUFFER_EVICTION_REASONS = ("budget", "max_age", "downsampled")
BUFFER_DISK_REASONS = ("disk_full", "read_only", "io_error")


def init_series(
    devices: Iterable[tuple[str, str, str]] = (),
    drivers: Iterable[str] = (),
    lanes: Iterable[str] = (),
    uplinks: Iterable[str] = (),
) -> None:
    """Create the bounded label sets at zero, so that every catalogued series is present in
    the first scrape (a missing series and a zero are different things to an alert rule).

    ``devices`` are ``(device, cls, driver)`` triples of the configured devices."""
    for dev, cls, drv in devices:
        DEVICE_UP.labels(dev, cls, drv)
        POLL_DURATION.labels(dev, drv)
    for drv in drivers:
        EVENTS_PUSHED.labels(drv)
        for outcome in POLL_OUTCOMES:
            POLLS.labels(drv, outcome)
    for reason in SKIP_REASONS:
        POLLS_SKIPPED.labels(reason)
    for reason in DROP_REASONS:
        PIPELINE_DROPS.labels(reason)
    for outcome in COMMAND_OUTCOMES:
        COMMANDS.labels(outcome)
    for outcome in RELOAD_OUTCOMES:
        CONFIG_RELOADS.labels(outcome)
    for reason in WITHHELD_REASONS:
        WATCHDOG_WITHHELD.labels(reason)
    lanes = tuple(lanes)
    if lanes:
        from buffer import metrics as bm

        for lane in lanes:
            bm.GAPS.labels(lane)
            bm.APPENDED.labels(lane)
            for reason in BUFFER_EVICTION_REASONS:
                bm.EVICTED.labels(lane, reason)
        for reason in BUFFER_DISK_REASONS:
            bm.DISK_FULL.labels(reason)
        for uplink in uplinks:
            bm.DEAD_LETTERS.labels(uplink)


# ------------------------------------------------------------------ exposition


class _Families:
    """A registry-like view of fixed metric families: what ``generate_latest`` reads."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return iter(self._families)


def _strip_header(text: bytes) -> bytes:
    """Drop the ``# HELP`` and ``# TYPE`` lines a family's continuation slice starts with."""
    return text.split(b"\n", 2)[2]


# Samples generate_latest moves to the end of their family under headers of their own: a
# family with any of them is rendered in one piece.
_TRAILING_SUFFIXES: Final = ("_created", "_gsum", "_gcount")


async def exposition(
    registry: CollectorRegistry = REGISTRY, slice_samples: int = 1000
) -> bytes:
    """The text exposition of ``registry``, byte for byte what ``generate_latest`` returns,
    rendered on the event loop in slices of at most ``slice_samples`` samples with a yield
    between them.

    At 1,000 devices a scrape is ~20,000 lines and ~0.15 s of CPU. In one piece that stalls
    every poll due meanwhile; in a worker thread it is worse, as the loop then waits for the
    GIL at every callback. Slicing bounds the stall to one family's ``collect()``.
    """
    parts: list[bytes] = []
    for family in registry.collect():
        samples = family.samples
        if len(samples) <= slice_samples or any(
            sm.name.endswith(_TRAILING_SUFFIXES) for sm in samples
        ):
            parts.append(generate_latest(_Families([family])))
        else:
            for i in range(0, len(samples), slice_samples):
                part = copy.copy(family)
                part.samples = samples[i : i + slice_samples]
                text = generate_latest(_Families([part]))
                parts.append(_strip_header(text) if i else text)
                await asyncio.sleep(0)
        await asyncio.sleep(0)
    return b"".join(parts)
