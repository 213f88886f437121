"""Modbus benchmark: N simulated Modbus TCP devices x 20 points polled at 1 s.

    .venv/bin/python tests/bench/bench_modbus.py                     # 1, 10, 100, 1000 devices
    .venv/bin/python tests/bench/bench_modbus.py --devices 1000 --duration 30
    .venv/bin/python tests/bench/bench_modbus.py --devices 1000 --profile /tmp/gw  # + py-spy
    BENCH_SPY_RATE=200 .venv/bin/python tests/bench/bench_modbus.py --devices 1000 --profile /tmp/gw
    .venv/bin/python tests/bench/bench_modbus.py --mode driver       # the driver alone

The simulators run as separate processes (``hwsim modbus farm``, 250 devices each, one TCP
port per device) so their cost is not counted. The measured process is either

* ``--mode daemon`` (default): the real gateway, ``python -m gateway.cli run -c
  generated.toml`` (uvloop, buffer, pipeline, API: everything a box runs), with 1,000 Modbus
  TCP devices of a 20-point electricity meter profile. CPU from /proc/PID/stat, peak RSS from
  VmHWM, counts from its /metrics (records, polls, Modbus requests and failures); jitter from
  the records it stored (``/api/v1/records``: per device, the spacing of consecutive polls'
  acquisition times vs. 1 s; read back after the CPU window) and, for comparison, the upper
  bucket bounds of ``edge_gw_poll_lateness_seconds``; or
* ``--mode driver``: a poller process that does what the core's scheduler does -- one
  fixed-rate loop per device calling ``ModbusBus.read`` -- measuring the driver alone.

Reported per size: points/s achieved, CPU-seconds per 10,000 points, peak RSS, poll jitter
p50/p99, requests per poll. Targets (2 cores): 1,000 x 20 at 1 s with the gateway under
0.5 core and 150 MB RSS, jitter p99 under 100 ms.
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


# 20 real points of the electricity_meter class, on holding registers 0-19 of the bench
# device (one request of 20 registers per poll).
DAEMON_POINTS = [
    "energy_import",
    "energy_import_t1",
    "energy_import_t2",
    "energy_import_t3",
    "energy_import_t4",
    "energy_export",
    "energy_total",
    "voltage",
    "voltage_b",
    "voltage_c",
    "current",
    "current_b",
    "current_c",
    "power",
    "power_b",
    "power_c",
    "apparent_power",
    "reactive_power",
    "power_factor",
    "frequency",
]
assert len(DAEMON_POINTS) == POINTS


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
        'profile_dirs = ["profiles"]\nlog_level = "warning"\n',
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n',
        f'[buffer]\npath = "{path.parent / "buffer.db"}"\nbudget = "1GiB"\n',
    ]
    for i, port in enumerate(ports):
        lines.append(
            f'[[devices]]\nid = "bench-{i:04d}"\nclass = "electricity_meter"\n'
            f'profile = "bench-meter"\n'
            f'address = {{ host = "127.0.0.1", port = {port}, unit = 1 }}\npoll = "1s"\n'
        )
    path.write_text("\n".join(lines))


def scrape(url: str) -> dict[str, float]:
    """Sums of every edge_gw_ sample by name (labels folded), and the lateness buckets."""
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("edge_gw_") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{", 1)[0]
        if base == "edge_gw_poll_lateness_seconds_bucket":
            base += "|" + name.split('le="', 1)[1].split('"', 1)[0]
        try:
            out[base] = out.get(base, 0.0) + float(value)
        except ValueError:
            pass
    return out


def bucket_quantile(m0: dict[str, float], m1: dict[str, float], q: float) -> float:
    """q-quantile (ms) of the poll lateness histogram between two scrapes: the upper bound
    of the bucket it falls in (Prometheus-style, without interpolation below it)."""
    key = "edge_gw_poll_lateness_seconds_bucket|"
    labels = sorted((k[len(key) :] for k in m1 if k.startswith(key)), key=float)
    total = m1.get(key + "+Inf", 0.0) - m0.get(key + "+Inf", 0.0)
    if not total:
        return float("nan")
    for label in labels:
        if m1.get(key + label, 0.0) - m0.get(key + label, 0.0) >= q * total:
            return float(label) * 1000
    return float("inf")


def api_get(base: str, path: str) -> Any:
    return json.loads(urllib.request.urlopen(base + path, timeout=30).read())


def ts_jitter(base: str, first_seq: int, last_seq: int, cap: int) -> tuple[float, float, int]:
    """Jitter from the records themselves: per device, the spacing of consecutive polls'
    acquisition times vs. the 1 s interval; p50/p99 of |spacing - 1 s| in ms."""
    by_dev: dict[str, set[float]] = {}
    after, fetched = first_seq, 0
    while after < last_seq and fetched < cap:
        page = api_get(base, f"/api/v1/records?after_seq={after}&limit=10000")["records"]
        if not page:
            break
        for r in page:
            if r["seq"] > last_seq:
                break
            if r["kind"] == "telemetry":
                by_dev.setdefault(r["dev"], set()).add(r["ts"])
        after = page[-1]["seq"]
        fetched += len(page)
    dev_gaps = [
        abs((b - a) - 1.0) * 1000
        for ts in by_dev.values()
        for a, b in zip(sorted(ts), sorted(ts)[1:], strict=False)
    ]
    dev_gaps.sort()
    if not dev_gaps:
        return float("nan"), float("nan"), 0
    return (
        dev_gaps[len(dev_gaps) // 2],
        dev_gaps[min(len(dev_gaps) - 1, int(0.99 * len(dev_gaps)))],
        len(dev_gaps),
    )


def run_daemon_mode(
    ports: list[int], duration: float, warmup: float, profile: Path | None = None
) -> dict[str, Any]:
    """The real gateway process: ``edge-gateway run`` with one Modbus TCP device per port."""
    sys.path.insert(0, str(ROOT))
    from tests.support.core_daemon import free_port

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "generated.toml"
        api_port = free_port()
        generate_config(ports, cfg, api_port)
        base = f"http://127.0.0.1:{api_port}"
        log = open(Path(tmp) / "gateway.log", "w")
        p = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(cfg)],
            env=_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        spy: subprocess.Popen[bytes] | None = None
        try:
            deadline = time.monotonic() + 60
            while True:
                if p.poll() is not None:
                    raise SystemExit(f"gateway exited: {Path(tmp, 'gateway.log').read_text()}")
                try:
                    if api_get(base, "/api/v1/health").get("ready"):
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("gateway not ready within 60 s")
                time.sleep(0.2)
            time.sleep(warmup)
            url = f"{base}/metrics"
            seq0 = api_get(base, "/api/v1/records?after_seq=0&limit=1")["last_seq"]
            m0, cpu0, t0 = scrape(url), proc_cpu_seconds(p.pid), time.monotonic()
            if profile is not None:
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(p.pid),
                        "--duration",
                        str(int(duration)),
                        "--rate",
                        os.environ.get("BENCH_SPY_RATE", "50"),
                        "--nonblocking",  # sampling must not pause the gateway
                        "--format",
                        "raw",
                        "-o",
                        str(profile),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            time.sleep(duration)
            m1, cpu1, t1 = scrape(url), proc_cpu_seconds(p.pid), time.monotonic()
            seq1 = api_get(base, "/api/v1/records?after_seq=0&limit=1")["last_seq"]
            rss = proc_peak_rss_mb(p.pid)
            if spy is not None:
                spy.wait(60)
            # after the CPU window: read the records back (bounded) for ts-based jitter
            j50, j99, n_gaps = ts_jitter(base, seq0, seq1, cap=200_000)
        finally:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            log.close()

    def delta(name: str) -> float:
        return m1.get(name, 0.0) - m0.get(name, 0.0)

    polls = delta("edge_gw_polls_total")  # ok + failed
    req = delta("edge_gw_modbus_requests_total")
    failures = delta("edge_gw_modbus_request_failures_total")
    elapsed = t1 - t0
    return {
        "points": delta("edge_gw_records_total"),
        "records": delta("edge_gw_records_total"),
        "polls": polls,
        "requests": req,
        "failed": failures,
        "skipped": delta("edge_gw_polls_skipped_total"),
        "jitter_p50_ms": j50,
        "jitter_p99_ms": j99,
        "jitter_samples": n_gaps,
        "lateness_p50_ms": bucket_quantile(m0, m1, 0.5),
        "lateness_p99_ms": bucket_quantile(m0, m1, 0.99),
        "cpu_seconds": cpu1 - cpu0,
        "peak_rss_mb": rss,
        "duration": elapsed,
    }


def report(n: int, r: dict[str, Any]) -> str:
    pts_s = r["points"] / r["duration"]
    cpu_10k = r["cpu_seconds"] / r["points"] * 10_000 if r["points"] else float("nan")
    return (
        f"{n:>5} dev  {pts_s:>9.0f} points/s  {r['cpu_seconds'] / r['duration']:>5.2f} core  "
        f"{cpu_10k:>6.3f} cpu-s/10k pts  peak RSS {r['peak_rss_mb']:>6.1f} MB  "
        f"jitter p50 {r['jitter_p50_ms']:>6.1f} ms p99 {r['jitter_p99_ms']:>6.1f} ms  "
        f"requests/poll {r['requests'] / max(1, r['polls']):.2f}  failed {r['failed']:.0f}"
        f"  skipped {r.get('skipped', 0):.0f}"
        + (
            f"  lateness(histogram) p50<={r['lateness_p50_ms']:g} ms p99<={r['lateness_p99_ms']:g} ms"
            if "lateness_p50_ms" in r
            else ""
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--devices", type=int, nargs="*", default=[1, 10, 100, 1000])
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per size")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--mode", choices=("driver", "daemon"), default="daemon")
    ap.add_argument(
        "--profile",
        type=Path,
        help="daemon mode: record the gateway with py-spy into this file (raw, per size)",
    )
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
            if args.mode == "driver":
                r = run_driver_mode(ports, args.duration, args.warmup)
            else:
                prof = args.profile.with_suffix(f".{n}.txt") if args.profile else None
                r = run_daemon_mode(ports, args.duration, args.warmup, prof)
        finally:
            stop(farms)
        results[n] = r
        print(report(n, r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
