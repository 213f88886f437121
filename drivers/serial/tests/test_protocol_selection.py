"""The bus picks each device's protocol from ``DeviceSpec.protocol`` (the profile's driver)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from drivers.serial.cjt188.device import Cjt188Device
from drivers.serial.config import PointAddress
from drivers.serial.dlt645.device import Dlt645Device
from drivers.serial.driver import device_protocol
from drivers.serial.framed.device import FramedDevice
from gateway.plugin import DriverError, PointSpec

from .helpers import bus, device


@pytest.mark.parametrize(("profile", "addr", "proto", "handler"), [
    ("dlt645-ddsu-1p", "000000000001", "dlt645", Dlt645Device),
    ("dlt645-1997-1p", "000000000002", "dlt645", Dlt645Device),
    ("cjt188-heat", "00000000000003", "cjt188", Cjt188Device),
    ("framed-ac200", 3, "framed", FramedDevice),
])
def test_declared_protocol_selects_the_handler(profile: str, addr: str | int, proto: str,
                                               handler: type) -> None:
    d = device("d", profile, addr)
    assert d.protocol == proto
    assert device_protocol(d) == proto
    b = bus("/dev/null")
    b.attach(d)
    assert isinstance(b.handlers["d"], handler)


def test_empty_protocol_falls_back_to_the_point_addresses() -> None:
    d = replace(device("d", "cjt188-gas", "00000000000001"), protocol="")
    assert device_protocol(d) == "cjt188"


def test_points_of_another_protocol_are_a_config_error() -> None:
    d = device("m1", "dlt645-ddsu-1p", "000000000001")
    stray = PointSpec("volume", PointAddress(field="volume"))
    bad = replace(d, points=(*d.points, stray))
    with pytest.raises(DriverError) as info:
        device_protocol(bad)
    assert info.value.reason == "config"
    assert "volume addressed for cjt188" in info.value.detail
    # without a declared protocol the mix is refused too
    with pytest.raises(DriverError):
        device_protocol(replace(bad, protocol=""))


def test_unknown_declared_protocol_is_a_config_error() -> None:
    d = replace(device("m1", "dlt645-ddsu-1p", "000000000001"), protocol="modbus")
    with pytest.raises(DriverError, match="serial driver speaks cjt188, dlt645, framed"):
        device_protocol(d)
