"""Topic parser registry: captured payloads, malformed XML, unexpected topics, properties."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.onvif import topics
from drivers.onvif.driver import PullFault, parse_pull_response

PAYLOADS = Path(__file__).parent / "payloads"


def one(name: str) -> topics.Notification:
    (n,) = topics.parse_notifications((PAYLOADS / name).read_bytes())
    return n


STANDARD_TABLE = topics.default_table(["motion", "tamper", "digital_input", "line_crossing", "intrusion"])


@pytest.mark.parametrize(
    ("payload", "point", "active", "attrs"),
    [
        ("motion_alarm.xml", "motion", True, {"topic": "VideoSource/MotionAlarm", "source": "VideoSourceToken_1"}),
        (
            "cell_motion.xml",
            "motion",
            False,
            {"topic": "RuleEngine/CellMotionDetector/Motion", "rule": "MyMotionDetectorRule",
             "source": "VideoSourceToken", "analytics": "VideoAnalyticsToken"},
        ),
        (
            "scene_change.xml",
            "tamper",
            True,
            {"topic": "VideoSource/GlobalSceneChange/ImagingService", "source": "vs_1", "condition": "GlobalSceneChange"},
        ),
        (
            "line_crossed.xml",
            "line_crossing",
            True,
            {"topic": "RuleEngine/LineDetector/Crossed", "rule": "NorthFence", "source": "vsc_1",
             "analytics": "va_1", "object_id": "42"},
        ),
        ("field_inside.xml", "intrusion", True, {"topic": "RuleEngine/FieldDetector/ObjectsInside", "rule": "Courtyard", "source": "vsc_1"}),
    ],
)
def test_standard_topics(payload: str, point: str, active: bool, attrs: dict[str, object]) -> None:
    r = topics.resolve(one(payload), STANDARD_TABLE)
    assert r is not None
    assert r.point == point
    assert r.event.active is active
    assert r.event.attrs == attrs
    assert not r.event.initial


def test_times_and_operations() -> None:
    assert one("motion_alarm.xml").utc_time == 1714637730.0
    assert one("cell_motion.xml").utc_time == 1714637731.25
    assert one("scene_change.xml").utc_time == 1714637760.0 - 8 * 3600  # +08:00 offset honoured
    n = one("digital_input_initialized.xml")
    assert n.operation == "Initialized"
    r = topics.resolve(n, STANDARD_TABLE)
    assert r is not None and r.point == "digital_input" and r.event.initial and r.event.active is False
    assert r.event.attrs["input"] == "AlarmIn_1"


def test_digital_input_feeds_any_point() -> None:
    """An alarm pillar's button is the camera's digital input."""
    table = [topics.make_binding("tns1:Device/Trigger/DigitalInput", "button")]
    r = topics.resolve(one("digital_input_initialized.xml"), table)
    assert r is not None and r.point == "button"


def test_vendor_topic_through_profile_item() -> None:
    n = one("vendor_throw.xml")
    assert topics.resolve(n, STANDARD_TABLE) is None  # not a standard topic
    table = [topics.make_binding("tnsz:VideoAnalytics/ThrowDetection", "object_throw", item="State")]
    r = topics.resolve(n, table)
    assert r is not None and r.point == "object_throw" and r.event.active is True
    assert r.event.attrs == {"topic": "VideoAnalytics/ThrowDetection", "rule": "Throw", "source": "vs_1"}
    # the namespace prefix differs between firmwares; the path is what is compared
    other = [topics.make_binding("vendor:VideoAnalytics/ThrowDetection", "object_throw", item="State")]
    assert topics.resolve(n, other) is not None


def test_rule_selects_binding() -> None:
    n = one("field_inside.xml")
    table = [
        topics.make_binding("tns1:RuleEngine/FieldDetector/ObjectsInside", "intrusion", rule="Garage"),
        topics.make_binding("tns1:RuleEngine/FieldDetector/ObjectsInside", "object_left", item="IsInside", rule="Courtyard"),
    ]
    r = topics.resolve(n, table)
    assert r is not None and r.point == "object_left"


def test_pulse_item() -> None:
    table = [topics.make_binding("tns1:Monitoring/ProcessorUsage", "motion", item="*pulse")]
    r = topics.resolve(one("unknown_topic.xml"), table)
    assert r is not None and r.event.active is True


def test_unexpected_topic_is_reported_not_dropped() -> None:
    n = one("unknown_topic.xml")
    assert topics.resolve(n, STANDARD_TABLE) is None
    assert b"ProcessorUsage" in n.raw  # the raw payload is kept for the log


def test_malformed_xml() -> None:
    with pytest.raises(topics.TopicParseError) as e:
        topics.parse_notifications((PAYLOADS / "truncated.xml").read_bytes())
    assert e.value.reason == "malformed_xml"


def test_message_without_onvif_body() -> None:
    with pytest.raises(topics.TopicParseError) as e:
        topics.parse_notifications((PAYLOADS / "no_message.xml").read_bytes())
    assert e.value.reason == "no_message"


def test_bad_state_value() -> None:
    n = one("bad_state.xml")
    assert n.utc_time is None  # an unparsable time is dropped, not fatal
    with pytest.raises(topics.TopicParseError) as e:
        topics.resolve(n, STANDARD_TABLE)
    assert e.value.reason == "bad_value"


def test_missing_item() -> None:
    table = [topics.make_binding("tnsz:VideoAnalytics/ThrowDetection", "object_throw", item="IsThrow")]
    with pytest.raises(topics.TopicParseError) as e:
        topics.resolve(one("vendor_throw.xml"), table)
    assert e.value.reason == "missing_item"


def test_entities_are_not_expanded() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
        b'<wsnt:NotificationMessage xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2"><wsnt:Topic>&b;</wsnt:Topic>'
        b"</wsnt:NotificationMessage>"
    )
    with pytest.raises(topics.TopicParseError):
        topics.parse_notifications(bomb)


@pytest.mark.parametrize(
    ("topic", "path"),
    [
        ("tns1:RuleEngine/CellMotionDetector/Motion", "RuleEngine/CellMotionDetector/Motion"),
        ("tns1:RuleEngine/tnsv:Vendor/Rule//.", "RuleEngine/Vendor/Rule"),
        ("  tns1:VideoSource/MotionAlarm \n", "VideoSource/MotionAlarm"),
        ("VideoSource/MotionAlarm", "VideoSource/MotionAlarm"),
        ("", ""),
    ],
)
def test_topic_path(topic: str, path: str) -> None:
    assert topics.topic_path(topic) == path


def test_binding_problem() -> None:
    assert topics.binding_problem("tns1:VideoSource/MotionAlarm", None) is None
    assert topics.binding_problem("tnsz:Vendor/Thing", "State") is None
    assert "item" in (topics.binding_problem("tnsz:Vendor/Thing", None) or "")
    assert topics.binding_problem("", None) == "topic is empty"


def test_pull_response_with_fault_and_notifications() -> None:
    fault = (
        b'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><env:Fault>'
        b"<env:Code><env:Value>env:Receiver</env:Value><env:Subcode><env:Value>wsrf-rw:ResourceUnknownFault"
        b"</env:Value></env:Subcode></env:Code><env:Reason><env:Text>gone</env:Text></env:Reason>"
        b"</env:Fault></env:Body></env:Envelope>"
    )
    with pytest.raises(PullFault) as e:
        parse_pull_response(500, fault)
    assert e.value.reason == "subscription_gone"
    with pytest.raises(PullFault) as e:
        parse_pull_response(200, b"<not xml")
    assert e.value.reason == "malformed_xml"
    body = (PAYLOADS / "motion_alarm.xml").read_text() + (PAYLOADS / "no_message.xml").read_text()
    env = (
        '<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:tev="http://www.onvif.org/ver10/events/wsdl"><env:Body><tev:PullMessagesResponse>'
        f"<tev:CurrentTime>2024-05-02T08:15:30Z</tev:CurrentTime>{body}</tev:PullMessagesResponse>"
        "</env:Body></env:Envelope>"
    ).encode()
    notes = parse_pull_response(200, env)
    assert [n.path for n in notes] == ["VideoSource/MotionAlarm", ""]  # the broken one is kept
    assert notes[1].key["_error"] == "no_message"


# ------------------------------------------------------------------ properties

SEGMENT = st.text(alphabet=st.characters(whitelist_categories=("Lu", "Ll", "Nd")), min_size=1, max_size=12)


@given(st.binary(max_size=2048))
def test_any_bytes_parse_or_raise_topic_error(data: bytes) -> None:
    try:
        topics.parse_notifications(data)
    except topics.TopicParseError:
        pass


@given(st.lists(SEGMENT, min_size=1, max_size=5), st.sampled_from(["", "tns1:", "ns0:", "v:"]))
def test_topic_path_ignores_prefix_and_is_idempotent(parts: list[str], prefix: str) -> None:
    path = "/".join(parts)
    assert topics.topic_path(prefix + path) == path
    assert topics.topic_path(topics.topic_path(prefix + path)) == path


@given(
    st.sampled_from(sorted(topics.TRUE_WORDS | topics.FALSE_WORDS)),
    st.sampled_from([str.upper, str.lower, str.title]),
    st.text(alphabet=" \t", max_size=3),
)
def test_parse_bool_words(word: str, case: object, pad: str) -> None:
    assert callable(case)
    assert topics.parse_bool(pad + case(word) + pad, "x") is (word in topics.TRUE_WORDS)


@given(st.text(max_size=20).filter(lambda s: s.strip().lower() not in topics.TRUE_WORDS | topics.FALSE_WORDS))
def test_parse_bool_rejects_other_text(text: str) -> None:
    with pytest.raises(topics.TopicParseError):
        topics.parse_bool(text, "x")


@given(st.dictionaries(SEGMENT, st.text(max_size=20), max_size=4), st.booleans())
def test_roundtrip_simple_items(source: dict[str, str], state: bool) -> None:
    def esc(s: str) -> str:
        return s.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")

    def items(tag: str, d: dict[str, str]) -> str:
        inner = "".join(f'<tt:SimpleItem Name="{esc(k)}" Value="{esc(v)}"/>' for k, v in d.items())
        return f"<tt:{tag}>{inner}</tt:{tag}>"

    xml = (
        '<wsnt:NotificationMessage xmlns:wsnt="http://docs.oasis-open.org/wsn/b-2" '
        'xmlns:tt="http://www.onvif.org/ver10/schema"><wsnt:Topic>tns1:VideoSource/MotionAlarm</wsnt:Topic>'
        f"<wsnt:Message><tt:Message>{items('Source', source)}{items('Data', {'State': str(state).lower()})}"
        "</tt:Message></wsnt:Message></wsnt:NotificationMessage>"
    )
    try:
        (n,) = topics.parse_notifications(xml.encode())
    except topics.TopicParseError:
        # XML 1.0 cannot carry some control characters; the parser must say so cleanly
        return
    assert set(n.source) == set(source)
    r = topics.resolve(n, STANDARD_TABLE)
    assert r is not None and r.event.active is state
