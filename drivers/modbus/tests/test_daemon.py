"""The Modbus driver inside the real daemon (``edge-gateway run`` in a child process) against
the simulator in another process, on one shared RTU line on a real pseudo-terminal.

8 devices share the line, 2 of them dead: the 6 live ones keep their poll interval within
one timeout, the dead ones are offline and come back when the simulator revives them; every
injected fault is counted in /metrics with its reason and the daemon survives all of them;
commands through the local API (dimming, barrier, alarm reset) reach the device and are read
back.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.core_daemon import Daemon, config_head, free_port
from tests.support.modbus_sim import SimProcess, farm_file

TOKEN = "modbus-daemon-token"
POLL = 1.0
TIMEOUT = 0.3
LIVE = [  # name, sim model = gateway profile, unit -- every one has telemetry points
    ("env", "acme-env7", 1),
    ("smoke", "acme-sd300", 2),
    ("meter", "acme-em1", 3),
    ("lamp", "lumin-lc2", 4),
    ("weather", "qixiang-qx7", 5),
    ("tilt", "acme-ts200", 6),
]
DEAD = [("parking", "acme-ps1", 7), ("pillar", "acme-ap20", 8)]
CLASSES = {
    "acme-env7": "environment_sensor",
    "acme-sd300": "smoke_detector",
    "acme-em1": "electricity_meter",
    "lumin-lc2": "streetlight",
    "qixiang-qx7": "environment_sensor",
    "acme-ts200": "tilt_sensor",
    "acme-ps1": "parking_space",
    "acme-ap20": "alarm_pillar",
}


def gateway_config(tmp: Path, pty: str, port: int) -> Path:
    devices = "".join(
        f'[[devices]]\nid = "{name}"\nclass = "{CLASSES[model]}"\nprofile = "{model}"\n'
        f'bus = "rs485-1"\naddress = {{ unit = {unit} }}\npoll = "{POLL:g}s"\n\n'
        for name, model, unit in LIVE + DEAD
    )
    text = config_head(tmp, api_port=port, gw_id="modbus-daemon-gw") + f"""
[[buses]]
name = "rs485-1"
driver = "modbus"
transport = "rtu"
port = "{pty}"
baud = 9600
timeout = "{int(TIMEOUT * 1000)}ms"
retries = 1

{devices}"""
    cfg = tmp / "gateway.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    return cfg


def samples(d: Daemon, name: str) -> list[tuple[dict[str, str], float]]:
    status, body, _ = d.raw("/metrics")
    assert status == 200
    out = []
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name:
                out.append((dict(s.labels), float(s.value)))
    return out


def metric_sum(d: Daemon, name: str, **labels: str) -> float:
    return sum(v for lab, v in samples(d, name) if all(lab.get(k) == x for k, x in labels.items()))


def records(d: Daemon, after: int = 0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while True:
        page = d.get(f"/api/v1/records?after_seq={after}&limit=1000")["records"]
        if not page:
            return out
        out.extend(page)
        after = page[-1]["seq"]


def states(d: Daemon) -> dict[str, str]:
    return {x["id"]: x["state"] for x in d.get("/api/v1/devices")["devices"]}


@pytest.fixture
def line(tmp_path: Path) -> Iterator[tuple[SimProcess, Daemon]]:
    sim = SimProcess(farm_file(tmp_path / "sim.toml", LIVE + DEAD), "--rtu-pty").start()
    daemon: Daemon | None = None
    try:
        for name, _, _ in DEAD:
            sim.fault(name, "silent")
        cfg = gateway_config(tmp_path, sim.pty, free_port())
        daemon = Daemon(cfg, env={"EDGE_GW_API_TOKEN": TOKEN}).start()
        yield sim, daemon
    finally:
        if daemon is not None:
            code = daemon.stop()
            assert code == 0, f"daemon exit code {code}:\n{daemon.log_text()}"
        sim.stop()


def test_shared_rtu_line_in_the_daemon(line: tuple[SimProcess, Daemon]) -> None:
    sim, d = line
    live = {n for n, _, _ in LIVE}
    dead = {n for n, _, _ in DEAD}

    # ---- 2 dead devices on the line: offline; the 6 live ones keep their interval
    d.wait_for(
        lambda: (
            (s := states(d))
            and all(s[n] == "online" for n in live)
            and all(s[n] == "offline" for n in dead)
        ),
        15,
        "live devices online, dead ones offline",
    )
    start_seq = d.get("/api/v1/records?after_seq=0&limit=1")["last_seq"]
    late_before = samples(d, "edge_gw_poll_lateness_seconds_bucket")
    time.sleep(6.5)
    recs = [r for r in records(d, start_seq) if r["kind"] == "telemetry"]
    for name in live:
        # one acquisition time per poll (all telemetry of a poll shares it)
        ts = sorted({r["ts"] for r in recs if r["dev"] == name})
        assert len(ts) >= 5, f"{name}: only {len(ts)} polls in 6.5 s"
        gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        assert max(gaps) <= POLL + TIMEOUT + 0.1, f"{name}: poll gaps {gaps}"
        assert min(gaps) >= POLL - TIMEOUT - 0.1, f"{name}: poll gaps {gaps}"
    assert not [r for r in recs if r["dev"] in dead]
    # scheduling jitter: no poll of this phase started later than one timeout
    late_after = samples(d, "edge_gw_poll_lateness_seconds_bucket")

    def bucket(s: list[tuple[dict[str, str], float]], le: str) -> float:
        return sum(v for lab, v in s if lab["le"] == le)

    polls = bucket(late_after, "+Inf") - bucket(late_before, "+Inf")
    on_time = bucket(late_after, "0.25") - bucket(late_before, "0.25")
    assert polls >= 30 and on_time == polls, f"{polls - on_time} of {polls} polls late > 0.25 s"
    assert metric_sum(d, "edge_gw_modbus_request_failures_total", reason="timeout") >= 2
    assert sim.status("parking")["requests"] >= 1  # the dead ones are probed ...
    polls_env = sim.status("env")["requests"]
    # ... but backed off (probes 0.5-1, 1-2, 2-4 s ... apart), not polled every second
    assert sim.status("parking")["requests"] <= polls_env - 2

    # ---- revived: back online by themselves
    for name in dead:
        sim.fault(name, "none")
    d.wait_for(lambda: all(s == "online" for s in states(d).values()), 20, "revived devices online")

    # ---- writes through the local API reach the device and are read back
    cmds: list[tuple[str, str, object, Callable[[], bool]]] = [
        ("lamp", "dimming", 60, lambda: sim.status("lamp")["values"]["dim_level"] == 153),
        ("parking", "barrier_open", True, lambda: sim.status("parking")["values"]["barrier"]),
        ("smoke", "alarm_reset", True, lambda: sim.status("smoke")["values"]["alarm"] == 0),
    ]
    for i, (dev, point, value, took_effect) in enumerate(cmds):
        status, res = d.post(
            f"/api/v1/devices/{dev}/commands",
            {"id": f"cmd-{i}", "point": point, "value": value},
            token=TOKEN,
        )
        assert status == 200 and res["outcome"] == "ok", (dev, point, res)
        assert took_effect(), f"{dev}.{point} did not reach the device"
    d.wait_for(
        lambda: (
            d.get("/api/v1/devices/lamp/points")["points"].get("dimming", {}).get("v") == 60
            and d.get("/api/v1/devices/parking/points")["points"].get("barrier_open", {}).get("v")
            is True
        ),
        5,
        "written values read back by the polls",
    )
    assert metric_sum(d, "edge_gw_modbus_writes_total", result="ok") >= 3
    # a value the class refuses never reaches the line
    writes_before = sim.status("lamp")["writes"]
    status, res = d.post(
        "/api/v1/devices/lamp/commands",
        {"id": "cmd-bad", "point": "dimming", "value": 170},
        token=TOKEN,
    )
    assert status == 422 and res["outcome"] == "rejected"
    assert sim.status("lamp")["writes"] == writes_before

    # ---- every fault at once on different devices: counted with its reason, survived
    faults: dict[str, tuple[str, dict[str, float]]] = {
        "env": ("crc", {}),
        "smoke": ("truncate", {}),
        "meter": ("exception", {"code": 2}),
        "lamp": ("exception", {"code": 4}),
        "weather": ("late", {"delay": 0.6}),
        "tilt": ("exception", {"code": 6}),
        "parking": ("exception", {"code": 1}),
        "pillar": ("gone", {}),
    }
    before = {
        "crc": metric_sum(d, "edge_gw_modbus_request_failures_total", reason="crc"),
        "truncated": metric_sum(d, "edge_gw_modbus_request_failures_total", reason="truncated"),
        "timeout": metric_sum(d, "edge_gw_modbus_request_failures_total", reason="timeout"),
        **{
            c: metric_sum(d, "edge_gw_modbus_exceptions_total", code=c)
            for c in ("01", "02", "04", "06")
        },
    }
    for name, (kind, params) in faults.items():
        sim.fault(name, kind, **params)

    def all_counted() -> bool:
        now = {
            "crc": metric_sum(d, "edge_gw_modbus_request_failures_total", reason="crc"),
            "truncated": metric_sum(d, "edge_gw_modbus_request_failures_total", reason="truncated"),
            "timeout": metric_sum(d, "edge_gw_modbus_request_failures_total", reason="timeout"),
            **{
                c: metric_sum(d, "edge_gw_modbus_exceptions_total", code=c)
                for c in ("01", "02", "04", "06")
            },
        }
        return all(now[k] > before[k] for k in before)

    d.wait_for(all_counted, 15, "every fault counted in /metrics")

    def read_errors() -> set[str]:
        return {lab["reason"] for lab, v in samples(d, "edge_gw_read_errors_total") if v > 0}

    # a request failure is counted at once; the poll's read error only once its retries end
    # (02 to every read: the meter's points are inside holes of its map, the meter answers)
    wanted = {"crc", "truncated", "illegal_address"}
    with contextlib.suppress(AssertionError, TimeoutError):
        d.wait_for(lambda: wanted <= read_errors(), 10, "read errors by reason")
    errors = read_errors()
    assert wanted <= errors, errors
    assert d.get("/api/v1/health")["live"] is True
    for name in faults:
        sim.fault(name, "none")
    d.wait_for(
        lambda: all(s == "online" for s in states(d).values()), 20, "all online after the faults"
    )
    # the meter answered 02 to everything: once it reads again, its points are good again
    d.wait_for(
        lambda: all(
            x["q"] == "good" for x in d.get("/api/v1/devices/meter/points")["points"].values()
        ),
        10,
        "the meter's points good again after its exception 02 fault",
    )
    assert d.proc is not None and d.proc.poll() is None
