"""A device that answers but none of whose points can be read or decoded (a profile for the
wrong model) is ``misconfigured``, not ``online``: its point errors (point, reason, detail)
are kept by its tracker, shown by the local API and ``edge-gateway devices``, exported as
``edge_gw_point_errors`` and make the gateway's status ``degraded``.

The unit tests drive the tracker directly; the integration test runs the real daemon against
the Modbus simulator (a simulated Acme SD-300 polled with the Hailan JTY-GD-H profile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from drivers.virtual.driver import VirtualDriver
from gateway.pipeline import DeviceTracker
from gateway.plugin import Reading
from gateway.profiles import parse_profile
from gateway.supervisor import PointErrors, device_state
from tests.support.core_daemon import Daemon, free_port
from tests.support.ops_stack import HWSIM, Stack, driver_available, gateway_config

ROOT = Path(__file__).resolve().parents[2]

PROFILE = """
[profile]
id = "t-gas-mis"
class = "gas_detector"
driver = "virtual"
vendor = "T"
model = "G1"

[points.gas_concentration]
address = { generator = "constant", value = 3 }

[points.valve_open]
address = { generator = "constant", value = true }

[points.fault]
address = { generator = "constant", value = false }
"""


class Device:
    """A tracker and the point-error book the device's runner keeps beside it."""

    def __init__(self, dev: str) -> None:
        prof, issues = parse_profile("t.toml", PROFILE, {"virtual": VirtualDriver()})
        assert prof is not None, issues
        self.tracker = DeviceTracker(gw="gw", dev=dev, cls="gas_detector", profile=prof, poll_interval=1.0)
        self.errors = PointErrors(dev, prof.id, prof.points)

    def read(self, reading: Reading, ts: float) -> list[Any]:
        out = self.tracker.on_reading(reading, ts)
        self.errors.update(reading, self.tracker.bad_points, ts)
        return out

    @property
    def state(self) -> str:
        return device_state(self.tracker, self.errors)


def gauge(dev: str, point: str, reason: str) -> float | None:
    return REGISTRY.get_sample_value(
        "edge_gw_point_errors", {"device": dev, "point": point, "reason": reason}
    )


ALL_BAD = {"valve_open": "exception_02_illegal_data_address", "fault": "exception_02_illegal_data_address"}


def test_every_point_failing_is_misconfigured_with_reasons() -> None:
    d = Device("mis-1")
    out = d.read(Reading(values={"gas_concentration": "not-a-number"}, errors=dict(ALL_BAD)), 100.0)
    assert d.tracker.online is True
    assert d.state == "misconfigured"
    errs = {p: (e.reason, e.detail) for p, e in d.errors.errors.items()}
    assert set(errs) == {"gas_concentration", "valve_open", "fault"}
    assert errs["valve_open"][0] == "exception_02_illegal_data_address"
    assert "generator" in errs["valve_open"][1]  # the detail names the profile address read
    assert "t-gas-mis" in errs["valve_open"][1]
    assert errs["gas_concentration"][0] == "mapping"
    # what was wrong, without echoing a string the device sent (it may be personal data)
    assert "str of 12 characters" in errs["gas_concentration"][1]
    assert "not-a-number" not in errs["gas_concentration"][1]
    assert all(e.since == 100.0 for e in d.errors.errors.values())
    assert gauge("mis-1", "valve_open", "exception_02_illegal_data_address") == 1.0
    assert gauge("mis-1", "gas_concentration", "mapping") == 1.0
    assert [e["point"] for e in d.errors.as_list()] == ["fault", "gas_concentration", "valve_open"]
    # the records upward are unchanged by this: one bad record per point, once
    assert sorted(r.pt for r in out if r.q == "bad") == ["fault", "gas_concentration", "valve_open"]
    # a second poll with the same failures: still misconfigured, "since" kept
    d.read(Reading(errors={**ALL_BAD, "gas_concentration": "timeout"}), 101.0)
    assert d.state == "misconfigured"
    assert d.errors.errors["valve_open"].since == 100.0
    # a changed reason replaces the old one, in the metric too
    assert d.errors.errors["gas_concentration"].reason == "timeout"
    assert d.errors.errors["gas_concentration"].since == 101.0
    assert gauge("mis-1", "gas_concentration", "mapping") is None
    assert gauge("mis-1", "gas_concentration", "timeout") == 1.0
    d.errors.clear()  # the bus runner closed
    assert gauge("mis-1", "gas_concentration", "timeout") is None


def test_numeric_mapping_error_is_explained() -> None:
    d = Device("mis-4")
    d.read(Reading(values={"gas_concentration": float("nan"), "valve_open": True, "fault": False}), 100.0)
    e = d.errors.errors["gas_concentration"]
    assert e.reason == "mapping" and "not finite" in e.detail and "t-gas-mis" in e.detail
    assert d.state == "online"


def test_some_points_failing_is_online_with_point_errors_and_recovery_clears() -> None:
    d = Device("mis-2")
    d.read(Reading(values={"gas_concentration": 3.0, "valve_open": True}, errors={"fault": "crc"}), 100.0)
    assert d.state == "online"
    assert list(d.errors.errors) == ["fault"] and d.errors.errors["fault"].reason == "crc"
    assert gauge("mis-2", "fault", "crc") == 1.0
    d.read(Reading(values={"gas_concentration": 3.0, "valve_open": True, "fault": False}), 101.0)
    assert d.errors.errors == {}
    assert gauge("mis-2", "fault", "crc") is None
    assert d.state == "online"


def test_offline_device_is_offline_not_misconfigured() -> None:
    d = Device("mis-3")
    assert d.state == "unknown"
    d.read(Reading(errors={"gas_concentration": "x", "valve_open": "x", "fault": "x"}), 100.0)
    assert d.state == "misconfigured"
    d.tracker.on_failure("timeout", 101.0)
    assert d.state == "offline"
    assert device_state(None, None) == "disabled"


# --------------------------------------------------------------------------- real daemon


@pytest.fixture
def wrong_profile(tmp_path: Path) -> Iterator[tuple[Daemon, Path]]:
    if not driver_available("modbus"):
        pytest.skip("the modbus driver is not in this tree")
    stack = Stack(tmp_path)
    daemon: Daemon | None = None
    try:
        sim = tmp_path / "sim.toml"
        sim.write_text(
            '[[devices]]\nname = "smoke"\nmodel = "acme-sd300"\nunit = 3\n'
            '[[devices]]\nname = "smoke2"\nmodel = "acme-sd300"\nunit = 4\n'
        )
        mb = stack.start([*HWSIM, "modbus", "run", str(sim), "--tcp", "0"], "modbus")
        body = (
            f'[[buses]]\nname = "mb"\ndriver = "modbus"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
            f'port = {mb.info["tcp_port"]}\ntimeout = "300ms"\n\n'
            # an SD-300 configured with the profile of another vendor's smoke detector
            '[[devices]]\nid = "wrong-profile"\nclass = "smoke_detector"\nprofile = "hailan-jtyg"\n'
            'bus = "mb"\naddress = { unit = 3 }\npoll = "1s"\n\n'
            '[[devices]]\nid = "right-profile"\nclass = "smoke_detector"\nprofile = "acme-sd300"\n'
            'bus = "mb"\naddress = { unit = 4 }\npoll = "1s"\n'
        )
        cfg = gateway_config(tmp_path, api_port=free_port(), body=body, token_env=None)
        daemon = Daemon(cfg).start()
        yield daemon, cfg
    finally:
        if daemon is not None:
            daemon.stop()
        stack.close()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_wrong_profile_is_misconfigured_everywhere(wrong_profile: tuple[Daemon, Path]) -> None:
    d, cfg = wrong_profile

    def view() -> Any:
        v = d.get("/api/v1/devices/wrong-profile")
        return v if v.get("state") == "misconfigured" else None

    v = d.wait_for(view, 15, "wrong-profile misconfigured")
    assert v["quality"] == "bad"
    errs = {e["point"]: e for e in v["point_errors"]}
    assert set(errs) == {"smoke_density", "temperature", "alarm", "fault", "battery_low", "alarm_reset"}
    for e in errs.values():
        assert "illegal" in e["reason"], e  # the slave's exception 02, illegal data address
        assert "holding" in e["detail"], e
        assert isinstance(e["since"], (int, float))
    d.wait_for(lambda: d.get("/api/v1/devices/right-profile")["state"] == "online", 15, "right-profile online")
    assert d.get("/api/v1/devices/right-profile")["point_errors"] == []

    # metric: one series per failing point with its reason
    _, body, _ = d.raw("/metrics")
    fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
    series = {
        (s.labels["device"], s.labels["point"]): s.labels["reason"]
        for s in fams["edge_gw_point_errors"].samples
        if s.value == 1
    }
    assert {p for dev, p in series if dev == "wrong-profile"} == set(errs)
    assert not [k for k in series if k[0] == "right-profile"]

    def states() -> Any:
        _, body, _ = d.raw("/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(body.decode())}
        got = {s.labels["state"]: s.value for s in fams["edge_gw_devices"].samples if s.labels["cls"] == "smoke_detector"}
        return got if got.get("misconfigured") == 1 else None

    # the per-class gauge is refreshed every 5 s
    assert d.wait_for(states, 15, "edge_gw_devices{state=misconfigured}")["online"] == 1

    # health: degraded, with the device named
    h = d.get("/api/v1/health")
    assert h["ready"] is True and h["status"] == "degraded"
    mis = [r for r in h["status_reasons"] if r["code"] == "devices_misconfigured"]
    assert mis and mis[0]["count"] == 1 and mis[0]["items"] == ["wrong-profile"], h

    # edge-gateway devices: the state and every point error with its reason and detail
    p = _cli("devices", "-c", str(cfg))
    assert p.returncode == 0, p.stderr
    assert "misconfigured" in p.stdout
    for point in errs:
        assert point in p.stdout, (point, p.stdout)
    assert errs["alarm"]["reason"] in p.stdout and "holding" in p.stdout
    pj = _cli("devices", "-c", str(cfg), "--json")
    data = json.loads(pj.stdout)
    byid = {x["id"]: x for x in data["devices"]}
    assert byid["wrong-profile"]["state"] == "misconfigured"
    assert len(byid["wrong-profile"]["point_errors"]) == 6

    # edge-gateway status: degraded with the reason
    ps = _cli("status", "-c", str(cfg))
    assert ps.returncode == 0, ps.stderr
    assert "degraded" in ps.stdout and "misconfigured" in ps.stdout and "wrong-profile" in ps.stdout
