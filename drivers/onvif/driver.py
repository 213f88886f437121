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

Errors: a camera that does not answer raises ``DeviceUnavailable`` with reason
``timeout``, ``refused``, ``unreachable``, ``unavailable`` (HTTP 5xx while booting) or
``tls``; a camera that refuses the credentials raises ``DeviceUnavailable("auth")``; a SOAP
fault or an unparsable answer raises ``DriverError(soap_fault|protocol)``. Every detail
names the operation and what happened (HTTP status, SOAP fault code, time waited, address).

After refused credentials the camera's login gate closes: no request is sent until an
exponential pause ends, the password file changes or the configuration is reloaded. A
camera without an events service is never subscribed. While a camera does not answer it
is probed (unauthenticated) and polled at once when it answers again (``Bus.request_poll``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import errno
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from drivers.onvif import metrics, topics, tracelog, xmlsafe
from drivers.onvif.discovery import DiscoveryError, ProbeMatch, parse_target, probe, xaddr_host_port
from drivers.onvif.snapshots import SnapshotError, SnapshotStore
from gateway.backoff import Backoff
from gateway.errors import ReasonError
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
tracelog.install()
_T = TypeVar("_T")

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
    probe_interval: Duration = Field(
        default=2.0, ge=0.2, le=60, description="while the camera does not answer: unauthenticated probe interval"
    )
    auth_backoff: Duration = Field(
        default=30.0, ge=0.1, le=3600, description="pause after refused credentials (doubles per refusal)"
    )
    auth_backoff_max: Duration = Field(default=600.0, ge=0.1, le=86400, description="longest pause after refusals")
    snapshots: SnapshotStoreOptions = SnapshotStoreOptions()
    _password_file: Path | None = PrivateAttr(default=None)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if "/" in v or " " in v:
            raise ValueError("expected a host name or IP address (no scheme or path)")
        return v

    @model_validator(mode="wrap")
    @classmethod
    def _remember_password_file(cls, data: Any, handler: Any) -> Any:
        inst = handler(data)
        if isinstance(data, Mapping) and isinstance(inst, CameraAddress):
            inst._password_file = secret_file(data.get("password"))
        return inst

    @property
    def password_file(self) -> Path | None:
        """The file the password was read from (``{ file = ... }`` or ``{ credential = ... }``),
        re-read when the camera refuses it or the file changes; None for other sources."""
        return self._password_file


def secret_file(ref: Any) -> Path | None:
    """The file behind a secret reference, when it is one."""
    if isinstance(ref, Mapping) and len(ref) == 1:
        ((key, name),) = ref.items()
        if key == "file" and isinstance(name, str) and name:
            return Path(name)
        cred_dir = os.environ.get("CREDENTIALS_DIRECTORY")
        if key == "credential" and isinstance(name, str) and name and cred_dir:
            return Path(cred_dir) / name
    return None


def auth_retry_delay(refusals: int, base: float, cap: float, jitter: float) -> float:
    """Pause after the ``refusals``-th refused login in a row: ``base`` doubling per refusal,
    capped at ``cap``, times 0.9..1.0 (``jitter`` in 0..1). With the defaults (30 s, 10 min)
    the attempts fall at 0, 27-30, 81-90, 189-210 and 405-450 s: four in the first five
    minutes, then one every 9-10 minutes."""
    return Backoff(base, cap, jitter=0.1).delay(refusals - 1, u=1.0 - jitter)


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
    snapshot_auth: Literal["auto", "digest", "basic"] = Field(
        default="auto", description="auto: answer the challenge the snapshot URI sends; digest/basic: only that one"
    )
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


_NS_TER = "http://www.onvif.org/ver10/error"
# reasons of a camera that does not answer (as opposed to one that refuses us): probed
NETWORK_REASONS = frozenset({"timeout", "refused", "unreachable", "unavailable", "tls"})


def _qname_text(q: Any) -> str:
    """``ter:NotAuthorized`` for an ONVIF error QName, else the local name."""
    text = str(getattr(q, "text", q) or "")
    if text.startswith("{"):
        ns, _, local = text[1:].partition("}")
        return f"ter:{local}" if ns == _NS_TER else local
    return text


def fault_code(exc: Any) -> str:
    """A zeep Fault's code and subcodes, e.g. ``Sender/ter:NotAuthorized``."""
    subcodes = exc.subcodes if isinstance(exc.subcodes, list) else [exc.subcodes] if exc.subcodes else []
    parts = [_qname_text(exc.code)] if exc.code else []
    parts += [_qname_text(s) for s in subcodes if s is not None]
    return "/".join(p for p in parts if p) or "?"


def _is_auth_fault(exc: BaseException) -> bool:
    from zeep.exceptions import Fault

    if not isinstance(exc, Fault):
        return False
    text = f"{fault_code(exc)} {exc.message or ''}"
    return "NotAuthorized" in text or "Unauthorized" in text or "auth" in text.lower()


def classify(exc: BaseException, op: str = "", timeout: float | None = None) -> DriverError:
    """Map a client-side exception onto the driver's bounded reasons, with a detail that
    says what happened: the operation, the HTTP status, the SOAP fault code, the time
    waited, the address refused, the TLS error."""
    import ssl

    import aiohttp
    from zeep.exceptions import Fault, TransportError, XMLParseError

    pre = f"{op}: " if op else ""
    if isinstance(exc, DriverError):
        return exc
    if isinstance(exc, TimeoutError):
        waited = f" within {timeout:g} s" if timeout else " in time"
        return DeviceUnavailable("timeout", f"{pre}no answer{waited}")
    if isinstance(exc, Fault):
        text = f"SOAP fault {fault_code(exc)}: {exc.message}"[:300]
        if _is_auth_fault(exc):
            return DeviceUnavailable("auth", f"{pre}the camera refused the credentials: {text}")
        return DriverError("soap_fault", f"{pre}{text}")
    if isinstance(exc, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
        return DeviceUnavailable("tls", f"{pre}TLS: {exc}"[:300])
    if isinstance(exc, aiohttp.ClientConnectorError):
        where = f"{exc.host}:{exc.port}"
        os_err = exc.os_error
        if isinstance(os_err, ConnectionRefusedError) or getattr(os_err, "errno", None) == errno.ECONNREFUSED:
            return DeviceUnavailable("refused", f"{pre}connection refused by {where} (camera off, booting, or ONVIF on another port)")
        why = getattr(os_err, "strerror", None) or str(os_err)
        return DeviceUnavailable("unreachable", f"{pre}cannot connect to {where}: {why}"[:300])
    if isinstance(exc, ConnectionRefusedError):
        return DeviceUnavailable("refused", f"{pre}connection refused ({exc})"[:300])
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return DeviceUnavailable("unreachable", f"{pre}the camera closed the connection without answering")
    if isinstance(exc, aiohttp.ClientError | OSError):
        return DeviceUnavailable("unreachable", f"{pre}{type(exc).__name__}: {exc}"[:300])
    if isinstance(exc, TransportError):
        status = getattr(exc, "status_code", 0) or 0
        if status in (401, 403):
            return DeviceUnavailable("auth", f"{pre}the camera refused the credentials: HTTP {status}")
        if status in (502, 503, 504):
            return DeviceUnavailable("unavailable", f"{pre}HTTP {status} (the camera is starting or busy)")
        return DriverError("protocol", f"{pre}HTTP {status or '?'}")
    if isinstance(exc, XMLParseError):
        return DriverError("protocol", f"{pre}unparsable answer: {exc}"[:300])
    from onvif.exceptions import ONVIFAuthError, ONVIFError, ONVIFTimeoutError

    if isinstance(exc, ONVIFAuthError):
        return DeviceUnavailable("auth", f"{pre}{exc}"[:300])
    if isinstance(exc, ONVIFTimeoutError):
        return DeviceUnavailable("timeout", f"{pre}{exc}"[:300])
    if isinstance(exc, ONVIFError):
        cause = exc.__cause__
        if cause is not None and cause is not exc:
            return classify(cause, op, timeout)
        return DriverError("protocol", f"{pre}{exc}"[:300])
    return DriverError("protocol", f"{pre}{type(exc).__name__}: {exc}"[:300])


class EventsUnsupported(DriverError):
    """The camera has no (PullPoint) events service; not retried."""

    def __init__(self, detail: str) -> None:
        super().__init__("events_unsupported", detail)


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


class PullFault(ReasonError):
    """A PullMessages fault or HTTP error; ``reason`` is a bounded label."""


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
    """One camera.

    Every request of the camera goes through one gate: after the camera refused the
    credentials, nothing that would log in is sent until the pause (``auth_backoff``,
    doubling up to ``auth_backoff_max``) is over -- unless the password file changes or the
    configuration is reloaded, which retry at once. While the camera does not answer at
    all, an unauthenticated GetSystemDateAndTime probes it every ``probe_interval`` and asks
    the core for an immediate poll as soon as it answers again."""

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
        # credentials and the login gate
        self._password = self.opts.password.get_secret_value()
        self._client_password = self._password
        self._pw_sig: tuple[int, int, int] | None = self._file_sig()
        self._auth_streak = 0  # refused logins in a row
        self._auth_until = 0.0  # monotonic; no login before
        self._auth_detail = ""
        self._gate_changed = asyncio.Event()
        # what the camera offers, how it failed last
        self._events_note: str | None = None
        self._failure: DriverError | None = None
        self._back = asyncio.Event()  # the probe saw the camera answer again
        self._tasks: set[asyncio.Task[None]] = set()
        self._probing = False
        self._watching = False
        self._snap_session: Any = None
        self._snap_scheme: str | None = None
        self._logged_basic = False

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
        self._gate_changed.set()
        self._back.set()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        sub = self._sub_service
        self._sub_service = None
        if sub is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(min(2.0, self.opts.timeout)):
                    await sub.Unsubscribe()
        await self._drop(self._generation)
        if self._snap_session is not None:
            session, self._snap_session = self._snap_session, None
            with contextlib.suppress(Exception):
                await session.close()

    def notes(self, device_id: str) -> dict[str, str]:
        out: dict[str, str] = {}
        if not self.opts.events:
            out["events"] = "off (events = false)"
        elif self._events_note is not None:
            out["events"] = self._events_note
        left = self._auth_until - time.monotonic()
        if left > 0:
            out["error"] = f"auth: {self._auth_detail}"
        elif self._failure is not None:
            out["error"] = f"{self._failure.reason}: {self._failure.detail}"
        if left > 0:
            out["login"] = (
                f"paused for {left:.0f} s after {self._auth_streak} refused login(s); "
                "a changed credential or a reload retries at once"
            )
        return out

    def reloaded(self) -> None:
        if self._auth_until:
            log.info("camera %s: configuration reloaded; logging in again now", self.spec.name)
        self._reread_password(force=True)
        self._open_gate()
        self._back.set()
        if self._failure is not None and self.device is not None:
            self.request_poll(self.device.id)

    def _spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        task.set_name(f"{name}:{self.spec.name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _wake_core(self) -> None:
        if self.device is not None:
            self.request_poll(self.device.id)

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
            self._auth_check()
            if self._cam is not None and self._client_password != self._password:
                await self._drop(self._generation)  # built with the old password
            if self._cam is None:
                await self._connect()
            return self._cam, self._generation

    async def _soap(self, op: str, call: Awaitable[_T], timeout: float, *, login: bool = True) -> _T:
        """One SOAP request, bounded; failures classified with the operation's name. A
        refusal of the credentials closes the login gate (``login=False``: the request
        carried none, so it was no login)."""
        try:
            async with asyncio.timeout(timeout):
                return await call
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            err = classify(exc, op, timeout)
            if err.reason == "auth" and login:
                self._auth_refused(err)
            raise err from exc

    # ------------------------------------------------------------------ credentials and the login gate

    def _file_sig(self) -> tuple[int, int, int] | None:
        path = self.opts.password_file
        if path is None:
            return None
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reread_password(self, force: bool = False) -> bool:
        """Re-read the password file when it changed (or ``force``); True when the password
        is now different (the gate is then open again)."""
        path = self.opts.password_file
        if path is None:
            return False
        sig = self._file_sig()
        if sig is None or (sig == self._pw_sig and not force):
            return False
        self._pw_sig = sig
        try:
            password = path.read_text("utf-8").rstrip("\r\n")
        except OSError as exc:
            log.warning("camera %s: cannot re-read the password file %s: %s", self.spec.name, path, exc.strerror)
            return False
        if password == self._password:
            return False
        self._password = password
        log.info("camera %s: the password in %s changed; logging in again", self.spec.name, path)
        self._open_gate()
        self._back.set()
        self._wake_core()
        return True

    def _open_gate(self) -> None:
        self._auth_until = 0.0
        self._auth_streak = 0
        self._gate_changed.set()

    def _auth_check(self) -> None:
        """Raise ``DeviceUnavailable("auth")`` without sending anything while logins are paused."""
        if not self._auth_until:
            return
        self._reread_password()
        left = self._auth_until - time.monotonic()
        if left > 0:
            raise DeviceUnavailable(
                "auth",
                f"{self._auth_detail}; next login attempt in {left:.0f} s "
                "(at once when the credential changes or on reload)",
            )

    def _auth_refused(self, err: DriverError) -> None:
        """The camera refused the credentials: count it, pause every login of this camera."""
        metrics.AUTH_FAILURES.labels(self.spec.name).inc()
        now = time.monotonic()
        if now < self._auth_until:
            return  # a request that was already under way when the gate closed
        if self._reread_password(force=True):
            return  # the file already holds another password: try that one now
        o = self.opts
        self._auth_streak += 1
        pause = auth_retry_delay(self._auth_streak, o.auth_backoff, o.auth_backoff_max, random.random())
        self._auth_until = now + pause
        self._auth_detail = err.detail
        self._gate_changed.set()
        log.warning(
            "camera %s: login as %r refused (%s); no request is sent to the camera for "
            "%.0f s (refusal %d in a row; pauses double up to %.0f s so the camera does not lock the "
            "account); a changed credential or a reload retries at once",
            self.spec.name, o.username, err.detail, pause, self._auth_streak, o.auth_backoff_max,
        )
        if o.password_file is not None and not self._watching:
            self._watching = True
            self._spawn(self._watch_password(), "onvif-password")

    async def _watch_password(self) -> None:
        """While logins are paused: notice a changed password file within a second."""
        try:
            while not self._closed and time.monotonic() < self._auth_until:
                await asyncio.sleep(1.0)
                self._reread_password()
        finally:
            self._watching = False

    async def _wait_gate(self) -> None:
        """Sleep until logins may be tried again (or the credential changes, or close)."""
        while not self._closed:
            left = self._auth_until - time.monotonic()
            if left <= 0:
                return
            self._gate_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._gate_changed.wait()

    # ------------------------------------------------------------------ failures and probing

    def _failed(self, err: DriverError) -> None:
        """Remember (and say once, at info, with its detail) why the camera fails; probe a
        camera that does not answer."""
        old = self._failure
        self._failure = err
        if err.reason == "closed":
            return
        if old is None or old.reason != err.reason:
            if err.reason != "auth":  # the gate already said it, with its schedule
                what = "does not answer" if err.reason in NETWORK_REASONS else "fails"
                log.info("camera %s: %s: %s (%s)", self.spec.name, what, err.reason, err.detail)
        if err.reason in NETWORK_REASONS and not self._probing and not self._closed:
            self._probing = True
            self._back.clear()
            self._spawn(self._probe(), "onvif-probe")

    def _answered(self) -> None:
        if self._failure is not None:
            log.info("camera %s: answering again", self.spec.name)
        self._failure = None

    async def _probe(self) -> None:
        """Unauthenticated GetSystemDateAndTime every ``probe_interval`` until the camera
        answers; then the core polls at once (and the event loop reconnects)."""
        import aiohttp

        o = self.opts
        url = f"http://{o.host if ':' not in o.host else f'[{o.host}]'}:{o.port}/onvif/device_service"
        body = (
            '<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope">'
            '<s:Body><GetSystemDateAndTime xmlns="http://www.onvif.org/ver10/device/wsdl"/></s:Body></s:Envelope>'
        )
        headers = {"Content-Type": "application/soap+xml; charset=utf-8"}
        try:
            async with aiohttp.ClientSession() as session:
                while not self._closed and self._failure is not None and self._failure.reason in NETWORK_REASONS:
                    await asyncio.sleep(o.probe_interval)
                    try:
                        wait = min(o.timeout, max(1.0, o.probe_interval))
                        async with session.post(url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=wait)) as r:
                            await r.read()
                            status = r.status
                    except (aiohttp.ClientError, OSError, TimeoutError):
                        continue
                    if status in (502, 503, 504):
                        continue  # up, but its services are not (booting)
                    log.debug("camera %s: probe answered (HTTP %d)", self.spec.name, status)
                    self._back.set()
                    self._wake_core()
                    return
        finally:
            self._probing = False

    # ------------------------------------------------------------------ connecting

    async def _connect(self) -> None:
        onvif = _onvif()
        o = self.opts
        password = self._password
        cam = onvif.ONVIFCamera(o.host, o.port, o.username, password, no_cache=True, adjust_time=True)
        try:
            await load_documents(cam.wsdl_dir)
            await self._discover(cam)
            devicemgmt = await cam.create_devicemgmt_service()
            info = await self._soap("GetDeviceInformation", devicemgmt.GetDeviceInformation(), o.timeout)
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
        self._client_password = password
        self._generation += 1
        self.identity = ident
        self._auth_streak = 0
        self._auth_until = 0.0
        log.info(
            "camera %s: connected (%s %s, firmware %s)", self.spec.name, ident.manufacturer, ident.model, ident.firmware
        )

    async def _discover(self, cam: Any) -> None:
        """Camera clock, then its services: GetServices, else GetCapabilities. A refusal of
        the credentials ends it at once (no second login with another operation)."""
        from onvif.util import normalize_url

        o = self.opts
        devicemgmt = await cam.create_devicemgmt_service()
        try:
            clock = await self._soap("GetSystemDateAndTime", devicemgmt.authless_GetSystemDateAndTime(), o.timeout, login=False)
        except DriverError as err:
            if err.reason != "auth":
                raise
            # some firmwares want credentials even for the clock: signed with the gateway's
            clock = await self._soap("GetSystemDateAndTime", devicemgmt.GetSystemDateAndTime(), o.timeout)
        utc = getattr(clock, "UTCDateTime", None)
        if utc is not None:
            with contextlib.suppress(TypeError, ValueError, AttributeError):
                cam_time = dt.datetime(
                    utc.Date.Year, utc.Date.Month, utc.Date.Day, utc.Time.Hour, utc.Time.Minute, utc.Time.Second, tzinfo=dt.UTC
                )
                cam.dt_diff = cam_time - dt.datetime.now(dt.UTC)
                await release_service(cam, "devicemgmt")  # created again, signing on the camera's clock
                devicemgmt = await cam.create_devicemgmt_service()
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
        cam.xaddrs = {}
        source = "GetServices"
        pullpoint: bool | None = None
        try:
            services = await self._soap("GetServices", devicemgmt.GetServices({"IncludeCapability": False}), o.timeout)
        except DriverError as err:
            if isinstance(err, DeviceUnavailable):
                raise
            services = None  # older firmware: GetCapabilities instead
        for svc in services or []:
            ns, xaddr = getattr(svc, "Namespace", None), getattr(svc, "XAddr", None)
            if ns and xaddr:
                cam.xaddrs[str(ns)] = normalize_url(str(xaddr))
        if not cam.xaddrs:
            source = "GetCapabilities"
            caps = await self._soap("GetCapabilities", devicemgmt.GetCapabilities({"Category": "All"}), o.timeout)
            onvif = _onvif()
            for name in caps or []:
                cap = caps[name]
                if cap is None or name.lower() not in onvif.SERVICES:
                    continue
                with contextlib.suppress(KeyError, TypeError, AttributeError):
                    cam.xaddrs[onvif.SERVICES[name.lower()]["ns"]] = normalize_url(str(cap["XAddr"]))
                if name == "Events":
                    pullpoint = getattr(cap, "WSPullPointSupport", None)
        if NS_EVENTS not in cam.xaddrs:
            self._set_events(False, f"unsupported: the camera lists no events service ({source})")
        elif pullpoint is False:
            self._set_events(False, "unsupported: the events service has no PullPoint support (GetCapabilities)")
        else:
            self._set_events(True, "supported (PullPoint)")

    def _set_events(self, supported: bool, note: str) -> None:
        metrics.EVENTS_SUPPORTED.labels(self.spec.name).set(1 if supported else 0)
        was = self._events_note
        self._events_note = note
        if not supported and (was is None or not was.startswith("unsupported")):
            log.info(
                "camera %s: events are not supported (%s); identity, status and snapshot URIs only, "
                "no event service request is sent",
                self.spec.name,
                note.removeprefix("unsupported: "),
            )
        elif supported and was is not None and was.startswith("unsupported"):
            log.info("camera %s: events are offered again", self.spec.name)
            self._events_wakeup.set()

    @property
    def events_supported(self) -> bool:
        return self._events_note is None or not self._events_note.startswith("unsupported")

    async def _media(self, cam: Any, ident: Identity) -> None:
        o = self.opts
        try:
            media = await cam.create_media_service()
            profiles = await self._soap("GetProfiles", media.GetProfiles(), o.timeout)
        except DriverError as err:
            if isinstance(err, DeviceUnavailable):
                raise
            if err.reason == "soap_fault":
                log.warning("camera %s: no media profiles (%s)", self.spec.name, err.detail)
            return  # e.g. an I/O box without a media service
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
        try:
            r = await self._soap(
                "GetStreamUri",
                media.GetStreamUri({"StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}}, "ProfileToken": token}),
                o.timeout,
            )
            ident.stream_uri = strip_credentials(str(r.Uri))
        except DriverError as err:
            if isinstance(err, DeviceUnavailable):
                raise
            log.warning("camera %s: no stream URI: %s", self.spec.name, err.detail)
        try:
            s = await self._soap("GetSnapshotUri", media.GetSnapshotUri({"ProfileToken": token}), o.timeout)
            ident.snapshot_uri = strip_credentials(str(s.Uri))
        except DriverError as err:
            if isinstance(err, DeviceUnavailable):
                raise
            log.info("camera %s: no snapshot URI: %s", self.spec.name, err.detail)

    # ------------------------------------------------------------------ polling

    async def read(self, device: DeviceSpec, points: Sequence[PointSpec]) -> Reading:
        try:
            cam, gen = await self._client()
            if self._checked_gen == gen:  # connected at an earlier poll: check it still answers
                try:
                    devicemgmt = await cam.create_devicemgmt_service()
                    info = await self._soap("GetDeviceInformation", devicemgmt.GetDeviceInformation(), self.opts.timeout)
                except Exception as exc:
                    await self._drop(gen)
                    raise classify(exc) from exc
                assert self.identity is not None
                self.identity.firmware = str(info.FirmwareVersion or self.identity.firmware)
        except DriverError as err:
            self._failed(err)
            raise
        self._answered()
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
        retry = Backoff(1.0, 30.0, jitter=0.2)  # 1 s doubling to 30 s; the probe cuts it short
        reason = "start"
        while not self._closed:
            if self.device is None or not self._table or not self.events_supported:
                self._events_wakeup.clear()
                await self._events_wakeup.wait()  # attach(), close() or a reconnect wakes us
                continue
            try:
                gen = await self._subscribe(reason)
            except EventsUnsupported:
                continue  # said once by _set_events; waits above
            except DriverError as err:
                if err.reason == "closed":
                    return
                if err.reason == "auth":
                    await self._wait_gate()  # no login before the gate opens
                    reason = "reconnect"
                    continue
                if err.reason in NETWORK_REASONS:
                    first = self._failure is None
                    self._failed(err)
                    if first:
                        self._wake_core()  # the core reports it offline now, not at its next poll
                else:
                    log.debug("camera %s: cannot subscribe: %s", self.spec.name, err)
                self._back.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(retry.next_delay()):
                        await self._back.wait()  # the probe saw it answer: at once
                reason = "reconnect"
                continue
            retry.reset()
            if self._failure is not None:
                self._wake_core()  # reconnected here first: the core polls now
            async for event in self._pull(gen):
                yield event
            reason = self._last_end_reason

    async def _subscribe(self, reason: str) -> int:
        cam, gen = await self._client()
        if not self.events_supported:
            raise EventsUnsupported(self._events_note or "")
        o = self.opts
        try:
            events = await cam.create_events_service()
            res = await self._soap(
                "CreatePullPointSubscription",
                events.CreatePullPointSubscription({"InitialTerminationTime": f"PT{int(o.subscription)}S"}),
                o.timeout,
            )
            address = res.SubscriptionReference.Address._value_1
            cam.xaddrs[PULLPOINT_KEY] = cam.rewrite_url(str(address).strip())
            self._pull_service = await cam.create_pullpoint_service()
            self._sub_service = await cam.create_subscription_service("PullPointSubscription")
            await release_service(cam, "events")  # only needed again for the next subscription
        except Exception as exc:
            err = classify(exc, "CreatePullPointSubscription")
            if "ActionNotSupported" in err.detail or "HTTP 404" in err.detail or "HTTP 405" in err.detail:
                self._set_events(False, f"unsupported: {err.detail}")
                raise EventsUnsupported(err.detail) from exc
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
                if fault.reason == "auth":
                    self._auth_refused(DeviceUnavailable("auth", f"PullMessages: {fault.detail}"))
                if fault.reason in NETWORK_REASONS or fault.reason == "auth" or failures >= 3:
                    self._last_end_reason = "error"
                    await self._drop(gen)
                    first = self._failure is None
                    if fault.reason in NETWORK_REASONS:
                        self._failed(DeviceUnavailable(fault.reason, f"PullMessages: {fault.detail}"))
                    if first:
                        self._wake_core()  # the core reports it now, not at its next poll
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
            err = classify(exc, "PullMessages", o.pull_timeout + o.timeout)
            raise PullFault(err.reason, err.detail) from exc
        return parse_pull_response(resp.status_code, resp.content)

    async def _renew(self) -> bool:
        sub = self._sub_service
        if sub is None:
            return False
        try:
            res = await self._soap("Renew", sub.Renew(f"PT{int(self.opts.subscription)}S"), self.opts.timeout)
        except DriverError as err:
            metrics.RENEWALS.labels(self.spec.name, "failed").inc()
            log.info("camera %s: Renew failed (%s: %s); subscribing again", self.spec.name, err.reason, err.detail)
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

    # ------------------------------------------------------------------ snapshots

    async def _attach_snapshot(self, ev: RawEvent) -> None:
        bus = self.spec.name
        store, ident = self._store, self.identity
        if store is None or ident is None:
            return
        attrs = ev.attrs if ev.attrs is not None else {}
        try:
            if not ident.snapshot_uri:
                raise SnapshotError("failed", "the camera has no snapshot URI")
            data = await self._fetch_snapshot(ident.snapshot_uri)
            ref = await asyncio.to_thread(store.save, ev.device_id, data)
        except SnapshotError as exc:
            metrics.SNAPSHOTS.labels(bus, exc.reason).inc()
            attrs["snapshot_error"] = exc.reason
            log.info("camera %s: snapshot %s: %s", bus, exc.reason, exc.detail)
        except Exception as exc:
            err = classify(exc, "snapshot", self.profile_options.snapshot_timeout)
            metrics.SNAPSHOTS.labels(bus, "failed").inc()
            attrs["snapshot_error"] = "failed"
            log.info("camera %s: snapshot failed: %s (%s)", bus, err.reason, err.detail)
        else:
            metrics.SNAPSHOTS.labels(bus, "stored").inc()
            attrs["snapshot"] = ref
        ev.attrs = attrs

    async def _fetch_snapshot(self, uri: str) -> bytes:
        """GET the snapshot URI answering the challenge the camera sends (Digest preferred
        when it offers both; the scheme that worked is used directly next time)."""
        import aiohttp

        opts = self.profile_options
        if self._auth_until and time.monotonic() < self._auth_until:
            raise SnapshotError("auth", "logins to this camera are paused after refused credentials")
        if self._snap_session is None:
            self._snap_session = aiohttp.ClientSession()
        session = self._snap_session
        timeout = aiohttp.ClientTimeout(total=opts.snapshot_timeout)
        user, password = self.opts.username, self._password
        scheme = self._snap_scheme
        for _ in range(3):
            kwargs: dict[str, Any] = {}
            if scheme == "digest":
                kwargs["middlewares"] = (aiohttp.DigestAuthMiddleware(user, password),)
            elif scheme == "basic":
                token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
                kwargs["headers"] = {"Authorization": f"Basic {token}"}
            async with session.get(uri, timeout=timeout, **kwargs) as resp:
                if resp.status == 401:
                    offered = _challenge_schemes(resp.headers.getall("WWW-Authenticate", []))
                    if scheme in offered:
                        self._snap_scheme = None
                        self._auth_refused(DeviceUnavailable("auth", f"snapshot: HTTP 401 to {scheme} credentials"))
                        raise SnapshotError("auth", f"the camera refused the {scheme} credentials (HTTP 401)")
                    scheme = _pick_scheme(offered, opts.snapshot_auth)
                    if scheme is None:
                        raise SnapshotError(
                            "auth",
                            f"the snapshot URI asks for {' or '.join(sorted(offered)) or 'an unknown'} authentication; "
                            f"the profile allows only {opts.snapshot_auth} (snapshot_auth)",
                        )
                    if scheme == "basic" and uri.startswith("http:") and not self._logged_basic:
                        self._logged_basic = True
                        log.info(
                            "camera %s: its snapshot URI asks for HTTP Basic authentication over plain HTTP: "
                            "the password crosses the network readable (prefer digest on the camera)",
                            self.spec.name,
                        )
                    continue
                if resp.status >= 400:
                    raise SnapshotError("failed", f"HTTP {resp.status} from the snapshot URI")
                data: bytes = await resp.read()
                self._snap_scheme = scheme
                return data
        raise SnapshotError("auth", "no authentication scheme of the snapshot URI worked")


def _challenge_schemes(headers: Sequence[str]) -> set[str]:
    """Schemes of ``WWW-Authenticate`` headers that the driver can answer."""
    out: set[str] = set()
    for h in headers:
        for part in h.split(","):
            word = part.strip().split(" ", 1)[0].lower()
            if word in ("digest", "basic") and "=" not in word:
                out.add(word)
    return out


def _pick_scheme(offered: set[str], allowed: str) -> str | None:
    for scheme in ("digest", "basic"):
        if scheme in offered and allowed in ("auto", scheme):
            return scheme
    return None


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
        try:
            result = await probe(targets, multicast=multicast, interface=getattr(args, "interface", None), wait=float(args.timeout))
        except DiscoveryError as exc:  # a target that does not resolve, a probe not sent
            raise DriverError("config", str(exc)) from None
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
