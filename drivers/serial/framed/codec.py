"""Declarative framed protocols (pure; no I/O).

Many small vendor devices (access-control panels, alarm pillars, old fire panels) speak a
frame of the shape::

    START  ...header (length, address, command at fixed offsets)...  PAYLOAD  CHECKSUM  END

``FrameSpec`` describes such a frame; ``FrameScanner`` finds frames in a byte stream
(resynchronising, never raising on any input), ``encode`` builds one, ``extract`` reads a
typed field at an offset. All offsets count from the first start byte (offset 0).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from drivers.serial.bcd import bcd_digits
from drivers.serial.errors import FrameError, ValueFormatError
from gateway.plugin import float32_value

CHECKSUMS = ("none", "sum8", "xor8", "crc16_modbus", "crc16_ccitt")
FIELD_TYPES = (
    "u8", "i8", "u16be", "u16le", "i16be", "i16le", "u32be", "u32le", "i32be", "i32le",
    "f32be", "f32le", "bcd", "bcd_le", "ascii", "hex",
)


def sum8(data: bytes | bytearray | memoryview) -> int:
    return sum(data) & 0xFF


def xor8(data: bytes | bytearray | memoryview) -> int:
    x = 0
    for b in data:
        x ^= b
    return x


def crc16_modbus(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS: poly 0x8005 reflected (0xA001), init 0xFFFF."""
    crc = 0xFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def crc16_ccitt(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected."""
    crc = 0xFFFF
    for b in data:
        crc ^= b << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def checksum_size(kind: str) -> int:
    return {"none": 0, "sum8": 1, "xor8": 1, "crc16_modbus": 2, "crc16_ccitt": 2}[kind]


@dataclass(frozen=True, slots=True)
class FrameSpec:
    start: bytes
    header_len: int  # bytes before the payload, start bytes included
    length_offset: int | None = None
    length_size: int = 1
    length_endian: str = "big"
    length_adjust: int = 0  # total frame bytes = length field value + length_adjust
    fixed_length: int | None = None  # frames without a length field
    address_offset: int | None = None
    address_size: int = 1
    command_offset: int | None = None
    checksum: str = "sum8"
    checksum_from: int = 0  # first byte covered by the checksum
    checksum_endian: str = "little"  # for 2-byte checksums
    end: bytes = b""
    max_length: int = 256

    def __post_init__(self) -> None:
        problems = []
        if not self.start:
            problems.append("start needs at least one byte")
        if self.checksum not in CHECKSUMS:
            problems.append(f"checksum must be one of {CHECKSUMS}")
        if (self.length_offset is None) == (self.fixed_length is None):
            problems.append("give exactly one of length_offset and fixed_length")
        if self.length_size not in (1, 2) or self.length_endian not in ("big", "little"):
            problems.append("length_size is 1 or 2, length_endian big or little")
        if self.checksum_endian not in ("big", "little"):
            problems.append("checksum_endian is big or little")
        if self.header_len < len(self.start):
            problems.append("header_len must include the start bytes")
        for name, off, size in (
            ("length", self.length_offset, self.length_size),
            ("address", self.address_offset, self.address_size),
            ("command", self.command_offset, 1),
        ):
            if off is not None and (off < len(self.start) or off + size > self.header_len):
                problems.append(f"{name} field must lie inside the header, after the start bytes")
        if self.checksum_from > self.header_len:
            problems.append("checksum_from must lie inside the header")
        if self.fixed_length is not None and self.fixed_length < self.min_length:
            problems.append(f"fixed_length is shorter than header + checksum + end ({self.min_length})")
        if problems:
            raise FrameError("spec", "; ".join(problems))

    @property
    def trailer_len(self) -> int:
        return checksum_size(self.checksum) + len(self.end)

    @property
    def min_length(self) -> int:
        return self.header_len + self.trailer_len

    def compute_checksum(self, covered: bytes | bytearray | memoryview) -> bytes:
        kind = self.checksum
        if kind == "none":
            return b""
        if kind == "sum8":
            return bytes([sum8(covered)])
        if kind == "xor8":
            return bytes([xor8(covered)])
        crc = crc16_modbus(covered) if kind == "crc16_modbus" else crc16_ccitt(covered)
        return crc.to_bytes(2, "big" if self.checksum_endian == "big" else "little")


@dataclass(frozen=True, slots=True)
class Frame:
    raw: bytes
    address: int | None
    command: int | None
    payload: bytes


def _frame_of(spec: FrameSpec, raw: bytes) -> Frame:
    address = None
    if spec.address_offset is not None:
        address = int.from_bytes(raw[spec.address_offset : spec.address_offset + spec.address_size], "big")
    command = raw[spec.command_offset] if spec.command_offset is not None else None
    payload = raw[spec.header_len : len(raw) - spec.trailer_len]
    return Frame(raw, address, command, payload)


def encode(spec: FrameSpec, *, address: int | None = None, command: int | None = None,
           payload: bytes = b"", header: dict[int, int] | None = None) -> bytes:
    """Build a frame. ``header`` sets further constant header bytes by offset."""
    head = bytearray(spec.header_len)
    head[: len(spec.start)] = spec.start
    for off, val in (header or {}).items():
        if not (len(spec.start) <= off < spec.header_len and 0 <= val <= 0xFF):
            raise FrameError("header", f"header byte at {off} out of range")
        head[off] = val
    if spec.address_offset is not None:
        if address is None or not 0 <= address < 1 << (8 * spec.address_size):
            raise FrameError("address", f"address {address} does not fit {spec.address_size} bytes")
        head[spec.address_offset : spec.address_offset + spec.address_size] = address.to_bytes(spec.address_size, "big")
    if spec.command_offset is not None:
        if command is None or not 0 <= command <= 0xFF:
            raise FrameError("command", f"command {command} is not a byte")
        head[spec.command_offset] = command
    total = spec.header_len + len(payload) + spec.trailer_len
    if spec.fixed_length is not None and total != spec.fixed_length:
        raise FrameError("length", f"frame is {total} bytes, the spec fixes {spec.fixed_length}")
    if total > spec.max_length:
        raise FrameError("length", f"frame of {total} bytes exceeds max_length {spec.max_length}")
    if spec.length_offset is not None:
        value = total - spec.length_adjust
        if not 0 <= value < 1 << (8 * spec.length_size):
            raise FrameError("length", f"length value {value} does not fit the length field")
        head[spec.length_offset : spec.length_offset + spec.length_size] = value.to_bytes(
            spec.length_size, "big" if spec.length_endian == "big" else "little"
        )
    body = bytes(head) + payload
    return body + spec.compute_checksum(body[spec.checksum_from :]) + spec.end


def decode(spec: FrameSpec, raw: bytes) -> Frame:
    """Decode exactly one frame. Raises ``FrameError``."""
    if not raw.startswith(spec.start):
        raise FrameError("start", "missing start bytes")
    total = _total_length(spec, raw)
    if total is None or total != len(raw):
        raise FrameError("length", f"frame length {len(raw)} does not match its header")
    problem = _check(spec, raw)
    if problem:
        raise FrameError(problem, f"{problem} check failed")
    return _frame_of(spec, raw)


def _total_length(spec: FrameSpec, buf: bytes | bytearray) -> int | None:
    if spec.fixed_length is not None:
        return spec.fixed_length
    assert spec.length_offset is not None
    end = spec.length_offset + spec.length_size
    if len(buf) < end:
        return None
    value = int.from_bytes(buf[spec.length_offset : end], "big" if spec.length_endian == "big" else "little")
    return value + spec.length_adjust


def _check(spec: FrameSpec, raw: bytes | bytearray) -> str | None:
    if spec.end and raw[len(raw) - len(spec.end) :] != spec.end:
        return "end"
    cs_len = checksum_size(spec.checksum)
    if cs_len:
        cs_at = len(raw) - len(spec.end) - cs_len
        if bytes(raw[cs_at : cs_at + cs_len]) != spec.compute_checksum(raw[spec.checksum_from : cs_at]):
            return "checksum"
    return None


@dataclass
class ScanStats:
    frames: int = 0
    discarded: int = 0
    bad_checksum: int = 0
    bad_end: int = 0
    bad_length: int = 0


@dataclass
class FrameScanner:
    """Resynchronising streaming parser for one ``FrameSpec``; ``feed`` never raises."""

    spec: FrameSpec
    stats: ScanStats = field(default_factory=ScanStats)
    _buf: bytearray = field(default_factory=bytearray)

    def reset(self) -> None:
        self._buf.clear()

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes | bytearray | Iterable[int]) -> list[Frame]:
        spec = self.spec
        self._buf.extend(data)
        buf = self._buf
        out: list[Frame] = []
        first = spec.start[0]
        while True:
            at = buf.find(first)
            if at < 0:
                self._drop(len(buf))
                break
            if at:
                self._drop(at)
            if len(buf) < len(spec.start):
                break
            if buf[: len(spec.start)] != spec.start:
                self._drop(1)
                continue
            total = _total_length(spec, buf)
            if total is None:
                break
            if not spec.min_length <= total <= spec.max_length:
                self.stats.bad_length += 1
                self._drop(1)
                continue
            if len(buf) < total:
                later = self._complete_later()
                if later:
                    self._drop(later)
                    continue
                break
            problem = _check(spec, buf[:total])
            if problem:
                if problem == "end":
                    self.stats.bad_end += 1
                else:
                    self.stats.bad_checksum += 1
                self._drop(1)
                continue
            out.append(_frame_of(spec, bytes(buf[:total])))
            self.stats.frames += 1
            del buf[:total]
        return out

    def _complete_later(self) -> int:
        """Offset of a complete valid frame after the head (0: none)."""
        spec, buf = self.spec, self._buf
        i = buf.find(spec.start, 1)
        while i >= 0:
            rest = buf[i:]
            total = _total_length(spec, rest)
            if total is None:
                return 0
            if spec.min_length <= total <= min(len(rest), spec.max_length) and _check(spec, rest[:total]) is None:
                return i
            i = buf.find(spec.start, i + 1)
        return 0

    def _drop(self, n: int) -> None:
        self.stats.discarded += n
        del self._buf[:n]


_STRUCT = {
    "u8": ">B", "i8": ">b", "u16be": ">H", "u16le": "<H", "i16be": ">h", "i16le": "<h",
    "u32be": ">I", "u32le": "<I", "i32be": ">i", "i32le": "<i", "f32be": ">f", "f32le": "<f",
}


def field_size(ftype: str, length: int | None) -> int:
    if ftype in _STRUCT:
        return struct.calcsize(_STRUCT[ftype])
    if length is None or length < 1:
        raise ValueFormatError("spec", f"type {ftype} needs a length")
    return length


def extract(raw: bytes, offset: int, ftype: str, *, length: int | None = None,
            bit: int | None = None) -> int | float | bool | str:
    """Read one typed field at ``offset`` of a frame; with ``bit`` return that bit as bool."""
    if ftype not in FIELD_TYPES:
        raise ValueFormatError("spec", f"unknown field type {ftype!r}")
    size = field_size(ftype, length)
    chunk = raw[offset : offset + size]
    if offset < 0 or len(chunk) != size:
        raise ValueFormatError("short", f"field at {offset} ({size} bytes) is past the frame end ({len(raw)})")
    if ftype in _STRUCT:
        value: int | float | str = struct.unpack(_STRUCT[ftype], chunk)[0]
        if isinstance(value, float) and ftype in ("f32be", "f32le") and math.isfinite(value):
            value = float32_value(value)
    elif ftype == "bcd":
        value = int(bcd_digits(chunk[::-1]))
    elif ftype == "bcd_le":
        value = int(bcd_digits(chunk))
    elif ftype == "ascii":
        try:
            value = chunk.decode("ascii").rstrip("\x00 ")
        except UnicodeDecodeError:
            raise ValueFormatError("ascii", f"non-ASCII bytes {chunk.hex(' ')}") from None
    else:
        value = chunk.hex().upper()
    if bit is not None:
        if not isinstance(value, int):
            raise ValueFormatError("spec", "bit needs an integer field")
        return bool((value >> bit) & 1)
    return value
