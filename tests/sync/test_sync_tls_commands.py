"""TLS (test CA, client certificate, untrusted broker) and downlink commands."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hwsim.platform import PlatformSim
from hwsim.platform.server import server_ssl_context
from prometheus_client import REGISTRY

from buffer import Buffer
from sync import create_uplink, uplink_schema
from tests.support.sync_certs import Pki
from tests.support.sync_community import make_records
from tests.support.sync_mosquitto import BrokerTls, Mosquitto, have_mosquitto
from tests.support.waiting import wait_until

GW = "gw-tls"


def mqtt_cfg(url: str, name: str, **kw: Any) -> Any:
    base = {"name": name, "kind": "mqtt", "url": url, "topic_prefix": "city",
            "reconnect_min": 0.05, "reconnect_max": 0.3, "batch_linger": 0.005, "timeout": 3}
    base.update(kw)
    return uplink_schema("mqtt").model_validate(base)


@pytest.fixture
def tls_broker(tmp_path: Path, pki: Pki) -> Any:
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed")
    m = Mosquitto(tmp_path, tls=BrokerTls(pki.ca, pki.server_cert, pki.server_key, require_client_cert=True))
    m.start()
    yield m
    m.stop()


@pytest.mark.mosquitto
async def test_tls_with_test_ca_and_client_certificate(tmp_path: Path, pki: Pki, tls_broker: Mosquitto) -> None:
    async with Buffer(tmp_path / "gw.db", gw=GW, uplinks=("tls",)) as buf:
        await buf.append(make_records(GW, 20))
        up = create_uplink(
            mqtt_cfg(tls_broker.url, "tls", tls={"ca_file": str(pki.ca), "cert_file": str(pki.client_cert),
                                                 "key_file": str(pki.client_key)}),
            gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        try:
            await wait_until(lambda: up.state()["records_acked"] == 20, 10)
            assert up.state()["connected"]
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.mosquitto
async def test_tls_refuses_untrusted_broker(tmp_path: Path, pki: Pki) -> None:
    if not have_mosquitto():
        pytest.skip("mosquitto is not installed")
    rogue = Mosquitto(tmp_path, tls=BrokerTls(pki.other_ca, pki.other_server_cert, pki.other_server_key))
    rogue.start()
    try:
        async with Buffer(tmp_path / "gw.db", gw=GW, uplinks=("rogue",)) as buf:
            await buf.append(make_records(GW, 5))
            before = REGISTRY.get_sample_value("edge_gw_uplink_errors_total", {"uplink": "rogue", "reason": "tls"}) or 0
            up = create_uplink(mqtt_cfg(rogue.url, "rogue", tls={"ca_file": str(pki.ca)}), gw_id=GW, buffer=buf,
                               commands=None, status=lambda: {})
            task = asyncio.create_task(up.run())
            try:
                await wait_until(lambda: up.state()["last_error"] is not None, 10)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            err = up.state()["last_error"]
            assert "TLS handshake" in err and "certificate verify failed" in err, err
            assert up.state()["records_acked"] == 0 and buf.pending_count("rogue") == 5
            after = REGISTRY.get_sample_value("edge_gw_uplink_errors_total", {"uplink": "rogue", "reason": "tls"})
            assert after is not None and after > before
    finally:
        rogue.stop()


async def test_https_client_certificate(tmp_path: Path, pki: Pki) -> None:
    ctx = server_ssl_context(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    async with PlatformSim(tmp_path / "p.db", ssl_context=ctx) as sim, Buffer(
        tmp_path / "gw.db", gw=GW, uplinks=("hs", "nocert")
    ) as buf:
        await buf.append(make_records(GW, 10))
        good = create_uplink(uplink_schema("https").model_validate(
            {"name": "hs", "kind": "https", "url": sim.base_url, "tls": {
                "ca_file": str(pki.ca), "cert_file": str(pki.client_cert), "key_file": str(pki.client_key)}}),
            gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        nocert = create_uplink(uplink_schema("https").model_validate(
            {"name": "nocert", "kind": "https", "url": sim.base_url, "reconnect_min": 0.05,
             "reconnect_max": 0.2, "tls": {"ca_file": str(pki.ca)}}),
            gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        tasks = [asyncio.create_task(u.run()) for u in (good, nocert)]
        try:
            await wait_until(lambda: good.state()["records_acked"] == 10, 10)
            await wait_until(lambda: nocert.state()["last_error"] is not None, 10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        assert nocert.state()["records_acked"] == 0 and buf.pending_count("nocert") == 10


def test_verify_false_needs_insecure_flag() -> None:
    with pytest.raises(ValueError, match="insecure"):
        uplink_schema("mqtt").model_validate(
            {"name": "x", "kind": "mqtt", "url": "mqtts://h", "topic_prefix": "p", "tls": {"verify": False}})
    uplink_schema("mqtt").model_validate(
        {"name": "x", "kind": "mqtt", "url": "mqtts://h", "topic_prefix": "p",
         "tls": {"verify": False, "insecure": True}})


# ---------------------------------------------------------------------- commands
DEVICES = {"b2-light-01": {"on": (True, None, None), "power": (False, None, None)},
           "b2-valve-01": {"opening": (True, 0.0, 100.0)}}


def make_handler(buf: Buffer, executed: list[dict[str, Any]]) -> Any:
    """Stand-in for the core's handler: validation, dedup and audit through the buffer."""

    async def handler(cmd: dict[str, Any]) -> dict[str, Any]:
        seen = await buf.command_seen(cmd["id"])
        if seen is not None:
            return dict(seen["result"]) if "result" in seen else dict(seen)
        now = time.time()
        result: dict[str, Any]
        dev = DEVICES.get(cmd["device"])
        if cmd["deadline"] is not None and cmd["deadline"] < now:
            result = {"id": cmd["id"], "outcome": "expired", "ts": now}
        elif dev is None:
            result = {"id": cmd["id"], "outcome": "rejected", "reason": f"unknown device {cmd['device']}", "ts": now}
        elif cmd["point"] not in dev or not dev[cmd["point"]][0]:
            result = {"id": cmd["id"], "outcome": "rejected", "reason": f"point {cmd['point']} is read-only", "ts": now}
        else:
            _, lo, hi = dev[cmd["point"]]
            v = cmd["value"]
            if lo is not None and (not isinstance(v, int | float) or not lo <= v <= hi):
                result = {"id": cmd["id"], "outcome": "rejected", "reason": "value out of range", "ts": now}
            else:
                executed.append(cmd)
                result = {"id": cmd["id"], "outcome": "ok", "value": v, "ts": now}
        await buf.audit_command(cmd["id"], {"command": cmd, "result": result})
        return result

    return handler


@pytest.mark.mosquitto
async def test_commands_outcomes(tmp_path: Path, broker: Mosquitto, platform: PlatformSim) -> None:
    executed: list[dict[str, Any]] = []
    async with Buffer(tmp_path / "gw.db", gw=GW, uplinks=("city",)) as buf:
        up = create_uplink(mqtt_cfg(broker.url, "city"), gw_id=GW, buffer=buf,
                           commands=make_handler(buf, executed), status=lambda: {})
        task = asyncio.create_task(up.run())
        try:
            await wait_until(lambda: up.state()["connected"], 10)
            await asyncio.sleep(0.2)  # subscription in place
            sends = [
                {"id": "c-ok", "device": "b2-valve-01", "point": "opening", "value": 40},
                {"id": "c-ro", "device": "b2-light-01", "point": "power", "value": 1},
                {"id": "c-range", "device": "b2-valve-01", "point": "opening", "value": 140},
                {"id": "c-unknown", "device": "nope", "point": "on", "value": True},
                {"id": "c-old", "device": "b2-light-01", "point": "on", "value": True, "deadline": time.time() - 5},
                {"id": "c-ok", "device": "b2-valve-01", "point": "opening", "value": 40},  # duplicate
                {"id": "c-bad", "raw": '{"id": "c-bad", "device": 3}'},
                {"raw": "not json at all"},
            ]
            for body in sends:
                await platform.publish_command(GW, dict(body))
            await wait_until(lambda: len(platform.store.results(GW)) >= 7, 10)
            await asyncio.sleep(0.3)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    results = platform.store.results(GW)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        by_id.setdefault(r["id"], []).append(r)
    assert [r["outcome"] for r in by_id["c-ok"]] == ["ok", "ok"]
    assert len(executed) == 1  # the duplicate was answered from the audit, not executed again
    assert by_id["c-ro"][0]["outcome"] == "rejected" and "read-only" in by_id["c-ro"][0]["reason"]
    assert by_id["c-range"][0]["outcome"] == "rejected" and "range" in by_id["c-range"][0]["reason"]
    assert by_id["c-unknown"][0]["outcome"] == "rejected"
    assert by_id["c-old"][0]["outcome"] == "expired"
    assert by_id["c-bad"][0]["outcome"] == "rejected" and "device" in by_id["c-bad"][0]["reason"]
    assert len(results) == 7  # the payload without an id got no answer...
    assert (REGISTRY.get_sample_value("edge_gw_uplink_commands_total", {"uplink": "city", "outcome": "malformed"}) or 0) >= 1
    json.dumps(results)
