"""Helpers for Modbus tests: bundled profiles as DeviceSpecs, buses on simulator endpoints."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from drivers.modbus.driver import ModbusBus, ModbusDriver
from drivers.modbus.schema import BusOptions, DeviceAddress
from gateway.plugin import BusSpec, DeviceSpec, PointSpec
from gateway.profiles import Profile, driver_profile_files, parse_profile

DRIVER = ModbusDriver()


@lru_cache(maxsize=1)
def bundled_profiles() -> dict[str, Profile]:
    out: dict[str, Profile] = {}
    for file, text in driver_profile_files(["drivers.modbus.driver"]):
        prof, issues = parse_profile(file, text, {"modbus": DRIVER})
        assert prof is not None, issues
        out[prof.id] = prof
    return out


def device_spec(
    profile_id: str, dev_id: str | None = None, unit: int = 1, poll: float = 1.0, **addr: Any
) -> DeviceSpec:
    prof = bundled_profiles()[profile_id]
    points = tuple(
        PointSpec(
            name=pm.name,
            address=pm.address,
            writable=pm.writable,
            value_type=pm.pdef.type,
        )
        for pm in prof.read_points
    )
    return DeviceSpec(
        id=dev_id or profile_id,
        cls=prof.cls,
        profile=prof.id,
        address=DeviceAddress(unit=unit, **addr),
        options=prof.options,
        points=points,
        poll_interval=poll,
    )


def tcp_bus(port: int, name: str = "test-tcp", **opts: Any) -> ModbusBus:
    opts.setdefault("timeout", 0.5)
    return ModbusBus(BusSpec(name, "modbus", BusOptions(host="127.0.0.1", port=port, **opts)))


def rtu_bus(path: str, name: str = "test-rtu", **opts: Any) -> ModbusBus:
    opts.setdefault("timeout", 0.3)
    return ModbusBus(BusSpec(name, "modbus", BusOptions(transport="rtu", port=path, **opts)))


def rtu_tcp_bus(port: int, name: str = "test-rtu-tcp", **opts: Any) -> ModbusBus:
    opts.setdefault("timeout", 0.5)
    return ModbusBus(
        BusSpec(
            name,
            "modbus",
            BusOptions(transport="rtu_over_tcp", host="127.0.0.1", port=port, **opts),
        )
    )


def metric(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(name, labels)
    return float(value or 0.0)
