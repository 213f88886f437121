"""Errors of the serial codecs (pure code raises only these)."""

from __future__ import annotations


class CodecError(ValueError):
    """A frame or value cannot be encoded or decoded. ``reason`` is a short metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class FrameError(CodecError):
    """Bytes that are not a valid frame of the protocol."""


class ValueFormatError(CodecError):
    """A value field holds something that is not a valid value (non-BCD nibble, bad date)."""
