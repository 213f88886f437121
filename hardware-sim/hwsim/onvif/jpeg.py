"""A minimal baseline JPEG writer: an 8x8 flat grey image with a comment segment.

Enough for a snapshot endpoint: every image is a valid JFIF-less baseline JPEG that any
decoder opens, and the COM segment makes each snapshot distinct (camera name, counter).
"""

from __future__ import annotations

import struct


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


# ITU T.81 Annex K.3 luminance DC table
_DC_BITS = bytes([0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
_DC_VALS = bytes(range(12))
_DC_CODES = {
    0: "00", 1: "010", 2: "011", 3: "100", 4: "101", 5: "110",
    6: "1110", 7: "11110", 8: "111110", 9: "1111110", 10: "11111110", 11: "111111110",
}  # fmt: skip
# AC table holding only EOB (0x00), as the one code "0"
_AC_BITS = bytes([1] + [0] * 15)
_AC_VALS = bytes([0])


def _dc_bits(value: int) -> str:
    if value == 0:
        return _DC_CODES[0]
    cat = abs(value).bit_length()
    raw = value if value > 0 else value + (1 << cat) - 1
    return _DC_CODES[cat] + format(raw, f"0{cat}b")


def flat_jpeg(grey: int, comment: str = "") -> bytes:
    """An 8x8 greyscale JPEG of one grey level (0..255)."""
    grey = max(0, min(255, grey))
    dc = 8 * (grey - 128)  # flat block, quantiser 1
    bits = _dc_bits(dc) + "0"  # DC difference, then EOB
    bits += "1" * (-len(bits) % 8)
    scan = bytearray()
    for i in range(0, len(bits), 8):
        byte = int(bits[i : i + 8], 2)
        scan.append(byte)
        if byte == 0xFF:
            scan.append(0x00)
    out = bytearray(b"\xff\xd8")
    if comment:
        out += _segment(0xFE, comment.encode("utf-8")[:60000])
    out += _segment(0xDB, b"\x00" + b"\x01" * 64)
    out += _segment(0xC0, struct.pack(">BHHB", 8, 8, 8, 1) + b"\x01\x11\x00")
    out += _segment(0xC4, b"\x00" + _DC_BITS + _DC_VALS)
    out += _segment(0xC4, b"\x10" + _AC_BITS + _AC_VALS)
    out += _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
    out += scan
    out += b"\xff\xd9"
    return bytes(out)
