"""Supervisor and scheduler: one asyncio task tree.

* ``BusRunner`` owns one bus hub (``plugin.Bus``): opens it (with the devices' startup
  policy), runs one ``DeviceRunner`` per device and, for push drivers, the event stream.
* ``DeviceRunner`` polls on a fixed grid (``t0 + k * interval``: no drift; overruns skip
  slots and are counted), backs a silent device off exponentially with jitter, and feeds
  poll outcomes to its ``DeviceTracker``.
* A failure in one device, bus or driver is contained in its own task.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway import metrics
from gateway.backoff import Backoff
from gateway.config import Config, DeviceConfig
from gateway.pipeline import DeviceTracker, Pipeline
from gateway.plugin import Bus, BusSpec, DeviceUnavailable, Driver, DriverError, RawEvent, Reading
from gateway.profiles import MappingError, PointMap, to_canonical
from gateway.record import now as ts_now

log = logging.getLogger(__name__)

BACKOFF_CAP = 60.0  # seconds; a dead device is probed at least this often
BUS_RETRY_CAP = 60.0


class StartupError(RuntimeError):
    """The gateway cannot start (e.g. a bus of a device with ``startup = "error"``)."""


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any]], *, grace: float = 5.0) -> None:
    """Cancel ``tasks`` and wait until they have ended, cancelling again while one runs on.

    Python 3.11's ``asyncio.wait_for`` (used by pymodbus for every request, among others)
    swallows a cancellation that arrives just as the awaited answer does: the task then runs
    on as if never cancelled, and awaiting it once would block a shutdown forever. Tasks still
    running after ``grace`` seconds are logged and left behind."""
    current = asyncio.current_task()
    pending = {t for t in tasks if not t.done() and t is not current}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    while pending:
        for t in pending:
            t.cancel()
        left = deadline - loop.time()
        if left <= 0:
            for t in pending:
                log.error("task %s did not end within %.0fs of being cancelled", t.get_name(), grace)
            break
        _, pending = await asyncio.wait(pending, timeout=min(0.2, left))
    for t in tasks:
        if t.done() and not t.cancelled() and t.exception() is not None and t is not current:
            log.error("task %s ended with an error", t.get_name(), exc_info=t.exception())


@dataclass(frozen=True, slots=True)
class PointError:
    """Why a point of an answering device has no value: ``reason`` is the driver's short
    label (``exception_02_illegal_data_address``, ``crc``, ``not_provided``) or ``mapping``
    (the raw value did not fit the profile); ``detail`` says what was read and why it failed;
    ``since`` is when this reason was first seen."""

    reason: str
    detail: str
    since: float

    def to_dict(self, point: str) -> dict[str, Any]:
        return {"point": point, "reason": self.reason, "detail": self.detail, "since": self.since}


def describe_address(pm: PointMap, profile_id: str) -> str:
    """``profile acme-sd300 address table=holding offset=10 type=bool bit=0`` (for humans;
    the address fields the profile set)."""
    addr = pm.address
    dump = getattr(addr, "model_dump", None)
    if dump is not None:
        text = " ".join(f"{k}={v}" for k, v in dump(exclude_defaults=True).items())
    else:
        text = repr(addr)
    return f"profile {profile_id} address {text}"


class PointErrors:
    """The points of one device that its last polls could not read or decode, kept while
    the device answers (an offline device keeps its last list; ``DeviceTracker.bad_points``
    says which points failed, this adds the reason and detail).

    Each entry is exported as ``edge_gw_point_errors{device, point, reason} 1`` and removed
    when the point reads again."""

    __slots__ = ("dev", "profile_id", "points", "errors")

    def __init__(self, dev: str, profile_id: str, points: dict[str, PointMap]) -> None:
        self.dev = dev
        self.profile_id = profile_id
        self.points = points
        self.errors: dict[str, PointError] = {}

    def update(self, reading: Reading, bad_points: set[str], ts: float) -> None:
        """After a reading the tracker took: ``bad_points`` is its set of failed points."""
        if not bad_points and not self.errors:
            return
        for name in [n for n in self.errors if n not in bad_points]:
            self._clear(name)
        for name in bad_points:
            pm = self.points.get(name)
            if pm is None:
                continue
            old = self.errors.get(name)
            reason = reading.errors.get(name)
            if reason is not None:
                if old is not None and old.reason == reason:
                    continue  # known: nothing to rebuild on every poll
                detail = f"read of {describe_address(pm, self.profile_id)} failed: {reason}"
            elif name in reading.values:
                if old is not None and old.reason == "mapping":
                    continue
                reason = "mapping"
                detail = f"{_mapping_problem(pm, reading.values[name])} ({describe_address(pm, self.profile_id)})"
            else:
                continue  # not read this time: the last error stands
            self._set(name, reason, detail, ts)

    def _set(self, name: str, reason: str, detail: str, ts: float) -> None:
        old = self.errors.get(name)
        if old is not None and old.reason == reason:
            return
        if old is not None:
            _remove_series(self.dev, name, old.reason)
        self.errors[name] = PointError(reason, detail, ts)
        metrics.POINT_ERRORS.labels(self.dev, name, reason).set(1)

    def _clear(self, name: str) -> None:
        old = self.errors.pop(name, None)
        if old is not None:
            _remove_series(self.dev, name, old.reason)

    def clear(self) -> None:
        for name in list(self.errors):
            self._clear(name)

    def as_list(self) -> list[dict[str, Any]]:
        return [e.to_dict(p) for p, e in sorted(self.errors.items())]


def _mapping_problem(pm: PointMap, raw: Any) -> str:
    """Why ``raw`` does not map onto the point. Numbers and booleans are quoted; the content
    of a string or bytes is not (it may be personal data the privacy policy has not seen)."""
    if isinstance(raw, (str, bytes)):
        return (
            f"the device sent a {type(raw).__name__} of {len(raw)} characters the profile cannot map "
            f"onto this {pm.pdef.type} point"
        )
    try:
        to_canonical(pm, raw)
    except MappingError as exc:
        return str(exc)
    return "the raw value did not map onto the point"


def _remove_series(dev: str, point: str, reason: str) -> None:
    try:
        metrics.POINT_ERRORS.remove(dev, point, reason)
    except KeyError:
        pass


def device_state(tracker: DeviceTracker | None, errors: PointErrors | None) -> str:
    """``disabled`` (no tracker), ``unknown`` (no poll outcome yet), ``offline``,
    ``misconfigured`` (it answers, but not one of its points could be read or decoded: a
    profile for another model, wrong unit id or register map) or ``online``."""
    if tracker is None:
        return "disabled"
    if tracker.online is None:
        return "unknown"
    if tracker.online is False:
        return "offline"
    if errors is not None and errors.errors:
        read = [pm.name for pm in tracker.profile.read_points]
        if read and all(n in errors.errors for n in read):
            return "misconfigured"
    return "online"


class DeviceRunner:
    def __init__(
        self,
        device: DeviceConfig,
        bus: Bus,
        driver: Driver,
        tracker: DeviceTracker,
        pipeline: Pipeline,
        *,
        backoff_cap: float = BACKOFF_CAP,
    ) -> None:
        self.device = device
        self.bus = bus
        self.driver = driver
        self.tracker = tracker
        self.pipeline = pipeline
        self.backoff_cap = backoff_cap
        self.backoff_until = 0.0
        self.polls = 0
        self.stopping = False
        self._rng = random.Random()
        self._wake = asyncio.Event()
        self._up = metrics.DEVICE_UP.labels(device.spec.id, device.spec.cls, driver.name)
        self._dur = metrics.POLL_DURATION.labels(device.spec.id, driver.name)
        self._ok = metrics.POLLS.labels(driver.name, "ok")
        self._fail = metrics.POLLS.labels(driver.name, "failed")
        self.point_errors = PointErrors(device.spec.id, device.profile.id, device.profile.points)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.device.spec.poll_interval
        # spread first polls of many devices over one interval
        t0 = loop.time() + self._rng.uniform(0, min(interval, 1.0))
        k = 0
        while not self.stopping:
            due = t0 + k * interval
            delay = due - loop.time()
            if delay > 0:
                if await self._sleep_unless_woken(delay):
                    await self.poll_once()  # the driver asked (Bus.request_poll): off the grid
                    continue
            else:
                late = -delay
                if late > interval:  # overrun: skip the slots we missed
                    skipped = int(late // interval)
                    k += skipped
                    metrics.POLLS_SKIPPED.labels("overrun").inc(skipped)
                    due = t0 + k * interval
            k += 1
            now = loop.time()
            if now < self.backoff_until:
                metrics.POLLS_SKIPPED.labels("backoff").inc()
                continue
            metrics.POLL_LATENESS.observe(max(0.0, now - due))
            await self.poll_once()

    def wake(self) -> None:
        """Poll now, whatever the schedule and the backoff say (``Bus.request_poll``)."""
        self.backoff_until = 0.0
        self._wake.set()

    async def _sleep_unless_woken(self, delay: float) -> bool:
        if not self._wake.is_set():
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass
        woken = self._wake.is_set()
        self._wake.clear()
        return woken

    async def poll_once(self) -> None:
        spec = self.device.spec
        loop = asyncio.get_running_loop()
        start = loop.time()
        self.polls += 1
        guard = max(30.0, 3 * spec.poll_interval)
        try:
            async with asyncio.timeout(guard):  # a hung driver must not stall this device forever
                reading = await self.bus.read(spec, spec.points)
        except DeviceUnavailable as exc:
            records = self._failed(exc.reason, exc, loop.time())
        except DriverError as exc:
            records = self._failed(exc.reason, exc, loop.time())
        except TimeoutError:
            records = self._failed("hung", None, loop.time())
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a driver bug must not stop the others
            if self.tracker.online is not False:
                log.exception("driver %s raised while reading %s", self.driver.name, spec.id)
            records = self._failed("driver_error", exc, loop.time())
        else:
            self._dur.observe(loop.time() - start)
            self._ok.inc()
            self._up.set(1)
            self.backoff_until = 0.0
            ts = ts_now()
            records = self.tracker.on_reading(reading, ts)
            self.point_errors.update(reading, self.tracker.bad_points, ts)
        await self.pipeline.submit(records)

    def _failed(self, reason: str, exc: BaseException | None, now: float) -> list[Any]:
        self._fail.inc()
        self._up.set(0)
        if exc is not None and self.tracker.online is not False:
            log.debug("device %s: %s", self.device.spec.id, exc)
        records = self.tracker.on_failure(reason, ts_now())
        # one poll interval, then doubling up to the cap, at least half of it
        delay = Backoff(self.device.spec.poll_interval, self.backoff_cap, jitter=0.5, rng=self._rng).delay(
            self.tracker.failures - 1
        )
        self.backoff_until = now + delay
        return records


@dataclass
class BusRunner:
    spec: BusSpec
    driver: Driver
    devices: list[DeviceConfig]
    pipeline: Pipeline
    trackers: dict[str, DeviceTracker]
    bus: Bus | None = None
    runners: dict[str, DeviceRunner] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    is_open: bool = False

    @property
    def policy(self) -> str:
        policies = {d.section.startup for d in self.devices}
        for p in ("error", "retry", "ignore"):
            if p in policies:
                return p
        return "retry"

    async def open(self) -> None:
        """Open the bus once. With policy ``error`` a failure propagates (the gateway does
        not start); otherwise the runner keeps trying in the background."""
        self.bus = self.driver.open_bus(self.spec)
        for d in list(self.devices):
            try:
                self.bus.attach(d.spec)
            except DriverError as exc:
                msg = f"device {d.spec.id}: driver {self.driver.name} rejected its configuration: {exc}"
                if d.section.startup == "error":
                    raise StartupError(msg) from exc
                log.error("%s; the device is left out", msg)
                self.devices.remove(d)
                continue
            metrics.POLL_REQUESTS.labels(d.spec.id).set(self.bus.requests_per_poll(d.spec))
        try:
            await self.bus.open()
        except Exception as exc:
            reason = exc.reason if isinstance(exc, DriverError) else type(exc).__name__
            metrics.BUS_OPEN_FAILURES.labels(self.spec.name, reason).inc()
            if self.policy == "error":
                raise
            log.error("bus %s could not be opened: %s (%s)", self.spec.name, exc, self.policy)
            return
        self._opened()

    def _opened(self) -> None:
        self.is_open = True
        metrics.BUS_UP.labels(self.spec.name, self.driver.name).set(1)

    def start(self, spawn: Callable[[Awaitable[None], str], asyncio.Task[None]]) -> None:
        assert self.bus is not None
        if not self.is_open:
            if self.policy == "ignore":
                for d in self.devices:
                    log.warning("device %s ignored: its bus %s is not available", d.spec.id, self.spec.name)
                return
            self.tasks.append(spawn(self._reopen_then_start(spawn), f"bus-open:{self.spec.name}"))
            return
        self._start_devices(spawn)

    def _start_devices(self, spawn: Callable[[Awaitable[None], str], asyncio.Task[None]]) -> None:
        assert self.bus is not None
        for d in self.devices:
            runner = DeviceRunner(
                d, self.bus, self.driver, self.trackers[d.spec.id], self.pipeline,
                backoff_cap=min(BACKOFF_CAP, max(d.spec.poll_interval, d.section.poll * 8)),
            )
            self.runners[d.spec.id] = runner
            self.tasks.append(spawn(runner.run(), f"poll:{d.spec.id}"))
        self.bus.poll_hook = self._poll_now
        if self.bus.events() is not None:
            self.tasks.append(spawn(self._events(), f"events:{self.spec.name}"))

    def _poll_now(self, device_id: str) -> None:
        runner = self.runners.get(device_id)
        if runner is not None:
            runner.wake()

    async def _reopen_then_start(
        self, spawn: Callable[[Awaitable[None], str], asyncio.Task[None]]
    ) -> None:
        assert self.bus is not None
        failures = 1
        retry = Backoff(1.0, BUS_RETRY_CAP, jitter=0.5)
        ts = ts_now()
        records = []
        for d in self.devices:
            records.extend(self.trackers[d.spec.id].on_failure("bus_unavailable", ts))
        await self.pipeline.submit(records)
        while not self.is_open:
            await asyncio.sleep(retry.delay(failures))
            try:
                await self.bus.open()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                reason = exc.reason if isinstance(exc, DriverError) else type(exc).__name__
                metrics.BUS_OPEN_FAILURES.labels(self.spec.name, reason).inc()
                continue
            log.info("bus %s opened after %d attempts", self.spec.name, failures)
            self._opened()
        self._start_devices(spawn)

    async def _events(self) -> None:
        assert self.bus is not None
        retry = Backoff(2.0, 30.0, jitter=0.5)
        failures = 0
        counter = metrics.EVENTS_PUSHED.labels(self.driver.name)
        while True:
            stream = self.bus.events()
            if stream is None:
                return
            try:
                async for ev in stream:
                    failures = 0
                    counter.inc()
                    await self._route(ev)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                if failures == 1:
                    log.exception("event stream of bus %s failed; restarting", self.spec.name)
                await asyncio.sleep(retry.delay(failures - 1))

    async def _route(self, ev: RawEvent) -> None:
        tracker = self.trackers.get(ev.device_id)
        if tracker is None:
            metrics.PIPELINE_DROPS.labels("unknown_device").inc()
            return
        await self.pipeline.submit(tracker.on_event(ev, ts_now()))

    async def close(self) -> None:
        for runner in self.runners.values():
            runner.stopping = True  # ends its loop even if a cancellation gets swallowed
        await cancel_and_wait(self.tasks)
        self.tasks.clear()
        for runner in self.runners.values():
            runner.point_errors.clear()
        if self.bus is not None:
            try:
                await self.bus.close()
            except Exception:
                log.exception("closing bus %s failed", self.spec.name)
        self.is_open = False
        metrics.BUS_UP.labels(self.spec.name, self.driver.name).set(0)


def make_trackers(config: Config) -> dict[str, DeviceTracker]:
    return {
        dev_id: DeviceTracker(
            gw=config.gw_id,
            dev=dev_id,
            cls=d.spec.cls,
            profile=d.profile,
            poll_interval=d.spec.poll_interval,
            stale_after=d.section.stale_after,
        )
        for dev_id, d in config.devices.items()
        if d.section.enabled
    }


def group_by_bus(config: Config) -> dict[str, list[DeviceConfig]]:
    out: dict[str, list[DeviceConfig]] = {}
    for d in config.devices.values():
        if d.section.enabled:
            out.setdefault(d.bus, []).append(d)
    return out


def spawn_factory(tasks: set[asyncio.Task[Any]]) -> Callable[[Awaitable[None], str], asyncio.Task[None]]:
    def spawn(coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(name)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    return spawn


DEVICE_STATES = ("online", "offline", "unknown", "misconfigured")


def summarize(
    trackers: Sequence[DeviceTracker], errors: Mapping[str, PointErrors] | None = None
) -> dict[str, int]:
    """Devices per state (see :func:`device_state`); ``errors`` by device id."""
    out = dict.fromkeys(DEVICE_STATES, 0)
    for t in trackers:
        out[device_state(t, errors.get(t.dev) if errors is not None else None)] += 1
    return out


