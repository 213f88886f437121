from __future__ import annotations

from collections.abc import Sequence

from drivers.virtual.driver import VirtualDriver
from gateway.pipeline import DeviceTracker, Pipeline
from gateway.plugin import RawEvent, Reading
from gateway.profiles import parse_profile
from gateway.record import Record

PROFILE = """
[profile]
id = "t-gas"
class = "gas_detector"
driver = "virtual"
vendor = "T"
model = "G1"

[points.gas_concentration]
address = { generator = "constant", value = 3 }
deadband = 0.5

[points.valve_open]
address = { generator = "constant", value = true }

[points.fault]
address = { generator = "constant", value = false }

[[events]]
point = "alarm"
source = "gas_concentration"
above = 25
clear_below = 20
severity = "critical"
"""


def tracker() -> DeviceTracker:
    prof, issues = parse_profile("t.toml", PROFILE, {"virtual": VirtualDriver()})
    assert prof is not None, issues
    return DeviceTracker(gw="gw", dev="gas-1", cls="gas_detector", profile=prof, poll_interval=1.0, stale_after=3)


def pts(recs: Sequence[Record]) -> list[tuple[str, str, object, str]]:
    return [(r.pt, r.kind, r.v, r.q) for r in recs]


def reading(conc: float, valve: bool = True, fault: bool = False) -> Reading:
    return Reading(values={"gas_concentration": conc, "valve_open": valve, "fault": fault})


def test_first_poll_online_then_values() -> None:
    t = tracker()
    out = t.on_reading(reading(3.0), ts=100.0)
    assert pts(out) == [
        ("status", "lifecycle", "online", "good"),
        ("gas_concentration", "telemetry", 3.0, "good"),
        ("valve_open", "state", True, "good"),
    ]  # a fault point that starts false is not an event
    assert all(r.gw == "gw" and r.dev == "gas-1" and r.cls == "gas_detector" for r in out)
    assert out[1].u == "%LEL"


def test_deadband_state_on_change_and_events() -> None:
    t = tracker()
    t.on_reading(reading(3.0), 100.0)
    assert pts(t.on_reading(reading(3.2), 101.0)) == []  # within deadband, state unchanged
    assert pts(t.on_reading(reading(4.0, valve=False), 102.0)) == [
        ("gas_concentration", "telemetry", 4.0, "good"),
        ("valve_open", "state", False, "good"),
    ]
    out = t.on_reading(reading(30.0, valve=False), 103.0)
    assert ("alarm", "event", True, "good") in pts(out)
    ev = [r for r in out if r.pt == "alarm"][0]
    assert ev.sev == "critical" and ev.attrs == {"source": "gas_concentration", "value": 30.0}
    assert not [r for r in t.on_reading(reading(22.0, valve=False), 104.0) if r.pt == "alarm"]
    clear = [r for r in t.on_reading(reading(10.0, valve=False), 105.0) if r.pt == "alarm"]
    assert pts(clear) == [("alarm", "event", False, "good")] and clear[0].sev == "info"
    fault = t.on_reading(reading(10.0, valve=False, fault=True), 106.0)
    assert [(r.pt, r.v, r.sev) for r in fault] == [("fault", True, "minor")]


def test_failure_bad_once_then_stale_then_recovery() -> None:
    t = tracker()
    t.on_reading(reading(3.0), 100.0)
    first = t.on_failure("timeout", 101.0)
    assert pts(first) == [
        ("status", "lifecycle", "offline", "good"),
        ("gas_concentration", "telemetry", None, "bad"),
        ("valve_open", "state", None, "bad"),
    ]
    assert first[0].attrs == {"reason": "timeout"}
    assert t.on_failure("timeout", 102.0) == []  # logged and reported once
    stale = t.on_failure("timeout", 103.5)
    assert pts(stale) == [("gas_concentration", "telemetry", 3.0, "stale"), ("valve_open", "state", True, "stale")]
    assert t.on_failure("timeout", 110.0) == []
    back = t.on_reading(reading(3.1), 111.0)
    assert pts(back)[0] == ("status", "lifecycle", "online", "good")
    assert t.online and t.failures == 0


def test_point_errors_and_mapping_errors_once() -> None:
    t = tracker()
    r = Reading(values={"gas_concentration": "garbage", "valve_open": True}, errors={"fault": "exception_02"})
    out = t.on_reading(r, 100.0)
    bad = [(x.pt, x.q) for x in out if x.q == "bad"]
    assert ("gas_concentration", "bad") in bad and ("fault", "bad") in bad
    again = t.on_reading(r, 101.0)
    assert not [x for x in again if x.q == "bad"]
    ok = t.on_reading(reading(5.0), 102.0)
    assert ("gas_concentration", "telemetry", 5.0, "good") in pts(ok)


def test_pushed_event() -> None:
    t = tracker()
    out = t.on_event(RawEvent("gas-1", "fault", True, attrs={"code": 7}), 100.0)
    assert pts(out) == [("fault", "event", True, "good")] and out[0].attrs == {"code": 7}
    assert t.on_event(RawEvent("gas-1", "nope", 1), 100.0) == []


async def test_pipeline_privacy_hook_and_sink() -> None:
    got: list[Record] = []

    async def sink(recs: Sequence[Record]) -> None:
        got.extend(recs)

    class DropValve:
        def apply(self, r: Record) -> Record | None:
            return None if r.pt == "valve_open" else r

    p = Pipeline(sink, DropValve())
    t = tracker()
    await p.submit(t.on_reading(reading(3.0), 100.0))
    assert [r.pt for r in got] == ["status", "gas_concentration"]
    await p.submit([])
    assert len(got) == 2


async def test_pipeline_stamps_ids_in_capture_order() -> None:
    """Tracker records leave without ids; the pipeline gives each a UUIDv7 (after the privacy
    hook), increasing in order. A record that already has an id keeps it."""
    import uuid

    got: list[Record] = []

    async def sink(recs: Sequence[Record]) -> None:
        got.extend(recs)

    t = tracker()
    first = t.on_reading(reading(3.0), 100.0)
    assert first and all(r.id == "" for r in first)
    p = Pipeline(sink)
    await p.submit(first)
    await p.submit(t.on_reading(reading(30.0), 101.0))  # telemetry + alarm event
    own = Record(gw="gw", dev="gas-1", cls="gas_detector", pt="fault", kind="event", v=True, ts=102.0, id="kept-id")
    await p.submit([own])
    ids = [r.id for r in got]
    assert ids[-1] == "kept-id"
    stamped = ids[:-1]
    assert len(stamped) == len(set(stamped)) >= 4 and stamped == sorted(stamped)
    assert all(uuid.UUID(i).version == 7 for i in stamped)


def test_first_good_read_after_an_outage_resends_every_point_not_last_sent_good() -> None:
    """The platform saw v=null, q=bad for every point when the device went away: the first
    good read must send them all again, even when no value changed (a state point, a
    telemetry value inside its deadband)."""
    t = tracker()
    t.on_reading(reading(3.0), 100.0)
    t.on_failure("timeout", 101.0)
    back = t.on_reading(reading(3.1), 102.0)  # 3.1 is inside the 0.5 deadband; valve unchanged
    assert pts(back) == [
        ("status", "lifecycle", "online", "good"),
        ("gas_concentration", "telemetry", 3.1, "good"),
        ("valve_open", "state", True, "good"),
    ]
    # and after that the change filter works as before
    assert pts(t.on_reading(reading(3.2), 103.0)) == []


def test_recovery_after_stale_resends_the_stale_points() -> None:
    t = tracker()
    t.on_reading(reading(3.0), 100.0)
    t.on_failure("timeout", 101.0)
    t.on_failure("timeout", 104.0)  # stale sent (last good value, q=stale)
    back = t.on_reading(reading(3.0), 105.0)
    assert [(pt, q) for pt, _, _, q in pts(back)] == [
        ("status", "good"), ("gas_concentration", "good"), ("valve_open", "good"),
    ]


def test_a_point_error_then_a_good_value_is_sent_even_if_unchanged() -> None:
    t = tracker()
    t.on_reading(reading(3.0), 100.0)
    t.on_reading(Reading(values={"gas_concentration": 3.0}, errors={"valve_open": "exception_02"}), 101.0)
    back = t.on_reading(reading(3.0), 102.0)
    assert pts(back) == [("valve_open", "state", True, "good")]


def test_an_event_point_that_failed_is_cleared_by_a_good_state_record() -> None:
    t = tracker()
    t.on_reading(reading(3.0), 100.0)  # fault=False at first: no record (not an event)
    out = t.on_reading(Reading(values={"gas_concentration": 3.0, "valve_open": True}, errors={"fault": "timeout"}), 101.0)
    assert pts(out) == [("fault", "state", None, "bad")]
    back = t.on_reading(reading(3.0), 102.0)
    assert pts(back) == [("fault", "state", False, "good")]
    assert t.on_reading(reading(3.0), 103.0) == []
    # failed, then back with the alarm raised: the good state and the event
    t.on_reading(Reading(values={"gas_concentration": 3.0, "valve_open": True}, errors={"fault": "timeout"}), 104.0)
    back = t.on_reading(reading(3.0, fault=True), 105.0)
    assert pts(back) == [("fault", "state", True, "good"), ("fault", "event", True, "good")]
