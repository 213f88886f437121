"""The simulator as a separate process (CLI + JSON control endpoint) and the scan."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from hwsim.modbus.model import SimFileError, farm_from_dict
from hwsim.modbus.server import ModbusSimulator

from drivers.modbus.driver import ModbusDriver
from gateway.plugin import DeviceUnavailable
from tests.support.modbus_helpers import device_spec, rtu_bus, tcp_bus

ROOT = Path(__file__).resolve().parents[3]


async def test_simulator_process_with_control_api(tmp_path: Path) -> None:
    farm = tmp_path / "sim.toml"
    farm.write_text('[[devices]]\nname = "gas"\nmodel = "zhongan-zagt2"\nunit = 3\n')
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'hardware-sim'}:{ROOT}")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hwsim.cli",
        "modbus",
        "run",
        str(farm),
        "--tcp",
        "0",
        "--control",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        ep = json.loads(line)
        bus = tcp_bus(ep["tcp_port"], "proc", timeout=0.3)
        gas = device_spec("zhongan-zagt2", unit=3)
        base = f"http://127.0.0.1:{ep['control_port']}"
        async with aiohttp.ClientSession() as http:
            assert (await bus.read(gas, gas.points)).values["gas_concentration"] == 30000
            r = await http.post(f"{base}/devices/gas/values", json={"concentration": 12.5})
            assert r.status == 200
            assert (await bus.read(gas, gas.points)).values["gas_concentration"] == 12500
            r = await http.post(f"{base}/devices/gas/fault", json={"fault": "silent"})
            assert (await r.json())["fault"] == "silent"
            with pytest.raises(DeviceUnavailable):
                await bus.read(gas, gas.points)
            r = await http.post(f"{base}/devices/gas/fault", json={"fault": "exploding"})
            assert r.status == 400
            r = await http.post(f"{base}/devices/nope/fault", json={"fault": "none"})
            assert r.status == 404
            await http.post(f"{base}/devices/gas/fault", json={"fault": "none"})
            assert (await bus.read(gas, gas.points)).errors == {}
            status = await (await http.get(f"{base}/devices")).json()
            assert status["devices"][0]["requests"] >= 4
        await bus.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


def test_sim_file_errors_are_clear() -> None:
    with pytest.raises(SimFileError, match="no device file"):
        farm_from_dict({"devices": [{"model": "no-such-model"}]})
    with pytest.raises(SimFileError, match="unknown value"):
        farm_from_dict({"devices": [{"model": "acme-sd300", "set": {"nope": 1}}]})


async def test_scheduled_script_and_behaviours() -> None:
    devs = farm_from_dict({"devices": [{"name": "b", "model": "bench-20", "unit": 1}]})
    dev = devs[0]
    dev.script.append((0.0, {"v01": 7}))
    dev.tick(100.0)
    assert dev.read_back("v01") == 7
    dev.tick(101.0)
    assert dev.read_back("v00") == 1010  # counter: 10 per second
    assert 0 <= dev.read_back("v02") <= 60000


def _scan_args(**kw: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ModbusDriver().add_scan_arguments(parser)
    argv: list[str] = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return parser.parse_args(argv)


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_scan_finds_units_and_suggests_profiles(transport: str) -> None:
    devs = farm_from_dict(
        {
            "devices": [
                {"name": "a", "model": "acme-sd300", "unit": 3},
                {"name": "b", "model": "dianli-dds3", "unit": 5},
                {"name": "c", "model": "kexin-kxqj", "unit": 6},
            ]
        }
    )
    async with ModbusSimulator(devs, tcp_port=0, rtu_pty=True) as sim:
        if transport == "tcp":
            args = _scan_args(host="127.0.0.1", port=sim.tcp_port, units="1-7", timeout=0.1)
        else:
            args = _scan_args(serial=sim.pty_path, baud=9600, units="1-7", timeout=0.1)
        rows = await ModbusDriver().scan(args)
    by_unit = {r["unit"]: r for r in rows}
    if transport == "rtu":
        assert set(by_unit) == {3, 5, 6}  # RTU: absent units stay silent
    else:  # a TCP gateway answers for absent units with exception 0B
        assert by_unit[1]["answer"].startswith("exception_11") and by_unit[1]["profile"] == "-"
    assert by_unit[3]["profile"] == "acme-sd300"
    assert by_unit[5]["profile"] == "dianli-dds3" and by_unit[5]["vendor"] == "Dianli"
    assert by_unit[6]["profile"] == "kexin-kxqj"


async def test_rtu_bus_ignores_noise_between_requests() -> None:
    devs = farm_from_dict({"devices": [{"name": "t", "model": "acme-ts200", "unit": 2}]})
    async with ModbusSimulator(devs, rtu_pty=True) as sim:
        bus = rtu_bus(sim.pty_path or "", "noise", timeout=0.2)
        ts = device_spec("acme-ts200", unit=2)
        await bus.open()
        try:
            assert (await bus.read(ts, ts.points)).values["tilt_y"] == -12
            sim._pty_send(b"\x02\x04\x99\x00garbage")  # noise on the line between polls
            await asyncio.sleep(0.05)
            assert (await bus.read(ts, ts.points)).values["tilt_y"] == -12
        finally:
            await bus.close()
