"""Helpers for ONVIF driver tests: build devices from the bundled profiles and collect
events from a running bus with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from drivers.onvif.driver import CameraAddress, OnvifBus, OnvifDriver
from gateway.plugin import BusSpec, DeviceSpec, PointSpec, RawEvent
from gateway.profiles import Profile, driver_profile_files, load_profiles

DRIVER = OnvifDriver()


def bundled_profiles() -> dict[str, Profile]:
    ps = load_profiles(driver_profile_files(["drivers.onvif.driver"]), {"onvif": DRIVER})
    assert not ps.issues, ps.issues
    return ps.profiles


def device(dev_id: str, profile: Profile, address: dict[str, Any]) -> DeviceSpec:
    addr = CameraAddress.model_validate(address)
    points = tuple(PointSpec(pm.name, pm.address, pm.writable, pm.pdef.type) for pm in profile.read_points)
    return DeviceSpec(dev_id, profile.cls, profile.id, addr, profile.options, points, 5.0)


def open_bus(dev: DeviceSpec) -> OnvifBus:
    bus = DRIVER.open_bus(BusSpec(dev.id, "onvif", DRIVER.implicit_bus_options(dev.address)))
    assert isinstance(bus, OnvifBus)
    bus.attach(dev)
    return bus


class EventCollector:
    """Consumes ``bus.events()`` in a task (as the core does) into a queue."""

    def __init__(self, bus: OnvifBus) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[RawEvent] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        it = self.bus.events()
        assert it is not None
        async for ev in it:
            await self.queue.put(ev)

    async def __aenter__(self) -> EventCollector:
        await self.bus.open()
        self.task = asyncio.create_task(self._run(), name=f"collect-{self.bus.spec.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def take(self, n: int, timeout: float = 10.0) -> list[RawEvent]:
        out: list[RawEvent] = []
        async with asyncio.timeout(timeout):
            while len(out) < n:
                out.append(await self.queue.get())
        return out

    async def stream(self) -> AsyncIterator[RawEvent]:
        while True:
            yield await self.queue.get()
