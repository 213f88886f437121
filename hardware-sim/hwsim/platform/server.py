"""The simulated city platform: an aiohttp server (records endpoint + JSON API) and an
MQTT subscriber, both feeding :class:`PlatformStore`.

HTTP:
  POST /v1/gateways/{gw}/records    envelope (JSON, optional Content-Encoding: gzip),
                                    Idempotency-Key header; 200 stored, 409 key already seen
  GET  /api/summary[?gw=]           per-gateway received/unique/duplicates/missing/latency
  GET  /api/faults, POST /api/faults  failure modes (see :class:`Faults`)
  POST /api/commands                {"gw","device","point","value","deadline"?,"id"?} or
                                    {"gw","raw": "<payload text>"}: published on {prefix}/{gw}/cmd
  GET  /api/command-results[?gw=&id=]
  GET  /api/status                  last retained status message per gateway
  GET  /api/latest?gw=[&dev=]       what the platform shows: newest non-event record per device and point
  GET  /api/history?gw=[&dev=&after=SEQ]  every record after a seq, in seq order
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import ssl
import uuid
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from aiohttp import web

from hwsim.platform.store import EnvelopeError, PlatformStore, check_envelope

log = logging.getLogger("hwsim.platform")
_QUIET = logging.getLogger("hwsim.platform.mqtt")
_QUIET.setLevel(logging.ERROR)
_MAX_BODY = 32 * 1024 * 1024


@dataclass
class Faults:
    """Failure modes of the HTTP records endpoint.

    ``fail_ratio`` of requests get ``fail_status`` (with ``Retry-After: retry_after`` when
    set); ``reject_ratio`` get ``reject_status`` (a 4xx: records refused); every answer is
    delayed by ``delay`` seconds. ``mqtt_pause``: the MQTT subscriber stops reading.
    """

    fail_ratio: float = 0.0
    fail_status: int = 503
    retry_after: float | None = None
    reject_ratio: float = 0.0
    reject_status: int = 422
    delay: float = 0.0
    seed: int | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Faults:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        f = cls(**d)
        if not (0 <= f.fail_ratio <= 1 and 0 <= f.reject_ratio <= 1):
            raise ValueError("ratios must be within 0..1")
        if not 500 <= f.fail_status <= 599 and f.fail_status not in (408, 429):
            raise ValueError("fail_status must be 5xx, 408 or 429")
        if not 400 <= f.reject_status <= 499:
            raise ValueError("reject_status must be 4xx")
        if f.delay < 0:
            raise ValueError("delay cannot be negative")
        return f


def decode_body(data: bytes, encoding: str | None) -> Any:
    # aiohttp already undoes Content-Encoding: gzip on requests; MQTT payloads carry no
    # header, so the gzip magic decides.
    if data[:2] == b"\x1f\x8b":
        data = zlib.decompress(data, 31)
    return json.loads(data)


class PlatformSim:
    def __init__(
        self,
        db_path: str | Path,
        *,
        mqtt_host: str | None = None,
        mqtt_port: int = 1883,
        prefix: str = "city",
        http_host: str = "127.0.0.1",
        http_port: int = 0,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        serve_http: bool = True,
    ) -> None:
        self.store = PlatformStore(db_path)
        self.mqtt_host = mqtt_host
        self.mqtt_port = mqtt_port
        self.prefix = prefix
        self.http_host = http_host
        self.http_port = http_port
        self.token = token
        self.ssl_context = ssl_context
        self.serve_http = serve_http
        self.faults = Faults()
        self._rng = random.Random()
        self.requests: dict[int, int] = {}
        self.mqtt_connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._runner: web.AppRunner | None = None
        self._mqtt_task: asyncio.Task[None] | None = None
        self.client_id = f"hwsim-platform-{uuid.uuid4().hex[:8]}"

    @property
    def base_url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.http_host}:{self.http_port}"

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self.serve_http:
            self._runner = web.AppRunner(self.make_app(), access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.http_host, self.http_port, ssl_context=self.ssl_context)
            await site.start()
            self.http_port = self._runner.addresses[0][1]
        if self.mqtt_host:
            self._mqtt_task = asyncio.create_task(self._mqtt_loop())

    async def wait_mqtt(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.mqtt_connected.wait(), timeout)

    async def close(self) -> None:
        if self._mqtt_task is not None:
            self._mqtt_task.cancel()
            await asyncio.gather(self._mqtt_task, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        self.store.close()

    async def __aenter__(self) -> PlatformSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ MQTT side
    async def _mqtt_loop(self) -> None:
        assert self.mqtt_host is not None
        while True:
            client = aiomqtt.Client(
                self.mqtt_host, self.mqtt_port, identifier=self.client_id, clean_session=False,
                logger=_QUIET, timeout=5, keepalive=10, max_queued_incoming_messages=0,
            )
            try:
                async with client:
                    for leaf in ("records", "status", "cmd/result"):
                        await client.subscribe(f"{self.prefix}/+/{leaf}", qos=1)
                    self._client = client
                    self.mqtt_connected.set()
                    async for msg in client.messages:
                        self._on_message(str(msg.topic), msg.payload)
            except aiomqtt.MqttError as exc:
                log.debug("platform mqtt: %s", exc)
            finally:
                self._client = None
                self.mqtt_connected.clear()
            await asyncio.sleep(0.2)

    def _on_message(self, topic: str, payload: Any) -> None:
        data = payload if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
        parts = topic[len(self.prefix) + 1 :].split("/")
        if len(parts) < 2:
            return
        gw, leaf = parts[0], "/".join(parts[1:])
        try:
            if leaf == "records":
                doc = decode_body(bytes(data), None)
                check_envelope(doc, gw)
                self.store.ingest(doc, via="mqtt")
            elif leaf == "status":
                try:
                    body: Any = json.loads(data) if data else None
                except ValueError:
                    body = bytes(data).decode("utf-8", "replace")
                self.store.set_status(gw, body)
            elif leaf == "cmd/result":
                self.store.add_result(gw, json.loads(data))
        except (ValueError, EnvelopeError, zlib.error) as exc:
            log.warning("platform: bad message on %s: %s", topic, exc)
            self.store.note_bad("mqtt", f"{topic}: {exc}")

    async def publish_command(self, gw: str, body: dict[str, Any]) -> dict[str, Any]:
        client = self._client
        if client is None:
            raise RuntimeError("the platform is not connected to the broker")
        if "raw" in body:
            payload = str(body["raw"]).encode()
            cmd = {"id": body.get("id"), "raw": body["raw"]}
        else:
            cmd = {k: v for k, v in body.items() if k != "gw"}
            cmd.setdefault("id", uuid.uuid4().hex)
            payload = json.dumps(cmd).encode()
        self.store.add_command(gw, cmd)
        await client.publish(f"{self.prefix}/{gw}/cmd", payload, qos=1)
        return cmd

    # ------------------------------------------------------------------ HTTP side
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        app.router.add_post("/v1/gateways/{gw}/records", self._records)
        app.router.add_get("/api/summary", self._summary)
        app.router.add_get("/api/faults", self._get_faults)
        app.router.add_post("/api/faults", self._set_faults)
        app.router.add_post("/api/commands", self._commands)
        app.router.add_get("/api/command-results", self._results)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/latest", self._latest)
        app.router.add_get("/api/history", self._history)
        return app

    def _count(self, status: int) -> None:
        self.requests[status] = self.requests.get(status, 0) + 1

    async def _records(self, request: web.Request) -> web.Response:
        f = self.faults
        if f.delay:
            await asyncio.sleep(f.delay)
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            self._count(401)
            return web.json_response({"error": "bad or missing bearer token"}, status=401)
        key = request.headers.get("Idempotency-Key")
        if not key:
            self._count(400)
            return web.json_response({"error": "Idempotency-Key header required"}, status=400)
        roll = self._rng.random()
        if roll < f.fail_ratio:
            self._count(f.fail_status)
            headers = {} if f.retry_after is None else {"Retry-After": str(int(f.retry_after))}
            return web.json_response({"error": "simulated failure"}, status=f.fail_status, headers=headers)
        if self.store.batch_seen(key):
            self._count(409)
            return web.json_response({"status": "duplicate batch"}, status=409)
        gw = request.match_info["gw"]
        try:
            doc = decode_body(await request.read(), request.headers.get("Content-Encoding"))
            check_envelope(doc, gw)
        except (ValueError, EnvelopeError, zlib.error) as exc:
            self.store.note_bad("http", str(exc))
            self._count(400)
            return web.json_response({"error": f"malformed batch: {exc}"}, status=400)
        if self._rng.random() < f.reject_ratio:
            self._count(f.reject_status)
            return web.json_response({"error": "simulated rejection of the records"}, status=f.reject_status)
        n = self.store.ingest(doc, via="http", key=key)
        self._count(200)
        return web.json_response({"stored": n})

    async def _summary(self, request: web.Request) -> web.Response:
        body = self.store.summary(request.query.get("gw"))
        body["requests"] = {str(k): v for k, v in sorted(self.requests.items())}
        return web.json_response(body, dumps=lambda o: json.dumps(o, allow_nan=True))

    async def _get_faults(self, _: web.Request) -> web.Response:
        return web.json_response(asdict(self.faults))

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults = Faults.from_dict(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        if self.faults.seed is not None:
            self._rng.seed(self.faults.seed)
        return web.json_response(asdict(self.faults))

    async def _commands(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            gw = body["gw"]
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": 'expected {"gw": ..., ...}'}, status=400)
        try:
            cmd = await self.publish_command(gw, body)
        except (RuntimeError, aiomqtt.MqttError) as exc:
            return web.json_response({"error": str(exc)}, status=503)
        return web.json_response(cmd)

    async def _results(self, request: web.Request) -> web.Response:
        return web.json_response(self.store.results(request.query.get("gw"), request.query.get("id")))

    async def _status(self, _: web.Request) -> web.Response:
        return web.json_response(self.store.statuses())

    async def _latest(self, request: web.Request) -> web.Response:
        gw = request.query.get("gw")
        if not gw:
            return web.json_response({"error": "give ?gw=GATEWAY (and optionally &dev=DEVICE)"}, status=400)
        return web.json_response(self.store.latest(gw, request.query.get("dev")))

    async def _history(self, request: web.Request) -> web.Response:
        gw = request.query.get("gw")
        try:
            after = int(request.query.get("after", "0"))
        except ValueError:
            after = -1
        if not gw or after < 0:
            return web.json_response({"error": "give ?gw=GATEWAY (and optionally &dev=DEVICE&after=SEQ)"},
                                     status=400)
        return web.json_response(self.store.history(gw, request.query.get("dev"), after))


def server_ssl_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def run_forever(sim: PlatformSim) -> None:
    await sim.start()
    print(json.dumps({"http": sim.base_url if sim.serve_http else None,
                      "mqtt": f"{sim.mqtt_host}:{sim.mqtt_port}" if sim.mqtt_host else None}), flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        with contextlib.suppress(Exception):
            await sim.close()


