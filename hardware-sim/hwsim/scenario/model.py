"""Scenario files: a whole simulated site described in one TOML file (pure code, no I/O).

A scenario lists *groups* of devices. A group with ``scope = "building"`` is repeated in
every building, ``scope = "site"`` exists once. Each group says which simulator serves it
(``sim``): ``modbus`` (``hwsim modbus``), ``dlt645`` / ``cjt188`` / ``framed`` (``hwsim
dlt645`` etc. on a pseudo-terminal or a TCP serial server), ``onvif`` (``hwsim onvif``) or
``virtual`` (the gateway's virtual driver, no simulator). Switching a group to ``virtual``
(in the file, or with ``--virtual KIND`` on the command line) keeps every device id, class
and poll interval, so records stay comparable::

    [scenario]
    name = "jifu"
    seed = 7                        # activity and device seeds (reproducible runs)

    [gateway]                       # copied into the generated gateway config
    id = "cd-wh-jifu-gw01"
    district = "510107"
    community = "Jifu"

    [site]
    buildings = 12
    buildings_per_line = 3          # buildings sharing one RS-485 line (one simulator each)

    [[groups]]
    name = "smoke"                  # referenced by [[activity]]
    scope = "building"              # building | site
    count = 2                       # devices per building (or on the site)
    class = "smoke_detector"
    id = "b{building:02d}-smoke-{n:02d}"    # {building}, {n} (1-based), {i} (0-based global)
    poll = "5s"
    sim = "modbus"                  # modbus | dlt645 | cjt188 | framed | onvif | virtual
    line = "rs485-{line}"           # bus name ({line} = line number of the building); serial/modbus
    link = "pty"                    # pty (RS-485 on a pseudo-terminal) | tcp (TCP / serial server)
    profiles = ["acme-sd300", "hailan-jtyg"]   # gateway profiles, rotated over the devices
    virtual_profile = "virtual-smoke"          # used when the group runs virtual

    [models.acme-sd300]             # simulator parameters per gateway profile
    sim_model = "acme-sd300"        # modbus: the hwsim device file (default: the profile id)
    set = { alarm = 0, battery_low = 0 }       # initial values

    [[activity]]                    # things that happen, injected through the control APIs
    group = "smoke"
    every = "20s"                   # mean interval (exponential, seeded)
    set = { alarm = 1 }             # modbus/serial values; a [lo, hi] list = uniform random
    clear = { alarm = 0 }           # applied `hold` seconds later
    hold = "8s"

ONVIF activity uses ``event = { topic = ..., data = {...}, source = {...} }`` and
``clear_event``; framed devices ``emit = { event = "card_granted", door = 1 }``.
"""

from __future__ import annotations

import random
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIMS = ("modbus", "dlt645", "cjt188", "framed", "onvif", "virtual")
SERIAL_SIMS = ("dlt645", "cjt188", "framed")
LINKS = ("pty", "tcp")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ScenarioError(ValueError):
    """A scenario file is invalid; ``problems`` lists every problem found."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


def parse_duration(value: Any) -> float:
    """``5``, ``2.5``, ``"250ms"``, ``"5s"``, ``"2m"``, ``"1h"`` -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"negative duration: {value!r}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            factor = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
            return float(m.group(1)) * factor
    raise ValueError(f"not a duration: {value!r} (expected seconds or e.g. '250ms', '5s', '2m')")


@dataclass(frozen=True)
class Group:
    name: str
    scope: str
    count: int
    cls: str
    id: str
    poll: str
    sim: str
    profiles: tuple[str, ...]
    virtual_profile: str | None
    line: str | None = None
    link: str = "pty"
    location: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Activity:
    group: str
    every: float
    hold: float = 0.0
    set: dict[str, Any] = field(default_factory=dict)
    clear: dict[str, Any] = field(default_factory=dict)
    event: dict[str, Any] | None = None
    clear_event: dict[str, Any] | None = None
    emit: dict[str, Any] | None = None


@dataclass(frozen=True)
class Scenario:
    name: str
    source: str
    seed: int
    gateway: dict[str, Any]
    buildings: int
    buildings_per_line: int
    groups: tuple[Group, ...]
    models: dict[str, dict[str, Any]]
    activity: tuple[Activity, ...]
    description: str = ""


@dataclass
class Device:
    """One simulated device and how the gateway reaches it."""

    id: str
    cls: str
    group: str
    sim: str  # effective simulator (after --virtual overrides)
    profile: str
    poll: str
    building: int | None
    line: str | None  # bus name for modbus / serial devices
    link: str
    sim_params: dict[str, Any]
    address: str | int | None = None  # unit id, meter address, framed address or camera name
    location: dict[str, str] = field(default_factory=dict)


@dataclass
class Line:
    """One simulator process serving one RS-485 line (pty) or TCP port."""

    name: str
    family: str  # modbus | serial
    link: str
    devices: list[Device] = field(default_factory=list)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise ScenarioError(str(path), [f"cannot read: {exc.strerror or exc}"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(str(path), [f"not valid TOML: {exc}"]) from None
    return parse_scenario(data, str(path))


def _known(table: dict[str, Any], allowed: set[str], where: str, problems: list[str]) -> None:
    for key in sorted(set(table) - allowed):
        problems.append(f"{where}: unknown key {key!r}")


def parse_scenario(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate a parsed scenario; every problem is reported at once (``ScenarioError``)."""
    problems: list[str] = []
    _known(data, {"scenario", "gateway", "site", "groups", "models", "activity"}, "top level", problems)
    head = data.get("scenario", {})
    _known(head, {"name", "seed", "description"}, "scenario", problems)
    gw = dict(data.get("gateway", {}))
    for key in ("id", "district", "community"):
        if not isinstance(gw.get(key), str) or not gw.get(key):
            problems.append(f"gateway.{key}: required string")
    site = data.get("site", {})
    _known(site, {"buildings", "buildings_per_line"}, "site", problems)
    buildings = site.get("buildings", 1)
    per_line = site.get("buildings_per_line", 1)
    for key, val in (("buildings", buildings), ("buildings_per_line", per_line)):
        if not isinstance(val, int) or isinstance(val, bool) or not 1 <= val <= 999:
            problems.append(f"site.{key}: expected an integer 1..999, got {val!r}")
    groups: list[Group] = []
    names: set[str] = set()
    allowed = {"name", "scope", "count", "class", "id", "poll", "sim", "profiles",
               "virtual_profile", "line", "link", "location"}
    for i, g in enumerate(data.get("groups", [])):
        where = f"groups[{i}]"
        if not isinstance(g, dict):
            problems.append(f"{where}: expected a table")
            continue
        _known(g, allowed, where, problems)
        name = g.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}.name: required string")
            name = f"#{i}"
        elif name in names:
            problems.append(f"{where}.name: duplicate group {name!r}")
        names.add(name)
        where = f"groups[{i}] ({name})"
        scope = g.get("scope", "building")
        if scope not in ("building", "site"):
            problems.append(f"{where}.scope: expected 'building' or 'site', got {scope!r}")
        count = g.get("count", 1)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 10000:
            problems.append(f"{where}.count: expected an integer 0..10000, got {count!r}")
            count = 0
        sim = g.get("sim", "virtual")
        if sim not in SIMS:
            problems.append(f"{where}.sim: expected one of {', '.join(SIMS)}, got {sim!r}")
        link = g.get("link", "pty")
        if link not in LINKS:
            problems.append(f"{where}.link: expected 'pty' or 'tcp', got {link!r}")
        if sim == "onvif" and link != "pty" and "link" in g:
            problems.append(f"{where}.link: not used for onvif cameras")
        profiles = g.get("profiles", [])
        if isinstance(profiles, str):
            profiles = [profiles]
        if not isinstance(profiles, list) or not all(isinstance(p, str) and p for p in profiles):
            problems.append(f"{where}.profiles: expected a list of profile ids")
            profiles = []
        vprof = g.get("virtual_profile")
        if sim == "virtual" and not vprof and not profiles:
            problems.append(f"{where}: a virtual group needs virtual_profile")
        if sim != "virtual" and not profiles:
            problems.append(f"{where}.profiles: required for sim {sim!r}")
        line = g.get("line")
        if sim in ("modbus", *SERIAL_SIMS) and not isinstance(line, str):
            problems.append(f"{where}.line: required for sim {sim!r} (the bus name template)")
        id_tpl = g.get("id")
        if not isinstance(id_tpl, str) or not id_tpl:
            problems.append(f"{where}.id: required template, e.g. 'b{{building:02d}}-smoke-{{n:02d}}'")
            id_tpl = name + "-{n}"
        elif scope == "site" and "{building" in id_tpl:
            problems.append(f"{where}.id: a site group has no {{building}}")
        poll = g.get("poll", "10s")
        try:
            parse_duration(poll)
        except ValueError as exc:
            problems.append(f"{where}.poll: {exc}")
        loc = g.get("location", {})
        if not isinstance(loc, dict) or not all(isinstance(v, str) for v in loc.values()):
            problems.append(f"{where}.location: expected a table of strings")
            loc = {}
        groups.append(Group(
            name=name, scope=scope, count=count, cls=str(g.get("class", "")), id=id_tpl,
            poll=str(poll) if not isinstance(poll, str) else poll, sim=sim,
            profiles=tuple(profiles), virtual_profile=vprof if isinstance(vprof, str) else None,
            line=line if isinstance(line, str) else None, link=link, location=dict(loc),
        ))
        if not g.get("class"):
            problems.append(f"{where}.class: required")
    models = data.get("models", {})
    if not isinstance(models, dict) or not all(isinstance(v, dict) for v in models.values()):
        problems.append("models: expected tables keyed by profile id")
        models = {}
    acts: list[Activity] = []
    act_keys = {"group", "every", "hold", "set", "clear", "event", "clear_event", "emit"}
    for i, a in enumerate(data.get("activity", [])):
        where = f"activity[{i}]"
        if not isinstance(a, dict):
            problems.append(f"{where}: expected a table")
            continue
        _known(a, act_keys, where, problems)
        if a.get("group") not in names:
            problems.append(f"{where}.group: no group named {a.get('group')!r}")
        try:
            every = parse_duration(a.get("every", "30s"))
            hold = parse_duration(a.get("hold", 0))
            if every <= 0:
                raise ValueError("every must be > 0")
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            every, hold = 30.0, 0.0
        if not (a.get("set") or a.get("event") or a.get("emit")):
            problems.append(f"{where}: needs one of set, event, emit")
        acts.append(Activity(
            group=str(a.get("group")), every=every, hold=hold, set=dict(a.get("set", {})),
            clear=dict(a.get("clear", {})), event=a.get("event"), clear_event=a.get("clear_event"),
            emit=a.get("emit"),
        ))
    seed = head.get("seed", 1)
    if not isinstance(seed, int) or isinstance(seed, bool):
        problems.append(f"scenario.seed: expected an integer, got {seed!r}")
        seed = 1
    if problems:
        raise ScenarioError(source, problems)
    return Scenario(
        name=str(head.get("name", Path(source).stem)), source=source, seed=seed, gateway=gw,
        buildings=buildings, buildings_per_line=per_line, groups=tuple(groups),
        models={k: dict(v) for k, v in models.items()}, activity=tuple(acts),
        description=str(head.get("description", "")),
    )


def expand(
    sc: Scenario,
    *,
    virtual: frozenset[str] | set[str] = frozenset(),
    buildings: int | None = None,
) -> list[Device]:
    """Every device of the scenario. ``virtual`` names sims (or group names) to run on the
    virtual driver instead; ``buildings`` overrides the number of buildings."""
    nb = sc.buildings if buildings is None else buildings
    devices: list[Device] = []
    seen: dict[str, str] = {}
    units: dict[str, int] = {}
    counters: dict[str, int] = {}
    for g in sc.groups:
        sim = "virtual" if (g.sim in virtual or g.name in virtual) else g.sim
        if sim == "virtual" and not g.virtual_profile and g.sim != "virtual":
            raise ScenarioError(sc.source, [f"group {g.name!r} has no virtual_profile to run virtual"])
        where = [(b, n) for b in range(1, nb + 1) for n in range(1, g.count + 1)] if g.scope == "building" \
            else [(None, n) for n in range(1, g.count + 1)]
        for i, (b, n) in enumerate(where):
            line_no = None if b is None else (b - 1) // sc.buildings_per_line + 1
            fmt = {"building": b or 0, "n": n, "i": i, "line": line_no or 0}
            dev_id = g.id.format(**fmt)
            if not _ID.fullmatch(dev_id):
                raise ScenarioError(sc.source, [f"group {g.name!r}: device id {dev_id!r} is not valid"])
            if dev_id in seen:
                raise ScenarioError(sc.source, [f"device id {dev_id!r} of group {g.name!r} repeats one of group {seen[dev_id]!r}"])
            seen[dev_id] = g.name
            profile = g.profiles[i % len(g.profiles)] if g.profiles else (g.virtual_profile or "")
            params = dict(sc.models.get(profile, {}))
            line = g.line.format(**fmt) if (g.line and sim != "virtual") else None
            address: str | int | None = None
            if sim == "modbus":
                assert line is not None
                units[line] = units.get(line, 0) + 1
                address = units[line]
                if address > 247:
                    raise ScenarioError(sc.source, [f"line {line!r} has more than 247 Modbus units"])
            elif sim in SERIAL_SIMS:
                counters[sim] = counters.get(sim, 0) + 1
                k = counters[sim]
                if sim == "dlt645":
                    address = f"{(b or 0):04d}{k:08d}"[-12:]
                elif sim == "cjt188":
                    address = f"{(b or 0):04d}{k:010d}"[-14:]
                else:
                    units[line or ""] = units.get(line or "", 0) + 1
                    address = units[line or ""]
                    if address > 254:
                        raise ScenarioError(sc.source, [f"line {line!r} has more than 254 framed devices"])
            elif sim == "onvif":
                address = dev_id
            loc = {k: v.format(**fmt) for k, v in g.location.items()}
            if b is not None:
                loc.setdefault("building", str(b))
            devices.append(Device(
                id=dev_id, cls=g.cls, group=g.name, sim=sim,
                profile=(g.virtual_profile or profile) if sim == "virtual" else profile,
                poll=g.poll, building=b, line=line, link=g.link, sim_params=params,
                address=address, location=loc,
            ))
    return devices


def lines(devices: list[Device]) -> list[Line]:
    """Group Modbus and serial devices by line (one simulator process per line)."""
    out: dict[str, Line] = {}
    for d in devices:
        if d.sim not in ("modbus", *SERIAL_SIMS) or d.line is None:
            continue
        family = "modbus" if d.sim == "modbus" else "serial"
        line = out.get(d.line)
        if line is None:
            line = out[d.line] = Line(d.line, family, d.link)
        elif line.family != family or line.link != d.link:
            raise ScenarioError("<scenario>", [
                f"line {d.line!r} mixes {line.family}/{line.link} and {family}/{d.link} devices"
            ])
        line.devices.append(d)
    return list(out.values())


# ---------------------------------------------------------------- simulator input files


def modbus_sim_file(line: Line) -> dict[str, Any]:
    """The ``hwsim modbus run`` file of a Modbus line."""
    devs = []
    for d in line.devices:
        entry: dict[str, Any] = {"name": d.id, "model": str(d.sim_params.get("sim_model", d.profile)),
                                 "unit": d.address}
        if d.sim_params.get("set"):
            entry["set"] = dict(d.sim_params["set"])
        devs.append(entry)
    return {"devices": devs}


def serial_sim_file(line: Line, seed: int = 0) -> dict[str, Any]:
    """The ``hwsim dlt645 --config`` file of a serial line (protocols may be mixed)."""
    bus: dict[str, Any] = {"pty": line.link == "pty", "control": "127.0.0.1:0"}
    if line.link == "tcp":
        bus["tcp"] = "127.0.0.1:0"
    devs = []
    for i, d in enumerate(line.devices):
        entry: dict[str, Any] = {"protocol": d.sim, "address": str(d.address), "seed": seed + i}
        for key in ("model", "edition", "meter_type", "di_order"):
            if key in d.sim_params:
                entry[key] = d.sim_params[key]
        if d.sim == "framed" and "model" not in entry:
            raise ScenarioError("<scenario>", [f"framed device {d.id!r}: models.{d.profile}.model is required"])
        if d.sim_params.get("set"):
            entry["values"] = dict(d.sim_params["set"])
        devs.append(entry)
    return {"bus": bus, "devices": devs}


_CAMERA_KEYS = ("manufacturer", "model", "firmware", "hardware", "clock_offset")


def onvif_sim_file(devices: list[Device], password: str) -> dict[str, Any]:
    """The ``hwsim onvif -c`` file for every camera of the scenario."""
    cams = []
    for d in devices:
        if d.sim != "onvif":
            continue
        cam: dict[str, Any] = {"name": d.id, "port": 0, "username": "gateway", "password": password,
                               "serial": d.id.upper(), "location": d.location.get("building", "site")}
        for key in _CAMERA_KEYS:
            if key in d.sim_params:
                cam[key] = d.sim_params[key]
        cams.append(cam)
    return {"onvif": {"discovery_port": 0, "control_port": 0}, "cameras": cams}


# ---------------------------------------------------------------- the gateway config


@dataclass
class Endpoints:
    """Where the started simulators can be reached (filled in by the runner)."""

    lines: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {pty|port, control_port}
    cameras: dict[str, int] = field(default_factory=dict)  # device id -> port
    onvif_control: int | None = None
    camera_password: str = ""


@dataclass
class GatewayOptions:
    api_listen: str = "127.0.0.1:8470"
    buffer_path: str = "buffer.db"
    buffer_budget: str = "256MiB"
    snapshots_dir: str = "snapshots"
    mqtt: str | None = None  # HOST:PORT of an MQTT uplink (plain, on loopback)
    topic_prefix: str = "city"
    backlog_rate: int = 2000
    log_level: str = "info"
    api_token_env: str | None = None


def gateway_config(sc: Scenario, devices: list[Device], ep: Endpoints, opt: GatewayOptions) -> dict[str, Any]:
    """The gateway configuration (as a dict to write as TOML) for the started scenario."""
    gw = dict(sc.gateway)
    gw.setdefault("profile_dirs", [])
    gw.setdefault("log_level", opt.log_level)
    api: dict[str, Any] = {"listen": opt.api_listen}
    if opt.api_token_env:
        api["token"] = {"env": opt.api_token_env}
    cfg: dict[str, Any] = {
        "gateway": gw,
        "api": api,
        "metrics": {"enabled": True},
        "buffer": {"path": opt.buffer_path, "budget": opt.buffer_budget},
    }
    if opt.mqtt:
        cfg["uplinks"] = [{
            "name": "city", "kind": "mqtt", "url": f"mqtt://{opt.mqtt}",
            "topic_prefix": opt.topic_prefix, "reconnect_min": "0.2s", "reconnect_max": "2s",
            "timeout": "5s", "backlog_rate": opt.backlog_rate,
        }]
    cfg["privacy"] = {}
    buses: list[dict[str, Any]] = []
    for line in lines(devices):
        where = ep.lines.get(line.name)
        if where is None:
            raise KeyError(f"line {line.name!r} has no endpoint (was its simulator started?)")
        if line.family == "modbus":
            bus: dict[str, Any] = {"name": line.name, "driver": "modbus"}
            if line.link == "pty":
                bus.update(port=where["pty"], baud=9600, parity="N", timeout="300ms", retries=1)
            else:
                bus.update(transport="tcp", host="127.0.0.1", port=where["port"], timeout="1s")
        else:
            port = where["pty"] if line.link == "pty" else f"tcp://127.0.0.1:{where['port']}"
            # 8N1: a pseudo-terminal refuses even parity (real DL/T 645 lines run 2400 8E1)
            bus = {"name": line.name, "driver": "serial", "port": port, "baud": 9600, "parity": "N",
                   "first_byte_timeout": "600ms", "inter_byte_timeout": "300ms"}
        buses.append(bus)
    if buses:
        cfg["buses"] = buses
    out: list[dict[str, Any]] = []
    for d in devices:
        entry: dict[str, Any] = {"id": d.id, "class": d.cls, "profile": d.profile, "poll": d.poll}
        if d.sim == "modbus":
            entry["bus"] = d.line
            entry["address"] = {"unit": d.address}
        elif d.sim in SERIAL_SIMS:
            entry["bus"] = d.line
            entry["address"] = {"addr": d.address}
        elif d.sim == "onvif":
            entry["address"] = {
                "host": "127.0.0.1", "port": ep.cameras[d.id], "username": "gateway",
                "password": ep.camera_password, "timeout": "5s", "pull_timeout": "2s",
                "snapshots": {"dir": opt.snapshots_dir, "keep": 200},
            }
        else:
            entry["address"] = {"seed": zlib_seed(d.id, sc.seed)}
        entry["startup"] = "retry"
        if d.location:
            entry["location"] = dict(d.location)
        out.append(entry)
    cfg["devices"] = out
    return cfg


def zlib_seed(text: str, seed: int) -> int:
    import zlib

    return (zlib.crc32(text.encode()) ^ seed) & 0x7FFFFFFF


# ---------------------------------------------------------------- activity


def pick_values(values: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """``{k: [lo, hi]}`` -> a uniform random number in the range; other values as they are."""
    out: dict[str, Any] = {}
    for k, v in values.items():
        if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int | float) for x in v):
            lo, hi = float(v[0]), float(v[1])
            out[k] = round(rng.uniform(lo, hi), 2) if isinstance(v[0], float) or isinstance(v[1], float) \
                else rng.randint(int(lo), int(hi))
        else:
            out[k] = v
    return out


def summary(devices: list[Device]) -> dict[str, Any]:
    """Counts by class and by simulator (for the runner's JSON line and the demo)."""
    by_class: dict[str, int] = {}
    by_sim: dict[str, int] = {}
    for d in devices:
        by_class[d.cls] = by_class.get(d.cls, 0) + 1
        by_sim[d.sim] = by_sim.get(d.sim, 0) + 1
    return {"devices": len(devices), "by_class": dict(sorted(by_class.items())),
            "by_sim": dict(sorted(by_sim.items()))}
