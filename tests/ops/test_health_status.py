"""Liveness, readiness and status (``ok | degraded | failing`` with named reasons).

The real daemon (``edge-gateway run``) with the Modbus simulator and a real mosquitto; the
same verdict is looked at in three places: ``GET /api/v1/health``, ``edge-gateway status``
and the systemd ``STATUS=`` line (a real ``NOTIFY_SOCKET`` datagram socket).

Cases of the issue: the only bus down (every device offline) -> degraded, not a silent
``ready: true``; an uplink disconnected -> degraded; a misconfigured device -> degraded
(``tests/core/test_misconfigured.py``).

The host clock may really be unsynchronised in a test machine (no NTP in a container): the
expected reasons then include ``clock_unsynchronised``, decided by reading the kernel's
``STA_UNSYNC`` status bit (``test_health_evaluate.host_clock_unsynchronised``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.ops.test_health_evaluate import host_clock_unsynchronised
from tests.ops.test_sdnotify import NotifyServer
from tests.support.core_daemon import Daemon, free_port
from tests.support.ops_stack import HWSIM, Stack, driver_available, gateway_config, mqtt_uplink
from tests.support.sync_mosquitto import Mosquitto, have_mosquitto

ROOT = Path(__file__).resolve().parents[2]
CLOCK = {"clock_unsynchronised"} if host_clock_unsynchronised() else set()


# --------------------------------------------------------------------------- real daemon


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def _reasons(d: Daemon) -> dict[str, dict[str, Any]]:
    return {r["code"]: r for r in d.get("/api/v1/health")["status_reasons"]}


@pytest.fixture
def notify() -> Iterator[tuple[NotifyServer, str]]:
    with tempfile.TemporaryDirectory(prefix="sdh") as tmpd:
        path = os.path.join(tmpd, "notify")
        srv = NotifyServer(path)
        try:
            yield srv, path
        finally:
            srv.close()


def _status_lines(srv: NotifyServer) -> list[str]:
    return [m.split("STATUS=", 1)[1].split("\n")[0] for _, m in list(srv.messages) if "STATUS=" in m]


@pytest.mark.skipif(not driver_available("modbus"), reason="the modbus driver is not in this tree")
def test_only_bus_down_is_degraded_everywhere(tmp_path: Path, notify: tuple[NotifyServer, str]) -> None:
    """The issue's case: one Modbus TCP bus, nobody listening, every device offline."""
    srv, sock = notify
    port = free_port()
    body = (
        f'[[buses]]\nname = "b1-tcp"\ndriver = "modbus"\ntransport = "tcp"\nhost = "127.0.0.1"\n'
        f'port = {port}\ntimeout = "200ms"\n\n'
        + "".join(
            f'[[devices]]\nid = "smoke-{u}"\nclass = "smoke_detector"\nprofile = "acme-sd300"\n'
            f'bus = "b1-tcp"\naddress = {{ unit = {u} }}\npoll = "1s"\n\n'
            for u in (1, 2)
        )
    )
    cfg = gateway_config(tmp_path, api_port=free_port(), body=body, token_env=None)
    d = Daemon(cfg, env={"NOTIFY_SOCKET": sock}).start()
    stack = Stack(tmp_path)
    try:
        h = d.wait_for(
            lambda: (lambda h: h if {r["code"] for r in h["status_reasons"]} >= {"buses_down", "devices_offline"} else None)(
                d.get("/api/v1/health")
            ),
            20, "bus down and devices offline in /health",
        )
        assert h["live"] is True
        assert h["ready"] is True, "a bus down is a degradation, the gateway itself is ready"
        assert h["status"] == "degraded"
        reasons = {r["code"]: r for r in h["status_reasons"]}
        assert set(reasons) == {"buses_down", "devices_offline"} | CLOCK
        assert reasons["buses_down"]["items"] == ["b1-tcp"]
        assert reasons["devices_offline"]["count"] == 2
        assert reasons["devices_offline"]["items"] == ["smoke-1", "smoke-2"]
        assert "b1-tcp" in h["buses_down"]

        p = _cli("status", "-c", str(cfg))
        assert p.returncode == 0, p.stderr
        assert "degraded" in p.stdout and "b1-tcp" in p.stdout and "2 of 2 devices offline" in p.stdout
        pj = json.loads(_cli("status", "-c", str(cfg), "--json").stdout)
        assert pj["health"]["status"] == "degraded"
        assert {r["code"] for r in pj["health"]["status_reasons"]} == set(reasons)

        line = d.wait_for(
            lambda: next((s for s in reversed(_status_lines(srv)) if s.startswith("degraded: bus b1-tcp")), None),
            15, "a degraded STATUS= line",
        )
        assert "bus b1-tcp down" in line and "2/2 devices offline" in line

        # the simulator comes up on the bus's port: the reasons go away by themselves
        sim = tmp_path / "sim.toml"
        sim.write_text(
            '[[devices]]\nname = "s1"\nmodel = "acme-sd300"\nunit = 1\n'
            '[[devices]]\nname = "s2"\nmodel = "acme-sd300"\nunit = 2\n'
        )
        stack.start([*HWSIM, "modbus", "run", str(sim), "--tcp", str(port)], "modbus")
        d.wait_for(lambda: set(_reasons(d)) == CLOCK, 60, "bus and devices recovered in /health")
        assert d.get("/api/v1/health")["status"] == ("degraded" if CLOCK else "ok")
        d.wait_for(
            lambda: any(s.startswith("ok |" if not CLOCK else "degraded: clock unsynchronised |") for s in _status_lines(srv)[-2:]),
            15, "STATUS= line after recovery",
        )
    finally:
        d.stop()
        stack.close()


@pytest.mark.mosquitto
@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")
def test_uplink_down_is_degraded_and_recovers(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    broker.start()
    body = (
        '[[devices]]\nid = "smoke-v"\nclass = "smoke_detector"\nprofile = "virtual-smoke"\npoll = "1s"\n'
    )
    cfg = gateway_config(
        tmp_path, api_port=free_port(), body=body, token_env=None,
        uplink=mqtt_uplink(broker.port, "city/health"),
    )
    d = Daemon(cfg).start()
    try:
        d.wait_for(lambda: set(_reasons(d)) == CLOCK, 20, "no reason but the clock with the broker up")
        broker.kill()
        r = d.wait_for(lambda: _reasons(d).get("uplinks_disconnected"), 20, "uplink disconnected in /health")
        assert r["items"] == ["city"] and r["count"] == 1
        h = d.get("/api/v1/health")
        assert h["ready"] is True and h["status"] == "degraded"
        assert set(_reasons(d)) == {"uplinks_disconnected"} | CLOCK
        p = _cli("status", "-c", str(cfg))
        assert p.returncode == 0, p.stderr
        assert "degraded" in p.stdout and "uplink" in p.stdout and "city" in p.stdout
        broker.start()
        d.wait_for(lambda: "uplinks_disconnected" not in _reasons(d), 30, "uplink reconnected")
    finally:
        d.stop()
        broker.stop()
