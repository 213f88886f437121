"""Row codec and downsampling: byte vectors, malformed rows, round-trip properties."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from buffer._codec import (
    CodecError,
    SeriesKey,
    check_record,
    decode_id,
    decode_row,
    encode_id,
    encode_row,
    row_bytes,
    series_key,
)
from buffer._downsample import DownsampleConfig, bucket_start, summarise
from gateway.record import Record, uuid7

UID = "0190a5e1-2b3c-7d4e-8f60-718293a4b5c6"


def rec(**kw: object) -> Record:
    base: dict[str, object] = dict(gw="g", dev="d", cls="meter", pt="power", kind="telemetry",
                                   v=1.5, ts=1700000000.123, id=UID)
    base.update(kw)
    return Record(**base)  # type: ignore[arg-type]


def test_telemetry_row_vector() -> None:
    row = encode_row(rec(u="W"), 7, 1, 3)
    assert row == (7, 1, 3, 1700000000.123, bytes.fromhex("0190a5e12b3c7d4e8f60718293a4b5c6"), 1.5, None)
    assert row_bytes(row) == 24 + 16 + 8


@pytest.mark.parametrize(
    ("value", "stored"),
    [(True, 1), (False, 0), (0, 0), (-5, -5), (2.0, 2.0), ("on", "on"), (None, None)],
)
def test_values(value: object, stored: object) -> None:
    r = rec(v=value)
    row = encode_row(r, 1, 1, 1)
    assert row[5] == stored and type(row[5]) is type(stored)
    back = decode_row(row, series_key(r))
    assert back.v == value and type(back.v) is type(value)


def test_nan_round_trips_through_extras() -> None:
    r = rec(v=math.nan)
    row = encode_row(r, 1, 1, 1)
    assert row[5] is None and json.loads(row[6] or "{}") == {"nan": 1}
    assert math.isnan(decode_row(row, series_key(r)).v)  # type: ignore[arg-type]


def test_extras_vector() -> None:
    r = rec(kind="event", v=True, sev="major", q="uncertain", tsd=1699999999.5, attrs={"zone": "B3"})
    row = encode_row(r, 9, 3, 2)
    assert json.loads(row[6] or "") == {"q": "uncertain", "tsd": 1699999999.5, "sev": "major",
                                        "attrs": {"zone": "B3"}}
    assert decode_row(row, series_key(r)) == Record(**{**r.to_dict(), "seq": 9})


@pytest.mark.parametrize(
    "value",
    [UID.upper(), "not-a-uuid", "0190a5e1-2b3c-7d4e-8f60-718293a4b5c", "0190a5e1 2b3c-7d4e-8f60-718293a4b5c6",
     "0190a5e1-2b3c-7d4e-8f60-718293a4b5 6", ""],
)
def test_non_canonical_ids_are_kept_as_text(value: str) -> None:
    enc = encode_id(value)
    assert enc == value and decode_id(enc) == value


def test_canonical_id_is_16_bytes() -> None:
    assert decode_id(encode_id(UID)) == UID and len(encode_id(UID)) == 16


@pytest.mark.parametrize(
    "row",
    [
        (1, 1, 1, 0.0, b"\x00" * 15, 1.0, None),  # short id blob
        (1, 1, 1, 0.0, b"\x00" * 16, 1.0, "{not json"),
        (1, 1, 1, 0.0, b"\x00" * 16, 1.0, "[1, 2]"),
        (1, 1, 1, 0.0, 12345, 1.0, None),  # id of a wrong type
    ],
)
def test_malformed_rows_raise_codec_error(row: tuple) -> None:  # type: ignore[type-arg]
    with pytest.raises(CodecError):
        decode_row(row, SeriesKey("g", "d", "c", "p", "telemetry", None, False))


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"kind": "bogus"}, "unknown kind"),
        ({"ts": math.inf}, "bad ts"),
        ({"ts": "now"}, "bad ts"),
        ({"v": [1, 2]}, "value of type list"),
        ({"v": 1 << 70}, "64-bit"),
        ({"attrs": {"x": object()}}, "JSON"),
        ({"attrs": [1]}, "expected an object"),
        ({"id": ""}, "missing id"),
        ({"dev": 5}, "dev is not a string"),
    ],
)
def test_check_record_rejects(kw: dict[str, object], why: str) -> None:
    msg = check_record(rec(**kw))
    assert msg is not None and why in msg


def test_check_record_accepts_and_rejects_non_records() -> None:
    assert check_record(rec()) is None
    assert check_record(rec(v=3, kind="state")) is None
    assert "not a Record" in (check_record({"v": 1}) or "")


values = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(allow_nan=False), st.text(max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(
    v=values,
    kind=st.sampled_from(["telemetry", "state", "event", "lifecycle"]),
    q=st.sampled_from(["good", "uncertain", "bad", "stale"]),
    u=st.one_of(st.none(), st.text(min_size=1, max_size=5)),
    tsd=st.one_of(st.none(), st.floats(0, 2e9)),
    sev=st.one_of(st.none(), st.sampled_from(["critical", "major", "minor", "info"])),
    attrs=st.one_of(st.none(), st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)),
    ts=st.floats(0, 4e9),
    seq=st.integers(1, (1 << 62)),
    dev=st.text(min_size=1, max_size=20),
)
def test_round_trip_property(v, kind, q, u, tsd, sev, attrs, ts, seq, dev) -> None:  # type: ignore[no-untyped-def]
    r = Record(gw="g", dev=dev, cls="c", pt="p", kind=kind, v=v, ts=ts, q=q, u=u, tsd=tsd, sev=sev,
               attrs=attrs, id=uuid7())
    assert check_record(r) is None
    row = encode_row(r, seq, 5, 1)
    back = decode_row(row, series_key(r))
    assert back.to_dict() == {**r.to_dict(), "seq": seq}
    assert row_bytes(row) >= 24


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=40), st.text(max_size=40))
def test_decoder_never_crashes_unexpectedly(blob: bytes, x: str) -> None:
    row = (1, 1, 1, 0.0, blob, 1.0, x or None)
    try:
        decode_row(row, SeriesKey("g", "d", "c", "p", "telemetry", None, False))
    except CodecError:
        pass


# ---------------------------------------------------------------- downsampling


def test_summarise_values() -> None:
    rs = [rec(v=v, ts=1000.0 + i * 10, id=uuid7()) for i, v in enumerate([4.0, 1.0, 7.0, 2.0])]
    rs += [rec(v=100.0, ts=1000.0 + 400, id=uuid7())]  # next 300 s interval
    rs += [rec(v=5.0, pt="energy", ts=1001.0, id=uuid7())]  # other point
    rs += [rec(v="text", ts=1002.0, id=uuid7()), rec(v=True, ts=1003.0, id=uuid7()),
           rec(v=3.0, q="bad", ts=1004.0, id=uuid7())]
    out = summarise(rs, 300.0)
    assert [(r.pt, r.ts) for r in out] == [("power", 900.0), ("power", 1200.0), ("energy", 900.0)]
    first = out[0]
    assert first.q == "uncertain" and first.v == pytest.approx(3.5) and first.seq == 0
    assert first.attrs == {"downsampled": True, "min": 1.0, "max": 7.0, "mean": 3.5, "count": 4,
                           "interval": 300.0, "first_ts": 1000.0, "last_ts": 1030.0}
    assert out[1].attrs and out[1].attrs["count"] == 1 and out[1].v == 100.0
    # summaries are not summarised again
    assert summarise(out, 300.0) == []


def test_bucket_start_and_config() -> None:
    assert bucket_start(1299.9, 300) == 1200 and bucket_start(-1, 300) == -300
    with pytest.raises(ValueError):
        DownsampleConfig(interval=0)
    with pytest.raises(ValueError):
        DownsampleConfig(interval=math.inf)


@given(st.one_of(
    st.text(max_size=40),
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.text(alphabet="0123456789abcdefABCDEF- \t", min_size=36, max_size=36),
))
def test_any_id_text_round_trips(value: str) -> None:
    enc = encode_id(value)
    assert decode_id(enc) == value
    assert isinstance(enc, str) or len(enc) == 16


@pytest.mark.parametrize("n", [0, 1, 3, 4, 5, 17, 64, 65, 150])
def test_multi_row_insert_writes_every_row_in_order(n: int, tmp_path: Path) -> None:
    import sqlite3

    from buffer._store import insert_rows

    c = sqlite3.connect(tmp_path / "t.db")
    c.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, todo, sid, ts, id, v, x)")
    rows = [(i + 1, 3, i % 7, 1000.0 + i, bytes(16), i * 0.5 if i % 2 else f"s{i}", None) for i in range(n)]
    insert_rows(c, "t", rows)
    assert c.execute("SELECT * FROM t ORDER BY seq").fetchall() == rows


def test_failed_staging_frees_its_series_ids(tmp_path: Path) -> None:
    """A batch that cannot be encoded half way leaves no series behind: the next batch's new
    series get fresh ids and every record reads back with its own device and point."""
    from buffer._codec import CodecError
    from buffer._store import Store

    st = Store(str(tmp_path / "b.db"), gw="gw", uplinks=["up"])
    st.open()
    try:
        st.commit([rec(dev="a", pt="p1", v=1.0)])
        broken = [rec(dev="b", pt="p2", v=2.0), rec(dev="c", pt="p3", v=object())]  # type: ignore[arg-type]
        with pytest.raises(CodecError):
            st.commit(broken)
        st.commit([rec(dev="d", pt="p4", v=4.0), rec(dev="b", pt="p2", v=5.0)])
        got = [(r.dev, r.pt, r.v) for r in st.records_after(0, 10)]
        assert got == [("a", "p1", 1.0), ("d", "p4", 4.0), ("b", "p2", 5.0)]
        assert len(set(st.sid_of.values())) == len(st.sid_of) == len(st.series) == 3
    finally:
        st.close()
