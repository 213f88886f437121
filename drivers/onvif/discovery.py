"""WS-Discovery Probe for ONVIF NetworkVideoTransmitters, and the replies cameras send.

``build_probe`` and ``parse_probe_matches`` are pure; ``probe`` sends the Probe over UDP
(multicast to 239.255.255.250:3702 and/or unicast to given HOST:PORT targets) and collects
the ProbeMatches that relate to it until the timeout, with every reply it could not
understand (``ProbeResult.not_understood``), so that nothing is dropped silently.

Replies are read as real cameras send them, not only as ONVIF prescribes: SOAP 1.2 or 1.1
envelopes; WS-Addressing 2004/08 or 1.0 (2005/08); WS-Discovery 2005/04 or 1.1 (2009/01);
a ``ProbeMatch`` with or without the ``ProbeMatches`` around it; any prefixes (or default
namespaces), whitespace, comments and CDATA; several XAddrs in one element; a missing or
empty endpoint reference; a missing RelatesTo (a reply arriving at the probe's own socket
answers that probe). Scopes are one space-separated list of URIs whose values are
percent-encoded (``name/Virtual%20Camera``); cameras that send a value with raw spaces
(``name/Virtual Camera``) are understood too: a word that does not start with a URI scheme
continues the scope before it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from drivers.onvif import xmlsafe

if TYPE_CHECKING:
    from lxml import etree

NS_SOAP = "http://www.w3.org/2003/05/soap-envelope"
NS_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
NS_WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSA2005 = "http://www.w3.org/2005/08/addressing"
NS_WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
NS_WSD2009 = "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01"
NS_DN = "http://www.onvif.org/ver10/network/wsdl"
SOAP_NAMESPACES = (NS_SOAP, NS_SOAP11)
WSA_NAMESPACES = (NS_WSA, NS_WSA2005)
WSD_NAMESPACES = (NS_WSD, NS_WSD2009)
MULTICAST_ADDR = ("239.255.255.250", 3702)
MAX_DATAGRAM = 65535
_URI_START = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")


class DiscoveryError(ValueError):
    pass


def build_probe(message_id: str, types: str = "dn:NetworkVideoTransmitter") -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS_SOAP}" xmlns:a="{NS_WSA}" xmlns:d="{NS_WSD}" xmlns:dn="{NS_DN}">'
        "<s:Header>"
        f"<a:Action s:mustUnderstand=\"1\">{NS_WSD}/Probe</a:Action>"
        f"<a:MessageID>{message_id}</a:MessageID>"
        "<a:ReplyTo><a:Address>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous"
        "</a:Address></a:ReplyTo>"
        '<a:To s:mustUnderstand="1">urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>'
        f"</s:Header><s:Body><d:Probe><d:Types>{types}</d:Types></d:Probe></s:Body></s:Envelope>"
    ).encode()


@dataclass(frozen=True, slots=True)
class ProbeMatch:
    endpoint: str  # urn:uuid:... ('' when the camera sent none, or an empty one)
    xaddrs: tuple[str, ...]
    types: tuple[str, ...]
    scopes: tuple[str, ...]  # as sent (percent-encoded), one URI each
    metadata_version: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def decoded_scopes(self) -> tuple[str, ...]:
        """The scopes with their percent-encoding decoded (UTF-8), whole."""
        return tuple(unquote(s, errors="replace") for s in self.scopes)

    def scope(self, kind: str) -> str:
        """Value of an ``onvif://www.onvif.org/<kind>/<value>`` scope (URL-decoded), or ''."""
        prefix = f"onvif://www.onvif.org/{kind}/"
        values = [unquote(s[len(prefix) :], errors="replace") for s in self.scopes if s.lower().startswith(prefix.lower())]
        return ", ".join(v for v in values if v)


def split_scopes(text: str) -> tuple[str, ...]:
    """The scope URIs of a Scopes list. A word that does not start with a URI scheme cannot
    be a scope of its own: it is the rest of a value sent with a raw space."""
    out: list[str] = []
    for word in text.split():
        if out and not _URI_START.match(word):
            out[-1] = f"{out[-1]} {word}"
        else:
            out.append(word)
    return tuple(out)


def _local(el: etree._Element) -> tuple[str, str]:
    """(namespace, local name) of an element; ('', '') for comments and processing
    instructions."""
    tag = el.tag
    if not isinstance(tag, str):
        return "", ""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return "", tag


def _children(el: etree._Element, namespaces: Sequence[str], name: str) -> Iterator[etree._Element]:
    for child in el:
        ns, local = _local(child)
        if local == name and ns in namespaces:
            yield child


def _child(el: etree._Element, namespaces: Sequence[str], name: str) -> etree._Element | None:
    return next(_children(el, namespaces, name), None)


def _text(el: etree._Element | None) -> str:
    if el is None:
        return ""
    return "".join(t for t in el.itertext() if isinstance(t, str)).strip()


def _message_id(text: str) -> str:
    """A MessageID compared as cameras echo it: without ``urn:``/``uuid:``, any case."""
    value = text.strip().lower()
    for prefix in ("urn:", "uuid:"):
        value = value.removeprefix(prefix)
    return value


def _fault_text(fault: etree._Element) -> str:
    words = " ".join(_text(fault).split())
    return words[:200] or "(no reason given)"


def parse_probe_matches(data: bytes, relates_to: str | None = None) -> list[ProbeMatch]:
    """The ProbeMatch entries of a reply (see the module docstring for the shapes
    understood). Anything else raises DiscoveryError with the reason; with
    ``relates_to``, so does a reply whose RelatesTo names another probe."""
    try:
        root = xmlsafe.parse(data)
    except xmlsafe.MalformedXML as exc:
        raise DiscoveryError(f"malformed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise DiscoveryError("a SOAP message may not carry a DOCTYPE (entities are not expanded)")
    soap_ns, name = _local(root)
    if name != "Envelope" or soap_ns not in SOAP_NAMESPACES:
        raise DiscoveryError(f"not a SOAP envelope: the root element is <{name}> in namespace {soap_ns!r}")
    header = _child(root, (soap_ns,), "Header")
    body = _child(root, (soap_ns,), "Body")
    if body is None:
        raise DiscoveryError("SOAP envelope with no Body")
    fault = _child(body, (soap_ns,), "Fault")
    if fault is not None:
        raise DiscoveryError(f"SOAP fault: {_fault_text(fault)}")
    if relates_to is not None and header is not None:
        rel = _child(header, WSA_NAMESPACES, "RelatesTo")
        if rel is not None and _message_id(_text(rel)) != _message_id(relates_to):
            raise DiscoveryError(f"reply relates to another probe ({_text(rel)[:80]!r})")
    matches: list[etree._Element] = []
    is_reply = False
    for child in body:
        ns, local = _local(child)
        if ns in WSD_NAMESPACES and local == "ProbeMatches":
            matches.extend(_children(child, (ns,), "ProbeMatch"))
            is_reply = True
        elif ns in WSD_NAMESPACES and local == "ProbeMatch":  # not wrapped in ProbeMatches
            matches.append(child)
            is_reply = True
    if not is_reply:
        found = [f"<{_local(c)[1]}>" for c in body if _local(c)[1]]
        raise DiscoveryError(f"not a ProbeMatches reply: the Body holds {', '.join(found[:5]) or 'nothing'}")
    out: list[ProbeMatch] = []
    for m in matches:
        wsd = _local(m)[0]
        epr = _child(m, WSA_NAMESPACES, "EndpointReference")
        endpoint = _text(_child(epr, (_local(epr)[0],), "Address")) if epr is not None else ""
        xaddrs = tuple(_text(_child(m, (wsd,), "XAddrs")).split())
        if not endpoint and not xaddrs:
            raise DiscoveryError("a ProbeMatch with neither an endpoint reference nor XAddrs")
        mv_text = _text(_child(m, (wsd,), "MetadataVersion"))
        out.append(
            ProbeMatch(
                endpoint,
                xaddrs,
                tuple(_text(_child(m, (wsd,), "Types")).split()),
                split_scopes(_text(_child(m, (wsd,), "Scopes"))),
                int(mv_text) if re.fullmatch(r"[0-9]{1,18}", mv_text) else None,
            )
        )
    return out


def parse_target(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``HOST`` (port 3702); IPv6 as ``[::1]:PORT``."""
    value = text.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port = rest.lstrip(":") or "3702"
    elif value.count(":") == 1:
        host, port = value.split(":")
    else:
        host, port = value, "3702"
    if not host or not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise DiscoveryError(f"expected HOST:PORT, found {text!r}")
    return host, int(port)


def xaddr_host_port(xaddr: str) -> tuple[str, int]:
    try:
        parts = urlsplit(xaddr)
        port = parts.port
    except ValueError as exc:  # a bad IPv6 literal, a port out of range
        raise DiscoveryError(f"XAddr {xaddr!r}: {exc}") from None
    if not parts.hostname:
        raise DiscoveryError(f"XAddr without a host: {xaddr!r}")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


@dataclass(slots=True)
class NotUnderstood:
    """Replies from one sender that could not be understood (repeats of a datagram, as
    WS-Discovery senders send them, count once)."""

    sender: str  # host:port
    reason: str  # of the first one
    raw: list[bytes] = field(default_factory=list)

    @property
    def replies(self) -> int:
        return len(self.raw)


@dataclass(slots=True)
class ProbeResult:
    matches: list[tuple[ProbeMatch, str]]  # (match, sender host:port), one per responder
    not_understood: list[NotUnderstood]


def _sender(addr: tuple[Any, ...]) -> str:
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Collector(asyncio.DatagramProtocol):
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.matches: dict[str, tuple[ProbeMatch, str]] = {}
        self.not_understood: dict[str, NotUnderstood] = {}

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        sender = _sender(addr)
        data = data[:MAX_DATAGRAM]
        try:
            found = parse_probe_matches(data, self.message_id)
        except DiscoveryError as exc:
            self._refused(sender, str(exc), data)
            return
        except Exception as exc:  # a parser bug must not lose the reply either
            self._refused(sender, f"parser error {type(exc).__name__}: {exc}", data)
            return
        for m in found:
            key = m.endpoint or (m.xaddrs[0] if m.xaddrs else sender)
            self.matches.setdefault(key, (m, sender))

    def _refused(self, sender: str, reason: str, data: bytes) -> None:
        entry = self.not_understood.setdefault(sender, NotUnderstood(sender, reason))
        if data not in entry.raw:
            entry.raw.append(data)


def _interface_address(interface: str) -> str:
    """IPv4 address of an interface given by address or name (Linux)."""
    with contextlib.suppress(OSError):
        socket.inet_aton(interface)
        return interface
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", interface.encode()[:15]))  # SIOCGIFADDR
        except OSError as exc:
            raise DiscoveryError(f"interface {interface!r}: {exc.strerror}") from None
    return socket.inet_ntoa(packed[20:24])


async def _resolve(targets: Sequence[tuple[str, int]]) -> list[tuple[int, tuple[Any, ...]]]:
    """(family, socket address) of each target; IPv4 preferred for a name with both."""
    loop = asyncio.get_running_loop()
    out: list[tuple[int, tuple[Any, ...]]] = []
    for host, port in targets:
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise DiscoveryError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
        infos = [i for i in infos if i[0] in (socket.AF_INET, socket.AF_INET6)]
        if not infos:
            raise DiscoveryError(f"{host!r} has no IPv4 or IPv6 address")
        infos.sort(key=lambda i: i[0] != socket.AF_INET)
        out.append((int(infos[0][0]), tuple(infos[0][4])))
    return out


def _probe_socket(family: int, addrs: Sequence[tuple[Any, ...]], multicast: bool, interface: str | None) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        loopback = "127.0.0.1" if family == socket.AF_INET else "::1"
        bind_addr = "0.0.0.0" if family == socket.AF_INET else "::"
        if multicast and family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            if interface:
                ifaddr = _interface_address(interface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ifaddr))
                bind_addr = ifaddr
        elif addrs and all(a[0] == loopback for a in addrs):
            bind_addr = loopback
        sock.bind((bind_addr, 0))
    except BaseException:
        sock.close()
        raise
    return sock


async def probe(
    targets: Sequence[tuple[str, int]] = (),
    *,
    multicast: bool = True,
    interface: str | None = None,
    wait: float = 3.0,
) -> ProbeResult:
    """Send one Probe to the multicast group and/or each unicast target (IPv4 or IPv6);
    return the ``(match, sender host:port)`` pairs collected within ``wait`` seconds
    (deduplicated by endpoint, else first XAddr) and the replies that could not be
    understood. A target that does not resolve, or a probe the system refuses to send
    (no route, ...), raises DiscoveryError."""
    message_id = f"urn:uuid:{uuid.uuid4()}"
    payload = build_probe(message_id)
    loop = asyncio.get_running_loop()
    resolved = await _resolve(targets)
    collector = _Collector(message_id)
    sends: list[tuple[socket.socket, tuple[Any, ...]]] = []
    transports: list[asyncio.BaseTransport] = []
    try:
        for family in (socket.AF_INET, socket.AF_INET6):
            addrs = [a for f, a in resolved if f == family]
            mcast = multicast and family == socket.AF_INET
            if not addrs and not mcast:
                continue
            sock = _probe_socket(family, addrs, mcast, interface)
            transport, _ = await loop.create_datagram_endpoint(lambda: collector, sock=sock)
            transports.append(transport)
            sends += [(sock, MULTICAST_ADDR)] if mcast else []
            sends += [(sock, a) for a in addrs]
        for attempt in range(2):  # UDP: send twice, as WS-Discovery recommends
            failed = []
            for sock, addr in sends:
                try:
                    sock.sendto(payload, addr)
                except OSError as exc:
                    failed.append(f"{_sender(addr)}: {exc.strerror or exc}")
            if failed:
                raise DiscoveryError(f"probe not sent to {'; '.join(failed)}")
            if attempt == 0:
                await asyncio.sleep(min(0.1, wait / 4))
        await asyncio.sleep(wait)
    finally:
        for t in transports:
            t.close()
    return ProbeResult(list(collector.matches.values()), list(collector.not_understood.values()))
