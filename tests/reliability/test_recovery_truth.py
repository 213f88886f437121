"""After a device outage, what the platform shows is true again.

The real daemon with the default privacy policy runs one device per driver — virtual,
Modbus TCP (``hwsim modbus``), a DL/T 645 meter on a pseudo-terminal, a framed access panel
behind a serial server (``hwsim framed --tcp``) and an ONVIF camera (``hwsim onvif``) — and
forwards over a real mosquitto to the platform simulator. Every device is cut off at once,
reported offline (its points go ``v=null, q=bad`` upstream), then brought back with the
*same* values. The first good poll after recovery must re-send every point whose last
record upstream was not good — state points that did not change (camera model, firmware,
stream URI, a door's state) and telemetry inside its deadband included — so that the
platform's latest record of every point is ``good`` again, stamped at the recovery poll.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.core_daemon import Daemon, free_port
from tests.support.ops_stack import HWSIM, Stack, daemon_env, gateway_config, http_json, mqtt_uplink
from tests.support.sync_mosquitto import Mosquitto, have_mosquitto
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.slow,
    pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed"),
]

PREFIX = "city/truth"
GW = "cd-wh-jifu-gw01"
METER = "000012345678"

VIRTUAL_PROFILE = """
[profile]
id = "truth-virtual-gas"
class = "gas_detector"
driver = "virtual"
vendor = "Test"
model = "constant gas detector"

[points.gas_concentration]
address = { generator = "constant", value = 3 }
deadband = 0.5

[points.valve_open]
address = { generator = "constant", value = true }
"""


def _post(url: str, body: Any) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.loads(resp.read() or b"null")


class Site:
    """The simulators, with a way to cut each device off and bring it back."""

    def __init__(self, tmp: Path, stack: Stack) -> None:
        self.tmp = tmp
        self.stack = stack
        self.cut: dict[str, Callable[[bool], None]] = {}

    def config(self) -> str:
        tmp, parts = self.tmp, []
        # virtual
        profiles = tmp / "profiles"
        profiles.mkdir()
        (profiles / "truth-virtual-gas.toml").write_text(VIRTUAL_PROFILE)
        down = tmp / "virtual-down"
        parts.append(f'[[devices]]\nid = "virt-gas"\nclass = "gas_detector"\nprofile = "truth-virtual-gas"\n'
                     f'poll = "1s"\naddress = {{ fail_file = "{down}" }}\n')
        self.cut["virt-gas"] = lambda off: down.touch() if off else down.unlink()
        # Modbus TCP
        sim = tmp / "modbus-sim.toml"
        sim.write_text('[[devices]]\nname = "smoke"\nmodel = "acme-sd300"\nunit = 3\n')
        mb = self.stack.start([*HWSIM, "modbus", "run", str(sim), "--tcp", "0", "--control", "0"], "modbus")
        parts.append(f'[[buses]]\nname = "mb"\ndriver = "modbus"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
                     f'port = {mb.info["tcp_port"]}\ntimeout = "300ms"\n')
        parts.append('[[devices]]\nid = "mb-smoke"\nclass = "smoke_detector"\nprofile = "acme-sd300"\n'
                     'bus = "mb"\naddress = { unit = 3 }\npoll = "1s"\n')
        mb_control = f"http://127.0.0.1:{mb.info['control_port']}/devices/smoke/fault"
        self.cut["mb-smoke"] = lambda off: _post(mb_control, {"fault": "silent" if off else "none"})
        # DL/T 645 meter on a pty, values frozen
        meters = tmp / "meters.toml"
        meters.write_text(f'[[devices]]\nprotocol = "dlt645"\naddress = "{METER}"\nmodel = "single_phase"\n'
                          'values = { evolve = false }\n')
        link = tmp / "ttyMeters"
        m = self.stack.start([*HWSIM, "dlt645", "--config", str(meters), "--link", str(link),
                              "--control", "127.0.0.1:0"], "dlt645")
        parts.append(f'[[buses]]\nname = "meters"\ndriver = "serial"\nport = "{link}"\nbaud = 2400\n'
                     'parity = "N"\nfirst_byte_timeout = "300ms"\n')
        parts.append(f'[[devices]]\nid = "em-1"\nclass = "electricity_meter"\nprofile = "dlt645-ddsu-1p"\n'
                     f'bus = "meters"\naddress = {{ addr = "{METER}" }}\npoll = "1s"\n')
        m_control = f"http://127.0.0.1:{m.info['control_port']}/devices/{METER}"
        self.cut["em-1"] = lambda off: _post(m_control, {"quirks": {"silent": off}})
        # framed access panel behind a serial server
        panel = self.stack.start([*HWSIM, "framed", "--device", "3:model=access_panel", "--no-pty",
                                  "--tcp", "127.0.0.1:0", "--control", "127.0.0.1:0"], "framed")
        parts.append(f'[[buses]]\nname = "gate"\ndriver = "serial"\nport = "tcp://127.0.0.1:{panel.info["tcp_port"]}"\n'
                     'baud = 9600\nparity = "N"\nfirst_byte_timeout = "300ms"\n')
        parts.append('[[devices]]\nid = "door-1"\nclass = "access_control"\nprofile = "framed-ac200"\n'
                     'bus = "gate"\naddress = { addr = 3 }\npoll = "1s"\n')
        p_control = f"http://127.0.0.1:{panel.info['control_port']}/devices/3"
        self.cut["door-1"] = lambda off: _post(p_control, {"quirks": {"silent": off}})
        # ONVIF camera: a reboot takes it off the network for a while
        cam = self.stack.start([*HWSIM, "onvif", "--cameras", "1", "--username", "admin", "--password", "pw"], "onvif")
        parts.append(f'[[devices]]\nid = "cam-1"\nclass = "camera"\nprofile = "generic-onvif-camera"\npoll = "1s"\n'
                     f'address = {{ host = "127.0.0.1", port = {cam.info["cameras"]["cam1"]["port"]}, '
                     'username = "admin", password = "pw", pull_timeout = "1s", timeout = "1s" }\n')
        c_control = f"http://127.0.0.1:{cam.info['control_port']}/cameras/cam1"
        self.cut["cam-1"] = lambda off: _post(c_control + "/reboot", {"downtime": 6}) if off else None
        return "\n".join(parts)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Daemon, Site, str]]:
    broker = Mosquitto(tmp_path)
    broker.start()
    stack = Stack(tmp_path)
    daemon: Daemon | None = None
    try:
        platform = stack.platform(broker.port, PREFIX)
        s = Site(tmp_path, stack)
        cfg = gateway_config(tmp_path, api_port=free_port(), body=s.config(),
                             uplink=mqtt_uplink(broker.port, PREFIX), token_env=None)
        text = cfg.read_text().replace('community = "Jifu"\n', 'community = "Jifu"\nprofile_dirs = ["profiles"]\n', 1)
        cfg.write_text(text)
        daemon = Daemon(cfg, env=daemon_env(tmp_path))
        daemon.start()
        yield daemon, s, platform
    finally:
        if daemon is not None:
            daemon.stop()
        stack.close()
        broker.stop()


def _states(d: Daemon) -> dict[str, str]:
    return {x["id"]: x["state"] for x in d.get("/api/v1/devices")["devices"]}


def _latest(platform: str) -> dict[str, dict[str, Any]]:
    return dict(http_json(f"{platform}/api/latest?gw={GW}"))


def test_every_point_is_good_again_at_the_platform_after_an_outage(site: tuple[Daemon, Site, str]) -> None:
    d, s, platform = site
    devices = sorted(s.cut)
    wait_for(lambda: all(_states(d).get(x) == "online" for x in devices), 30, "every device online",
             detail=lambda: _states(d))
    # every point of every device has reached the platform, good
    wait_for(lambda: all(len(_latest(platform).get(x, {})) >= 2 for x in devices), 20,
             "first values at the platform", detail=lambda: _latest(platform))
    before = _latest(platform)
    for dev in devices:
        s.cut[dev](True)
    wait_for(lambda: all(_states(d).get(x) == "offline" for x in devices), 30, "every device offline",
             detail=lambda: _states(d))

    def bad_everywhere() -> bool:
        now = _latest(platform)
        return all(now.get(x, {}).get("status", {}).get("v") == "offline" for x in devices) and all(
            rec["q"] in ("bad", "stale") for x in devices for pt, rec in now[x].items() if pt != "status")

    wait_for(bad_everywhere, 15, "the platform shows the outage", detail=lambda: _latest(platform))
    outage = _latest(platform)
    for dev in devices:
        s.cut[dev](False)
    wait_for(lambda: all(_states(d).get(x) == "online" for x in devices), 40, "every device back online",
             detail=lambda: _states(d))

    def good_everywhere() -> bool:
        now = _latest(platform)
        return all(rec["q"] == "good" for x in devices for pt, rec in now.get(x, {}).items() if pt != "status")

    wait_for(good_everywhere, 15, "every point good again at the platform", detail=lambda: {
        x: {pt: r for pt, r in _latest(platform).get(x, {}).items() if r["q"] != "good"} for x in devices})
    after = _latest(platform)
    first_seq = min(rec["seq"] for x in devices for rec in outage[x].values())
    history = http_json(f"{platform}/api/history?gw={GW}&after={first_seq}")
    for dev in devices:
        pts = set(outage[dev]) - {"status"}
        assert set(before[dev]) - {"status"} <= pts == set(after[dev]) - {"status"}, dev
        assert after[dev]["status"]["v"] == "online"
        # the first online record after the outage, and the first record of each point after it
        mine = [r for r in history if r["dev"] == dev and r["seq"] > outage[dev]["status"]["seq"]]
        online = next(r for r in mine if r["pt"] == "status" and r["v"] == "online")
        for pt in pts:
            recs = [r for r in mine if r["pt"] == pt]
            rec = next(r for r in recs if r["q"] == "good")
            # re-sent good by the first good poll after recovery, not by a later change
            assert rec["v"] is not None, (dev, pt, rec)
            assert abs(rec["ts"] - online["ts"]) < 1.5, (dev, pt, rec, online)
            # and nothing after it took it back
            assert all(r["q"] == "good" for r in recs if r["seq"] > rec["seq"]), (dev, pt, recs)
    # the unchanged ones really were unchanged: the platform shows the values it showed before
    assert after["virt-gas"]["valve_open"]["v"] == before["virt-gas"]["valve_open"]["v"] is True
    assert after["virt-gas"]["gas_concentration"]["v"] == before["virt-gas"]["gas_concentration"]["v"]
