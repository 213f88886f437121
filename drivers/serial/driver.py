"""``serial`` driver: one hub per RS-485 line hosting DL/T 645, CJ/T 188 and framed devices.

The profile's ``[profile].driver`` names the protocol (``dlt645``, ``cjt188``, ``framed``);
several protocols may share one bus. The hub owns the port (or TCP serial server), takes
turns on the half-duplex line, and routes device-initiated framed frames to ``events()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.serial import metrics
from drivers.serial.cjt188 import codec as cjt
from drivers.serial.cjt188.device import Cjt188Device
from drivers.serial.config import BusOptions, DeviceAddress, PointAddress, ProfileOptions
from drivers.serial.dlt645 import codec as dlt
from drivers.serial.dlt645.device import Dlt645Device
from drivers.serial.exchange import DeviceHandler, Exchanger, Matcher
from drivers.serial.framed import codec as framed
from drivers.serial.framed.device import FramedDevice
from drivers.serial.link import Link, LinkError, LinkSettings
from gateway.plugin import (
    Bus,
    BusSpec,
    DeviceSpec,
    DeviceUnavailable,
    Driver,
    DriverError,
    PointSpec,
    RawEvent,
    RawValue,
    Reading,
)

log = logging.getLogger(__name__)

PROTOCOLS = frozenset({"dlt645", "cjt188", "framed"})
EVENT_QUEUE = 1000


def link_settings(o: BusOptions) -> LinkSettings:
    return LinkSettings(
        port=o.port, baud=o.baud, bytesize=o.bytesize, parity=o.parity, stopbits=o.stopbits,
        rtscts=o.rtscts, xonxoff=o.xonxoff, echo=o.echo, guard=o.guard,
        first_byte_timeout=o.first_byte_timeout, inter_byte_timeout=o.inter_byte_timeout,
        max_reply_time=o.max_reply_time, connect_timeout=o.connect_timeout,
    )


def device_protocol(device: DeviceSpec) -> str:
    """The device's protocol: the profile's ``driver`` value, which the core passes as
    ``DeviceSpec.protocol``. Every point address must belong to it (one profile is one
    protocol). Only when a caller leaves ``protocol`` empty is it inferred from the point
    addresses (``di`` / ``field`` / ``frame``, ``event``)."""
    kinds: dict[str, list[str]] = {}
    for p in device.points:
        if p.address is not None:
            kinds.setdefault(p.address.protocol, []).append(p.name)
    declared = device.protocol
    if declared:
        if declared not in PROTOCOLS:
            raise DriverError("config", f"device {device.id}: profile {device.profile} names protocol "
                              f"{declared!r}; the serial driver speaks {', '.join(sorted(PROTOCOLS))}")
        foreign = {k: v for k, v in kinds.items() if k != declared}
        if foreign:
            detail = "; ".join(f"{', '.join(v)} addressed for {k}" for k, v in sorted(foreign.items()))
            raise DriverError("config", f"device {device.id}: profile {device.profile} is a {declared} "
                              f"profile but has points of another protocol ({detail})")
        return declared
    if len(kinds) != 1:
        raise DriverError(
            "config",
            f"device {device.id}: profile {device.profile} mixes point addresses of "
            f"{sorted(kinds) or 'no'} protocol(s); one profile is one protocol",
        )
    return next(iter(kinds))


class SerialBus(Bus):
    def __init__(self, spec: BusSpec) -> None:
        super().__init__(spec)
        self.options: BusOptions = spec.options
        self.link = Link(link_settings(self.options), spec.name, on_idle_data=self._idle_data)
        self.ex = Exchanger(self.link, spec.name, retries=self.options.retries,
                            silent_retries=self.options.silent_retries, preamble=self.options.preamble)
        self.handlers: dict[str, DeviceHandler] = {}
        self._framed: dict[tuple[framed.FrameSpec, int], FramedDevice] = {}
        self._idle_scanners: dict[framed.FrameSpec, framed.FrameScanner] = {}
        self._events: asyncio.Queue[RawEvent] = asyncio.Queue(EVENT_QUEUE)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sync_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def attach(self, device: DeviceSpec) -> None:
        proto = device_protocol(device)
        handler: DeviceHandler
        if proto == "dlt645":
            handler = Dlt645Device(device, self.ex)
        elif proto == "cjt188":
            handler = Cjt188Device(device, self.ex)
        else:
            fd = FramedDevice(device, self.ex)
            key = (fd.spec, fd.addr)
            if key in self._framed:
                raise DriverError("config", f"device {device.id}: address {fd.addr} is already used by "
                                  f"{self._framed[key].device.id} on bus {self.spec.name}")
            self._framed[key] = fd
            if fd.events:
                self._idle_scanners.setdefault(fd.spec, framed.FrameScanner(fd.spec))
            handler = fd
        self.handlers[device.id] = handler

    async def open(self) -> None:
        try:
            await self.link.open()
        except LinkError as exc:
            raise DriverError(exc.problem.reason if exc.problem else "port", exc.detail) from None
        if self.options.time_sync and any(isinstance(h, Dlt645Device) for h in self.handlers.values()):
            self._sync_task = asyncio.create_task(self._time_sync_loop(), name=f"serial-timesync-{self.spec.name}")

    async def close(self) -> None:
        tasks = list(self._tasks)
        if self._sync_task is not None:
            tasks.append(self._sync_task)
            self._sync_task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        await self.link.close()

    # ------------------------------------------------------------------ polling

    def _handler(self, device: DeviceSpec) -> DeviceHandler:
        h = self.handlers.get(device.id)
        if h is None:
            self.attach(device)
            h = self.handlers[device.id]
        return h

    def requests_per_poll(self, device: DeviceSpec) -> int:
        return self._handler(device).requests_per_poll()

    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        return await self._handler(device).read(points)

    async def write(self, device: DeviceSpec, point: PointSpec, value: RawValue) -> RawValue:
        return await self._handler(device).write(point, value)

    # ------------------------------------------------------------------ time sync

    def time_sync_frame(self, now: datetime | None = None) -> bytes:
        o = self.options
        if now is None:
            if o.time_sync_utc_offset is not None:
                now = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=o.time_sync_utc_offset)
            else:
                now = datetime.now()
        return dlt.build_broadcast_time(now, preamble=o.preamble)

    async def sync_time(self) -> None:
        """Send one broadcast time sync (no meter answers it)."""
        await self.ex.broadcast(self.time_sync_frame())
        metrics.TIME_SYNCS.labels(self.spec.name).inc()

    async def _time_sync_loop(self) -> None:
        interval = self.options.time_sync or 86400.0
        while True:
            try:
                await self.sync_time()
            except DeviceUnavailable as exc:
                log.warning("bus %s: broadcast time sync failed: %s", self.spec.name, exc)
            await asyncio.sleep(interval)

    # ------------------------------------------------------------------ unsolicited frames

    def _idle_data(self, data: bytes, busy: bool) -> None:
        if not self._idle_scanners:
            if not busy:
                metrics.DISCARDED_BYTES.labels(self.spec.name).inc(len(data))
            return
        for spec, scanner in self._idle_scanners.items():
            before = scanner.stats.discarded
            for frame in scanner.feed(data):
                self._unsolicited(spec, frame, quiet=busy)
            if not busy and len(self._idle_scanners) == 1 and scanner.stats.discarded > before:
                metrics.DISCARDED_BYTES.labels(self.spec.name).inc(scanner.stats.discarded - before)

    def _unsolicited(self, spec: framed.FrameSpec, frame: framed.Frame, quiet: bool = False) -> None:
        """``quiet``: seen during an exchange, where polled replies are not events."""
        bus = self.spec.name
        dev = self._framed.get((spec, frame.address if frame.address is not None else -1))
        if dev is None and frame.address is None:
            candidates = [d for (s, _), d in self._framed.items() if s == spec]
            dev = candidates[0] if len(candidates) == 1 else None
        if dev is None:
            if not quiet:
                metrics.UNSOLICITED.labels(bus, "unknown_device").inc()
            return
        events = dev.events_of(frame)
        if events is None:
            if not quiet:
                metrics.UNSOLICITED.labels(bus, "unknown_command").inc()
            return
        for ev in events:
            try:
                self._events.put_nowait(ev)
                metrics.UNSOLICITED.labels(bus, "event").inc()
            except asyncio.QueueFull:
                metrics.UNSOLICITED.labels(bus, "dropped").inc()
                log.warning("bus %s: event queue full, dropped %s.%s", bus, ev.device_id, ev.point)
        ack = dev.ack_for(frame)
        if ack is not None:
            task = asyncio.get_running_loop().create_task(self._send_ack(ack))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send_ack(self, frame: bytes) -> None:
        try:
            await self.link.send_only(frame)
        except LinkError as exc:
            log.warning("bus %s: cannot acknowledge an event frame: %s", self.spec.name, exc)
        except Exception:  # a bug here must not go unnoticed, nor stop the bus
            log.exception("bus %s: acknowledging an event frame failed", self.spec.name)

    async def _event_stream(self) -> AsyncIterator[RawEvent]:
        while True:
            yield await self._events.get()

    def events(self) -> AsyncIterator[RawEvent] | None:
        if self.handlers and not self._idle_scanners:
            return None
        return self._event_stream()


class SerialDriver(Driver):
    name = "serial"
    version = "1.0"
    description = "RS-485 meters: DL/T 645-2007/1997, CJ/T 188-2004 and declarative framed vendor protocols"
    protocols = PROTOCOLS

    BusOptions = BusOptions
    DeviceAddress = DeviceAddress
    PointAddress = PointAddress
    ProfileOptions = ProfileOptions

    def open_bus(self, spec: BusSpec) -> Bus:
        return SerialBus(spec)

    def add_scan_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--port", required=True, help="serial device or tcp://host:port")
        parser.add_argument("--protocol", choices=["dlt645", "cjt188"], default="dlt645")
        parser.add_argument("--bauds", default="2400,1200,4800,9600",
                            help="baud rates to probe, in order (comma separated)")
        parser.add_argument("--parity", choices=["N", "E", "O"], default="E")
        parser.add_argument("--timeout", type=float, default=2.0, help="first-byte timeout per probe (s)")

    async def scan(self, args: argparse.Namespace) -> list[Mapping[str, Any]]:
        """Point-to-point discovery: read the address with the AA wildcard at each baud rate.
        Only one meter may be on the wire (replies of several meters collide)."""
        out: list[Mapping[str, Any]] = []
        for baud in [int(b) for b in str(args.bauds).split(",") if b.strip()]:
            settings = LinkSettings(port=args.port, baud=baud, parity=args.parity,
                                    first_byte_timeout=args.timeout)
            link = Link(settings, "scan", hint="cli")
            try:
                await link.open()
                row = await probe_address(link, args.protocol)
            except LinkError as exc:
                if exc.reason == "port":
                    raise DriverError(exc.problem.reason if exc.problem else "port", exc.detail) from None
                row = None
            finally:
                await link.close()
            if row is not None:
                out.append({**row, "baud": baud, "parity": args.parity, "port": args.port})
                break
        return out


async def probe_address(link: Link, protocol: str) -> dict[str, Any] | None:
    """Read the address of the single meter on a point-to-point link (``None``: no answer)."""
    if protocol == "dlt645":
        m: Matcher[Any] = Matcher(dlt.FrameScanner(),
                                  lambda f: f.control == (dlt.C_READ_ADDRESS | dlt.DIR_REPLY),
                                  bus="scan", protocol="dlt645")
        try:
            frame = await link.transact(dlt.build_read_address(), m)
        except LinkError as exc:
            if exc.reason == "port":
                raise
            return None
        return {"protocol": "dlt645", "address": dlt.parse_address_reply(frame)}
    m2: Matcher[Any] = Matcher(cjt.FrameScanner(),
                               lambda f: f.control == (cjt.C_READ_ADDRESS | cjt.DIR_REPLY),
                               bus="scan", protocol="cjt188")
    try:
        frame = await link.transact(cjt.build_read_address(0), m2)
    except LinkError as exc:
        if exc.reason == "port":
            raise
        return None
    return {"protocol": "cjt188", "address": frame.address_text, "meter_type": f"{frame.meter_type:02X}"}
