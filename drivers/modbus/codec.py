"""Pure Modbus codec: value decoding/encoding, PDU and frame building/parsing, read planning.

Nothing in this module does I/O, looks at the clock or keeps state between calls, so every
function is tested with byte vectors (``drivers/modbus/tests/test_codec.py``).

Conventions
-----------
* Register values are ``int`` in 0..65535 ("words"), in the order the device sent them.
* Byte/word order names describe where the bytes of a big-endian value ``A B C D`` (most
  significant first) sit on the wire: ``ABCD`` big endian, ``DCBA`` little endian, ``BADC``
  bytes swapped within each word, ``CDAB`` words swapped (low word first). For 64-bit values
  the rule generalises (``CDAB`` reverses the word order, ``BADC`` swaps the bytes of every
  word, ``DCBA`` reverses all bytes). A single register only honours the byte swap.
* Addresses are protocol addresses (0-based), not "40001"-style reference numbers.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TABLES = ("coil", "discrete", "input", "holding")
BIT_TABLES = frozenset({"coil", "discrete"})
ORDERS = ("ABCD", "DCBA", "BADC", "CDAB")

# type -> registers it occupies (strings take ``length`` registers)
TYPE_REGISTERS: dict[str, int] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "int64": 4,
    "uint64": 4,
    "float32": 2,
    "float64": 4,
    "bcd16": 1,
    "bcd32": 2,
    "string": 0,
    "bool": 1,  # in a register table: the register is non-zero (or ``bit`` of it is set)
}
INT_FORMATS: dict[str, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "int64": ">q",
    "uint64": ">Q",
}
FLOAT_FORMATS: dict[str, str] = {"float32": ">f", "float64": ">d"}

READ_FC: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
MAX_READ_REGISTERS = 125
MAX_READ_BITS = 2000
MAX_WRITE_REGISTERS = 123
MAX_WRITE_BITS = 1968

EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal_function",
    2: "illegal_data_address",
    3: "illegal_data_value",
    4: "device_failure",
    5: "acknowledge",
    6: "device_busy",
    8: "memory_parity_error",
    10: "gateway_path_unavailable",
    11: "gateway_target_failed",
}


class CodecError(ValueError):
    """A value cannot be decoded or encoded. ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MalformedFrame(CodecError):
    """A response that is not a valid answer to the request."""


class ModbusExceptionResponse(CodecError):
    """The device answered with a Modbus exception."""

    def __init__(self, function: int, code: int) -> None:
        self.function = function
        self.code = code
        super().__init__(exception_reason(code), f"function {function} exception code {code}")


def exception_reason(code: int) -> str:
    """``exception_02_illegal_data_address`` etc.; unknown codes stay bounded."""
    name = EXCEPTION_NAMES.get(code)
    return f"exception_{code:02d}_{name}" if name else "exception_other"


# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class ValueSpec:
    """How one value sits in a register or bit table (the pure part of a point address)."""

    table: str
    offset: int
    type: str = "uint16"
    order: str = "ABCD"
    bit: int | None = None
    width: int = 1
    length: int = 1  # string: registers
    encoding: str = "ascii"

    @property
    def count(self) -> int:
        """Registers (or bits) the value occupies."""
        if self.table in BIT_TABLES:
            return 1
        if self.type == "string":
            return self.length
        return TYPE_REGISTERS[self.type]

    @property
    def end(self) -> int:
        return self.offset + self.count


def check_spec(spec: ValueSpec) -> str | None:
    """Why ``spec`` is not a usable value description, or ``None``."""
    if spec.table not in TABLES:
        return f"table must be one of {list(TABLES)}"
    if not 0 <= spec.offset <= 0xFFFF:
        return "offset must be within 0..65535"
    if spec.table in BIT_TABLES:
        if spec.type != "bool":
            return f"a {spec.table} holds single bits: type must be bool"
        if spec.bit is not None:
            return f"bit is meaningless for a {spec.table}"
        return None
    if spec.type not in TYPE_REGISTERS:
        return f"type must be one of {sorted(TYPE_REGISTERS)}"
    if spec.order not in ORDERS:
        return f"order must be one of {list(ORDERS)}"
    if spec.type == "string":
        if not 1 <= spec.length <= MAX_READ_REGISTERS:
            return f"string length must be 1..{MAX_READ_REGISTERS} registers"
        if spec.bit is not None:
            return "a string has no bits"
        return None
    if spec.type in FLOAT_FORMATS and spec.bit is not None:
        return "a float has no bits"
    if spec.bit is not None:
        bits = 16 * TYPE_REGISTERS[spec.type] if spec.type != "bool" else 16
        if spec.bit < 0 or spec.width < 1 or spec.bit + spec.width > bits:
            return f"bit {spec.bit} width {spec.width} does not fit a {bits}-bit value"
    elif spec.width != 1:
        return "width needs bit (the lowest bit of the field)"
    if spec.end > 0x10000:
        return "value runs past register 65535"
    return None


def words_to_bytes(words: Sequence[int], order: str) -> bytes:
    """Registers as sent by the device -> big-endian bytes of the value."""
    for w in words:
        if not 0 <= w <= 0xFFFF:
            raise CodecError("malformed", f"register value {w} out of 0..65535")
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    return _reorder(raw, order)


def bytes_to_words(data: bytes, order: str) -> list[int]:
    """Big-endian bytes of a value -> registers in the device's order."""
    if len(data) % 2:
        raise CodecError("malformed", "odd number of bytes")
    raw = _reorder(data, order)  # every reorder is its own inverse
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def _reorder(raw: bytes, order: str) -> bytes:
    if order == "ABCD":
        return raw
    if order == "DCBA":
        return raw[::-1]
    if order == "BADC":
        return b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    if order == "CDAB":
        if len(raw) == 2:
            return raw
        return b"".join(raw[i : i + 2] for i in range(len(raw) - 2, -2, -2))
    raise CodecError("bad_order", f"unknown byte order {order!r}")


def decode_bcd(data: bytes) -> int:
    """Packed BCD, most significant digit first. A nibble above 9 is malformed."""
    out = 0
    for byte in data:
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise CodecError("bad_bcd", f"byte 0x{byte:02X} is not BCD")
        out = out * 100 + hi * 10 + lo
    return out


def encode_bcd(value: int, nbytes: int) -> bytes:
    if value < 0 or value >= 10 ** (2 * nbytes):
        raise CodecError("out_of_range", f"{value} does not fit {2 * nbytes} BCD digits")
    digits = f"{value:0{2 * nbytes}d}"
    return bytes(int(digits[i]) << 4 | int(digits[i + 1]) for i in range(0, len(digits), 2))


def decode_registers(spec: ValueSpec, words: Sequence[int]) -> int | float | bool | str:
    """Decode the registers of one value (exactly ``spec.count`` of them)."""
    if len(words) != spec.count:
        raise CodecError("malformed", f"expected {spec.count} registers, got {len(words)}")
    t = spec.type
    if t == "string":
        data = words_to_bytes(words, "BADC" if spec.order in ("BADC", "DCBA") else "ABCD")
        text = data.split(b"\x00", 1)[0]
        try:
            return text.decode(spec.encoding).rstrip(" ")
        except (UnicodeDecodeError, LookupError):
            raise CodecError("bad_string", f"not {spec.encoding}: {text!r}") from None
    data = words_to_bytes(words, spec.order)
    if t in FLOAT_FORMATS:
        value_f = float(struct.unpack(FLOAT_FORMATS[t], data)[0])
        if not math.isfinite(value_f):
            raise CodecError("not_finite", f"{t} is {value_f}")
        return value_f
    if t in ("bcd16", "bcd32"):
        value_i = decode_bcd(data)
    elif t == "bool":
        value_i = int.from_bytes(data, "big")
    else:
        value_i = int(struct.unpack(INT_FORMATS[t], data)[0])
    if spec.bit is not None:
        unsigned = int.from_bytes(data, "big")
        field = (unsigned >> spec.bit) & ((1 << spec.width) - 1)
        return bool(field) if t == "bool" else field
    if t == "bool":
        return value_i != 0
    return value_i


def encode_value(spec: ValueSpec, value: int | float | bool | str) -> list[int]:
    """Registers to write for a whole value (not for a bit field: see ``merge_bits``)."""
    t = spec.type
    if spec.bit is not None:
        raise CodecError("needs_merge", "a bit field is written with merge_bits")
    if t == "string":
        if not isinstance(value, str):
            raise CodecError("bad_type", "expected a string")
        try:
            data = value.encode(spec.encoding)
        except (UnicodeEncodeError, LookupError):
            raise CodecError("bad_string", f"cannot encode {value!r} as {spec.encoding}") from None
        if len(data) > 2 * spec.length:
            raise CodecError(
                "out_of_range", f"{len(data)} bytes do not fit {spec.length} registers"
            )
        data = data.ljust(2 * spec.length, b"\x00")
        return bytes_to_words(data, "BADC" if spec.order in ("BADC", "DCBA") else "ABCD")
    if isinstance(value, str):
        raise CodecError("bad_type", "expected a number")
    if t == "bool":
        return [1 if value else 0]
    if t in FLOAT_FORMATS:
        fvalue = float(value)
        if not math.isfinite(fvalue):
            raise CodecError("not_finite", f"cannot write {fvalue}")
        try:
            data = struct.pack(FLOAT_FORMATS[t], fvalue)
        except OverflowError:
            raise CodecError("out_of_range", f"{value} overflows {t}") from None
        return bytes_to_words(data, spec.order)
    if isinstance(value, float):
        if not value.is_integer():
            raise CodecError("not_integer", f"{value} is not a whole number for {t}")
        value = int(value)
    ivalue = int(value)
    if t in ("bcd16", "bcd32"):
        return bytes_to_words(encode_bcd(ivalue, 2 * TYPE_REGISTERS[t]), spec.order)
    try:
        data = struct.pack(INT_FORMATS[t], ivalue)
    except struct.error:
        raise CodecError("out_of_range", f"{ivalue} does not fit {t}") from None
    return bytes_to_words(data, spec.order)


def merge_bits(spec: ValueSpec, current: Sequence[int], value: int | bool) -> list[int]:
    """Read-modify-write of a bit field: ``current`` registers with the field replaced."""
    if spec.bit is None:
        raise CodecError("no_bit", "merge_bits needs a bit field")
    ivalue = int(value)
    if not 0 <= ivalue < (1 << spec.width):
        raise CodecError("out_of_range", f"{ivalue} does not fit {spec.width} bit(s)")
    data = words_to_bytes(current, spec.order)
    whole = int.from_bytes(data, "big")
    mask = ((1 << spec.width) - 1) << spec.bit
    whole = (whole & ~mask) | (ivalue << spec.bit)
    return bytes_to_words(whole.to_bytes(len(data), "big"), spec.order)


# --------------------------------------------------------------------------- PDUs


def build_read(table: str, start: int, count: int) -> bytes:
    fc = READ_FC[table]
    limit = MAX_READ_BITS if table in BIT_TABLES else MAX_READ_REGISTERS
    if not 1 <= count <= limit or not 0 <= start or start + count > 0x10000:
        raise CodecError("bad_request", f"cannot read {count} from {table} {start}")
    return struct.pack(">BHH", fc, start, count)


def build_write_coil(address: int, value: bool) -> bytes:
    return struct.pack(">BHH", 5, address, 0xFF00 if value else 0x0000)


def build_write_register(address: int, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise CodecError("out_of_range", f"{value} is not a register value")
    return struct.pack(">BHH", 6, address, value)


def build_write_coils(address: int, values: Sequence[bool]) -> bytes:
    n = len(values)
    if not 1 <= n <= MAX_WRITE_BITS:
        raise CodecError("bad_request", f"cannot write {n} coils")
    packed = pack_bits(values)
    return struct.pack(">BHHB", 15, address, n, len(packed)) + packed


def build_write_registers(address: int, values: Sequence[int]) -> bytes:
    n = len(values)
    if not 1 <= n <= MAX_WRITE_REGISTERS:
        raise CodecError("bad_request", f"cannot write {n} registers")
    for v in values:
        if not 0 <= v <= 0xFFFF:
            raise CodecError("out_of_range", f"{v} is not a register value")
    return struct.pack(f">BHHB{n}H", 16, address, n, 2 * n, *values)


def pack_bits(values: Sequence[bool]) -> bytes:
    out = bytearray((len(values) + 7) // 8)
    for i, v in enumerate(values):
        if v:
            out[i // 8] |= 1 << (i % 8)
    return bytes(out)


def unpack_bits(data: bytes, count: int) -> list[bool]:
    return [bool(data[i // 8] >> (i % 8) & 1) for i in range(count)]


def parse_response(request: bytes, pdu: bytes) -> list[int] | list[bool] | None:
    """Check ``pdu`` answers ``request``; return registers / bits read (None for writes).

    Raises ``ModbusExceptionResponse`` for an exception answer and ``MalformedFrame`` for
    anything that does not fit the request (wrong function, byte count or echo)."""
    if not pdu:
        raise MalformedFrame("malformed", "empty response")
    fc = request[0]
    if pdu[0] == fc | 0x80:
        if len(pdu) != 2:
            raise MalformedFrame("malformed", f"exception response of {len(pdu)} bytes")
        raise ModbusExceptionResponse(fc, pdu[1])
    if pdu[0] != fc:
        raise MalformedFrame("wrong_function", f"asked function {fc}, answer has {pdu[0]}")
    if fc in (1, 2, 3, 4):
        _, count = struct.unpack(">HH", request[1:5])
        if len(pdu) < 2:
            raise MalformedFrame("malformed", "no byte count")
        nbytes = pdu[1]
        want = (count + 7) // 8 if fc in (1, 2) else 2 * count
        if nbytes != want or len(pdu) != 2 + nbytes:
            raise MalformedFrame(
                "bad_length", f"expected {want} data bytes, byte count {nbytes}, got {len(pdu) - 2}"
            )
        data = pdu[2:]
        if fc in (1, 2):
            return unpack_bits(data, count)
        return list(struct.unpack(f">{count}H", data))
    if fc in (5, 6, 15, 16):
        if pdu != request[:5]:
            raise MalformedFrame("bad_echo", f"write echo {pdu.hex()} != {request[:5].hex()}")
        return None
    raise MalformedFrame("wrong_function", f"unsupported function {fc}")


def expected_response_length(request: bytes) -> int:
    """Length of the normal response PDU to ``request``."""
    fc = request[0]
    if fc in (1, 2, 3, 4):
        count = int.from_bytes(request[3:5], "big")
        return 2 + ((count + 7) // 8 if fc in (1, 2) else 2 * count)
    return 5


# --------------------------------------------------------------------------- framing


def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """Modbus CRC-16 (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes) -> bytes:
    body = bytes([unit]) + pdu
    return body + crc16(body).to_bytes(2, "little")


def mbap_frame(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid & 0xFFFF, 0, len(pdu) + 1, unit) + pdu


def mbap_header(header: bytes) -> tuple[int, int, int, int]:
    """(transaction id, protocol id, length, unit) of a 7-byte MBAP header."""
    if len(header) != 7:
        raise MalformedFrame("malformed", "short MBAP header")
    tid, proto, length, unit = struct.unpack(">HHHB", header)
    if proto != 0:
        raise MalformedFrame("bad_protocol", f"MBAP protocol id {proto}")
    if not 2 <= length <= 254:
        raise MalformedFrame("bad_length", f"MBAP length {length}")
    return tid, proto, length, unit


@dataclass(frozen=True, slots=True)
class RtuScan:
    """Outcome of looking for the answer to a request in received RTU bytes."""

    status: str  # "frame" | "need_more" | "crc"
    skip: int = 0  # bytes before the frame that belong to nothing (discarded)
    length: int = 0  # frame length (when status is frame or crc)
    pdu: bytes = b""


def rtu_find_response(buf: bytes, unit: int, request: bytes) -> RtuScan:
    """Find the response to ``request`` from ``unit`` in ``buf``.

    Bytes before a plausible start (the unit id followed by the request's function code or
    its exception code) are skipped. The frame length is known from the request, so a frame
    is complete or not; a complete frame with a wrong CRC gives ``crc``."""
    fc = request[0]
    normal = 1 + expected_response_length(request) + 2
    i = 0
    n = len(buf)
    while i < n:
        if buf[i] == unit and (i + 1 >= n or buf[i + 1] in (fc, fc | 0x80)):
            if i + 1 >= n:
                return RtuScan("need_more", skip=i)
            length = 5 if buf[i + 1] == fc | 0x80 else normal
            if n - i < length:
                return RtuScan("need_more", skip=i)
            frame = buf[i : i + length]
            if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                return RtuScan("crc", skip=i, length=length)
            return RtuScan("frame", skip=i, length=length, pdu=bytes(frame[1:-2]))
        i += 1
    return RtuScan("need_more", skip=n)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True, slots=True)
class Span:
    """One point's footprint: ``count`` registers or bits from ``offset`` in ``table``."""

    key: str
    table: str
    offset: int
    count: int


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request covering several points."""

    table: str
    start: int
    count: int
    members: tuple[Span, ...]

    @property
    def fc(self) -> int:
        return READ_FC[self.table]


def plan_reads(
    spans: Iterable[Span],
    *,
    max_registers: int = MAX_READ_REGISTERS,
    max_bits: int = MAX_READ_BITS,
    max_gap: int = 0,
    max_bit_gap: int | None = None,
) -> list[ReadBlock]:
    """Coalesce point spans into the fewest read requests.

    Spans of the same table are merged while the request stays within ``max_registers`` /
    ``max_bits`` and the hole between two spans is at most ``max_gap`` registers
    (``max_bit_gap`` bits, default 16 x ``max_gap``). Overlapping spans share a request.
    A span longer than the limit cannot be read and raises ``CodecError``.
    """
    if not 1 <= max_registers <= MAX_READ_REGISTERS or not 1 <= max_bits <= MAX_READ_BITS:
        raise CodecError("bad_limits", "request limits out of range")
    bit_gap = max_gap * 16 if max_bit_gap is None else max_bit_gap
    by_table: dict[str, list[Span]] = {}
    for s in spans:
        by_table.setdefault(s.table, []).append(s)
    blocks: list[ReadBlock] = []
    for table in TABLES:
        items = sorted(by_table.get(table, []), key=lambda s: (s.offset, s.count, s.key))
        if not items:
            continue
        limit = max_bits if table in BIT_TABLES else max_registers
        gap = bit_gap if table in BIT_TABLES else max_gap
        start = end = -1
        members: list[Span] = []
        for s in items:
            if s.count > limit:
                raise CodecError(
                    "too_long", f"{s.key} needs {s.count} {table} items, limit {limit}"
                )
            s_end = s.offset + s.count
            if members and s.offset - end <= gap and max(end, s_end) - start <= limit:
                end = max(end, s_end)
                members.append(s)
                continue
            if members:
                blocks.append(ReadBlock(table, start, end - start, tuple(members)))
            start, end, members = s.offset, s_end, [s]
        blocks.append(ReadBlock(table, start, end - start, tuple(members)))
    return blocks


def slice_block(block: ReadBlock, data: Sequence[int] | Sequence[bool], span: Span) -> list[int]:
    """The registers/bits of ``span`` out of the data read for ``block``."""
    lo = span.offset - block.start
    return [int(x) for x in data[lo : lo + span.count]]


def parse_units(text: str) -> list[int]:
    """``"1-5,9,12-13"`` -> [1, 2, 3, 4, 5, 9, 12, 13] (unit ids 0..255)."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo = int(lo_s)
            hi = int(hi_s) if sep else lo
        except ValueError:
            raise CodecError("bad_units", f"expected unit ids like 1-247, found {part!r}") from None
        if not 0 <= lo <= hi <= 255:
            raise CodecError("bad_units", f"unit ids must be 0..255 ascending, found {part!r}")
        out.extend(range(lo, hi + 1))
    return sorted(set(out))
