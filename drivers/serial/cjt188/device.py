"""CJ/T 188 device handler: reads 901F, decodes the water/gas or heat layout, drives the valve."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from drivers.serial import metrics
from drivers.serial.cjt188 import codec
from drivers.serial.errors import CodecError, FrameError, ValueFormatError
from drivers.serial.exchange import DeviceHandler, Exchanger, Matcher
from gateway.plugin import (
    DeviceSpec,
    DeviceUnavailable,
    DriverError,
    PointSpec,
    RawValue,
    Reading,
    WriteRejected,
)

FIRST_BYTE_TIMEOUT = 2.0  # battery meters wake slowly (reference: about 2 s)


class Cjt188Device(DeviceHandler):
    protocol = "cjt188"

    def __init__(self, device: DeviceSpec, ex: Exchanger) -> None:
        super().__init__(device, ex)
        opts = device.options
        addr = device.address.addr
        if not isinstance(addr, str):
            raise DriverError("config", f"device {device.id}: a CJ/T 188 address is up to 14 digits as a string")
        self.address = codec.address_to_wire(addr)
        meter_type = device.address.meter_type if device.address.meter_type is not None else opts.meter_type
        if meter_type is None:
            raise DriverError("config", f"device {device.id}: the profile or the device must set meter_type")
        self.meter_type: int = meter_type
        self.layout: str = opts.layout or codec.layout_of(meter_type)
        self.di_order: str = opts.di_order
        self.time_order: str = opts.time_order
        fields = codec.WATER_FIELDS if self.layout == "water" else codec.HEAT_FIELDS
        for p in device.points:
            if p.address.field not in fields:
                raise DriverError("config", f"{device.id}.{p.name}: field {p.address.field!r} is not in the {self.layout} layout")
        self.ser = 0
        self.first_byte_timeout = max(FIRST_BYTE_TIMEOUT, ex.link.settings.first_byte_timeout)

    def _next_ser(self) -> int:
        self.ser = (self.ser + 1) & 0xFF
        return self.ser

    def _matcher(self, function: int, di: int, ser: int) -> Matcher[codec.Frame]:
        def accept(f: codec.Frame) -> bool:
            if not f.is_reply or f.function != function or f.address != self.address:
                return False
            if f.is_error:
                return len(f.data) >= 1 and f.data[0] == ser
            return f.di_matches(di) and len(f.data) >= 3 and f.data[2] == ser

        return Matcher(codec.FrameScanner(), accept, bus=self.ex.bus, protocol=self.protocol)

    async def _read_current(self) -> codec.Reply | codec.ErrorReply:
        ser = self._next_ser()
        req = codec.build_read(self.meter_type, self.address, ser, di=codec.DI_CURRENT,
                               di_order=self.di_order, preamble=self.ex.preamble)
        frame = await self.ex.request(req, lambda: self._matcher(codec.C_READ, codec.DI_CURRENT, ser),
                                      first_byte_timeout=self.first_byte_timeout)
        try:
            return codec.parse_reply(frame, codec.C_READ, codec.DI_CURRENT)
        except FrameError as exc:  # pragma: no cover - the matcher already checked
            raise DeviceUnavailable("bad_frame", str(exc)) from None

    async def read(self, points: Sequence[PointSpec]) -> Reading:
        reading = Reading(requests=1)
        reply = await self._read_current()
        if isinstance(reply, codec.ErrorReply):
            metrics.ERROR_REPLIES.labels(self.ex.bus, self.protocol, "abnormal").inc()
            status = reply.status
            fields: dict[str, object] = {
                "valve_state": status.valve,
                "valve_open": status.valve_open if status.valve_open is not None
                else ValueFormatError("valve_abnormal", ""),
                "battery_low": status.battery_low,
                "status_raw": status.raw,
            }
        else:
            try:
                fields = codec.decode_current(reply.payload, self.layout, time_order=self.time_order)
            except CodecError as exc:
                for p in points:
                    reading.errors[p.name] = exc.reason
                return reading
        for p in points:
            got = fields.get(p.address.field)
            if got is None:
                reading.errors[p.name] = "abnormal_reply"
            elif isinstance(got, CodecError):
                reading.errors[p.name] = got.reason
            else:
                assert isinstance(got, float | int | bool | str)
                reading.values[p.name] = got
        return reading

    async def write(self, point: PointSpec, value: RawValue) -> RawValue:
        if point.address.field != "valve_open":
            raise WriteRejected("read_only", f"{point.name} is not the valve")
        if not isinstance(value, bool | int):
            raise WriteRejected("value", f"valve takes a boolean, got {value!r}")
        want_open = bool(value)
        ser = self._next_ser()
        req = codec.build_valve(self.meter_type, self.address, want_open, ser,
                                di_order=self.di_order, preamble=self.ex.preamble)
        frame = await self.ex.request(req, lambda: self._matcher(codec.C_WRITE, codec.DI_VALVE, ser),
                                      first_byte_timeout=self.first_byte_timeout)
        if frame.is_error:
            metrics.ERROR_REPLIES.labels(self.ex.bus, self.protocol, "abnormal").inc()
            status = codec.decode_status(frame.data[1:3]) if len(frame.data) >= 3 else None
            raise WriteRejected("valve_refused", f"meter refused the valve command (valve {status.valve if status else '?'})")
        deadline = time.monotonic() + 5.0
        while True:
            reading = await self.read([point])
            got = reading.values.get(point.name)
            if got == want_open or time.monotonic() > deadline:
                return got if got is not None else value
            await asyncio.sleep(0.3)
