"""Run devices of a gateway config through the real driver, profile mapping and pipeline,
without the daemon, the buffer or an uplink. For driver and profile tests (golden cases)
and for vendors trying a new profile against ``hwsim``::

    async with DeviceHarness.from_file("cases/acme/config.toml") as h:
        records = await h.poll()                 # one poll of every device
        result = await h.write("dev-1", "on", True)
        pushed = await h.collect_events(count=2, timeout=5)

Records come out exactly as the daemon would store them (``seq`` stamped by a counter).
"""

from __future__ import annotations

import asyncio
import itertools
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.commands import CommandService
from gateway.config import Config, load_config, validate_config
from gateway.pipeline import Pipeline, remember_latest
from gateway.plugin import Bus
from gateway.record import Record
from gateway.supervisor import BusRunner, DeviceRunner, group_by_bus, make_trackers


class _MemoryAudit:
    def __init__(self) -> None:
        self.entries: dict[str, dict[str, Any]] = {}

    async def command_seen(self, command_id: str) -> dict[str, Any] | None:
        return self.entries.get(command_id)

    async def audit_command(self, command_id: str, entry: dict[str, Any]) -> None:
        self.entries[command_id] = entry


class DeviceHarness:
    def __init__(self, config: Config, privacy: Any = None) -> None:
        self.config = config
        self.records: list[Record] = []
        self._seq = itertools.count(1)
        self._new = asyncio.Event()
        self.pipeline = Pipeline(self._sink, privacy, observe=self._observe)
        self.trackers = make_trackers(config)
        self.runners: dict[str, BusRunner] = {}
        self.audit = _MemoryAudit()
        self.commands = CommandService(
            config.devices, self._bus, self.audit, self.pipeline.submit, config.gw_id,
            lambda dev, pt, v, ts: self.trackers[dev].note_written(pt, v, ts),
        )
        self._event_tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_file(cls, path: str | Path) -> DeviceHarness:
        return cls(load_config(path))

    @classmethod
    def from_text(cls, text: str, base_dir: str | Path = ".") -> DeviceHarness:
        file = Path(base_dir) / "config.toml"
        return cls(validate_config(tomllib.loads(text), file=file, text=text))

    def _observe(self, records: Sequence[Record]) -> None:
        remember_latest(self.trackers, records)

    async def _sink(self, records: Sequence[Record]) -> None:
        for r in records:
            r.seq = next(self._seq)
            self.records.append(r)
        self._new.set()

    def _bus(self, name: str) -> Bus | None:
        r = self.runners.get(name)
        return r.bus if r is not None and r.is_open else None

    async def __aenter__(self) -> DeviceHarness:
        for bus_name, devs in group_by_bus(self.config).items():
            spec = self.config.buses[bus_name]
            runner = BusRunner(spec, self.config.registry.drivers[spec.driver], devs, self.pipeline, self.trackers)
            await runner.open()
            self.runners[bus_name] = runner
            if runner.is_open and runner.bus is not None and runner.bus.events() is not None:
                self._event_tasks.append(asyncio.create_task(runner._events(), name=f"harness-events:{bus_name}"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for t in self._event_tasks:
            t.cancel()
        for t in self._event_tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        for r in self.runners.values():
            await r.close()

    async def poll(self, device_id: str | None = None) -> list[Record]:
        """Poll every device (or one) once, concurrently like the daemon; return the new records."""
        start = len(self.records)
        jobs = []
        for runner in self.runners.values():
            if not runner.is_open or runner.bus is None:
                continue
            for d in runner.devices:
                if device_id is not None and d.spec.id != device_id:
                    continue
                dr = DeviceRunner(d, runner.bus, runner.driver, self.trackers[d.spec.id], self.pipeline)
                jobs.append(dr.poll_once())
        await asyncio.gather(*jobs)
        return self.records[start:]

    async def write(self, device_id: str, point: str, value: Any, command_id: str | None = None) -> dict[str, Any]:
        cid = command_id or f"harness-{next(self._seq)}"
        return await self.commands.execute({"id": cid, "device": device_id, "point": point, "value": value})

    async def collect_events(self, count: int, timeout: float) -> list[Record]:
        """Wait until ``count`` event records were pushed (or the timeout passes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            evs = [r for r in self.records if r.kind == "event"]
            if len(evs) >= count or loop.time() >= deadline:
                return evs
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
