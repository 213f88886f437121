"""Golden cases: every bundled profile against the simulator over Modbus TCP, RTU on a real
pseudo-terminal and RTU over TCP; both vendors of a class give identical canonical records."""

from __future__ import annotations

from pathlib import Path

import pytest
from hwsim.modbus.model import load_farm
from hwsim.modbus.server import ModbusSimulator

from gateway.harness import DeviceHarness
from tests.support.modbus_golden import (
    CASES_DIR,
    build,
    case_names,
    harness_config,
    load_case,
    normalise,
)
from tests.support.modbus_helpers import bundled_profiles

CASES = case_names()


def test_every_bundled_profile_has_a_golden_case() -> None:
    used: set[str] = set()
    for name in CASES:
        config, _ = load_case(name)
        used.update(d["profile"] for d in config["devices"])
    assert used == set(bundled_profiles())


def test_both_vendors_of_a_class_expect_identical_records() -> None:
    by_class: dict[str, list[str]] = {}
    for pid, prof in bundled_profiles().items():
        by_class.setdefault(prof.cls, []).append(pid)
    assert len(by_class) == 10
    for cls, pids in by_class.items():
        assert len(pids) >= 2, cls
        texts = {(CASES_DIR / pid / "expected.jsonl").read_text() for pid in pids}
        assert len(texts) == 1, f"{cls}: vendors disagree on the expected records"


@pytest.mark.parametrize("transport", ["tcp", "rtu", "rtu_over_tcp"])
@pytest.mark.parametrize("case", CASES)
async def test_golden_case(case: str, transport: str) -> None:
    config, expected = load_case(case)
    sim = ModbusSimulator(
        load_farm(Path(CASES_DIR / case / "sim.toml")),
        tcp_port=0 if transport == "tcp" else None,
        rtu_pty=transport == "rtu",
        rtu_tcp_port=0 if transport == "rtu_over_tcp" else None,
    )
    async with sim:
        endpoint = {"tcp": sim.tcp_port, "rtu": sim.pty_path, "rtu_over_tcp": sim.rtu_tcp_port}[
            transport
        ]
        assert endpoint is not None
        # requests per poll as planned by the bus (the harness polls through the same plan)
        bus, devices = build(config, transport, endpoint)
        assert all(bus.requests_per_poll(spec) >= 1 for spec, _ in devices)
        text = harness_config(
            (CASES_DIR / case / "config.toml").read_text("utf-8"), transport, endpoint
        )
        async with DeviceHarness.from_text(text, CASES_DIR / case) as h:
            records = await h.poll()
    got = [r.to_dict() for r in records]
    assert normalise(got) == normalise(expected)
    assert all(r["seq"] > 0 for r in got)
