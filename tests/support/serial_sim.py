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
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.sim_child import ReadyLineChild


class SimProcess(ReadyLineChild):
    def __init__(self, protocol: str = "dlt645", *, config: Path | None = None,
                 devices: list[str] | None = None, pty: bool = True, tcp: bool = False,
                 control: bool = True, log: Path | None = None, line: str | None = None) -> None:
        argv = [sys.executable, "-m", "hwsim.cli", protocol]
        if config is not None:
            argv += ["--config", str(config)]
        for d in devices or []:
            argv += ["--device", d]
        if not pty:
            argv.append("--no-pty")
        if tcp:
            argv += ["--tcp", "127.0.0.1:0"]
        if control:
            argv += ["--control", "127.0.0.1:0"]
        if line:
            argv += ["--line", line]
        super().__init__(argv, log=log or Path(os.devnull))

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
