"""Serial drivers against the simulators over real pseudo-terminals and TCP."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hwsim.serial import SimBus, load_sim

from gateway.plugin import DeviceUnavailable, WriteRejected

from .helpers import bus, canonical, device

SIM = {
    "devices": [
        {"protocol": "dlt645", "address": "000000000001", "model": "single_phase", "quirks": {"fe": 4}},
        {"protocol": "dlt645", "address": "000000000002", "model": "single_phase", "quirks": {"silent": True}},
        {"protocol": "dlt645", "address": "000000000003", "model": "single_phase",
         "quirks": {"slow_first_byte": 0.15, "echo": True}},
        {"protocol": "dlt645", "address": "000000000004", "model": "single_phase", "quirks": {"fe": 0, "junk": 3}},
        {"protocol": "dlt645", "address": "000000000005", "model": "three_phase", "quirks": {"fe": 2}},
        {"protocol": "dlt645", "address": "000000000006", "model": "three_phase"},
        {"protocol": "cjt188", "address": "00000000001001", "meter_type": "10", "di_order": "swapped"},
        {"protocol": "cjt188", "address": "00000000001002", "meter_type": "11", "di_order": "printed",
         "quirks": {"fe": 3}},
        {"protocol": "cjt188", "address": "00000000002001", "meter_type": "20", "di_order": "swapped"},
        {"protocol": "cjt188", "address": "00000000003001", "meter_type": "30", "di_order": "printed"},
    ]
}
DEVICES = [
    ("e1", "dlt645-ddsu-1p", "000000000001"),
    ("e2", "dlt645-ddsu-1p", "000000000002"),
    ("e3", "dlt645-ddsu-1p", "000000000003"),
    ("e4", "dlt645-ddsu-1p", "000000000004"),
    ("e5", "dlt645-dtsu-3p", "000000000005"),
    ("e6", "dlt645-dtsu-3p", "000000000006"),
    ("w1", "cjt188-cold-water", "00000000001001"),
    ("w2", "cjt188-hot-water", "00000000001002"),
    ("h1", "cjt188-heat", "00000000002001"),
    ("g1", "cjt188-gas", "00000000003001"),
]
POLL = 10.0


async def test_mixed_bus_all_live_meters_within_poll_interval() -> None:
    sim = load_sim(SIM)
    devs = [device(i, p, a, poll=POLL) for i, p, a in DEVICES]
    await sim.start()
    assert sim.path
    gw = bus(sim.path, echo=True)
    try:
        for d in devs:
            gw.attach(d)
        await gw.open()
        started = time.monotonic()
        results: dict[str, Any] = {}
        offline = {}
        tasks = {d.id: asyncio.create_task(gw.read(d, d.points)) for d in devs}
        # the core polls devices concurrently; the hub serialises the line
        for d in devs:
            try:
                reading = await tasks[d.id]
            except DeviceUnavailable as exc:
                offline[d.id] = exc.reason
                continue
            assert not reading.errors, (d.id, reading.errors)
            results[d.id] = canonical(d, reading)
        elapsed = time.monotonic() - started
        assert elapsed < POLL, elapsed
        assert offline == {"e2": "timeout"}

        e1 = results["e1"]
        m1 = sim.device("000000000001").values  # type: ignore[attr-defined]
        assert e1["energy_import"] == pytest.approx(m1["energy_import"], abs=0.011)
        assert e1["energy_export"] == 12.5
        assert e1["energy_total"] == pytest.approx(m1["energy_import"] - 12.5, abs=0.011)
        assert 205 <= e1["voltage"] <= 235 and e1["power"] == 1200 and e1["power_factor"] == 0.95
        assert e1["frequency"] == 50 and e1["relay_closed"] is True and e1["battery_low"] is False
        assert e1["meter_time"][:4] >= "2024"
        e3 = results["e3"]  # slow first byte + echo
        assert e3["power"] == 1200
        e5 = results["e5"]
        assert {"voltage", "voltage_b", "voltage_c", "current_b", "current_c"} <= set(e5)
        assert e5["power"] == 3600
        for wid in ("w1", "w2", "g1"):
            assert set(results[wid]) == {"volume", "valve_open", "battery_low"}
            assert results[wid]["valve_open"] is True
        h1 = results["h1"]
        assert h1["power"] == 4500 and h1["supply_temperature"] == 55 and h1["return_temperature"] == 40
        assert h1["heat_energy"] == pytest.approx(2000, abs=0.5)

        # the silent meter costs one timeout, then recovers when it answers again
        e2 = next(d for d in devs if d.id == "e2")
        t0 = time.monotonic()
        with pytest.raises(DeviceUnavailable):
            await gw.read(e2, e2.points)
        assert time.monotonic() - t0 < 2 * gw.options.first_byte_timeout + 0.5
        sim.configure("000000000002", {"quirks": {"silent": False}})
        reading = await gw.read(e2, e2.points)
        assert float(reading.values["energy_import"] or 0) > 0 and not reading.errors
    finally:
        await gw.close()
        await sim.stop()


async def test_relay_and_valve_commands_are_read_back() -> None:
    sim = load_sim(SIM)
    e1 = device("e1", "dlt645-ddsu-1p", "000000000001")
    e5 = device("e5", "dlt645-dtsu-3p", "000000000005")
    w1 = device("w1", "cjt188-cold-water", "00000000001001")
    g1 = device("g1", "cjt188-gas", "00000000003001")
    await sim.start()
    gw = bus(sim.path or "")
    try:
        for d in (e1, e5, w1, g1):
            gw.attach(d)
        await gw.open()
        relay = e1.point("relay_closed")
        # raw True = status bit 4 set = tripped (the profile inverts it to relay_closed=false)
        assert await gw.write(e1, relay, True) is True
        assert sim.device("000000000001").values["relay_tripped"] is True  # type: ignore[attr-defined]
        assert canonical(e1, await gw.read(e1, [relay]))["relay_closed"] is False
        assert await gw.write(e1, relay, False) is False
        assert sim.device("000000000001").values["relay_tripped"] is False  # type: ignore[attr-defined]
        for dev, addr in ((w1, "00000000001001"), (g1, "00000000003001")):
            valve = dev.point("valve_open")
            assert await gw.write(dev, valve, False) is False
            assert sim.device(addr).values["valve_open"] is False  # type: ignore[attr-defined]
            assert await gw.write(dev, valve, True) is True
            assert sim.device(addr).values["valve_open"] is True  # type: ignore[attr-defined]
        # a profile without the explicit relay flag cannot trip the relay
        with pytest.raises(WriteRejected):
            await gw.write(e5, e5.point("energy_import"), True)
    finally:
        await gw.close()
        await sim.stop()


async def test_relay_needs_profile_flag() -> None:
    from dataclasses import replace

    e1 = device("e1", "dlt645-ddsu-1p", "000000000001")
    no_flag = replace(e1, options=e1.options.model_copy(update={"relay_control": False}))
    sim = load_sim(SIM)
    await sim.start()
    gw = bus(sim.path or "")
    try:
        gw.attach(no_flag)
        await gw.open()
        with pytest.raises(WriteRejected) as info:
            await gw.write(no_flag, no_flag.point("relay_closed"), True)
        assert info.value.reason == "disabled"
        assert sim.device("000000000001").relay_commands == 0  # type: ignore[attr-defined]
    finally:
        await gw.close()
        await sim.stop()


@pytest.mark.parametrize("quirk", [{"bad_checksum": True}, {"wrong_length": True}])
async def test_corrupt_replies_are_retried_then_reported(quirk: dict[str, bool]) -> None:
    sim = load_sim({"devices": [{"protocol": "dlt645", "address": "000000000001", "quirks": quirk}]})
    d = device("e1", "dlt645-ddsu-1p", "000000000001")
    await sim.start()
    gw = bus(sim.path or "", retries=1)
    try:
        gw.attach(d)
        await gw.open()
        with pytest.raises(DeviceUnavailable) as info:
            await gw.read(d, d.points)
        assert info.value.reason in ("bad_frame", "wrong_reply")
        assert sim.device("000000000001").requests == 2  # one retry
    finally:
        await gw.close()
        await sim.stop()


async def test_unsupported_di_is_a_point_error() -> None:
    sim = load_sim({"devices": [{"protocol": "dlt645", "address": "000000000001",
                                 "quirks": {"unsupported": ["02060000"]}}]})
    d = device("e1", "dlt645-ddsu-1p", "000000000001")
    await sim.start()
    gw = bus(sim.path or "")
    try:
        gw.attach(d)
        await gw.open()
        reading = await gw.read(d, d.points)
        assert reading.errors == {"power_factor": "no_data"}
        assert "energy_import" in reading.values
    finally:
        await gw.close()
        await sim.stop()


async def test_framed_poll_and_unsolicited_events_and_tcp_transport() -> None:
    sim = SimBus(load_sim({"devices": [
        {"protocol": "framed", "model": "access_panel", "address": "3"},
        {"protocol": "framed", "model": "alarm_pillar", "address": "7"},
        {"protocol": "dlt645", "address": "000000000001"},
    ]}).devices, pty=False, tcp="127.0.0.1:0")
    ac = device("door-1", "framed-ac200", 3)
    p5 = device("pillar-1", "framed-p5-pillar", 7)
    e1 = device("e1", "dlt645-ddsu-1p", "000000000001")
    await sim.start()
    gw = bus(f"tcp://127.0.0.1:{sim.tcp_port}")
    events = None
    try:
        for d in (ac, p5, e1):
            gw.attach(d)
        await gw.open()
        events = gw.events()
        assert events is not None
        assert canonical(ac, await gw.read(ac, ac.points)) == {"door_open": False}
        sim.configure("7", {"values": {"call_active": True}})
        assert canonical(p5, await gw.read(p5, p5.points)) == {"call_active": True}
        await sim.emit(3, "card_granted", card="00012345", door=2)
        await sim.emit(7, "button", button=1)
        # an event arriving while a meter exchange runs is still delivered
        poll = asyncio.create_task(gw.read(e1, e1.points))
        await sim.emit(3, "door_forced", door=1)
        await poll
        got = [await asyncio.wait_for(events.__anext__(), 3) for _ in range(3)]
        by_point = {(e.device_id, e.point): e for e in got}
        granted = by_point[("door-1", "access_granted")]
        assert granted.value == 2 and granted.attrs == {"card_no": "00012345", "door": 2}
        assert by_point[("pillar-1", "button")].value is True
        assert by_point[("door-1", "door_forced")].value is True
        await asyncio.sleep(0.3)
        assert sim.device("3").acks == 2  # type: ignore[attr-defined]
    finally:
        if events is not None:
            await events.aclose()  # type: ignore[attr-defined]
        await gw.close()
        await sim.stop()


async def test_broadcast_time_sync_and_1997_meter() -> None:
    sim = load_sim({"devices": [
        {"protocol": "dlt645", "address": "000000000001", "values": {"clock_offset": -3600.0}},
        {"protocol": "dlt645", "address": "000000000009", "edition": "1997"},
    ]})
    e1 = device("e1", "dlt645-ddsu-1p", "000000000001")
    old = device("old", "dlt645-1997-1p", "000000000009")
    await sim.start()
    gw = bus(sim.path or "", time_sync="1d")
    try:
        gw.attach(e1)
        gw.attach(old)
        await gw.open()  # sends the first broadcast at once
        await asyncio.sleep(0.3)
        assert abs(sim.device("000000000001").values["clock_offset"]) < 2  # type: ignore[attr-defined]
        reading = await gw.read(old, old.points)
        assert not reading.errors and float(reading.values["voltage"] or 0) > 200
    finally:
        await gw.close()
        await sim.stop()


def test_tcp_serial_server_under_uvloop() -> None:
    """The daemon runs on uvloop, whose transports are not registered with the asyncio ABCs:
    polls and event acknowledgements over a TCP serial server must work there too."""
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        sim = SimBus(load_sim({"devices": [
            {"protocol": "framed", "model": "access_panel", "address": "3"},
            {"protocol": "dlt645", "address": "000000000001"},
        ]}).devices, pty=False, tcp="127.0.0.1:0")
        ac = device("door-1", "framed-ac200", 3)
        e1 = device("e1", "dlt645-ddsu-1p", "000000000001")
        await sim.start()
        gw = bus(f"tcp://127.0.0.1:{sim.tcp_port}")
        events = None
        try:
            gw.attach(ac)
            gw.attach(e1)
            await gw.open()
            events = gw.events()
            assert events is not None
            assert not (await gw.read(e1, e1.points)).errors
            await sim.emit(3, "door_forced", door=1)
            ev = await asyncio.wait_for(events.__anext__(), 3)
            assert (ev.device_id, ev.point) == ("door-1", "door_forced")
            for _ in range(30):
                if sim.device("3").acks:  # type: ignore[attr-defined]
                    break
                await asyncio.sleep(0.05)
            assert sim.device("3").acks == 1  # type: ignore[attr-defined]
        finally:
            if events is not None:
                await events.aclose()  # type: ignore[attr-defined]
            await gw.close()
            await sim.stop()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
