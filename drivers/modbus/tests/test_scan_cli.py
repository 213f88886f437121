"""``edge-gateway scan modbus``: the real CLI process against the simulator process, over
Modbus TCP, an RTU pseudo-terminal and RTU over TCP."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.core_daemon import free_port
from tests.support.modbus_sim import ROOT, SimProcess, farm_file

DEVICES = [("a", "acme-sd300", 3), ("b", "dianli-dds3", 5), ("c", "kexin-kxqj", 6)]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    tmp = tmp_path_factory.mktemp("scan")
    with SimProcess(farm_file(tmp / "sim.toml", DEVICES)) as s:
        yield s


def scan(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", "modbus", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


@pytest.mark.parametrize("transport", ["tcp", "rtu", "rtu_over_tcp"])
def test_cli_scan_lists_units_and_profiles(sim: SimProcess, transport: str) -> None:
    ep = sim.endpoints
    where = {
        "tcp": ["--host", "127.0.0.1", "--port", str(ep["tcp_port"])],
        "rtu": ["--serial", ep["pty"], "--baud", "9600"],
        "rtu_over_tcp": [
            "--host",
            "127.0.0.1",
            "--port",
            str(ep["rtu_tcp_port"]),
            "--rtu-over-tcp",
        ],
    }[transport]
    proc = scan(*where, "--units", "1-7", "--timeout", "0.15", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["unit"]: r for r in json.loads(proc.stdout)["found"]}
    if transport == "tcp":  # a TCP gateway answers for absent units with exception 0B
        assert rows[1]["answer"].startswith("exception_11") and rows[1]["profile"] == "-"
    else:  # on a serial line absent units stay silent
        assert set(rows) == {3, 5, 6}
    assert rows[3]["profile"] == "acme-sd300"  # its answer to the probe is exception 02
    assert rows[5]["profile"] == "dianli-dds3" and rows[5]["vendor"] == "Dianli"
    assert rows[6]["profile"] == "kexin-kxqj"


def test_cli_scan_table_output(sim: SimProcess) -> None:
    proc = scan("--serial", sim.pty, "--units", "5", "--timeout", "0.15")
    assert proc.returncode == 0, proc.stderr
    assert "dianli-dds3" in proc.stdout and "modbus scan" in proc.stdout


def test_cli_scan_unreachable_endpoint_is_a_clear_error() -> None:
    proc = scan("--host", "127.0.0.1", "--port", str(free_port()), "--units", "1")
    assert proc.returncode == 1
    assert "scan failed" in proc.stderr and "connect_failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = scan("--serial", "/dev/no-such-modbus-port", "--units", "1")
    assert proc.returncode == 1 and "connect_failed" in proc.stderr


def test_cli_scan_rejects_bad_units() -> None:
    proc = scan("--host", "127.0.0.1", "--units", "9-3")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
