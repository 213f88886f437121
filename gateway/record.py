"""The canonical record: one value of one point of one device at one time.

This is a leaf module (standard library only) so that ``buffer/`` and ``sync/`` can use
it without pulling in the rest of the core. Field names are the wire names (gateway/ARCHITECTURE.md).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal

Kind = Literal["telemetry", "state", "event", "lifecycle"]
Quality = Literal["good", "uncertain", "bad", "stale"]
Severity = Literal["critical", "major", "minor", "info"]
Value = float | int | bool | str

KINDS: Final = ("telemetry", "state", "event", "lifecycle")
QUALITIES: Final = ("good", "uncertain", "bad", "stale")
SEVERITIES: Final = ("critical", "major", "minor", "info")

# Buffer lanes, highest priority first. Lifecycle shares the state lane.
LANES: Final = ("event", "state", "telemetry")
LANE_OF_KIND: Final[dict[str, str]] = {
    "event": "event",
    "lifecycle": "state",
    "state": "state",
    "telemetry": "telemetry",
}

_uuid_lock = threading.Lock()
_last_ms = 0
_counter = 0
_prefix = ""  # "tttttttt-tttt-7" for _last_ms: time fields and the version digit
_hex = ""  # random hex digits from os.urandom, consumed 16 at a time
_hex_pos = 0
_HEX_POOL_BYTES = 8 * 1024  # one syscall per 1,024 ids
_VARIANT = "89ab89ab89ab89ab"  # hex digit -> the same low two bits under variant 0b10


def uuid7_many(n: int, now_ms: int | None = None) -> list[str]:
    """Return ``n`` UUIDv7 (RFC 9562) strings: 48-bit Unix ms time, then random bits.

    Within one millisecond a 12-bit counter in ``rand_a`` (seeded randomly each new
    millisecond) keeps ids made by this process strictly increasing, so ids sort in capture
    order. ``rand_b`` is 62 bits from a pool of ``os.urandom`` hex digits. The strings are
    assembled from the cached time prefix, the counter and pool digits (no 128-bit integer
    formatting), with one clock read and one lock for the batch: this runs for every record.
    """
    global _last_ms, _counter, _prefix, _hex, _hex_pos
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    out: list[str] = []
    with _uuid_lock:
        for _ in range(n):
            pos = _hex_pos
            if pos + 19 > len(_hex):
                _hex = os.urandom(_HEX_POOL_BYTES).hex()
                pos = 0
            _hex_pos = pos + 19
            if ms <= _last_ms:
                ms = _last_ms
                _counter += 1
                if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                    ms += 1
                    _counter = 0
            else:
                # random start, leaving room for 3,000+ ids in this millisecond
                _counter = int(_hex[pos + 16 : pos + 19], 16) & 0x3FF
            if ms != _last_ms or not _prefix:
                t = f"{ms & 0xFFFFFFFFFFFF:012x}"
                _prefix = f"{t[:8]}-{t[8:]}-7"
            _last_ms = ms
            r = _hex
            out.append(
                f"{_prefix}{_counter:03x}-{_VARIANT[int(r[pos], 16)]}{r[pos + 1 : pos + 4]}-{r[pos + 4 : pos + 16]}"
            )
    return out


def uuid7(now_ms: int | None = None) -> str:
    """One UUIDv7 string (see :func:`uuid7_many`)."""
    return uuid7_many(1, now_ms)[0]


def uuid7_time(value: str) -> float:
    """Epoch seconds encoded in a UUIDv7."""
    return (uuid.UUID(value).int >> 80) / 1000.0


@dataclass(slots=True)
class Record:
    """One canonical record. ``seq`` is 0 until the buffer commits the record."""

    gw: str
    dev: str
    cls: str
    pt: str
    kind: Kind
    v: Value | None
    ts: float
    q: Quality = "good"
    u: str | None = None
    tsd: float | None = None
    sev: Severity | None = None
    attrs: dict[str, Any] | None = None
    id: str = field(default_factory=uuid7)
    seq: int = 0

    @property
    def lane(self) -> str:
        return LANE_OF_KIND[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """Wire form: absent optional fields are left out."""
        d: dict[str, Any] = {
            "id": self.id,
            "seq": self.seq,
            "gw": self.gw,
            "dev": self.dev,
            "cls": self.cls,
            "pt": self.pt,
            "kind": self.kind,
            "v": self.v,
        }
        if self.u is not None:
            d["u"] = self.u
        d["q"] = self.q
        d["ts"] = self.ts
        if self.tsd is not None:
            d["tsd"] = self.tsd
        if self.sev is not None:
            d["sev"] = self.sev
        if self.attrs:
            d["attrs"] = self.attrs
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        return cls(
            id=d["id"],
            seq=int(d.get("seq", 0)),
            gw=d["gw"],
            dev=d["dev"],
            cls=d["cls"],
            pt=d["pt"],
            kind=d["kind"],
            v=d.get("v"),
            u=d.get("u"),
            q=d.get("q", "good"),
            ts=float(d["ts"]),
            tsd=d.get("tsd"),
            sev=d.get("sev"),
            attrs=d.get("attrs"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Record:
        return cls.from_dict(json.loads(text))


def now() -> float:
    """Acquisition timestamp: UTC epoch seconds rounded to milliseconds."""
    return round(time.time(), 3)


def envelope(gw: str, batch_id: str, records: list[dict[str, Any]], hist: bool) -> dict[str, Any]:
    """The upward batch (gateway/ARCHITECTURE.md): ``{gw, batch_id, hist, records}``."""
    return {"gw": gw, "batch_id": batch_id, "hist": hist, "records": records}
