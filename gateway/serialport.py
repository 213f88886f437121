"""Why a serial port would not open, in words an installer can act on.

Drivers that own a serial line (``drivers/serial``, Modbus RTU) call :func:`explain` when
opening the port failed. It turns the OS error into a :class:`PortProblem`: a bounded
``reason`` for metrics, the ``setting`` the port refused (when it was one), and a message
that names the port, the refused value and the likely fix.

The OS reports a refused line setting only as ``termios.error (22, 'Invalid argument')``,
without saying which one. :func:`explain` finds it by opening the port again with one
setting at a time changed to the most common value (parity N, 8 data bits, 1 stop bit, a
standard baud rate); the first variant the port accepts names the culprit. Pseudo-terminals
cannot do parity at all: Linux refuses a request whose only change is parity E/O.

Part of the driver plugin API (see ``drivers/README.md``). Opening ports for the probe is
blocking: call :func:`explain` from a thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import errno
import grp
import os
import stat
import termios
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["LineSettings", "PortProblem", "explain", "is_open_error", "holders"]

# the most common value of each setting, tried in this order when the port refused the set
COMMON: tuple[tuple[str, object], ...] = (("parity", "N"), ("stopbits", 1), ("bytesize", 8), ("baud", 9600))
FLAG = {"parity": "--parity", "stopbits": "--stopbits", "bytesize": "--bytesize", "baud": "--baud"}


@dataclass(frozen=True, slots=True)
class LineSettings:
    port: str
    baud: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1

    def value(self, name: str) -> object:
        return getattr(self, name)


@dataclass(frozen=True, slots=True)
class PortProblem:
    """``reason``: ``port_missing``, ``permission``, ``port_busy``, ``not_a_tty``,
    ``setting_refused`` or ``port`` (anything else). ``setting``: the refused setting."""

    reason: str
    message: str
    setting: str | None = None
    value: object = None

    def __str__(self) -> str:
        return self.message


def is_open_error(exc: BaseException) -> bool:
    """What pyserial (and libraries on it) raise when a port cannot be opened or set up."""
    import serial

    return isinstance(exc, OSError | termios.error | ValueError | serial.SerialException)


def _errno(exc: BaseException) -> int | None:
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno is not None:
            return e.errno
        if isinstance(e, termios.error) and e.args and isinstance(e.args[0], int):
            return int(e.args[0])
        if e.args and isinstance(e.args[0], int) and len(e.args) >= 2:
            return int(e.args[0])  # pyserial's SerialException(errno, text)
        e = e.__cause__ or e.__context__
    return None


def holders(path: str) -> list[tuple[int, str]]:
    """Processes (pid, command name) that hold ``path`` open, as far as /proc shows them
    (all processes for root, the user's own otherwise)."""
    try:
        target = os.path.realpath(path)
    except OSError:
        return []
    found: list[tuple[int, str]] = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    comm = (entry / "comm").read_text().strip()
                    found.append((int(entry.name), comm))
                    break
            except OSError:
                continue
    return sorted(found)


def _existing_ports() -> list[str]:
    names: list[str] = []
    by_id = Path("/dev/serial/by-id")
    if by_id.is_dir():
        names += sorted(str(p) for p in by_id.iterdir())
    for pattern in ("ttyUSB*", "ttyACM*", "ttyAMA*", "ttyS[0-3]"):
        names += sorted(str(p) for p in Path("/dev").glob(pattern))
    return names


def _try_open(settings: LineSettings) -> BaseException | None:
    import serial

    try:
        port = serial.Serial(
            settings.port, baudrate=settings.baud, bytesize=settings.bytesize,
            parity=settings.parity, stopbits=settings.stopbits, timeout=0, exclusive=False,
        )
    except BaseException as exc:  # classified by the caller
        if not is_open_error(exc):
            raise
        return exc
    port.close()
    return None


def _refused(settings: LineSettings, try_open: Callable[[LineSettings], BaseException | None]) -> tuple[str, object] | None:
    """The setting whose change to its common value makes the port open, if any."""
    for name, common in COMMON:
        if settings.value(name) == common:
            continue
        variant: dict[str, Any] = {name: common}
        if try_open(replace(settings, **variant)) is None:
            return name, settings.value(name)
    return None


def _line(settings: LineSettings) -> str:
    stop = f"{settings.stopbits:g}"
    return f"{settings.baud} {settings.bytesize}{settings.parity}{stop}"


def explain(
    exc: BaseException,
    settings: LineSettings,
    *,
    bus: str | None = None,
    probe: bool = True,
    try_open: Callable[[LineSettings], BaseException | None] = _try_open,
    hint_style: str = "config",
) -> PortProblem:
    """Explain why ``settings.port`` did not open with ``exc``. ``hint_style`` is
    ``config`` (name the bus key to change) or ``cli`` (name the command-line flag)."""
    port = settings.port
    where = f"bus {bus}: " if bus else ""
    code = _errno(exc)
    text = f"{type(exc).__name__}: {exc}"
    if code == errno.ENOENT or (code is None and not os.path.exists(port)):
        ports = _existing_ports()
        have = f"; serial ports on this machine: {', '.join(ports)}" if ports else "; no serial ports were found"
        return PortProblem("port_missing", f"{where}port {port} does not exist (is the adapter plugged in?){have}")
    if code in (errno.EACCES, errno.EPERM):
        group = ""
        try:
            st = os.stat(port)
            group = grp.getgrgid(st.st_gid).gr_name
            mode = stat.filemode(st.st_mode)
        except (OSError, KeyError):
            mode = "?"
        fix = (f"add the service user to group {group!r} (the systemd unit has "
               f"SupplementaryGroups={group}; run `usermod -aG {group} USER` for a shell user)") if group else (
               "give the service user read/write access to it")
        return PortProblem("permission", f"{where}permission denied on {port} ({mode}, group {group or '?'}): {fix}")
    if code in (errno.EBUSY, errno.EAGAIN) or "exclusively lock" in str(exc):
        who = holders(port)
        by = ", ".join(f"{name} (pid {pid})" for pid, name in who) if who else "another process (not visible here)"
        return PortProblem("port_busy", f"{where}port {port} is in use by {by}; stop it or choose another port")
    if code == errno.ENOTTY:
        return PortProblem("not_a_tty", f"{where}{port} is not a serial port ({text})")
    if code == errno.EINVAL or isinstance(exc, ValueError):
        found = _refused(settings, try_open) if probe else None
        if found is not None:
            name, value = found
            common = dict(COMMON)[name]
            how = (f"use {FLAG[name]} {common}" if hint_style == "cli"
                   else f"set {name} = {common!r} on the bus" if isinstance(common, str)
                   else f"set {name} = {common} on the bus")
            why = " (a pseudo-terminal cannot do parity)" if name == "parity" and "/pts/" in os.path.realpath(port) else ""
            return PortProblem(
                "setting_refused",
                f"{where}port {port} refused {name} {value}{why}; it opens with {name} {common}: {how} "
                f"if the devices on the line use it ({text})",
                setting=name, value=value,
            )
        return PortProblem("setting_refused", f"{where}port {port} refused the line settings {_line(settings)} ({text})")
    return PortProblem("port", f"{where}cannot open {port}: {text}")

