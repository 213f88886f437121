"""The simulated RS-485 line: devices of several protocols on one pseudo-terminal and/or a
TCP listener (like a transparent serial server), with reply quirks and a control API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
import tomllib
import tty
from pathlib import Path
from typing import Any

from hwsim.serial.cjt188 import Cjt188Meter
from hwsim.serial.dlt645 import Dlt645Meter
from hwsim.serial.framed import FRAMED_MODELS, FramedDevice
from hwsim.serial.frames import INVALID, NEED_MORE, try_cjt188, try_dlt645
from hwsim.serial.meter import SimDevice

log = logging.getLogger("hwsim.serial")
STALE_PARTIAL = 1.0  # a partial frame older than this is dropped


class _Endpoint:
    """One side of the line: the pty master or one TCP client."""

    def __init__(self, bus: SimBus, write: Any, name: str) -> None:
        self.bus = bus
        self._write = write
        self.name = name
        self.buf = bytearray()
        self.dropped = bytearray()
        self.last_rx = 0.0
        self.lock = asyncio.Lock()
        self.busy_until = 0.0

    def write(self, data: bytes) -> None:
        if data:
            self._write(data)
            self.bus.tx_bytes += len(data)

    def received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.buf and now - self.last_rx > STALE_PARTIAL:
            self.buf.clear()
        self.last_rx = now
        self.busy_until = now + 0.2
        self.bus.rx_bytes += len(data)
        self.buf.extend(data)
        self.bus._process(self)


def parse_line(text: str) -> tuple[int, int, str, float]:
    """``"9600 8N1"`` -> (9600, 8, "N", 1.0)."""
    try:
        baud, frame = text.split()
        bits, parity, stop = int(frame[0]), frame[1].upper(), float(frame[2:])
    except (ValueError, IndexError):
        raise ValueError(f"line must look like '9600 8N1', found {text!r}") from None
    if parity not in "NEOMS" or bits not in (5, 6, 7, 8) or stop not in (1, 1.5, 2):
        raise ValueError(f"line must look like '9600 8N1', found {text!r}")
    return int(baud), bits, parity, stop


def preset_line(path: str, baud: int, bits: int, parity: str, stop: float) -> None:
    """Leave the port configured as if a program had last opened it with these settings
    (what a reopened pseudo-terminal or a USB adapter looks like). A pseudo-terminal cannot
    do parity: Linux then refuses, with EINVAL, a request whose only change is parity E/O
    (POSIX: tcsetattr fails when none of the requested changes could be made)."""
    import serial

    serial.Serial(path, baudrate=baud, bytesize=bits, parity=parity, stopbits=stop, timeout=0).close()


class SimBus:
    """Devices on one line. ``await start()`` opens the pty (``path``) and/or TCP port."""

    def __init__(self, devices: list[SimDevice] | None = None, *, pty: bool = True,
                 tcp: str | None = None, link: str | None = None, control: str | None = None,
                 line: str | None = None) -> None:
        self.devices: list[SimDevice] = list(devices or [])
        self.want_pty = pty
        self.line = parse_line(line) if line else None
        self.tcp_spec = tcp
        self.link = link
        self.control_spec = control
        self.path: str | None = None
        self.tcp_port: int | None = None
        self.control_port: int | None = None
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.requests = 0
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_ep: _Endpoint | None = None
        self._tcp_eps: set[_Endpoint] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: Any = None
        self._started = 0.0

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._started = time.monotonic()
        if self.want_pty:
            master, slave = os.openpty()
            tty.setraw(slave)
            os.set_blocking(master, False)
            self._master, self._slave = master, slave
            self.path = os.ttyname(slave)
            if self.line is not None:
                preset_line(self.path, *self.line)
            self._pty_ep = _Endpoint(self, lambda d: os.write(master, d), "pty")
            loop.add_reader(master, self._pty_readable)
            if self.link:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.link)
                os.symlink(self.path, self.link)
        if self.tcp_spec:
            host, _, port = self.tcp_spec.rpartition(":")
            self._server = await asyncio.start_server(self._tcp_client, host or "127.0.0.1", int(port))
            self.tcp_port = self._server.sockets[0].getsockname()[1]
        if self.control_spec:
            await self._start_control()
        for dev in self.devices:
            if isinstance(dev, FramedDevice) and dev.script:
                self._spawn(self._run_script(dev))

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._server is not None:
            self._server.close()
            for ep in list(self._tcp_eps):
                ep._write = lambda d: None
            await self._server.wait_closed()
            self._server = None
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)

    async def __aenter__(self) -> SimBus:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _pty_readable(self) -> None:
        assert self._master is not None and self._pty_ep is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:  # EIO: no process has the other side open
            return
        if data:
            self._pty_ep.received(data)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ep = _Endpoint(self, writer.write, "tcp")
        self._tcp_eps.add(ep)
        try:
            while data := await reader.read(4096):
                ep.received(data)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tcp_eps.discard(ep)
            writer.close()

    # ---------------------------------------------------------------- requests

    def device(self, address: str | int) -> SimDevice:
        for d in self.devices:
            if str(d.address).lstrip("0") == str(address).lstrip("0"):
                return d
        raise KeyError(f"no device with address {address}")

    def _parsers(self) -> list[Any]:
        out: list[Any] = []
        protos = {d.protocol for d in self.devices}
        if "dlt645" in protos:
            out.append(("dlt645", try_dlt645))
        if "cjt188" in protos:
            out.append(("cjt188", try_cjt188))
        for cls in {type(d) for d in self.devices if isinstance(d, FramedDevice)}:
            out.append((cls.model, cls.parse))
        return out

    def _process(self, ep: _Endpoint) -> None:
        parsers = self._parsers()
        buf = ep.buf
        while buf:
            waiting = False
            taken = False
            for proto, parse in parsers:
                result, n = parse(bytes(buf))
                if result == NEED_MORE:
                    waiting = True
                    continue
                if result == INVALID:
                    continue
                del buf[:n]
                # an adapter echo repeats the wake-up bytes sent before the frame too
                pre = len(ep.dropped) - len(ep.dropped.rstrip(b"\xfe"))
                result.raw = b"\xfe" * min(pre, 4) + result.raw
                ep.dropped.clear()
                self._dispatch(ep, proto, result)
                taken = True
                break
            if taken:
                continue
            if waiting:
                return
            ep.dropped += buf[:1]
            del ep.dropped[:-8]
            del buf[:1]

    def _dispatch(self, ep: _Endpoint, proto: str, req: Any) -> None:
        self.requests += 1
        replies: list[tuple[SimDevice, bytes]] = []
        for dev in self.devices:
            if dev.protocol != proto and not (isinstance(dev, FramedDevice) and dev.model == proto):
                continue
            reply = dev.handle(req)
            if reply is not None:
                replies.append((dev, reply))
        for dev, reply in replies:
            if dev.quirks.silent:
                continue
            dev.replies += 1
            self._spawn(self._send_reply(ep, dev, req.raw, reply))

    async def _send_reply(self, ep: _Endpoint, dev: SimDevice, request: bytes, reply: bytes) -> None:
        q = dev.quirks
        if q.echo:  # the adapter hears its own transmission at once
            ep.write(request)
        frame = bytearray(reply)
        if q.bad_checksum:
            frame[-2] ^= 0x5A
        if q.wrong_length:
            idx = 9 if dev.protocol == "dlt645" else 10 if dev.protocol == "cjt188" else 2
            frame[idx] = (frame[idx] + 1) & 0xFF
        out = bytearray()
        if q.junk:
            out += bytes(random.choice([0x00, 0x68, 0xFF, 0x16, 0x55, 0x3C]) for _ in range(q.junk))
        out += b"\xfe" * max(0, min(4, q.fe)) + frame
        # a slow meter: long response delay, then a pause after the first byte
        await asyncio.sleep(q.delay + q.slow_first_byte)
        async with ep.lock:
            if q.slow_first_byte > 0:
                ep.write(bytes(out[:1]))
                await asyncio.sleep(min(0.2, q.slow_first_byte))
                ep.write(bytes(out[1:]))
            else:
                ep.write(bytes(out))
            ep.busy_until = time.monotonic() + 0.05

    # ---------------------------------------------------------------- unsolicited frames

    async def emit(self, address: str | int, event: str, **fields: Any) -> bytes:
        """Send a device-initiated frame on every endpoint once the line is quiet."""
        dev = self.device(address)
        if not isinstance(dev, FramedDevice):
            raise ValueError(f"device {address} is not a framed device")
        frame = dev.event_frame(event, fields)
        for ep in self._endpoints():
            async with ep.lock:
                quiet = ep.busy_until - time.monotonic()
                if quiet > 0:  # let the exchange on the line finish first
                    await asyncio.sleep(quiet)
                ep.write(frame)
        dev.sent_events += 1
        return frame

    def _endpoints(self) -> list[_Endpoint]:
        eps = list(self._tcp_eps)
        if self._pty_ep is not None:
            eps.append(self._pty_ep)
        return eps

    async def _run_script(self, dev: FramedDevice) -> None:
        for step in sorted(dev.script, key=lambda s: float(s.get("after", 0))):
            delay = self._started + float(step.get("after", 0)) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            fields = {k: v for k, v in step.items() if k not in ("after", "event")}
            try:
                await self.emit(dev.addr, str(step["event"]), **fields)
            except (KeyError, ValueError) as exc:
                log.warning("script step %s failed: %s", step, exc)

    # ---------------------------------------------------------------- control API

    def snapshot(self) -> dict[str, Any]:
        return {"path": self.path, "tcp_port": self.tcp_port, "requests": self.requests,
                "rx_bytes": self.rx_bytes, "tx_bytes": self.tx_bytes,
                "devices": [d.state() for d in self.devices]}

    def configure(self, address: str | int, body: dict[str, Any]) -> dict[str, Any]:
        dev = self.device(address)
        dev.quirks.update(body.get("quirks", {}))
        dev.set_values(body.get("values", {}))
        return dev.state()

    async def _start_control(self) -> None:
        from aiohttp import web

        async def index(_: web.Request) -> web.Response:
            return web.json_response(self.snapshot(), dumps=lambda o: json.dumps(o, default=str))

        async def configure(req: web.Request) -> web.Response:
            try:
                state = self.configure(req.match_info["addr"], await req.json())
            except (KeyError, ValueError, TypeError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response(state, dumps=lambda o: json.dumps(o, default=str))

        async def emit(req: web.Request) -> web.Response:
            body = await req.json()
            try:
                frame = await self.emit(req.match_info["addr"], str(body.pop("event")), **body)
            except (KeyError, ValueError) as exc:
                return web.json_response({"error": str(exc)}, status=400)
            return web.json_response({"frame": frame.hex(" ")})

        app = web.Application()
        app.router.add_get("/", index)
        app.router.add_post("/devices/{addr}", configure)
        app.router.add_post("/devices/{addr}/emit", emit)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, _, port = (self.control_spec or "127.0.0.1:0").rpartition(":")
        site = web.TCPSite(runner, host or "127.0.0.1", int(port))
        await site.start()
        self._runner = runner
        server = site._server
        assert server is not None
        self.control_port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]


def make_device(entry: dict[str, Any]) -> SimDevice:
    e = dict(entry)
    proto = e.pop("protocol")
    address = str(e.pop("address"))
    quirks = e.pop("quirks", None)
    values = e.pop("values", None)
    if proto == "dlt645":
        return Dlt645Meter(address, quirks=quirks, values=values, **e)
    if proto == "cjt188":
        mt = e.pop("meter_type", 0x10)
        return Cjt188Meter(address, meter_type=int(mt, 16) if isinstance(mt, str) else mt,
                           quirks=quirks, values=values, **e)
    if proto == "framed":
        model = e.pop("model")
        if model not in FRAMED_MODELS:
            raise ValueError(f"unknown framed model {model!r} ({sorted(FRAMED_MODELS)})")
        return FRAMED_MODELS[model](address, quirks=quirks, values=values, **e)
    raise ValueError(f"unknown protocol {proto!r}")


def load_sim(source: str | Path | dict[str, Any], **overrides: Any) -> SimBus:
    """Build a bus from a sim.toml file (or its parsed dict)::

        [bus]
        pty = true            # open a pseudo-terminal
        link = "/tmp/rs485-1" # optional symlink to it
        tcp = "127.0.0.1:0"   # optional TCP listener (serial-server mode)
        control = "127.0.0.1:0"  # optional HTTP control endpoint
        line = "2400 8N1"     # optional: the pty starts as a port last opened with these
                              # settings; it then refuses parity E/O at that baud (EINVAL),
                              # as reopened ptys and some USB adapters do

        [[devices]]
        protocol = "dlt645"   # dlt645 | cjt188 | framed
        address = "000000000001"
        model = "single_phase"
        quirks = { fe = 2, slow_first_byte = 0.3, echo = true }
        values = { evolve = false, energy_import = 1234.56, clock = "2024-05-01T08:30:15" }

    Other top-level tables (e.g. a test's ``[[emit]]`` list) are left to the caller.
    """
    data = source if isinstance(source, dict) else tomllib.loads(Path(source).read_text("utf-8"))
    busopts = dict(data.get("bus", {}))
    busopts.update(overrides)
    devices = [make_device(d) for d in data.get("devices", [])]
    return SimBus(devices, pty=bool(busopts.get("pty", True)), tcp=busopts.get("tcp"),
                  link=busopts.get("link"), control=busopts.get("control"), line=busopts.get("line"))
