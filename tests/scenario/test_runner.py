"""``hwsim run --scenario`` starts real simulator processes, writes a gateway config that
``edge-gateway check`` accepts, and stops every child on SIGTERM; ``hwsim demo`` runs the
whole chain through an uplink outage and ends with zero missing records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.support.core_daemon import free_port
from tests.support.sync_mosquitto import have_mosquitto


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


def _first_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    os.set_blocking(proc.stdout.fileno(), False)
    buf = ""
    while time.monotonic() < deadline:
        chunk = proc.stdout.readline()
        if chunk:
            buf += chunk
            if buf.endswith("\n"):
                return buf
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.05)
    raise AssertionError(f"no JSON line from hwsim run (exit {proc.poll()}): {buf!r}")


def test_scenario_runner_starts_checks_and_stops(tmp_path: Path) -> None:
    out = tmp_path / "gw" / "gateway.toml"
    api = f"127.0.0.1:{free_port()}"
    err = (tmp_path / "run.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hwsim", "run", "--scenario", "community", "--gateway-config", str(out),
         "--api", api, "--mqtt", "127.0.0.1:1883"],
        stdout=subprocess.PIPE, stderr=err, text=True,
    )
    pids: list[int] = []
    try:
        info = json.loads(_first_line(proc, 60))
        assert info["devices"] == 225
        assert info["by_sim"] == {"cjt188": 24, "dlt645": 36, "framed": 12, "modbus": 131, "onvif": 22}
        procs = info["processes"]
        names = {p["name"] for p in procs}
        assert {"onvif", "modbus-rs485-1", "modbus-site-mbtcp", "serial-meters-1", "serial-access-trunk"} <= names
        pids = [p["pid"] for p in procs]
        assert all(_alive(pid) for pid in pids)
        for p in procs:
            if p["name"].startswith(("modbus-rs485", "serial-meters")):
                assert os.path.exists(p["pty"]), p  # a real pseudo-terminal
        assert oct(out.stat().st_mode & 0o777) == "0o600"  # it holds the camera password
        cfg = tomllib.loads(out.read_text())
        assert cfg["api"]["listen"] == api
        assert cfg["uplinks"][0]["url"] == "mqtt://127.0.0.1:1883"
        ports = {d["id"]: d["address"]["port"] for d in cfg["devices"] if d["class"] == "camera"}
        assert len(ports) == 22 and len(set(ports.values())) == 22
        check = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "check", "-c", str(out), "--json"],
            capture_output=True, text=True, timeout=60,
        )
        assert check.returncode == 0, check.stdout + check.stderr
        summary = json.loads(check.stdout)
        assert summary["ok"] is True and summary["devices"] == 225
        assert proc.poll() is None, "the runner must keep running until signalled"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        err.close()
    assert rc == 0, (tmp_path / "run.err").read_text()[-3000:]
    deadline = time.monotonic() + 5
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in pids if _alive(pid)], "simulator processes left behind"


def test_unknown_scenario_is_a_clear_error(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "hwsim", "run", "--scenario", "no-such-site", "--gateway-config",
         str(tmp_path / "g.toml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "no scenario 'no-such-site'" in r.stderr
    assert not (tmp_path / "g.toml").exists()


def test_invalid_scenario_lists_its_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "gw"\n[[groups]]\nname = "x"\nsim = "zigbee"\n')
    r = subprocess.run(
        [sys.executable, "-m", "hwsim", "run", "--scenario", str(bad), "--gateway-config",
         str(tmp_path / "g.toml")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "gateway.district: required" in r.stderr and "sim: expected one of" in r.stderr


@pytest.mark.mosquitto
@pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed")
def test_demo_survives_an_outage_with_nothing_missing(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "hwsim", "demo", "--duration", "25", "--outage", "5", "--no-live",
         "--json", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=110,
    )
    took = time.monotonic() - t0
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    assert lines, r.stdout[-3000:] + r.stderr[-3000:]
    v = json.loads(lines[-1])
    detail = json.dumps(v, indent=1)[:3000] + "\n" + r.stdout[-2000:] + r.stderr[-2000:]
    assert r.returncode == 0, detail
    assert v["ok"] is True and v["missing"] == 0 and v["missing_ranges"] == []
    assert v["seq_conflicts"] == 0 and v["malformed"] == 0
    assert v["received"] >= 300, detail  # a community's worth of records
    assert v["hist_records"] > 0, "the outage must have produced a backlog that was replayed"
    assert v["peak_backlog"] > 0
    assert v["devices"] == 225 and v["devices_online"] >= 200, detail  # every protocol answers
    assert "PASS: nothing missing" in r.stdout
    assert "uplink cut for 5s" in r.stdout and "uplink restored" in r.stdout
    assert took < 100
