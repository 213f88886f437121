"""An out-of-tree driver package, installed into a temporary location, is discovered through
its entry point and run by the real daemon; one built for another API version is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.plugin import API_VERSION, IncompatibleDriver, check_api_version
from tests.support.core_daemon import Daemon, free_port

PKG = Path(__file__).parent / "plugin_pkg"


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(PKG)],
        check=True, timeout=180, cwd=build,
    )
    assert (site / "acme_gw" / "profiles" / "acme-thermo.toml").exists()
    return site


def _env(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_drivers_lists_plugin_and_refuses_wrong_api(plugin_site: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "drivers", "--json"],
        capture_output=True, text=True, env=_env(plugin_site), timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    drivers = {d["name"]: d for d in json.loads(proc.stdout)["drivers"]}
    assert drivers["acme"]["version"] == "2.3.0"
    assert drivers["acme"]["api_version"] == "1.0"
    assert drivers["acme"]["distribution"] == "acme-gw-driver"
    assert drivers["acme"]["error"] is None
    err = drivers["acme_old"]["error"]
    assert "needs plugin API 2.0" in err and "provides 1.0" in err
    assert "virtual" in drivers


def test_daemon_runs_plugin_device(plugin_site: Path, tmp_path: Path) -> None:
    state = tmp_path / "acme.json"
    state.write_text(json.dumps({"7": [612, 48]}))
    port = free_port()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""
[gateway]
id = "gw-plugin"
district = "510107"
community = "Test"

[api]
listen = "127.0.0.1:{port}"

[buffer]
path = "{tmp_path / 'buffer.db'}"

[[buses]]
name = "acme-bus"
driver = "acme"
state_file = "{state}"

[[devices]]
id = "thermo-1"
class = "environment_sensor"
profile = "acme-thermo"
bus = "acme-bus"
address = {{ unit = 7 }}
poll = "1s"
"""
    )
    d = Daemon(cfg, env={"PYTHONPATH": _env(plugin_site)["PYTHONPATH"]}).start()
    try:
        pts = d.wait_for(
            lambda: d.get("/api/v1/devices/thermo-1/points")["points"] or None, 10, "plugin values"
        )
        assert pts["temperature"]["v"] == pytest.approx(21.2)
        assert pts["temperature"]["u"] == "Cel"
        assert pts["humidity"]["v"] == 48
    finally:
        d.stop()


def test_check_api_version_messages() -> None:
    check_api_version("x", API_VERSION)
    check_api_version("x", (API_VERSION[0], 0))
    with pytest.raises(IncompatibleDriver, match="needs plugin API 2.0"):
        check_api_version("x", (API_VERSION[0] + 1, 0))
    with pytest.raises(IncompatibleDriver):
        check_api_version("x", (API_VERSION[0], API_VERSION[1] + 1))
