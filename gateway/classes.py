"""The device-class catalogue (data in ``catalogue/classes.toml``)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from gateway.record import SEVERITIES

VALUE_TYPES = ("number", "bool", "string")
POINT_KINDS = ("telemetry", "state", "event", "lifecycle")
STATUS_POINT = "status"


@dataclass(frozen=True, slots=True)
class PointDef:
    name: str
    type: str
    kind: str
    unit: str | None = None
    writable: bool = False
    severity: str | None = None
    min: float | None = None
    max: float | None = None
    enum: tuple[str, ...] | None = None
    description: str = ""

    def check_value(self, value: Any) -> str | None:
        """Why ``value`` is not a valid value of this point, or ``None`` when it is."""
        if self.type == "bool":
            if not isinstance(value, bool):
                return f"expected a boolean, got {type(value).__name__} {value!r}"
            return None
        if self.type == "string":
            if not isinstance(value, str):
                return f"expected a string, got {type(value).__name__} {value!r}"
            if self.enum is not None and value not in self.enum:
                return f"expected one of {list(self.enum)}, got {value!r}"
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number, got {type(value).__name__} {value!r}"
        if value != value:  # NaN
            return "expected a number, got NaN"
        if self.min is not None and value < self.min:
            return f"{value} is below the minimum {self.min:g}"
        if self.max is not None and value > self.max:
            return f"{value} is above the maximum {self.max:g}"
        return None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type, "kind": self.kind, "writable": self.writable}
        for key in ("unit", "severity", "min", "max", "description"):
            val = getattr(self, key)
            if val not in (None, ""):
                d[key] = val
        if self.enum is not None:
            d["enum"] = list(self.enum)
        return d


@dataclass(frozen=True, slots=True)
class ClassDef:
    name: str
    description: str
    points: dict[str, PointDef]

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "points": {n: p.to_dict() for n, p in self.points.items()},
        }


class CatalogueError(ValueError):
    pass


def parse_catalogue(data: dict[str, Any]) -> dict[str, ClassDef]:
    """Validate catalogue data (pure) and return the classes by name."""
    out: dict[str, ClassDef] = {}
    for cname, body in data.items():
        points: dict[str, PointDef] = {}
        for pname, p in body.get("points", {}).items():
            where = f"{cname}.points.{pname}"
            if p.get("type") not in VALUE_TYPES:
                raise CatalogueError(f"{where}.type: expected one of {VALUE_TYPES}")
            if p.get("kind") not in POINT_KINDS:
                raise CatalogueError(f"{where}.kind: expected one of {POINT_KINDS}")
            sev = p.get("severity")
            if p["kind"] == "event" and sev not in SEVERITIES:
                raise CatalogueError(f"{where}.severity: events need one of {SEVERITIES}")
            enum = p.get("enum")
            points[pname] = PointDef(
                name=pname,
                type=p["type"],
                kind=p["kind"],
                unit=p.get("unit"),
                writable=bool(p.get("writable", False)),
                severity=sev,
                min=p.get("min"),
                max=p.get("max"),
                enum=tuple(enum) if enum is not None else None,
                description=p.get("description", ""),
            )
        if STATUS_POINT not in points:
            points[STATUS_POINT] = PointDef(
                name=STATUS_POINT,
                type="string",
                kind="lifecycle",
                enum=("online", "offline"),
                description="device availability, derived from the last poll outcome",
            )
        out[cname] = ClassDef(cname, body.get("description", ""), points)
    return out


@lru_cache(maxsize=1)
def catalogue() -> dict[str, ClassDef]:
    """The bundled catalogue."""
    text = resources.files("gateway.catalogue").joinpath("classes.toml").read_text("utf-8")
    return parse_catalogue(tomllib.loads(text))


def device_classes() -> dict[str, ClassDef]:
    """Classes a configured device may have (everything but the gateway's own)."""
    return {k: v for k, v in catalogue().items() if k != "gateway"}


def record_schema() -> dict[str, Any]:
    import json

    text = resources.files("gateway.schema").joinpath("record.schema.json").read_text("utf-8")
    result: dict[str, Any] = json.loads(text)
    return result
