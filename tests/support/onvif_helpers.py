"""Helpers for ONVIF driver tests: build devices from the bundled profiles and collect
events from a running bus with bounded waits."""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from drivers.onvif.driver import CameraAddress, OnvifBus, OnvifDriver
from gateway.plugin import BusSpec, DeviceSpec, PointSpec, RawEvent
from gateway.profiles import Profile, driver_profile_files, load_profiles

DRIVER = OnvifDriver()


def bundled_profiles() -> dict[str, Profile]:
    ps = load_profiles(driver_profile_files(["drivers.onvif.driver"]), {"onvif": DRIVER})
    assert not ps.issues, ps.issues
    return ps.profiles


def device(dev_id: str, profile: Profile, address: dict[str, Any]) -> DeviceSpec:
    addr = CameraAddress.model_validate(address)
    points = tuple(PointSpec(pm.name, pm.address, pm.writable, pm.pdef.type) for pm in profile.read_points)
    return DeviceSpec(dev_id, profile.cls, profile.id, addr, profile.options, points, 5.0)


def open_bus(dev: DeviceSpec) -> OnvifBus:
    bus = DRIVER.open_bus(BusSpec(dev.id, "onvif", DRIVER.implicit_bus_options(dev.address)))
    assert isinstance(bus, OnvifBus)
    bus.attach(dev)
    return bus


class EventCollector:
    """Consumes ``bus.events()`` in a task (as the core does) into a queue."""

    def __init__(self, bus: OnvifBus) -> None:
        self.bus = bus
        self.queue: asyncio.Queue[RawEvent] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        it = self.bus.events()
        assert it is not None
        async for ev in it:
            await self.queue.put(ev)

    async def __aenter__(self) -> EventCollector:
        await self.bus.open()
        self.task = asyncio.create_task(self._run(), name=f"collect-{self.bus.spec.name}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.bus.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def take(self, n: int, timeout: float = 10.0) -> list[RawEvent]:
        out: list[RawEvent] = []
        async with asyncio.timeout(timeout):
            while len(out) < n:
                out.append(await self.queue.get())
        return out

    async def stream(self) -> AsyncIterator[RawEvent]:
        while True:
            yield await self.queue.get()


# --------------------------------------------------------------------------- daemon tests
#
# The real daemon (``edge-gateway run``, default privacy policy) against ``hwsim onvif``
# running as another process, driven through its control endpoint.


class SimCameras:
    """``hwsim onvif -c FILE`` as a child process; its control endpoint over HTTP."""

    def __init__(self, tmp: Path, sim_toml: str) -> None:
        from tests.support.ops_stack import HWSIM, JsonProc

        cfg = tmp / "sim.toml"
        cfg.write_text(sim_toml)
        self.proc = JsonProc([*HWSIM, "onvif", "-c", str(cfg)], "onvif-sim", tmp / "onvif-sim.log")
        self.info: dict[str, Any] = self.proc.info
        self.control = f"http://127.0.0.1:{self.info['control_port']}/cameras"

    def port(self, name: str) -> int:
        return int(self.info["cameras"][name]["port"])

    def status(self, name: str) -> dict[str, Any]:
        from tests.support.ops_stack import http_json

        return dict(http_json(f"{self.control}/{name}"))

    def post(self, name: str, action: str, body: dict[str, Any] | None = None) -> Any:
        req = urllib.request.Request(
            f"{self.control}/{name}/{action}", data=json.dumps(body or {}).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read() or b"null")

    def close(self) -> None:
        self.proc.stop()


def camera_device(
    dev_id: str, port: int, *, password: str, profile: str = "acme-ht200-throw", poll: str | None = None, extra: str = ""
) -> str:
    """A ``[[devices]]`` entry for a simulated camera; ``password`` is TOML (a literal or a
    secret reference such as ``{ file = "..." }``)."""
    lines = ["[[devices]]", f'id = "{dev_id}"', 'class = "camera"', f'profile = "{profile}"']
    if poll:
        lines.append(f'poll = "{poll}"')
    lines.append(
        f'address = {{ host = "127.0.0.1", port = {port}, username = "admin", password = {password}'
        + (f", {extra}" if extra else "")
        + " }"
    )
    return "\n".join(lines) + "\n"


def start_gateway(tmp: Path, body: str, env: dict[str, str] | None = None) -> Any:
    """The real daemon with ``body`` (devices) and the default privacy policy."""
    from tests.support.core_daemon import Daemon, free_port
    from tests.support.ops_stack import gateway_config

    cfg = gateway_config(tmp, api_port=free_port(), body=body, token_env=None)
    return Daemon(cfg, env={"EDGE_GW_LOG_LEVEL": "info", **(env or {})}, log=tmp / "daemon.log").start(wait_ready=30)


def device_state(daemon: Any, dev_id: str) -> dict[str, Any]:
    return dict(daemon.get(f"/api/v1/devices/{dev_id}"))


def scrape(daemon: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    _, body, _ = daemon.raw("/metrics")
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_value(daemon: Any, name: str, **labels: str) -> float | None:
    return scrape(daemon).get((name, tuple(sorted(labels.items()))))
