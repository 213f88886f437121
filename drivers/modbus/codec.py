"""Pure Modbus codec: value decoding/encoding, requests and answer checks, read planning.

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

Framing, transaction ids and the wire are pymodbus's job (``drivers/modbus/client.py``):
this module describes requests as data, checks decoded answers against them and names
what went wrong when no usable answer came (``classify_unanswered``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.errors import ReasonError
from gateway.plugin import float32_value

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


class CodecError(ReasonError, ValueError):
    """A value cannot be decoded or encoded. ``reason`` is a bounded metric label."""


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


_ORDERS: Final = frozenset({"ABCD", "DCBA", "BADC", "CDAB"})


def decode_registers(spec: ValueSpec, words: Sequence[int]) -> int | float | bool | str:
    """Decode the registers of one value (exactly ``spec.count`` of them)."""
    t = spec.type
    order = spec.order
    if (t == "uint16" or t == "int16") and spec.bit is None and len(words) == 1 and order in _ORDERS:
        # the common case, without the byte round trip: one 16-bit register
        w = words[0]
        if not 0 <= w <= 0xFFFF:
            raise CodecError("malformed", f"register value {w} out of 0..65535")
        if order == "BADC" or order == "DCBA":  # both swap the two bytes of one register
            w = ((w & 0xFF) << 8) | (w >> 8)
        return w - 0x10000 if t == "int16" and w >= 0x8000 else w
    if len(words) != spec.count:
        raise CodecError("malformed", f"expected {spec.count} registers, got {len(words)}")
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
        return float32_value(value_f) if t == "float32" else value_f
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


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Request:
    """One Modbus request as data: function code, start address, item count and, for
    writes, the register values or bits (0/1). The I/O layer hands it to pymodbus."""

    fc: int
    address: int
    count: int
    values: tuple[int, ...] = ()

    @property
    def is_read(self) -> bool:
        return self.fc in (1, 2, 3, 4)


def read_request(table: str, start: int, count: int) -> Request:
    fc = READ_FC[table]
    limit = MAX_READ_BITS if table in BIT_TABLES else MAX_READ_REGISTERS
    if not 1 <= count <= limit or not 0 <= start or start + count > 0x10000:
        raise CodecError("bad_request", f"cannot read {count} from {table} {start}")
    return Request(fc, start, count)


def write_coil_request(address: int, value: bool) -> Request:
    _check_address(address, 1)
    return Request(5, address, 1, (1 if value else 0,))


def write_register_request(address: int, value: int) -> Request:
    _check_address(address, 1)
    if not 0 <= value <= 0xFFFF:
        raise CodecError("out_of_range", f"{value} is not a register value")
    return Request(6, address, 1, (value,))


def write_coils_request(address: int, values: Sequence[bool]) -> Request:
    n = len(values)
    if not 1 <= n <= MAX_WRITE_BITS:
        raise CodecError("bad_request", f"cannot write {n} coils")
    _check_address(address, n)
    return Request(15, address, n, tuple(1 if v else 0 for v in values))


def write_registers_request(address: int, values: Sequence[int]) -> Request:
    n = len(values)
    if not 1 <= n <= MAX_WRITE_REGISTERS:
        raise CodecError("bad_request", f"cannot write {n} registers")
    _check_address(address, n)
    for v in values:
        if not 0 <= v <= 0xFFFF:
            raise CodecError("out_of_range", f"{v} is not a register value")
    return Request(16, address, n, tuple(values))


def _check_address(address: int, n: int) -> None:
    if not 0 <= address or address + n > 0x10000:
        raise CodecError("bad_request", f"address {address} (+{n}) outside 0..65535")


def check_answer(
    request: Request,
    fc: int,
    data: Sequence[int] | Sequence[bool],
    echo_address: int | None = None,
    echo_count: int | None = None,
) -> list[int] | list[bool] | None:
    """Check a decoded (non-exception) answer fits ``request``; return what was read.

    ``data`` is the registers or bits of a read answer, or for a write answer the value it
    echoes (single writes); ``echo_address``/``echo_count`` the echoed address and count.
    Bit answers come padded to whole bytes: only the requested bits are returned.
    Raises ``MalformedFrame`` (``wrong_function``, ``bad_length``, ``bad_echo``)."""
    if fc != request.fc:
        raise MalformedFrame("wrong_function", f"asked function {request.fc}, answer has {fc}")
    if request.fc in (3, 4):
        if len(data) != request.count:
            raise MalformedFrame(
                "bad_length", f"asked {request.count} registers, answer has {len(data)}"
            )
        return [int(x) for x in data]
    if request.fc in (1, 2):
        if not request.count <= len(data) < request.count + 8:
            raise MalformedFrame(
                "bad_length", f"asked {request.count} bits, answer has {len(data)}"
            )
        return [bool(x) for x in data[: request.count]]
    if echo_address != request.address:
        raise MalformedFrame(
            "bad_echo", f"write to {request.address}, answer echoes {echo_address}"
        )
    if request.fc in (5, 6):
        if [int(x) for x in data[:1]] != list(request.values):
            raise MalformedFrame(
                "bad_echo", f"wrote {list(request.values)}, answer echoes {list(data[:1])}"
            )
    elif echo_count != request.count:
        raise MalformedFrame("bad_echo", f"wrote {request.count} items, echo says {echo_count}")
    return None


def expected_response_length(request: Request) -> int:
    """Length of the normal response PDU (function code included) to ``request``."""
    if request.is_read:
        count = request.count
        return 2 + ((count + 7) // 8 if request.fc in (1, 2) else 2 * count)
    return 5


def check_pdu(request: Request, pdu: bytes) -> str:
    """Why a raw response PDU is not a usable answer to ``request`` (a reason), or ``""``."""
    if not pdu:
        return "malformed"
    if pdu[0] == request.fc | 0x80:
        return "" if len(pdu) == 2 else "malformed"
    if pdu[0] != request.fc:
        return "wrong_function"
    if request.is_read:
        want = expected_response_length(request)
        if len(pdu) < 2 or pdu[1] != want - 2 or len(pdu) != want:
            return "bad_length"
        return ""
    return "" if len(pdu) == 5 else "bad_length"


# --------------------------------------------------------------------------- diagnosis


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


def classify_unanswered(framing: str, received: bytes, unit: int, request: Request) -> str:
    """Why a request got no usable answer, judged from the bytes that arrived for it.

    The framing itself is pymodbus's job; this only names the failure for logs and metrics
    when pymodbus gave up (it reports a corrupt or incomplete answer as a plain timeout):

    * ``timeout``: nothing arrived;
    * ``crc`` (RTU): a frame of the expected length from ``unit`` with a wrong CRC;
    * ``truncated``: the start of an answer that never completed;
    * ``bad_length`` / ``wrong_function`` / ``bad_protocol``: a complete frame that does
      not fit the request;
    * ``malformed``: bytes that are no answer at all (noise, another unit's frame).
    """
    if not received:
        return "timeout"
    if framing == "socket":
        return _classify_mbap(received, request)
    return _classify_rtu(received, unit, request)


DEFINITIVE = frozenset({"crc", "bad_length", "wrong_function"})


def rtu_answer_failed(received: bytes, unit: int, request: Request) -> str:
    """RTU: the reason when ``received`` already holds a complete answer from ``unit`` that
    cannot be used (wrong CRC, wrong length or function), else ``""``. One request gets one
    answer on a serial line, so nothing better can follow: the request fails at once
    instead of waiting out its timeout."""
    reason = _classify_rtu(received, unit, request)
    return reason if reason in DEFINITIVE else ""


def _classify_mbap(buf: bytes, request: Request) -> str:
    if len(buf) < 8:
        return "truncated"
    proto = int.from_bytes(buf[2:4], "big")
    length = int.from_bytes(buf[4:6], "big")
    if proto != 0:
        return "bad_protocol"
    if not 2 <= length <= 254:
        return "bad_length"
    if len(buf) < 6 + length:
        return "truncated"
    return check_pdu(request, bytes(buf[7 : 6 + length])) or "malformed"


def _classify_rtu(buf: bytes, unit: int, request: Request) -> str:
    fc = request.fc
    normal = 1 + expected_response_length(request) + 2
    for i in range(len(buf)):
        if buf[i] != unit or (i + 1 < len(buf) and buf[i + 1] not in (fc, fc | 0x80)):
            continue
        if i + 1 >= len(buf):
            return "truncated"
        length = 5 if buf[i + 1] == fc | 0x80 else normal
        if len(buf) - i < length:
            return "truncated"
        frame = buf[i : i + length]
        if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
            return "crc"
        return check_pdu(request, bytes(frame[1:-2])) or "malformed"
    return "malformed"


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


def cover(table: str, members: Sequence[Span]) -> ReadBlock:
    """The smallest read block of ``table`` holding every one of ``members``."""
    start = min(s.offset for s in members)
    end = max(s.offset + s.count for s in members)
    return ReadBlock(table, start, end - start, tuple(members))


def split_block(block: ReadBlock) -> tuple[ReadBlock, ReadBlock] | None:
    """Two blocks that together read the members of ``block``, cut where the block bridges
    its largest unread gap (where a hole in the device's map most likely is; of equal gaps
    the one nearest the middle). ``None`` when no cut separates the members (one point, or
    points that overlap each other all along)."""
    members = sorted(block.members, key=lambda s: (s.offset, s.count, s.key))
    n = len(members)
    best: tuple[tuple[int, int], int] | None = None
    end = members[0].offset + members[0].count
    for i in range(1, n):
        s = members[i]
        if s.offset >= end:  # nothing before the cut reaches past it
            score = (s.offset - end, -abs(2 * i - n))
            if best is None or score > best[0]:
                best = (score, i)
        end = max(end, s.offset + s.count)
    if best is None:
        return None
    i = best[1]
    return cover(block.table, members[:i]), cover(block.table, members[i:])


def slice_block(block: ReadBlock, data: Sequence[int] | Sequence[bool], span: Span) -> list[int]:
    """The registers/bits of ``span`` out of the data read for ``block``."""
    lo = span.offset - block.start
    if block.table in BIT_TABLES:
        return [int(x) for x in data[lo : lo + span.count]]  # bools as 0/1
    return list(data[lo : lo + span.count])


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
