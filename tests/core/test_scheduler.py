from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.config import load_config
from gateway.pipeline import DeviceTracker, Pipeline
from gateway.plugin import Bus, BusSpec, DeviceSpec, DeviceUnavailable, PointSpec, Reading
from gateway.record import Record
from gateway.supervisor import DeviceRunner, cancel_and_wait


class ClockBus(Bus):
    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        super().__init__(BusSpec("t", "virtual", None))
        self.times: list[float] = []
        self.fail = fail
        self.delay = delay

    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        self.times.append(asyncio.get_running_loop().time())
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise DeviceUnavailable("timeout", "no answer")
        return Reading(values={"temperature": 20.0})


def _runner(tmp_path: Path, bus: Bus, interval: float) -> tuple[DeviceRunner, list[Record]]:
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n'
        f'[[devices]]\nid = "env"\nclass = "environment_sensor"\nprofile = "virtual-environment"\npoll = {interval}\n'
    )
    config = load_config(cfg)
    dev = config.devices["env"]
    out: list[Record] = []

    async def sink(recs: Sequence[Record]) -> None:
        out.extend(recs)

    tracker = DeviceTracker("g", "env", "environment_sensor", dev.profile, interval)
    driver = config.registry.drivers["virtual"]
    return DeviceRunner(dev, bus, driver, tracker, Pipeline(sink), backoff_cap=0.4), out


async def _run_for(runner: DeviceRunner, seconds: float) -> None:
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_polls_on_a_fixed_grid_without_drift(tmp_path: Path) -> None:
    bus = ClockBus(delay=0.013)  # a read that takes time must not shift the schedule
    runner, _ = _runner(tmp_path, bus, 0.05)
    await _run_for(runner, 1.05)
    t = bus.times
    assert 18 <= len(t) <= 22
    steps = [b - a for a, b in zip(t, t[1:], strict=False)]
    # each start is on the grid: total span equals (n-1) intervals, no accumulated drift
    assert abs((t[-1] - t[0]) - 0.05 * (len(t) - 1)) < 0.03
    assert max(steps) < 0.09


async def test_dead_device_is_backed_off(tmp_path: Path) -> None:
    bus = ClockBus(fail=True)
    runner, records = _runner(tmp_path, bus, 0.02)
    await _run_for(runner, 1.0)
    # 50 slots in a second, but after the first failures the device is probed rarely
    assert len(bus.times) < 15
    assert [r.v for r in records if r.pt == "status"] == ["offline"]
    bus.fail = False
    await _run_for(runner, 1.0)
    assert [r.v for r in records if r.pt == "status"] == ["offline", "online"]


async def test_loop_errors_are_counted_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import REGISTRY

    from gateway.app import GatewayApp

    cfg = tmp_path / "g.toml"
    cfg.write_text('[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n')
    app = GatewayApp(load_config(cfg))
    loop = asyncio.get_running_loop()
    before = REGISTRY.get_sample_value("edge_gw_loop_errors_total", {"reason": "ZeroDivisionError"}) or 0
    for _ in range(3):
        app._loop_error(loop, {"message": "Fatal error on transport", "exception": ZeroDivisionError("boom")})
    after = REGISTRY.get_sample_value("edge_gw_loop_errors_total", {"reason": "ZeroDivisionError"})
    assert after == before + 3
    assert sum("unhandled ZeroDivisionError" in r.getMessage() for r in caplog.records) == 1


class SwallowingBus(ClockBus):
    """A read that swallows a cancellation, as Python 3.11's ``asyncio.wait_for`` does when
    the awaited answer arrives together with the cancel (pymodbus awaits every request so)."""

    swallowed = 0

    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        self.times.append(asyncio.get_running_loop().time())
        try:
            await asyncio.sleep(0.2)
        except asyncio.CancelledError:
            if self.swallowed:  # the race is rare: only the first cancellation is lost
                raise
            self.swallowed += 1
        return Reading(values={"temperature": 20.0})


async def test_a_swallowed_cancellation_does_not_keep_a_poller_alive(tmp_path: Path) -> None:
    runner, _ = _runner(tmp_path, SwallowingBus(), 0.05)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    task.cancel()  # one cancel, as a plain shutdown would do: swallowed, the poller runs on
    done, _ = await asyncio.wait({task}, timeout=0.5)
    assert not done
    await cancel_and_wait([task], grace=3.0)
    assert task.done()


async def test_stopping_flag_ends_the_poll_loop(tmp_path: Path) -> None:
    bus = SwallowingBus()
    runner, _ = _runner(tmp_path, bus, 0.05)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.3)
    runner.stopping = True
    await asyncio.wait_for(task, 2.0)  # ends by itself after the poll in flight
    assert task.done() and not task.cancelled()


async def test_cancel_and_wait_gives_up_after_its_grace(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    await cancel_and_wait([task], grace=0.5)
    assert not task.done()
    assert "stubborn did not end" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=2.0)
    assert task.done()
