"""Pure encoding and parsing for the uplinks: batch envelopes and downlink commands.

No I/O here; everything is unit-tested with byte vectors.
"""

from __future__ import annotations

import functools
import json
import json.encoder
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.errors import ReasonError
from gateway.record import Record, envelope

GZIP_MAGIC = b"\x1f\x8b"
MAX_COMMAND_BYTES = 64 * 1024
MAX_ID_LEN = 128
COMMAND_KEYS = frozenset({"id", "device", "point", "value", "deadline"})


_dumps = functools.partial(json.dumps, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_jstr: Callable[[str], str] = json.encoder.encode_basestring  # the C helper json.dumps uses
_int_repr = int.__repr__
_float_repr = float.__repr__
_isfinite = math.isfinite
_QUALITY = {q: _jstr(q) for q in ("good", "uncertain", "bad", "stale")}
_SERIES_CACHE_MAX = 4096
#: JSON text of what every record of one series repeats: (``,"gw":..,"kind":..,"v":``,
#: ``,"u":..,"q":`` or ``,"q":``), keyed by (gw, dev, cls, pt, kind, u).
_series_json: dict[tuple[Any, ...], tuple[str, str]] = {}


def _number(v: Any) -> str:
    cls = v.__class__
    if cls is float:
        if not _isfinite(v):
            raise ValueError(f"Out of range float values are not JSON compliant: {v!r}")
        return _float_repr(v)
    if cls is int:
        return _int_repr(v)
    return _dumps(v)


def _value(v: Any) -> str:
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v.__class__ is str:
        return _jstr(v)
    return _number(v)


def _series(r: Record) -> tuple[str, str]:
    key = (r.gw, r.dev, r.cls, r.pt, r.kind, r.u)
    got = _series_json.get(key)
    if got is None:
        if len(_series_json) >= _SERIES_CACHE_MAX:
            _series_json.clear()
        head = (
            f',"gw":{_value(r.gw)},"dev":{_value(r.dev)},"cls":{_value(r.cls)},'
            f'"pt":{_value(r.pt)},"kind":{_value(r.kind)},"v":'
        )
        tail = ',"q":' if r.u is None else f',"u":{_value(r.u)},"q":'
        got = _series_json[key] = (head, tail)
    return got


def record_json(r: Record) -> str:
    """One record's wire JSON: the same text as ``json.dumps(r.to_dict())`` with compact
    separators and ``ensure_ascii=False``, built without the intermediate dict (the uplink
    encodes every record once, so this is on the drain's hot path)."""
    head, tail = _series(r)
    q = _QUALITY.get(r.q) or _value(r.q)
    text = f'{{"id":{_value(r.id)},"seq":{_number(r.seq)}{head}{_value(r.v)}{tail}{q},"ts":{_number(r.ts)}'
    if r.tsd is not None:
        text += f',"tsd":{_number(r.tsd)}'
    if r.sev is not None:
        text += f',"sev":{_value(r.sev)}'
    if r.attrs:
        text += f',"attrs":{_dumps(r.attrs)}'
    return text + "}"


def encode_batch(
    gw: str, batch_id: str, records: Sequence[Record], *, hist: bool, gzip: bool = False
) -> bytes:
    """The envelope ``{gw, batch_id, hist, records}`` as compact UTF-8 JSON, optionally
    gzip-compressed (a gzip member starts with 1f 8b, which JSON never does).

    Byte for byte what :func:`encode_batch_generic` produces (a property test checks it);
    a value that JSON cannot carry (NaN, infinity, lone surrogates) raises ``ValueError``.
    """
    text = (
        f'{{"gw":{_jstr(gw)},"batch_id":{_jstr(batch_id)},"hist":{"true" if hist else "false"},'
        f'"records":[{",".join([record_json(r) for r in records])}]}}'
    )
    data = text.encode()
    if gzip:
        # wbits=31: gzip container; level 5 trades a little ratio for speed.
        comp = zlib.compressobj(5, zlib.DEFLATED, 31)
        data = comp.compress(data) + comp.flush()
    return data


def encode_batch_generic(gw: str, batch_id: str, records: Sequence[Record], *, hist: bool) -> bytes:
    """The reference encoding of an envelope (``json.dumps`` of the records' dicts)."""
    body = envelope(gw, batch_id, [r.to_dict() for r in records], hist)
    return _dumps(body).encode()


def decode_payload(data: bytes) -> Any:
    """Inverse of :func:`encode_batch` (gzip is detected by its magic bytes)."""
    if data[:2] == GZIP_MAGIC:
        data = zlib.decompress(data, 31)
    return json.loads(data)


def topic(prefix: str, gw: str, leaf: str) -> str:
    return f"{prefix}/{gw}/{leaf}"


class CommandError(ReasonError, ValueError):
    """A command that cannot be handed to the core. ``command_id`` is set when an id could
    be recovered from the payload, so that a ``rejected`` result can be published."""

    def __init__(self, reason: str, command_id: str | None = None) -> None:
        super().__init__(reason)
        self.command_id = command_id


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    device: str
    point: str
    value: Any
    deadline: float | None

    def to_handler_dict(self, *, source: str, received: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "device": self.device,
            "point": self.point,
            "value": self.value,
            "deadline": self.deadline,
            "source": source,
            "received": received,
        }


def parse_deadline(value: Any) -> float | None:
    """A deadline as epoch seconds: a number, or an ISO 8601 string with a time zone."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError("deadline must be epoch seconds or an ISO 8601 time, not a boolean")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"deadline {value!r} is not a valid epoch time")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"deadline {value!r} is not an ISO 8601 time") from None
        if parsed.tzinfo is None:
            raise ValueError(f"deadline {value!r} has no time zone (add Z or +08:00)")
        return parsed.timestamp()
    raise ValueError(f"deadline must be epoch seconds or an ISO 8601 time, got {value!r}")


def _valid_id(value: Any) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LEN and value.isprintable():
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def parse_command(payload: bytes) -> Command:
    """Parse the JSON command ``{"id","device","point","value","deadline"?}``.

    Raises :class:`CommandError`; its ``command_id`` is set whenever the payload was a JSON
    object with a usable ``id``.
    """
    if len(payload) > MAX_COMMAND_BYTES:
        raise CommandError(f"command larger than {MAX_COMMAND_BYTES} bytes")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CommandError(f"command is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise CommandError(f"command must be a JSON object, got {type(doc).__name__}")
    cid = _valid_id(doc.get("id"))
    if cid is None:
        raise CommandError("command has no valid id (a non-empty string)")
    unknown = sorted(set(doc) - COMMAND_KEYS)
    if unknown:
        raise CommandError(f"unknown command keys: {', '.join(unknown)}", cid)
    for key in ("device", "point"):
        val = doc.get(key)
        if not isinstance(val, str) or not val:
            raise CommandError(f"command {key} must be a non-empty string", cid)
    if "value" not in doc:
        raise CommandError("command has no value", cid)
    value = doc["value"]
    if isinstance(value, float) and not math.isfinite(value):
        raise CommandError("command value must be finite", cid)
    if not (value is None or isinstance(value, bool | int | float | str)):
        raise CommandError("command value must be a number, boolean or string", cid)
    try:
        deadline = parse_deadline(doc.get("deadline"))
    except ValueError as exc:
        raise CommandError(str(exc), cid) from None
    return Command(cid, doc["device"], doc["point"], value, deadline)


RESULT_OUTCOMES = ("ok", "rejected", "failed", "expired")


def command_result(
    command_id: str,
    outcome: str,
    *,
    ts: float,
    reason: str | None = None,
    value: Any = None,
) -> dict[str, Any]:
    if outcome not in RESULT_OUTCOMES:
        raise ValueError(f"unknown outcome {outcome!r}")
    out: dict[str, Any] = {"id": command_id, "outcome": outcome}
    if reason is not None:
        out["reason"] = reason
    if value is not None:
        out["value"] = value
    out["ts"] = round(ts, 3)
    return out


def normalise_result(command_id: str, result: Any, *, ts: float) -> dict[str, Any]:
    """Check a handler's answer; a malformed answer becomes a ``failed`` result."""
    if not isinstance(result, dict) or result.get("outcome") not in RESULT_OUTCOMES:
        return command_result(command_id, "failed", ts=ts, reason="internal error: bad result")
    out = dict(result)
    out["id"] = command_id
    out.setdefault("ts", round(ts, 3))
    return out


def encode_json(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=str).encode()
