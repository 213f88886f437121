"""Modbus benchmark: N simulated Modbus TCP devices x 20 points polled at 1 s.

    .venv/bin/python tests/bench/bench_modbus.py                     # 1, 10, 100, 1000 devices
    .venv/bin/python tests/bench/bench_modbus.py --devices 1000 --duration 30
    .venv/bin/python tests/bench/bench_modbus.py --mode daemon       # the real daemon

The simulators run as separate processes (``hwsim modbus farm``, 250 devices each, one TCP
port per device) so their cost is not counted. The measured process is either

* ``--mode driver`` (default): a poller process that does what the core's scheduler does --
  one fixed-rate loop per device calling ``ModbusBus.read`` -- measuring the driver alone; or
* ``--mode daemon``: ``edge-gateway run -c generated.toml`` with the generated config; figures
  are read from /proc and its ``/metrics``.

Reported per size: points/s achieved, CPU-seconds per 10,000 points, peak RSS, poll jitter
p50/p99 (start of a poll vs. its schedule; driver mode), requests per poll. Targets (2 cores):
1,000 x 20 at 1 s with the gateway under 0.5 core and 150 MB RSS, jitter p99 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PER_FARM = 250
POINTS = 20
CLK = os.sysconf("SC_CLK_TCK")


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'hardware-sim'}:{ROOT}")


def start_farms(n: int) -> tuple[list[subprocess.Popen[str]], list[int]]:
    procs: list[subprocess.Popen[str]] = []
    ports: list[int] = []
    for start in range(0, n, PER_FARM):
        k = min(PER_FARM, n - start)
        p = subprocess.Popen(
            [sys.executable, "-m", "hwsim.cli", "modbus", "farm", "--devices", str(k), "--uvloop"],
            stdout=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        procs.append(p)
    for p in procs:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line:
            raise SystemExit("simulator farm did not start")
        ports.extend(json.loads(line)["device_ports"].values())
    return procs, ports


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK  # utime + stime


def proc_peak_rss_mb(pid: int) -> float:
    m = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) / 1024 if m else float("nan")


# ------------------------------------------------------------------ driver-mode worker


async def worker(ports: list[int], duration: float, warmup: float) -> dict[str, Any]:
    from drivers.modbus.driver import ModbusBus
    from drivers.modbus.schema import BusOptions, DeviceAddress, PointAddress
    from gateway.plugin import BusSpec, DeviceSpec, DeviceUnavailable, PointSpec

    points = tuple(
        PointSpec(f"p{i:02d}", PointAddress(table="holding", offset=i, type="uint16"))
        for i in range(POINTS)
    )
    jitters: list[float] = []
    counts = {"points": 0, "polls": 0, "requests": 0, "failed": 0}
    t_start = time.monotonic() + 0.5
    measure_from = t_start + warmup
    until = measure_from + duration

    async def run(i: int, port: int) -> None:
        bus = ModbusBus(
            BusSpec(f"dev{i}", "modbus", BusOptions(host="127.0.0.1", port=port, timeout=1.0))
        )
        dev = DeviceSpec(
            f"dev{i}", "environment_sensor", "bench", DeviceAddress(unit=1), None, points, 1.0
        )
        bus.attach(dev)
        nxt = t_start + (i % 1000) / 1000.0  # spread the devices over the second
        try:
            while nxt < until:
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                late = time.monotonic() - nxt
                try:
                    r = await bus.read(dev, points)
                    if nxt >= measure_from:
                        counts["points"] += len(r.values)
                        counts["requests"] += r.requests
                        counts["polls"] += 1
                        jitters.append(late)
                except DeviceUnavailable:
                    counts["failed"] += 1
                nxt += 1.0
        finally:
            await bus.close()

    async def cpu_window() -> tuple[float, float]:
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        c0 = time.process_time()
        await asyncio.sleep(max(0.0, until - time.monotonic()))
        return c0, time.process_time()

    sampler = asyncio.ensure_future(cpu_window())
    await asyncio.gather(*(run(i, p) for i, p in enumerate(ports)))
    c0, c1 = await sampler
    jitters.sort()

    def pct(q: float) -> float:
        return (
            jitters[min(len(jitters) - 1, int(q * len(jitters)))] * 1000
            if jitters
            else float("nan")
        )

    import resource

    return {
        **counts,
        "jitter_p50_ms": pct(0.5),
        "jitter_p99_ms": pct(0.99),
        "duration": duration,
        "cpu_seconds": c1 - c0,  # the poller's own CPU time within the measured window
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_driver_mode(ports: list[int], duration: float, warmup: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(ports, fh)
    p = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--worker",
            fh.name,
            "--duration",
            str(duration),
            "--warmup",
            str(warmup),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    out, _ = p.communicate(timeout=duration + warmup + 120)
    os.unlink(fh.name)
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


# ------------------------------------------------------------------ daemon mode


# The catalogue has no class with 20 points: the daemon run maps the 14 numeric/bool points of
# electricity_meter onto holding registers 0-13 of the bench device (one request per poll).
DAEMON_POINTS = [
    "energy_import",
    "energy_export",
    "energy_total",
    "voltage",
    "voltage_b",
    "voltage_c",
    "current",
    "current_b",
    "current_c",
    "power",
    "power_factor",
    "frequency",
    "relay_closed",
    "battery_low",
]


def generate_config(ports: list[int], path: Path, api_port: int) -> None:
    prof_dir = path.parent / "profiles"
    prof_dir.mkdir(exist_ok=True)
    prof = [
        '[profile]\nid = "bench-meter"\nclass = "electricity_meter"\ndriver = "modbus"\n'
        'vendor = "Bench"\nmodel = "bench-20"\n'
    ]
    for i, pt in enumerate(DAEMON_POINTS):
        scale = "\nscale = 0.00001" if pt == "power_factor" else ""
        prof.append(f'[points.{pt}]\naddress = {{ table = "holding", offset = {i} }}{scale}\n')
    (prof_dir / "bench-meter.toml").write_text("\n".join(prof))
    lines = [
        '[gateway]\nid = "bench-gw"\ndistrict = "510107"\ncommunity = "Bench"\n'
        'profile_dirs = ["profiles"]\n',
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n',
        f'[buffer]\npath = "{path.parent / "buffer.db"}"\n',
    ]
    for i, port in enumerate(ports):
        lines.append(
            f'[[devices]]\nid = "bench-{i:04d}"\nclass = "electricity_meter"\nprofile = "bench-meter"\n'
            f'address = {{ host = "127.0.0.1", port = {port}, unit = 1 }}\npoll = "1s"\n'
        )
    path.write_text("\n".join(lines))


def scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("edge_gw_") and " " in line:
            name, value = line.rsplit(" ", 1)
            base = name.split("{", 1)[0]
            try:
                out[base] = out.get(base, 0.0) + float(value)
            except ValueError:
                pass
    return out


def run_daemon_mode(ports: list[int], duration: float, warmup: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "generated.toml"
        api_port = 18470
        generate_config(ports, cfg, api_port)
        exe = ROOT / ".venv" / "bin" / "edge-gateway"
        p = subprocess.Popen([str(exe), "run", "-c", str(cfg)], env=_env())
        try:
            time.sleep(2 + warmup)
            url = f"http://127.0.0.1:{api_port}/metrics"
            m0, cpu0 = scrape(url), proc_cpu_seconds(p.pid)
            time.sleep(duration)
            m1, cpu1 = scrape(url), proc_cpu_seconds(p.pid)
            rss = proc_peak_rss_mb(p.pid)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(30)
    req = m1.get("edge_gw_modbus_requests_total", 0) - m0.get("edge_gw_modbus_requests_total", 0)
    return {
        "points": req * len(DAEMON_POINTS),  # one request per poll reads all points
        "polls": req,
        "requests": req,
        "failed": 0,
        "jitter_p50_ms": float("nan"),
        "jitter_p99_ms": float("nan"),
        "cpu_seconds": cpu1 - cpu0,
        "peak_rss_mb": rss,
        "duration": duration,
    }


def report(n: int, r: dict[str, Any]) -> str:
    pts_s = r["points"] / r["duration"]
    cpu_10k = r["cpu_seconds"] / r["points"] * 10_000 if r["points"] else float("nan")
    return (
        f"{n:>5} dev  {pts_s:>9.0f} points/s  {r['cpu_seconds'] / r['duration']:>5.2f} core  "
        f"{cpu_10k:>6.3f} cpu-s/10k pts  peak RSS {r['peak_rss_mb']:>6.1f} MB  "
        f"jitter p50 {r['jitter_p50_ms']:>6.1f} ms p99 {r['jitter_p99_ms']:>6.1f} ms  "
        f"requests/poll {r['requests'] / max(1, r['polls']):.2f}  failed polls {r['failed']}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, nargs="*", default=[1, 10, 100, 1000])
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per size")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--mode", choices=("driver", "daemon"), default="driver")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import uvloop

        ports = json.loads(args.worker.read_text())
        res = uvloop.run(worker(ports, args.duration, args.warmup))
        print(json.dumps(res))
        return 0
    results = {}
    for n in args.devices:
        farms, ports = start_farms(n)
        try:
            run = run_driver_mode if args.mode == "driver" else run_daemon_mode
            r = run(ports, args.duration, args.warmup)
        finally:
            stop(farms)
        results[n] = r
        print(report(n, r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
