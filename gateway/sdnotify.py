"""A small sd_notify(3) client and an event-loop watchdog (standard library sockets).

Under systemd (``Type=notify``) the service manager passes ``NOTIFY_SOCKET`` (a path, or an
abstract socket name starting with ``@``) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` and
``WATCHDOG_PID``. Outside systemd every call here is a cheap no-op that returns ``False``.

:class:`Watchdog` is an asyncio task that measures the event loop's lag (how late a timer
fires) and sends ``WATCHDOG=1`` every ``WATCHDOG_USEC / 2`` ONLY while the loop is healthy:
the lag stayed under a threshold since the last ping and the optional health callback
returns true. A hung or starved loop therefore stops the pings and systemd restarts the
process. The lag is exported as ``edge_gw_event_loop_lag_seconds`` (metrics are defined in
:mod:`gateway.metrics`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final

from gateway.metrics import EVENT_LOOP_LAG, WATCHDOG_PINGS, WATCHDOG_WITHHELD

__all__ = [
    "EVENT_LOOP_LAG",
    "WATCHDOG_PINGS",
    "WATCHDOG_WITHHELD",
    "Watchdog",
    "extend_timeout",
    "notify",
    "notify_socket_address",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog_interval",
]

log = logging.getLogger(__name__)

_STATUS_MAX: Final = 200


def notify_socket_address(environ: Mapping[str, str] | None = None) -> str | bytes | None:
    """The address in ``NOTIFY_SOCKET`` (abstract names as bytes with a leading NUL)."""
    env = os.environ if environ is None else environ
    addr = env.get("NOTIFY_SOCKET", "")
    if not addr:
        return None
    if addr.startswith("@"):
        return b"\0" + addr[1:].encode()
    if addr.startswith("/"):
        return addr
    return None  # vsock and other transports are not used by this service


def _format(fields: Mapping[str, object]) -> bytes:
    lines = []
    for key, value in fields.items():
        name = key.upper()
        if not name or not all(c.isalnum() or c == "_" for c in name):
            raise ValueError(f"invalid sd_notify field name {key!r}")
        text = str(value).replace("\r", " ").replace("\n", " ")
        lines.append(f"{name}={text}")
    return "\n".join(lines).encode("utf-8")


def notify(*, environ: Mapping[str, str] | None = None, **fields: object) -> bool:
    """Send ``KEY=value`` lines to the service manager, e.g. ``notify(READY=1)``.

    Returns ``True`` when the datagram was sent, ``False`` when not under systemd or the
    socket could not take it (never raises for I/O errors, never blocks).
    """
    addr = notify_socket_address(environ)
    if addr is None or not fields:
        return False
    data = _format(fields)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto(data, addr)
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", addr, exc)
        return False
    return True


def ready(status_text: str | None = None, *, environ: Mapping[str, str] | None = None) -> bool:
    """``READY=1`` (with an optional ``STATUS=``): config, buffer and buses are open."""
    if status_text is None:
        return notify(environ=environ, READY=1, MAINPID=os.getpid())
    return notify(environ=environ, READY=1, MAINPID=os.getpid(), STATUS=status_text[:_STATUS_MAX])


def status(text: str, *, environ: Mapping[str, str] | None = None) -> bool:
    """``STATUS=`` one-line summary shown by ``systemctl status``."""
    return notify(environ=environ, STATUS=text[:_STATUS_MAX])


def stopping(*, environ: Mapping[str, str] | None = None) -> bool:
    """``STOPPING=1``: the daemon began its orderly shutdown."""
    return notify(environ=environ, STOPPING=1)


def reloading(*, environ: Mapping[str, str] | None = None) -> bool:
    """``RELOADING=1``; send :func:`ready` again when the reload finished."""
    return notify(environ=environ, RELOADING=1)


def extend_timeout(seconds: float, *, environ: Mapping[str, str] | None = None) -> bool:
    """``EXTEND_TIMEOUT_USEC=``: a slow start (e.g. buffer recovery) is still progressing."""
    return notify(environ=environ, EXTEND_TIMEOUT_USEC=int(seconds * 1_000_000))


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds of ``WATCHDOG_USEC`` if the watchdog is enabled for THIS process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r", usec)
        return None
    return value / 1_000_000 if value > 0 else None


class Watchdog:
    """Event-loop lag monitor and systemd watchdog pinger.

    Use as ``async with Watchdog(health=...)``, or ``start()`` / ``await stop()``.

    * ``interval``: ping period; default ``WATCHDOG_USEC / 2``; ``None`` and not under a
      systemd watchdog = lag is measured but no pings are sent.
    * ``lag_threshold``: a ping is withheld when the largest lag seen since the previous
      ping exceeds this (default: a quarter of the watchdog timeout, at most 2 s).
    * ``health``: optional callback; a ping is withheld while it returns false or raises.
    * ``probe_interval``: how often the lag is sampled (at most the ping period).
    """

    def __init__(
        self,
        *,
        health: Callable[[], bool] | None = None,
        interval: float | None = None,
        lag_threshold: float | None = None,
        probe_interval: float = 1.0,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._environ = dict(os.environ if environ is None else environ)
        timeout = watchdog_interval(self._environ)
        if interval is None and timeout is not None:
            interval = timeout / 2
        if interval is not None and interval <= 0:
            raise ValueError("watchdog interval must be positive")
        if notify_socket_address(self._environ) is None:
            interval = None  # nobody to ping
        self.interval = interval
        if lag_threshold is None:
            base = timeout if timeout is not None else 8.0
            lag_threshold = min(2.0, base / 4)
        if lag_threshold <= 0:
            raise ValueError("lag_threshold must be positive")
        self.lag_threshold = lag_threshold
        if probe_interval <= 0:
            raise ValueError("probe_interval must be positive")
        self.probe_interval = min(probe_interval, interval) if interval else probe_interval
        self._health = health
        self._task: asyncio.Task[None] | None = None
        self.last_lag = 0.0
        self.pings = 0
        self._unhealthy_logged = False

    @property
    def enabled(self) -> bool:
        """True when pings are sent (under systemd with a watchdog)."""
        return self.interval is not None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="edge-gw-watchdog"
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def __aenter__(self) -> Watchdog:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _healthy(self, max_lag: float) -> str | None:
        """Why the loop is not healthy, or ``None``."""
        if max_lag > self.lag_threshold:
            return "lag"
        if self._health is not None:
            try:
                if not self._health():
                    return "health"
            except Exception:
                log.exception("watchdog health check raised")
                return "health"
        return None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        step = self.probe_interval
        last_ping = loop.time()
        max_lag = 0.0
        if self.interval is not None:
            self._ping()  # a first ping at once: the loop is evidently running
        while True:
            t0 = loop.time()
            await asyncio.sleep(step)
            lag = max(0.0, loop.time() - t0 - step)
            self.last_lag = lag
            EVENT_LOOP_LAG.observe(lag)
            max_lag = max(max_lag, lag)
            if self.interval is None:
                continue
            now = loop.time()
            if now - last_ping < self.interval - step / 2:
                continue
            reason = self._healthy(max_lag)
            if reason is None:
                self._ping()
                last_ping = now
                if self._unhealthy_logged:
                    log.warning("event loop healthy again; watchdog pings resumed")
                    self._unhealthy_logged = False
            else:
                WATCHDOG_WITHHELD.labels(reason=reason).inc()
                if not self._unhealthy_logged:
                    log.error(
                        "withholding watchdog ping: %s",
                        f"event loop lag {max_lag:.3f}s > {self.lag_threshold:.3f}s"
                        if reason == "lag"
                        else "health check failed",
                    )
                    self._unhealthy_logged = True
            max_lag = 0.0

    def _ping(self) -> None:
        if notify(environ=self._environ, WATCHDOG=1):
            self.pings += 1
            WATCHDOG_PINGS.inc()
