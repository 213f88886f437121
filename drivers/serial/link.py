"""The half-duplex line of one bus: a serial port (pyserial-asyncio-fast) or a transparent
TCP serial server, with turn-taking, guard gap, echo suppression and timeouts.

``Link.transact`` writes one request and feeds every received chunk to a caller-supplied
function until it reports a complete reply. Every received chunk is also shown to ``on_idle_data(data, busy)`` so that device-initiated
frames are found whenever they arrive; without it, bytes outside an exchange are counted and
dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import serial
import serial_asyncio_fast

from drivers.serial import metrics
from gateway import serialport
from gateway.errors import ReasonError

log = logging.getLogger(__name__)
T = TypeVar("T")

PARITIES = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD,
            "M": serial.PARITY_MARK, "S": serial.PARITY_SPACE}
STOPBITS = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2: serial.STOPBITS_TWO}


class LinkError(ReasonError):
    """The exchange failed. ``reason``: ``timeout`` (silent), ``incomplete`` (bytes but no
    valid reply), ``port`` (the port or TCP connection is unusable)."""

    def __init__(self, reason: str, detail: str = "", received: int = 0,
                 problem: serialport.PortProblem | None = None) -> None:
        super().__init__(reason, detail)
        self.received = received
        self.problem = problem  # why the port did not open (reason ``port`` only)


@dataclass(frozen=True, slots=True)
class LinkSettings(serialport.LineSettings):
    """The line (meters default to 2400 8E1) and how the link drives it."""

    baud: int = 2400
    parity: str = "E"
    rtscts: bool = False
    xonxoff: bool = False
    echo: bool = False
    guard: float = 0.05
    first_byte_timeout: float = 1.5
    inter_byte_timeout: float = 0.5
    max_reply_time: float = 5.0
    connect_timeout: float = 5.0

    @property
    def is_tcp(self) -> bool:
        return self.port.startswith("tcp://")

    def tcp_target(self) -> tuple[str, int]:
        rest = self.port.removeprefix("tcp://").rstrip("/")
        host, _, port = rest.rpartition(":")
        return host.strip("[]"), int(port)


class _Protocol(asyncio.Protocol):
    def __init__(self, link: Link) -> None:
        self.link = link

    def data_received(self, data: bytes) -> None:
        self.link._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.link._on_lost(exc)


class Link:
    def __init__(self, settings: LinkSettings, bus: str,
                 on_idle_data: Callable[[bytes, bool], None] | None = None, hint: str = "config") -> None:
        self.settings = settings
        self.bus = bus
        self.hint = hint  # how a refused setting's fix is worded: "config" key or "cli" flag
        self.on_idle_data = on_idle_data
        self.lock = asyncio.Lock()
        self._transport: asyncio.Transport | None = None
        self._rx: asyncio.Queue[bytes] | None = None
        self._echo: bytes = b""
        self._held: bytes = b""
        self._lost: asyncio.Future[None] | None = None
        self._last_activity = 0.0
        self._m_discarded = metrics.DISCARDED_BYTES.labels(bus)
        self._m_echo = metrics.ECHO_BYTES.labels(bus)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def open(self) -> None:
        if self.is_open:
            return
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            if s.is_tcp:
                host, port = s.tcp_target()
                transport, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: _Protocol(self), host, port), s.connect_timeout
                )
            else:
                transport, _ = await serial_asyncio_fast.create_serial_connection(
                    loop, lambda: _Protocol(self), s.port, baudrate=s.baud, bytesize=s.bytesize,
                    parity=PARITIES[s.parity], stopbits=STOPBITS[s.stopbits],
                    rtscts=s.rtscts, xonxoff=s.xonxoff,
                )
        except TimeoutError as exc:
            metrics.RECONNECTS.labels(self.bus, "failed").inc()
            raise LinkError("port", f"cannot open {s.port}: no connection within {s.connect_timeout:g}s") from exc
        except Exception as exc:
            if not (s.is_tcp and isinstance(exc, OSError)) and not serialport.is_open_error(exc):
                raise
            metrics.RECONNECTS.labels(self.bus, "failed").inc()
            if s.is_tcp:
                raise LinkError("port", f"cannot open {s.port}: {exc}") from exc
            problem = await asyncio.to_thread(
                serialport.explain, exc, s, hint_style=self.hint,  # the caller names the bus
            )
            raise LinkError("port", problem.message, problem=problem) from exc
        metrics.RECONNECTS.labels(self.bus, "ok").inc()
        # uvloop's transports do not register with the asyncio ABCs: no isinstance checks
        self._transport = transport
        self._lost = loop.create_future()
        self._last_activity = time.monotonic()

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        lost = self._lost
        if transport is not None:
            transport.close()
            if lost is not None:
                # the transport reports connection_lost from a task of its own: wait for it
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(lost), 2.0)
            await asyncio.sleep(0)
        self._lost = None

    def _on_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.warning("bus %s: connection to %s lost: %s", self.bus, self.settings.port, exc)
        self._transport = None
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._rx is not None:
            self._rx.put_nowait(b"")  # wake the waiting exchange

    def _on_data(self, data: bytes) -> None:
        self._last_activity = time.monotonic()
        if self._echo:
            # Hold bytes while they repeat the request; drop them once the whole request came
            # back, release them if they diverge (a reply may share the request's prefix).
            held = self._held + data
            n = min(len(held), len(self._echo))
            if held[:n] == self._echo[:n]:
                if n < len(self._echo):
                    self._held = held
                    return
                self._m_echo.inc(n)
                data = held[n:]
            else:
                data = held
            self._echo = b""
            self._held = b""
            if not data:
                return
        self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        busy = self._rx is not None
        if self._rx is not None:
            self._rx.put_nowait(data)
        if self.on_idle_data is not None:
            # device-initiated frames may arrive at any time, also during an exchange
            self.on_idle_data(data, busy)
        elif not busy:
            self._m_discarded.inc(len(data))

    async def _guard(self) -> None:
        wait = self._last_activity + self.settings.guard - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            raise LinkError("port", f"{self.settings.port} is not open")
        if self.settings.echo:
            self._echo, self._held = data, b""
        transport.write(data)
        self._last_activity = time.monotonic()

    async def send_only(self, request: bytes) -> None:
        """Send a frame that gets no reply (broadcast); takes the line like an exchange."""
        async with self.lock:
            await self.open()
            await self._guard()
            self._write(request)
            await self._wait_sent(len(request))

    async def _wait_sent(self, nbytes: int) -> None:
        # Let the bytes leave: a half-duplex line must not be reused before they are out.
        s = self.settings
        bits = 1 + s.bytesize + (0 if s.parity == "N" else 1) + s.stopbits
        self._last_activity = time.monotonic() + (0 if s.is_tcp else nbytes * bits / s.baud)
        await asyncio.sleep(0)

    async def transact(self, request: bytes, on_bytes: Callable[[bytes], T | None], *,
                       first_byte_timeout: float | None = None) -> T:
        """Send ``request`` and feed reply chunks to ``on_bytes`` until it returns a result."""
        async with self.lock:
            await self.open()
            await self._guard()
            rx: asyncio.Queue[bytes] = asyncio.Queue()
            self._rx = rx
            s = self.settings
            received = 0
            try:
                self._write(request)
                started = time.monotonic()
                deadline = started + s.max_reply_time
                # the request itself takes time on the wire before the meter can answer
                bits = 1 + s.bytesize + (0 if s.parity == "N" else 1) + s.stopbits
                tx_time = 0.0 if s.is_tcp else len(request) * bits / s.baud
                first = (first_byte_timeout or s.first_byte_timeout) + tx_time
                mid_frame = getattr(on_bytes, "mid_frame", None)
                while True:
                    # the inter-byte limit applies inside a frame; echoes, stray frames and
                    # junk before the reply do not end the wait for the first reply byte
                    inside = mid_frame() if mid_frame is not None else received > 0
                    timeout = s.inter_byte_timeout if inside else first
                    timeout = min(timeout, deadline - time.monotonic())
                    try:
                        if timeout <= 0:
                            raise TimeoutError
                        chunk = await asyncio.wait_for(rx.get(), timeout)
                    except TimeoutError:
                        heard_nothing = getattr(on_bytes, "heard_nothing", None)
                        if received == 0 or (heard_nothing is not None and heard_nothing()):
                            metrics.TIMEOUTS.labels(self.bus, "silent").inc()
                            raise LinkError("timeout", "no reply", 0) from None
                        metrics.TIMEOUTS.labels(self.bus, "incomplete").inc()
                        raise LinkError("incomplete", f"{received} bytes without a valid reply", received) from None
                    if not chunk:
                        raise LinkError("port", f"{s.port} closed during the exchange", received)
                    received += len(chunk)
                    result = on_bytes(chunk)
                    if result is not None:
                        metrics.EXCHANGE_SECONDS.labels(self.bus).observe(time.monotonic() - started)
                        return result
            finally:
                self._rx = None
                self._echo = b""
                if self._held:  # a partial echo was never completed: it was data
                    held, self._held = self._held, b""
                    self._deliver(held)
                self._last_activity = time.monotonic()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"Link({self.bus!r}, {self.settings.port!r})"


def describe(settings: LinkSettings) -> dict[str, Any]:
    s = settings
    return {"port": s.port, "format": f"{s.baud} {s.bytesize}{s.parity}{s.stopbits:g}", "echo": s.echo}
