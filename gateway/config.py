"""Configuration: one TOML file plus profile directories, validated completely at start.

``load_config`` returns a fully resolved ``Config`` or raises ``ConfigError`` holding *every*
problem found (file, line, key path, expected, found) -- not only the first one.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from gateway.classes import ClassDef, catalogue, device_classes
from gateway.errors import (
    ConfigError,
    ConfigIssue,
    issues_from_validation,
    join_path,
    locate,
    toml_issue,
)
from gateway.plugin import BusSpec, DeviceSpec, Driver, PointSpec
from gateway.profiles import Profile, driver_profile_files, load_profiles, site_profile_files
from gateway.registry import DriverRegistry, load_drivers
from gateway.types import ByteSize, Duration, Secret

DEFAULT_CONFIG = Path("/etc/edge-gateway/gateway.toml")
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class GatewaySection(_Strict):
    id: str = Field(pattern=_ID)
    district: str = Field(pattern=r"^\d{6}$", description="administrative division code")
    community: str = Field(min_length=1)
    profile_dirs: list[str] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class ApiSection(_Strict):
    enabled: bool = True
    listen: str = Field(default="127.0.0.1:8470", pattern=r"^(\[[0-9a-fA-F:]+\]|[^:\s]+):\d{1,5}$")
    token: Secret | None = None


class MetricsSection(_Strict):
    enabled: bool = True  # /metrics on the local API


class BufferSection(_Strict):
    path: str = "/var/lib/edge-gateway/buffer.db"
    budget: ByteSize | None = Field(default=2 * 1024**3)
    max_age: dict[Literal["event", "state", "telemetry"], Duration] = Field(default_factory=dict)
    downsample: dict[str, Any] | None = None
    queue_size: int = Field(default=10_000, ge=100)
    commit_max_records: int = Field(default=1_000, ge=1)
    commit_max_delay: Duration = 0.005


class UplinkSection(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(pattern=_ID)
    kind: str


class BusSection(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)
    name: str = Field(pattern=_ID)
    driver: str


class DeviceSection(_Strict):
    id: str = Field(pattern=_ID)
    class_: str = Field(alias="class")
    profile: str
    bus: str | None = None
    address: dict[str, Any] = Field(default_factory=dict)
    poll: Duration = 10.0
    startup: Literal["error", "retry", "ignore"] = "retry"
    stale_after: int = Field(default=3, ge=1, description="missed polls before values are stale")
    enabled: bool = True
    name: str = ""
    location: dict[str, str] = Field(default_factory=dict)


class ConfigModel(_Strict):
    gateway: GatewaySection
    api: ApiSection = ApiSection()
    metrics: MetricsSection = MetricsSection()
    buffer: BufferSection = BufferSection()
    uplinks: list[UplinkSection] = Field(default_factory=list)
    buses: list[BusSection] = Field(default_factory=list)
    devices: list[DeviceSection] = Field(default_factory=list)
    privacy: dict[str, Any] = Field(default_factory=dict)


@dataclass
class DeviceConfig:
    section: DeviceSection
    spec: DeviceSpec
    profile: Profile
    cdef: ClassDef
    bus: str  # bus name (implicit buses are named after the device)


@dataclass
class Config:
    file: Path
    text: str
    model: ConfigModel
    registry: DriverRegistry
    profiles: dict[str, Profile]
    buses: dict[str, BusSpec]
    devices: dict[str, DeviceConfig]
    uplinks: list[Any]  # validated sync schemas
    privacy: Any
    warnings: list[str] = field(default_factory=list)

    @property
    def gw_id(self) -> str:
        return self.model.gateway.id

    def resolve_path(self, p: str) -> Path:
        path = Path(p)
        return path if path.is_absolute() else (self.file.parent / path)


def _privacy_model(data: Mapping[str, Any]) -> Any:
    from gateway.privacy import PrivacyConfig

    return PrivacyConfig.model_validate(dict(data))


def load_config(
    path: Path | str,
    *,
    registry: DriverRegistry | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate. Raises ConfigError with every problem found."""
    file = Path(path)
    fname = str(file)
    try:
        text = file.read_text("utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(fname, "", f"cannot read the file: {exc.strerror}")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([toml_issue(fname, exc)]) from None
    return validate_config(data, file=file, text=text, registry=registry, environ=environ)


def validate_config(
    data: dict[str, Any],
    *,
    file: Path,
    text: str = "",
    registry: DriverRegistry | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    reg = registry if registry is not None else load_drivers()
    if environ is None:
        return _validate_config(data, file=file, text=text, registry=reg)
    saved = dict(os.environ)  # secrets resolve against os.environ; tests may pass their own
    os.environ.clear()
    os.environ.update(environ)
    try:
        return _validate_config(data, file=file, text=text, registry=reg)
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class _Entry:
    """One ``[[buses]]``/``[[devices]]``/``[[uplinks]]`` entry: the validated model (None when
    it has errors) and the raw values, with the keys found wrong in ``bad``, so that the
    cross-checks still run on the keys that are right."""

    model: Any
    raw: dict[str, Any]
    bad: set[Any]

    def get(self, key: str) -> Any:
        """The raw value of a key that passed validation (a string for name-like keys)."""
        if key in self.bad:
            return None
        return self.raw.get(key)

    def text(self, key: str) -> str | None:
        value = self.get(key)
        return value if isinstance(value, str) else None


def _validate_config(data: dict[str, Any], *, file: Path, text: str, registry: DriverRegistry) -> Config:
    fname = str(file)
    issues: list[ConfigIssue] = []
    follow: dict[int, list[ConfigIssue]] = {}  # id(cause) -> consequences
    warnings: list[str] = []

    def issue(path: tuple[Any, ...], message: str) -> ConfigIssue:
        i = ConfigIssue(fname, join_path(path), message, locate(text, path))
        issues.append(i)
        return i

    def consequence(cause: ConfigIssue, path: tuple[Any, ...], message: str) -> None:
        follow.setdefault(id(cause), []).append(ConfigIssue(fname, join_path(path), message, locate(text, path)))

    sections = _validate_sections(data, fname, text, issues)
    reg = registry
    by_proto = reg.by_protocol()

    # profiles: bundled (driver packages) then site directories
    sources = driver_profile_files(reg.modules())
    gw = sections.get("gateway")
    if isinstance(gw, GatewaySection):
        dir_names: list[Any] = list(gw.profile_dirs)
    else:  # the section has errors: use the folders that are given right
        raw_dirs = gw.get("profile_dirs") if isinstance(gw, dict) else None
        dir_names = [d for d in raw_dirs if isinstance(d, str)] if isinstance(raw_dirs, list) else []
    dirs: list[Path] = []
    missing_dirs: list[ConfigIssue] = []
    for n, d in enumerate(dir_names):
        path = Path(d) if Path(d).is_absolute() else file.parent / d
        if not path.is_dir():
            missing_dirs.append(
                issue(("gateway", "profile_dirs", n), f"profiles directory {path} does not exist")
            )
            continue
        dirs.append(path)
    site, site_issues = site_profile_files(dirs)
    issues.extend(site_issues)
    pset = load_profiles([*sources, *site], by_proto)
    issues.extend(pset.issues)

    # buses
    bus_entries: list[_Entry] = sections["buses"]
    buses: dict[str, BusSpec] = {}
    broken_buses: dict[str, tuple[ConfigIssue, str | None]] = {}  # name -> (cause, driver)
    for i, entry in enumerate(bus_entries):
        before = len(issues)
        name, driver_name = entry.text("name"), entry.text("driver")
        bus_drv = reg.drivers.get(driver_name) if driver_name is not None else None
        if driver_name is not None and bus_drv is None:
            issue(
                ("buses", i, "driver"),
                f"expected an installed driver ({', '.join(sorted(reg.drivers))}), found {driver_name!r}",
            )
        opts: Any = None
        if bus_drv is not None:
            extra = {k: v for k, v in entry.raw.items() if k not in BusSection.model_fields}
            try:
                opts = bus_drv.BusOptions.model_validate(extra)
            except ValidationError as exc:
                issues.extend(issues_from_validation(exc, fname, text, ("buses", i)))
        if name is None:
            continue
        if name in buses or name in broken_buses:
            issue(("buses", i, "name"), f"duplicate bus name {name!r}")
            continue
        cause = _first_issue_of(issues, f"buses[{i}]")
        if cause is not None:  # devices on it are checked against its driver, if that is known
            broken_buses[name] = (cause, bus_drv.name if bus_drv is not None else None)
        elif bus_drv is not None and len(issues) == before:
            buses[name] = BusSpec(name, bus_drv.name, opts)

    # devices
    classes = device_classes()
    devices: dict[str, DeviceConfig] = {}
    seen_ids: set[str] = set()
    for i, entry in enumerate(sections["devices"]):
        before = len(issues)
        caused = False
        dev_id = entry.text("id")
        if dev_id is not None:
            if dev_id in seen_ids:
                issue(("devices", i, "id"), f"duplicate device id {dev_id!r}")
            seen_ids.add(dev_id)
        cls_name = entry.text("class")
        cdef = classes.get(cls_name) if cls_name is not None else None
        if cls_name is not None and cdef is None:
            issue(
                ("devices", i, "class"),
                f"expected a catalogue class ({', '.join(sorted(classes))}), found {cls_name!r}",
            )
        # the profile: loaded, broken (a consequence of its file's error), or missing
        prof_id = entry.text("profile")
        prof = pset.profiles.get(prof_id) if prof_id is not None else None
        prof_cls: str | None = prof.cls if prof is not None else None
        prof_driver: str | None = prof.driver if prof is not None else None
        if prof_id is not None and prof is None:
            stub = pset.failed.get(prof_id) or next(
                (s for s in pset.unnamed if Path(s.file).stem == prof_id), None
            )
            caused = True
            if stub is not None:
                prof_cls, prof_driver = stub.cls, stub.driver
                consequence(
                    stub.cause,
                    ("devices", i, "profile"),
                    f"profile {prof_id!r} did not load: {stub.file} has errors",
                )
            elif missing_dirs or pset.unnamed:
                cause = missing_dirs[0] if missing_dirs else pset.unnamed[0].cause
                where = cause.message if missing_dirs else f"{pset.unnamed[0].file} has errors"
                consequence(
                    cause,
                    ("devices", i, "profile"),
                    f"no profile with id {prof_id!r} was loaded; it may be in a file that was not read ({where})",
                )
            else:
                caused = False
                issue(("devices", i, "profile"), f"no profile with id {prof_id!r} (bundled or in profile_dirs)")
        if cdef is not None and prof_cls is not None and prof_cls != cls_name:
            issue(
                ("devices", i, "profile"),
                f"profile {prof_id!r} maps class {prof_cls!r}, the device is {cls_name!r}",
            )
        # the driver: the bus's, or for a device without a bus its profile's
        drv: Driver | None = None
        bus_name = entry.text("bus")
        if "bus" in entry.bad:
            pass
        elif bus_name is not None:
            bspec = buses.get(bus_name)
            broken = broken_buses.get(bus_name)
            if bspec is not None:
                drv = reg.drivers[bspec.driver]
            elif broken is not None:
                caused = True
                cause, bus_driver = broken
                drv = reg.drivers.get(bus_driver) if bus_driver is not None else None
                consequence(
                    cause,
                    ("devices", i, "bus"),
                    f"bus {bus_name!r} has errors; the device "
                    + ("is checked against its driver only" if drv is not None else "cannot be checked against it"),
                )
            else:
                named = {bn for e in bus_entries if (bn := e.text("name")) is not None}
                known = ", ".join(sorted(named)) or "none configured"
                issue(("devices", i, "bus"), f"no bus named {bus_name!r} (buses: {known})")
            if drv is not None and prof_driver is not None and prof_driver not in drv.accepted_protocols():
                issue(
                    ("devices", i, "profile"),
                    f"profile {prof_id!r} is for {prof_driver!r}; bus {bus_name!r} runs driver "
                    f"{drv.name!r} ({', '.join(sorted(drv.accepted_protocols()))})",
                )
                drv = None
        elif prof_driver is not None:
            drv = by_proto.get(prof_driver)
            if drv is None or not drv.implicit_bus:
                issue(("devices", i, "bus"), f"required: driver {prof_driver!r} devices sit on a bus")
                drv = None
        address: Any = None
        raw_address = entry.get("address")
        if drv is not None and "address" not in entry.bad:
            try:
                address = drv.DeviceAddress.model_validate(raw_address if raw_address is not None else {})
            except ValidationError as exc:
                issues.extend(issues_from_validation(exc, fname, text, ("devices", i, "address")))
        dev: DeviceSection | None = entry.model
        if len(issues) > before or caused or dev is None or drv is None or prof is None or cdef is None:
            continue
        if address is None:
            continue
        if dev.bus is None:
            bus_name = f"{dev.id}"
            if bus_name in buses or bus_name in broken_buses:
                issue(("devices", i, "id"), f"device id {dev.id!r} clashes with a bus name")
                continue
            try:
                opts = drv.implicit_bus_options(address)
            except Exception as exc:  # driver-specific validation
                issue(("devices", i, "address"), str(exc))
                continue
            buses[bus_name] = BusSpec(bus_name, drv.name, opts)
        points = tuple(
            PointSpec(pm.name, pm.address, pm.writable, pm.pdef.type)
            for pm in prof.read_points
        )
        spec = DeviceSpec(
            id=dev.id,
            cls=dev.class_,
            profile=prof.id,
            address=address,
            options=prof.options,
            points=points,
            poll_interval=dev.poll,
            protocol=prof.driver,
        )
        assert bus_name is not None
        devices[dev.id] = DeviceConfig(dev, spec, prof, cdef, bus_name)

    # uplinks
    uplinks: list[Any] = []
    names: set[str] = set()
    for i, entry in enumerate(sections["uplinks"]):
        name, kind = entry.text("name"), entry.text("kind")
        if name is not None:
            if name in names:
                issue(("uplinks", i, "name"), f"duplicate uplink name {name!r}")
            names.add(name)
        if kind is None:
            continue
        try:
            import sync

            schema = sync.uplink_schema(kind)
        except (ImportError, AttributeError):
            issue(("uplinks", i, "kind"), "the sync package is not installed")
            continue
        except (KeyError, ValueError):
            issue(("uplinks", i, "kind"), f"expected one of {sync.UPLINK_KINDS}, found {kind!r}")
            continue
        raw = {k: v for k, v in entry.raw.items() if k not in entry.bad}
        if name is None:  # reported already; check the uplink's other keys
            raw["name"] = "unnamed"
        try:
            validated = schema.model_validate(raw)
        except ValidationError as exc:
            issues.extend(issues_from_validation(exc, fname, text, ("uplinks", i)))
            continue
        if entry.model is not None:
            uplinks.append(validated)

    privacy: Any = None
    try:
        privacy = _privacy_model(sections["privacy"])
    except ValidationError as exc:
        issues.extend(issues_from_validation(exc, fname, text, ("privacy",)))
    except ImportError:
        privacy = None

    if issues:
        raise ConfigError([replace(i, consequences=tuple(follow.get(id(i), ()))) for i in issues])
    model = ConfigModel.model_construct(
        **{k: v for k, v in sections.items() if k not in ("buses", "devices", "uplinks")},
        buses=[e.model for e in bus_entries],
        devices=[e.model for e in sections["devices"]],
        uplinks=[e.model for e in sections["uplinks"]],
    )
    if _has_secret_literals(data) and _world_readable(file):
        warnings.append(
            f"{fname} holds secrets and is readable by other users; chmod 0600 it or use "
            "{ credential = ... } / { env = ... }"
        )
    return Config(
        file=file,
        text=text,
        model=model,
        registry=reg,
        profiles=pset.profiles,
        buses=buses,
        devices=devices,
        uplinks=uplinks,
        privacy=privacy,
        warnings=warnings,
    )


def _first_issue_of(issues: list[ConfigIssue], prefix: str) -> ConfigIssue | None:
    return next((x for x in issues if x.path == prefix or x.path.startswith((prefix + ".", prefix + "["))), None)


def _validate_sections(
    data: dict[str, Any], fname: str, text: str, issues: list[ConfigIssue]
) -> dict[str, Any]:
    """Validate section by section and list entry by list entry, so that an error in one
    place does not hide the errors of the others. Returns the sections: a validated model
    for a table (its raw dict when it has errors; missing when absent), ``_Entry`` lists
    for arrays of tables, and the raw privacy table."""
    values: dict[str, Any] = {}
    for key in data:
        if key not in ConfigModel.model_fields:
            issues.append(
                ConfigIssue(fname, key, f"unknown section (expected one of {', '.join(ConfigModel.model_fields)})", locate(text, (key,)))
            )
    section_models: dict[str, type[BaseModel]] = {
        "gateway": GatewaySection,
        "api": ApiSection,
        "metrics": MetricsSection,
        "buffer": BufferSection,
    }
    list_models: dict[str, type[BaseModel]] = {
        "uplinks": UplinkSection,
        "buses": BusSection,
        "devices": DeviceSection,
    }
    for key, model in section_models.items():
        if key not in data:
            if key == "gateway":
                issues.append(ConfigIssue(fname, "gateway", "required section is missing"))
            continue
        try:
            values[key] = model.model_validate(data[key])
        except ValidationError as exc:
            issues.extend(issues_from_validation(exc, fname, text, (key,)))
            values[key] = data[key] if isinstance(data[key], dict) else {}
    for key, model in list_models.items():
        raw_entries = data.get(key, [])
        if not isinstance(raw_entries, list):
            issues.append(ConfigIssue(fname, key, f"expected an array of tables [[{key}]]", locate(text, (key,))))
            raw_entries = []
        entries: list[_Entry] = []
        for i, raw in enumerate(raw_entries):
            if not isinstance(raw, dict):
                issues.append(ConfigIssue(fname, join_path((key, i)), "expected a table", locate(text, (key, i))))
                entries.append(_Entry(None, {}, {None}))
                continue
            try:
                entries.append(_Entry(model.model_validate(raw), raw, set()))
            except ValidationError as exc:
                issues.extend(issues_from_validation(exc, fname, text, (key, i)))
                bad = {e["loc"][0] for e in exc.errors() if e["loc"]}
                entries.append(_Entry(None, raw, bad))  # keep positions: messages name the right index
        values[key] = entries
    privacy = data.get("privacy", {})
    if not isinstance(privacy, dict):
        issues.append(ConfigIssue(fname, "privacy", "expected a table", locate(text, ("privacy",))))
        privacy = {}
    values["privacy"] = privacy
    return values


_SECRET_KEYS = {"password", "token", "hmac_key", "secret"}


def _has_secret_literals(data: Any) -> bool:
    if isinstance(data, dict):
        for k, v in data.items():
            if k in _SECRET_KEYS and isinstance(v, str):
                return True
            if _has_secret_literals(v):
                return True
    elif isinstance(data, list):
        return any(_has_secret_literals(v) for v in data)
    return False


def _world_readable(file: Path) -> bool:
    try:
        return bool(file.stat().st_mode & (stat.S_IROTH | stat.S_IRGRP))
    except OSError:
        return False


def secret_value(s: SecretStr | None) -> str | None:
    return None if s is None else s.get_secret_value()


__all__ = [
    "DEFAULT_CONFIG",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "ConfigModel",
    "DeviceConfig",
    "catalogue",
    "load_config",
    "validate_config",
]
