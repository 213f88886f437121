"""Record factories shared by the buffer tests."""

from __future__ import annotations

import itertools
import time
from typing import Any

from gateway.record import Record

GW = "test-gw"
_n = itertools.count()


def tel(v: float = 1.0, *, dev: str = "m1", pt: str = "power", ts: float | None = None, **kw: Any) -> Record:
    return Record(gw=GW, dev=dev, cls="meter", pt=pt, kind="telemetry", v=v, u="W",
                  ts=time.time() if ts is None else ts, **kw)


def state(v: str = "open", *, dev: str = "e1", ts: float | None = None) -> Record:
    return Record(gw=GW, dev=dev, cls="elevator", pt="door", kind="state", v=v,
                  ts=time.time() if ts is None else ts)


def event(v: bool = True, *, dev: str = "s1", ts: float | None = None, **kw: Any) -> Record:
    return Record(gw=GW, dev=dev, cls="smoke_detector", pt="alarm", kind="event", v=v,
                  sev="critical", ts=time.time() if ts is None else ts, **kw)


def lifecycle(v: str = "online", *, dev: str = "s1") -> Record:
    return Record(gw=GW, dev=dev, cls="smoke_detector", pt="status", kind="lifecycle", v=v,
                  ts=time.time())


def mixed(n: int) -> list[Record]:
    out: list[Record] = []
    for i in range(n):
        k = next(_n) % 10
        out.append(event() if k == 0 else state() if k == 1 else tel(float(i)))
    return out
