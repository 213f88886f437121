"""The whole benchmark suite: every per-issue benchmark plus the scale curve, one table.

    .venv/bin/python -m tests.bench.bench_all                    # full size (about 10 minutes)
    .venv/bin/python -m tests.bench.bench_all --quick            # reduced sizes (about 4 minutes)
    .venv/bin/python -m tests.bench.bench_all --json bench.json  # also save every figure
    .venv/bin/python -m tests.bench.bench_all --only scale sync  # a subset

Each benchmark runs as a subprocess (its own interpreter, so one cannot skew another's
memory or event loop); this module parses what each prints or writes and prints one table:
measure, figure, unit, target, ratio (figure / target, or figure / baseline where the
benchmark has a baseline), and whether the target is met. See ``tests/bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BENCHES = ("buffer", "sync", "modbus", "scale")


@dataclass
class Row:
    bench: str
    measure: str
    figure: float | None
    unit: str
    target: str = ""
    ratio: float | None = None  # figure / target (or / baseline, see ratio_of)
    ratio_of: str = ""
    met: bool | None = None


@dataclass
class Outcome:
    bench: str
    command: list[str]
    seconds: float
    returncode: int | None
    rows: list[Row]
    raw: Any = None
    error: str = ""


def _num(text: str) -> float:
    return float(text.replace(",", ""))


# ------------------------------------------------------------------ parsers (pure)


def parse_buffer(results: list[dict[str, Any]]) -> list[Row]:
    """``bench_buffer --json``: [{name, value, unit, baseline, target, ok, ratio}]."""
    rows = []
    for r in results:
        ratio = r.get("ratio")
        rows.append(Row("buffer", str(r["name"]), float(r["value"]), str(r["unit"]), str(r.get("target") or ""),
                        round(ratio, 3) if isinstance(ratio, int | float) else None,
                        "vs raw SQLite" if ratio is not None else "", r.get("ok")))
    return rows


_SYNC_ROW = re.compile(r"^(ceiling|baseline|uplink)\s+([\d,]+)\s+([\d.]+)\s+([\d,]+)\s+([\d.]+)\s*$")
_SYNC_LAT = re.compile(r"latency p50 (\d+) ms, p99 (\d+) ms")


def parse_sync(text: str) -> list[Row]:
    """``bench_sync`` prints a small table and the live-event latency."""
    rates: dict[str, float] = {}
    for line in text.splitlines():
        m = _SYNC_ROW.match(line.strip())
        if m:
            rates[m.group(1)] = _num(m.group(4))
    rows: list[Row] = []
    if "uplink" in rates:
        up = rates["uplink"]
        rows.append(Row("sync", "MQTT drain (buffer -> QoS 1 -> PUBACK -> ack)", up, "records/s", ">=100,000/s",
                        round(up / 100_000, 3), "vs target", up >= 100_000))
        if "baseline" in rates:
            r = up / rates["baseline"]
            rows.append(Row("sync", "MQTT drain vs straight-line baseline", round(r, 3), "x", ">=0.5x",
                            round(r / 0.5, 3), "vs target", r >= 0.5))
        if "ceiling" in rates:
            rows.append(Row("sync", "mosquitto ceiling (pre-encoded batches)", rates["ceiling"], "records/s"))
    m = _SYNC_LAT.search(text)
    if m:
        p99 = float(m.group(2)) / 1000
        rows.append(Row("sync", "live event latency p99 during the drain", p99, "s", "<1 s",
                        round(p99 / 1.0, 3), "vs target", p99 < 1.0))
        rows.append(Row("sync", "live event latency p50 during the drain", float(m.group(1)) / 1000, "s"))
    return rows


def parse_modbus(results: dict[str, Any]) -> list[Row]:
    """``bench_modbus --json``: {devices: {points, cpu_seconds, peak_rss_mb, jitter_p99_ms, duration}}."""
    rows: list[Row] = []
    for n, r in sorted(results.items(), key=lambda kv: int(kv[0])):
        dur = float(r.get("duration") or 0) or 1.0
        cores = float(r["cpu_seconds"]) / dur
        pts = float(r.get("points") or 0)
        big = int(n) >= 1000
        rows.append(Row("modbus", f"{n} Modbus TCP devices x 20 points @1 s: points/s", round(pts / dur, 1), "points/s"))
        rows.append(Row("modbus", f"{n} devices: gateway cores", round(cores, 3), "cores",
                        "<0.5" if big else "", round(cores / 0.5, 3) if big else None,
                        "vs target" if big else "", cores < 0.5 if big else None))
        if pts:
            rows.append(Row("modbus", f"{n} devices: CPU-seconds per 10,000 points",
                            round(float(r["cpu_seconds"]) / pts * 10_000, 3), "CPU-s"))
        rss = float(r["peak_rss_mb"])
        rows.append(Row("modbus", f"{n} devices: peak RSS", round(rss, 1), "MB", "<150" if big else "",
                        round(rss / 150, 3) if big else None, "vs target" if big else "", rss < 150 if big else None))
        j = r.get("jitter_p99_ms")
        if isinstance(j, int | float):
            rows.append(Row("modbus", f"{n} devices: poll jitter p99", round(float(j), 1), "ms",
                            "<100 ms" if big else "", round(float(j) / 100, 3) if big else None,
                            "vs target" if big else "", float(j) < 100 if big else None))
    return rows


def parse_scale(result: dict[str, Any]) -> list[Row]:
    """``bench_scale --json``: idle, sizes, linearity, targets."""
    rows: list[Row] = []
    idle = result.get("idle", {})
    for r in result.get("sizes", []):
        n = r["devices"]
        rows.append(Row("scale", f"{n} mixed devices: points/s", r["points_per_s"], "points/s"))
        rows.append(Row("scale", f"{n} mixed devices: CPU-seconds per 10,000 points",
                        r["cpu_s_per_10k_points"], "CPU-s",
                        ratio=result.get("linearity", {}).get("ratios", {}).get(str(n),
                              result.get("linearity", {}).get("ratios", {}).get(n)),
                        ratio_of=f"vs {result.get('linearity', {}).get('base_devices')} devices"))
        rows.append(Row("scale", f"{n} mixed devices: gateway cores", r["cores"], "cores"))
        rows.append(Row("scale", f"{n} mixed devices: RSS (peak VmRSS in window)", r["rss_mb"], "MB"))
        rows.append(Row("scale", f"{n} mixed devices: alarm latency p50", r["latency_p50_s"], "s"))
    for t in result.get("targets", []):
        rows.append(Row("scale", f"target: {t['name']}", t["figure"], "", f"<{t['target']}", t["ratio"],
                        "vs target", t["met"]))
    if idle and not any(t["name"].startswith("idle") for t in result.get("targets", [])):
        rows.append(Row("scale", "idle RSS", idle.get("idle_rss_mb"), "MB"))
    return rows


# ------------------------------------------------------------------ running


def commands(quick: bool, work: Path) -> dict[str, tuple[list[str], Path | None]]:
    py = sys.executable
    modbus_json = work / "modbus.json"
    scale_json = work / "scale.json"
    return {
        "buffer": ([py, "-m", "tests.bench.bench_buffer", "--json", "--dir", str(work),
                    *(["--records", "50000", "--drain-records", "100000"] if quick else [])], None),
        "sync": ([py, "tests/bench/bench_sync.py", "--uvloop",
                  *(["--records", "200000"] if quick else [])], None),
        "modbus": ([py, "tests/bench/bench_modbus.py", "--json", str(modbus_json),
                    *(["--devices", "100", "1000", "--duration", "10"] if quick else ["--devices", "10", "100", "1000"])],
                   modbus_json),
        "scale": ([py, "-m", "tests.bench.bench_scale", "--json", str(scale_json),
                   *(["--sizes", "10", "100", "1000", "--window", "25", "--warmup", "5"] if quick else [])],
                  scale_json),
    }


def run_one(name: str, argv: list[str], json_path: Path | None, timeout: float) -> Outcome:
    t0 = time.monotonic()
    print(f"--- {name}: {' '.join(argv[1:])}", flush=True)
    try:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else ""
        return Outcome(name, argv, time.monotonic() - t0, None, [], out, f"timed out after {timeout:.0f}s")
    dt = time.monotonic() - t0
    sys.stdout.write(proc.stdout[-3000:] if name != "buffer" else "")
    err = "" if proc.returncode == 0 else proc.stderr[-2000:]
    try:
        if name == "buffer":
            raw: Any = json.loads(proc.stdout[proc.stdout.index("["):])
            rows = parse_buffer(raw)
        elif name == "sync":
            raw = proc.stdout
            rows = parse_sync(proc.stdout)
        elif json_path is not None and json_path.exists():
            raw = json.loads(json_path.read_text())
            rows = parse_modbus(raw) if name == "modbus" else parse_scale(raw)
        else:
            raw, rows = None, []
    except (ValueError, KeyError, TypeError) as exc:
        raw, rows = proc.stdout[-2000:], []
        err = (err + f"\ncould not read the figures: {exc}").strip()
    if not rows and not err:
        err = f"no figures (exit {proc.returncode}): {proc.stderr[-1500:]}"
    # bench_buffer exits 1 when a target is missed: that is a figure, not a crash
    return Outcome(name, argv, dt, proc.returncode, rows, raw, err)


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.1f}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"


def render(outcomes: list[Outcome]) -> str:
    rows = [r for o in outcomes for r in o.rows]
    w = max([len(r.measure) for r in rows] + [20])
    lines = [f"{'bench':<7} {'measure':<{w}} {'figure':>12} {'unit':<10} {'target':<12} {'ratio':>7} {'of':<16} met",
             "-" * (w + 72)]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "NO")
        lines.append(f"{r.bench:<7} {r.measure:<{w}} {fmt(r.figure):>12} {r.unit:<10} {r.target:<12} "
                     f"{fmt(r.ratio):>7} {r.ratio_of:<16} {met}")
    for o in outcomes:
        lines.append(f"{o.bench}: {o.seconds:.0f}s, exit {o.returncode}" + (f"  ERROR: {o.error}" if o.error else ""))
    missed = [r for r in rows if r.met is False]
    lines.append(f"targets: {sum(1 for r in rows if r.met)} met, {len(missed)} missed"
                 + (": " + "; ".join(f"{r.bench}/{r.measure}" for r in missed) if missed else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench.bench_all", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes)")
    ap.add_argument("--json", type=Path, default=None, help="write every figure (and raw results) here")
    ap.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES))
    ap.add_argument("--timeout", type=float, default=3600.0, help="most seconds per benchmark")
    args = ap.parse_args(argv)
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        cmds = commands(args.quick, Path(tmp))
        for name in args.only:
            argv_, json_path = cmds[name]
            outcomes.append(run_one(name, argv_, json_path, args.timeout))
    table = render(outcomes)
    print("\n" + table, flush=True)
    if args.json:
        args.json.write_text(json.dumps({
            "quick": args.quick, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(),
            "rows": [asdict(r) for o in outcomes for r in o.rows],
            "runs": [{"bench": o.bench, "command": o.command[1:], "seconds": round(o.seconds, 1),
                      "returncode": o.returncode, "error": o.error, "raw": o.raw} for o in outcomes],
        }, indent=1, default=str))
    return 0 if all(not o.error for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
