from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.virtual.driver import VirtualDriver
from gateway.classes import catalogue
from gateway.profiles import (
    EventRule,
    MappingError,
    PointMap,
    outside_deadband,
    parse_profile,
    rule_active,
    to_canonical,
    to_raw,
)

DRIVERS = {"virtual": VirtualDriver()}
C = catalogue()


def pm(cls: str, point: str, **kw: Any) -> PointMap:
    return PointMap(name=point, pdef=C[cls].points[point], address=object(), **kw)


@pytest.mark.parametrize(
    ("kw", "raw", "expected"),
    [
        ({"scale": 0.1}, 2205, 220.5),
        ({"scale": 0.01, "offset": -40}, 6512, 25.12),
        ({"unit_factor": 0.001}, 123456, 123.456),  # Wh -> kWh
        ({}, 3, 3),
        ({}, "42.5", 42.5),
        ({}, True, 1),
    ],
)
def test_numbers(kw: dict[str, Any], raw: Any, expected: float) -> None:
    assert to_canonical(pm("electricity_meter", "voltage", **kw), raw) == expected


def test_no_binary_noise() -> None:
    assert to_canonical(pm("electricity_meter", "voltage", scale=0.1), 3) == 0.3


def test_precision_rounds_to_decimal_places() -> None:
    assert to_canonical(pm("electricity_meter", "voltage", scale=0.001, precision=1), 220_468) == 220.5
    assert to_canonical(pm("electricity_meter", "voltage", precision=2), 0.119999997318) == 0.12
    assert to_canonical(pm("electricity_meter", "voltage", precision=0), 229.6) == 230


def test_precision_in_a_profile_file() -> None:
    prof, issues = parse_profile("t.toml", GOOD.replace("unit = \"%LEL\"", "unit = \"%LEL\"\nprecision = 1"), DRIVERS)
    assert not issues and prof is not None and prof.points["gas_concentration"].precision == 1
    prof, issues = parse_profile("t.toml", GOOD.replace("unit = \"%LEL\"", "unit = \"%LEL\"\nprecision = -1"), DRIVERS)
    assert prof is None and any(i.path == "points.gas_concentration.precision" for i in issues), issues


def test_bool_and_invert_and_enum() -> None:
    assert to_canonical(pm("smoke_detector", "alarm"), 1) is True
    assert to_canonical(pm("smoke_detector", "alarm", invert=True), 1) is False
    assert to_canonical(pm("smoke_detector", "alarm"), "on") is True
    e = pm("elevator", "direction", enum={"0": "idle", "1": "up", "2": "down"})
    assert to_canonical(e, 2) == "down"
    assert to_canonical(e, 1.0) == "up"
    with pytest.raises(MappingError):
        to_canonical(e, 7)


def test_bad_raw_values() -> None:
    for raw in (None, "abc", float("inf")):
        with pytest.raises(MappingError):
            to_canonical(pm("electricity_meter", "voltage"), raw)


def test_string_from_bytes() -> None:
    assert to_canonical(pm("camera", "model"), b"VC-100\x00\x00 ") == "VC-100"


@given(raw=st.integers(-(10**6), 10**6), scale=st.sampled_from([1, 0.1, 0.01, 0.001, 10.0]), offset=st.sampled_from([0, -40, 273.15]))
def test_to_raw_inverts_to_canonical(raw: int, scale: float, offset: float) -> None:
    p = pm("streetlight", "power", scale=scale, offset=offset)
    value = to_canonical(p, raw)
    assert isinstance(value, int | float) and not isinstance(value, bool)
    assert to_raw(p, value) == pytest.approx(raw, abs=1e-6)


def test_to_raw_enum_and_bool() -> None:
    e = pm("elevator", "direction", enum={"0": "idle", "1": "up"})
    assert to_raw(e, "up") == 1
    assert to_raw(pm("streetlight", "on", invert=True), True) is False
    with pytest.raises(MappingError):
        to_raw(e, "sideways")


def test_deadband() -> None:
    p = pm("environment_sensor", "temperature", deadband=0.5)
    assert outside_deadband(p, None, 20.0)
    assert not outside_deadband(p, 20.0, 20.4)
    assert outside_deadband(p, 20.0, 20.6)
    assert outside_deadband(pm("environment_sensor", "temperature"), 20.0, 20.0)


def test_rule_hysteresis() -> None:
    r = EventRule(point="alarm", source="gas_concentration", severity="critical", above=25, clear_below=20)
    assert not rule_active(r, 24.0, False)
    assert rule_active(r, 26.0, False)
    assert rule_active(r, 22.0, True)  # still active inside the hysteresis band
    assert not rule_active(r, 19.0, True)
    eq = EventRule(point="fault", source="fault", severity="minor", equals=True)
    assert rule_active(eq, True, False) and not rule_active(eq, False, True)


GOOD = """
[profile]
id = "t-gas"
class = "gas_detector"
driver = "virtual"
vendor = "T"
model = "G1"

[points.gas_concentration]
address = { generator = "constant", value = 3 }
unit = "%LEL"

[[events]]
point = "alarm"
source = "gas_concentration"
above = 25
severity = "critical"
"""


def test_parse_good_profile_derives_event_point() -> None:
    prof, issues = parse_profile("t.toml", GOOD, DRIVERS)
    assert not issues and prof is not None
    assert prof.points["alarm"].address is None
    assert [p.name for p in prof.read_points] == ["gas_concentration"]
    assert prof.events[0].severity == "critical"


@pytest.mark.parametrize(
    ("mutation", "path", "words"),
    [
        (("class = \"gas_detector\"", "class = \"gas_detektor\""), "profile.class", "gas_detektor"),
        (("driver = \"virtual\"", "driver = \"bacnet\""), "profile.driver", "bacnet"),
        (("[points.gas_concentration]", "[points.co_level]"), "points.co_level", "no point"),
        (("generator = \"constant\"", "generator = \"chaos\""), "points.gas_concentration.address.generator", "constant"),
        (("unit = \"%LEL\"", "unit = \"ppm\""), "points.gas_concentration.unit", "no conversion"),
        (("above = 25", "above = 25\nbelow = 3"), "events", "exactly one"),
        (("point = \"alarm\"", "point = \"valve_open\""), "events.0.point", "event point"),
        (("source = \"gas_concentration\"", "source = \"nothing\""), "events.0.source", "nothing"),
    ],
)
def test_profile_errors_name_file_and_key_path(mutation: tuple[str, str], path: str, words: str) -> None:
    text = GOOD.replace(*mutation)
    prof, issues = parse_profile("site/t.toml", text, DRIVERS)
    assert prof is None and issues
    assert any(i.path.startswith(path) and words in i.message and i.file == "site/t.toml" for i in issues), issues


def test_bundled_virtual_profiles_cover_every_class() -> None:
    from gateway.profiles import driver_profile_files, load_profiles

    pset = load_profiles(driver_profile_files(["drivers.virtual.driver"]), DRIVERS)
    assert not pset.issues
    classes = {p.cls for p in pset.profiles.values()}
    assert classes == set(C) - {"gateway"}


def test_site_profile_overrides_bundled(tmp_path: Any) -> None:
    from gateway.config import load_config

    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "smoke.toml").write_text(
        '[profile]\nid = "virtual-smoke"\nclass = "smoke_detector"\ndriver = "virtual"\nvendor = "Site"\nmodel = "Override"\n'
        '[points.smoke_density]\naddress = { generator = "constant", value = 7 }\n'
    )
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\nprofile_dirs = ["profiles"]\n'
        '[[devices]]\nid = "s"\nclass = "smoke_detector"\nprofile = "virtual-smoke"\n'
    )
    c = load_config(cfg)
    assert c.profiles["virtual-smoke"].vendor == "Site"
    assert list(c.profiles["virtual-smoke"].points) == ["smoke_density"]


def test_large_integers_pass_exactly() -> None:
    plain = pm("electricity_meter", "energy_import")
    for raw in (987654321012345, 1796417260256, 2**64 - 1, -(2**63)):
        assert to_canonical(plain, raw) == raw
    # scaled: 15 significant digits, the binary noise of the multiplication gone
    assert to_canonical(pm("electricity_meter", "energy_import", scale=0.001), 987654321012345) == 987654321012.345
    assert to_canonical(pm("electricity_meter", "energy_import", scale=0.01), 6512) == 65.12


@given(st.integers(-(10**14), 10**14), st.sampled_from([("electricity_meter", "energy_import"), ("environment_sensor", "temperature")]))
def test_integer_shortcut_gives_what_the_float_path_gives(raw: int, where: tuple[str, str]) -> None:
    """Unscaled integers skip the float round trip; the result must not change."""
    from gateway.profiles import _tidy

    plain = pm(where[0], where[1])
    assert plain.identity
    got = to_canonical(plain, raw)
    want = _tidy(float(raw))
    assert got == want and type(got) is type(want)
    # any scaling switches the shortcut off
    scaled = pm(where[0], where[1], scale=0.5)
    assert not scaled.identity
    assert to_canonical(scaled, raw) == _tidy(float(raw) * 0.5)
