"""`edge-gateway scan onvif` against an independent WS-Discovery publisher: the
``wsdiscovery`` package (2.1.x) announcing NetworkVideoTransmitters, each in its own child
process, answering a unicast Probe on loopback (see ``wsd_publisher``).

The publisher also checks our side: it answers only a Probe it understands and whose Types
it matches, so a malformed Probe would find nothing. And its own encoder, driven directly,
gives byte vectors this project did not write for the reply parser."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.onvif import discovery
from tests.support.sim_child import ReadyLineChild

pytestmark = pytest.mark.conformance

ROOT = Path(__file__).parents[2]
SCAN_TIMEOUT = "2.5"  # the publisher delays its answer by up to 0.5 s (APP_MAX_DELAY), then repeats it

PUBLISHERS: list[dict[str, Any]] = [
    {
        "scopes": [
            "onvif://www.onvif.org/type/video_encoder",
            "onvif://www.onvif.org/Profile/Streaming",
            "onvif://www.onvif.org/name/Virtual Camera",
            "onvif://www.onvif.org/hardware/VC 2000 Pro",
            "onvif://www.onvif.org/location/Main Street 5",
        ],
        "xaddrs": ["http://127.0.0.1:18080/onvif/device_service", "http://[::1]:18080/onvif/device_service"],
    },
    {
        "scopes": ["onvif://www.onvif.org/name/Caf\u00e9 Nord entrance", "onvif://www.onvif.org/location/city/north"],
        "xaddrs": ["http://127.0.0.1:18081/onvif/device_service"],
        "device_type": False,
    },
]


def test_independent_implementation_version() -> None:
    assert version("wsdiscovery").startswith("2.1."), version("wsdiscovery")


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def publishers(tmp_path: Path) -> Iterator[list[dict[str, Any]]]:
    children: list[ReadyLineChild] = []
    try:
        for i, spec in enumerate(PUBLISHERS):
            child = ReadyLineChild(
                [sys.executable, "-m", "tests.conformance.wsd_publisher", str(_free_udp_port()), json.dumps(spec)],
                env={**os.environ, "PYTHONPATH": str(ROOT)}, log=tmp_path / f"publisher{i}.log",
            )
            children.append(child)
            child.start()
        yield [{**c.info, **spec} for c, spec in zip(children, PUBLISHERS, strict=True)]
    finally:
        for c in children:
            c.stop()


def scan(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", "onvif", "--timeout", SCAN_TIMEOUT, *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=ROOT,
    )


def _addresses(pubs: list[dict[str, Any]]) -> list[str]:
    return [a for p in pubs for a in ("--address", f"127.0.0.1:{p['port']}")]


def test_scan_json_lists_every_publisher_whole(publishers: list[dict[str, Any]]) -> None:
    r = scan("--json", *_addresses(publishers))
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)["found"]
    by_endpoint = {row["endpoint"]: row for row in found}
    assert set(by_endpoint) == {p["endpoint"] for p in publishers}, found
    for p in publishers:
        row = by_endpoint[p["endpoint"]]
        assert row["xaddrs"] == p["xaddrs"]
        assert row["scopes"] == p["scopes"]
        assert row["from"].startswith("127.0.0.1:")
    first = by_endpoint[publishers[0]["endpoint"]]
    assert (first["name"], first["hardware"], first["location"]) == ("Virtual Camera", "VC 2000 Pro", "Main Street 5")
    assert by_endpoint[publishers[1]["endpoint"]]["name"] == "Caf\u00e9 Nord entrance"
    assert "not_understood" not in r.stdout or json.loads(r.stdout)["not_understood"] == []


def test_scan_human_output_shows_scopes_and_addresses_whole(publishers: list[dict[str, Any]]) -> None:
    r = scan(*_addresses(publishers[:1]), columns=60)  # narrower than any XAddr + scope line
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    p = publishers[0]
    for text in (p["endpoint"], *p["xaddrs"], *p["scopes"]):
        assert any(text in line for line in lines), f"{text!r} not shown whole in:\n{r.stdout}"
    assert "\u2026" not in r.stdout  # nothing elided


def test_our_probe_is_understood_by_the_independent_parser() -> None:
    from wsdiscovery.message import parseSOAPMessage
    from wsdiscovery.namespaces import NS_ACTION_PROBE

    env = parseSOAPMessage(discovery.build_probe("urn:uuid:0b7e0d86-7c36-4c8b-9c1b-1c0f7c0d7a01"), "127.0.0.1")
    assert env is not None and env.getAction() == NS_ACTION_PROBE
    assert env.getMessageId() == "urn:uuid:0b7e0d86-7c36-4c8b-9c1b-1c0f7c0d7a01"
    (qname,) = env.getTypes()
    assert (qname.getNamespace(), qname.getLocalname()) == (discovery.NS_DN, "NetworkVideoTransmitter")


def _independent_probe_match(relates_to: str, epr: str, scopes: list[str], xaddrs: list[str]) -> bytes:
    from wsdiscovery import QName, Scope
    from wsdiscovery.actions.probematch import constructProbeMatch
    from wsdiscovery.message import createSOAPMessage
    from wsdiscovery.service import Service

    service = Service([QName(discovery.NS_DN, "NetworkVideoTransmitter", "dn")], [Scope(s) for s in scopes], xaddrs, epr, "1")
    return str(createSOAPMessage(constructProbeMatch([service], relates_to))).encode()


# what the independent encoder can carry: it escapes spaces only (Scope.getQuotedValue)
_scope_value = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Cn", "Zl", "Zp"), blacklist_characters="%\t\n\r\x0b\x0c\x85\xa0"), max_size=40).filter(
    lambda s: not any(c.isspace() and c != " " for c in s)
)


@settings(max_examples=150, deadline=None)
@given(values=st.lists(_scope_value, min_size=1, max_size=5), n_xaddrs=st.integers(1, 4))
def test_independent_encoder_round_trips_scopes(values: list[str], n_xaddrs: int) -> None:
    scopes = [f"onvif://www.onvif.org/name/{v}" for v in values]
    xaddrs = [f"http://192.0.2.{i}:8{i}/onvif/device_service" for i in range(1, n_xaddrs + 1)]
    data = _independent_probe_match("urn:uuid:1", "urn:uuid:cam", scopes, xaddrs)
    (m,) = discovery.parse_probe_matches(data, "urn:uuid:1")
    assert m.endpoint == "urn:uuid:cam"
    assert m.xaddrs == tuple(xaddrs)
    assert m.decoded_scopes == tuple(scopes)
