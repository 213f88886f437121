"""Pure parts of sync and the simulators: codecs, backoff, config, platform summary, proxy."""

from __future__ import annotations

import asyncio
import json
import zlib
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hwsim.platform.store import EnvelopeError, _ranges, check_envelope, subtract_ranges
from hwsim.proxy import FaultProxy
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.record import Record
from sync import uplink_schema
from sync.backoff import TokenBucket, parse_retry_after
from sync.codec import (
    CommandError,
    decode_payload,
    encode_batch,
    encode_batch_generic,
    parse_command,
    parse_deadline,
)


def rec(seq: int, kind: str = "telemetry") -> Record:
    r = Record(gw="g", dev="d", cls="c", pt="p", kind=kind, v=1.5, ts=1700000000.123)  # type: ignore[arg-type]
    r.seq = seq
    return r


# ------------------------------------------------------------------ envelope
def test_encode_batch_plain_and_gzip_roundtrip() -> None:
    recs = [rec(1), rec(2, "event")]
    plain = encode_batch("g", "b1", recs, hist=True)
    assert plain.startswith(b'{"gw":"g","batch_id":"b1","hist":true,"records":[{"id":')
    gz = encode_batch("g", "b1", recs, hist=True, gzip=True)
    assert gz[:2] == b"\x1f\x8b" and zlib.decompress(gz, 31) == plain
    assert decode_payload(gz) == decode_payload(plain) == json.loads(plain)


def test_encode_batch_refuses_nan() -> None:
    r = rec(1)
    r.v = float("nan")
    with pytest.raises(ValueError):
        encode_batch("g", "b", [r], hist=False)


# ------------------------------------------------------------------ commands
@pytest.mark.parametrize(
    ("payload", "cid", "fragment"),
    [
        (b"", None, "not valid JSON"),
        (b"\xff\xfe", None, "not valid JSON"),
        (b"[1,2]", None, "JSON object"),
        (b'{"device":"d"}', None, "no valid id"),
        (b'{"id":"","device":"d"}', None, "no valid id"),
        (b'{"id":true,"device":"d"}', None, "no valid id"),
        (b'{"id":"a","device":"d","point":"p"}', "a", "no value"),
        (b'{"id":"a","device":1,"point":"p","value":1}', "a", "device"),
        (b'{"id":"a","device":"d","point":"","value":1}', "a", "point"),
        (b'{"id":"a","device":"d","point":"p","value":[1]}', "a", "value"),
        (b'{"id":"a","device":"d","point":"p","value":1,"extra":1}', "a", "unknown command keys"),
        (b'{"id":"a","device":"d","point":"p","value":1,"deadline":"tomorrow"}', "a", "ISO 8601"),
        (b'{"id":"a","device":"d","point":"p","value":1,"deadline":"2030-01-01T00:00:00"}', "a", "time zone"),
        (b'{"id":"a","device":"d","point":"p","value":1,"deadline":true}', "a", "boolean"),
        (b"{" + b" " * 70000 + b"}", None, "larger than"),
    ],
)
def test_parse_command_errors(payload: bytes, cid: str | None, fragment: str) -> None:
    with pytest.raises(CommandError) as ei:
        parse_command(payload)
    assert ei.value.command_id == cid and fragment in ei.value.reason


def test_parse_command_ok() -> None:
    c = parse_command(b'{"id":7,"device":"d","point":"p","value":false,"deadline":"2030-01-01T00:00:00Z"}')
    assert (c.id, c.device, c.point, c.value) == ("7", "d", "p", False)
    assert c.deadline == datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_deadline(1.5e9) == 1.5e9 and parse_deadline(None) is None


@given(st.binary(max_size=300))
def test_parse_command_never_crashes_on_bytes(data: bytes) -> None:
    try:
        parse_command(data)
    except CommandError:
        pass


@given(st.dictionaries(st.sampled_from(["id", "device", "point", "value", "deadline", "x"]),
                       st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))))
def test_parse_command_never_crashes_on_objects(doc: dict[str, object]) -> None:
    try:
        c = parse_command(json.dumps(doc).encode())
    except CommandError:
        return
    assert c.id and c.device and c.point


# ------------------------------------------------------------------ timing helpers
def test_retry_after() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after("5", now=now, maximum=60) == 5
    assert parse_retry_after("9999", now=now, maximum=60) == 60
    date = format_datetime(datetime.fromtimestamp(now + 30, UTC), usegmt=True)
    assert parse_retry_after(date, now=now, maximum=60) == pytest.approx(30, abs=1)
    for bad in (None, "", "soon", "-3", "Mon, 99 Foo"):
        assert parse_retry_after(bad, now=now, maximum=60) is None


def test_token_bucket() -> None:
    t = [0.0]
    b = TokenBucket(100, burst=100, clock=lambda: t[0])
    assert b.available() == 100
    b.take(100)
    assert b.available() == 0 and b.wait_time(50) == pytest.approx(0.5)
    t[0] = 0.25
    assert b.available() == 25
    assert TokenBucket(0).unlimited and TokenBucket(0).wait_time(10) == 0


# ------------------------------------------------------------------ config
@pytest.mark.parametrize(
    ("kind", "extra", "fragment"),
    [
        ("mqtt", {"url": "http://h"}, "mqtt://"),
        ("mqtt", {"url": "mqtt://h", "topic_prefix": "a/#"}, "topic_prefix"),
        # RabbitMQ turns * into the wildcard +: commands would arrive on a topic that the
        # client library cannot even parse, and the connection drops on every one of them
        ("mqtt", {"url": "mqtt://h", "topic_prefix": "city/b*"}, r"must not contain \+, # or \*"),
        ("mqtt", {"url": "mqtt://u:p@h"}, "credentials"),
        ("mqtt", {"url": "mqtt://h", "password": "x"}, "password needs username"),
        ("mqtt", {"url": "mqtt://h", "windo": 3}, "Extra inputs"),
        ("mqtt", {"url": "mqtt://h", "reconnect_min": "5s", "reconnect_max": "1s"}, "reconnect_max"),
        ("https", {"url": "http://h"}, "allow_plaintext"),
        ("https", {"url": "ftp://h"}, "https://"),
        ("https", {"url": "https://h", "tls": {"ca_file": "/nonexistent.pem"}}, "does not exist"),
    ],
)
def test_config_errors(kind: str, extra: dict[str, object], fragment: str) -> None:
    data = {"name": "u", "kind": kind, "topic_prefix": "p", **extra}
    if kind == "https":
        data.pop("topic_prefix")
    with pytest.raises(ValidationError, match=fragment):
        uplink_schema(kind).model_validate(data)


def test_config_defaults_and_units(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITY_PW", "pw")
    c = uplink_schema("mqtt").model_validate(
        {"name": "city", "kind": "mqtt", "url": "mqtts://city.example", "topic_prefix": "cd/wh",
         "username": "gw", "password": {"env": "CITY_PW"}, "batch_linger": "50ms"})
    assert c.port == 8883 and c.batch_linger == 0.05 and c.tls.verify
    assert "pw" not in repr(c) and c.password.get_secret_value() == "pw"
    with pytest.raises(ValueError, match="unknown uplink kind"):
        uplink_schema("amqp")


# ------------------------------------------------------------------ platform summary
def test_missing_ranges_and_gap_subtraction() -> None:
    assert _ranges([1, 2, 5, 6, 9], 1, 10) == [[3, 4], [7, 8], [10, 10]]
    assert _ranges([], 1, 0) == []
    assert subtract_ranges([[3, 8]], [(4, 5)]) == [[3, 3], [6, 8]]


@given(st.sets(st.integers(1, 200)))
def test_missing_ranges_property(seqs: set[int]) -> None:
    hi = max(seqs, default=0)
    ranges = _ranges(sorted(seqs), 1, hi)
    missing = {s for a, b in ranges for s in range(a, b + 1)}
    assert missing == set(range(1, hi + 1)) - seqs


def test_check_envelope_errors() -> None:
    good = {"gw": "g", "batch_id": "b", "hist": False, "records": [{"id": "x", "seq": 1, "kind": "event", "ts": 1.0}]}
    assert len(check_envelope(good, "g")) == 1
    for bad in ([], {**good, "hist": "no"}, {**good, "records": [{"id": "x"}]}, {**good, "gw": "other"}):
        with pytest.raises(EnvelopeError):
            check_envelope(bad, "g")


# ------------------------------------------------------------------ fault proxy
async def test_proxy_pass_cut_blackhole_latency() -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        while data := await r.read(1024):
            w.write(data)
            await w.drain()
        w.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as proxy:
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"ping")
        assert await asyncio.wait_for(r.read(4), 2) == b"ping"
        proxy.set_latency(0.2)
        t0 = asyncio.get_running_loop().time()
        w.write(b"slow")
        assert await asyncio.wait_for(r.read(4), 2) == b"slow"
        assert asyncio.get_running_loop().time() - t0 >= 0.38  # both directions
        proxy.set_latency(0)
        await proxy.cut()
        assert await asyncio.wait_for(r.read(4), 2) == b""  # connection closed
        w.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", proxy.port)
        await proxy.blackhole()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r.read(4), 0.3)
        await proxy.restore()
        w.close()
        r, w = await asyncio.open_connection("127.0.0.1", proxy.port)
        w.write(b"back")
        assert await asyncio.wait_for(r.read(4), 2) == b"back"
        w.close()
    server.close()
    await server.wait_closed()


# ------------------------------------------------------------------ fast envelope encoder
_text = st.text(max_size=12)  # any code point except lone surrogates (not UTF-8 encodable)
_finite = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def _records(draw: st.DrawFn) -> Record:
    v = draw(st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), _finite, _text))
    r = Record(
        gw=draw(_text), dev=draw(_text), cls=draw(_text), pt=draw(_text),
        kind=draw(st.sampled_from(["telemetry", "state", "event", "lifecycle"])),
        v=v, ts=draw(st.one_of(_finite, st.integers(0, 2**40))),
        q=draw(st.sampled_from(["good", "uncertain", "bad", "stale"])),
        u=draw(st.one_of(st.none(), _text)),
        tsd=draw(st.one_of(st.none(), _finite)),
        sev=draw(st.one_of(st.none(), st.sampled_from(["critical", "major", "minor", "info"]))),
        attrs=draw(st.one_of(st.none(), st.dictionaries(_text, st.one_of(_text, st.integers(), st.booleans()), max_size=3))),
        id=draw(st.one_of(st.uuids().map(str), _text)),
    )
    r.seq = draw(st.integers(0, 2**53))
    return r


@given(st.lists(_records(), max_size=8), _text, st.booleans())
def test_fast_encoder_is_byte_identical_to_json_dumps(recs: list[Record], batch_id: str, hist: bool) -> None:
    fast = encode_batch("gw-1", batch_id, recs, hist=hist)
    assert fast == encode_batch_generic("gw-1", batch_id, recs, hist=hist)
    assert json.loads(fast)["records"] == [r.to_dict() for r in recs]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("field", ["v", "ts", "tsd"])
def test_fast_encoder_refuses_non_finite_numbers_like_json_dumps(bad: float, field: str) -> None:
    r = rec(1)
    setattr(r, field, bad)
    with pytest.raises(ValueError):
        encode_batch_generic("g", "b", [r], hist=False)
    with pytest.raises(ValueError):
        encode_batch("g", "b", [r], hist=False)


def test_fast_encoder_series_cache_is_bounded() -> None:
    from sync import codec

    for i in range(codec._SERIES_CACHE_MAX + 10):
        r = rec(i)
        r.dev = f"dev-{i}"
        assert encode_batch("g", "b", [r], hist=False) == encode_batch_generic("g", "b", [r], hist=False)
    assert len(codec._series_json) <= codec._SERIES_CACHE_MAX


def test_fast_encoder_vectors() -> None:
    r = Record(gw="g", dev="d\u00e9\"", cls="c", pt="p", kind="event", v=True, ts=1.5, sev="critical",
               attrs={"k": "\u4e2d"}, id="i", u="%")
    r.seq = 7
    assert encode_batch("g", "b", [r], hist=False) == (
        '{"gw":"g","batch_id":"b","hist":false,"records":[{"id":"i","seq":7,"gw":"g",'
        '"dev":"d\u00e9\\"","cls":"c","pt":"p","kind":"event","v":true,"u":"%","q":"good",'
        '"ts":1.5,"sev":"critical","attrs":{"k":"\u4e2d"}}]}'
    ).encode()
    with pytest.raises(UnicodeEncodeError):  # a lone surrogate cannot go on the wire
        bad = rec(1)
        bad.dev = "\ud800"
        encode_batch("g", "b", [bad], hist=False)
