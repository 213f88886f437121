"""Local data API (aiohttp), bound to 127.0.0.1 by default. Reads are open on the local
interface; anything that writes needs ``Authorization: Bearer <token>`` (constant-time
compare). Documented in ``schema/openapi.json``."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY

from gateway import metrics
from gateway.classes import device_classes
from gateway.supervisor import PointErrors, device_state

if TYPE_CHECKING:
    from gateway.app import GatewayApp

log = logging.getLogger(__name__)
MAX_LIMIT = 10_000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, ensure_ascii=False))


def _problem(status: int, title: str, detail: str = "") -> web.Response:
    body = {"error": title}
    if detail:
        body["detail"] = detail
    return _json(body, status)


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


class ApiServer:
    def __init__(self, app: GatewayApp) -> None:
        self.gw = app
        self.web = web.Application(middlewares=[self._count])
        r = self.web.router
        r.add_get("/api/v1/health", self.health)
        r.add_get("/api/v1/devices", self.devices)
        r.add_get("/api/v1/devices/{id}", self.device)
        r.add_get("/api/v1/devices/{id}/points", self.points)
        r.add_post("/api/v1/devices/{id}/commands", self.command)
        r.add_get("/api/v1/records", self.records)
        r.add_get("/api/v1/classes", self.classes)
        r.add_get("/api/v1/buffer", self.buffer_stats)
        r.add_get("/api/v1/uplinks", self.uplinks)
        r.add_post("/api/v1/reload", self.reload)
        r.add_get("/api/v1/log", self.recent_log)
        r.add_get("/metrics", self.metrics)
        self.runner: web.AppRunner | None = None
        self.port: int | None = None

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        try:
            resp: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:
            metrics.API_REQUESTS.labels(name, str(exc.status)).inc()
            raise
        metrics.API_REQUESTS.labels(name, str(resp.status)).inc()
        return resp

    async def start(self) -> None:
        host, port = split_listen(self.gw.config.model.api.listen)
        self.runner = web.AppRunner(self.web, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        log.info("local API on http://%s:%s", host, self.port)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def _authorized(self, request: web.Request) -> web.Response | None:
        token = self.gw.config.model.api.token
        if token is None:
            return _problem(403, "writes are disabled", "configure [api] token to allow writes")
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            return _problem(401, "unauthorized", "send Authorization: Bearer <token>")
        return None

    # ------------------------------------------------------------------ handlers
    async def health(self, request: web.Request) -> web.Response:
        """Liveness, readiness and status with reasons (``gateway.health``): 200 when
        ready, 503 when not; a ``degraded`` gateway is ready."""
        body = await self.gw.health()
        return _json(body, 200 if body["ready"] else 503)

    def _device_view(self, dev_id: str, errors: Mapping[str, PointErrors]) -> dict[str, Any]:
        g = self.gw
        d = g.config.devices[dev_id]
        tr = g.trackers.get(dev_id)
        pe = errors.get(dev_id)
        state = device_state(tr, pe)
        quality = "good"
        if tr is not None:
            if tr.online is False:
                quality = "stale" if tr.stale_sent else "bad"
            elif state == "misconfigured":
                quality = "bad"
            elif tr.bad_points:
                quality = "uncertain"
        return {
            "id": dev_id,
            "class": d.spec.cls,
            "profile": d.profile.id,
            "vendor": d.profile.vendor,
            "model": d.profile.model,
            "driver": d.profile.driver,
            "bus": d.bus,
            "poll_interval": d.spec.poll_interval,
            "state": state,
            "quality": quality,
            "last_seen": tr.last_seen if tr else None,
            "last_error": tr.last_error if tr else None,
            "point_errors": pe.as_list() if pe is not None else [],
            "notes": _notes(g, d.bus, dev_id),
            "name": d.section.name,
            "location": dict(d.section.location),
        }

    async def devices(self, request: web.Request) -> web.Response:
        cls = request.query.get("class")
        errors = self.gw.point_errors()
        out = [
            self._device_view(i, errors)
            for i, d in self.gw.config.devices.items()
            if cls is None or d.spec.cls == cls
        ]
        return _json({"devices": out})

    async def device(self, request: web.Request) -> web.Response:
        dev_id = request.match_info["id"]
        if dev_id not in self.gw.config.devices:
            return _problem(404, "unknown device", dev_id)
        return _json(self._device_view(dev_id, self.gw.point_errors()))

    async def points(self, request: web.Request) -> web.Response:
        dev_id = request.match_info["id"]
        if dev_id not in self.gw.config.devices:
            return _problem(404, "unknown device", dev_id)
        tr = self.gw.trackers.get(dev_id)
        latest = {
            pt: {"v": v, "q": q, "ts": ts, "u": u, "kind": kind}
            for pt, (v, q, ts, u, kind) in (tr.latest.items() if tr else ())
        }
        return _json({"device": dev_id, "points": latest})

    async def command(self, request: web.Request) -> web.Response:
        denied = self._authorized(request)
        if denied is not None:
            return denied
        dev_id = request.match_info["id"]
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _problem(400, "body is not JSON")
        if not isinstance(body, dict):
            return _problem(400, "body must be a JSON object")
        body = {**body, "device": dev_id}
        assert self.gw.commands is not None
        result = await self.gw.commands.execute(body, source="api")
        status = {"ok": 200, "rejected": 422, "failed": 502, "expired": 410}.get(result["outcome"], 200)
        if result.get("duplicate"):
            status = 200
        return _json(result, status)

    async def records(self, request: web.Request) -> web.Response:
        try:
            after = int(request.query.get("after_seq", "0"))
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            return _problem(400, "after_seq and limit must be integers")
        if after < 0 or not 1 <= limit <= MAX_LIMIT:
            return _problem(400, f"after_seq >= 0 and 1 <= limit <= {MAX_LIMIT}")
        recs = await self.gw.buffer.records_after(after, limit)
        return _json({"records": [r.to_dict() for r in recs], "last_seq": self.gw.buffer.last_seq})

    async def classes(self, request: web.Request) -> web.Response:
        return _json({"classes": {k: v.to_dict() for k, v in device_classes().items()}})

    async def buffer_stats(self, request: web.Request) -> web.Response:
        return _json(await self.gw.buffer.stats())

    async def uplinks(self, request: web.Request) -> web.Response:
        out = []
        for up in self.gw.uplinks:
            try:
                state = dict(up.state())
            except Exception as exc:  # an uplink bug must not break the API
                state = {"error": type(exc).__name__}
            out.append({"name": up.name, **state})
        return _json({"uplinks": out})

    async def reload(self, request: web.Request) -> web.Response:
        denied = self._authorized(request)
        if denied is not None:
            return denied
        result = await self.gw.reload()
        return _json(result, 200 if result["outcome"] == "ok" else 422)

    async def recent_log(self, request: web.Request) -> web.Response:
        from gateway.logbuffer import HANDLER

        return _json({"entries": HANDLER.snapshot()})

    async def metrics(self, request: web.Request) -> web.Response:
        if not self.gw.config.model.metrics.enabled:
            return _problem(404, "metrics disabled")
        data = await metrics.exposition(REGISTRY)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _notes(g: GatewayApp, bus: str, dev_id: str) -> dict[str, str]:
    """What the device's driver learned about it (``Bus.notes``)."""
    runner = g.runners.get(bus)
    if runner is None or runner.bus is None:
        return {}
    try:
        return {str(k): str(v) for k, v in runner.bus.notes(dev_id).items()}
    except Exception:  # a driver bug must not break the API
        log.exception("notes of device %s failed", dev_id)
        return {}
