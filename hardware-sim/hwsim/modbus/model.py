"""Simulated Modbus devices: register tables filled from a device file, behaviours over time,
writes that take effect, and run-time faults.

A device file (``hwsim/modbus/devices/<model>.toml``) describes the device in the
simulator's own words -- it does not use the gateway's profiles, so a mapping bug cannot hide
on both sides::

    [device]
    model = "acme-sd300"
    description = "..."
    gaps = "exception"        # unmapped registers: "exception" (02) or "zero" (read as 0)
    max_read = 125            # longer reads get exception 03 (devices that reject them)
    holes = [                 # address ranges (inclusive) that answer exception 02 to any
      { table = "holding", first = 8, last = 11 },   # read or write touching them, even
    ]                         # where a value is mapped or gaps = "zero" (a map with holes)

    [[values]]
    name = "density"          # used by scripts, overrides and the control API
    table = "input"           # coil | discrete | input | holding
    address = 0
    type = "u16"              # u16 i16 u32 i32 u64 i64 f32 f64 bcd str bit
    layout = "big"            # multi-byte layout: big | little | byteswap | wordswap
    scale = 0.01              # register holds round(value / scale)
    value = 3.25              # the physical value
    bits = [3, 1]             # type "bit" in a register: [lowest bit, width]
    words = 8                 # str: registers; bcd: registers
    writable = true           # holding/coil: the master may write it
    behaviour = { kind = "random_walk", step = 0.1, min = 0, max = 10, seed = 1 }
                              # or { kind = "counter", rate = 0.5 } (per second)

    [[script]]                # scripted changes, seconds after start
    at = 5.0
    set = { alarm = 1 }

    [[on_write]]              # a write to `name` sets other values
    name = "reset"
    equals = 1
    set = { alarm = 0, reset = 0 }
"""

from __future__ import annotations

import math
import random
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEVICES_DIR = Path(__file__).with_name("devices")
TABLES = ("coil", "discrete", "input", "holding")
TYPES = {"u16": 1, "i16": 1, "u32": 2, "i32": 2, "u64": 4, "i64": 4, "f32": 2, "f64": 4}
FAULTS = ("none", "silent", "late", "exception", "crc", "truncate", "gone")


class SimFileError(ValueError):
    pass


@dataclass
class SimValue:
    name: str
    table: str
    address: int
    type: str
    layout: str = "big"
    scale: float = 1.0
    value: Any = 0
    bits: tuple[int, int] | None = None
    words: int = 1
    writable: bool = False
    behaviour: dict[str, Any] | None = None
    rng: random.Random | None = None

    @property
    def size(self) -> int:
        if self.table in ("coil", "discrete") or self.type == "bit":
            return 1
        if self.type in ("str", "bcd"):
            return self.words
        return TYPES[self.type]


def _layout_bytes(big: bytes, layout: str) -> bytes:
    """Place big-endian value bytes into register byte order."""
    if layout == "big":
        return big
    if layout == "little":
        return big[::-1]
    if layout == "byteswap":
        return bytes(b for i in range(0, len(big), 2) for b in (big[i + 1], big[i]))
    if layout == "wordswap":
        words = [big[i : i + 2] for i in range(0, len(big), 2)]
        return b"".join(reversed(words))
    raise SimFileError(f"unknown layout {layout!r}")


def _swap16(word: int, layout: str) -> int:
    """A status word as the device means it <-> as it sits in the register."""
    if layout in ("byteswap", "little"):
        return (word >> 8) | ((word & 0xFF) << 8)
    return word


def _unlayout(data: bytes, layout: str) -> bytes:
    return _layout_bytes(data, layout)  # each layout is its own inverse


def value_to_registers(v: SimValue, physical: Any) -> list[int]:
    """Registers holding the physical value (for register tables, not bit fields)."""
    if v.type == "str":
        raw = str(physical).encode("ascii")[: 2 * v.words].ljust(2 * v.words, b"\x00")
        if v.layout in ("byteswap", "little"):
            raw = _layout_bytes(raw, "byteswap")
        return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]
    if v.type == "bcd":
        n = int(round(float(physical) / v.scale))
        digits = str(n).rjust(4 * v.words, "0")
        if len(digits) > 4 * v.words or n < 0:
            raise SimFileError(f"{v.name}: {n} does not fit {v.words} BCD registers")
        big = bytes(int(digits[i]) * 16 + int(digits[i + 1]) for i in range(0, len(digits), 2))
    elif v.type in ("f32", "f64"):
        big = struct.pack(">f" if v.type == "f32" else ">d", float(physical) / v.scale)
    else:
        n = int(round(float(physical) / v.scale))
        nbytes = 2 * TYPES[v.type]
        signed = v.type.startswith("i")
        big = n.to_bytes(nbytes, "big", signed=signed)
    placed = _layout_bytes(big, v.layout)
    return [placed[i] << 8 | placed[i + 1] for i in range(0, len(placed), 2)]


def registers_to_value(v: SimValue, regs: list[int]) -> Any:
    data = b"".join(r.to_bytes(2, "big") for r in regs)
    if v.type == "str":
        if v.layout in ("byteswap", "little"):
            data = _layout_bytes(data, "byteswap")
        return data.split(b"\x00")[0].decode("ascii", "replace")
    big = _unlayout(data, v.layout)
    if v.type == "bcd":
        return int(big.hex()) * v.scale
    if v.type in ("f32", "f64"):
        return struct.unpack(">f" if v.type == "f32" else ">d", big)[0] * v.scale
    n = int.from_bytes(big, "big", signed=v.type.startswith("i"))
    return n * v.scale if v.scale != 1 else n


@dataclass
class Fault:
    kind: str = "none"
    delay: float = 0.0  # late
    code: int = 4  # exception
    rate: float = 1.0  # fraction of requests affected
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def applies(self) -> bool:
        return self.kind != "none" and (self.rate >= 1.0 or self.rng.random() < self.rate)

    def to_dict(self) -> dict[str, Any]:
        return {"fault": self.kind, "delay": self.delay, "code": self.code, "rate": self.rate}


class SimDevice:
    """One simulated device: register tables and what changes them."""

    def __init__(self, name: str, unit: int, spec: dict[str, Any], source: str = "") -> None:
        self.name = name
        self.unit = unit
        head = spec.get("device", {})
        self.model = str(head.get("model", name))
        self.gaps = str(head.get("gaps", "exception"))
        self.max_read = int(head.get("max_read", 125))
        if self.gaps not in ("exception", "zero"):
            raise SimFileError(f"{source}: device.gaps must be exception or zero")
        self.holes: list[tuple[str, int, int]] = []
        self.set_holes(head.get("holes", []), f"{source}: device.holes")
        self.values: dict[str, SimValue] = {}
        self.coils: dict[int, bool] = {}
        self.discrete: dict[int, bool] = {}
        self.input: dict[int, int] = {}
        self.holding: dict[int, int] = {}
        self.writable_bits: set[int] = set()
        self.writable_regs: set[int] = set()
        self.script: list[tuple[float, dict[str, Any]]] = []
        self.on_write: list[dict[str, Any]] = []
        self.fault = Fault()
        self.requests = 0
        self.answered = 0
        self.writes = 0
        self._t0: float | None = None
        self._last_tick: float | None = None
        self._script_pos = 0
        for i, raw in enumerate(spec.get("values", [])):
            self._add_value(raw, f"{source}: values[{i}]")
        for i, s in enumerate(spec.get("script", [])):
            if "at" not in s or not isinstance(s.get("set"), dict):
                raise SimFileError(f"{source}: script[{i}]: needs at = seconds and set = {{...}}")
            self.script.append((float(s["at"]), dict(s["set"])))
        self.script.sort(key=lambda x: x[0])
        for i, w in enumerate(spec.get("on_write", [])):
            if w.get("name") not in self.values or not isinstance(w.get("set"), dict):
                raise SimFileError(f"{source}: on_write[{i}]: needs a known name and set = {{...}}")
            self.on_write.append(w)

    # ------------------------------------------------------------------ values

    def _add_value(self, raw: dict[str, Any], where: str) -> None:
        try:
            table = raw["table"]
            address = int(raw["address"])
            name = str(raw.get("name", f"{table}{address}"))
        except (KeyError, ValueError) as exc:
            raise SimFileError(f"{where}: needs table and address ({exc})") from None
        if table not in TABLES:
            raise SimFileError(f"{where}: table must be one of {TABLES}")
        typ = raw.get("type", "bit" if table in ("coil", "discrete") else "u16")
        if typ not in (*TYPES, "str", "bcd", "bit"):
            raise SimFileError(f"{where}: unknown type {typ!r}")
        bits = raw.get("bits")
        v = SimValue(
            name=name,
            table=table,
            address=address,
            type=typ,
            layout=raw.get("layout", "big"),
            scale=float(raw.get("scale", 1.0)),
            value=raw.get("value", 0),
            bits=(int(bits[0]), int(bits[1])) if bits is not None else None,
            words=int(raw.get("words", 1)),
            writable=bool(raw.get("writable", False)),
            behaviour=raw.get("behaviour"),
        )
        if v.behaviour and "seed" in v.behaviour:
            v.rng = random.Random(v.behaviour["seed"])
        elif v.behaviour:
            v.rng = random.Random(hash(name) & 0xFFFF)
        if v.type == "bit" and table in ("input", "holding") and v.bits is None:
            raise SimFileError(f"{where}: a bit in a register needs bits = [lowest, width]")
        self.values[name] = v
        if v.writable:
            if table == "coil":
                self.writable_bits.add(address)
            elif table == "holding":
                self.writable_regs.update(range(address, address + v.size))
        self.set_value(name, v.value)

    def set_value(self, name: str, physical: Any) -> None:
        v = self.values[name]
        v.value = physical
        if v.table in ("coil", "discrete"):
            (self.coils if v.table == "coil" else self.discrete)[v.address] = bool(physical)
            return
        regs = self.input if v.table == "input" else self.holding
        if v.type == "bit":
            assert v.bits is not None
            lo, width = v.bits
            mask = ((1 << width) - 1) << lo
            cur = _swap16(regs.get(v.address, 0), v.layout)
            regs[v.address] = _swap16((cur & ~mask) | ((int(physical) << lo) & mask), v.layout)
            return
        for i, r in enumerate(value_to_registers(v, physical)):
            regs[v.address + i] = r

    def read_back(self, name: str) -> Any:
        """The physical value as the registers hold it now (after master writes)."""
        v = self.values[name]
        if v.table in ("coil", "discrete"):
            return (self.coils if v.table == "coil" else self.discrete).get(v.address, False)
        regs = self.input if v.table == "input" else self.holding
        if v.type == "bit":
            assert v.bits is not None
            lo, width = v.bits
            return (_swap16(regs.get(v.address, 0), v.layout) >> lo) & ((1 << width) - 1)
        return registers_to_value(v, [regs.get(v.address + i, 0) for i in range(v.size)])

    # ------------------------------------------------------------------ time

    def tick(self, now: float) -> None:
        """Advance behaviours and scripts to ``now`` (monotonic seconds)."""
        if self._t0 is None:
            self._t0 = self._last_tick = now
        assert self._last_tick is not None
        dt = now - self._last_tick
        self._last_tick = now
        elapsed = now - self._t0
        while self._script_pos < len(self.script) and self.script[self._script_pos][0] <= elapsed:
            for name, value in self.script[self._script_pos][1].items():
                if name in self.values:
                    self.set_value(name, value)
            self._script_pos += 1
        if dt <= 0:
            return
        for v in self.values.values():
            b = v.behaviour
            if not b:
                continue
            kind = b.get("kind", "constant")
            if kind == "random_walk" and v.rng is not None:
                x = float(v.value) + v.rng.uniform(-1, 1) * float(b.get("step", 1.0))
                x = min(max(x, float(b.get("min", -math.inf))), float(b.get("max", math.inf)))
                self.set_value(v.name, x)
            elif kind == "counter":
                self.set_value(v.name, float(v.value) + float(b.get("rate", 1.0)) * dt)

    # ------------------------------------------------------------------ holes

    def set_holes(self, holes: Any, where: str = "holes") -> None:
        """Address ranges answering exception 02: ``[{table, first, last}, ...]``."""
        if not isinstance(holes, list):
            raise SimFileError(f"{where}: holes must be a list of {{ table, first, last }}")
        out: list[tuple[str, int, int]] = []
        for i, h in enumerate(holes):
            if not isinstance(h, dict) or not {"table", "first", "last"} <= set(h):
                raise SimFileError(f"{where}[{i}]: needs table, first and last, found {h!r}")
            if h["table"] not in TABLES:
                raise SimFileError(f"{where}[{i}]: table must be one of {TABLES}")
            try:
                first, last = int(h["first"]), int(h["last"])
            except (TypeError, ValueError):
                raise SimFileError(f"{where}[{i}]: first and last must be addresses") from None
            if not 0 <= first <= last <= 0xFFFF:
                raise SimFileError(f"{where}[{i}]: needs 0 <= first <= last <= 65535")
            out.append((str(h["table"]), first, last))
        self.holes = out

    def in_hole(self, table: str, start: int, count: int) -> bool:
        end = start + count - 1
        return any(t == table and start <= last and first <= end for t, first, last in self.holes)

    # ------------------------------------------------------------------ protocol view

    def read_bits(self, table: str, start: int, count: int) -> list[bool] | None:
        if self.in_hole(table, start, count):
            return None
        src = self.coils if table == "coil" else self.discrete
        if self.gaps == "zero":
            return [src.get(a, False) for a in range(start, start + count)]
        if any(a not in src for a in range(start, start + count)):
            return None
        return [src[a] for a in range(start, start + count)]

    def read_regs(self, table: str, start: int, count: int) -> list[int] | None:
        if self.in_hole(table, start, count):
            return None
        src = self.input if table == "input" else self.holding
        if self.gaps == "zero":
            return [src.get(a, 0) for a in range(start, start + count)]
        if any(a not in src for a in range(start, start + count)):
            return None
        return [src[a] for a in range(start, start + count)]

    def write_bits(self, start: int, values: list[bool]) -> bool:
        if self.in_hole("coil", start, len(values)):
            return False
        if any(a not in self.writable_bits for a in range(start, start + len(values))):
            return False
        for i, b in enumerate(values):
            self.coils[start + i] = b
        self._after_write(start, len(values), "coil")
        return True

    def write_regs(self, start: int, values: list[int]) -> bool:
        if self.in_hole("holding", start, len(values)):
            return False
        if any(a not in self.writable_regs for a in range(start, start + len(values))):
            return False
        for i, r in enumerate(values):
            self.holding[start + i] = r
        self._after_write(start, len(values), "holding")
        return True

    def _after_write(self, start: int, count: int, table: str) -> None:
        self.writes += 1
        touched = [
            v
            for v in self.values.values()
            if v.table == table and v.address < start + count and start < v.address + v.size
        ]
        for v in touched:
            v.value = self.read_back(v.name)
        for rule in self.on_write:
            v = self.values[rule["name"]]
            if v not in touched:
                continue
            if "equals" in rule and self.read_back(v.name) != rule["equals"]:
                continue
            for name, value in rule["set"].items():
                self.set_value(name, value)

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "model": self.model,
            "requests": self.requests,
            "answered": self.answered,
            "writes": self.writes,
            "holes": [{"table": t, "first": a, "last": b} for t, a, b in self.holes],
            **self.fault.to_dict(),
            "values": {n: self.read_back(n) for n in self.values},
        }

    def set_fault(self, kind: str, **params: Any) -> None:
        if kind not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, found {kind!r}")
        f = Fault(kind=kind)
        if "delay" in params:
            f.delay = float(params["delay"])
        if "code" in params:
            f.code = int(params["code"])
        if "rate" in params:
            f.rate = float(params["rate"])
        self.fault = f


def load_model(model: str, base: Path | None = None) -> tuple[dict[str, Any], str]:
    """A device file by bundled model name or by path (relative to ``base``)."""
    candidates = []
    if model.endswith(".toml"):
        p = Path(model)
        candidates.append(p if p.is_absolute() or base is None else base / p)
    candidates.append(DEVICES_DIR / f"{model}.toml")
    for path in candidates:
        if path.is_file():
            with path.open("rb") as fh:
                return tomllib.load(fh), str(path)
    raise SimFileError(f"no device file for model {model!r} (looked in {DEVICES_DIR})")


def load_farm(path: Path | str) -> list[SimDevice]:
    """A simulator file: ``[[devices]]`` with name, model, unit and optional value overrides
    (``set = { density = 4.0 }``), optionally ``fault = { fault = "silent" }`` and
    ``holes = [{ table = "holding", first = 8, last = 11 }]`` (replaces the model's holes)."""
    path = Path(path)
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    return farm_from_dict(data, path.parent, str(path))


def farm_from_dict(
    data: dict[str, Any], base: Path | None = None, source: str = ""
) -> list[SimDevice]:
    devices: list[SimDevice] = []
    seen: set[str] = set()
    for i, d in enumerate(data.get("devices", [])):
        if "model" not in d:
            raise SimFileError(f"{source}: devices[{i}]: needs model")
        spec, src = load_model(str(d["model"]), base)
        name = str(d.get("name", f"{d['model']}-{i}"))
        if name in seen:
            raise SimFileError(f"{source}: devices[{i}]: duplicate name {name!r}")
        seen.add(name)
        dev = SimDevice(name, int(d.get("unit", 1)), spec, src)
        for vname, value in d.get("set", {}).items():
            if vname not in dev.values:
                raise SimFileError(f"{source}: devices[{i}].set: unknown value {vname!r}")
            dev.set_value(vname, value)
        if "holes" in d:
            dev.set_holes(d["holes"], f"{source}: devices[{i}].holes")
        if "fault" in d:
            f = dict(d["fault"])
            dev.set_fault(str(f.pop("fault", "none")), **f)
        devices.append(dev)
    return devices
