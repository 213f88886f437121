"""Small HTTP control endpoint of the fault proxy (used by ``hwsim proxy ctl``).

``GET /state``; ``POST /cut``, ``/blackhole``, ``/restore``; ``POST /latency`` with
``{"ms": 200}``; ``POST /bandwidth`` with ``{"bytes_per_s": 10000}`` (0 = unlimited).
"""

from __future__ import annotations

import json

from aiohttp import web

from hwsim.proxy.proxy import FaultProxy


def make_app(proxy: FaultProxy) -> web.Application:
    async def state(_: web.Request) -> web.Response:
        return web.json_response(proxy.state.to_dict())

    async def cut(_: web.Request) -> web.Response:
        await proxy.cut()
        return web.json_response(proxy.state.to_dict())

    async def blackhole(_: web.Request) -> web.Response:
        await proxy.blackhole()
        return web.json_response(proxy.state.to_dict())

    async def restore(_: web.Request) -> web.Response:
        await proxy.restore()
        return web.json_response(proxy.state.to_dict())

    async def _number(request: web.Request, key: str) -> float:
        try:
            body = await request.json()
            value = float(body[key])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            raise web.HTTPBadRequest(text=f'expected a JSON body {{"{key}": number}}') from None
        if value < 0:
            raise web.HTTPBadRequest(text=f"{key} cannot be negative")
        return value

    async def latency(request: web.Request) -> web.Response:
        proxy.set_latency(await _number(request, "ms") / 1000.0)
        return web.json_response(proxy.state.to_dict())

    async def bandwidth(request: web.Request) -> web.Response:
        proxy.set_bandwidth(int(await _number(request, "bytes_per_s")))
        return web.json_response(proxy.state.to_dict())

    app = web.Application()
    app.router.add_get("/state", state)
    app.router.add_post("/cut", cut)
    app.router.add_post("/blackhole", blackhole)
    app.router.add_post("/restore", restore)
    app.router.add_post("/latency", latency)
    app.router.add_post("/bandwidth", bandwidth)
    return app
