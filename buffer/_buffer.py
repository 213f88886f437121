"""The asyncio front end of the buffer: bounded queue, group-commit writer, executor."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, TypeVar

from gateway.record import LANES, Record

from . import metrics as m
from ._codec import check_record
from ._downsample import DownsampleConfig
from ._store import MAX_UPLINKS, Store, StoreWriteError
from ._types import Batch, BufferRefused, BufferUnavailable

log = logging.getLogger("buffer")

T = TypeVar("T")

#: Kinds held in the memory reserve while the disk cannot be written; others are refused.
RESERVE_KINDS: Final = frozenset({"event", "lifecycle"})
METRICS_PERIOD: Final = 0.5


@dataclass(slots=True)
class _Item:
    """One append() call waiting for the writer."""

    records: list[Record]
    future: asyncio.Future[None]
    t0: float
    refused: list[Record] = field(default_factory=list)
    refused_reason: str = ""
    refused_detail: str = ""


class Buffer:
    """Durable store-and-forward buffer on one SQLite file.

    See ``buffer/README.md`` for the durability contract.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        gw: str,
        uplinks: Sequence[str] = ("default",),
        budget_bytes: int | None = None,
        max_age: Mapping[str, float] | None = None,
        downsample: DownsampleConfig | None = None,
        queue_size: int = 10_000,
        commit_max_records: int = 1_000,
        commit_max_delay: float = 0.005,
        reserve_records: int = 1_000,
        retry_interval: float = 1.0,
        maintenance_interval: float = 1.0,
        sync_telemetry: bool = False,
    ) -> None:
        if not gw:
            raise ValueError("gw must be a non-empty gateway id")
        names = list(uplinks)
        if not names:
            raise ValueError("at least one uplink name is required")
        if len(set(names)) != len(names):
            raise ValueError(f"uplink names must be unique, got {names}")
        if len(names) > MAX_UPLINKS:
            raise ValueError(f"at most {MAX_UPLINKS} uplinks are supported")
        if any(not isinstance(n, str) or not n for n in names):
            raise ValueError("uplink names must be non-empty strings")
        if budget_bytes is not None and budget_bytes < 64 * 1024:
            raise ValueError("budget_bytes must be at least 64 KiB (or None for no budget)")
        for lane, age in (max_age or {}).items():
            if lane not in LANES:
                raise ValueError(f"max_age: unknown lane {lane!r} (lanes: {', '.join(LANES)})")
            if not (isinstance(age, int | float) and math.isfinite(age) and age > 0):
                raise ValueError(f"max_age[{lane!r}] must be a positive number of seconds")
        for name, val in (
            ("queue_size", queue_size),
            ("commit_max_records", commit_max_records),
            ("reserve_records", reserve_records),
        ):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"{name} must be a positive integer")
        for name, fval in (
            ("commit_max_delay", commit_max_delay),
            ("retry_interval", retry_interval),
            ("maintenance_interval", maintenance_interval),
        ):
            if not (isinstance(fval, int | float) and math.isfinite(fval) and fval >= 0):
                raise ValueError(f"{name} must be a non-negative number of seconds")
        self.path = os.fspath(path)
        self.gw = gw
        self.uplinks = tuple(names)
        self._store = Store(
            self.path,
            gw=gw,
            uplinks=names,
            budget_bytes=budget_bytes,
            max_age=max_age,
            downsample=downsample,
            sync_telemetry=sync_telemetry,
        )
        self._queue_size = queue_size
        self._commit_max = commit_max_records
        self._commit_delay = commit_max_delay
        self._reserve_max = reserve_records
        self._retry_interval = retry_interval
        self._maint_interval = maintenance_interval
        self._queue: deque[_Item] = deque()
        self._queued = 0
        self._reserve: list[_Item] = []
        self._reserved = 0
        self._space_waiters: deque[asyncio.Future[None]] = deque()
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._record_events: dict[str, asyncio.Event] = {}
        self._ex: ThreadPoolExecutor | None = None
        self._writer_task: asyncio.Task[None] | None = None
        self._started = False
        self._closing = False
        self._closed = False
        self._degraded: str | None = None
        self._retry_at = 0.0
        self._last_metrics = 0.0

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Buffer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        if self._ex is None:
            raise BufferUnavailable("buffer is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._ex, fn, *args)

    async def start(self) -> None:
        """Open (or create) the database and start the writer."""
        if self._started:
            return
        if self._closed:
            raise BufferUnavailable("a closed buffer cannot be restarted; make a new one")
        self._ex = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-gw-buffer")
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._record_events = {name: asyncio.Event() for name in self.uplinks}
        try:
            notes = await self._run(self._store.open)
            if notes:
                await self._run(self._store.commit, notes)
        except BaseException:
            ex, self._ex = self._ex, None
            await asyncio.get_running_loop().run_in_executor(ex, self._store.close)
            ex.shutdown(wait=True)
            raise
        self._started = True
        self._writer_task = asyncio.create_task(self._writer(), name="edge-gw-buffer-writer")
        self._notify()
        log.info(
            "buffer %s open: last seq %d, %d record(s) stored",
            self.path, self._store.last_seq, sum(self._store.count.values()),
        )

    async def close(self) -> None:
        """Write what is queued, stop the writer and close the file. Idempotent."""
        if self._closed:
            return
        if not self._started:
            self._closed = True
            return
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        task = self._writer_task
        if task is not None:
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            finally:
                self._fail_all("closed")
        await self._run(self._store.publish_metrics)
        await self._run(self._store.close)
        ex, self._ex = self._ex, None
        if ex is not None:
            ex.shutdown(wait=True)
        self._closed = True
        for w in self._space_waiters:
            if not w.done():
                w.set_result(None)

    def _fail_all(self, reason: str) -> None:
        for item in list(self._queue) + self._reserve:
            if not item.future.done():
                item.future.set_exception(BufferRefused(reason, item.records + item.refused))
        self._queue.clear()
        self._reserve.clear()
        self._queued = self._reserved = 0

    def _check_open(self) -> None:
        if not self._started or self._closing:
            raise BufferUnavailable("buffer is not running (start() it, or it is closed)")

    # ------------------------------------------------------------------ appending

    def _make_item(self, records: Sequence[Record]) -> _Item:
        loop = asyncio.get_running_loop()
        good: list[Record] = []
        bad: list[Record] = []
        detail = ""
        for rec in records:
            why = check_record(rec)
            if why is None:
                good.append(rec)
            else:
                bad.append(rec)
                detail = detail or why
        item = _Item(good, loop.create_future(), time.perf_counter())
        if bad:
            item.refused, item.refused_reason, item.refused_detail = bad, "invalid", detail
            m.REFUSED.labels("invalid").inc(len(bad))
            log.warning("buffer refused %d invalid record(s): %s", len(bad), detail)
        return item

    def _enqueue(self, item: _Item) -> None:
        self._queue.append(item)
        self._queued += len(item.records)
        m.QUEUE_RECORDS.set(self._queued)
        assert self._wake is not None and self._full is not None
        self._wake.set()
        if self._queued >= self._commit_max:
            self._full.set()

    async def append(self, records: Sequence[Record]) -> None:
        """Store ``records``; returns once the transaction holding them committed.

        Sets ``record.seq`` in place. Waits (back-pressure) while the queue is full. Raises
        :class:`BufferRefused` for records that were not accepted; the others in the same
        call are committed before it raises. See the README for disk-full behaviour.
        """
        self._check_open()
        item = self._make_item(records)
        if not item.records:
            self._finish(item)
            await item.future
            return
        n = len(item.records)
        if self._queued > 0 and self._queued + n > self._queue_size:
            m.BACKPRESSURE_WAITS.inc()
            loop = asyncio.get_running_loop()
            while self._queued > 0 and self._queued + n > self._queue_size:
                waiter: asyncio.Future[None] = loop.create_future()
                self._space_waiters.append(waiter)
                try:
                    await waiter
                except asyncio.CancelledError:
                    if waiter in self._space_waiters:
                        self._space_waiters.remove(waiter)
                    raise
                self._check_open()
        self._enqueue(item)
        await item.future

    def append_nowait(self, records: Sequence[Record]) -> asyncio.Future[None]:
        """Queue ``records`` without waiting; the future resolves as :meth:`append` returns.

        Raises :class:`BufferRefused` (``queue_full``) at once when the queue has no room.
        """
        self._check_open()
        item = self._make_item(records)
        if not item.records:
            self._finish(item)
            return item.future
        if self._queued > 0 and self._queued + len(item.records) > self._queue_size:
            m.REFUSED.labels("queue_full").inc(len(item.records))
            raise BufferRefused("queue_full", item.records)
        self._enqueue(item)
        return item.future

    def _finish(self, item: _Item) -> None:
        fut = item.future
        m.APPEND_LATENCY.observe(time.perf_counter() - item.t0)
        if fut.done():
            return
        if item.refused:
            fut.set_exception(BufferRefused(item.refused_reason, item.refused, item.refused_detail))
        else:
            fut.set_result(None)

    def _wake_space(self) -> None:
        while self._space_waiters:
            w = self._space_waiters.popleft()
            if not w.done():
                w.set_result(None)

    def _take(self) -> list[_Item]:
        items: list[_Item] = []
        n = 0
        while self._queue and (not items or n + len(self._queue[0].records) <= self._commit_max):
            item = self._queue.popleft()
            self._queued -= len(item.records)
            if item.future.cancelled():
                continue  # the caller gave up before the writer took it: not appended
            items.append(item)
            n += len(item.records)
        m.QUEUE_RECORDS.set(self._queued)
        assert self._full is not None
        if self._queued < self._commit_max:
            self._full.clear()
        self._wake_space()
        return items

    async def _writer(self) -> None:
        assert self._wake is not None and self._full is not None
        next_maint = time.monotonic() + self._maint_interval
        while True:
            now = time.monotonic()
            if now >= next_maint:
                await self._maintain()
                next_maint = time.monotonic() + self._maint_interval
                continue
            if self._reserve and self._degraded is not None and now >= self._retry_at:
                await self._commit([])
                continue
            if not self._queue:
                if self._closing:
                    if self._reserve and self._degraded is not None:
                        await self._commit([])  # one last attempt
                    return
                timeout = next_maint - now
                if self._reserve and self._degraded is not None:
                    timeout = min(timeout, max(0.0, self._retry_at - now))
                self._wake.clear()
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            if self._queued < self._commit_max and self._commit_delay > 0 and not self._closing:
                try:
                    async with asyncio.timeout(self._commit_delay):
                        await self._full.wait()
                except TimeoutError:
                    pass
            items = self._take()
            if items:
                await self._commit(items)

    async def _maintain(self) -> None:
        try:
            written, settled = await self._run(self._store.maintain)
            if written or settled:
                self._notify()
            await self._run(self._store.publish_metrics)
        except StoreWriteError as exc:
            log.warning("buffer maintenance postponed: %s", exc)
        except Exception:
            log.exception("buffer maintenance failed")

    def _degrade_items(self, items: list[_Item], reason: str, detail: str) -> None:
        """Disk unusable: refuse what may be refused, hold events/lifecycle in the reserve."""
        for item in items:
            keep = [r for r in item.records if r.kind in RESERVE_KINDS]
            drop = [r for r in item.records if r.kind not in RESERVE_KINDS]
            why = reason
            if drop:
                m.REFUSED.labels(reason).inc(len(drop))
            if keep and self._reserved + len(keep) > self._reserve_max:
                m.REFUSED.labels("reserve_full").inc(len(keep))
                log.error("buffer memory reserve full: refusing %d event/lifecycle record(s)", len(keep))
                drop += keep
                keep = []
                if not item.refused and len(drop) == len(item.records):
                    why = "reserve_full"
            if drop:
                if not item.refused:
                    item.refused_reason, item.refused_detail = why, detail
                item.refused = item.refused + drop
            item.records = keep
            if keep:
                self._reserve.append(item)
                self._reserved += len(keep)
            else:
                self._finish(item)
        m.RESERVE_RECORDS.set(self._reserved)

    async def _commit(self, items: list[_Item]) -> None:
        now = time.monotonic()
        if self._degraded is not None and now < self._retry_at and not self._closing:
            self._degrade_items(items, self._degraded, "disk still unusable")
            return
        batch = self._reserve + items
        records = [r for it in batch for r in it.records]
        try:
            await self._run(self._store.commit, records)
        except StoreWriteError as exc:
            if self._degraded is None:
                m.DISK_FULL.labels(exc.reason).inc()
                m.DEGRADED.set(1)
                log.error(
                    "buffer cannot write (%s): refusing telemetry/state, holding up to %d "
                    "event/lifecycle record(s) in memory, retrying every %.1fs",
                    exc, self._reserve_max, self._retry_interval,
                )
            self._degraded = exc.reason
            self._retry_at = time.monotonic() + self._retry_interval
            # items already held stay held; the new ones are sorted into reserve/refused
            self._degrade_items(items, exc.reason, str(exc))
            return
        except Exception as exc:
            log.exception("buffer commit failed")
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(BufferRefused("io_error", it.records + it.refused, str(exc)))
            self._reserve, self._reserved = [], 0
            m.RESERVE_RECORDS.set(0)
            return
        if self._degraded is not None:
            log.warning("buffer recovered: writing again (%d held record(s) written)", self._reserved)
            self._degraded = None
            m.DEGRADED.set(0)
        self._reserve, self._reserved = [], 0
        m.RESERVE_RECORDS.set(0)
        for it in batch:
            self._finish(it)  # the producers go on; eviction below does not delay them
        self._notify()
        if self._store.budget_bytes:
            try:
                if await self._run(self._store.enforce_budget):
                    self._notify()
            except StoreWriteError as exc:
                log.warning("buffer eviction postponed: %s", exc)
            except Exception:  # the commit stands; eviction is tried again after the next one
                log.exception("buffer eviction failed")
        t = time.monotonic()
        if t - self._last_metrics >= METRICS_PERIOD:
            self._last_metrics = t
            await self._run(self._store.publish_metrics)

    def _notify(self) -> None:
        for name, ev in self._record_events.items():
            if self._store.claimable(name) > 0:
                ev.set()

    # ------------------------------------------------------------------ draining

    def _uplink(self, uplink: str) -> None:
        if uplink not in self._record_events:
            raise KeyError(f"unknown uplink {uplink!r} (configured: {', '.join(self.uplinks)})")

    async def claim(
        self,
        uplink: str,
        *,
        max_records: int,
        lanes: Sequence[str] | None = None,
        min_seq: int | None = None,
        max_seq: int | None = None,
    ) -> Batch | None:
        """Claim up to ``max_records`` pending records for ``uplink`` (events first, then
        state, then telemetry; oldest first within a lane). ``None`` when nothing is pending."""
        self._check_open()
        self._uplink(uplink)
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        if lanes is not None:
            unknown = [ln for ln in lanes if ln not in LANES]
            if unknown:
                raise ValueError(f"unknown lane(s) {unknown}")
        return await self._run(self._store.claim, uplink, max_records, lanes, min_seq, max_seq)

    async def ack(self, batch: Batch) -> None:
        """The batch was delivered on its uplink."""
        self._check_open()
        await self._run(self._store.settle, batch, None)

    async def release(self, batch: Batch) -> None:
        """Sending failed: the batch's records become pending again for its uplink."""
        self._check_open()
        if await self._run(self._store.release, batch):
            self._notify()

    async def reject(self, batch: Batch, reason: str) -> None:
        """The platform refused the batch: its records go to the dead-letter table."""
        self._check_open()
        await self._run(self._store.settle, batch, reason or "rejected")

    async def wait_for_records(self, uplink: str, timeout: float) -> bool:
        """Wait until something is pending (claimable) for ``uplink``; False on timeout."""
        self._check_open()
        self._uplink(uplink)
        if self._store.claimable(uplink) > 0:
            return True
        ev = self._record_events[uplink]
        ev.clear()
        try:
            async with asyncio.timeout(timeout):
                await ev.wait()
        except TimeoutError:
            return self._store.claimable(uplink) > 0
        return True

    def pending_count(self, uplink: str) -> int:
        """Records stored for ``uplink`` that are neither acknowledged nor in flight."""
        self._uplink(uplink)
        return self._store.claimable(uplink)

    def oldest_pending_age(self, uplink: str) -> float | None:
        """Seconds since acquisition of the oldest record ``uplink`` has not acknowledged."""
        self._uplink(uplink)
        ts = self._store.oldest_pending_ts(uplink)
        return None if ts is None else max(0.0, time.time() - ts)

    @property
    def last_seq(self) -> int:
        return self._store.last_seq

    @property
    def degraded(self) -> str | None:
        """``None`` when writing works, else why not (``disk_full``, ``read_only``, ...)."""
        return self._degraded

    async def records_after(self, after_seq: int, limit: int) -> list[Record]:
        self._check_open()
        return await self._run(self._store.records_after, after_seq, max(0, limit))

    async def peek(self, lane: str, limit: int) -> list[Record]:
        self._check_open()
        if lane not in LANES:
            raise ValueError(f"unknown lane {lane!r}")
        return await self._run(self._store.peek, lane, max(0, limit))

    async def stats(self) -> dict[str, Any]:
        self._check_open()
        st = await self._run(self._store.stats)
        st["queue_records"] = self._queued
        st["reserve_records"] = self._reserved
        st["degraded"] = self._degraded
        return st

    async def maintain(self) -> None:
        """Run the periodic maintenance now (max age, budget, vacuum step)."""
        self._check_open()
        await self._maintain()

    # ------------------------------------------------------------------ command audit

    async def command_seen(self, command_id: str) -> dict[str, Any] | None:
        self._check_open()
        return await self._run(self._store.command_seen, command_id)

    async def audit_command(self, command_id: str, entry: dict[str, Any]) -> None:
        self._check_open()
        await self._run(self._store.audit_command, command_id, entry)
