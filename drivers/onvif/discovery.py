"""WS-Discovery (2005/04) Probe for ONVIF NetworkVideoTransmitters.

``build_probe`` and ``parse_probe_matches`` are pure; ``probe`` sends the Probe over UDP
(multicast to 239.255.255.250:3702 and/or unicast to given HOST:PORT targets) and collects
the ProbeMatches that relate to it until the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from drivers.onvif import xmlsafe

NS_SOAP = "http://www.w3.org/2003/05/soap-envelope"
NS_WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
NS_DN = "http://www.onvif.org/ver10/network/wsdl"
MULTICAST_ADDR = ("239.255.255.250", 3702)
MAX_DATAGRAM = 65535


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
    endpoint: str  # urn:uuid:...
    xaddrs: tuple[str, ...]
    types: tuple[str, ...]
    scopes: tuple[str, ...]
    metadata_version: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def scope(self, kind: str) -> str:
        """Value of an ``onvif://www.onvif.org/<kind>/<value>`` scope (URL-decoded), or ''."""
        prefix = f"onvif://www.onvif.org/{kind}/"
        values = [unquote(s[len(prefix) :]) for s in self.scopes if s.lower().startswith(prefix.lower())]
        return ", ".join(v for v in values if v)


def parse_probe_matches(data: bytes, relates_to: str | None = None) -> list[ProbeMatch]:
    """Parse a ProbeMatches message. With ``relates_to``, a reply to another probe is
    refused (DiscoveryError)."""
    try:
        root = xmlsafe.parse(data)
    except xmlsafe.MalformedXML as exc:
        raise DiscoveryError(f"malformed XML: {exc}") from None
    if relates_to is not None:
        rel = root.find(f"{{{NS_SOAP}}}Header/{{{NS_WSA}}}RelatesTo")
        if rel is None or (rel.text or "").strip() != relates_to:
            raise DiscoveryError("reply does not relate to our probe")
    body = root.find(f"{{{NS_SOAP}}}Body/{{{NS_WSD}}}ProbeMatches")
    if body is None:
        raise DiscoveryError("not a ProbeMatches message")
    out: list[ProbeMatch] = []
    for m in body.findall(f"{{{NS_WSD}}}ProbeMatch"):
        addr = m.findtext(f"{{{NS_WSA}}}EndpointReference/{{{NS_WSA}}}Address") or ""
        xaddrs = tuple((m.findtext(f"{{{NS_WSD}}}XAddrs") or "").split())
        types = tuple((m.findtext(f"{{{NS_WSD}}}Types") or "").split())
        scopes = tuple((m.findtext(f"{{{NS_WSD}}}Scopes") or "").split())
        mv_text = (m.findtext(f"{{{NS_WSD}}}MetadataVersion") or "").strip()
        mv = int(mv_text) if mv_text.isdigit() else None
        if not addr.strip() and not xaddrs:
            continue
        out.append(ProbeMatch(addr.strip(), xaddrs, types, scopes, mv))
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
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise DiscoveryError(f"expected HOST:PORT, found {text!r}")
    return host, int(port)


def xaddr_host_port(xaddr: str) -> tuple[str, int]:
    parts = urlsplit(xaddr)
    if not parts.hostname:
        raise DiscoveryError(f"XAddr without a host: {xaddr!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


class _Collector(asyncio.DatagramProtocol):
    def __init__(self, message_id: str) -> None:
        self.message_id = message_id
        self.matches: dict[str, tuple[ProbeMatch, str]] = {}
        self.errors = 0

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            found = parse_probe_matches(data[:MAX_DATAGRAM], self.message_id)
        except DiscoveryError:
            self.errors += 1
            return
        for m in found:
            self.matches.setdefault(m.endpoint or m.xaddrs[0], (m, str(addr[0])))


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


async def probe(
    targets: Sequence[tuple[str, int]] = (),
    *,
    multicast: bool = True,
    interface: str | None = None,
    wait: float = 3.0,
) -> list[tuple[ProbeMatch, str]]:
    """Send one Probe to the multicast group and/or each unicast target; return
    ``(match, sender address)`` pairs collected within ``wait`` seconds (deduplicated by
    endpoint)."""
    message_id = f"urn:uuid:{uuid.uuid4()}"
    payload = build_probe(message_id)
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        bind_addr = "0.0.0.0"
        if multicast:
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
            if interface:
                ifaddr = _interface_address(interface)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(ifaddr))
                bind_addr = ifaddr
        elif targets and all(h in ("127.0.0.1", "localhost") for h, _ in targets):
            bind_addr = "127.0.0.1"
        sock.bind((bind_addr, 0))
    except BaseException:
        sock.close()
        raise
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Collector(message_id), sock=sock)
    dtransport = transport
    try:
        for attempt in range(2):  # UDP: send twice, as WS-Discovery recommends
            if multicast:
                dtransport.sendto(payload, MULTICAST_ADDR)
            for host, port in targets:
                dtransport.sendto(payload, (host, port))
            if attempt == 0:
                await asyncio.sleep(min(0.1, wait / 4))
        await asyncio.sleep(wait)
    finally:
        dtransport.close()
    return list(protocol.matches.values())
