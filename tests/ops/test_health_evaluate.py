"""The gateway's status verdict (``gateway.health.evaluate``): ``ok``, ``degraded`` or
``failing`` with named reasons, and the short form of it for the systemd STATUS= line.
The same verdict from the real daemon: test_health_status.py."""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import sys
from typing import Any

import pytest

from gateway.health import Snapshot, clock_synchronised, evaluate, readiness, status_line

STA_UNSYNC = 0x0040


def snap(**kw: Any) -> Snapshot:
    base: dict[str, Any] = {
        "ready": True, "not_ready": [], "buses_down": [],
        "devices": {"a": ("online", None, 0), "b": ("online", None, 0)},
        "uplinks": [{"name": "city", "connected": True}],
        "buffer_degraded": None, "buffer_used": 10, "buffer_budget": 100,
        "clock_synchronised": True,
    }
    base.update(kw)
    return Snapshot(**base)


def codes(s: Snapshot) -> tuple[str, list[str]]:
    status, reasons = evaluate(s)
    return status, [r.code for r in reasons]


def test_ok_when_nothing_is_wrong() -> None:
    assert evaluate(snap()) == ("ok", [])


def test_each_degradation_is_named() -> None:
    assert codes(snap(buses_down=["b3"])) == ("degraded", ["buses_down"])
    st, rs = evaluate(snap(devices={"a": ("offline", "timeout", 0), "b": ("offline", "crc", 0), "c": ("online", None, 0)}))
    assert st == "degraded" and [r.code for r in rs] == ["devices_offline"]
    assert rs[0].count == 2 and rs[0].items == ["a", "b"]
    assert "2 of 3 devices offline" in rs[0].message and "timeout 1" in rs[0].message
    st, rs = evaluate(snap(devices={"a": ("misconfigured", None, 6), "b": ("online", None, 0)}))
    assert (st, [r.code for r in rs]) == ("degraded", ["devices_misconfigured"])
    assert rs[0].items == ["a"]
    st, rs = evaluate(snap(devices={"a": ("online", None, 2), "b": ("online", None, 0)}))
    assert (st, [r.code for r in rs]) == ("degraded", ["point_errors"])
    assert codes(snap(uplinks=[{"name": "city", "connected": False, "last_error": "refused"}])) == (
        "degraded", ["uplinks_disconnected"],
    )
    assert codes(snap(buffer_used=101)) == ("degraded", ["buffer_over_budget"])
    assert codes(snap(buffer_budget=None, buffer_used=10**12)) == ("ok", [])
    assert codes(snap(clock_synchronised=False)) == ("degraded", ["clock_unsynchronised"])
    assert codes(snap(clock_synchronised=None)) == ("ok", [])  # unknown is not a reason


def test_failing_when_not_ready_or_buffer_not_writable() -> None:
    st, rs = evaluate(snap(ready=False, not_ready=["starting"]))
    assert st == "failing" and rs[0].code == "not_ready" and "starting" in rs[0].message
    st, rs = evaluate(snap(buffer_degraded="disk_full", buses_down=["b1"]))
    assert st == "failing"
    assert [r.code for r in rs] == ["buffer_not_writable", "buses_down"]
    assert "disk_full" in rs[0].message


def test_status_line_says_the_same_in_short() -> None:
    devices = {f"d{i:03d}": ("offline", "timeout", 0) for i in range(40)}
    devices["wrong"] = ("misconfigured", None, 6)
    st, rs = evaluate(snap(
        buses_down=["b3-rs485"], devices=devices, clock_synchronised=False,
        uplinks=[{"name": "city", "connected": False, "last_error": "connection refused " * 10}],
    ))
    line = status_line(st, rs, {"online": 0, "offline": 40, "unknown": 0, "misconfigured": 1}, "; city pending 12")
    assert line.startswith(
        "degraded: bus b3-rs485 down; 40/41 devices offline; 1 misconfigured (wrong); uplink city down; "
        "clock unsynchronised | 0 online, 40 offline, 1 misconfigured; city pending 12"
    ), line
    assert len(line.encode()) <= 200
    assert status_line("ok", [], {"online": 3, "offline": 0}) == "ok | 3 online, 0 offline"


def test_many_items_are_capped_but_counted() -> None:
    devices = {f"d{i:04d}": ("offline", "timeout", 0) for i in range(500)}
    _, rs = evaluate(snap(devices=devices))
    assert rs[0].count == 500 and len(rs[0].items) <= 20


def test_readiness_is_started_and_buffer_writable() -> None:
    assert readiness(snap()) == (True, [])
    assert readiness(snap(ready=False)) == (False, ["starting"])
    assert readiness(snap(ready=False, not_ready=["stopping"])) == (False, ["stopping"])
    assert readiness(snap(buffer_degraded="read_only")) == (False, ["buffer not writable (read_only)"])
    # buses down, devices offline, uplinks disconnected: degraded but ready
    s = snap(buses_down=["b1"], devices={"a": ("offline", "timeout", 0)},
             uplinks=[{"name": "city", "connected": False}])
    assert readiness(s) == (True, [])
    assert evaluate(s)[0] == "degraded"


def host_clock_unsynchronised() -> bool:
    """True when the kernel says the clock is not synchronised: the ``STA_UNSYNC`` bit of
    the ``status`` field of ``struct timex`` (x86-64/aarch64 layout), read independently of
    the product, which uses adjtimex's return value (``TIME_ERROR``)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
    buf = ctypes.create_string_buffer(1024)  # struct timex is ~208 bytes; modes = 0: read only
    if libc.adjtimex(buf) < 0:
        return False
    (status,) = struct.unpack_from("i", buf, 40)  # int modes, pad, 4 longs, int status
    return bool(status & STA_UNSYNC)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="adjtimex is Linux")
def test_clock_check_agrees_with_the_kernel_status_bit() -> None:
    assert clock_synchronised() is (not host_clock_unsynchronised())
