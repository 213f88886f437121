"""Configuration schemas of the Modbus driver (validated by the core's ``check``).

* ``BusOptions``: the keys of a ``[[buses]]`` entry with ``driver = "modbus"``.
* ``DeviceAddress``: a device's ``address = { ... }``.
* ``PointAddress``: a profile point's ``address = { ... }``.
* ``ProfileOptions``: a profile's optional ``[driver]`` table.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from drivers.modbus import codec
from gateway.plugin import StrictModel
from gateway.types import Duration

Transport = Literal["tcp", "rtu", "rtu_over_tcp"]
Order = Literal["ABCD", "DCBA", "BADC", "CDAB"]
Table = Literal["coil", "discrete", "input", "holding"]
ValueType = Literal[
    "bool",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
    "float32",
    "float64",
    "bcd16",
    "bcd32",
    "string",
]


class BusOptions(StrictModel):
    """One Modbus line: a TCP endpoint, a serial port (RTU) or a serial server (RTU over TCP).

    ``transport`` may be left out: ``host`` means ``tcp``, a serial ``port`` path means
    ``rtu``."""

    transport: Transport | None = None
    host: str | None = None
    port: int | str | None = None  # TCP port number, or the serial device path for rtu
    baud: int = Field(default=9600, ge=300, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Duration = Field(default=1.0, gt=0, le=60)
    retries: int = Field(default=1, ge=0, le=5)
    connect_timeout: Duration = Field(default=3.0, gt=0, le=120)
    frame_gap: Duration | None = Field(default=None, ge=0, le=1)  # serial: idle time between frames
    max_gap: int = Field(default=8, ge=0, le=125)  # registers bridged when coalescing reads
    # holes learnt in a device's map (exception 02) are asked again after this long
    hole_recheck: Duration = Field(default=3600.0, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _infer(self) -> BusOptions:
        t = self.transport
        if t is None:
            if self.host is not None:
                t = "tcp"
            elif isinstance(self.port, str):
                t = "rtu"
            else:
                raise ValueError(
                    'give host (Modbus TCP) or port = "/dev/ttyUSB0" (RTU), or set transport'
                )
            object.__setattr__(self, "transport", t)
        if t in ("tcp", "rtu_over_tcp"):
            if not self.host:
                raise ValueError(f"transport {t} needs host")
            if self.port is None:
                object.__setattr__(self, "port", 502)
            if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
                raise ValueError(f"transport {t} needs a TCP port number 1..65535")
        else:
            if not isinstance(self.port, str) or not self.port:
                raise ValueError('transport rtu needs port = "/dev/ttyUSB0" (the serial device)')
            if self.host is not None:
                raise ValueError("transport rtu takes no host (did you mean rtu_over_tcp?)")
        return self

    @property
    def serial_line(self) -> bool:
        """RTU framing with silent intervals (rtu, or rtu_over_tcp through a serial server)."""
        return self.transport in ("rtu", "rtu_over_tcp")

    def effective_frame_gap(self) -> float:
        """Idle time kept between frames: the configured one, else 3.5 characters (at least
        1.75 ms as the spec fixes for rates above 19200 baud); 0 for Modbus TCP."""
        if self.transport == "tcp":
            return 0.0
        if self.frame_gap is not None:
            return float(self.frame_gap)
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return max(3.5 * bits / self.baud, 0.00175)


class DeviceAddress(StrictModel):
    """Where a device is: its unit id; for a TCP device without a ``bus``, also its endpoint."""

    unit: int = Field(default=1, ge=0, le=255)
    host: str | None = None
    port: int = Field(default=502, ge=1, le=65535)
    transport: Literal["tcp", "rtu_over_tcp"] = "tcp"
    timeout: Duration | None = Field(default=None, gt=0, le=60)
    max_registers: int | None = Field(
        default=None, ge=1, le=125
    )  # for devices rejecting long reads


class PointAddress(StrictModel):
    """Where a point's value sits in the device (see README "Profile address keys")."""

    table: Table
    offset: int = Field(ge=0, le=65535)
    type: ValueType | None = None  # default: bool for coil/discrete, uint16 for registers
    order: Order | None = None  # default: the profile's [driver] order, else ABCD
    bit: int | None = Field(default=None, ge=0, le=63)
    width: int = Field(default=1, ge=1, le=32)
    length: int = Field(default=1, ge=1, le=125)  # string: registers
    encoding: Literal["ascii", "utf-8", "latin-1"] = "ascii"
    write_fc: Literal[5, 6, 15, 16] | None = None
    verify: bool = True  # read back after a write

    @model_validator(mode="after")
    def _check(self) -> PointAddress:
        spec = self.spec(None)
        why = codec.check_spec(spec)
        if why:
            raise ValueError(why)
        if self.write_fc is not None:
            bits = self.table == "coil"
            if self.table in ("discrete", "input"):
                raise ValueError(f"a {self.table} is read-only: write_fc is not allowed")
            if bits and self.write_fc not in (5, 15):
                raise ValueError("coils are written with function 5 or 15")
            if not bits and self.write_fc not in (6, 16):
                raise ValueError("holding registers are written with function 6 or 16")
            if self.write_fc == 6 and spec.count != 1:
                raise ValueError(f"function 6 writes one register, {spec.type} needs {spec.count}")
        return self

    def spec(self, default_order: str | None) -> codec.ValueSpec:
        bits = self.table in ("coil", "discrete")
        return codec.ValueSpec(
            table=self.table,
            offset=self.offset,
            type=self.type or ("bool" if bits else "uint16"),
            order=self.order or default_order or "ABCD",
            bit=self.bit,
            width=self.width,
            length=self.length,
            encoding=self.encoding,
        )


class IdentifyCheck(StrictModel):
    """A profile's ``identify``: a value the model reports, used by ``scan``."""

    table: Literal["input", "holding"] = "holding"
    offset: int = Field(ge=0, le=65535)
    type: ValueType = "uint16"
    order: Order = "ABCD"
    length: int = Field(default=1, ge=1, le=125)
    equals: int | float | str

    def spec(self) -> codec.ValueSpec:
        return codec.ValueSpec(self.table, self.offset, self.type, self.order, length=self.length)


class ProfileOptions(StrictModel):
    """A profile's ``[driver]`` table: defaults for all its points."""

    order: Order = "ABCD"
    max_registers: int = Field(default=125, ge=1, le=125)
    max_bits: int = Field(default=2000, ge=1, le=2000)
    max_gap: int | None = Field(default=None, ge=0, le=125)  # overrides the bus's
