"""Issue 4 end to end through the REAL daemon (``edge-gateway run`` in a child process):
example community of virtual devices -> pipeline -> buffer -> uplink -> real mosquitto (or
an HTTPS platform) -> platform simulator; downlink commands back to the CommandService.

Long variants: ``EDGE_GW_DAEMON_OUTAGE_SECONDS`` (broker outage, default 4).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiomqtt
import jsonschema
import pytest
from hwsim.platform import Faults, PlatformSim
from hwsim.platform.server import server_ssl_context
from hwsim.proxy import FaultProxy

from gateway.classes import record_schema
from tests.support.sync_certs import Pki
from tests.support.sync_daemon import (
    GW,
    AsyncDaemon,
    buffer_unacked,
    community_config,
    https_uplink,
    mqtt_uplink,
    sample,
    wait_until,
)
from tests.support.sync_mosquitto import Mosquitto

pytestmark = pytest.mark.mosquitto

OUTAGE = float(os.environ.get("EDGE_GW_DAEMON_OUTAGE_SECONDS", "4"))


def summary(sim: PlatformSim) -> dict[str, Any]:
    return dict(sim.store.summary(GW)["gateways"].get(GW, {}))


def rx(sim: PlatformSim, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sim.store._lock:
        return sim.store._db.execute(sql, args).fetchall()


def lane_order_breaks(sim: PlatformSim) -> dict[str, int]:
    """Per lane, separately for live and backlog records: arrivals whose seq is below an
    earlier arrival's (first arrival of each id only)."""
    seen: set[str] = set()
    last: dict[tuple[str, int], int] = {}
    breaks: dict[str, int] = defaultdict(int)
    for rid, seq, lane, hist in rx(sim, "SELECT rid, seq, lane, hist FROM rx WHERE gw=? ORDER BY n", GW):
        if rid in seen:
            continue
        seen.add(rid)
        key = (lane, hist)
        if seq < last.get(key, 0):
            breaks[f"{lane}/{'hist' if hist else 'live'}"] += 1
        last[key] = max(seq, last.get(key, 0))
    return dict(breaks)


def duplicates_are_redeliveries(sim: PlatformSim) -> list[tuple[Any, ...]]:
    """Ids that arrived more than once with different content (must be none)."""
    return rx(
        sim,
        "SELECT rid, count(DISTINCT seq || '|' || dev || '|' || pt || '|' || v || '|' || ts) AS c"
        " FROM rx WHERE gw=? GROUP BY rid HAVING c > 1",
        GW,
    )


async def caught_up(sim: PlatformSim, target: int) -> dict[str, Any] | None:
    s = summary(sim)
    if s.get("seq_max", 0) >= target and s.get("missing_count") == 0:
        return s
    return None


# ---------------------------------------------------------------------------- normal flow
async def test_normal_flow_example_community(tmp_path: Path, broker: Mosquitto, platform: PlatformSim) -> None:
    cfg = community_config(tmp_path, uplinks=mqtt_uplink("city", broker.url), load_devices=3, sirens=2)
    envelope = jsonschema.Draft202012Validator(
        {**record_schema(), "$ref": "#/$defs/envelope"}, format_checker=jsonschema.FormatChecker()
    )
    raw: list[bytes] = []
    d = AsyncDaemon(cfg)
    async with aiomqtt.Client(broker.host, broker.port) as tap:
        await tap.subscribe(f"city/{GW}/records", qos=1)

        async def collect() -> None:
            async for msg in tap.messages:
                raw.append(bytes(msg.payload))

        collector = asyncio.create_task(collect())
        try:
            await d.start()
            await asyncio.sleep(4.0)
            target = await d.last_seq()
            s = await wait_until(lambda: caught_up(platform, target), 15, "platform caught up", log=d.log_text)
            up = await d.uplink("city")
            m = await d.metrics()
        finally:
            await d.stop()
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)

    # every record once, no missing seq, per-lane order
    assert s["seq_min"] == 1 and s["missing"] == [] and s["unexplained_missing"] == []
    assert s["duplicates"] == 0 and s["seq_conflicts"] == 0 and s["unique"] == s["seq_max"]
    assert s["out_of_order_live"] == {} and lane_order_breaks(platform) == {}
    assert s["unique"] > 300, s["unique"]  # 27 example devices + 3 fast sensors + 2 sirens
    # every device of the community reached the platform, with its class
    devs = {r[0] for r in rx(platform, "SELECT DISTINCT dev FROM rx WHERE gw=?", GW)}
    configured = {ln.split('"')[1] for ln in cfg.read_text().splitlines() if ln.startswith("id = ")}
    assert devs == configured, configured ^ devs
    assert s["latency"]["live"]["event"]["count"] >= 5
    assert s["latency"]["live"]["event"]["p99"] < 1.0
    # what was on the wire is the published envelope schema
    assert raw
    for payload in raw:
        envelope.validate(json.loads(payload))
    # the uplink's own view and metrics agree with the platform
    assert up["connected"] and up["records_rejected"] == 0 and up["records_failed"] == 0
    assert up["records_acked"] >= target
    assert sample(m, "edge_gw_uplink_connected", uplink="city") == 1
    assert sample(m, "edge_gw_uplink_records_total", uplink="city", outcome="acked") >= target
    # the clean stop left a retained "offline" status behind the birth message
    await wait_until(
        lambda: _status_is(platform, "offline"), 5, "offline status after SIGTERM"
    )


async def _status_is(sim: PlatformSim, status: str) -> bool:
    body = sim.store.statuses().get(GW, {}).get("body") or {}
    return bool(body.get("status") == status)


# ------------------------------------------------- broker killed + daemon SIGKILLed in the drain
async def test_broker_killed_then_daemon_sigkilled_during_drain(
    tmp_path: Path, broker: Mosquitto, platform: PlatformSim
) -> None:
    cfg = community_config(
        tmp_path,
        uplinks=mqtt_uplink("city", broker.url, backlog_rate=500, batch_max_records=200, window=8),
        load_devices=8, load_poll="50ms", sirens=4, siren_period="400ms",
    )
    d = AsyncDaemon(cfg)
    await d.start()
    try:
        await asyncio.sleep(2.0)
        assert (await d.uplink("city"))["connected"]
        broker.kill()
        await wait_until(lambda: _disconnected(d), 10, "uplink noticed the broker died", log=d.log_text)
        await asyncio.sleep(OUTAGE)
        backlog = (await d.uplink("city"))["pending"]
        broker.start()
        restarted = time.time()
        await platform.wait_mqtt(15)
        # the drain is under way (backlog replay arriving) -- kill the gateway in the middle
        await wait_until(lambda: _hist_received(platform, 800), 20, "backlog replay started", log=d.log_text)
        before_kill = summary(platform)
        await d.kill()
        assert before_kill["hist_records"] < backlog, "the drain finished before the kill"
        await asyncio.sleep(0.5)
        await d.start()
        await wait_until(lambda: _connected(d), 15, "uplink connected after restart", log=d.log_text)
        target = await d.last_seq()
        s = await wait_until(lambda: caught_up(platform, target), 40, "drain finished", log=d.log_text)
        drain_done = time.time()
    finally:
        await d.stop()

    assert backlog > OUTAGE * 400, backlog  # the outage built a real backlog
    last, unacked, stored_ids = buffer_unacked(tmp_path / "buffer.db", "city")
    s = summary(platform)
    # no seq missing: every committed seq reached the platform or is still pending in the
    # buffer (the records committed while the daemon stopped); evictions would be explained
    # by gap records, but there were none.
    got = {r[0] for r in rx(platform, "SELECT DISTINCT seq FROM rx WHERE gw=?", GW)}
    assert set(range(1, last + 1)) - got - unacked == set()
    assert s["unexplained_missing"] == [] or all(a > target for a, _ in s["unexplained_missing"])
    assert s["gaps"] == []
    # every duplicate is a re-delivery of an already-seen id with the same content
    assert s["seq_conflicts"] == 0 and duplicates_are_redeliveries(platform) == []
    assert s["duplicates"] > 0, "the SIGKILL should have caused re-deliveries"
    ids = dict(rx(platform, "SELECT seq, rid FROM rx WHERE gw=? GROUP BY seq", GW))
    assert all(ids[q] == rid for q, rid in stored_ids.items() if q in ids)
    # live events during the drain (after the broker came back, before the drain ended)
    lat = sorted(
        r[0]
        for r in rx(
            platform,
            "SELECT min(recv) - ts FROM rx WHERE gw=? AND kind='event' AND hist=0"
            " AND ts > ? AND ts < ? GROUP BY rid",
            GW, restarted, drain_done,
        )
    )
    assert len(lat) >= 10, lat
    assert lat[-1] < 1.0, lat[-10:]
    assert s["latency"]["live"]["event"]["p99"] < 1.0, s["latency"]["live"]["event"]


async def _disconnected(d: AsyncDaemon) -> bool:
    return not (await d.uplink("city"))["connected"]


async def _connected(d: AsyncDaemon) -> bool:
    return bool((await d.uplink("city"))["connected"])


async def _hist_received(sim: PlatformSim, n: int) -> bool:
    return int(summary(sim).get("hist_records", 0)) >= n


# ------------------------------------------------------------------------------ commands
async def test_platform_commands_reach_the_command_service(
    tmp_path: Path, broker: Mosquitto, platform: PlatformSim
) -> None:
    cfg = community_config(tmp_path, uplinks=mqtt_uplink("city", broker.url), streetlight_poll="300ms")
    d = AsyncDaemon(cfg)
    await d.start()
    future = datetime.fromtimestamp(time.time() + 60, UTC).isoformat()
    sent: dict[str, dict[str, Any]] = {
        "c-ok": {"device": "light-01", "point": "dimming", "value": 35, "deadline": future},
        "c-ro": {"device": "light-01", "point": "power", "value": 3},
        "c-range": {"device": "light-01", "point": "dimming", "value": 300},
        "c-unknown": {"device": "no-such-device", "point": "on", "value": True},
        "c-expired": {"device": "light-01", "point": "on", "value": False, "deadline": time.time() - 5},
        "c-bool": {"device": "light-01", "point": "on", "value": "yes"},
    }
    try:
        await wait_until(lambda: _connected(d), 15, "uplink connected", log=d.log_text)
        await asyncio.sleep(0.3)  # the subscription to cmd is made right after the birth
        for cid, body in sent.items():
            await platform.publish_command(GW, {"id": cid, **body})
        # the same id again, with another value: answered from the audit, not executed again
        await platform.publish_command(GW, {"id": "c-ok", "device": "light-01", "point": "dimming", "value": 60})
        await platform.publish_command(GW, {"raw": '{"id": "c-shape", "device": "light-01"}'})
        await platform.publish_command(GW, {"raw": "this is not json"})
        results = await wait_until(
            lambda: _results(platform, len(sent) + 1), 20, "command results", log=d.log_text
        )
        ok = next(r for r in results["c-ok"] if not r.get("duplicate"))
        # polls after the write (power is read on each, dimming only reported on change):
        # had a poll read anything but 35 back, dimming would have changed
        await wait_until(
            lambda: _point_after(d, "light-01", "power", ok["ts"] + 0.7), 10, "polls after the write",
            log=d.log_text,
        )
        point = (await d.get("/api/v1/devices/light-01/points"))["points"]["dimming"]
        m = await d.metrics()
    finally:
        await d.stop()
    by_id = {cid: rs for cid, rs in results.items()}
    assert ok["outcome"] == "ok" and ok["value"] == 35
    dup = [r for r in by_id["c-ok"] if r.get("duplicate")]
    assert len(dup) == 1 and dup[0]["outcome"] == "ok" and dup[0]["value"] == 35
    assert point["v"] == 35  # 60 was never written
    one = {cid: rs[0] for cid, rs in by_id.items()}
    assert one["c-ro"]["outcome"] == "rejected" and "read-only" in one["c-ro"]["reason"]
    assert one["c-range"]["outcome"] == "rejected" and "100" in one["c-range"]["reason"]
    assert one["c-unknown"]["outcome"] == "rejected" and "unknown device" in one["c-unknown"]["reason"]
    assert one["c-expired"]["outcome"] == "expired"
    assert one["c-bool"]["outcome"] == "rejected" and "value" in one["c-bool"]["reason"]
    assert one["c-shape"]["outcome"] == "rejected" and "point" in one["c-shape"]["reason"]
    # the write went upward as a state record that names the command
    written = rx(platform, "SELECT v, attrs FROM rx WHERE gw=? AND dev='light-01' AND pt='dimming'"
                 " ORDER BY n", GW)
    assert any(json.loads(v) == 35 and json.loads(a or "{}").get("command") == "c-ok" for v, a in written)
    assert json.loads(written[-1][0]) == 35
    # audited in the buffer database with its source
    con = sqlite3.connect(f"file:{tmp_path / 'buffer.db'}?mode=ro", uri=True)
    try:
        audit = {i: json.loads(e) for i, e in con.execute("SELECT id, entry FROM commands")}
    finally:
        con.close()
    assert set(audit) == set(sent)
    assert audit["c-ok"]["source"] == "mqtt:city" and audit["c-ok"]["result"]["outcome"] == "ok"
    assert audit["c-expired"]["result"]["outcome"] == "expired"
    # metrics: the core counts outcomes, the uplink counts what it received
    assert sample(m, "edge_gw_commands_total", outcome="ok") == 1
    assert sample(m, "edge_gw_commands_total", outcome="duplicate") == 1
    assert sample(m, "edge_gw_commands_total", outcome="rejected") == 4
    assert sample(m, "edge_gw_uplink_commands_total", uplink="city", outcome="rejected") == 5
    assert sample(m, "edge_gw_uplink_commands_total", uplink="city", outcome="malformed") == 1
    assert sample(m, "edge_gw_uplink_commands_total", uplink="city", outcome="expired") == 1


async def _results(sim: PlatformSim, n_ids: int) -> dict[str, list[dict[str, Any]]] | None:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in sim.store.results(GW):
        out[str(r["id"])].append(r)
    if len(out) >= n_ids and len(out.get("c-ok", [])) >= 2:
        return dict(out)
    return None


async def _point_after(d: AsyncDaemon, dev: str, point: str, ts: float) -> dict[str, Any] | None:
    p = (await d.get(f"/api/v1/devices/{dev}/points"))["points"].get(point)
    return p if p is not None and p["ts"] > ts else None


# ------------------------------------------------------------ two uplinks, one of them down
async def test_two_uplinks_one_down_the_other_delivers(
    tmp_path: Path, broker: Mosquitto, platform: PlatformSim, pki: Pki
) -> None:
    district_token = "district-secret"
    district = PlatformSim(
        tmp_path / "district.db", token=district_token,
        ssl_context=server_ssl_context(str(pki.server_cert), str(pki.server_key), None),
    )
    async with FaultProxy(broker.host, broker.port) as proxy, district:
        cfg = community_config(
            tmp_path,
            uplinks=mqtt_uplink("city", f"mqtt://127.0.0.1:{proxy.port}", timeout="2s", keepalive="5s")
            + https_uplink("district", district.base_url, token={"env": "DISTRICT_TOKEN"},
                           tls={"ca_file": str(pki.ca)}, gzip=True, batch_linger="10ms"),
            load_devices=3, sirens=2,
        )
        d = AsyncDaemon(cfg, env={"DISTRICT_TOKEN": district_token})
        await d.start()
        try:
            await wait_until(lambda: _both_connected(d), 15, "both uplinks up", log=d.log_text)
            await asyncio.sleep(1.5)
            # --- the city link goes silent: the district keeps delivering, live
            await proxy.blackhole()
            city_down = time.time()
            await wait_until(lambda: _up_is(d, "city", False), 15, "city marked down", log=d.log_text)
            await asyncio.sleep(2.0)
            city = await d.uplink("city")
            dist = await d.uplink("district")
            m1 = await d.metrics()
            await wait_until(lambda: caught_up_to(district, time.time() - 0.5), 5, "district live")
            # --- the city comes back; now the district platform answers 503
            await proxy.restore()
            district.faults = Faults(fail_ratio=1.0, fail_status=503)
            district_down = time.time()
            await wait_until(lambda: _up_is(d, "city", True), 15, "city reconnected", log=d.log_text)
            city_up = time.time()
            await wait_until(lambda: _up_is(d, "district", False), 15, "district marked down")
            await asyncio.sleep(2.0)
            city2 = await d.uplink("city")
            dist2 = await d.uplink("district")
            m2 = await d.metrics()
            await wait_until(lambda: caught_up_to(platform, time.time() - 0.5), 10, "city live again")
            # --- both healthy: each drains its own backlog
            district.faults = Faults()
            target = await d.last_seq()
            s_city = await wait_until(lambda: caught_up(platform, target), 30, "city drained", log=d.log_text)
            s_dist = await wait_until(lambda: caught_up(district, target), 30, "district drained", log=d.log_text)
        finally:
            await d.stop()
        # live data of the healthy link did not wait for the broken one
        live_lat = [
            [r[0] for r in rx(sim, "SELECT min(recv) - ts FROM rx WHERE gw=? AND hist=0"
                              " AND ts BETWEEN ? AND ? GROUP BY rid", GW, start, end)]
            for sim, start, end in ((district, city_down, district_down),
                                    (platform, city_up, city_up + 2))
        ]

    # while the city was down: its records piled up, the district's did not
    assert not city["connected"] and city["pending"] + city["retry_batches"] > 0
    assert dist["connected"] and dist["pending"] < 200
    assert sample(m1, "edge_gw_uplink_connected", uplink="city") == 0
    assert sample(m1, "edge_gw_uplink_connected", uplink="district") == 1
    assert sample(m1, "edge_gw_uplink_pending_records", uplink="city") > sample(
        m1, "edge_gw_uplink_pending_records", uplink="district")
    assert sum(sample(m1, "edge_gw_uplink_errors_total", uplink="city", reason=r)
               for r in ("timeout", "protocol", "other")) >= 1
    # ...and the other way round
    assert city2["connected"] and not dist2["connected"]
    assert dist2["pending"] + dist2["retry_batches"] > 0 and city2["pending"] < 200
    assert sample(m2, "edge_gw_uplink_errors_total", uplink="district", reason="http_5xx") >= 1
    assert sample(m2, "edge_gw_uplink_errors_total", uplink="city", reason="http_5xx") == 0
    assert sample(m2, "edge_gw_uplink_records_total", uplink="city", outcome="acked") > sample(
        m1, "edge_gw_uplink_records_total", uplink="city", outcome="acked")
    for lat in live_lat:
        assert len(lat) > 50 and max(lat) < 1.0, (len(lat), max(lat, default=None))
    # each platform got every record, with its own cursor (backlog replayed to each)
    for s in (s_city, s_dist):
        assert s["missing"] == [] and s["seq_conflicts"] == 0 and s["seq_min"] == 1
        assert s["hist_records"] > 100
    assert district.requests.get(503, 0) >= 1 and district.requests.get(401, 0) == 0


async def _both_connected(d: AsyncDaemon) -> bool:
    return bool((await d.uplink("city"))["connected"] and (await d.uplink("district"))["connected"])


async def _up_is(d: AsyncDaemon, name: str, up: bool) -> bool:
    return bool((await d.uplink(name))["connected"]) is up


async def caught_up_to(sim: PlatformSim, ts: float) -> bool:
    got = rx(sim, "SELECT max(ts) FROM rx WHERE gw=? AND hist=0", GW)
    return bool(got and got[0][0] is not None and got[0][0] >= ts)
