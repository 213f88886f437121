"""Disk budget and max age: eviction order by lane, exact gap records, downsampling."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from buffer import Buffer, DownsampleConfig
from gateway.record import Record
from tests.support.buffer_helpers import GW, event, state, tel

BUDGET = 256 * 1024


def stored_seqs(path: str, table: str) -> set[int]:
    conn = sqlite3.connect(path)
    try:
        return {r[0] for r in conn.execute(f"SELECT seq FROM {table}")}
    finally:
        conn.close()


def gaps(records: list[Record]) -> list[Record]:
    return [r for r in records if r.pt == "gap" and r.cls == "gateway"]


async def all_records(buf: Buffer) -> list[Record]:
    return await buf.records_after(0, 1_000_000)


async def test_budget_evicts_telemetry_first_with_exact_gaps(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    before = REGISTRY.get_sample_value("edge_gw_buffer_evicted_records_total",
                                       {"lane": "telemetry", "reason": "budget"}) or 0.0
    async with Buffer(path, gw=GW, budget_bytes=BUDGET) as buf:
        events, states, tels = [], [], []
        for i in range(60):
            chunk = [event(dev=f"s{i}")] + [state(dev=f"e{i}")] + [tel(float(k), dev=f"m{i}") for k in range(98)]
            await buf.append(chunk)
            events.append(chunk[0])
            states.append(chunk[1])
            tels.extend(chunk[2:])
        st = await buf.stats()
        assert st["used_bytes"] <= BUDGET
        recs = await all_records(buf)
    ids = {r.id for r in recs}
    assert all(e.id in ids for e in events), "events are evicted last"
    assert all(s.id in ids for s in states), "state goes only after telemetry"
    kept_tel = [t for t in tels if t.id in ids]
    lost_tel = [t for t in tels if t.id not in ids]
    assert lost_tel and kept_tel
    # oldest-first: every evicted telemetry record is older than every kept one
    assert max(t.seq for t in lost_tel) < min(t.seq for t in kept_tel)
    gs = gaps(recs)
    assert gs and all(g.kind == "lifecycle" and g.attrs and g.attrs["lane"] == "telemetry" for g in gs)
    covered: set[int] = set()
    for g in gs:
        assert g.attrs is not None and g.attrs["reason"] == "budget"
        lo, hi = g.attrs["first_seq"], g.attrs["last_seq"]
        in_range = {t.seq for t in lost_tel if lo <= t.seq <= hi}
        assert len(in_range) == g.v, "v counts exactly the records evicted in the range"
        assert not any(lo <= t.seq <= hi for t in kept_tel)
        covered |= in_range
    assert covered == {t.seq for t in lost_tel}, "the gap records cover exactly the lost seqs"
    after = REGISTRY.get_sample_value("edge_gw_buffer_evicted_records_total",
                                      {"lane": "telemetry", "reason": "budget"}) or 0.0
    assert after - before == len(lost_tel)


async def test_state_then_events_when_nothing_else_left(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    async with Buffer(path, gw=GW, budget_bytes=BUDGET) as buf:
        evs = [event(dev=f"s{i}", attrs={"pad": "x" * 200}) for i in range(200)]
        await buf.append(evs)
        sts = []
        for _ in range(30):
            chunk = [state(v="y" * 300) for _ in range(50)]
            await buf.append(chunk)
            sts.extend(chunk)
        recs = await all_records(buf)
        ids = {r.id for r in recs}
        assert all(e.id in ids for e in evs), "events survive while state can be evicted"
        assert any(s.id not in ids for s in sts)
        lanes = {g.attrs["lane"] for g in gaps(recs) if g.attrs}
        assert lanes == {"state"}
        # only events left to add: now events are evicted, oldest first
        for _ in range(20):
            await buf.append([event(attrs={"pad": "z" * 500}) for _ in range(50)])
        recs = await all_records(buf)
        ids = {r.id for r in recs}
        assert evs[0].id not in ids
        assert "event" in {g.attrs["lane"] for g in gaps(recs) if g.attrs}
        assert (await buf.stats())["used_bytes"] <= BUDGET


async def test_max_age_per_lane(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    now = time.time()
    async with Buffer(path, gw=GW, max_age={"telemetry": 60.0}, maintenance_interval=3600) as buf:
        old = [tel(float(i), ts=now - 3600 + i) for i in range(10)]
        old_ev = [event(ts=now - 3600)]
        young = [tel(1.0, ts=now)]
        await buf.append(old + old_ev + young)
        await buf.maintain()
        recs = await all_records(buf)
    ids = {r.id for r in recs}
    assert not any(r.id in ids for r in old)
    assert old_ev[0].id in ids and young[0].id in ids
    (g,) = gaps(recs)
    assert g.attrs == {"first_seq": 1, "last_seq": 10, "lane": "telemetry", "reason": "max_age"}
    assert g.v == 10


async def test_downsampling_replaces_old_telemetry(tmp_path: Path) -> None:
    path = str(tmp_path / "b.db")
    t0 = 1_699_999_980.0  # aligned to the 60 s interval
    async with Buffer(path, gw=GW, budget_bytes=BUDGET, downsample=DownsampleConfig(interval=60.0)) as buf:
        originals = []
        for i in range(6000):
            originals.append(tel(float(i % 10), dev=f"m{i % 3}", ts=t0 + i))
        for k in range(0, len(originals), 500):
            await buf.append(originals[k : k + 500])
        recs = await all_records(buf)
        assert (await buf.stats())["used_bytes"] <= BUDGET
    ids = {r.id for r in recs}
    lost = [r for r in originals if r.id not in ids]
    assert lost
    summaries = [r for r in recs if r.attrs and r.attrs.get("downsampled")]
    assert summaries and all(s.q == "uncertain" for s in summaries)
    # recompute every summary from the originals it replaced (same point, its time span)
    for s in summaries:
        assert s.attrs is not None
        assert s.ts == (s.attrs["first_ts"] - t0) // 60 * 60 + t0
        vals = [float(r.v) for r in lost  # type: ignore[arg-type]
                if r.dev == s.dev and s.attrs["first_ts"] <= r.ts <= s.attrs["last_ts"]]
        assert s.attrs["count"] == len(vals)
        assert s.attrs["min"] == min(vals) and s.attrs["max"] == max(vals)
        assert abs(s.attrs["mean"] - sum(vals) / len(vals)) < 1e-9 and s.v == s.attrs["mean"]
        assert s.attrs["last_ts"] - s.attrs["first_ts"] < 60
    gs = [g for g in gaps(recs) if g.attrs and g.attrs["reason"] == "downsampled"]
    assert gs and sum(g.v for g in gs) >= sum(s.attrs["count"] for s in summaries if s.attrs)  # type: ignore[misc]


async def test_unexpected_eviction_error_does_not_fail_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The commit stands when the budget check after it breaks: append returns, the records
    have their seqs, the error is logged, and the next commit works as well."""
    async with Buffer(str(tmp_path / "b.db"), gw=GW, budget_bytes=BUDGET) as buf:
        def broken() -> list[Record]:
            raise RuntimeError("eviction bug")

        monkeypatch.setattr(buf._store, "enforce_budget", broken)
        first = [tel(1.0), tel(2.0)]
        with caplog.at_level(logging.ERROR, logger="buffer"):
            await buf.append(first)
            assert [r.seq for r in first] == [1, 2]
            for _ in range(200):  # eviction runs after the producers are released
                if "buffer eviction failed" in caplog.text:
                    break
                await asyncio.sleep(0.01)
        assert "buffer eviction failed" in caplog.text
        later = [tel(3.0)]
        await buf.append(later)
        assert later[0].seq == 3
