"""The edge privacy policy: maskers, HMAC tokens, defaults, site rules, aggregation."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydantic import ValidationError

from gateway.privacy import (
    PrivacyConfig,
    PrivacyPolicy,
    cn_id_valid,
    generalise_room,
    hmac_token,
    is_binary_blob,
    mask_cn_id,
    mask_mobile,
    mask_name,
    mask_plate,
    scrub_text,
)
from gateway.record import Record
from tests.support.ops_privacy_data import RESIDENTS, find_leaks, id_check, make_id, records

KEY_A = "k3y-for-jifu-community-0123456789"
KEY_B = "another-community-key-9876543210"
TOKEN_RE = re.compile(r"^hm_[a-z2-7]{26}$")

SITE_RULES = [
    {"class": "fall_detector", "field": "attrs.resident", "action": "drop"},
]


def policy(key: str | None = KEY_A, community: str = "Jifu", **kw: Any) -> PrivacyPolicy:
    data: dict[str, Any] = {"rules": SITE_RULES, **kw}
    if key is not None:
        data["hmac_key"] = key
    return PrivacyPolicy(PrivacyConfig.model_validate(data), community=community)


def metric(field: str, action: str) -> float:
    v = REGISTRY.get_sample_value(
        "edge_gw_privacy_actions_total", {"field": field, "action": action}
    )
    return v or 0.0


def apply_all(p: PrivacyPolicy, recs: list[Record]) -> list[Record]:
    out = [r2 for r in recs if (r2 := p.apply(r)) is not None]
    return out + p.flush_aggregates(math.inf)


def wire(recs: list[Record]) -> bytes:
    """Both JSON spellings the uplinks and the buffer could use."""
    rows = [r.to_dict() for r in recs]

    def careless(o: object) -> str:  # how a naive serialiser would ship bytes
        if isinstance(o, bytes):
            return base64.b64encode(o).decode()
        raise TypeError(type(o).__name__)

    return (
        json.dumps(rows, ensure_ascii=False, default=careless).encode()
        + b"\n"
        + json.dumps(rows, ensure_ascii=True, default=careless).encode()
    )


# --------------------------------------------------------------------------- byte vectors


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("11010519491231002X", True),
        ("11010519491231002x", True),
        ("440524188001010014", True),
        ("110105194912310021", False),  # wrong check digit
        ("11010519491231002", False),  # 17 digits
        ("1101051949123100211", False),  # 19 digits
        ("11010519491231002Y", False),
        ("١١٠١٠٥١٩٤٩١٢٣١٠٠٢X", False),  # Arabic-Indic digits are not ID digits
        ("", False),
    ],
)
def test_cn_id_valid(value: str, valid: bool) -> None:
    assert cn_id_valid(value) is valid


def test_support_ids_are_valid() -> None:
    for r in RESIDENTS:
        assert cn_id_valid(r.id_number), r.id_number


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("11010519491231002X", "110105********002X"),
        ("11010519491231002x", "110105********002X"),
        ("110105 19491231 002X", "110105********002X"),
        ("440524188001010014", "440524********0014"),
        ("123", "***"),
    ],
)
def test_mask_cn_id(value: str, masked: str) -> None:
    assert mask_cn_id(value) == masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("13812345678", "138****5678"),
        ("+8613812345678", "138****5678"),
        ("+86 138 1234 5678", "138****5678"),
        ("008613812345678", "138****5678"),
        ("138-1234-5678", "138****5678"),
        ("1381234567", "***"),
        ("", "***"),
    ],
)
def test_mask_mobile(value: str, masked: str) -> None:
    assert mask_mobile(value) == masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("川A12345", "川A·***5"),
        ("川AD12345", "川A·***5"),
        ("川A·12345", "川A·***5"),
        ("粤B-D12345", "粤B·***5"),
        ("京N·8K2L9", "京N·***9"),
        ("川a12345", "川A·***5"),
        ("苏E1234学", "苏E·***学"),
        ("ABC123", "***"),
        ("川12345", "***"),
        ("", "***"),
    ],
)
def test_mask_plate(value: str, masked: str) -> None:
    assert mask_plate(value) == masked


def test_mask_name() -> None:
    assert mask_name("张三") == "张*"
    assert mask_name("欧阳娜娜") == "欧***"
    assert mask_name("  ") == ""


@pytest.mark.parametrize(
    ("room", "building", "unit"),
    [
        ("3-2-1201", "3", "3-2"),
        ("12栋3单元1502室", "12", "12-3"),
        ("7#4-2201", "7", "7-4"),
        ("B3-1-0101", "B", "B-3"),
        ("12-1502", "12", None),
        ("lobby", None, None),
        ("", None, None),
        ("1-2-3-4-5", None, None),
    ],
)
def test_generalise_room(room: str, building: str | None, unit: str | None) -> None:
    assert generalise_room(room, "building") == building
    assert generalise_room(room, "unit") == unit


@pytest.mark.parametrize(
    ("text", "expected", "kinds"),
    [
        ("no personal data here", "no personal data here", []),
        ("tel 13812345678.", "tel 138****5678.", ["mobile"]),
        ("ID:11010519491231002X;", "ID:110105********002X;", ["cn_id"]),
        ("id 110105194912310021", "id 110105194912310021", []),  # bad check digit: not an ID
        ("车牌川AD12345进入", "车牌川A·***5进入", ["plate"]),
        ("serial 12345678901", "serial 12345678901", []),  # 11 digits, not 1[3-9]x
        ("ts 1700000000123", "ts 1700000000123", []),  # 13 digits
        ("138123456789", "138123456789", []),  # 12 digits: not a mobile
        (
            "13812345678,15908231234",
            "138****5678,159****1234",
            ["mobile", "mobile"],
        ),
    ],
)
def test_scrub_text_vectors(text: str, expected: str, kinds: list[str]) -> None:
    assert scrub_text(text) == (expected, kinds)


@pytest.mark.parametrize(
    ("value", "blob"),
    [
        (b"\xff\xd8\xff", True),
        (bytearray(b"x"), True),
        ("data:image/png;base64," + "A" * 80, True),
        ("/9j/4AAQSkZJRgABAQ" + "A" * 100, True),
        ("iVBORw0KGgoAAAANSUhEUg" + "A" * 100, True),
        ("ffd8ffe000104a464946" + "00" * 40, True),
        ("Q" * 300, True),
        ([0.1] * 128, True),
        ([1, 2, 3], False),
        (["a"] * 100, False),
        ("short", False),
        ("a perfectly normal sentence that is longer than sixty-four characters, really", False),
        (12, False),
    ],
)
def test_is_binary_blob(value: object, blob: bool) -> None:
    assert is_binary_blob(value) is blob


# --------------------------------------------------------------------------- the policy


def test_realistic_data_leaves_nothing_personal() -> None:
    p = policy()
    raw = records()
    before = wire(raw)
    assert len(find_leaks(before)) > 50  # the detector sees the data when it is there
    out = apply_all(p, raw)
    blob = wire(out)
    assert find_leaks(blob) == []
    # the records survive (events are not lost), only their personal fields changed
    assert {(r.dev, r.pt) for r in out} == {(r.dev, r.pt) for r in raw}
    by_pt = {r.pt: r for r in out}
    granted = by_pt["access_granted"].attrs or {}
    assert TOKEN_RE.match(granted["person_id"])
    assert TOKEN_RE.match(granted["card_no"])
    assert TOKEN_RE.match(granted["id_number"])
    assert TOKEN_RE.match(granted["phone"])
    assert granted["room"] in {"3", "5", "12", "7"}
    assert "name" not in granted and "face_image" not in granted and "snapshot" not in granted
    assert granted["door"] == "east gate" and granted["method"] in ("card", "face")
    denied = by_pt["access_denied"].attrs or {}
    # name, face bytes and feature vector gone; the nested ID number is a token
    assert set(denied["person"]) == {"id_number"}
    assert TOKEN_RE.match(denied["person"]["id_number"])
    assert "110105********002X" in blob.decode() or "********" in denied["memo"]
    assert by_pt["vehicle_entry"].v in {"川A·***5", "京N·***9", "粤B·***5"}
    pillar = by_pt["button"].attrs or {}
    assert re.fullmatch(r"1[3-9]\d\*{4}\d{4}", pillar["caller_mobile"])
    assert set(pillar) == {"caller_mobile"}
    # non-personal records are the very same objects
    assert raw[-1] in out and raw[-2] in out


def test_input_records_are_not_mutated() -> None:
    raw = records()
    snapshot = copy.deepcopy([r.to_dict() for r in raw])
    apply_all(policy(), raw)
    assert [r.to_dict() for r in raw] == snapshot


def test_hmac_tokens_stable_per_key_and_differ_across_keys() -> None:
    r = RESIDENTS[0]
    rec = Record(
        gw="gw",
        dev="door",
        cls="access_control",
        pt="access_granted",
        kind="event",
        v="card",
        ts=1.0,
        attrs={"person_id": r.person_id, "card_no": r.card_no},
    )
    rec2 = Record(
        gw="gw",
        dev="other-door",
        cls="access_control",
        pt="access_denied",
        kind="event",
        v="card",
        ts=99.0,
        attrs={"person_id": r.person_id},
    )
    a1, a2 = policy(KEY_A).apply(rec), policy(KEY_A).apply(rec2)
    b1 = policy(KEY_B).apply(rec)
    c1 = policy(KEY_A, community="Other").apply(rec)
    assert a1 and a2 and b1 and c1 and a1.attrs and a2.attrs and b1.attrs and c1.attrs
    assert a1.attrs["person_id"] == a2.attrs["person_id"]  # same person, same token
    assert a1.attrs["person_id"] != a1.attrs["card_no"]
    assert a1.attrs["person_id"] != b1.attrs["person_id"]  # another community key
    assert a1.attrs["person_id"] != c1.attrs["person_id"]  # same key, another community
    assert TOKEN_RE.match(a1.attrs["person_id"])
    # ints and strings of the same identifier give the same token
    as_int = policy("k" * 16, community="c").apply(
        Record(
            gw="g",
            dev="d",
            cls="access_control",
            pt="x",
            kind="event",
            v="a",
            ts=0,
            attrs={"card_no": 12345},
        )
    )
    assert as_int is not None and as_int.attrs is not None
    assert as_int.attrs["card_no"] == hmac_token(b"k" * 16, "c", "12345")


def test_hmac_without_key_fails_closed_and_check_says_so() -> None:
    p = policy(key=None)
    before = metric("attrs.person_id", "fail_closed")
    out = p.apply(
        Record(
            gw="g",
            dev="d",
            cls="access_control",
            pt="access_granted",
            kind="event",
            v="card",
            ts=1.0,
            attrs={"person_id": "P0001", "door": "n"},
        )
    )
    assert out is not None and out.attrs == {"door": "n"}
    assert metric("attrs.person_id", "fail_closed") == before + 1
    warnings = p.warnings()
    assert any("hmac_key is not set" in w and "DROP" in w for w in warnings)
    rows = [row for row in p.describe() if row["action"] == "hmac"]
    assert rows and all("fail closed" in row["note"] for row in rows)
    assert policy().warnings() == []


def test_describe_never_contains_the_key() -> None:
    text = json.dumps(policy().describe()) + json.dumps(policy().warnings())
    assert KEY_A not in text
    assert KEY_A not in repr(PrivacyConfig.model_validate({"hmac_key": KEY_A}))


def test_key_from_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "privacy-key").write_text(KEY_B + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    cfg = PrivacyConfig.model_validate({"hmac_key": {"credential": "privacy-key"}})
    p = PrivacyPolicy(cfg, community="Jifu")
    rec = Record(
        gw="g",
        dev="d",
        cls="access_control",
        pt="access_granted",
        kind="event",
        v="card",
        ts=1.0,
        attrs={"person_id": "P1"},
    )
    assert p.apply(rec) == policy(KEY_B).apply(rec)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"hmac_key": "short"}, "too short"),
        ({"unknown": 1}, "Extra inputs"),
        ({"rules": [{"field": "attrs.x", "action": "explode"}]}, "action"),
        ({"rules": [{"field": "value", "action": "drop"}]}, "expected 'v', 'record'"),
        ({"rules": [{"field": "attrs.", "action": "drop"}]}, "expected 'v', 'record'"),
        ({"rules": [{"field": "v\n", "action": "drop"}]}, "expected 'v', 'record'"),  # "$" allowed it
        ({"rules": [{"field": "record", "action": "hmac"}]}, "field 'record' takes"),
        ({"rules": [{"field": "attrs.x", "action": "aggregate"}]}, "needs field = 'record'"),
        ({"rules": [{"field": "v", "action": "drop", "mask": "plate"}]}, "only applies"),
        ({"rules": [{"field": "v", "action": "mask", "mask": "iban"}]}, "mask"),
        ({"rules": [{"field": "v", "action": "mask", "to": "unit"}]}, "only applies"),
        ({"rules": [{"field": "record", "action": "aggregate", "interval": 0}]}, "positive"),
        ({"rules": [{"field": "record", "action": "aggregate", "interval": "soon"}]}, "duration"),
        ({"rules": [{"field": "v", "action": "drop", "colour": "red"}]}, "Extra inputs"),
    ],
)
def test_config_errors(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PrivacyConfig.model_validate(data)


def test_site_rules_override_defaults_most_specific_wins() -> None:
    p = policy(
        rules=[
            {"class": "*", "field": "attrs.card_no", "action": "mask", "mask": "all"},
            {
                "class": "access_control",
                "point": "access_denied",
                "field": "attrs.card_no",
                "action": "drop",
            },
            {
                "class": "access_control",
                "field": "attrs.room",
                "action": "generalise",
                "to": "unit",
            },
            {"class": "camera", "field": "v", "action": "drop"},
        ]
    )
    mk = lambda pt, **attrs: Record(  # noqa: E731
        gw="g", dev="d", cls="access_control", pt=pt, kind="event", v="x", ts=1.0, attrs=attrs
    )
    granted = p.apply(mk("access_granted", card_no="A1", room="3-2-1201"))
    denied = p.apply(mk("access_denied", card_no="A1", room="3-2-1201"))
    assert granted is not None and denied is not None
    assert granted.attrs == {"card_no": "***", "room": "3-2"}
    assert denied.attrs == {"room": "3-2"}
    cam = Record(gw="g", dev="c", cls="camera", pt="model", kind="state", v="X1", ts=1.0)
    assert p.apply(cam) is None
    rows = p.describe()
    assert rows[0]["source"] == "site"
    defaults = [r for r in rows if r["source"] == "default"]
    assert any(r["field"] == "attrs.name" and r["action"] == "drop" for r in defaults)
    # the wildcard default for rooms still shows (it applies to other classes)
    assert any(r["field"] == "attrs.room" and r["class"] == "*" for r in defaults)
    assert [r["source"] for r in rows[:4]] == ["site"] * 4


def test_exact_nested_path_rule() -> None:
    p = policy(rules=[{"field": "attrs.vehicle.colour", "action": "drop"}])
    rec = Record(
        gw="g",
        dev="d",
        cls="parking_space",
        pt="occupied",
        kind="state",
        v=True,
        ts=1.0,
        attrs={"vehicle": {"colour": "red", "type": "suv"}, "colour": "blue"},
    )
    out = p.apply(rec)
    assert out is not None and out.attrs == {"vehicle": {"type": "suv"}, "colour": "blue"}


def test_allow_raw_personal_data_opt_out() -> None:
    p = policy(allow_raw_personal_data=True, rules=[])
    r = RESIDENTS[0]
    rec = Record(
        gw="g",
        dev="d",
        cls="access_control",
        pt="access_granted",
        kind="event",
        v="card",
        ts=1.0,
        attrs={"name": r.name, "id_number": r.id_number, "note": f"tel {r.mobile}"},
    )
    out = p.apply(rec)
    assert out is rec
    assert any("allow_raw_personal_data" in w for w in p.warnings())
    assert p.describe() == []
    # raw bytes still never pass: they cannot be serialised
    out2 = p.apply(
        Record(
            gw="g",
            dev="d",
            cls="camera",
            pt="motion",
            kind="event",
            v=True,
            ts=1.0,
            attrs={"face": b"\xff\xd8"},
        )
    )
    assert out2 is not None and out2.attrs is None


def test_aggregate_counts_per_door_per_interval() -> None:
    p = policy(
        rules=[
            {
                "class": "access_control",
                "point": "access_granted",
                "field": "record",
                "action": "aggregate",
                "interval": "5m",
            }
        ]
    )
    base = 1_700_000_100.0  # window [1_699_999_800, 1_700_000_100) ends exactly here
    start = math.floor(base / 300) * 300
    for i in range(7):
        door = "east" if i < 5 else "west"
        rec = Record(
            gw="gw1",
            dev=door,
            cls="access_control",
            pt="access_granted",
            kind="event",
            v="card",
            ts=start + i * 10,
            attrs={"person_id": RESIDENTS[i % 4].person_id, "name": RESIDENTS[0].name},
        )
        assert p.apply(rec) is None
    late = Record(
        gw="gw1",
        dev="east",
        cls="access_control",
        pt="access_granted",
        kind="event",
        v="card",
        ts=start + 301,
        attrs={"person_id": "x"},
    )
    assert p.apply(late) is None
    assert p.pending_aggregates == 3
    assert p.flush_aggregates(start + 299) == []
    closed = p.flush_aggregates(start + 300)
    assert [(r.dev, r.v, r.pt, r.kind, r.ts) for r in closed] == [
        ("east", 5, "access_count", "telemetry", start + 300),
        ("west", 2, "access_count", "telemetry", start + 300),
    ]
    assert closed[0].attrs == {"event": "access_granted", "window_start": start, "window_s": 300.0}
    assert closed[0].gw == "gw1" and closed[0].seq == 0 and closed[0].id != closed[1].id
    assert find_leaks(wire(closed)) == []
    rest = p.flush_aggregates(math.inf)
    assert [(r.dev, r.v) for r in rest] == [("east", 1)]
    assert p.pending_aggregates == 0
    # other access-control points are not aggregated
    denied = Record(
        gw="gw1",
        dev="east",
        cls="access_control",
        pt="access_denied",
        kind="event",
        v="card",
        ts=start,
    )
    assert p.apply(denied) is denied


def test_metrics_count_actions() -> None:
    p = policy()
    before = {
        k: metric(*k)
        for k in [
            ("attrs.person_id", "hmac"),
            ("attrs.name", "drop"),
            ("detected:mobile", "mask"),
            ("detected:binary", "drop"),
            ("attrs.room", "generalise"),
            ("attrs.plate_no", "mask"),
        ]
    }
    apply_all(p, records())
    n = len(RESIDENTS)
    assert metric("attrs.person_id", "hmac") - before[("attrs.person_id", "hmac")] == n
    assert metric("attrs.name", "drop") - before[("attrs.name", "drop")] == 2 * n
    assert metric("attrs.room", "generalise") - before[("attrs.room", "generalise")] == 2 * n
    assert metric("attrs.plate_no", "mask") - before[("attrs.plate_no", "mask")] == n
    assert metric("detected:mobile", "mask") - before[("detected:mobile", "mask")] >= 3 * n
    assert metric("detected:binary", "drop") - before[("detected:binary", "drop")] >= n
    # label values stay within a bounded vocabulary
    for metric_family in REGISTRY.collect():
        if metric_family.name == "edge_gw_privacy_actions":
            for s in metric_family.samples:
                assert s.labels["action"] in {
                    "drop",
                    "hmac",
                    "mask",
                    "generalise",
                    "aggregate",
                    "fail_closed",
                }
                assert re.fullmatch(r"(v|record|attrs(\.\w+)+|detected:\w+)", s.labels["field"])


def test_fast_path_is_cheap() -> None:
    p = policy()
    recs = [
        Record(
            gw="g",
            dev=f"m{i % 50}",
            cls="electricity_meter",
            pt="power",
            kind="telemetry",
            v=float(i),
            u="W",
            ts=1.0 + i,
        )
        for i in range(50_000)
    ]
    t0 = time.perf_counter()
    for r in recs:
        assert p.apply(r) is r
    per_record = (time.perf_counter() - t0) / len(recs)
    assert per_record < 20e-6, f"{per_record * 1e6:.2f} us per record"


def test_malformed_attrs_never_crash() -> None:
    p = policy()
    weird: dict[Any, Any] = {
        1: "13812345678",
        "nested": {"deep": [{"name": "x", "ok": None}, b"\x00\x01", 3.5, True]},
        "nan": float("nan"),
        "empty": {},
        "tuple": (1, 2),
        "face": None,
    }
    out = p.apply(
        Record(
            gw="g",
            dev="d",
            cls="access_control",
            pt="access_granted",
            kind="event",
            v="",
            ts=1.0,
            attrs=weird,
        )
    )
    assert out is not None and out.attrs is not None
    assert out.attrs["1"] == "138****5678"
    assert out.attrs["nested"] == {"deep": [{"ok": None}, 3.5, True]}
    assert "face" not in out.attrs
    json.dumps(out.to_dict())


# --------------------------------------------------------------------------- properties

_regions = st.from_regex(r"[1-9][0-9]{5}", fullmatch=True)
_births = (
    st.dates().map(lambda d: f"{d.year:04d}{d.month:02d}{d.day:02d}").filter(lambda s: len(s) == 8)
)
_seqs = st.from_regex(r"[0-9]{3}", fullmatch=True)
valid_ids = st.builds(make_id, _regions, _births, _seqs)
mobiles = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)
plates = st.builds(
    lambda prov, letter, body: prov + letter + body,
    st.sampled_from("京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"),
    st.sampled_from("ABCDEFGHJKLMNPQRSTUVWXYZ"),
    st.from_regex(r"[A-HJ-NP-Z0-9]{5,6}", fullmatch=True),
)
# filler that cannot extend a number: no digits next to the embedded identifier
filler = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Nd", "Cs"]), max_size=20
)


@given(valid_ids)
def test_prop_generated_ids_have_valid_check_digit(value: str) -> None:
    assert cn_id_valid(value)
    assert id_check(value[:17]) == value[17]
    masked = mask_cn_id(value)
    assert masked[:6] == value[:6] and masked[-4:] == value[-4:] and masked[6:14] == "*" * 8


@given(valid_ids, st.integers(min_value=0, max_value=16), st.sampled_from("0123456789X"))
def test_prop_corrupted_id_is_invalid(value: str, pos: int, digit: str) -> None:
    corrupted = value[:pos] + (digit if digit != "X" else "7") + value[pos + 1 :]
    if corrupted != value:
        # a single changed digit always breaks MOD 11-2 (weights are non-zero mod 11)
        assert not cn_id_valid(corrupted)


@given(filler, valid_ids, filler, mobiles, filler, plates, filler)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_prop_scrub_removes_embedded_identifiers(
    a: str, pid: str, b: str, mob: str, c: str, plate: str, d: str
) -> None:
    # a plate body must not touch the next identifier's letters
    text = f"{a} {pid} {b} {mob} {c} {plate} {d}"
    out, found = scrub_text(text)
    assert pid not in out and pid[6:14] not in out
    assert mob not in out and mob[3:] not in out
    assert plate not in out and plate[1:-1] not in out
    assert {"cn_id", "mobile", "plate"} <= set(found)
    assert mask_cn_id(pid) in out and mask_mobile(mob) in out
    # nothing is found twice: the output is stable
    assert scrub_text(out) == (out, [])


@given(st.text(max_size=200))
def test_prop_scrub_is_total_and_idempotent(text: str) -> None:
    out, found = scrub_text(text)
    again, found2 = scrub_text(out)
    assert again == out and found2 == []
    if not found:
        assert out == text


@given(
    mobiles, st.sampled_from(["", "+86", "+86 ", "0086", "86-"]), st.sampled_from(["", "-", " "])
)
def test_prop_mask_mobile_formats(mob: str, prefix: str, sep: str) -> None:
    text = prefix + mob[:3] + sep + mob[3:7] + sep + mob[7:]
    assert mask_mobile(text) == mob[:3] + "****" + mob[7:]
    assert scrub_text(f"call {text} now") == (f"call {mob[:3]}****{mob[7:]} now", ["mobile"])


@given(plates)
def test_prop_mask_plate(plate: str) -> None:
    masked = mask_plate(plate)
    assert masked == f"{plate[:2]}·***{plate[-1]}"
    assert plate[2:-1] not in masked


@given(st.text(max_size=40))
def test_prop_generalise_room_total(text: str) -> None:
    for level in ("building", "unit"):
        out = generalise_room(text, level)  # type: ignore[arg-type]
        assert out is None or (out and len(out) <= len(text))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
    | st.binary(max_size=8),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@given(
    st.sampled_from(["access_control", "camera", "parking_space", "x"]),
    st.dictionaries(st.text(max_size=12), json_values, max_size=6),
    st.one_of(st.text(max_size=30), st.floats(allow_nan=False), st.booleans()),
)
@settings(max_examples=200)
def test_prop_apply_total_and_serialisable(cls: str, attrs: dict[str, Any], v: Any) -> None:
    p = policy(key=None)
    rec = Record(
        gw="g", dev="d", cls=cls, pt="vehicle_entry", kind="event", v=v, ts=1.0, attrs=attrs
    )
    out = p.apply(rec)
    if out is not None:
        json.dumps(out.to_dict())
        # no string leaf still holds an ID or mobile number
        for leaf in _string_leaves([out.v, out.attrs]):
            assert not {"cn_id", "mobile"} & set(scrub_text(leaf)[1]), leaf


def _string_leaves(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _string_leaves(k) + _string_leaves(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _string_leaves(v)]
    return []
