"""The Modbus simulator (``hwsim modbus run``) as a separate process, with its JSON control
endpoint: for tests that run the real daemon or the real CLI against it."""

from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.sim_child import ReadyLineChild

ROOT = Path(__file__).resolve().parents[2]


def sim_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=f"{ROOT / 'hardware-sim'}:{ROOT}")


def farm_file(path: Path, devices: list[tuple[str, str, int]]) -> Path:
    """A simulator file with ``(name, model, unit)`` devices."""
    path.write_text(
        "".join(f'[[devices]]\nname = "{n}"\nmodel = "{m}"\nunit = {u}\n\n' for n, m, u in devices)
    )
    return path


class SimProcess(ReadyLineChild):
    """``hwsim modbus run FILE --rtu-pty --tcp 0 --rtu-tcp 0 --control 0`` in a child."""

    def __init__(self, file: Path, *args: str) -> None:
        self.file = file
        self.args = list(args) or ["--rtu-pty", "--tcp", "0", "--rtu-tcp", "0"]
        super().__init__(
            [sys.executable, "-m", "hwsim.cli", "modbus", "run", str(file), *self.args, "--control", "0"],
            env=sim_env(),
        )

    @property
    def endpoints(self) -> dict[str, Any]:
        return self.info

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

    def set_holes(self, name: str, holes: list[dict[str, Any]]) -> dict[str, Any]:
        return self._post(f"/devices/{name}/holes", {"holes": holes})

    def status(self, name: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.endpoints['control_port']}/devices/{name}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return dict(json.loads(resp.read()))
