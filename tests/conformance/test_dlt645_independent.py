"""Conformance: the real daemon (``edge-gateway run``) and ``edge-gateway scan serial`` against
a DL/T 645-2007 meter this project did not write -- the meter side of the PyPI package
``dlt645`` 3.2.0 (``MeterServerService`` with its ``RtuServer`` / ``TcpServer``), in a child
process, on one end of a linked pseudo-terminal pair (socat) or on a TCP listener of its own
(a transparent serial server: the bus is ``port = "tcp://127.0.0.1:PORT"``).

Every point the bundled profiles map and the library offers must come out as the value the
library holds, in the class's canonical unit (the profile reads power in kW, the class wants
W): energies (signed combined, unsigned forward/reverse), voltage, signed current, signed
power, signed power factor, frequency, run status word bits (relay, battery) and the meter
clock (04000101 + 04000102). The library refuses the data-block identifiers 0201FF00 and
0202FF00 of the three-phase profile with an error reply (C = D1, ERR = 02, "no requested
data"): those points are bad with reason ``no_data``, every other point of that meter is good
and the meter stays online. Variants: 4, 2 or 0 ``FE`` bytes before our requests (the bus
``preamble``) and 4, 1 or 0 before the meter's replies. A profile of this test maps the
class's other points on the identifiers both sides know (tariff energies, phase values,
reactive and apparent power, some read with an explicit ``format``). At frame level, 480
seeded random and edge values of every numeric catalogue DI the library serves are encoded
by it and decoded by the driver's codec. ``edge-gateway scan serial`` finds the meter on the
pty and over TCP; the TCP meter going away and coming back is read again.

Where the library and DL/T 645-2007 part ways (section numbers of the project's DL/T 645-2007
reference notes, whose byte layouts were checked against public captures), the driver follows
the standard and the test works around the library, as documented here:

* address order -- ``set_address("000012345678")`` puts the digits on the wire in the order
  written; section 2 wants the low byte first. The child process hands the library the wire
  bytes (tests/support/dlt645_independent.py).
* broadcast time sync (C = 08) -- the library reads the six bytes as YY MM DD hh mm ss;
  section 5.7 has them seconds first (ss mm hh DD MM YY), as the driver sends them. Its clock
  is therefore not set to the time we sent; the test checks our frame by the standard and
  records that the library reads it otherwise.
* a request for another address -- the library answers it with an error reply (C = D1,
  ERR = 01) under the *requested* address, where a meter must stay silent (section 3: only the
  addressed meter answers). On a real line that reply would be taken for the absent meter's
  refusal, so the conformance lines carry this one meter only.
* relay control (C = 1C) is not implemented by the library: it answers DC with ERR = 01, and
  the command comes back refused with reason ``other`` (not a dead meter).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import serial
from prometheus_client.parser import text_string_to_metric_families

from tests.support.core_daemon import Daemon, config_head, free_port
from tests.support.dlt645_independent import IndependentMeter, wire_address
from tests.support.modbus_independent import PtyPair

pytestmark = pytest.mark.conformance

TOKEN = "dlt645-conformance-token"
POLL = 1.0
ADDRESS = "000012345678"
METER3 = "202612040001"

# the single-phase profile (dlt645-ddsu-1p): DI -> value the library holds, and the point
# with the canonical value the daemon must report
ROUND1: dict[str, Any] = {
    "00010000": 123456.78,   # forward active energy, XXXXXX.XX kWh
    "00020000": 12.5,        # reverse active energy
    "00000000": -4321.09,    # combined active energy: signed
    "02010100": 220.9,       # phase A voltage, XXX.X V
    "02020100": -1.234,      # phase A current, XXX.XXX A, signed
    "02030000": -0.5,        # total active power, XX.XXXX kW, signed
    "02060000": -0.866,      # total power factor, X.XXX, signed
    "02800002": 50.02,       # frequency, XX.XX Hz
    "04000503": "0000",      # run status word 3: bit 4 = relay tripped
    "04000501": "0004",      # run status word 1: bit 2 = clock battery low
    "04000101": "26120405",  # YYMMDDWW: 2026-12-04, a Friday
    "04000102": "213045",    # hhmmss
}
EXPECT1: dict[str, Any] = {
    "energy_import": 123456.78,
    "energy_export": 12.5,
    "energy_total": -4321.09,
    "voltage": 220.9,
    "current": -1.234,
    "power": -500.0,
    "power_factor": -0.866,
    "frequency": 50.02,
    "relay_closed": True,
    "battery_low": True,
    "meter_time": "2026-12-04T21:30:45",
}
# the second round: every value changes (the points are live, not remembered)
ROUND2: dict[str, Any] = {
    "00010000": 799999.99,
    "00020000": 0.01,
    "00000000": 799999.98,
    "02010100": 799.9,
    "02020100": 79.999,
    "02030000": 12.3456,
    "02060000": 0.999,
    "02800002": 49.98,
    "04000503": "0010",
    "04000501": "0004",
    "04000101": "27010105",  # 2027-01-01, a Friday
    "04000102": "000001",
}
EXPECT2: dict[str, Any] = {
    "energy_import": 799999.99,
    "energy_export": 0.01,
    "energy_total": 799999.98,
    "voltage": 799.9,
    "current": 79.999,
    "power": 12345.6,
    "power_factor": 0.999,
    "frequency": 49.98,
    "relay_closed": False,
    "battery_low": True,
    "meter_time": "2027-01-01T00:00:01",
}
# the three-phase profile (dlt645-dtsu-3p): the library has no data blocks
VALUES3: dict[str, Any] = {
    "00010000": 1005.55,
    "00020000": 0.0,
    "00000000": 1005.55,
    "02010100": 225.5,
    "02020100": 2.345,
    "02030000": 3.6,
    "02800002": 50.0,
}
EXPECT3_GOOD: dict[str, Any] = {
    "energy_import": 1005.55, "energy_export": 0.0, "energy_total": 1005.55,
    "power": 3600.0, "frequency": 50.0,
}
EXPECT3_NO_DATA = {"voltage", "voltage_b", "voltage_c", "current", "current_b", "current_c"}

# a profile of this test: the rest of the class's points on identifiers both sides know --
# catalogue DIs the bundled profiles do not use, and DIs outside the driver's catalogue read
# with an explicit ``format`` (tariff energies, phase powers, apparent power, phase PF)
CATALOGUE_PROFILE = """
[profile]
id = "conf-dlt645-catalogue"
class = "electricity_meter"
driver = "dlt645"
vendor = "Conformance"
model = "every identifier both sides know"

[points.energy_import_t1]
address = { di = "00010100", format = "XXXXXX.XX" }
[points.energy_import_t2]
address = { di = "00010200", format = "XXXXXX.XX" }
[points.energy_import_t3]
address = { di = "00010300", format = "XXXXXX.XX" }
[points.energy_import_t4]
address = { di = "00010400", format = "XXXXXX.XX" }
[points.voltage_b]
address = { di = "02010200" }
[points.voltage_c]
address = { di = "02010300" }
[points.current_b]
address = { di = "02020200" }
[points.current_c]
address = { di = "02020300" }
[points.power_b]
address = { di = "02030200", format = "XX.XXXX", signed = true }
unit = "kW"
[points.power_c]
address = { di = "02030300", format = "XX.XXXX", signed = true }
unit = "kW"
[points.reactive_power]
address = { di = "02040000" }
unit = "kvar"
[points.apparent_power]
address = { di = "02050000", format = "XX.XXXX" }
unit = "kVA"
[points.power_factor]
address = { di = "02060100", format = "X.XXX", signed = true }
[points.battery_low]
address = { di = "04000501", bit = 3 }
[points.relay_closed]
address = { di = "04000503", bit = 4 }
invert = true
"""
VALUES_CAT: dict[str, Any] = {
    "00010100": 111.11,
    "00010200": 222.22,
    "00010300": 0.03,
    "00010400": 799999.99,
    "02010200": 231.5,
    "02010300": 0.1,
    "02020200": -0.001,
    "02020300": 799.999,
    "02030200": -79.9999,
    "02030300": 0.0001,
    "02040000": -1.5,
    "02050000": 3.25,
    "02060100": 0.5,
    "04000501": "0008",
    "04000503": "0010",
}
EXPECT_CAT: dict[str, Any] = {
    "energy_import_t1": 111.11,
    "energy_import_t2": 222.22,
    "energy_import_t3": 0.03,
    "energy_import_t4": 799999.99,
    "voltage_b": 231.5,
    "voltage_c": 0.1,
    "current_b": -0.001,
    "current_c": 799.999,
    "power_b": -79999.9,
    "power_c": 0.1,
    "reactive_power": -1500.0,
    "apparent_power": 3250.0,
    "power_factor": 0.5,
    "battery_low": True,
    "relay_closed": False,
}


def test_wire_address_is_the_standard_low_byte_first() -> None:
    # the reference's worked example (section 2/8): nameplate 123456789012 -> 12 90 78 56 34 12
    assert wire_address("123456789012") == bytes.fromhex("129078563412")
    assert wire_address(ADDRESS) == bytes.fromhex("785634120000")


# ---------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class Line:
    transport: str  # "pty" | "tcp"
    preamble: int = 4  # FE bytes before our requests (bus option)
    reply_fe: int = 4  # FE bytes before the library's replies


def gateway_config(tmp: Path, port: str, api_port: int, devices: list[tuple[str, str, str]],
                   *, preamble: int = 4, extra_bus: str = "") -> Path:
    devs = "".join(
        f'[[devices]]\nid = "{dev}"\nclass = "electricity_meter"\nprofile = "{profile}"\n'
        f'bus = "line"\naddress = {{ addr = "{addr}" }}\npoll = "{POLL:g}s"\n\n'
        for dev, profile, addr in devices
    )
    (tmp / "profiles").mkdir(exist_ok=True)
    (tmp / "profiles" / "conf-dlt645-catalogue.toml").write_text(CATALOGUE_PROFILE)
    cfg = tmp / "gateway.toml"
    cfg.write_text(config_head(tmp, api_port=api_port, gw_id="dlt645-conformance-gw", profile_dirs=True) + f"""
[[buses]]
name = "line"
driver = "serial"
port = "{port}"
baud = 9600
parity = "N"            # a pseudo-terminal cannot do parity; real meters use 8E1
preamble = {preamble}
guard = "10ms"
first_byte_timeout = "800ms"
inter_byte_timeout = "300ms"
{extra_bus}
{devs}""")
    cfg.chmod(0o600)
    return cfg


class Rig:
    """The library's meter on a pty pair or TCP, and the daemon on the other end."""

    def __init__(self, tmp: Path, line: Line, *, address: str, values: dict[str, Any],
                 devices: list[tuple[str, str, str]], extra_bus: str = "") -> None:
        self.pty: PtyPair | None = None
        self.daemon: Daemon | None = None
        if line.transport == "pty":
            self.pty = PtyPair(tmp).start()
            self.meter = IndependentMeter(port=self.pty.a, address=address, values=values,
                                          reply_fe=line.reply_fe, log=tmp / "meter.log")
        else:
            self.meter = IndependentMeter(tcp=True, address=address, values=values,
                                          reply_fe=line.reply_fe, log=tmp / "meter.log")
        try:
            self.meter.start()
            port = self.pty.b if self.pty else f"tcp://127.0.0.1:{self.meter.tcp_port}"
            cfg = gateway_config(tmp, port, free_port(), devices, preamble=line.preamble,
                                 extra_bus=extra_bus)
            self.daemon = Daemon(cfg, env={"EDGE_GW_API_TOKEN": TOKEN}).start()
        except BaseException:
            self.close()
            raise

    def close(self) -> int:
        code = 0
        if self.daemon is not None:
            code = self.daemon.stop()
        self.meter.stop()
        if self.pty is not None:
            self.pty.stop()
        return code


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(line: Line, **kw: Any) -> Rig:
        rig = Rig(tmp_path, line, **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        log = rig.daemon.log_text() if rig.daemon else ""
        code = rig.close()
        assert code == 0, f"daemon exit code {code}:\n{log}"


def points(d: Daemon, dev: str) -> dict[str, dict[str, Any]]:
    pts: dict[str, dict[str, Any]] = d.get(f"/api/v1/devices/{dev}/points")["points"]
    return pts


def same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, float):
        return isinstance(got, int | float) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)
    return bool(got == want)


def wrong_points(d: Daemon, dev: str, want: dict[str, Any]) -> list[str]:
    pts = points(d, dev)
    return [
        f"{pt}: got {pts.get(pt)}, the meter holds {v!r}"
        for pt, v in want.items()
        if pt not in pts or pts[pt].get("q") != "good" or not same(pts[pt].get("v"), v)
    ]


def wait_values(d: Daemon, dev: str, want: dict[str, Any], timeout: float = 20) -> None:
    try:
        d.wait_for(lambda: not wrong_points(d, dev, want), timeout, f"the values of {dev}")
    except AssertionError as exc:
        raise AssertionError("\n".join(wrong_points(d, dev, want))) from exc


def metric_sum(d: Daemon, name: str, **labels: str) -> float:
    status, body, _ = d.raw("/metrics")
    assert status == 200
    return sum(
        float(s.value)
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def records(d: Daemon) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while page := d.get(f"/api/v1/records?after_seq={after}&limit=1000")["records"]:
        out.extend(page)
        after = page[-1]["seq"]
    return out


def state(d: Daemon, dev: str) -> str:
    return str(d.get(f"/api/v1/devices/{dev}")["state"])


# ---------------------------------------------------------------------------- readings

LINES = [
    Line("pty", 4, 4),
    Line("pty", 2, 1),
    Line("pty", 0, 0),
    Line("tcp", 4, 4),
]


@pytest.mark.parametrize("line", LINES, ids=[f"{x.transport}-fe{x.preamble}-reply{x.reply_fe}" for x in LINES])
def test_single_phase_profile_reads_every_value_the_independent_meter_holds(
    rig_factory: Any, line: Line
) -> None:
    rig = rig_factory(line, address=ADDRESS, values=ROUND1,
                      devices=[("m1", "dlt645-ddsu-1p", ADDRESS)])
    d, meter = rig.daemon, rig.meter
    wait_values(d, "m1", EXPECT1)
    meter.set_values(ROUND2)
    wait_values(d, "m1", EXPECT2)
    assert state(d, "m1") == "online"
    assert not [pt for pt, x in points(d, "m1").items() if x.get("q") != "good"], points(d, "m1")

    # what the library decoded: only reads (C = 11) of the profile's DIs, for our address,
    # with the bus's number of wake-up bytes, and every one answered normally (C = 91)
    reqs = meter.requests()
    assert reqs
    assert {r["c"] for r in reqs} == {0x11}, reqs[:5]
    assert {r["addr"] for r in reqs} == {wire_address(ADDRESS).hex()}
    assert {r["fe"] for r in reqs} == {line.preamble}
    asked = {bytes.fromhex(r["data"])[::-1].hex().upper() for r in reqs}
    assert asked == {di.upper() for di in ROUND1}, asked
    for r in reqs:
        reply = bytes.fromhex(r["reply"])
        body = reply.lstrip(b"\xfe")
        assert len(reply) - len(body) == line.reply_fe
        assert body[8] == 0x91, r
    assert metric_sum(d, "edge_gw_serial_error_replies_total") == 0


def test_every_other_identifier_both_sides_know(rig_factory: Any) -> None:
    rig = rig_factory(Line("pty"), address=ADDRESS, values=VALUES_CAT,
                      devices=[("mc", "conf-dlt645-catalogue", ADDRESS)])
    d, meter = rig.daemon, rig.meter
    wait_values(d, "mc", EXPECT_CAT)
    assert {pt for pt, x in points(d, "mc").items() if x.get("q") != "good"} == set()
    asked = {bytes.fromhex(r["data"])[::-1].hex().upper() for r in meter.requests()}
    assert asked == set(VALUES_CAT)
    assert metric_sum(d, "edge_gw_serial_error_replies_total") == 0


def test_three_phase_profile_blocks_the_meter_refuses_are_point_errors(rig_factory: Any) -> None:
    rig = rig_factory(Line("pty"), address=METER3, values=VALUES3,
                      devices=[("m3", "dlt645-dtsu-3p", METER3)])
    d, meter = rig.daemon, rig.meter
    wait_values(d, "m3", EXPECT3_GOOD)

    def refused() -> set[str]:
        return {r["pt"] for r in records(d)
                if r["dev"] == "m3" and r["q"] == "bad" and r["kind"] != "lifecycle"
                and (r.get("attrs") or {}).get("reason") == "no_data"}

    d.wait_for(lambda: refused() == EXPECT3_NO_DATA, 10, "the block points bad with no_data")
    pts = points(d, "m3")
    assert {pt for pt, x in pts.items() if x.get("q") != "good"} == EXPECT3_NO_DATA, pts
    bad = {r["pt"] for r in records(d) if r["q"] == "bad" and r["kind"] != "lifecycle"}
    assert bad == EXPECT3_NO_DATA
    assert state(d, "m3") == "online"

    # the library's refusal on the wire: D1, L = 1, ERR = 02 (+0x33 = 35), for each block DI
    blocks = {"0201ff00", "0202ff00"}
    seen = {bytes.fromhex(r["data"])[::-1].hex(): bytes.fromhex(r["reply"]).lstrip(b"\xfe")
            for r in meter.requests()}
    for di in blocks:
        assert seen[di][8:11] == bytes([0xD1, 0x01, 0x35]), (di, seen[di].hex(" "))
    assert {di for di, reply in seen.items() if reply[8] == 0x91} == {
        "00010000", "00020000", "00000000", "02030000", "02800002"}
    assert metric_sum(d, "edge_gw_serial_error_replies_total", protocol="dlt645",
                      reason="no_data") >= 2
    # still polled: the good points keep coming after the refusals
    ts0 = pts["energy_import"]["ts"]
    d.wait_for(lambda: points(d, "m3")["energy_import"]["ts"] >= ts0 + 1.5 * POLL, 10,
               "two more polls")
    assert state(d, "m3") == "online"


def test_relay_command_the_meter_does_not_implement_is_refused_not_a_dead_meter(
    rig_factory: Any,
) -> None:
    rig = rig_factory(Line("pty"), address=ADDRESS, values=ROUND1,
                      devices=[("m1", "dlt645-ddsu-1p", ADDRESS)])
    d, meter = rig.daemon, rig.meter
    wait_values(d, "m1", EXPECT1)
    status, res = d.post("/api/v1/devices/m1/commands",
                         {"id": "conf-relay", "point": "relay_closed", "value": False}, token=TOKEN)
    # sent and refused by the meter: "failed" (502) with the meter's reason, ERR bit 0
    assert status == 502 and res["outcome"] == "failed", res
    assert str(res["reason"]).startswith("other:"), res
    relay = [r for r in meter.requests() if r["c"] == 0x1C]
    assert len(relay) == 1, relay
    data = bytes.fromhex(relay[0]["data"])
    # PA P0..P2 (profile password 02000000), C0..C3, N1 = 1A (trip), N2, 6-byte expiry
    assert data[:8] == bytes.fromhex("0200000000000000") and data[8] == 0x1A and len(data) == 16
    assert bytes.fromhex(relay[0]["reply"]).lstrip(b"\xfe")[8:11] == bytes([0xDC, 0x01, 0x34])
    wait_values(d, "m1", {"relay_closed": True, "voltage": 220.9})
    assert state(d, "m1") == "online"


def test_serial_server_that_goes_away_and_comes_back(rig_factory: Any, tmp_path: Path) -> None:
    """TCP serial-server mode: the library's meter process dies (the listener with it), the
    meter goes offline; a new one on the same port with new values is read again."""
    rig = rig_factory(Line("tcp"), address=ADDRESS, values=ROUND1,
                      devices=[("m1", "dlt645-ddsu-1p", ADDRESS)])
    d = rig.daemon
    wait_values(d, "m1", EXPECT1)
    port = rig.meter.tcp_port
    rig.meter.stop()
    d.wait_for(lambda: state(d, "m1") == "offline", 20, "the meter offline")
    rig.meter = IndependentMeter(tcp=True, tcp_port=port, address=ADDRESS, values=ROUND2,
                                 log=tmp_path / "meter-2.log").start()
    d.wait_for(lambda: state(d, "m1") == "online", 30, "the meter online again")
    wait_values(d, "m1", EXPECT2)
    assert rig.meter.requests()


# ---------------------------------------------------------------------------- broadcast time


def test_broadcast_time_sync_follows_the_standard_the_library_reads_it_otherwise(
    rig_factory: Any,
) -> None:
    rig = rig_factory(Line("pty"), address=ADDRESS, values=ROUND1,
                      devices=[("m1", "dlt645-ddsu-1p", ADDRESS)],
                      extra_bus='time_sync = "1d"\ntime_sync_utc_offset = "0s"')
    d, meter = rig.daemon, rig.meter
    syncs = d.wait_for(lambda: [r for r in meter.requests() if r["c"] == 0x08], 15,
                       "the broadcast time sync at bus open")
    assert len(syncs) == 1 and syncs[0]["addr"] == "99" * 6 and syncs[0]["reply"] is None
    ss, mi, hh, dd, mo, yy = (int(f"{b:02x}") for b in bytes.fromhex(syncs[0]["data"]))
    sent = datetime(2000 + yy, mo, dd, hh, mi, ss)
    now = datetime.now(UTC).replace(tzinfo=None)
    assert abs(sent - now) < timedelta(seconds=30), (sent, now)
    # the library reads YY MM DD hh mm ss (its clock is not the time sent); no reply either way
    assert meter.state()["time"] != sent.isoformat()
    wait_values(d, "m1", EXPECT1)


# ---------------------------------------------------------------------------- discovery


def scan(port: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "scan", "serial", "--port", port, "--protocol",
         "dlt645", "--bauds", "9600", "--parity", "N", "--timeout", "1", "--json"],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("transport", ["pty", "tcp"])
def test_scan_finds_the_independent_meter(tmp_path: Path, transport: str) -> None:
    pty = PtyPair(tmp_path).start() if transport == "pty" else None
    meter = IndependentMeter(port=pty.a if pty else None, tcp=pty is None, address=METER3,
                             reply_fe=2, log=tmp_path / "meter.log")
    try:
        meter.start()
        port = pty.b if pty else f"tcp://127.0.0.1:{meter.tcp_port}"
        code, out, err = scan(port)
        assert code == 0, err
        assert json.loads(out)["found"] == [
            {"protocol": "dlt645", "address": METER3, "baud": 9600, "parity": "N", "port": port}
        ]
        reqs = meter.requests()
        assert [(r["c"], r["addr"], r["data"]) for r in reqs] == [(0x13, "aa" * 6, "")]
        # its reply: C = 93, the real address in the header and in the data (A0 first)
        reply = bytes.fromhex(reqs[0]["reply"]).lstrip(b"\xfe")
        assert reply[1:7] == wire_address(METER3) and reply[8:10] == bytes([0x93, 0x06])
    finally:
        meter.stop()
        if pty is not None:
            pty.stop()


# ---------------------------------------------------------------------------- codec sweep

# DI -> (largest magnitude the library accepts, in units of the last digit; decimals; signed
# by section 7 / the driver's catalogue). The library caps every item at a top digit of 7
# (799999.99 kWh, 799.9 V, ...) -- unsigned too, so forward energies of 800000 kWh and more
# cannot be had from it.
SWEEP: dict[str, tuple[int, int, bool]] = {
    "00000000": (79999999, 2, True),
    "00010000": (79999999, 2, False),
    "02010100": (7999, 1, False),
    "02020100": (799999, 3, True),
    "02030000": (799999, 4, True),
    "02040000": (799999, 4, True),
    "02060000": (999, 3, True),
    "02800002": (9999, 2, False),
}


def test_driver_codec_decodes_whatever_the_library_encodes(tmp_path: Path) -> None:
    """Frame level, a wider net than the daemon tests: seeded random values over the whole
    range of every numeric catalogue DI the library serves, plus the edges (0, the smallest
    step, the largest magnitude, negative), read with the driver's request builder, frame
    scanner, reply parser and value decoder."""
    import random

    from drivers.serial.dlt645 import codec

    rng = random.Random(645)
    rounds: list[dict[str, float]] = []
    for i in range(60):
        values: dict[str, float] = {}
        for di, (top, dec, signed) in SWEEP.items():
            k = {0: 0, 1: top, 2: 1, 3: top}.get(i, rng.randint(0, top))
            if signed and (i == 3 or (i > 3 and rng.random() < 0.5)):
                k = -k
            values[di] = round(k / 10**dec, dec)
        rounds.append(values)

    pty = PtyPair(tmp_path).start()
    meter = IndependentMeter(port=pty.a, address=ADDRESS, reply_fe=0, log=tmp_path / "m.log")
    address = codec.address_to_wire(ADDRESS)
    wrong: list[str] = []
    try:
        meter.start()
        with _port(pty.b) as line:
            for values in rounds:
                meter.set_values(values)
                for di_text, want in values.items():
                    code = int(di_text, 16)
                    frames = _exchange(line, codec.build_read(address, code))
                    assert len(frames) == 1, (di_text, frames)
                    reply = codec.parse_read_reply(frames[0], code)
                    assert isinstance(reply, codec.ReadReply), (di_text, want, reply)
                    got = codec.decode_value(reply.payload, codec.CATALOGUE_2007[code])
                    if not math.isclose(float(got), want, abs_tol=1e-9):
                        wrong.append(f"{di_text}: library holds {want!r}, driver reads {got!r} "
                                     f"from {reply.payload.hex(' ')}")
    finally:
        meter.stop()
        pty.stop()
    assert not wrong, "\n".join(wrong)


# ---------------------------------------------------------------------------- deviations


def _exchange(line: serial.Serial, request: bytes) -> list[Any]:
    """Send one request on an open port; the frames of the reply (bounded: 5 s)."""
    from drivers.serial.dlt645 import codec

    line.reset_input_buffer()
    line.write(request)
    scanner = codec.FrameScanner()
    deadline = time.monotonic() + 5
    frames: list[codec.Frame] = []
    while not frames and time.monotonic() < deadline:
        frames = scanner.feed(line.read(max(1, line.in_waiting)))
    return frames


def _port(path: str) -> serial.Serial:
    return serial.Serial(path, 9600, timeout=0.2)


def test_library_answers_a_request_for_another_address(tmp_path: Path) -> None:
    """Documents the library, not the gateway: a meter must stay silent for a frame that is
    not addressed to it; this one answers D1 ERR = 01 under the requested address. If this
    starts failing, the library changed and a second (absent) meter could join the lines."""
    from drivers.serial.dlt645 import codec

    pty = PtyPair(tmp_path).start()
    meter = IndependentMeter(port=pty.a, address=ADDRESS, values=ROUND1, log=tmp_path / "m.log")
    try:
        meter.start()
        other = codec.address_to_wire("000000000099")
        with _port(pty.b) as line:
            frames = _exchange(line, codec.build_read(other, 0x00010000))
        assert frames, "no reply (the library now stays silent: see the docstring)"
        assert frames[0].address == other and frames[0].control == 0xD1
        assert frames[0].data == b"\x01"
    finally:
        meter.stop()
        pty.stop()


def test_library_address_digits_go_on_the_wire_in_the_order_written(tmp_path: Path) -> None:
    """Documents the library: given the nameplate digits, its meter answers at the address
    field 00 00 12 34 56 78, i.e. nameplate 785634120000 by section 2 -- hence the child hands
    it the wire bytes. Our request for 000012345678 (78 56 34 12 00 00) gets its error reply."""
    from drivers.serial.dlt645 import codec

    pty = PtyPair(tmp_path).start()
    meter = IndependentMeter(port=pty.a, address=ADDRESS, values=ROUND1, library_address=True,
                             log=tmp_path / "m.log")
    try:
        meter.start()
        assert meter.state()["address"] == "000012345678"  # wire order, as the library holds it
        ours = codec.address_to_wire(ADDRESS)
        assert ours == bytes.fromhex("785634120000")
        swapped = codec.address_to_wire("785634120000")
        with _port(pty.b) as line:
            frames = _exchange(line, codec.build_read(ours, 0x00010000))
            assert [(f.control, f.data) for f in frames] == [(0xD1, b"\x01")]
            frames = _exchange(line, codec.build_read(swapped, 0x00010000))
        assert [(f.control, f.data) for f in frames] == [
            (0x91, bytes.fromhex("00000100") + bytes.fromhex("78563412"))]
    finally:
        meter.stop()
        pty.stop()
