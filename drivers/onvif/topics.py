"""ONVIF event topics: a registry of pure parsers, one function per topic.

An ONVIF notification (``wsnt:NotificationMessage``) carries a topic such as
``tns1:RuleEngine/CellMotionDetector/Motion`` and a ``tt:Message`` with ``Source``, ``Key``
and ``Data`` sections of ``tt:SimpleItem Name=... Value=...``. This module turns one
notification into a :class:`TopicEvent` (which canonical event it is, whether it became
active or cleared, the rule and source that raised it) without any I/O, so every parser is
unit-tested with captured XML payloads.

Nothing here knows about devices or profiles: :func:`resolve` takes the device's topic
table (built from its profile, see :class:`TopicBinding`) and decides which canonical point
a parsed notification feeds. Topics are compared without their namespace prefix
(``tns1:``, ``tns:``, ``ns0:`` ... differ between cameras for the same topic).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from drivers.onvif import xmlsafe
from gateway.errors import ReasonError

if TYPE_CHECKING:
    from lxml import etree

NS_WSNT = "http://docs.oasis-open.org/wsn/b-2"
NS_TT = "http://www.onvif.org/ver10/schema"
NS_TNS1 = "http://www.onvif.org/ver10/topics"

# Largest notification we parse; anything bigger is a broken or hostile camera.
MAX_PAYLOAD_BYTES = 64 * 1024

TRUE_WORDS = frozenset({"true", "1", "on", "yes", "active"})
FALSE_WORDS = frozenset({"false", "0", "off", "no", "inactive"})


class TopicParseError(ReasonError, ValueError):
    """A notification cannot be understood. ``reason`` is a bounded metric label."""


@dataclass(frozen=True, slots=True)
class Notification:
    """The parts of one ``wsnt:NotificationMessage`` the parsers need."""

    topic: str  # as sent, e.g. "tns1:VideoSource/MotionAlarm"
    operation: str  # PropertyOperation: "Initialized" | "Changed" | "Deleted" | ""
    utc_time: float | None  # the camera's timestamp (epoch seconds), when given
    source: Mapping[str, str] = field(default_factory=dict)
    key: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)
    raw: bytes = b""  # the serialised notification, for "unknown topic" logs

    @property
    def path(self) -> str:
        return topic_path(self.topic)


@dataclass(frozen=True, slots=True)
class TopicEvent:
    """What one notification means, before it is bound to a device's canonical point."""

    kind: str  # canonical meaning: "motion", "tamper", "digital_input", ... or "vendor"
    active: bool
    attrs: dict[str, str | int | float | bool]
    tsd: float | None = None
    initial: bool = False  # sent as PropertyOperation="Initialized" (state sync)


# --------------------------------------------------------------------------- XML helpers


def topic_path(topic: str) -> str:
    """``tns1:RuleEngine/X//.`` -> ``RuleEngine/X``: drop namespace prefixes per level and
    the ConcreteSet ``//.`` suffix; whitespace is ignored."""
    text = "".join(topic.split())
    if text.endswith("//."):
        text = text[:-3]
    parts = []
    for part in text.strip("/").split("/"):
        if not part:
            continue
        parts.append(part.rsplit(":", 1)[-1])
    return "/".join(parts)


def _items(parent: etree._Element | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if parent is None:
        return out
    for item in parent.iter(f"{{{NS_TT}}}SimpleItem"):
        name = item.get("Name")
        if name:
            out[name] = item.get("Value", "")
    return out


def _parse_time(text: str | None) -> float | None:
    if not text:
        return None
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        stamp = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=dt.UTC)
    return round(stamp.timestamp(), 3)


def message_from_element(topic: str, message: etree._Element, raw: bytes = b"") -> Notification:
    """Build a :class:`Notification` from a topic string and a ``tt:Message`` element (or
    the ``wsnt:Message`` wrapper around it)."""
    if message.tag == f"{{{NS_TT}}}Message":
        msg = message
    else:
        found = message.find(f"{{{NS_TT}}}Message")
        if found is None:
            raise TopicParseError("no_message", "notification has no tt:Message")
        msg = found
    if not topic or not topic.strip():
        raise TopicParseError("no_topic", "notification has an empty topic")
    if not raw:
        raw = xmlsafe.tostring(msg)
    return Notification(
        topic=" ".join(topic.split()),
        operation=msg.get("PropertyOperation", ""),
        utc_time=_parse_time(msg.get("UtcTime")),
        source=_items(msg.find(f"{{{NS_TT}}}Source")),
        key=_items(msg.find(f"{{{NS_TT}}}Key")),
        data=_items(msg.find(f"{{{NS_TT}}}Data")),
        raw=raw[:MAX_PAYLOAD_BYTES],
    )


def notification_from_element(el: etree._Element) -> Notification:
    """Parse one ``wsnt:NotificationMessage`` element."""
    if el.tag != f"{{{NS_WSNT}}}NotificationMessage":
        raise TopicParseError("not_notification", f"unexpected element {el.tag!r}")
    topic_el = el.find(f"{{{NS_WSNT}}}Topic")
    if topic_el is None:
        raise TopicParseError("no_topic", "notification has no wsnt:Topic")
    topic = "".join(topic_el.itertext())
    msg_el = el.find(f"{{{NS_WSNT}}}Message")
    if msg_el is None:
        raise TopicParseError("no_message", "notification has no wsnt:Message")
    return message_from_element(topic, msg_el, xmlsafe.tostring(el))


def parse_notifications(payload: bytes) -> list[Notification]:
    """Parse raw XML holding one or more ``wsnt:NotificationMessage`` (a whole
    PullMessagesResponse envelope, or a single notification)."""
    if len(payload) > MAX_PAYLOAD_BYTES * 16:
        raise TopicParseError("too_large", f"{len(payload)} bytes")
    try:
        root = xmlsafe.parse(payload)
    except xmlsafe.MalformedXML as exc:
        raise TopicParseError("malformed_xml", str(exc)) from None
    if root.tag == f"{{{NS_WSNT}}}NotificationMessage":
        return [notification_from_element(root)]
    return [notification_from_element(e) for e in root.iter(f"{{{NS_WSNT}}}NotificationMessage")]


# --------------------------------------------------------------------------- parsers


def parse_bool(text: str | None, item: str) -> bool:
    if text is None:
        raise TopicParseError("missing_item", f"data item {item!r} is missing")
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise TopicParseError("bad_value", f"data item {item!r} is not a boolean: {text[:40]!r}")


def _common_attrs(n: Notification) -> dict[str, str | int | float | bool]:
    attrs: dict[str, str | int | float | bool] = {"topic": n.path}
    rule = n.source.get("Rule")
    if rule:
        attrs["rule"] = rule
    for key in ("VideoSourceConfigurationToken", "VideoSourceToken", "Source", "InputToken"):
        if n.source.get(key):
            attrs["source"] = n.source[key]
            break
    analytics = n.source.get("VideoAnalyticsConfigurationToken")
    if analytics:
        attrs["analytics"] = analytics
    return attrs


def _state_parser(kind: str, item: str) -> Callable[[Notification], TopicEvent]:
    """A parser for topics whose state is one boolean data item."""

    def parse(n: Notification) -> TopicEvent:
        active = parse_bool(n.data.get(item), item)
        return TopicEvent(
            kind, active, _common_attrs(n), n.utc_time, n.operation == "Initialized"
        )

    parse.__name__ = f"parse_{kind}_{item}"
    parse.__doc__ = f"{kind}: data item {item} (boolean)"
    return parse


def parse_motion_alarm(n: Notification) -> TopicEvent:
    """tns1:VideoSource/MotionAlarm -- Source VideoSourceToken, Data State."""
    return _state_parser("motion", "State")(n)


def parse_cell_motion(n: Notification) -> TopicEvent:
    """tns1:RuleEngine/CellMotionDetector/Motion -- Data IsMotion."""
    return _state_parser("motion", "IsMotion")(n)


def parse_scene_change(n: Notification) -> TopicEvent:
    """tns1:VideoSource/GlobalSceneChange/*, ImageTooBlurry/*, ImageTooDark/*,
    ImageTooBright/* -- Data State; the condition goes in attrs["condition"]."""
    ev = _state_parser("tamper", "State")(n)
    parts = n.path.split("/")
    if len(parts) >= 2:
        ev.attrs["condition"] = parts[1]
    return ev


def parse_tamper_detector(n: Notification) -> TopicEvent:
    """tns1:RuleEngine/TamperDetector/Tamper -- Data IsTamper."""
    ev = _state_parser("tamper", "IsTamper")(n)
    ev.attrs["condition"] = "TamperDetector"
    return ev


def parse_digital_input(n: Notification) -> TopicEvent:
    """tns1:Device/Trigger/DigitalInput -- Source InputToken, Data LogicalState."""
    ev = _state_parser("digital_input", "LogicalState")(n)
    token = n.source.get("InputToken")
    if token:
        ev.attrs["input"] = token
    return ev


def parse_line_crossed(n: Notification) -> TopicEvent:
    """tns1:RuleEngine/LineDetector/Crossed -- a pulse (Data ObjectId); always active."""
    attrs = _common_attrs(n)
    if "ObjectId" in n.data:
        attrs["object_id"] = n.data["ObjectId"][:64]
    return TopicEvent("line_crossing", True, attrs, n.utc_time, n.operation == "Initialized")


def parse_field_inside(n: Notification) -> TopicEvent:
    """tns1:RuleEngine/FieldDetector/ObjectsInside -- Data IsInside."""
    return _state_parser("intrusion", "IsInside")(n)


Parser = Callable[[Notification], TopicEvent]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    path: str  # prefix-free topic path
    kind: str  # canonical meaning, also the default canonical point
    parser: Parser
    prefix: bool = False  # also matches sub-topics (path/...)


REGISTRY: tuple[TopicSpec, ...] = (
    TopicSpec("VideoSource/MotionAlarm", "motion", parse_motion_alarm),
    TopicSpec("RuleEngine/CellMotionDetector/Motion", "motion", parse_cell_motion),
    TopicSpec("VideoSource/GlobalSceneChange", "tamper", parse_scene_change, prefix=True),
    TopicSpec("VideoSource/ImageTooBlurry", "tamper", parse_scene_change, prefix=True),
    TopicSpec("VideoSource/ImageTooDark", "tamper", parse_scene_change, prefix=True),
    TopicSpec("VideoSource/ImageTooBright", "tamper", parse_scene_change, prefix=True),
    TopicSpec("RuleEngine/TamperDetector/Tamper", "tamper", parse_tamper_detector),
    TopicSpec("Device/Trigger/DigitalInput", "digital_input", parse_digital_input),
    TopicSpec("RuleEngine/LineDetector/Crossed", "line_crossing", parse_line_crossed),
    TopicSpec("RuleEngine/FieldDetector/ObjectsInside", "intrusion", parse_field_inside),
)


def lookup(path: str) -> TopicSpec | None:
    """The registered parser for a prefix-free topic path."""
    for spec in REGISTRY:
        if path == spec.path or (spec.prefix and path.startswith(spec.path + "/")):
            return spec
    return None


def vendor_parser(item: str, kind: str = "vendor") -> Parser:
    """Parser for a vendor topic named in a profile: ``item`` is the boolean data item.

    The special item ``"*pulse"`` marks a topic that only signals occurrences (always
    active), for rules that have no state item."""

    def parse(n: Notification) -> TopicEvent:
        attrs = _common_attrs(n)
        if item == "*pulse":
            active = True
        else:
            value = n.data.get(item)
            if value is None:
                value = n.source.get(item)
            active = parse_bool(value, item)
        return TopicEvent(kind, active, attrs, n.utc_time, n.operation == "Initialized")

    return parse


# --------------------------------------------------------------------------- binding


@dataclass(frozen=True, slots=True)
class TopicBinding:
    """One row of a device's topic table: a topic path feeding a canonical point."""

    path: str  # prefix-free topic path
    point: str
    item: str | None = None  # data item holding the state; None = the registered parser's
    rule: str | None = None  # only notifications of this rule name (Source "Rule")


def make_binding(topic: str, point: str, item: str | None = None, rule: str | None = None) -> TopicBinding:
    return TopicBinding(topic_path(topic), point, item, rule)


def binding_problem(topic: str, item: str | None) -> str | None:
    """Why a profile's topic address cannot work, or None."""
    path = topic_path(topic)
    if not path:
        return "topic is empty"
    if lookup(path) is None and not item:
        return (
            f"topic {path!r} has no built-in parser: give the data item that holds its state "
            "(item = \"State\"), or item = \"*pulse\" for a topic without state"
        )
    return None


@dataclass(frozen=True, slots=True)
class Resolved:
    point: str
    event: TopicEvent


def resolve(n: Notification, table: Iterable[TopicBinding]) -> Resolved | None:
    """Map a notification onto a canonical point through the device's topic table.

    Returns None when the topic is not in the table (the caller logs it once and counts
    it). Raises :class:`TopicParseError` when the topic is known but its payload is not.
    """
    path = n.path
    rule = n.source.get("Rule")
    for b in table:
        spec = lookup(b.path)
        matches = path == b.path or (spec is not None and spec.prefix and path.startswith(b.path + "/"))
        if not matches:
            continue
        if b.rule is not None and b.rule != rule:
            continue
        if b.item is not None:
            ev = vendor_parser(b.item, spec.kind if spec else "vendor")(n)
        elif spec is not None:
            ev = spec.parser(n)
        else:  # pragma: no cover - binding_problem() refuses this at profile load
            raise TopicParseError("no_parser", f"topic {path!r} has no parser and no item")
        return Resolved(b.point, ev)
    return None


def default_table(points: Iterable[str]) -> list[TopicBinding]:
    """Standard topics for the canonical points a device has, used for points a profile
    declares with ``topic = "standard"``."""
    wanted = set(points)
    return [TopicBinding(s.path, s.kind) for s in REGISTRY if s.kind in wanted]
