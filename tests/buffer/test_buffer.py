"""Buffer API on real SQLite files: seq, lanes, claims, acks, uplinks, restart, audit."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from buffer import Batch, Buffer, BufferRefused, BufferUnavailable
from gateway.record import Record
from tests.support.buffer_helpers import GW, event, lifecycle, mixed, state, tel


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def wreck(path: str) -> None:
    """Overwrite the header and the first pages with garbage."""
    with open(path, "r+b") as fh:
        fh.write(b"garbage!" * 2048)


def is_file(path: str) -> bool:
    return os.path.isfile(path)


def db(tmp_path: Path) -> str:
    return str(tmp_path / "buffer.db")


async def test_seq_contiguous_persisted_never_reused(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        recs = mixed(25)
        await buf.append(recs)
        assert [r.seq for r in recs] == list(range(1, 26))
        assert buf.last_seq == 25
        while (b := await buf.claim("default", max_records=10)) is not None:
            await buf.ack(b)
        assert (await buf.stats())["records"] == 0
    async with Buffer(db(tmp_path), gw=GW) as buf:
        more = [tel(), event()]
        await buf.append(more)
        assert [r.seq for r in more] == [26, 27]


async def test_concurrent_appends_get_unique_increasing_seqs(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW, commit_max_records=50) as buf:
        batches = [mixed(7) for _ in range(40)]
        await asyncio.gather(*(buf.append(b) for b in batches))
        seqs = [r.seq for b in batches for r in b]
        assert sorted(seqs) == list(range(1, 281))
        for b in batches:  # one append call lands in one transaction: contiguous
            assert [r.seq for r in b] == list(range(b[0].seq, b[0].seq + 7))


async def test_claim_order_events_first_then_state_then_telemetry(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        t1, s1, e1, t2, l1, e2 = tel(1.0), state(), event(), tel(2.0), lifecycle(), event(False)
        await buf.append([t1, s1, e1, t2, l1, e2])
        b = await buf.claim("default", max_records=100)
        assert b is not None
        assert [r.id for r in b.records] == [e1.id, e2.id, s1.id, l1.id, t1.id, t2.id]
        assert (b.first_seq, b.last_seq) == (1, 6)
        assert b.records[0].to_dict() == e1.to_dict()


async def test_claimed_records_are_in_flight_until_released(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        await buf.append([tel(float(i)) for i in range(10)])
        a = await buf.claim("default", max_records=4)
        b = await buf.claim("default", max_records=4)
        assert a and b
        assert [r.seq for r in a.records] == [1, 2, 3, 4]
        assert [r.seq for r in b.records] == [5, 6, 7, 8]
        assert buf.pending_count("default") == 2
        await buf.release(a)
        assert buf.pending_count("default") == 6
        c = await buf.claim("default", max_records=10)
        assert c and [r.seq for r in c.records] == [1, 2, 3, 4, 9, 10]
        await buf.ack(b)
        await buf.ack(c)
        assert await buf.claim("default", max_records=10) is None
        st = await buf.stats()
        assert st["records"] == 0 and st["uplinks"]["default"]["in_flight"] == 0
        await buf.ack(c)  # a second ack of a settled batch is harmless


async def test_in_flight_returns_to_pending_after_restart(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        await buf.append([event(), tel()])
        b = await buf.claim("default", max_records=10)
        assert b and len(b) == 2
        assert await buf.claim("default", max_records=10) is None
    async with Buffer(db(tmp_path), gw=GW) as buf:
        assert buf.pending_count("default") == 2
        b2 = await buf.claim("default", max_records=10)
        assert b2 and [r.id for r in b2.records] == [r.id for r in b.records]


async def test_multiple_uplinks_each_must_ack(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW, uplinks=("city", "district")) as buf:
        recs = [tel(float(i)) for i in range(6)] + [event()]
        await buf.append(recs)
        c = await buf.claim("city", max_records=100)
        assert c and len(c) == 7
        await buf.ack(c)
        assert buf.pending_count("city") == 0
        assert buf.pending_count("district") == 7
        st = await buf.stats()
        assert st["records"] == 7  # district has not acknowledged
        d1 = await buf.claim("district", max_records=3)
        assert d1 and [r.seq for r in d1.records] == [7, 1, 2]
        await buf.ack(d1)
        assert (await buf.stats())["records"] == 4
    async with Buffer(db(tmp_path), gw=GW, uplinks=("city", "district")) as buf:
        assert buf.pending_count("city") == 0
        assert buf.pending_count("district") == 4
        d2 = await buf.claim("district", max_records=100)
        assert d2 and [r.seq for r in d2.records] == [3, 4, 5, 6]
        assert await buf.claim("city", max_records=100) is None
        await buf.ack(d2)
        assert (await buf.stats())["records"] == 0
    # an uplink removed from the configuration no longer holds records back
    async with Buffer(db(tmp_path), gw=GW, uplinks=("city", "district")) as buf:
        await buf.append([tel(), tel()])
    async with Buffer(db(tmp_path), gw=GW, uplinks=("city",)) as buf:
        b = await buf.claim("city", max_records=10)
        assert b and len(b) == 2
        await buf.ack(b)
        assert (await buf.stats())["records"] == 0


async def test_min_max_seq_and_lanes_filters(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        await buf.append([tel(float(i)) for i in range(10)])  # seq 1..10
        await buf.append([event()])  # seq 11
        live = await buf.claim("default", max_records=100, min_seq=6)
        assert live and [r.seq for r in live.records] == [11, 6, 7, 8, 9, 10]
        back = await buf.claim("default", max_records=3, max_seq=5, lanes=["telemetry"])
        assert back and [r.seq for r in back.records] == [1, 2, 3]
        assert await buf.claim("default", max_records=5, lanes=["event"]) is None
        rest = await buf.claim("default", max_records=100)
        assert rest and [r.seq for r in rest.records] == [4, 5]
        with pytest.raises(ValueError):
            await buf.claim("default", max_records=1, lanes=["video"])
        with pytest.raises(KeyError):
            await buf.claim("nope", max_records=1)
        for b in (live, back, rest):
            await buf.release(b)


async def test_reject_moves_to_dead_letters(tmp_path: Path) -> None:
    path = db(tmp_path)
    before = metric("edge_gw_buffer_dead_letters_total", uplink="default")
    async with Buffer(path, gw=GW) as buf:
        e = event(attrs={"zone": "B3"})
        await buf.append([e, tel()])
        b = await buf.claim("default", max_records=1)
        assert b is not None
        await buf.reject(b, "400 schema: bad attrs")
        assert (await buf.stats())["dead_letters"] == 1
        assert buf.pending_count("default") == 1
    assert metric("edge_gw_buffer_dead_letters_total", uplink="default") == before + 1
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT seq, uplink, reason, record FROM dead_letters").fetchall()
    conn.close()
    assert rows[0][:3] == (1, "default", "400 schema: bad attrs")
    assert json.loads(rows[0][3]) == e.to_dict()


def test_tables_are_readable_with_sqlite_utils(tmp_path: Path) -> None:
    path = db(tmp_path)

    async def fill() -> None:
        async with Buffer(path, gw=GW) as buf:
            await buf.append([event(), tel(2.5)])

    asyncio.run(fill())
    exe = shutil.which("sqlite-utils", path=os.path.dirname(sys.executable))
    assert exe, "sqlite-utils CLI is installed with the project"
    out = subprocess.run([exe, "tables", path, "--counts"], capture_output=True, text=True, check=True)
    tables = {t["table"]: t["count"] for t in json.loads(out.stdout)}
    assert tables["lane_event"] == 1 and tables["lane_telemetry"] == 1 and "dead_letters" in tables
    out = subprocess.run([exe, "query", path, "select seq, lane, pt, v from records order by seq"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [
        {"seq": 1, "lane": "event", "pt": "alarm", "v": 1},
        {"seq": 2, "lane": "telemetry", "pt": "power", "v": 2.5},
    ]


async def test_wait_for_records(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        assert await buf.wait_for_records("default", 0.05) is False
        waiter = asyncio.create_task(buf.wait_for_records("default", 5))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        await buf.append([tel()])
        assert await asyncio.wait_for(waiter, 1) is True
        b = await buf.claim("default", max_records=5)
        assert b is not None
        assert await buf.wait_for_records("default", 0.02) is False
        waiter = asyncio.create_task(buf.wait_for_records("default", 5))
        await asyncio.sleep(0.01)
        await buf.release(b)  # released records are pending again
        assert await asyncio.wait_for(waiter, 1) is True


async def test_back_pressure_bounded_queue(tmp_path: Path) -> None:
    before = metric("edge_gw_buffer_backpressure_waits_total")
    async with Buffer(db(tmp_path), gw=GW, queue_size=20, commit_max_records=10) as buf:
        chunks = [[tel(float(i)) for i in range(5)] for _ in range(60)]
        await asyncio.gather(*(buf.append(c) for c in chunks))
        assert buf.last_seq == 300
        assert (await buf.stats())["queue_records"] == 0
    assert metric("edge_gw_buffer_backpressure_waits_total") > before


async def test_invalid_records_refused_valid_ones_committed(tmp_path: Path) -> None:
    before = metric("edge_gw_buffer_refused_records_total", reason="invalid")
    async with Buffer(db(tmp_path), gw=GW) as buf:
        good = tel()
        bad = Record(gw=GW, dev="x", cls="meter", pt="p", kind="telemetry", v=1.0, ts=float("inf"))
        with pytest.raises(BufferRefused) as ei:
            await buf.append([good, bad])
        assert ei.value.reason == "invalid" and ei.value.records == [bad]
        assert good.seq == 1 and bad.seq == 0
        assert buf.last_seq == 1
    assert metric("edge_gw_buffer_refused_records_total", reason="invalid") == before + 1


async def test_records_after_and_stats(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        recs = mixed(30)
        await buf.append(recs)
        got = await buf.records_after(10, 5)
        assert [r.seq for r in got] == [11, 12, 13, 14, 15]
        assert [r.to_dict() for r in got] == [r.to_dict() for r in recs[10:15]]
        b = await buf.claim("default", max_records=4)
        assert b is not None
        st = await buf.stats()
        assert st["records"] == 30 and st["last_seq"] == 30
        assert sum(v["records"] for v in st["lanes"].values()) == 30
        up = st["uplinks"]["default"]
        assert up["in_flight"] == 4 and up["pending"] == 26 and up["batches_in_flight"] == 1
        assert up["oldest_pending_age"] is not None and up["oldest_pending_age"] >= 0
        assert buf.oldest_pending_age("default") is not None
        await buf.release(b)
        await buf.maintain()
    assert metric("edge_gw_buffer_records", lane="telemetry") >= 0


async def test_command_audit(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        assert await buf.command_seen("c-1") is None
        entry = {"id": "c-1", "outcome": "ok", "ts": 1.5, "device": "d"}
        await buf.audit_command("c-1", entry)
        assert await buf.command_seen("c-1") == entry
    async with Buffer(db(tmp_path), gw=GW) as buf:
        assert await buf.command_seen("c-1") == entry
        await buf.audit_command("c-1", {**entry, "outcome": "failed"})
        assert (await buf.command_seen("c-1") or {})["outcome"] == "failed"


async def test_corrupt_file_is_moved_aside_and_reported(tmp_path: Path) -> None:
    path = db(tmp_path)
    async with Buffer(path, gw=GW) as buf:
        await buf.append(mixed(50))
    wreck(path)
    before = metric("edge_gw_buffer_resets_total")
    async with Buffer(path, gw=GW) as buf:
        recs = await buf.records_after(0, 10)
        assert len(recs) == 1
        reset = recs[0]
        assert (reset.cls, reset.pt, reset.kind) == ("gateway", "buffer_reset", "lifecycle")
        assert isinstance(reset.v, str) and is_file(reset.v) and ".corrupt-" in reset.v
        assert reset.seq > 50  # seq never goes backwards, even across a reset
        new = [tel()]
        await buf.append(new)
        assert new[0].seq == reset.seq + 1
    assert metric("edge_gw_buffer_resets_total") == before + 1


async def test_foreign_sqlite_file_is_moved_aside(tmp_path: Path) -> None:
    path = db(tmp_path)
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    async with Buffer(path, gw=GW) as buf:
        recs = await buf.records_after(0, 10)
        assert [r.pt for r in recs] == ["buffer_reset"]


async def test_lifecycle_and_errors(tmp_path: Path) -> None:
    buf = Buffer(db(tmp_path), gw=GW)
    with pytest.raises(BufferUnavailable):
        await buf.append([tel()])
    await buf.start()
    await buf.start()  # idempotent
    await buf.close()
    await buf.close()  # idempotent
    with pytest.raises(BufferUnavailable):
        await buf.append([tel()])
    with pytest.raises(ValueError):
        Buffer(db(tmp_path), gw=GW, uplinks=())
    with pytest.raises(ValueError):
        Buffer(db(tmp_path), gw=GW, max_age={"video": 3})
    with pytest.raises(ValueError):
        Buffer(db(tmp_path), gw=GW, budget_bytes=10)


async def test_append_nowait_and_empty_append(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW, queue_size=5) as buf:
        await buf.append([])
        f1 = buf.append_nowait([tel() for _ in range(5)])
        with pytest.raises(BufferRefused) as ei:
            buf.append_nowait([tel()])
        assert ei.value.reason == "queue_full"
        await f1
        assert buf.last_seq == 5


async def test_batch_type(tmp_path: Path) -> None:
    async with Buffer(db(tmp_path), gw=GW) as buf:
        await buf.append([tel()])
        b = await buf.claim("default", max_records=1)
        assert isinstance(b, Batch) and b.uplink == "default" and len(b.batch_id) == 36
        await buf.ack(b)


async def test_telemetry_is_on_disk_before_an_uplink_gets_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Telemetry commits without an fsync; a claim fsyncs the WAL first, so a power cut can
    never take back (and re-issue the seq of) a record the platform already has."""
    path = str(tmp_path / "b.db")
    synced: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    before = metric("edge_gw_buffer_wal_syncs_total")
    async with Buffer(path, gw=GW, uplinks=("city",)) as buf:
        await buf.append([tel(1.0), tel(2.0)])
        synced.clear()
        b = await buf.claim("city", max_records=10)
        assert b is not None and [r.seq for r in b.records] == [1, 2]
        assert synced == [path + "-wal"]
        await buf.ack(b)
        # nothing new: no fsync for a claim that finds nothing, nor for events (FULL commits)
        assert await buf.claim("city", max_records=10) is None
        await buf.append([event()])
        b = await buf.claim("city", max_records=10)
        assert b is not None and [r.seq for r in b.records] == [3]
        assert synced == [path + "-wal"]
    assert metric("edge_gw_buffer_wal_syncs_total") == before + 1
