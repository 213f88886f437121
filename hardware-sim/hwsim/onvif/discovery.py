"""WS-Discovery (2005/04, as used by ONVIF) responder for simulated cameras.

Answers a ``Probe`` sent to its UDP port with one ``ProbeMatches`` per camera whose types
match (``dn:NetworkVideoTransmitter``, ``tds:Device``; an empty Types matches everything).
Tests send unicast probes to a loopback port; ``multicast=True`` also joins
239.255.255.250 for demos on a real LAN (port 3702).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from lxml import etree

from hwsim.onvif.soap import esc

log = logging.getLogger("hwsim.onvif.discovery")

NS_SOAP = "http://www.w3.org/2003/05/soap-envelope"
NS_WSA = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
NS_WSD = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
NS_DN = "http://www.onvif.org/ver10/network/wsdl"
NS_TDS = "http://www.onvif.org/ver10/device/wsdl"
MULTICAST_GROUP = "239.255.255.250"
OFFERED_TYPES = frozenset({(NS_DN, "NetworkVideoTransmitter"), (NS_TDS, "Device")})

_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


class Responder:
    """What the responder needs to know about one camera."""

    def __init__(self, address: str, xaddr: Callable[[], str], scopes: Callable[[], list[str]], up: Callable[[], bool]) -> None:
        self.address = address  # urn:uuid:...
        self.xaddr = xaddr
        self.scopes = scopes
        self.up = up


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


def probe_matches(relates_to: str, cameras: Sequence[Responder]) -> bytes:
    matches = "".join(
        "<d:ProbeMatch>"
        f"<a:EndpointReference><a:Address>{esc(c.address)}</a:Address></a:EndpointReference>"
        "<d:Types>dn:NetworkVideoTransmitter tds:Device</d:Types>"
        f"<d:Scopes>{esc(' '.join(c.scopes()))}</d:Scopes>"
        f"<d:XAddrs>{esc(c.xaddr())}</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion>"
        "</d:ProbeMatch>"
        for c in cameras
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<s:Envelope xmlns:s="{NS_SOAP}" xmlns:a="{NS_WSA}" xmlns:d="{NS_WSD}" '
        f'xmlns:dn="{NS_DN}" xmlns:tds="{NS_TDS}"><s:Header>'
        f"<a:Action>{NS_WSD}/ProbeMatches</a:Action>"
        f"<a:MessageID>urn:uuid:{uuid.uuid4()}</a:MessageID>"
        f"<a:RelatesTo>{esc(relates_to)}</a:RelatesTo>"
        "<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
        f"</s:Header><s:Body><d:ProbeMatches>{matches}</d:ProbeMatches></s:Body></s:Envelope>"
    ).encode()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, cameras: Callable[[], Sequence[Responder]]) -> None:
        self.cameras = cameras
        self.transport: asyncio.DatagramTransport | None = None
        self.probes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        parsed = parse_probe(data)
        if parsed is None or self.transport is None:
            return
        mid, types = parsed
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
