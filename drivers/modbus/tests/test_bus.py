"""The bus hub against the simulator over real sockets and a real pty: faults, retries,
metrics, writes with read-back, a shared RTU line with dead devices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from hwsim.modbus.model import SimDevice, farm_from_dict
from hwsim.modbus.server import ModbusSimulator

from drivers.modbus.driver import ModbusBus
from gateway.plugin import DeviceSpec, DeviceUnavailable, WriteRejected
from tests.support.modbus_helpers import device_spec, metric, rtu_bus, rtu_tcp_bus, tcp_bus


def farm(*devices: tuple[str, str, int]) -> list[SimDevice]:  # (name, model, unit)
    return farm_from_dict({"devices": [{"name": n, "model": m, "unit": u} for n, m, u in devices]})


@pytest.fixture
async def sim() -> AsyncIterator[ModbusSimulator]:
    s = ModbusSimulator(
        farm(
            ("sd", "acme-sd300", 1),
            ("env", "acme-env7", 2),
            ("sl", "lumin-lc2", 3),
            ("em", "dianli-dds3", 4),
        ),
        tcp_port=0,
        rtu_pty=True,
        rtu_tcp_port=0,
    )
    await s.start()
    yield s
    await s.stop()


def make_bus(sim: ModbusSimulator, transport: str, name: str, **opts: object) -> ModbusBus:
    if transport == "tcp":
        assert sim.tcp_port
        return tcp_bus(sim.tcp_port, name, **opts)
    if transport == "rtu":
        assert sim.pty_path
        return rtu_bus(sim.pty_path, name, **opts)
    assert sim.rtu_tcp_port
    return rtu_tcp_bus(sim.rtu_tcp_port, name, **opts)


TRANSPORTS = ["tcp", "rtu", "rtu_over_tcp"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_silent_device_costs_one_timeout_and_recovers(
    sim: ModbusSimulator, transport: str
) -> None:
    bus = make_bus(sim, transport, f"silent-{transport}", timeout=0.2, retries=2)
    env = device_spec("acme-env7", unit=2)
    await bus.open()
    try:
        assert (await bus.read(env, env.points)).values["co2"] == 612
        sim.device("env").set_fault("silent")
        before = metric(
            "edge_gw_modbus_request_failures_total", bus=bus.spec.name, reason="timeout"
        )
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable) as e:
            await bus.read(env, env.points)
        took = time.monotonic() - t0
        assert e.value.reason == "timeout"
        assert 0.18 <= took < 0.35, "a silent device must cost one timeout, not one per retry"
        assert (
            metric("edge_gw_modbus_request_failures_total", bus=bus.spec.name, reason="timeout")
            == before + 1
        )
        sim.device("env").set_fault("none")
        assert (await bus.read(env, env.points)).values["co2"] == 612
    finally:
        await bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("code", [1, 2, 4, 6])
async def test_exception_codes_become_point_errors(
    sim: ModbusSimulator, transport: str, code: int
) -> None:
    bus = make_bus(sim, transport, f"exc-{transport}")
    sd = device_spec("acme-sd300", unit=1)
    await bus.open()
    try:
        before = metric("edge_gw_modbus_exceptions_total", bus=bus.spec.name, code=f"{code:02d}")
        sim.device("sd").set_fault("exception", code=code)
        r = await bus.read(sd, sd.points)
        assert r.values == {}
        assert set(r.errors) == {p.name for p in sd.points}
        # 02 (illegal data address) to every read: every point is inside a hole of the map
        want = "illegal_address" if code == 2 else f"exception_{code:02d}_"
        assert all(v.startswith(want) for v in r.errors.values()), r.errors
        after = metric("edge_gw_modbus_exceptions_total", bus=bus.spec.name, code=f"{code:02d}")
        # busy (06) is retried once after a pause, so it is seen twice per request
        assert after - before == r.requests * (2 if code == 6 else 1)
    finally:
        sim.device("sd").set_fault("none")
        await bus.close()


async def test_exception_on_one_block_keeps_the_others(sim: ModbusSimulator) -> None:
    """A point the device does not have (strict map) fails alone with exception 02: it is
    inside a hole of the device's map."""
    from drivers.modbus.schema import PointAddress
    from gateway.plugin import PointSpec

    bus = make_bus(sim, "tcp", "partial")
    base = device_spec("acme-sd300", unit=1)
    extra = PointSpec("temperature", PointAddress(table="input", offset=40, type="int16"))
    dev = DeviceSpec(
        base.id,
        base.cls,
        base.profile,
        base.address,
        base.options,
        tuple(p for p in base.points if p.name != "temperature") + (extra,),
        1.0,
    )
    await bus.open()
    try:
        r = await bus.read(dev, dev.points)
        assert r.errors == {"temperature": "illegal_address"}
        assert r.values["smoke_density"] == 325
    finally:
        await bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("fault", ["crc", "truncate"])
async def test_corrupt_answers_are_counted_retried_and_survived(
    sim: ModbusSimulator, transport: str, fault: str
) -> None:
    bus = make_bus(sim, transport, f"{fault}-{transport}", timeout=0.2, retries=1)
    env = device_spec("acme-env7", unit=2)
    await bus.open()
    try:
        await bus.read(env, env.points)
        sim.device("env").set_fault(fault)
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable) as e:
            await bus.read(env, env.points)
        took = time.monotonic() - t0
        if fault == "crc":
            # a complete answer with a bad CRC (or a broken TCP frame) fails at once, not
            # after the timeout: pymodbus alone would report it as a timeout
            assert took < 0.2, f"{took:.3f}s for two corrupt answers"
        reason = {"crc": {"tcp": "bad_length"}, "truncate": {}}[fault].get(
            transport, "crc" if fault == "crc" else "truncated"
        )
        assert e.value.reason == reason
        assert (
            metric("edge_gw_modbus_request_failures_total", bus=bus.spec.name, reason=reason) == 2
        )
        assert metric("edge_gw_modbus_retries_total", bus=bus.spec.name) == 1
        assert metric("edge_gw_modbus_discarded_bytes_total", bus=bus.spec.name) > 0
        # half of the answers corrupt: the retry gets the value through
        sim.device("env").set_fault(fault, rate=0.5)
        ok = 0
        for _ in range(10):
            try:
                r = await bus.read(env, env.points)
                ok += r.values["co2"] == 612
            except DeviceUnavailable:
                pass
        assert ok >= 5
        sim.device("env").set_fault("none")
        assert (await bus.read(env, env.points)).values["co2"] == 612
    finally:
        sim.device("env").set_fault("none")
        await bus.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_late_answer_is_not_taken_for_the_next_one(
    sim: ModbusSimulator, transport: str
) -> None:
    bus = make_bus(sim, transport, f"late-{transport}", timeout=0.15, retries=0)
    env = device_spec("acme-env7", unit=2)
    sl = device_spec("lumin-lc2", unit=3)
    await bus.open()
    try:
        sim.device("env").set_fault("late", delay=0.25)
        with pytest.raises(DeviceUnavailable):
            await bus.read(env, env.points)
        sim.device("env").set_fault("none")
        await asyncio.sleep(0.05)
        # The late answer arrives while the next device is asked: it must not be taken.
        r = await bus.read(sl, sl.points)
        assert r.values["power"] == 96.5 and r.errors == {}
        r = await bus.read(env, env.points)
        assert r.values["pressure"] == 101325
        if transport != "tcp":
            # the late answer arrived between requests (on TCP it may instead arrive during
            # the next request and be dropped by transaction id)
            await asyncio.sleep(0.3)
            sim.device("env").set_fault("late", delay=0.25)
            with pytest.raises(DeviceUnavailable):
                await bus.read(env, env.points)
            sim.device("env").set_fault("none")
            await asyncio.sleep(0.2)
            assert metric("edge_gw_modbus_stale_answers_total", bus=bus.spec.name) >= 1
            assert (await bus.read(env, env.points)).values["co2"] == 612
    finally:
        await bus.close()


async def test_tcp_device_disappears_and_returns() -> None:
    s = ModbusSimulator(farm(("env", "acme-env7", 1)), per_device_ports=0)
    async with s:
        bus = tcp_bus(s.device_ports["env"], "gone-tcp", timeout=0.2)
        env = device_spec("acme-env7", unit=1)
        await bus.open()
        try:
            assert (await bus.read(env, env.points)).values["co2"] == 612
            s.set_fault("env", "gone")
            with pytest.raises(DeviceUnavailable) as e:
                await bus.read(env, env.points)
            assert e.value.reason in ("connection", "timeout")
            with pytest.raises(DeviceUnavailable):
                await bus.read(env, env.points)
            s.set_fault("env", "none")
            assert (await bus.read(env, env.points)).values["co2"] == 612
        finally:
            await bus.close()


async def test_unreachable_tcp_endpoint_is_unavailable_not_a_crash() -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bus = tcp_bus(port, "refused")
    env = device_spec("acme-env7", unit=1)
    await bus.open()  # lazy: a dead TCP device is an offline device, not a config error
    with pytest.raises(DeviceUnavailable) as e:
        await bus.read(env, env.points)
    assert e.value.reason == "connect_failed"
    assert metric("edge_gw_modbus_connects_total", bus="refused", result="error") == 1
    await bus.close()


async def test_missing_serial_port_fails_open() -> None:
    from gateway.plugin import DriverError

    bus = rtu_bus("/dev/does-not-exist-modbus", "noport")
    with pytest.raises(DriverError) as e:
        await bus.open()
    assert e.value.reason == "port_unavailable"
    await bus.close()


async def test_requests_per_poll_and_device_override(sim: ModbusSimulator) -> None:
    bus = make_bus(sim, "tcp", "plan")
    em = device_spec("dianli-dds3", unit=4)  # profile limits reads to 8 registers
    assert bus.requests_per_poll(em) == 3
    env = device_spec("acme-env7", unit=2)
    assert bus.requests_per_poll(env) == 1
    env_short = device_spec("acme-env7", dev_id="env-short", unit=2, max_registers=3)
    assert bus.requests_per_poll(env_short) == 3
    await bus.open()
    try:
        r = await bus.read(env_short, env_short.points)
        assert r.requests == 3 and r.values["pressure"] == 101325
        r = await bus.read(em, em.points)
        assert r.errors == {} and r.values["energy_import"] == 1234567
    finally:
        await bus.close()


# ------------------------------------------------------------------ writes


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_writes_take_effect_and_are_verified(sim: ModbusSimulator, transport: str) -> None:
    bus = make_bus(sim, transport, f"write-{transport}")
    sl = device_spec("lumin-lc2", unit=3)
    sd = device_spec("acme-sd300", unit=1)
    em = device_spec("dianli-dds3", unit=4)
    await bus.open()
    try:
        # bit of a control word: read-modify-write keeps the other bits
        sim.device("sl").set_value("fault", 1)
        assert await bus.write(sl, sl.point("on"), False) is False
        assert sim.device("sl").read_back("lamp") == 0
        assert sim.device("sl").read_back("fault") == 1
        assert await bus.write(sl, sl.point("dimming"), 128) == 128  # function 16
        assert sim.device("sl").read_back("dim_level") == 128
        # coded relay register (function 6)
        assert await bus.write(em, em.point("relay_closed"), 26) == 26
        assert sim.device("em").read_back("relay") == 0x1A
        # self-clearing reset coil: no read-back, the alarm clears
        assert sim.device("sd").read_back("alarm") == 1
        assert await bus.write(sd, sd.point("alarm_reset"), True) is True
        assert sim.device("sd").read_back("alarm") == 0
        # read-only table and an exception answer are rejections with reasons
        with pytest.raises(WriteRejected) as e:
            await bus.write(sl, sl.point("power"), 3.0)
        assert e.value.reason == "exception_02_illegal_data_address"  # holding 20 is not writable
        with pytest.raises(WriteRejected) as e:
            await bus.write(sl, sl.point("dimming"), 70000)
        assert e.value.reason == "out_of_range"
        assert metric("edge_gw_modbus_writes_total", result="ok") >= 4
    finally:
        await bus.close()


async def test_write_verify_mismatch_is_reported(sim: ModbusSimulator) -> None:
    """The device accepts the write but something else sets the register back."""
    bus = make_bus(sim, "tcp", "verify")
    sd = device_spec("hailan-jtyg", unit=9)
    s = ModbusSimulator(farm(("h", "hailan-jtyg", 9)), tcp_port=0)
    async with s:
        bus = tcp_bus(s.tcp_port or 0, "verify")
        s.device("h").on_write.append({"name": "reset", "set": {"reset": 0}})
        await bus.open()
        try:
            with pytest.raises(WriteRejected) as e:
                await bus.write(sd, sd.point("alarm_reset"), True)
            assert e.value.reason == "verify_mismatch"
            assert s.device("h").read_back("alarm") == 0  # the reset itself happened
        finally:
            await bus.close()


# ------------------------------------------------------------------ shared RTU line


async def test_shared_rtu_line_with_two_dead_devices() -> None:
    """8 devices on one pty RS-485 line, 2 dead: the 6 live ones keep their interval within
    one timeout; the dead ones fail, are backed off, and come back when revived."""
    models = [
        "acme-sd300",
        "acme-env7",
        "acme-ts200",
        "acme-em1",
        "xunda-xdemu",
        "lumin-lc2",
        "kexin-kxqj",
        "acme-gd100",
    ]
    s = ModbusSimulator(farm(*[(f"d{i}", m, 10 + i) for i, m in enumerate(models)]), rtu_pty=True)
    poll, timeout = 0.5, 0.15
    dead = {"d2", "d5"}
    async with s:
        for d in dead:
            s.device(d).set_fault("silent")
        bus = rtu_bus(s.pty_path or "", "shared-485", timeout=timeout, retries=1)
        specs = [
            device_spec(m, dev_id=f"d{i}", unit=10 + i, poll=poll) for i, m in enumerate(models)
        ]
        for spec in specs:
            bus.attach(spec)
        await bus.open()
        starts: dict[str, list[float]] = {sp.id: [] for sp in specs}
        outcomes: dict[str, list[bool]] = {sp.id: [] for sp in specs}

        async def poller(spec: DeviceSpec, until: float) -> None:
            # What the core's scheduler does: fixed-rate polls, exponential backoff with a cap
            backoff = 0.0
            nxt = time.monotonic()
            while nxt < until:
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                starts[spec.id].append(time.monotonic())
                try:
                    await bus.read(spec, spec.points)
                    outcomes[spec.id].append(True)
                    backoff = 0.0
                    nxt += poll
                except DeviceUnavailable:
                    outcomes[spec.id].append(False)
                    backoff = min(max(poll, backoff * 2), 2.0)
                    nxt = time.monotonic() + backoff

        try:
            until = time.monotonic() + 3.0
            tasks = [asyncio.create_task(poller(sp, until)) for sp in specs]
            await asyncio.sleep(1.8)
            for d in dead:
                s.device(d).set_fault("none")  # revived
            await asyncio.gather(*tasks)
        finally:
            await bus.close()
    for sp in specs:
        ts = starts[sp.id]
        if sp.id in dead:
            assert outcomes[sp.id][0] is False
            assert outcomes[sp.id][-1] is True, f"{sp.id} did not recover"
            continue
        assert all(outcomes[sp.id]), sp.id
        gaps = [b - a for a, b in zip(ts, ts[1:], strict=False)]
        assert len(gaps) >= 4
        assert max(gaps) <= poll + timeout + 0.05, f"{sp.id}: {max(gaps):.3f}s between polls"


# ------------------------------------------------------------------ the line lock


async def test_line_serves_healthy_devices_before_suspects() -> None:
    from drivers.modbus.driver import Line

    line = Line()
    order: list[str] = []

    async def user(name: str, suspect: bool) -> None:
        async with line.hold(suspect):
            order.append(name)
            await asyncio.sleep(0.01)

    await line.acquire()  # someone is on the line; the others queue up in this order
    tasks = [
        asyncio.create_task(user(n, s))
        for n, s in [("dead-1", True), ("live-1", False), ("dead-2", True), ("live-2", False)]
    ]
    await asyncio.sleep(0.01)
    line.release()
    await asyncio.gather(*tasks)
    assert order == ["live-1", "live-2", "dead-1", "dead-2"]
    assert not line.busy


async def test_line_survives_cancelled_waiters() -> None:
    from drivers.modbus.driver import Line

    line = Line()
    await line.acquire()
    waiting = asyncio.create_task(line.acquire())
    handed = asyncio.create_task(line.acquire(suspect=True))
    await asyncio.sleep(0)
    waiting.cancel()  # cancelled while queued: leaves the queue
    with pytest.raises(asyncio.CancelledError):
        await waiting
    line.release()  # hands the line to `handed` ...
    handed.cancel()  # ... which is cancelled before it runs: it must pass the line on
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert not line.busy
    async with asyncio.timeout(1):
        async with line.hold():
            assert line.busy
    assert not line.busy
