"""WS-Discovery: pure probe codec, and `scan` finding simulators (a separate `hwsim onvif`
process) by unicast probe on loopback; the simulator's control endpoint drives events."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from drivers.onvif import discovery
from drivers.onvif.driver import OnvifDriver
from gateway.plugin import DeviceUnavailable
from tests.support.onvif_helpers import EventCollector, bundled_profiles, device, open_bus

SIM_FILE = """
[[cameras]]
name = "gate-east"
password = "east-pw"
manufacturer = "Acme"
model = "HT-200"
firmware = "2.1.0"
location = "east%20gate"

[[cameras]]
name = "tower-3"
password = "east-pw"
manufacturer = "Zenith"
model = "ZC-5"
firmware = "5.4"
"""


@pytest.fixture
async def sim_process(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    cfg = tmp_path / "sim.toml"
    cfg.write_text(SIM_FILE)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from hwsim.cli import main; sys.exit(main())", "onvif", "-c", str(cfg),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env={**os.environ},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
        yield json.loads(line)
    finally:
        if proc.returncode is None:
            proc.terminate()
            async with asyncio.timeout(10):
                await proc.wait()


def test_probe_roundtrip_pure() -> None:
    probe = discovery.build_probe("urn:uuid:1")
    assert b"NetworkVideoTransmitter" in probe
    reply = (
        b'<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
        b'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        b'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"><s:Header>'
        b"<a:RelatesTo>urn:uuid:1</a:RelatesTo></s:Header><s:Body><d:ProbeMatches><d:ProbeMatch>"
        b"<a:EndpointReference><a:Address>urn:uuid:cam</a:Address></a:EndpointReference>"
        b"<d:Types>dn:NetworkVideoTransmitter</d:Types>"
        b"<d:Scopes>onvif://www.onvif.org/name/Gate%20East onvif://www.onvif.org/hardware/HT-200</d:Scopes>"
        b"<d:XAddrs>http://192.0.2.5/onvif/device_service http://[2001:db8::5]/onvif/device_service</d:XAddrs>"
        b"<d:MetadataVersion>3</d:MetadataVersion></d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>"
    )
    (m,) = discovery.parse_probe_matches(reply, "urn:uuid:1")
    assert m.endpoint == "urn:uuid:cam" and m.metadata_version == 3
    assert m.scope("name") == "Gate East" and m.scope("hardware") == "HT-200" and m.scope("location") == ""
    assert len(m.xaddrs) == 2
    with pytest.raises(discovery.DiscoveryError):
        discovery.parse_probe_matches(reply, "urn:uuid:other")
    with pytest.raises(discovery.DiscoveryError):
        discovery.parse_probe_matches(b"<broken", None)
    with pytest.raises(discovery.DiscoveryError):
        discovery.parse_probe_matches(probe, None)  # a Probe is not a ProbeMatches


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:3702", ("127.0.0.1", 3702)), ("cam.local", ("cam.local", 3702)), ("[::1]:9", ("::1", 9))],
)
def test_parse_target(text: str, expected: tuple[str, int]) -> None:
    assert discovery.parse_target(text) == expected


@pytest.mark.parametrize("text", ["", ":80", "host:0", "host:x", "host:70000"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(discovery.DiscoveryError):
        discovery.parse_target(text)


async def test_scan_finds_simulators_and_identifies_them(sim_process: dict[str, Any]) -> None:
    drv = OnvifDriver()
    parser = argparse.ArgumentParser()
    drv.add_scan_arguments(parser)
    args = parser.parse_args(
        ["--address", f"127.0.0.1:{sim_process['discovery_port']}", "--timeout", "1", "--user", "admin", "--password", "east-pw"]
    )
    rows = await drv.scan(args)
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"gate-east", "tower-3"}
    east = by_name["gate-east"]
    assert east["xaddrs"] == [f"http://127.0.0.1:{sim_process['cameras']['gate-east']['port']}/onvif/device_service"]
    assert (east["manufacturer"], east["model"], east["firmware"]) == ("Acme", "HT-200", "2.1.0")
    assert east["hardware"] == "HT-200" and east["location"] == "east gate"
    assert east["endpoint"] == f"urn:uuid:{sim_process['cameras']['gate-east']['uuid']}"
    assert by_name["tower-3"]["model"] == "ZC-5"
    # without credentials: discovery data only; a wrong password names the reason
    rows = await drv.scan(parser.parse_args(["--address", f"127.0.0.1:{sim_process['discovery_port']}", "--timeout", "0.5"]))
    assert len(rows) == 2 and all("model" not in r for r in rows)
    rows = await drv.scan(
        parser.parse_args(["--address", f"127.0.0.1:{sim_process['discovery_port']}", "--timeout", "0.5", "--user", "admin", "--password", "no"])
    )
    assert {r["error"] for r in rows} == {"auth"}


async def test_control_endpoint_drives_separate_process(sim_process: dict[str, Any], tmp_path: Path) -> None:
    port = sim_process["cameras"]["gate-east"]["port"]
    dev = device(
        "cam-east", bundled_profiles()["generic-onvif-camera"],
        {"host": "127.0.0.1", "port": port, "username": "admin", "password": "east-pw", "pull_timeout": "500ms"},
    )
    bus = open_bus(dev)
    ctl = f"http://127.0.0.1:{sim_process['control_port']}/cameras/gate-east"
    async with EventCollector(bus) as col, aiohttp.ClientSession() as http:
        async with asyncio.timeout(10):
            # the simulator is another process: poll its control endpoint
            while (await (await http.get(ctl)).json())["subscriptions"] < 1:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        for topic, data, point in (
            ("tns1:VideoSource/MotionAlarm", {"State": "true"}, "motion"),
            ("tns1:Device/Trigger/DigitalInput", {"LogicalState": "true"}, "digital_input"),
            ("tns1:RuleEngine/LineDetector/Crossed", {"ObjectId": "5"}, "line_crossing"),
        ):
            r = await http.post(f"{ctl}/event", json={"topic": topic, "data": data, "source": {"InputToken": "in_1"}})
            assert (await r.json())["delivered"] == 1
            (ev,) = await col.take(1, 5)
            assert (ev.point, ev.value) == (point, True)
        r = await http.post(f"{ctl}/event", json={"data": {}})
        assert r.status == 400
        assert (await bus.read(dev, dev.points)).values["model"] == "HT-200"
        r = await http.post(f"{ctl}/password", json={"password": "changed"})
        assert r.status == 200
        with pytest.raises(DeviceUnavailable) as e:  # the next poll notices the password change
            await bus.read(dev, dev.points)
        assert e.value.reason == "auth"


def test_sample_config_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    from gateway.config import validate_config

    creds = tmp_path / "creds"
    creds.mkdir()
    for name in ("cam-t3-throw-01", "cam-b2-lobby", "pillar-01"):
        (creds / name).write_text("secret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    monkeypatch.setenv("EAST_GATE_CAM_PASSWORD", "secret")
    sample = Path(__file__).parents[1] / "sample.toml"
    text = sample.read_text()
    config = validate_config(tomllib.loads(text), file=sample, text=text)
    assert sorted(config.devices) == ["b2-lobby-cam-03", "east-gate-cam-02", "sq-pillar-01", "t3-throw-cam-01"]
    addr = config.devices["t3-throw-cam-01"].spec.address
    assert addr.password.get_secret_value() == "secret" and addr.snapshots.keep == 500
