"""HTTPS uplink against the platform simulator (real buffer, real sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
from hwsim.platform import Faults, PlatformSim
from prometheus_client import REGISTRY

from buffer import Buffer
from sync import create_uplink, uplink_schema
from tests.support.sync_community import make_records, produce
from tests.support.waiting import wait_until

GW = "gw-http"


def cfg(url: str, name: str, **kw: Any) -> Any:
    base = {"name": name, "kind": "https", "url": url, "allow_plaintext": url.startswith("http:"),
            "reconnect_min": 0.02, "reconnect_max": 0.2, "batch_linger": 0.005,
            "batch_max_records": 100, "window": 4, "backlog_rate": 0, "timeout": 5}
    base.update(kw)
    return uplink_schema("https").model_validate(base)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_thirty_percent_failures_nothing_lost(tmp_path: Path) -> None:
    async with PlatformSim(tmp_path / "p.db", token="s3cret") as sim, Buffer(
        tmp_path / "gw.db", gw=GW, uplinks=("district",)
    ) as buf:
        sim.faults = Faults(fail_ratio=0.3, fail_status=503, retry_after=None, seed=7)
        up = create_uplink(cfg(sim.base_url, "district", token="s3cret", gzip=True), gw_id=GW,
                           buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        try:
            n = await produce(buf, GW, rate=2000, duration=2.0)
            await wait_until(lambda: buf.pending_count("district") == 0
                             and sim.store.summary(GW)["gateways"].get(GW, {}).get("unique") == n, 30)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        s = sim.store.summary(GW)["gateways"][GW]
        assert s["missing"] == [] and s["seq_max"] == n and s["seq_conflicts"] == 0
        assert sim.requests.get(503, 0) > 5 and sim.requests.get(200, 0) > 5
        assert metric("edge_gw_uplink_errors_total", uplink="district", reason="http_5xx") >= 5


async def test_retry_after_is_honoured(tmp_path: Path) -> None:
    async with PlatformSim(tmp_path / "p.db") as sim, Buffer(tmp_path / "gw.db", gw=GW, uplinks=("ra",)) as buf:
        sim.faults = Faults(fail_ratio=1.0, fail_status=429, retry_after=1)
        await buf.append(make_records(GW, 10))
        up = create_uplink(cfg(sim.base_url, "ra"), gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        try:
            await asyncio.sleep(2.2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # reconnect_max is 0.2 s: only Retry-After: 1 keeps it to about one try a second.
        assert 2 <= sim.requests.get(429, 0) <= 4
        assert buf.pending_count("ra") == 10  # released again on stop


async def test_rejected_records_go_to_dead_letters_and_metrics(tmp_path: Path) -> None:
    async with PlatformSim(tmp_path / "p.db") as sim, Buffer(tmp_path / "gw.db", gw=GW, uplinks=("rej",)) as buf:
        sim.faults = Faults(reject_ratio=1.0, reject_status=422)
        before = metric("edge_gw_uplink_records_total", uplink="rej", outcome="rejected")
        await buf.append(make_records(GW, 30))
        up = create_uplink(cfg(sim.base_url, "rej", batch_max_records=10), gw_id=GW, buffer=buf,
                           commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        try:
            await wait_until(lambda: up.state()["records_rejected"] == 30, 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert metric("edge_gw_uplink_records_total", uplink="rej", outcome="rejected") - before == 30
        assert buf.pending_count("rej") == 0
        st = await buf.stats()
        assert st.get("dead_letters") == 30, st
        db = buf._store._c()  # the dead-letter table carries the platform's reason
        reasons = {r[0] for r in db.execute("SELECT reason FROM dead_letters")}
        assert len(reasons) == 1 and reasons.pop().startswith("http 422")


async def test_bad_token_is_retried_not_dead_lettered(tmp_path: Path) -> None:
    async with PlatformSim(tmp_path / "p.db", token="right") as sim, Buffer(
        tmp_path / "gw.db", gw=GW, uplinks=("tok",)
    ) as buf:
        await buf.append(make_records(GW, 5))
        up = create_uplink(cfg(sim.base_url, "tok", token="wrong"), gw_id=GW, buffer=buf,
                           commands=None, status=lambda: {})
        task = asyncio.create_task(up.run())
        try:
            await wait_until(lambda: sim.requests.get(401, 0) >= 2, 10)
            assert not up.state()["connected"] and "401" in (up.state()["last_error"] or "")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert up.state()["records_rejected"] == 0 and buf.pending_count("tok") == 5


async def test_idempotency_key_replay_is_409(tmp_path: Path) -> None:
    async with PlatformSim(tmp_path / "p.db") as sim, aiohttp.ClientSession() as http:
        body = {"gw": GW, "batch_id": "b1", "hist": False,
                "records": [r.to_dict() | {"seq": i + 1} for i, r in enumerate(make_records(GW, 2))]}
        url = f"{sim.base_url}/v1/gateways/{GW}/records"
        async with http.post(url, json=body, headers={"Idempotency-Key": "b1"}) as r1:
            assert r1.status == 200
        async with http.post(url, json=body, headers={"Idempotency-Key": "b1"}) as r2:
            assert r2.status == 409
        async with http.post(url, data=b"{nope", headers={"Idempotency-Key": "b2"}) as r3:
            assert r3.status == 400
        assert sim.store.summary(GW)["gateways"][GW]["received"] == 2


async def test_two_uplinks_independent(tmp_path: Path) -> None:
    """One platform fails completely; the other still gets everything."""
    async with PlatformSim(tmp_path / "a.db") as good, PlatformSim(tmp_path / "b.db") as bad, Buffer(
        tmp_path / "gw.db", gw=GW, uplinks=("good", "bad")
    ) as buf:
        bad.faults = Faults(fail_ratio=1.0, fail_status=500)
        ups = [create_uplink(cfg(good.base_url, "good"), gw_id=GW, buffer=buf, commands=None, status=lambda: {}),
               create_uplink(cfg(bad.base_url, "bad"), gw_id=GW, buffer=buf, commands=None, status=lambda: {})]
        tasks = [asyncio.create_task(u.run()) for u in ups]
        try:
            await buf.append(make_records(GW, 500))
            await wait_until(lambda: good.store.summary(GW)["gateways"].get(GW, {}).get("unique") == 500, 10)
            assert buf.pending_count("bad") > 0 and ups[0].state()["connected"] and not ups[1].state()["connected"]
            bad.faults = Faults()
            await wait_until(lambda: bad.store.summary(GW)["gateways"].get(GW, {}).get("unique") == 500, 10)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
