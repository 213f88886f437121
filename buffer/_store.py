"""The synchronous SQLite store behind :class:`buffer.Buffer`.

Every method runs on ONE thread (the buffer's writer thread) on one connection; the async
front end serialises all calls through a single-thread executor. Nothing here touches the
event loop.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import heapq
import json
import logging
import math
import os
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gateway.errors import ReasonError
from gateway.record import LANE_OF_KIND, LANES, Record, uuid7

from . import metrics as m
from ._codec import (
    LANE_TABLES,
    ROW_BYTES_SQL,
    ROW_OVERHEAD,
    Row,
    SeriesKey,
    decode_row,
    encode_row,
    row_bytes,
)
from ._downsample import DownsampleConfig, summarisable, summarise
from ._types import Batch, BufferUnavailable, Span

log = logging.getLogger("buffer")

SCHEMA_VERSION: Final = 1
MAX_UPLINKS: Final = 62
SEQ_LEASE: Final = 1_000_000
EVICT_LOW_WATER: Final = 0.9
EVICT_MIN_ROWS: Final = 64
EVICT_MAX_ROUNDS: Final = 32
AGE_SCAN_ROWS: Final = 2_000
VACUUM_STEP_PAGES: Final = 512
AUDIT_RETENTION_S: Final = 30 * 86400.0

_COLS: Final = "seq, todo, sid, ts, id, v, x"

DDL: Final = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS uplinks (name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS series (sid INTEGER PRIMARY KEY, gw TEXT NOT NULL,"
    " dev TEXT NOT NULL, cls TEXT NOT NULL, pt TEXT NOT NULL, kind TEXT NOT NULL, u TEXT,"
    " vbool INTEGER NOT NULL)",
    *[
        f"CREATE TABLE IF NOT EXISTS {t} (seq INTEGER PRIMARY KEY, todo INTEGER NOT NULL,"
        " sid INTEGER NOT NULL, ts REAL NOT NULL, id BLOB NOT NULL, v, x TEXT)"
        for t in LANE_TABLES.values()
    ],
    "CREATE TABLE IF NOT EXISTS dead_letters (dl INTEGER PRIMARY KEY, seq INTEGER NOT NULL,"
    " uplink TEXT NOT NULL, reason TEXT NOT NULL, ts REAL NOT NULL, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS commands (id TEXT PRIMARY KEY, ts REAL NOT NULL,"
    " entry TEXT NOT NULL)",
    "CREATE VIEW IF NOT EXISTS records AS "
    + " UNION ALL ".join(
        f"SELECT r.seq AS seq, '{lane}' AS lane, s.kind AS kind, s.gw AS gw, s.dev AS dev,"
        " s.cls AS cls, s.pt AS pt, r.v AS v, s.u AS u, r.ts AS ts,"
        " CASE typeof(r.id) WHEN 'blob' THEN lower(hex(r.id)) ELSE r.id END AS id,"
        f" r.x AS extras, r.todo AS todo FROM {table} r JOIN series s ON s.sid = r.sid"
        for lane, table in LANE_TABLES.items()
    ),
]


class StoreWriteError(ReasonError):
    """A write failed because of the disk (full, read-only, I/O); ``reason`` is the label."""

    def __init__(self, reason: str, exc: BaseException) -> None:
        super().__init__(reason, str(exc))


def classify_write_error(exc: sqlite3.Error) -> str | None:
    """``disk_full`` / ``read_only`` / ``io_error`` for disk trouble, else ``None``."""
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc).lower()
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "disk_full"
    if name.startswith("SQLITE_READONLY") or "readonly" in text or "read-only" in text:
        return "read_only"
    if name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")) or "disk i/o error" in text:
        return "io_error"
    return None


@dataclass(slots=True)
class _Uplink:
    name: str
    bit: int
    unacked: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    inflight: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    ackfloor: dict[str, int] = field(default_factory=lambda: dict.fromkeys(LANES, 0))
    oldest_ts: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(LANES))
    # per lane: sorted (start, end, batch_id) of in-flight spans
    intervals: dict[str, list[tuple[int, int, str]]] = field(
        default_factory=lambda: {lane: [] for lane in LANES}
    )
    batches: dict[str, Batch] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)


@dataclass(slots=True)
class Eviction:
    lane: str
    reason: str
    first_seq: int
    last_seq: int
    count: int


def gap_record(gw: str, ev: Eviction, ts: float, extra: Mapping[str, Any] | None = None) -> Record:
    attrs: dict[str, Any] = {
        "first_seq": ev.first_seq,
        "last_seq": ev.last_seq,
        "lane": ev.lane,
        "reason": ev.reason,
    }
    if extra:
        attrs.update(extra)
    return Record(gw=gw, dev=gw, cls="gateway", pt="gap", kind="lifecycle", v=ev.count, ts=ts, attrs=attrs)


def is_corruption(exc: BaseException) -> bool:
    """True when ``exc`` says the file is not a usable database (as opposed to busy/full)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    name = str(getattr(exc, "sqlite_errorname", "") or "")
    text = str(exc).lower()
    return (
        name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or "malformed" in text
        or "not a database" in text
        or "not a buffer database" in text
    )


#: Rows per multi-row INSERT. sqlite3 releases the GIL around every statement step, so an
#: ``executemany`` of n rows hands the GIL to the event loop thread and back n times; with
#: the loop busy, that convoy cost more CPU than the insert itself. Powers of two keep the
#: number of distinct statements (and so of prepared-statement cache entries) small.
_CHUNKS: Final = (64, 16, 4, 1)
_ROW_SQL: Final = "(?, ?, ?, ?, ?, ?, ?)"


@functools.cache
def _insert_sql(table: str, size: int) -> str:
    return f"INSERT INTO {table} VALUES " + ", ".join([_ROW_SQL] * size)


def insert_rows(c: sqlite3.Connection, table: str, rows: Sequence[Row]) -> None:
    """INSERT ``rows`` into ``table`` with a few multi-row statements."""
    i, n = 0, len(rows)
    for size in _CHUNKS:
        if n - i < size:
            continue
        sql = _insert_sql(table, size)
        while n - i >= size:
            c.execute(sql, [x for row in rows[i : i + size] for x in row])
            i += size


class Store:
    """One SQLite database file holding the buffer."""

    def __init__(
        self,
        path: str,
        *,
        gw: str,
        uplinks: Sequence[str],
        budget_bytes: int | None = None,
        max_age: Mapping[str, float] | None = None,
        downsample: DownsampleConfig | None = None,
        sync_telemetry: bool = False,
        now: Any = time.time,
    ) -> None:
        self.path = os.fspath(path)
        self.gw = gw
        self.uplink_names = list(uplinks)
        self.budget_bytes = budget_bytes
        self.max_age = dict(max_age or {})
        self.downsample = downsample
        self.sync_telemetry = sync_telemetry
        self.now = now
        self.conn: sqlite3.Connection | None = None
        self.last_seq = 0
        # the highest seq known to be on disk (fsynced): only records up to it leave the box,
        # so a power cut that rolls back unsynced telemetry never re-issues a delivered seq
        self.durable_seq = 0
        self.lease = 0
        self.count = dict.fromkeys(LANES, 0)
        self.nbytes = dict.fromkeys(LANES, 0)
        self.ups: dict[str, _Uplink] = {}
        self.all_bits = 0
        self.sid_of: dict[SeriesKey, int] = {}
        self.series: dict[int, SeriesKey] = {}
        self.next_sid = 1  # kept, not recomputed: max() over every series on each commit was O(series)
        self.evictions: dict[tuple[str, str], int] = {}
        self.dead_letters = 0
        self.ack_retry: list[tuple[Batch, str | None]] = []
        self.page_size = 4096
        self._sync_mode = ""
        self.reset_info: dict[str, Any] | None = None

    # ------------------------------------------------------------------ open / close

    @property
    def seq_file(self) -> str:
        return self.path + ".seq"

    def open(self) -> list[Record]:
        """Open or create the database. Returns lifecycle records to append (a reset)."""
        notes: list[Record] = []
        try:
            self._open_checked()
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise
            moved, recovered = self._move_aside(exc)
            self._open_checked()
            self.last_seq = max(self.last_seq, recovered, self._read_lease())
            self._write_meta_last_seq()
            self.reset_info = {"moved_to": moved, "error": str(exc)}
            m.RESETS.inc()
            log.error(
                "buffer database %s was unreadable (%s): moved aside to %s, new database "
                "created, seq continues after %d",
                self.path,
                exc,
                moved,
                self.last_seq,
            )
            notes.append(
                Record(
                    gw=self.gw,
                    dev=self.gw,
                    cls="gateway",
                    pt="buffer_reset",
                    kind="lifecycle",
                    v=moved,
                    ts=round(self.now(), 3),
                    attrs={"error": str(exc)[:200], "seq_after": self.last_seq},
                )
            )
        return notes

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA busy_timeout=5000")
        return conn

    def _open_checked(self) -> None:
        fresh = not os.path.exists(self.path) or os.path.getsize(self.path) == 0
        conn = self._connect()
        try:
            if fresh:
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL (journal_mode={mode})")
            if not fresh:
                res = conn.execute("PRAGMA quick_check").fetchone()[0]
                if res != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed: {res}")
                names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
                if names and "meta" not in names:
                    raise sqlite3.DatabaseError(
                        "file is not a buffer database (no meta table): malformed for this use"
                    )
                if "meta" in names:
                    row = conn.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
                    if row is not None and int(row[0]) > SCHEMA_VERSION:
                        raise BufferUnavailable(
                            f"{self.path} has buffer schema {row[0]}, newer than this "
                            f"software ({SCHEMA_VERSION}); refusing to touch it"
                        )
            conn.execute("BEGIN IMMEDIATE")
            for stmt in DDL:
                conn.execute(stmt)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('last_seq', 0)")
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (self.now(),))
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('gw', ?)", (self.gw,))
            conn.execute("COMMIT")
            self.conn = conn
            self._load()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
            self.conn = None
            raise

    def _move_aside(self, exc: BaseException) -> tuple[str, int]:
        """Rename the unreadable file (and its WAL/SHM). Returns (new path, recovered seq)."""
        recovered = 0
        with contextlib.suppress(Exception):
            ro = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
            try:
                row = ro.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()
                if row is not None:
                    recovered = int(row[0])
            finally:
                ro.close()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(self.now()))
        target = f"{self.path}.corrupt-{stamp}"
        n = 1
        while os.path.exists(target):
            n += 1
            target = f"{self.path}.corrupt-{stamp}-{n}"
        os.replace(self.path, target)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.replace(self.path + suffix, target + suffix)
        return target, recovered

    def _read_lease(self) -> int:
        try:
            with open(self.seq_file, encoding="ascii") as fh:
                return int(fh.read().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _write_lease(self, value: int) -> None:
        tmp = self.seq_file + ".tmp"
        with open(tmp, "w", encoding="ascii") as fh:
            fh.write(f"{value}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.seq_file)
        self.lease = value

    def _write_meta_last_seq(self) -> None:
        c = self._c()
        c.execute("UPDATE meta SET value=? WHERE key='last_seq'", (self.last_seq,))

    def _c(self) -> sqlite3.Connection:
        if self.conn is None:
            raise BufferUnavailable("buffer store is not open")
        return self.conn

    def _load(self) -> None:
        c = self._c()
        self.page_size = int(c.execute("PRAGMA page_size").fetchone()[0])
        self.last_seq = int(c.execute("SELECT value FROM meta WHERE key='last_seq'").fetchone()[0])
        for table in LANE_TABLES.values():
            top = c.execute(f"SELECT max(seq) FROM {table}").fetchone()[0]
            if top is not None and top > self.last_seq:  # cannot happen; be safe
                self.last_seq = int(top)
        self.lease = self._read_lease()
        self.sid_of.clear()
        self.series.clear()
        for sid, gw, dev, cls, pt, kind, u, vbool in c.execute("SELECT * FROM series"):
            key = SeriesKey(gw, dev, cls, pt, kind, u, bool(vbool))
            self.sid_of[key] = sid
            self.series[sid] = key
        self.next_sid = (max(self.series) if self.series else 0) + 1
        self._bind_uplinks()
        for lane, table in LANE_TABLES.items():
            n, b = c.execute(f"SELECT count(*), coalesce(sum({ROW_BYTES_SQL}), 0) FROM {table}").fetchone()
            self.count[lane] = int(n)
            self.nbytes[lane] = int(b)
        for up in self.ups.values():
            for lane, table in LANE_TABLES.items():
                if len(self.ups) == 1:
                    up.unacked[lane] = self.count[lane]
                else:
                    up.unacked[lane] = int(
                        c.execute(f"SELECT count(*) FROM {table} WHERE todo & ?", (up.bit,)).fetchone()[0]
                    )
                up.dirty.add(lane)
            self._refresh_oldest(up)
        self.dead_letters = int(c.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
        for key, value in c.execute("SELECT key, value FROM meta WHERE key LIKE 'evicted:%'"):
            _, lane, reason = str(key).split(":", 2)
            self.evictions[(lane, reason)] = int(value)
        self.publish_metrics()

    def _bind_uplinks(self) -> None:
        c = self._c()
        known = {str(n): int(b) for n, b in c.execute("SELECT name, bit FROM uplinks")}
        wanted = self.uplink_names
        removed = {n: b for n, b in known.items() if n not in wanted}
        c.execute("BEGIN IMMEDIATE")
        try:
            for name, bit in removed.items():
                mask = 1 << bit
                for table in LANE_TABLES.values():
                    c.execute(f"UPDATE {table} SET todo = todo & ~? WHERE todo & ?", (mask, mask))
                    c.execute(f"DELETE FROM {table} WHERE todo = 0")
                c.execute("DELETE FROM uplinks WHERE name=?", (name,))
                log.warning("uplink %r is no longer configured: its pending records were released", name)
            used = {b for n, b in known.items() if n in wanted}
            for name in wanted:
                if name not in known:
                    bit = next(i for i in range(MAX_UPLINKS) if i not in used)
                    used.add(bit)
                    known[name] = bit
                    c.execute("INSERT INTO uplinks VALUES (?, ?)", (name, bit))
            c.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")
            raise
        self.ups = {name: _Uplink(name, 1 << known[name]) for name in wanted}
        self.all_bits = 0
        for up in self.ups.values():
            self.all_bits |= up.bit

    def close(self) -> None:
        if self.conn is None:
            return
        conn, self.conn = self.conn, None
        with contextlib.suppress(sqlite3.Error):
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()

    # ------------------------------------------------------------------ writing

    def _set_sync(self, full: bool) -> None:
        mode = "FULL" if full else "NORMAL"
        if mode != self._sync_mode:
            self._c().execute(f"PRAGMA synchronous={mode}")
            self._sync_mode = mode

    def _stage(self, records: Sequence[Record], seq0: int, todo: int) -> tuple[
        dict[str, list[Row]], list[tuple[int, SeriesKey]], int
    ]:
        """Encode ``records`` with seqs after ``seq0``. Returns rows by lane, new series and
        the last seq used. Nothing is written."""
        rows: dict[str, list[Row]] = {lane: [] for lane in LANES}
        new_series: list[tuple[int, SeriesKey]] = []
        seq = seq0
        sid_of = self.sid_of
        next_sid = self.next_sid
        lane_of = LANE_OF_KIND
        try:
            for rec in records:
                # a plain tuple hashes and compares equal to the SeriesKey it stands for
                key: Any = (rec.gw, rec.dev, rec.cls, rec.pt, rec.kind, rec.u, rec.v.__class__ is bool)
                sid = sid_of.get(key)
                if sid is None:
                    skey = SeriesKey(*key)
                    sid = next_sid
                    next_sid += 1
                    sid_of[skey] = sid
                    self.series[sid] = skey
                    new_series.append((sid, skey))
                seq += 1
                rows[lane_of[rec.kind]].append(encode_row(rec, seq, todo, sid))
        except BaseException:
            self._forget_series(new_series)  # nothing was written: the ids are free again
            raise
        self.next_sid = next_sid
        return rows, new_series, seq

    def _insert(self, rows: dict[str, list[Row]], new_series: list[tuple[int, SeriesKey]]) -> None:
        c = self._c()
        if new_series:
            c.executemany(
                "INSERT INTO series VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(sid, *key[:6], int(key.vbool)) for sid, key in new_series],
            )
        for lane, lrows in rows.items():
            if lrows:
                insert_rows(c, LANE_TABLES[lane], lrows)

    def _forget_series(self, new_series: list[tuple[int, SeriesKey]]) -> None:
        for sid, key in new_series:
            self.sid_of.pop(key, None)
            self.series.pop(sid, None)
        if new_series:  # they were the newest: their ids are free again
            self.next_sid = min(sid for sid, _ in new_series)

    def _account_insert(self, rows: dict[str, list[Row]]) -> None:
        for lane, lrows in rows.items():
            if not lrows:
                continue
            n = len(lrows)
            b = 0
            for r in lrows:
                # common case inline: 16-byte id, numeric value, no extras
                if r[6] is None and r[4].__class__ is bytes and (r[5].__class__ is float or r[5].__class__ is int):
                    b += ROW_OVERHEAD + 24
                else:
                    b += row_bytes(r)
            self.count[lane] += n
            self.nbytes[lane] += b
            m.APPENDED.labels(lane).inc(n)
            first_ts = lrows[0][3]
            for up in self.ups.values():
                up.unacked[lane] += n
                if up.oldest_ts[lane] is None:
                    up.oldest_ts[lane] = first_ts
                up.dirty.add(lane)

    def _ensure_lease(self, upto: int) -> None:
        if upto > self.lease:
            self._write_lease(upto + SEQ_LEASE)

    def commit(self, records: Sequence[Record]) -> None:
        """Write ``records`` in one transaction and set their ``seq``.

        Raises :class:`StoreWriteError` for disk trouble (nothing written, seqs untouched).
        """
        if not records:
            return
        c = self._c()
        full = self.sync_telemetry or any(r.kind != "telemetry" for r in records)
        t0 = time.perf_counter()
        rows, new_series, last = self._stage(records, self.last_seq, self.all_bits)
        try:
            self._ensure_lease(last)
            self._set_sync(full)
            c.execute("BEGIN IMMEDIATE")
            self._insert(rows, new_series)
            c.execute("UPDATE meta SET value=? WHERE key='last_seq'", (last,))
            c.execute("COMMIT")
        except (sqlite3.Error, OSError) as exc:
            self._rollback()
            self._forget_series(new_series)
            reason = classify_write_error(exc) if isinstance(exc, sqlite3.Error) else "io_error"
            if reason is None:
                raise
            raise StoreWriteError(reason, exc) from exc
        seq = self.last_seq
        for rec in records:
            seq += 1
            rec.seq = seq
        self.last_seq = last
        if full:
            self.durable_seq = last  # FULL: the WAL, earlier frames included, is on disk
        self._account_insert(rows)
        m.COMMIT_DURATION.observe(time.perf_counter() - t0)
        m.COMMIT_RECORDS.observe(len(records))
        m.LAST_SEQ.set(last)

    def _rollback(self) -> None:
        c = self.conn
        if c is not None and c.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                c.execute("ROLLBACK")

    # ------------------------------------------------------------------ claiming

    def make_durable(self) -> None:
        """fsync the WAL when it holds commits made with synchronous=NORMAL (telemetry), so
        that nothing is handed to an uplink that a power cut could still take back (and
        whose seq would then be given to another record). One fsync per claim at most, and
        none while the uplinks only drain what is already on disk."""
        if self.durable_seq >= self.last_seq:
            return
        upto = self.last_seq
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:  # checkpointed and truncated away: the database file has it
            fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        m.WAL_SYNCS.inc()
        self.durable_seq = upto

    def claimable(self, uplink: str) -> int:
        up = self.ups[uplink]
        return sum(max(0, up.unacked[lane] - up.inflight[lane]) for lane in LANES)

    def claim(
        self,
        uplink: str,
        max_records: int,
        lanes: Sequence[str] | None = None,
        min_seq: int | None = None,
        max_seq: int | None = None,
    ) -> Batch | None:
        up = self.ups[uplink]
        c = self._c()
        self.make_durable()
        need = max_records
        spans: list[Span] = []
        records: list[Record] = []
        only = len(self.ups) == 1
        for lane in LANES:
            if need <= 0:
                break
            if lanes is not None and lane not in lanes:
                continue
            if up.unacked[lane] - up.inflight[lane] <= 0:
                continue
            table = LANE_TABLES[lane]
            ivs = up.intervals[lane]
            hi = max_seq if max_seq is not None else self.last_seq
            pos = max(min_seq or 0, up.ackfloor[lane])
            i = bisect.bisect_left(ivs, (pos, -1, ""))
            if i > 0 and ivs[i - 1][1] >= pos:
                i -= 1
            while need > 0 and pos <= hi:
                if i < len(ivs) and ivs[i][0] <= pos:
                    pos = max(pos, ivs[i][1] + 1)
                    i += 1
                    continue
                seg_end = hi if i >= len(ivs) else min(hi, ivs[i][0] - 1)
                if only:
                    sql = (f"SELECT {_COLS} FROM {table} WHERE seq BETWEEN ? AND ?"
                           " ORDER BY seq LIMIT ?")
                    rows = c.execute(sql, (pos, seg_end, need)).fetchall()
                else:
                    sql = (f"SELECT {_COLS} FROM {table} WHERE seq BETWEEN ? AND ? AND todo & ?"
                           " ORDER BY seq LIMIT ?")
                    rows = c.execute(sql, (pos, seg_end, up.bit, need)).fetchall()
                if rows:
                    nb = 0
                    for row in rows:
                        records.append(decode_row(row, self.series[row[2]]))
                        nb += row_bytes(row)
                    spans.append(Span(lane, rows[0][0], rows[-1][0], len(rows), nb))
                    need -= len(rows)
                    if need <= 0:
                        break
                pos = seg_end + 1
        if not records:
            return None
        batch = Batch(
            batch_id=uuid7(),
            uplink=uplink,
            records=records,
            first_seq=min(s.start for s in spans),
            last_seq=max(s.end for s in spans),
            spans=spans,
        )
        for sp in spans:
            bisect.insort(up.intervals[sp.lane], (sp.start, sp.end, batch.batch_id))
            up.inflight[sp.lane] += sp.count
            up.dirty.add(sp.lane)
        up.batches[batch.batch_id] = batch
        return batch

    def _drop_inflight(self, up: _Uplink, batch: Batch) -> None:
        for sp in batch.spans:
            ivs = up.intervals[sp.lane]
            key = (sp.start, sp.end, batch.batch_id)
            i = bisect.bisect_left(ivs, key)
            if i < len(ivs) and ivs[i] == key:
                del ivs[i]
            up.inflight[sp.lane] -= sp.count
            up.dirty.add(sp.lane)

    def settle(self, batch: Batch, reject_reason: str | None = None) -> bool:
        """:meth:`ack` that never raises for disk trouble: a batch whose acknowledgement
        cannot be written stays in flight (not claimable) and is retried by :meth:`maintain`."""
        try:
            return self.ack(batch, reject_reason)
        except StoreWriteError as exc:
            log.warning("buffer: acknowledgement of batch %s deferred (%s)", batch.batch_id, exc)
            self.ack_retry.append((batch, reject_reason))
            return False

    def release(self, batch: Batch) -> bool:
        up = self.ups.get(batch.uplink)
        if up is None or up.batches.pop(batch.batch_id, None) is None:
            return False
        self._drop_inflight(up, batch)
        return True

    def ack(self, batch: Batch, reject_reason: str | None = None) -> bool:
        """Acknowledge (or reject into the dead-letter table) a claimed batch.

        Returns False when the batch is unknown (already settled). Raises StoreWriteError
        for disk trouble; the batch then stays in flight and is retried by :meth:`maintain`.
        """
        up = self.ups.get(batch.uplink)
        if up is None or batch.batch_id not in up.batches:
            return False
        c = self._c()
        only = len(self.ups) == 1
        done: list[tuple[Span, int, int]] = []
        try:
            self._set_sync(reject_reason is not None)
            c.execute("BEGIN IMMEDIATE")
            if reject_reason is not None:
                ts = self.now()
                c.executemany(
                    "INSERT INTO dead_letters (seq, uplink, reason, ts, record) VALUES (?, ?, ?, ?, ?)",
                    [(r.seq, up.name, reject_reason, ts, r.to_json()) for r in batch.records],
                )
            for sp in batch.spans:
                table = LANE_TABLES[sp.lane]
                if only:
                    cur = c.execute(f"DELETE FROM {table} WHERE seq BETWEEN ? AND ?", (sp.start, sp.end))
                    deleted, cleared = cur.rowcount, 0
                else:
                    cur = c.execute(
                        f"DELETE FROM {table} WHERE seq BETWEEN ? AND ? AND todo = ?",
                        (sp.start, sp.end, up.bit),
                    )
                    deleted = cur.rowcount
                    cur = c.execute(
                        f"UPDATE {table} SET todo = todo & ~? WHERE seq BETWEEN ? AND ? AND todo & ?",
                        (up.bit, sp.start, sp.end, up.bit),
                    )
                    cleared = cur.rowcount
                done.append((sp, deleted, cleared))
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            reason = classify_write_error(exc)
            if reason is None:
                raise
            raise StoreWriteError(reason, exc) from exc
        up.batches.pop(batch.batch_id, None)
        self._drop_inflight(up, batch)
        for sp, deleted, cleared in done:
            lane = sp.lane
            self.count[lane] -= deleted
            if sp.count > 0 and deleted:
                self.nbytes[lane] -= sp.nbytes if deleted >= sp.count else sp.nbytes * deleted // sp.count
            up.unacked[lane] -= deleted + cleared
            up.dirty.add(lane)
        if reject_reason is not None:
            self.dead_letters += len(batch.records)
            m.DEAD_LETTERS.labels(up.name).inc(len(batch.records))
        self._refresh_oldest(up)
        return True

    def _refresh_oldest(self, up: _Uplink) -> None:
        c = self._c()
        only = len(self.ups) == 1
        for lane in LANES:
            if up.unacked[lane] <= 0:
                up.oldest_ts[lane] = None
                up.ackfloor[lane] = max(up.ackfloor[lane], self.last_seq + 1)
                continue
            table = LANE_TABLES[lane]
            if only:
                row = c.execute(
                    f"SELECT seq, ts FROM {table} WHERE seq >= ? ORDER BY seq LIMIT 1",
                    (up.ackfloor[lane],),
                ).fetchone()
            else:
                row = c.execute(
                    f"SELECT seq, ts FROM {table} WHERE seq >= ? AND todo & ? ORDER BY seq LIMIT 1",
                    (up.ackfloor[lane], up.bit),
                ).fetchone()
            if row is None:
                up.oldest_ts[lane] = None
                up.ackfloor[lane] = self.last_seq + 1
            else:
                up.ackfloor[lane] = int(row[0])
                up.oldest_ts[lane] = float(row[1])

    def oldest_pending_ts(self, uplink: str) -> float | None:
        vals = [t for t in self.ups[uplink].oldest_ts.values() if t is not None]
        return min(vals) if vals else None

    # ------------------------------------------------------------------ eviction

    def used_bytes(self) -> int:
        c = self._c()
        pages = int(c.execute("PRAGMA page_count").fetchone()[0])
        free = int(c.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self.page_size

    def _delete_head(self, lane: str, upto_seq: int | None, limit: int | None) -> list[tuple[int, int, float, int, Row | None]]:
        """Delete the oldest rows of ``lane`` (seq <= upto_seq, or the first ``limit``)."""
        c = self._c()
        table = LANE_TABLES[lane]
        if upto_seq is not None:
            sel = c.execute(f"SELECT {_COLS} FROM {table} WHERE seq <= ? ORDER BY seq", (upto_seq,))
        else:
            sel = c.execute(f"SELECT {_COLS} FROM {table} ORDER BY seq LIMIT ?", (limit,))
        rows: list[Row] = sel.fetchall()
        if not rows:
            return []
        c.execute(f"DELETE FROM {table} WHERE seq <= ?", (rows[-1][0],))
        return [(r[0], r[1], r[3], row_bytes(r), r) for r in rows]

    def _account_evicted(self, lane: str, gone: list[tuple[int, int, float, int, Row | None]]) -> None:
        self.count[lane] -= len(gone)
        self.nbytes[lane] -= sum(g[3] for g in gone)
        for up in self.ups.values():
            ivs = up.intervals[lane]
            n = 0
            for seq, todo, _ts, _b, _r in gone:
                if not todo & up.bit:
                    continue
                n += 1
                if ivs:
                    i = bisect.bisect_right(ivs, (seq, 1 << 62, "")) - 1
                    if i >= 0 and ivs[i][0] <= seq <= ivs[i][1]:
                        b = up.batches.get(ivs[i][2])
                        if b is not None:
                            for sp in b.spans:
                                if sp.lane == lane and sp.start <= seq <= sp.end and sp.count > 0:
                                    sp.count -= 1
                                    up.inflight[lane] -= 1
                                    break
            up.unacked[lane] -= n
            up.dirty.add(lane)

    def _note_eviction(self, ev: Eviction, out: list[Eviction]) -> None:
        out.append(ev)
        key = (ev.lane, ev.reason)
        self.evictions[key] = self.evictions.get(key, 0) + ev.count
        self._c().execute(
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (f"evicted:{ev.lane}:{ev.reason}", self.evictions[key]),
        )

    def _evict_round(self, lane: str, k: int, out: list[Eviction], extra: list[Record]) -> int:
        """Evict the ``k`` oldest rows of ``lane`` for the budget (downsampling telemetry
        when configured). Returns rows removed."""
        gone = self._delete_head(lane, None, k)
        if not gone:
            return 0
        self._account_evicted(lane, gone)
        first, last = gone[0][0], gone[-1][0]
        if lane == "telemetry" and self.downsample is not None:
            originals = [decode_row(g[4], self.series[g[4][2]]) for g in gone if g[4] is not None]
            summaries = summarise(originals, self.downsample.interval)
            n_sum = sum(1 for r in originals if summarisable(r))
            if summaries:
                extra.extend(summaries)
                m.SUMMARIES.inc(len(summaries))
            if n_sum:
                self._note_eviction(Eviction(lane, "downsampled", first, last, n_sum), out)
            if len(gone) - n_sum:
                self._note_eviction(Eviction(lane, "budget", first, last, len(gone) - n_sum), out)
        else:
            self._note_eviction(Eviction(lane, "budget", first, last, len(gone)), out)
        return len(gone)

    def _write_notes(
        self, notes: list[Record], out_records: list[Record],
        added: list[tuple[int, SeriesKey]] | None = None,
    ) -> None:
        """Insert lifecycle/summary records inside the current transaction. Series it
        creates are appended to ``added`` so a failed COMMIT can forget them again."""
        if not notes:
            return
        rows, new_series, last = self._stage(notes, self.last_seq, self.all_bits)
        try:
            self._ensure_lease(last)
            self._insert(rows, new_series)
            self._c().execute("UPDATE meta SET value=? WHERE key='last_seq'", (last,))
        except BaseException:
            self._forget_series(new_series)
            raise
        if added is not None:
            added.extend(new_series)
        seq = self.last_seq
        for rec in notes:
            seq += 1
            rec.seq = seq
        self.last_seq = last
        self._account_insert(rows)
        out_records.extend(notes)

    def _emit_gaps(self, evs: list[Eviction], detail: Mapping[str, Any] | None = None) -> list[Record]:
        ts = round(self.now(), 3)
        return [gap_record(self.gw, ev, ts, detail) for ev in evs]

    def enforce(self) -> list[Record]:
        """Apply max age and the disk budget. Returns the gap (and summary) records written."""
        written: list[Record] = []
        if self.max_age:
            written += self._enforce_age()
        if self.budget_bytes:
            written += self._enforce_budget()
        return written

    def enforce_budget(self) -> list[Record]:
        """Evict for the disk budget if it is exceeded (cheap when it is not)."""
        return self._enforce_budget() if self.budget_bytes else []

    def _run_eviction_txn(self, body: Any) -> list[Record]:
        c = self._c()
        snapshot = (dict(self.count), dict(self.nbytes), self.last_seq, dict(self.evictions))
        up_snap = {n: (dict(u.unacked), dict(u.inflight)) for n, u in self.ups.items()}
        written: list[Record] = []
        added: list[tuple[int, SeriesKey]] = []
        try:
            self._set_sync(True)
            c.execute("BEGIN IMMEDIATE")
            evs: list[Eviction] = []
            extra: list[Record] = []
            body(evs, extra)
            if not evs:
                c.execute("ROLLBACK")
                return []
            self._write_notes(extra + self._emit_gaps(evs), written, added)
            c.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            self._forget_series(added)
            self.count, self.nbytes, self.last_seq, self.evictions = snapshot
            for n, (ua, inf) in up_snap.items():
                self.ups[n].unacked, self.ups[n].inflight = ua, inf
            reason = classify_write_error(exc)
            if reason is None:
                raise
            raise StoreWriteError(reason, exc) from exc
        for ev in evs:
            m.EVICTED.labels(ev.lane, ev.reason).inc(ev.count)
            m.GAPS.labels(ev.lane).inc()
            log.warning(
                "buffer evicted %d %s record(s) (seq %d..%d, reason %s)",
                ev.count, ev.lane, ev.first_seq, ev.last_seq, ev.reason,
            )
        for up in self.ups.values():
            self._refresh_oldest(up)
        return written

    def _enforce_age(self) -> list[Record]:
        now = self.now()

        def body(evs: list[Eviction], extra: list[Record]) -> None:
            c = self._c()
            for lane, age in self.max_age.items():
                if self.count[lane] <= 0:
                    continue
                cutoff = now - age
                table = LANE_TABLES[lane]
                upto = None
                for seq, ts in c.execute(f"SELECT seq, ts FROM {table} ORDER BY seq LIMIT ?", (AGE_SCAN_ROWS,)):
                    if ts >= cutoff:
                        break
                    upto = seq
                if upto is None:
                    continue
                gone = self._delete_head(lane, upto, None)
                if gone:
                    self._account_evicted(lane, gone)
                    self._note_eviction(Eviction(lane, "max_age", gone[0][0], gone[-1][0], len(gone)), evs)

        return self._run_eviction_txn(body)

    def _enforce_budget(self) -> list[Record]:
        budget = self.budget_bytes
        assert budget is not None
        if self.used_bytes() <= budget:
            return []
        target = int(budget * EVICT_LOW_WATER)

        def body(evs: list[Eviction], extra: list[Record]) -> None:
            for _ in range(EVICT_MAX_ROUNDS):
                used = self.used_bytes()
                if used <= target:
                    return
                total = sum(self.count.values())
                if total <= 0:
                    return
                per_row = max(1.0, used / total)
                k = max(EVICT_MIN_ROWS, math.ceil((used - target) / per_row))
                lane = next(
                    (ln for ln in ("telemetry", "state", "event") if self.count[ln] > 0), None
                )
                if lane is None:
                    return
                self._evict_round(lane, k, evs, extra)

        return self._run_eviction_txn(body)

    # ------------------------------------------------------------------ maintenance

    def maintain(self) -> tuple[list[Record], list[Batch]]:
        """Periodic work: ack retries, max age, budget, vacuum, audit pruning.

        Returns (records written, batches whose ack finally committed)."""
        settled: list[Batch] = []
        if self.ack_retry:
            pending, self.ack_retry = self.ack_retry, []
            for batch, reason in pending:
                try:
                    self.ack(batch, reason)
                    settled.append(batch)
                except StoreWriteError:
                    self.ack_retry.append((batch, reason))
        written = self.enforce()
        c = self._c()
        try:
            pages = int(c.execute("PRAGMA page_count").fetchone()[0])
            free = int(c.execute("PRAGMA freelist_count").fetchone()[0])
            if free > 256 and free * 4 > pages:
                c.execute(f"PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})")
            c.execute("DELETE FROM commands WHERE ts < ?", (self.now() - AUDIT_RETENTION_S,))
        except sqlite3.Error as exc:
            if classify_write_error(exc) is None:
                raise
        return written, settled

    # ------------------------------------------------------------------ reading

    def records_after(self, after_seq: int, limit: int) -> list[Record]:
        c = self._c()
        its: list[Iterable[Row]] = [
            c.execute(f"SELECT {_COLS} FROM {t} WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
            for t in LANE_TABLES.values()
        ]
        out: list[Record] = []
        for row in heapq.merge(*its, key=lambda r: r[0]):
            out.append(decode_row(row, self.series[row[2]]))
            if len(out) >= limit:
                break
        return out

    def peek(self, lane: str, limit: int) -> list[Record]:
        c = self._c()
        rows = c.execute(
            f"SELECT {_COLS} FROM {LANE_TABLES[lane]} ORDER BY seq LIMIT ?", (limit,)
        ).fetchall()
        return [decode_row(r, self.series[r[2]]) for r in rows]

    def file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(self.path + suffix)
        return total

    def stats(self) -> dict[str, Any]:
        now = self.now()
        lanes = {
            lane: {"records": self.count[lane], "bytes": self.nbytes[lane]} for lane in LANES
        }
        uplinks: dict[str, Any] = {}
        for up in self.ups.values():
            per_lane = {
                lane: {
                    "pending": max(0, up.unacked[lane] - up.inflight[lane]),
                    "in_flight": up.inflight[lane],
                }
                for lane in LANES
            }
            oldest = self.oldest_pending_ts(up.name)
            uplinks[up.name] = {
                "lanes": per_lane,
                "pending": sum(v["pending"] for v in per_lane.values()),
                "in_flight": sum(v["in_flight"] for v in per_lane.values()),
                "batches_in_flight": len(up.batches),
                "oldest_pending_age": None if oldest is None else max(0.0, now - oldest),
            }
        evictions: dict[str, dict[str, int]] = {}
        for (lane, reason), n in sorted(self.evictions.items()):
            evictions.setdefault(lane, {})[reason] = n
        return {
            "path": self.path,
            "last_seq": self.last_seq,
            "lanes": lanes,
            "records": sum(self.count.values()),
            "bytes": sum(self.nbytes.values()),
            "uplinks": uplinks,
            "dead_letters": self.dead_letters,
            "evictions": evictions,
            "file_bytes": self.file_bytes(),
            "used_bytes": self.used_bytes(),
            "budget_bytes": self.budget_bytes,
        }

    def publish_metrics(self) -> None:
        for lane in LANES:
            m.RECORDS.labels(lane).set(self.count[lane])
            m.BYTES.labels(lane).set(self.nbytes[lane])
        now = self.now()
        for up in self.ups.values():
            for lane in up.dirty:
                avg = self.nbytes[lane] / self.count[lane] if self.count[lane] > 0 else 0.0
                pending = max(0, up.unacked[lane] - up.inflight[lane])
                m.UPLINK_RECORDS.labels(up.name, lane, "pending").set(pending)
                m.UPLINK_RECORDS.labels(up.name, lane, "in_flight").set(up.inflight[lane])
                m.UPLINK_BYTES.labels(up.name, lane, "pending").set(pending * avg)
                m.UPLINK_BYTES.labels(up.name, lane, "in_flight").set(up.inflight[lane] * avg)
            up.dirty.clear()
            oldest = self.oldest_pending_ts(up.name)
            m.OLDEST_PENDING_AGE.labels(up.name).set(0.0 if oldest is None else max(0.0, now - oldest))
        m.LAST_SEQ.set(self.last_seq)
        m.DEAD_LETTERS_STORED.set(self.dead_letters)
        m.BUDGET_BYTES.set(self.budget_bytes or 0)
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                m.USED_BYTES.set(self.used_bytes())
        m.FILE_BYTES.set(self.file_bytes())

    # ------------------------------------------------------------------ command audit

    def command_seen(self, command_id: str) -> dict[str, Any] | None:
        row = self._c().execute("SELECT entry FROM commands WHERE id=?", (command_id,)).fetchone()
        if row is None:
            return None
        value = json.loads(row[0])
        return value if isinstance(value, dict) else {"entry": value}

    def audit_command(self, command_id: str, entry: Mapping[str, Any]) -> None:
        c = self._c()
        text = json.dumps(dict(entry), separators=(",", ":"), ensure_ascii=False, default=str)
        try:
            self._set_sync(True)
            c.execute(
                "INSERT INTO commands VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
                " ts = excluded.ts, entry = excluded.entry",
                (command_id, self.now(), text),
            )
        except sqlite3.Error as exc:
            reason = classify_write_error(exc)
            if reason is None:
                raise
            raise StoreWriteError(reason, exc) from exc
