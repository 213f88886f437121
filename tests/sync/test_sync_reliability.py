"""Outages with the real buffer, a real mosquitto and the platform simulator:
broker killed under load, the gateway process SIGKILLed during the drain, a flapping link."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hwsim.platform import PlatformSim
from hwsim.proxy import FaultProxy

from buffer import Buffer
from sync import create_uplink, uplink_schema
from tests.support.sync_community import produce
from tests.support.sync_mosquitto import Mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mosquitto
ROOT = Path(__file__).resolve().parents[2]
GW = "gw-rel"


def cfg(url: str, **kw: Any) -> Any:
    base = {"name": "city", "kind": "mqtt", "url": url, "topic_prefix": "city",
            "reconnect_min": 0.05, "reconnect_max": 0.5, "batch_linger": 0.005,
            "batch_max_records": 200, "window": 8, "backlog_rate": 3000}
    base.update(kw)
    return uplink_schema("mqtt").model_validate(base)


def summary(platform: PlatformSim) -> dict[str, Any]:
    return dict(platform.store.summary(GW)["gateways"].get(GW, {}))


async def drained(buf: Buffer, platform: PlatformSim, timeout: float) -> dict[str, Any]:
    await wait_until(lambda: buf.pending_count("city") == 0 and summary(platform).get("seq_max") == buf.last_seq
                     and summary(platform).get("missing_count") == 0, timeout)
    return summary(platform)


async def test_normal_flow_real_buffer(tmp_path: Path, broker: Mosquitto, platform: PlatformSim) -> None:
    async with Buffer(tmp_path / "gw.db", gw=GW, uplinks=("city",)) as buf:
        up = create_uplink(cfg(broker.url), gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        try:
            n = await produce(buf, GW, rate=2000, duration=2.0)
            s = await drained(buf, platform, 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert s["unique"] == n == s["seq_max"] and s["missing"] == []
    assert s["duplicates"] == 0 and s["seq_conflicts"] == 0
    assert s["out_of_order_live"] == {}
    assert s["latency"]["live"]["event"]["p99"] < 1.0


async def test_broker_killed_under_load_and_restarted(
    tmp_path: Path, broker: Mosquitto, platform: PlatformSim
) -> None:
    async with Buffer(tmp_path / "gw.db", gw=GW, uplinks=("city",)) as buf:
        up = create_uplink(cfg(broker.url), gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        prod = asyncio.create_task(produce(buf, GW, rate=2000, duration=9.0))
        try:
            await asyncio.sleep(2.0)
            broker.kill()
            await wait_until(lambda: not up.state()["connected"], 10)
            outage_end = time.time() + 3.0
            await asyncio.sleep(3.0)
            broker.start()
            await platform.wait_mqtt(15)
            n = await prod
            s = await drained(buf, platform, 30)
        finally:
            prod.cancel()
            task.cancel()
            await asyncio.gather(task, prod, return_exceptions=True)
    assert s["seq_max"] == n and s["missing"] == [] and s["seq_conflicts"] == 0
    assert s["hist_records"] >= 3 * 2000 * 0.8  # the outage's records came back as backlog
    # Every duplicate is a re-delivery of an already-seen id (one id per seq, none new).
    assert s["unique"] == n
    # Live events during the drain: within 1 s of capture.
    rows = platform.store._db.execute(
        "SELECT recv - ts FROM rx WHERE gw=? AND kind='event' AND hist=0 AND recv > ?",
        (GW, outage_end),
    ).fetchall()
    assert rows, "no live events during the drain"
    lat = sorted(r[0] for r in rows)
    assert lat[int(0.99 * (len(lat) - 1))] < 1.0, lat[-5:]
    assert up.state()["reconnects"] >= 1


async def test_gateway_sigkilled_during_drain(tmp_path: Path, broker: Mosquitto, platform: PlatformSim) -> None:
    db = tmp_path / "gw.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def child(seconds: float) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [sys.executable, "-m", "tests.support.sync_child", str(db), broker.url, GW, "1500", str(seconds)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE,
        )
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        return p

    broker.stop()  # build a backlog while the platform is unreachable
    p1 = child(60)
    try:
        await asyncio.sleep(3.0)
        broker.start()
        await platform.wait_mqtt(15)
        await wait_until(lambda: summary(platform).get("unique", 0) > 1000, 20)
        p1.send_signal(signal.SIGKILL)  # mid-drain
        p1.wait(10)
    finally:
        if p1.poll() is None:
            p1.kill()
            p1.wait()
    p2 = child(1.0)
    try:
        await asyncio.sleep(1.5)
        await wait_until(lambda: summary(platform).get("missing_count") == 0
                         and summary(platform).get("seq_max", 0) > 4000, 30)
        await asyncio.sleep(1.0)
    finally:
        p2.send_signal(signal.SIGTERM)
        p2.wait(15)
    async with Buffer(db, gw=GW, uplinks=("city",)) as buf:
        assert buf.pending_count("city") == 0
        last = buf.last_seq
    s = summary(platform)
    assert s["seq_max"] == last and s["missing"] == [] and s["seq_conflicts"] == 0
    assert s["unique"] == last


async def test_flapping_link(tmp_path: Path, broker: Mosquitto, platform: PlatformSim) -> None:
    """The link is cut every 2 s (EDGE_GW_FLAP_SECONDS, default 12; the soak uses 60)."""
    duration = float(os.environ.get("EDGE_GW_FLAP_SECONDS", "12"))
    async with FaultProxy(broker.host, broker.port) as proxy, Buffer(
        tmp_path / "gw.db", gw=GW, uplinks=("city",)
    ) as buf:
        up = create_uplink(cfg(f"mqtt://127.0.0.1:{proxy.port}", reconnect_max=1.0), gw_id=GW,
                           buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        prod = asyncio.create_task(produce(buf, GW, rate=1000, duration=duration))
        try:
            end = time.monotonic() + duration
            while time.monotonic() < end:
                await asyncio.sleep(1.0)
                await proxy.cut()
                await asyncio.sleep(1.0)
                await proxy.restore()
            n = await prod
            s = await drained(buf, platform, 30)
        finally:
            prod.cancel()
            task.cancel()
            await asyncio.gather(task, prod, return_exceptions=True)
    assert s["seq_max"] == n == s["unique"] and s["missing"] == [] and s["seq_conflicts"] == 0
    assert proxy.state.cuts >= int(duration / 2) - 1
    assert up.state()["reconnects"] >= 2
