"""An asyncio TCP proxy that tests put between the gateway and the broker or platform.

In-process API (all methods are safe to call from the event loop the proxy runs on)::

    proxy = FaultProxy(target_host, target_port)      # listens on 127.0.0.1, free port
    await proxy.start(); proxy.port
    await proxy.cut()          # close every connection and refuse new ones (ECONNREFUSED)
    await proxy.blackhole()    # accept connections, silently drop bytes both ways
    proxy.set_latency(0.2)     # one-way delay added to every chunk, both directions
    proxy.set_bandwidth(10000) # bytes/s per direction and connection (0 = unlimited)
    await proxy.restore()      # back to a clean pass-through (latency/bandwidth kept)
    await proxy.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass

log = logging.getLogger("hwsim.proxy")

_CHUNK = 65536
_QUEUE = 256


@dataclass
class ProxyState:
    mode: str = "pass"  # pass | cut | blackhole
    latency: float = 0.0
    bandwidth: int = 0
    connections: int = 0
    accepted: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    cuts: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Conn:
    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter]):
        self.proxy = proxy
        self.creader, self.cwriter = client
        self.sreader: asyncio.StreamReader | None = None
        self.swriter: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        for w in (self.cwriter, self.swriter):
            if w is not None:
                w.transport.abort()

    async def run(self) -> None:
        p = self.proxy
        try:
            if p.state.mode == "blackhole":
                # Swallow everything; never connect upstream.
                while await self.creader.read(_CHUNK):
                    pass
                return
            try:
                sreader, swriter = await asyncio.wait_for(
                    asyncio.open_connection(p.target_host, p.target_port), 10
                )
            except (OSError, TimeoutError):
                return
            self.sreader, self.swriter = sreader, swriter
            self.tasks = [
                asyncio.create_task(self._pipe(self.creader, swriter, True)),
                asyncio.create_task(self._pipe(sreader, self.cwriter, False)),
            ]
            await asyncio.wait(self.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in self.tasks:
                t.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            self.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: bool) -> None:
        p = self.proxy
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(_QUEUE)

        async def deliver() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if p.state.mode == "blackhole":
                    continue
                bw = p.state.bandwidth
                if bw > 0:
                    # Pace in slices so a throttled link trickles rather than bursts.
                    step = max(1, bw // 20)
                    for i in range(0, len(data), step):
                        piece = data[i : i + step]
                        writer.write(piece)
                        await writer.drain()
                        await asyncio.sleep(len(piece) / bw)
                else:
                    writer.write(data)
                    await writer.drain()
                if up:
                    p.state.bytes_up += len(data)
                else:
                    p.state.bytes_down += len(data)

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                if not data:
                    await queue.put(None)
                    break
                if p.state.mode == "blackhole":
                    continue
                await queue.put((time.monotonic() + p.state.latency, data))
            await sender
        except (ConnectionError, OSError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender


class FaultProxy:
    def __init__(
        self, target_host: str, target_port: int, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self.port = port
        self.state = ProxyState()
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._listen()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.state.mode == "cut":
            writer.transport.abort()
            return
        conn = _Conn(self, (reader, writer))
        self._conns.add(conn)
        self.state.accepted += 1
        self.state.connections = len(self._conns)
        try:
            await conn.run()
        except (ConnectionError, OSError):
            pass
        finally:
            self._conns.discard(conn)
            self.state.connections = len(self._conns)

    def _abort_all(self) -> None:
        for conn in list(self._conns):
            conn.abort()

    async def cut(self) -> None:
        """Close every connection and refuse new ones until :meth:`restore`."""
        self.state.mode = "cut"
        self.state.cuts += 1
        await self._unlisten()
        self._abort_all()
        log.info("proxy %s:%d: cut", self.host, self.port)

    async def blackhole(self) -> None:
        """Keep connections open but drop every byte (a dead link without RST)."""
        await self._listen()
        self.state.mode = "blackhole"
        log.info("proxy %s:%d: black hole", self.host, self.port)

    def set_latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("latency cannot be negative")
        self.state.latency = seconds

    def set_bandwidth(self, bytes_per_s: int) -> None:
        if bytes_per_s < 0:
            raise ValueError("bandwidth cannot be negative")
        self.state.bandwidth = int(bytes_per_s)

    async def restore(self) -> None:
        """Back to pass-through. Connections opened during a black hole are closed."""
        was = self.state.mode
        self.state.mode = "pass"
        if was == "blackhole":
            self._abort_all()
        await self._listen()
        log.info("proxy %s:%d: restored", self.host, self.port)

    async def close(self) -> None:
        await self._unlisten()
        self._abort_all()
        # Let the connection handlers notice the aborts and finish.
        for _ in range(100):
            if not self._conns:
                break
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
