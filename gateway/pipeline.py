"""Pipeline: raw driver values -> canonical records.

profile mapping -> on-change / deadband -> privacy hook -> id stamping -> sink (the buffer,
which stamps ``seq`` in the transaction that commits the record).

``DeviceTracker`` holds the per-device memory the pipeline needs (last values sent, event
states, availability) and turns poll outcomes into records. Its methods do no I/O, so they
are unit-tested directly.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway import metrics
from gateway.classes import STATUS_POINT
from gateway.plugin import RawEvent, Reading
from gateway.profiles import (
    EventRule,
    MappingError,
    PointMap,
    Profile,
    outside_deadband,
    rule_active,
    to_canonical,
)
from gateway.record import Record, Value, uuid7_many

log = logging.getLogger(__name__)

# Telemetry suppressed by a deadband is still sent at least this often (seconds).
DEADBAND_HEARTBEAT = 900.0


Latest = tuple[Value | None, str, float, str | None, str]
"""The last value sent for a point: ``(v, q, ts, u, kind)``. A plain tuple of plain values
rather than the record: the cyclic GC stops tracking it (it does not for named tuples), so
the ~20,000 a 1,000-device site holds are not walked by every collection, and the records
themselves die young instead of being promoted to the oldest generation."""


class PrivacyHook(Protocol):
    def apply(self, record: Record) -> Record | None: ...


@dataclass
class DeviceTracker:
    """Per-device state and the pure transitions from poll outcomes to records."""

    gw: str
    dev: str
    cls: str
    profile: Profile
    poll_interval: float
    stale_after: int = 3
    online: bool | None = None  # None until the first outcome
    last_ok: float | None = None
    last_seen: float | None = None
    last_error: str | None = None
    failures: int = 0
    stale_sent: bool = False
    sent: dict[str, Value | None] = field(default_factory=dict)  # last value sent per point
    sent_at: dict[str, float] = field(default_factory=dict)
    latest: dict[str, Latest] = field(default_factory=dict)  # last value sent per point (after privacy)
    bad_points: set[str] = field(default_factory=set)  # points whose read or mapping failed
    # points whose last record sent upward was not good (bad or stale after an outage): the
    # next good value is sent whatever the change filter says, so the platform never keeps
    # v=null, q=bad for a value that did not change
    not_good: set[str] = field(default_factory=set)
    active_rules: dict[int, bool] = field(default_factory=dict)
    _rules_by_source: dict[str, list[tuple[int, EventRule]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for i, rule in enumerate(self.profile.events):
            self._rules_by_source.setdefault(rule.source, []).append((i, rule))
        self._rule_points = {r.point for r in self.profile.events}
        self._unchanged = metrics.PIPELINE_DROPS.labels("unchanged")

    # ------------------------------------------------------------------ helpers
    def _rec(
        self,
        pm_or_pt: PointMap | str,
        kind: str,
        v: Value | None,
        ts: float,
        q: str = "good",
        sev: str | None = None,
        attrs: dict[str, Any] | None = None,
        tsd: float | None = None,
    ) -> Record:
        if isinstance(pm_or_pt, str):
            pt, unit = pm_or_pt, None
        else:
            pt, unit = pm_or_pt.name, pm_or_pt.pdef.unit
        return Record(
            gw=self.gw,
            dev=self.dev,
            cls=self.cls,
            pt=pt,
            kind=kind,  # type: ignore[arg-type]
            v=v,
            ts=ts,
            q=q,  # type: ignore[arg-type]
            u=unit,
            sev=sev,  # type: ignore[arg-type]
            attrs=attrs,
            tsd=tsd,
            id="",  # stamped by Pipeline.submit, in one batch per poll
        )

    def _lifecycle(self, online: bool, ts: float, reason: str | None = None) -> Record:
        attrs = {"reason": reason} if reason else None
        return self._rec(STATUS_POINT, "lifecycle", "online" if online else "offline", ts, attrs=attrs)

    # ------------------------------------------------------------------ transitions
    def on_reading(self, reading: Reading, ts: float) -> list[Record]:
        out: list[Record] = []
        self.last_seen = ts
        self.last_ok = ts
        self.failures = 0
        self.stale_sent = False
        if self.online is not True:
            if self.online is False:
                log.info("device %s recovered", self.dev)
            out.append(self._lifecycle(True, ts))
            self.online = True
            self.last_error = None
        points = self.profile.points
        for name, raw in reading.values.items():
            pm = points.get(name)
            if pm is None:
                continue
            try:
                value = to_canonical(pm, raw)
            except MappingError as exc:
                metrics.MAPPING_ERRORS.labels(self.profile.id, name).inc()
                if name not in self.bad_points:
                    log.warning("device %s point %s: %s", self.dev, name, exc)
                    self.bad_points.add(name)
                    out.append(self._rec(pm, pm.pdef.kind if pm.pdef.kind != "event" else "state", None, ts, q="bad", attrs={"reason": "mapping"}))
                continue
            out.extend(self._value(pm, value, ts, reading.tsd))
        for name, reason in reading.errors.items():
            metrics.READ_ERRORS.labels(self.dev, reason).inc()
            pm = points.get(name)
            if pm is not None and name not in self.bad_points:
                self.bad_points.add(name)
                log.warning("device %s point %s unreadable: %s", self.dev, name, reason)
                kind = "state" if pm.pdef.kind == "event" else pm.pdef.kind
                out.append(self._rec(pm, kind, None, ts, q="bad", attrs={"reason": reason}))
                self.sent.pop(name, None)
        return out

    def _value(self, pm: PointMap, value: Value, ts: float, tsd: float | None) -> list[Record]:
        out: list[Record] = []
        name = pm.name
        recovered = name in self.bad_points or name in self.not_good
        if recovered:
            self.bad_points.discard(name)
            self.not_good.discard(name)
        kind = pm.pdef.kind
        last = self.sent.get(name)
        if kind == "event" and name not in self._rule_points:
            # direct event point: transitions of a bool, every change of a string/number
            if name in self.sent and last == value and not recovered:
                return out
            first = name not in self.sent
            self.sent[name] = value
            if recovered:
                # its failure went upward as a bad state record: clear it with a good one
                out.append(self._rec(pm, "state", value, ts, tsd=tsd))
                if last == value and not first:
                    return out
            if isinstance(value, bool):
                if first and not value:  # initial "no alarm" is a state, not an event
                    return out
                sev = pm.pdef.severity if value else "info"
                out.append(self._rec(pm, "event", value, ts, sev=sev, tsd=tsd))
            else:
                out.append(self._rec(pm, "event", value, ts, sev=pm.pdef.severity, tsd=tsd))
        elif name not in self._rule_points:
            send = True
            if kind == "state":
                send = name not in self.sent or last != value or recovered
            elif kind == "telemetry" and pm.deadband is not None and name in self.sent:
                send = outside_deadband(pm, last, value) or recovered or (
                    ts - self.sent_at.get(name, 0.0) >= DEADBAND_HEARTBEAT
                )
            if send:
                self.sent[name] = value
                self.sent_at[name] = ts
                # positional: the hot path of every poll (fields in Record's order)
                out.append(
                    Record(self.gw, self.dev, self.cls, name, kind, value, ts, "good", pm.pdef.unit, tsd, None, None, "")  # type: ignore[arg-type]
                )
            else:
                self._unchanged.inc()
        for idx, rule in self._rules_by_source.get(name, ()):
            was = self.active_rules.get(idx, False)
            now_active = rule_active(rule, value, was)
            if now_active != was:
                self.active_rules[idx] = now_active
                epm = self.profile.points[rule.point]
                sev = rule.severity if now_active else "info"
                out.append(
                    self._rec(
                        epm, "event", now_active, ts, sev=sev,
                        attrs={"source": rule.source, "value": value}, tsd=tsd,
                    )
                )
        return out

    def note_written(self, point: str, value: Value, ts: float) -> None:
        """A command wrote ``value`` and the gateway already reported it: remember it so the
        next poll does not report the same change again."""
        self.sent[point] = value
        self.sent_at[point] = ts

    def on_failure(self, reason: str, ts: float) -> list[Record]:
        """The device did not answer a poll."""
        out: list[Record] = []
        self.failures += 1
        metrics.READ_ERRORS.labels(self.dev, reason).inc()
        if self.online is not False:
            log.warning("device %s is not answering (%s)", self.dev, reason)
            out.append(self._lifecycle(False, ts, reason))
            self.online = False
            self.last_error = reason
            for pm in self.profile.read_points:
                if pm.pdef.kind == "event":
                    continue
                if pm.name in self.sent:
                    out.append(self._rec(pm, pm.pdef.kind, None, ts, q="bad", attrs={"reason": reason}))
                    self.not_good.add(pm.name)
        elif not self.stale_sent and self.missed_polls(ts) >= self.stale_after:
            self.stale_sent = True
            for pm in self.profile.read_points:
                if pm.pdef.kind == "event" or pm.name not in self.sent:
                    continue
                out.append(self._rec(pm, pm.pdef.kind, self.sent[pm.name], ts, q="stale"))
                self.not_good.add(pm.name)
        return out

    def missed_polls(self, ts: float) -> int:
        if self.last_ok is None:
            return self.failures
        return int((ts - self.last_ok) / self.poll_interval)

    def on_event(self, ev: RawEvent, ts: float) -> list[Record]:
        """A value the device pushed (not polled)."""
        pm = self.profile.points.get(ev.point)
        if pm is None:
            metrics.PIPELINE_DROPS.labels("unknown_point").inc()
            return []
        try:
            value = to_canonical(pm, ev.value)
        except MappingError as exc:
            metrics.MAPPING_ERRORS.labels(self.profile.id, ev.point).inc()
            log.warning("device %s pushed an unmappable %s: %s", self.dev, ev.point, exc)
            return []
        self.last_seen = ts
        if pm.pdef.kind == "event":
            sev = pm.pdef.severity if (value is not False) else "info"
            self.sent[pm.name] = value
            return [self._rec(pm, "event", value, ts, sev=sev, attrs=ev.attrs, tsd=ev.tsd)]
        recs = self._value(pm, value, ts, ev.tsd)
        if ev.attrs:
            for r in recs:
                r.attrs = {**(r.attrs or {}), **ev.attrs}
        return recs


def remember_latest(trackers: Mapping[str, DeviceTracker], records: Sequence[Record]) -> None:
    """Keep each device's last sent value per point (what the API's ``points`` shows).
    Records of one submit usually share a device: its tracker is looked up once per run."""
    dev: str | None = None
    latest: dict[str, Latest] | None = None
    for r in records:
        if r.dev != dev:
            dev = r.dev
            tracker = trackers.get(dev)
            latest = tracker.latest if tracker is not None else None
        if latest is not None:
            latest[r.pt] = (r.v, r.q, r.ts, r.u, r.kind)


class Pipeline:
    """Privacy hook and hand-over to the sink (the buffer)."""

    def __init__(
        self,
        sink: Callable[[Sequence[Record]], Awaitable[None]],
        privacy: PrivacyHook | None = None,
        observe: Callable[[Sequence[Record]], None] | None = None,
    ) -> None:
        self._sink = sink
        self.privacy = privacy
        self._observe = observe
        self._counters: dict[tuple[str, str], Any] = {}

    async def submit(self, records: Sequence[Record]) -> None:
        if not records:
            return
        out = records
        if self.privacy is not None:
            kept: list[Record] = []
            for r in records:
                r2 = self.privacy.apply(r)
                if r2 is None:
                    metrics.PIPELINE_DROPS.labels("privacy").inc()
                else:
                    kept.append(r2)
            out = kept
        if not out:
            return
        unstamped = [r for r in out if not r.id]
        if unstamped:
            for r, rid in zip(unstamped, uuid7_many(len(unstamped)), strict=True):
                r.id = rid
        if self._observe is not None:
            self._observe(out)
        counts: dict[tuple[str, str], int] = {}
        for r in out:
            key = (r.cls, r.kind)
            counts[key] = counts.get(key, 0) + 1
        for (cls, kind), n in counts.items():
            child = self._counters.get((cls, kind))
            if child is None:
                child = self._counters[(cls, kind)] = metrics.RECORDS.labels(cls, kind)
            child.inc(n)
        await self._sink(out)
