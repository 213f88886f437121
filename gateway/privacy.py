"""The edge privacy policy: what personal data may leave the device drivers.

Pure (no I/O): the pipeline calls :meth:`PrivacyPolicy.apply` on every record BEFORE the
buffer, so raw personal data never reaches the disk or the platform unless the site opts
out explicitly (``allow_raw_personal_data = true``).

Configuration (the ``[privacy]`` table of ``gateway.toml``)::

    [privacy]
    hmac_key = { credential = "privacy-key" }     # per-community secret, >= 16 characters
    allow_raw_personal_data = false               # true turns the safe defaults OFF

    [[privacy.rules]]                             # site rules, most specific wins
    class = "access_control"                      # a class or "*"
    point = "access_granted"                      # a point or "*"
    field = "attrs.person_id"                     # "v", "record" or "attrs.<key>[.<key>...]"
    action = "hmac"                               # drop | hmac | mask | generalise | aggregate

Field selectors:

* ``v`` -- the record's value;
* ``record`` -- the whole record (actions ``drop`` and ``aggregate`` only);
* ``attrs.<key>`` -- that attribute key at ANY depth of ``attrs`` (a face image nested in
  ``attrs.person.face`` is caught by ``attrs.face``);
* ``attrs.<a>.<b>`` -- exactly that nested path.

Actions:

* ``drop`` -- remove the field (or the whole record);
* ``hmac`` -- replace by ``hm_`` + 26 base32 characters of HMAC-SHA256 keyed with the
  community key, so the same person gives the same token while low-entropy identifiers
  cannot be brute-forced back without the key. Without a key the field is dropped (fail
  closed) and counted;
* ``mask`` -- ``mask = "cn_id"`` (``110105********1234``), ``"mobile"`` (``138****5678``),
  ``"plate"`` (``川A·***5``), ``"name"`` (``张*``), ``"all"`` (``***``) or ``"auto"`` (any of
  the patterns found in the text, else ``***``);
* ``generalise`` -- ``to = "building"`` (room ``3-2-1201`` -> ``3``) or ``"unit"``
  (-> ``3-2``); an unparsable value is dropped;
* ``aggregate`` -- (``field = "record"``) the record is not forwarded; instead a count per
  device (door) and point per ``interval`` is emitted as point ``into`` (default
  ``access_count``) when the window closes (:meth:`PrivacyPolicy.flush_aggregates`).

Safe defaults (unless ``allow_raw_personal_data``): access-control person identifiers are
HMAC'd, names and addresses dropped, face images/templates and snapshots dropped, plates
masked, rooms generalised to the building, and in every string of every class Chinese
resident ID numbers (valid check digit), mobile numbers and plates are masked where they
appear; bytes, base64/hex images and long numeric vectors (face features) are dropped.
A site rule for a field replaces the default for that field.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.metrics import PRIVACY_ACTIONS
from gateway.record import Record
from gateway.types import Duration, Secret

__all__ = [
    "PRIVACY_ACTIONS",
    "PrivacyConfig",
    "PrivacyPolicy",
    "PrivacyRule",
    "cn_id_valid",
    "generalise_room",
    "hmac_token",
    "mask_cn_id",
    "mask_mobile",
    "mask_name",
    "mask_plate",
    "scrub_text",
]

Action = Literal["drop", "hmac", "mask", "generalise", "aggregate"]
MaskKind = Literal["cn_id", "mobile", "plate", "name", "all", "auto"]
GeneraliseLevel = Literal["building", "unit"]

MIN_KEY_LENGTH: Final = 16
TOKEN_PREFIX: Final = "hm_"
AGGREGATE_POINT: Final = "access_count"
DEFAULT_AGGREGATE_INTERVAL: Final = 900.0

# ---------------------------------------------------------------------------------------
# configuration model

_FIELD_RE = re.compile(r"^(v|record|attrs(\.[^.\s]+)+)$")


class PrivacyRule(BaseModel):
    """One ``[[privacy.rules]]`` entry."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    cls: str = Field(default="*", alias="class", min_length=1)
    point: str = Field(default="*", min_length=1)
    field: str
    action: Action
    mask: MaskKind | None = None
    to: GeneraliseLevel | None = None
    interval: Duration | None = None
    into: str | None = None

    @model_validator(mode="after")
    def _check(self) -> PrivacyRule:
        if not _FIELD_RE.fullmatch(self.field):
            raise ValueError(
                f"field {self.field!r}: expected 'v', 'record' or 'attrs.<key>' "
                "(nested keys separated by dots)"
            )
        if self.field == "record" and self.action not in ("drop", "aggregate"):
            raise ValueError(
                f"field 'record' takes action 'drop' or 'aggregate', not {self.action!r}"
            )
        if self.action == "aggregate" and self.field != "record":
            raise ValueError("action 'aggregate' needs field = 'record'")
        if self.mask is not None and self.action != "mask":
            raise ValueError("'mask' only applies to action = 'mask'")
        if self.to is not None and self.action != "generalise":
            raise ValueError("'to' only applies to action = 'generalise'")
        if (self.interval is not None or self.into is not None) and self.action != "aggregate":
            raise ValueError("'interval' and 'into' only apply to action = 'aggregate'")
        if self.interval is not None and self.interval <= 0:
            raise ValueError("'interval' must be positive")
        return self

    @property
    def specificity(self) -> int:
        return (2 if self.cls != "*" else 0) + (1 if self.point != "*" else 0)

    def matches(self, cls: str, point: str) -> bool:
        return self.cls in ("*", cls) and self.point in ("*", point)

    def param(self) -> str:
        if self.action == "mask":
            return self.mask or "auto"
        if self.action == "generalise":
            return self.to or "building"
        if self.action == "aggregate":
            interval = self.interval if self.interval is not None else DEFAULT_AGGREGATE_INTERVAL
            return f"into {self.into or AGGREGATE_POINT} every {interval:g}s"
        return ""


class PrivacyConfig(BaseModel):
    """The ``[privacy]`` table of ``gateway.toml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hmac_key: Secret | None = None
    allow_raw_personal_data: bool = False
    rules: list[PrivacyRule] = []

    @model_validator(mode="after")
    def _check_key(self) -> PrivacyConfig:
        if self.hmac_key is not None and len(self.hmac_key.get_secret_value()) < MIN_KEY_LENGTH:
            raise ValueError(
                f"hmac_key is too short: use at least {MIN_KEY_LENGTH} random characters "
                "(e.g. the output of `openssl rand -base64 32`)"
            )
        return self


# ---------------------------------------------------------------------------------------
# pure maskers

_ID_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK: Final = "10X98765432"


def cn_id_check_digit(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of a resident ID number's first 17 digits."""
    total = sum(int(c) * w for c, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11]


def cn_id_valid(value: str) -> bool:
    """True for an 18-character resident ID number whose check character is right."""
    if len(value) != 18 or not value[:17].isdigit() or not value[:17].isascii():
        return False
    return cn_id_check_digit(value[:17]) == value[17].upper()


def mask_cn_id(value: str) -> str:
    """``110105194912310021`` -> ``110105********0021`` (region and last four kept)."""
    digits = re.sub(r"[\s-]", "", value)
    if len(digits) != 18:
        return "***"
    return digits[:6] + "*" * 8 + digits[14:].upper()


def mask_mobile(value: str) -> str:
    """``13812345678`` (optionally with +86 and separators) -> ``138****5678``."""
    digits = re.sub(r"\D", "", value)
    if len(digits) == 13 and digits.startswith("86"):
        digits = digits[2:]
    elif len(digits) == 15 and digits.startswith("0086"):
        digits = digits[4:]
    if len(digits) != 11:
        return "***"
    return digits[:3] + "****" + digits[7:]


_PROVINCES: Final = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼使领"
_PLATE_SEP: Final = "·•・.\\- "
_PLATE_PATTERN: Final = (
    f"[{_PROVINCES}][A-Za-z][{_PLATE_SEP}]?[A-Za-z0-9]{{4,5}}[A-Za-z0-9挂学警港澳领使]"
)
_PLATE_RE = re.compile(f"^{_PLATE_PATTERN}$")


def mask_plate(value: str) -> str:
    """``川A12345`` / ``川AD12345`` / ``川A·12345`` -> ``川A·***5``."""
    plate = value.strip()
    if not _PLATE_RE.match(plate):
        return "***"
    return f"{plate[0]}{plate[1].upper()}·***{plate[-1].upper()}"


def mask_name(value: str) -> str:
    """``张三`` -> ``张*``; ``Li Wei`` -> ``L*****``."""
    name = value.strip()
    if not name:
        return ""
    return name[0] + "*" * max(1, len(name) - 1)


_ROOM_PART_RE = re.compile(r"[0-9]+|[A-Za-z]+")


def generalise_room(value: str, to: GeneraliseLevel = "building") -> str | None:
    """``3-2-1201`` / ``3栋2单元1201室`` -> ``3`` (building) or ``3-2`` (unit).

    A value without at least building, unit and room (or building and room for
    ``to = "building"``) is not recognised as a room: ``None``.
    """
    parts = _ROOM_PART_RE.findall(value)
    need = 2 if to == "building" else 3
    if len(parts) < need or len(parts) > 4:
        return None
    return parts[0] if to == "building" else f"{parts[0]}-{parts[1]}"


_SCAN_RE = re.compile(
    r"(?P<id>(?<![0-9])[1-9][0-9]{5}[\s-]?[0-9]{8}[\s-]?[0-9]{3}[0-9Xx](?![0-9]))"
    r"|(?P<mobile>(?<![0-9])(?:(?:\+|00)?86[\s-]?)?1[3-9][0-9](?:[\s-]?[0-9]{4}){2}(?![0-9]))"
    f"|(?P<plate>{_PLATE_PATTERN})"
)


def _scan_repl(found: list[str]) -> Callable[[re.Match[str]], str]:
    def repl(m: re.Match[str]) -> str:
        kind = m.lastgroup or ""
        text = m.group(0)
        if kind == "id":
            if not cn_id_valid(re.sub(r"[\s-]", "", text)):
                return text
            found.append("cn_id")
            return mask_cn_id(text)
        if kind == "mobile":
            found.append("mobile")
            return mask_mobile(text)
        found.append("plate")
        return mask_plate(text)

    return repl


def scrub_text(text: str) -> tuple[str, list[str]]:
    """Mask every ID number, mobile number and plate in ``text``.

    Returns the new text and the kinds found (``cn_id``, ``mobile``, ``plate``), in order.
    """
    found: list[str] = []
    if len(text) < 7:  # shorter than any plate: nothing to find
        return text, found
    return _SCAN_RE.sub(_scan_repl(found), text), found


def mask_value(value: str, kind: MaskKind) -> str:
    if kind == "cn_id":
        return mask_cn_id(value) if cn_id_valid(re.sub(r"[\s-]", "", value)) else "***"
    if kind == "mobile":
        return mask_mobile(value)
    if kind == "plate":
        return mask_plate(value)
    if kind == "name":
        return mask_name(value)
    if kind == "auto":
        text, found = scrub_text(value)
        return text if found else "***"
    return "***"


def hmac_token(key: bytes, community: str, value: str) -> str:
    """``hm_`` + 26 base32 characters (128 bits) of HMAC-SHA256(key, community | value)."""
    msg = b"edge-gw-privacy\x00" + community.encode() + b"\x00" + value.encode()
    digest = hmac.new(key, msg, hashlib.sha256).digest()[:16]
    return TOKEN_PREFIX + base64.b32encode(digest).decode("ascii").rstrip("=").lower()


# ---------------------------------------------------------------------------------------
# binary / image detection

_B64_RE = re.compile(r"^[A-Za-z0-9+/_\-\s]+={0,2}$")
_HEX_RE = re.compile(r"^[0-9A-Fa-f]+$")
_B64_IMAGE_PREFIXES: Final = ("/9j/", "iVBORw0KGgo", "R0lGOD", "UklGR", "Qk")
_HEX_IMAGE_PREFIXES: Final = ("ffd8ff", "89504e47", "47494638", "52494646", "424d")


def is_binary_blob(value: object) -> bool:
    """Bytes, a data: URI, a base64 or hex image, a long base64 run or a numeric vector."""
    if isinstance(value, bytes | bytearray | memoryview):
        return True
    if isinstance(value, str):
        n = len(value)
        if n < 64:
            return False
        head = value[:64].lstrip()
        if head.startswith("data:") and ";base64," in head:
            return True
        if head.startswith(_B64_IMAGE_PREFIXES) and _B64_RE.match(value):
            return True
        if head[:8].lower().startswith(_HEX_IMAGE_PREFIXES) and _HEX_RE.match(value):
            return True
        return n >= 256 and " " not in value and _B64_RE.match(value) is not None
    if isinstance(value, list | tuple) and len(value) >= 64:
        return all(isinstance(x, int | float) and not isinstance(x, bool) for x in value)
    return False


# ---------------------------------------------------------------------------------------
# built-in safe defaults


def _default(
    cls: str, point: str, keys: Iterable[str], action: Action, **kw: Any
) -> list[PrivacyRule]:
    return [
        PrivacyRule.model_validate(
            {
                "class": cls,
                "point": point,
                "field": k if k in ("v", "record") else f"attrs.{k}",
                "action": action,
                **kw,
            }
        )
        for k in keys
    ]


DEFAULT_RULES: Final[tuple[PrivacyRule, ...]] = tuple(
    _default(
        "access_control",
        "*",
        ("person_id", "card_no", "card_id", "id_number", "id_no", "phone", "mobile", "user_id"),
        "hmac",
    )
    + _default(
        "*",
        "*",
        (
            "name",
            "person_name",
            "full_name",
            "resident_name",
            "visitor_name",
            "owner_name",
            "resident",
            "householder",
            "householder_name",
            "tenant",
            "tenant_name",
            "contact_name",
            "caller_name",
            "user_name",
            "address",
        ),
        "drop",
    )
    + _default(
        "*",
        "*",
        (
            "face",
            "face_image",
            "face_template",
            "face_feature",
            "face_pic",
            "portrait",
            "template",
            "fingerprint",
        ),
        "drop",
    )
    + _default(
        "*",
        "*",
        (
            "snapshot",
            "snapshot_url",
            "snapshot_uri",
            "snapshot_b64",
            "picture",
            "image",
            "image_url",
            "photo",
        ),
        "drop",
    )
    + _default(
        "*", "*", ("plate", "plate_no", "plate_number", "license_plate"), "mask", mask="plate"
    )
    + _default("parking_space", "vehicle_entry", ("v",), "mask", mask="plate")
    + _default("*", "*", ("room", "room_no"), "generalise", to="building")
)


# ---------------------------------------------------------------------------------------
# the compiled policy

_DROP: Final = object()  # sentinel: remove this field


@dataclasses.dataclass(frozen=True, slots=True)
class _Op:
    """One field operation of a plan; ``label`` is the metric's bounded field label."""

    label: str
    action: Action
    rule: PrivacyRule
    source: str  # "default" | "site"


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    record_op: _Op | None
    v_op: _Op | None
    key_ops: dict[str, _Op]  # attrs.<key> at any depth (lower-cased key)
    path_ops: dict[tuple[str, ...], _Op]  # exact nested paths
    scan: bool  # pattern/binary detection on unhandled strings

    @property
    def trivial(self) -> bool:
        return self.record_op is None and self.v_op is None


@dataclasses.dataclass(slots=True)
class _Window:
    gw: str
    count: int


class PrivacyPolicy:
    """Compiled privacy policy. ``apply`` is called for every record, before the buffer."""

    _MAX_PLANS: Final = 4096

    def __init__(self, config: PrivacyConfig, *, community: str) -> None:
        self.config = config
        self.community = community
        self._key: bytes | None = (
            config.hmac_key.get_secret_value().encode() if config.hmac_key is not None else None
        )
        self._defaults: tuple[PrivacyRule, ...] = (
            () if config.allow_raw_personal_data else DEFAULT_RULES
        )
        self._scan = not config.allow_raw_personal_data
        self._site: tuple[PrivacyRule, ...] = tuple(config.rules)
        self._plans: dict[tuple[str, str], _Plan] = {}
        self._windows: dict[tuple[float, float, str, str, str, str], _Window] = {}
        self._counters: dict[tuple[str, str], Any] = {}

    # -- plan compilation ---------------------------------------------------------------

    @staticmethod
    def _pick(rules: Iterable[PrivacyRule], cls: str, point: str) -> dict[str, PrivacyRule]:
        """Most specific matching rule per field selector (later rules win ties)."""
        best: dict[str, PrivacyRule] = {}
        for rule in rules:
            if not rule.matches(cls, point):
                continue
            cur = best.get(rule.field)
            if cur is None or rule.specificity >= cur.specificity:
                best[rule.field] = rule
        return best

    def _plan(self, cls: str, point: str) -> _Plan:
        plan = self._plans.get((cls, point))
        if plan is not None:
            return plan
        chosen: dict[str, _Op] = {
            f: _Op(f, r.action, r, "default")
            for f, r in self._pick(self._defaults, cls, point).items()
        }
        for f, r in self._pick(self._site, cls, point).items():
            chosen[f] = _Op(f, r.action, r, "site")
        key_ops: dict[str, _Op] = {}
        path_ops: dict[tuple[str, ...], _Op] = {}
        for f, op in chosen.items():
            if f.startswith("attrs."):
                path = tuple(f.split(".")[1:])
                if len(path) == 1:
                    key_ops[path[0].lower()] = op
                else:
                    path_ops[path] = op
        plan = _Plan(
            record_op=chosen.get("record"),
            v_op=chosen.get("v"),
            key_ops=key_ops,
            path_ops=path_ops,
            scan=self._scan,
        )
        if len(self._plans) >= self._MAX_PLANS:
            self._plans.clear()
        self._plans[(cls, point)] = plan
        return plan

    # -- metrics ------------------------------------------------------------------------

    def _count(self, field: str, action: str) -> None:
        child = self._counters.get((field, action))
        if child is None:
            child = PRIVACY_ACTIONS.labels(field=field, action=action)
            self._counters[(field, action)] = child
        child.inc()

    # -- field processing ---------------------------------------------------------------

    def _apply_op(self, op: _Op, value: Any) -> Any:
        """The processed value of a field, or ``_DROP``."""
        action = op.action
        if action == "drop":
            self._count(op.label, "drop")
            return _DROP
        if action == "hmac":
            if self._key is None or value is None:
                self._count(op.label, "fail_closed" if self._key is None else "drop")
                return _DROP
            if isinstance(value, dict | list | tuple | bytes | bytearray | memoryview):
                self._count(op.label, "drop")  # not an identifier: never hash a blob
                return _DROP
            self._count(op.label, "hmac")
            return hmac_token(self._key, self.community, str(value).strip())
        if action == "mask":
            if isinstance(value, bool) or value is None:
                self._count(op.label, "drop")
                return _DROP
            if not isinstance(value, str | int | float):
                self._count(op.label, "drop")
                return _DROP
            self._count(op.label, "mask")
            return mask_value(str(value), op.rule.mask or "auto")
        if action == "generalise":
            out = (
                generalise_room(str(value), op.rule.to or "building")
                if isinstance(value, str | int) and not isinstance(value, bool)
                else None
            )
            if out is None:
                self._count(op.label, "fail_closed")
                return _DROP
            self._count(op.label, "generalise")
            return out
        # aggregate on a field is rejected by the config model; be safe anyway
        self._count(op.label, "drop")
        return _DROP

    def _scan_value(self, value: Any) -> Any:
        """Detection on a field no rule handles: blobs dropped, patterns masked."""
        if isinstance(value, str):
            if is_binary_blob(value):
                self._count("detected:binary", "drop")
                return _DROP
            text, found = scrub_text(value)
            for kind in found:
                self._count(f"detected:{kind}", "mask")
            return text
        if isinstance(value, bytes | bytearray | memoryview):
            self._count("detected:binary", "drop")
            return _DROP
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**10:
            # an identifier sent as a JSON number: masked like its text form
            text, found = scrub_text(str(value))
            if found:
                for kind in found:
                    self._count(f"detected:{kind}", "mask")
                return text
        return value

    def _walk(self, plan: _Plan, value: Any, path: tuple[str, ...]) -> Any:
        if isinstance(value, dict):
            out: dict[str, Any] = {}
            for k, v in value.items():
                key = str(k)
                sub = (*path, key)
                op = plan.path_ops.get(sub) if plan.path_ops else None
                if op is None:
                    op = plan.key_ops.get(key.lower())
                new = self._apply_op(op, v) if op is not None else self._walk(plan, v, sub)
                if new is not _DROP:
                    out[key] = new
            return out
        if isinstance(value, list | tuple):
            if plan.scan and is_binary_blob(value):
                self._count("detected:binary", "drop")
                return _DROP
            items = [self._walk(plan, v, path) for v in value]
            return [v for v in items if v is not _DROP]
        if plan.scan:
            return self._scan_value(value)
        if isinstance(value, bytes | bytearray | memoryview):
            # raw bytes are never JSON-serialisable: drop even when raw data is allowed
            self._count("detected:binary", "drop")
            return _DROP
        return value

    # -- public API ---------------------------------------------------------------------

    def apply(self, record: Record) -> Record | None:
        """The record with ``v`` and ``attrs`` processed, or ``None`` when it is dropped.

        Never mutates ``record``; returns the same object when nothing had to change.
        """
        plan = self._plan(record.cls, record.pt)
        attrs = record.attrs
        v = record.v
        if plan.trivial and not attrs and not (plan.scan and isinstance(v, str)):
            return record
        rop = plan.record_op
        if rop is not None:
            if rop.action == "aggregate":
                self._aggregate(rop, record)
            else:
                self._count("record", "drop")
            return None
        changed = False
        if plan.v_op is not None:
            new_v = self._apply_op(plan.v_op, v)
            if new_v is _DROP:
                return None  # a record without its value carries nothing
            changed = new_v != v or type(new_v) is not type(v)
            v = new_v
        elif plan.scan and isinstance(v, str):
            new_v = self._scan_value(v)
            if new_v is _DROP:
                return None
            changed = new_v != v
            v = new_v
        new_attrs = attrs
        if attrs:
            new_attrs = self._walk(plan, attrs, ())
            if new_attrs != attrs:
                changed = True
            if not new_attrs:
                new_attrs = None
        if not changed:
            return record
        return dataclasses.replace(record, v=v, attrs=new_attrs)

    def _aggregate(self, op: _Op, record: Record) -> None:
        rule = op.rule
        interval = rule.interval if rule.interval is not None else DEFAULT_AGGREGATE_INTERVAL
        start = math.floor(record.ts / interval) * interval
        into = rule.into or AGGREGATE_POINT
        key = (start, interval, record.cls, record.dev, record.pt, into)
        win = self._windows.get(key)
        if win is None:
            self._windows[key] = _Window(gw=record.gw, count=1)
        else:
            win.count += 1
        self._count("record", "aggregate")

    @property
    def pending_aggregates(self) -> int:
        """Open aggregate windows (emitted by ``flush_aggregates`` when they close)."""
        return len(self._windows)

    def flush_aggregates(self, now: float) -> list[Record]:
        """Count records of the windows that closed by ``now`` (``math.inf``: all, at stop).

        Each window gives one telemetry record: ``dev`` = the door, ``pt`` = ``into``,
        ``v`` = number of events, ``ts`` = the window end, attrs ``{event, window_start,
        window_s}``.
        """
        out: list[Record] = []
        for key in sorted(k for k in self._windows if k[0] + k[1] <= now):
            start, interval, cls, dev, pt, into = key
            win = self._windows.pop(key)
            out.append(
                Record(
                    gw=win.gw,
                    dev=dev,
                    cls=cls,
                    pt=into,
                    kind="telemetry",
                    v=win.count,
                    ts=round(start + interval, 3),
                    attrs={"event": pt, "window_start": start, "window_s": interval},
                )
            )
        return out

    # -- reporting ----------------------------------------------------------------------

    @property
    def has_key(self) -> bool:
        return self._key is not None

    def warnings(self) -> list[str]:
        """Problems ``edge-gateway check`` must print (never includes the key)."""
        out: list[str] = []
        rules = self._site + self._defaults
        n_hmac = sum(1 for r in rules if r.action == "hmac")
        if self._key is None and n_hmac:
            out.append(
                f"privacy.hmac_key is not set: the {n_hmac} hmac rule(s) DROP their fields "
                '(fail closed); set hmac_key = { credential = "privacy-key" }'
            )
        if self.config.allow_raw_personal_data:
            out.append(
                "privacy.allow_raw_personal_data = true: safe defaults and ID/mobile/plate "
                "detection are OFF; raw personal data may be stored and uploaded"
            )
        return out

    def describe(self) -> list[dict[str, str]]:
        """The effective policy, one row per rule, site rules first, for ``check``."""
        rows: list[dict[str, str]] = []
        overridden = {(r.cls, r.point, r.field) for r in self._site}
        for source, rules in (("site", self._site), ("default", self._defaults)):
            for r in rules:
                if source == "default" and (r.cls, r.point, r.field) in overridden:
                    continue
                note = ""
                if r.action == "hmac" and self._key is None:
                    note = "no hmac_key: field dropped (fail closed)"
                rows.append(
                    {
                        "class": r.cls,
                        "point": r.point,
                        "field": r.field,
                        "action": r.action,
                        "param": r.param(),
                        "source": source,
                        "note": note,
                    }
                )
        if self._scan:
            rows.append(
                {
                    "class": "*",
                    "point": "*",
                    "field": "any string",
                    "action": "mask",
                    "param": "cn_id, mobile, plate (detected by pattern)",
                    "source": "default",
                    "note": "",
                }
            )
            rows.append(
                {
                    "class": "*",
                    "point": "*",
                    "field": "any value",
                    "action": "drop",
                    "param": "bytes, base64/hex images, numeric vectors",
                    "source": "default",
                    "note": "",
                }
            )
        return rows
