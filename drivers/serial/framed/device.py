"""Framed-protocol device handler: polled frames per the profile and unsolicited events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from drivers.serial.errors import CodecError
from drivers.serial.exchange import DeviceHandler, Exchanger, Matcher
from drivers.serial.framed import codec
from gateway.plugin import (
    DeviceSpec,
    DriverError,
    PointSpec,
    RawEvent,
    RawValue,
    Reading,
    WriteRejected,
)


class FramedDevice(DeviceHandler):
    protocol = "framed"

    def __init__(self, device: DeviceSpec, ex: Exchanger,
                 on_stray: Callable[[codec.FrameSpec, codec.Frame], None] | None = None) -> None:
        super().__init__(device, ex)
        opts = device.options
        if opts.frame is None:
            raise DriverError("config", f"device {device.id}: the profile has no [driver.frame] description")
        self.spec: codec.FrameSpec = opts.frame.spec()
        addr = device.address.addr
        if isinstance(addr, str):
            addr = int(addr)
        if self.spec.address_offset is not None and not 0 <= addr < 1 << (8 * self.spec.address_size):
            raise DriverError("config", f"device {device.id}: address {addr} does not fit the frame's address field")
        self.addr: int = addr
        self.frames = opts.frames
        self.events = opts.events
        self.on_stray = on_stray
        for p in device.points:
            a = p.address
            if a.frame is not None and a.frame not in self.frames:
                raise DriverError("config", f"{device.id}.{p.name}: frame {a.frame!r} is not in [driver.frames]")
            if a.event is not None and a.event not in self.events:
                raise DriverError("config", f"{device.id}.{p.name}: event {a.event!r} is not in [driver.events]")

    def _polled(self, points: Sequence[PointSpec]) -> list[str]:
        return list(dict.fromkeys(p.address.frame for p in points if p.address.frame is not None))

    def requests_per_poll(self) -> int:
        return max(1, len(self._polled(self.device.points)))

    def _address_ok(self, frame: codec.Frame) -> bool:
        return frame.address is None or frame.address == self.addr

    async def read(self, points: Sequence[PointSpec]) -> Reading:
        reading = Reading()
        for name in self._polled(points):
            fdef = self.frames[name]
            request = codec.encode(self.spec, address=self.addr, command=fdef.command,
                                   payload=bytes.fromhex(fdef.payload.replace(" ", "")))

            def accept(f: codec.Frame, reply: int = fdef.reply) -> bool:
                return self._address_ok(f) and (f.command is None or f.command == reply)

            def stray(f: codec.Frame) -> None:
                if self.on_stray is not None:
                    self.on_stray(self.spec, f)

            frame = await self.ex.request(
                request, lambda: Matcher(codec.FrameScanner(self.spec), accept, bus=self.ex.bus,
                                         protocol=self.protocol, on_stray=stray))
            reading.requests += 1
            for p in points:
                a = p.address
                if a.frame != name:
                    continue
                try:
                    reading.values[p.name] = codec.extract(frame.raw, a.offset, a.type, length=a.length, bit=a.bit)
                except CodecError as exc:
                    reading.errors[p.name] = exc.reason
        return reading

    def events_of(self, frame: codec.Frame) -> list[RawEvent] | None:
        """The events an unsolicited frame of this device carries (``None``: unknown command)."""
        matched = [(n, e) for n, e in self.events.items() if e.command == frame.command]
        if not matched:
            return None
        out: list[RawEvent] = []
        for name, edef in matched:
            attrs: dict[str, Any] = {}
            for key, f in edef.attrs.items():
                try:
                    attrs[key] = codec.extract(frame.raw, f.offset, f.type, length=f.length, bit=f.bit)
                except CodecError as exc:
                    attrs[key] = None
                    attrs.setdefault("decode_errors", []).append(f"{key}: {exc.reason}")
            for p in self.device.points:
                a = p.address
                if a.event != name:
                    continue
                value: RawValue
                if a.offset is not None and a.type is not None:
                    try:
                        value = codec.extract(frame.raw, a.offset, a.type, length=a.length, bit=a.bit)
                    except CodecError:
                        continue
                else:
                    value = True if p.value_type == "bool" else name
                out.append(RawEvent(self.device.id, p.name, value, dict(attrs) or None))
        return out

    def ack_for(self, frame: codec.Frame) -> bytes | None:
        for edef in self.events.values():
            if edef.command == frame.command and edef.ack is not None:
                return codec.encode(self.spec, address=self.addr, command=edef.ack)
        return None

    async def write(self, point: PointSpec, value: RawValue) -> RawValue:
        raise WriteRejected("not_supported", "framed devices have no writable points")
