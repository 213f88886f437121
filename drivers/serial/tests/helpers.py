"""Test helpers: devices built from the bundled profiles, mapped through the core's
profile mapping, on a real pseudo-terminal served by the simulator."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from drivers.serial.config import BusOptions, DeviceAddress
from drivers.serial.driver import SerialBus, SerialDriver
from gateway.plugin import BusSpec, DeviceSpec, PointSpec, Reading
from gateway.profiles import Profile, driver_profile_files, load_profiles, to_canonical


@lru_cache(maxsize=1)
def profiles() -> dict[str, Profile]:
    drv = SerialDriver()
    ps = load_profiles(driver_profile_files(["drivers.serial.driver"]),
                       {p: drv for p in drv.accepted_protocols()})
    assert not ps.issues, ps.issues
    return ps.profiles


def device(dev_id: str, profile_id: str, addr: str | int, *, poll: float = 1.0, **extra: Any) -> DeviceSpec:
    prof = profiles()[profile_id]
    points = tuple(
        PointSpec(pm.name, pm.address, pm.writable, pm.pdef.type)
        for pm in prof.read_points
    )
    return DeviceSpec(dev_id, prof.cls, prof.id, DeviceAddress(addr=addr, **extra), prof.options, points, poll,
                      protocol=prof.driver)


def bus(port: str, name: str = "test-bus", **opts: Any) -> SerialBus:
    defaults: dict[str, Any] = {"parity": "N", "first_byte_timeout": 0.6, "inter_byte_timeout": 0.3,
                                "guard": 0.01, "baud": 9600}
    defaults.update(opts)
    return SerialBus(BusSpec(name, "serial", BusOptions(port=port, **defaults)))


def canonical(dev: DeviceSpec, reading: Reading) -> dict[str, Any]:
    prof = profiles()[dev.profile]
    return {name: to_canonical(prof.points[name], raw) for name, raw in reading.values.items()}
