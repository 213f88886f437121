"""WS-Discovery replies as real cameras send them.

Byte vectors written by hand from the specifications (SOAP 1.1/1.2, WS-Addressing
2004/08 and 2005/08, WS-Discovery 2005/04 and 1.1) and the shapes cameras are known to
send, each with what the parser must make of it -- including replies it cannot understand,
which must be refused with a reason, never silently turned into nothing. Then every reply
shape of the camera simulator (``hwsim.onvif.discovery.VARIANTS``), and `edge-gateway scan
onvif` against a simulator answering in all of them at once, on real UDP sockets."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.onvif import discovery
from drivers.onvif.discovery import DiscoveryError, parse_probe_matches
from tests.support.sim_child import ReadyLineChild

ROOT = Path(__file__).resolve().parents[3]

S12 = "http://www.w3.org/2003/05/soap-envelope"
S11 = "http://schemas.xmlsoap.org/soap/envelope/"
A04 = "http://schemas.xmlsoap.org/ws/2004/08/addressing"
A05 = "http://www.w3.org/2005/08/addressing"
D05 = "http://schemas.xmlsoap.org/ws/2005/04/discovery"
D09 = "http://docs.oasis-open.org/ws-dd/ns/discovery/2009/01"
MID = "urn:uuid:6f2e4c2a-8d3b-4b61-9a4e-2f0c8f1d7e55"
CAM = "urn:uuid:2419d68a-2dd2-21b2-a205-ec3d7a0d0f01"

HEADER04 = (
    f"<a:Action>{D05}/ProbeMatches</a:Action><a:MessageID>uuid:1f0e2d3c-0000-4000-8000-000000000001</a:MessageID>"
    f"<a:RelatesTo>{MID}</a:RelatesTo><a:To>{A04}/role/anonymous</a:To>"
)

# name -> (reply bytes, expected [(endpoint, xaddrs, decoded scopes)])
GOOD: dict[str, tuple[bytes, list[tuple[str, list[str], list[str]]]]] = {
    "onvif-standard": (
        f'<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}" '
        f'xmlns:dn="http://www.onvif.org/ver10/network/wsdl"><s:Header>{HEADER04}</s:Header><s:Body><d:ProbeMatches>'
        f"<d:ProbeMatch><a:EndpointReference><a:Address>{CAM}</a:Address></a:EndpointReference>"
        "<d:Types>dn:NetworkVideoTransmitter</d:Types>"
        "<d:Scopes>onvif://www.onvif.org/type/video_encoder onvif://www.onvif.org/name/Virtual%20Camera "
        "onvif://www.onvif.org/location/Main%20Street%205</d:Scopes>"
        "<d:XAddrs>http://192.0.2.10/onvif/device_service</d:XAddrs><d:MetadataVersion>10</d:MetadataVersion>"
        "</d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>".encode(),
        [(CAM, ["http://192.0.2.10/onvif/device_service"],
          ["onvif://www.onvif.org/type/video_encoder", "onvif://www.onvif.org/name/Virtual Camera",
           "onvif://www.onvif.org/location/Main Street 5"])],
    ),
    "unwrapped": (  # a ProbeMatch straight in the Body
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>{HEADER04}</s:Header><s:Body>'
        f"<d:ProbeMatch><a:EndpointReference><a:Address>{CAM}</a:Address></a:EndpointReference>"
        "<d:Types>dn:NetworkVideoTransmitter</d:Types><d:Scopes>onvif://www.onvif.org/name/Lobby</d:Scopes>"
        "<d:XAddrs>http://192.0.2.11/onvif/device_service</d:XAddrs><d:MetadataVersion>1</d:MetadataVersion>"
        "</d:ProbeMatch></s:Body></s:Envelope>".encode(),
        [(CAM, ["http://192.0.2.11/onvif/device_service"], ["onvif://www.onvif.org/name/Lobby"])],
    ),
    "soap11-other-prefixes": (
        f'<?xml version="1.0" encoding="utf-8"?><SOAP-ENV:Envelope xmlns:SOAP-ENV="{S11}" xmlns:wsa="{A04}" '
        f'xmlns:wsdd="{D05}" xmlns:tdn="http://www.onvif.org/ver10/network/wsdl"><SOAP-ENV:Header>'
        f"<wsa:MessageID>uuid:aa</wsa:MessageID><wsa:RelatesTo>{MID}</wsa:RelatesTo>"
        f"<wsa:To SOAP-ENV:mustUnderstand=\"true\">{A04}/role/anonymous</wsa:To>"
        f"<wsa:Action SOAP-ENV:mustUnderstand=\"true\">{D05}/ProbeMatches</wsa:Action></SOAP-ENV:Header>"
        "<SOAP-ENV:Body><wsdd:ProbeMatches><wsdd:ProbeMatch><wsa:EndpointReference>"
        f"<wsa:Address>{CAM}</wsa:Address></wsa:EndpointReference><wsdd:Types>tdn:NetworkVideoTransmitter</wsdd:Types>"
        "<wsdd:Scopes>onvif://www.onvif.org/name/IPC onvif://www.onvif.org/hardware/HT-200</wsdd:Scopes>"
        "<wsdd:XAddrs>http://192.0.2.12:8000/onvif/device_service</wsdd:XAddrs>"
        "<wsdd:MetadataVersion>1</wsdd:MetadataVersion></wsdd:ProbeMatch></wsdd:ProbeMatches></SOAP-ENV:Body>"
        "</SOAP-ENV:Envelope>".encode(),
        [(CAM, ["http://192.0.2.12:8000/onvif/device_service"],
          ["onvif://www.onvif.org/name/IPC", "onvif://www.onvif.org/hardware/HT-200"])],
    ),
    "wsa2005": (  # the EndpointReference (and RelatesTo) in WS-Addressing 1.0
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A05}" xmlns:d="{D05}"><s:Header>'
        f"<a:Action>{D05}/ProbeMatches</a:Action><a:RelatesTo>{MID}</a:RelatesTo>"
        f"<a:To>{A05}/anonymous</a:To></s:Header><s:Body><d:ProbeMatches><d:ProbeMatch>"
        f"<a:EndpointReference><a:Address>{CAM}</a:Address></a:EndpointReference>"
        "<d:XAddrs>http://192.0.2.13/onvif/device_service</d:XAddrs></d:ProbeMatch></d:ProbeMatches>"
        "</s:Body></s:Envelope>".encode(),
        [(CAM, ["http://192.0.2.13/onvif/device_service"], [])],
    ),
    "wsd-1.1": (  # OASIS WS-Discovery 1.1 namespace, WS-Addressing 1.0
        f'<env:Envelope xmlns:env="{S12}" xmlns:wsa="{A05}" xmlns:wsd="{D09}"><env:Header>'
        f"<wsa:Action>{D09}/ProbeMatches</wsa:Action><wsa:RelatesTo>{MID}</wsa:RelatesTo></env:Header>"
        "<env:Body><wsd:ProbeMatches><wsd:ProbeMatch>"
        f"<wsa:EndpointReference><wsa:Address>{CAM}</wsa:Address></wsa:EndpointReference>"
        "<wsd:Scopes>onvif://www.onvif.org/name/North</wsd:Scopes>"
        "<wsd:XAddrs>https://192.0.2.14/onvif/device_service</wsd:XAddrs></wsd:ProbeMatch></wsd:ProbeMatches>"
        "</env:Body></env:Envelope>".encode(),
        [(CAM, ["https://192.0.2.14/onvif/device_service"], ["onvif://www.onvif.org/name/North"])],
    ),
    "several-xaddrs-any-whitespace": (
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>{HEADER04}</s:Header><s:Body>'
        f"<d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address>{CAM}</a:Address></a:EndpointReference>"
        "<d:XAddrs>\n\thttp://192.0.2.15/onvif/device_service  http://[fe80::a:1]/onvif/device_service\n"
        "http://198.51.100.7:8080/onvif/device_service\t</d:XAddrs></d:ProbeMatch></d:ProbeMatches>"
        "</s:Body></s:Envelope>".encode(),
        [(CAM, ["http://192.0.2.15/onvif/device_service", "http://[fe80::a:1]/onvif/device_service",
                "http://198.51.100.7:8080/onvif/device_service"], [])],
    ),
    "no-endpoint": (
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>{HEADER04}</s:Header><s:Body>'
        "<d:ProbeMatches><d:ProbeMatch><d:Types>dn:NetworkVideoTransmitter</d:Types>"
        "<d:XAddrs>http://192.0.2.16/onvif/device_service</d:XAddrs></d:ProbeMatch></d:ProbeMatches>"
        "</s:Body></s:Envelope>".encode(),
        [("", ["http://192.0.2.16/onvif/device_service"], [])],
    ),
    "empty-endpoint": (
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>{HEADER04}</s:Header><s:Body>'
        "<d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address> </a:Address></a:EndpointReference>"
        "<d:XAddrs>http://192.0.2.17/onvif/device_service</d:XAddrs></d:ProbeMatch>"
        "<d:ProbeMatch><a:EndpointReference/><d:XAddrs>http://192.0.2.18/onvif/device_service</d:XAddrs>"
        "</d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>".encode(),
        [("", ["http://192.0.2.17/onvif/device_service"], []), ("", ["http://192.0.2.18/onvif/device_service"], [])],
    ),
    "scopes-url-encoded": (  # UTF-8 percent-encoding, an encoded slash, an encoded percent sign
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>{HEADER04}</s:Header><s:Body>'
        f"<d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address>{CAM}</a:Address></a:EndpointReference>"
        "<d:Scopes>onvif://www.onvif.org/name/Caf%C3%A9%20Nord onvif://www.onvif.org/location/Bldg%2FA%20100%25"
        "</d:Scopes><d:XAddrs>http://192.0.2.19/onvif/device_service</d:XAddrs></d:ProbeMatch></d:ProbeMatches>"
        "</s:Body></s:Envelope>".encode(),
        [(CAM, ["http://192.0.2.19/onvif/device_service"],
          ["onvif://www.onvif.org/name/Caf\u00e9 Nord", "onvif://www.onvif.org/location/Bldg/A 100%"])],
    ),
    "scopes-with-raw-spaces": (  # not encoded at all: the words after a space belong to the scope before
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>{HEADER04}</s:Header><s:Body>'
        f"<d:ProbeMatches><d:ProbeMatch><a:EndpointReference><a:Address>{CAM}</a:Address></a:EndpointReference>"
        "<d:Scopes>onvif://www.onvif.org/name/Virtual Camera onvif://www.onvif.org/hardware/VC 2000 "
        "onvif://www.onvif.org/type/video_encoder</d:Scopes>"
        "<d:XAddrs>http://192.0.2.20/onvif/device_service</d:XAddrs></d:ProbeMatch></d:ProbeMatches>"
        "</s:Body></s:Envelope>".encode(),
        [(CAM, ["http://192.0.2.20/onvif/device_service"],
          ["onvif://www.onvif.org/name/Virtual Camera", "onvif://www.onvif.org/hardware/VC 2000",
           "onvif://www.onvif.org/type/video_encoder"])],
    ),
    "default-namespaces-pretty-printed-with-comments": (
        b"\xef\xbb\xbf"  # a UTF-8 byte order mark
        + f'<?xml version="1.0"?>\n<Envelope xmlns="{S12}">\n  <Header>\n    <RelatesTo xmlns="{A04}">\n'
        f"      {MID}\n    </RelatesTo>\n  </Header>\n  <Body>\n    <!-- answer -->\n"
        f'    <ProbeMatches xmlns="{D05}">\n      <?vendor x?>\n      <ProbeMatch>\n'
        f'        <EndpointReference xmlns="{A04}"><Address>\n          {CAM}\n        </Address></EndpointReference>\n'
        "        <Scopes>\n          onvif://www.onvif.org/name/Garage\n        </Scopes>\n"
        "        <XAddrs><![CDATA[http://192.0.2.21/onvif/device_service]]></XAddrs>\n"
        "        <MetadataVersion>\u00b2</MetadataVersion>\n      </ProbeMatch>\n    </ProbeMatches>\n  </Body>\n"
        "</Envelope>\n".encode(),
        [(CAM, ["http://192.0.2.21/onvif/device_service"], ["onvif://www.onvif.org/name/Garage"])],
    ),
    "two-matches-no-relates-to": (  # RelatesTo missing: a reply to our socket is a reply to our probe
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header><a:Action>{D05}/ProbeMatches'
        "</a:Action></s:Header><s:Body><d:ProbeMatches>"
        f"<d:ProbeMatch><a:EndpointReference><a:Address>{CAM}</a:Address></a:EndpointReference>"
        "<d:XAddrs>http://192.0.2.22/onvif/device_service</d:XAddrs></d:ProbeMatch>"
        "<d:ProbeMatch><a:EndpointReference><a:Address>urn:uuid:0000000b-0000-4000-8000-000000000002</a:Address>"
        "</a:EndpointReference><d:XAddrs>http://192.0.2.23/onvif/device_service</d:XAddrs></d:ProbeMatch>"
        "</d:ProbeMatches></s:Body></s:Envelope>".encode(),
        [(CAM, ["http://192.0.2.22/onvif/device_service"], []),
         ("urn:uuid:0000000b-0000-4000-8000-000000000002", ["http://192.0.2.23/onvif/device_service"], [])],
    ),
    "relates-to-without-urn-prefix": (
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>'
        f"<a:RelatesTo>{MID.removeprefix('urn:').upper()}</a:RelatesTo></s:Header><s:Body><d:ProbeMatches>"
        f"<d:ProbeMatch><a:EndpointReference><a:Address>{CAM}</a:Address></a:EndpointReference>"
        "<d:XAddrs>http://192.0.2.24/onvif/device_service</d:XAddrs></d:ProbeMatch></d:ProbeMatches>"
        "</s:Body></s:Envelope>".encode(),
        [(CAM, ["http://192.0.2.24/onvif/device_service"], [])],
    ),
    "no-match": (  # a well-formed answer that matches nothing
        f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>{HEADER04}</s:Header>'
        "<s:Body><d:ProbeMatches/></s:Body></s:Envelope>".encode(),
        [],
    ),
}

ENVELOPE = f'<s:Envelope xmlns:s="{S12}" xmlns:a="{A04}" xmlns:d="{D05}"><s:Header>{HEADER04}</s:Header>'

# name -> (reply bytes, words the reason must contain)
BAD: dict[str, tuple[bytes, str]] = {
    "empty": (b"", "malformed XML"),
    "cut-short": (GOOD["onvif-standard"][0][:300], "malformed XML"),
    "binary": (b"\x00\xff\xfe\x01garbage", "malformed XML"),
    "html": (b"<html><body>Not Found</body></html>", "not a SOAP envelope"),
    "no-body": (f"{ENVELOPE}</s:Envelope>".encode(), "no Body"),
    "fault": (
        f"{ENVELOPE}<s:Body><s:Fault><s:Code><s:Value>s:Sender</s:Value></s:Code>"
        "<s:Reason><s:Text xml:lang=\"en\">Probe not supported</s:Text></s:Reason></s:Fault></s:Body></s:Envelope>".encode(),
        "SOAP fault",
    ),
    "a-probe": (discovery.build_probe("urn:uuid:x"), "not a ProbeMatches"),
    "unknown-discovery-namespace": (
        f'<s:Envelope xmlns:s="{S12}"><s:Body><x:ProbeMatches xmlns:x="urn:example:discovery"><x:ProbeMatch/>'
        "</x:ProbeMatches></s:Body></s:Envelope>".encode(),
        "not a ProbeMatches",
    ),
    "relates-to-another-probe": (
        GOOD["onvif-standard"][0].replace(MID.encode(), b"urn:uuid:00000000-0000-4000-8000-00000000dead"),
        "relates to another probe",
    ),
    "doctype-external-entity": (
        b'<?xml version="1.0"?><!DOCTYPE s:Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        + f'<s:Envelope xmlns:s="{S12}" xmlns:d="{D05}"><s:Body><d:ProbeMatches><d:ProbeMatch>'
        "<d:XAddrs>&x;</d:XAddrs></d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>".encode(),
        "DOCTYPE",
    ),
    "doctype-entity-expansion": (
        b'<?xml version="1.0"?><!DOCTYPE e [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        + f'<s:Envelope xmlns:s="{S12}"><s:Body>&b;</s:Body></s:Envelope>'.encode(),
        "DOCTYPE",
    ),
    "probe-match-without-endpoint-or-xaddrs": (
        f"{ENVELOPE}<s:Body><d:ProbeMatches><d:ProbeMatch><d:Types>dn:NetworkVideoTransmitter</d:Types>"
        "</d:ProbeMatch></d:ProbeMatches></s:Body></s:Envelope>".encode(),
        "neither an endpoint reference nor XAddrs",
    ),
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_reply_vector_understood(name: str) -> None:
    data, expected = GOOD[name]
    got = parse_probe_matches(data, MID)
    assert [(m.endpoint, list(m.xaddrs), list(m.decoded_scopes)) for m in got] == expected


def test_scope_values_decoded_whole() -> None:
    (m,) = parse_probe_matches(GOOD["onvif-standard"][0], MID)
    assert (m.scope("name"), m.scope("location"), m.scope("hardware")) == ("Virtual Camera", "Main Street 5", "")
    (m,) = parse_probe_matches(GOOD["scopes-with-raw-spaces"][0], MID)
    assert (m.scope("name"), m.scope("hardware")) == ("Virtual Camera", "VC 2000")
    (m,) = parse_probe_matches(GOOD["scopes-url-encoded"][0], MID)
    assert m.scope("name") == "Caf\u00e9 Nord"


@pytest.mark.parametrize("name", sorted(BAD))
def test_reply_vector_refused_with_reason(name: str) -> None:
    data, words = BAD[name]
    with pytest.raises(DiscoveryError) as e:
        parse_probe_matches(data, MID)
    assert words in str(e.value)
    assert "root:" not in str(e.value)  # nothing of an external entity was read


# ---------------------------------------------------------------- the simulator's reply shapes

SIM_SCOPES = ["onvif://www.onvif.org/name/Virtual Camera", "onvif://www.onvif.org/location/Main Street 5"]


def _sim_expected(variant: str) -> tuple[str, list[str]] | None:
    """(endpoint, xaddrs) the parser must find in the simulator's ``variant``, None if the
    reply cannot be understood."""
    xaddr = "http://127.0.0.1:8000/onvif/device_service"
    return {
        "garbage": None,
        "multi-xaddrs": (CAM, [xaddr, "http://[::1]:8000/onvif/device_service"]),
        "no-endpoint": ("", [xaddr]),
        "empty-endpoint": ("", [xaddr]),
    }.get(variant, (CAM, [xaddr]))


def _sim_variants() -> list[str]:
    from hwsim.onvif.discovery import VARIANTS

    return sorted(VARIANTS)


@pytest.mark.parametrize("variant", _sim_variants())
def test_every_simulator_variant(variant: str) -> None:
    from hwsim.onvif.discovery import Responder, probe_matches

    cam = Responder(CAM, lambda: "http://127.0.0.1:8000/onvif/device_service", lambda: list(SIM_SCOPES), lambda: True,
                    discovery_variant=variant)
    data = probe_matches(MID, [cam])
    expected = _sim_expected(variant)
    if expected is None:
        with pytest.raises(DiscoveryError, match="malformed XML"):
            parse_probe_matches(data, MID)
        return
    (m,) = parse_probe_matches(data, MID)
    assert (m.endpoint, list(m.xaddrs), list(m.decoded_scopes)) == (*expected, SIM_SCOPES)
    assert m.scope("name") == "Virtual Camera"


# ---------------------------------------------------------------- never an unexpected exception

def _parse_outcome(data: bytes) -> None:
    try:
        parse_probe_matches(data, MID)
    except DiscoveryError as exc:
        assert str(exc)  # always a reason


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048))
def test_parser_never_raises_on_arbitrary_bytes(data: bytes) -> None:
    _parse_outcome(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(sorted(GOOD)),
    cuts=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 40), st.binary(max_size=12)), max_size=4),
)
def test_parser_never_raises_on_damaged_replies(base: str, cuts: list[tuple[int, int, bytes]]) -> None:
    data = GOOD[base][0]
    for at, length, insert in cuts:
        at %= len(data) + 1
        data = data[:at] + insert + data[at + length :]
    _parse_outcome(data)


_NAMES = st.sampled_from(
    ["Envelope", "Header", "Body", "ProbeMatches", "ProbeMatch", "EndpointReference", "Address", "Types",
     "Scopes", "XAddrs", "MetadataVersion", "RelatesTo", "Fault", "Reason", "Text", "x"]
)
_NSS = st.sampled_from([S12, S11, A04, A05, D05, D09, "", "urn:x"])
_TEXT = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)


def _xml_tree() -> st.SearchStrategy[str]:
    def element(children: st.SearchStrategy[list[str]]) -> st.SearchStrategy[str]:
        return st.builds(
            lambda name, ns, text, kids, comment: (
                f'<{name} xmlns="{ns}">{_escape(text)}{"<!--c-->" if comment else ""}{"".join(kids)}</{name}>'
            ),
            _NAMES, _NSS, _TEXT, children, st.booleans(),
        )

    leaf = element(st.just([]))
    return st.recursive(leaf, lambda inner: element(st.lists(inner, max_size=4)), max_leaves=25)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_xml_tree())
def test_parser_never_raises_on_arbitrary_soap_like_trees(doc: str) -> None:
    _parse_outcome(doc.encode())


# ---------------------------------------------------------------- `edge-gateway scan onvif`, real sockets

ALL_SIM = "\n".join(
    f'[[cameras]]\nname = "Virtual Camera {variant}"\nlocation = "Main Street 5"\nmodel = "VC 2000"\n'
    f'discovery_variant = "{variant}"\n'
    for variant in _sim_variants()
)


def _sim(tmp_path: Path, text: str) -> ReadyLineChild:
    cfg = tmp_path / "sim.toml"
    cfg.write_text(text)
    return ReadyLineChild(
        [sys.executable, "-c", "import sys; from hwsim.cli import main; sys.exit(main())", "onvif", "-c", str(cfg)],
        env={**os.environ}, log=tmp_path / "sim.log",
    )


@pytest.fixture
def all_variants(tmp_path: Path) -> Iterator[dict[str, Any]]:
    child = _sim(tmp_path, ALL_SIM)
    try:
        yield child.start().info
    finally:
        child.stop()


def scan(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", "onvif", "--timeout", "1", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )


def test_scan_json_lists_every_variant_whole(all_variants: dict[str, Any]) -> None:
    port = all_variants["discovery_port"]
    r = scan("--json", "--address", f"127.0.0.1:{port}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    by_name = {row["name"]: row for row in out["found"]}
    cams = all_variants["cameras"]
    expected_names = {f"Virtual Camera {v}" for v in _sim_variants() if v != "garbage"}
    assert set(by_name) == expected_names, out
    for variant in _sim_variants():
        if variant == "garbage":
            continue
        name = f"Virtual Camera {variant}"
        row, cam = by_name[name], cams[name]
        xaddr = f"http://127.0.0.1:{cam['port']}/onvif/device_service"
        endpoint = None if variant in ("no-endpoint", "empty-endpoint") else f"urn:uuid:{cam['uuid']}"
        assert row["endpoint"] == endpoint, (variant, row)
        want_xaddrs = [xaddr, f"http://[::1]:{cam['port']}/onvif/device_service"] if variant == "multi-xaddrs" else [xaddr]
        assert row["xaddrs"] == want_xaddrs, (variant, row)
        assert f"onvif://www.onvif.org/name/{name}" in row["scopes"], (variant, row)
        assert "onvif://www.onvif.org/location/Main Street 5" in row["scopes"], (variant, row)
        assert (row["location"], row["hardware"]) == ("Main Street 5", "VC 2000"), (variant, row)
        assert row["from"] == f"127.0.0.1:{port}"
    (unclear,) = out["not_understood"]
    assert (unclear["from"], unclear["replies"]) == (f"127.0.0.1:{port}", 1)
    assert "malformed XML" in unclear["reason"] and "raw" not in unclear
    assert f"1 reply not understood from 127.0.0.1:{port}" in r.stderr


def test_scan_reports_a_reply_it_cannot_understand(tmp_path: Path) -> None:
    child = _sim(tmp_path, '[[cameras]]\nname = "broken"\ndiscovery_variant = "garbage"\n').start()
    try:
        port = child.info["discovery_port"]
        r = scan("--address", f"127.0.0.1:{port}")
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert f"1 reply not understood from 127.0.0.1:{port}" in r.stderr
        assert "<s:Envelope" not in r.stderr  # the raw XML only with --verbose
        r = scan("--verbose", "--address", f"127.0.0.1:{port}")
        assert r.returncode == 1
        assert f"1 reply not understood from 127.0.0.1:{port}" in r.stderr
        assert "<s:Envelope" in r.stderr and "<a:RelatesTo>" in r.stderr
        r = scan("--json", "--verbose", "--address", f"127.0.0.1:{port}")
        out = json.loads(r.stdout)
        assert out["found"] == [] and out["not_understood"][0]["raw"][0].startswith("<?xml")
    finally:
        child.stop()


def test_scan_table_never_cuts_an_address(all_variants: dict[str, Any]) -> None:
    r = scan("--address", f"127.0.0.1:{all_variants['discovery_port']}", columns=50)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for name, cam in all_variants["cameras"].items():
        if name.endswith("garbage"):
            continue
        for text in (f"http://127.0.0.1:{cam['port']}/onvif/device_service", f"onvif://www.onvif.org/name/{name}"):
            assert any(text in line for line in lines), f"{text!r} not whole in:\n{r.stdout}"
    assert f"urn:uuid:{all_variants['cameras']['Virtual Camera standard']['uuid']}" in r.stdout
    assert "\u2026" not in r.stdout


# ---------------------------------------------------------------- the probe itself, IPv6 and refused sends

class _Answer(asyncio.DatagramProtocol):
    """A responder on a loopback socket that answers each Probe with a vector reply."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.transport: Any = None
        self.probes = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        import re

        self.probes += 1
        found = re.search(rb"<a:MessageID>([^<]+)</a:MessageID>", data)
        assert found is not None
        self.transport.sendto(self.reply.replace(MID.encode(), found.group(1)), addr)

    def error_received(self, exc: Exception) -> None:
        raise AssertionError(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        pass


async def test_probe_reaches_an_ipv6_responder() -> None:
    import asyncio
    import socket

    loop = asyncio.get_running_loop()
    transport, answer = await loop.create_datagram_endpoint(
        lambda: _Answer(GOOD["unwrapped"][0]), local_addr=("::1", 0), family=socket.AF_INET6
    )
    try:
        port = transport.get_extra_info("sockname")[1]
        result = await discovery.probe([("::1", port)], multicast=False, wait=0.5)
    finally:
        transport.close()
    assert answer.probes >= 1
    ((m, sender),) = result.matches
    assert (m.endpoint, sender) == (CAM, f"[::1]:{port}")
    assert result.not_understood == []


async def test_a_probe_that_cannot_be_sent_is_an_error() -> None:
    # a broadcast address without SO_BROADCAST: the kernel refuses, nothing leaves the host
    with pytest.raises(DiscoveryError, match=r"probe not sent to 255\.255\.255\.255:3702"):
        await discovery.probe([("255.255.255.255", 3702)], multicast=False, wait=0.2)


def test_hwsim_cli_picks_the_reply_shape(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import sys; from hwsim.cli import main; sys.exit(main())", "onvif"]
    child = ReadyLineChild([*argv, "--cameras", "2", "--discovery-variant", "unwrapped"], env={**os.environ},
                           log=tmp_path / "sim.log").start()
    try:
        r = scan("--json", "--address", f"127.0.0.1:{child.info['discovery_port']}")
        assert r.returncode == 0, r.stderr
        assert sorted(row["name"] for row in json.loads(r.stdout)["found"]) == ["cam1", "cam2"]
    finally:
        child.stop()
    bad = subprocess.run([*argv, "--cameras", "1", "--discovery-variant", "nonsense"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "--discovery-variant" in bad.stderr


def test_scan_messages_are_shown_as_text_not_markup() -> None:
    r = scan("--address", "a[/b]:x")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "expected HOST:PORT, found 'a[/b]:x'" in r.stderr


@pytest.mark.parametrize(
    ("reply", "shown"),
    [
        ("<s:Fault><s:Reason><s:Text>[/b] [red]x</s:Text></s:Reason></s:Fault>", "SOAP fault: [/b] [red]x"),
        ("<d:ProbeMatches>\x1b[2J[/b]</d:ProbeMatches>", "<s:Body><d:ProbeMatches>\\x1b[2J[/b]</d:ProbeMatches>"),
    ],
    ids=["markup-in-a-fault", "terminal-escape"],
)
async def test_a_hostile_reply_is_reported_harmlessly(reply: str, shown: str) -> None:
    import asyncio

    data = f"{ENVELOPE}<s:Body>{reply}</s:Body></s:Envelope>".encode()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: _Answer(data), local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "scan", "onvif", "--timeout", "0.5", "--verbose", "--address",
            f"127.0.0.1:{port}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
    finally:
        transport.close()
    text = err.decode()
    assert proc.returncode == 1 and "Traceback" not in text, text
    assert f"1 reply not understood from 127.0.0.1:{port}: " in text
    assert shown in text and "\x1b" not in text, text
