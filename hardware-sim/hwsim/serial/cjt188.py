"""Simulated CJ/T 188-2004 water, heat and gas meters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hwsim.serial.frames import Cjt188Request, bcd, cjt188_frame, digits_le, num_to_bcd_le
from hwsim.serial.meter import SimDevice


class Cjt188Meter(SimDevice):
    protocol = "cjt188"

    def __init__(self, address: str, meter_type: int = 0x10, di_order: str = "swapped",
                 quirks: dict[str, Any] | None = None, values: dict[str, Any] | None = None,
                 seed: int = 0, clock: bool = True) -> None:
        super().__init__(address, quirks, seed)
        self.meter_type = meter_type
        self.di_order = di_order
        self.wire = digits_le(address, 7)
        self.has_clock = clock
        heat = 0x20 <= meter_type < 0x30
        self.values: dict[str, Any] = {
            "volume": 100.0 + self.rng.randint(0, 9000) / 100,  # m3
            "volume_settlement": 90.0,
            "flow": 0.5,  # m3/h
            "heat": 2000.0,  # kWh
            "heat_settlement": 1800.0,
            "power": 4.5,  # kW
            "supply_temperature": 55.0,
            "return_temperature": 40.0,
            "working_hours": 1200,
            "valve_open": True,
            "valve_abnormal": False,
            "battery_low": False,
            "evolve": True,
        }
        self.heat = heat
        self.values.update(values or {})
        self.valve_commands = 0

    def evolve(self) -> None:
        dt = self.tick()
        v = self.values
        if not v["evolve"] or not v["valve_open"]:
            return
        v["volume"] = round(v["volume"] + v["flow"] * dt / 3600.0, 6)
        if self.heat:
            v["heat"] = round(v["heat"] + v["power"] * dt / 3600.0, 6)

    def di(self, printed: int) -> bytes:
        b = printed.to_bytes(2, "big")
        return b if self.di_order == "printed" else b[::-1]

    def _status(self) -> bytes:
        v = self.values
        valve = 0x03 if v["valve_abnormal"] else (0x00 if v["valve_open"] else 0x01)
        return bytes([valve | (0x04 if v["battery_low"] else 0), 0x00])

    def handle(self, req: Cjt188Request) -> bytes | None:
        if req.control & 0x80:
            return None
        wildcard = req.address == b"\xaa" * 7
        if not wildcard and req.address != self.wire:
            return None
        if not wildcard and req.meter_type not in (self.meter_type, 0xAA):
            return None
        self.requests += 1
        self.evolve()
        if len(req.data) < 3:
            return None
        di, ser = bytes(req.data[:2]), req.data[2]
        if req.control == 0x03 and wildcard:
            return cjt188_frame(self.meter_type, self.wire, 0x83, di + bytes([ser]))
        if wildcard:
            return None
        if req.control == 0x01 and di == self.di(0x901F):
            if "901F" in self.quirks.unsupported:
                return cjt188_frame(self.meter_type, self.wire, 0xC1, bytes([ser]) + self._status())
            return cjt188_frame(self.meter_type, self.wire, 0x81, di + bytes([ser]) + self._current())
        if req.control == 0x04 and di == self.di(0xA017) and len(req.data) >= 4:
            cmd = req.data[3]
            if self.values["valve_abnormal"]:
                return cjt188_frame(self.meter_type, self.wire, 0xC4, bytes([ser]) + self._status())
            if cmd == 0x55:
                self.values["valve_open"] = True
            elif cmd == 0x99:
                self.values["valve_open"] = False
            else:
                return cjt188_frame(self.meter_type, self.wire, 0xC4, bytes([ser]) + self._status())
            self.valve_commands += 1
            return cjt188_frame(self.meter_type, self.wire, 0x84, di + bytes([ser]) + self._status())
        return None  # identifier in the other byte order or unknown: real meters stay silent

    def _time(self) -> bytes:
        if not self.has_clock:
            return bytes(7)
        n = datetime.now()
        return bytes(bcd(x) for x in (n.second, n.minute, n.hour, n.day, n.month, n.year % 100, n.year // 100))

    def _current(self) -> bytes:
        v = self.values
        if not self.heat:
            return (num_to_bcd_le(v["volume"], 4, 2) + b"\x2c" + num_to_bcd_le(v["volume_settlement"], 4, 2)
                    + b"\x2c" + self._time() + self._status())
        return (
            num_to_bcd_le(v["heat_settlement"], 4, 2) + b"\x05"
            + num_to_bcd_le(v["heat"], 4, 2) + b"\x05"
            + num_to_bcd_le(v["power"], 4, 2) + b"\x17"
            + num_to_bcd_le(v["flow"], 4, 4) + b"\x35"
            + num_to_bcd_le(v["volume"], 4, 2) + b"\x2c"
            + num_to_bcd_le(v["supply_temperature"], 3, 2)
            + num_to_bcd_le(v["return_temperature"], 3, 2)
            + num_to_bcd_le(v["working_hours"], 3, 0)
            + self._time() + self._status()
        )

    def state(self) -> dict[str, Any]:
        return {"protocol": "cjt188", "address": self.address, "meter_type": f"{self.meter_type:02X}",
                "di_order": self.di_order, "values": dict(self.values), "quirks": self.quirks.as_dict(),
                "requests": self.requests, "valve_commands": self.valve_commands}
