"""Scenario files, expansion into devices, generated files, and the demo's verdict (pure code)."""

from __future__ import annotations

import math
import tomllib
from collections import Counter
from typing import Any

import pytest
from hwsim.platform.store import subtract_ranges as subtract
from hwsim.scenario import model, tomlw
from hwsim.scenario.demo import DemoOptions, ranges, verdict
from hwsim.scenario.model import Endpoints, GatewayOptions, ScenarioError
from hwsim.scenario.runner import find_scenario
from hypothesis import example, given
from hypothesis import strategies as st


def community() -> model.Scenario:
    return model.load_scenario(find_scenario("community"))


def minimal(**group: Any) -> dict[str, Any]:
    g = {"name": "smoke", "class": "smoke_detector", "count": 2, "id": "b{building}-s{n}",
         "sim": "modbus", "line": "l{line}", "profiles": ["acme-sd300"], "virtual_profile": "virtual-smoke"}
    g.update(group)
    return {"gateway": {"id": "gw1", "district": "510107", "community": "X"},
            "site": {"buildings": 4, "buildings_per_line": 2}, "groups": [g]}


def test_community_is_a_realistic_site() -> None:
    sc = community()
    devs = model.expand(sc)
    by_class = Counter(d.cls for d in devs)
    assert sc.buildings == 12
    assert len(devs) == 225
    assert by_class["camera"] >= 20
    for cls in ("smoke_detector", "gas_detector", "tilt_sensor", "elevator", "electricity_meter",
                "water_meter", "access_control", "streetlight", "parking_space", "alarm_pillar",
                "environment_sensor"):
        assert by_class[cls] >= 1, cls
    assert by_class["smoke_detector"] == 36 and by_class["access_control"] == 12
    assert len({d.id for d in devs}) == len(devs)
    # object-throw cameras of two vendors
    throw = [d for d in devs if d.group == "throw-cams"]
    assert {d.profile for d in throw} == {"acme-ht200-throw", "zenith-zc5-analytics"}
    assert {d.sim for d in devs} == {"modbus", "dlt645", "cjt188", "framed", "onvif"}


def test_lines_group_buildings_and_assign_unique_addresses() -> None:
    devs = model.expand(community())
    lines = {ln.name: ln for ln in model.lines(devs)}
    assert sorted(n for n in lines if n.startswith("rs485-")) == ["rs485-1", "rs485-2", "rs485-3", "rs485-4"]
    rs1 = lines["rs485-1"]
    assert rs1.family == "modbus" and rs1.link == "pty"
    assert {d.building for d in rs1.devices} == {1, 2, 3}
    units = [d.address for d in rs1.devices]
    assert units == list(range(1, len(units) + 1))
    meters = lines["meters-2"]
    assert {d.sim for d in meters.devices} == {"dlt645", "cjt188"}
    addrs = [str(d.address) for d in devs if d.sim in ("dlt645", "cjt188")]
    assert len(set(addrs)) == len(addrs)
    assert all(len(a) == 12 for a in (str(d.address) for d in devs if d.sim == "dlt645"))
    assert all(len(a) == 14 for a in (str(d.address) for d in devs if d.sim == "cjt188"))
    assert lines["site-mbtcp"].link == "tcp"


def test_virtual_switch_keeps_ids_classes_and_polls() -> None:
    sc = community()
    real = model.expand(sc)
    virt = model.expand(sc, virtual={"modbus", "throw-cams"})
    assert [(d.id, d.cls, d.poll) for d in real] == [(d.id, d.cls, d.poll) for d in virt]
    moved = [v for r, v in zip(real, virt, strict=True) if r.sim != v.sim]
    assert moved and all(v.sim == "virtual" and v.profile.startswith("virtual-") for v in moved)
    assert {r.sim for r, v in zip(real, virt, strict=True) if r.sim != v.sim} == {"modbus", "onvif"}
    assert all(v.line is None for v in moved)
    assert "rs485-1" not in {ln.name for ln in model.lines(virt)}


def test_buildings_override() -> None:
    devs = model.expand(community(), buildings=2)
    assert max(d.building or 0 for d in devs) == 2
    assert sum(1 for d in devs if d.cls == "smoke_detector") == 6


def test_every_problem_is_reported_at_once() -> None:
    data = minimal(sim="zigbee", poll="soon", link="wifi", count=-1)
    data["site"]["buildings"] = 0
    data["activity"] = [{"group": "nope", "every": "1s"}]
    data["bogus"] = 1
    with pytest.raises(ScenarioError) as e:
        model.parse_scenario(data, "x.toml")
    text = str(e.value)
    for part in ("unknown key 'bogus'", "site.buildings", "sim: expected one of", "poll: not a duration",
                 "link: expected", "count: expected", "activity[0].group", "needs one of set, event, emit"):
        assert part in text, part
    assert text.startswith("x.toml: ")


def test_gateway_section_is_required() -> None:
    data = minimal()
    del data["gateway"]
    with pytest.raises(ScenarioError, match=r"gateway\.id: required"):
        model.parse_scenario(data)


def test_duplicate_device_ids_are_refused() -> None:
    data = minimal(id="same-{n}")
    with pytest.raises(ScenarioError, match="repeats"):
        model.expand(model.parse_scenario(data))


def test_invalid_toml_names_the_file(tmp_path: Any) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[scenario\n")
    with pytest.raises(ScenarioError, match="bad.toml: not valid TOML"):
        model.load_scenario(p)


@pytest.mark.parametrize(("text", "seconds"), [(5, 5.0), (2.5, 2.5), ("250ms", 0.25), ("5s", 5.0),
                                                ("2m", 120.0), ("1h", 3600.0), (" 3 ", 3.0)])
def test_durations(text: Any, seconds: float) -> None:
    assert model.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5x", "-1s", True, -2, None, "1.2.3s"])
def test_bad_durations(bad: Any) -> None:
    with pytest.raises(ValueError):
        model.parse_duration(bad)


def test_generated_gateway_config_is_complete() -> None:
    sc = community()
    devs = model.expand(sc)
    ep = Endpoints(camera_password="pw")
    for ln in model.lines(devs):
        ep.lines[ln.name] = {"pty": f"/dev/pts/{len(ep.lines)}", "control_port": 1} if ln.link == "pty" \
            else {"port": 5020 + len(ep.lines), "control_port": 1}
    ep.cameras = {d.id: 8000 + i for i, d in enumerate(d for d in devs if d.sim == "onvif")}
    cfg = model.gateway_config(sc, devs, ep, GatewayOptions(mqtt="127.0.0.1:1883", topic_prefix="city"))
    back = tomllib.loads(tomlw.dumps(cfg, "header\nline two"))
    assert back == cfg
    assert back["gateway"]["id"] == "cd-wh-jifu-gw01"
    assert back["uplinks"][0]["url"] == "mqtt://127.0.0.1:1883"
    buses = {b["name"]: b for b in back["buses"]}
    assert buses["rs485-1"]["driver"] == "modbus" and buses["rs485-1"]["port"].startswith("/dev/pts/")
    assert buses["site-mbtcp"]["transport"] == "tcp"
    assert buses["meters-1"]["driver"] == "serial" and buses["meters-1"]["parity"] == "N"
    devices = {d["id"]: d for d in back["devices"]}
    assert len(devices) == 225
    assert devices["b01-smoke-01"]["address"] == {"unit": 1} and devices["b01-smoke-01"]["bus"] == "rs485-1"
    cam = devices["gate-cam-01"]["address"]
    assert cam["host"] == "127.0.0.1" and cam["port"] == ep.cameras["gate-cam-01"] and cam["password"] == "pw"
    assert devices["b05-door-01"]["address"]["addr"] >= 1


def test_a_line_without_an_endpoint_is_an_error() -> None:
    sc = community()
    with pytest.raises(KeyError, match="rs485-1"):
        model.gateway_config(sc, model.expand(sc), Endpoints(), GatewayOptions())


def test_simulator_files() -> None:
    devs = model.expand(community())
    lines = {ln.name: ln for ln in model.lines(devs)}
    mb = model.modbus_sim_file(lines["rs485-1"])
    first = mb["devices"][0]
    assert first == {"name": "b01-smoke-01", "model": "acme-sd300", "unit": 1,
                     "set": {"alarm": 0, "battery_low": 0}}
    ser = model.serial_sim_file(lines["meters-1"], seed=3)
    assert ser["bus"]["pty"] is True
    protos = Counter(d["protocol"] for d in ser["devices"])
    assert protos == {"dlt645": 9, "cjt188": 6}
    hot = [d for d in ser["devices"] if d.get("meter_type") == "11"]
    assert hot and all(d["di_order"] == "printed" for d in hot)
    cams = model.onvif_sim_file(devs, "secret")["cameras"]
    assert len(cams) == 22 and {c["password"] for c in cams} == {"secret"}
    assert {c.get("manufacturer") for c in cams} >= {"Acme", "Zenith"}


def test_pick_values_is_seeded_and_in_range() -> None:
    import random

    a = [model.pick_values({"x": [1.0, 2.0], "n": [1, 18], "k": 1}, random.Random(5)) for _ in range(3)]
    b = [model.pick_values({"x": [1.0, 2.0], "n": [1, 18], "k": 1}, random.Random(5)) for _ in range(3)]
    assert a == b
    for v in a:
        assert 1.0 <= v["x"] <= 2.0 and isinstance(v["n"], int) and 1 <= v["n"] <= 18 and v["k"] == 1


_scalars = st.one_of(
    st.booleans(), st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(min_size=1, max_size=10), inner, max_size=4)),
    max_leaves=12)


@given(st.dictionaries(st.text(min_size=1, max_size=12), _values, max_size=6))
@example({"0\n": [{}]})  # a key ending in a newline passed the bare-key check ("$" allows it)
@example({"0\n": {}})
@example({"0\n": []})
def test_toml_writer_round_trips(doc: dict[str, Any]) -> None:
    assert tomllib.loads(tomlw.dumps(doc)) == doc


def test_toml_writer_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError):
        tomlw.value(object())
    with pytest.raises(ValueError):
        tomlw.value(math.nan)


# ---------------------------------------------------------------- verdict


def test_ranges_and_subtract() -> None:
    assert ranges([1, 2, 3, 5, 7, 8]) == [[1, 3], [5, 5], [7, 8]]
    assert ranges([]) == []
    assert subtract([[1, 10]], [(3, 4), (8, 20)]) == [[1, 2], [5, 7]]
    assert subtract([[1, 2]], [(1, 2)]) == []


def test_verdict_counts_the_tail_held_in_the_buffer_as_not_lost() -> None:
    plat = {"received": 12, "unique": 10, "duplicates": 2, "seq_max": 10, "missing": [], "gaps": []}
    v = verdict(plat, last_seq=12, held=[11, 12])
    assert v["ok"] and v["missing"] == 0 and v["held_in_buffer"] == 2 and v["not_received"] == 2


def test_verdict_finds_a_hole_the_buffer_does_not_hold() -> None:
    plat = {"received": 8, "unique": 8, "duplicates": 0, "seq_max": 10, "missing": [[4, 5]], "gaps": []}
    v = verdict(plat, last_seq=11, held=[11])
    assert not v["ok"] and v["missing"] == 2 and v["missing_ranges"] == [[4, 5]]


def test_verdict_accepts_holes_covered_by_gap_records() -> None:
    plat = {"received": 7, "unique": 7, "duplicates": 0, "seq_max": 10, "missing": [[2, 4]],
            "gaps": [{"seq": 10, "v": 3, "first_seq": 2, "last_seq": 4, "lane": "telemetry"}]}
    v = verdict(plat, last_seq=10, held=[])
    assert v["ok"] and v["explained_by_gap_records"] == 3 and v["gap_records"] == 1


def test_verdict_fails_on_seq_conflicts() -> None:
    plat = {"received": 3, "unique": 3, "duplicates": 0, "seq_max": 3, "missing": [], "gaps": [],
            "seq_conflicts": 1}
    assert not verdict(plat, last_seq=3, held=[])["ok"]


def test_outage_is_placed_mid_demo() -> None:
    from pathlib import Path

    opt = DemoOptions(scenario=Path("x"), workdir=Path("."), duration=90, outage=30)
    assert opt.outage_window() == (30.0, 60.0) and opt.live_seconds() == 90
    short = DemoOptions(scenario=Path("x"), workdir=Path("."), duration=20, outage=30)
    start, end = short.outage_window() or (0, 0)
    assert start >= 8 and end == start + 30 and short.live_seconds() >= end + 8
    assert DemoOptions(scenario=Path("x"), workdir=Path(".")).outage_window() is None
