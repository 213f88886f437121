"""Row encoding of stored records (pure functions, no I/O).

A stored record is one row of a lane table::

    seq  INTEGER PRIMARY KEY   -- the record's seq (the table's rowid)
    todo INTEGER               -- bit mask of the uplinks that have not acknowledged it yet
    sid  INTEGER               -- series id: (gw, dev, cls, pt, kind, unit, value-is-bool)
    ts   REAL                  -- acquisition time
    id   BLOB                  -- 16 bytes of the UUID (TEXT if the id is not a canonical UUID)
    v                          -- value as stored by SQLite: INTEGER, REAL, TEXT or NULL
    x    TEXT                  -- compact JSON of the rarely used fields, NULL when none

``x`` holds ``q`` (only when not "good"), ``tsd``, ``sev``, ``attrs`` and the flag ``nan``
(SQLite stores a NaN as NULL). The series table interns the strings that repeat on every
reading of one point, so a typical telemetry row is ~45 bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any, Final, NamedTuple

from gateway.record import LANE_OF_KIND, Record

LANE_TABLES: Final[dict[str, str]] = {
    "event": "lane_event",
    "state": "lane_state",
    "telemetry": "lane_telemetry",
}

#: Fixed per-row cost counted by :func:`row_bytes` (seq, todo, sid, ts and row header).
ROW_OVERHEAD: Final = 24



class SeriesKey(NamedTuple):
    gw: str
    dev: str
    cls: str
    pt: str
    kind: str
    u: str | None
    vbool: bool


Row = tuple[int, int, int, float, bytes | str, Any, str | None]
"""(seq, todo, sid, ts, id, v, x) in column order."""


class CodecError(ValueError):
    """A stored row cannot be turned back into a record."""


def series_key(rec: Record) -> SeriesKey:
    return SeriesKey(rec.gw, rec.dev, rec.cls, rec.pt, rec.kind, rec.u, rec.v.__class__ is bool)


def encode_id(value: str) -> bytes | str:
    """The 16 bytes of a canonical lower-case UUID string; any other id is kept as text."""
    if len(value) != 36 or value[8] != "-" or value[13] != "-" or value[18] != "-" or value[23] != "-":
        return value
    compact = value.replace("-", "")
    try:
        raw = bytes.fromhex(compact)
    except ValueError:
        return value
    # 16 bytes: 32 hex digits (fromhex skips whitespace); lower case: decoding gives this text
    if len(raw) == 16 and compact == compact.lower():
        return raw
    return value


def decode_id(value: bytes | str) -> str:
    if isinstance(value, bytes):
        if len(value) != 16:
            raise CodecError(f"id blob of {len(value)} bytes, expected 16")
        h = value.hex()
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    if isinstance(value, str):
        return value
    raise CodecError(f"id of type {type(value).__name__}")


def encode_extras(rec: Record) -> str | None:
    """The ``x`` column: fields that are usually absent, or ``None``."""
    extras: dict[str, Any] = {}
    if rec.q != "good":
        extras["q"] = rec.q
    if rec.tsd is not None:
        extras["tsd"] = rec.tsd
    if rec.sev is not None:
        extras["sev"] = rec.sev
    if rec.attrs:
        extras["attrs"] = rec.attrs
    v = rec.v
    if isinstance(v, float) and math.isnan(v):
        extras["nan"] = 1
    if not extras:
        return None
    return json.dumps(extras, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def encode_value(v: Any) -> Any:
    """The ``v`` column. Booleans become 0/1 (the series remembers the type); NaN becomes NULL."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        if -(1 << 63) <= v < (1 << 63):
            return v
        return float(v)
    if isinstance(v, float):
        return None if math.isnan(v) else v
    raise CodecError(f"value of type {type(v).__name__} cannot be stored")


def encode_row(rec: Record, seq: int, todo: int, sid: int) -> Row:
    v: Any = rec.v
    cls = v.__class__
    if rec.q == "good" and rec.tsd is None and rec.sev is None and not rec.attrs and not (
        cls is float and v != v
    ):
        x = None
    else:
        x = encode_extras(rec)
    if cls is float:
        if v != v:  # NaN: SQLite would store NULL anyway; the extras carry the flag
            v = None
    elif cls is int:
        if not -(1 << 63) <= v < (1 << 63):
            v = float(v)
    elif cls is not str and v is not None:
        v = encode_value(v)
    return (seq, todo, sid, float(rec.ts), encode_id(rec.id), v, x)


def row_bytes(row: Row) -> int:
    """Payload size of an encoded row: the figure the buffer's byte gauges add up."""
    return _payload_bytes(row[4], row[5], row[6])


def _payload_bytes(rid: bytes | str, v: Any, x: str | None) -> int:
    n = ROW_OVERHEAD + (len(rid) if isinstance(rid, bytes) else len(rid.encode()))
    if isinstance(v, str):
        n += len(v.encode())
    elif v is not None:
        n += 8
    if x is not None:
        n += len(x.encode())
    return n


# The same measure in SQL, for recounting a lane at start.
ROW_BYTES_SQL: Final = (
    f"{ROW_OVERHEAD} + length(CAST(id AS BLOB)) + coalesce(length(CAST(x AS BLOB)), 0)"
    " + CASE typeof(v) WHEN 'text' THEN length(CAST(v AS BLOB)) WHEN 'null' THEN 0 ELSE 8 END"
)


def decode_row(row: Row, series: SeriesKey) -> Record:
    """Rebuild the record stored in ``row`` whose series is ``series``."""
    seq, _todo, _sid, ts, rid, v, x = row
    q: Any = "good"
    tsd = sev = attrs = None
    if series.vbool and v is not None:
        v = bool(v)
    if x is not None:
        try:
            extras = json.loads(x)
        except ValueError as exc:
            raise CodecError(f"seq {seq}: bad extras column: {exc}") from exc
        if not isinstance(extras, dict):
            raise CodecError(f"seq {seq}: extras column is not an object")
        q = extras.get("q", "good")
        tsd = extras.get("tsd")
        sev = extras.get("sev")
        attrs = extras.get("attrs")
        if extras.get("nan"):
            v = math.nan
    kind: Any = series.kind
    return Record(
        gw=series.gw,
        dev=series.dev,
        cls=series.cls,
        pt=series.pt,
        kind=kind,
        v=v,
        ts=ts,
        q=q,
        u=series.u,
        tsd=tsd,
        sev=sev,
        attrs=attrs,
        id=decode_id(rid),
        seq=seq,
    )


def lane_of(rec: Record) -> str:
    try:
        return LANE_OF_KIND[rec.kind]
    except KeyError:
        raise CodecError(f"unknown record kind {rec.kind!r}") from None


_FAST_VALUE: Final = frozenset({float, str, bool, type(None)})


def check_record(rec: object) -> str | None:
    """Why ``rec`` cannot be stored, or ``None``. Cheap: runs on the producer's side."""
    if (
        rec.__class__ is Record
        and (
            rec.v.__class__ in _FAST_VALUE
            or rec.v.__class__ is int and -(1 << 63) <= rec.v < (1 << 63)
        )
        and rec.ts.__class__ is float
        and rec.ts - rec.ts == 0.0  # finite
        and rec.kind in LANE_OF_KIND
        and rec.id.__class__ is str
        and rec.id
        and not rec.attrs
        and rec.tsd is None
        and rec.sev is None
        and rec.dev.__class__ is str
        and rec.gw.__class__ is str
        and rec.cls.__class__ is str
        and rec.pt.__class__ is str
    ):
        return None
    if not isinstance(rec, Record):
        return f"not a Record: {type(rec).__name__}"
    if rec.kind not in LANE_OF_KIND:
        return f"unknown kind {rec.kind!r}"
    ts = rec.ts
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        return f"bad ts {ts!r}"
    if not isinstance(rec.id, str) or not rec.id:
        return "missing id"
    for name in ("gw", "dev", "cls", "pt"):
        if not isinstance(getattr(rec, name), str):
            return f"{name} is not a string"
    v = rec.v
    if v is not None and not isinstance(v, bool | int | float | str):
        return f"value of type {type(v).__name__}"
    if isinstance(v, int) and not isinstance(v, bool) and not -(1 << 63) <= v < (1 << 63):
        return "integer value out of the 64-bit range"
    if rec.attrs is not None and not isinstance(rec.attrs, dict):
        return f"attrs is a {type(rec.attrs).__name__}, expected an object"
    if rec.attrs or rec.tsd is not None or rec.sev is not None:
        try:
            encode_extras(rec)
        except (TypeError, ValueError) as exc:
            return f"extras cannot be encoded as JSON: {exc}"
    return None
