"""Conformance: the real daemon (``edge-gateway run``) polls Modbus slaves this project did
not write -- modbus-tk 1.1.5 (``TcpServer``, ``RtuServer``) and umodbus 1.0.4 (TCP and RTU
servers) -- over Modbus TCP on loopback and Modbus RTU over a linked pseudo-terminal pair.

The slaves serve a map with holes (issue 14, item 11): coalesced reads that span them are
answered with exception 02 by the library itself. Every value the daemon reports must be
what the slave holds: all four tables, float32 in every word order, float64, 16/32/64-bit
integers, BCD, a string, scaled values; the one point mapped inside a hole is bad with reason
``illegal_address`` and nothing else is. Commands through the local API write a holding
register (function 6 and 16) and coils (function 5 and 15), and the slave holds the value.

The register contents are computed here with ``struct`` from the byte-order definitions in
drivers/modbus/README.md (pinned by a literal vector), not with the driver's codec.
"""

from __future__ import annotations

import math
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.core_daemon import Daemon, config_head, free_port
from tests.support.modbus_independent import (
    ModbusTkRtu,
    ModbusTkTcp,
    PtyPair,
    Slave,
    SlaveMap,
    UmodbusRtu,
    UmodbusTcp,
)

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.filterwarnings("ignore:isSet:DeprecationWarning"),  # modbus-tk's server thread
]

TOKEN = "conformance-token"
POLL = 1.0


# ---------------------------------------------------------------------------- encoding


def big_endian(typ: str, value: Any) -> bytes:
    if typ == "string":
        return str(value).encode("ascii")
    if typ in ("bcd16", "bcd32"):
        digits = f"{int(value):0{4 if typ == 'bcd16' else 8}d}"
        return bytes(int(digits[i]) << 4 | int(digits[i + 1]) for i in range(0, len(digits), 2))
    fmt = {
        "int16": ">h", "uint16": ">H", "int32": ">i", "uint32": ">I", "int64": ">q",
        "uint64": ">Q", "float32": ">f", "float64": ">d",
    }[typ]
    return struct.pack(fmt, value)


def words(typ: str, order: str, value: Any, length: int = 1) -> list[int]:
    """Registers as they sit in the slave: ABCD big endian, DCBA all bytes reversed, BADC
    the bytes of each word swapped, CDAB the word order reversed."""
    raw = big_endian(typ, value)
    if typ == "string":
        raw = raw.ljust(2 * length, b"\x00")
    if order == "DCBA":
        raw = raw[::-1]
    elif order == "BADC":
        raw = b"".join(raw[i : i + 2][::-1] for i in range(0, len(raw), 2))
    elif order == "CDAB":
        raw = b"".join(raw[i : i + 2] for i in reversed(range(0, len(raw), 2)))
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


def test_word_orders_match_the_published_vectors() -> None:
    # 1.0f = 0x3F800000 (IEEE 754), as the four orders put it on the wire
    assert words("float32", "ABCD", 1.0) == [0x3F80, 0x0000]
    assert words("float32", "CDAB", 1.0) == [0x0000, 0x3F80]
    assert words("float32", "BADC", 1.0) == [0x803F, 0x0000]
    assert words("float32", "DCBA", 1.0) == [0x0000, 0x803F]
    assert words("uint32", "CDAB", 0x12345678) == [0x5678, 0x1234]
    assert words("bcd32", "ABCD", 12345678) == [0x1234, 0x5678]


# ---------------------------------------------------------------------------- the devices


@dataclass(frozen=True)
class P:
    point: str
    table: str
    offset: int
    typ: str = "uint16"
    order: str = "ABCD"
    value: Any = 0
    scale: float = 1.0
    length: int = 1
    write_fc: int | None = None

    def registers(self) -> list[int]:
        if self.table in ("coil", "discrete"):
            return [1 if self.value else 0]
        raw = round(self.value / self.scale) if self.scale != 1.0 else self.value
        return words(self.typ, self.order, raw, self.length)

    def expected(self) -> Any:
        return self.value


@dataclass(frozen=True)
class Dev:
    id: str
    cls: str
    unit: int
    points: tuple[P, ...]
    blocks: tuple[tuple[str, int, int], ...]  # table, start, size: everything else is a hole
    in_hole: tuple[str, ...] = ()


METER = Dev(
    "meter",
    "electricity_meter",
    1,
    (
        P("voltage", "holding", 0, "float32", "ABCD", 230.1),
        P("voltage_b", "holding", 2, "float32", "CDAB", 229.75),
        P("voltage_c", "holding", 4, "float32", "BADC", -231.4),
        P("current", "holding", 6, "float32", "DCBA", 12.34),
        # hole 8-11
        P("current_b", "holding", 12, "int16", "ABCD", -321),
        P("current_c", "holding", 13, "uint16", "ABCD", 65000),
        P("power", "holding", 14, "int32", "ABCD", -123456),
        P("power_b", "holding", 16, "int32", "CDAB", 654321),
        P("power_c", "holding", 18, "uint32", "ABCD", 4000000000),
        P("apparent_power", "holding", 20, "uint32", "CDAB", 70000),
        # hole 22-23
        P("reactive_power", "holding", 24, "int16", "BADC", -2),
        # hole 25-29
        P("meter_time", "holding", 30, "string", "ABCD", "2026-12-04T20:00:00", length=10),
        P("energy_import", "input", 0, "float64", "ABCD", 12345.678),
        P("energy_export", "input", 4, "float64", "CDAB", 0.5),
        P("energy_total", "input", 8, "uint64", "ABCD", 987654321012),
        P("energy_import_t1", "input", 12, "int64", "DCBA", -123456789),
        P("energy_import_t2", "input", 16, "bcd32", "ABCD", 12345678),
        # hole 18-20, and a point the profile maps inside it
        P("energy_import_t4", "input", 19, "uint16", "ABCD", 0),
        P("energy_import_t3", "input", 21, "uint32", "BADC", 0x12345678),
        P("frequency", "input", 23, "uint16", "ABCD", 50.02, scale=0.01),
        P("power_factor", "input", 24, "int16", "ABCD", -0.85, scale=0.001),
        P("relay_closed", "coil", 0, "bool", value=True),
        P("battery_low", "discrete", 9, "bool", value=True),
    ),
    (
        ("holding", 0, 8), ("holding", 12, 10), ("holding", 24, 1), ("holding", 30, 10),
        ("input", 0, 18), ("input", 21, 4), ("coil", 0, 4), ("discrete", 8, 4),
    ),
    in_hole=("energy_import_t4",),
)
LIGHT = Dev(  # two adjacent blocks in holding (modbus-tk will not read across them)
    "light",
    "streetlight",
    2,
    (
        P("dimming", "holding", 0, "uint16", value=80),
        P("power", "holding", 1, "float32", "CDAB", 35.5),
        P("on", "coil", 0, "bool", value=True),
        P("fault", "coil", 6, "bool", value=True),  # an inactive event would not be sent
    ),
    (("holding", 0, 1), ("holding", 1, 2), ("coil", 0, 1), ("coil", 6, 1)),
)
LIGHT16 = Dev(  # writes with the "multiple" functions 16 and 15
    "light16",
    "streetlight",
    3,
    (
        P("dimming", "holding", 10, "uint16", value=5, write_fc=16),
        P("power", "input", 0, "float32", "DCBA", -1.5),
        P("on", "coil", 3, "bool", value=False, write_fc=15),
        P("fault", "discrete", 4, "bool", value=True),
    ),
    (("holding", 10, 1), ("input", 0, 2), ("coil", 3, 1), ("discrete", 4, 1)),
)
DEVICES = (METER, LIGHT, LIGHT16)


def slave_map() -> SlaveMap:
    smap = SlaveMap()
    for dev in DEVICES:
        for table, start, size in dev.blocks:
            smap.block(dev.unit, table, start, size)
        for p in dev.points:
            if p.point not in dev.in_hole:
                smap.put(dev.unit, p.table, p.offset, p.registers())
    return smap


def profile_text(dev: Dev) -> str:
    out = [
        f'[profile]\nid = "conf-{dev.id}"\nclass = "{dev.cls}"\ndriver = "modbus"\n'
        f'vendor = "Conformance"\nmodel = "{dev.id}"\n'
    ]
    for p in dev.points:
        addr = f'table = "{p.table}", offset = {p.offset}'
        if p.table not in ("coil", "discrete"):
            addr += f', type = "{p.typ}", order = "{p.order}"'
        if p.typ == "string":
            addr += f", length = {p.length}"
        if p.write_fc is not None:
            addr += f", write_fc = {p.write_fc}"
        out.append(f"\n[points.{p.point}]\naddress = {{ {addr} }}\n")
        if p.scale != 1.0:
            out.append(f"scale = {p.scale}\n")
    return "".join(out)


def gateway_config(tmp: Path, bus: str, api_port: int) -> Path:
    (tmp / "profiles").mkdir(exist_ok=True)
    for dev in DEVICES:
        (tmp / "profiles" / f"conf-{dev.id}.toml").write_text(profile_text(dev))
    devices = "".join(
        f'[[devices]]\nid = "{d.id}"\nclass = "{d.cls}"\nprofile = "conf-{d.id}"\n'
        f'bus = "line"\naddress = {{ unit = {d.unit} }}\npoll = "{POLL:g}s"\n\n'
        for d in DEVICES
    )
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        config_head(tmp, api_port=api_port, gw_id="conformance-gw", profile_dirs=True)
        + f"""
[[buses]]
name = "line"
driver = "modbus"
{bus}
timeout = "500ms"
retries = 1

{devices}"""
    )
    cfg.chmod(0o600)
    return cfg


# ---------------------------------------------------------------------------- helpers


def metric_sum(d: Daemon, name: str, **labels: str) -> float:
    status, body, _ = d.raw("/metrics")
    assert status == 200
    total = 0.0
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += float(s.value)
    return total


def records(d: Daemon) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        page = d.get(f"/api/v1/records?after_seq={after}&limit=1000")["records"]
        if not page:
            return out
        out.extend(page)
        after = page[-1]["seq"]


def latest(d: Daemon, dev: str) -> dict[str, dict[str, Any]]:
    points: dict[str, dict[str, Any]] = d.get(f"/api/v1/devices/{dev}/points")["points"]
    return points


def same(got: Any, want: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, float) or isinstance(got, float):
        return isinstance(got, int | float) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    return bool(got == want)


SLAVES = ["modbus-tk", "umodbus"]
TRANSPORTS = ["tcp", "rtu"]


@pytest.fixture
def setup(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Slave, Daemon]]:
    impl, transport = request.param
    smap = slave_map()
    pty: PtyPair | None = None
    slave: Slave
    if transport == "rtu":
        pty = PtyPair(tmp_path).start()
        slave = ModbusTkRtu(smap, pty.a) if impl == "modbus-tk" else UmodbusRtu(smap, pty.a)
        bus = f'transport = "rtu"\nport = "{pty.b}"\nbaud = 9600'
    else:
        tcp = ModbusTkTcp(smap) if impl == "modbus-tk" else UmodbusTcp(smap)
        slave = tcp
    daemon: Daemon | None = None
    try:
        slave.start()
        if transport == "tcp":
            bus = f'transport = "tcp"\nhost = "127.0.0.1"\nport = {tcp.port}'
        cfg = gateway_config(tmp_path, bus, free_port())
        daemon = Daemon(cfg, env={"EDGE_GW_API_TOKEN": TOKEN}).start()
        yield slave, daemon
    finally:
        if daemon is not None:
            code = daemon.stop()
            assert code == 0, f"daemon exit code {code}:\n{daemon.log_text()}"
        slave.stop()
        if pty is not None:
            pty.stop()


@pytest.mark.parametrize(
    "setup",
    [(s, t) for s in SLAVES for t in TRANSPORTS],
    ids=[f"{s}-{t}" for s in SLAVES for t in TRANSPORTS],
    indirect=True,
)
def test_daemon_reads_and_writes_an_independent_slave(setup: tuple[Slave, Daemon]) -> None:
    slave, d = setup
    readable = {(dev.id, p.point) for dev in DEVICES for p in dev.points if p.point not in dev.in_hole}

    def missing() -> set[tuple[str, str]]:
        have = {(dev.id, pt) for dev in DEVICES for pt, x in latest(d, dev.id).items() if x["q"] == "good"}
        return readable - have

    deadline = time.monotonic() + 20
    while missing() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not missing(), (
        f"not reported good from {slave.name}: {sorted(missing())}\n"
        + "\n".join(f"{dev.id}: {latest(d, dev.id)}" for dev in DEVICES)
        + "\n" + d.log_text()
    )

    # ---- every value is what the slave holds
    wrong = []
    for dev in DEVICES:
        pts = latest(d, dev.id)
        for p in dev.points:
            if p.point in dev.in_hole:
                continue
            got = pts[p.point]
            if p.typ == "float32":
                # the slave holds a float32; the daemon reports the shortest decimal that
                # is that same float32 (230.1, not 230.100006104): compare the float32s
                ok = isinstance(got["v"], float) and struct.pack(">f", got["v"]) == struct.pack(
                    ">f", p.value
                )
            else:
                ok = same(got["v"], p.expected())
            if got["q"] != "good" or not ok:
                wrong.append(f"{dev.id}.{p.point}: got {got}, slave holds {p.expected()!r}")
    assert not wrong, "\n".join(wrong)

    # ---- the point inside the hole is bad (illegal_address), and only that one
    bad = [
        r for r in records(d)
        if r["q"] == "bad" and r["kind"] != "lifecycle"
    ]
    assert {(r["dev"], r["pt"]) for r in bad} == {("meter", "energy_import_t4")}, bad
    assert all((r.get("attrs") or {}).get("reason") == "illegal_address" for r in bad), bad
    states = {x["id"]: x["state"] for x in d.get("/api/v1/devices")["devices"]}
    assert states == {dev.id: "online" for dev in DEVICES}

    # ---- the holes were learnt once: later polls send no request that gets exception 02
    assert metric_sum(d, "edge_gw_modbus_holes_learnt_total", device="meter") >= 1
    ex02 = metric_sum(d, "edge_gw_modbus_exceptions_total", code="02")
    assert ex02 >= 1
    ts0 = latest(d, "meter")["voltage"]["ts"]
    d.wait_for(lambda: latest(d, "meter")["voltage"]["ts"] >= ts0 + 1.5 * POLL, 10, "two more polls")
    assert metric_sum(d, "edge_gw_modbus_exceptions_total", code="02") == ex02

    # ---- commands: function 6 and 16 to a holding register, 5 and 15 to a coil
    commands = [
        ("light", "dimming", 60, ("holding", 0), 60),
        ("light", "on", False, ("coil", 0), 0),
        ("light16", "dimming", 42, ("holding", 10), 42),
        ("light16", "on", True, ("coil", 3), 1),
        ("meter", "relay_closed", False, ("coil", 0), 0),
    ]
    units = {dev.id: dev.unit for dev in DEVICES}
    for i, (dev_id, point, value, (table, address), held) in enumerate(commands):
        status, res = d.post(
            f"/api/v1/devices/{dev_id}/commands",
            {"id": f"conf-{i}", "point": point, "value": value},
            token=TOKEN,
        )
        assert status == 200 and res["outcome"] == "ok", (dev_id, point, status, res)
        holds = slave.get(units[dev_id], table, address)
        assert holds == held, f"{dev_id}.{point}: slave holds {holds}, wrote {value!r}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = {(dev, pt): latest(d, dev)[pt]["v"] for dev, pt, *_ in commands}
        if now == {(dev, pt): v for dev, pt, v, *_ in commands}:
            break
        time.sleep(0.2)
    assert now == {(dev, pt): v for dev, pt, v, *_ in commands}


def test_learnt_hole_is_asked_again_when_the_slave_comes_back(tmp_path: Path) -> None:
    """modbus-tk TCP: the meter's input hole is learnt; the slave restarts with the hole
    filled (new firmware); the daemon reconnects, asks again, and the point reads."""
    slave = ModbusTkTcp(slave_map())
    slave.start()
    port = slave.port
    cfg = gateway_config(tmp_path, f'transport = "tcp"\nhost = "127.0.0.1"\nport = {port}', free_port())
    d = Daemon(cfg, env={"EDGE_GW_API_TOKEN": TOKEN}).start()
    try:
        d.wait_for(
            lambda: (p := latest(d, "meter")).get("energy_import_t4", {}).get("q") == "bad"
            and p.get("voltage", {}).get("q") == "good",
            20,
            "the meter's hole learnt",
        )
        learnt = metric_sum(d, "edge_gw_modbus_holes_learnt_total", device="meter")
        slave.stop()
        filled = slave_map()
        filled.block(METER.unit, "input", 18, 3)
        filled.put(METER.unit, "input", 19, [77])
        slave = ModbusTkTcp(filled, port)
        slave.start()
        d.wait_for(
            lambda: latest(d, "meter").get("energy_import_t4", {}).get("v") == 77,
            30,
            "the filled hole read after the slave came back",
        )
        assert latest(d, "meter")["energy_import_t4"]["q"] == "good"
        # asked again: the holding holes are the same as before (no news, not counted); the
        # input block is news: modbus-tk reads no request across its adjacent input blocks
        # 0-17, 18-20, 21-24 (split, no point bad)
        assert (
            metric_sum(d, "edge_gw_modbus_holes_learnt_total", device="meter") == learnt + 1
        ), d.log_text()
        assert "input 0-24: its register map has a hole there; now read as 3 request(s)." in (
            d.log_text()
        )
    finally:
        code = d.stop()
        slave.stop()
        assert code == 0, f"daemon exit code {code}:\n{d.log_text()}"
