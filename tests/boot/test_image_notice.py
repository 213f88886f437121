"""The flashed image's example-configuration notice in the gateway's verdict: a sentence in
``EDGE_GW_NOTICE`` (written by edge-config-apply, read through the unit's
``EnvironmentFile=``) is a ``notice`` reason, the status ``degraded``, and the STATUS= line
says it. The same from the booted image: test_qemu.py."""

from __future__ import annotations

import pytest

from gateway.health import Snapshot, evaluate, notices, status_line

NOTE = ("running on the example configuration: put the site's gateway.toml on the "
        "EDGE-CONFIG partition and reboot")


def snap(**kw: object) -> Snapshot:
    return Snapshot(ready=True, not_ready=[], buses_down=[],
                    devices={"a": ("online", None, 0)},
                    uplinks=[{"name": "city", "connected": True}], buffer_degraded=None,
                    buffer_used=1, buffer_budget=100, clock_synchronised=True, **kw)  # type: ignore[arg-type]


def test_a_notice_degrades_and_is_shown() -> None:
    status, reasons = evaluate(snap(notices=[NOTE]))
    assert status == "degraded"
    assert [(r.code, r.message) for r in reasons] == [("notice", NOTE)]
    line = status_line(status, reasons, {"online": 1, "offline": 0})
    assert line.startswith("degraded: running on the example configuration"), line
    assert evaluate(snap()) == ("ok", [])


def test_notices_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_GW_NOTICE", raising=False)
    assert notices() == []
    monkeypatch.setenv("EDGE_GW_NOTICE", "  ")
    assert notices() == []
    monkeypatch.setenv("EDGE_GW_NOTICE", f"{NOTE}\n")
    assert notices() == [NOTE]
