"""Memory cost of ONVIF cameras in the real daemon.

Starts ``hwsim onvif --cameras N`` and ``edge-gateway run`` (separate processes) with N
cameras of the ``generic-onvif-camera`` profile, waits until every camera is online and
has a PullPoint subscription, lets it run a few pull cycles and reads the daemon's VmRSS.

Command line (prints one JSON line per camera count)::

    python -m tests.support.onvif_memory 0 1 5 20
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.core_daemon import Daemon, free_port
from tests.support.sim_child import terminate

SIM_USER = "admin"
SIM_PASSWORD = "pw"
_SUB_RE = re.compile(r'^edge_gw_onvif_subscriptions_total\{bus="([^"]+)"', re.M)


def vm_rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux ``/proc/PID/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class CameraSim:
    """``hwsim onvif --cameras N`` in a child process."""

    def __init__(self, cameras: int) -> None:
        self.cameras = cameras
        self.proc: subprocess.Popen[bytes] | None = None
        self.ports: dict[str, int] = {}

    def start(self, timeout: float = 20.0) -> CameraSim:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from hwsim.cli import main; sys.exit(main())", "onvif",
             "--cameras", str(self.cameras), "--username", SIM_USER, "--password", SIM_PASSWORD],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and not line:
            line = self.proc.stdout.readline()
        if not line:
            self.stop()
            raise RuntimeError("camera simulator printed no ports")
        info = json.loads(line)
        self.ports = {name: int(c["port"]) for name, c in info["cameras"].items()}
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


def gateway_config(tmp: Path, camera_ports: list[int], *, extra_devices: str = "") -> Path:
    """A gateway config with one ``[[devices]]`` camera per port (and nothing else)."""
    lines = [
        "[gateway]",
        'id = "mem-gw"',
        'district = "510107"',
        'community = "Mem"',
        'log_level = "warning"',
        "[api]",
        f'listen = "127.0.0.1:{free_port()}"',
        "[metrics]",
        "enabled = true",
        "[buffer]",
        f'path = "{tmp / "buffer.db"}"',
        'budget = "64MiB"',
    ]
    for i, port in enumerate(camera_ports):
        lines += [
            "[[devices]]",
            f'id = "cam-{i:03d}"',
            'class = "camera"',
            'profile = "generic-onvif-camera"',
            'poll = "10s"',
            f'address = {{ host = "127.0.0.1", port = {port}, username = "{SIM_USER}", '
            f'password = "{SIM_PASSWORD}", pull_timeout = "2s" }}',
        ]
    cfg = tmp / "gateway.toml"
    cfg.write_text("\n".join(lines) + "\n" + extra_devices)
    os.chmod(cfg, 0o600)
    return cfg


def _subscribed(d: Daemon) -> set[str]:
    _status, body, _ctype = d.raw("/metrics")
    return set(_SUB_RE.findall(body.decode()))


def _online(d: Daemon) -> int:
    devs = d.get("/api/v1/devices")["devices"]
    return sum(1 for x in devs if x["state"] == "online")


def measure(cameras: int, *, settle: float = 3.0, timeout: float = 60.0) -> dict[str, Any]:
    """Daemon VmRSS with ``cameras`` simulated cameras, all online and subscribed."""
    sim = CameraSim(cameras).start() if cameras else None
    try:
        with tempfile.TemporaryDirectory(prefix="onvif-mem-") as td:
            tmp = Path(td)
            ports = list(sim.ports.values()) if sim else []
            d = Daemon(gateway_config(tmp, ports)).start(wait_ready=30)
            try:
                assert d.proc is not None
                if cameras:
                    d.wait_for(lambda: _online(d) == cameras, timeout, f"{cameras} cameras online")
                    d.wait_for(lambda: len(_subscribed(d)) == cameras, timeout, f"{cameras} subscriptions")
                time.sleep(settle)  # a few PullMessages / poll cycles
                rss = vm_rss_bytes(d.proc.pid)
                online = _online(d) if cameras else 0
            finally:
                code = d.stop()
            if code not in (0, None):
                raise RuntimeError(f"daemon exited with {code}:\n{d.log_text()}")
    finally:
        if sim is not None:
            sim.stop()
    return {"cameras": cameras, "online": online, "rss_bytes": rss, "rss_mib": round(rss / 2**20, 1)}


def main(argv: list[str]) -> int:
    counts = [int(a) for a in argv] or [0, 1, 5, 20]
    for n in counts:
        print(json.dumps(measure(n)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
