"""Errors of the serial codecs (pure code raises only these)."""

from __future__ import annotations

from gateway.errors import ReasonError


class CodecError(ReasonError, ValueError):
    """A frame or value cannot be encoded or decoded. ``reason`` is a short metric label."""


class FrameError(CodecError):
    """Bytes that are not a valid frame of the protocol."""


class ValueFormatError(CodecError):
    """A value field holds something that is not a valid value (non-BCD nibble, bad date)."""
