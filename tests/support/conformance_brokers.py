"""MQTT brokers this project did not write, for the conformance suite: RabbitMQ's MQTT
plugin (Debian ``rabbitmq-server``) and amqtt's broker (PyPI), each in a child process on
free loopback ports, stoppable and restartable on the same port.

    broker = RabbitMq(tmp_path)      # or Amqtt(tmp_path)
    broker.start(); broker.url       # mqtt://127.0.0.1:<port>, accepts MQTT CONNECT
    broker.stop(); broker.start()    # clean stop, then the same node/port again
    rabbit.kill(); rabbit.start()    # RabbitMQ only: SIGKILL (a crash), then start again
    broker.startup_seconds           # one figure per start()

Both share the interface of :class:`tests.support.sync_mosquitto.Mosquitto` that the tests
use (``host``, ``port``, ``url``, ``start``, ``stop``, ``restart``, ``log_tail``, context
manager), plus ``subscriber_port`` (where a test's observer connects), ``version`` and
``keeps_sessions`` (whether a persistent session and its queued QoS 1 messages survive a
broker restart).

RabbitMQ: the node (unique ``name@localhost``) gets its own epmd on a free port
(``ERL_EPMD_PORT``, started here and stopped with the node), its own Erlang distribution
port (``RABBITMQ_DIST_PORT``), AMQP port and MQTT port, all bound to 127.0.0.1, and its
data, logs, config, enabled-plugins file and Erlang cookie (``HOME``) in the work folder.
Nothing from /etc/rabbitmq is read. It runs as root as well as unprivileged.

amqtt: ``python -m tests.support.conformance_brokers amqtt ...`` runs its ``Broker`` with
the configuration this module writes. Its sessions live in memory (a restart forgets them),
so a restart can hold the uplink port closed (``start(hold_uplink=True)``) until a test's
subscriber is back on ``subscriber_port`` (``open_uplink()``): what the observer then
misses is the gateway's doing, not the restart's. The uplink port is served by amqtt's
documented ``external`` listener type.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.support.sim_child import ReadyLineChild, terminate
from tests.support.sync_mosquitto import free_port, wait_port

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
EPMD = "/usr/bin/epmd"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parents[2]


def have_rabbitmq() -> bool:
    return os.access(RABBITMQ_SERVER, os.X_OK) and os.access(EPMD, os.X_OK)


def rabbitmq_version() -> str:
    dirs = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*"))
    return dirs[-1].rsplit("-", 1)[-1] if dirs else "unknown"


def have_amqtt() -> bool:
    try:
        import amqtt  # noqa: F401
    except ImportError:
        return False
    return True


def amqtt_version() -> str:
    from importlib.metadata import version

    return version("amqtt")


def distinct_free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port(host)
        if p not in ports:
            ports.append(p)
    return ports


def mqtt_connack(host: str, port: int, timeout: float = 2.0) -> bool:
    """One MQTT 3.1.1 CONNECT (clean session, anonymous) and its CONNACK: True when the
    broker accepted it (return code 0)."""
    client_id = f"probe-{os.getpid()}-{time.monotonic_ns() % 10**9}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = var + payload
    packet = b"\x10" + bytes([len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(packet)
            got = b""
            while len(got) < 4:
                chunk = s.recv(4 - len(got))
                if not chunk:
                    return False
                got += chunk
            with contextlib.suppress(OSError):
                s.sendall(b"\xe0\x00")  # DISCONNECT
            return got[0] == 0x20 and got[3] == 0
    except OSError:
        return False


class _Broker:
    name = "?"
    keeps_sessions = False

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1") -> None:
        self.workdir = Path(workdir) / f"{self.name}-{id(self):x}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = free_port(host)
        self.subscriber_port = self.port
        self.log_path = self.workdir / f"{self.name}.log"
        self.startup_seconds: list[float] = []
        self.stop_seconds: list[float] = []

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def version(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def start(self, timeout: float = START_TIMEOUT) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 6000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def _wait_connack(self, proc: subprocess.Popen[bytes], port: int, deadline: float) -> None:
        while not mqtt_connack(self.host, port):
            if proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not accept MQTT on {port} in time:\n{self.log_tail()}")
            time.sleep(0.1)

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class RabbitMq(_Broker):
    """RabbitMQ with the MQTT plugin. Durable state (sessions with clean_session=false and
    their queued QoS 1 messages, retained messages) survives :meth:`stop`/:meth:`start`."""

    name = "rabbitmq"
    keeps_sessions = True

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", extra_config: str = "") -> None:
        super().__init__(workdir, host=host)
        self.amqp_port, self.dist_port, self.epmd_port = distinct_free_ports(3, host)
        while self.port in (self.amqp_port, self.dist_port, self.epmd_port):
            self.port = free_port(host)
        self.subscriber_port = self.port
        self.nodename = f"edgegw{os.getpid()}x{id(self) % 100000}@localhost"
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.epmd: subprocess.Popen[bytes] | None = None

    @property
    def version(self) -> str:
        return rabbitmq_version()

    def config_text(self) -> str:
        lines = [
            f"listeners.tcp.default = {self.host}:{self.amqp_port}",
            f"mqtt.listeners.tcp.default = {self.host}:{self.port}",
            "mqtt.allow_anonymous = true",
            "mqtt.vhost = /",
            "mqtt.exchange = amq.topic",
            "log.console = true",
            "log.console.level = info",
            "log.file = false",
        ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def env(self) -> dict[str, str]:
        w = self.workdir
        return {
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": str(w),  # the Erlang cookie goes here
            "LANG": "C.UTF-8",
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": self.host,
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": self.host,
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),  # absent: /etc is not read
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
            # loopback-only distribution; no busy-waiting schedulers on a shared machine
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                f"-kernel inet_dist_use_interface {{{self.host.replace('.', ',')}}} "
                "+sbwt none +sbwtdcpu none +sbwtdio none"
            ),
        }

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = START_TIMEOUT) -> None:
        if self.running:
            return
        (self.workdir / "rabbitmq.conf").write_text(self.config_text())
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        t0 = time.monotonic()
        deadline = t0 + timeout
        with self.log_path.open("ab") as log:
            self.epmd = subprocess.Popen(
                [EPMD, "-port", str(self.epmd_port), "-address", self.host],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )
        try:
            wait_port(self.host, self.epmd_port, 10)
            with self.log_path.open("ab") as log:
                self.proc = subprocess.Popen(
                    [RABBITMQ_SERVER], env=self.env(), stdout=log, stderr=log,
                    stdin=subprocess.DEVNULL, start_new_session=True,
                )
            self._wait_connack(self.proc, self.port, deadline)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds.append(time.monotonic() - t0)

    def kill(self) -> None:
        """A crash: SIGKILL to the node's whole process group (the start script, the Erlang
        VM and its helpers), then its epmd. Durable state is what the node had synced."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        self.stop()

    def stop(self) -> None:
        """A clean stop (SIGTERM: the node shuts down and writes its durable state), then
        its epmd. A node that does not stop in time is killed with its process group."""
        t0 = time.monotonic()
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            # the Erlang VM is a child of the start script: make sure it is gone too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, 0)
                deadline = time.monotonic() + STOP_TIMEOUT
                while time.monotonic() < deadline:
                    os.killpg(proc.pid, 0)
                    time.sleep(0.1)
                os.killpg(proc.pid, signal.SIGKILL)
        epmd, self.epmd = self.epmd, None
        if epmd is not None:
            terminate(epmd, grace=5)
        if proc is not None:
            self.stop_seconds.append(time.monotonic() - t0)


class Amqtt(_Broker):
    """amqtt's broker in a child process: ``subscriber_port`` is open from the start, the
    uplink ``port`` unless ``start(hold_uplink=True)`` (then :meth:`open_uplink`)."""

    name = "amqtt"
    keeps_sessions = False

    def __init__(self, workdir: Path, *, host: str = "127.0.0.1", broker_config: dict[str, Any] | None = None) -> None:
        super().__init__(workdir, host=host)
        self.subscriber_port = free_port(host)
        while self.subscriber_port == self.port:
            self.subscriber_port = free_port(host)
        self.broker_config = broker_config or {}
        self.child: ReadyLineChild | None = None

    @property
    def version(self) -> str:
        return amqtt_version()

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.proc is not None and self.child.proc.poll() is None

    def config(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "listeners": {
                "default": {"type": "tcp", "bind": f"{self.host}:{self.subscriber_port}"},
                "uplink": {"type": "external"},
            },
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        for key, value in self.broker_config.items():
            if key == "plugins":
                cfg["plugins"].update(value)
            else:
                cfg[key] = value
        return cfg

    def start(self, timeout: float = START_TIMEOUT, *, hold_uplink: bool = False) -> None:
        if self.running:
            return
        conf = self.workdir / "amqtt.json"
        conf.write_text(json.dumps(self.config()))
        t0 = time.monotonic()
        argv = [sys.executable, "-m", "tests.support.conformance_brokers", "amqtt", str(conf),
                self.host, str(self.port)]
        if hold_uplink:
            argv.append("--hold")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.child = ReadyLineChild(argv, env=env, log=self.log_path).start(min(timeout, 30.0))
        assert self.child.proc is not None
        self._wait_connack(self.child.proc, self.subscriber_port, t0 + timeout)
        if not hold_uplink:
            self._wait_connack(self.child.proc, self.port, t0 + timeout)
        self.startup_seconds.append(time.monotonic() - t0)

    def open_uplink(self, timeout: float = 10.0) -> None:
        assert self.child is not None and self.child.proc is not None
        self.child.proc.send_signal(signal.SIGUSR1)
        self._wait_connack(self.child.proc, self.port, time.monotonic() + timeout)

    def stop(self) -> None:
        t0 = time.monotonic()
        child, self.child = self.child, None
        if child is not None:
            child.stop()
            self.stop_seconds.append(time.monotonic() - t0)


# ---------------------------------------------------------------------- amqtt child process
async def _amqtt_main(conf: dict[str, Any], host: str, port: int, hold: bool) -> None:
    import logging

    from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
    from amqtt.broker import Broker

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    broker = Broker(conf)
    await broker.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    server: asyncio.Server | None = None

    async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await broker.external_connected(StreamReaderAdapter(reader), StreamWriterAdapter(writer), "uplink")

    async def open_uplink() -> None:
        nonlocal server
        if server is None:
            server = await asyncio.start_server(connected, host, port, reuse_address=True)

    tasks: set[asyncio.Task[None]] = set()

    def on_usr1() -> None:
        task = loop.create_task(open_uplink())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, on_usr1)
    if not hold:
        await open_uplink()
    print(json.dumps({"port": port, "held": hold}), flush=True)
    await stop.wait()
    if server is not None:
        server.close()
    await broker.shutdown()


def main(argv: list[str]) -> None:
    if argv[:1] != ["amqtt"] or len(argv) < 4:
        raise SystemExit("usage: python -m tests.support.conformance_brokers amqtt CONF HOST PORT [--hold]")
    conf = json.loads(Path(argv[1]).read_text())
    asyncio.run(_amqtt_main(conf, argv[2], int(argv[3]), "--hold" in argv[4:]))


if __name__ == "__main__":
    main(sys.argv[1:])
