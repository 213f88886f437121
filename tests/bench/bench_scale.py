"""Scale curve: the gateway with 10, 100, 1,000 and 3,000 devices mixed across protocols.

    .venv/bin/python -m tests.bench.bench_scale                       # 10, 100, 1000, 3000
    .venv/bin/python -m tests.bench.bench_scale --sizes 10 100 --window 20
    .venv/bin/python -m tests.bench.bench_scale --sizes 1000 --profile /tmp/prof   # + py-spy

Each size is a scenario generated from the community scenario's device models (the same
simulators, profiles and polls) by ``scale_scenario(n)``: per "building" (10 devices) five
Modbus devices (two smoke detectors, a gas detector, a tilt sensor, an elevator) on a Modbus
TCP simulator shared by 20 buildings, two DL/T 645 electricity meters and one CJ/T 188 water
meter on a pseudo-terminal RS-485 line shared by 20 buildings, and one virtual-driver
environment sensor; site-wide ONVIF cameras (one per 30 devices, in one ``hwsim onvif``
process) and virtual parking spaces to make up the exact count. The simulators run as
separate processes (``hwsim run``'s runner); the gateway is the real daemon
(``python -m gateway.cli run``) with an MQTT uplink to a local mosquitto and the
city-platform simulator.

Only the GATEWAY process is measured: CPU from /proc/PID/stat (utime+stime) over the
measurement window, RSS (largest VmRSS sampled in the window, and VmHWM), points handled
from its /metrics (``edge_gw_records_total`` + values dropped as unchanged). Idle RSS is the
same daemon with no devices. End-to-end alarm latency: during the window smoke alarms are
raised through the Modbus simulators' control API at known times (distinct devices, spread
over the window); the latency of each is the arrival time of its ``alarm`` event in the
platform simulator's store minus the time the simulator's register changed.

Targets (2 cores): cost per point flat across sizes (linear total cost); 1,000 devices under
0.5 core and 150 MB RSS; idle RSS under 60 MB; alarm latency p99 under the smoke
detectors' poll interval (5 s) + 250 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from hwsim.scenario.demo import http_json  # noqa: E402
from hwsim.scenario.model import GatewayOptions, Scenario, parse_scenario  # noqa: E402
from hwsim.scenario.runner import Child, ScenarioRunner, find_scenario  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from tests.support.soak_ledger import read_vmrss  # noqa: E402
from tests.support.sync_mosquitto import Mosquitto, free_port  # noqa: E402

PREFIX = "city"
GW = "gw-scale"
SMOKE_POLL = 5.0
TARGET_CORES_1000 = 0.5
TARGET_RSS_1000_MB = 150.0
TARGET_IDLE_RSS_MB = 60.0
TARGET_LATENCY_P99 = SMOKE_POLL + 0.25
PER_BUILDING = 9  # devices per building besides the site groups
BUILDINGS_PER_LINE = 20
CLK = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ the scenario (pure)


def scale_plan(n: int) -> dict[str, int]:
    """How ``n`` devices are made: buildings, site cameras, virtual filler."""
    if n < 10:
        raise ValueError("at least 10 devices")
    buildings = n // 10
    cameras = max(1, round(n / 30))
    filler = n - PER_BUILDING * buildings - cameras
    if filler < 0:
        raise ValueError(f"cannot make {n} devices")
    return {"buildings": buildings, "cameras": cameras, "virtual_filler": filler}


def scale_scenario(n: int, community: dict[str, Any]) -> Scenario:
    """A scenario of exactly ``n`` devices built from the community scenario's models."""
    plan = scale_plan(n)
    by_name = {g["name"]: g for g in community["groups"]}

    def group(name: str, **over: Any) -> dict[str, Any]:
        g = {k: v for k, v in by_name[name].items() if k != "location"}
        g.update(over)
        return g

    mb = {"line": "mb-{line}", "link": "tcp", "scope": "building"}
    groups = [
        group("smoke", count=2, poll=f"{SMOKE_POLL:g}s", **mb),
        group("gas", count=1, **mb),
        group("tilt", count=1, **mb),
        group("elevators", count=1, **mb),
        group("electricity", count=2, poll="30s", line="meters-{line}", link="pty"),
        group("water", count=1, poll="60s", line="meters-{line}", link="pty"),
        {"name": "env", "scope": "building", "class": "environment_sensor", "count": 1,
         "id": "b{building:03d}-env-{n:02d}", "poll": "10s", "sim": "virtual",
         "virtual_profile": "virtual-environment"},
        group("site-cams", count=plan["cameras"], id="cam-{n:03d}"),
    ]
    for g in groups:
        if g.get("scope", "building") == "building" and "{building:02d}" in g["id"]:
            g["id"] = g["id"].replace("{building:02d}", "{building:03d}")
    if plan["virtual_filler"]:
        groups.append({"name": "parking", "scope": "site", "class": "parking_space",
                       "count": plan["virtual_filler"], "id": "space-{n:04d}", "poll": "5s",
                       "sim": "virtual", "virtual_profile": "virtual-parking"})
    models = {k: dict(v) for k, v in community.get("models", {}).items()}
    # every smoke detector starts quiet (the hailan-jtyg device file starts in alarm), so each
    # injected alarm is a change the gateway must report
    for prof in by_name["smoke"]["profiles"]:
        models.setdefault(prof, {})["set"] = {"alarm": 0, "battery_low": 0}
    data = {
        "scenario": {"name": f"scale-{n}", "seed": 11},
        "gateway": {"id": GW, "district": "510107", "community": "Scale"},
        "site": {"buildings": plan["buildings"], "buildings_per_line": BUILDINGS_PER_LINE},
        "groups": groups,
        "models": models,
    }
    return parse_scenario(data, f"scale-{n}")


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[max(0, min(len(s) - 1, int(round(q * len(s) + 0.5)) - 1))]


def linearity(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Does the gateway's cost grow linearly with points (or better)?

    ``ratios``: CPU per point at each size relative to the 100-device run (or the smallest
    >= 100); linear-or-better means no larger size costs more than 1.5x per point. ``fit``:
    least squares ``cores = fixed + marginal * points/s`` over every size, with the largest
    residual in cores (a straight line through the points means linear total cost)."""
    base = next((r for r in rows if r["devices"] >= 100 and r.get("cpu_s_per_10k_points")), None)
    out: dict[str, Any] = {"linear": None, "ratios": {}}
    if base is None:
        return out
    ratios = {r["devices"]: round(r["cpu_s_per_10k_points"] / base["cpu_s_per_10k_points"], 2)
              for r in rows if r.get("cpu_s_per_10k_points")}
    checked = [v for k, v in ratios.items() if k >= base["devices"]]
    out.update(base_devices=base["devices"], ratios=ratios, linear=all(v <= 1.5 for v in checked))
    pts = [(float(r["points_per_s"]), float(r["cores"])) for r in rows if r.get("points_per_s")]
    if len(pts) >= 2:
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        if sxx > 0:
            b = sum((x - mx) * (y - my) for x, y in pts) / sxx
            a = my - b * mx
            resid = max(abs(y - (a + b * x)) for x, y in pts)
            out["fit"] = {"fixed_cores": round(a, 4), "marginal_cpu_s_per_10k_points": round(b * 10_000, 3),
                          "max_residual_cores": round(resid, 4)}
    return out


# ------------------------------------------------------------------ measuring


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def points_handled(api: str) -> float:
    """Point values the gateway handled: records made + values dropped as unchanged."""
    with urllib.request.urlopen(f"http://{api}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "edge_gw_records_total":
                total += s.value
            elif s.name == "edge_gw_pipeline_drops_total" and s.labels.get("reason") == "unchanged":
                total += s.value
    return total


class Stack:
    """mosquitto + the platform simulator (shared by every size)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.broker = Mosquitto(work)
        self.platform: Child | None = None
        self.platform_url = ""
        self.db = work / "platform.db"

    async def start(self) -> None:
        await asyncio.to_thread(self.broker.start)
        port = free_port()
        self.platform = Child("platform", "platform", [
            sys.executable, "-m", "hwsim", "platform", "run", "--db", str(self.db),
            "--mqtt", f"127.0.0.1:{self.broker.port}", "--prefix", PREFIX,
            "--http", f"127.0.0.1:{port}"], self.work)
        self.platform.spawn()
        info = await self.platform.wait_info(30)
        self.platform_url = str(info["http"])

    async def stop(self) -> None:
        if self.platform is not None and self.platform.proc is not None:
            self.platform.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.platform.proc.wait, 10)
            if self.platform.proc.poll() is None:
                self.platform.proc.kill()
        await asyncio.to_thread(self.broker.stop)


def spawn_gateway(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "-c", str(config)],
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)


def start_py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "-d",
         str(int(seconds)), "-f", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def stop_gateway(gw: subprocess.Popen[bytes]) -> None:
    if gw.poll() is None:
        gw.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(gw.wait, 30)
        except subprocess.TimeoutExpired:
            gw.kill()
            await asyncio.to_thread(gw.wait)


async def wait_ready(gw: subprocess.Popen[bytes], api: str, log: Path, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if gw.poll() is not None:
            tail = await asyncio.to_thread(log.read_text)
            raise RuntimeError(f"gateway exited {gw.returncode}: {tail[-2000:]}")
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            if (await asyncio.to_thread(http_json, f"http://{api}/api/v1/health", 3)).get("live"):
                return time.monotonic() - t0
        await asyncio.sleep(0.2)
    raise RuntimeError(f"gateway API not up after {timeout:.0f}s")


def idle_config(work: Path, api: str, broker_port: int) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    cfg = work / "gateway.toml"
    cfg.write_text(
        f'[gateway]\nid = "{GW}-idle"\ndistrict = "510107"\ncommunity = "Scale"\nlog_level = "warning"\n'
        f'[api]\nlisten = "{api}"\n[buffer]\npath = "{work / "buffer.db"}"\n'
        f'[[uplinks]]\nname = "city"\nkind = "mqtt"\nurl = "mqtt://127.0.0.1:{broker_port}"\n'
        f'topic_prefix = "{PREFIX}"\n')
    return cfg


async def measure_idle(stack: Stack, work: Path) -> dict[str, Any]:
    """The daemon with no devices (its MQTT uplink configured)."""
    api = f"127.0.0.1:{free_port()}"
    cfg = await asyncio.to_thread(idle_config, work, api, stack.broker.port)
    gw = spawn_gateway(cfg, work / "gateway.log")
    try:
        await wait_ready(gw, api, work / "gateway.log", 60)
        await asyncio.sleep(8.0)
        rss = read_vmrss(gw.pid) or 0
        hwm = vm_hwm(gw.pid)
    finally:
        await stop_gateway(gw)
    return {"idle_rss_mb": round(rss / 2**20, 1), "idle_hwm_mb": round(hwm / 2**20, 1)}


async def inject_alarms(runner: ScenarioRunner, window: float, count: int,
                        rng: random.Random) -> list[tuple[str, float]]:
    """Raise ``count`` smoke alarms on distinct devices spread over ``window`` seconds;
    each is cleared 2 polls later. Returns (device, time the register changed)."""
    smoke = [d for d in runner.devices if d.group == "smoke"]
    picks = rng.sample(smoke, min(count, len(smoke)))
    out: list[tuple[str, float]] = []
    clears: list[asyncio.Task[None]] = []
    gap = window / max(1, len(picks))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def post(dev_id: str, line: str | None, v: int) -> None:
            port = runner.endpoints.lines[line or ""]["control_port"]
            async with session.post(f"http://127.0.0.1:{port}/devices/{dev_id}/values",
                                    json={"alarm": v}) as resp:
                resp.raise_for_status()

        async def clear_later(dev_id: str, line: str | None) -> None:
            await asyncio.sleep(2 * SMOKE_POLL)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await post(dev_id, line, 0)

        try:
            for d in picks:
                await asyncio.sleep(rng.uniform(0.2, 1.0) * gap)
                t_before = time.time()
                await post(d.id, d.line, 1)
                # the register changed between the two clock readings: take the midpoint
                out.append((d.id, (t_before + time.time()) / 2))
                clears.append(asyncio.create_task(clear_later(d.id, d.line)))
            await asyncio.gather(*clears, return_exceptions=True)
        finally:
            for t in clears:
                t.cancel()
            await asyncio.gather(*clears, return_exceptions=True)
    return out


def alarm_latencies(db: Path, gw: str, injected: list[tuple[str, float]],
                    timeout: float = 20.0) -> tuple[list[float], int]:
    """Arrival of each injected alarm at the platform: (latencies, alarms not seen)."""
    lat: list[float] = []
    unseen = 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        for dev, t in injected:
            row = con.execute(
                "SELECT min(recv) FROM rx WHERE gw = ? AND dev = ? AND pt = 'alarm' AND kind = 'event' "
                "AND v IN ('true', '1') AND recv >= ? AND recv < ?", (gw, dev, t, t + timeout)).fetchone()
            if row and row[0] is not None:
                lat.append(float(row[0]) - t)
            else:
                unseen += 1
    finally:
        con.close()
    return lat, unseen


async def measure_size(n: int, stack: Stack, base: Path, community: dict[str, Any], *, window: float,
                       warmup: float, profile: Path | None, seed: int,
                       virtual: frozenset[str] = frozenset()) -> dict[str, Any]:
    work = base / f"n{n}"
    work.mkdir(parents=True, exist_ok=True)
    sc = scale_scenario(n, community)
    api = f"127.0.0.1:{free_port()}"
    opts = GatewayOptions(api_listen=api, buffer_path=str(work / "buffer.db"), buffer_budget="1GiB",
                          snapshots_dir=str(work / "snapshots"), mqtt=f"127.0.0.1:{stack.broker.port}",
                          topic_prefix=PREFIX, log_level="warning")
    runner = ScenarioRunner(sc, work / "scenario", opts, gateway_config=work / "gateway.toml",
                            activity=False, seed=seed, virtual=virtual)
    t0 = time.monotonic()
    desc = await runner.start(timeout=120)
    sims_up = time.monotonic() - t0
    log = work / "gateway.log"
    gw = spawn_gateway(work / "gateway.toml", log)
    try:
        api_up = await wait_ready(gw, api, log, 180)
        # warm-up: until nearly every device is online (bounded), then a fixed settle time
        online = 0
        t_online = time.monotonic()
        while time.monotonic() - t_online < 120:
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                devs = (await asyncio.to_thread(http_json, f"http://{api}/api/v1/devices", 30))["devices"]
                online = sum(1 for d in devs if d.get("state") == "online")
                if online >= 0.98 * n:
                    break
            await asyncio.sleep(1.0)
        online_after = time.monotonic() - t_online
        await asyncio.sleep(warmup)
        c0, p0, w0 = proc_cpu(gw.pid), await asyncio.to_thread(points_handled, api), time.monotonic()
        rss_max = 0
        prof_proc: subprocess.Popen[bytes] | None = None
        if profile is not None:
            prof_proc = start_py_spy(gw.pid, profile / f"gateway-{n}.txt", min(window, 20))
        alarms = asyncio.create_task(inject_alarms(runner, window - 2 * SMOKE_POLL - 2,
                                                   min(40, max(5, n // 10)), random.Random(seed + n)))
        try:
            while time.monotonic() - w0 < window:
                rss_max = max(rss_max, read_vmrss(gw.pid) or 0)
                await asyncio.sleep(0.5)
            injected = await alarms
        finally:
            alarms.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await alarms
        c1, p1, w1 = proc_cpu(gw.pid), await asyncio.to_thread(points_handled, api), time.monotonic()
        hwm = vm_hwm(gw.pid)
        if prof_proc is not None:
            await asyncio.to_thread(prof_proc.wait, 60)
        await asyncio.sleep(2.0)  # the last alarms reach the platform
        lat, unseen = alarm_latencies(stack.db, GW, injected)
        health = await asyncio.to_thread(http_json, f"http://{api}/api/v1/health", 10)
    finally:
        await stop_gateway(gw)
        await runner.stop()
    dt = w1 - w0
    cpu = c1 - c0
    points = p1 - p0
    return {
        "devices": n,
        "by_sim": desc["by_sim"],
        "sim_processes": len(desc["processes"]),
        "sims_start_s": round(sims_up, 1),
        "gateway_api_s": round(api_up, 1),
        "online": online,
        "online_after_s": round(online_after, 1),
        "window_s": round(dt, 1),
        "points_per_s": round(points / dt, 1),
        "cpu_seconds": round(cpu, 2),
        "cores": round(cpu / dt, 3),
        "cpu_s_per_10k_points": round(cpu / points * 10_000, 3) if points else None,
        "rss_mb": round(rss_max / 2**20, 1),
        "hwm_mb": round(hwm / 2**20, 1),
        "alarms": len(injected),
        "alarms_unseen": unseen,
        "latency_p50_s": round(pct(lat, 0.5) or 0, 3) if lat else None,
        "latency_p99_s": round(pct(lat, 0.99) or 0, 3) if lat else None,
        "latency_max_s": round(max(lat), 3) if lat else None,
        "ready": health.get("ready"),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }


def verdicts(idle: dict[str, Any], rows: list[dict[str, Any]], lin: dict[str, Any]) -> list[dict[str, Any]]:
    """Targets against figures: name, figure, target, ratio (figure / target), met."""
    out: list[dict[str, Any]] = [{
        "name": "idle RSS (MB)", "figure": idle["idle_rss_mb"], "target": TARGET_IDLE_RSS_MB,
        "ratio": round(idle["idle_rss_mb"] / TARGET_IDLE_RSS_MB, 2),
        "met": idle["idle_rss_mb"] < TARGET_IDLE_RSS_MB}]
    r1000 = next((r for r in rows if r["devices"] == 1000), None)
    if r1000 is not None:
        out.append({"name": "1,000 devices: cores", "figure": r1000["cores"], "target": TARGET_CORES_1000,
                    "ratio": round(r1000["cores"] / TARGET_CORES_1000, 2),
                    "met": r1000["cores"] < TARGET_CORES_1000})
        out.append({"name": "1,000 devices: RSS (MB)", "figure": r1000["rss_mb"], "target": TARGET_RSS_1000_MB,
                    "ratio": round(r1000["rss_mb"] / TARGET_RSS_1000_MB, 2),
                    "met": r1000["rss_mb"] < TARGET_RSS_1000_MB})
    for r in rows:
        p99 = r.get("latency_p99_s")
        if p99 is not None:
            out.append({"name": f"{r['devices']} devices: alarm latency p99 (s)", "figure": p99,
                        "target": TARGET_LATENCY_P99, "ratio": round(p99 / TARGET_LATENCY_P99, 2),
                        "met": p99 < TARGET_LATENCY_P99 and not r["alarms_unseen"]})
    if lin.get("linear") is not None:
        worst = max(v for k, v in lin["ratios"].items() if k >= lin["base_devices"])
        out.append({"name": f"cost per point vs {lin['base_devices']} devices, largest ratio (linear or better)",
                    "figure": worst, "target": 1.5, "ratio": round(worst / 1.5, 2), "met": bool(lin["linear"])})
    return out


def table(idle: dict[str, Any], rows: list[dict[str, Any]], lin: dict[str, Any]) -> str:
    head = (f"{'devices':>8} {'sims':>5} {'points/s':>9} {'cores':>6} {'CPU-s/10k pts':>14} {'vs base':>8} "
            f"{'RSS MB':>7} {'HWM MB':>7} {'lat p50':>8} {'lat p99':>8} {'alarms':>7} {'online':>7}")
    lines = [f"idle gateway (no devices): RSS {idle['idle_rss_mb']} MB (HWM {idle['idle_hwm_mb']} MB)", head]
    for r in rows:
        ratio = lin.get("ratios", {}).get(r["devices"])
        lines.append(
            f"{r['devices']:>8} {r['sim_processes']:>5} {r['points_per_s']:>9.1f} {r['cores']:>6.3f} "
            f"{r['cpu_s_per_10k_points'] if r['cpu_s_per_10k_points'] is not None else '-':>14} "
            f"{ratio if ratio is not None else '-':>8} {r['rss_mb']:>7} {r['hwm_mb']:>7} "
            f"{r['latency_p50_s'] if r['latency_p50_s'] is not None else '-':>8} "
            f"{r['latency_p99_s'] if r['latency_p99_s'] is not None else '-':>8} "
            f"{r['alarms'] - r['alarms_unseen']:>3}/{r['alarms']:<3} {r['online']:>7}")
    lines.append(f"cost linear in points or better: {lin.get('linear')} (cost per point vs the "
                 f"{lin.get('base_devices')}-device run: {lin.get('ratios')}; fit {lin.get('fit')})")
    for v in verdicts(idle, rows, lin):
        lines.append(f"  {'met ' if v['met'] else 'MISS'}  {v['name']}: {v['figure']} (target {v['target']}, "
                     f"ratio {v['ratio']})")
    return "\n".join(lines)


async def run(args: argparse.Namespace, base: Path, community: dict[str, Any]) -> dict[str, Any]:
    stack = Stack(base)
    await stack.start()
    rows: list[dict[str, Any]] = []
    try:
        idle = await measure_idle(stack, base / "idle")
        print(f"idle: {idle}", flush=True)
        for n in args.sizes:
            r = await measure_size(n, stack, base, community, window=args.window, warmup=args.warmup,
                                   profile=args.profile, seed=args.seed, virtual=frozenset(args.virtual))
            print(json.dumps(r), flush=True)
            rows.append(r)
    finally:
        await stack.stop()
    lin = linearity(rows)
    return {"idle": idle, "sizes": rows, "linearity": lin, "targets": verdicts(idle, rows, lin),
            "table": table(idle, rows, lin)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000, 3000])
    ap.add_argument("--window", type=float, default=60.0, help="measured seconds per size (default 60)")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds after the devices are online")
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--profile", type=Path, default=None, help="py-spy raw profiles of the gateway here")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    ap.add_argument("--virtual", nargs="*", default=[], metavar="KIND",
                    help="run these simulator kinds (modbus, dlt645, cjt188, onvif) on the virtual "
                         "driver instead: attributes the gateway's cost to a protocol")
    args = ap.parse_args(argv)
    if args.window < 3 * SMOKE_POLL + 5:
        ap.error(f"--window must be at least {3 * SMOKE_POLL + 5:g} s (alarms need two polls to clear)")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if args.dir is None:
            args.dir = tmp
        base = Path(args.dir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        community = tomllib.loads(find_scenario("community").read_text("utf-8"))
        result = asyncio.run(run(args, base, community))
    print(result["table"], flush=True)
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
