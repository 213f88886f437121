"""Register maps with holes (issue 14, item 11): a coalesced read that spans addresses the
device does not have gets exception 02. The bus splits the block, learns the hole for that
device, keeps polling the valid points, and reports one logged, counted event; only points
really inside the hole are bad (reason ``illegal_address``).

Against the simulator's ``holes`` option (``hwsim modbus``), over real sockets and a real pty.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hwsim.modbus.model import SimFileError, farm_from_dict
from hwsim.modbus.server import ModbusSimulator

from drivers.modbus import codec
from drivers.modbus.driver import ModbusBus
from drivers.modbus.schema import DeviceAddress, PointAddress, ProfileOptions
from gateway.plugin import DeviceSpec, DeviceUnavailable, PointSpec
from tests.support.modbus_helpers import metric, rtu_bus, tcp_bus

# the device: holding 0-3 and 10-13 hold values, 4-9 is a hole (exception 02 even though
# the device reads unmapped registers elsewhere as zero); input 0-1 and 5 with a hole at 2-4
DEVICE_FILE = """
[device]
model = "holey"
gaps = "zero"
holes = [
  { table = "holding", first = 4, last = 9 },
  { table = "input", first = 2, last = 4 },
  { table = "coil", first = 3, last = 3 },
]

[[values]]
name = "a"
table = "holding"
address = 0
value = 11

[[values]]
name = "b"
table = "holding"
address = 1
type = "f32"
value = 2.5

[[values]]
name = "c"
table = "holding"
address = 3
type = "i16"
value = -7

[[values]]
name = "d"
table = "holding"
address = 10
type = "u32"
value = 70000

[[values]]
name = "e"
table = "holding"
address = 13
value = 13

[[values]]
name = "in_hole"
table = "holding"
address = 6
value = 66

[[values]]
name = "i0"
table = "input"
address = 0
type = "u32"
value = 123456

[[values]]
name = "i5"
table = "input"
address = 5
value = 5

[[values]]
name = "k0"
table = "coil"
address = 0
value = true

[[values]]
name = "k5"
table = "coil"
address = 5
value = true
"""

POINTS = {  # name -> address; one holding block 0-13 and one input block 0-5 when coalesced
    "a": PointAddress(table="holding", offset=0, type="uint16"),
    "b": PointAddress(table="holding", offset=1, type="float32"),
    "c": PointAddress(table="holding", offset=3, type="int16"),
    "d": PointAddress(table="holding", offset=10, type="uint32"),
    "e": PointAddress(table="holding", offset=13, type="uint16"),
    "i0": PointAddress(table="input", offset=0, type="uint32"),
    "i5": PointAddress(table="input", offset=5, type="uint16"),
    "k0": PointAddress(table="coil", offset=0),
    "k5": PointAddress(table="coil", offset=5),
}
VALUES = {"a": 11, "b": 2.5, "c": -7, "d": 70000, "e": 13, "i0": 123456, "i5": 5, "k0": True, "k5": True}


def device(dev_id: str, extra: dict[str, PointAddress] | None = None) -> DeviceSpec:
    pts = {**POINTS, **(extra or {})}
    return DeviceSpec(
        id=dev_id,
        cls="test",
        profile="test",
        address=DeviceAddress(unit=1),
        options=ProfileOptions(),
        points=tuple(PointSpec(n, a) for n, a in pts.items()),
        poll_interval=1.0,
    )


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[ModbusSimulator]:
    (tmp_path / "holey.toml").write_text(DEVICE_FILE)
    devs = farm_from_dict({"devices": [{"name": "h", "model": "holey.toml", "unit": 1}]}, tmp_path)
    s = ModbusSimulator(devs, tcp_port=0, rtu_pty=True)
    await s.start()
    yield s
    await s.stop()


def make_bus(sim: ModbusSimulator, transport: str, name: str, **opts: object) -> ModbusBus:
    if transport == "tcp":
        assert sim.tcp_port
        return tcp_bus(sim.tcp_port, name, **opts)
    assert sim.pty_path
    return rtu_bus(sim.pty_path, name, **opts)


def exceptions02(bus: ModbusBus) -> float:
    return metric("edge_gw_modbus_exceptions_total", bus=bus.spec.name, code="02")


def learnt(bus: ModbusBus, dev: str) -> float:
    return metric("edge_gw_modbus_holes_learnt_total", bus=bus.spec.name, device=dev)


def _block(*spans: tuple[str, int, int]) -> codec.ReadBlock:
    return codec.cover("holding", [codec.Span(k, "holding", o, n) for k, o, n in spans])


def test_split_cuts_at_the_largest_gap() -> None:
    b = _block(("a", 0, 1), ("b", 1, 2), ("c", 3, 1), ("d", 10, 2), ("e", 13, 1))
    assert (b.start, b.count) == (0, 14)
    halves = codec.split_block(b)
    assert halves is not None
    left, right = halves
    assert [s.key for s in left.members] == ["a", "b", "c"] and (left.start, left.count) == (0, 4)
    assert [s.key for s in right.members] == ["d", "e"] and (right.start, right.count) == (10, 4)


def test_split_without_gaps_halves_and_never_cuts_through_a_point() -> None:
    halves = codec.split_block(_block(("a", 0, 2), ("b", 2, 2), ("c", 4, 2), ("d", 6, 2)))
    assert halves is not None
    assert [[s.key for s in h.members] for h in halves] == [["a", "b"], ["c", "d"]]
    # a long value overlapping the others: the only cut is after it
    halves = codec.split_block(_block(("w", 0, 4), ("x", 1, 1), ("y", 4, 1)))
    assert halves is not None
    assert [[s.key for s in h.members] for h in halves] == [["w", "x"], ["y"]]
    # one point, or bit fields of one register: nothing to split
    assert codec.split_block(_block(("a", 5, 2))) is None
    assert codec.split_block(_block(("b0", 5, 1), ("b1", 5, 1))) is None


def test_simulator_holes_answer_exception_02(tmp_path: Path) -> None:
    from hwsim.modbus import wire

    (tmp_path / "holey.toml").write_text(DEVICE_FILE)
    (dev,) = farm_from_dict({"devices": [{"name": "h", "model": "holey.toml"}]}, tmp_path)
    read = bytes((3, 0, 0, 0, 4))  # holding 0-3: outside the hole
    assert wire.handle_pdu(dev, read)[0] == 3
    across = bytes((3, 0, 0, 0, 14))  # holding 0-13 spans the hole
    assert wire.handle_pdu(dev, across) == bytes((0x83, 2))
    inside = bytes((3, 0, 6, 0, 1))  # a value mapped inside the hole still answers 02
    assert wire.handle_pdu(dev, inside) == bytes((0x83, 2))
    assert wire.handle_pdu(dev, bytes((1, 0, 0, 0, 8))) == bytes((0x81, 2))  # coil 3
    assert wire.handle_pdu(dev, bytes((1, 0, 4, 0, 2)))[0] == 1
    assert wire.handle_pdu(dev, bytes((3, 0, 20, 0, 1)))[0] == 3  # gaps = "zero" elsewhere
    # holes can be changed at run time (a firmware update that fills one)
    dev.set_holes([{"table": "holding", "first": 5, "last": 5}])
    assert wire.handle_pdu(dev, bytes((3, 0, 6, 0, 1)))[0] == 3
    assert wire.handle_pdu(dev, across) == bytes((0x83, 2))
    assert dev.status()["holes"] == [{"table": "holding", "first": 5, "last": 5}]
    # a farm entry may add holes to a bundled model
    (m,) = farm_from_dict(
        {"devices": [{"model": "acme-em1", "holes": [{"table": "input", "first": 5, "last": 5}]}]}
    )
    assert wire.handle_pdu(m, bytes((4, 0, 0, 0, 10))) == bytes((0x84, 2))
    assert wire.handle_pdu(m, bytes((4, 0, 0, 0, 5)))[0] == 4


async def test_simulator_holes_through_the_control_endpoint(tmp_path: Path) -> None:
    import aiohttp

    (tmp_path / "holey.toml").write_text(DEVICE_FILE)
    devs = farm_from_dict({"devices": [{"name": "h", "model": "holey.toml"}]}, tmp_path)
    async with ModbusSimulator(devs, control_port=0) as s, aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{s.control_port}/devices/h/holes"
        holes = [{"table": "input", "first": 7, "last": 9}]
        async with http.post(url, json={"holes": holes}) as r:
            assert r.status == 200 and (await r.json())["holes"] == holes
        assert s.device("h").in_hole("input", 9, 1) and not s.device("h").in_hole("holding", 5, 1)
        async with http.post(url, json={"holes": [{"table": "input"}]}) as r:
            assert r.status == 400 and "needs table, first and last" in (await r.json())["error"]
        async with http.post(url.replace("/h/", "/nope/"), json={"holes": []}) as r:
            assert r.status == 404


@pytest.mark.parametrize(
    ("holes", "message"),
    [
        ("nope", "holes must be a list"),
        ([{"table": "tape", "first": 1, "last": 2}], "table must be one of"),
        ([{"table": "holding", "first": 5, "last": 2}], "first <= last"),
        ([{"table": "holding", "first": 5}], "needs table, first and last"),
    ],
)
def test_simulator_hole_errors_are_clear(holes: object, message: str) -> None:
    with pytest.raises(SimFileError, match=message):
        farm_from_dict({"devices": [{"model": "acme-em1", "holes": holes}]})


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_read_across_a_hole_is_split_learnt_and_kept(
    sim: ModbusSimulator, transport: str, caplog: pytest.LogCaptureFixture
) -> None:
    bus = make_bus(sim, transport, f"holes-{transport}")
    dev = device(f"holey-{transport}")
    assert bus.requests_per_poll(dev) == 3  # holding 0-13, input 0-5, coils 0-5
    h = sim.device("h")
    await bus.open()
    try:
        before02 = exceptions02(bus)
        with caplog.at_level(logging.INFO, logger="drivers.modbus"):
            r = await bus.read(dev, dev.points)
        assert r.errors == {}
        assert r.values == VALUES
        assert learnt(bus, dev.id) == 3  # one event per block that spanned a hole
        events = [rec for rec in caplog.records if "hole" in rec.getMessage()]
        assert len(events) == 3, [e.getMessage() for e in events]
        assert all(e.levelno == logging.WARNING for e in events)
        assert dev.id in events[0].getMessage() and "exception 02" in events[0].getMessage()

        # later polls use what was learnt: no exception, no re-probing
        caplog.clear()
        after02 = exceptions02(bus)
        assert after02 > before02
        for _ in range(3):
            n0 = h.requests
            with caplog.at_level(logging.INFO, logger="drivers.modbus"):
                r = await bus.read(dev, dev.points)
            assert r.values == VALUES and r.errors == {}
            assert r.requests == h.requests - n0 == 6  # 2 holding, 2 input, 2 coil reads
        assert exceptions02(bus) == after02
        assert learnt(bus, dev.id) == 3
        assert not [rec for rec in caplog.records if "hole" in rec.getMessage()]
    finally:
        await bus.close()


async def test_point_inside_a_hole_is_bad_alone(sim: ModbusSimulator) -> None:
    bus = make_bus(sim, "tcp", "holes-inside")
    dev = device("holey-inside", {"in_hole": PointAddress(table="holding", offset=6)})
    h = sim.device("h")
    await bus.open()
    try:
        r = await bus.read(dev, dev.points)
        assert r.errors == {"in_hole": "illegal_address"}
        assert r.values == VALUES
        after02 = exceptions02(bus)
        n0 = h.requests
        r = await bus.read(dev, dev.points)
        # the hole is not asked again: the point stays bad without a request
        assert r.errors == {"in_hole": "illegal_address"} and r.values == VALUES
        assert h.requests - n0 == r.requests == 6
        assert exceptions02(bus) == after02
    finally:
        await bus.close()


async def test_learnt_holes_are_rechecked_after_a_reconnect_and_after_a_while(
    sim: ModbusSimulator,
) -> None:
    bus = make_bus(sim, "tcp", "holes-recheck", hole_recheck=0.3)
    dev = device("holey-recheck", {"in_hole": PointAddress(table="holding", offset=6)})
    h = sim.device("h")
    await bus.open()
    try:
        r = await bus.read(dev, dev.points)
        assert r.errors == {"in_hole": "illegal_address"}
        # the device's holes go away (new firmware): what was learnt stands until a re-check
        h.set_holes([])
        r = await bus.read(dev, dev.points)
        assert r.errors == {"in_hole": "illegal_address"} and r.requests == 6
        # a reconnect re-checks: one read per block again, the point now has its value
        bus.client.close()
        r = await bus.read(dev, dev.points)
        assert r.errors == {} and r.values["in_hole"] == 66 and r.requests == 3

        # learnt again ...
        h.set_holes([{"table": "holding", "first": 4, "last": 9}])
        r = await bus.read(dev, dev.points)
        assert r.errors == {"in_hole": "illegal_address"}
        assert learnt(bus, dev.id) == 4  # 3 blocks at first, now the holding block again
        h.set_holes([])
        r = await bus.read(dev, dev.points)
        assert r.errors == {"in_hole": "illegal_address"}
        # ... and re-checked once the learnt holes are older than hole_recheck
        await asyncio.sleep(0.4)
        r = await bus.read(dev, dev.points)
        assert r.errors == {} and r.values["in_hole"] == 66 and r.requests == 3
    finally:
        await bus.close()


async def test_device_with_every_point_in_a_hole_stays_answering(sim: ModbusSimulator) -> None:
    """All points inside holes: the device still answers (exception 02), so it is not
    offline; each later poll costs one request that proves it is alive, and a device that
    stops answering is still detected."""
    bus = make_bus(sim, "tcp", "holes-all", timeout=0.2)
    dev = DeviceSpec(
        id="holey-all",
        cls="test",
        profile="test",
        address=DeviceAddress(unit=1),
        options=ProfileOptions(),
        points=(
            PointSpec("x", PointAddress(table="holding", offset=5)),
            PointSpec("y", PointAddress(table="holding", offset=7)),
        ),
        poll_interval=1.0,
    )
    h = sim.device("h")
    await bus.open()
    try:
        r = await bus.read(dev, dev.points)
        assert r.errors == {"x": "illegal_address", "y": "illegal_address"}
        for _ in range(2):
            n0 = h.requests
            r = await bus.read(dev, dev.points)
            assert r.errors == {"x": "illegal_address", "y": "illegal_address"}
            assert h.requests - n0 == 1
        h.set_fault("silent")
        with pytest.raises(DeviceUnavailable):
            await bus.read(dev, dev.points)
    finally:
        h.set_fault("none")
        await bus.close()


async def test_other_devices_on_the_bus_keep_their_own_plan(sim: ModbusSimulator) -> None:
    """What is learnt belongs to one device: another device of the same model on the same
    bus learns for itself (a hole is the device's, not the profile's)."""
    bus = make_bus(sim, "tcp", "holes-two")
    one, two = device("holey-one"), device("holey-two")
    await bus.open()
    try:
        await bus.read(one, one.points)
        assert learnt(bus, "holey-one") == 3 and learnt(bus, "holey-two") == 0
        r = await bus.read(two, two.points)
        assert r.values == VALUES
        assert learnt(bus, "holey-two") == 3
    finally:
        await bus.close()


async def test_a_recheck_that_finds_the_same_holes_is_no_news(
    sim: ModbusSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Re-checks (after hole_recheck, after a reconnect) ask the device again; finding the
    same holes is neither logged at warning nor counted again."""
    bus = make_bus(sim, "tcp", "holes-same", hole_recheck=0.2)
    dev = device("holey-same", {"in_hole": PointAddress(table="holding", offset=6)})
    await bus.open()
    try:
        await bus.read(dev, dev.points)
        assert learnt(bus, dev.id) == 3
        for recheck in ("interval", "reconnect"):
            if recheck == "interval":
                await asyncio.sleep(0.3)
            else:
                bus.client.close()
            before02 = exceptions02(bus)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="drivers.modbus"):
                r = await bus.read(dev, dev.points)
            assert exceptions02(bus) > before02, f"{recheck}: the holes were not asked again"
            assert r.errors == {"in_hole": "illegal_address"} and r.values == VALUES
            assert learnt(bus, dev.id) == 3, recheck
            assert not [x for x in caplog.records if x.levelno >= logging.INFO], recheck
    finally:
        await bus.close()
