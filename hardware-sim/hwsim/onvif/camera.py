"""A simulated ONVIF camera: device, media and events services over real HTTP.

One :class:`SimCamera` listens on one loopback port and answers the SOAP operations a
client uses to identify a camera and follow its events:

* device: GetSystemDateAndTime (no authentication, per ONVIF Core), GetServices,
  GetCapabilities, GetDeviceInformation
* media (ver10): GetProfiles, GetStreamUri, GetSnapshotUri
* events: GetEventProperties, CreatePullPointSubscription; on the subscription address:
  PullMessages, Renew, Unsubscribe, SetSynchronizationPoint
* ``GET /onvif/snapshot.jpg`` with HTTP digest or basic authentication

Everything but GetSystemDateAndTime needs a WS-UsernameToken checked against the camera's
own clock (``clock_offset`` seconds from the host clock). Faults are injected at run time
through the Python API (and the control endpoint of :mod:`hwsim.onvif.server`): wrong
password, SOAP faults for an operation, slow replies, expired subscriptions, a reboot,
power off/on.

Personalities (``PERSONALITIES``, chosen per camera with ``personality = "a,b"``) reproduce
what real cameras do and the gateway must cope with: no events service, authentication
demanded even on GetSystemDateAndTime, Basic-only snapshots, an account locked after a
few refused logins, a slow boot (HTTP 503 for a while after a reboot). Every refused login
(a request that carried credentials the camera did not accept) is counted in
``refused_logins``; ``status()`` and the control endpoint show it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hwsim.onvif import soap
from hwsim.onvif.jpeg import flat_jpeg
from hwsim.onvif.soap import NS, SoapError, esc

log = logging.getLogger("hwsim.onvif")

EVENTS_NS = NS["tev"]
QUEUE_LIMIT = 1000  # per subscription; older messages are dropped and counted
MAX_PULL_WAIT = 60.0


@dataclass
class ScriptStep:
    at: float  # seconds after the first subscription
    topic: str
    data: dict[str, str] = field(default_factory=dict)
    source: dict[str, str] = field(default_factory=dict)
    key: dict[str, str] = field(default_factory=dict)


@dataclass
class CameraConfig:
    name: str = "cam"
    host: str = "127.0.0.1"
    port: int = 0  # 0 = pick a free port
    username: str = "admin"
    password: str = "admin"
    clock_offset: float = 0.0  # camera clock minus host clock, seconds
    max_skew: float = 120.0  # accepted |Created - camera clock|
    manufacturer: str = "SimVision"
    model: str = "SV-100"
    firmware: str = "1.0.0"
    serial: str = ""
    hardware: str = "SV100-HW1"
    location: str = "lab"
    snapshot_auth: str = "digest"  # "digest" | "basic" | "none"
    uri_credentials: bool = False  # embed user:password@ in URIs (as some cameras do)
    get_services: bool = True  # False: GetServices answers ActionNotSupported
    subscription_default: float = 60.0  # seconds when the client asks for none
    initial_states: bool = True  # send Initialized property states on subscribe
    brightness: int = 128
    events_service: bool = True  # False: no events service (not in GetServices/GetCapabilities)
    auth_everything: bool = False  # GetSystemDateAndTime needs a UsernameToken as well
    lockout_after: int = 0  # refused logins in a row that lock the account (0 = never)
    lockout_seconds: float = 600.0  # how long a locked account refuses even the right password
    boot_time: float = 0.0  # after a reboot or power-on, SOAP answers HTTP 503 this long
    discovery_variant: str = "standard"  # WS-Discovery reply shape (hwsim.onvif.discovery)
    personality: str = ""  # comma-separated names of PERSONALITIES (already applied)
    script: list[ScriptStep] = field(default_factory=list)


# Named presets of CameraConfig fields; explicit fields of a camera override them.
PERSONALITIES: dict[str, dict[str, Any]] = {
    "standard": {},
    "no-events": {"events_service": False},
    "auth-everything": {"auth_everything": True},
    "basic-snapshots": {"snapshot_auth": "basic"},
    "lockout": {"lockout_after": 3, "lockout_seconds": 600.0},
    "slow-boot": {"boot_time": 8.0},
    "probe-unwrapped": {"discovery_variant": "unwrapped"},
}


def personality_fields(names: str | list[str]) -> dict[str, Any]:
    """The CameraConfig fields of one or more personalities (``"lockout,slow-boot"``)."""
    items = names.split(",") if isinstance(names, str) else list(names)
    out: dict[str, Any] = {}
    for raw in items:
        name = raw.strip()
        if not name:
            continue
        if name not in PERSONALITIES:
            raise ValueError(f"unknown personality {name!r}: expected one of {sorted(PERSONALITIES)}")
        out |= PERSONALITIES[name]
    return out


@dataclass
class Subscription:
    sid: str
    expires: float  # camera clock
    queue: deque[bytes] = field(default_factory=deque)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0
    alive: bool = True


@dataclass
class Faults:
    soap_faults: dict[str, int] = field(default_factory=dict)  # operation -> remaining (-1 = all)
    delay: float = 0.0
    delay_ops: frozenset[str] = frozenset()  # empty = every operation
    delay_count: int = -1


class SimCamera:
    """One simulated camera. ``await start()`` / ``await stop()``; or ``async with``."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        self.port = config.port
        self.uuid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"hwsim-onvif:{config.name}"))
        self.subscriptions: dict[str, Subscription] = {}
        self.faults = Faults()
        self.properties: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[dict[str, str], dict[str, str]]] = {}
        self.requests: dict[str, int] = {}
        self.auth_failures = 0  # every request refused for want of valid credentials
        self.refused_logins = 0  # of those, the ones that carried credentials (login attempts)
        self.failed_in_row = 0
        self.locked_until = 0.0  # monotonic; account locked (lockout personality)
        self.booted_at = 0.0  # monotonic time the HTTP service last came up
        self.events_sent = 0
        self.boots = 1
        self.snapshots = 0
        self._nonces: dict[bytes, float] = {}
        self._digest_nonces: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._script_task: asyncio.Task[None] | None = None
        self._reboot_task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._sub_changed = asyncio.Event()
        self._inflight: set[asyncio.Task[Any]] = set()
        self._next_sid = 0
        self.up = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SimCamera:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        await self._start_http()
        if self.config.script:
            self._script_task = asyncio.create_task(self._run_script(), name=f"onvif-sim-script-{self.config.name}")

    async def stop(self) -> None:
        for task in (self._script_task, self._reboot_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._script_task = self._reboot_task = None
        await self._stop_http()

    async def _start_http(self) -> None:
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_post("/onvif/{service}", self._handle_soap)
        app.router.add_post("/onvif/pullpoint/{sid}", self._handle_soap)
        app.router.add_get("/onvif/snapshot.jpg", self._handle_snapshot)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = int(runner.addresses[0][1])
        self._runner = runner
        self.up = True
        self.booted_at = time.monotonic()
        log.info("camera %s listening on %s:%d", self.config.name, self.config.host, self.port)

    async def _stop_http(self) -> None:
        self.up = False
        self._kill_subscriptions()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            # requests still being answered (slow-reply faults, long polls) end with the "power"
            for task in list(self._inflight):
                task.cancel()
            await runner.cleanup()
            if self._inflight:
                await asyncio.wait(list(self._inflight), timeout=1.0)
            for _ in range(3):
                await asyncio.sleep(0)

    # ------------------------------------------------------------------ helpers

    @property
    def base(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def camera_now(self) -> float:
        return time.time() + self.config.clock_offset

    def _with_credentials(self, url: str) -> str:
        if not self.config.uri_credentials:
            return url
        scheme, rest = url.split("://", 1)
        return f"{scheme}://{self.config.username}:{self.config.password}@{rest}"

    def _kill_subscriptions(self) -> None:
        for sub in self.subscriptions.values():
            sub.alive = False
            sub.wakeup.set()
        self.subscriptions.clear()

    # ------------------------------------------------------------------ fault API

    def set_password(self, password: str) -> None:
        self.config.password = password

    def inject_fault(self, operation: str, count: int = 1) -> None:
        """Answer ``operation`` with a Receiver SOAP fault ``count`` times (-1: until cleared)."""
        self.faults.soap_faults[operation] = count

    def set_delay(self, seconds: float, operations: list[str] | None = None, count: int = -1) -> None:
        self.faults.delay = seconds
        self.faults.delay_ops = frozenset(operations or ())
        self.faults.delay_count = count

    def clear_faults(self) -> None:
        self.faults = Faults()

    def expire_subscriptions(self) -> int:
        """Forget every subscription, as a camera does when their time ran out."""
        n = len(self.subscriptions)
        self._kill_subscriptions()
        return n

    async def reboot(self, downtime: float = 1.0) -> None:
        """Drop off the network for ``downtime`` seconds, then come back with no
        subscriptions and no event state (like a power cycle)."""
        await self._stop_http()
        self.properties.clear()
        self._nonces.clear()
        await asyncio.sleep(downtime)
        self.boots += 1
        await self._start_http()

    async def power(self, on: bool) -> None:
        """Switch the camera off (port closed, state lost) or on again (a boot)."""
        if on and not self.up:
            self.boots += 1
            await self._start_http()
        elif not on and self.up:
            await self._stop_http()
            self.properties.clear()
            self._nonces.clear()

    @property
    def booting(self) -> bool:
        return self.boots > 1 and time.monotonic() - self.booted_at < self.config.boot_time

    @property
    def locked(self) -> bool:
        return time.monotonic() < self.locked_until

    def _login_refused(self, carried_credentials: bool) -> None:
        self.auth_failures += 1
        if not carried_credentials:
            return
        self.refused_logins += 1
        self.failed_in_row += 1
        n = self.config.lockout_after
        if n > 0 and self.failed_in_row >= n and not self.locked:
            self.locked_until = time.monotonic() + self.config.lockout_seconds
            log.info("camera %s: account locked after %d refused logins", self.config.name, self.failed_in_row)

    def _login_ok(self) -> None:
        self.failed_in_row = 0

    def unlock(self) -> None:
        self.locked_until = 0.0
        self.failed_in_row = 0

    def reboot_later(self, downtime: float = 1.0) -> None:
        if self._reboot_task is None or self._reboot_task.done():
            self._reboot_task = asyncio.create_task(self.reboot(downtime), name=f"onvif-sim-reboot-{self.config.name}")

    async def wait_subscribed(self, count: int = 1) -> None:
        """Wait until at least ``count`` live subscriptions exist (wrap in asyncio.timeout)."""
        while sum(1 for s in self.subscriptions.values() if s.alive) < count:
            self._sub_changed.clear()
            await self._sub_changed.wait()

    def status(self) -> dict[str, Any]:
        return {
            "name": self.config.name,
            "port": self.port,
            "up": self.up,
            "boots": self.boots,
            "subscriptions": len(self.subscriptions),
            "queued": sum(len(s.queue) for s in self.subscriptions.values()),
            "dropped": sum(s.dropped for s in self.subscriptions.values()),
            "events_sent": self.events_sent,
            "auth_failures": self.auth_failures,
            "refused_logins": self.refused_logins,
            "locked": self.locked,
            "booting": self.booting,
            "personality": self.config.personality,
            "snapshots": self.snapshots,
            "requests": dict(self.requests),
        }

    # ------------------------------------------------------------------ events

    def push_event(
        self,
        topic: str,
        data: dict[str, str] | None = None,
        source: dict[str, str] | None = None,
        key: dict[str, str] | None = None,
        operation: str = "Changed",
    ) -> int:
        """Queue a notification for every live subscription; returns how many got it."""
        data = {k: str(v) for k, v in (data or {}).items()}
        source = {k: str(v) for k, v in (source or {}).items()}
        key = dict(key or {})
        prop = (topic, tuple(sorted(source.items())))
        self.properties[prop] = (data, key)
        xml = self._notification(topic, data, source, key, operation)
        delivered = 0
        for sub in self.subscriptions.values():
            if sub.alive:
                self._enqueue(sub, xml)
                delivered += 1
        self.events_sent += 1
        return delivered

    def _enqueue(self, sub: Subscription, xml: bytes) -> None:
        if len(sub.queue) >= QUEUE_LIMIT:
            sub.queue.popleft()
            sub.dropped += 1
        sub.queue.append(xml)
        sub.wakeup.set()

    def _notification(
        self, topic: str, data: dict[str, str], source: dict[str, str], key: dict[str, str], operation: str
    ) -> bytes:
        def items(tag: str, values: dict[str, str]) -> str:
            if not values:
                return ""
            inner = "".join(f'<tt:SimpleItem Name="{esc(k)}" Value="{esc(v)}"/>' for k, v in values.items())
            return f"<tt:{tag}>{inner}</tt:{tag}>"

        return (
            "<wsnt:NotificationMessage>"
            '<wsnt:Topic Dialect="http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet">'
            f"{esc(topic)}</wsnt:Topic>"
            f'<wsnt:Message><tt:Message UtcTime="{soap.iso(self.camera_now())}" '
            f'PropertyOperation="{esc(operation)}">'
            f"{items('Source', source)}{items('Key', key)}{items('Data', data)}"
            "</tt:Message></wsnt:Message></wsnt:NotificationMessage>"
        ).encode()

    async def _run_script(self) -> None:
        await self._subscribed.wait()
        started = time.monotonic()
        for step in sorted(self.config.script, key=lambda s: s.at):
            delay = step.at - (time.monotonic() - started)
            if delay > 0:
                await asyncio.sleep(delay)
            self.push_event(step.topic, step.data, step.source, step.key)

    # ------------------------------------------------------------------ HTTP handlers

    async def _handle_soap(self, request: web.Request) -> web.Response:
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
            task.add_done_callback(self._inflight.discard)
        body = await request.read()
        if self.booting:  # the web server is up, the ONVIF services are not yet
            return web.Response(status=503, text="booting", headers={"Retry-After": "5"})
        try:
            req = soap.parse_request(body)
        except SoapError as err:
            return self._fault_response(err)
        op = req.operation
        self.requests[op] = self.requests.get(op, 0) + 1
        f = self.faults
        if f.delay > 0 and f.delay_count != 0 and (not f.delay_ops or op in f.delay_ops):
            if f.delay_count > 0:
                f.delay_count -= 1
            await asyncio.sleep(f.delay)
        service = request.match_info.get("service", "")
        if not self.config.events_service and (service == "events_service" or "sid" in request.match_info):
            return web.Response(status=404, text="no such service")
        try:
            if op != "GetSystemDateAndTime" or self.config.auth_everything:
                self._authenticate(req)
            remaining = f.soap_faults.get(op, 0)
            if remaining:
                if remaining > 0:
                    f.soap_faults[op] = remaining - 1
                raise SoapError("Receiver", "ter:Action", f"injected fault for {op}")
            handler = getattr(self, f"_op_{op}", None)
            if handler is None:
                raise SoapError("Receiver", "ter:ActionNotSupported", f"{op} is not supported")
            sid = request.match_info.get("sid")
            payload: bytes = await handler(req, sid)
        except SoapError as err:
            return self._fault_response(err)
        return web.Response(body=payload, content_type="application/soap+xml", charset="utf-8")

    def _authenticate(self, req: soap.Request) -> None:
        carried = req.header is not None and req.header.find(f"{{{NS['wsse']}}}Security") is not None
        try:
            if carried and self.locked:
                raise soap.not_authorized("account locked after repeated failed logins")
            soap.verify_token(
                soap.extract_token(req.header),
                {self.config.username: self.config.password},
                self.camera_now(),
                self.config.max_skew,
                self._nonces,
            )
        except SoapError:
            self._login_refused(carried)
            raise
        self._login_ok()

    def _fault_response(self, err: SoapError) -> web.Response:
        return web.Response(
            status=err.http_status, body=soap.fault(err), content_type="application/soap+xml", charset="utf-8"
        )

    # device service ---------------------------------------------------------

    async def _op_GetSystemDateAndTime(self, req: soap.Request, sid: str | None) -> bytes:
        t = time.gmtime(self.camera_now())
        return soap.envelope(
            "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
            "<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false</tt:DaylightSavings>"
            "<tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone><tt:UTCDateTime>"
            f"<tt:Time><tt:Hour>{t.tm_hour}</tt:Hour><tt:Minute>{t.tm_min}</tt:Minute>"
            f"<tt:Second>{t.tm_sec}</tt:Second></tt:Time>"
            f"<tt:Date><tt:Year>{t.tm_year}</tt:Year><tt:Month>{t.tm_mon}</tt:Month>"
            f"<tt:Day>{t.tm_mday}</tt:Day></tt:Date>"
            "</tt:UTCDateTime></tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
        )

    async def _op_GetServices(self, req: soap.Request, sid: str | None) -> bytes:
        if not self.config.get_services:
            raise SoapError("Receiver", "ter:ActionNotSupported", "GetServices is not supported")
        services = [
            (NS["tds"], "/onvif/device_service", 2, 60),
            (NS["trt"], "/onvif/media_service", 2, 60),
        ]
        if self.config.events_service:
            services.append((NS["tev"], "/onvif/events_service", 2, 60))
        rows = "".join(
            f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{self.base}{path}</tds:XAddr>"
            f"<tds:Version><tt:Major>{major}</tt:Major><tt:Minor>{minor}</tt:Minor></tds:Version></tds:Service>"
            for ns, path, major, minor in services
        )
        return soap.envelope(f"<tds:GetServicesResponse>{rows}</tds:GetServicesResponse>")

    async def _op_GetCapabilities(self, req: soap.Request, sid: str | None) -> bytes:
        b = self.base
        events = ""
        if self.config.events_service:
            events = (
                f"<tt:Events><tt:XAddr>{b}/onvif/events_service</tt:XAddr>"
                "<tt:WSSubscriptionPolicySupport>false</tt:WSSubscriptionPolicySupport>"
                "<tt:WSPullPointSupport>true</tt:WSPullPointSupport>"
                "<tt:WSPausableSubscriptionManagerInterfaceSupport>false"
                "</tt:WSPausableSubscriptionManagerInterfaceSupport></tt:Events>"
            )
        return soap.envelope(
            "<tds:GetCapabilitiesResponse><tds:Capabilities>"
            f"<tt:Device><tt:XAddr>{b}/onvif/device_service</tt:XAddr></tt:Device>"
            f"{events}"
            f"<tt:Media><tt:XAddr>{b}/onvif/media_service</tt:XAddr>"
            "<tt:StreamingCapabilities><tt:RTPMulticast>false</tt:RTPMulticast>"
            "<tt:RTP_TCP>true</tt:RTP_TCP><tt:RTP_RTSP_TCP>true</tt:RTP_RTSP_TCP>"
            "</tt:StreamingCapabilities></tt:Media>"
            "</tds:Capabilities></tds:GetCapabilitiesResponse>"
        )

    async def _op_GetDeviceInformation(self, req: soap.Request, sid: str | None) -> bytes:
        c = self.config
        serial = c.serial or f"SIM{int(hashlib.sha1(c.name.encode()).hexdigest()[:8], 16):010d}"
        return soap.envelope(
            "<tds:GetDeviceInformationResponse>"
            f"<tds:Manufacturer>{esc(c.manufacturer)}</tds:Manufacturer><tds:Model>{esc(c.model)}</tds:Model>"
            f"<tds:FirmwareVersion>{esc(c.firmware)}</tds:FirmwareVersion>"
            f"<tds:SerialNumber>{esc(serial)}</tds:SerialNumber><tds:HardwareId>{esc(c.hardware)}</tds:HardwareId>"
            "</tds:GetDeviceInformationResponse>"
        )

    # media service ----------------------------------------------------------

    async def _op_GetProfiles(self, req: soap.Request, sid: str | None) -> bytes:
        profiles = "".join(
            f'<trt:Profiles token="{tok}" fixed="true"><tt:Name>{name}</tt:Name>'
            '<tt:VideoSourceConfiguration token="vsc_1"><tt:Name>vsc</tt:Name><tt:UseCount>2</tt:UseCount>'
            '<tt:SourceToken>vs_1</tt:SourceToken><tt:Bounds x="0" y="0" width="1920" height="1080"/>'
            "</tt:VideoSourceConfiguration></trt:Profiles>"
            for tok, name in (("profile_main", "mainStream"), ("profile_sub", "subStream"))
        )
        return soap.envelope(f"<trt:GetProfilesResponse>{profiles}</trt:GetProfilesResponse>")

    def _profile_token(self, req: soap.Request) -> str:
        el = req.body.find(f"{{{NS['trt']}}}ProfileToken")
        token = (el.text or "").strip() if el is not None else ""
        if token not in ("profile_main", "profile_sub"):
            raise SoapError("Sender", "ter:InvalidArgVal", f"no profile {token!r}")
        return token

    def _media_uri(self, uri: str) -> str:
        return (
            f"<trt:MediaUri><tt:Uri>{esc(uri)}</tt:Uri><tt:InvalidAfterConnect>false</tt:InvalidAfterConnect>"
            "<tt:InvalidAfterReboot>false</tt:InvalidAfterReboot><tt:Timeout>PT0S</tt:Timeout></trt:MediaUri>"
        )

    async def _op_GetStreamUri(self, req: soap.Request, sid: str | None) -> bytes:
        token = self._profile_token(req)
        channel = "101" if token == "profile_main" else "102"
        uri = self._with_credentials(f"rtsp://{self.config.host}:{self.port}/Streaming/Channels/{channel}")
        return soap.envelope(f"<trt:GetStreamUriResponse>{self._media_uri(uri)}</trt:GetStreamUriResponse>")

    async def _op_GetSnapshotUri(self, req: soap.Request, sid: str | None) -> bytes:
        self._profile_token(req)
        uri = self._with_credentials(f"{self.base}/onvif/snapshot.jpg")
        return soap.envelope(f"<trt:GetSnapshotUriResponse>{self._media_uri(uri)}</trt:GetSnapshotUriResponse>")

    # events service ---------------------------------------------------------

    async def _op_GetEventProperties(self, req: soap.Request, sid: str | None) -> bytes:
        return soap.envelope(
            "<tev:GetEventPropertiesResponse>"
            "<tev:TopicNamespaceLocation>http://www.onvif.org/onvif/ver10/topics/topicns.xml"
            "</tev:TopicNamespaceLocation><wsnt:FixedTopicSet>true</wsnt:FixedTopicSet>"
            "<tev:TopicSet/>"
            "<tev:TopicExpressionDialect>http://www.onvif.org/ver10/tev/topicExpression/ConcreteSet"
            "</tev:TopicExpressionDialect>"
            "<tev:MessageContentFilterDialect>http://www.onvif.org/ver10/tev/messageContentFilter/ItemFilter"
            "</tev:MessageContentFilterDialect>"
            "<tev:MessageContentSchemaLocation>http://www.onvif.org/onvif/ver10/schema/onvif.xsd"
            "</tev:MessageContentSchemaLocation></tev:GetEventPropertiesResponse>"
        )

    def _sub_times(self, sub: Subscription) -> str:
        return (
            f"<wsnt:CurrentTime>{soap.iso(self.camera_now())}</wsnt:CurrentTime>"
            f"<wsnt:TerminationTime>{soap.iso(sub.expires)}</wsnt:TerminationTime>"
        )

    async def _op_CreatePullPointSubscription(self, req: soap.Request, sid: str | None) -> bytes:
        now = self.camera_now()
        el = req.body.find(f"{{{NS['tev']}}}InitialTerminationTime")
        try:
            expires = soap.termination_time(el.text if el is not None else None, now, self.config.subscription_default)
        except ValueError as exc:
            raise SoapError("Sender", "wsnt:UnacceptableInitialTerminationTimeFault", str(exc)) from None
        if expires <= now:
            raise SoapError("Sender", "wsnt:UnacceptableInitialTerminationTimeFault", "termination in the past")
        self._next_sid += 1
        new_sid = f"{self.boots}-{self._next_sid}-{secrets.token_hex(4)}"
        sub = Subscription(new_sid, expires)
        if self.config.initial_states:
            for (topic, source), (data, key) in self.properties.items():
                self._enqueue(sub, self._notification(topic, data, dict(source), key, "Initialized"))
        self.subscriptions[new_sid] = sub
        self._subscribed.set()
        self._sub_changed.set()
        return soap.envelope(
            "<tev:CreatePullPointSubscriptionResponse><tev:SubscriptionReference>"
            f"<wsa:Address>{self.base}/onvif/pullpoint/{new_sid}</wsa:Address>"
            f"</tev:SubscriptionReference>{self._sub_times(sub)}</tev:CreatePullPointSubscriptionResponse>",
            action=f"{EVENTS_NS}/EventPortType/CreatePullPointSubscriptionResponse",
        )

    def _subscription(self, sid: str | None) -> Subscription:
        sub = self.subscriptions.get(sid or "")
        if sub is not None and sub.expires < self.camera_now():
            sub.alive = False
            del self.subscriptions[sub.sid]
            sub = None
        if sub is None or not sub.alive:
            raise SoapError("Receiver", "wsrf-rw:ResourceUnknownFault", f"subscription {sid!r} does not exist")
        return sub

    async def _op_PullMessages(self, req: soap.Request, sid: str | None) -> bytes:
        sub = self._subscription(sid)
        t_el = req.body.find(f"{{{NS['tev']}}}Timeout")
        l_el = req.body.find(f"{{{NS['tev']}}}MessageLimit")
        try:
            wait = soap.parse_xs_duration(t_el.text or "") if t_el is not None else 10.0
            limit = int((l_el.text or "").strip()) if l_el is not None else 100
        except ValueError as exc:
            raise SoapError("Sender", "ter:InvalidArgVal", str(exc)) from None
        limit = max(1, min(limit, 1000))
        deadline = time.monotonic() + min(wait, MAX_PULL_WAIT)
        while not sub.queue and sub.alive:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sub.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sub.wakeup.wait(), remaining)
        if not sub.alive:
            raise SoapError("Receiver", "wsrf-rw:ResourceUnknownFault", f"subscription {sid!r} does not exist")
        messages = [sub.queue.popleft() for _ in range(min(limit, len(sub.queue)))]
        return soap.envelope(
            f"<tev:PullMessagesResponse><tev:CurrentTime>{soap.iso(self.camera_now())}</tev:CurrentTime>"
            f"<tev:TerminationTime>{soap.iso(sub.expires)}</tev:TerminationTime>"
            + b"".join(messages).decode()
            + "</tev:PullMessagesResponse>",
            action=f"{EVENTS_NS}/PullPointSubscription/PullMessagesResponse",
        )

    async def _op_Renew(self, req: soap.Request, sid: str | None) -> bytes:
        sub = self._subscription(sid)
        el = req.body.find(f"{{{NS['wsnt']}}}TerminationTime")
        try:
            sub.expires = soap.termination_time(el.text if el is not None else None, self.camera_now(), self.config.subscription_default)
        except ValueError as exc:
            raise SoapError("Sender", "wsnt:UnacceptableTerminationTimeFault", str(exc)) from None
        return soap.envelope(
            f"<wsnt:RenewResponse><wsnt:TerminationTime>{soap.iso(sub.expires)}</wsnt:TerminationTime>"
            f"<wsnt:CurrentTime>{soap.iso(self.camera_now())}</wsnt:CurrentTime></wsnt:RenewResponse>",
            action="http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/RenewResponse",
        )

    async def _op_Unsubscribe(self, req: soap.Request, sid: str | None) -> bytes:
        sub = self._subscription(sid)
        sub.alive = False
        sub.wakeup.set()
        self.subscriptions.pop(sub.sid, None)
        return soap.envelope(
            "<wsnt:UnsubscribeResponse/>",
            action="http://docs.oasis-open.org/wsn/bw-2/SubscriptionManager/UnsubscribeResponse",
        )

    async def _op_SetSynchronizationPoint(self, req: soap.Request, sid: str | None) -> bytes:
        sub = self._subscription(sid)
        for (topic, source), (data, key) in self.properties.items():
            self._enqueue(sub, self._notification(topic, data, dict(source), key, "Initialized"))
        return soap.envelope("<tev:SetSynchronizationPointResponse/>")

    # snapshot ---------------------------------------------------------------

    async def _handle_snapshot(self, request: web.Request) -> web.Response:
        if self.booting:
            return web.Response(status=503, text="booting", headers={"Retry-After": "5"})
        mode = self.config.snapshot_auth
        header = request.headers.get("Authorization", "")
        carried = bool(header)
        if mode == "basic":
            if not self._check_basic(header) or (carried and self.locked):
                self._login_refused(carried)
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="camera"'})
            self._login_ok()
        elif mode == "digest":
            if not self._check_digest(request) or (carried and self.locked):
                # a digest client's first request carries no credentials: that is a
                # challenge, not a refused login
                self._login_refused(carried)
                nonce = secrets.token_hex(16)
                self._digest_nonces[nonce] = time.monotonic()
                if len(self._digest_nonces) > 1024:
                    oldest = sorted(self._digest_nonces, key=self._digest_nonces.__getitem__)[:512]
                    for key in oldest:
                        del self._digest_nonces[key]
                return web.Response(
                    status=401,
                    headers={"WWW-Authenticate": f'Digest realm="camera", qop="auth", nonce="{nonce}", algorithm=MD5'},
                )
            self._login_ok()
        self.snapshots += 1
        image = flat_jpeg(self.config.brightness, f"{self.config.name} #{self.snapshots} {soap.iso(self.camera_now())}")
        return web.Response(body=image, content_type="image/jpeg")

    def _check_basic(self, header: str) -> bool:
        import base64

        if not header.lower().startswith("basic "):
            return False
        try:
            user, _, pw = base64.b64decode(header[6:].strip()).decode("utf-8").partition(":")
        except ValueError:
            return False
        return user == self.config.username and secrets.compare_digest(pw, self.config.password)

    def _check_digest(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.lower().startswith("digest "):
            return False
        params = _parse_auth_params(header[7:])
        nonce = params.get("nonce", "")
        if nonce not in self._digest_nonces or params.get("username") != self.config.username:
            return False
        realm = params.get("realm", "")
        ha1 = hashlib.md5(f"{self.config.username}:{realm}:{self.config.password}".encode()).hexdigest()
        ha2 = hashlib.md5(f"{request.method}:{params.get('uri', '')}".encode()).hexdigest()
        if params.get("qop"):
            expect = f"{ha1}:{nonce}:{params.get('nc', '')}:{params.get('cnonce', '')}:{params['qop']}:{ha2}"
        else:
            expect = f"{ha1}:{nonce}:{ha2}"
        return secrets.compare_digest(hashlib.md5(expect.encode()).hexdigest(), params.get("response", ""))


def _parse_auth_params(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " ,":
            i += 1
        eq = text.find("=", i)
        if eq < 0:
            break
        name = text[i:eq].strip().lower()
        i = eq + 1
        if i < n and text[i] == '"':
            end = text.find('"', i + 1)
            if end < 0:
                end = n
            out[name] = text[i + 1 : end]
            i = end + 1
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            out[name] = text[i:end].strip()
            i = end
    return out


def random_password() -> str:
    return os.urandom(6).hex()
