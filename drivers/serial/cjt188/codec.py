"""CJ/T 188-2004 codec (pure; no I/O).

Frame (after 0-4 ``FE`` wake-up bytes)::

    68 T A0..A6 C L DATA(L) CS 16

* T: meter type (10-13 water, 20/21 heat, 30 gas, AA wildcard);
* address: 14 BCD digits, low byte first (A5 A6 = manufacturer code);
* DATA: DI (2 bytes, wire order differs between vendors), SER (1 byte), payload; no +0x33;
* CS: sum mod 256 from ``68`` through the last DATA byte.

``FrameScanner`` resynchronises by scanning; it never raises on any byte input. Replies are
matched in either DI order (a sum checksum cannot tell the orders apart).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from drivers.serial.bcd import bcd_byte, bcd_digits, bcd_to_float, bcd_to_int, digits_to_bcd
from drivers.serial.errors import FrameError, ValueFormatError

START = 0x68
END = 0x16
WAKE = 0xFE
MIN_FRAME = 13
MAX_DATA = 0x64

T_WILDCARD = 0xAA
WILDCARD = b"\xaa" * 7

C_READ = 0x01
C_READ_ADDRESS = 0x03
C_WRITE = 0x04
DIR_REPLY = 0x80
ABNORMAL = 0x40

DI_CURRENT = 0x901F
DI_ADDRESS = 0x810A
DI_VALVE = 0xA017

VALVE_OPEN = 0x55
VALVE_CLOSE = 0x99

DI_ORDERS = ("printed", "swapped")  # printed: "90 1F" on the wire; swapped: "1F 90"
TIME_ORDERS = ("seconds_first", "year_first")

WATER_TYPES = range(0x10, 0x20)
HEAT_TYPES = range(0x20, 0x30)
GAS_TYPES = range(0x30, 0x40)


def checksum(data: bytes | bytearray | memoryview) -> int:
    return sum(data) & 0xFF


def address_to_wire(address: str) -> bytes:
    return digits_to_bcd(address, 7)


def address_from_wire(wire: bytes) -> str:
    if len(wire) != 7:
        raise FrameError("address", f"expected 7 address bytes, got {len(wire)}")
    if wire == WILDCARD:
        return "A" * 14
    return bcd_digits(wire)


def di_bytes(di: int, order: str) -> bytes:
    if order not in DI_ORDERS:
        raise ValueFormatError("di_order", f"expected one of {DI_ORDERS}, found {order!r}")
    printed = di.to_bytes(2, "big")
    return printed if order == "printed" else printed[::-1]


def layout_of(meter_type: int) -> str:
    """Which 901F layout a meter type answers with: ``heat`` for 20..29, else ``water``."""
    return "heat" if meter_type in HEAT_TYPES else "water"


@dataclass(frozen=True, slots=True)
class Frame:
    meter_type: int
    address: bytes
    control: int
    data: bytes

    @property
    def is_reply(self) -> bool:
        return bool(self.control & DIR_REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ABNORMAL)

    @property
    def function(self) -> int:
        return self.control & 0x3F

    @property
    def address_text(self) -> str:
        return address_from_wire(self.address)

    def di_matches(self, di: int) -> bool:
        """Whether DATA starts with ``di`` in either wire order."""
        if len(self.data) < 2:
            return False
        head = bytes(self.data[:2])
        return head in (di_bytes(di, "printed"), di_bytes(di, "swapped"))


def encode_frame(meter_type: int, address: bytes, control: int, data: bytes = b"", preamble: int = 4) -> bytes:
    if len(address) != 7:
        raise FrameError("address", "address must be 7 bytes")
    if not (0 <= meter_type <= 0xFF and 0 <= control <= 0xFF):
        raise FrameError("header", "meter type and control are single bytes")
    if len(data) > 0xFF:
        raise FrameError("length", f"data of {len(data)} bytes does not fit L")
    if not 0 <= preamble <= 4:
        raise FrameError("preamble", "0..4 FE bytes")
    body = bytes([START, meter_type]) + address + bytes([control, len(data)]) + data
    return b"\xfe" * preamble + body + bytes([checksum(body), END])


def decode_frame(raw: bytes) -> Frame:
    i = 0
    while i < len(raw) and raw[i] == WAKE:
        i += 1
    body = raw[i:]
    if len(body) < MIN_FRAME:
        raise FrameError("short", f"{len(body)} bytes, a frame has at least {MIN_FRAME}")
    if body[0] != START:
        raise FrameError("start", "missing 68")
    if len(body) != MIN_FRAME + body[10]:
        raise FrameError("length", f"L={body[10]} needs {MIN_FRAME + body[10]} bytes, got {len(body)}")
    if body[-1] != END:
        raise FrameError("end", f"end byte {body[-1]:02X}, expected 16")
    if checksum(body[:-2]) != body[-2]:
        raise FrameError("checksum", f"CS {body[-2]:02X}, computed {checksum(body[:-2]):02X}")
    return Frame(body[1], bytes(body[2:9]), body[9], bytes(body[11:-2]))


@dataclass
class ScanStats:
    frames: int = 0
    discarded: int = 0
    bad_checksum: int = 0
    bad_end: int = 0


@dataclass
class FrameScanner:
    """Resynchronising streaming parser; ``feed`` never raises for any byte input."""

    max_buffer: int = 1024
    stats: ScanStats = field(default_factory=ScanStats)
    _buf: bytearray = field(default_factory=bytearray)

    def reset(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | Iterable[int]) -> list[Frame]:
        self._buf.extend(data)
        buf = self._buf
        out: list[Frame] = []
        while True:
            start = buf.find(START)
            if start < 0:
                self._drop(len(buf))
                break
            if start:
                self._drop(start)
            if len(buf) < 11:
                break
            total = MIN_FRAME + buf[10]
            if len(buf) < total:
                # junk whose L swallows a real frame: prefer a complete valid frame further on
                later = self._complete_later(buf)
                if later or len(buf) > self.max_buffer:
                    self._drop(later or 1)
                    continue
                break
            if buf[total - 1] != END:
                self.stats.bad_end += 1
                self._drop(1)
                continue
            if checksum(buf[: total - 2]) != buf[total - 2]:
                self.stats.bad_checksum += 1
                self._drop(1)
                continue
            out.append(Frame(buf[1], bytes(buf[2:9]), buf[9], bytes(buf[11 : total - 2])))
            self.stats.frames += 1
            del buf[:total]
        return out

    @staticmethod
    def _complete_later(buf: bytearray) -> int:
        i = buf.find(START, 1)
        while i >= 0:
            if len(buf) - i < MIN_FRAME:
                return 0
            total = MIN_FRAME + buf[i + 10]
            if (
                len(buf) - i >= total
                and buf[i + total - 1] == END
                and checksum(buf[i : i + total - 2]) == buf[i + total - 2]
            ):
                return i
            i = buf.find(START, i + 1)
        return 0

    def _drop(self, n: int) -> None:
        chunk = self._buf[:n]
        self.stats.discarded += n - chunk.count(WAKE)
        del self._buf[:n]


# --------------------------------------------------------------------------- requests


def build_read(meter_type: int, address: bytes, ser: int, *, di: int = DI_CURRENT,
               di_order: str = "swapped", preamble: int = 4) -> bytes:
    return encode_frame(meter_type, address, C_READ, di_bytes(di, di_order) + bytes([ser & 0xFF]), preamble)


def build_read_address(ser: int = 0, *, di_order: str = "printed", preamble: int = 4) -> bytes:
    """Read address with the AA wildcard (point-to-point only)."""
    data = di_bytes(DI_ADDRESS, di_order) + bytes([ser & 0xFF])
    return encode_frame(T_WILDCARD, WILDCARD, C_READ_ADDRESS, data, preamble)


def build_valve(meter_type: int, address: bytes, open_valve: bool, ser: int, *,
                di_order: str = "swapped", preamble: int = 4) -> bytes:
    cmd = VALVE_OPEN if open_valve else VALVE_CLOSE
    data = di_bytes(DI_VALVE, di_order) + bytes([ser & 0xFF, cmd])
    return encode_frame(meter_type, address, C_WRITE, data, preamble)


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Status:
    valve: str  # "open" | "closed" | "abnormal"
    battery_low: bool
    raw: int  # both bytes, first wire byte in the low 8 bits

    @property
    def valve_open(self) -> bool | None:
        return {"open": True, "closed": False}.get(self.valve)


def decode_status(st: bytes) -> Status:
    if len(st) != 2:
        raise ValueFormatError("length", "status word is 2 bytes")
    valve = {0: "open", 1: "closed"}.get(st[0] & 0x03, "abnormal")
    return Status(valve, bool(st[0] & 0x04), st[0] | (st[1] << 8))


def encode_status(valve: str, battery_low: bool, vendor: int = 0) -> bytes:
    bits = {"open": 0, "closed": 1, "abnormal": 3}[valve] | (0x04 if battery_low else 0)
    return bytes([bits | (vendor & 0xF8), (vendor >> 8) & 0xFF])


@dataclass(frozen=True, slots=True)
class ErrorReply:
    ser: int
    status: Status


@dataclass(frozen=True, slots=True)
class Reply:
    ser: int
    payload: bytes  # after DI + SER


def parse_reply(frame: Frame, function: int, di: int) -> Reply | ErrorReply:
    """Check a reply answers ``function``/``di`` (DI accepted in either order)."""
    if not frame.is_reply:
        raise FrameError("direction", "frame is a request (D7=0), not a reply")
    if frame.function != function:
        raise FrameError("control", f"control {frame.control:02X} does not answer function {function:02X}")
    if frame.is_error:
        if len(frame.data) < 3:
            raise FrameError("length", "abnormal reply needs SER + ST")
        return ErrorReply(frame.data[0], decode_status(frame.data[1:3]))
    if len(frame.data) < 3:
        raise FrameError("length", "reply shorter than DI + SER")
    if not frame.di_matches(di):
        raise FrameError("di_mismatch", f"reply DI {frame.data[:2].hex()} is not {di:04X}")
    return Reply(frame.data[2], frame.data[3:])


# Unit codes: code -> (unit, factor to the base unit of its quantity)
# Base units: energy kWh, power W, volume m3, flow m3/h.
UNITS: dict[int, tuple[str, str, float]] = {
    # code: (quantity, base unit, factor)
    0x01: ("energy", "kWh", 1 / 3.6e6),
    0x02: ("energy", "kWh", 0.001),
    0x03: ("energy", "kWh", 0.01),
    0x04: ("energy", "kWh", 0.1),
    0x05: ("energy", "kWh", 1.0),
    0x06: ("energy", "kWh", 10.0),
    0x07: ("energy", "kWh", 100.0),
    0x08: ("energy", "kWh", 1000.0),
    0x09: ("energy", "kWh", 10000.0),
    0x0A: ("energy", "kWh", 100000.0),
    0x0B: ("energy", "kWh", 1 / 3600.0),
    0x0C: ("energy", "kWh", 10 / 3600.0),
    0x0D: ("energy", "kWh", 100 / 3600.0),
    0x0E: ("energy", "kWh", 1 / 3.6),
    0x0F: ("energy", "kWh", 10 / 3.6),
    0x10: ("energy", "kWh", 100 / 3.6),
    0x11: ("energy", "kWh", 1000 / 3.6),
    0x12: ("energy", "kWh", 10000 / 3.6),
    0x13: ("energy", "kWh", 100000 / 3.6),
    0x14: ("power", "W", 1.0),
    0x15: ("power", "W", 10.0),
    0x16: ("power", "W", 100.0),
    0x17: ("power", "W", 1000.0),
    0x18: ("power", "W", 10000.0),
    0x19: ("power", "W", 100000.0),
    0x1A: ("power", "W", 1e6),
    0x1B: ("power", "W", 1e7),
    0x1C: ("power", "W", 1e8),
    0x29: ("volume", "m3", 0.001),
    0x2A: ("volume", "m3", 0.01),
    0x2B: ("volume", "m3", 0.1),
    0x2C: ("volume", "m3", 1.0),
    0x2D: ("volume", "m3", 10.0),
    0x2E: ("volume", "m3", 100.0),
    0x32: ("flow", "m3/h", 0.001),
    0x33: ("flow", "m3/h", 0.01),
    0x34: ("flow", "m3/h", 0.1),
    0x35: ("flow", "m3/h", 1.0),
    0x36: ("flow", "m3/h", 10.0),
    0x37: ("flow", "m3/h", 100.0),
    0x40: ("power", "W", 1 / 3600.0),  # J/h
    0x43: ("power", "W", 1000 / 3600.0),
    0x44: ("power", "W", 10000 / 3600.0),
    0x45: ("power", "W", 100000 / 3600.0),
    0x46: ("power", "W", 1e6 / 3600.0),
    0x47: ("power", "W", 1e7 / 3600.0),
    0x48: ("power", "W", 1e8 / 3600.0),
    0x49: ("power", "W", 1e9 / 3600.0),
    0x4A: ("power", "W", 1e10 / 3600.0),
    0x4B: ("power", "W", 1e11 / 3600.0),
}


def scaled(value: bytes, decimals: int, unit_code: int, quantity: str) -> float:
    """A BCD quantity converted to its base unit using the meter's unit code."""
    number = bcd_to_float(value, decimals)
    entry = UNITS.get(unit_code)
    if entry is None or entry[0] != quantity:
        raise ValueFormatError("unit_code", f"unit code {unit_code:02X} is not a {quantity} unit")
    return float(f"{number * entry[2]:.12g}")


def decode_time(raw: bytes, order: str = "seconds_first") -> datetime | None:
    """7-byte real time. ``None`` for meters without a clock (all zeros). Tries the
    configured order first and falls back to the other when the ranges fail."""
    if len(raw) != 7:
        raise ValueFormatError("length", "real time is 7 bytes")
    if not any(raw):
        return None
    orders = [order] + [o for o in TIME_ORDERS if o != order]
    for o in orders:
        try:
            digits = [bcd_to_int(raw[i : i + 1]) for i in range(7)]
        except ValueFormatError:
            raise ValueFormatError("time", f"real time is not BCD: {raw.hex(' ')}") from None
        if o == "seconds_first":
            ss, mi, hh, dd, mo, ylo, yhi = digits
        else:
            yhi, ylo, mo, dd, hh, mi, ss = digits
        try:
            return datetime(yhi * 100 + ylo, mo, dd, hh, mi, ss)
        except ValueError:
            continue
    raise ValueFormatError("time", f"real time out of range in both orders: {raw.hex(' ')}")


def encode_time(when: datetime, order: str = "seconds_first") -> bytes:
    parts = [when.second, when.minute, when.hour, when.day, when.month, when.year % 100, when.year // 100]
    if order == "year_first":
        parts = parts[::-1]
    return bytes(bcd_byte(p) for p in parts)


WATER_FIELDS = ("volume", "volume_settlement", "meter_time", "valve_open", "valve_state", "battery_low", "status_raw")
HEAT_FIELDS = (
    "heat_settlement", "heat", "power", "flow_rate", "volume", "supply_temperature",
    "return_temperature", "working_hours", "meter_time", "valve_open", "valve_state",
    "battery_low", "status_raw",
)
FIELDS = tuple(dict.fromkeys(WATER_FIELDS + HEAT_FIELDS))

WATER_LEN = 19
HEAT_LEN = 43


def decode_current(payload: bytes, layout: str, *, time_order: str = "seconds_first") -> dict[str, object]:
    """Decode the 901F payload (after DI + SER). Each field fails on its own: a field that
    cannot be decoded maps to a ``ValueFormatError`` instead of a value."""
    out: dict[str, object] = {}

    def put(name: str, fn: object) -> None:
        try:
            out[name] = fn() if callable(fn) else fn
        except ValueFormatError as exc:
            out[name] = exc

    if layout == "water":
        if len(payload) < WATER_LEN:
            raise ValueFormatError("length", f"water/gas 901F payload is {WATER_LEN} bytes, got {len(payload)}")
        put("volume", lambda: scaled(payload[0:4], 2, payload[4], "volume"))
        put("volume_settlement", lambda: scaled(payload[5:9], 2, payload[9], "volume"))
        time_raw, st = payload[10:17], payload[17:19]
    elif layout == "heat":
        if len(payload) < HEAT_LEN:
            raise ValueFormatError("length", f"heat 901F payload is {HEAT_LEN} bytes, got {len(payload)}")
        put("heat_settlement", lambda: scaled(payload[0:4], 2, payload[4], "energy"))
        put("heat", lambda: scaled(payload[5:9], 2, payload[9], "energy"))
        put("power", lambda: scaled(payload[10:14], 2, payload[14], "power"))
        put("flow_rate", lambda: scaled(payload[15:19], 4, payload[19], "flow"))
        put("volume", lambda: scaled(payload[20:24], 2, payload[24], "volume"))
        put("supply_temperature", lambda: bcd_to_float(payload[25:28], 2))
        put("return_temperature", lambda: bcd_to_float(payload[28:31], 2))
        put("working_hours", lambda: bcd_to_int(payload[31:34]))
        time_raw, st = payload[34:41], payload[41:43]
    else:
        raise ValueFormatError("layout", f"unknown layout {layout!r}")

    def clock() -> object:
        t = decode_time(time_raw, time_order)
        if t is None:
            raise ValueFormatError("no_clock", "meter has no clock")
        return t.isoformat()

    put("meter_time", clock)
    status = decode_status(st)
    out["valve_state"] = status.valve
    valve_open = status.valve_open
    out["valve_open"] = valve_open if valve_open is not None else ValueFormatError("valve_abnormal", "valve abnormal")
    out["battery_low"] = status.battery_low
    out["status_raw"] = status.raw
    return out
