"""Framed codec: checksum vectors, the bundled vendor layouts, malformed frames, properties."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.serial.errors import FrameError, ValueFormatError
from drivers.serial.framed import codec
from drivers.serial.tests.fuzz import (
    EXAMPLES,
    STREAMS_PER_EXAMPLE,
    junk,
    mutate,
    overlapping_frame,
    seeds,
)
from drivers.serial.tests.helpers import profiles

H = bytes.fromhex
AC200 = profiles()["framed-ac200"].options.frame.spec()
P5 = profiles()["framed-p5-pillar"].options.frame.spec()


def test_checksum_check_values() -> None:
    assert codec.crc16_modbus(b"123456789") == 0x4B37
    assert codec.crc16_ccitt(b"123456789") == 0x29B1
    assert codec.sum8(b"\xff\x02") == 0x01
    assert codec.xor8(b"\x0f\xf0\x01") == 0xFE


def test_ac200_vector() -> None:
    # AA 55 LEN=01 ADDR=03 CMD=81 [01] XOR(01^03^81^01)=82 0D
    frame = codec.encode(AC200, address=3, command=0x81, payload=b"\x01")
    assert frame == H("AA55010381 01 82 0D".replace(" ", ""))
    f = codec.decode(AC200, frame)
    assert (f.address, f.command, f.payload) == (3, 0x81, b"\x01")
    assert codec.extract(frame, 5, "u8", bit=0) is True


def test_p5_vector() -> None:
    frame = codec.encode(P5, address=1, command=0x30, payload=b"\x02")
    crc = codec.crc16_modbus(H("013001 02".replace(" ", "")))
    assert frame == H("7E01300102") + crc.to_bytes(2, "little")


@pytest.mark.parametrize(
    ("mutation", "reason"),
    [(lambda b: b[:-1] + b"\x0e", "end"), (lambda b: b[:-2] + b"\x00" + b[-1:], "checksum"),
     (lambda b: b[:2] + b"\x05" + b[3:], "length"), (lambda b: b"\xab" + b[1:], "start")],
)
def test_malformed(mutation: object, reason: str) -> None:
    good = codec.encode(AC200, address=3, command=0x81, payload=b"\x01")
    with pytest.raises(FrameError) as info:
        codec.decode(AC200, mutation(good))  # type: ignore[operator]
    assert info.value.reason == reason


def test_spec_contradictions_rejected() -> None:
    with pytest.raises(FrameError):
        codec.FrameSpec(start=b"", header_len=2, fixed_length=4)
    with pytest.raises(FrameError):
        codec.FrameSpec(start=b"\x7e", header_len=2, length_offset=1, fixed_length=8)
    with pytest.raises(FrameError):
        codec.FrameSpec(start=b"\x7e", header_len=2, length_offset=5)


@pytest.mark.parametrize(
    ("raw", "args", "value"),
    [(H("00010203"), (1, "u16be"), 0x0102), (H("00010203"), (1, "u16le"), 0x0201),
     (H("FFFE"), (0, "i16be"), -2), (H("00123456"), (1, "bcd", 3), 123456), (H("563412"), (0, "bcd_le", 3), 123456),
     (H("41424300"), (0, "ascii", 4), "ABC"), (H("3F800000"), (0, "f32be"), 1.0), (H("DEAD"), (0, "hex", 2), "DEAD"),
     # float32 without binary noise: 0.12, not 0.119999997318
     (H("3DF5C28F"), (0, "f32be"), 0.12), (H("8FC2F53D"), (0, "f32le"), 0.12)],
)
def test_extract(raw: bytes, args: tuple[object, ...], value: object) -> None:
    offset, ftype, *length = args
    assert isinstance(offset, int) and isinstance(ftype, str)
    size = length[0] if length else None
    assert size is None or isinstance(size, int)
    assert codec.extract(raw, offset, ftype, length=size) == value


def test_extract_errors() -> None:
    with pytest.raises(ValueFormatError):
        codec.extract(H("01"), 0, "u16be")
    with pytest.raises(ValueFormatError):
        codec.extract(H("1A"), 0, "bcd", length=1)
    with pytest.raises(ValueFormatError):
        codec.extract(H("FF"), 0, "ascii", length=1)


@given(st.sampled_from([AC200, P5]), st.integers(0, 255), st.integers(0, 255), st.binary(max_size=60))
def test_round_trip(spec: codec.FrameSpec, addr: int, cmd: int, payload: bytes) -> None:
    f = codec.decode(spec, codec.encode(spec, address=addr, command=cmd, payload=payload))
    assert (f.address, f.command, f.payload) == (addr, cmd, payload)


SPECS = [AC200, P5, codec.FrameSpec(start=b"\x02", header_len=3, fixed_length=9, address_offset=1,
                                    command_offset=2, checksum="crc16_ccitt", checksum_endian="big",
                                    end=b"\x03")]


@settings(max_examples=EXAMPLES, deadline=None)
@given(seeds)
def test_scanner_never_raises_and_never_loses_a_frame_after_junk(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(STREAMS_PER_EXAMPLE):
        spec = rng.choice(SPECS)
        n = 3 if spec.fixed_length else rng.randint(0, 40)
        payload = bytes(rng.randrange(256) for _ in range(n))
        valid = codec.encode(spec, address=rng.randrange(256), command=rng.randrange(256), payload=payload)
        prefix = junk(rng, spec.start + spec.end) + mutate(rng, valid)
        stream = prefix + valid
        scanner = codec.FrameScanner(spec)
        found: list[codec.Frame] = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 16)
            found += scanner.feed(stream[pos : pos + step])
            pos += step
        def decode(b: bytes, s: codec.FrameSpec = spec) -> codec.Frame:
            return codec.decode(s, b)

        if overlapping_frame(stream, len(prefix), decode, spec.min_length, spec.start):
            continue
        assert codec.decode(spec, valid) in found, stream.hex()
