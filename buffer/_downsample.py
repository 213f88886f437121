"""Downsampling of old telemetry (pure functions, no I/O).

When the disk budget is exceeded and downsampling is configured, the oldest telemetry rows
are replaced by one summary record per point and interval: ``v`` is the mean, ``q`` is
``uncertain`` and ``attrs`` carries ``min``, ``max``, ``mean``, ``count``, ``interval`` and the
covered time span. Records that cannot be summarised (non-numeric values, bad/stale
quality, and summaries themselves) are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from gateway.record import Record

SUMMARY_FLAG: Final = "downsampled"


@dataclass(frozen=True, slots=True)
class DownsampleConfig:
    """Replace evicted telemetry by per-point summaries over ``interval`` seconds."""

    interval: float = 300.0

    def __post_init__(self) -> None:
        if not (isinstance(self.interval, int | float) and math.isfinite(self.interval)):
            raise ValueError("downsample interval must be a finite number of seconds")
        if self.interval <= 0:
            raise ValueError("downsample interval must be > 0 seconds")


@dataclass(slots=True)
class _Acc:
    first: Record
    count: int
    total: float
    lo: float
    hi: float
    first_ts: float
    last_ts: float


def summarisable(rec: Record) -> bool:
    v = rec.v
    if isinstance(v, bool) or not isinstance(v, int | float):
        return False
    if not math.isfinite(v):
        return False
    if rec.q not in ("good", "uncertain"):
        return False
    return not (rec.attrs and SUMMARY_FLAG in rec.attrs)


def bucket_start(ts: float, interval: float) -> float:
    return math.floor(ts / interval) * interval


def summarise(records: list[Record], interval: float) -> list[Record]:
    """One summary per (series, interval) of the summarisable ``records``.

    The summaries come out in order of their first record; ids are fresh and ``seq`` is 0
    (the buffer assigns it when the summary is committed).
    """
    groups: dict[tuple[str, str, str, str, Any, str | None, float], _Acc] = {}
    for rec in records:
        if not summarisable(rec):
            continue
        v = float(rec.v)  # type: ignore[arg-type]
        key = (rec.gw, rec.dev, rec.cls, rec.pt, rec.kind, rec.u, bucket_start(rec.ts, interval))
        acc = groups.get(key)
        if acc is None:
            groups[key] = _Acc(rec, 1, v, v, v, rec.ts, rec.ts)
        else:
            acc.count += 1
            acc.total += v
            acc.lo = min(acc.lo, v)
            acc.hi = max(acc.hi, v)
            acc.first_ts = min(acc.first_ts, rec.ts)
            acc.last_ts = max(acc.last_ts, rec.ts)
    out: list[Record] = []
    for key, acc in groups.items():
        mean = acc.total / acc.count
        first = acc.first
        out.append(
            Record(
                gw=first.gw,
                dev=first.dev,
                cls=first.cls,
                pt=first.pt,
                kind=first.kind,
                v=mean,
                ts=key[6],
                q="uncertain",
                u=first.u,
                attrs={
                    SUMMARY_FLAG: True,
                    "min": acc.lo,
                    "max": acc.hi,
                    "mean": mean,
                    "count": acc.count,
                    "interval": interval,
                    "first_ts": acc.first_ts,
                    "last_ts": acc.last_ts,
                },
            )
        )
    return out
