"""The serial meter simulator (``hwsim dlt645|cjt188|framed``) in a child process, for tests
that must not share an event loop (or code) with the gateway under test.

    with SimProcess("dlt645", config=Path("sim.toml"), tcp=True) as sim:
        sim.pty            # the pseudo-terminal the gateway opens
        sim.tcp_port       # serial-server mode
        sim.configure("000000000002", {"quirks": {"silent": False}})
        sim.emit(3, "card_granted", card="00012345", door=2)
        sim.state()        # GET / of the control endpoint

The child prints one JSON line when it is up (pty path, ports); that line is read with a
deadline so a broken simulator fails the test at once instead of hanging it.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

START_TIMEOUT = 15.0


class SimProcess:
    def __init__(self, protocol: str = "dlt645", *, config: Path | None = None,
                 devices: list[str] | None = None, pty: bool = True, tcp: bool = False,
                 control: bool = True, log: Path | None = None) -> None:
        self.argv = [sys.executable, "-m", "hwsim.cli", protocol]
        if config is not None:
            self.argv += ["--config", str(config)]
        for d in devices or []:
            self.argv += ["--device", d]
        if not pty:
            self.argv.append("--no-pty")
        if tcp:
            self.argv += ["--tcp", "127.0.0.1:0"]
        if control:
            self.argv += ["--control", "127.0.0.1:0"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SimProcess:
        stderr = open(self.log, "ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=stderr)
        finally:
            if self.log is not None:
                stderr.close()  # type: ignore[union-attr]
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + START_TIMEOUT
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                self.stop()
                raise AssertionError(f"simulator {self.argv} did not start within {START_TIMEOUT}s")
            chunk = os.read(fd, 4096)
            if not chunk:
                code = self.proc.wait()
                raise AssertionError(f"simulator {self.argv} exited with {code} before it was ready")
            line += chunk
        self.info = json.loads(line)
        return self

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ endpoints

    @property
    def pty(self) -> str:
        path = self.info.get("pty")
        assert path, "the simulator has no pseudo-terminal"
        return str(path)

    @property
    def tcp_port(self) -> int:
        port = self.info.get("tcp_port")
        assert port, "the simulator has no TCP listener"
        return int(port)

    @property
    def control_url(self) -> str:
        port = self.info.get("control_port")
        assert port, "the simulator has no control endpoint"
        return f"http://127.0.0.1:{port}"

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control_url + path, data=data,
                                     method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"simulator control {path}: {exc.code} {exc.read()!r}") from None

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("/")
        return result

    def device(self, address: str | int) -> dict[str, Any]:
        for d in self.state()["devices"]:
            if str(d["address"]).lstrip("0") == str(address).lstrip("0"):
                return dict(d)
        raise KeyError(address)

    def configure(self, address: str | int, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self._call(f"/devices/{address}", body)
        return result

    def emit(self, address: str | int, event: str, **fields: Any) -> str:
        result = self._call(f"/devices/{address}/emit", {"event": event, **fields})
        return str(result["frame"])
