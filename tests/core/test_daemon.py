"""The real daemon in a child process: API, records, metrics, commands, isolation, signals."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from prometheus_client.parser import text_string_to_metric_families
from referencing import Registry, Resource

from gateway.classes import record_schema
from tests.support.core_daemon import Daemon, example_config

ROOT = Path(__file__).resolve().parents[2]
OPENAPI = json.loads((ROOT / "gateway" / "schema" / "openapi.json").read_text())
RECORD = record_schema()
TOKEN = "t0k-for-tests"


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    registry = Registry().with_resources(
        [
            ("record.schema.json", Resource.from_contents(RECORD)),
            ("urn:openapi", Resource.from_contents({**OPENAPI, "$schema": "https://json-schema.org/draft/2020-12/schema"})),
        ]
    )
    schema = json.loads(json.dumps(schema).replace('"#/components', '"urn:openapi#/components'))
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    cfg = example_config(tmp_path)
    d = Daemon(cfg, env={"EDGE_GW_API_TOKEN": TOKEN}).start()
    try:
        yield d
    finally:
        d.stop()


def _records(d: Daemon, after: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = d.get(f"/api/v1/records?after_seq={after}&limit=1000")["records"]
        if not page:
            return out
        out.extend(page)
        after = page[-1]["seq"]


def test_devices_records_metrics(daemon: Daemon) -> None:
    cfg_ids = {line.split('"')[1] for line in daemon.config.read_text().splitlines() if line.startswith("id = ") and "-" in line}
    devices = daemon.get("/api/v1/devices")["devices"]
    assert {d["id"] for d in devices} >= cfg_ids - {"cd-wh-jifu-gw01"}
    assert len(devices) == 27
    daemon.wait_for(lambda: all(d["state"] == "online" for d in daemon.get("/api/v1/devices")["devices"]), 15, "all devices online")
    recs = _records(daemon)
    assert len(recs) > 50
    v = jsonschema.Draft202012Validator(RECORD)
    for r in recs:
        v.validate(r)
    seqs = [r["seq"] for r in recs]
    assert seqs == list(range(1, len(seqs) + 1)), "seq is contiguous from 1"
    assert recs[0]["cls"] == "gateway" and recs[0]["v"] == "started"
    assert {r["cls"] for r in recs} >= {"smoke_detector", "camera", "electricity_meter"}
    status, body, ctype = daemon.raw("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in ("edge_gw_device_up", "edge_gw_records", "edge_gw_poll_duration_seconds", "edge_gw_build_info"):
        assert name in families, name
    ups = [s for s in families["edge_gw_device_up"].samples if s.value == 1]
    assert len(ups) == 27


def test_openapi_matches_running_server(daemon: Daemon) -> None:
    checked = 0
    for path, ops in OPENAPI["paths"].items():
        for method, op in ops.items():
            if method != "get" or path == "/metrics":
                continue
            concrete = path.replace("{id}", "smoke-01")
            body = daemon.get(concrete)
            ok = op["responses"].get("200") or op["responses"]["503"]
            schema = ok["content"]["application/json"]["schema"]
            _validator(schema).validate(body)
            checked += 1
    assert checked >= 8
    # routes the server has are all documented
    status, _, _ = daemon.raw("/api/v1/devices/smoke-01/points")
    assert status == 200


def test_commands_through_api(daemon: Daemon) -> None:
    ok_schema = OPENAPI["components"]["schemas"]["CommandResult"]
    v = _validator(ok_schema)
    url = "/api/v1/devices/light-01/commands"
    st, res = daemon.post(url, {"id": "c-1", "point": "dimming", "value": 35}, token=TOKEN)
    assert (st, res["outcome"]) == (200, "ok")
    v.validate(res)
    st, res = daemon.post(url, {"id": "c-1", "point": "dimming", "value": 35}, token=TOKEN)
    assert st == 200 and res["duplicate"] is True
    st, res = daemon.post(url, {"id": "c-2", "point": "power", "value": 3}, token=TOKEN)
    assert (st, res["outcome"]) == (422, "rejected") and "read-only" in res["reason"]
    st, res = daemon.post(url, {"id": "c-3", "point": "dimming", "value": 300}, token=TOKEN)
    assert (st, res["outcome"]) == (422, "rejected") and "maximum" in res["reason"]
    st, res = daemon.post(url, {"id": "c-4", "point": "dimming", "value": 10, "deadline": time.time() - 5}, token=TOKEN)
    assert (st, res["outcome"]) == (410, "expired")
    st, res = daemon.post("/api/v1/devices/nope/commands", {"id": "c-5", "point": "on", "value": True}, token=TOKEN)
    assert (st, res["outcome"]) == (422, "rejected") and "unknown device" in res["reason"]
    st, res = daemon.post(url, {"id": "c-6", "point": "on", "value": False}, token="wrong")
    assert st == 401
    st, res = daemon.post(url, {"id": "c-7", "point": "on", "value": False})
    assert st == 401
    daemon.wait_for(
        lambda: daemon.get("/api/v1/devices/light-01/points")["points"].get("dimming", {}).get("v") == 35,
        10, "written value read back",
    )
    recs = _records(daemon)
    assert any(r["dev"] == "light-01" and r["pt"] == "dimming" and r["v"] == 35 for r in recs)


def test_failing_device_does_not_stop_others(tmp_path: Path) -> None:
    flag = tmp_path / "pillar-01.down"
    cfg = example_config(tmp_path, token=False)
    text = cfg.read_text().replace(
        'id = "pillar-01"\nclass = "alarm_pillar"\nprofile = "virtual-pillar"\npoll = "1s"',
        f'id = "pillar-01"\nclass = "alarm_pillar"\nprofile = "virtual-pillar"\npoll = "1s"\naddress = {{ fail_file = "{flag}" }}',
    )
    assert text != cfg.read_text()
    cfg.write_text(text)
    d = Daemon(cfg).start()
    try:
        d.wait_for(lambda: d.get("/api/v1/devices/pillar-01")["state"] == "online", 10, "pillar online")
        flag.write_text("down")
        d.wait_for(lambda: d.get("/api/v1/devices/pillar-01")["state"] == "offline", 10, "pillar offline")
        # the device state flips before the offline batch (lifecycle + bad values) commits
        d.wait_for(
            lambda: any(r["dev"] == "pillar-01" and r["v"] == "offline" for r in _records(d)),
            10, "offline record stored",
        )
        last = d.get("/api/v1/records?after_seq=0&limit=1")["last_seq"]
        time.sleep(6)
        recent = _records(d, last)
        good = {r["dev"] for r in recent if r["kind"] != "lifecycle" and r["q"] == "good"}
        assert "pillar-01" not in good
        assert {"lift-01", "lift-02", "smoke-01", "smoke-02"} <= good
        stale = [r for r in recent if r["dev"] == "pillar-01"]
        assert stale and all(r["q"] == "stale" for r in stale)
        offline = [r for r in _records(d) if r["dev"] == "pillar-01" and r["pt"] == "status"]
        assert offline[-1]["v"] == "offline" and offline[-1]["attrs"]["reason"] == "timeout"
        flag.unlink()
        d.wait_for(lambda: d.get("/api/v1/devices/pillar-01")["state"] == "online", 20, "pillar recovered")
    finally:
        d.stop()


def test_sigterm_commits_and_sighup_reloads(tmp_path: Path) -> None:
    cfg = example_config(tmp_path, token=False)
    d = Daemon(cfg).start()
    try:
        cfg.write_text(cfg.read_text() + '\n[[devices]]\nid = "smoke-99"\nclass = "smoke_detector"\nprofile = "virtual-smoke"\npoll = "1s"\n')
        d.signal(signal.SIGHUP)
        d.wait_for(lambda: any(x["id"] == "smoke-99" for x in d.get("/api/v1/devices")["devices"]), 10, "reloaded device")
        d.wait_for(lambda: d.get("/api/v1/devices/smoke-99")["state"] == "online", 10, "new device online")
        good = cfg.read_text()
        cfg.write_text(good + "\n[[devices]]\nid = 5\n")  # broken: reload refused
        d.signal(signal.SIGHUP)
        time.sleep(1)
        assert d.get("/api/v1/health")["ready"]
        assert "reload refused" in d.log_text()
    finally:
        assert d.stop() == 0
    con = sqlite3.connect(tmp_path / "buffer.db")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    # restart: seq continues, the stop record was committed
    cfg.write_text(good)
    d2 = Daemon(cfg).start()
    try:
        recs = _records(d2)
        seqs = [r["seq"] for r in recs]
        assert seqs == sorted(set(seqs))
        gw = [r["v"] for r in recs if r["cls"] == "gateway" and r["pt"] == "status"]
        assert gw[:4] == ["started", "reloaded", "stopping", "started"]
    finally:
        d2.stop()


def _bus_config(tmp_path: Path, policy: str, flag: Path) -> Path:
    from tests.support.core_daemon import free_port

    cfg = tmp_path / "g.toml"
    cfg.write_text(
        f"""
[gateway]
id = "gw-policy"
district = "510107"
community = "Test"

[api]
listen = "127.0.0.1:{free_port()}"

[buffer]
path = "{tmp_path / 'buffer.db'}"

[[buses]]
name = "flaky"
driver = "virtual"
fail_file = "{flag}"

[[buses]]
name = "fine"
driver = "virtual"

[[devices]]
id = "on-flaky"
class = "environment_sensor"
profile = "virtual-environment"
bus = "flaky"
poll = "1s"
startup = "{policy}"

[[devices]]
id = "on-fine"
class = "environment_sensor"
profile = "virtual-environment"
bus = "fine"
poll = "1s"
"""
    )
    return cfg


def test_startup_policy_error_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    flag = tmp_path / "down"
    flag.write_text("x")
    cfg = _bus_config(tmp_path, "error", flag)
    p = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert "bus flaky could not be opened" in p.stderr and "startup" in p.stderr


def test_startup_policy_retry_and_ignore(tmp_path: Path) -> None:
    flag = tmp_path / "down"
    flag.write_text("x")
    d = Daemon(_bus_config(tmp_path, "retry", flag)).start()
    try:
        d.wait_for(lambda: d.get("/api/v1/devices/on-fine")["state"] == "online", 10, "fine device online")
        assert d.get("/api/v1/devices/on-flaky")["state"] == "offline"
        assert d.get("/api/v1/health")["buses_down"] == ["flaky"]
        flag.unlink()
        d.wait_for(lambda: d.get("/api/v1/devices/on-flaky")["state"] == "online", 20, "bus reopened")
    finally:
        d.stop()
    flag.write_text("x")
    d = Daemon(_bus_config(tmp_path, "ignore", flag)).start()
    try:
        d.wait_for(lambda: d.get("/api/v1/devices/on-fine")["state"] == "online", 10, "fine device online")
        flag.unlink()
        import time as _t

        _t.sleep(3)
        assert d.get("/api/v1/devices/on-flaky")["state"] == "unknown"
        assert "ignored" in d.log_text()
    finally:
        d.stop()
