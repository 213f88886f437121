"""CJ/T 188 codec: reference vectors, both DI orders, malformed frames, properties."""

from __future__ import annotations

import random
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.cjt188 import codec
from drivers.serial.errors import FrameError, ValueFormatError
from drivers.serial.tests.fuzz import (
    EXAMPLES,
    STREAMS_PER_EXAMPLE,
    junk,
    mutate,
    overlapping_frame,
    seeds,
)

H = bytes.fromhex
ADDR = codec.address_to_wire("00000012345678")
REPLY = H("68107856341200000081161F900156341200 2C00001200 2C31012211052420 0000 8716".replace(" ", ""))


def test_request_vectors() -> None:
    assert codec.build_read(0x10, ADDR, 1) == H("FEFEFEFE68107856341200000001031F90014016")
    assert codec.build_read(0x10, ADDR, 1, di_order="printed") == H("FEFEFEFE6810785634120000000103901F014016")
    assert codec.build_read(0x10, codec.address_to_wire("00002020120218"), 0, di_order="printed") == H(
        "FEFEFEFE68101802122020000001039 01F009716".replace(" ", ""))
    assert codec.build_read(0x10, codec.address_to_wire("78330011223344"), 0) == H(
        "FEFEFEFE681044332211003378 01031F900080 16".replace(" ", ""))
    assert codec.build_read_address(0) == H("FEFEFEFE68AAAAAAAAAAAAAAAA0303810A004916")
    assert codec.build_valve(0x10, ADDR, False, 2, di_order="printed", preamble=0) == H("68107856341200000004 04A01702 99E616".replace(" ", ""))


def test_water_reply_worked_example() -> None:
    frame = codec.decode_frame(REPLY)
    reply = codec.parse_reply(frame, codec.C_READ, codec.DI_CURRENT)
    assert isinstance(reply, codec.Reply) and reply.ser == 1
    fields = codec.decode_current(reply.payload, "water")
    assert fields["volume"] == 1234.56 and fields["volume_settlement"] == 1200.0
    assert fields["meter_time"] == "2024-05-11T22:01:31"
    assert fields["valve_open"] is True and fields["battery_low"] is False


def test_public_capture_printed_order_no_clock() -> None:
    wire = H("FEFEFEFE6810180212202000008116901F0000020000 2C0002 00002C00000000000000 00FF 8516".replace(" ", ""))
    frame = codec.FrameScanner().feed(wire)[0]
    reply = codec.parse_reply(frame, codec.C_READ, codec.DI_CURRENT)
    assert isinstance(reply, codec.Reply)
    fields = codec.decode_current(reply.payload, "water")
    assert fields["volume"] == 2.0
    assert isinstance(fields["meter_time"], ValueFormatError)  # no clock: all zeros
    assert fields["status_raw"] == 0xFF00


def test_abnormal_reply_and_variants() -> None:
    err = codec.parse_reply(codec.decode_frame(H("68107856341200000 0C10301010 05216".replace(" ", ""))), 1, 0x901F)
    assert isinstance(err, codec.ErrorReply) and err.status.valve == "closed" and err.ser == 1
    closed_low = REPLY[:-4] + H("0500") + H("8C16")
    fields = codec.decode_current(codec.parse_reply(codec.decode_frame(closed_low), 1, 0x901F).payload, "water")  # type: ignore[union-attr]
    assert fields["valve_open"] is False and fields["battery_low"] is True


def test_read_address_replies() -> None:
    f = codec.decode_frame(H("68101802122020000083 03810A00F516".replace(" ", "")))
    assert f.address_text == "00002020120218" and f.meter_type == 0x10 and f.di_matches(codec.DI_ADDRESS)
    f2 = codec.decode_frame(H("6810010000050800008303810A009716"))
    assert f2.address_text == "00000805000001"


def test_published_reply_with_wrong_checksum_is_rejected() -> None:
    bad = REPLY[:-2] + bytes([(REPLY[-2] + 1) & 0xFF]) + b"\x16"
    with pytest.raises(FrameError, match="checksum"):
        codec.decode_frame(bad)
    assert codec.FrameScanner().feed(bad) == []


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (REPLY[:-1] + b"\x17", "end"),
        (REPLY[:10] + b"\x17" + REPLY[11:], "length"),
        (b"\x69" + REPLY[1:], "start"),
        (REPLY[:12], "short"),
    ],
)
def test_malformed(wire: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as info:
        codec.decode_frame(wire)
    assert info.value.reason == reason


def test_reply_checks() -> None:
    frame = codec.decode_frame(REPLY)
    with pytest.raises(FrameError, match="di_mismatch"):
        codec.parse_reply(frame, codec.C_READ, 0x8103)
    with pytest.raises(FrameError, match="control"):
        codec.parse_reply(frame, codec.C_WRITE, 0x901F)
    with pytest.raises(FrameError, match="direction"):
        codec.parse_reply(codec.decode_frame(codec.build_read(0x10, ADDR, 1)), 1, 0x901F)


def test_units_and_bad_unit() -> None:
    assert codec.scaled(H("00100000"), 2, 0x08, "energy") == 10000.0  # 10 MWh in kWh
    assert codec.scaled(H("00500000"), 2, 0x29, "volume") == 0.05  # 50 L in m3
    with pytest.raises(ValueFormatError, match="unit_code"):
        codec.scaled(H("00100000"), 2, 0x2C, "energy")
    with pytest.raises(ValueFormatError):
        codec.scaled(H("FF100000"), 2, 0x2C, "volume")


def test_time_orders() -> None:
    t = datetime(2024, 5, 11, 22, 1, 31)
    assert codec.decode_time(codec.encode_time(t)) == t
    assert codec.decode_time(codec.encode_time(t, "year_first")) == t  # falls back
    with pytest.raises(ValueFormatError):
        codec.decode_time(H("99999999999999"))


def test_heat_layout() -> None:
    from drivers.serial.bcd import decimal_to_bcd as enc

    payload = (enc(1800, 4, 2) + b"\x05" + enc(2.5, 4, 2) + b"\x08" + enc(4.5, 4, 2) + b"\x17"
               + enc(0.5, 4, 4) + b"\x35" + enc(140.06, 4, 2) + b"\x2c" + enc(55, 3, 2) + enc(40.5, 3, 2)
               + enc(1200, 3, 0) + bytes(7) + b"\x04\x00")
    f = codec.decode_current(payload, "heat")
    assert (f["heat_settlement"], f["heat"], f["power"], f["flow_rate"], f["volume"]) == (1800, 2500, 4500, 0.5, 140.06)
    assert (f["supply_temperature"], f["return_temperature"], f["working_hours"]) == (55, 40.5, 1200)
    assert f["battery_low"] is True
    with pytest.raises(ValueFormatError):
        codec.decode_current(payload[:-1], "heat")


@given(st.integers(0, 0xFF), st.binary(max_size=100), st.binary(min_size=7, max_size=7), st.integers(0, 0xFF))
def test_frame_round_trip(mt: int, data: bytes, address: bytes, control: int) -> None:
    f = codec.decode_frame(codec.encode_frame(mt, address, control, data))
    assert (f.meter_type, f.address, f.control, f.data) == (mt, address, control, data)


@given(st.integers(0, 0xFFFF), st.sampled_from(codec.DI_ORDERS))
def test_di_either_order(di: int, order: str) -> None:
    f = codec.Frame(0x10, ADDR, 0x81, codec.di_bytes(di, order) + b"\x00")
    assert f.di_matches(di)


@given(st.integers(0, 99_999_999), st.sampled_from([0x2C, 0x05, 0x17, 0x35]))
def test_value_round_trip(n: int, unit: int) -> None:
    from drivers.serial.bcd import int_to_bcd

    quantity = codec.UNITS[unit][0]
    assert codec.scaled(int_to_bcd(n, 4), 2, unit, quantity) == pytest.approx(n / 100 * codec.UNITS[unit][2])


@settings(max_examples=EXAMPLES, deadline=None)
@given(seeds)
def test_scanner_never_raises_and_never_loses_a_frame_after_junk(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(STREAMS_PER_EXAMPLE):
        address = bytes(rng.randrange(256) for _ in range(7))
        data = bytes(rng.randrange(256) for _ in range(rng.randint(0, 46)))
        valid = codec.encode_frame(rng.choice([0x10, 0x20, 0x30, 0xAA]), address, rng.randrange(256), data, rng.randint(0, 4))
        prefix = junk(rng, b"\x68\x16\xfe") + mutate(rng, codec.encode_frame(0x10, address, 0x81, data, 0))
        stream = prefix + valid
        scanner = codec.FrameScanner()
        found: list[codec.Frame] = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 16)
            found += scanner.feed(stream[pos : pos + step])
            pos += step
        if overlapping_frame(stream, len(prefix), codec.decode_frame, codec.MIN_FRAME):
            continue
        assert codec.decode_frame(valid) in found, stream.hex()
