from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.classes import device_classes

REQUIRED = {
    "smoke_detector", "gas_detector", "electricity_meter", "water_meter", "gas_meter", "heat_meter",
    "tilt_sensor", "elevator", "streetlight", "access_control", "parking_space", "fall_detector",
    "alarm_pillar", "environment_sensor", "camera",
}


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60)


def test_classes_json_has_catalogue() -> None:
    p = run("classes", "--json")
    assert p.returncode == 0
    data = json.loads(p.stdout)
    assert REQUIRED <= set(data)
    for cls, body in data.items():
        for name, pt in body["points"].items():
            assert pt["type"] in ("number", "bool", "string"), (cls, name)
            assert pt["kind"] in ("telemetry", "state", "event", "lifecycle")
            if pt["kind"] == "event":
                assert pt["severity"] in ("critical", "major", "minor", "info"), (cls, name)


def test_classes_human_and_schema() -> None:
    p = run("classes")
    assert p.returncode == 0 and "smoke_detector" in p.stdout and "critical" in p.stdout
    schema = json.loads(run("classes", "--json-schema").stdout)
    assert schema["$defs"]["record"]["required"][:3] == ["id", "seq", "gw"]


def test_version_and_drivers() -> None:
    v = json.loads(run("version", "--json").stdout)
    assert v["plugin_api"] == "1.0"
    d = json.loads(run("drivers", "--json").stdout)
    names = {x["name"]: x for x in d["drivers"]}
    assert names["virtual"]["error"] is None and names["virtual"]["api_version"] == "1.0"


def test_status_without_daemon_explains() -> None:
    p = run("status", "--api", "http://127.0.0.1:9")
    assert p.returncode == 1 and "cannot reach" in p.stderr


@pytest.mark.parametrize("cls", sorted(REQUIRED))
def test_every_event_point_has_severity(cls: str) -> None:
    c = device_classes()[cls]
    assert any(p.kind in ("telemetry", "state", "event") for p in c.points.values())
    assert "status" in c.points


def test_run_with_bad_config_exits_78_with_json_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('[gateway]\nid = "g"\ndistrict = "51"\ncommunity = "c"\n')
    p = run("run", "-c", str(cfg), "--json")
    assert p.returncode == 78  # EX_CONFIG: systemd does not restart on it
    data = json.loads(p.stdout)
    assert data["ok"] is False and data["errors"][0]["path"] == "gateway.district"
