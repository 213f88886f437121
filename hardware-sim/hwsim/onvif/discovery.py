"""WS-Discovery (2005/04, as used by ONVIF) responder for simulated cameras.

Answers a ``Probe`` sent to its UDP port with one ``ProbeMatches`` per camera whose types
match (``dn:NetworkVideoTransmitter``, ``tds:Device``; an empty Types matches everything).
Tests send unicast probes to a loopback port; ``multicast=True`` also joins
239.255.255.250 for demos on a real LAN (port 3702).

Each camera answers in one of the reply shapes real cameras send
(``Responder.discovery_variant``, see ``VARIANTS``): the standard ONVIF one, a ProbeMatch
not wrapped in ProbeMatches, a SOAP 1.1 envelope, WS-Addressing 2005/08, the OASIS
WS-Discovery 1.1 (2009/01) namespace, several XAddrs, no or an empty endpoint reference,
scope values sent with raw spaces, or a datagram cut short (not well-formed XML). Scope
values are percent-encoded on the wire (a scope list is space separated), so a camera named
"Virtual Camera" is sent as ``onvif://www.onvif.org/name/Virtual%20Camera`` -- except by
the ``raw-scopes`` variant, which sends the space as it is, as some cameras do.
A simulator file picks it per camera (``discovery_variant = "soap11"``), ``hwsim onvif
--discovery-variant`` for the ``--cameras`` cameras.

A probe is answered once: a repeat of a probe already seen (same MessageID; WS-Discovery
senders repeat each datagram) is ignored, as SOAP-over-UDP asks of a receiver.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import struct
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import quote, urlsplit

from lxml import etree

from hwsim.onvif.soap import esc

log = logging.getLogger("hwsim.onvif.discovery")

NS_SOAP = "http://www.w3.org/2003/05/soap-envelope"
NS_SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"
NS_WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSA2005 = "http://www.w3.org/2005/08/addressing"
NS_WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
NS_WSD2009 = "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01"
NS_DN = "http://www.onvif.org/ver10/network/wsdl"
NS_TDS = "http://www.onvif.org/ver10/device/wsdl"
MULTICAST_GROUP = "239.255.255.250"
OFFERED_TYPES = frozenset({(NS_DN, "NetworkVideoTransmitter"), (NS_TDS, "Device")})

VARIANTS = frozenset(
    {
        "standard",  # SOAP 1.2, WS-Addressing 2004/08, WS-Discovery 2005/04 (ONVIF)
        "unwrapped",  # d:ProbeMatch directly in the Body, no d:ProbeMatches around it
        "soap11",  # SOAP 1.1 envelope
        "wsa2005",  # WS-Addressing 1.0 (2005/08) namespace
        "wsd2009",  # OASIS WS-Discovery 1.1 (2009/01) namespace, WS-Addressing 2005/08
        "multi-xaddrs",  # two XAddrs in one element (IPv4 and IPv6 loopback)
        "no-endpoint",  # no a:EndpointReference at all
        "empty-endpoint",  # an a:EndpointReference with an empty a:Address
        "raw-scopes",  # scope values not percent-encoded: "name/Virtual Camera" with the space
        "garbage",  # a datagram cut short: not well-formed XML
    }
)
# scope characters sent as they are; everything else (spaces above all) is percent-encoded
_SCOPE_SAFE = ":/?#[]@!$&'()*+,;=-._~%"

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


class Responder:
    """What the responder needs to know about one camera."""

    def __init__(
        self,
        address: str,
        xaddr: Callable[[], str],
        scopes: Callable[[], list[str]],
        up: Callable[[], bool],
        *,
        discovery_variant: str = "standard",
    ) -> None:
        if discovery_variant not in VARIANTS:
            raise ValueError(f"discovery_variant {discovery_variant!r}: expected one of {sorted(VARIANTS)}")
        self.address = address  # urn:uuid:...
        self.xaddr = xaddr
        self.scopes = scopes
        self.up = up
        self.discovery_variant = discovery_variant


def parse_probe(data: bytes) -> tuple[str, set[tuple[str, str]]] | None:
    """MessageID and requested types of a Probe, or None if it is not one."""
    try:
        root = etree.fromstring(data, _PARSER)
    except etree.XMLSyntaxError:
        return None
    probe = root.find(f"{{{NS_SOAP}}}Body/{{{NS_WSD}}}Probe")
    if probe is None:
        return None
    mid_el = root.find(f"{{{NS_SOAP}}}Header/{{{NS_WSA}}}MessageID")
    mid = (mid_el.text or "").strip() if mid_el is not None else ""
    types: set[tuple[str, str]] = set()
    types_el = probe.find(f"{{{NS_WSD}}}Types")
    if types_el is not None and types_el.text:
        for qname in types_el.text.split():
            prefix, _, local = qname.rpartition(":")
            types.add((types_el.nsmap.get(prefix or None, ""), local))
    return mid, types


def encode_scope(scope: str) -> str:
    """A scope URI as it goes into the space-separated Scopes list: characters a URI may not
    hold (spaces, non-ASCII) percent-encoded; existing %XX escapes are kept."""
    return quote(scope, safe=_SCOPE_SAFE)


def _xaddrs(cam: Responder) -> str:
    xaddr = cam.xaddr()
    if cam.discovery_variant != "multi-xaddrs":
        return xaddr
    parts = urlsplit(xaddr)
    port = f":{parts.port}" if parts.port else ""
    return f"{xaddr} {parts.scheme}://[::1]{port}{parts.path}"


def probe_match(cam: Responder) -> str:
    """One d:ProbeMatch element (prefixes a: and d: as bound by ``probe_matches``)."""
    variant = cam.discovery_variant
    if variant == "no-endpoint":
        epr = ""
    elif variant == "empty-endpoint":
        epr = "<a:EndpointReference><a:Address></a:Address></a:EndpointReference>"
    else:
        epr = f"<a:EndpointReference><a:Address>{esc(cam.address)}</a:Address></a:EndpointReference>"
    if variant == "raw-scopes":
        scopes = " ".join(cam.scopes())
    else:
        scopes = " ".join(encode_scope(s) for s in cam.scopes())
    return (
        f"<d:ProbeMatch>{epr}"
        "<d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types>"
        f"<d:Scopes>{esc(scopes)}</d:Scopes>"
        f"<d:XAddrs>{esc(_xaddrs(cam))}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion>"
        "</d:ProbeMatch>"
    )


def probe_matches(relates_to: str, cameras: Sequence[Responder]) -> bytes:
    """A ProbeMatches datagram for ``cameras``, in the first camera's variant."""
    variant = cameras[0].discovery_variant if cameras else "standard"
    soap = NS_SOAP11 if variant == "soap11" else NS_SOAP
    wsa = NS_WSA2005 if variant in ("wsa2005", "wsd2009") else NS_WSA
    wsd = NS_WSD2009 if variant == "wsd2009" else NS_WSD
    anonymous = f"{wsa}/anonymous" if wsa == NS_WSA2005 else f"{wsa}/role/anonymous"
    matches = "".join(probe_match(c) for c in cameras)
    body = matches if variant == "unwrapped" else f"<d:ProbeMatches>{matches}</d:ProbeMatches>"
    data = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{soap}" xmlns:a="{wsa}" xmlns:d="{wsd}" '
        f'xmlns:dn="{NS_DN}" xmlns:tds="{NS_TDS}"><s:Header>'
        f"<a:Action>{wsd}/ProbeMatches</a:Action>"
        f"<a:MessageID>urn:uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:RelatesTo>{esc(relates_to)}</a:RelatesTo>"
        f"<a:To>{anonymous}</a:To>"
        f"</s:Header><s:Body>{body}</s:Body></s:Envelope>"
    ).encode()
    if variant == "garbage":
        return data[: len(data) // 2]  # as if the datagram had been cut short
    return data


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, cameras: Callable[[], Sequence[Responder]]) -> None:
        self.cameras = cameras
        self.transport: asyncio.DatagramTransport | None = None
        self.probes = 0
        self._seen: collections.deque[tuple[str, tuple[Any, ...]]] = collections.deque(maxlen=256)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        parsed = parse_probe(data)
        if parsed is None or self.transport is None:
            return
        mid, types = parsed
        if mid and (mid, addr) in self._seen:
            return  # the sender's repeat of a probe already answered
        self._seen.append((mid, addr))
        self.probes += 1
        if types and not types <= OFFERED_TYPES:
            return
        # one ProbeMatches per camera, as separate cameras on a LAN would send
        for cam in self.cameras():
            if cam.up():
                self.transport.sendto(probe_matches(mid, [cam]), addr)


class DiscoveryServer:
    def __init__(self, cameras: Callable[[], Sequence[Responder]], host: str = "127.0.0.1", port: int = 0, multicast: bool = False) -> None:
        self._cameras = cameras
        self.host = host
        self.port = port
        self.multicast = multicast
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol: _Protocol | None = None

    @property
    def probes(self) -> int:
        return self._protocol.probes if self._protocol else 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if self.multicast:
            sock.bind(("", self.port))
            mreq = struct.pack("=4s4s", socket.inet_aton(MULTICAST_GROUP), socket.inet_aton("0.0.0.0"))
            sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
        else:
            sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        transport, protocol = await loop.create_datagram_endpoint(lambda: _Protocol(self._cameras), sock=sock)
        self._transport = transport
        self._protocol = protocol
        log.info("WS-Discovery responder on udp %s:%d", self.host, self.port)

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
