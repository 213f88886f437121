"""SQLite store of everything the simulated platform received, and the summary over it.

Deliberately independent of the gateway's code: it parses the wire format itself.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rx (
    n INTEGER PRIMARY KEY,            -- arrival order
    gw TEXT NOT NULL, rid TEXT NOT NULL, seq INTEGER, lane TEXT, kind TEXT,
    dev TEXT, cls TEXT, pt TEXT, v TEXT, attrs TEXT,
    ts REAL, recv REAL NOT NULL, hist INTEGER NOT NULL, batch_id TEXT, via TEXT,
    q TEXT
);
CREATE INDEX IF NOT EXISTS rx_gw_rid ON rx (gw, rid);
CREATE TABLE IF NOT EXISTS batches (
    key TEXT PRIMARY KEY, gw TEXT, recv REAL, records INTEGER, via TEXT
);
CREATE TABLE IF NOT EXISTS status (gw TEXT PRIMARY KEY, body TEXT, recv REAL);
CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, gw TEXT, body TEXT, sent REAL);
CREATE TABLE IF NOT EXISTS results (n INTEGER PRIMARY KEY, id TEXT, gw TEXT, body TEXT, recv REAL);
CREATE TABLE IF NOT EXISTS bad (n INTEGER PRIMARY KEY, via TEXT, reason TEXT, recv REAL);
"""

LANE_OF_KIND = {"event": "event", "lifecycle": "state", "state": "state", "telemetry": "telemetry"}


class EnvelopeError(ValueError):
    pass


def check_envelope(doc: Any, gw: str | None = None) -> list[dict[str, Any]]:
    """Validate an envelope ``{gw, batch_id, hist, records}``; return its records."""
    if not isinstance(doc, dict):
        raise EnvelopeError("envelope must be a JSON object")
    for key, typ in (("gw", str), ("batch_id", str), ("hist", bool), ("records", list)):
        if not isinstance(doc.get(key), typ):
            raise EnvelopeError(f"envelope.{key} missing or not a {typ.__name__}")
    if gw is not None and doc["gw"] != gw:
        raise EnvelopeError(f"envelope.gw {doc['gw']!r} does not match the URL's {gw!r}")
    recs: list[dict[str, Any]] = doc["records"]
    for i, r in enumerate(recs):
        if not isinstance(r, dict):
            raise EnvelopeError(f"records[{i}] is not an object")
        if not isinstance(r.get("id"), str) or not isinstance(r.get("seq"), int):
            raise EnvelopeError(f"records[{i}] needs a string id and an integer seq")
        if r.get("kind") not in LANE_OF_KIND:
            raise EnvelopeError(f"records[{i}].kind {r.get('kind')!r} is unknown")
        if not isinstance(r.get("ts"), int | float):
            raise EnvelopeError(f"records[{i}].ts is not a number")
    return recs


def _ranges(seqs: list[int], lo: int, hi: int) -> list[list[int]]:
    """Missing ranges (inclusive) of the sorted, distinct ``seqs`` within ``[lo, hi]``."""
    out: list[list[int]] = []
    expect = lo
    for s in seqs:
        if s > expect:
            out.append([expect, s - 1])
        expect = max(expect, s + 1)
    if expect <= hi:
        out.append([expect, hi])
    return out


def subtract_ranges(
    ranges: list[list[int]], covered: list[tuple[int, int]] | list[list[int]]
) -> list[list[int]]:
    """Inclusive ranges minus the covered inclusive ranges."""
    out: list[list[int]] = []
    for a, b in ranges:
        pieces = [[a, b]]
        for c, d in covered:
            nxt: list[list[int]] = []
            for x, y in pieces:
                if d < x or c > y:
                    nxt.append([x, y])
                    continue
                if x < c:
                    nxt.append([x, c - 1])
                if d < y:
                    nxt.append([d + 1, y])
            pieces = nxt
        out.extend(pieces)
    return out


def _pct(values: list[float], p: float) -> float:
    if not values:
        return math.nan
    k = max(0, min(len(values) - 1, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


def _stats(values: list[float]) -> dict[str, Any]:
    values.sort()
    return {
        "count": len(values),
        "p50": round(_pct(values, 50), 4),
        "p99": round(_pct(values, 99), 4),
        "max": round(values[-1], 4),
    }


class PlatformStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(rx)")}
        if "q" not in columns:  # a store written before records' quality was kept
            self._db.execute("ALTER TABLE rx ADD COLUMN q TEXT")

    def close(self) -> None:
        self._db.close()

    def batch_seen(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM batches WHERE key=?", (key,)).fetchone() is not None

    def ingest(self, doc: dict[str, Any], *, via: str, recv: float | None = None,
               key: str | None = None) -> int:
        """Store a validated envelope; returns the number of records."""
        recv = time.time() if recv is None else recv
        recs = doc["records"]
        rows = []
        for r in recs:
            kind = r["kind"]
            rows.append((
                doc["gw"], r["id"], r["seq"], LANE_OF_KIND[kind], kind, r.get("dev"), r.get("cls"),
                r.get("pt"), json.dumps(r.get("v")),
                json.dumps(r["attrs"]) if r.get("attrs") is not None else None,
                float(r["ts"]), recv, 1 if doc["hist"] else 0, doc["batch_id"], via, r.get("q"),
            ))
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO rx (gw,rid,seq,lane,kind,dev,cls,pt,v,attrs,ts,recv,hist,batch_id,via,q)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rows,
            )
            self._db.execute(
                "INSERT OR IGNORE INTO batches (key, gw, recv, records, via) VALUES (?,?,?,?,?)",
                (key or doc["batch_id"], doc["gw"], recv, len(recs), via),
            )
            self._db.execute("COMMIT")
        return len(recs)

    def note_bad(self, via: str, reason: str) -> None:
        with self._lock:
            self._db.execute("INSERT INTO bad (via, reason, recv) VALUES (?,?,?)", (via, reason[:500], time.time()))

    def set_status(self, gw: str, body: Any) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO status (gw, body, recv) VALUES (?,?,?)",
                (gw, json.dumps(body), time.time()),
            )

    def statuses(self) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute("SELECT gw, body, recv FROM status").fetchall()
        return {gw: {"body": json.loads(b), "recv": t} for gw, b, t in rows}

    def add_command(self, gw: str, cmd: dict[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO commands (id, gw, body, sent) VALUES (?,?,?,?)",
                (str(cmd.get("id")), gw, json.dumps(cmd), time.time()),
            )

    def add_result(self, gw: str, body: Any) -> None:
        rid = str(body.get("id")) if isinstance(body, dict) else None
        with self._lock:
            self._db.execute(
                "INSERT INTO results (id, gw, body, recv) VALUES (?,?,?,?)",
                (rid, gw, json.dumps(body), time.time()),
            )

    def results(self, gw: str | None = None, cmd_id: str | None = None) -> list[dict[str, Any]]:
        q = "SELECT gw, body, recv FROM results WHERE 1=1"
        args: list[Any] = []
        if gw:
            q += " AND gw=?"
            args.append(gw)
        if cmd_id:
            q += " AND id=?"
            args.append(cmd_id)
        with self._lock:
            rows = self._db.execute(q + " ORDER BY n", args).fetchall()
        return [{"gw": g, "recv": t, **json.loads(b)} for g, b, t in rows]

    def record_ids(self, gw: str) -> list[tuple[str, int]]:
        with self._lock:
            return self._db.execute("SELECT rid, seq FROM rx WHERE gw=? ORDER BY n", (gw,)).fetchall()

    def latest(self, gw: str, dev: str | None = None) -> dict[str, dict[str, Any]]:
        """What the platform shows now: per device and point, the record with the highest
        seq received (``{dev: {pt: {v, q, kind, seq, ts}}}``)."""
        sql = ("SELECT dev, pt, v, q, kind, seq, ts FROM rx WHERE gw=? AND kind != 'event'"
               + (" AND dev=?" if dev is not None else "") + " ORDER BY seq")
        with self._lock:
            rows = self._db.execute(sql, (gw, dev) if dev is not None else (gw,)).fetchall()
        out: dict[str, dict[str, Any]] = defaultdict(dict)
        for d, pt, v, q, kind, seq, ts in rows:
            out[d][pt] = {"v": json.loads(v) if v is not None else None, "q": q, "kind": kind, "seq": seq, "ts": ts}
        return dict(out)

    def history(self, gw: str, dev: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """Every record of a gateway (optionally one device) with a seq above ``after``, in
        seq order: ``[{dev, pt, v, q, kind, seq, ts}]``."""
        sql = ("SELECT dev, pt, v, q, kind, seq, ts FROM rx WHERE gw=? AND seq > ?"
               + (" AND dev=?" if dev is not None else "") + " ORDER BY seq")
        args: tuple[Any, ...] = (gw, after, dev) if dev is not None else (gw, after)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [{"dev": d, "pt": pt, "v": json.loads(v) if v is not None else None, "q": q, "kind": kind,
                 "seq": seq, "ts": ts} for d, pt, v, q, kind, seq, ts in rows]

    def summary(self, gw: str | None = None) -> dict[str, Any]:
        with self._lock:
            gws = [r[0] for r in self._db.execute("SELECT DISTINCT gw FROM rx ORDER BY gw")]
            bad = self._db.execute("SELECT count(*) FROM bad").fetchone()[0]
        out: dict[str, Any] = {"gateways": {}, "malformed": bad}
        for g in gws:
            if gw is None or g == gw:
                out["gateways"][g] = self._summary_gw(g)
        return out

    def _summary_gw(self, gw: str) -> dict[str, Any]:
        with self._lock:
            rows = self._db.execute(
                "SELECT rid, seq, lane, kind, cls, pt, v, attrs, ts, recv, hist FROM rx WHERE gw=? ORDER BY n",
                (gw,),
            ).fetchall()
            nbatches = self._db.execute("SELECT count(*) FROM batches WHERE gw=?", (gw,)).fetchone()[0]
        first: dict[str, tuple[Any, ...]] = {}
        seq_ids: dict[int, set[str]] = defaultdict(set)
        for row in rows:
            first.setdefault(row[0], row)
            seq_ids[row[1]].add(row[0])
        seqs = sorted(seq_ids)
        hi = seqs[-1] if seqs else 0
        missing = _ranges(seqs, 1, hi)
        gaps: list[dict[str, Any]] = []
        covered: list[tuple[int, int]] = []
        order: dict[str, int] = defaultdict(int)
        last_in_lane: dict[str, int] = {}
        lat: dict[str, dict[str, list[float]]] = {"live": defaultdict(list), "hist": defaultdict(list)}
        hist_records = 0
        for _rid, seq, lane, kind, cls, pt, v, attrs, ts, recv, hist in first.values():
            (lat["hist"] if hist else lat["live"])[kind].append(recv - ts)
            hist_records += hist
            if not hist:
                if seq < last_in_lane.get(lane, 0):
                    order[lane] += 1
                last_in_lane[lane] = max(seq, last_in_lane.get(lane, 0))
            if cls == "gateway" and pt == "gap" and attrs:
                a = json.loads(attrs)
                if isinstance(a.get("first_seq"), int) and isinstance(a.get("last_seq"), int):
                    gaps.append({"seq": seq, "v": json.loads(v), **a})
                    covered.append((a["first_seq"], a["last_seq"]))
        return {
            "received": len(rows),
            "unique": len(first),
            "duplicates": len(rows) - len(first),
            "seq_min": seqs[0] if seqs else None,
            "seq_max": hi or None,
            "missing": missing,
            "missing_count": sum(b - a + 1 for a, b in missing),
            "gaps": gaps,
            "unexplained_missing": subtract_ranges(missing, covered),
            "seq_conflicts": sum(1 for ids in seq_ids.values() if len(ids) > 1),
            "out_of_order_live": dict(order),
            "hist_records": hist_records,
            "batches": nbatches,
            "latency": {
                part: {k: _stats(v) for k, v in sorted(d.items())} for part, d in lat.items()
            },
        }
