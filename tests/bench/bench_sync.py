"""Benchmark: drain a backlog from the buffer to a local mosquitto at QoS 1.

    .venv/bin/python tests/bench/bench_sync.py                 # 1,000,000 records
    .venv/bin/python tests/bench/bench_sync.py --records 200000 --uvloop

Three rows, same broker, same batch size and window:
  uplink    the real ``buffer.Buffer`` + MQTT uplink, acked to the buffer after PUBACK,
            while a producer adds one live event every 20 ms (their latency is reported)
  baseline  a straight-line loop on a copy of the same database: select the oldest rows,
            build the same envelope, publish at QoS 1 with the same window, delete on PUBACK
  ceiling   mosquitto only: one pre-encoded batch published N/batch times
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiomqtt  # noqa: E402

from buffer import Buffer  # noqa: E402
from buffer._codec import LANE_TABLES, SeriesKey, decode_row  # noqa: E402
from gateway.record import LANES, Record, uuid7  # noqa: E402
from sync import create_uplink, uplink_schema  # noqa: E402
from sync.codec import encode_batch  # noqa: E402
from tests.support.sync_community import make_records  # noqa: E402
from tests.support.sync_mosquitto import Mosquitto  # noqa: E402

GW = "gw-bench"
TOPIC = f"city/{GW}/records"
import logging  # noqa: E402

_QUIET = logging.getLogger("bench.quiet")
_QUIET.setLevel(logging.ERROR)


async def fill(db: Path, n: int) -> None:
    async with Buffer(db, gw=GW, uplinks=("city",), queue_size=50_000) as buf:
        ts = time.time() - 3600
        for start in range(0, n, 5000):
            await buf.append(make_records(GW, min(5000, n - start), start=start, ts=ts))


def client(broker: Mosquitto, window: int, ident: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, identifier=ident, logger=_QUIET,
                          max_inflight_messages=window + 8, timeout=30)


async def run_uplink(db: Path, broker: Mosquitto, n: int, batch: int, window: int) -> dict[str, Any]:
    lat: list[float] = []

    async def watch(sub: aiomqtt.Client) -> None:
        async for msg in sub.messages:
            p = msg.payload
            assert isinstance(p, bytes)
            if b'"hist":false' in p[:120]:
                now = time.time()
                for r in json.loads(p)["records"]:
                    if r["kind"] == "event":
                        lat.append(now - r["ts"])

    async with Buffer(db, gw=GW, uplinks=("city",)) as buf, client(broker, window) as sub:
        await sub.subscribe(TOPIC, qos=0)
        watcher = asyncio.create_task(watch(sub))
        cfg = uplink_schema("mqtt").model_validate(
            {"name": "city", "kind": "mqtt", "url": broker.url, "topic_prefix": "city",
             "window": window, "batch_max_records": batch, "backlog_rate": 0, "batch_linger": 0})
        up = create_uplink(cfg, gw_id=GW, buffer=buf, commands=None, status=lambda: {})
        live = 0

        async def producer() -> None:
            nonlocal live
            i = 0
            while True:
                r = Record(gw=GW, dev="b3-smoke-02", cls="smoke_detector", pt="alarm", kind="event",
                           v=bool(i % 2), ts=round(time.time(), 3), sev="critical")
                await buf.append([r])
                live += 1
                i += 1
                await asyncio.sleep(0.02)

        t0 = time.perf_counter()
        task = asyncio.create_task(up.run())
        prod = asyncio.create_task(producer())
        try:
            while up.state()["records_acked"] < n:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - t0
        finally:
            prod.cancel()
            await asyncio.gather(prod, return_exceptions=True)
            await asyncio.sleep(0.3)
            task.cancel()
            watcher.cancel()
            await asyncio.gather(task, watcher, return_exceptions=True)
    lat.sort()
    return {"elapsed": elapsed, "records": n, "events": len(lat),
            "p50": statistics.median(lat) if lat else float("nan"),
            "p99": lat[int(0.99 * (len(lat) - 1))] if lat else float("nan")}


async def run_baseline(db: Path, broker: Mosquitto, n: int, batch: int, window: int) -> dict[str, Any]:
    con = sqlite3.connect(db, isolation_level=None)
    series = {row[0]: SeriesKey(row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]))
              for row in con.execute("SELECT sid, gw, dev, cls, pt, kind, u, vbool FROM series")}
    sem = asyncio.Semaphore(window)
    done = 0
    async with client(broker, window) as c:
        async def send(table: str, payload: bytes, lo: int, hi: int, count: int) -> None:
            nonlocal done
            try:
                await c.publish(TOPIC, payload, qos=1)
                con.execute(f"DELETE FROM {table} WHERE seq BETWEEN ? AND ?", (lo, hi))
                done += count
            finally:
                sem.release()

        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        for lane in LANES:
            table = LANE_TABLES[lane]
            cursor = 0
            while True:
                rows = con.execute(f"SELECT seq, todo, sid, ts, id, v, x FROM {table} WHERE seq > ?"
                                   " ORDER BY seq LIMIT ?", (cursor, batch)).fetchall()
                if not rows:
                    break
                cursor = rows[-1][0]
                recs = [decode_row(r, series[r[2]]) for r in rows]
                payload = encode_batch(GW, uuid7(), recs, hist=True)
                await sem.acquire()
                t = asyncio.create_task(send(table, payload, rows[0][0], rows[-1][0], len(rows)))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    con.close()
    return {"elapsed": elapsed, "records": done}


async def run_ceiling(broker: Mosquitto, n: int, batch: int, window: int) -> dict[str, Any]:
    payload = encode_batch(GW, uuid7(), make_records(GW, batch), hist=True)
    sem = asyncio.Semaphore(window)
    async with client(broker, window) as c:
        async def send() -> None:
            try:
                await c.publish(TOPIC, payload, qos=1)
            finally:
                sem.release()

        tasks = set()
        t0 = time.perf_counter()
        for _ in range(n // batch):
            await sem.acquire()
            t = asyncio.create_task(send())
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    return {"elapsed": elapsed, "records": (n // batch) * batch}


async def main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-sync-") as tmp:
        d = Path(tmp)
        db, copy = d / "gw.db", d / "baseline.db"
        t = time.perf_counter()
        await fill(db, args.records)
        print(f"filled {args.records:,} records in {time.perf_counter() - t:.1f}s", flush=True)
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(db) + suffix)
            if src.exists():  # noqa: ASYNC240
                shutil.copy(src, Path(str(copy) + suffix))
        broker = Mosquitto(d)
        broker.start()
        try:
            ceiling = await run_ceiling(broker, args.records, args.batch, args.window)
            base = await run_baseline(copy, broker, args.records, args.batch, args.window)
            up = await run_uplink(db, broker, args.records, args.batch, args.window)
        finally:
            broker.stop()
    rate = {k: v["records"] / v["elapsed"] for k, v in (("ceiling", ceiling), ("baseline", base), ("uplink", up))}
    print(f"\nbatch={args.batch} window={args.window} records={args.records:,} QoS 1, loopback mosquitto")
    print(f"{'run':<10}{'records':>12}{'seconds':>10}{'records/s':>12}{'vs baseline':>13}")
    for k, v in (("ceiling", ceiling), ("baseline", base), ("uplink", up)):
        print(f"{k:<10}{v['records']:>12,}{v['elapsed']:>10.2f}{rate[k]:>12,.0f}{rate[k] / rate['baseline']:>13.2f}")
    print(f"live events during the drain: {up['events']} , latency p50 {up['p50']*1000:.0f} ms, "
          f"p99 {up['p99']*1000:.0f} ms")
    ok = rate["uplink"] >= 100_000 and rate["uplink"] >= 0.5 * rate["baseline"] and up["p99"] < 1.0
    print("targets (>=100k/s, >=0.5 x baseline, event p99 < 1 s):", "met" if ok else "NOT met")
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--window", type=int, default=32)
    ap.add_argument("--uvloop", action="store_true")
    a = ap.parse_args()
    if a.uvloop:
        import uvloop

        uvloop.install()
    sys.exit(asyncio.run(main(a)))
