"""sd_notify client and event-loop watchdog against a real unix datagram socket."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from gateway import sdnotify
from gateway.sdnotify import Watchdog
from tests.support.waiting import wait_for


class NotifyServer:
    """A systemd-like NOTIFY_SOCKET: records (monotonic time, datagram) in a thread."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def pings(self) -> list[float]:
        return [t for t, m in self.messages if m == "WATCHDOG=1"]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def server() -> Iterator[tuple[NotifyServer, dict[str, str]]]:
    # a short directory: AF_UNIX paths are limited to 107 bytes
    with tempfile.TemporaryDirectory(prefix="sdn") as d:
        path = os.path.join(d, "notify")
        srv = NotifyServer(path)
        try:
            yield srv, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}
        finally:
            srv.close()


def test_notify_messages(server: tuple[NotifyServer, dict[str, str]]) -> None:
    srv, env = server
    assert sdnotify.ready("up: 3 buses, 12 devices", environ=env)
    assert sdnotify.status("draining backlog\n12 records", environ=env)
    assert sdnotify.extend_timeout(30, environ=env)
    assert sdnotify.reloading(environ=env)
    assert sdnotify.stopping(environ=env)
    wait_for(lambda: len(srv.messages) == 5, 2.0, step=0.01)
    msgs = [m for _, m in srv.messages]
    assert msgs[0] == f"READY=1\nMAINPID={os.getpid()}\nSTATUS=up: 3 buses, 12 devices"
    assert msgs[1] == "STATUS=draining backlog 12 records"  # one line: no field injection
    assert msgs[2] == "EXTEND_TIMEOUT_USEC=30000000"
    assert msgs[3:] == ["RELOADING=1", "STOPPING=1"]


def test_abstract_namespace_socket() -> None:
    name = f"edge-gw-test-{os.getpid()}-{time.monotonic_ns()}"
    srv = NotifyServer(b"\0" + name.encode())
    try:
        assert sdnotify.notify(environ={"NOTIFY_SOCKET": "@" + name}, READY=1)
        wait_for(lambda: srv.messages, 2.0, step=0.01)
        assert srv.messages[0][1] == "READY=1"
    finally:
        srv.close()


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"NOTIFY_SOCKET": ""},
        {"NOTIFY_SOCKET": "vsock:2:1234"},
        {"NOTIFY_SOCKET": "/nonexistent/dir/notify"},
    ],
)
def test_noop_outside_systemd(env: dict[str, str]) -> None:
    assert sdnotify.ready(environ=env) is False
    assert sdnotify.status("x", environ=env) is False


def test_invalid_field_name_rejected() -> None:
    with pytest.raises(ValueError, match="field name"):
        sdnotify.notify(environ={"NOTIFY_SOCKET": "/x"}, **{"BAD=NAME": 1})


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": str(os.getpid())}, 0.2),
        ({"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(env) == expected


def _gaps(pings: list[float], start: float, end: float) -> list[float]:
    inside = [t for t in pings if start <= t <= end]
    return [b - a for a, b in zip(inside, inside[1:], strict=False)]


async def test_watchdog_pings_stop_while_loop_blocked_and_resume(
    server: tuple[NotifyServer, dict[str, str]],
) -> None:
    srv, env = server
    wd = Watchdog(environ=env, lag_threshold=0.05)
    assert wd.enabled and wd.interval == pytest.approx(0.1)
    async with wd:
        await asyncio.sleep(0.6)
        healthy = len(srv.pings())
        assert healthy >= 4, srv.messages  # ~every 100 ms

        async def hang() -> None:
            time.sleep(0.7)  # noqa: ASYNC251 -- deliberately hang the loop

        block_start = time.monotonic()
        await hang()
        block_end = time.monotonic()
        await asyncio.sleep(0.6)
    pings = srv.pings()
    during = [t for t in pings if block_start + 0.02 < t < block_end]
    assert during == [], "pinged while the loop was blocked"
    after = [t for t in pings if t >= block_end]
    assert after, "pings did not resume"
    # the first ping after the hang is withheld (lag seen), so resumption is one probe later
    assert after[0] - block_end >= 0.05
    assert after[0] - block_end < 0.5
    assert wd.last_lag < 0.05


async def test_watchdog_withholds_pings_while_loop_lags(
    server: tuple[NotifyServer, dict[str, str]],
) -> None:
    """The loop still turns (the watchdog task runs) but every timer is 200 ms late."""
    srv, env = server
    before = REGISTRY.get_sample_value("edge_gw_watchdog_withheld_total", {"reason": "lag"}) or 0
    lag_count_before = REGISTRY.get_sample_value("edge_gw_event_loop_lag_seconds_count") or 0
    async with Watchdog(environ=env, lag_threshold=0.05):
        await asyncio.sleep(0.35)
        hog_start = time.monotonic()
        for _ in range(5):
            time.sleep(0.3)  # noqa: ASYNC251 -- deliberately starve the loop
            await asyncio.sleep(0)
        hog_end = time.monotonic()
        await asyncio.sleep(0.5)
    pings = srv.pings()
    assert [t for t in pings if hog_start + 0.05 < t < hog_end] == []
    assert [t for t in pings if t > hog_end], "pings did not resume"
    withheld = REGISTRY.get_sample_value("edge_gw_watchdog_withheld_total", {"reason": "lag"})
    assert (withheld or 0) - before >= 2
    big = REGISTRY.get_sample_value("edge_gw_event_loop_lag_seconds_bucket", {"le": "0.1"})
    count = REGISTRY.get_sample_value("edge_gw_event_loop_lag_seconds_count")
    assert count is not None and big is not None and count > lag_count_before
    assert count - big >= 2  # lag samples above 100 ms were recorded


async def test_watchdog_health_callback(server: tuple[NotifyServer, dict[str, str]]) -> None:
    srv, env = server
    healthy = True

    def health() -> bool:
        return healthy

    async with Watchdog(environ=env, health=health, lag_threshold=0.2):
        await asyncio.sleep(0.35)
        healthy = False
        off = time.monotonic()
        await asyncio.sleep(0.6)
        healthy = True
        on = time.monotonic()
        await asyncio.sleep(0.4)
    pings = srv.pings()
    assert [t for t in pings if off + 0.02 < t < on] == []
    assert [t for t in pings if t > on]


async def test_watchdog_health_callback_raising_counts_as_unhealthy(
    server: tuple[NotifyServer, dict[str, str]],
) -> None:
    srv, env = server

    def health() -> bool:
        raise RuntimeError("buffer check blew up")

    async with Watchdog(environ=env, health=health):
        await asyncio.sleep(0.5)
    assert len(srv.pings()) == 1  # only the initial ping at start


async def test_watchdog_without_systemd_measures_lag_only() -> None:
    wd = Watchdog(environ={}, probe_interval=0.02)
    assert not wd.enabled
    async with wd:
        await asyncio.sleep(0.1)
    assert wd.pings == 0
    assert 0 <= wd.last_lag < 0.5


async def test_watchdog_stop_is_idempotent(tmp_path: Path) -> None:
    wd = Watchdog(environ={"NOTIFY_SOCKET": str(tmp_path / "missing"), "WATCHDOG_USEC": "1000000"})
    wd.start()
    wd.start()  # no second task
    await asyncio.sleep(0.01)
    await wd.stop()
    await wd.stop()
    assert wd.pings == 0  # nobody listening: sends fail quietly


@pytest.mark.parametrize(
    "kwargs",
    [{"interval": 0}, {"lag_threshold": 0}, {"probe_interval": -1}],
)
def test_watchdog_rejects_bad_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Watchdog(environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000"}, **kwargs)
