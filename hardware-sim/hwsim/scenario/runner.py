"""Start the simulators of a scenario as child processes, write the matching gateway config,
inject the scenario's activity, and stop everything again.

    runner = ScenarioRunner(load_scenario(path), workdir, GatewayOptions(...))
    info = await runner.start()      # simulators up, gateway config written
    ...
    await runner.stop()              # SIGTERM to every child, SIGKILL after a grace period
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from hwsim.scenario import model, tomlw
from hwsim.scenario.model import Device, Endpoints, GatewayOptions, Scenario

log = logging.getLogger("hwsim.scenario")

SCENARIOS_DIR = Path(__file__).resolve().parent / "scenarios"


def find_scenario(name: str | Path) -> Path:
    """A path as given, else a file of that name in ``hwsim/scenario/scenarios``."""
    p = Path(name)
    if p.exists():
        return p
    for cand in (SCENARIOS_DIR / p.name, SCENARIOS_DIR / f"{p.name}.toml"):
        if cand.exists():
            return cand
    raise FileNotFoundError(f"no scenario {str(name)!r} (looked in the current folder and {SCENARIOS_DIR})")


class StartError(RuntimeError):
    pass


@dataclass
class Child:
    """One simulator process. Its first stdout line is the JSON description of its endpoints."""

    name: str
    kind: str
    argv: list[str]
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def out_path(self) -> Path:
        return self.workdir / f"{self.name}.out"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def spawn(self) -> None:
        with self.out_path.open("wb") as out, self.log_path.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                cwd=self.workdir, start_new_session=True,
            )

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    async def wait_info(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                text = self.out_path.read_text("utf-8", "replace")
                first, nl, _ = text.partition("\n")
                if nl:
                    try:
                        self.info = json.loads(first)
                    except json.JSONDecodeError:
                        raise StartError(f"{self.name}: unexpected first line {first[:200]!r}") from None
                    return self.info
            if self.proc.poll() is not None:
                raise StartError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise StartError(f"{self.name} did not report its endpoints within {timeout:.0f}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


class ScenarioRunner:
    def __init__(
        self,
        scenario: Scenario,
        workdir: Path,
        options: GatewayOptions,
        *,
        gateway_config: Path | None = None,
        virtual: set[str] | frozenset[str] = frozenset(),
        buildings: int | None = None,
        activity: bool = True,
        seed: int | None = None,
        python: str = sys.executable,
    ) -> None:
        self.scenario = scenario
        self.workdir = Path(workdir).resolve()
        self.options = options
        self.gateway_config_path = Path(gateway_config or self.workdir / "gateway.toml").resolve()
        self.devices: list[Device] = model.expand(scenario, virtual=set(virtual), buildings=buildings)
        self.lines = model.lines(self.devices)
        self.children: list[Child] = []
        self.endpoints = Endpoints(camera_password=secrets.token_urlsafe(12))
        self.activity_enabled = activity
        self.rng = random.Random(scenario.seed if seed is None else seed)
        self.python = python
        self.injected: list[dict[str, Any]] = []  # recent activity (for views), newest last
        self.injected_total = 0
        self.inject_errors = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._by_id = {d.id: d for d in self.devices}

    # ------------------------------------------------------------------ start / stop

    def _hwsim(self, *args: str) -> list[str]:
        return [self.python, "-m", "hwsim", *args]

    def _plan(self) -> list[Child]:
        children: list[Child] = []
        simdir = self.workdir / "sim"
        simdir.mkdir(parents=True, exist_ok=True)
        for line in self.lines:
            if line.family == "modbus":
                path = simdir / f"modbus-{line.name}.toml"
                path.write_text(tomlw.dumps(model.modbus_sim_file(line), f"Modbus line {line.name}"))
                ep = ["--rtu-pty"] if line.link == "pty" else ["--tcp", "0"]
                argv = self._hwsim("modbus", "run", str(path), *ep, "--control", "0")
            else:
                path = simdir / f"serial-{line.name}.toml"
                data = model.serial_sim_file(line, seed=self.scenario.seed)
                path.write_text(tomlw.dumps(data, f"serial line {line.name}"))
                first = line.devices[0].sim
                argv = self._hwsim(first, "--config", str(path))
            children.append(Child(f"{line.family}-{line.name}", line.family, argv, simdir))
        if any(d.sim == "onvif" for d in self.devices):
            path = simdir / "onvif.toml"
            path.write_text(tomlw.dumps(model.onvif_sim_file(self.devices, self.endpoints.camera_password),
                                        "ONVIF cameras"))
            os.chmod(path, 0o600)
            children.append(Child("onvif", "onvif", self._hwsim("onvif", "-c", str(path)), simdir))
        return children

    async def start(self, timeout: float = 30.0) -> dict[str, Any]:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.children = self._plan()
        try:
            for c in self.children:
                c.spawn()
            for c in self.children:
                await c.wait_info(timeout)
            self._collect()
            self.write_gateway_config()
        except BaseException:
            await self.stop()
            raise
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        if self.activity_enabled:
            for act in self.scenario.activity:
                members = [d for d in self.devices if d.group == act.group]
                if members and members[0].sim != "virtual":
                    self._spawn(self._activity_loop(act, members), f"activity-{act.group}")
        return self.describe()

    def _collect(self) -> None:
        for c in self.children:
            if c.kind == "onvif":
                self.endpoints.onvif_control = int(c.info["control_port"])
                self.endpoints.cameras = {n: int(v["port"]) for n, v in c.info["cameras"].items()}
                continue
            name = c.name.split("-", 1)[1]
            line = next(ln for ln in self.lines if ln.name == name)
            info = c.info
            where: dict[str, Any] = {"control_port": info.get("control_port")}
            if line.link == "pty":
                if not info.get("pty"):
                    raise StartError(f"{c.name} did not open a pseudo-terminal: {info}")
                where["pty"] = info["pty"]
            else:
                where["port"] = info.get("tcp_port")
            self.endpoints.lines[name] = where

    def write_gateway_config(self) -> Path:
        cfg = model.gateway_config(self.scenario, self.devices, self.endpoints, self.options)
        header = (f"Generated by `hwsim run --scenario {Path(self.scenario.source).name}`: "
                  f"{len(self.devices)} devices.\nPorts and pseudo-terminals are those of the "
                  "running simulators; regenerate after restarting them.")
        self.gateway_config_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.gateway_config_path.with_suffix(".tmp")
        tmp.write_text(tomlw.dumps(cfg, header))
        os.chmod(tmp, 0o600)  # holds the camera password
        tmp.replace(self.gateway_config_path)
        return self.gateway_config_path

    def describe(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario.name,
            "gateway_config": str(self.gateway_config_path),
            **model.summary(self.devices),
            "processes": [
                {"name": c.name, "pid": c.proc.pid if c.proc else None,
                 **{k: v for k, v in c.info.items() if k in ("pty", "tcp_port", "control_port")},
                 **({"cameras": len(c.info.get("cameras", {}))} if c.kind == "onvif" else {})}
                for c in self.children
            ],
        }

    def dead_children(self) -> list[str]:
        return [c.name for c in self.children if c.proc is not None and c.proc.poll() is not None]

    async def stop_activity(self) -> None:
        """Stop injecting activity (pending clears are applied at once)."""
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    async def stop(self, grace: float = 5.0) -> None:
        await self.stop_activity()
        if self._session is not None:
            await self._session.close()
            self._session = None
        for c in self.children:
            c.terminate()
        deadline = time.monotonic() + grace
        for c in self.children:
            if c.proc is None:
                continue
            try:
                await asyncio.to_thread(c.proc.wait, max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: killed", c.name, grace)
                c.kill()
                await asyncio.to_thread(c.proc.wait)

    # ------------------------------------------------------------------ activity

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _activity_loop(self, act: model.Activity, members: list[Device]) -> None:
        while True:
            await asyncio.sleep(self.rng.expovariate(1.0 / act.every))
            dev = self.rng.choice(members)
            ok = await self.inject(dev, act, clear=False)
            if ok and act.hold > 0 and (act.clear or act.clear_event):
                self._spawn(self._clear_later(dev, act), f"clear-{dev.id}")

    async def _clear_later(self, dev: Device, act: model.Activity) -> None:
        await asyncio.sleep(act.hold)
        await self.inject(dev, act, clear=True)

    async def inject(self, dev: Device, act: model.Activity, *, clear: bool) -> bool:
        """Apply one activity step to a device through its simulator's control API."""
        assert self._session is not None
        try:
            if dev.sim == "onvif":
                body = act.clear_event if clear else act.event
                if body and "topic" not in body:  # one event per camera profile
                    body = body.get(dev.profile)
                if not body:
                    return False
                url = f"http://127.0.0.1:{self.endpoints.onvif_control}/cameras/{dev.id}/event"
                payload: dict[str, Any] = {"topic": body["topic"],
                                           "data": {k: str(v) for k, v in body.get("data", {}).items()},
                                           "source": {k: str(v) for k, v in body.get("source", {}).items()}}
            else:
                where = self.endpoints.lines.get(dev.line or "", {})
                base = f"http://127.0.0.1:{where.get('control_port')}"
                if act.emit and not clear:
                    url = f"{base}/devices/{dev.address}/emit"
                    payload = model.pick_values(dict(act.emit), self.rng)
                else:
                    values = model.pick_values(act.clear if clear else act.set, self.rng)
                    if not values:
                        return False
                    if dev.sim == "modbus":
                        url, payload = f"{base}/devices/{dev.id}/values", values
                    else:
                        url, payload = f"{base}/devices/{dev.address}", {"values": values}
            async with self._session.post(url, json=payload) as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        except (TimeoutError, aiohttp.ClientError, OSError, RuntimeError, KeyError) as exc:
            self.inject_errors += 1
            log.warning("activity on %s (%s) failed: %s", dev.id, act.group, exc)
            return False
        self.injected_total += 1
        self.injected.append({"t": time.time(), "dev": dev.id, "group": act.group, "clear": clear,
                              "what": payload})
        del self.injected[:-50]
        return True
