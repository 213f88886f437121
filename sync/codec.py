"""Pure encoding and parsing for the uplinks: batch envelopes and downlink commands.

No I/O here; everything is unit-tested with byte vectors.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.record import Record, envelope

GZIP_MAGIC = b"\x1f\x8b"
MAX_COMMAND_BYTES = 64 * 1024
MAX_ID_LEN = 128
COMMAND_KEYS = frozenset({"id", "device", "point", "value", "deadline"})


def encode_batch(
    gw: str, batch_id: str, records: Sequence[Record], *, hist: bool, gzip: bool = False
) -> bytes:
    """The envelope ``{gw, batch_id, hist, records}`` as compact UTF-8 JSON, optionally
    gzip-compressed (a gzip member starts with 1f 8b, which JSON never does)."""
    body = envelope(gw, batch_id, [r.to_dict() for r in records], hist)
    data = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if gzip:
        # wbits=31: gzip container; level 5 trades a little ratio for speed.
        comp = zlib.compressobj(5, zlib.DEFLATED, 31)
        data = comp.compress(data) + comp.flush()
    return data


def decode_payload(data: bytes) -> Any:
    """Inverse of :func:`encode_batch` (gzip is detected by its magic bytes)."""
    if data[:2] == GZIP_MAGIC:
        data = zlib.decompress(data, 31)
    return json.loads(data)


def topic(prefix: str, gw: str, leaf: str) -> str:
    return f"{prefix}/{gw}/{leaf}"


class CommandError(ValueError):
    """A command that cannot be handed to the core. ``command_id`` is set when an id could
    be recovered from the payload, so that a ``rejected`` result can be published."""

    def __init__(self, reason: str, command_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
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
