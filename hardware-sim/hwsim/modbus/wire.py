"""Modbus on the wire, slave side: request parsing, response building, RTU/MBAP framing.

Written independently of the gateway's codec (bit-by-bit CRC, its own parsing) so that the
two implementations check each other in tests.
"""

from __future__ import annotations

import struct

from hwsim.modbus.model import SimDevice

ILLEGAL_FUNCTION = 1
ILLEGAL_ADDRESS = 2
ILLEGAL_VALUE = 3


def crc(data: bytes) -> bytes:
    """CRC-16/MODBUS, bitwise, low byte first on the wire."""
    value = 0xFFFF
    for byte in data:
        value ^= byte
        for _ in range(8):
            lsb = value & 1
            value >>= 1
            if lsb:
                value ^= 0xA001
    return bytes((value & 0xFF, value >> 8))


def rtu_request_size(buf: bytes | bytearray) -> int | None:
    """Total size of the RTU request starting at ``buf[0]``; None when not yet known;
    0 for a function this simulator does not frame (answered by silence framing)."""
    if len(buf) < 2:
        return None
    fc = buf[1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc in (15, 16):
        if len(buf) < 7:
            return None
        return 9 + buf[6]
    return 0


def exception(fc: int, code: int) -> bytes:
    return bytes((fc | 0x80, code))


def handle_pdu(dev: SimDevice, pdu: bytes) -> bytes:
    """The device's answer to one request PDU (a normal or an exception response)."""
    fc = pdu[0]
    try:
        if fc in (1, 2, 3, 4):
            start, count = struct.unpack(">HH", pdu[1:5])
            if len(pdu) != 5:
                return exception(fc, ILLEGAL_VALUE)
            if fc in (1, 2):
                if not 1 <= count <= 2000:
                    return exception(fc, ILLEGAL_VALUE)
                bits = dev.read_bits("coil" if fc == 1 else "discrete", start, count)
                if bits is None:
                    return exception(fc, ILLEGAL_ADDRESS)
                packed = bytearray((count + 7) // 8)
                for i, b in enumerate(bits):
                    if b:
                        packed[i >> 3] |= 1 << (i & 7)
                return bytes((fc, len(packed))) + bytes(packed)
            if not 1 <= count <= min(125, dev.max_read):
                return exception(fc, ILLEGAL_VALUE)
            regs = dev.read_regs("holding" if fc == 3 else "input", start, count)
            if regs is None:
                return exception(fc, ILLEGAL_ADDRESS)
            return bytes((fc, 2 * count)) + struct.pack(f">{count}H", *regs)
        if fc == 5:
            addr, raw = struct.unpack(">HH", pdu[1:5])
            if raw not in (0x0000, 0xFF00):
                return exception(fc, ILLEGAL_VALUE)
            if not dev.write_bits(addr, [raw == 0xFF00]):
                return exception(fc, ILLEGAL_ADDRESS)
            return pdu[:5]
        if fc == 6:
            addr, raw = struct.unpack(">HH", pdu[1:5])
            if not dev.write_regs(addr, [raw]):
                return exception(fc, ILLEGAL_ADDRESS)
            return pdu[:5]
        if fc == 15:
            addr, count, nbytes = struct.unpack(">HHB", pdu[1:6])
            if nbytes != (count + 7) // 8 or len(pdu) != 6 + nbytes or not 1 <= count <= 1968:
                return exception(fc, ILLEGAL_VALUE)
            bits = [bool(pdu[6 + (i >> 3)] >> (i & 7) & 1) for i in range(count)]
            if not dev.write_bits(addr, bits):
                return exception(fc, ILLEGAL_ADDRESS)
            return pdu[:5]
        if fc == 16:
            addr, count, nbytes = struct.unpack(">HHB", pdu[1:6])
            if nbytes != 2 * count or len(pdu) != 6 + nbytes or not 1 <= count <= 123:
                return exception(fc, ILLEGAL_VALUE)
            regs = list(struct.unpack(f">{count}H", pdu[6 : 6 + nbytes]))
            if not dev.write_regs(addr, regs):
                return exception(fc, ILLEGAL_ADDRESS)
            return pdu[:5]
    except struct.error:
        return exception(fc, ILLEGAL_VALUE)
    return exception(fc, ILLEGAL_FUNCTION)


def rtu_wrap(unit: int, pdu: bytes) -> bytes:
    body = bytes((unit,)) + pdu
    return body + crc(body)


def mbap_wrap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


def corrupt_pdu(pdu: bytes) -> bytes:
    """A malformed answer for a framing without CRC: the byte count no longer fits."""
    if len(pdu) >= 2 and pdu[0] in (1, 2, 3, 4):
        return bytes((pdu[0], (pdu[1] + 1) & 0xFF)) + pdu[2:]
    return pdu[:1] + bytes(b ^ 0x5A for b in pdu[1:])
