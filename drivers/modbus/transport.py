"""Modbus links: one connection (TCP socket or serial port) that exchanges a request PDU for
a response PDU. Framing decisions come from the pure codec; this module only moves bytes,
keeps time and counts what it discards.

* ``TcpLink``: Modbus TCP (MBAP header, transaction ids: late answers are recognised and
  dropped by their transaction id).
* ``RtuLink``: RTU framing (unit id + PDU + CRC) over a serial port or over a TCP connection
  to a serial server. Before each request it waits the inter-frame gap and drops whatever
  is still in the receive buffer (a late answer, noise), then hunts for the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from drivers.modbus import codec, metrics
from drivers.modbus.schema import BusOptions


class LinkError(Exception):
    """A request got no usable answer. ``reason`` is a bounded label; ``answered`` tells
    whether the device sent anything at all (a corrupt answer still proves it is alive)."""

    def __init__(self, reason: str, detail: str = "", *, answered: bool = False) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.answered = answered


class _Receiver(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.event = asyncio.Event()
        self.lost: BaseException | None = None
        self.transport: asyncio.BaseTransport | None = None
        self.last_rx = 0.0
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.last_rx = time.monotonic()
        self.event.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed by peer")
        self.event.set()
        self.closed.set()


class Link:
    """Base: connection management shared by the TCP and RTU links."""

    def __init__(self, bus: str, options: BusOptions) -> None:
        self.bus = bus
        self.options = options
        self.transport_name = str(options.transport)
        self._rx: _Receiver | None = None
        self._tx: Any = None  # asyncio transport (socket or serial)
        self._fc_counters: dict[int, Any] = {}
        self._duration = metrics.REQUEST_DURATION.labels(self.transport_name)
        self._discarded = metrics.DISCARDED_BYTES.labels(bus)

    @property
    def connected(self) -> bool:
        return self._rx is not None and self._rx.lost is None

    async def connect(self) -> None:
        if self.connected:
            return
        await self.close()
        loop = asyncio.get_running_loop()
        rx = _Receiver()
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                if self.options.transport == "rtu":
                    import serial_asyncio_fast

                    tx: Any
                    tx, _ = await serial_asyncio_fast.create_serial_connection(
                        loop,
                        lambda: rx,
                        str(self.options.port),
                        baudrate=self.options.baud,
                        bytesize=self.options.bytesize,
                        parity=self.options.parity,
                        stopbits=self.options.stopbits,
                    )
                else:
                    tcp, _ = await loop.create_connection(
                        lambda: rx, str(self.options.host), int(self.options.port or 502)
                    )
                    tx = tcp
                    sock: Any = tcp.get_extra_info("socket")
                    if sock is not None:
                        import socket

                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError:
            metrics.CONNECTS.labels(self.bus, "timeout").inc()
            raise LinkError(
                "connect_timeout", f"no connection within {self.options.connect_timeout}s"
            ) from None
        except OSError as exc:  # includes serial.SerialException
            metrics.CONNECTS.labels(self.bus, "error").inc()
            raise LinkError("connect_failed", str(exc) or type(exc).__name__) from None
        except Exception as exc:  # pyserial raises ValueError for bad settings
            metrics.CONNECTS.labels(self.bus, "error").inc()
            raise LinkError("connect_failed", f"{type(exc).__name__}: {exc}") from None
        metrics.CONNECTS.labels(self.bus, "ok").inc()
        self._rx, self._tx = rx, tx

    async def close(self) -> None:
        tx, rx, self._tx, self._rx = self._tx, self._rx, None, None
        if tx is not None:
            tx.close()
            if rx is not None:  # wait for the transport's close callbacks to finish
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await rx.closed.wait()

    def _count_request(self, pdu: bytes) -> None:
        c = self._fc_counters.get(pdu[0])
        if c is None:
            c = self._fc_counters[pdu[0]] = metrics.REQUESTS.labels(
                self.transport_name, str(pdu[0])
            )
        c.inc()

    def discard(self, n: int) -> None:
        if n > 0:
            self._discarded.inc(n)

    async def _wait_data(self, rx: _Receiver, deadline: float) -> bool:
        """Wait for more bytes until ``deadline``; False on timeout. Raises on disconnect."""
        if rx.lost is not None:
            raise LinkError("connection", str(rx.lost))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        rx.event.clear()
        try:
            async with asyncio.timeout(remaining):
                await rx.event.wait()
        except TimeoutError:
            return False
        if rx.lost is not None and not rx.buf:
            raise LinkError("connection", str(rx.lost))
        return True

    async def exchange(self, unit: int, pdu: bytes, reply_s: float) -> bytes:
        raise NotImplementedError


class TcpLink(Link):
    def __init__(self, bus: str, options: BusOptions) -> None:
        super().__init__(bus, options)
        self._tid = 0
        self._stale = metrics.STALE_ANSWERS.labels(bus)

    async def exchange(self, unit: int, pdu: bytes, reply_s: float) -> bytes:
        await self.connect()
        rx = self._rx
        assert rx is not None
        self._tid = (self._tid + 1) & 0xFFFF
        tid = self._tid
        self._count_request(pdu)
        t0 = time.monotonic()
        self._tx.write(codec.mbap_frame(tid, unit, pdu))
        deadline = t0 + reply_s
        while True:
            while len(rx.buf) >= 7:
                try:
                    r_tid, _, length, r_unit = codec.mbap_header(bytes(rx.buf[:7]))
                except codec.MalformedFrame as exc:
                    # The stream is out of step: nothing after this point can be trusted.
                    self.discard(len(rx.buf))
                    rx.buf.clear()
                    await self.close()
                    raise LinkError(exc.reason, exc.detail, answered=True) from None
                if len(rx.buf) < 6 + length:
                    break
                frame = bytes(rx.buf[7 : 6 + length])
                del rx.buf[: 6 + length]
                if r_tid != tid:
                    self._stale.inc()
                    self.discard(6 + length)
                    continue
                if r_unit != unit and unit != 0:
                    self.discard(6 + length)
                    raise LinkError(
                        "wrong_unit", f"asked unit {unit}, answer from {r_unit}", answered=True
                    )
                self._duration.observe(time.monotonic() - t0)
                return frame
            if not await self._wait_data(rx, deadline):
                if rx.buf:
                    # A partial frame: the stream position is unknown, start afresh.
                    self.discard(len(rx.buf))
                    rx.buf.clear()
                    await self.close()
                    raise LinkError(
                        "truncated", f"incomplete answer within {reply_s:g}s", answered=True
                    )
                raise LinkError("timeout", f"no answer within {reply_s:g}s")


class RtuLink(Link):
    def __init__(self, bus: str, options: BusOptions) -> None:
        super().__init__(bus, options)
        self._gap = options.effective_frame_gap()
        self._last_tx_end = 0.0

    async def exchange(self, unit: int, pdu: bytes, reply_s: float) -> bytes:
        await self.connect()
        rx = self._rx
        assert rx is not None
        # Silent interval: since our last frame and since the last byte received.
        quiet_from = max(self._last_tx_end, rx.last_rx)
        wait = quiet_from + self._gap - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if rx.buf:  # a late answer or noise: not for this request
            self.discard(len(rx.buf))
            rx.buf.clear()
        frame = codec.rtu_frame(unit, pdu)
        self._count_request(pdu)
        t0 = time.monotonic()
        self._tx.write(frame)
        # Time on the wire of our own frame (a pty delivers at once; real lines do not).
        bits = (
            1
            + self.options.bytesize
            + (0 if self.options.parity == "N" else 1)
            + self.options.stopbits
        )
        tx_time = len(frame) * bits / self.options.baud if self.options.transport == "rtu" else 0.0
        self._last_tx_end = t0 + tx_time
        if unit == 0:  # broadcast: nobody answers
            return b""
        deadline = t0 + tx_time + reply_s
        while True:
            scan = codec.rtu_find_response(bytes(rx.buf), unit, pdu)
            if scan.skip:
                self.discard(scan.skip)
                del rx.buf[: scan.skip]
            if scan.status == "frame":
                del rx.buf[: scan.length]
                self._duration.observe(time.monotonic() - t0)
                return scan.pdu
            if scan.status == "crc":
                self.discard(scan.length)
                del rx.buf[: scan.length]
                raise LinkError("crc", "answer with a wrong CRC", answered=True)
            if not await self._wait_data(rx, deadline):
                if rx.buf:
                    self.discard(len(rx.buf))
                    rx.buf.clear()
                    raise LinkError(
                        "truncated", f"incomplete answer within {reply_s:g}s", answered=True
                    )
                raise LinkError("timeout", f"no answer within {reply_s:g}s")


def make_link(bus: str, options: BusOptions) -> Link:
    if options.transport == "tcp":
        return TcpLink(bus, options)
    return RtuLink(bus, options)
