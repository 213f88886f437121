"""A whole test installation for the operations tests: simulators as child processes
(``hwsim onvif|modbus|dlt645|platform``), a raw MQTT capture, the ``ops_push`` test driver
registered through a temporary entry point, and a config that puts one device of every
available driver kind on the real daemon (``tests.support.core_daemon.Daemon``).

Every wait is bounded; every child is stopped by :meth:`Stack.close`.
"""

from __future__ import annotations

import gzip
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from tests.support.core_daemon import config_head, free_port
from tests.support.sim_child import terminate

ROOT = Path(__file__).resolve().parents[2]
HWSIM = [sys.executable, "-c", "import sys; from hwsim.cli import main; sys.exit(main())"]

SECRET_CAMERA_PASSWORD = "cam-Pw-4a1f9e7d-ONVIF"


def driver_available(name: str) -> bool:
    """True when the product driver package ``drivers.<name>`` has its driver module."""
    return find_spec(f"drivers.{name}.driver") is not None


def push_driver_site(tmp: Path) -> Path:
    """A directory that, put on PYTHONPATH, registers the ``ops_push`` test driver in the
    ``edge_gateway.drivers`` entry-point group (a bare ``.dist-info``, no install step)."""
    site = tmp / "ops-push-site"
    info = site / "ops_push_driver-0.1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ops-push-driver\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        "[edge_gateway.drivers]\nops_push = tests.support.ops_pushdriver.driver:PushDriver\n"
    )
    return site


def daemon_env(tmp: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a daemon child that can load the ``ops_push`` driver."""
    site = push_driver_site(tmp)
    path = os.pathsep.join(p for p in (str(site), str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path, "EDGE_GW_LOG_LEVEL": "info", **(extra or {})}


class JsonProc:
    """A child that prints one JSON line when it is ready."""

    def __init__(self, args: list[str], name: str, log: Path, timeout: float = 30.0) -> None:
        self.name = name
        self.log = log
        self._logf = open(log, "ab")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "hardware-sim"), str(ROOT)])}
        self.proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=self._logf, stdin=subprocess.DEVNULL, env=env
        )
        lines: queue.Queue[bytes] = queue.Queue()

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True, name=f"pump-{name}").start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"{name} did not start:\n{log.read_text(errors='replace')[-3000:]}") from None
                continue
            try:
                self.info: dict[str, Any] = json.loads(line)
                break
            except ValueError:
                continue

    def stop(self) -> None:
        terminate(self.proc)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._logf.close()


class MqttCapture:
    """Subscribes to ``{prefix}/#`` and keeps every raw payload (gzip undone)."""

    def __init__(self, port: int, prefix: str, username: str | None = None, password: str | None = None) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.payloads: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ops-capture-{os.getpid()}")
        if username is not None:
            self.client.username_pw_set(username, password)

        def on_connect(client: Any, userdata: Any, flags: Any, rc: Any, props: Any = None) -> None:
            client.subscribe(f"{prefix}/#", qos=1)

        def on_subscribe(*_a: Any) -> None:
            self._subscribed.set()

        def on_message(client: Any, userdata: Any, msg: Any) -> None:
            data = bytes(msg.payload)
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            with self._lock:
                self.payloads.append((msg.topic, data))

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            self.close()
            raise AssertionError("MQTT capture could not subscribe")

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._lock:
            items = list(self.payloads)
        for topic, data in items:
            if topic.endswith("/records"):
                out.extend(json.loads(data)["records"])
        return out

    def blob(self) -> bytes:
        with self._lock:
            return b"\n".join(t.encode() + b" " + d for t, d in self.payloads)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass
class Stack:
    tmp: Path
    procs: list[JsonProc] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)  # device id -> driver
    onvif_control: str = ""

    def start(self, args: list[str], name: str) -> JsonProc:
        p = JsonProc(args, name, self.tmp / f"{name}.log")
        self.procs.append(p)
        return p

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    # ------------------------------------------------------------------ simulators
    def platform(self, mqtt_port: int, prefix: str, extra: list[str] | None = None) -> str:
        p = self.start(
            [*HWSIM, "platform", "run", "--db", str(self.tmp / "platform.db"), "--mqtt",
             f"127.0.0.1:{mqtt_port}", "--prefix", prefix, "--http", "127.0.0.1:0", *(extra or [])],
            "platform",
        )
        return str(p.info["http"])

    def device_config(self) -> str:
        """Start a simulator for every available driver kind and return the ``[[buses]]`` /
        ``[[devices]]`` TOML for them (plus virtual devices)."""
        parts = [
            _dev("virt-smoke", "smoke_detector", "virtual-smoke", poll="1s"),
            _dev("virt-access", "access_control", "virtual-access", poll="1s"),
            _dev("virt-parking", "parking_space", "virtual-parking", poll="1s"),
        ]
        self.devices.update({"virt-smoke": "virtual", "virt-access": "virtual", "virt-parking": "virtual"})
        if driver_available("onvif"):
            cam = self.start(
                [*HWSIM, "onvif", "--cameras", "1", "--username", "admin", "--password", SECRET_CAMERA_PASSWORD],
                "onvif",
            )
            port = cam.info["cameras"]["cam1"]["port"]
            self.onvif_control = f"http://127.0.0.1:{cam.info['control_port']}/cameras/cam1"
            parts.append(
                _dev(
                    "cam-gate", "camera", "generic-onvif-camera", poll="2s",
                    address=f'{{ host = "127.0.0.1", port = {port}, username = "admin", '
                    f'password = {{ env = "OPS_CAM_PASSWORD" }}, pull_timeout = "1s" }}',
                )
            )
            self.devices["cam-gate"] = "onvif"
        if driver_available("modbus"):
            sim = self.tmp / "modbus-sim.toml"
            sim.write_text(
                '[[devices]]\nname = "smoke"\nmodel = "acme-sd300"\nunit = 3\n'
                '[[devices]]\nname = "gas"\nmodel = "zhongan-zagt2"\nunit = 4\n'
            )
            mb = self.start([*HWSIM, "modbus", "run", str(sim), "--tcp", "0"], "modbus")
            port = mb.info["tcp_port"]
            parts.append(
                "[[buses]]\nname = \"mb-tcp\"\ndriver = \"modbus\"\ntransport = \"tcp\"\n"
                f"host = \"127.0.0.1\"\nport = {port}\ntimeout = \"300ms\"\n"
            )
            parts.append(_dev("mb-smoke", "smoke_detector", "acme-sd300", bus="mb-tcp", address="{ unit = 3 }"))
            parts.append(_dev("mb-gas", "gas_detector", "zhongan-zagt2", bus="mb-tcp", address="{ unit = 4 }"))
            # a configured device nobody answers for: read errors and an offline device
            parts.append(_dev("mb-missing", "smoke_detector", "acme-sd300", bus="mb-tcp", address="{ unit = 9 }"))
            # and one behind a TCP port nobody listens on: offline, bus open failures
            parts.append(_dev("mb-dead", "smoke_detector", "acme-sd300", address=f'{{ host = "127.0.0.1", port = {free_port()}, unit = 1, timeout = "200ms" }}'))
            self.devices.update({"mb-smoke": "modbus", "mb-gas": "modbus", "mb-missing": "modbus", "mb-dead": "modbus"})
        if driver_available("serial"):
            # an RS-485 line on a pseudo-terminal (8N1: ptys refuse even parity on reopen)
            link = self.tmp / "ttyMeters"
            self.start([*HWSIM, "dlt645", "--device", "000012345678", "--link", str(link)], "dlt645")
            parts.append(
                f"[[buses]]\nname = \"meters\"\ndriver = \"serial\"\nport = \"{link}\"\n"
                "baud = 2400\nparity = \"N\"\n"
            )
            parts.append(_dev("em-0201", "electricity_meter", "dlt645-ddsu-1p", bus="meters", address='{ addr = "000012345678" }'))
            self.devices["em-0201"] = "serial"
        return "\n".join(parts)

    def push_config(self, rounds: int = 1) -> str:
        """The ``ops_push`` devices that replay ``ops_privacy_data.records()``."""
        out = [f"[[buses]]\nname = \"push\"\ndriver = \"ops_push\"\nrounds = {rounds}\n"]
        for i in range(1, 5):
            out.append(_dev(f"b{i}-door-01", "access_control", "ops-push-access", bus="push", poll="30s"))
            out.append(_dev(f"p{i}", "parking_space", "ops-push-parking", bus="push", poll="30s"))
            out.append(_dev(f"fall-{i}", "fall_detector", "ops-push-fall", bus="push", poll="30s"))
            out.append(_dev(f"pillar-{i}", "alarm_pillar", "ops-push-pillar", bus="push", poll="30s"))
        for d in ("door", "p", "fall", "pillar"):
            self.devices[d] = "ops_push"
        return "\n".join(out)

    def camera_event(self) -> None:
        if not self.onvif_control:
            return
        body = json.dumps(
            {"topic": "tns1:VideoSource/MotionAlarm", "data": {"State": "true"}, "source": {"VideoSourceConfigurationToken": "vsc_1"}}
        ).encode()
        req = urllib.request.Request(self.onvif_control + "/event", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()


def _dev(dev_id: str, cls: str, profile: str, *, poll: str = "1s", bus: str | None = None, address: str | None = None) -> str:
    lines = ["[[devices]]", f'id = "{dev_id}"', f'class = "{cls}"', f'profile = "{profile}"', f'poll = "{poll}"']
    if bus:
        lines.append(f'bus = "{bus}"')
    if address:
        lines.append(f"address = {address}")
    return "\n".join(lines) + "\n"


def gateway_config(
    tmp: Path,
    *,
    api_port: int,
    body: str,
    uplink: str = "",
    privacy: str = "",
    community: str = "Jifu",
    token_env: str | None = "EDGE_GW_API_TOKEN",
) -> Path:
    text = (
        config_head(tmp, api_port=api_port, gw_id="cd-wh-jifu-gw01", community=community,
                    token_env=token_env, budget="64MiB")
        + f"{uplink}\n"
        f"[privacy]\n{privacy}\n\n"
        f"{body}\n"
    )
    cfg = tmp / "gateway.toml"
    cfg.write_text(text)
    os.chmod(cfg, 0o600)
    return cfg


def mqtt_uplink(port: int, prefix: str, *, username: str | None = None, password_env: str | None = None) -> str:
    lines = [
        "[[uplinks]]", 'name = "city"', 'kind = "mqtt"', f'url = "mqtt://127.0.0.1:{port}"',
        f'topic_prefix = "{prefix}"', 'batch_linger = "10ms"', 'reconnect_max = "2s"', 'timeout = "3s"',
    ]
    if username is not None:
        lines.append(f'username = "{username}"')
    if password_env is not None:
        lines.append(f'password = {{ env = "{password_env}" }}')
    return "\n".join(lines) + "\n"


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())
