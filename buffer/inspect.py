"""Read-only inspection of a buffer file (used by the CLI; safe while the daemon runs).

In-flight state lives in the running daemon's memory, so these views show what is stored
and, per uplink, what that uplink has not acknowledged yet.
"""

from __future__ import annotations

import contextlib
import heapq
import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

from gateway.record import LANES, Record

from ._codec import LANE_TABLES, ROW_BYTES_SQL, SeriesKey, decode_row

_COLS = "seq, todo, sid, ts, id, v, x"


class InspectError(RuntimeError):
    pass


def open_ro(path: str) -> sqlite3.Connection:
    if not os.path.exists(path):
        raise InspectError(f"{path}: no such buffer file")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.execute("PRAGMA busy_timeout=5000")
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InspectError(f"{path}: not readable as a buffer database: {exc}") from exc
    if "meta" not in names or "lane_event" not in names:
        conn.close()
        raise InspectError(f"{path}: not a buffer database")
    return conn


def _series(conn: sqlite3.Connection) -> dict[int, SeriesKey]:
    return {
        sid: SeriesKey(gw, dev, cls, pt, kind, u, bool(vb))
        for sid, gw, dev, cls, pt, kind, u, vb in conn.execute("SELECT * FROM series")
    }


def stats(conn: sqlite3.Connection, path: str) -> dict[str, Any]:
    now = time.time()
    meta = dict(conn.execute("SELECT key, value FROM meta"))
    lanes: dict[str, Any] = {}
    for lane, table in LANE_TABLES.items():
        n, b = conn.execute(
            f"SELECT count(*), coalesce(sum({ROW_BYTES_SQL}), 0) FROM {table}"
        ).fetchone()
        lanes[lane] = {"records": n, "bytes": b}
    uplinks: dict[str, Any] = {}
    for name, bit in conn.execute("SELECT name, bit FROM uplinks ORDER BY bit").fetchall():
        mask = 1 << int(bit)
        per: dict[str, int] = {}
        oldest_ts: float | None = None
        for lane, table in LANE_TABLES.items():
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE todo & ?", (mask,)).fetchone()[0]
            per[lane] = n
            row = conn.execute(
                f"SELECT ts FROM {table} WHERE todo & ? ORDER BY seq LIMIT 1", (mask,)
            ).fetchone()
            if row is not None:
                oldest_ts = row[0] if oldest_ts is None else min(oldest_ts, row[0])
        uplinks[name] = {
            "unacknowledged": per,
            "oldest_pending_age": None if oldest_ts is None else max(0.0, now - oldest_ts),
        }
    evictions: dict[str, dict[str, int]] = {}
    for key, value in meta.items():
        if str(key).startswith("evicted:"):
            _, lane, reason = str(key).split(":", 2)
            evictions.setdefault(lane, {})[reason] = int(value)
    dead = conn.execute("SELECT uplink, reason, count(*) FROM dead_letters GROUP BY 1, 2").fetchall()
    size = 0
    for suffix in ("", "-wal"):
        with contextlib.suppress(OSError):
            size += os.path.getsize(path + suffix)
    page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return {
        "path": path,
        "gw": meta.get("gw"),
        "last_seq": int(meta.get("last_seq", 0)),
        "lanes": lanes,
        "records": sum(v["records"] for v in lanes.values()),
        "bytes": sum(v["bytes"] for v in lanes.values()),
        "uplinks": uplinks,
        "dead_letters": [{"uplink": u, "reason": r, "records": n} for u, r, n in dead],
        "evictions": evictions,
        "file_bytes": size,
        "used_bytes": (pages - free) * page_size,
        "free_bytes": free * page_size,
    }


def peek(conn: sqlite3.Connection, lane: str | None, limit: int, newest_first: bool = True) -> list[Record]:
    """Up to ``limit`` stored records of one lane, or of every lane when ``lane`` is None,
    newest first (highest seq) unless ``newest_first`` is False."""
    if lane is not None and lane not in LANES:
        raise InspectError(f"unknown lane {lane!r} (lanes: {', '.join(LANES)})")
    series = _series(conn)
    order = "DESC" if newest_first else "ASC"
    n = max(0, limit)
    rows: list[Any] = []
    for ln in (lane,) if lane is not None else LANES:
        rows += conn.execute(f"SELECT {_COLS} FROM {LANE_TABLES[ln]} ORDER BY seq {order} LIMIT ?", (n,)).fetchall()
    rows.sort(key=lambda r: r[0], reverse=newest_first)
    return [decode_row(r, series[r[2]]) for r in rows[:n]]


def export(conn: sqlite3.Connection, after_seq: int, chunk: int = 5000) -> Iterator[Record]:
    """All stored records with seq > ``after_seq``, in seq order, read in chunks."""
    series = _series(conn)
    pos = after_seq
    while True:
        its = [
            conn.execute(
                f"SELECT {_COLS} FROM {t} WHERE seq > ? ORDER BY seq LIMIT ?", (pos, chunk)
            ).fetchall()
            for t in LANE_TABLES.values()
        ]
        # only rows up to the smallest "last seq" of a full chunk are complete
        limit = min((rows[-1][0] for rows in its if len(rows) == chunk), default=None)
        n = 0
        for row in heapq.merge(*its, key=lambda r: r[0]):
            if limit is not None and row[0] > limit:
                break
            if row[2] not in series:
                series = _series(conn)
            yield decode_row(row, series[row[2]])
            pos = row[0]
            n += 1
        if n == 0:
            return


def vacuum(path: str) -> dict[str, int]:
    """Checkpoint the WAL and rebuild the file without free pages."""
    if not os.path.exists(path):
        raise InspectError(f"{path}: no such buffer file")
    before = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    after = sum(os.path.getsize(path + s) for s in ("", "-wal") if os.path.exists(path + s))
    return {"before_bytes": before, "after_bytes": after}
