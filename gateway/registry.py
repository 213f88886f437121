"""Driver discovery through the ``edge_gateway.drivers`` entry-point group."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points

from gateway.plugin import Driver, IncompatibleDriver, check_api_version

GROUP = "edge_gateway.drivers"
log = logging.getLogger(__name__)


@dataclass
class DriverInfo:
    name: str
    module: str
    distribution: str
    version: str = ""
    api_version: str = ""
    description: str = ""
    protocols: tuple[str, ...] = ()
    error: str | None = None  # why it cannot be used


@dataclass
class DriverRegistry:
    drivers: dict[str, Driver] = field(default_factory=dict)
    infos: list[DriverInfo] = field(default_factory=list)

    def by_protocol(self) -> dict[str, Driver]:
        """Profile ``driver`` value -> the driver that serves it."""
        out: dict[str, Driver] = {}
        for drv in self.drivers.values():
            for proto in drv.accepted_protocols():
                out[proto] = drv
        return out

    def modules(self) -> list[str]:
        return [i.module for i in self.infos if i.error is None]


def _load_one(ep: EntryPoint) -> tuple[Driver | None, DriverInfo]:
    dist = ep.dist.name if ep.dist is not None else "?"
    info = DriverInfo(name=ep.name, module=ep.value.split(":")[0], distribution=dist)
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not take the gateway down
        info.error = f"cannot import {ep.value}: {type(exc).__name__}: {exc}"
        return None, info
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        info.error = f"{ep.value} is not a gateway.plugin.Driver subclass"
        return None, info
    declared = getattr(cls, "api_version", None)
    info.api_version = (
        f"{declared[0]}.{declared[1]}" if isinstance(declared, tuple) and len(declared) == 2 else repr(declared)
    )
    info.version = str(getattr(cls, "version", ""))
    info.description = str(getattr(cls, "description", ""))
    try:
        if not (isinstance(declared, tuple) and len(declared) == 2):
            raise IncompatibleDriver(f"driver {ep.name!r} declares no valid api_version")
        check_api_version(ep.name, declared)
        if getattr(cls, "name", ep.name) != ep.name:
            raise IncompatibleDriver(
                f"entry point {ep.name!r} loads a driver named {cls.name!r}; the names must match"
            )
        drv = cls()
    except IncompatibleDriver as exc:
        info.error = str(exc)
        return None, info
    except Exception as exc:
        info.error = f"cannot create driver: {type(exc).__name__}: {exc}"
        return None, info
    info.protocols = tuple(sorted(drv.accepted_protocols()))
    return drv, info


def load_drivers(only: set[str] | None = None) -> DriverRegistry:
    reg = DriverRegistry()
    seen: set[str] = set()
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        if only is not None and ep.name not in only:
            continue
        if ep.name in seen:
            reg.infos.append(
                DriverInfo(ep.name, ep.value, "?", error="duplicate driver name; first one kept")
            )
            continue
        seen.add(ep.name)
        drv, info = _load_one(ep)
        reg.infos.append(info)
        if drv is not None:
            reg.drivers[ep.name] = drv
        else:
            log.error("driver %s refused: %s", ep.name, info.error)
    return reg
