"""A real mosquitto broker for tests, on a free loopback port.

    broker = Mosquitto(tmp_path)            # plain listener, anonymous
    broker.start(); broker.port             # wait until it accepts connections
    broker.kill(); broker.start()           # SIGKILL and restart on the SAME port
    broker.stop()                           # SIGTERM (persistence saved)
    Mosquitto(tmp_path, tls=BrokerTls(ca, cert, key, require_client_cert=True))

Also usable as a context manager. ``persistence=True`` keeps sessions and queued QoS 1
messages across restarts (autosaved every second, so a SIGKILL loses at most ~1 s of
session changes) -- what a real platform broker does.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.sim_child import terminate

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def have_mosquitto() -> bool:
    return Path(MOSQUITTO).exists()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.02)


@dataclass(frozen=True)
class BrokerTls:
    ca_file: Path
    cert_file: Path
    key_file: Path
    require_client_cert: bool = False


class Mosquitto:
    def __init__(
        self,
        workdir: Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        tls: BrokerTls | None = None,
        persistence: bool = False,
        password_file: Path | None = None,
        extra_config: str = "",
    ) -> None:
        self.workdir = Path(workdir) / f"mosquitto-{id(self):x}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port or free_port(host)
        self.tls = tls
        self.persistence = persistence
        self.password_file = password_file
        self.extra_config = extra_config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"
        self.starts = 0

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"

    def config_text(self) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "set_tcp_nodelay true",
            "max_inflight_messages 0",
            "max_queued_messages 0",
            "max_queued_bytes 0",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            lines += [
                f"cafile {self.tls.ca_file}",
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                "tls_version tlsv1.2",
            ]
            if self.tls.require_client_cert:
                lines.append("require_certificate true")
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.workdir}/",
                "autosave_interval 1",
            ]
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 10.0) -> None:
        if self.running:
            return
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(self.config_text())
        for attempt in range(50):
            log = self.log_path.open("ab")
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
            log.close()
            try:
                self._wait_up(timeout)
                self.starts += 1
                return
            except TimeoutError:
                if self.proc.poll() is None:
                    self.proc.kill()
                self.proc.wait()
                # A restart may race with the old socket's teardown: retry a little.
                if attempt < 49 and "Address already in use" in self.log_tail():
                    time.sleep(0.1)
                    continue
                raise RuntimeError(f"mosquitto did not start:\n{self.log_tail()}") from None

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise TimeoutError("mosquitto exited")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("mosquitto not listening") from None
                time.sleep(0.02)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: an abrupt broker crash (sessions since the last autosave are lost)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown (persistence written)."""
        if self.proc is not None:
            terminate(self.proc)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
