"""Privacy through the real daemon: realistic personal data (18-digit ID numbers with valid
check digits, mobiles, plates, names, rooms, card numbers, face image bytes) is pushed by
devices of the ``ops_push`` test driver, runs through the real pipeline, the SQLite buffer
and an MQTT uplink (real mosquitto) to the platform simulator. None of it may appear, in any
encoding ``find_leaks`` knows, in the buffer file (db + WAL), in the raw MQTT payloads, in the
platform simulator's database or in the daemon's log; the HMAC'd person ids are stable per
person and differ between community keys."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import ops_privacy_data as data
from tests.support.core_daemon import Daemon, free_port
from tests.support.ops_metrics import parse_scrape
from tests.support.ops_stack import (
    MqttCapture,
    Stack,
    daemon_env,
    gateway_config,
    http_json,
    mqtt_uplink,
)
from tests.support.sync_mosquitto import Mosquitto, have_mosquitto

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed"),
]

PREFIX = "city/privacy"
KEY_JIFU = "jifu-community-key-7d1c5e0a93b2"
KEY_OTHER = "other-community-key-44f09a1be6c8"
ROUNDS = 2
PERSONAL_CLASSES = {"access_control", "parking_space", "fall_detector", "alarm_pillar"}
PUSHED = ROUNDS * sum(1 for r in data.records() if r.cls in PERSONAL_CLASSES)


def _personal_event(r: dict[str, Any]) -> bool:
    return r.get("cls") in PERSONAL_CLASSES and r.get("kind") == "event"


def _secrets() -> dict[str, str | bytes]:
    return {**data.secrets(), "hmac-key": KEY_JIFU}


def _metric(d: Daemon, family: str, sample: str, **labels: str) -> float:
    fams = parse_scrape(d.raw("/metrics")[1].decode())
    fam = fams.get(family)
    if fam is None:
        return 0.0
    return sum(v for n, lb, v in fam.samples if n == sample and all(lb.get(k) == x for k, x in labels.items()))


def _file_bytes(db: Path) -> bytes:
    out = b""
    for suffix in ("", "-wal", "-journal"):
        p = Path(str(db) + suffix)
        if p.exists():
            out += p.read_bytes()
    return out


@dataclass
class Delivered:
    records: list[dict[str, Any]]
    mqtt: bytes
    buffer_live: bytes
    buffer_stopped: bytes
    platform_db: bytes
    log: bytes
    dropped: float


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivered]:
    tmp = tmp_path_factory.mktemp("privacy")
    broker = Mosquitto(tmp)
    broker.start()
    stack = Stack(tmp)
    capture: MqttCapture | None = None
    daemon: Daemon | None = None
    try:
        platform = stack.platform(broker.port, PREFIX)
        cfg = gateway_config(
            tmp, api_port=free_port(), body=stack.push_config(rounds=ROUNDS),
            uplink=mqtt_uplink(broker.port, PREFIX), privacy='hmac_key = { env = "OPS_PRIVACY_KEY" }',
            token_env=None,
        )
        capture = MqttCapture(broker.port, PREFIX)
        daemon = Daemon(cfg, env=daemon_env(tmp, {"OPS_PRIVACY_KEY": KEY_JIFU})).start(wait_ready=60)
        d = daemon
        d.wait_for(
            lambda: _metric(d, "edge_gw_pushed_events", "edge_gw_pushed_events_total", driver="ops_push") >= PUSHED,
            30, f"{PUSHED} pushed events",
        )
        dropped = _metric(d, "edge_gw_pipeline_drops", "edge_gw_pipeline_drops_total", reason="privacy")
        expected = PUSHED - int(dropped)

        def all_acked() -> bool:
            recs = [r for r in capture.records() if _personal_event(r)] if capture else []
            pending = _metric(d, "edge_gw_uplink_pending_records", "edge_gw_uplink_pending_records", uplink="city")
            return len(recs) >= expected and pending == 0

        d.wait_for(all_acked, 30, "every personal record acknowledged by the platform")
        summary = http_json(platform + "/api/summary")
        buffer_live = _file_bytes(tmp / "buffer.db")
        d.stop()
        daemon = None
        time.sleep(0.2)
        yield Delivered(
            records=capture.records(),
            mqtt=capture.blob(),
            buffer_live=buffer_live,
            buffer_stopped=_file_bytes(tmp / "buffer.db"),
            platform_db=_file_bytes(tmp / "platform.db") + json.dumps(summary).encode(),
            log=d.log.read_bytes(),
            dropped=dropped,
        )
    finally:
        if daemon is not None:
            daemon.stop()
        if capture is not None:
            capture.close()
        stack.close()
        broker.stop()


def test_detector_finds_the_raw_data() -> None:
    """The leak detector is not blind: the unprocessed records are full of leaks."""
    raw = json.dumps([r.to_dict() for r in data.records()],
                     default=lambda o: o.hex() if isinstance(o, bytes) else str(o), ensure_ascii=False).encode()
    leaks = data.find_leaks(raw, _secrets())
    for label in ("name0", "id1", "mobile2", "plate3", "face0", "card1"):
        assert any(x.startswith(label + "/") for x in leaks), label


def test_every_personal_record_arrived(delivered: Delivered) -> None:
    recs = [r for r in delivered.records if _personal_event(r)]
    assert len(recs) == PUSHED - delivered.dropped
    assert {r["pt"] for r in recs} == {"access_granted", "access_denied", "vehicle_entry", "fall", "button"}
    assert len({r["id"] for r in recs}) == len(recs)


@pytest.mark.parametrize("where", ["buffer_live", "buffer_stopped", "mqtt", "platform_db", "log"])
def test_no_personal_data_anywhere(delivered: Delivered, where: str) -> None:
    blob: bytes = getattr(delivered, where)
    assert len(blob) > (200 if where == "log" else 5000), f"{where}: nothing captured"
    assert data.find_leaks(blob, _secrets()) == []


def test_policy_effects_on_the_wire(delivered: Delivered) -> None:
    recs = [r for r in delivered.records if _personal_event(r)]
    granted = [r for r in recs if r["pt"] == "access_granted"]
    assert granted
    for r in granted:
        a = r["attrs"]
        assert a["person_id"].startswith("hm_") and a["card_no"].startswith("hm_")
        assert "name" not in a and "face_image" not in a and "snapshot" not in a
        assert a["door"] == "east gate"  # non-personal attributes pass
    entries = [r for r in recs if r["pt"] == "vehicle_entry"]
    assert entries and all("*" in r["v"] for r in entries)


def _tokens(records: list[dict[str, Any]]) -> dict[str, set[str]]:
    """door device -> set of person_id tokens seen on access_granted."""
    out: dict[str, set[str]] = {}
    for r in records:
        if r.get("pt") == "access_granted":
            out.setdefault(r["dev"], set()).add(r["attrs"]["person_id"])
    return out


def test_hmac_tokens_stable_per_person(delivered: Delivered) -> None:
    tokens = _tokens(delivered.records)
    assert len(tokens) == len(data.RESIDENTS)
    # every replay round gave each person the same token, and different people differ
    assert all(len(t) == 1 for t in tokens.values()), tokens
    flat = [next(iter(t)) for t in tokens.values()]
    assert len(set(flat)) == len(flat)


def test_hmac_tokens_differ_across_community_keys(delivered: Delivered, tmp_path: Path) -> None:
    """A second community (another key) with no uplink: its tokens for the same people,
    read from the local API, share nothing with the first community's."""
    stack = Stack(tmp_path)
    cfg = gateway_config(
        tmp_path, api_port=free_port(), body=stack.push_config(rounds=1), community="Other",
        privacy='hmac_key = { env = "OPS_PRIVACY_KEY" }', token_env=None,
    )
    d = Daemon(cfg, env=daemon_env(tmp_path, {"OPS_PRIVACY_KEY": KEY_OTHER})).start(wait_ready=60)
    try:
        def granted() -> list[dict[str, Any]]:
            recs = d.get("/api/v1/records?after_seq=0&limit=1000")["records"]
            got = [r for r in recs if r.get("pt") == "access_granted"]
            return got if len(got) >= len(data.RESIDENTS) else []

        other = _tokens(d.wait_for(granted, 30, "access events in the second community"))
        blob = _file_bytes(tmp_path / "buffer.db")
    finally:
        d.stop()
    mine = _tokens(delivered.records)
    assert set(other) == set(mine)
    for door in mine:
        assert mine[door].isdisjoint(other[door]), door
    assert data.find_leaks(blob, {**data.secrets(), "hmac-key": KEY_OTHER}) == []
