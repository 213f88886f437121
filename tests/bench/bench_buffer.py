"""Benchmark of the store-and-forward buffer, each figure beside a raw SQLite baseline.

    python -m tests.bench.bench_buffer                 # 200k ingest, 1M-record drain
    python -m tests.bench.bench_buffer --records 100000 --drain-records 100000
    pytest tests/bench/bench_buffer.py                 # a small run (EDGE_GW_BENCH_FULL=1: full size)

Ingest: producer tasks make canonical records (ids stamped at creation) and hand them to
``gateway.pipeline.Pipeline`` whose sink is ``Buffer.append`` (group commit, seq stamping).
Baseline: plain ``sqlite3`` ``executemany`` of the same encoded rows in batches of 1,000.

Drain: a backlog of ``--drain-records`` records is claimed and acknowledged in batches of
1,000 (``Buffer.claim`` + ``Buffer.ack``). Baseline: plain select of the oldest 1,000 rows
plus a delete, per batch.

Size: the buffer file (after a checkpoint) against the raw rows' size (the sum of the
encoded rows' payload bytes), and against the JSON form of the same records.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from buffer import Buffer
from buffer._codec import encode_row, row_bytes, series_key
from gateway.record import Record, now

TARGETS = {
    "ingest_rps": 150_000.0,
    "ingest_ratio": 0.3,
    "drain_rps": 200_000.0,
    "size_ratio": 2.0,
}

RAW_DDL = (
    "CREATE TABLE raw (seq INTEGER PRIMARY KEY, todo INTEGER NOT NULL, sid INTEGER NOT NULL,"
    " ts REAL NOT NULL, id BLOB NOT NULL, v, x TEXT)"
)


def make_records(n: int, gw: str, rng: random.Random, devices: int = 200) -> list[Record]:
    """A realistic mix: ~94% telemetry, 4% state, 2% events."""
    out: list[Record] = []
    ts = now()
    for i in range(n):
        d = rng.randrange(devices)
        roll = rng.random()
        if roll < 0.02:
            out.append(Record(gw=gw, dev=f"dev-{d:04d}", cls="smoke_detector", pt="alarm",
                              kind="event", v=True, ts=ts, sev="critical"))
        elif roll < 0.06:
            out.append(Record(gw=gw, dev=f"dev-{d:04d}", cls="elevator", pt="door",
                              kind="state", v="open" if i % 2 else "closed", ts=ts))
        else:
            out.append(Record(gw=gw, dev=f"dev-{d:04d}", cls="meter", pt="power",
                              kind="telemetry", v=round(rng.uniform(0, 5000), 2), u="W", ts=ts))
    return out


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline: float | None = None
    target: str = ""
    ok: bool | None = None

    def ratio(self) -> float | None:
        if self.baseline in (None, 0):
            return None
        return self.value / self.baseline  # type: ignore[operator]


def encoded_rows(records: Sequence[Record]) -> list[tuple[Any, ...]]:
    sids: dict[Any, int] = {}
    rows = []
    for seq, rec in enumerate(records, 1):
        sid = sids.setdefault(series_key(rec), len(sids) + 1)
        rows.append(encode_row(rec, seq, 1, sid))
    return rows


def raw_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(RAW_DDL)
    return conn


def raw_insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], batch: int = 1000) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO raw VALUES (?, ?, ?, ?, ?, ?, ?)", rows[i : i + batch])
        conn.execute("COMMIT")
    return time.perf_counter() - t0


def raw_drain(conn: sqlite3.Connection, batch: int = 1000) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    while True:
        rows = conn.execute("SELECT * FROM raw ORDER BY seq LIMIT ?", (batch,)).fetchall()
        if not rows:
            break
        n += len(rows)
        conn.execute("BEGIN")
        conn.execute("DELETE FROM raw WHERE seq <= ?", (rows[-1][0],))
        conn.execute("COMMIT")
    return time.perf_counter() - t0, n


async def bench_ingest(
    workdir: str, n: int, producers: int, per_submit: int, prebuilt: bool = True
) -> tuple[float, list[Record]]:
    """Records/s through ``Pipeline.submit`` -> ``Buffer.append`` with concurrent producers.

    ``prebuilt``: the producers' records (ids already stamped) exist before the clock starts,
    as they do when a driver poll has been mapped; otherwise record construction and id
    stamping are timed too.
    """
    from gateway.pipeline import Pipeline

    path = os.path.join(workdir, f"ingest-{int(prebuilt)}.db")
    per_producer = n // producers
    produced: list[list[Record]] = [[] for _ in range(producers)]
    chunks: list[list[list[Record]]] = []
    for k in range(producers):
        prng = random.Random(k)
        sizes = [min(per_submit, per_producer - i) for i in range(0, per_producer, per_submit)]
        chunks.append([make_records(m, "bench-gw", prng) if prebuilt else [] for m in sizes])
    async with Buffer(path, gw="bench-gw", maintenance_interval=3600) as buf:
        pipe = Pipeline(sink=buf.append)

        async def producer(k: int) -> None:
            prng = random.Random(k)
            for chunk in chunks[k]:
                recs = chunk if prebuilt else make_records(per_submit, "bench-gw", prng)
                await pipe.submit(recs)
                produced[k].extend(recs)

        t0 = time.perf_counter()
        await asyncio.gather(*(producer(k) for k in range(producers)))
        elapsed = time.perf_counter() - t0
        total = sum(len(p) for p in produced)
        assert buf.last_seq == total, (buf.last_seq, total)
    records = [r for chunk in produced for r in chunk]
    return elapsed, records


async def fill(path: str, records: list[Record], chunk: int = 1000) -> None:
    async with Buffer(path, gw="bench-gw", maintenance_interval=3600) as buf:
        futs = []
        for i in range(0, len(records), chunk):
            futs.append(buf.append(records[i : i + chunk]))
            if len(futs) >= 8:
                await asyncio.gather(*futs)
                futs = []
        await asyncio.gather(*futs)


async def bench_drain(path: str, batch: int) -> tuple[float, int, float]:
    t0 = time.perf_counter()
    buf = Buffer(path, gw="bench-gw", maintenance_interval=3600)
    await buf.start()
    t_open = time.perf_counter() - t0
    try:
        n = 0
        t0 = time.perf_counter()
        while True:
            b = await buf.claim("default", max_records=batch)
            if b is None:
                break
            n += len(b.records)
            await buf.ack(b)
        elapsed = time.perf_counter() - t0
    finally:
        await buf.close()
    return elapsed, n, t_open


def file_size(path: str) -> int:
    return sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))


def run(records_n: int, drain_n: int, producers: int, per_submit: int, workdir: str | None) -> list[Result]:
    base = workdir or os.getcwd()
    tmp = tempfile.mkdtemp(prefix="bench-buffer-", dir=base)
    results: list[Result] = []
    try:
        # ---- ingest
        elapsed, recs = asyncio.run(bench_ingest(tmp, records_n, producers, per_submit))
        n_ing = len(recs)
        rows = encoded_rows(recs)
        conn = raw_db(os.path.join(tmp, "raw-ingest.db"))
        raw_t = raw_insert(conn, rows)
        conn.close()
        ing = Result("ingest (pipeline + Buffer.append)", n_ing / elapsed, "records/s",
                     n_ing / raw_t, ">=150,000/s and >=0.3x raw")
        ratio = ing.ratio() or 0.0
        ing.ok = ing.value >= TARGETS["ingest_rps"] and ratio >= TARGETS["ingest_ratio"]
        results.append(ing)
        del recs, rows
        elapsed2, recs2 = asyncio.run(bench_ingest(tmp, records_n, producers, per_submit, False))
        results.append(Result("ingest incl. record construction + id stamping",
                              len(recs2) / elapsed2, "records/s", n_ing / raw_t))
        del recs2

        # ---- drain backlog
        rng = random.Random(2)
        backlog = make_records(drain_n, "bench-gw", rng)
        json_bytes = sum(len(r.to_json().encode()) + 1 for r in backlog)
        path = os.path.join(tmp, "drain.db")
        t0 = time.perf_counter()
        asyncio.run(fill(path, backlog))
        fill_t = time.perf_counter() - t0
        rows = encoded_rows(backlog)
        raw_bytes = sum(row_bytes(r) for r in rows)
        buf_size = file_size(path)
        raw_path = os.path.join(tmp, "raw-drain.db")
        conn = raw_db(raw_path)
        raw_insert(conn, rows)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        raw_file = file_size(raw_path)
        del backlog, rows
        drain_t, n, t_open = asyncio.run(bench_drain(path, 1000))
        assert n == drain_n, (n, drain_n)
        raw_dt, raw_n = raw_drain(conn)
        conn.close()
        dr = Result(f"drain {drain_n:,} backlog (claim+ack 1,000)", drain_n / drain_t,
                    "records/s", raw_n / raw_dt, ">=200,000/s")
        dr.ok = dr.value >= TARGETS["drain_rps"]
        results.append(dr)
        results.append(Result(f"bulk fill {drain_n:,} (append 1,000/call)", drain_n / fill_t, "records/s"))
        results.append(Result("open with backlog", t_open * 1000, "ms"))
        sz = Result("buffer file / raw rows' size", buf_size / raw_bytes, "x",
                    None, "<=2.0x")
        sz.ok = sz.value <= TARGETS["size_ratio"]
        results.append(sz)
        results.append(Result("buffer file", buf_size / 2**20, "MiB", raw_file / 2**20, "(baseline = raw table file)"))
        results.append(Result("raw rows' payload", raw_bytes / 2**20, "MiB"))
        results.append(Result("same records as JSON lines", json_bytes / 2**20, "MiB"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def print_table(results: list[Result]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        for r in results:
            print(r)
        return
    t = Table(title="buffer benchmark")
    for col in ("measure", "value", "unit", "raw baseline", "ratio", "target", "ok"):
        t.add_column(col)
    for r in results:
        ratio = r.ratio()
        t.add_row(
            r.name,
            f"{r.value:,.2f}" if r.value < 100 else f"{r.value:,.0f}",
            r.unit,
            "" if r.baseline is None else (f"{r.baseline:,.0f}" if r.baseline >= 100 else f"{r.baseline:,.2f}"),
            "" if ratio is None else f"{ratio:.2f}",
            r.target,
            "" if r.ok is None else ("yes" if r.ok else "NO"),
        )
    Console(width=140).print(t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_buffer", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="records to ingest (default 200,000)")
    ap.add_argument("--drain-records", type=int, default=None,
                    help="backlog size for the drain (default 1,000,000, or --records if smaller)")
    ap.add_argument("--producers", type=int, default=100, help="concurrent producer tasks")
    ap.add_argument("--per-submit", type=int, default=20, help="records per pipeline submit")
    ap.add_argument("--dir", default=None, help="work directory (default: the current one)")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    drain = args.drain_records if args.drain_records is not None else max(args.records, 1_000_000) if args.records >= 200_000 else args.records
    results = run(args.records, drain, args.producers, args.per_submit, args.dir)
    if args.json:
        print(json.dumps([r.__dict__ | {"ratio": r.ratio()} for r in results], indent=1))
    else:
        print_table(results)
    return 0 if all(r.ok is not False for r in results) else 1


def test_bench_buffer_small(tmp_path: Any) -> None:
    """A small run of the benchmark (full size with EDGE_GW_BENCH_FULL=1)."""
    full = os.environ.get("EDGE_GW_BENCH_FULL") == "1"
    n = 200_000 if full else 20_000
    results = run(n, 1_000_000 if full else 20_000, 100, 20, str(tmp_path))
    print_table(results)
    by = {r.name.split(" ")[0]: r for r in results}
    assert by["ingest"].value > 0 and by["drain"].value > 0
    size = next(r for r in results if r.name.startswith("buffer file /"))
    assert size.value <= TARGETS["size_ratio"], size
    if full:
        assert all(r.ok is not False for r in results), results


if __name__ == "__main__":
    sys.exit(main())
