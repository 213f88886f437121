"""A minimal third-party driver: an 'Acme thermo' whose registers live in a JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from gateway.plugin import (
    Bus,
    BusSpec,
    DeviceSpec,
    DeviceUnavailable,
    Driver,
    PointSpec,
    Reading,
    StrictModel,
)


class Options(StrictModel):
    state_file: str


class Address(StrictModel):
    unit: int


class PointAddress(StrictModel):
    register: int


class AcmeBus(Bus):
    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        path = Path(self.spec.options.state_file)
        try:
            regs = json.loads(path.read_text())[str(device.address.unit)]  # noqa: ASYNC240 - tiny test file
        except (OSError, KeyError, ValueError) as exc:
            raise DeviceUnavailable("timeout", str(exc)) from None
        return Reading(values={p.name: regs[p.address.register] for p in points}, requests=1)


class AcmeDriver(Driver):
    name = "acme"
    version = "2.3.0"
    description = "Acme thermo (test plugin)"
    BusOptions = Options
    DeviceAddress = Address
    PointAddress = PointAddress

    def open_bus(self, spec: BusSpec) -> Bus:
        return AcmeBus(spec)
