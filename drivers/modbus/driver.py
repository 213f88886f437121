"""The Modbus driver: Modbus TCP, RTU on a serial port, RTU over TCP (serial servers, DTUs).

One ``ModbusBus`` (hub) per configured bus owns one pymodbus client (``client.py``) and an
``asyncio.Lock``; the core
polls devices concurrently and the hub serialises them onto the line. A Modbus TCP device
configured without a ``bus`` gets a bus of its own from its address (``implicit_bus``).

Failure policy of a poll (the core does the backoff, offline/online and quality):

* No answer to the first request of a poll -> ``DeviceUnavailable`` at once: a dead device
  costs one timeout per probe and never stalls the other devices on its line longer.
* Corrupt answers (CRC, truncated, malformed) and timeouts after the device already answered
  in this poll are retried ``retries`` times.
* A Modbus exception fails only the points of that request; the reason names the exception.
* Exception 02 (illegal data address) to a coalesced read is a hole in the device's map: the
  block is split until its parts read, what was learnt is kept per device (later polls
  skip the hole; points inside it are bad with reason ``illegal_address``), logged once
  and counted (``edge_gw_modbus_holes_learnt_total``). Learnt holes are asked again after a
  reconnect, after the device stopped answering, and ``hole_recheck`` after learning.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar

from drivers.modbus import codec, metrics
from drivers.modbus.client import LinkError, ModbusClient
from drivers.modbus.schema import BusOptions, DeviceAddress, PointAddress, ProfileOptions
from gateway.plugin import (
    Bus,
    BusSpec,
    DeviceSpec,
    DeviceUnavailable,
    Driver,
    DriverError,
    PointSpec,
    RawValue,
    Reading,
    WriteRejected,
)

log = logging.getLogger("drivers.modbus")

# Exceptions worth one more try after a short pause (the device said "not now").
_BUSY_CODES = frozenset({5, 6})
_BUSY_PAUSE = 0.05


class Line:
    """The bus lock, with two queues: devices that answered their last poll are served
    before *suspects* (devices whose last poll failed). On a shared RS-485 line a healthy
    device therefore waits at most for the one request in flight -- one timeout if that is
    a probe of a dead device -- never for a queue of dead probes. FIFO within a queue."""

    __slots__ = ("_busy", "_queues")

    def __init__(self) -> None:
        self._busy = False
        self._queues: tuple[deque[asyncio.Future[None]], deque[asyncio.Future[None]]] = (
            deque(),
            deque(),
        )

    @property
    def busy(self) -> bool:
        return self._busy

    async def acquire(self, suspect: bool = False) -> None:
        if not self._busy and not self._queues[0] and not self._queues[1]:
            self._busy = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queues[1 if suspect else 0]
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the line was handed to us as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
            raise

    def release(self) -> None:
        for queue in self._queues:
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # ownership passes directly: the line stays busy
                    return
        self._busy = False

    @contextlib.asynccontextmanager
    async def hold(self, suspect: bool = False) -> AsyncIterator[None]:
        await self.acquire(suspect)
        try:
            yield
        finally:
            self.release()


class _Plan:
    """Read plan of one device for one set of points (pure data, from ``codec.plan_reads``)."""

    __slots__ = ("blocks", "specs")

    def __init__(self, blocks: list[codec.ReadBlock], specs: dict[str, codec.ValueSpec]) -> None:
        self.blocks = blocks
        self.specs = specs


# Reason of a point inside a hole of its device's register map (exception 02 to its own read).
ILLEGAL_ADDRESS = "illegal_address"
_OK, _HOLE, _FAILED = "ok", "hole", "failed"


class _Learnt:
    """How one planned read block is read on a device whose map has a hole in it: the
    requests that work, and the points inside the hole (never asked again until a re-check)."""

    __slots__ = ("blocks", "holes")

    def __init__(self, blocks: tuple[codec.ReadBlock, ...], holes: tuple[codec.Span, ...]) -> None:
        self.blocks = blocks
        self.holes = holes

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Learnt) and self.blocks == other.blocks and self.holes == other.holes
        )

    __hash__ = None  # type: ignore[assignment]


class _Holes:
    """What one device taught us about its register map, and when."""

    __slots__ = ("blocks", "connections", "since")

    def __init__(self, connections: int) -> None:
        self.blocks: dict[codec.ReadBlock, _Learnt] = {}
        self.connections = connections  # the client's connect count when learnt
        self.since = time.monotonic()


class _Poll:
    """One poll of one device in progress."""

    __slots__ = ("answered", "device", "reading", "reply_s", "unit")

    def __init__(self, device: str, unit: int, reply_s: float, reading: Reading) -> None:
        self.device = device
        self.unit = unit
        self.reply_s = reply_s
        self.reading = reading
        self.answered = False  # the device sent any usable answer (an exception counts)


def _profile_options(device: DeviceSpec) -> ProfileOptions:
    opts = device.options
    return opts if isinstance(opts, ProfileOptions) else ProfileOptions()


def _device_address(device: DeviceSpec) -> DeviceAddress:
    addr = device.address
    if isinstance(addr, DeviceAddress):
        return addr
    if isinstance(addr, Mapping):
        return DeviceAddress.model_validate(addr)
    return DeviceAddress()


def point_spec(device: DeviceSpec, point: PointSpec) -> codec.ValueSpec:
    addr = point.address
    if not isinstance(addr, PointAddress):
        addr = PointAddress.model_validate(addr)
    return addr.spec(_profile_options(device).order)


def make_plan(device: DeviceSpec, points: Sequence[PointSpec], bus_max_gap: int) -> _Plan:
    """Pure: the read requests for ``points`` of ``device`` (profile and device limits)."""
    opts = _profile_options(device)
    addr = _device_address(device)
    specs: dict[str, codec.ValueSpec] = {}
    spans: list[codec.Span] = []
    for p in points:
        if p.address is None:
            continue
        spec = point_spec(device, p)
        specs[p.name] = spec
        spans.append(codec.Span(p.name, spec.table, spec.offset, spec.count))
    max_regs = min(opts.max_registers, addr.max_registers or codec.MAX_READ_REGISTERS)
    gap = opts.max_gap if opts.max_gap is not None else bus_max_gap
    blocks = codec.plan_reads(spans, max_registers=max_regs, max_bits=opts.max_bits, max_gap=gap)
    return _Plan(blocks, specs)


class ModbusBus(Bus):
    """Hub of one Modbus line or endpoint."""

    def __init__(self, spec: BusSpec, client: ModbusClient | None = None) -> None:
        super().__init__(spec)
        options = spec.options
        if not isinstance(options, BusOptions):
            options = BusOptions.model_validate(options)
        self.options: BusOptions = options
        self.client = client or ModbusClient(spec.name, options)
        self.line = Line()
        self._suspects: set[str] = set()  # devices whose last poll got no answer
        self._plans: dict[tuple[str, tuple[str, ...]], _Plan] = {}
        self._last_plan: dict[str, tuple[Sequence[PointSpec], _Plan]] = {}
        self._failures: dict[str, Any] = {}
        self._exceptions: dict[int, Any] = {}
        self._holes: dict[str, _Holes] = {}  # per device id: holes learnt in its map
        # per device id: what was learnt before the last re-check (finding it again is no news)
        self._known: dict[str, dict[codec.ReadBlock, _Learnt]] = {}
        self._retries = metrics.RETRIES.labels(spec.name)

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self.options.transport == "rtu":
            try:
                await self.client.connect()
            except LinkError as exc:
                raise DriverError(
                    "port_unavailable", f"{self.options.port}: {exc.detail}"
                ) from None
        # TCP endpoints connect on first use: an unreachable device is an offline device,
        # not a configuration error.

    async def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # close must not raise
            log.debug("bus %s: error while closing", self.spec.name, exc_info=True)

    def attach(self, device: DeviceSpec) -> None:
        addr = _device_address(device)
        if addr.host is not None and self.spec.name != device.id:
            raise DriverError(
                "config",
                f"device {device.id}: address.host is only for devices without a bus "
                f"(bus {self.spec.name} sets the endpoint)",
            )
        self._plan(device, device.points)

    def requests_per_poll(self, device: DeviceSpec) -> int:
        blocks = self._plan(device, device.points).blocks
        holes = self._holes.get(device.id)
        if holes is None:
            return len(blocks)
        return sum(len(holes.blocks[b].blocks) if b in holes.blocks else 1 for b in blocks)

    def _plan(self, device: DeviceSpec, points: Sequence[PointSpec]) -> _Plan:
        # every poll passes the same ``device.points`` object: found by identity first,
        # without building the key of point names
        last = self._last_plan.get(device.id)
        if last is not None and last[0] is points:
            return last[1]
        key = (device.id, tuple(p.name for p in points))
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = make_plan(device, points, self.options.max_gap)
        if points is device.points:
            self._last_plan[device.id] = (points, plan)
        return plan

    # ------------------------------------------------------------------ requests

    def _failed(self, reason: str) -> None:
        c = self._failures.get(reason)
        if c is None:
            c = self._failures[reason] = metrics.FAILURES.labels(self.spec.name, reason)
        c.inc()

    def _exception(self, code: int) -> None:
        c = self._exceptions.get(code)
        if c is None:
            c = self._exceptions[code] = metrics.EXCEPTIONS.labels(self.spec.name, f"{code:02d}")
        c.inc()

    async def _request(
        self, unit: int, req: codec.Request, reply_s: float, *, retry_timeouts: bool
    ) -> list[int] | list[bool] | None:
        """One request with the retry policy; caller holds the lock."""
        attempts = 1 + self.options.retries
        busy_retry = True
        last: LinkError | None = None
        for attempt in range(attempts):
            if attempt:
                self._retries.inc()
            try:
                return await self.client.execute(unit, req, reply_s)
            except codec.ModbusExceptionResponse as exc:
                self._exception(exc.code)
                if exc.code in _BUSY_CODES and busy_retry:
                    busy_retry = False
                    await asyncio.sleep(_BUSY_PAUSE)
                    try:
                        return await self.client.execute(unit, req, reply_s)
                    except codec.ModbusExceptionResponse as exc2:
                        self._exception(exc2.code)
                        raise exc2 from None
                raise
            except codec.MalformedFrame as exc:
                self._failed(exc.reason)
                last = LinkError(exc.reason, exc.detail, answered=True)
            except LinkError as exc:
                self._failed(exc.reason)
                last = exc
                if exc.reason in ("connect_failed", "connect_timeout", "connection"):
                    self.client.close()
                    if exc.reason != "connection":
                        break  # the endpoint is not there: retrying now will not help
                if exc.reason == "timeout" and not retry_timeouts:
                    break
        assert last is not None
        raise last

    def _timeout(self, device: DeviceSpec) -> float:
        t = _device_address(device).timeout
        return float(t) if t is not None else float(self.options.timeout)

    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        plan = self._plan(device, points)
        unit = _device_address(device).unit
        reply_s = self._timeout(device)
        reading = Reading()
        poll = _Poll(device.id, unit, reply_s, reading)
        suspect = device.id in self._suspects
        try:
            await self.line.acquire(suspect)  # (hold() without the generator: once per poll)
            try:
                await self._read_locked(plan, poll)
            finally:
                self.line.release()
        except DeviceUnavailable:
            self._suspects.add(device.id)
            self._forget_holes(device.id)  # it may come back as another device (or firmware)
            raise
        if not poll.answered:
            self._suspects.add(device.id)
            self._forget_holes(device.id)
            reason = next(iter(reading.errors.values()), "no_answer")
            raise DeviceUnavailable(reason, "no usable answer to any request")
        self._suspects.discard(device.id)
        return reading

    # ------------------------------------------------------------------ holes

    def _learnt(self, device_id: str) -> _Holes | None:
        """What was learnt of the device's map, or ``None`` (nothing, or due a re-check:
        after a reconnect of the bus, or ``hole_recheck`` after it was learnt)."""
        holes = self._holes.get(device_id)
        if holes is None:
            return None
        if holes.connections != self.client.connections or not self.client.connected:
            why = "the connection is new"
        elif time.monotonic() - holes.since > self.options.hole_recheck:
            why = f"learnt more than {self.options.hole_recheck:g}s ago"
        else:
            return holes
        log.debug("device %s: asking the holes of its register map again (%s)", device_id, why)
        self._forget_holes(device_id)
        return None

    def _forget_holes(self, device_id: str) -> None:
        holes = self._holes.pop(device_id, None)
        if holes is not None:
            self._known.setdefault(device_id, {}).update(holes.blocks)

    def _learn(self, poll: _Poll, block: codec.ReadBlock, learnt: _Learnt) -> None:
        holes = self._holes.get(poll.device)
        if holes is None:
            holes = self._holes[poll.device] = _Holes(self.client.connections)
        holes.blocks[block] = learnt
        holes.since = time.monotonic()
        inside = ", ".join(s.key for s in learnt.holes)
        known = self._known.get(poll.device)
        if known is not None and known.get(block) == learnt:
            log.debug(
                "device %s: %s %d-%d still has the hole learnt before (%d request(s)%s)",
                poll.device, block.table, block.start, block.start + block.count - 1,
                len(learnt.blocks), f"; inside: {inside}" if inside else "",
            )
            return
        metrics.HOLES_LEARNT.labels(self.spec.name, poll.device).inc()
        log.warning(
            "device %s (unit %d): exception 02 (illegal data address) to a read of %s %d-%d: "
            "its register map has a hole there; now read as %d request(s)%s. Learnt until a "
            "reconnect, the device stops answering, or %gs (hole_recheck)",
            poll.device,
            poll.unit,
            block.table,
            block.start,
            block.start + block.count - 1,
            len(learnt.blocks),
            f"; inside the hole, bad (illegal_address): {inside}" if inside else "",
            self.options.hole_recheck,
        )

    # ------------------------------------------------------------------ reads

    async def _read_locked(self, plan: _Plan, poll: _Poll) -> None:
        reading = poll.reading
        holes = self._learnt(poll.device) if self._holes else None
        known = holes.blocks if holes is not None else None
        for block in plan.blocks:
            learnt = known.get(block) if known else None
            if learnt is None:
                outcome = await self._read_block(plan, block, poll)
                if outcome == _OK and self._known:
                    self._hole_gone(poll, block)
                if outcome != _HOLE:
                    continue
                self._learn(poll, block, await self._split(plan, block, poll))
                continue
            for span in learnt.holes:
                reading.errors[span.key] = ILLEGAL_ADDRESS
            todo: list[codec.ReadBlock] = []
            again = False
            for b in learnt.blocks:
                if await self._read_block(plan, b, poll) == _HOLE:
                    more = await self._split(plan, b, poll)  # a new hole inside a learnt part
                    todo.extend(more.blocks)
                    learnt = _Learnt(learnt.blocks, learnt.holes + more.holes)
                    again = True
                else:
                    todo.append(b)
            if again:
                self._learn(poll, block, _Learnt(tuple(todo), learnt.holes))
        if not reading.requests and plan.blocks and holes is not None:
            await self._probe_holes(holes, poll)

    def _hole_gone(self, poll: _Poll, block: codec.ReadBlock) -> None:
        known = self._known.get(poll.device)
        if known is not None and known.pop(block, None) is not None:
            log.info(
                "device %s: %s %d-%d reads whole again: the hole learnt in it is gone",
                poll.device, block.table, block.start, block.start + block.count - 1,
            )

    async def _probe_holes(self, holes: _Holes, poll: _Poll) -> None:
        """Every point of the poll lies in a learnt hole, so no request was sent: one read
        of a hole proves the device is still there (exception 02 is an answer). If it reads
        now, the holes are forgotten and the next poll asks again."""
        span = next(s for learnt in holes.blocks.values() for s in learnt.holes)
        req = codec.read_request(span.table, span.offset, span.count)
        poll.reading.requests += 1
        try:
            await self._request(poll.unit, req, poll.reply_s, retry_timeouts=False)
        except codec.ModbusExceptionResponse:
            poll.answered = True
            return
        except LinkError as exc:
            # the only request of this poll: no usable answer (a corrupt one proves nothing)
            raise DeviceUnavailable(exc.reason, exc.detail) from None
        poll.answered = True
        log.info("device %s: a learnt register hole reads again; asking its map again", poll.device)
        self._holes.pop(poll.device, None)
        self._known.pop(poll.device, None)

    async def _split(self, plan: _Plan, block: codec.ReadBlock, poll: _Poll) -> _Learnt:
        """``block`` was answered with exception 02: read its parts, halving where it bridges
        its largest gap, until every part reads or is one point (then that point is inside
        a hole). Parts that failed otherwise stay to be read by later polls."""
        halves = codec.split_block(block)
        if halves is None:
            for span in block.members:
                poll.reading.errors[span.key] = ILLEGAL_ADDRESS
            return _Learnt((), block.members)
        blocks: list[codec.ReadBlock] = []
        holes: tuple[codec.Span, ...] = ()
        for half in halves:
            if await self._read_block(plan, half, poll) == _HOLE:
                part = await self._split(plan, half, poll)
                blocks.extend(part.blocks)
                holes += part.holes
            else:
                blocks.append(half)
        return _Learnt(tuple(blocks), holes)

    async def _read_block(self, plan: _Plan, block: codec.ReadBlock, poll: _Poll) -> str:
        """One read request for ``block``; its values (or errors) go into the reading.
        Returns ``_HOLE`` when the device answered exception 02 (nothing recorded then)."""
        reading = poll.reading
        req = codec.read_request(block.table, block.start, block.count)
        reading.requests += 1
        try:
            data = await self._request(poll.unit, req, poll.reply_s, retry_timeouts=poll.answered)
        except codec.ModbusExceptionResponse as exc:
            poll.answered = True
            if exc.code == 2:
                return _HOLE
            for span in block.members:
                reading.errors[span.key] = exc.reason
            return _FAILED
        except LinkError as exc:
            if not poll.answered and not exc.answered:
                raise DeviceUnavailable(exc.reason, exc.detail) from None
            # a corrupt answer proves nothing usable: it does not make the device "up"
            for span in block.members:
                reading.errors[span.key] = exc.reason
            return _FAILED
        poll.answered = True
        assert data is not None
        for span in block.members:
            words = codec.slice_block(block, data, span)
            try:
                if block.table in codec.BIT_TABLES:
                    reading.values[span.key] = bool(words[0])
                else:
                    reading.values[span.key] = codec.decode_registers(plan.specs[span.key], words)
            except codec.CodecError as exc:
                reading.errors[span.key] = exc.reason
        return _OK

    # ------------------------------------------------------------------ writes

    async def write(self, device: DeviceSpec, point: PointSpec, value: RawValue) -> RawValue:
        if point.address is None:
            raise WriteRejected("not_addressed", f"{point.name} has no address")
        spec = point_spec(device, point)
        addr = (
            point.address
            if isinstance(point.address, PointAddress)
            else PointAddress.model_validate(point.address)
        )
        if spec.table not in ("coil", "holding"):
            metrics.WRITES.labels("rejected").inc()
            raise WriteRejected("read_only", f"{point.name} is in the {spec.table} table")
        if isinstance(value, bytes) or value is None:
            metrics.WRITES.labels("rejected").inc()
            raise WriteRejected("bad_value", f"cannot write {value!r}")
        unit = _device_address(device).unit
        reply_s = self._timeout(device)
        async with self.line.hold():
            try:
                written = await self._write_locked(unit, spec, addr, value, reply_s)
                if not addr.verify or unit == 0:
                    metrics.WRITES.labels("ok").inc()
                    return value
                back = await self._read_value(unit, spec, reply_s)
            except codec.ModbusExceptionResponse as exc:
                metrics.WRITES.labels("rejected").inc()
                raise WriteRejected(exc.reason, exc.detail) from None
            except codec.CodecError as exc:
                metrics.WRITES.labels("rejected").inc()
                raise WriteRejected(exc.reason, exc.detail) from None
            except LinkError as exc:
                metrics.WRITES.labels("failed").inc()
                raise DeviceUnavailable(exc.reason, exc.detail) from None
        if written is not None and back[0] != written:
            metrics.WRITES.labels("verify_mismatch").inc()
            raise WriteRejected(
                "verify_mismatch", f"{point.name}: wrote {value!r}, device reads back {back[1]!r}"
            )
        metrics.WRITES.labels("ok").inc()
        return back[1]

    async def _write_locked(
        self, unit: int, spec: codec.ValueSpec, addr: PointAddress, value: Any, reply_s: float
    ) -> Any:
        """Send the write; returns what a correct read-back must show (words or a bit)."""
        if spec.table == "coil":
            bit = bool(value)
            req = (
                codec.write_coils_request(spec.offset, [bit])
                if addr.write_fc == 15
                else codec.write_coil_request(spec.offset, bit)
            )
            await self._request(unit, req, reply_s, retry_timeouts=True)
            return [int(bit)]
        if spec.bit is not None:
            current = await self._request(
                unit,
                codec.read_request("holding", spec.offset, spec.count),
                reply_s,
                retry_timeouts=True,
            )
            assert current is not None
            words = codec.merge_bits(spec, [int(x) for x in current], int(value))
        else:
            if spec.type == "bool":
                value = bool(value)
            words = codec.encode_value(spec, value)
        if len(words) == 1 and addr.write_fc != 16:
            req = codec.write_register_request(spec.offset, words[0])
        else:
            req = codec.write_registers_request(spec.offset, words)
        await self._request(unit, req, reply_s, retry_timeouts=True)
        return words

    async def _read_value(
        self, unit: int, spec: codec.ValueSpec, reply_s: float
    ) -> tuple[list[int], RawValue]:
        data = await self._request(
            unit,
            codec.read_request(spec.table, spec.offset, spec.count),
            reply_s,
            retry_timeouts=True,
        )
        assert data is not None
        words = [int(x) for x in data]
        if spec.table in codec.BIT_TABLES:
            return words, bool(words[0])
        return words, codec.decode_registers(spec, words)


class ModbusDriver(Driver):
    name: ClassVar[str] = "modbus"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "Modbus TCP, Modbus RTU (RS-485) and RTU over TCP"
    BusOptions = BusOptions
    DeviceAddress = DeviceAddress
    PointAddress = PointAddress
    ProfileOptions = ProfileOptions
    implicit_bus: ClassVar[bool] = True

    def open_bus(self, spec: BusSpec) -> Bus:
        return ModbusBus(spec)

    def implicit_bus_options(self, device_address: Any) -> Any:
        addr = (
            device_address
            if isinstance(device_address, DeviceAddress)
            else DeviceAddress.model_validate(device_address)
        )
        if addr.host is None:
            raise ValueError(
                "a Modbus device without a bus needs address.host (Modbus TCP), "
                "or put it on a [[buses]] entry"
            )
        return BusOptions(transport=addr.transport, host=addr.host, port=addr.port)

    def add_scan_arguments(self, parser: argparse.ArgumentParser) -> None:
        from drivers.modbus import scan

        scan.add_arguments(parser)

    async def scan(self, args: argparse.Namespace) -> list[Mapping[str, Any]]:
        from drivers.modbus import scan

        return await scan.run(self, args)
