"""MQTT uplink against a real mosquitto and the platform simulator (fake buffer: fast)."""

from __future__ import annotations

import asyncio
import json
import zlib
from typing import Any

import aiomqtt
import pytest
from hwsim.platform import PlatformSim
from hwsim.proxy import FaultProxy

from sync import create_uplink, uplink_schema
from sync.mqtt import MqttUplink
from tests.support.sync_community import make_records
from tests.support.sync_fake_buffer import FakeBuffer
from tests.support.sync_mosquitto import Mosquitto
from tests.support.waiting import wait_until

pytestmark = pytest.mark.mosquitto

GW = "gw-flow"


def mqtt_config(broker: Mosquitto, **kw: Any) -> Any:
    base = {"name": "city", "kind": "mqtt", "url": broker.url, "topic_prefix": "city",
            "reconnect_min": 0.05, "reconnect_max": 0.5, "batch_linger": 0.005}
    base.update(kw)
    return uplink_schema("mqtt").model_validate(base)


async def test_normal_flow_every_record_once_in_lane_order(broker: Mosquitto, platform: PlatformSim) -> None:
    buf = FakeBuffer(gw=GW, uplinks=("city",))
    await buf.append(make_records(GW, 1200))  # backlog before the uplink starts
    up = create_uplink(mqtt_config(broker, batch_max_records=100, window=8, backlog_rate=0),
                       gw_id=GW, buffer=buf, commands=None, status=lambda: {"devices": 5})
    task = asyncio.create_task(up.run())
    try:
        for i in range(10):  # live data while it drains
            await buf.append(make_records(GW, 50, start=2000 + 50 * i))
            await asyncio.sleep(0.02)
        await wait_until(lambda: buf.pending_count("city") == 0, 20)
        await wait_until(lambda: platform.store.summary(GW)["gateways"].get(GW, {}).get("unique") == 1700, 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    s = platform.store.summary(GW)["gateways"][GW]
    assert s["missing"] == [] and s["seq_max"] == 1700
    assert s["duplicates"] == 0 and s["seq_conflicts"] == 0
    assert s["out_of_order_live"] == {}
    assert 1200 <= s["hist_records"] < 1700  # what was buffered before the connection
    st = up.state()
    assert st["records_acked"] == 1700 and not st["connected"]
    status = platform.store.statuses()[GW]["body"]
    assert status["status"] == "offline" and status["reason"] == "shutdown"


async def test_birth_and_last_will(broker: Mosquitto, platform: PlatformSim) -> None:
    buf = FakeBuffer(gw=GW, uplinks=("city",))
    proxy = FaultProxy(broker.host, broker.port)
    await proxy.start()
    up = MqttUplink(mqtt_config(broker, url=f"mqtt://127.0.0.1:{proxy.port}"), gw_id=GW,
                    buffer=buf, status=lambda: {"devices": 7})
    task = asyncio.create_task(up.run())
    try:
        await wait_until(lambda: platform.store.statuses().get(GW, {}).get("body", {}).get("status") == "online", 10)
        birth = platform.store.statuses()[GW]["body"]
        assert birth["devices"] == 7 and "version" in birth and birth["uplink"] == "city"
        # Break the connection without DISCONNECT: the broker publishes the will.
        await proxy.cut()
        await wait_until(lambda: platform.store.statuses()[GW]["body"].get("reason") == "connection lost", 10)
        assert not up.state()["connected"]
        # ...and the uplink comes back with a new birth message.
        await proxy.restore()
        await wait_until(lambda: platform.store.statuses()[GW]["body"].get("status") == "online", 10)
        assert up.state()["reconnects"] >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await proxy.close()


async def test_gzip_payload_and_envelope(broker: Mosquitto) -> None:
    buf = FakeBuffer(gw=GW, uplinks=("city",))
    up = MqttUplink(mqtt_config(broker, gzip=True), gw_id=GW, buffer=buf)
    got: list[bytes] = []
    async with aiomqtt.Client(broker.host, broker.port) as sub:
        await sub.subscribe(f"city/{GW}/records", qos=1)
        task = asyncio.create_task(up.run())
        try:
            await asyncio.sleep(0.3)
            await buf.append(make_records(GW, 3))
            async with asyncio.timeout(10):
                async for msg in sub.messages:
                    got.append(msg.payload)
                    break
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert got[0][:2] == b"\x1f\x8b"
    env = json.loads(zlib.decompress(got[0], 31))
    assert env["gw"] == GW and env["hist"] is False
    assert sorted(r["seq"] for r in env["records"]) == [1, 2, 3]
    assert {r["kind"] for r in env["records"]} == {"telemetry"}
