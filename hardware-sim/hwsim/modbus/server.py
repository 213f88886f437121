"""The Modbus simulator: serves simulated devices over Modbus TCP, RTU on a pseudo-terminal
and RTU over TCP, with a JSON control endpoint for run-time faults and values.

In-process use (fast tests)::

    sim = ModbusSimulator(load_farm("sim.toml"), tcp_port=0, rtu_pty=True, control_port=0)
    await sim.start()
    sim.device("smoke").set_fault("silent")
    ...
    await sim.stop()

Endpoints (any combination):

* ``tcp_port``: one Modbus TCP port, devices told apart by unit id (like a TCP gateway);
  an unknown unit gets exception 0x0B (gateway target failed to respond).
* ``per_device_ports``: every device on a TCP port of its own (``device_ports[name]``).
* ``rtu_pty``: one RS-485 line on a pseudo-terminal; the gateway opens ``pty_path``. Unknown
  or silent units stay silent, like real RTU slaves.
* ``rtu_tcp_port``: raw RTU frames over TCP (a serial server / DTU).

Faults per device (``SimDevice.set_fault``): ``silent`` (no answer), ``late`` (answer after
``delay`` seconds), ``exception`` (answer exception ``code``), ``crc`` (corrupt CRC on RTU; a
malformed byte count on TCP), ``truncate`` (half a frame), ``gone`` (silent, and its own TCP
port drops connections), each optionally for a ``rate`` fraction of requests.

Holes (``SimDevice.set_holes``, the device file's ``holes`` or a farm entry's): address
ranges that answer exception 02 to any request touching them, like real devices whose
register maps have gaps; changed at run time through ``POST /devices/NAME/holes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import time
import tty
from collections.abc import Callable, Iterable
from typing import Any

from hwsim.modbus import wire
from hwsim.modbus.model import SimDevice

log = logging.getLogger("hwsim.modbus")

RTU_SILENCE = 0.02  # an idle line this long ends an incomplete frame


class ModbusSimulator:
    def __init__(
        self,
        devices: Iterable[SimDevice],
        *,
        host: str = "127.0.0.1",
        tcp_port: int | None = None,
        per_device_ports: int | list[int] | None = None,
        rtu_pty: bool = False,
        rtu_tcp_port: int | None = None,
        control_port: int | None = None,
    ) -> None:
        self.devices: dict[str, SimDevice] = {}
        for d in devices:
            self.devices[d.name] = d
        self.host = host
        self._want_tcp = tcp_port
        self._want_per_device = per_device_ports
        self._want_pty = rtu_pty
        self._want_rtu_tcp = rtu_tcp_port
        self._want_control = control_port
        self.tcp_port: int | None = None
        self.rtu_tcp_port: int | None = None
        self.control_port: int | None = None
        self.pty_path: str | None = None
        self.device_ports: dict[str, int] = {}
        self.rtu_crc_errors = 0
        self._servers: list[asyncio.Server] = []
        self._port_servers: dict[str, asyncio.Server] = {}
        self._conns: dict[str | None, set[asyncio.StreamWriter]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pty: tuple[int, int] | None = None
        self._pty_buf = bytearray()
        self._pty_last = 0.0
        self._control: Any = None

    def device(self, name: str) -> SimDevice:
        return self.devices[name]

    def by_unit(self) -> dict[int, SimDevice]:
        return {d.unit: d for d in self.devices.values()}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self._want_tcp is not None:
            srv = await asyncio.start_server(
                self._tcp_client(None, self.by_unit), self.host, self._want_tcp
            )
            self._servers.append(srv)
            self.tcp_port = srv.sockets[0].getsockname()[1]
        if self._want_per_device is not None:
            names = list(self.devices)
            if isinstance(self._want_per_device, int):
                base = self._want_per_device
                ports = [0 if base == 0 else base + i for i in range(len(names))]
            else:
                ports = list(self._want_per_device)
            for name, port in zip(names, ports, strict=True):
                dev = self.devices[name]
                srv = await asyncio.start_server(
                    self._tcp_client(name, _only(dev)), self.host, port, backlog=16
                )
                self._port_servers[name] = srv
                self.device_ports[name] = srv.sockets[0].getsockname()[1]
        if self._want_rtu_tcp is not None:
            srv = await asyncio.start_server(self._rtu_tcp_client, self.host, self._want_rtu_tcp)
            self._servers.append(srv)
            self.rtu_tcp_port = srv.sockets[0].getsockname()[1]
        if self._want_pty:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._pty = (master, slave)
            self.pty_path = os.ttyname(slave)
            asyncio.get_running_loop().add_reader(master, self._pty_readable)
        if self._want_control is not None:
            await self._start_control(self._want_control)

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        servers = self._servers + list(self._port_servers.values())
        for srv in servers:
            srv.close()
        for conns in self._conns.values():
            for w in list(conns):
                w.close()
        for srv in servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(srv.wait_closed(), 2)
        self._servers.clear()
        self._port_servers.clear()
        if self._pty is not None:
            master, slave = self._pty
            asyncio.get_running_loop().remove_reader(master)
            os.close(master)
            os.close(slave)
            self._pty = None
        if self._control is not None:
            await self._control.cleanup()
            self._control = None

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ request path

    def _answer(self, dev: SimDevice, pdu: bytes) -> tuple[str, bytes | None]:
        """(what to do, response PDU): do is "send", "silent", "late", "crc", "truncate"."""
        dev.requests += 1
        fault = dev.fault
        dev.tick(time.monotonic())
        if fault.kind in ("silent", "gone") and fault.applies():
            return "silent", None
        if fault.kind == "exception" and fault.applies():
            dev.answered += 1
            return "send", wire.exception(pdu[0], fault.code)
        response = wire.handle_pdu(dev, pdu)
        dev.answered += 1
        if fault.kind in ("late", "crc", "truncate") and fault.applies():
            return fault.kind, response
        return "send", response

    # TCP --------------------------------------------------------------------------

    def _tcp_client(
        self, port_owner: str | None, units: Callable[[], dict[int, SimDevice]]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            owner_dev = self.devices.get(port_owner) if port_owner else None
            if owner_dev is not None and owner_dev.fault.kind == "gone":
                writer.close()
                return
            conns = self._conns.setdefault(port_owner, set())
            conns.add(writer)
            try:
                while True:
                    header = await reader.readexactly(7)
                    tid, proto, length, unit = struct.unpack(">HHHB", header)
                    if proto != 0 or not 2 <= length <= 254:
                        break  # not Modbus: drop the connection like a device would
                    pdu = await reader.readexactly(length - 1)
                    table = units()
                    dev = table.get(unit)
                    if owner_dev is not None and owner_dev.fault.kind == "gone":
                        break
                    if dev is None:
                        if port_owner is None:
                            writer.write(wire.mbap_wrap(tid, unit, wire.exception(pdu[0], 0x0B)))
                        continue
                    do, resp = self._answer(dev, pdu)
                    if resp is None:
                        continue
                    if do == "crc":
                        resp = wire.corrupt_pdu(resp)
                    frame = wire.mbap_wrap(tid, unit, resp)
                    if do == "truncate":
                        frame = frame[: max(3, len(frame) // 2)]
                    if do == "late":
                        self._spawn(self._late_write(writer, frame, dev.fault.delay))
                    else:
                        writer.write(frame)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                conns.discard(writer)
                writer.close()

        return handler

    async def _late_write(self, writer: asyncio.StreamWriter, frame: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        if not writer.is_closing():
            writer.write(frame)

    # RTU --------------------------------------------------------------------------

    def _rtu_frames(self, buf: bytearray) -> list[bytes]:
        """Complete request frames at the front of ``buf`` (consumed); bad CRCs dropped."""
        frames: list[bytes] = []
        while buf:
            size = wire.rtu_request_size(buf)
            if size is None:
                break
            if size == 0:
                size = len(buf)  # unknown function: the rest of the burst is the frame
            if len(buf) < size:
                break
            frame = bytes(buf[:size])
            if wire.crc(frame[:-2]) != frame[-2:]:
                self.rtu_crc_errors += 1
                del buf[:1]  # hunt for the next plausible start
                continue
            del buf[:size]
            frames.append(frame)
        return frames

    def _rtu_respond(self, frame: bytes, send: Callable[[bytes], None]) -> None:
        unit, pdu = frame[0], frame[1:-2]
        dev = self.by_unit().get(unit)
        if dev is None:
            return  # a real RTU slave ignores frames for other units
        do, resp = self._answer(dev, pdu)
        if resp is None or unit == 0:
            return
        out = wire.rtu_wrap(unit, resp)
        if do == "crc":
            out = out[:-2] + bytes((out[-2] ^ 0xFF, out[-1] ^ 0x55))
        elif do == "truncate":
            out = out[: max(2, len(out) // 2)]
        if do == "late":
            self._spawn(self._late_send(send, out, dev.fault.delay))
        else:
            send(out)

    async def _late_send(self, send: Callable[[bytes], None], data: bytes, delay: float) -> None:
        await asyncio.sleep(delay)
        send(data)

    def _pty_readable(self) -> None:
        assert self._pty is not None
        try:
            data = os.read(self._pty[0], 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            return
        now = time.monotonic()
        if self._pty_buf and now - self._pty_last > RTU_SILENCE:
            self._pty_buf.clear()  # a silent interval ended an incomplete frame
        self._pty_last = now
        self._pty_buf += data
        for frame in self._rtu_frames(self._pty_buf):
            self._rtu_respond(frame, self._pty_send)

    def _pty_send(self, data: bytes) -> None:
        if self._pty is None:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._pty[0], data)

    async def _rtu_tcp_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        conns = self._conns.setdefault("rtu_tcp", set())
        conns.add(writer)
        buf = bytearray()
        last = 0.0
        try:
            while True:
                data = await reader.read(4096)
                if not data:
                    break
                now = time.monotonic()
                if buf and now - last > RTU_SILENCE:
                    buf.clear()
                last = now
                buf += data
                for frame in self._rtu_frames(buf):
                    self._rtu_respond(
                        frame, lambda b: None if writer.is_closing() else writer.write(b)
                    )
        except ConnectionError:
            pass
        finally:
            conns.discard(writer)
            writer.close()

    # ------------------------------------------------------------------ faults

    def set_fault(self, name: str, kind: str, **params: Any) -> None:
        dev = self.devices[name]
        dev.set_fault(kind, **params)
        if kind == "gone":
            for w in list(self._conns.get(name, ())):
                w.close()

    # ------------------------------------------------------------------ control API

    async def _start_control(self, port: int) -> None:
        from aiohttp import web

        async def list_devices(request: web.Request) -> web.Response:
            return web.json_response(
                {
                    "devices": [d.status() for d in self.devices.values()],
                    "endpoints": self.endpoints(),
                    "rtu_crc_errors": self.rtu_crc_errors,
                }
            )

        async def one(request: web.Request) -> web.Response:
            dev = self.devices.get(request.match_info["name"])
            if dev is None:
                return web.json_response({"error": "no such device"}, status=404)
            return web.json_response(dev.status())

        async def fault(request: web.Request) -> web.Response:
            name = request.match_info["name"]
            if name not in self.devices:
                return web.json_response({"error": "no such device"}, status=404)
            try:
                body = await request.json()
                kind = str(body.pop("fault"))
                self.set_fault(name, kind, **body)
            except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(self.devices[name].status())

        async def values(request: web.Request) -> web.Response:
            dev = self.devices.get(request.match_info["name"])
            if dev is None:
                return web.json_response({"error": "no such device"}, status=404)
            try:
                body = await request.json()
                for k, v in body.items():
                    if k not in dev.values:
                        raise KeyError(f"unknown value {k!r}")
                    dev.set_value(k, v)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(dev.status())

        async def holes(request: web.Request) -> web.Response:
            dev = self.devices.get(request.match_info["name"])
            if dev is None:
                return web.json_response({"error": "no such device"}, status=404)
            try:
                body = await request.json()
                dev.set_holes(body.get("holes") if isinstance(body, dict) else body)
            except (ValueError, json.JSONDecodeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(dev.status())

        app = web.Application()
        app.router.add_get("/devices", list_devices)
        app.router.add_get("/devices/{name}", one)
        app.router.add_post("/devices/{name}/fault", fault)
        app.router.add_post("/devices/{name}/values", values)
        app.router.add_post("/devices/{name}/holes", holes)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        self._control = runner
        server = getattr(site, "_server", None)
        socks = getattr(server, "sockets", None) or []
        self.control_port = socks[0].getsockname()[1] if socks else port

    def endpoints(self) -> dict[str, Any]:
        return {
            "tcp_port": self.tcp_port,
            "rtu_tcp_port": self.rtu_tcp_port,
            "pty": self.pty_path,
            "control_port": self.control_port,
            "device_ports": self.device_ports,
        }


def _only(dev: SimDevice) -> Callable[[], dict[int, SimDevice]]:
    return lambda: {dev.unit: dev}
