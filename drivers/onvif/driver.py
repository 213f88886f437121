"""ONVIF camera driver: identity, stream/snapshot references and events of IP cameras.

Each camera is its own implicit bus (:class:`OnvifBus`): the hub owns one
``onvif.ONVIFCamera`` client, reconnects it after failures and runs a PullPoint loop.

* ``read`` (one per poll): connects when needed -- unauthenticated GetSystemDateAndTime to
  measure the camera clock (WS-UsernameToken digests are then created on the camera's
  clock), GetServices with a GetCapabilities fallback, GetDeviceInformation, GetProfiles,
  GetStreamUri, GetSnapshotUri -- then checks the camera with an authenticated
  GetDeviceInformation and returns the ``info`` points (model, firmware, stream_uri, ...).
  URIs are returned without any credentials a camera may embed in them.
* ``events``: CreatePullPointSubscription, PullMessages in a bounded loop, Renew at 80 % of
  the subscription's lifetime, a new subscription after an expired subscription, a fault or
  a camera reboot. Each notification goes through the pure topic registry
  (:mod:`drivers.onvif.topics`) and the device's topic table (from its profile) to a
  canonical event point. Unknown topics are logged once (with the raw payload) and counted.
* Optional snapshots on event (profile ``[driver] snapshot_on``): the JPEG is fetched with
  digest or basic auth, kept in a local store with retention, and referenced from the
  event's attrs as ``snapshot = "local:<device>/<file>.jpg"``.

Errors: an unreachable camera or a timeout raises ``DeviceUnavailable(timeout|unreachable)``;
a camera that answers but refuses the credentials raises ``DeviceUnavailable("auth")``; a
SOAP fault or an unparsable answer raises ``DriverError(soap_fault|protocol)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from drivers.onvif import metrics, topics, xmlsafe
from drivers.onvif.discovery import DiscoveryError, ProbeMatch, parse_target, probe, xaddr_host_port
from drivers.onvif.snapshots import SnapshotError, SnapshotStore
from gateway.plugin import (
    Bus,
    BusSpec,
    DeviceSpec,
    DeviceUnavailable,
    Driver,
    DriverError,
    PointSpec,
    RawEvent,
    Reading,
    StrictModel,
    return_free_memory,
)
from gateway.types import ByteSize, Duration, Secret

if TYPE_CHECKING:
    from lxml import etree

log = logging.getLogger("drivers.onvif")

INFO_FIELDS = ("stream_uri", "snapshot_uri", "model", "firmware", "manufacturer", "serial", "hardware_id")
NS_EVENTS = "http://www.onvif.org/ver10/events/wsdl"
PULLPOINT_KEY = f"{NS_EVENTS}/PullPointSubscription"
PULL_ACTION = f"{NS_EVENTS}/PullPointSubscription/PullMessagesRequest"
_SOAP_NS = "http://www.w3.org/2003/05/soap-envelope"
MAX_KNOWN_STATES = 256
MAX_LOGGED_TOPICS = 256


# --------------------------------------------------------------------------- schemas


class SnapshotStoreOptions(StrictModel):
    dir: str = "/var/lib/edge-gateway/snapshots"
    keep: int = Field(default=500, ge=1, description="most snapshots kept (all cameras in dir)")
    max_bytes: ByteSize = Field(default=200 * 1024 * 1024, ge=1024)


class CameraAddress(StrictModel):
    """A camera's ``address`` (also its implicit bus options)."""

    host: str = Field(min_length=1)
    port: int = Field(default=80, ge=1, le=65535)
    username: str = ""
    password: Secret = SecretStr("")
    timeout: Duration = Field(default=5.0, gt=0, le=60, description="per request")
    media_profile: str | int = Field(default=0, description="media profile token or index")
    events: bool = True
    subscription: Duration = Field(default=60.0, ge=10, le=86400, description="PullPoint lifetime")
    pull_timeout: Duration = Field(default=5.0, gt=0, le=60, description="PullMessages long-poll")
    message_limit: int = Field(default=50, ge=1, le=1000)
    snapshots: SnapshotStoreOptions = SnapshotStoreOptions()

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if "/" in v or " " in v:
            raise ValueError("expected a host name or IP address (no scheme or path)")
        return v


class OnvifPointAddress(StrictModel):
    """Where a profile point comes from: ``info`` for state points read by polling, or
    ``topic`` (one or several; ``"standard"`` = the registered ONVIF topics of that event)
    for event points pushed by the camera."""

    info: Literal["stream_uri", "snapshot_uri", "model", "firmware", "manufacturer", "serial", "hardware_id"] | None = None
    topic: str | list[str] | None = None
    item: str | None = None
    rule: str | None = None

    @model_validator(mode="after")
    def _check(self) -> OnvifPointAddress:
        if (self.info is None) == (self.topic is None):
            raise ValueError("give exactly one of info (a polled value) or topic (an event topic)")
        if self.topic is not None:
            for t in self.topic_list:
                if t == "standard":
                    continue
                problem = topics.binding_problem(t, self.item)
                if problem:
                    raise ValueError(problem)
        elif self.item is not None or self.rule is not None:
            raise ValueError("item and rule only apply to topic addresses")
        return self

    @property
    def topic_list(self) -> list[str]:
        if self.topic is None:
            return []
        return [self.topic] if isinstance(self.topic, str) else list(self.topic)

    @property
    def push(self) -> bool:
        """True for points the camera pushes (never part of a poll)."""
        return self.topic is not None


class OnvifProfileOptions(StrictModel):
    snapshot_on: list[str] = Field(default_factory=list, description="event points that take a snapshot")
    snapshot_auth: Literal["digest", "basic"] = "digest"
    snapshot_timeout: Duration = Field(default=3.0, gt=0, le=30)
    initial_states: Literal["changes", "all", "none"] = Field(
        default="changes",
        description="Initialized notifications: only those that change a known state, all, or none",
    )


# --------------------------------------------------------------------------- helpers


def strip_credentials(uri: str | None) -> str | None:
    """Remove ``user:password@`` and credential query parameters from a URI."""
    if not uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    query = "&".join(
        q for q in parts.query.split("&") if q and q.split("=", 1)[0].lower() not in ("user", "username", "password", "pass", "pwd")
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _is_auth_fault(exc: BaseException) -> bool:
    from zeep.exceptions import Fault

    if not isinstance(exc, Fault):
        return False
    subcodes = exc.subcodes if isinstance(exc.subcodes, list) else [exc.subcodes]
    parts = [exc.message, exc.code, *(getattr(s, "text", s) for s in subcodes)]
    text = " ".join(str(x) for x in parts if x is not None)
    return "NotAuthorized" in text or "auth" in text.lower() or "Unauthorized" in text


def classify(exc: BaseException) -> DriverError:
    """Map a client-side exception onto the driver's bounded reasons."""
    import aiohttp
    from zeep.exceptions import Fault, TransportError, XMLParseError

    if isinstance(exc, DriverError):
        return exc
    if isinstance(exc, TimeoutError):
        return DeviceUnavailable("timeout", "camera did not answer in time")
    if isinstance(exc, Fault):
        if _is_auth_fault(exc):
            return DeviceUnavailable("auth", f"camera refused the credentials ({exc.message})")
        return DriverError("soap_fault", str(exc.message)[:200])
    if isinstance(exc, aiohttp.ClientConnectorError | ConnectionError | aiohttp.ServerDisconnectedError):
        return DeviceUnavailable("unreachable", str(exc)[:200])
    if isinstance(exc, aiohttp.ClientError | OSError):
        return DeviceUnavailable("unreachable", str(exc)[:200])
    if isinstance(exc, TransportError):
        if getattr(exc, "status_code", 0) in (401, 403):
            return DeviceUnavailable("auth", f"HTTP {exc.status_code}")
        return DriverError("protocol", f"HTTP {getattr(exc, 'status_code', '?')}")
    if isinstance(exc, XMLParseError):
        return DriverError("protocol", f"unparsable answer: {exc}"[:200])
    from onvif.exceptions import ONVIFAuthError, ONVIFError, ONVIFTimeoutError

    if isinstance(exc, ONVIFAuthError):
        return DeviceUnavailable("auth", str(exc)[:200])
    if isinstance(exc, ONVIFTimeoutError):
        return DeviceUnavailable("timeout", str(exc)[:200])
    if isinstance(exc, ONVIFError):
        cause = exc.__cause__
        if cause is not None and cause is not exc:
            return classify(cause)
        return DriverError("protocol", str(exc)[:200])
    return DriverError("protocol", f"{type(exc).__name__}: {exc}"[:200])


@dataclass
class Identity:
    manufacturer: str = ""
    model: str = ""
    firmware: str = ""
    serial: str = ""
    hardware_id: str = ""
    stream_uri: str | None = None
    snapshot_uri: str | None = None
    profile_token: str | None = None

    def values(self) -> dict[str, str | None]:
        return {
            "manufacturer": self.manufacturer,
            "model": self.model,
            "firmware": self.firmware,
            "serial": self.serial,
            "hardware_id": self.hardware_id,
            "stream_uri": self.stream_uri,
            "snapshot_uri": self.snapshot_uri,
        }


class PullFault(Exception):
    """A PullMessages fault or HTTP error; ``reason`` is a bounded label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_pull_response(status: int, content: bytes) -> list[topics.Notification]:
    """Raw PullMessages reply -> notifications, or PullFault (pure)."""
    try:
        root = xmlsafe.parse(content)
    except xmlsafe.MalformedXML as exc:
        raise PullFault("malformed_xml", f"HTTP {status}: {exc}") from None
    fault = root.find(f"{{{_SOAP_NS}}}Body/{{{_SOAP_NS}}}Fault")
    if fault is not None:
        text = " ".join(t.strip() for t in fault.itertext() if t.strip())
        if "ResourceUnknown" in text or "InvalidArgVal" in text or "ResourceNotFound" in text:
            raise PullFault("subscription_gone", text[:200])
        if "NotAuthorized" in text:
            raise PullFault("auth", text[:200])
        raise PullFault("soap_fault", text[:200])
    if status >= 400:
        raise PullFault("http_error", f"HTTP {status}")
    body = root.find(f"{{{_SOAP_NS}}}Body/{{{NS_EVENTS}}}PullMessagesResponse")
    if body is None:
        raise PullFault("protocol", "no PullMessagesResponse in the reply")
    out: list[topics.Notification] = []
    for el in body.iter(f"{{{topics.NS_WSNT}}}NotificationMessage"):
        try:
            out.append(topics.notification_from_element(el))
        except topics.TopicParseError as exc:
            out.append(_broken(exc, el))
    return out


def _broken(exc: topics.TopicParseError, el: etree._Element) -> topics.Notification:
    # keep a malformed notification as a marker so it is counted and logged, not lost
    return topics.Notification(topic="", operation="", utc_time=None, raw=xmlsafe.tostring(el)[:2048], key={"_error": exc.reason})


def build_topic_table(points: Sequence[PointSpec]) -> list[topics.TopicBinding]:
    table: list[topics.TopicBinding] = []
    for p in points:
        addr = p.address
        if not isinstance(addr, OnvifPointAddress) or addr.topic is None:
            continue
        for t in addr.topic_list:
            if t == "standard":
                table.extend(
                    topics.TopicBinding(s.path, p.name, addr.item, addr.rule)
                    for s in topics.REGISTRY
                    if s.kind == p.name
                )
            else:
                table.append(topics.make_binding(t, p.name, addr.item, addr.rule))
    # rule-specific rows first so they win over a catch-all row of the same topic
    table.sort(key=lambda b: b.rule is None)
    return table


def _onvif() -> Any:
    # Imported lazily (about 20 MB with zeep, httpx and requests): a gateway without cameras
    # never pays for it. Importing onvif also patches zeep process-wide.
    import onvif

    return onvif


# Services whose WSDL documents the driver uses (pullpoint and subscription share events').
_DOCUMENT_SERVICES = ("devicemgmt", "media", "events")
_documents_loaded: set[str] = set()
_documents_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None


def _document_lock() -> asyncio.Lock:
    global _documents_lock
    loop = asyncio.get_running_loop()
    if _documents_lock is None or _documents_lock[0] is not loop:
        _documents_lock = (loop, asyncio.Lock())
    return _documents_lock[1]


async def load_documents(wsdl_dir: str) -> None:
    """Parse the WSDL documents the driver needs, once per process and one at a time.

    The client library keeps one parsed document per WSDL file (about 17 MB for the
    device, media and events documents together), but it checks that cache before parsing
    in a worker thread: cameras connecting at the same time each parsed every document,
    several in parallel threads, and the process kept the peak (7-12 MB per camera).
    Creating one throw-away service per document here, under a lock, fills the cache
    before any camera's first service is created.
    """
    if _documents_loaded.issuperset(_DOCUMENT_SERVICES):
        return
    onvif = _onvif()
    async with _document_lock():
        for name in _DOCUMENT_SERVICES:
            if name in _documents_loaded:
                continue
            d = onvif.SERVICES[name]
            svc = onvif.ONVIFService(
                "http://127.0.0.1/onvif/preload",
                "",
                "",
                str(Path(wsdl_dir) / d["wsdl"]),
                no_cache=True,
                binding_name=f"{{{d['ns']}}}{d['binding']}",
            )
            try:
                await svc.setup()  # parses the document in a worker thread, then caches it
            finally:
                await svc.close()
            _documents_loaded.add(name)
        return_free_memory()  # the XSD trees were transient


async def release_service(cam: Any, name: str, port_type: str | None = None) -> None:
    """Close and forget one service client of ``cam`` (its own HTTP session, connection
    pool and two zeep clients); the library creates it again when it is next needed."""
    svc = cam.services.pop((name, port_type), None)
    if svc is not None:
        with contextlib.suppress(Exception):
            await svc.close()


# --------------------------------------------------------------------------- bus


class OnvifBus(Bus):
    """One camera."""

    def __init__(self, spec: BusSpec) -> None:
        super().__init__(spec)
        self.opts: CameraAddress = spec.options
        self.device: DeviceSpec | None = None
        self.identity: Identity | None = None
        self.skew: float = 0.0
        self._cam: Any = None
        self._generation = 0
        self._lock = asyncio.Lock()
        self._closed = False
        self._table: list[topics.TopicBinding] = []
        self._known: dict[tuple[str, str], bool] = {}
        self._logged_topics: set[str] = set()
        self._logged_skew = False
        self._store: SnapshotStore | None = None
        self._pull_service: Any = None
        self._sub_service: Any = None
        self._events_wakeup = asyncio.Event()
        self._checked_gen = -1

    # ------------------------------------------------------------------ plumbing

    def attach(self, device: DeviceSpec) -> None:
        if self.device is not None and self.device.id != device.id:
            raise DriverError("config", f"camera bus {self.spec.name} already serves {self.device.id}")
        self.device = device
        self._table = build_topic_table(device.points)
        opts = device.options if isinstance(device.options, OnvifProfileOptions) else OnvifProfileOptions()
        if opts.snapshot_on:
            s = self.opts.snapshots
            self._store = SnapshotStore.shared(Path(s.dir), s.keep, s.max_bytes)
        self._events_wakeup.set()

    @property
    def profile_options(self) -> OnvifProfileOptions:
        if self.device is not None and isinstance(self.device.options, OnvifProfileOptions):
            return self.device.options
        return OnvifProfileOptions()

    def requests_per_poll(self, device: DeviceSpec) -> int:
        return 1

    async def open(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        self._events_wakeup.set()
        sub = self._sub_service
        self._sub_service = None
        if sub is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(2.0, self.opts.timeout)):
                    await sub.Unsubscribe()
        await self._drop(self._generation)

    async def _drop(self, generation: int) -> None:
        """Forget the client of ``generation`` (no-op when another task reconnected)."""
        if generation != self._generation or self._cam is None:
            return
        cam, self._cam = self._cam, None
        self._pull_service = self._sub_service = None
        self._generation += 1
        with contextlib.suppress(Exception):
            await cam.close()

    async def _client(self) -> tuple[Any, int]:
        """The connected camera client, connecting first when needed."""
        async with self._lock:
            if self._closed:
                raise DeviceUnavailable("closed", "bus is closed")
            if self._cam is None:
                await self._connect()
            return self._cam, self._generation

    async def _connect(self) -> None:
        onvif = _onvif()
        o = self.opts
        cam = onvif.ONVIFCamera(
            o.host,
            o.port,
            o.username,
            o.password.get_secret_value(),
            no_cache=True,
            adjust_time=True,
        )
        try:
            await load_documents(cam.wsdl_dir)
            async with asyncio.timeout(o.timeout * 3):
                await cam.update_xaddrs()  # GetSystemDateAndTime, GetServices | GetCapabilities
            diff = cam.dt_diff
            self.skew = diff.total_seconds() if isinstance(diff, dt.timedelta) else 0.0
            metrics.CLOCK_SKEW.labels(self.spec.name).set(self.skew)
            if abs(self.skew) > 5 and not self._logged_skew:
                self._logged_skew = True
                log.warning(
                    "camera %s: clock is %+.0f s off the gateway's; requests are signed on the "
                    "camera's clock (set NTP on the camera)",
                    self.spec.name,
                    self.skew,
                )
            async with asyncio.timeout(o.timeout * 2):
                devicemgmt = await cam.create_devicemgmt_service()
                info = await devicemgmt.GetDeviceInformation()
            ident = Identity(
                manufacturer=str(info.Manufacturer or ""),
                model=str(info.Model or ""),
                firmware=str(info.FirmwareVersion or ""),
                serial=str(info.SerialNumber or ""),
                hardware_id=str(info.HardwareId or ""),
            )
            await self._media(cam, ident)
            await release_service(cam, "media")  # only needed again for a snapshot URI
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await cam.close()
            if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                raise
            raise classify(exc) from exc
        self._cam = cam
        self._generation += 1
        self.identity = ident
        log.info(
            "camera %s: connected (%s %s, firmware %s)", self.spec.name, ident.manufacturer, ident.model, ident.firmware
        )

    async def _media(self, cam: Any, ident: Identity) -> None:
        from zeep.exceptions import Fault

        o = self.opts
        try:
            async with asyncio.timeout(o.timeout * 2):
                media = await cam.create_media_service()
                profiles = await media.GetProfiles()
        except Fault as exc:
            if _is_auth_fault(exc):
                raise
            log.warning("camera %s: no media profiles (%s)", self.spec.name, exc.message)
            return
        except Exception as exc:
            from onvif.exceptions import ONVIFError

            if isinstance(exc, ONVIFError) and "doesn`t support service" in str(exc):
                return  # camera without a media service (e.g. an I/O box)
            raise
        tokens = [p.token for p in profiles or []]
        if not tokens:
            return
        want = o.media_profile
        if isinstance(want, int):
            token = tokens[min(want, len(tokens) - 1)]
        elif want in tokens:
            token = want
        else:
            raise DriverError("config", f"media profile {want!r} not on the camera (has {tokens})")
        ident.profile_token = token
        async with asyncio.timeout(o.timeout * 2):
            try:
                r = await media.GetStreamUri(
                    {"StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}, "ProfileToken": token}
                )
                ident.stream_uri = strip_credentials(str(r.Uri))
            except Fault as exc:
                if _is_auth_fault(exc):
                    raise
                log.warning("camera %s: GetStreamUri failed: %s", self.spec.name, exc.message)
            try:
                s = await media.GetSnapshotUri({"ProfileToken": token})
                ident.snapshot_uri = strip_credentials(str(s.Uri))
            except Fault as exc:
                if _is_auth_fault(exc):
                    raise
                log.info("camera %s: no snapshot URI: %s", self.spec.name, exc.message)

    # ------------------------------------------------------------------ polling

    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        cam, gen = await self._client()
        if self._checked_gen == gen:  # connected at an earlier poll: check it still answers
            try:
                async with asyncio.timeout(self.opts.timeout):
                    devicemgmt = await cam.create_devicemgmt_service()
                    info = await devicemgmt.GetDeviceInformation()
                assert self.identity is not None
                self.identity.firmware = str(info.FirmwareVersion or self.identity.firmware)
            except Exception as exc:
                err = classify(exc)
                await self._drop(gen)
                raise err from exc
        self._checked_gen = gen
        values = self.identity.values() if self.identity else {}
        reading = Reading(tsd=round(time.time() + self.skew, 3), requests=1)
        for p in points:
            addr = p.address
            if not isinstance(addr, OnvifPointAddress) or addr.info is None:
                continue  # pushed by events
            v = values.get(addr.info)
            if v is None or v == "":
                reading.errors[p.name] = "not_provided"
            else:
                reading.values[p.name] = v
        return reading

    # ------------------------------------------------------------------ events

    def events(self) -> AsyncIterator[RawEvent] | None:
        if not self.opts.events:
            return None
        return self._event_loop()

    async def _event_loop(self) -> AsyncIterator[RawEvent]:
        backoff = 1.0
        reason = "start"
        while not self._closed:
            if self.device is None or not self._table:
                self._events_wakeup.clear()
                await self._events_wakeup.wait()  # attach() or close() wakes us
                continue
            try:
                gen = await self._subscribe(reason)
            except DriverError as err:
                log.debug("camera %s: cannot subscribe: %s", self.spec.name, err)
                await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
                backoff = min(backoff * 2, 30.0)
                reason = "reconnect"
                continue
            backoff = 1.0
            async for event in self._pull(gen):
                yield event
            reason = self._last_end_reason

    async def _subscribe(self, reason: str) -> int:
        cam, gen = await self._client()
        o = self.opts
        try:
            async with asyncio.timeout(o.timeout * 2):
                events = await cam.create_events_service()
                res = await events.CreatePullPointSubscription({"InitialTerminationTime": f"PT{int(o.subscription)}S"})
                address = res.SubscriptionReference.Address._value_1
                cam.xaddrs[PULLPOINT_KEY] = cam.rewrite_url(str(address).strip())
                self._pull_service = await cam.create_pullpoint_service()
                self._sub_service = await cam.create_subscription_service("PullPointSubscription")
            await release_service(cam, "events")  # only needed again for the next subscription
        except Exception as exc:
            err = classify(exc)
            if isinstance(err, DeviceUnavailable):
                await self._drop(gen)
            raise err from exc
        self._lifetime = self._remaining(res.CurrentTime, res.TerminationTime)
        self._renew_at = time.monotonic() + 0.8 * self._lifetime
        metrics.SUBSCRIPTIONS.labels(self.spec.name, reason).inc()
        log.info("camera %s: PullPoint subscription created (%s)", self.spec.name, reason)
        return gen

    def _remaining(self, current: Any, termination: Any) -> float:
        if isinstance(current, dt.datetime) and isinstance(termination, dt.datetime):
            with contextlib.suppress(TypeError):
                secs = (termination - current).total_seconds()
                if secs >= 5:
                    return secs
        return float(self.opts.subscription)

    _last_end_reason = "error"
    _lifetime = 60.0
    _renew_at = 0.0

    async def _pull(self, gen: int) -> AsyncIterator[RawEvent]:
        failures = 0
        while not self._closed and gen == self._generation:
            if time.monotonic() >= self._renew_at:
                if not await self._renew():
                    self._last_end_reason = "expired"
                    return
            try:
                notes = await self._pull_once()
            except PullFault as fault:
                if self._closed:
                    return
                metrics.PULL_ERRORS.labels(self.spec.name, fault.reason).inc()
                if fault.reason in ("subscription_gone",):
                    log.info("camera %s: subscription gone (%s); subscribing again", self.spec.name, fault.detail)
                    self._last_end_reason = "expired"
                    return
                failures += 1
                log.debug("camera %s: PullMessages failed: %s", self.spec.name, fault)
                if fault.reason in ("unreachable", "timeout", "auth") or failures >= 3:
                    self._last_end_reason = "error"
                    await self._drop(gen)
                    return
                await asyncio.sleep(min(2.0 * failures, 10.0))
                continue
            failures = 0
            for n in notes:
                ev = self._map(n)
                if ev is None:
                    continue
                if ev.value is True and ev.point in self.profile_options.snapshot_on:
                    await self._attach_snapshot(ev)
                yield ev

    async def _pull_once(self) -> list[topics.Notification]:
        svc = self._pull_service
        if svc is None:
            raise PullFault("subscription_gone", "no pull point")
        o = self.opts
        envelope = svc.zeep_client.create_message(
            svc.ws_client, "PullMessages", Timeout=dt.timedelta(seconds=o.pull_timeout), MessageLimit=o.message_limit
        )
        for el in envelope.iter("{http://www.w3.org/2005/08/addressing}To"):
            el.text = svc.xaddr
        headers = {"Content-Type": f'application/soap+xml; charset=utf-8; action="{PULL_ACTION}"'}
        try:
            async with asyncio.timeout(o.pull_timeout + o.timeout):
                resp = await svc.transport.post_xml(svc.xaddr, envelope, headers)
        except Exception as exc:
            err = classify(exc)
            raise PullFault(err.reason, err.detail) from exc
        return parse_pull_response(resp.status_code, resp.content)

    async def _renew(self) -> bool:
        sub = self._sub_service
        if sub is None:
            return False
        try:
            async with asyncio.timeout(self.opts.timeout):
                res = await sub.Renew(f"PT{int(self.opts.subscription)}S")
        except Exception as exc:
            metrics.RENEWALS.labels(self.spec.name, "failed").inc()
            log.info("camera %s: Renew failed (%s); subscribing again", self.spec.name, classify(exc))
            return False
        metrics.RENEWALS.labels(self.spec.name, "ok").inc()
        self._lifetime = self._remaining(getattr(res, "CurrentTime", None), getattr(res, "TerminationTime", None))
        self._renew_at = time.monotonic() + 0.8 * self._lifetime
        return True

    def _map(self, n: topics.Notification) -> RawEvent | None:
        bus = self.spec.name
        assert self.device is not None
        if not n.topic:
            metrics.NOTIFICATIONS.labels(bus, "parse_error").inc()
            log.warning("camera %s: malformed notification (%s): %r", bus, n.key.get("_error", "?"), n.raw[:2048])
            return None
        try:
            resolved = topics.resolve(n, self._table)
        except topics.TopicParseError as exc:
            metrics.NOTIFICATIONS.labels(bus, "parse_error").inc()
            log.warning("camera %s: cannot parse %s notification (%s): %r", bus, n.path, exc, n.raw[:2048])
            return None
        if resolved is None:
            metrics.NOTIFICATIONS.labels(bus, "unknown_topic").inc()
            if n.path not in self._logged_topics and len(self._logged_topics) < MAX_LOGGED_TOPICS:
                self._logged_topics.add(n.path)
                log.warning(
                    "camera %s: notification topic %s is not mapped by profile %s (logged once; "
                    "add it to the profile to use it): %s",
                    bus,
                    n.topic,
                    self.device.profile,
                    n.raw[:2048].decode("utf-8", "replace"),
                )
            return None
        ev = resolved.event
        key = (resolved.point, str(ev.attrs.get("source", "")))
        if ev.initial:
            mode = self.profile_options.initial_states
            known = self._known.get(key)
            if mode == "none" or (mode == "changes" and (known == ev.active or (known is None and not ev.active))):
                metrics.NOTIFICATIONS.labels(bus, "initial_skipped").inc()
                return None
        if len(self._known) >= MAX_KNOWN_STATES and key not in self._known:
            self._known.pop(next(iter(self._known)))
        self._known[key] = ev.active
        metrics.NOTIFICATIONS.labels(bus, "mapped").inc()
        attrs: dict[str, Any] = dict(ev.attrs)
        if ev.initial:
            attrs["initial"] = True
        return RawEvent(device_id=self.device.id, point=resolved.point, value=ev.active, attrs=attrs, tsd=ev.tsd)

    async def _attach_snapshot(self, ev: RawEvent) -> None:
        bus = self.spec.name
        store, cam, ident = self._store, self._cam, self.identity
        if store is None or cam is None or ident is None or ident.profile_token is None:
            return
        opts = self.profile_options
        attrs = ev.attrs if ev.attrs is not None else {}
        try:
            try:
                async with asyncio.timeout(opts.snapshot_timeout):
                    data = await cam.get_snapshot(
                        ident.profile_token, basic_auth=opts.snapshot_auth == "basic", timeout=opts.snapshot_timeout
                    )
            finally:
                await release_service(cam, "media")  # created when the snapshot URI was not known yet
            if data is None:
                raise SnapshotError("failed", "camera answered without an image")
            ref = await asyncio.to_thread(store.save, ev.device_id, data)
        except SnapshotError as exc:
            metrics.SNAPSHOTS.labels(bus, exc.reason).inc()
            attrs["snapshot_error"] = exc.reason
        except Exception as exc:
            err = classify(exc)
            metrics.SNAPSHOTS.labels(bus, err.reason if err.reason == "auth" else "failed").inc()
            attrs["snapshot_error"] = err.reason
            log.info("camera %s: snapshot failed: %s", bus, err)
        else:
            metrics.SNAPSHOTS.labels(bus, "stored").inc()
            attrs["snapshot"] = ref
        ev.attrs = attrs


# --------------------------------------------------------------------------- driver


class OnvifDriver(Driver):
    name: ClassVar[str] = "onvif"
    version: ClassVar[str] = "1.0.0"
    description: ClassVar[str] = "ONVIF IP cameras: identity, stream/snapshot URIs, PullPoint events, WS-Discovery scan"
    implicit_bus = True
    BusOptions = CameraAddress
    DeviceAddress = CameraAddress
    PointAddress = OnvifPointAddress
    ProfileOptions = OnvifProfileOptions

    def open_bus(self, spec: BusSpec) -> Bus:
        return OnvifBus(spec)

    def implicit_bus_options(self, device_address: Any) -> Any:
        return device_address

    def add_scan_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--interface", help="send the multicast probe on this interface (name or IPv4)")
        parser.add_argument("--timeout", type=float, default=3.0, help="seconds to collect answers (default 3)")
        parser.add_argument(
            "--address",
            action="append",
            default=[],
            metavar="HOST:PORT",
            help="unicast probe to this WS-Discovery address (repeatable); disables multicast",
        )
        parser.add_argument("--multicast", action="store_true", help="multicast as well as --address probes")
        parser.add_argument("--user", default="", help="camera user, to read model and firmware")
        parser.add_argument("--password", default="", help="camera password (or EDGE_GW_ONVIF_PASSWORD)")
        parser.add_argument(
            "-v", "--verbose", action="store_true", help="show the raw XML of every reply that could not be understood"
        )

    async def scan(self, args: argparse.Namespace) -> list[Mapping[str, Any]]:
        """One row per responder: endpoint (None when it sent none), every XAddr, every
        scope decoded whole, and the sender. Replies that could not be understood are in
        the result's ``not_understood`` (raw XML too with ``--verbose``)."""
        import os

        try:
            targets = [parse_target(a) for a in getattr(args, "address", []) or []]
        except DiscoveryError as exc:
            raise DriverError("config", str(exc)) from None
        multicast = not targets or bool(getattr(args, "multicast", False))
        result = await probe(targets, multicast=multicast, interface=getattr(args, "interface", None), wait=float(args.timeout))
        user = getattr(args, "user", "") or ""
        password = getattr(args, "password", "") or os.environ.get("EDGE_GW_ONVIF_PASSWORD", "")
        rows = ScanRows()
        for match, sender in sorted(result.matches, key=lambda f: (f[0].xaddrs, f[0].endpoint, f[1])):
            row: dict[str, Any] = {
                "name": match.scope("name"),
                "endpoint": match.endpoint or None,
                "xaddrs": list(match.xaddrs),
                "hardware": match.scope("hardware"),
                "location": match.scope("location"),
                "scopes": list(match.decoded_scopes),
                "types": list(match.types),
                "from": sender,
            }
            if user and match.xaddrs:
                row |= await _identify(_service_xaddr(match, sender), user, password, float(args.timeout))
            rows.append(row)
        verbose = bool(getattr(args, "verbose", False))
        for u in result.not_understood:
            entry: dict[str, Any] = {"from": u.sender, "replies": u.replies, "reason": u.reason}
            if verbose:
                entry["raw"] = [r.decode("utf-8", "replace") for r in u.raw]
            rows.not_understood.append(entry)
        return rows


class ScanRows(list[Mapping[str, Any]]):
    """Rows of a scan, and the replies that could not be understood (``from``, ``replies``,
    ``reason``, with ``--verbose`` the ``raw`` datagrams), which the CLI reports."""

    def __init__(self) -> None:
        super().__init__()
        self.not_understood: list[dict[str, Any]] = []


def _service_xaddr(match: ProbeMatch, sender: str) -> str:
    """The XAddr to connect to: the one on the address the reply came from, else the first."""
    host = sender.rpartition(":")[0].strip("[]")
    for xaddr in match.xaddrs:
        with contextlib.suppress(DiscoveryError):
            if xaddr_host_port(xaddr)[0] == host:
                return xaddr
    return match.xaddrs[0]


async def _identify(xaddr: str, user: str, password: str, timeout: float) -> dict[str, str]:
    try:
        host, port = xaddr_host_port(xaddr)
    except DiscoveryError as exc:
        return {"error": str(exc)}
    opts = CameraAddress(host=host, port=port, username=user, password=SecretStr(password), timeout=max(timeout, 1.0), events=False)
    bus = OnvifBus(BusSpec(f"scan-{host}-{port}", "onvif", opts))
    try:
        await bus._client()
        ident = bus.identity or Identity()
        return {"manufacturer": ident.manufacturer, "model": ident.model, "firmware": ident.firmware}
    except DriverError as exc:
        return {"error": exc.reason}
    finally:
        await bus.close()
