"""DL/T 645-2007 / DL/T 645-1997 codec (pure: bytes in, values out; no I/O).

Frame (after 0-4 ``FE`` wake-up bytes)::

    68 A0..A5 68 C L DATA(L) CS 16

* address: 12 BCD digits, low byte first; ``AA`` bytes are wildcards, ``99``x6 broadcast;
* DATA: every byte sent as (byte + 0x33) mod 256;
* CS: sum mod 256 from the first ``68`` through the last DATA byte.

``FrameScanner`` is the resynchronising receive parser: it never trusts offset 0, skips
junk and ``FE`` bytes, checks the second ``68``, decides completeness from L, and on a bad
checksum or end byte resumes at the next ``68``. It never raises on any input bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from drivers.serial.bcd import (
    bcd_byte,
    bcd_digits,
    bcd_to_float,
    bcd_to_int,
    decimal_to_bcd,
    digits_to_bcd,
)
from drivers.serial.errors import FrameError, ValueFormatError

START = 0x68
END = 0x16
WAKE = 0xFE
OFFSET = 0x33
MIN_FRAME = 12
MAX_DATA = 200

BROADCAST = b"\x99" * 6
WILDCARD = b"\xaa" * 6

# 2007 control codes (request function codes)
C_BROADCAST_TIME = 0x08
C_READ = 0x11
C_READ_FOLLOWUP = 0x12
C_READ_ADDRESS = 0x13
C_WRITE = 0x14
C_RELAY = 0x1C
# 1997 control codes
C97_READ = 0x01
C97_READ_FOLLOWUP = 0x02

DIR_REPLY = 0x80
ABNORMAL = 0x40
FOLLOWUP = 0x20

ERR_BITS = (
    "other",
    "no_data",
    "unauthorised",
    "baud_unchangeable",
    "year_zones",
    "day_slots",
    "tariffs",
    "reserved",
)

# Relay control (C = 1C) operation codes N1
RELAY_TRIP = 0x1A
RELAY_ALLOW_CLOSE = 0x1B
RELAY_CLOSE = 0x1C


def checksum(data: bytes | bytearray | memoryview) -> int:
    return sum(data) & 0xFF


def shift_up(data: bytes) -> bytes:
    return bytes((b + OFFSET) & 0xFF for b in data)


def shift_down(data: bytes | bytearray | memoryview) -> bytes:
    return bytes((b - OFFSET) & 0xFF for b in data)


def address_to_wire(address: str, pad: str = "0") -> bytes:
    """Nameplate digits (display order) to the 6 wire bytes (low byte first)."""
    return digits_to_bcd(address, 6, pad)


def address_from_wire(wire: bytes) -> str:
    """6 wire bytes to the 12 nameplate digits; wildcard bytes render as ``AA``."""
    if len(wire) != 6:
        raise FrameError("address", f"expected 6 address bytes, got {len(wire)}")
    if wire == WILDCARD:
        return "AAAAAAAAAAAA"
    return bcd_digits(wire)


def di_to_wire(di: int, width: int = 4) -> bytes:
    """A DI (printed DI3..DI0 as an int, e.g. 0x02010100) as plain bytes DI0 first (before +0x33)."""
    if width not in (2, 4) or not 0 <= di < (1 << (8 * width)):
        raise ValueFormatError("di", f"DI {di:#x} does not fit {width} bytes")
    return di.to_bytes(width, "little")


def parse_di(text: str) -> int:
    """A printed DI such as ``"02010100"``, ``"0201 0100"`` or ``"9010"`` to an int."""
    cleaned = text.replace(" ", "").replace("-", "").removeprefix("0x")
    if len(cleaned) not in (4, 8):
        raise ValueFormatError("di", f"expected 4 or 8 hex digits, found {text!r}")
    try:
        return int(cleaned, 16)
    except ValueError:
        raise ValueFormatError("di", f"expected hex digits, found {text!r}") from None


@dataclass(frozen=True, slots=True)
class Frame:
    """A decoded frame. ``data`` is already shifted down by 0x33."""

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
    def has_followup(self) -> bool:
        return bool(self.control & FOLLOWUP)

    @property
    def function(self) -> int:
        return self.control & 0x1F

    @property
    def address_text(self) -> str:
        return address_from_wire(self.address)


def encode_frame(address: bytes, control: int, data: bytes = b"", preamble: int = 4) -> bytes:
    """Build a frame from plain (unshifted) DATA."""
    if len(address) != 6:
        raise FrameError("address", "address must be 6 bytes")
    if not 0 <= control <= 0xFF:
        raise FrameError("control", f"control code {control} out of range")
    if len(data) > MAX_DATA:
        raise FrameError("length", f"data of {len(data)} bytes exceeds {MAX_DATA}")
    if not 0 <= preamble <= 4:
        raise FrameError("preamble", "0..4 FE bytes")
    body = bytes([START]) + address + bytes([START, control, len(data)]) + shift_up(data)
    return b"\xfe" * preamble + body + bytes([checksum(body), END])


def decode_frame(raw: bytes) -> Frame:
    """Decode exactly one frame (leading FE bytes allowed). Raises ``FrameError``."""
    i = 0
    while i < len(raw) and raw[i] == WAKE:
        i += 1
    body = raw[i:]
    if len(body) < MIN_FRAME:
        raise FrameError("short", f"{len(body)} bytes, a frame has at least {MIN_FRAME}")
    if body[0] != START or body[7] != START:
        raise FrameError("start", "missing 68 at offset 0 or 7")
    length = body[9]
    if len(body) != MIN_FRAME + length:
        raise FrameError("length", f"L={length} needs {MIN_FRAME + length} bytes, got {len(body)}")
    if body[-1] != END:
        raise FrameError("end", f"end byte {body[-1]:02X}, expected 16")
    if checksum(body[:-2]) != body[-2]:
        raise FrameError("checksum", f"CS {body[-2]:02X}, computed {checksum(body[:-2]):02X}")
    return Frame(bytes(body[1:7]), body[8], shift_down(body[10:-2]))


@dataclass
class ScanStats:
    frames: int = 0
    discarded: int = 0  # junk bytes skipped (FE preamble bytes are not counted)
    bad_checksum: int = 0
    bad_end: int = 0


@dataclass
class FrameScanner:
    """Resynchronising streaming parser. ``feed`` returns every complete valid frame found.

    It never raises for any byte input; invalid candidates are skipped one byte at a time,
    so a valid frame after junk (or after a corrupted frame) is always found.
    """

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
        out: list[Frame] = []
        buf = self._buf
        while True:
            start = buf.find(START)
            if start < 0:
                self._drop(len(buf))
                break
            if start:
                self._drop(start)
            if len(buf) < 10:
                break
            if buf[7] != START:
                self._drop(1)
                continue
            total = MIN_FRAME + buf[9]
            if len(buf) < total:
                # The head candidate may be junk whose L swallows a real frame: if a complete
                # valid frame already sits further on, the head cannot be a frame.
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
            out.append(Frame(bytes(buf[1:7]), buf[8], shift_down(buf[10 : total - 2])))
            self.stats.frames += 1
            del buf[:total]
        return out

    @staticmethod
    def _complete_later(buf: bytearray) -> int:
        i = buf.find(START, 1)
        while i >= 0:
            if len(buf) - i < MIN_FRAME:
                return 0
            if buf[i + 7] == START:
                total = MIN_FRAME + buf[i + 9]
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


def build_read(address: bytes, di: int, *, edition: str = "2007", preamble: int = 4) -> bytes:
    if edition == "1997":
        return encode_frame(address, C97_READ, di_to_wire(di, 2), preamble)
    return encode_frame(address, C_READ, di_to_wire(di, 4), preamble)


def build_read_followup(address: bytes, di: int, seq: int, *, edition: str = "2007", preamble: int = 4) -> bytes:
    if edition == "1997":
        return encode_frame(address, C97_READ_FOLLOWUP, di_to_wire(di, 2), preamble)
    return encode_frame(address, C_READ_FOLLOWUP, di_to_wire(di, 4) + bytes([seq & 0xFF]), preamble)


def build_read_address(preamble: int = 4) -> bytes:
    """Read the communication address on a point-to-point link (AA wildcard)."""
    return encode_frame(WILDCARD, C_READ_ADDRESS, b"", preamble)


def time_bytes(when: datetime) -> bytes:
    """ss mm hh DD MM YY, low (seconds) first, each packed BCD."""
    return bytes(
        bcd_byte(x) for x in (when.second, when.minute, when.hour, when.day, when.month, when.year % 100)
    )


def build_broadcast_time(when: datetime, preamble: int = 4) -> bytes:
    """Broadcast time sync (C=08, address 99x6). Meters never answer it."""
    return encode_frame(BROADCAST, C_BROADCAST_TIME, time_bytes(when), preamble)


def build_relay(
    address: bytes,
    operation: int,
    *,
    password: bytes = b"\x02\x00\x00\x00",
    operator: bytes = b"\x00\x00\x00\x00",
    valid_until: datetime,
    preamble: int = 4,
) -> bytes:
    """Relay control (C=1C): PA P0..P2, C0..C3, N1 (operation), N2, N3..N8 (expiry)."""
    if len(password) != 4 or len(operator) != 4:
        raise FrameError("relay", "password (level + 3 bytes) and operator code are 4 bytes each")
    if operation not in (RELAY_TRIP, RELAY_ALLOW_CLOSE, RELAY_CLOSE):
        raise FrameError("relay", f"unknown relay operation {operation:02X}")
    data = password + operator + bytes([operation, 0x00]) + time_bytes(valid_until)
    return encode_frame(address, C_RELAY, data, preamble)


def read_control(edition: str) -> int:
    return C97_READ if edition == "1997" else C_READ


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class ErrorReply:
    err: int

    @property
    def reasons(self) -> tuple[str, ...]:
        return tuple(name for bit, name in enumerate(ERR_BITS) if self.err & (1 << bit))

    @property
    def reason(self) -> str:
        """One bounded label (the most specific bit set)."""
        for bit in (1, 2, 3, 4, 5, 6, 0):
            if self.err & (1 << bit):
                return ERR_BITS[bit]
        return "other"


@dataclass(frozen=True, slots=True)
class ReadReply:
    di: int
    payload: bytes  # value bytes after the DI, plain (already shifted down)
    followup: bool


def parse_read_reply(frame: Frame, di: int, *, edition: str = "2007") -> ReadReply | ErrorReply:
    """Interpret a reply to ``build_read``. Raises ``FrameError`` when it is not one."""
    width = 2 if edition == "1997" else 4
    func = read_control(edition)
    if not frame.is_reply:
        raise FrameError("direction", "frame is a request (D7=0), not a reply")
    if frame.function not in (func, func + 1):  # read or read follow-up
        raise FrameError("control", f"control {frame.control:02X} does not answer a read")
    if frame.is_error:
        if len(frame.data) < 1:
            raise FrameError("length", "error reply without ERR byte")
        return ErrorReply(frame.data[0])
    if len(frame.data) < width:
        raise FrameError("length", f"reply data {len(frame.data)} bytes, shorter than the DI")
    echoed = int.from_bytes(frame.data[:width], "little")
    if echoed != di:
        raise FrameError("di_mismatch", f"reply DI {echoed:0{2 * width}X}, asked {di:0{2 * width}X}")
    return ReadReply(di, frame.data[width:], frame.has_followup)


def parse_address_reply(frame: Frame) -> str:
    if frame.control != (C_READ_ADDRESS | DIR_REPLY):
        raise FrameError("control", f"control {frame.control:02X} is not a read-address reply")
    if len(frame.data) != 6:
        raise FrameError("length", "read-address reply must carry 6 bytes")
    return address_from_wire(frame.data)


# --------------------------------------------------------------------------- DI catalogue


@dataclass(frozen=True, slots=True)
class DiSpec:
    """How the value of one DI is laid out. ``kind``: number | date | time | address | bits."""

    name: str
    size: int  # bytes of one item
    decimals: int = 0
    signed: bool = False
    kind: str = "number"
    unit: str = ""
    items: int = 1  # >1 for data blocks (e.g. voltage A, B, C)


CATALOGUE_2007: dict[int, DiSpec] = {
    0x00000000: DiSpec("energy combined active total", 4, 2, True, unit="kWh"),
    0x00010000: DiSpec("energy forward active total", 4, 2, unit="kWh"),
    0x00020000: DiSpec("energy reverse active total", 4, 2, unit="kWh"),
    0x02010100: DiSpec("voltage phase A", 2, 1, unit="V"),
    0x02010200: DiSpec("voltage phase B", 2, 1, unit="V"),
    0x02010300: DiSpec("voltage phase C", 2, 1, unit="V"),
    0x0201FF00: DiSpec("voltage block A B C", 2, 1, unit="V", items=3),
    0x02020100: DiSpec("current phase A", 3, 3, True, unit="A"),
    0x02020200: DiSpec("current phase B", 3, 3, True, unit="A"),
    0x02020300: DiSpec("current phase C", 3, 3, True, unit="A"),
    0x0202FF00: DiSpec("current block A B C", 3, 3, True, unit="A", items=3),
    0x02030000: DiSpec("active power total", 3, 4, True, unit="kW"),
    0x02040000: DiSpec("reactive power total", 3, 4, True, unit="kvar"),
    0x02060000: DiSpec("power factor total", 2, 3, True),
    0x02800002: DiSpec("grid frequency", 2, 2, unit="Hz"),
    0x04000101: DiSpec("date and weekday", 4, kind="date"),
    0x04000102: DiSpec("time", 3, kind="time"),
    0x04000401: DiSpec("communication address", 6, kind="address"),
    0x04000402: DiSpec("meter number", 6, kind="address"),
    0x04000501: DiSpec("run status word 1", 2, kind="bits"),
    0x04000503: DiSpec("run status word 3", 2, kind="bits"),
    0x04000601: DiSpec("active combination word", 1, kind="bits"),
}

CATALOGUE_1997: dict[int, DiSpec] = {
    0x9010: DiSpec("energy forward active total", 4, 2, unit="kWh"),
    0x9020: DiSpec("energy reverse active total", 4, 2, unit="kWh"),
    0xB611: DiSpec("voltage phase A", 2, 0, unit="V"),
    0xB612: DiSpec("voltage phase B", 2, 0, unit="V"),
    0xB613: DiSpec("voltage phase C", 2, 0, unit="V"),
    0xB621: DiSpec("current phase A", 2, 2, unit="A"),
    0xB622: DiSpec("current phase B", 2, 2, unit="A"),
    0xB623: DiSpec("current phase C", 2, 2, unit="A"),
    0xB630: DiSpec("active power total", 3, 4, True, unit="kW"),
}

FORMATS: dict[str, tuple[int, int]] = {
    # format string -> (bytes, decimals)
    "XXXXXX.XX": (4, 2),
    "XXX.X": (2, 1),
    "XXX": (2, 0),
    "XXX.XXX": (3, 3),
    "XX.XXXX": (3, 4),
    "X.XXX": (2, 3),
    "XX.XX": (2, 2),
    "NNNN": (2, 0),
    "NN": (1, 0),
}


def decode_value(payload: bytes, spec: DiSpec, index: int = 0) -> float | int | str:
    """Decode item ``index`` of a DI's value bytes. Raises ``ValueFormatError``."""
    start = index * spec.size
    chunk = payload[start : start + spec.size]
    if len(chunk) != spec.size:
        raise ValueFormatError("length", f"{spec.name}: need {spec.size} bytes at item {index}, have {len(payload)}")
    if spec.kind == "number":
        return bcd_to_float(chunk, spec.decimals, signed=spec.signed)
    if spec.kind == "bits":
        return int.from_bytes(chunk, "little")
    if spec.kind == "address":
        return bcd_digits(chunk)
    if spec.kind == "date":  # WW DD MM YY
        ww, dd, mm, yy = (bcd_to_int(chunk[i : i + 1]) for i in range(4))
        if not (1 <= mm <= 12 and 1 <= dd <= 31 and ww <= 6):
            raise ValueFormatError("date", f"not a date: {chunk.hex(' ')}")
        return f"20{yy:02d}-{mm:02d}-{dd:02d}"
    if spec.kind == "time":  # ss mm hh
        ss, mi, hh = (bcd_to_int(chunk[i : i + 1]) for i in range(3))
        if not (ss < 60 and mi < 60 and hh < 24):
            raise ValueFormatError("time", f"not a time: {chunk.hex(' ')}")
        return f"{hh:02d}:{mi:02d}:{ss:02d}"
    raise ValueFormatError("kind", f"unknown value kind {spec.kind}")


def encode_value(value: float | int | str, spec: DiSpec) -> bytes:
    """Inverse of ``decode_value`` for one item (used by tests and tools)."""
    if spec.kind == "number":
        if isinstance(value, str):
            raise ValueFormatError("kind", "a number item needs a number")
        return decimal_to_bcd(value, spec.size, spec.decimals, signed=spec.signed)
    if spec.kind == "bits":
        return int(value).to_bytes(spec.size, "little")
    if spec.kind == "address":
        return digits_to_bcd(str(value), spec.size)
    raise ValueFormatError("kind", f"cannot encode kind {spec.kind}")


def meter_datetime(date_payload: bytes, time_payload: bytes) -> datetime:
    """Combine replies of 04000101 and 04000102 into a naive datetime (meter local time)."""
    ww, dd, mm, yy = (bcd_to_int(date_payload[i : i + 1]) for i in range(4))
    ss, mi, hh = (bcd_to_int(time_payload[i : i + 1]) for i in range(3))
    try:
        return datetime(2000 + yy, mm, dd, hh, mi, ss)
    except ValueError as exc:
        raise ValueFormatError("date", str(exc)) from None
