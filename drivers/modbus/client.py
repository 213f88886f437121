"""The I/O edge of the Modbus driver: one pymodbus 3.x async client per bus.

* Modbus TCP: ``AsyncModbusTcpClient`` (MBAP framing, transaction ids: pymodbus drops late
  answers by their transaction id).
* RTU on a serial port: ``AsyncModbusSerialClient(framer=FramerType.RTU)``.
* RTU over TCP (serial servers, DTUs): ``AsyncModbusTcpClient(framer=FramerType.RTU)``.

pymodbus does the framing and matching. What this module adds:

* deadlines: every connect and every request runs under our own ``asyncio.timeout`` (the
  per-device request timeout); pymodbus's own retries are off (the hub decides what to
  retry) and so is its background reconnect (a request reconnects on demand);
* the silent interval on RTU lines: before a request the line must have been idle for the
  frame gap since our last frame went out and since the last byte came in;
* precise failure reasons: pymodbus reports a corrupt or incomplete answer as a plain
  timeout. Its ``trace_packet`` hook shows us the bytes that arrived for a request, and the
  pure ``codec.classify_unanswered`` names them (``crc``, ``truncated``, ``bad_length``, ...)
  -- or ``timeout`` when nothing came. ``trace_connect`` tells a dropped connection apart;
* metrics: requests by function code, answer latency, discarded bytes, (re)connects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from drivers.modbus import codec, metrics
from drivers.modbus.schema import BusOptions
from gateway import serialport
from gateway.errors import ReasonError

if TYPE_CHECKING:  # pymodbus is imported when the first Modbus bus opens, not at load
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

log = logging.getLogger("drivers.modbus")

# pymodbus logs an error line for every request it gives up on and every frame it skips;
# the driver reports each failure itself (once, with a reason, in /metrics). Keep pymodbus
# quiet unless an operator configured its logger explicitly.
_PYMODBUS_LOG = logging.getLogger("pymodbus.logging")
if _PYMODBUS_LOG.level == logging.NOTSET:
    _PYMODBUS_LOG.setLevel(logging.CRITICAL)

# pymodbus's own deadline; ours (asyncio.timeout around each call) always fires first.
_LIBRARY_CEILING = 600.0


class LinkError(ReasonError):
    """A request got no usable answer. ``reason`` is a bounded label; ``answered`` tells
    whether the device sent anything at all (a corrupt answer still proves it is alive)."""

    def __init__(self, reason: str, detail: str = "", *, answered: bool = False) -> None:
        super().__init__(reason, detail)
        self.answered = answered


def issue(client: Any, unit: int, req: codec.Request) -> Any:
    """Hand ``req`` to a pymodbus client (any ``ModbusClientMixin``); returns what its
    method returns (an awaitable for the async clients)."""
    quiet = unit == 0  # broadcast: nobody answers
    if req.fc == 3:
        return client.read_holding_registers(req.address, count=req.count, device_id=unit)
    if req.fc == 4:
        return client.read_input_registers(req.address, count=req.count, device_id=unit)
    if req.fc == 1:
        return client.read_coils(req.address, count=req.count, device_id=unit)
    if req.fc == 2:
        return client.read_discrete_inputs(req.address, count=req.count, device_id=unit)
    if req.fc == 5:
        return client.write_coil(
            req.address, bool(req.values[0]), device_id=unit, no_response_expected=quiet
        )
    if req.fc == 6:
        return client.write_register(
            req.address, req.values[0], device_id=unit, no_response_expected=quiet
        )
    if req.fc == 15:
        return client.write_coils(
            req.address, [bool(v) for v in req.values], device_id=unit, no_response_expected=quiet
        )
    if req.fc == 16:
        return client.write_registers(
            req.address, list(req.values), device_id=unit, no_response_expected=quiet
        )
    raise codec.CodecError("bad_request", f"function {req.fc} is not supported")


class ModbusClient:
    """One pymodbus client (TCP socket or serial port) and what we observe of its traffic.

    Not re-entrant: the bus hub holds its lock around every call."""

    def __init__(self, bus: str, options: BusOptions) -> None:
        self.bus = bus
        self.options = options
        self.transport_name = str(options.transport)
        self.framing = "socket" if options.transport == "tcp" else "rtu"
        self._gap = options.effective_frame_gap()
        if options.transport == "rtu":
            bits = 1 + options.bytesize + (0 if options.parity == "N" else 1) + options.stopbits
            self._char_time = bits / options.baud
        else:
            self._char_time = 0.0
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self.connections = 0  # successful (re)connects: what was learnt of devices may be stale
        # traffic seen through the trace hooks
        self._in_request = False
        self._rx_done = b""  # bytes of this request that pymodbus already consumed
        self._rx_pending = b""  # pymodbus's current receive buffer
        self._dropped = False
        self._last_rx = 0.0
        self._tx_end = 0.0
        self._deadline: asyncio.Timeout | None = None  # of the request in flight
        self._unit = 0
        self._req: codec.Request | None = None
        # metric children, resolved once
        self._fc_counters: dict[int, Any] = {}
        self._duration = metrics.REQUEST_DURATION.labels(self.transport_name)
        self._discarded = metrics.DISCARDED_BYTES.labels(bus)
        self._stale = metrics.STALE_ANSWERS.labels(bus)

    # ------------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.connected

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
        from pymodbus.framer import FramerType

        o = self.options
        hooks: dict[str, Any] = {
            "trace_packet": self._trace_packet,
            "trace_connect": self._trace_connect,
        }
        common: dict[str, Any] = {
            "name": self.bus,
            "reconnect_delay": 0,  # no background reconnect: a request reconnects
            "timeout": _LIBRARY_CEILING,
            "retries": 0,  # retries are the hub's policy
        }
        client: AsyncModbusTcpClient | AsyncModbusSerialClient
        if o.transport == "rtu":
            client = AsyncModbusSerialClient(
                str(o.port),
                framer=FramerType.RTU,
                baudrate=o.baud,
                bytesize=o.bytesize,
                parity=o.parity,
                stopbits=o.stopbits,
                **common,
                **hooks,
            )
        else:
            client = AsyncModbusTcpClient(
                str(o.host),
                port=int(o.port or 502),
                framer=FramerType.SOCKET if o.transport == "tcp" else FramerType.RTU,
                **common,
                **hooks,
            )
        # A dead unit on a shared line must not make pymodbus drop the connection for all.
        client.set_max_no_responses(1 << 30)
        return client

    def _where(self) -> str:
        o = self.options
        return str(o.port) if o.transport == "rtu" else f"{o.host}:{o.port}"

    async def connect(self) -> None:
        if self.connected:
            return
        self.close()
        client = self._make_client()
        t0 = time.monotonic()
        limit = float(self.options.connect_timeout)
        ok = False
        try:
            async with asyncio.timeout(limit):
                ok = await client.connect()
        except TimeoutError:
            client.close()
            metrics.CONNECTS.labels(self.bus, "timeout").inc()
            raise LinkError(
                "connect_timeout", f"{self._where()}: no connection within {limit:g}s"
            ) from None
        except Exception as exc:  # pyserial raises ValueError for settings it cannot apply
            client.close()
            metrics.CONNECTS.labels(self.bus, "error").inc()
            if self.options.transport == "rtu" and serialport.is_open_error(exc):
                o = self.options
                problem = await asyncio.to_thread(
                    serialport.explain, exc,
                    serialport.LineSettings(str(o.port), o.baud, o.bytesize, o.parity, o.stopbits),
                    hint_style="cli" if self.bus == "scan" else "config",
                )
                raise LinkError("connect_failed", problem.message) from None
            raise LinkError(
                "connect_failed", f"{self._where()}: {type(exc).__name__}: {exc}"
            ) from None
        if not ok:
            client.close()
            took = time.monotonic() - t0
            if took >= limit * 0.95:
                metrics.CONNECTS.labels(self.bus, "timeout").inc()
                raise LinkError("connect_timeout", f"{self._where()}: no connection in {took:.2f}s")
            metrics.CONNECTS.labels(self.bus, "error").inc()
            raise LinkError("connect_failed", f"{self._where()}: cannot open")
        metrics.CONNECTS.labels(self.bus, "ok").inc()
        self._client = client
        self._dropped = False
        self.connections += 1

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    # ------------------------------------------------------------------ trace hooks

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        now = time.monotonic()
        if sending:
            self._tx_end = now + len(data) * self._char_time
            return data
        self._last_rx = now
        if not self._in_request:
            # pymodbus hands us its whole receive buffer; count only what is new
            pending = self._rx_pending
            new = len(data) - len(pending) if data.startswith(pending) else len(data)
            self._rx_pending = data
            if new > 0:
                self._discarded.inc(new)
                if new == len(data):
                    self._stale.inc()  # a new burst: an answer to a request we gave up on
            return data
        pending = self._rx_pending
        if not (pending and data.startswith(pending)):
            self._rx_done += pending  # the previous buffer was consumed (a frame, or noise)
        self._rx_pending = data
        if self.framing == "rtu" and self._req is not None and self._deadline is not None:
            received = self._rx_done + data
            if codec.rtu_answer_failed(received, self._unit, self._req):
                self._deadline.reschedule(asyncio.get_running_loop().time())
        return data

    def _trace_connect(self, connected: bool) -> None:
        if not connected:
            self._dropped = True
            if self._in_request and self._deadline is not None:
                # pymodbus keeps waiting for an answer on a closed connection: stop now
                self._deadline.reschedule(asyncio.get_running_loop().time())

    # ------------------------------------------------------------------ requests

    def _count_request(self, fc: int) -> None:
        c = self._fc_counters.get(fc)
        if c is None:
            c = self._fc_counters[fc] = metrics.REQUESTS.labels(self.transport_name, str(fc))
        c.inc()

    async def _quiet_line(self) -> None:
        """RTU: keep the silent interval since our last frame and the last byte received."""
        if self._gap <= 0:
            return
        wait = max(self._tx_end, self._last_rx) + self._gap - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def execute(
        self, unit: int, req: codec.Request, reply_s: float
    ) -> list[int] | list[bool] | None:
        """Send ``req`` to ``unit`` and return the registers/bits read (None for writes).

        Raises ``codec.ModbusExceptionResponse`` for an exception answer,
        ``codec.MalformedFrame`` for an answer that does not fit the request and
        ``LinkError`` when no usable answer came (with the reason classified)."""
        from pymodbus.exceptions import ConnectionException, ModbusException

        if not self.connected:
            await self.connect()
        if self._gap > 0:
            await self._quiet_line()
            if self._client is None or not self._client.connected:
                # the connection dropped while we kept the line quiet
                self._dropped = False
                await self.connect()
        self._count_request(req.fc)
        self._in_request = True
        self._rx_done = self._rx_pending = b""
        self._dropped = False
        self._unit, self._req = unit, req
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(reply_s) as deadline:
                self._deadline = deadline
                response = await issue(self._client, unit, req)
        except TimeoutError:
            raise self._unanswered(unit, req, f"no usable answer within {reply_s:g}s") from None
        except ConnectionException as exc:
            self.close()
            raise LinkError("connection", str(exc), answered=False) from None
        except ModbusException as exc:
            raise self._unanswered(unit, req, str(exc)) from None
        finally:
            self._in_request = False
            self._deadline = self._req = None
        if response is None:  # broadcast
            return None
        self._duration.observe(time.monotonic() - t0)
        self._rx_done = self._rx_pending = b""
        if response.isError():
            raise codec.ModbusExceptionResponse(req.fc, int(response.exception_code))
        fc = int(response.function_code)
        if req.fc in (3, 4, 6, 16):
            data: list[int] | list[bool] = list(response.registers)
        else:
            data = list(response.bits)
        return codec.check_answer(
            req,
            fc,
            data,
            echo_address=getattr(response, "address", None),
            echo_count=getattr(response, "count", None),
        )

    def _unanswered(self, unit: int, req: codec.Request, detail: str) -> LinkError:
        received = self._rx_done + self._rx_pending
        self._rx_done = self._rx_pending = b""
        reason = codec.classify_unanswered(self.framing, received, unit, req)
        if received:
            self._discarded.inc(len(received))
        if reason == "timeout" and self._dropped:
            reason = "connection"
            detail = "connection closed by the peer"
            self.close()
        elif received and self.framing == "socket":
            # A broken answer on a TCP stream: where the next frame starts is unknown.
            self.close()
        elif self._dropped:
            self.close()
        if received:
            detail = f"{detail}; {len(received)} bytes arrived: {received[:32].hex()}"
        return LinkError(reason, detail, answered=bool(received) and reason != "connection")
