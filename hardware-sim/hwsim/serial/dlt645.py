"""Simulated DL/T 645-2007 (and -1997) electricity meters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from hwsim.serial.frames import Dlt645Request, bcd, digits_le, dlt645_frame, num_to_bcd_le
from hwsim.serial.meter import SimDevice

# DI -> (value key(s), bytes per item, decimals, signed)
ITEMS_2007: dict[int, tuple[tuple[str, ...], int, int, bool]] = {
    0x00000000: (("energy_total",), 4, 2, True),
    0x00010000: (("energy_import",), 4, 2, False),
    0x00020000: (("energy_export",), 4, 2, False),
    0x02010100: (("voltage_a",), 2, 1, False),
    0x02010200: (("voltage_b",), 2, 1, False),
    0x02010300: (("voltage_c",), 2, 1, False),
    0x0201FF00: (("voltage_a", "voltage_b", "voltage_c"), 2, 1, False),
    0x02020100: (("current_a",), 3, 3, True),
    0x02020200: (("current_b",), 3, 3, True),
    0x02020300: (("current_c",), 3, 3, True),
    0x0202FF00: (("current_a", "current_b", "current_c"), 3, 3, True),
    0x02030000: (("power",), 3, 4, True),
    0x02060000: (("power_factor",), 2, 3, True),
    0x02800002: (("frequency",), 2, 2, False),
}
ITEMS_1997: dict[int, tuple[tuple[str, ...], int, int, bool]] = {
    0x9010: (("energy_import",), 4, 2, False),
    0x9020: (("energy_export",), 4, 2, False),
    0xB611: (("voltage_a",), 2, 0, False),
    0xB612: (("voltage_b",), 2, 0, False),
    0xB613: (("voltage_c",), 2, 0, False),
    0xB621: (("current_a",), 2, 2, False),
    0xB630: (("power",), 3, 4, True),
}
MODELS = {
    # model -> DIs it knows (beyond date/time/address/status words)
    "single_phase": {0x00000000, 0x00010000, 0x00020000, 0x02010100, 0x02020100, 0x02030000,
                     0x02060000, 0x02800002},
    "three_phase": set(ITEMS_2007) - {0x02060000},
}


class Dlt645Meter(SimDevice):
    protocol = "dlt645"

    def __init__(self, address: str, model: str = "single_phase", edition: str = "2007",
                 quirks: dict[str, Any] | None = None, values: dict[str, Any] | None = None,
                 seed: int = 0) -> None:
        super().__init__(address, quirks, seed)
        if model not in MODELS:
            raise ValueError(f"unknown DL/T 645 model {model!r} (models: {sorted(MODELS)})")
        self.model = model
        self.edition = edition
        self.wire = digits_le(address, 6)
        three = model == "three_phase"
        self.values: dict[str, Any] = {
            "energy_import": 1000.0 + self.rng.randint(0, 5000) / 100,
            "energy_export": 12.5,
            "voltage_a": 220.0, "voltage_b": 221.0 if three else 0.0, "voltage_c": 219.5 if three else 0.0,
            "current_a": 0.0, "current_b": 0.0, "current_c": 0.0,
            "power": 1.2 if not three else 3.6,  # kW
            "power_factor": 0.95,
            "frequency": 50.0,
            "relay_tripped": False,
            "battery_low": False,
            "clock_offset": 0.0,
            "clock": None,  # ISO 8601 local time: the meter clock stands still there
            "evolve": True,
        }
        self.values.update(values or {})
        self.relay_commands = 0

    def evolve(self) -> None:
        dt = self.tick()
        v = self.values
        if not v["evolve"]:
            return
        power = 0.0 if v["relay_tripped"] else v["power"]
        v["energy_import"] = round(v["energy_import"] + power * dt / 3600.0, 6)
        for ph in ("voltage_a", "voltage_b", "voltage_c"):
            if v[ph]:
                v[ph] = round(min(235.0, max(205.0, v[ph] + self.rng.uniform(-0.5, 0.5))), 1)
        phases = 3 if self.model == "three_phase" else 1
        for ph, cur in zip(("voltage_a", "voltage_b", "voltage_c"), ("current_a", "current_b", "current_c"), strict=True):
            if v[ph] and phases:
                v[cur] = round(power * 1000 / phases / v[ph], 3)

    @property
    def energy_total(self) -> float:
        return float(self.values["energy_import"]) - float(self.values["energy_export"])

    def _value(self, key: str) -> float:
        if key == "energy_total":
            return self.energy_total
        if key.startswith("current") and self.values["relay_tripped"]:
            return 0.0
        if key == "power" and self.values["relay_tripped"]:
            return 0.0
        return float(self.values[key])

    def addressed(self, address: bytes) -> bool:
        if address == b"\xaa" * 6:
            return True
        return all(a == 0xAA or a == w for a, w in zip(address, self.wire, strict=True))

    def handle(self, req: Dlt645Request) -> bytes | None:
        if req.control & 0x80:
            return None  # a reply from another meter or an echo
        if req.address == b"\x99" * 6:
            if req.control == 0x08 and len(req.data) == 6:
                self._sync_clock(req.data)
            return None  # broadcasts are never answered
        if not self.addressed(req.address):
            return None
        self.requests += 1
        self.evolve()
        c = req.control
        if self.edition == "1997":
            if c == 0x01 and len(req.data) == 2:
                return self._read(int.from_bytes(req.data, "little"), 2, 0x81)
            return None
        if c == 0x11 and len(req.data) >= 4:
            return self._read(int.from_bytes(req.data[:4], "little"), 4, 0x91)
        if c == 0x13 and req.address == b"\xaa" * 6:
            return dlt645_frame(self.wire, 0x93, self.wire)
        if c == 0x1C and len(req.data) >= 16:
            return self._relay(req.data)
        return dlt645_frame(self.wire, 0xC0 | c, b"\x01")  # other error

    def _error(self, c: int, err: int) -> bytes:
        return dlt645_frame(self.wire, 0xC0 | c, bytes([err]))

    def _read(self, di: int, width: int, reply: int) -> bytes:
        di_bytes = di.to_bytes(width, "little")
        hexdi = f"{di:0{2 * width}X}"
        if hexdi in self.quirks.unsupported:
            return self._error(reply & 0x1F, 0x02)
        payload = self._payload(di)
        if payload is None:
            return self._error(reply & 0x1F, 0x02)
        return dlt645_frame(self.wire, reply, di_bytes + payload)

    def _payload(self, di: int) -> bytes | None:
        if self.edition == "1997":
            item = ITEMS_1997.get(di)
            if item is None:
                return None
            keys, size, dec, signed = item
            return b"".join(num_to_bcd_le(self._value(k), size, dec, signed) for k in keys)
        if di in MODELS[self.model]:
            keys, size, dec, signed = ITEMS_2007[di]
            return b"".join(num_to_bcd_le(self._value(k), size, dec, signed) for k in keys)
        now = self.clock()
        if di == 0x04000101:
            return bytes([bcd((now.weekday() + 1) % 7), bcd(now.day), bcd(now.month), bcd(now.year % 100)])
        if di == 0x04000102:
            return bytes([bcd(now.second), bcd(now.minute), bcd(now.hour)])
        if di in (0x04000401, 0x04000402):
            return self.wire
        if di == 0x04000501:
            word = 0x04 if self.values["battery_low"] else 0
            return word.to_bytes(2, "little")
        if di == 0x04000503:
            word = 0x10 if self.values["relay_tripped"] else 0
            return word.to_bytes(2, "little")
        return None

    def clock(self) -> datetime:
        from datetime import timedelta

        fixed = self.values["clock"]
        base = datetime.fromisoformat(str(fixed)) if fixed else datetime.now()
        return base + timedelta(seconds=float(self.values["clock_offset"]))

    def _sync_clock(self, data: bytes) -> None:
        from hwsim.serial.frames import unbcd

        try:
            ss, mi, hh, dd, mo, yy = (unbcd(b) for b in data)
            when = datetime(2000 + yy, mo, dd, hh, mi, ss)
        except ValueError:
            return
        if self.values["clock"]:
            self.values["clock"], self.values["clock_offset"] = when.isoformat(), 0.0
        else:
            self.values["clock_offset"] = (when - datetime.now()).total_seconds()
        self.values["time_syncs"] = self.values.get("time_syncs", 0) + 1

    def _relay(self, data: bytes) -> bytes:
        password = data[0:4]
        op = data[8]
        if password[0] not in (0x02, 0x04) or password[1:] != b"\x00\x00\x00":
            return self._error(0x1C, 0x04)
        if op == 0x1A:
            self.values["relay_tripped"] = True
        elif op in (0x1B, 0x1C):
            self.values["relay_tripped"] = False
        else:
            return self._error(0x1C, 0x01)
        self.relay_commands += 1
        return dlt645_frame(self.wire, 0x9C, b"")

    def state(self) -> dict[str, Any]:
        return {"protocol": "dlt645", "address": self.address, "model": self.model,
                "edition": self.edition, "values": dict(self.values), "quirks": self.quirks.as_dict(),
                "requests": self.requests, "relay_commands": self.relay_commands}
