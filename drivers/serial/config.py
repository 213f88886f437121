"""Configuration schemas of the serial driver (bus options, device addresses, profile
point addresses and profile ``[driver]`` options for the three protocols)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from drivers.serial.cjt188.codec import FIELDS as CJT_FIELDS
from drivers.serial.errors import CodecError
from drivers.serial.framed.codec import CHECKSUMS, FIELD_TYPES, FrameSpec
from gateway.plugin import StrictModel
from gateway.types import Duration

_HEX_RE = re.compile(r"^[0-9A-Fa-f\s]*$")


def _hex_bytes(value: str) -> bytes:
    if not _HEX_RE.match(value) or len(value.replace(" ", "")) % 2:
        raise ValueError(f"expected hex bytes such as 'AA 55', found {value!r}")
    return bytes.fromhex(value.replace(" ", ""))


def _byte(value: int | str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 16)
        except ValueError:
            raise ValueError(f"expected a byte in hex such as '10', found {value!r}") from None
    if not 0 <= value <= 0xFF:
        raise ValueError(f"expected a byte 0..255, found {value}")
    return value


class BusOptions(StrictModel):
    """Keys of a ``[[buses]]`` entry with ``driver = "serial"``."""

    port: str = Field(description="/dev/ttyUSB0, /dev/serial/by-id/..., or tcp://host:port")
    baud: int = Field(default=2400, gt=0)
    bytesize: Literal[5, 6, 7, 8] = 8
    parity: Literal["N", "E", "O", "M", "S"] = "E"
    stopbits: float = 1
    rtscts: bool = False
    xonxoff: bool = False
    echo: bool = False
    guard: Duration = 0.05
    first_byte_timeout: Duration = 1.5
    inter_byte_timeout: Duration = 0.5
    max_reply_time: Duration = 5.0
    connect_timeout: Duration = 5.0
    retries: int = Field(default=1, ge=0, le=5)
    silent_retries: int = Field(default=0, ge=0, le=5)
    preamble: int = Field(default=4, ge=0, le=4)
    time_sync: Duration | None = None
    time_sync_utc_offset: Duration | None = None

    @field_validator("port")
    @classmethod
    def _port(cls, v: str) -> str:
        if v.startswith("tcp://"):
            host, _, port = v.removeprefix("tcp://").rstrip("/").rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"expected tcp://host:port, found {v!r}")
        elif not v:
            raise ValueError("expected a serial device path or tcp://host:port")
        return v

    @field_validator("stopbits")
    @classmethod
    def _stopbits(cls, v: float) -> float:
        if v not in (1, 1.5, 2):
            raise ValueError("stopbits must be 1, 1.5 or 2")
        return v

    @field_validator("time_sync")
    @classmethod
    def _sync(cls, v: float | None) -> float | None:
        if v is not None and v < 60:
            raise ValueError("time_sync interval must be at least 60s")
        return v


class DeviceAddress(StrictModel):
    """A device's ``address``: the meter address (DL/T 645: up to 12 digits; CJ/T 188: up to
    14 digits) or the framed device's address number."""

    addr: str | int
    meter_type: int | str | None = None  # CJ/T 188: override the profile's meter type

    @field_validator("addr")
    @classmethod
    def _addr(cls, v: str | int) -> str | int:
        if isinstance(v, str) and not (v.isdigit() and 1 <= len(v) <= 14):
            raise ValueError(f"expected the meter address as 1-14 decimal digits, found {v!r}")
        if isinstance(v, int) and v < 0:
            raise ValueError("a device address cannot be negative")
        return v

    @field_validator("meter_type")
    @classmethod
    def _mt(cls, v: int | str | None) -> int | None:
        return None if v is None else _byte(v)


class PointAddress(StrictModel):
    """A profile point's ``address``. Exactly one of ``di`` (DL/T 645), ``field``
    (CJ/T 188), ``frame`` or ``event`` (framed) says which protocol it belongs to."""

    # DL/T 645
    di: str | None = None
    index: int = Field(default=0, ge=0, le=63)
    format: str | None = None
    signed: bool | None = None
    control: Literal["relay"] | None = None
    # CJ/T 188
    field: str | None = None
    # framed
    frame: str | None = None
    event: str | None = None
    offset: int | None = Field(default=None, ge=0)
    type: str | None = None
    length: int | None = Field(default=None, ge=1, le=64)
    # shared
    bit: int | None = Field(default=None, ge=0, le=31)

    @property
    def protocol(self) -> str:
        if self.di is not None:
            return "dlt645"
        if self.field is not None:
            return "cjt188"
        return "framed"

    @model_validator(mode="after")
    def _one_kind(self) -> PointAddress:
        kinds = [k for k in ("di", "field", "frame", "event") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of di (DL/T 645), field (CJ/T 188), frame or event (framed)"
            )
        if self.di is not None:
            from drivers.serial.dlt645.codec import FORMATS, parse_di

            try:
                parse_di(self.di)
            except CodecError as exc:
                raise ValueError(str(exc)) from None
            if self.format is not None and self.format not in FORMATS:
                raise ValueError(f"format must be one of {sorted(FORMATS)}")
            if self.control == "relay" and self.bit is None:
                raise ValueError("control = 'relay' needs the status bit to read back (bit = 4)")
        elif self.field is not None:
            if self.field not in CJT_FIELDS:
                raise ValueError(f"field must be one of {list(CJT_FIELDS)}")
        else:
            if self.type is not None and self.type not in FIELD_TYPES:
                raise ValueError(f"type must be one of {list(FIELD_TYPES)}")
            if self.frame is not None and (self.offset is None or self.type is None):
                raise ValueError("a polled framed point needs offset and type")
            if (self.offset is None) != (self.type is None):
                raise ValueError("give offset and type together")
        return self


class FrameModel(StrictModel):
    start: str
    header_len: int = Field(ge=1, le=64)
    length_offset: int | None = None
    length_size: Literal[1, 2] = 1
    length_endian: Literal["big", "little"] = "big"
    length_adjust: int = 0
    fixed_length: int | None = None
    address_offset: int | None = None
    address_size: int = Field(default=1, ge=1, le=4)
    command_offset: int | None = None
    checksum: str = "sum8"
    checksum_from: int = 0
    checksum_endian: Literal["big", "little"] = "little"
    end: str = ""
    max_length: int = Field(default=256, ge=4, le=4096)

    @model_validator(mode="after")
    def _valid(self) -> FrameModel:
        if self.checksum not in CHECKSUMS:
            raise ValueError(f"checksum must be one of {list(CHECKSUMS)}")
        self.spec()  # raises on contradictions
        return self

    def spec(self) -> FrameSpec:
        try:
            return FrameSpec(
                start=_hex_bytes(self.start), header_len=self.header_len,
                length_offset=self.length_offset, length_size=self.length_size,
                length_endian=self.length_endian, length_adjust=self.length_adjust,
                fixed_length=self.fixed_length, address_offset=self.address_offset,
                address_size=self.address_size, command_offset=self.command_offset,
                checksum=self.checksum, checksum_from=self.checksum_from,
                checksum_endian=self.checksum_endian, end=_hex_bytes(self.end),
                max_length=self.max_length,
            )
        except CodecError as exc:
            raise ValueError(exc.detail) from None


class PolledFrameModel(StrictModel):
    command: int | str
    reply: int | str
    payload: str = ""

    @field_validator("command", "reply")
    @classmethod
    def _b(cls, v: int | str) -> int:
        return _byte(v)

    @field_validator("payload")
    @classmethod
    def _p(cls, v: str) -> str:
        _hex_bytes(v)
        return v


class AttrFieldModel(StrictModel):
    offset: int = Field(ge=0)
    type: str
    length: int | None = Field(default=None, ge=1, le=64)
    bit: int | None = Field(default=None, ge=0, le=31)

    @field_validator("type")
    @classmethod
    def _t(cls, v: str) -> str:
        if v not in FIELD_TYPES:
            raise ValueError(f"type must be one of {list(FIELD_TYPES)}")
        return v


class EventFrameModel(StrictModel):
    command: int | str
    ack: int | str | None = None  # command of an acknowledgement frame sent back, if any
    attrs: dict[str, AttrFieldModel] = Field(default_factory=dict)

    @field_validator("command", "ack")
    @classmethod
    def _b(cls, v: int | str | None) -> int | None:
        return None if v is None else _byte(v)


class ProfileOptions(StrictModel):
    """A profile's ``[driver]`` table (keys for the profile's protocol only)."""

    # DL/T 645
    edition: Literal["2007", "1997"] = "2007"
    relay_control: bool = False
    password: str = "02000000"  # PA P0 P1 P2 in printed order
    operator: str = "00000000"
    relay_valid: Duration = 600.0
    address_pad: Literal["0", "A"] = "0"
    # CJ/T 188
    meter_type: int | str | None = None
    di_order: Literal["printed", "swapped"] = "swapped"
    time_order: Literal["seconds_first", "year_first"] = "seconds_first"
    layout: Literal["water", "heat"] | None = None
    # framed
    frame: FrameModel | None = None
    frames: dict[str, PolledFrameModel] = Field(default_factory=dict)
    events: dict[str, EventFrameModel] = Field(default_factory=dict)

    @field_validator("meter_type")
    @classmethod
    def _mt(cls, v: int | str | None) -> int | None:
        return None if v is None else _byte(v)

    @field_validator("password", "operator")
    @classmethod
    def _four(cls, v: str) -> str:
        if len(_hex_bytes(v)) != 4:
            raise ValueError("expected 4 bytes in hex, e.g. '02000000'")
        return v

    @model_validator(mode="after")
    def _framed(self) -> ProfileOptions:
        if (self.frames or self.events) and self.frame is None:
            raise ValueError("frames/events need the [driver.frame] description")
        return self
