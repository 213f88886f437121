"""Codec: byte vectors for every type and order, malformed input, requests and answers,
failure naming, planning,
property tests for round trips. pymodbus serves as an independent oracle where it has one."""

from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import DecodePDU, ModbusPDU

from drivers.modbus import codec
from drivers.modbus.client import issue
from drivers.modbus.codec import CodecError, ReadBlock, Span, ValueSpec


def words(hexstr: str) -> list[int]:
    data = bytes.fromhex(hexstr.replace(" ", ""))
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def dec(type_: str, order: str, hexstr: str, **kw: object) -> object:
    spec = ValueSpec("holding", 0, type_, order, **kw)  # type: ignore[arg-type]
    return codec.decode_registers(spec, words(hexstr))


# The value 0x01020304 / 1.0f / etc. as each order puts it on the wire.
VECTORS_32 = {
    "ABCD": "0102 0304",
    "DCBA": "0403 0201",
    "BADC": "0201 0403",
    "CDAB": "0304 0102",
}


@pytest.mark.parametrize("order,wire", VECTORS_32.items())
def test_uint32_every_order(order: str, wire: str) -> None:
    assert dec("uint32", order, wire) == 0x01020304


@pytest.mark.parametrize(
    "order,wire",
    {"ABCD": "3F80 0000", "DCBA": "0000 803F", "BADC": "803F 0000", "CDAB": "0000 3F80"}.items(),
)
def test_float32_every_order(order: str, wire: str) -> None:
    assert dec("float32", order, wire) == 1.0


@pytest.mark.parametrize(
    "order,wire",
    {
        "ABCD": "0102 0304 0506 0708",
        "DCBA": "0807 0605 0403 0201",
        "BADC": "0201 0403 0605 0807",
        "CDAB": "0708 0506 0304 0102",
    }.items(),
)
def test_uint64_every_order(order: str, wire: str) -> None:
    assert dec("uint64", order, wire) == 0x0102030405060708


@pytest.mark.parametrize(
    "type_,order,wire,value",
    [
        ("int16", "ABCD", "FFFE", -2),
        ("int16", "BADC", "FEFF", -2),
        ("int16", "DCBA", "FEFF", -2),
        ("int16", "CDAB", "FFFE", -2),  # word swap means nothing for one register
        ("uint16", "ABCD", "FFFE", 65534),
        ("int32", "ABCD", "FFFF FFFE", -2),
        ("int32", "CDAB", "FFFE FFFF", -2),
        ("int64", "ABCD", "FFFF FFFF FFFF FF85", -123),
        ("int64", "DCBA", "85FF FFFF FFFF FFFF", -123),
        ("float64", "ABCD", "4009 21FB 5444 2D18", math.pi),
        ("float64", "CDAB", "2D18 5444 21FB 4009", math.pi),
        ("float32", "ABCD", "C2F7 0000", -123.5),
        ("bcd16", "ABCD", "2301", 2301),
        ("bcd16", "BADC", "0123", 2301),
        ("bcd32", "ABCD", "0123 4567", 1234567),
        ("bcd32", "CDAB", "4567 0123", 1234567),
        ("bool", "ABCD", "0000", False),
        ("bool", "ABCD", "0100", True),
    ],
)
def test_vectors(type_: str, order: str, wire: str, value: object) -> None:
    assert dec(type_, order, wire) == value


def test_strings() -> None:
    assert dec("string", "ABCD", "4131 3233 3435 0000 0000", length=5) == "A12345"
    assert dec("string", "BADC", "3141 3332 3534 0000", length=4) == "A12345"
    assert dec("string", "ABCD", "5550", length=1) == "UP"
    assert dec("string", "ABCD", "4142 2020", length=2) == "AB"  # space padding trimmed
    with pytest.raises(CodecError) as e:
        dec("string", "ABCD", "FF41", length=1)
    assert e.value.reason == "bad_string"


def test_bits_and_fields() -> None:
    assert dec("bool", "ABCD", "0008", bit=3) is True
    assert dec("bool", "ABCD", "0008", bit=2) is False
    assert dec("bool", "BADC", "0100", bit=0) is True  # byte-swapped status word
    assert dec("bool", "BADC", "0001", bit=8) is True
    assert dec("uint16", "ABCD", "0030", bit=4, width=4) == 3
    assert dec("uint32", "ABCD", "8000 0000", bit=31) == 1
    assert dec("uint32", "CDAB", "0000 8000", bit=31) == 1


@pytest.mark.parametrize(
    "type_,wire,reason",
    [
        ("bcd16", "12A4", "bad_bcd"),
        ("bcd32", "0000 00F1", "bad_bcd"),
        ("float32", "7FC0 0000", "not_finite"),  # NaN
        ("float32", "7F80 0000", "not_finite"),  # +inf
        ("float64", "FFF0 0000 0000 0000", "not_finite"),
    ],
)
def test_malformed_values(type_: str, wire: str, reason: str) -> None:
    with pytest.raises(CodecError) as e:
        dec(type_, "ABCD", wire)
    assert e.value.reason == reason


def test_wrong_register_count_is_an_error() -> None:
    with pytest.raises(CodecError):
        codec.decode_registers(ValueSpec("holding", 0, "uint32"), [1])
    with pytest.raises(CodecError):
        codec.words_to_bytes([70000], "ABCD")


@pytest.mark.parametrize(
    "spec,why",
    [
        (ValueSpec("coil", 0, "uint16"), "single bits"),
        (ValueSpec("holding", 0, "float32", bit=1), "no bits"),
        (ValueSpec("holding", 0, "uint16", bit=15, width=2), "does not fit"),
        (ValueSpec("holding", 65535, "uint32"), "past register"),
        (ValueSpec("holding", 0, "uint16", width=3), "needs bit"),
        (ValueSpec("holding", 0, "string", length=126), "string length"),
        (ValueSpec("input", 0, "uint16", order="XYZW"), "order"),
    ],
)
def test_check_spec(spec: ValueSpec, why: str) -> None:
    msg = codec.check_spec(spec)
    assert msg is not None and why in msg


# ------------------------------------------------------------------ oracle: pymodbus

ORACLE_TYPES = {
    "int16": ModbusClientMixin.DATATYPE.INT16,
    "uint16": ModbusClientMixin.DATATYPE.UINT16,
    "int32": ModbusClientMixin.DATATYPE.INT32,
    "uint32": ModbusClientMixin.DATATYPE.UINT32,
    "int64": ModbusClientMixin.DATATYPE.INT64,
    "uint64": ModbusClientMixin.DATATYPE.UINT64,
    "float32": ModbusClientMixin.DATATYPE.FLOAT32,
    "float64": ModbusClientMixin.DATATYPE.FLOAT64,
}


@given(
    data=st.data(),
    type_=st.sampled_from(sorted(ORACLE_TYPES)),
    order=st.sampled_from(["ABCD", "CDAB"]),
)
def test_decoding_agrees_with_pymodbus(data: st.DataObject, type_: str, order: str) -> None:
    n = codec.TYPE_REGISTERS[type_]
    regs = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n))
    spec = ValueSpec("holding", 0, type_, order)
    try:
        ours = codec.decode_registers(spec, regs)
    except CodecError as exc:
        assert exc.reason == "not_finite"
        return
    theirs = ModbusClientMixin.convert_from_registers(
        regs, ORACLE_TYPES[type_], word_order="big" if order == "ABCD" else "little"
    )
    if type_ == "float32":  # ours without the binary noise, but the very same float32
        assert isinstance(ours, float) and isinstance(theirs, float)
        assert struct.pack(">f", ours) == struct.pack(">f", theirs)
    else:
        assert ours == theirs


@pytest.mark.parametrize(
    ("wire", "value"),
    [("3DF5 C28F", 0.12), ("4053 3333", 3.3), ("BDCC CCCD", -0.1), ("4B3C 614E", 12345678.0),
     ("449A 5225", 1234.567), ("3DFC D6EA", 0.12345679)],
)
def test_float32_without_binary_noise(wire: str, value: float) -> None:
    assert dec("float32", "ABCD", wire) == value
    raw = struct.unpack(">f", bytes.fromhex(wire.replace(" ", "")))[0]
    assert raw != value or value in (12345678.0,)  # what a plain decode gives


@given(st.binary(min_size=0, max_size=300))
def test_crc_agrees_with_pymodbus(data: bytes) -> None:
    ours = codec.crc16(data)
    theirs = FramerRTU.compute_CRC(data)  # pymodbus returns it byte-swapped for the wire
    assert ours.to_bytes(2, "little") == theirs.to_bytes(2, "big")


def test_crc_known_vector() -> None:
    # Read holding registers unit 1, start 0, count 10: 01 03 00 00 00 0A C5 CD
    assert codec.crc16(bytes.fromhex("01030000000A")).to_bytes(2, "little").hex() == "c5cd"


# ------------------------------------------------------------------ round trips

INT_RANGES = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint64": (0, 2**64 - 1),
    "bcd16": (0, 9999),
    "bcd32": (0, 99999999),
}


@given(
    data=st.data(), type_=st.sampled_from(sorted(INT_RANGES)), order=st.sampled_from(codec.ORDERS)
)
def test_integer_round_trip(data: st.DataObject, type_: str, order: str) -> None:
    lo, hi = INT_RANGES[type_]
    value = data.draw(st.integers(lo, hi))
    spec = ValueSpec("holding", 0, type_, order)
    regs = codec.encode_value(spec, value)
    assert len(regs) == spec.count
    assert codec.decode_registers(spec, regs) == value


@given(
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    order=st.sampled_from(codec.ORDERS),
)
def test_float32_round_trip(value: float, order: str) -> None:
    spec = ValueSpec("holding", 0, "float32", order)
    back = codec.decode_registers(spec, codec.encode_value(spec, value))
    assert isinstance(back, float) and struct.pack(">f", back) == struct.pack(">f", value)  # the same float32


@given(value=st.floats(allow_nan=False, allow_infinity=False), order=st.sampled_from(codec.ORDERS))
def test_float64_round_trip(value: float, order: str) -> None:
    spec = ValueSpec("holding", 0, "float64", order)
    assert codec.decode_registers(spec, codec.encode_value(spec, value)) == value


@given(
    text=st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=20),
    order=st.sampled_from(codec.ORDERS),
)
def test_string_round_trip(text: str, order: str) -> None:
    spec = ValueSpec("holding", 0, "string", order, length=10)
    assert codec.decode_registers(spec, codec.encode_value(spec, text)) == text


@given(
    current=st.lists(st.integers(0, 0xFFFF), min_size=2, max_size=2),
    bit=st.integers(0, 28),
    width=st.integers(1, 4),
    data=st.data(),
    order=st.sampled_from(codec.ORDERS),
)
def test_merge_bits_changes_only_the_field(
    current: list[int], bit: int, width: int, data: st.DataObject, order: str
) -> None:
    value = data.draw(st.integers(0, 2**width - 1))
    spec = ValueSpec("holding", 0, "uint32", order, bit=bit, width=width)
    merged = codec.merge_bits(spec, current, value)
    assert codec.decode_registers(spec, merged) == value
    whole = ValueSpec("holding", 0, "uint32", order)
    before = int(codec.decode_registers(whole, current))
    after = int(codec.decode_registers(whole, merged))
    mask = (2**width - 1) << bit
    assert before & ~mask == after & ~mask


@pytest.mark.parametrize(
    "type_,value,reason",
    [
        ("int16", 40000, "out_of_range"),
        ("uint16", -1, "out_of_range"),
        ("uint32", 2**32, "out_of_range"),
        ("bcd16", 10000, "out_of_range"),
        ("bcd16", -1, "out_of_range"),
        ("int16", 1.5, "not_integer"),
        ("float32", 1e39, "out_of_range"),
        ("uint16", "x", "bad_type"),
    ],
)
def test_encode_rejects(type_: str, value: object, reason: str) -> None:
    with pytest.raises(CodecError) as e:
        codec.encode_value(ValueSpec("holding", 0, type_), value)  # type: ignore[arg-type]
    assert e.value.reason == reason


# ------------------------------------------------------------------ requests on the wire


class _Recorder(ModbusClientMixin[ModbusPDU]):
    """A pymodbus client surface that returns the request PDU instead of sending it."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    def execute(self, no_response_expected: bool, request: ModbusPDU) -> ModbusPDU:
        return request


def rtu_wire(req: codec.Request, unit: int) -> str:
    pdu = issue(_Recorder(), unit, req)
    return FramerRTU(DecodePDU(False)).buildFrame(pdu).hex()


def pdu_hex(req: codec.Request) -> str:
    return rtu_wire(req, 1)[2:-4]


def test_requests_become_the_standard_bytes_through_pymodbus() -> None:
    # Spec examples (Modbus Application Protocol V1.1b3, section 6) as PDUs.
    assert pdu_hex(codec.read_request("coil", 19, 19)) == "0100130013"
    assert pdu_hex(codec.read_request("discrete", 196, 22)) == "0200c40016"
    assert pdu_hex(codec.read_request("holding", 107, 3)) == "03006b0003"
    assert pdu_hex(codec.read_request("input", 8, 1)) == "0400080001"
    assert pdu_hex(codec.write_coil_request(172, True)) == "0500acff00"
    assert pdu_hex(codec.write_coil_request(172, False)) == "0500ac0000"
    assert pdu_hex(codec.write_register_request(1, 3)) == "0600010003"
    bits = [True, False, True, True, False, False, True, True, True, False]
    assert pdu_hex(codec.write_coils_request(19, bits)) == "0f0013000a02cd01"
    assert pdu_hex(codec.write_registers_request(1, [0x000A, 0x0102])) == "100001000204000a0102"
    # A whole RTU frame: read holding unit 1, start 0, count 10 -> CRC C5 CD.
    assert rtu_wire(codec.read_request("holding", 0, 10), 1) == "01030000000ac5cd"


def test_requests_validate() -> None:
    for bad in (("holding", 0, 126), ("coil", 0, 2001), ("holding", 65535, 2), ("input", 0, 0)):
        with pytest.raises(CodecError):
            codec.read_request(*bad)
    with pytest.raises(CodecError) as e:
        codec.write_register_request(1, 70000)
    assert e.value.reason == "out_of_range"
    with pytest.raises(CodecError):
        codec.write_registers_request(0, [])
    with pytest.raises(CodecError):
        codec.write_registers_request(65530, [0] * 10)
    with pytest.raises(CodecError):
        codec.write_coils_request(0, [True] * 1969)
    assert codec.read_request("holding", 65535, 1).count == 1


# ------------------------------------------------------------------ answers


def test_check_answer_reads() -> None:
    req = codec.read_request("holding", 107, 3)
    assert codec.check_answer(req, 3, [0x022B, 0, 0x64]) == [0x022B, 0, 0x64]
    req = codec.read_request("coil", 19, 10)
    padded = [True, False, True, True, False, False, True, True, True, False, False, False]
    padded += [False] * 4
    assert codec.check_answer(req, 1, padded) == padded[:10]


@pytest.mark.parametrize(
    "req,fc,data,echo,reason",
    [
        (codec.read_request("holding", 107, 3), 3, [1, 2], None, "bad_length"),
        (codec.read_request("holding", 107, 3), 3, [1, 2, 3, 4], None, "bad_length"),
        (codec.read_request("holding", 107, 3), 4, [1, 2, 3], None, "wrong_function"),
        (codec.read_request("coil", 0, 10), 1, [True] * 8, None, "bad_length"),
        (codec.read_request("coil", 0, 10), 1, [True] * 24, None, "bad_length"),
        (codec.write_register_request(1, 3), 6, [4], (1, None), "bad_echo"),
        (codec.write_register_request(1, 3), 6, [3], (2, None), "bad_echo"),
        (codec.write_coil_request(1, True), 5, [False], (1, None), "bad_echo"),
        (codec.write_registers_request(1, [1, 2]), 16, [], (1, 3), "bad_echo"),
    ],
)
def test_check_answer_rejects(
    req: codec.Request,
    fc: int,
    data: list[int],
    echo: tuple[int, int | None] | None,
    reason: str,
) -> None:
    addr, count = echo or (None, None)
    with pytest.raises(codec.MalformedFrame) as e:
        codec.check_answer(req, fc, data, echo_address=addr, echo_count=count)
    assert e.value.reason == reason


def test_check_answer_writes() -> None:
    assert codec.check_answer(codec.write_register_request(1, 3), 6, [3], echo_address=1) is None
    assert codec.check_answer(codec.write_coil_request(9, True), 5, [True], echo_address=9) is None
    req = codec.write_registers_request(1, [1, 2])
    assert codec.check_answer(req, 16, [], echo_address=1, echo_count=2) is None


@pytest.mark.parametrize(
    "answer,reason",
    [
        ("", "malformed"),
        ("0306022b0000", "bad_length"),  # byte count says 6, 4 bytes follow
        ("0304022b0000", "bad_length"),  # 2 registers where 3 were asked
        ("0306022b0000006400", "bad_length"),  # trailing byte
        ("0406000000000000", "wrong_function"),
        ("83", "malformed"),  # exception without a code
        ("830201", "malformed"),
        ("8302", ""),
        ("0306022b00000064", ""),
    ],
)
def test_check_pdu(answer: str, reason: str) -> None:
    req = codec.read_request("holding", 107, 3)
    assert codec.check_pdu(req, bytes.fromhex(answer)) == reason


@pytest.mark.parametrize(
    "code,reason",
    [
        (1, "exception_01_illegal_function"),
        (2, "exception_02_illegal_data_address"),
        (4, "exception_04_device_failure"),
        (6, "exception_06_device_busy"),
        (77, "exception_other"),
    ],
)
def test_exception_reasons(code: int, reason: str) -> None:
    e = codec.ModbusExceptionResponse(4, code)
    assert e.code == code and e.reason == reason


# ------------------------------------------------------------------ naming failures


def rtu(unit: int, pdu_hex_: str) -> bytes:
    body = bytes((unit,)) + bytes.fromhex(pdu_hex_)
    return body + codec.crc16(body).to_bytes(2, "little")


def test_classify_rtu() -> None:
    req = codec.read_request("holding", 0, 2)
    good = rtu(5, "0304000a000b")
    cls = codec.classify_unanswered
    assert cls("rtu", b"", 5, req) == "timeout"
    assert cls("rtu", good[:5], 5, req) == "truncated"
    assert cls("rtu", b"\x05", 5, req) == "truncated"
    bad = good[:-1] + bytes((good[-1] ^ 1,))
    assert cls("rtu", bad, 5, req) == "crc"
    assert cls("rtu", b"\x00\xff" + bad, 5, req) == "crc"  # noise before the frame
    exc_bad = rtu(5, "8302")[:-1] + b"\x00"
    assert cls("rtu", exc_bad, 5, req) == "crc"
    assert cls("rtu", rtu(5, "0302000a000b"), 5, req) == "bad_length"
    assert cls("rtu", rtu(6, "0304000a000b"), 5, req) == "malformed"  # another unit
    assert cls("rtu", b"garbage!", 5, req) == "malformed"
    # fail-fast only for a complete, unusable answer
    assert codec.rtu_answer_failed(bad, 5, req) == "crc"
    assert codec.rtu_answer_failed(good, 5, req) == ""
    assert codec.rtu_answer_failed(good[:5], 5, req) == ""
    assert codec.rtu_answer_failed(rtu(5, "8302"), 5, req) == ""


def test_classify_mbap() -> None:
    req = codec.read_request("holding", 0, 2)
    cls = codec.classify_unanswered
    frame = bytes.fromhex("1234000000070703" + "04000a000b")
    assert cls("socket", frame[:6], 7, req) == "truncated"
    assert cls("socket", frame[:10], 7, req) == "truncated"
    assert cls("socket", bytes.fromhex("1234000100070703" + "04000a000b"), 7, req) == (
        "bad_protocol"
    )
    assert cls("socket", bytes.fromhex("1234000000000703"), 7, req) == "bad_length"
    corrupt = bytes.fromhex("1234000000070703" + "05000a000b")  # byte count 5 for 4 bytes
    assert cls("socket", corrupt, 7, req) == "bad_length"
    assert cls("socket", frame, 7, req) == "malformed"  # well formed but not taken


REASONS = {
    "timeout",
    "crc",
    "truncated",
    "bad_length",
    "wrong_function",
    "bad_protocol",
    "malformed",
}


@given(st.binary(max_size=80), st.sampled_from(["rtu", "socket"]), st.integers(0, 255))
def test_classify_never_crashes(noise: bytes, framing: str, unit: int) -> None:
    req = codec.read_request("input", 0, 3)
    assert codec.classify_unanswered(framing, noise, unit, req) in REASONS
    assert codec.rtu_answer_failed(noise, unit, req) in {"", "crc", "bad_length", "wrong_function"}


@given(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=20), st.integers(1, 247))
def test_valid_rtu_answer_never_fails_fast(regs: list[int], unit: int) -> None:
    req = codec.read_request("holding", 0, len(regs))
    answer = rtu(unit, "03" + f"{2 * len(regs):02x}" + "".join(f"{r:04x}" for r in regs))
    assert codec.rtu_answer_failed(answer, unit, req) == ""
    assert codec.check_pdu(req, answer[1:-2]) == ""


# ------------------------------------------------------------------ planning


def spans(*items: tuple[str, str, int, int]) -> list[Span]:
    return [Span(*i) for i in items]


def test_plan_coalesces_per_table() -> None:
    blocks = codec.plan_reads(
        spans(
            ("a", "input", 0, 1),
            ("b", "input", 1, 2),
            ("c", "holding", 10, 1),
            ("d", "coil", 0, 1),
            ("e", "coil", 3, 1),
        ),
        max_gap=0,
    )
    assert [(b.table, b.start, b.count) for b in blocks] == [
        ("coil", 0, 1),
        ("coil", 3, 1),
        ("input", 0, 3),
        ("holding", 10, 1),
    ]
    blocks = codec.plan_reads(spans(("d", "coil", 0, 1), ("e", "coil", 3, 1)), max_gap=1)
    assert [(b.start, b.count) for b in blocks] == [(0, 4)]  # bit gap = 16 x register gap


def test_plan_gap_and_limits() -> None:
    s = spans(("a", "holding", 0, 2), ("b", "holding", 5, 2), ("c", "holding", 120, 10))
    assert [(b.start, b.count) for b in codec.plan_reads(s, max_gap=2)] == [
        (0, 2),
        (5, 2),
        (120, 10),
    ]
    assert [(b.start, b.count) for b in codec.plan_reads(s, max_gap=3)] == [(0, 7), (120, 10)]
    assert [(b.start, b.count) for b in codec.plan_reads(s, max_gap=125)] == [
        (0, 7),
        (120, 10),
    ]  # 130 > 125
    # a device that rejects long reads: 6 registers at most per request
    assert [(b.start, b.count) for b in codec.plan_reads(s[:2], max_gap=3, max_registers=6)] == [
        (0, 2),
        (5, 2),
    ]


def test_plan_overlapping_and_too_long() -> None:
    blocks = codec.plan_reads(
        spans(("w", "holding", 10, 2), ("bit", "holding", 10, 1), ("x", "holding", 11, 1))
    )
    assert len(blocks) == 1 and (blocks[0].start, blocks[0].count) == (10, 2)
    assert {m.key for m in blocks[0].members} == {"w", "bit", "x"}
    with pytest.raises(CodecError):
        codec.plan_reads(spans(("s", "holding", 0, 20)), max_registers=16)


@given(
    st.lists(
        st.tuples(st.sampled_from(codec.TABLES), st.integers(0, 5000), st.integers(1, 4)),
        min_size=0,
        max_size=60,
    ),
    st.integers(1, 125),
    st.integers(0, 20),
)
def test_plan_properties(items: list[tuple[str, int, int]], max_regs: int, gap: int) -> None:
    ss = [
        Span(f"p{i}", t, o, c if t not in codec.BIT_TABLES else 1)
        for i, (t, o, c) in enumerate(items)
    ]
    ss = [s for s in ss if s.count <= max_regs]
    blocks = codec.plan_reads(ss, max_registers=max_regs, max_gap=gap)
    # every span is covered by exactly one block of its table, and limits hold
    seen = [m.key for b in blocks for m in b.members]
    assert sorted(seen) == sorted(s.key for s in ss)
    for b in blocks:
        limit = codec.MAX_READ_BITS if b.table in codec.BIT_TABLES else max_regs
        assert 1 <= b.count <= limit
        for m in b.members:
            assert (
                m.table == b.table
                and b.start <= m.offset
                and m.offset + m.count <= b.start + b.count
            )
    # never more requests than spans, and a zero-gap plan never reads a register no span needs
    assert len(blocks) <= max(1, len(ss)) or not ss
    if gap == 0:
        for b in blocks:
            covered: set[int] = set()
            for m in b.members:
                covered.update(range(m.offset, m.offset + m.count))
            assert covered == set(range(b.start, b.start + b.count))


def test_slice_block() -> None:
    block = ReadBlock("holding", 10, 4, ())
    assert codec.slice_block(block, [1, 2, 3, 4], Span("x", "holding", 12, 2)) == [3, 4]
    coils = ReadBlock("coil", 0, 3, ())
    got = codec.slice_block(coils, [True, False, True], Span("y", "coil", 2, 1))
    assert got == [1] and type(got[0]) is int


def test_parse_units() -> None:
    assert codec.parse_units("1-3, 7,9-9") == [1, 2, 3, 7, 9]
    assert codec.parse_units("1-247")[-1] == 247
    for bad in ("x", "5-1", "1-300"):
        with pytest.raises(CodecError):
            codec.parse_units(bad)


def test_struct_sanity() -> None:
    # float32 vector built independently with struct
    assert dec("float32", "ABCD", struct.pack(">f", 3.25).hex()) == 3.25


@given(
    st.integers(0, 0xFFFF),
    st.sampled_from(["int16", "uint16"]),
    st.sampled_from(["ABCD", "DCBA", "BADC", "CDAB"]),
)
def test_single_register_fast_path_matches_the_byte_decoding(w: int, t: str, order: str) -> None:
    """The one-register shortcut gives what the general byte-order decoding gives."""
    data = codec._reorder(w.to_bytes(2, "big"), order)
    want = struct.unpack(">h" if t == "int16" else ">H", data)[0]
    assert codec.decode_registers(codec.ValueSpec("holding", 0, t, order), [w]) == want


@pytest.mark.parametrize("bad", [[-1], [0x10000], [0, 0]])
def test_single_register_fast_path_rejects_malformed(bad: list[int]) -> None:
    with pytest.raises(codec.CodecError) as exc:
        codec.decode_registers(codec.ValueSpec("holding", 0, "int16"), bad)
    assert exc.value.reason == "malformed"


def test_single_register_with_unknown_order_is_refused() -> None:
    with pytest.raises(codec.CodecError) as exc:
        codec.decode_registers(codec.ValueSpec("holding", 0, "uint16", "XYZW"), [1])
    assert exc.value.reason == "bad_order"
