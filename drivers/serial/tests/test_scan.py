"""``edge-gateway scan serial`` (wired by the core from the driver's ``add_scan_arguments`` /
``scan``) against ``hwsim`` on a pseudo-terminal: address discovery with the AA wildcard."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.serial_sim import SimProcess


def _scan(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", "scan", "serial", *args],
                          capture_output=True, text=True, timeout=60)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize(("protocol", "device", "found"), [
    ("dlt645", "000012345678:fe=2", {"protocol": "dlt645", "address": "000012345678"}),
    ("cjt188", "00000023456789:meter_type=11,di_order=printed",
     {"protocol": "cjt188", "address": "00000023456789", "meter_type": "11"}),
])
def test_scan_finds_the_meter_address_with_the_wildcard(protocol: str, device: str,
                                                        found: dict[str, str]) -> None:
    with SimProcess(protocol, devices=[device], control=True) as sim:
        code, out, err = _scan("--port", sim.pty, "--protocol", protocol, "--bauds", "9600",
                               "--parity", "N", "--timeout", "1", "--json")
        assert code == 0, err
        rows = json.loads(out)["found"]
        assert rows == [{**found, "baud": 9600, "parity": "N", "port": sim.pty}]
        # the meter answered exactly one wildcard read-address request
        assert sim.device(found["address"])["requests"] == 1


def test_scan_of_a_silent_line_finds_nothing_and_a_missing_port_fails() -> None:
    with SimProcess("dlt645", devices=["000000000001:silent=true"], control=False) as sim:
        code, out, err = _scan("--port", sim.pty, "--bauds", "9600,2400", "--parity", "N",
                               "--timeout", "0.3", "--json")
        assert code == 0, err
        assert json.loads(out) == {"found": []}
    code, out, err = _scan("--port", "/dev/does-not-exist-485", "--bauds", "9600", "--timeout", "0.3")
    assert code != 0
    assert "does-not-exist-485" in out + err
