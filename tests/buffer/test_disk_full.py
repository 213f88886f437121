"""Disk full: telemetry refused and counted, events held in memory, recovery when space returns.

Runs on a 2 MiB tmpfs mounted by the test (needs root); without root it caps the database
with SQLite's ``max_page_count`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from buffer import Buffer, BufferRefused
from tests.support.buffer_helpers import GW, event, lifecycle, state, tel


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def try_mount(where: Path) -> bool:
    if os.geteuid() != 0:
        return False
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                         capture_output=True, text=True)
    return res.returncode == 0


def umount(where: Path) -> None:
    subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.asynccontextmanager
async def full_disk(tmp_path: Path) -> AsyncIterator[tuple[Buffer, Callable[[], object]]]:
    """A buffer whose disk will fill up, and a function that frees space."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = try_mount(mnt)
    buf = Buffer(str(mnt / "buffer.db"), gw=GW, retry_interval=0.1, reserve_records=50,
                 maintenance_interval=3600)
    await buf.start()
    try:
        if mounted:
            ballast = mnt / "ballast"
            ballast.write_bytes(b"\0" * (768 * 1024))

            def free() -> object:
                ballast.unlink()
                return None
        else:
            def cap(pages: int) -> None:
                conn = buf._store.conn
                assert conn is not None
                conn.execute(f"PRAGMA max_page_count={pages}")

            used = buf._store.used_bytes() // 4096
            await buf._run(cap, used + 40)

            def free() -> object:
                return asyncio.ensure_future(buf._run(cap, 1_000_000))
        yield buf, free
    finally:
        await buf.close()
        if mounted:
            umount(mnt)


async def test_disk_full_refuses_telemetry_holds_events_and_recovers(tmp_path: Path) -> None:
    refused_before = metric("edge_gw_buffer_refused_records_total", reason="disk_full")
    full_before = metric("edge_gw_buffer_disk_full_events_total", reason="disk_full")
    async with full_disk(tmp_path) as (buf, free):
        accepted = []
        refused = None
        for i in range(5000):  # bounded: 5000 x 50 records is far beyond 2 MiB
            chunk = [tel(float(k), dev=f"m{i}") for k in range(50)]
            try:
                await buf.append(chunk)
            except BufferRefused as exc:
                refused = exc
                break
            accepted.extend(chunk)
        assert refused is not None, "the disk never filled up"
        assert refused.reason == "disk_full" and all(r.seq == 0 for r in refused.records)
        assert buf.degraded == "disk_full"
        assert metric("edge_gw_buffer_degraded") == 1
        assert metric("edge_gw_buffer_disk_full_events_total", reason="disk_full") == full_before + 1
        assert metric("edge_gw_buffer_refused_records_total", reason="disk_full") >= refused_before + 50

        # state and telemetry are refused at once; events and lifecycle are held
        with pytest.raises(BufferRefused):
            await buf.append([state()])
        held = [event(), lifecycle("offline")]
        task = asyncio.create_task(buf.append(held))
        await asyncio.sleep(0.3)
        assert not task.done(), "held records are accepted only once written"
        assert (await buf.stats())["reserve_records"] == 2
        assert metric("edge_gw_buffer_reserve_records") == 2

        # the reserve is bounded
        with pytest.raises(BufferRefused) as ei:
            await buf.append([event() for _ in range(60)])
        assert ei.value.reason == "reserve_full"

        # claims and acks keep working on what is stored
        b = await buf.claim("default", max_records=10)
        assert b is not None and len(b) == 10
        await buf.release(b)

        res = free()
        if asyncio.isfuture(res):
            await res
        await asyncio.wait_for(task, 5)
        assert all(r.seq > 0 for r in held)
        assert buf.degraded is None and metric("edge_gw_buffer_degraded") == 0
        more = [tel()]
        await buf.append(more)
        assert more[0].seq == held[-1].seq + 1
        recs = await buf.records_after(0, 1_000_000)
        ids = {r.id for r in recs}
        assert all(r.id in ids for r in accepted), "nothing accepted was lost"
        assert all(r.id in ids for r in held)
        conn = sqlite3.connect(buf.path)
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        conn.close()
