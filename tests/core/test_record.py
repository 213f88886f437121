from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import record
from gateway.classes import record_schema
from gateway.record import LANE_OF_KIND, Record, envelope, uuid7, uuid7_time

SCHEMA = record_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_uuid7_shape_and_order() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids made by one process sort in capture order"
    for i in ids[:10]:
        assert i[14] == "7" and i[19] in "89ab"
    assert abs(uuid7_time(ids[0]) - time.time()) < 5


@pytest.mark.usefixtures("generator_state")
def test_uuid7_same_millisecond_counter() -> None:
    a = uuid7(now_ms=1_800_000_000_000)
    b = uuid7(now_ms=1_800_000_000_000)
    assert a < b


@pytest.fixture
def generator_state() -> Iterator[None]:
    """Tests that pass ``now_ms`` from the future put the generator back afterwards, so the
    ids other tests make in this process carry the real time."""
    saved = (record._last_ms, record._counter, record._prefix)
    yield
    record._last_ms, record._counter, record._prefix = saved


@pytest.mark.usefixtures("generator_state")
def test_uuid7_fields_follow_rfc_9562() -> None:
    ms = 1_900_000_000_123
    ids = [uuid7(now_ms=ms + k) for k in range(0, 3000, 3)]
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text  # canonical lower-case form
        assert u.version == 7 and u.variant == uuid.RFC_4122
    assert [uuid.UUID(t).int >> 80 for t in ids] == [ms + k for k in range(0, 3000, 3)]
    # the 62 random bits of rand_b are not constant
    assert len({uuid.UUID(t).int & ((1 << 62) - 1) for t in ids}) == len(ids)


@pytest.mark.usefixtures("generator_state")
def test_uuid7_counter_exhaustion_borrows_the_next_millisecond() -> None:
    ms = 1_950_000_000_000
    ids = [uuid7(now_ms=ms) for _ in range(5000)]  # more than the 12-bit counter holds
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    times = {uuid.UUID(t).int >> 80 for t in ids}
    assert min(times) == ms and len(times) >= 2


@pytest.mark.usefixtures("generator_state")
def test_uuid7_clock_going_back_stays_monotonic() -> None:
    a = uuid7(now_ms=1_960_000_000_000)
    b = uuid7(now_ms=1_959_999_999_000)  # the wall clock stepped back one second
    assert b > a
    assert uuid.UUID(b).int >> 80 == 1_960_000_000_000


def _rec(**kw: object) -> Record:
    base: dict[str, object] = dict(gw="gw1", dev="d1", cls="smoke_detector", pt="alarm", kind="event", v=True, ts=1.5, sev="critical")
    base.update(kw)
    return Record(**base)  # type: ignore[arg-type]


def test_wire_form_omits_absent_fields_and_validates() -> None:
    r = _rec(seq=7)
    d = r.to_dict()
    assert "tsd" not in d and "attrs" not in d and "u" not in d
    VALIDATOR.validate(d)
    assert Record.from_json(r.to_json()) == r


def test_schema_rejects_bad_records() -> None:
    good = _rec(seq=1).to_dict()
    for bad in (
        {**good, "kind": "alarm"},
        {**good, "q": "great"},
        {**good, "seq": 0},
        {**good, "id": "not-a-uuid"},
        {**good, "extra": 1},
        {k: v for k, v in good.items() if k != "ts"},
    ):
        with pytest.raises(jsonschema.ValidationError):
            VALIDATOR.validate(bad)


values = st.one_of(st.booleans(), st.integers(-(2**53), 2**53), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40))


@given(
    v=values,
    kind=st.sampled_from(["telemetry", "state", "event", "lifecycle"]),
    q=st.sampled_from(["good", "uncertain", "bad", "stale"]),
    seq=st.integers(1, 2**62),
    attrs=st.one_of(st.none(), st.dictionaries(st.text(min_size=1, max_size=8), st.integers(), max_size=3)),
    tsd=st.one_of(st.none(), st.floats(0, 4e9)),
)
def test_round_trip_and_schema(v: object, kind: str, q: str, seq: int, attrs: dict[str, int] | None, tsd: float | None) -> None:
    r = _rec(v=v, kind=kind, q=q, seq=seq, attrs=attrs, tsd=tsd, sev=None, u="Cel")
    d = json.loads(r.to_json())
    VALIDATOR.validate(d)
    assert Record.from_dict(d) == Record.from_dict(r.to_dict())


def test_lanes_and_envelope() -> None:
    assert LANE_OF_KIND["lifecycle"] == "state"
    r = _rec(seq=3).to_dict()
    env = envelope("gw1", uuid7(), [r], hist=True)
    jsonschema.Draft202012Validator({**SCHEMA, "$ref": "#/$defs/envelope"}).validate(env)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator({**SCHEMA, "$ref": "#/$defs/envelope"}).validate({**env, "records": [{"id": 1}]})
