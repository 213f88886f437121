"""The ``ops_push`` test driver: replays ``ops_privacy_data.records()`` as pushed events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from gateway.plugin import (
    Bus,
    BusSpec,
    DeviceSpec,
    Driver,
    PointSpec,
    RawEvent,
    Reading,
    StrictModel,
)
from tests.support import ops_privacy_data


class PushBusOptions(StrictModel):
    rounds: int = 1  # how many times the whole day is replayed
    delay: float = 0.5  # seconds before the first event (lets the daemon settle)
    gap: float = 0.01  # seconds between events


class PushPoint(StrictModel):
    pushed: bool = True


class PushBus(Bus):
    def __init__(self, spec: BusSpec) -> None:
        super().__init__(spec)
        self.devices: dict[str, DeviceSpec] = {}
        self.sent = 0

    def attach(self, device: DeviceSpec) -> None:
        self.devices[device.id] = device

    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        return Reading(values={}, requests=0)  # push-only: answering = online

    def events(self) -> AsyncIterator[RawEvent] | None:
        return self._events()

    async def _events(self) -> AsyncIterator[RawEvent]:
        opts: PushBusOptions = self.spec.options
        await asyncio.sleep(opts.delay)
        for _ in range(opts.rounds):
            for rec in ops_privacy_data.records():
                if rec.dev not in self.devices:
                    continue
                attrs = dict(rec.attrs) if rec.attrs else None
                yield RawEvent(rec.dev, rec.pt, rec.v, attrs)
                self.sent += 1
                await asyncio.sleep(opts.gap)
        # the stream stays open like a real device's would
        await asyncio.Event().wait()


class PushDriver(Driver):
    name = "ops_push"
    version = "0.1.0"
    description = "test-only: pushes realistic personal records (privacy tests)"
    BusOptions = PushBusOptions
    PointAddress = PushPoint

    def open_bus(self, spec: BusSpec) -> Bus:
        return PushBus(spec)
