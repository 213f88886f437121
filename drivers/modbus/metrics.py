"""Modbus-specific metrics (default registry). The core already counts per-device up, poll
duration and read errors by reason; these add what only the protocol layer can see.

Label values are bounded: ``bus`` is a configured bus name (a TCP device configured without
a bus is its own bus, named after the device), ``transport`` one of tcp/rtu/rtu_over_tcp,
``code`` a Modbus exception code, ``device`` a configured device id, ``reason``/``result``
short fixed words.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter(
    "edge_gw_modbus_requests_total",
    "Modbus requests sent, by transport and function code",
    ["transport", "fc"],
)
REQUEST_DURATION = Histogram(
    "edge_gw_modbus_request_duration_seconds",
    "Time from sending a Modbus request to its complete answer (answered requests only)",
    ["transport"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
FAILURES = Counter(
    "edge_gw_modbus_request_failures_total",
    "Modbus request attempts without a usable answer, by reason "
    "(timeout, crc, truncated, malformed, wrong_function, bad_length, bad_echo, connection)",
    ["bus", "reason"],
)
EXCEPTIONS = Counter(
    "edge_gw_modbus_exceptions_total",
    "Modbus exception responses received, by exception code (01 illegal function, "
    "02 illegal data address, 03 illegal data value, 04 device failure, 06 busy, ...)",
    ["bus", "code"],
)
RETRIES = Counter(
    "edge_gw_modbus_retries_total",
    "Modbus requests sent again after a failed attempt",
    ["bus"],
)
DISCARDED_BYTES = Counter(
    "edge_gw_modbus_discarded_bytes_total",
    "Received bytes that belonged to no answer (line noise, late answers, corrupt frames)",
    ["bus"],
)
STALE_ANSWERS = Counter(
    "edge_gw_modbus_stale_answers_total",
    "Answers that arrived while no request was outstanding (late answers to requests "
    "already given up), dropped; on TCP, late answers arriving during a newer request are "
    "dropped by transaction id without being counted here",
    ["bus"],
)
CONNECTS = Counter(
    "edge_gw_modbus_connects_total",
    "Connection (re)establishments of a Modbus bus, by result",
    ["bus", "result"],
)
HOLES_LEARNT = Counter(
    "edge_gw_modbus_holes_learnt_total",
    "Reads across a hole in a device's register map (exception 02 to a coalesced read) that "
    "were split and learnt: one per read block and learning, not per poll",
    ["bus", "device"],
)
WRITES = Counter(
    "edge_gw_modbus_writes_total",
    "Point writes, by result (ok, verify_mismatch, rejected, failed)",
    ["result"],
)
