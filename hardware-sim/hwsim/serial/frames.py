"""Request parsing for the simulators: find DL/T 645, CJ/T 188 and vendor frames in the
bytes a master sends. Independent of the gateway's codecs."""

from __future__ import annotations

from dataclasses import dataclass

NEED_MORE = "more"
INVALID = "invalid"


def bcd(n: int) -> int:
    return (n // 10) * 16 + n % 10


def unbcd(b: int) -> int:
    return (b >> 4) * 10 + (b & 15)


def num_to_bcd_le(value: float, nbytes: int, decimals: int, signed: bool = False) -> bytes:
    """A number as packed BCD, least significant byte first, sign in the top bit."""
    scaled = round(abs(value) * 10**decimals)
    digits = f"{scaled:0{2 * nbytes}d}"[-2 * nbytes :]
    raw = bytearray(int(digits[i : i + 2], 16) for i in range(0, 2 * nbytes, 2))
    raw.reverse()
    if signed and value < 0:
        raw[-1] |= 0x80
    return bytes(raw)


def digits_le(digits: str, nbytes: int) -> bytes:
    return bytes.fromhex(digits.rjust(2 * nbytes, "0"))[::-1]


@dataclass
class Dlt645Request:
    address: bytes
    control: int
    data: bytes  # already minus 0x33
    raw: bytes


@dataclass
class Cjt188Request:
    meter_type: int
    address: bytes
    control: int
    data: bytes
    raw: bytes


def try_dlt645(buf: bytes) -> tuple[str | Dlt645Request, int]:
    if len(buf) < 10:
        return NEED_MORE, 0
    if buf[0] != 0x68 or buf[7] != 0x68:
        return INVALID, 0
    n = 12 + buf[9]
    if len(buf) < n:
        return NEED_MORE, 0
    if buf[n - 1] != 0x16 or sum(buf[: n - 2]) % 256 != buf[n - 2]:
        return INVALID, 0
    data = bytes((b - 0x33) % 256 for b in buf[10 : n - 2])
    return Dlt645Request(bytes(buf[1:7]), buf[8], data, bytes(buf[:n])), n


def try_cjt188(buf: bytes) -> tuple[str | Cjt188Request, int]:
    if len(buf) < 11:
        return NEED_MORE, 0
    if buf[0] != 0x68:
        return INVALID, 0
    n = 13 + buf[10]
    if len(buf) < n:
        return NEED_MORE, 0
    if buf[n - 1] != 0x16 or sum(buf[: n - 2]) % 256 != buf[n - 2]:
        return INVALID, 0
    return Cjt188Request(buf[1], bytes(buf[2:9]), buf[9], bytes(buf[11 : n - 2]), bytes(buf[:n])), n


def dlt645_frame(address: bytes, control: int, data: bytes) -> bytes:
    body = bytearray([0x68]) + address + bytes([0x68, control, len(data)])
    body += bytes((b + 0x33) % 256 for b in data)
    return bytes(body) + bytes([sum(body) % 256, 0x16])


def cjt188_frame(meter_type: int, address: bytes, control: int, data: bytes) -> bytes:
    body = bytes([0x68, meter_type]) + address + bytes([control, len(data)]) + data
    return body + bytes([sum(body) % 256, 0x16])
