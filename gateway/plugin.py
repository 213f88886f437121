"""The driver plugin API: what a protocol driver implements so the core can run it.

A driver is a class registered in the ``edge_gateway.drivers`` entry-point group. The core
never imports a driver by name: it loads the entry point, checks ``api_version`` and then
talks to it only through this module's types. Everything here is stable within a major
``API_VERSION``; a driver built for another major version is refused at load time.

Shape of the contract (see ``drivers/README.md`` for the vendor guide):

* ``Driver`` (one instance per process) declares four pydantic schemas -- the extra keys of a
  ``[[buses]]`` entry, a device's ``address``, a profile point's ``address`` and the
  profile's optional ``[driver]`` options -- and opens buses.
* ``Bus`` (one per configured bus; the *hub*) owns the connection and serialises access to
  it. The core calls ``read`` once per device poll with all points due, ``write`` for a
  command, and ``events`` for drivers whose devices push data.
* Drivers return *raw* values (numbers already decoded from bytes, bits as bools, strings).
  Scale, offset, enum maps, unit conversion, deadbands and event rules are applied by the
  core from the profile, so every driver gets them the same way.
"""

from __future__ import annotations

import abc
import argparse
import struct
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from gateway.errors import ReasonError

API_VERSION: tuple[int, int] = (1, 0)
"""(major, minor). A driver declaring another major, or a newer minor, is refused."""

RawValue = float | int | bool | str | bytes | None


def float32_value(x: float) -> float:
    """A value decoded from an IEEE 754 single, without its binary noise: the shortest
    decimal that is the same float32 (0.12, not 0.119999997318). That is at most 7
    significant digits for any decimal a device stored with 7 or fewer, and never loses
    information (12345678, a float32 exactly, stays 12345678; at most 9 digits are needed).
    Drivers call this for every float32 they decode."""
    want = _F32.pack(x)
    for digits in (6, 7, 8):
        shorter = float(f"{x:.{digits}g}")
        if _F32.pack(shorter) == want:
            return shorter
    return float(f"{x:.9g}")


_F32 = struct.Struct(">f")


class StrictModel(BaseModel):
    """Base for driver schemas: unknown keys are errors, so typos are caught by ``check``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoOptions(StrictModel):
    """Schema for drivers that take no options in a given place."""


@dataclass(frozen=True, slots=True)
class BusSpec:
    """A configured bus: its name and the driver-validated options."""

    name: str
    driver: str
    options: Any  # instance of Driver.BusOptions


@dataclass(frozen=True, slots=True)
class PointSpec:
    """One canonical point of a device as the driver must read or write it."""

    name: str  # canonical point name, e.g. "smoke_density"
    address: Any  # instance of Driver.PointAddress (from the profile)
    writable: bool = False
    value_type: str = "number"  # "number" | "bool" | "string", the class's type


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A configured device as the driver sees it."""

    id: str
    cls: str
    profile: str
    address: Any  # instance of Driver.DeviceAddress
    options: Any  # instance of Driver.ProfileOptions (the profile's [driver] table)
    points: tuple[PointSpec, ...]
    poll_interval: float
    protocol: str = ""  # the profile's ``driver`` value (a bus driver may host several)

    def point(self, name: str) -> PointSpec:
        for p in self.points:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass(slots=True)
class Reading:
    """Result of one poll of one device.

    ``values`` holds the raw value of every point that was read; ``errors`` the reason for
    each point that could not be read while the device itself answered (e.g. an illegal
    address exception for one block). If the device did not answer at all, raise
    ``DeviceUnavailable`` instead of returning.
    """

    values: dict[str, RawValue] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    tsd: float | None = None  # device clock, epoch seconds, when the device has one
    requests: int = 0  # protocol requests this poll took (for metrics)


@dataclass(slots=True)
class RawEvent:
    """Something a device pushed (an ONVIF notification, an unsolicited serial frame)."""

    device_id: str
    point: str  # canonical point name
    value: RawValue
    attrs: dict[str, Any] | None = None
    tsd: float | None = None


class DriverError(ReasonError):
    """Base of errors a driver raises. ``reason`` is a short, bounded label for metrics
    (e.g. ``timeout``, ``crc``, ``exception_02``); ``detail`` is for the log."""


class DeviceUnavailable(DriverError):
    """The device did not answer (timeout, connection refused, no route). The core backs
    the device off and reports it offline."""


class WriteRejected(DriverError):
    """The device or the driver refused the write (read-only, out of range, exception)."""


class Bus(abc.ABC):
    """A bus hub: one per configured bus. Owns the client and serialises access to it."""

    # set by the core when it runs the bus (see ``request_poll``)
    poll_hook: Callable[[str], None] | None = None

    def __init__(self, spec: BusSpec) -> None:
        self.spec = spec

    def request_poll(self, device_id: str) -> None:
        """Ask the core to poll ``device_id`` now, ahead of its schedule and of any backoff
        (e.g. the driver saw an offline device answer again, or its credentials changed).
        A no-op when no core runs the bus (tests, scans)."""
        hook = self.poll_hook
        if hook is not None:
            hook(device_id)

    def notes(self, device_id: str) -> dict[str, str]:
        """Short facts the driver learned about a device, shown by the local API and
        ``edge-gateway devices`` (e.g. ``{"events": "unsupported: ..."}``, the detail of
        the last failure). Keys and values are plain text; secrets never."""
        return {}

    def reloaded(self) -> None:
        """The configuration was reloaded and this bus kept running (its settings did not
        change): a driver waiting out a backoff of its own may retry now."""

    async def open(self) -> None:
        """Open the port or connection. Raise ``DriverError`` if it cannot be opened; the core
        retries according to the devices' startup policy."""

    async def close(self) -> None:
        """Close everything; must not raise."""

    def attach(self, device: DeviceSpec) -> None:
        """Called once per device before polling starts (plan reads, allocate state)."""

    def requests_per_poll(self, device: DeviceSpec) -> int:
        """How many protocol requests one full poll of ``device`` takes (1 when unknown)."""
        return 1

    @abc.abstractmethod
    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        """Read the given points of one device."""

    async def write(self, device: DeviceSpec, point: PointSpec, value: RawValue) -> RawValue:
        """Write a raw value to a point and return the value read back (or ``value`` when the
        device cannot be read back). Raise ``WriteRejected`` or ``DriverError``."""
        raise WriteRejected("not_supported", f"driver {self.spec.driver} cannot write")

    def events(self) -> AsyncIterator[RawEvent] | None:
        """An async iterator of pushed events for all devices on this bus, or ``None`` when the
        driver only polls. The core consumes it in its own task and restarts it if it ends
        with an error."""
        return None


class Driver(abc.ABC):
    """A protocol driver. Subclasses set the class attributes and implement ``open_bus``."""

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    api_version: ClassVar[tuple[int, int]] = API_VERSION
    description: ClassVar[str] = ""
    # Profile ``driver`` values this driver accepts (defaults to its own name). A serial
    # bus driver may host several meter protocols on one RS-485 line.
    protocols: ClassVar[frozenset[str]] = frozenset()

    BusOptions: ClassVar[type[BaseModel]] = NoOptions
    DeviceAddress: ClassVar[type[BaseModel]] = NoOptions
    PointAddress: ClassVar[type[BaseModel]] = NoOptions
    ProfileOptions: ClassVar[type[BaseModel]] = NoOptions
    # Set True when a device may be configured without a bus (each device is then its own
    # implicit bus, e.g. an IP camera); its bus options come from the device address.
    implicit_bus: ClassVar[bool] = False

    def accepted_protocols(self) -> frozenset[str]:
        return self.protocols or frozenset({self.name})

    @abc.abstractmethod
    def open_bus(self, spec: BusSpec) -> Bus:
        """Create (not yet open) the hub of one bus."""

    def implicit_bus_options(self, device_address: Any) -> Any:
        """Bus options for a device configured without a bus (when ``implicit_bus``)."""
        return self.BusOptions()

    # Optional: `edge-gateway scan <driver> ...`
    def add_scan_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Add the driver's scan options to its ``scan`` sub-command."""

    async def scan(self, args: argparse.Namespace) -> list[Mapping[str, Any]]:
        """Find devices; each result is a flat mapping printed as a table row."""
        raise NotImplementedError(f"driver {self.name} has no scan")


def return_free_memory() -> None:
    """Hand heap pages freed after a large one-off job (parsing documents, building tables)
    back to the operating system. glibc keeps freed pages in its arenas otherwise; this is
    a no-op elsewhere. The core calls it once after start-up; drivers may call it after
    their own one-off loads."""
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


class IncompatibleDriver(Exception):
    """A plugin was built for an API version this core does not support."""


def check_api_version(driver_name: str, declared: tuple[int, int]) -> None:
    major, minor = declared
    if major != API_VERSION[0] or minor > API_VERSION[1]:
        raise IncompatibleDriver(
            f"driver {driver_name!r} needs plugin API {major}.{minor}, but this gateway "
            f"provides {API_VERSION[0]}.{API_VERSION[1]} (same major, minor up to "
            f"{API_VERSION[1]} accepted); upgrade the gateway or install a driver release "
            f"built for API {API_VERSION[0]}.x"
        )
