"""DL/T 645 device handler: plans DI reads for a device's points and decodes the replies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime, timedelta

from drivers.serial import metrics
from drivers.serial.dlt645 import codec
from drivers.serial.errors import CodecError, FrameError
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

DI_DATE = 0x04000101
DI_TIME = 0x04000102
MAX_FOLLOWUPS = 16


class Dlt645Device(DeviceHandler):
    protocol = "dlt645"

    def __init__(self, device: DeviceSpec, ex: Exchanger) -> None:
        super().__init__(device, ex)
        opts = device.options
        self.edition: str = getattr(opts, "edition", "2007")
        self.catalogue = codec.CATALOGUE_1997 if self.edition == "1997" else codec.CATALOGUE_2007
        addr = device.address.addr
        if not isinstance(addr, str) or len(addr) > 12:
            raise DriverError("config", f"device {device.id}: a DL/T 645 address is up to 12 digits as a string")
        self.address = codec.address_to_wire(addr, getattr(opts, "address_pad", "0"))
        self.wildcard = b"\xaa" in self.address
        self.specs: dict[str, tuple[int, codec.DiSpec]] = {}
        for p in device.points:
            a = p.address
            di = codec.parse_di(a.di)
            width = 2 if self.edition == "1997" else 4
            if di >= 1 << (8 * width):
                raise DriverError("config", f"{device.id}.{p.name}: DI {a.di} has more than {width} bytes for edition {self.edition}")
            spec = self.catalogue.get(di)
            if a.format is not None:
                size, decimals = codec.FORMATS[a.format]
                spec = codec.DiSpec(a.format, size, decimals, bool(a.signed), items=a.index + 1)
            elif spec is None:
                raise DriverError("config", f"{device.id}.{p.name}: DI {a.di} is not in the catalogue; give its format")
            if a.signed is not None and spec.signed != a.signed:
                spec = codec.DiSpec(spec.name, spec.size, spec.decimals, a.signed, spec.kind, spec.unit, spec.items)
            if a.bit is not None and spec.kind != "bits":
                spec = codec.DiSpec(spec.name, spec.size, 0, False, "bits", "", spec.items)
            if a.index >= spec.items:
                raise DriverError("config", f"{device.id}.{p.name}: index {a.index} beyond the {spec.items} items of DI {a.di}")
            self.specs[p.name] = (di, spec)

    def _dis(self, points: Sequence[PointSpec]) -> list[int]:
        dis: dict[int, None] = {}
        for p in points:
            di, spec = self.specs[p.name]
            if di == DI_TIME and self.edition == "2007" and spec.kind == "time":
                dis[DI_DATE] = None
            dis[di] = None
        return list(dis)

    def requests_per_poll(self) -> int:
        return len(self._dis(self.device.points))

    def _accept(self, di: int | None, functions: tuple[int, ...]) -> Matcher[codec.Frame]:
        width = 2 if self.edition == "1997" else 4

        def accept(f: codec.Frame) -> bool:
            if not f.is_reply or f.function not in functions:
                return False
            if not self._address_matches(f.address):
                return False
            if f.is_error or di is None:
                return True
            return len(f.data) >= width and int.from_bytes(f.data[:width], "little") == di

        return Matcher(codec.FrameScanner(), accept, bus=self.ex.bus, protocol=self.protocol)

    def _address_matches(self, got: bytes) -> bool:
        if not self.wildcard:
            return got == self.address
        return all(w == 0xAA or w == g for w, g in zip(self.address, got, strict=True))

    async def _read_di(self, di: int) -> codec.ReadReply | codec.ErrorReply:
        func = codec.read_control(self.edition)
        request = codec.build_read(self.address, di, edition=self.edition, preamble=self.ex.preamble)
        frame = await self.ex.request(request, lambda: self._accept(di, (func,)))
        try:
            reply = codec.parse_read_reply(frame, di, edition=self.edition)
        except FrameError as exc:  # pragma: no cover - the matcher already checked
            raise DeviceUnavailable("bad_frame", str(exc)) from None
        if isinstance(reply, codec.ErrorReply):
            metrics.ERROR_REPLIES.labels(self.ex.bus, self.protocol, reply.reason).inc()
            return reply
        payload = reply.payload
        seq = 1
        while reply.followup and seq <= MAX_FOLLOWUPS:
            req = codec.build_read_followup(self.address, di, seq, edition=self.edition, preamble=self.ex.preamble)
            frame = await self.ex.request(req, lambda: self._accept(di, (func + 1,)))
            nxt = codec.parse_read_reply(frame, di, edition=self.edition)
            if isinstance(nxt, codec.ErrorReply):
                metrics.ERROR_REPLIES.labels(self.ex.bus, self.protocol, nxt.reason).inc()
                return nxt
            # the follow-up payload ends with the SEQ byte in 2007
            payload += nxt.payload[:-1] if self.edition == "2007" and nxt.payload else nxt.payload
            reply = nxt
            seq += 1
        return codec.ReadReply(di, payload, False)

    async def read(self, points: Sequence[PointSpec]) -> Reading:
        reading = Reading()
        replies: dict[int, codec.ReadReply | codec.ErrorReply | str] = {}
        answered = False
        for di in self._dis(points):
            try:
                replies[di] = await self._read_di(di)
                answered = True
            except DeviceUnavailable as exc:
                if not answered:
                    raise  # a silent meter costs one timeout, not one per DI
                replies[di] = exc.reason
            reading.requests += 1
        for p in points:
            di, spec = self.specs[p.name]
            got = replies.get(di)
            if isinstance(got, str):
                reading.errors[p.name] = got
                continue
            if isinstance(got, codec.ErrorReply):
                reading.errors[p.name] = got.reason
                continue
            assert got is not None
            try:
                if spec.kind == "time" and di == DI_TIME and self.edition == "2007":
                    date = replies.get(DI_DATE)
                    if not isinstance(date, codec.ReadReply):
                        reading.errors[p.name] = "no_data"
                        continue
                    when = codec.meter_datetime(date.payload[:4], got.payload[:3])
                    reading.values[p.name] = when.isoformat()
                    continue
                value = codec.decode_value(got.payload, spec, p.address.index)
                if p.address.bit is not None:
                    reading.values[p.name] = bool(int(value) >> p.address.bit & 1)
                else:
                    reading.values[p.name] = value
            except CodecError as exc:
                reading.errors[p.name] = exc.reason
        return reading

    async def write(self, point: PointSpec, value: RawValue) -> RawValue:
        addr = point.address
        if addr.control != "relay":
            raise WriteRejected("read_only", f"{point.name} has no write control in the profile")
        if not getattr(self.device.options, "relay_control", False):
            raise WriteRejected("disabled", "relay control is not enabled in the profile (relay_control = true)")
        if self.wildcard:
            raise WriteRejected("address", "relay control needs the meter's full address")
        if not isinstance(value, bool | int):
            raise WriteRejected("value", f"relay point takes a boolean, got {value!r}")
        tripped = bool(value)  # raw value = the status bit: 1 = tripped
        opts = self.device.options
        request = codec.build_relay(
            self.address,
            codec.RELAY_TRIP if tripped else codec.RELAY_CLOSE,
            password=bytes.fromhex(opts.password),
            operator=bytes.fromhex(opts.operator),
            valid_until=datetime.now() + timedelta(seconds=opts.relay_valid),
            preamble=self.ex.preamble,
        )
        frame = await self.ex.request(request, lambda: self._accept(None, (codec.C_RELAY,)))
        if frame.is_error:
            err = codec.ErrorReply(frame.data[0] if frame.data else 1)
            metrics.ERROR_REPLIES.labels(self.ex.bus, self.protocol, err.reason).inc()
            raise WriteRejected(err.reason, f"meter refused the relay command (ERR {err.err:02X})")
        # read back
        deadline = time.monotonic() + 3.0
        while True:
            reading = await self.read([point])
            if point.name in reading.values:
                got = reading.values[point.name]
                if got == tripped or time.monotonic() > deadline:
                    return got
            elif time.monotonic() > deadline:
                return value
            await asyncio.sleep(0.2)
