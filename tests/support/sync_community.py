"""A small simulated community for uplink tests: devices producing telemetry, state and
events into a buffer at a bounded rate."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from gateway.record import Record, now

DEVICES = (
    ("b1-smoke-01", "smoke_detector", "smoke_density", "telemetry", "%"),
    ("b1-meter-01", "electricity_meter", "energy", "telemetry", "kWh"),
    ("b2-tilt-01", "tilt_sensor", "tilt_x", "telemetry", "deg"),
    ("b2-light-01", "street_light", "on", "state", None),
    ("b3-smoke-02", "smoke_detector", "alarm", "event", None),
)


def make_records(gw: str, n: int, *, start: int = 0, ts: float | None = None) -> list[Record]:
    """``n`` records cycling over the community's devices (one in five is an event)."""
    out = []
    for i in range(start, start + n):
        dev, cls, pt, kind, unit = DEVICES[i % len(DEVICES)]
        v: Any = (i % 2 == 0) if kind in ("state", "event") else round(i * 0.01, 2)
        out.append(
            Record(
                gw=gw, dev=dev, cls=cls, pt=pt, kind=kind,  # type: ignore[arg-type]
                v=v, u=unit, ts=now() if ts is None else ts,
                sev="critical" if kind == "event" else None,
            )
        )
    return out


async def produce(
    buffer: Any, gw: str, *, rate: float, duration: float, chunk: int = 50
) -> int:
    """Append about ``rate`` records/s for ``duration`` seconds; returns the count."""
    total = 0
    counter = itertools.count()
    interval = chunk / rate
    end = time.monotonic() + duration
    next_at = time.monotonic()
    while time.monotonic() < end:
        await buffer.append(make_records(gw, chunk, start=next(counter) * chunk))
        total += chunk
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return total
