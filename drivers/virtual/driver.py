"""The ``virtual`` driver: realistic generated values and scripted alarms for any class.

It needs no hardware. Each profile point's ``address`` names a generator; values are a
deterministic function of time and a per-device seed, so a demo or a test can predict them.
A device can be made to fail on demand (``fail = true`` or a ``fail_file`` that exists) to
exercise offline handling. Written points keep the written value (read back).
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from gateway.plugin import (
    Bus,
    BusSpec,
    DeviceSpec,
    DeviceUnavailable,
    Driver,
    PointSpec,
    RawValue,
    Reading,
    StrictModel,
    WriteRejected,
)
from gateway.types import Duration


class VirtualBusOptions(StrictModel):
    latency: Duration = 0.0  # simulated per-read latency
    fail_file: str | None = None  # while this file exists every device on the bus is down


class VirtualDeviceAddress(StrictModel):
    seed: int | None = None
    fail: bool = False
    fail_file: str | None = None  # while this file exists the device does not answer


class VirtualPointAddress(StrictModel):
    generator: Literal[
        "constant", "random_walk", "sine", "counter", "alarm", "cycle", "toggle"
    ]
    value: float | bool | str | None = None  # constant / initial value
    min: float = 0.0
    max: float = 100.0
    step: float = 1.0  # random_walk: max change per read
    period: Duration = Field(default=60.0, gt=0)  # sine, alarm, cycle, toggle
    duration: Duration = 5.0  # alarm: how long it stays active each period
    phase: Duration = 0.0  # offset inside the period
    rate: float = 1.0  # counter: increase per second
    values: list[float | bool | str] = Field(default_factory=list)  # cycle


def _device_seed(device: DeviceSpec) -> int:
    seed = device.address.seed
    return int(seed) if seed is not None else zlib.crc32(device.id.encode())


class VirtualBus(Bus):
    def __init__(self, spec: BusSpec) -> None:
        super().__init__(spec)
        self._rng: dict[str, random.Random] = {}
        self._walk: dict[tuple[str, str], float] = {}
        self._written: dict[tuple[str, str], RawValue] = {}
        self._t0 = time.time()

    def attach(self, device: DeviceSpec) -> None:
        self._rng[device.id] = random.Random(_device_seed(device))

    async def open(self) -> None:
        opts: VirtualBusOptions = self.spec.options
        if opts.fail_file and Path(opts.fail_file).exists():  # noqa: ASYNC240 - a stat
            raise DeviceUnavailable("unavailable", f"bus {self.spec.name}: {opts.fail_file} exists")

    def _check_up(self, device: DeviceSpec) -> None:
        opts: VirtualBusOptions = self.spec.options
        addr: VirtualDeviceAddress = device.address
        if addr.fail:
            raise DeviceUnavailable("timeout", f"{device.id} is configured to fail")
        for f in (opts.fail_file, addr.fail_file):
            if f and Path(f).exists():
                raise DeviceUnavailable("timeout", f"{device.id}: {f} exists")

    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        opts: VirtualBusOptions = self.spec.options
        if opts.latency:
            await asyncio.sleep(opts.latency)
        self._check_up(device)
        now = time.time()
        seed = _device_seed(device)
        rng = self._rng.get(device.id)
        if rng is None:
            rng = self._rng[device.id] = random.Random(seed)
        values = {}
        written = self._written
        for p in points:
            key = (device.id, p.name)
            if key in written:
                values[p.name] = written[key]
            else:
                values[p.name] = self._generate(p.address, key, rng, now, seed)
        return Reading(values=values, requests=1)

    def _generate(
        self, a: VirtualPointAddress, key: tuple[str, str], rng: random.Random, now: float, seed: int
    ) -> RawValue:
        g = a.generator
        # spread devices over the period so they do not all alarm at once
        phase = a.phase + (seed % 997) / 997.0 * a.period if g in ("alarm", "toggle") else a.phase
        pos = (now + phase) % a.period
        if g == "constant":
            return a.value
        if g == "random_walk":
            start = float(a.value) if isinstance(a.value, int | float) else (a.min + a.max) / 2
            cur = self._walk.get(key, start)
            cur = min(a.max, max(a.min, cur + rng.uniform(-a.step, a.step)))
            self._walk[key] = cur
            return round(cur, 3)
        if g == "sine":
            mid, amp = (a.min + a.max) / 2, (a.max - a.min) / 2
            return round(mid + amp * math.sin(2 * math.pi * pos / a.period), 3)
        if g == "counter":
            start = float(a.value) if isinstance(a.value, int | float) else a.min
            return round(start + a.rate * (now - self._t0 + (seed % 1000)), 3)
        if g == "alarm":
            return pos < a.duration
        if g == "toggle":
            return pos < a.period / 2
        if g == "cycle":
            if not a.values:
                return a.value
            idx = int((now + a.phase) // a.period) % len(a.values)
            return a.values[idx]
        return None

    async def write(self, device: DeviceSpec, point: PointSpec, value: RawValue) -> RawValue:
        self._check_up(device)
        if not point.writable:
            raise WriteRejected("read_only", f"{point.name} is not writable")
        self._written[(device.id, point.name)] = value
        return self._written[(device.id, point.name)]


class VirtualDriver(Driver):
    name = "virtual"
    version = "1.0.0"
    description = "Generated values and scripted alarms for any class (no hardware)"
    BusOptions = VirtualBusOptions
    DeviceAddress = VirtualDeviceAddress
    PointAddress = VirtualPointAddress
    implicit_bus = True

    def open_bus(self, spec: BusSpec) -> Bus:
        return VirtualBus(spec)

    def implicit_bus_options(self, device_address: Any) -> Any:
        return VirtualBusOptions()
