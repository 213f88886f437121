"""Golden cases: every bundled serial profile through the core's ``DeviceHarness`` (real
driver, profile mapping and pipeline) against ``hwsim`` in a separate process, over a real
pseudo-terminal and over TCP (serial-server mode)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.harness import DeviceHarness
from tests.support.serial_golden import (
    CASES_DIR,
    case_names,
    comparable,
    config_for,
    load_expected,
    load_sim_file,
    profiles_used,
    sim_protocol,
)
from tests.support.serial_sim import SimProcess

from .helpers import profiles

CASES = case_names()


def test_every_bundled_profile_has_a_golden_case() -> None:
    used: set[str] = set()
    for name in CASES:
        used |= profiles_used(name)
        assert load_expected(name), f"case {name} has no expected records"
    assert used == set(profiles())


@pytest.mark.parametrize("transport", ["pty", "tcp"])
@pytest.mark.parametrize("case", CASES)
async def test_golden_case(case: str, transport: str) -> None:
    sim_def = load_sim_file(case)
    expected = load_expected(case)
    sim = SimProcess(sim_protocol(sim_def), config=CASES_DIR / case / "sim.toml",
                     pty=transport == "pty", tcp=transport == "tcp",
                     control=bool(sim_def.get("emit")))
    await asyncio.to_thread(sim.start)
    try:
        port = sim.pty if transport == "pty" else f"tcp://127.0.0.1:{sim.tcp_port}"
        async with DeviceHarness.from_text(config_for(case, port), CASES_DIR / case) as h:
            records = await h.poll()
            emits = list(sim_def.get("emit", []))
            for e in emits:
                fields = {k: v for k, v in e.items() if k not in ("address", "event")}
                await asyncio.to_thread(sim.emit, e["address"], e["event"], **fields)
            if emits:
                events = await h.collect_events(count=len(emits) + _polled_events(records), timeout=5)
                records = records + [r for r in events if r not in records]
    finally:
        await asyncio.to_thread(sim.stop)
    got = [r.to_dict() for r in records]
    assert comparable(got, expected) == comparable(expected, expected)
    assert all(r["seq"] > 0 and r["id"] for r in got)
    assert len({r["id"] for r in got}) == len(got)


def _polled_events(records: Sequence[object]) -> int:
    return sum(1 for r in records if getattr(r, "kind", None) == "event")
