"""The chaos soak: the community scenario, the gateway daemon, an MQTT uplink through a fault
proxy, a real mosquitto and the city-platform simulator, under random, logged,
seed-reproducible faults. Used by ``tests/reliability/test_chaos_soak.py``; also runnable::

    .venv/bin/python -m tests.support.soak_chaos --seconds 1200 --buildings 12 --seed 7

Two fault tracks run side by side, each drawing from its own ``random.Random`` seeded from
the run's seed, so a seed gives the same fault sequence (kinds, targets, durations) again:

* infrastructure: broker SIGKILLed and restarted (same port, persistent sessions), link cut,
  link flapping, black-holed link (no RST), gateway SIGKILLed and restarted, disk budget
  pressure (link cut until the buffer evicts under its small ``[buffer] budget``);
* devices: Modbus devices gone / silent / answering with bad CRCs or truncated frames,
  serial meters silent or sending garbage (junk bytes, bad checksums, wrong lengths),
  camera reboots -- all through the simulators' control APIs.

Every fault is reverted before the next one on its track; every loop is bounded in count
and in time. At the end the harness restores everything, lets the backlog drain, stops the
gateway with SIGTERM and judges the platform's ledger (``tests.support.soak_ledger``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from hwsim.proxy.proxy import FaultProxy
from hwsim.scenario.demo import http_json, read_stopped_buffer, start_platform
from hwsim.scenario.model import Device, GatewayOptions, load_scenario
from hwsim.scenario.runner import Child, ScenarioRunner, find_scenario

from tests.support.soak_ledger import RssSamples, judge, read_vmrss
from tests.support.sync_mosquitto import Mosquitto, free_port

PREFIX = "city"
log = logging.getLogger("soak")

INFRA_FAULTS = ("broker_kill", "link_cut", "link_flap", "link_blackhole", "gateway_kill", "disk_pressure")
DEVICE_FAULTS = ("modbus_dead", "modbus_garbage", "serial_dead", "serial_garbage", "camera_reboot")


@dataclass
class SoakOptions:
    workdir: Path
    seed: int = 7
    seconds: float = 140.0  # the fault phase
    buildings: int = 3
    budget: str = "128KiB"
    rss_bound_mb: float = 384.0  # systemd/edge-gateway.service: MemoryHigh=384M
    drain_timeout: float = 120.0
    max_faults: int = 10_000  # per track; the time bound normally ends the run first
    scenario: str = "community"

    @classmethod
    def from_env(cls, workdir: Path) -> SoakOptions:
        env = os.environ
        seconds = float(env.get("EDGE_GW_SOAK_SECONDS", "140"))
        return cls(
            workdir=workdir,
            seed=int(env.get("EDGE_GW_SOAK_SEED", str(int(time.time()) % 100_000))),
            seconds=seconds,
            buildings=int(env.get("EDGE_GW_SOAK_BUILDINGS", "3" if seconds <= 300 else "12")),
            budget=env.get("EDGE_GW_SOAK_BUDGET", "128KiB" if seconds <= 300 else "256KiB"),
            rss_bound_mb=float(env.get("EDGE_GW_SOAK_RSS_MB", "384")),
        )


@dataclass
class FaultEntry:
    t: float
    track: str
    kind: str
    detail: str
    phase: str  # start | end | note

    def line(self) -> str:
        return f"{self.t:8.1f}s  {self.track:<7} {self.phase:<5} {self.kind:<15} {self.detail}"


@dataclass
class FaultLog:
    seed: int
    t0: float = field(default_factory=time.monotonic)
    entries: list[FaultEntry] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, track: str, kind: str, detail: str = "", phase: str = "start") -> None:
        if phase == "start":
            self.counts[kind] = self.counts.get(kind, 0) + 1
        e = FaultEntry(time.monotonic() - self.t0, track, kind, detail, phase)
        self.entries.append(e)
        log.info("%s", e.line())

    def text(self) -> str:
        head = [f"chaos soak fault log (seed {self.seed}; rerun with EDGE_GW_SOAK_SEED={self.seed})"]
        return "\n".join(head + [e.line() for e in self.entries])


class SoakError(RuntimeError):
    pass


class ChaosSoak:
    def __init__(self, opt: SoakOptions) -> None:
        self.opt = opt
        self.work = opt.workdir
        self.work.mkdir(parents=True, exist_ok=True)
        self.faults = FaultLog(opt.seed)
        self.broker = Mosquitto(self.work, persistence=True)
        self.platform: Child | None = None
        self.platform_url = ""
        self.proxy: FaultProxy | None = None
        self.runner: ScenarioRunner | None = None
        self.gateway: subprocess.Popen[bytes] | None = None
        self.gw_log = self.work / "gateway.log"
        self.gw_config = self.work / "gateway.toml"
        self.api = f"127.0.0.1:{free_port()}"
        self.gw_id = ""
        self.rss = RssSamples(bound_bytes=int(opt.rss_bound_mb * 2**20))
        self.gateway_starts = 0
        self.unexpected_exits: list[str] = []
        self._killing = False
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self.evictions_seen = 0
        self.result: dict[str, Any] = {}

    # ------------------------------------------------------------------ set-up

    async def start(self) -> None:
        await asyncio.to_thread(self.broker.start)
        self.platform, self.platform_url = await start_platform(self.work, self.broker.port, "soak-probe")
        self.proxy = FaultProxy("127.0.0.1", self.broker.port)
        await self.proxy.start()
        scenario = load_scenario(find_scenario(self.opt.scenario))
        self.gw_id = str(scenario.gateway["id"])
        gopts = GatewayOptions(
            api_listen=self.api, buffer_path=str(self.work / "buffer.db"), buffer_budget=self.opt.budget,
            snapshots_dir=str(self.work / "snapshots"), mqtt=f"127.0.0.1:{self.proxy.port}",
            topic_prefix=PREFIX, log_level="warning")
        self.runner = ScenarioRunner(scenario, self.work / "scenario", gopts, gateway_config=self.gw_config,
                                     buildings=self.opt.buildings, seed=self.opt.seed)
        await self.runner.start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        await self.start_gateway()
        self._tasks.append(asyncio.create_task(self._sample_rss(), name="soak-rss"))

    def _spawn_gateway(self) -> subprocess.Popen[bytes]:
        with self.gw_log.open("ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.gw_config)],
                stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True)

    async def start_gateway(self, timeout: float = 60.0) -> None:
        self.gateway = self._spawn_gateway()
        self.gateway_starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.gateway.poll() is not None:
                raise SoakError(f"the gateway exited with {self.gateway.returncode} at start:\n{self.gw_tail()}")
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                health = await asyncio.to_thread(http_json, f"http://{self.api}/api/v1/health", 2.0)
                if health.get("live"):
                    return
            await asyncio.sleep(0.2)
        raise SoakError(f"the gateway API did not answer within {timeout:.0f}s:\n{self.gw_tail()}")

    def gw_tail(self, n: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.gw_log.read_bytes()[-n:].decode("utf-8", "replace")
        return ""

    async def _sample_rss(self) -> None:
        while not self._stop.is_set():
            gw = self.gateway
            if gw is not None:
                rc = gw.poll()
                if rc is None:
                    rss = read_vmrss(gw.pid)
                    if rss is not None:
                        self.rss.add(time.monotonic() - self.faults.t0, gw.pid, rss)
                elif not self._killing and gw.pid not in {int(x.split()[1]) for x in self.unexpected_exits}:
                    self.unexpected_exits.append(f"pid {gw.pid} exit {rc}")
                    self.faults.add("monitor", "gateway_exit", f"pid {gw.pid} exited on its own with {rc}", "note")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), 0.5)

    # ------------------------------------------------------------------ the run

    async def run(self) -> dict[str, Any]:
        await self.start()
        self.faults.t0 = time.monotonic()
        base = await self._buffer_used()
        self.result["buffer_used_at_start"] = base
        self.faults.add("soak", "begin", f"buffer uses {base} bytes before any backlog; "
                        f"{len(self.runner.devices) if self.runner else 0} devices, "
                        f"{self.opt.buildings} buildings, budget {self.opt.budget}, seed {self.opt.seed}", "note")
        deadline = time.monotonic() + self.opt.seconds
        tracks = [
            asyncio.create_task(self._track("infra", INFRA_FAULTS, self.opt.seed * 2 + 1, deadline, (2.0, 8.0))),
            asyncio.create_task(self._track("devices", DEVICE_FAULTS, self.opt.seed * 2 + 2, deadline, (1.0, 5.0))),
        ]
        try:
            await asyncio.gather(*tracks)
        finally:
            for t in tracks:
                t.cancel()
            await asyncio.gather(*tracks, return_exceptions=True)
        self.faults.add("soak", "end_faults", "every fault reverted; draining", "note")
        return await self.finish()

    async def _track(self, name: str, kinds: tuple[str, ...], seed: int, deadline: float,
                     pause: tuple[float, float]) -> None:
        rng = random.Random(seed)
        # every kind once (in a seeded order; the long disk-pressure outage last so the short
        # faults all fit in a CI-sized run), then seeded random picks
        plan = [k for k in kinds if k != "disk_pressure"]
        rng.shuffle(plan)
        plan += [k for k in kinds if k == "disk_pressure"]
        for i in range(self.opt.max_faults):
            if time.monotonic() >= deadline:
                return
            kind = plan[i] if i < len(plan) else rng.choice(kinds)
            fault: Callable[[random.Random, float], Awaitable[None]] = getattr(self, f"_f_{kind}")
            await fault(rng, deadline)
            await asyncio.sleep(min(rng.uniform(*pause), max(0.0, deadline - time.monotonic())))

    async def _hold(self, seconds: float, deadline: float) -> None:
        """Sleep, but never far beyond the fault phase (bounded)."""
        await asyncio.sleep(max(0.0, min(seconds, deadline + 5.0 - time.monotonic())))

    # infra faults ------------------------------------------------------------

    async def _f_broker_kill(self, rng: random.Random, deadline: float) -> None:
        down = rng.uniform(2.0, 8.0)
        self.faults.add("infra", "broker_kill", f"SIGKILL mosquitto, restart after {down:.1f}s")
        await asyncio.to_thread(self.broker.kill)
        try:
            await self._hold(down, deadline)
        finally:
            await asyncio.to_thread(self.broker.start)
            self.faults.add("infra", "broker_kill", f"mosquitto back on port {self.broker.port}", "end")

    async def _f_link_cut(self, rng: random.Random, deadline: float) -> None:
        assert self.proxy is not None
        down = rng.uniform(3.0, 15.0)
        self.faults.add("infra", "link_cut", f"{down:.1f}s")
        await self.proxy.cut()
        try:
            await self._hold(down, deadline)
        finally:
            await self.proxy.restore()
            self.faults.add("infra", "link_cut", "restored", "end")

    async def _f_link_flap(self, rng: random.Random, deadline: float) -> None:
        assert self.proxy is not None
        cycles = rng.randint(3, 8)
        pattern = [(round(rng.uniform(0.3, 2.0), 2), round(rng.uniform(0.5, 3.0), 2)) for _ in range(cycles)]
        self.faults.add("infra", "link_flap", f"{cycles} cycles (down s, up s): {pattern}")
        try:
            for down, up in pattern:
                await self.proxy.cut()
                await self._hold(down, deadline)
                await self.proxy.restore()
                await self._hold(up, deadline)
        finally:
            await self.proxy.restore()
            self.faults.add("infra", "link_flap", "restored", "end")

    async def _f_link_blackhole(self, rng: random.Random, deadline: float) -> None:
        assert self.proxy is not None
        down = rng.uniform(3.0, 12.0)
        self.faults.add("infra", "link_blackhole", f"{down:.1f}s of silently dropped bytes")
        await self.proxy.blackhole()
        try:
            await self._hold(down, deadline)
        finally:
            await self.proxy.restore()
            self.faults.add("infra", "link_blackhole", "restored", "end")

    async def _f_gateway_kill(self, rng: random.Random, deadline: float) -> None:
        assert self.gateway is not None
        down = rng.uniform(0.5, 3.0)
        pid = self.gateway.pid
        self.faults.add("infra", "gateway_kill", f"SIGKILL pid {pid}, restart after {down:.1f}s")
        self._killing = True
        try:
            self.gateway.kill()
            await asyncio.to_thread(self.gateway.wait, 10)
            await self._hold(down, deadline)
            await self.start_gateway()
        finally:
            self._killing = False
        self.faults.add("infra", "gateway_kill", f"restarted as pid {self.gateway.pid}", "end")

    async def _f_disk_pressure(self, rng: random.Random, deadline: float) -> None:
        """Cut the link until the buffer evicts under its budget (at most 90 s)."""
        assert self.proxy is not None
        limit = min(90.0, max(10.0, deadline + 30.0 - time.monotonic()))
        before = await self._evictions()
        self.faults.add("infra", "disk_pressure", f"link cut until the {self.opt.budget} budget evicts "
                        f"(at most {limit:.0f}s; {before} evictions so far)")
        await self.proxy.cut()
        t0 = time.monotonic()
        now = before
        try:
            while time.monotonic() - t0 < limit:
                await asyncio.sleep(1.0)
                now = await self._evictions()
                if now > before:
                    break
        finally:
            await self.proxy.restore()
        self.evictions_seen = max(self.evictions_seen, now)
        self.faults.add("infra", "disk_pressure", f"restored after {time.monotonic() - t0:.0f}s; "
                        f"evictions {before} -> {now}", "end")

    async def _buffer_used(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            st = await asyncio.to_thread(http_json, f"http://{self.api}/api/v1/buffer", 3.0)
            used = st.get("used_bytes")
            return int(used) if isinstance(used, int | float) else None
        return None

    async def _evictions(self) -> int:
        try:
            st = await asyncio.to_thread(http_json, f"http://{self.api}/api/v1/buffer", 3.0)
        except (OSError, ValueError, urllib.error.URLError):
            return 0
        ev = st.get("evictions") or {}
        total = 0
        for v in ev.values():
            if isinstance(v, int | float):
                total += int(v)
            elif isinstance(v, dict):
                total += sum(int(x) for x in v.values() if isinstance(x, int | float))
        return total

    # device faults -------------------------------------------------------------

    def _devices(self, *sims: str) -> list[Device]:
        assert self.runner is not None
        return [d for d in self.runner.devices if d.sim in sims]

    def _control(self, dev: Device) -> str:
        assert self.runner is not None
        where = self.runner.endpoints.lines.get(dev.line or "", {})
        return f"http://127.0.0.1:{where.get('control_port')}"

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        assert self._session is not None
        try:
            async with self._session.post(url, json=body) as resp:
                if resp.status >= 300:
                    raise SoakError(f"POST {url} {body}: HTTP {resp.status} {(await resp.text())[:200]}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise SoakError(f"POST {url} {body}: {exc}") from exc

    async def _modbus_fault(self, rng: random.Random, deadline: float, kinds: tuple[str, ...], name: str) -> None:
        devs = self._devices("modbus")
        if not devs:
            return
        dev = rng.choice(devs)
        kind = rng.choice(kinds)
        hold = rng.uniform(5.0, 20.0)
        self.faults.add("devices", name, f"{dev.id} ({dev.line}) fault {kind} for {hold:.1f}s")
        url = f"{self._control(dev)}/devices/{dev.id}/fault"
        await self._post(url, {"fault": kind, **({"rate": 1.0} if kind in ("crc", "truncate") else {})})
        try:
            await self._hold(hold, deadline)
        finally:
            await self._post(url, {"fault": "none"})
            self.faults.add("devices", name, f"{dev.id} back", "end")

    async def _f_modbus_dead(self, rng: random.Random, deadline: float) -> None:
        await self._modbus_fault(rng, deadline, ("gone", "silent"), "modbus_dead")

    async def _f_modbus_garbage(self, rng: random.Random, deadline: float) -> None:
        await self._modbus_fault(rng, deadline, ("crc", "truncate"), "modbus_garbage")

    async def _serial_fault(self, rng: random.Random, deadline: float, quirks: dict[str, Any], name: str) -> None:
        devs = self._devices("dlt645", "cjt188", "framed")
        if not devs:
            return
        dev = rng.choice(devs)
        hold = rng.uniform(5.0, 20.0)
        self.faults.add("devices", name, f"{dev.id} ({dev.sim} on {dev.line}) quirks {quirks} for {hold:.1f}s")
        url = f"{self._control(dev)}/devices/{dev.address}"
        await self._post(url, {"quirks": quirks})
        try:
            await self._hold(hold, deadline)
        finally:
            await self._post(url, {"quirks": {"silent": False, "junk": 0, "bad_checksum": False,
                                              "wrong_length": False}})
            self.faults.add("devices", name, f"{dev.id} back", "end")

    async def _f_serial_dead(self, rng: random.Random, deadline: float) -> None:
        await self._serial_fault(rng, deadline, {"silent": True}, "serial_dead")

    async def _f_serial_garbage(self, rng: random.Random, deadline: float) -> None:
        choice = rng.choice(("junk", "bad_checksum", "wrong_length"))
        quirks: dict[str, Any] = {"junk": rng.randint(3, 40)} if choice == "junk" else {choice: True}
        await self._serial_fault(rng, deadline, quirks, "serial_garbage")

    async def _f_camera_reboot(self, rng: random.Random, deadline: float) -> None:
        cams = self._devices("onvif")
        if not cams or self.runner is None:
            return
        cam = rng.choice(cams)
        down = rng.uniform(2.0, 8.0)
        self.faults.add("devices", "camera_reboot", f"{cam.id} down {down:.1f}s")
        await self._post(f"http://127.0.0.1:{self.runner.endpoints.onvif_control}/cameras/{cam.id}/reboot",
                         {"downtime": down})
        await self._hold(down + 2.0, deadline)

    # ------------------------------------------------------------------ the end

    async def _drain(self) -> dict[str, Any]:
        deadline = time.monotonic() + self.opt.drain_timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
                buf = await asyncio.to_thread(http_json, f"http://{self.api}/api/v1/buffer", 5.0)
                ups = await asyncio.to_thread(http_json, f"http://{self.api}/api/v1/uplinks", 5.0)
                city = buf.get("uplinks", {}).get("city", {})
                up: dict[str, Any] = next((u for u in ups.get("uplinks", []) if u.get("name") == "city"), {})
                backlog = int(city.get("pending", 0)) + int(city.get("in_flight", 0))
                last = {"backlog": backlog, "connected": bool(up.get("connected")),
                        "oldest_pending_age": city.get("oldest_pending_age")}
                if last["connected"] and backlog == 0:
                    return last
            await asyncio.sleep(1.0)
        return last

    async def finish(self) -> dict[str, Any]:
        assert self.proxy is not None and self.runner is not None
        await self.proxy.restore()
        await asyncio.to_thread(self.broker.start)  # no-op when it runs
        if self.gateway is None or self.gateway.poll() is not None:
            await self.start_gateway()
        await self.runner.stop_activity()
        t0 = time.monotonic()
        drain = await self._drain()
        self.faults.add("soak", "drained", f"{time.monotonic() - t0:.0f}s: {drain}", "note")
        rc = await self.stop_gateway()
        self._stop.set()
        start_used = self.result.get("buffer_used_at_start")
        self.result = await asyncio.to_thread(self._judge)
        self.result.update({
            "buffer_used_at_start": start_used,
            "seed": self.opt.seed, "fault_seconds": self.opt.seconds, "buildings": self.opt.buildings,
            "devices": len(self.runner.devices), "budget": self.opt.budget,
            "gateway_starts": self.gateway_starts, "gateway_exit_code": rc,
            "unexpected_exits": list(self.unexpected_exits), "drain": drain,
            "faults": dict(sorted(self.faults.counts.items())),
            "evictions_seen": self.evictions_seen,
            "gateway_log": self.log_summary(),
        })
        if rc != 0:
            self.result["failures"].append(f"the gateway's SIGTERM exit code was {rc}")
        if self.unexpected_exits:
            self.result["failures"].append(f"the gateway died on its own: {self.unexpected_exits}")
        if drain.get("backlog", 1) != 0:
            self.result["failures"].append(f"the backlog did not drain within {self.opt.drain_timeout:.0f}s: {drain}")
        self.result["ok"] = not self.result["failures"]
        return self.result

    async def stop_gateway(self, timeout: float = 30.0) -> int | None:
        gw = self.gateway
        if gw is None:
            return None
        if gw.poll() is not None:
            return gw.returncode
        self._killing = True
        gw.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(gw.wait, timeout)
        except subprocess.TimeoutExpired:
            gw.kill()
            await asyncio.to_thread(gw.wait)
            return -9

    def log_summary(self) -> dict[str, Any]:
        """ERROR lines and tracebacks in the gateway's log (reported; what they say is for a person)."""
        errors: dict[str, int] = {}
        tracebacks = 0
        with contextlib.suppress(OSError), self.gw_log.open("r", errors="replace") as fh:
            for line in fh:
                if line.startswith("Traceback"):
                    tracebacks += 1
                elif " ERROR " in line:
                    key = line.split(" ERROR ", 1)[1].strip()[:100]
                    errors[key] = errors.get(key, 0) + 1
        return {"error_lines": sum(errors.values()), "tracebacks": tracebacks,
                "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:10])}

    def _judge(self) -> dict[str, Any]:
        summary = http_json(f"{self.platform_url}/api/summary?gw={self.gw_id}", timeout=120)
        plat = summary.get("gateways", {}).get(self.gw_id, {})
        stats, held = read_stopped_buffer(self.work / "buffer.db")
        v = judge(plat, platform_db=self.work / "platform.db", gw=self.gw_id,
                  last_seq=int(stats.get("last_seq", 0)), held=held, rss=self.rss,
                  malformed=int(summary.get("malformed", 0)))
        v["buffer_evictions"] = stats.get("evictions", {})
        return v

    async def close(self) -> None:
        self._stop.set()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.stop_gateway(10.0)
        if self._session is not None:
            await self._session.close()
        if self.runner is not None:
            await self.runner.stop()
        if self.proxy is not None:
            await self.proxy.close()
        if self.platform is not None and self.platform.proc is not None:
            self.platform.terminate()
            try:
                await asyncio.to_thread(self.platform.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.platform.proc.kill()
                await asyncio.to_thread(self.platform.proc.wait)
        await asyncio.to_thread(self.broker.stop)

    def report(self) -> str:
        r = self.result
        lines = [self.faults.text(), "", "result:"]
        for key in ("ok", "failures", "seed", "devices", "buildings", "fault_seconds", "budget", "faults",
                    "gateway_starts", "received", "unique", "duplicates", "duplicate_rows", "hist_records",
                    "last_seq", "platform_seq_max", "held_in_buffer", "gap_records", "gap_lanes",
                    "evicted_by_gaps", "explained_by_gap_records", "missing", "missing_ranges",
                    "seq_conflicts", "event_gaps", "lanes_received", "buffer_used_at_start", "buffer_evictions", "rss_peak_mib",
                    "rss_bound_mib", "rss_samples", "rss_per_process_mib", "gateway_log", "drain", "latency"):
            if key in r:
                lines.append(f"  {key}: {json.dumps(r[key], default=str)}")
        return "\n".join(lines)


async def run_soak(opt: SoakOptions) -> tuple[dict[str, Any], str]:
    soak = ChaosSoak(opt)
    try:
        result = await soak.run()
        text = soak.report()
    except BaseException:
        # the fault log is what makes a failure reproducible: keep it with the error
        (opt.workdir / "faults.log").write_text(soak.faults.text() + "\n\ngateway log tail:\n" + soak.gw_tail())
        raise
    finally:
        await soak.close()
    (opt.workdir / "faults.log").write_text(text + "\n")
    return result, text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=140.0, help="length of the fault phase")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--buildings", type=int, default=3)
    ap.add_argument("--budget", default="128KiB", help="the gateway's [buffer] budget")
    ap.add_argument("--rss-mb", type=float, default=384.0,
                    help="the gateway's memory bound (default: the unit's MemoryHigh=384M)")
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("hwsim.proxy").setLevel(logging.WARNING)
    opt = SoakOptions(workdir=args.workdir.resolve(), seed=args.seed, seconds=args.seconds,
                      buildings=args.buildings, budget=args.budget, rss_bound_mb=args.rss_mb)
    result, text = asyncio.run(run_soak(opt))
    print(text, flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    return 0 if result.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
