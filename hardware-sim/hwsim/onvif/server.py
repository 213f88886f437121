"""A group of simulated cameras with a WS-Discovery responder and an HTTP control endpoint.

Simulator file (TOML)::

    [onvif]
    discovery_port = 0          # UDP port of the WS-Discovery responder (0 = free port)
    control_port = 0            # HTTP JSON control endpoint (0 = free port)

    [[cameras]]
    name = "gate-east"
    port = 0
    username = "admin"
    password = "secret"
    clock_offset = 0            # camera clock minus host clock, seconds
    manufacturer = "Hikvision"  # identity answered by GetDeviceInformation
    model = "DS-2CD2T47"
    personality = "lockout,slow-boot"   # presets, see below; explicit keys override them
    lockout_after = 5                   # e.g. lock after 5 refused logins instead of 3
    [[cameras.script]]          # notifications sent after the first subscription
    at = 0.5
    topic = "tns1:VideoSource/MotionAlarm"
    source = { VideoSourceToken = "vs_1" }
    data = { State = "true" }

Personalities (``personality``, comma-separated; ``hwsim onvif --personality NAME``):

=================  ===========================================================================
``standard``       everything ONVIF Profile S/T clients expect (the default)
``no-events``      no events service: GetServices and GetCapabilities do not list it, its
                   address answers HTTP 404
``auth-everything`` GetSystemDateAndTime needs a UsernameToken too (as some firmwares do)
``basic-snapshots`` the snapshot URI answers only HTTP Basic authentication
``lockout``        the account is locked for ``lockout_seconds`` (600) after
                   ``lockout_after`` (3) refused logins in a row; a locked account refuses
                   even the right password
``slow-boot``      after a reboot or power-on the camera answers HTTP 503 for ``boot_time``
                   (8) seconds before its services work
``probe-unwrapped`` WS-Discovery replies with a ProbeMatch not wrapped in ProbeMatches
=================  ===========================================================================

Control endpoint (loopback only, JSON): ``GET /cameras``; ``GET /cameras/{name}`` (status,
with ``refused_logins``: requests that carried credentials the camera refused, and
``auth_failures``: every refused request); ``POST /cameras/{name}/event``
``{topic, data, source, key}``; ``POST /cameras/{name}/fault`` ``{operation, count}`` or
``{delay, operations, count}`` or ``{clear: true}``; ``POST /cameras/{name}/password``
``{password}``; ``POST /cameras/{name}/unlock`` (end a lockout); ``POST
/cameras/{name}/expire``; ``POST /cameras/{name}/reboot`` ``{downtime}``; ``POST
/cameras/{name}/power`` ``{on: false|true}``.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from aiohttp import web

from hwsim.onvif.camera import CameraConfig, ScriptStep, SimCamera, personality_fields
from hwsim.onvif.discovery import DiscoveryServer, Responder

log = logging.getLogger("hwsim.onvif")

_CAMERA_KEYS = {f.name for f in fields(CameraConfig)} - {"script"}


class ConfigError(ValueError):
    pass


def camera_config(data: dict[str, Any], index: int = 0) -> CameraConfig:
    unknown = set(data) - _CAMERA_KEYS - {"script"}
    if unknown:
        raise ConfigError(f"cameras[{index}]: unknown keys {sorted(unknown)}")
    script = []
    for j, step in enumerate(data.get("script", [])):
        try:
            script.append(
                ScriptStep(
                    at=float(step.get("at", 0.0)),
                    topic=str(step["topic"]),
                    data={k: str(v) for k, v in step.get("data", {}).items()},
                    source={k: str(v) for k, v in step.get("source", {}).items()},
                    key={k: str(v) for k, v in step.get("key", {}).items()},
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"cameras[{index}].script[{j}]: {exc}") from None
    explicit = {k: v for k, v in data.items() if k != "script"}
    try:
        kwargs = personality_fields(str(explicit.get("personality", ""))) | explicit
    except ValueError as exc:
        raise ConfigError(f"cameras[{index}].personality: {exc}") from None
    if "name" not in kwargs:
        kwargs["name"] = f"cam{index + 1}"
    return CameraConfig(**kwargs, script=script)


def load_file(path: Path) -> tuple[dict[str, Any], list[CameraConfig]]:
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    cams = [camera_config(c, i) for i, c in enumerate(data.get("cameras", []))]
    return dict(data.get("onvif", {})), cams


class CameraGroup:
    """Cameras + one discovery responder + one control endpoint, in one event loop."""

    def __init__(
        self,
        cameras: list[CameraConfig],
        discovery_port: int | None = 0,
        control_port: int | None = 0,
        host: str = "127.0.0.1",
        multicast: bool = False,
    ) -> None:
        names = [c.name for c in cameras]
        if len(set(names)) != len(names):
            raise ConfigError(f"camera names must be unique: {names}")
        self.cameras = {c.name: SimCamera(c) for c in cameras}
        self.host = host
        self.discovery: DiscoveryServer | None = None
        if discovery_port is not None:
            self.discovery = DiscoveryServer(self._responders, host, discovery_port, multicast)
        self._control_port = control_port
        self._control: web.AppRunner | None = None
        self.control_port: int | None = None

    def __getitem__(self, name: str) -> SimCamera:
        return self.cameras[name]

    def _responders(self) -> list[Responder]:
        out = []
        for cam in self.cameras.values():
            c = cam.config

            def scopes(c: CameraConfig = c) -> list[str]:
                return [
                    "onvif://www.onvif.org/type/video_encoder",
                    "onvif://www.onvif.org/Profile/Streaming",
                    f"onvif://www.onvif.org/name/{c.name}",
                    f"onvif://www.onvif.org/hardware/{c.model}",
                    f"onvif://www.onvif.org/location/{c.location}",
                ]

            def xaddr(cam: SimCamera = cam) -> str:
                return f"{cam.base}/onvif/device_service"

            def up(cam: SimCamera = cam) -> bool:
                return cam.up

            out.append(Responder(f"urn:uuid:{cam.uuid}", xaddr, scopes, up, discovery_variant=c.discovery_variant))
        return out

    async def __aenter__(self) -> CameraGroup:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        try:
            for cam in self.cameras.values():
                await cam.start()
            if self.discovery is not None:
                await self.discovery.start()
            if self._control_port is not None:
                await self._start_control()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._control is not None:
            runner, self._control = self._control, None
            await runner.cleanup()
        if self.discovery is not None:
            await self.discovery.stop()
        for cam in self.cameras.values():
            await cam.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "discovery_port": self.discovery.port if self.discovery else None,
            "control_port": self.control_port,
            "cameras": {n: {"port": c.port, "uuid": c.uuid} for n, c in self.cameras.items()},
        }

    # ------------------------------------------------------------------ control endpoint

    async def _start_control(self) -> None:
        app = web.Application(client_max_size=64 * 1024)
        r = app.router
        r.add_get("/cameras", self._c_list)
        r.add_get("/cameras/{name}", self._c_status)
        r.add_post("/cameras/{name}/event", self._c_event)
        r.add_post("/cameras/{name}/fault", self._c_fault)
        r.add_post("/cameras/{name}/password", self._c_password)
        r.add_post("/cameras/{name}/expire", self._c_expire)
        r.add_post("/cameras/{name}/reboot", self._c_reboot)
        r.add_post("/cameras/{name}/power", self._c_power)
        r.add_post("/cameras/{name}/unlock", self._c_unlock)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._control_port or 0)
        await site.start()
        self.control_port = int(runner.addresses[0][1])
        self._control = runner

    def _cam(self, request: web.Request) -> SimCamera:
        name = request.match_info["name"]
        if name not in self.cameras:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no camera {name!r}"}), content_type="application/json")
        return self.cameras[name]

    @staticmethod
    async def _json(request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            data = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text='{"error": "body is not JSON"}', content_type="application/json") from None
        if not isinstance(data, dict):
            raise web.HTTPBadRequest(text='{"error": "expected a JSON object"}', content_type="application/json")
        return data

    async def _c_list(self, request: web.Request) -> web.Response:
        return web.json_response({n: c.status() for n, c in self.cameras.items()})

    async def _c_status(self, request: web.Request) -> web.Response:
        return web.json_response(self._cam(request).status())

    async def _c_event(self, request: web.Request) -> web.Response:
        cam = self._cam(request)
        body = await self._json(request)
        topic = body.get("topic")
        if not isinstance(topic, str) or not topic:
            raise web.HTTPBadRequest(text='{"error": "topic is required"}', content_type="application/json")
        n = cam.push_event(topic, body.get("data"), body.get("source"), body.get("key"), body.get("operation", "Changed"))
        return web.json_response({"delivered": n})

    async def _c_fault(self, request: web.Request) -> web.Response:
        cam = self._cam(request)
        body = await self._json(request)
        if body.get("clear"):
            cam.clear_faults()
        elif "delay" in body:
            cam.set_delay(float(body["delay"]), body.get("operations"), int(body.get("count", -1)))
        elif "operation" in body:
            cam.inject_fault(str(body["operation"]), int(body.get("count", 1)))
        else:
            raise web.HTTPBadRequest(text='{"error": "expected operation, delay or clear"}', content_type="application/json")
        return web.json_response({"ok": True})

    async def _c_password(self, request: web.Request) -> web.Response:
        cam = self._cam(request)
        body = await self._json(request)
        cam.set_password(str(body.get("password", "")))
        return web.json_response({"ok": True})

    async def _c_expire(self, request: web.Request) -> web.Response:
        return web.json_response({"expired": self._cam(request).expire_subscriptions()})

    async def _c_reboot(self, request: web.Request) -> web.Response:
        cam = self._cam(request)
        body = await self._json(request)
        cam.reboot_later(float(body.get("downtime", 1.0)))
        return web.json_response({"ok": True})

    async def _c_power(self, request: web.Request) -> web.Response:
        cam = self._cam(request)
        body = await self._json(request)
        on = body.get("on")
        if not isinstance(on, bool):
            raise web.HTTPBadRequest(text='{"error": "expected {\\"on\\": true|false}"}', content_type="application/json")
        await cam.power(on)
        return web.json_response({"ok": True, "up": cam.up, "port": cam.port})

    async def _c_unlock(self, request: web.Request) -> web.Response:
        cam = self._cam(request)
        cam.unlock()
        return web.json_response({"ok": True})
