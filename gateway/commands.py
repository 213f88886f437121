"""Downlink commands: validate against class and profile, deduplicate by id, execute through
the driver, audit, and report a clear outcome.

A command is ``{"id", "device", "point", "value", "deadline"?}`` (deadline: epoch seconds).
Outcomes: ``ok``, ``rejected`` (with reason; nothing was sent to the device), ``failed``
(with reason; the device or bus did not carry it out), ``expired`` (deadline passed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from gateway import metrics
from gateway.config import DeviceConfig
from gateway.plugin import Bus, DriverError
from gateway.profiles import MappingError, to_canonical, to_raw
from gateway.record import Record

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 15.0


class Audit(Protocol):
    async def command_seen(self, command_id: str) -> dict[str, Any] | None: ...
    async def audit_command(self, command_id: str, entry: dict[str, Any]) -> None: ...


def validate_command(
    cmd: Mapping[str, Any], devices: Mapping[str, DeviceConfig], now: float
) -> tuple[str, str] | None:
    """Pure validation. Returns (outcome, reason) when the command must not run."""
    cid = cmd.get("id")
    if not isinstance(cid, str) or not cid or len(cid) > 128:
        return "rejected", "id: expected a non-empty string of at most 128 characters"
    dev_id = cmd.get("device")
    if not isinstance(dev_id, str) or dev_id not in devices:
        return "rejected", f"unknown device {dev_id!r}"
    dev = devices[dev_id]
    point = cmd.get("point")
    pm = dev.profile.points.get(point) if isinstance(point, str) else None
    pdef = dev.cdef.points.get(point) if isinstance(point, str) else None
    if pdef is None:
        return "rejected", f"class {dev.spec.cls} has no point {point!r}"
    if not pdef.writable:
        return "rejected", f"{dev.spec.cls}.{point} is read-only"
    if pm is None or pm.address is None or not pm.writable:
        return "rejected", f"profile {dev.profile.id} does not allow writing {point}"
    if "value" not in cmd:
        return "rejected", "value: required"
    value = cmd["value"]
    why = pdef.check_value(value)
    if why is not None:
        return "rejected", f"value: {why}"
    if isinstance(value, int | float) and not isinstance(value, bool):
        if pm.wmin is not None and value < pm.wmin:
            return "rejected", f"value: {value} is below the profile minimum {pm.wmin:g}"
        if pm.wmax is not None and value > pm.wmax:
            return "rejected", f"value: {value} is above the profile maximum {pm.wmax:g}"
    deadline = cmd.get("deadline")
    if deadline is not None:
        if isinstance(deadline, bool) or not isinstance(deadline, int | float):
            return "rejected", "deadline: expected epoch seconds"
        if deadline < now:
            return "expired", f"deadline {deadline} passed before execution"
    return None


class CommandService:
    def __init__(
        self,
        devices: Mapping[str, DeviceConfig],
        buses: Callable[[str], Bus | None],
        audit: Audit,
        emit: Callable[[list[Record]], Awaitable[None]],
        gw: str,
        on_written: Callable[[str, str, Any, float], None] | None = None,
    ) -> None:
        self.on_written = on_written
        self.devices = devices
        self._bus = buses
        self.audit = audit
        self.emit = emit
        self.gw = gw
        self._locks: dict[str, asyncio.Lock] = {}

    async def execute(self, cmd: Mapping[str, Any], source: str = "api") -> dict[str, Any]:
        cid = cmd.get("id")
        if isinstance(cid, str) and cid:
            lock = self._locks.setdefault(cid, asyncio.Lock())
            async with lock:
                try:
                    return await self._execute(cmd, cid, source)
                finally:
                    self._locks.pop(cid, None)
        return self._result(cmd, "rejected", "id: expected a non-empty string")

    async def _execute(self, cmd: Mapping[str, Any], cid: str, source: str) -> dict[str, Any]:
        previous = await self.audit.command_seen(cid)
        if previous is not None:
            result = dict(previous.get("result", previous))
            result["duplicate"] = True
            metrics.COMMANDS.labels("duplicate").inc()
            return result
        now = time.time()
        bad = validate_command(cmd, self.devices, now)
        if bad is not None:
            result = self._result(cmd, *bad)
        else:
            result = await self._run(cmd)
        await self.audit.audit_command(
            cid,
            {
                "command": dict(cmd),
                "source": source,
                "received": now,
                "result": result,
            },
        )
        metrics.COMMANDS.labels(result["outcome"]).inc()
        log.info(
            "command %s %s.%s -> %s%s", cid, cmd.get("device"), cmd.get("point"),
            result["outcome"], f" ({result['reason']})" if "reason" in result else "",
        )
        return result

    async def _run(self, cmd: Mapping[str, Any]) -> dict[str, Any]:
        dev = self.devices[cmd["device"]]
        pm = dev.profile.points[cmd["point"]]
        bus = self._bus(dev.bus)
        if bus is None:
            return self._result(cmd, "failed", f"bus {dev.bus} is not open")
        try:
            raw = to_raw(pm, cmd["value"])
        except MappingError as exc:
            return self._result(cmd, "rejected", f"value: {exc}")
        spec = dev.spec.point(pm.name)
        try:
            back = await asyncio.wait_for(bus.write(dev.spec, spec, raw), COMMAND_TIMEOUT)
        except DriverError as exc:
            return self._result(cmd, "failed", f"{exc.reason}: {exc.detail}" if exc.detail else exc.reason)
        except TimeoutError:
            return self._result(cmd, "failed", "timeout")
        except Exception as exc:
            log.exception("driver write failed")
            return self._result(cmd, "failed", f"driver_error: {type(exc).__name__}")
        try:
            readback = to_canonical(pm, back)
        except MappingError:
            readback = None
        if readback is not None and readback != cmd["value"]:
            return self._result(
                cmd, "failed", f"read-back {readback!r} differs from the written value", value=readback
            )
        ts = round(time.time(), 3)
        if self.on_written is not None:
            self.on_written(dev.spec.id, pm.name, cmd["value"], ts)
        await self.emit(
            [
                Record(
                    gw=self.gw, dev=dev.spec.id, cls=dev.spec.cls, pt=pm.name, kind="state",
                    v=cmd["value"], ts=ts, u=pm.pdef.unit, attrs={"command": cmd["id"]},
                )
            ]
        )
        return self._result(cmd, "ok", None, value=cmd["value"])

    @staticmethod
    def _result(
        cmd: Mapping[str, Any], outcome: str, reason: str | None, value: Any = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"id": cmd.get("id"), "outcome": outcome, "ts": round(time.time(), 3)}
        if reason:
            out["reason"] = reason
        if value is not None:
            out["value"] = value
        return out
