"""``hwsim demo``: a simulated community, the gateway and a simulated city platform, end to end.

Starts (all on loopback): mosquitto on a free port with its own config, the city-platform
simulator subscribed to it, a fault proxy in front of the broker, the scenario's simulators,
and the gateway (``edge-gateway run``) whose MQTT uplink goes through the proxy. While it
runs it shows a live view (or plain lines without a terminal). ``--outage N`` cuts the proxy
for N seconds in the middle. At the end it waits for the backlog to drain, stops the gateway
with SIGTERM and prints the platform's verdict: received, unique, duplicates, and every seq
neither received, nor still held in the gateway's buffer, nor covered by a gap record.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hwsim.platform.store import subtract_ranges
from hwsim.proxy.proxy import FaultProxy
from hwsim.scenario.model import GatewayOptions, ScenarioError, load_scenario
from hwsim.scenario.runner import Child, ScenarioRunner, StartError, find_scenario

PREFIX = "city"


@dataclass
class DemoOptions:
    scenario: Path
    workdir: Path
    duration: float = 90.0
    outage: float = 0.0
    drain_timeout: float = 120.0
    live: bool = True
    interval: float = 5.0
    json_out: bool = False
    virtual: set[str] = field(default_factory=set)
    buildings: int | None = None
    activity: bool = True
    seed: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace, workdir: Path, virtual: set[str]) -> DemoOptions:
        live = not args.no_live and sys.stdout.isatty()
        return cls(
            scenario=find_scenario(args.scenario), workdir=workdir, duration=args.duration,
            outage=max(0.0, args.outage), drain_timeout=args.drain_timeout, live=live,
            interval=args.interval or (1.0 if live else 5.0), json_out=args.json, virtual=virtual,
            buildings=args.buildings, activity=not args.no_activity, seed=args.seed,
        )

    def outage_window(self) -> tuple[float, float] | None:
        """(start, end) seconds after the gateway is ready; None without an outage."""
        if self.outage <= 0:
            return None
        start = max(8.0, (self.duration - self.outage) / 2)
        return start, start + self.outage

    def live_seconds(self) -> float:
        window = self.outage_window()
        return max(self.duration, window[1] + 8.0) if window else self.duration


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for a child to exit; SIGKILL it after ``timeout`` seconds."""
    try:
        return await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return await asyncio.to_thread(proc.wait)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_json(url: str, timeout: float = 5.0) -> Any:
    """GET ``url`` as JSON. A 503 answer's body is returned too: the gateway says "not
    ready, because ..." that way."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 503:
            return json.loads(exc.read())
        raise


async def start_platform(work: Path, broker_port: int, probe_id: str) -> tuple[Child, str]:
    """Start the city-platform simulator on the broker; return it and its HTTP base URL once
    it is subscribed (checked with a probe publish under ``probe_id``)."""
    http_port = free_port()
    platform = Child("platform", "platform", [
        sys.executable, "-m", "hwsim", "platform", "run", "--db", str(work / "platform.db"),
        "--mqtt", f"127.0.0.1:{broker_port}", "--prefix", PREFIX,
        "--http", f"127.0.0.1:{http_port}"], work)
    platform.spawn()
    info = await platform.wait_info(30)
    url = str(info["http"])
    await wait_platform_subscribed(broker_port, url, probe_id)
    return platform, url


async def wait_platform_subscribed(
    broker_port: int, platform_url: str, probe_id: str, timeout: float = 20.0
) -> None:
    """Publish a probe status until the platform simulator has stored it, i.e. until its
    subscription is live (records published before that would not be counted)."""
    import aiomqtt

    deadline = time.monotonic() + timeout
    async with aiomqtt.Client("127.0.0.1", broker_port, identifier=probe_id) as client:
        while time.monotonic() < deadline:
            await client.publish(f"{PREFIX}/{probe_id}/status", b'{"status": "probe"}', qos=1)
            await asyncio.sleep(0.2)
            with contextlib.suppress(OSError, ValueError):
                st = await asyncio.to_thread(http_json, platform_url + "/api/status")
                if probe_id in json.dumps(st):
                    return
    raise StartError("the platform simulator did not subscribe to the broker")


def read_stopped_buffer(db: Path, timeout: float = 300.0) -> tuple[dict[str, Any], list[int]]:
    """A stopped gateway's buffer statistics (``last_seq``, evictions...) and the seqs it still holds, read
    with the gateway's own `buffer` CLI (the simulators never import the gateway)."""
    stats = json.loads(subprocess.run(
        [sys.executable, "-m", "gateway.cli", "buffer", "stats", "--db", str(db), "--json"],
        check=True, capture_output=True, timeout=timeout).stdout)
    out = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "buffer", "export", "--db", str(db), "--json"],
        check=True, capture_output=True, timeout=timeout).stdout
    held = [json.loads(line)["seq"] for line in out.splitlines() if line.strip()]
    return stats, held


# ---------------------------------------------------------------- the verdict (pure)


def ranges(seqs: list[int]) -> list[list[int]]:
    """Sorted distinct ints -> inclusive ranges."""
    out: list[list[int]] = []
    for s in seqs:
        if out and s == out[-1][1] + 1:
            out[-1][1] = s
        elif not out or s > out[-1][1]:
            out.append([s, s])
    return out


def verdict(platform: dict[str, Any], last_seq: int, held: list[int]) -> dict[str, Any]:
    """Combine the platform's summary for one gateway with what its buffer still holds.

    ``last_seq``: the highest seq the gateway committed; ``held``: seqs still in its buffer
    (committed, not yet acknowledged; they go out on the next connection). A seq is *lost*
    when it is in neither place and no gap record covers it."""
    seq_max = int(platform.get("seq_max") or 0)
    missing = [list(r) for r in platform.get("missing", [])]
    if last_seq > seq_max:
        missing.append([seq_max + 1, last_seq])
    covered = [(int(g["first_seq"]), int(g["last_seq"])) for g in platform.get("gaps", [])]
    held_ranges = ranges(sorted(set(held)))
    not_received = sum(b - a + 1 for a, b in missing)
    unexplained = subtract_ranges(subtract_ranges(missing, held_ranges), covered)
    in_gaps = subtract_ranges(missing, held_ranges)
    lost = sum(b - a + 1 for a, b in unexplained)
    explained = sum(b - a + 1 for a, b in in_gaps) - lost
    # a gap record's seq range also spans seqs of other lanes: the seqs it explains can be
    # at most the number of records it says were evicted
    evicted = sum(int(g["v"]) for g in platform.get("gaps", []) if isinstance(g.get("v"), int | float))
    overclaimed = max(0, explained - evicted)
    events_evicted = [g for g in platform.get("gaps", []) if g.get("lane") == "event"]
    return {
        "received": platform.get("received", 0),
        "unique": platform.get("unique", 0),
        "duplicates": platform.get("duplicates", 0),
        "last_seq": last_seq,
        "platform_seq_max": seq_max,
        "not_received": not_received,
        "held_in_buffer": len(set(held)),
        "explained_by_gap_records": explained,
        "evicted_by_gap_records": evicted,
        "unaccounted_in_gaps": overclaimed,
        "events_evicted": len(events_evicted),
        "gap_records": len(platform.get("gaps", [])),
        "missing": lost,
        "missing_ranges": unexplained[:20],
        "seq_conflicts": platform.get("seq_conflicts", 0),
        "hist_records": platform.get("hist_records", 0),
        "latency": platform.get("latency", {}),
        "ok": lost == 0 and not overclaimed and not platform.get("seq_conflicts"),
    }


def format_verdict(v: dict[str, Any]) -> list[str]:
    lat = v.get("latency", {}).get("live", {})
    ev = lat.get("event") or {}
    lines = [
        "platform verdict",
        f"  received            {v['received']}",
        f"  unique              {v['unique']}",
        f"  duplicates          {v['duplicates']} (resends of ids the platform already had)",
        f"  replayed as backlog {v['hist_records']}",
        f"  gateway last seq    {v['last_seq']} (platform saw up to {v['platform_seq_max']})",
        f"  held in buffer      {v['held_in_buffer']} (committed, sent on the next connection)",
        f"  covered by gaps     {v['explained_by_gap_records']} ({v['gap_records']} gap records)",
        f"  seq conflicts       {v['seq_conflicts']}",
        f"  MISSING             {v['missing']}" + (f" {v['missing_ranges']}" if v["missing"] else ""),
    ]
    if ev:
        lines.append(f"  live event latency  p50 {ev.get('p50')} s, p99 {ev.get('p99')} s ({ev.get('count')} events)")
    lines.append("PASS: nothing missing" if v["ok"] else "FAIL: records are missing")
    return lines


# ---------------------------------------------------------------- mosquitto


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir / "mosquitto"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    def config_text(self) -> str:
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "log_type error",
                 "log_type warning", "set_tcp_nodelay true", "allow_anonymous true",
                 "persistence false", "max_inflight_messages 0", "max_queued_messages 0",
                 "max_queued_bytes 0"]
        if os.geteuid() == 0:
            lines.append("user root")
        return "\n".join(lines) + "\n"

    def spawn(self) -> subprocess.Popen[bytes]:
        if not Path(self.binary).exists():
            raise StartError("mosquitto is not installed (apt-get install mosquitto; demo.sh does it)")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        with (self.workdir / "mosquitto.log").open("ab") as log:
            return subprocess.Popen([self.binary, "-c", str(conf)], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    async def start(self, timeout: float = 10.0) -> None:
        self.proc = self.spawn()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StartError(f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()[-1000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise StartError("mosquitto did not listen") from None
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            await wait_exit(self.proc, 5.0)


# ---------------------------------------------------------------- the demo


class Demo:
    def __init__(self, opt: DemoOptions) -> None:
        self.opt = opt
        self.work = opt.workdir
        self.broker = Broker(self.work)
        self.platform: Child | None = None
        self.platform_url = ""
        self.proxy: FaultProxy | None = None
        self.runner: ScenarioRunner | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gw_log = self.work / "gateway.log"
        self.api = f"127.0.0.1:{free_port()}"
        self.gw_id = ""
        self.started = 0.0
        self.phase = "starting"
        self.rates: deque[tuple[float, int]] = deque(maxlen=30)
        self.snapshot: dict[str, Any] = {}
        self.peak_backlog = 0
        self.stopping = False
        self.console: Any = None

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        self.say(f"work folder {self.work}")
        await self.broker.start()
        self.say(f"mosquitto on 127.0.0.1:{self.broker.port}")
        self.platform, self.platform_url = await start_platform(self.work, self.broker.port, "demo-probe")
        self.say(f"city platform simulator on {self.platform_url}")
        self.proxy = FaultProxy("127.0.0.1", self.broker.port)
        await self.proxy.start()
        self.say(f"fault proxy 127.0.0.1:{self.proxy.port} -> broker")
        scenario = load_scenario(self.opt.scenario)
        self.gw_id = str(scenario.gateway["id"])
        opts = GatewayOptions(
            api_listen=self.api, buffer_path=str(self.work / "buffer.db"),
            snapshots_dir=str(self.work / "snapshots"), mqtt=f"127.0.0.1:{self.proxy.port}",
            topic_prefix=PREFIX, log_level="warning",
        )
        self.runner = ScenarioRunner(
            scenario, self.work / "scenario", opts, gateway_config=self.work / "gateway.toml",
            virtual=self.opt.virtual, buildings=self.opt.buildings, activity=self.opt.activity,
            seed=self.opt.seed)
        desc = await self.runner.start()
        self.say(f"scenario {desc['scenario']}: {desc['devices']} devices "
                 f"({', '.join(f'{k} {v}' for k, v in desc['by_sim'].items())}), "
                 f"{len(desc['processes'])} simulator processes")
        self.gateway = self.spawn_gateway()
        await self._wait_gateway_ready(60)
        self.say(f"gateway {self.gw_id} ready, local API http://{self.api}")

    def spawn_gateway(self) -> subprocess.Popen[bytes]:
        with self.gw_log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.work / "gateway.toml")],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)

    async def _wait_gateway_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.gateway is not None
            if self.gateway.poll() is not None:
                raise StartError(f"the gateway exited with {self.gateway.returncode}:\n{self.gw_tail()}")
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                health = await asyncio.to_thread(self._get_gw, "/api/v1/health")
                if health.get("ready"):
                    return
            await asyncio.sleep(0.2)
        raise StartError(f"the gateway was not ready after {timeout:.0f}s:\n{self.gw_tail()}")

    def gw_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.gw_log.read_text(errors="replace")[-3000:]
        return ""

    def _get_gw(self, path: str) -> Any:
        return http_json(f"http://{self.api}{path}")

    async def stop_gateway(self, timeout: float = 30.0) -> int | None:
        if self.gateway is None or self.gateway.poll() is not None:
            return None if self.gateway is None else self.gateway.returncode
        self.gateway.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.gateway.wait, timeout)
        except subprocess.TimeoutExpired:
            self.say(f"gateway did not stop within {timeout:.0f} s: killed")
            return await wait_exit(self.gateway, 0)

    async def close(self) -> None:
        await self.stop_gateway()
        if self.runner is not None:
            await self.runner.stop()
        if self.proxy is not None:
            await self.proxy.close()
        if self.platform is not None:
            self.platform.terminate()
            if self.platform.proc is not None:
                await wait_exit(self.platform.proc, 5.0)
        await self.broker.stop()

    # ---------------------------------------------------------------- observation

    def collect(self) -> dict[str, Any]:
        """One snapshot of everything the view shows (blocking I/O: run it in a thread)."""
        snap: dict[str, Any] = {"t": time.monotonic() - self.started, "phase": self.phase}
        try:
            devices = self._get_gw("/api/v1/devices")["devices"]
            buf = self._get_gw("/api/v1/buffer")
            ups = self._get_gw("/api/v1/uplinks")["uplinks"]
        except (OSError, ValueError, KeyError, urllib.error.URLError) as exc:
            snap["error"] = f"gateway API: {exc}"
            return snap
        by_class: dict[str, Counter[str]] = {}
        for d in devices:
            by_class.setdefault(d["class"], Counter())[d["state"]] += 1
        snap["classes"] = {k: dict(v) for k, v in sorted(by_class.items())}
        snap["online"] = sum(v.get("online", 0) for v in by_class.values())
        snap["devices"] = len(devices)
        last_seq = int(buf.get("last_seq", 0))
        now = time.monotonic()
        self.rates.append((now, last_seq))
        old = next((r for r in self.rates if now - r[0] <= 10.5), self.rates[0])
        snap["rate"] = (last_seq - old[1]) / (now - old[0]) if now > old[0] else 0.0
        snap["last_seq"] = last_seq
        city = buf.get("uplinks", {}).get("city", {})
        snap["lanes"] = {lane: v.get("pending", 0) + v.get("in_flight", 0)
                         for lane, v in city.get("lanes", {}).items()}
        snap["backlog"] = int(city.get("pending", 0)) + int(city.get("in_flight", 0))
        snap["oldest_pending_age"] = city.get("oldest_pending_age")
        self.peak_backlog = max(self.peak_backlog, snap["backlog"])
        up: dict[str, Any] = next((u for u in ups if u.get("name") == "city"), {})
        snap["uplink"] = {"connected": bool(up.get("connected")), "lag": up.get("lag_seconds"),
                          "error": up.get("last_error")}
        snap["proxy"] = self.proxy.state.mode if self.proxy else "?"
        snap.update(self._platform_counts())
        return snap

    def _platform_counts(self) -> dict[str, Any]:
        try:
            db = sqlite3.connect(f"file:{self.work / 'platform.db'}?mode=ro", uri=True, timeout=2)
            try:
                received, unique = db.execute("SELECT count(*), count(DISTINCT rid) FROM rx").fetchone()
                alarms = db.execute(
                    "SELECT recv, dev, cls, pt, v, hist FROM rx WHERE kind = 'event' "
                    "ORDER BY n DESC LIMIT 8").fetchall()
            finally:
                db.close()
        except sqlite3.Error as exc:
            return {"platform_error": str(exc)}
        return {"platform_received": received, "platform_unique": unique,
                "alarms": [{"t": r[0], "dev": r[1], "cls": r[2], "pt": r[3], "v": r[4], "hist": bool(r[5])}
                           for r in alarms]}

    def plain_line(self, s: dict[str, Any]) -> str:
        if "error" in s:
            return f"[{s['t']:5.0f}s] {s['phase']}: {s['error']}"
        lanes = s.get("lanes", {})
        up = s.get("uplink", {})
        return (f"[{s['t']:5.0f}s] {s['phase']:<8} devices {s['online']}/{s['devices']} online  "
                f"{s['rate']:6.1f} rec/s  seq {s['last_seq']}  buffer ev/st/tel "
                f"{lanes.get('event', 0)}/{lanes.get('state', 0)}/{lanes.get('telemetry', 0)}  "
                f"uplink {'up' if up.get('connected') else 'DOWN'} (proxy {s['proxy']})  "
                f"platform {s.get('platform_received', '?')} received")

    def say(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)
        else:
            print(text, flush=True)

    # ---------------------------------------------------------------- main flow

    async def run(self) -> int:
        await self.start()
        self.started = time.monotonic()
        window = self.opt.outage_window()
        total = self.opt.live_seconds()
        if window:
            self.say(f"the uplink will be cut from {window[0]:.0f}s to {window[1]:.0f}s")
        view = LiveView(self) if self.opt.live else None
        try:
            if view is not None:
                view.start()
            last_plain = -1e9
            cut_done = restored = False
            while True:
                t = time.monotonic() - self.started
                if window and not cut_done and t >= window[0]:
                    assert self.proxy is not None
                    await self.proxy.cut()
                    cut_done = True
                    self.phase = "OUTAGE"
                    self.say(f"[{t:5.0f}s] uplink cut for {self.opt.outage:.0f}s")
                if window and cut_done and not restored and t >= window[1]:
                    assert self.proxy is not None
                    await self.proxy.restore()
                    restored = True
                    self.phase = "draining"
                    self.say(f"[{t:5.0f}s] uplink restored")
                if self.phase == "draining" and self.snapshot.get("oldest_pending_age") is not None \
                        and self.snapshot.get("backlog", 0) < 200 and (self.snapshot["oldest_pending_age"] or 0) < 3:
                    self.phase = "live"
                if self.phase == "starting":
                    self.phase = "live"
                if t >= total:
                    break
                dead = self.runner.dead_children() if self.runner else []
                if dead:
                    raise StartError(f"simulator(s) exited: {', '.join(dead)}")
                if self.gateway is not None and self.gateway.poll() is not None:
                    raise StartError(f"the gateway exited with {self.gateway.returncode}:\n{self.gw_tail()}")
                self.snapshot = await asyncio.to_thread(self.collect)
                if view is not None:
                    view.update(self.snapshot)
                elif t - last_plain >= self.opt.interval:
                    last_plain = t
                    print(self.plain_line(self.snapshot), flush=True)
                await asyncio.sleep(1.0)
            self.phase = "draining"
            if self.runner is not None:
                await self.runner.stop_activity()
            drained = await self._drain(view)
        finally:
            if view is not None:
                view.stop()
        if not drained:
            self.say(f"backlog did not drain within {self.opt.drain_timeout:.0f}s")
        rc_gw = await self.stop_gateway()
        self.say(f"gateway stopped (exit code {rc_gw}); peak backlog {self.peak_backlog} records")
        v = await asyncio.to_thread(self.final_verdict)
        if self.opt.json_out:
            print(json.dumps(v), flush=True)
        for line in format_verdict(v):
            self.say(line)
        return 0 if v["ok"] and rc_gw == 0 else 1

    async def _drain(self, view: LiveView | None) -> bool:
        """Wait until nothing older than a few seconds is waiting for the uplink."""
        deadline = time.monotonic() + self.opt.drain_timeout
        while time.monotonic() < deadline:
            self.snapshot = await asyncio.to_thread(self.collect)
            if view is not None:
                view.update(self.snapshot)
            else:
                print(self.plain_line(self.snapshot), flush=True)
            age = self.snapshot.get("oldest_pending_age")
            up = self.snapshot.get("uplink", {})
            if up.get("connected") and (age is None or age < 2.0):
                return True
            await asyncio.sleep(1.0)
        return False

    def final_verdict(self) -> dict[str, Any]:
        summary = http_json(f"{self.platform_url}/api/summary?gw={self.gw_id}", timeout=60)
        plat = summary.get("gateways", {}).get(self.gw_id, {})
        stats, held = read_stopped_buffer(self.work / "buffer.db")
        v = verdict(plat, int(stats.get("last_seq", 0)), held)
        v["malformed"] = summary.get("malformed", 0)
        v["devices"] = self.snapshot.get("devices")
        v["devices_online"] = self.snapshot.get("online")
        v["peak_backlog"] = self.peak_backlog
        v["outage_seconds"] = self.opt.outage
        v["ok"] = v["ok"] and not v["malformed"]
        return v


# ---------------------------------------------------------------- rich live view


class LiveView:
    def __init__(self, demo: Demo) -> None:
        from rich.console import Console
        from rich.live import Live

        self.demo = demo
        self.console = Console()
        demo.console = self.console
        self.live = Live(console=self.console, refresh_per_second=2, transient=False)

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()

    def update(self, s: dict[str, Any]) -> None:
        self.live.update(self.render(s))

    def render(self, s: dict[str, Any]) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table

        if "error" in s:
            return Panel(str(s["error"]), title="edge gateway demo")
        classes = Table(title="devices by class", expand=False)
        classes.add_column("class")
        for col in ("online", "offline", "unknown"):
            classes.add_column(col, justify="right")
        for cls, states in s.get("classes", {}).items():
            classes.add_row(cls, str(states.get("online", 0)),
                            f"[red]{states['offline']}[/red]" if states.get("offline") else "0",
                            str(states.get("unknown", 0)))
        lanes = s.get("lanes", {})
        up = s.get("uplink", {})
        stats = Table.grid(padding=(0, 2))
        stats.add_column()
        stats.add_column(justify="right")
        phase = s["phase"]
        style = {"OUTAGE": "bold red", "draining": "yellow"}.get(phase, "green")
        stats.add_row("phase", f"[{style}]{phase}[/{style}]")
        stats.add_row("elapsed", f"{s['t']:.0f} s")
        stats.add_row("devices online", f"{s.get('online')}/{s.get('devices')}")
        stats.add_row("records per second", f"{s.get('rate', 0):.1f}")
        stats.add_row("last seq", str(s.get("last_seq")))
        stats.add_row("buffer: event lane", str(lanes.get("event", 0)))
        stats.add_row("buffer: state lane", str(lanes.get("state", 0)))
        stats.add_row("buffer: telemetry lane", str(lanes.get("telemetry", 0)))
        stats.add_row("uplink", "[green]connected[/green]" if up.get("connected") else "[red]down[/red]")
        stats.add_row("fault proxy", str(s.get("proxy")))
        stats.add_row("platform received", str(s.get("platform_received", "?")))
        stats.add_row("platform unique", str(s.get("platform_unique", "?")))
        stats.add_row("peak backlog", str(self.demo.peak_backlog))
        alarms = Table(title="latest alarms at the platform")
        for col in ("time", "device", "point", "value", ""):
            alarms.add_column(col)
        for a in s.get("alarms", []):
            alarms.add_row(time.strftime("%H:%M:%S", time.localtime(a["t"])), a["dev"], a["pt"],
                           str(a["v"]), "backlog" if a["hist"] else "")
        top = Table.grid(padding=(0, 4))
        top.add_row(classes, Group(Panel(stats, title=f"gateway {self.demo.gw_id}"), alarms))
        return top


def run_demo(opt: DemoOptions) -> int:
    import logging

    logging.getLogger("hwsim.proxy").setLevel(logging.WARNING)  # the demo reports cuts itself

    async def main() -> int:
        demo = Demo(opt)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await demo.run()
        except (StartError, ScenarioError) as exc:
            print(f"hwsim demo: {exc}", file=sys.stderr, flush=True)
            return 1
        except asyncio.CancelledError:
            print("hwsim demo: interrupted", file=sys.stderr, flush=True)
            return 130
        finally:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(demo.close())
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    return asyncio.run(main())
