"""Device profiles: one vendor model mapped onto one canonical class.

A profile is a TOML file::

    [profile]
    id = "acme-sd300"          # unique; what devices refer to
    class = "smoke_detector"   # a catalogue class
    driver = "modbus"          # a driver (or a protocol of a driver, e.g. "dlt645")
    vendor = "Acme"
    model = "SD-300"

    [driver]                   # optional, validated by the driver's ProfileOptions
    ...

    [points.smoke_density]     # a point of the class
    address = { ... }          # validated by the driver's PointAddress schema
    scale = 0.01               # canonical = raw * scale + offset, then unit conversion
    offset = 0
    unit = "Wh"                # the unit the device reports, when it differs from the class
    enum = { "0" = "idle", "1" = "up" }   # raw -> canonical (keys are the raw value as text)
    invert = false             # booleans: true when the device reports active-low
    deadband = 0.5             # telemetry: skip values within this distance of the last sent
    precision = 2              # numbers: round to this many decimal places (after scaling)

    [[events]]                 # derive an event point from a condition on another point
    point = "alarm"            # an event point of the class
    source = "gas_concentration"
    above = 25                 # or below / equals
    clear_below = 20           # hysteresis (default: the condition no longer holds)
    severity = "critical"      # overrides the class default

Everything here is pure: loading returns data or a list of issues, mapping functions take
values and return values.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gateway.classes import ClassDef, PointDef, catalogue
from gateway.errors import ConfigIssue, issues_from_validation, locate, toml_issue
from gateway.record import SEVERITIES, Value

# Source unit -> (class unit, factor, offset): canonical = raw_in_source * factor + offset
UNIT_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("Wh", "kWh"): (0.001, 0.0),
    ("MWh", "kWh"): (1000.0, 0.0),
    ("GJ", "kWh"): (1e9 / 3.6e6, 0.0),
    ("MJ", "kWh"): (1e6 / 3.6e6, 0.0),
    ("kW", "W"): (1000.0, 0.0),
    ("kvar", "var"): (1000.0, 0.0),
    ("kVA", "VA"): (1000.0, 0.0),
    ("MW", "W"): (1e6, 0.0),
    ("mV", "V"): (0.001, 0.0),
    ("kV", "V"): (1000.0, 0.0),
    ("mA", "A"): (0.001, 0.0),
    ("L", "m3"): (0.001, 0.0),
    ("L/h", "m3/h"): (0.001, 0.0),
    ("m3/s", "m3/h"): (3600.0, 0.0),
    ("hPa", "Pa"): (100.0, 0.0),
    ("kPa", "Pa"): (1000.0, 0.0),
    ("bar", "Pa"): (100000.0, 0.0),
    ("cm", "mm"): (10.0, 0.0),
    ("m", "mm"): (1000.0, 0.0),
    ("um", "mm"): (0.001, 0.0),
    ("[degF]", "Cel"): (5.0 / 9.0, -32.0 * 5.0 / 9.0),
    ("K", "Cel"): (1.0, -273.15),
    ("mdeg", "deg"): (0.001, 0.0),
    ("rad", "deg"): (180.0 / math.pi, 0.0),
    ("%", "/"): (0.01, 0.0),
    ("/", "%"): (100.0, 0.0),
    ("mg/m3", "ug/m3"): (1000.0, 0.0),
}


class MappingError(ValueError):
    """A raw value cannot be mapped onto its canonical point."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProfileHeader(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_.\-]*$")
    class_: str = Field(alias="class")
    driver: str
    vendor: str
    model: str
    description: str = ""
    identify: dict[str, Any] | None = None  # driver-specific identification (for scans)


class PointMapModel(_Strict):
    address: dict[str, Any] | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    enum: dict[str, str | bool | float | int] | None = None
    invert: bool = False
    deadband: float | None = Field(default=None, ge=0)
    precision: int | None = Field(default=None, ge=0, le=12)  # decimal places of the canonical value
    writable: bool | None = None  # a profile may forbid writes the class allows
    min: float | None = None  # narrower write range than the class's
    max: float | None = None


class EventRuleModel(_Strict):
    point: str
    source: str | None = None
    equals: str | bool | float | int | None = None
    above: float | None = None
    below: float | None = None
    clear_equals: str | bool | float | int | None = None
    clear_above: float | None = None
    clear_below: float | None = None
    severity: str | None = None

    @model_validator(mode="after")
    def _one_condition(self) -> EventRuleModel:
        given = [c for c in (self.equals, self.above, self.below) if c is not None]
        if len(given) != 1:
            raise ValueError("an event rule needs exactly one of equals, above, below")
        if self.severity is not None and self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {list(SEVERITIES)}")
        return self


class ProfileModel(_Strict):
    profile: ProfileHeader
    driver: dict[str, Any] = Field(default_factory=dict)
    points: dict[str, PointMapModel]
    events: list[EventRuleModel] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PointMap:
    """How one canonical point is obtained from the device (pure data)."""

    name: str
    pdef: PointDef
    address: Any  # driver PointAddress instance (None for derived event points)
    scale: float = 1.0
    offset: float = 0.0
    unit_factor: float = 1.0
    unit_offset: float = 0.0
    enum: Mapping[str, Value] | None = None
    invert: bool = False
    deadband: float | None = None
    precision: int | None = None
    writable: bool = False
    wmin: float | None = None
    wmax: float | None = None
    # derived: raw numbers pass unchanged (no scale, offset or unit conversion)
    identity: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "identity",
            self.scale == 1.0 and self.offset == 0.0
            and self.unit_factor == 1.0 and self.unit_offset == 0.0,
        )


@dataclass(frozen=True, slots=True)
class EventRule:
    point: str
    source: str
    severity: str
    equals: Value | None = None
    above: float | None = None
    below: float | None = None
    clear_equals: Value | None = None
    clear_above: float | None = None
    clear_below: float | None = None


@dataclass(frozen=True, slots=True)
class Profile:
    id: str
    cls: str
    driver: str
    vendor: str
    model: str
    description: str
    file: str
    options: Any  # driver ProfileOptions instance
    points: dict[str, PointMap]
    events: tuple[EventRule, ...] = field(default_factory=tuple)
    identify: Mapping[str, Any] | None = None

    @property
    def read_points(self) -> list[PointMap]:
        return [p for p in self.points.values() if p.address is not None]


# --------------------------------------------------------------------------- mapping


def _num(raw: Any) -> float:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            raise MappingError(f"expected a number, device sent {raw!r}") from None
    raise MappingError(f"expected a number, device sent {type(raw).__name__}")


_DIGITS = 15  # a double holds 15 significant decimal digits exactly; the rest is binary noise
_EXACT = 10**_DIGITS  # integers below this survive _tidy unchanged


def _tidy(x: float) -> float | int:
    """Remove binary noise from scaled values (0.1 * 3 -> 0.3) without losing precision."""
    if not math.isfinite(x):
        raise MappingError(f"value is not finite: {x}")
    r = float(f"{x:.{_DIGITS}g}")
    return int(r) if r.is_integer() and abs(r) < 2**53 else r


def to_canonical(pm: PointMap, raw: Any) -> Value:
    """Map a raw driver value onto the canonical point's type and unit."""
    if raw is None:
        raise MappingError("no value")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace").rstrip("\x00 ")
    if pm.enum is not None:
        key = _enum_key(raw)
        if key not in pm.enum:
            raise MappingError(f"raw value {raw!r} is not in the profile's enum map")
        value: Value = pm.enum[key]
        if pm.pdef.type == "bool" and not isinstance(value, bool):
            raise MappingError(f"enum maps {raw!r} to {value!r}, the point needs a boolean")
        return value
    t = pm.pdef.type
    if raw.__class__ is int and pm.identity and t != "bool" and t != "string":
        # unscaled integers pass exactly (a 64-bit counter, a millisecond timestamp); below
        # _EXACT this is what the float path gives, above it the float path would lose digits
        return raw
    if t == "bool":
        if isinstance(raw, str):
            b = raw.strip().lower() in ("1", "true", "on", "yes")
        else:
            b = bool(_num(raw))
        return b != pm.invert
    if t == "string":
        return str(raw)
    x = _num(raw) * pm.scale + pm.offset
    x = x * pm.unit_factor + pm.unit_offset
    if pm.precision is not None and math.isfinite(x):
        x = round(x, pm.precision)
    return _tidy(x)


def _enum_key(raw: Any) -> str:
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def to_raw(pm: PointMap, value: Value) -> Any:
    """Inverse of ``to_canonical`` for writes (value already validated against the class)."""
    if pm.enum is not None:
        for key, canon in pm.enum.items():
            if canon == value and type(canon) is type(value):
                try:
                    return int(key)
                except ValueError:
                    return {"true": True, "false": False}.get(key, key)
        raise MappingError(f"{value!r} has no raw value in the profile's enum map")
    if pm.pdef.type == "bool":
        if not isinstance(value, bool):
            raise MappingError("expected a boolean")
        return value != pm.invert
    if pm.pdef.type == "string":
        return str(value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MappingError("expected a number")
    x = (float(value) - pm.unit_offset) / pm.unit_factor
    x = (x - pm.offset) / pm.scale
    r = round(x, 9)
    return int(r) if float(r).is_integer() else r


def outside_deadband(pm: PointMap, last: Value | None, new: Value) -> bool:
    """Whether ``new`` differs enough from ``last`` to be sent (telemetry deadband)."""
    if last is None or pm.deadband is None:
        return True
    if isinstance(new, bool) or isinstance(last, bool):
        return new != last
    if isinstance(new, int | float) and isinstance(last, int | float):
        return abs(new - last) > pm.deadband
    return new != last


def rule_active(rule: EventRule, value: Value, was_active: bool) -> bool:
    """Evaluate an event rule with hysteresis; returns whether the event is now active."""
    if not was_active:
        if rule.equals is not None:
            return bool(value == rule.equals)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if rule.above is not None:
            return value > rule.above
        if rule.below is not None:
            return value < rule.below
        return False
    # currently active: is it cleared?
    if rule.clear_equals is not None:
        return not bool(value == rule.clear_equals)
    if isinstance(value, int | float) and not isinstance(value, bool):
        if rule.clear_below is not None:
            return not value < rule.clear_below
        if rule.clear_above is not None:
            return not value > rule.clear_above
    return rule_active(rule, value, False)


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True, slots=True)
class ProfileStub:
    """What is known of a profile file that did not load: enough to tell a device that names
    it why (``cause``, the file's first error) and to check the device's other keys
    (``cls``, ``driver``) where the file gives them."""

    file: str
    id: str | None
    cls: str | None
    driver: str | None
    cause: ConfigIssue


@dataclass
class ProfileSet:
    profiles: dict[str, Profile] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # id -> file
    failed: dict[str, ProfileStub] = field(default_factory=dict)  # id -> stub of a broken file
    unnamed: list[ProfileStub] = field(default_factory=list)  # broken files without a known id


def driver_profile_files(driver_modules: Iterable[str]) -> list[tuple[str, str]]:
    """Profiles a driver package ships in its ``profiles/`` folder."""
    out: list[tuple[str, str]] = []
    for mod in driver_modules:
        pkg = mod.rsplit(".", 1)[0]
        try:
            root = resources.files(pkg).joinpath("profiles")
            if not root.is_dir():
                continue
        except (ModuleNotFoundError, TypeError):
            continue
        for entry in sorted(root.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".toml"):
                out.append((f"<{pkg}>/profiles/{entry.name}", entry.read_text("utf-8")))
    return out


def site_profile_files(dirs: Iterable[Path]) -> tuple[list[tuple[str, str]], list[ConfigIssue]]:
    out: list[tuple[str, str]] = []
    issues: list[ConfigIssue] = []
    for d in dirs:
        if not d.is_dir():
            issues.append(ConfigIssue(str(d), "profiles", "profiles directory does not exist"))
            continue
        for path in sorted(d.glob("*.toml")):
            try:
                out.append((str(path), path.read_text("utf-8")))
            except OSError as exc:
                issues.append(ConfigIssue(str(path), "", f"cannot read: {exc.strerror}"))
    return out, issues


_HEADER_KEY_RE = re.compile(r"""^\s*(id|class|driver)\s*=\s*["']([^"'\n]*)["']""")
_TABLE_LINE_RE = re.compile(r"^\s*\[")


def _header_from_text(text: str) -> dict[str, str]:
    """Best effort for a file that is not valid TOML: the ``[profile]`` table's id, class and
    driver as written, so that devices naming the profile can be told about the broken file."""
    found: dict[str, str] = {}
    inside = False
    for line in text.splitlines():
        if _TABLE_LINE_RE.match(line):
            inside = line.split("#", 1)[0].strip() == "[profile]"
            continue
        m = _HEADER_KEY_RE.match(line) if inside else None
        if m:
            found.setdefault(m.group(1), m.group(2))
    return found


def parse_profile(
    file: str, text: str, drivers: Mapping[str, Any], classes: Mapping[str, ClassDef] | None = None
) -> tuple[Profile | None, list[ConfigIssue]]:
    """Parse and validate one profile. ``drivers`` maps a profile ``driver`` value to the
    driver object whose schemas validate addresses and options. Every independent error of
    the file is returned (a bad header does not hide bad points)."""
    prof, issues, _ = parse_profile_header(file, text, drivers, classes)
    return prof, issues


def parse_profile_header(
    file: str, text: str, drivers: Mapping[str, Any], classes: Mapping[str, ClassDef] | None = None
) -> tuple[Profile | None, list[ConfigIssue], dict[str, str]]:
    """``parse_profile``, also returning the header values (id, class, driver) that are
    valid, even when the profile as a whole is not."""
    classes = classes if classes is not None else catalogue()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return None, [toml_issue(file, exc)], _header_from_text(text)
    issues: list[ConfigIssue] = []

    def issue(path: tuple[Any, ...], message: str) -> None:
        issues.append(ConfigIssue(file, ".".join(str(p) for p in path), message, locate(text, path)))

    def validated(model: type[BaseModel], raw: Any, prefix: tuple[Any, ...]) -> tuple[Any, set[Any]]:
        """(model instance or None, top-level keys of ``raw`` that are wrong)."""
        try:
            return model.model_validate(raw), set()
        except ValidationError as exc:
            found = issues_from_validation(exc, file, text, prefix)
            issues.extend(found)
            return None, {e["loc"][0] for e in exc.errors() if e["loc"]} or {None}

    for key in data:
        if key not in ProfileModel.model_fields:
            issue((key,), "unknown key (not part of this section's schema)")

    raw_head = data.get("profile")
    head: ProfileHeader | None = None
    known: dict[str, str] = {}
    if not isinstance(raw_head, dict):
        issue(("profile",), "required key is missing" if raw_head is None else "expected a table [profile]")
    else:
        head, bad = validated(ProfileHeader, raw_head, ("profile",))
        known = {
            k: raw_head[k] for k in ("id", "class", "driver") if k not in bad and isinstance(raw_head.get(k), str)
        }
    cls_name, drv_name = known.get("class"), known.get("driver")

    cdef: ClassDef | None = None
    if cls_name is not None:
        cdef = classes.get(cls_name)
        if cdef is None or cls_name == "gateway":
            issue(("profile", "class"), f"expected a catalogue class, found {cls_name!r}")
            cdef = None
    driver: Any = None
    if drv_name is not None:
        driver = drivers.get(drv_name)
        if driver is None:
            issue(
                ("profile", "driver"),
                f"expected an installed driver or protocol ({', '.join(sorted(drivers))}), "
                f"found {drv_name!r}",
            )
    raw_options = data.get("driver", {})
    options: Any = None
    if not isinstance(raw_options, dict):
        issue(("driver",), "expected a table [driver]")
    elif driver is not None:
        options, _ = validated(driver.ProfileOptions, raw_options, ("driver",))

    raw_points = data.get("points")
    if raw_points is None:
        issue(("points",), "required key is missing")
        raw_points = {}
    elif not isinstance(raw_points, dict):
        issue(("points",), "expected tables [points.NAME]")
        raw_points = {}
    points: dict[str, PointMap] = {}
    for pname, raw_pm in raw_points.items():
        if not isinstance(raw_pm, dict):
            issue(("points", pname), "expected a table [points.NAME]")
            continue
        pm, bad = validated(PointMapModel, raw_pm, ("points", pname))
        pdef = cdef.points.get(pname) if cdef is not None else None
        if cdef is not None and (pdef is None or pdef.kind == "lifecycle"):
            issue(
                ("points", pname),
                f"class {cls_name} has no point {pname!r} (points: "
                f"{', '.join(p for p, d in cdef.points.items() if d.kind != 'lifecycle')})",
            )
            pdef = None
        raw_address = raw_pm.get("address")
        if raw_address is None:
            if cdef is None or pdef is not None:
                issue(("points", pname, "address"), "required key is missing")
            continue
        address: Any = None
        if driver is not None and "address" not in bad:
            address, abad = validated(driver.PointAddress, raw_address, ("points", pname, "address"))
            if abad:
                continue
        if pm is None or pdef is None or address is None:
            continue
        factor, uoff = 1.0, 0.0
        if pm.unit is not None and pm.unit != pdef.unit:
            conv = UNIT_CONVERSIONS.get((pm.unit, pdef.unit or ""))
            if conv is None:
                issue(
                    ("points", pname, "unit"),
                    f"no conversion from {pm.unit!r} to the class unit {pdef.unit!r}",
                )
                continue
            factor, uoff = conv
        if pm.enum is not None:
            wrong = [v for v in pm.enum.values() if pdef.check_value(v) is not None]
            if wrong:
                issue(("points", pname, "enum"), f"values {wrong!r} are not valid for this point")
                continue
        if pm.scale == 0:
            issue(("points", pname, "scale"), "scale cannot be 0")
            continue
        writable = pdef.writable if pm.writable is None else (pm.writable and pdef.writable)
        if pm.writable and not pdef.writable:
            issue(("points", pname, "writable"), f"{cls_name}.{pname} is read-only in the class")
        points[pname] = PointMap(
            name=pname,
            pdef=pdef,
            address=address,
            scale=pm.scale,
            offset=pm.offset,
            unit_factor=factor,
            unit_offset=uoff,
            enum=pm.enum,
            invert=pm.invert,
            deadband=pm.deadband,
            precision=pm.precision,
            writable=writable,
            wmin=pm.min,
            wmax=pm.max,
        )

    raw_events = data.get("events", [])
    if not isinstance(raw_events, list):
        issue(("events",), "expected an array of tables [[events]]")
        raw_events = []
    rules: list[EventRule] = []
    for i, raw_ev in enumerate(raw_events):
        ev, _ = validated(EventRuleModel, raw_ev, ("events", i))
        if ev is None or cdef is None:
            continue
        pdef = cdef.points.get(ev.point)
        if pdef is None or pdef.kind != "event":
            issue(("events", i, "point"), f"expected an event point of {cls_name}, found {ev.point!r}")
            continue
        source = ev.source or ev.point
        if source not in raw_points:
            issue(("events", i, "source"), f"expected a point mapped in this profile, found {source!r}")
            continue
        rules.append(
            EventRule(
                point=ev.point,
                source=source,
                severity=ev.severity or pdef.severity or "info",
                equals=ev.equals,
                above=ev.above,
                below=ev.below,
                clear_equals=ev.clear_equals,
                clear_above=ev.clear_above,
                clear_below=ev.clear_below,
            )
        )
        if ev.point not in points:  # derived event point: no address of its own
            points[ev.point] = PointMap(name=ev.point, pdef=pdef, address=None)
    if issues or head is None or cdef is None or driver is None:
        return None, issues, known
    return (
        Profile(
            id=head.id,
            cls=head.class_,
            driver=head.driver,
            vendor=head.vendor,
            model=head.model,
            description=head.description,
            file=file,
            options=options,
            points=points,
            events=tuple(rules),
            identify=head.identify,
        ),
        [],
        known,
    )


def load_profiles(
    sources: Iterable[tuple[str, str]], drivers: Mapping[str, Any]
) -> ProfileSet:
    """Load profiles in order; a later file with the same id overrides an earlier one
    (site profiles come after bundled ones). A file that does not load is remembered in
    ``failed`` (by its id, where the file gives one) or ``unnamed``."""
    result = ProfileSet()
    for file, text in sources:
        prof, issues, known = parse_profile_header(file, text, drivers)
        result.issues.extend(issues)
        if prof is not None:
            result.profiles[prof.id] = prof
            result.sources[prof.id] = file
            result.failed.pop(prof.id, None)
        elif issues:
            stub = ProfileStub(file, known.get("id"), known.get("class"), known.get("driver"), issues[0])
            if stub.id is None:
                result.unnamed.append(stub)
            else:
                result.failed[stub.id] = stub
    return result
