"""The transport-independent part of an uplink: claiming batches from the buffer, keeping
a window of sends in flight, acknowledging only what the platform acknowledged, pacing the
backlog, and the session bookkeeping shared by the MQTT and HTTPS uplinks.

Session rule: when a link (re)connects, every record already in the buffer (seq at or
below the buffer's ``last_seq`` at that moment) is *backlog*: it is sent with
``hist: true`` at no more than ``backlog_rate`` records/s. Newer records are *live*: each
time a window slot frees up, live records are claimed first, so live events never wait
behind backlog telemetry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.backoff import Backoff
from gateway.errors import ReasonError
from gateway.record import Record
from sync import metrics
from sync.backoff import TokenBucket
from sync.codec import encode_batch
from sync.config import UplinkConfig

log = logging.getLogger("sync")

CommandHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
StatusFn = Callable[[], dict[str, Any]]

#: A connection must have lasted this long before the reconnect backoff starts over.
STABLE_AFTER = 10.0
#: While the backlog is paced, live records are looked for at least this often.
LIVE_POLL = 0.02
_STATE_EVERY = 0.5


class BatchLike(Protocol):
    batch_id: str
    uplink: str
    records: list[Record]
    first_seq: int
    last_seq: int


class BufferLike(Protocol):
    """The part of ``buffer.Buffer`` the uplinks use."""

    @property
    def last_seq(self) -> int: ...

    async def claim(
        self,
        uplink: str,
        *,
        max_records: int,
        lanes: Any = None,
        min_seq: int | None = None,
        max_seq: int | None = None,
    ) -> Any: ...

    async def ack(self, batch: Any) -> Any: ...

    async def release(self, batch: Any) -> Any: ...

    async def reject(self, batch: Any, reason: str) -> Any: ...

    async def wait_for_records(self, uplink: str, timeout: float) -> bool: ...

    def pending_count(self, uplink: str) -> int: ...

    def oldest_pending_age(self, uplink: str) -> float | None: ...


class LinkDown(Exception):
    """The link to the platform is not usable; in-flight batches are kept for a retry."""

    def __init__(self, message: str, *, reason: str = "other", retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Rejected(ReasonError):
    """The platform refused the batch's content (dead-lettered) -- or, with ``split``, its
    size (the batch goes back to the buffer and later batches are smaller)."""

    def __init__(self, reason: str, *, split: bool = False):
        super().__init__(reason)
        self.split = split


@dataclass(slots=True)
class Outgoing:
    batch: Any
    payload: bytes
    hist: bool
    started: float = 0.0
    attempts: int = 0


@dataclass(slots=True)
class _Stats:
    sent: int = 0
    acked: int = 0
    rejected: int = 0
    failed: int = 0
    backlog: int = 0
    reconnects: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Nothing:
    """Result of a claim round that produced no batch: wait ``delay`` seconds, or for new
    records when ``for_records``."""

    __slots__ = ("delay", "for_records")

    def __init__(self, delay: float, for_records: bool) -> None:
        self.delay = delay
        self.for_records = for_records


class UplinkEngine:
    """Base class of the uplinks. Subclasses implement :meth:`_send` and :meth:`run`."""

    kind = "?"

    def __init__(
        self,
        config: UplinkConfig,
        *,
        gw_id: str,
        buffer: BufferLike,
        commands: CommandHandler | None = None,
        status: StatusFn | None = None,
    ) -> None:
        self.name = config.name
        self.config = config
        self.gw_id = gw_id
        self._buffer = buffer
        self._commands = commands
        self._status = status or (lambda: {})
        self._retry: list[Outgoing] = []
        self._hw = 0
        # every live record up to this seq has been claimed (and is in flight, acked or in
        # _retry): no live claim is needed until the buffer's last_seq passes it
        self._live_upto = 0
        self._acking: set[asyncio.Task[None]] = set()
        self._backlog_empty = False
        self._connected = False
        self._connected_since: float | None = None
        self._last_error: str | None = None
        self._failing_since: float | None = None
        self._batch_limit = config.batch_max_records
        self._bucket = TokenBucket(
            config.backlog_rate, burst=max(float(config.batch_max_records), config.backlog_rate)
        )
        self._backoff = Backoff(config.reconnect_min, config.reconnect_max)
        self._inflight = 0
        self._stats = _Stats()
        self._next_state = 0.0
        self._lag: float | None = None
        self._pending: int | None = None
        self._m_inflight = metrics.UPLINK_INFLIGHT.labels(self.name)
        self._m_batches = {o: metrics.UPLINK_BATCHES.labels(self.name, o) for o in metrics.OUTCOMES}
        self._m_records = {o: metrics.UPLINK_RECORDS.labels(self.name, o) for o in metrics.OUTCOMES}
        self._m_backlog = metrics.UPLINK_BACKLOG_RECORDS.labels(self.name)
        self._m_bytes = metrics.UPLINK_BYTES.labels(self.name)
        self._m_ack = metrics.UPLINK_ACK_SECONDS.labels(self.name)
        metrics.init_uplink(self.name)

    # ------------------------------------------------------------------ public surface
    def state(self) -> dict[str, Any]:
        self._update_state(time.monotonic(), force=True)
        return {
            "name": self.name,
            "kind": self.kind,
            "connected": self._connected,
            "connected_since": self._connected_since,
            "last_error": self._last_error,
            "lag_seconds": self._lag,
            "pending": self._pending,
            "inflight_batches": self._inflight,
            "retry_batches": len(self._retry),
            "session_high_water": self._hw,
            "records_sent": self._stats.sent,
            "records_acked": self._stats.acked,
            "records_rejected": self._stats.rejected,
            "records_failed": self._stats.failed,
            "records_backlog": self._stats.backlog,
            "reconnects": self._stats.reconnects,
            **self._stats.extra,
        }

    async def run(self) -> None:
        """Run the link until cancelled; ``pending``/``lag`` gauges stay fresh while the
        link is down (that is when they matter)."""
        keeper = asyncio.create_task(self._keep_state(), name=f"uplink-{self.name}-state")
        try:
            await self._run_link()
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _run_link(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    async def _keep_state(self) -> None:
        while True:
            self._update_state(time.monotonic())
            await asyncio.sleep(_STATE_EVERY)

    # ------------------------------------------------------------------ transport hooks
    async def _send(self, item: Outgoing) -> None:
        """Deliver one batch; return on acknowledgement, raise LinkDown or Rejected."""
        raise NotImplementedError

    # ------------------------------------------------------------------ sessions
    def _begin_session(self, *, up: bool = True) -> None:
        """A (re)connected link: records captured before now are backlog."""
        self._hw = self._live_upto = self._buffer.last_seq
        self._backlog_empty = self._hw == 0
        for item in self._retry:
            if not item.hist:  # sent live before the outage; now it is a replay
                replay = self._outgoing(item.batch, True)
                item.hist, item.payload = True, replay.payload
        if up:
            self._mark_up()

    def _mark_up(self) -> None:
        self._set_connected(True)
        if self._failing_since is not None:
            log.info(
                "uplink %s: link recovered after %.1fs", self.name, time.time() - self._failing_since
            )
        self._failing_since = None

    def _set_connected(self, up: bool) -> None:
        if up and not self._connected:
            self._connected_since = time.time()
        if not up:
            self._connected_since = None
        self._connected = up
        metrics.UPLINK_CONNECTED.labels(self.name).set(1 if up else 0)

    def _note_failure(self, message: str, reason: str) -> None:
        """Log the first failure of an outage loudly, repeats quietly."""
        metrics.UPLINK_ERRORS.labels(self.name, reason).inc()
        self._set_connected(False)
        if self._failing_since is None:
            self._failing_since = time.time()
            log.warning("uplink %s: %s", self.name, message)
        elif message != self._last_error:
            log.info("uplink %s: still failing: %s", self.name, message)
        else:
            log.debug("uplink %s: still failing: %s", self.name, message)
        self._last_error = message

    def _next_delay(self, session_length: float | None, retry_after: float | None) -> float:
        if session_length is not None and session_length >= STABLE_AFTER:
            self._backoff.reset()
        delay = self._backoff.next_delay()
        if retry_after is not None:
            delay = max(delay, retry_after)
        return delay

    async def _release_retries(self) -> None:
        retry, self._retry = self._retry, []
        for item in retry:
            try:
                await self._buffer.release(item.batch)
            except Exception:  # the buffer may be closing; claims do not survive a restart
                log.debug("uplink %s: release of %s failed", self.name, item.batch.batch_id)

    # ------------------------------------------------------------------ the pump
    def _outgoing(self, batch: Any, hist: bool) -> Outgoing:
        payload = encode_batch(
            self.gw_id, batch.batch_id, batch.records, hist=hist, gzip=self.config.gzip
        )
        return Outgoing(batch, payload, hist)

    async def _next(self) -> Outgoing | _Nothing:
        if self._retry:
            return self._retry.pop(0)
        limit = self._batch_limit
        last = self._buffer.last_seq
        if last > self._live_upto:
            live = await self._buffer.claim(self.name, max_records=limit, min_seq=self._hw + 1)
            if live is None or len(live.records) < limit:
                self._live_upto = last  # everything live up to `last` is claimed now
            if live is not None and live.records:
                return self._outgoing(live, False)
        if self._backlog_empty:
            return _Nothing(1.0, True)
        if not self._bucket.unlimited:
            chunk = min(limit, max(1, int(self._bucket.rate * LIVE_POLL * 2)))
            avail = self._bucket.available()
            if avail < chunk:
                return _Nothing(min(LIVE_POLL, self._bucket.wait_time(chunk)), False)
            limit = min(limit, avail)
        back = await self._buffer.claim(self.name, max_records=limit, max_seq=self._hw)
        if back is not None and back.records:
            self._bucket.take(len(back.records))
            return self._outgoing(back, True)
        self._backlog_empty = True
        return _Nothing(1.0, True)

    def _update_state(self, now: float, *, force: bool = False) -> None:
        if now < self._next_state and not force:
            return
        self._next_state = now + _STATE_EVERY
        try:
            self._pending = self._buffer.pending_count(self.name)
            self._lag = self._buffer.oldest_pending_age(self.name)
        except Exception:
            log.debug("uplink %s: buffer state unavailable", self.name, exc_info=True)
            return
        metrics.UPLINK_PENDING.labels(self.name).set(self._pending)
        metrics.UPLINK_LAG.labels(self.name).set(self._lag or 0.0)

    async def _pump(self) -> None:
        """Send until a send raises :class:`LinkDown` (re-raised) or the task is cancelled.
        Whatever happens, every batch sent is acked, rejected or kept for a retry."""
        window = self.config.window
        linger = self.config.batch_linger
        pending: dict[asyncio.Task[None], Outgoing] = {}
        waiter: asyncio.Task[bool] | None = None
        woke_empty = False
        try:
            while True:
                idle: _Nothing | None = None
                while len(pending) < window:
                    got = await self._next()
                    if isinstance(got, _Nothing):
                        idle = got
                        break
                    woke_empty = False
                    got.started = time.monotonic()
                    got.attempts += 1
                    task = asyncio.create_task(self._send(got), name=f"uplink-{self.name}-send")
                    pending[task] = got
                    n = len(got.batch.records)
                    self._stats.sent += n
                    self._m_batches["sent"].inc()
                    self._m_records["sent"].inc(n)
                    self._m_bytes.inc(len(got.payload))
                    if got.hist:
                        self._stats.backlog += n
                        self._m_backlog.inc(n)
                self._inflight = len(pending)
                self._m_inflight.set(self._inflight)
                self._update_state(time.monotonic())

                waits: set[asyncio.Future[Any]] = set(pending)
                timeout: float | None = None
                if idle is not None:
                    timeout = idle.delay
                    if idle.for_records and not woke_empty:
                        if waiter is None:
                            waiter = asyncio.create_task(
                                self._buffer.wait_for_records(self.name, idle.delay)
                            )
                        waits.add(waiter)
                    elif idle.for_records:
                        timeout = min(timeout, 0.05)  # the waiter said yes but claims found nothing
                if not waits:
                    await asyncio.sleep(timeout or 0)
                    continue
                done, _ = await asyncio.wait(
                    waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                if waiter is not None and waiter in done:
                    had = not waiter.cancelled() and waiter.exception() is None and waiter.result()
                    waiter = None
                    if had:
                        woke_empty = True
                        if linger > 0 and not self._retry:
                            await asyncio.sleep(linger)
                    else:
                        woke_empty = False
                elif idle is not None and idle.for_records and woke_empty and not done:
                    woke_empty = False
                await self._harvest([t for t in done if t in pending], pending)
        finally:
            if waiter is not None:
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            try:
                await self._harvest(list(pending), pending, final=True)
            finally:
                self._inflight = 0
                self._m_inflight.set(0)
                await self._wait_acks()

    async def _ack(self, batch: Any) -> None:
        try:
            await self._buffer.ack(batch)
        except Exception:  # the buffer is closing: unacked records are sent again later
            log.warning("uplink %s: acknowledging batch %s failed", self.name, batch.batch_id, exc_info=True)
            return
        n = len(batch.records)
        self._stats.acked += n
        self._m_batches["acked"].inc()
        self._m_records["acked"].inc(n)

    async def _wait_acks(self) -> None:
        if self._acking:
            await asyncio.wait(set(self._acking))

    async def _harvest(
        self,
        done: list[asyncio.Task[None]],
        pending: dict[asyncio.Task[None], Outgoing],
        *,
        final: bool = False,
    ) -> None:
        down: LinkDown | None = None
        for task in done:
            item = pending.pop(task)
            exc: BaseException | None
            exc = asyncio.CancelledError() if task.cancelled() else task.exception()
            n = len(item.batch.records)
            if exc is None:
                self._m_ack.observe(time.monotonic() - item.started)
                # The acknowledgement is written in the background: the pump goes on
                # claiming while the buffer's writer deletes (its queue keeps the order).
                ack = asyncio.create_task(self._ack(item.batch), name=f"uplink-{self.name}-ack")
                self._acking.add(ack)
                ack.add_done_callback(self._acking.discard)
                if self._batch_limit < self.config.batch_max_records and n >= self._batch_limit:
                    self._batch_limit = min(self.config.batch_max_records, self._batch_limit * 2)
                continue
            if isinstance(exc, Rejected) and exc.split and n > 1:
                self._batch_limit = max(1, min(self._batch_limit, n) // 2)
                log.warning(
                    "uplink %s: platform refused a batch of %d records as too large (%s); "
                    "sending at most %d per batch",
                    self.name, n, exc.reason, self._batch_limit,
                )
                await self._buffer.release(item.batch)
                self._live_upto = self._hw  # released live records are claimable again
                self._m_batches["failed"].inc()
                self._m_records["failed"].inc(n)
                continue
            if isinstance(exc, Rejected):
                log.error(
                    "uplink %s: platform rejected batch %s (seq %d..%d, %d records): %s; "
                    "moved to the dead-letter table",
                    self.name, item.batch.batch_id, item.batch.first_seq, item.batch.last_seq,
                    n, exc.reason,
                )
                await self._buffer.reject(item.batch, exc.reason)
                self._stats.rejected += n
                self._m_batches["rejected"].inc()
                self._m_records["rejected"].inc(n)
                continue
            # Not acknowledged: keep the batch (same id, same bytes) for the next session.
            self._retry.append(item)
            self._stats.failed += n
            self._m_batches["failed"].inc()
            self._m_records["failed"].inc(n)
            if isinstance(exc, LinkDown):
                down = down or exc
            elif not isinstance(exc, asyncio.CancelledError):
                log.error("uplink %s: unexpected send error", self.name, exc_info=exc)
                down = down or LinkDown(f"internal error: {exc!r}")
        if self._retry:
            self._retry.sort(key=lambda o: (o.hist, o.batch.first_seq))
        if down is not None and not final:
            raise down
