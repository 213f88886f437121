"""Configuration: one TOML file plus profile directories, validated completely at start.

``load_config`` returns a fully resolved ``Config`` or raises ``ConfigError`` holding *every*
problem found (file, line, key path, expected, found) -- not only the first one.
"""

from __future__ import annotations

import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from gateway.classes import ClassDef, catalogue, device_classes
from gateway.errors import ConfigError, ConfigIssue, issues_from_validation, locate
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
        raise ConfigError([ConfigIssue(fname, "", f"not valid TOML: {exc}")]) from None
    return validate_config(data, file=file, text=text, registry=registry, environ=environ)


def validate_config(
    data: dict[str, Any],
    *,
    file: Path,
    text: str = "",
    registry: DriverRegistry | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    fname = str(file)
    issues: list[ConfigIssue] = []
    warnings: list[str] = []
    if environ is not None:  # secrets resolve against os.environ; tests may pass their own
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)
    try:
        model = _validate_sections(data, fname, text, issues)
    finally:
        if environ is not None:
            os.environ.clear()
            os.environ.update(saved)
    if model is None:
        raise ConfigError(issues)

    reg = registry if registry is not None else load_drivers()
    by_proto = reg.by_protocol()

    def issue(path: tuple[Any, ...], message: str) -> None:
        from gateway.errors import join_path

        issues.append(ConfigIssue(fname, join_path(path), message, locate(text, path)))

    # profiles: bundled (driver packages) then site directories
    sources = driver_profile_files(reg.modules())
    dirs = [Path(d) if Path(d).is_absolute() else file.parent / d for d in model.gateway.profile_dirs]
    site, site_issues = site_profile_files(dirs)
    issues.extend(site_issues)
    pset = load_profiles([*sources, *site], by_proto)
    issues.extend(pset.issues)

    # buses
    buses: dict[str, BusSpec] = {}
    for i, bus in enumerate(model.buses):
        if bus is None:
            continue
        if bus.name in buses:
            issue(("buses", i, "name"), f"duplicate bus name {bus.name!r}")
            continue
        bus_drv = reg.drivers.get(bus.driver)
        if bus_drv is None:
            issue(
                ("buses", i, "driver"),
                f"expected an installed driver ({', '.join(sorted(reg.drivers))}), found {bus.driver!r}",
            )
            continue
        extra = dict(bus.model_extra or {})
        try:
            opts = bus_drv.BusOptions.model_validate(extra)
        except ValidationError as exc:
            issues.extend(issues_from_validation(exc, fname, text, ("buses", i)))
            continue
        buses[bus.name] = BusSpec(bus.name, bus.driver, opts)

    # devices
    classes = device_classes()
    devices: dict[str, DeviceConfig] = {}
    seen_ids: set[str] = set()
    for i, dev in enumerate(model.devices):
        if dev is None:
            continue
        if dev.id in seen_ids:
            issue(("devices", i, "id"), f"duplicate device id {dev.id!r}")
            continue
        seen_ids.add(dev.id)
        ok = True
        cdef = classes.get(dev.class_)
        if cdef is None:
            issue(
                ("devices", i, "class"),
                f"expected a catalogue class ({', '.join(sorted(classes))}), found {dev.class_!r}",
            )
            ok = False
        prof = pset.profiles.get(dev.profile)
        if prof is None:
            issue(("devices", i, "profile"), f"no profile with id {dev.profile!r} (bundled or in profile_dirs)")
            ok = False
        elif cdef is not None and prof.cls != dev.class_:
            issue(
                ("devices", i, "profile"),
                f"profile {prof.id!r} maps class {prof.cls!r}, the device is {dev.class_!r}",
            )
            ok = False
        drv: Driver | None = None
        bus_name = dev.bus
        if dev.bus is not None:
            bspec = buses.get(dev.bus)
            if bspec is None:
                known = ", ".join(sorted(b.name for b in model.buses if b is not None)) or "none configured"
                issue(("devices", i, "bus"), f"no bus named {dev.bus!r} (buses: {known})")
                ok = False
            else:
                drv = reg.drivers[bspec.driver]
                if prof is not None and prof.driver not in drv.accepted_protocols():
                    issue(
                        ("devices", i, "profile"),
                        f"profile {prof.id!r} is for {prof.driver!r}; bus {dev.bus!r} runs driver "
                        f"{bspec.driver!r} ({', '.join(sorted(drv.accepted_protocols()))})",
                    )
                    ok = False
        elif prof is not None:
            drv = by_proto.get(prof.driver)
            if drv is None or not drv.implicit_bus:
                issue(("devices", i, "bus"), f"required: driver {prof.driver!r} devices sit on a bus")
                ok = False
        if not ok or drv is None or prof is None or cdef is None:
            continue
        try:
            address = drv.DeviceAddress.model_validate(dev.address)
        except ValidationError as exc:
            issues.extend(issues_from_validation(exc, fname, text, ("devices", i, "address")))
            continue
        if dev.bus is None:
            bus_name = f"{dev.id}"
            if bus_name in buses:
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
    for i, up in enumerate(model.uplinks):
        if up is None:
            continue
        if up.name in names:
            issue(("uplinks", i, "name"), f"duplicate uplink name {up.name!r}")
            continue
        names.add(up.name)
        try:
            import sync

            schema = sync.uplink_schema(up.kind)
        except (ImportError, AttributeError):
            issue(("uplinks", i, "kind"), "the sync package is not installed")
            continue
        except (KeyError, ValueError):
            issue(("uplinks", i, "kind"), f"expected one of {sync.UPLINK_KINDS}, found {up.kind!r}")
            continue
        try:
            uplinks.append(schema.model_validate(up.model_dump(by_alias=True)))
        except ValidationError as exc:
            issues.extend(issues_from_validation(exc, fname, text, ("uplinks", i)))

    privacy: Any = None
    try:
        privacy = _privacy_model(model.privacy)
    except ValidationError as exc:
        issues.extend(issues_from_validation(exc, fname, text, ("privacy",)))
    except ImportError:
        privacy = None

    if issues:
        raise ConfigError(issues)
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


def _validate_sections(
    data: dict[str, Any], fname: str, text: str, issues: list[ConfigIssue]
) -> ConfigModel | None:
    """Validate section by section and list entry by list entry, so that an error in one
    place does not hide the errors of the others; invalid entries are left out of the
    returned model (the caller still fails, after the cross-checks ran on the rest)."""
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
    for key, model in list_models.items():
        entries = data.get(key, [])
        if not isinstance(entries, list):
            issues.append(ConfigIssue(fname, key, f"expected an array of tables [[{key}]]", locate(text, (key,))))
            continue
        good: list[BaseModel | None] = []
        for i, entry in enumerate(entries):
            try:
                good.append(model.model_validate(entry))
            except ValidationError as exc:
                issues.extend(issues_from_validation(exc, fname, text, (key, i)))
                good.append(None)  # keep positions so later messages name the right index
        values[key] = good
    privacy = data.get("privacy", {})
    if not isinstance(privacy, dict):
        issues.append(ConfigIssue(fname, "privacy", "expected a table", locate(text, ("privacy",))))
        privacy = {}
    values["privacy"] = privacy
    if "gateway" not in values:
        return None
    model_obj = ConfigModel.model_construct(**values)
    return model_obj


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
