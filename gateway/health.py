"""Liveness, readiness and status of the running gateway: one verdict, shown alike by
``GET /api/v1/health``, ``edge-gateway status`` and the systemd ``STATUS=`` line.

* **live** -- the process runs and its event loop is responsive: the request was answered
  and the last event-loop lag the watchdog measured is under its threshold (the same test
  that decides whether systemd's watchdog is pinged).
* **ready** -- the gateway does its job of keeping data: the configuration is loaded, the
  buffer is open and writable, every bus runner and uplink was started (a bus that could not
  be opened is being retried; that is a degradation, not unreadiness). HTTP 200 when ready,
  503 when not.
* **status** -- ``ok``, ``degraded`` or ``failing`` with the reasons, each a
  :class:`Reason` with a fixed ``code``, a one-line message, a count and the names involved
  (at most :data:`MAX_ITEMS`):

  ``failing`` (records cannot be kept): ``not_ready``, ``buffer_not_writable``.
  ``degraded`` (the gateway works but part of the picture is missing or at risk):
  ``buses_down``, ``devices_offline``, ``devices_misconfigured``, ``point_errors``,
  ``uplinks_disconnected``, ``buffer_over_budget``, ``clock_unsynchronised``, ``notice``
  (a sentence the box's setup put in ``EDGE_GW_NOTICE``, e.g. that a flashed image still runs
  its example configuration).

  Every device offline is still ``degraded``: the gateway keeps its buffer and uplinks and
  recovers by itself when the devices come back.

:func:`evaluate` is pure (unit-tested); :func:`snapshot` collects its input from the app.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.app import GatewayApp

MAX_ITEMS = 20  # names listed per reason (the count is always complete)
STATUSES = ("ok", "degraded", "failing")
FAILING = ("not_ready", "buffer_not_writable")
DEGRADED = (
    "buses_down", "devices_offline", "devices_misconfigured", "point_errors",
    "uplinks_disconnected", "buffer_over_budget", "clock_unsynchronised", "notice",
)
# a clock before this is certainly not set (an edge box without RTC boots in 1970)
_CLOCK_FLOOR = 1_735_689_600.0  # 2025-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    message: str
    count: int = 0
    items: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "count": self.count, "items": list(self.items)}


@dataclass(frozen=True)
class Snapshot:
    """What the verdict is made of. ``devices``: id -> (state, last error, number of
    failing points); ``uplinks``: each uplink's ``state()`` with its ``name``."""

    ready: bool  # started: config loaded, buffer open, buses and uplinks started
    not_ready: Sequence[str]
    buses_down: Sequence[str]
    devices: Mapping[str, tuple[str, str | None, int]]
    uplinks: Sequence[Mapping[str, Any]]
    buffer_degraded: str | None
    buffer_used: int | None
    buffer_budget: int | None
    clock_synchronised: bool | None
    notices: Sequence[str] = ()  # from the environment of the service (EDGE_GW_NOTICE)


def _names(items: Sequence[str], shown: int = 3) -> str:
    head = ", ".join(items[:shown])
    return head + (f" and {len(items) - shown} more" if len(items) > shown else "")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _size(n: int) -> str:
    for unit, f in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= f:
            return f"{n / f:.1f} {unit}"
    return f"{n} B"


def readiness(s: Snapshot) -> tuple[bool, list[str]]:
    reasons = list(s.not_ready)
    if not s.ready and not reasons:
        reasons.append("starting")
    if s.buffer_degraded is not None:
        reasons.append(f"buffer not writable ({s.buffer_degraded})")
    return not reasons, reasons


def evaluate(s: Snapshot) -> tuple[str, list[Reason]]:
    """``(status, reasons)``; reasons in the order of :data:`FAILING` then :data:`DEGRADED`."""
    out: list[Reason] = []
    not_ready = list(s.not_ready) or ([] if s.ready else ["starting"])
    if not_ready:
        out.append(Reason("not_ready", "not ready: " + ", ".join(not_ready), len(not_ready), not_ready[:MAX_ITEMS]))
    if s.buffer_degraded is not None:
        out.append(Reason(
            "buffer_not_writable",
            f"buffer not writable ({s.buffer_degraded}): new telemetry and state are refused",
            1, [s.buffer_degraded],
        ))
    buses = sorted(s.buses_down)
    if buses:
        n = f"{len(buses)} bus" if len(buses) == 1 else f"{len(buses)} buses"
        out.append(Reason("buses_down", f"{n} down: {_names(buses)}", len(buses), buses[:MAX_ITEMS]))
    total = len(s.devices)
    offline = sorted(d for d, (st, _, _) in s.devices.items() if st == "offline")
    if offline:
        why = Counter(s.devices[d][1] or "unknown" for d in offline)
        detail = ", ".join(f"{r} {n}" for r, n in why.most_common(3))
        out.append(Reason(
            "devices_offline", f"{len(offline)} of {_plural(total, 'device')} offline ({detail})",
            len(offline), offline[:MAX_ITEMS],
        ))
    mis = sorted(d for d, (st, _, _) in s.devices.items() if st == "misconfigured")
    if mis:
        out.append(Reason(
            "devices_misconfigured",
            f"{_plural(len(mis), 'device')} misconfigured (answer{'s' if len(mis) == 1 else ''}, "
            f"but no point can be read or decoded): {_names(mis)}",
            len(mis), mis[:MAX_ITEMS],
        ))
    partial = sorted(d for d, (st, _, n) in s.devices.items() if st == "online" and n > 0)
    if partial:
        out.append(Reason(
            "point_errors", f"{_plural(len(partial), 'device')} with unreadable points: {_names(partial)}",
            len(partial), partial[:MAX_ITEMS],
        ))
    down = [u for u in s.uplinks if not u.get("connected")]
    if down:
        names = sorted(str(u.get("name")) for u in down)
        last = next((str(u["last_error"]) for u in down if u.get("last_error")), "")
        msg = (
            f"uplink {names[0]} disconnected" if len(s.uplinks) == 1
            else f"{len(down)} of {len(s.uplinks)} uplinks disconnected: {_names(names)}"
        )
        out.append(Reason("uplinks_disconnected", msg + (f" ({last})" if last else ""), len(down), names[:MAX_ITEMS]))
    if s.buffer_budget and s.buffer_used is not None and s.buffer_used > s.buffer_budget:
        out.append(Reason(
            "buffer_over_budget",
            f"buffer uses {_size(s.buffer_used)} of its {_size(s.buffer_budget)} budget",
            1, [],
        ))
    if s.clock_synchronised is False:
        out.append(Reason(
            "clock_unsynchronised", "clock unsynchronised (no NTP sync): record times may be wrong", 1, [],
        ))
    for note in s.notices:
        out.append(Reason("notice", note, 1, []))
    if any(r.code in FAILING for r in out):
        return "failing", out
    return ("degraded" if out else "ok"), out


def clock_synchronised() -> bool | None:
    """Whether the kernel considers the system clock synchronised (``adjtimex`` in read-only
    mode: ``TIME_ERROR`` means not), ``False`` for a clock that is plainly unset, ``None``
    where this cannot be told (not Linux)."""
    if time.time() < _CLOCK_FLOOR:
        return False
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        buf = ctypes.create_string_buffer(1024)  # struct timex (~208 bytes); modes = 0
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != 5  # TIME_ERROR: the clock is not synchronised


def _short(r: Reason, total_devices: int) -> str:
    """A reason in a few words, for the 200-byte systemd status line."""
    names = _names(r.items, 2)
    n = r.count
    short = {
        "not_ready": f"not ready ({names})",
        "buffer_not_writable": f"buffer not writable ({names})",
        "buses_down": f"bus {names} down" if n == 1 else f"{n} buses down ({names})",
        "devices_offline": f"{n}/{total_devices} devices offline",
        "devices_misconfigured": f"{n} misconfigured ({names})",
        "point_errors": f"{n} with point errors ({names})",
        "uplinks_disconnected": f"uplink {names} down" if n == 1 else f"{n} uplinks down ({names})",
        "buffer_over_budget": "buffer over budget",
        "clock_unsynchronised": "clock unsynchronised",
        "notice": r.message[:80],
    }
    return short.get(r.code, r.code)


def status_line(status: str, reasons: Sequence[Reason], devices: Mapping[str, int], pending: str = "") -> str:
    """The systemd ``STATUS=`` line (``systemctl status`` shows it; at most 200 bytes are
    sent): the status and its reasons in short first, then device counts and backlogs, e.g.
    ``degraded: bus b3 down; 12/40 devices offline | 28 online, 12 offline; city pending 9``."""
    total = sum(devices.values())
    head = status if not reasons else f"{status}: " + "; ".join(_short(r, total) for r in reasons)
    counts = ", ".join(f"{n} {k}" for k, n in devices.items() if n or k in ("online", "offline"))
    return f"{head} | {counts}{pending}"


# ------------------------------------------------------------------ from the running app


async def snapshot(app: GatewayApp) -> Snapshot:
    from gateway.supervisor import device_state

    cfg = app.config
    explicit = {b.name for b in cfg.model.buses}
    errors = app.point_errors()
    buses_down: list[str] = []
    for name, runner in app.runners.items():
        if name not in explicit:
            continue  # a device's own connection: reported with the device
        if not runner.is_open:
            buses_down.append(name)
            continue
        polled = [app.trackers.get(d.spec.id) for d in runner.devices]
        if polled and all(t is not None and t.online is False for t in polled):
            buses_down.append(name)  # open, but no device on it answers
    devices: dict[str, tuple[str, str | None, int]] = {}
    for dev_id, tr in app.trackers.items():
        pe = errors.get(dev_id)
        devices[dev_id] = (device_state(tr, pe), tr.last_error, len(pe.errors) if pe else 0)
    uplinks: list[dict[str, Any]] = []
    for up in app.uplinks:
        try:
            st = dict(up.state())
        except Exception as exc:  # an uplink bug must not break health
            st = {"connected": False, "last_error": type(exc).__name__}
        uplinks.append({**st, "name": up.name})
    buf = app.buffer
    degraded: str | None = None
    used: int | None = None
    budget: int | None = None
    if buf is None:
        not_ready = list(app.not_ready_reasons) or ["buffer closed"]
    else:
        not_ready = list(app.not_ready_reasons)
        degraded = buf.degraded
        try:
            st = await buf.stats()
            used, budget = st.get("used_bytes"), st.get("budget_bytes")
        except Exception:  # closed meanwhile
            pass
    return Snapshot(
        ready=app.ready and buf is not None,
        not_ready=not_ready,
        buses_down=sorted(buses_down),
        devices=devices,
        uplinks=uplinks,
        buffer_degraded=degraded,
        buffer_used=used,
        buffer_budget=budget,
        clock_synchronised=clock_synchronised(),
        notices=notices(),
    )


def notices() -> list[str]:
    """``EDGE_GW_NOTICE`` of the process environment (systemd ``EnvironmentFile=``), if set."""
    note = " ".join(os.environ.get("EDGE_GW_NOTICE", "").split())
    return [note] if note else []
