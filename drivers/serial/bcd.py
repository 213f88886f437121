"""Packed BCD helpers shared by the meter codecs (pure).

All meter protocols here send multi-byte numbers low byte first, two decimal digits per
byte (high nibble = tens). Sign-magnitude numbers keep the sign in bit 7 of the most
significant byte (the last byte on the wire).
"""

from __future__ import annotations

from decimal import Decimal

from drivers.serial.errors import ValueFormatError


def bcd_to_int(data: bytes, *, signed: bool = False) -> int:
    """Decode packed BCD, low byte first. With ``signed`` bit 7 of the last byte is the sign."""
    if not data:
        raise ValueFormatError("bcd", "empty BCD field")
    negative = False
    raw = bytearray(data)
    if signed and raw[-1] & 0x80:
        negative = True
        raw[-1] &= 0x7F
    value = 0
    for byte in reversed(raw):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise ValueFormatError("bcd", f"byte {byte:02X} is not packed BCD in {data.hex(' ')}")
        value = value * 100 + hi * 10 + lo
    return -value if negative else value


def int_to_bcd(value: int, nbytes: int, *, signed: bool = False) -> bytes:
    """Encode an integer as packed BCD, low byte first (sign in bit 7 of the last byte)."""
    if value < 0 and not signed:
        raise ValueFormatError("range", f"{value} is negative for an unsigned field")
    magnitude = abs(value)
    limit = 10 ** (2 * nbytes)
    if signed:
        limit = 8 * 10 ** (2 * nbytes - 1)
    if magnitude >= limit:
        raise ValueFormatError("range", f"{value} does not fit {nbytes} BCD bytes")
    out = bytearray()
    for _ in range(nbytes):
        magnitude, two = divmod(magnitude, 100)
        out.append(((two // 10) << 4) | (two % 10))
    if signed and value < 0:
        out[-1] |= 0x80
    return bytes(out)


def bcd_to_decimal(data: bytes, decimals: int, *, signed: bool = False) -> Decimal:
    """Decode packed BCD with an implied decimal point (``decimals`` digits after it)."""
    return Decimal(bcd_to_int(data, signed=signed)).scaleb(-decimals)


def bcd_to_float(data: bytes, decimals: int, *, signed: bool = False) -> float:
    return float(bcd_to_decimal(data, decimals, signed=signed))


def decimal_to_bcd(value: float | Decimal | int, nbytes: int, decimals: int, *, signed: bool = False) -> bytes:
    scaled = (Decimal(str(value)) * (Decimal(10) ** decimals)).to_integral_value()
    return int_to_bcd(int(scaled), nbytes, signed=signed)


def bcd_byte(value: int) -> int:
    """One value 0..99 as a packed BCD byte."""
    if not 0 <= value <= 99:
        raise ValueFormatError("range", f"{value} is not 0..99")
    return ((value // 10) << 4) | (value % 10)


def bcd_digits(data: bytes) -> str:
    """Digits of a packed BCD field low byte first, in display order (e.g. an address)."""
    out = []
    for byte in reversed(data):
        hi, lo = byte >> 4, byte & 0x0F
        if hi > 9 or lo > 9:
            raise ValueFormatError("bcd", f"byte {byte:02X} is not packed BCD")
        out.append(f"{hi}{lo}")
    return "".join(out)


def digits_to_bcd(digits: str, nbytes: int, pad: str = "0") -> bytes:
    """Display-order digits to a packed BCD field, low byte first, padded on the high side.

    ``pad`` is "0" or "A" (DL/T 645 shortened addressing / wildcard bytes ``AA``).
    """
    if not digits.isdigit() or len(digits) > 2 * nbytes:
        raise ValueFormatError("address", f"expected up to {2 * nbytes} digits, found {digits!r}")
    if pad not in ("0", "A"):
        raise ValueFormatError("address", f"pad must be '0' or 'A', found {pad!r}")
    if len(digits) % 2:
        digits = "0" + digits
    missing = nbytes - len(digits) // 2
    body = bytes.fromhex(digits)[::-1]
    fill = b"\x00" if pad == "0" else b"\xaa"
    return body + fill * missing
