"""The serial drivers through the REAL daemon (``edge-gateway run``) against the simulators
in separate processes: the mixed RS-485 line of issue 6 on a pseudo-terminal, relay and valve
commands through the local API, and a framed access panel + alarm pillar behind a TCP serial
server whose card numbers must not leave the privacy policy in clear text."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.core_daemon import Daemon, free_port
from tests.support.serial_sim import SimProcess

POLL = 8.0  # meters' poll interval (s)
TOKEN = "serial-it-" + uuid.uuid4().hex
CARD = "00012345"

# the meters of the line: simulator entry, gateway profile + address, expected canonical values
METERS: dict[str, dict[str, Any]] = {
    # 6 DL/T 645 meters of two models: e2 silent, e3 slow first byte + echo
    "e1": {"sim": {"protocol": "dlt645", "address": "000000000001", "model": "single_phase",
                   "quirks": {"fe": 4},
                   "values": {"energy_import": 1001.11, "voltage_a": 221.1, "current_a": 1.111}},
           "profile": "dlt645-ddsu-1p", "addr": "000000000001",
           "points": {"energy_import": 1001.11, "energy_export": 12.5, "energy_total": 988.61,
                      "voltage": 221.1, "current": 1.111, "power": 1200, "relay_closed": True}},
    "e2": {"sim": {"protocol": "dlt645", "address": "000000000002", "model": "single_phase",
                   "quirks": {"silent": True}, "values": {"energy_import": 1002.22}},
           "profile": "dlt645-ddsu-1p", "addr": "000000000002",
           "points": {"energy_import": 1002.22, "relay_closed": True}},
    "e3": {"sim": {"protocol": "dlt645", "address": "000000000003", "model": "single_phase",
                   "quirks": {"slow_first_byte": 0.1, "echo": True},
                   "values": {"energy_import": 1003.33, "voltage_a": 223.3}},
           "profile": "dlt645-ddsu-1p", "addr": "000000000003",
           "points": {"energy_import": 1003.33, "voltage": 223.3, "power_factor": 0.95}},
    "e4": {"sim": {"protocol": "dlt645", "address": "000000000004", "model": "single_phase",
                   "quirks": {"fe": 0, "junk": 3}, "values": {"energy_import": 1004.44}},
           "profile": "dlt645-ddsu-1p", "addr": "000000000004",
           "points": {"energy_import": 1004.44, "frequency": 50}},
    "e5": {"sim": {"protocol": "dlt645", "address": "000000000005", "model": "three_phase",
                   "quirks": {"fe": 2},
                   "values": {"energy_import": 1005.55, "voltage_b": 225.5, "current_c": 2.345}},
           "profile": "dlt645-dtsu-3p", "addr": "000000000005",
           "points": {"energy_import": 1005.55, "voltage_b": 225.5, "current_c": 2.345, "power": 3600}},
    "e6": {"sim": {"protocol": "dlt645", "address": "000000000006", "model": "three_phase",
                   "values": {"energy_import": 1006.66, "power": -0.5}},
           "profile": "dlt645-dtsu-3p", "addr": "000000000006",
           "points": {"energy_import": 1006.66, "power": -500}},
    # 4 CJ/T 188 meters, both identifier byte orders
    "w1": {"sim": {"protocol": "cjt188", "address": "00000000001001", "meter_type": "10",
                   "di_order": "swapped", "values": {"volume": 101.01}},
           "profile": "cjt188-cold-water", "addr": "00000000001001",
           "points": {"volume": 101.01, "valve_open": True}},
    "w2": {"sim": {"protocol": "cjt188", "address": "00000000001002", "meter_type": "11",
                   "di_order": "printed", "quirks": {"fe": 3}, "values": {"volume": 102.02}},
           "profile": "cjt188-hot-water", "addr": "00000000001002",
           "points": {"volume": 102.02, "valve_open": True}},
    "h1": {"sim": {"protocol": "cjt188", "address": "00000000002001", "meter_type": "20",
                   "di_order": "swapped", "values": {"heat": 2001.5, "supply_temperature": 58.5}},
           "profile": "cjt188-heat", "addr": "00000000002001",
           "points": {"heat_energy": 2001.5, "power": 4500, "supply_temperature": 58.5,
                      "return_temperature": 40}},
    "g1": {"sim": {"protocol": "cjt188", "address": "00000000003001", "meter_type": "30",
                   "di_order": "printed", "values": {"volume": 303.03}},
           "profile": "cjt188-gas", "addr": "00000000003001",
           "points": {"volume": 303.03, "valve_open": True}},
}
CLASSES = {"dlt645": "electricity_meter", "cjt188-cold-water": "water_meter",
           "cjt188-hot-water": "water_meter", "cjt188-heat": "heat_meter", "cjt188-gas": "gas_meter"}


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def _sim_file(path: Path, devices: list[dict[str, Any]]) -> Path:
    lines = []
    for d in devices:
        lines.append("[[devices]]")
        lines += [f"{k} = {_toml(v)}" for k, v in d.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def _cls(profile: str) -> str:
    return CLASSES.get(profile, CLASSES["dlt645"] if profile.startswith("dlt645") else "")


def _config(tmp: Path, api_port: int, pty: str, panel_port: int) -> Path:
    parts = [f"""
[gateway]
id = "serial-it-gw"
district = "510107"
community = "Serial"

[api]
listen = "127.0.0.1:{api_port}"
token = "{TOKEN}"

[buffer]
path = "{tmp / 'buffer.db'}"

[privacy]
hmac_key = "serial-it-community-key-0123456789"

[[buses]]
name = "meters"
driver = "serial"
port = "{pty}"
baud = 9600
parity = "N"              # a pty ignores line settings
echo = true               # the adapter of this line echoes (meter e3's quirk)
guard = "10ms"
first_byte_timeout = "500ms"
inter_byte_timeout = "300ms"

[[buses]]
name = "gate"
driver = "serial"
port = "tcp://127.0.0.1:{panel_port}"
baud = 9600
parity = "N"
first_byte_timeout = "500ms"
"""]
    for dev_id, m in METERS.items():
        parts.append(f"""
[[devices]]
id = "{dev_id}"
class = "{_cls(m['profile'])}"
profile = "{m['profile']}"
bus = "meters"
address = {{ addr = "{m['addr']}" }}
poll = "{POLL:g}s"
""")
    parts.append("""
[[devices]]
id = "door-1"
class = "access_control"
profile = "framed-ac200"
bus = "gate"
address = { addr = 3 }
poll = "5s"

[[devices]]
id = "pillar-1"
class = "alarm_pillar"
profile = "framed-p5-pillar"
bus = "gate"
address = { addr = 7 }
poll = "5s"
""")
    cfg = tmp / "gateway.toml"
    cfg.write_text("".join(parts))
    os.chmod(cfg, 0o600)  # the file holds the API token and the privacy key
    return cfg


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Daemon, SimProcess, SimProcess]]:
    meters = SimProcess("dlt645", config=_sim_file(tmp_path / "meters.toml",
                        [{**m["sim"], "values": {"evolve": False, **m["sim"].get("values", {})}}
                         for m in METERS.values()]), log=tmp_path / "sim-meters.log")
    panel = SimProcess("framed", config=_sim_file(tmp_path / "panel.toml", [
        {"protocol": "framed", "model": "access_panel", "address": "3"},
        {"protocol": "framed", "model": "alarm_pillar", "address": "7"},
    ]), pty=False, tcp=True, log=tmp_path / "sim-panel.log")
    daemon: Daemon | None = None
    try:
        meters.start()
        panel.start()
        daemon = Daemon(_config(tmp_path, free_port(), meters.pty, panel.tcp_port))
        daemon.start()
        yield daemon, meters, panel
    finally:
        if daemon is not None:
            code = daemon.stop()
            assert code == 0, daemon.log_text()
        panel.stop()
        meters.stop()


def _points(d: Daemon, dev: str) -> dict[str, Any]:
    pts: dict[str, Any] = d.get(f"/api/v1/devices/{dev}/points")["points"]
    return {k: (v.get("v") if isinstance(v, dict) else v) for k, v in pts.items()}


def _state(d: Daemon, dev: str) -> str:
    return str(d.get(f"/api/v1/devices/{dev}")["state"])


def _records(d: Daemon) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = d.get(f"/api/v1/records?after_seq={after}&limit=1000")["records"]
        out += page
        if len(page) < 1000:
            return out
        after = page[-1]["seq"]


def _matches(points: dict[str, Any], want: dict[str, Any]) -> bool:
    return all(k in points and points[k] == pytest.approx(v) if not isinstance(v, bool)
               else points.get(k) is v for k, v in want.items())


def test_mixed_bus_through_the_daemon(setup: tuple[Daemon, SimProcess, SimProcess]) -> None:
    d, meters, panel = setup
    started = time.monotonic()
    live = [i for i in METERS if i != "e2"]

    def all_live() -> bool:
        return all(_state(d, i) == "online" and _matches(_points(d, i), METERS[i]["points"]) for i in live)

    d.wait_for(all_live, POLL + 5, "records of every live meter")
    elapsed = time.monotonic() - started
    assert elapsed < POLL, f"live meters took {elapsed:.1f}s, more than their poll interval"
    d.wait_for(lambda: _state(d, "e2") == "offline", POLL, "the silent meter offline")

    # every live meter's values are in the stored records, exactly as the meter holds them
    recs = _records(d)
    for i in live:
        got = {r["pt"]: r["v"] for r in recs if r["dev"] == i and r["kind"] != "lifecycle"}
        assert _matches(got, METERS[i]["points"]), (i, got)
        assert all(r["cls"] == _cls(METERS[i]["profile"]) for r in recs if r["dev"] == i)
    assert not [r for r in recs if r["dev"] == "e2" and r["kind"] != "lifecycle"]
    assert [r for r in recs if r["dev"] == "e2" and r["pt"] == "status" and r["v"] == "offline"]

    # the silent meter answers again (checked below, after its backoff)
    meters.configure("000000000002", {"quirks": {"silent": False}})

    # relay trip/close and valve close/open through the command API, read back from the meter
    def command(dev: str, point: str, value: bool) -> None:
        cid = f"it-{dev}-{point}-{value}-{uuid.uuid4().hex[:8]}"
        status, body = d.post(f"/api/v1/devices/{dev}/commands",
                              {"id": cid, "point": point, "value": value}, TOKEN)
        assert status == 200 and body["outcome"] == "ok", body
        # the core emits this record only when the driver's read-back equals the value
        rec = [r for r in _records(d) if (r.get("attrs") or {}).get("command") == cid]
        assert len(rec) == 1 and rec[0]["pt"] == point and rec[0]["v"] is value, rec
        assert rec[0]["kind"] == "state" and rec[0]["dev"] == dev

    command("e1", "relay_closed", False)
    assert meters.device("000000000001")["values"]["relay_tripped"] is True
    for dev, addr in (("w1", "00000000001001"), ("g1", "00000000003001")):
        command(dev, "valve_open", False)
        assert meters.device(addr)["values"]["valve_open"] is False
        command(dev, "valve_open", True)
        assert meters.device(addr)["values"]["valve_open"] is True
    # the next poll of e1 sees the tripped relay: no power drawn
    d.wait_for(lambda: _points(d, "e1").get("power") == 0, POLL + 3, "e1 power 0 after the trip")
    command("e1", "relay_closed", True)
    assert meters.device("000000000001")["values"]["relay_tripped"] is False
    d.wait_for(lambda: _state(d, "e2") == "online" and _matches(_points(d, "e2"), METERS["e2"]["points"]),
               2 * POLL + 5, "the silent meter recovered")
    # without the token a command is refused and never reaches the meter
    status, _ = d.post("/api/v1/devices/e1/commands", {"id": "it-no-token", "point": "relay_closed",
                                                       "value": False})
    assert status in (401, 403)
    assert meters.device("000000000001")["values"]["relay_tripped"] is False

    # unsolicited frames of the gate line become canonical events; card numbers are pseudonymised
    panel.emit(3, "card_granted", card=CARD, door=2)
    panel.emit(7, "button", button=1)

    def events() -> list[dict[str, Any]]:
        return [r for r in _records(d) if r["kind"] == "event" and r["dev"] in ("door-1", "pillar-1")]

    got = d.wait_for(lambda: len(events()) >= 2 and events(), 10, "the pushed events")
    granted = next(r for r in got if r["pt"] == "access_granted")
    button = next(r for r in got if r["pt"] == "button")
    assert granted["cls"] == "access_control" and granted["sev"] == "info" and granted["v"] == "2"
    assert granted["attrs"]["door"] == 2
    assert str(granted["attrs"]["card_no"]).startswith("hm_")
    assert button["cls"] == "alarm_pillar" and button["v"] is True and button["sev"] == "critical"
    d.wait_for(lambda: panel.device(3)["acks"] == 1, 5, "the panel's frame acknowledged")
    # the raw card number is nowhere: not in the API, not in the buffer files on disk
    for path in ("/api/v1/records?after_seq=0&limit=1000", "/api/v1/devices/door-1/points"):
        assert CARD not in json.dumps(d.get(path))
    for f in Path(d.config).parent.glob("buffer.db*"):
        assert CARD.encode() not in f.read_bytes(), f
    assert _state(d, "door-1") == "online" and _points(d, "door-1")["door_open"] is False
