"""Golden cases of the Modbus driver: run a case's simulator file and gateway config through
the real driver (real sockets / a real pty) and the core's profile mapping, and compare the
canonical records of the first poll with ``expected.jsonl``.

Records compared: ``dev, cls, pt, kind, v, u, q, sev`` of the first poll, as the core's
``gateway.harness.DeviceHarness`` produces them (real profile mapping and pipeline: the device
comes ``online``, inactive boolean events are not sent).
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from drivers.modbus.driver import ModbusBus
from drivers.modbus.schema import BusOptions, DeviceAddress
from gateway.plugin import BusSpec, DeviceSpec, PointSpec
from gateway.profiles import Profile
from tests.support.modbus_helpers import bundled_profiles

CASES_DIR = Path(__file__).resolve().parents[2] / "drivers" / "modbus" / "tests" / "cases"
FIELDS = ("dev", "cls", "pt", "kind", "v", "u", "q", "sev")


def case_names() -> list[str]:
    return sorted(p.name for p in CASES_DIR.iterdir() if (p / "config.toml").is_file())


def load_case(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    d = CASES_DIR / name
    config = tomllib.loads((d / "config.toml").read_text("utf-8"))
    expected = [
        json.loads(line)
        for line in (d / "expected.jsonl").read_text("utf-8").splitlines()
        if line.strip()
    ]
    return config, expected


def endpoint_options(transport: str, endpoint: str | int) -> dict[str, Any]:
    if transport == "tcp":
        return {"transport": "tcp", "host": "127.0.0.1", "port": int(endpoint)}
    if transport == "rtu_over_tcp":
        return {"transport": "rtu_over_tcp", "host": "127.0.0.1", "port": int(endpoint)}
    return {"transport": "rtu", "port": str(endpoint)}


def build(
    config: dict[str, Any], transport: str, endpoint: str | int
) -> tuple[ModbusBus, list[tuple[DeviceSpec, Profile]]]:
    (bus_cfg,) = config["buses"]
    opts = {
        k: v for k, v in bus_cfg.items() if k not in ("name", "driver", "host", "port", "transport")
    }
    opts.update(endpoint_options(transport, endpoint))
    bus = ModbusBus(BusSpec(bus_cfg["name"], "modbus", BusOptions.model_validate(opts)))
    devices = []
    for dcfg in config["devices"]:
        prof = bundled_profiles()[dcfg["profile"]]
        assert prof.cls == dcfg["class"]
        spec = DeviceSpec(
            id=dcfg["id"],
            cls=dcfg["class"],
            profile=prof.id,
            address=DeviceAddress.model_validate(dcfg.get("address", {})),
            options=prof.options,
            points=tuple(
                PointSpec(pm.name, pm.address, pm.writable, pm.pdef.type) for pm in prof.read_points
            ),
            poll_interval=1.0,
        )
        bus.attach(spec)
        devices.append((spec, prof))
    return bus, devices


def harness_config(config_text: str, transport: str, endpoint: str | int) -> str:
    """The case's config with the bus pointed at the simulator endpoint."""
    old = 'host = "127.0.0.1"\nport = 502\n'
    assert old in config_text, "case config must give the bus as host/port lines"
    if transport == "rtu":
        new = f'transport = "rtu"\nport = "{endpoint}"\n'
    else:
        new = f'transport = "{transport}"\nhost = "127.0.0.1"\nport = {endpoint}\n'
    return config_text.replace(old, new)


def normalise(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(json.dumps(r.get(f), sort_keys=True) for f in FIELDS) for r in records)
