"""The Modbus simulator (``hwsim modbus run``) as a separate process, with its JSON control
endpoint: for tests that run the real daemon or the real CLI against it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def sim_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'hardware-sim'}:{ROOT}")


def farm_file(path: Path, devices: list[tuple[str, str, int]]) -> Path:
    """A simulator file with ``(name, model, unit)`` devices."""
    path.write_text(
        "".join(f'[[devices]]\nname = "{n}"\nmodel = "{m}"\nunit = {u}\n\n' for n, m, u in devices)
    )
    return path


class SimProcess:
    """``hwsim modbus run FILE --rtu-pty --tcp 0 --rtu-tcp 0 --control 0`` in a child."""

    def __init__(self, file: Path, *args: str) -> None:
        self.file = file
        self.args = list(args) or ["--rtu-pty", "--tcp", "0", "--rtu-tcp", "0"]
        self.proc: subprocess.Popen[str] | None = None
        self.endpoints: dict[str, Any] = {}

    def start(self, timeout: float = 20.0) -> SimProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hwsim.cli", "modbus", "run", str(self.file), *self.args]
            + ["--control", "0"],
            stdout=subprocess.PIPE,
            text=True,
            env=sim_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"simulator did not start (exit {self.proc.wait(timeout)})")
        self.endpoints = json.loads(line)
        return self

    @property
    def pty(self) -> str:
        return str(self.endpoints["pty"])

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.endpoints['control_port']}{path}",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def fault(self, name: str, fault: str, **params: Any) -> dict[str, Any]:
        return self._post(f"/devices/{name}/fault", {"fault": fault, **params})

    def set_values(self, name: str, **values: Any) -> dict[str, Any]:
        return self._post(f"/devices/{name}/values", values)

    def status(self, name: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.endpoints['control_port']}/devices/{name}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))

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
        return int(self.proc.returncode)

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
