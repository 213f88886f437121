"""Secrets never leak: the daemon runs with known secret strings (local API token, MQTT
password checked by mosquitto's password file, privacy HMAC key from a systemd-style
credential, ONVIF camera password) and every output an operator or a support engineer sees
is searched for them: logs, /metrics, the local API (including error answers and the
recent-log endpoint), ``edge-gateway check``, the ``edge-gateway diagnostics`` bundle, and
the errors of a wrong MQTT password, a wrong camera password and bad configurations."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.core_daemon import Daemon, free_port
from tests.support.ops_stack import (
    ROOT,
    SECRET_CAMERA_PASSWORD,
    Stack,
    daemon_env,
    driver_available,
    gateway_config,
    mqtt_uplink,
)
from tests.support.sync_mosquitto import Mosquitto, have_mosquitto

pytestmark = [
    pytest.mark.mosquitto,
    pytest.mark.skipif(not have_mosquitto(), reason="mosquitto is not installed"),
]

API_TOKEN = "tok-9f3e1c77b2a64d0e8c51-api"
MQTT_PASSWORD = "mqtt-Pw-51c0e2d9a7b4-city"
WRONG_MQTT_PASSWORD = "mqtt-WRONG-0b7e44c2a915"
HMAC_KEY = "hmac-key-3a8d0f6e2c9b7154-jifu"
WRONG_CAMERA_PASSWORD = "cam-WRONG-7c2d9e01ab"
PREFIX = "city/secrets"
MQTT_USER = "cd-wh-jifu-gw01"

SECRETS = {
    "api-token": API_TOKEN,
    "mqtt-password": MQTT_PASSWORD,
    "wrong-mqtt-password": WRONG_MQTT_PASSWORD,
    "hmac-key": HMAC_KEY,
    "camera-password": SECRET_CAMERA_PASSWORD,
    "wrong-camera-password": WRONG_CAMERA_PASSWORD,
}


def leaks(blob: bytes) -> list[str]:
    """Labels of the secrets found in ``blob`` (plain, base64, hex, UTF-16, reversed)."""
    found = []
    for label, value in SECRETS.items():
        raw = value.encode()
        needles = {
            raw,
            value.encode("utf-16-le"),
            base64.b64encode(raw).rstrip(b"="),
            raw.hex().encode(),
            raw[::-1],
            raw[4:-4],  # a middle part (a truncated or partly masked secret is still a leak)
        }
        if any(n in blob for n in needles):
            found.append(label)
    return found


def _run_cli(args: list[str], env: dict[str, str], timeout: float = 60) -> bytes:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, timeout=timeout,
        env={**os.environ, **env}, cwd=ROOT,
    )
    return f"exit {proc.returncode}\n".encode() + proc.stdout + b"\n" + proc.stderr


def _http(url: str, token: str | None = None, method: str = "GET", body: bytes | None = None) -> bytes:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return f"{resp.status} ".encode() + bytes(resp.headers) .replace(b"\r", b"") + resp.read()
    except urllib.error.HTTPError as exc:
        return f"{exc.code} ".encode() + exc.read()


@dataclass
class Outputs:
    parts: dict[str, bytes] = field(default_factory=dict)


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outputs]:
    tmp = tmp_path_factory.mktemp("secrets")
    pw = tmp / "mosquitto.passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), MQTT_USER, MQTT_PASSWORD], check=True, timeout=30)
    os.chmod(pw, 0o644)  # mosquitto may drop privileges before reading it
    broker = Mosquitto(tmp, password_file=pw)
    broker.start()
    creds = tmp / "credentials"
    creds.mkdir()
    (creds / "privacy-key").write_text(HMAC_KEY + "\n")
    os.chmod(creds / "privacy-key", 0o600)
    stack = Stack(tmp)
    out = Outputs()
    daemon: Daemon | None = None
    try:
        body = stack.device_config() if driver_available("onvif") else ""
        # only the camera (a password-protected device) and the virtual devices are needed
        uplink = mqtt_uplink(broker.port, PREFIX, username=MQTT_USER, password_env="OPS_MQTT_PASSWORD")
        cfg = gateway_config(tmp, api_port=free_port(), body=body, uplink=uplink,
                             privacy='hmac_key = { credential = "privacy-key" }')
        env = daemon_env(tmp, {
            "EDGE_GW_API_TOKEN": API_TOKEN,
            "OPS_MQTT_PASSWORD": MQTT_PASSWORD,
            "OPS_CAM_PASSWORD": SECRET_CAMERA_PASSWORD,
            "CREDENTIALS_DIRECTORY": str(creds),
        })
        daemon = Daemon(cfg, env=env, log=tmp / "daemon.log").start(wait_ready=60)
        d = daemon
        d.wait_for(lambda: (d.get("/api/v1/uplinks").get("uplinks") or [{}])[0].get("connected"), 20, "uplink connected")
        base = d.base
        out.parts["metrics"] = _http(base + "/metrics")
        for path in ("/api/v1/health", "/api/v1/uplinks", "/api/v1/devices", "/api/v1/buffer", "/api/v1/log"):
            out.parts[f"api {path}"] = _http(base + path)
        out.parts["api wrong token"] = _http(base + "/api/v1/reload", token=API_TOKEN[:-1] + "X", method="POST", body=b"{}")
        out.parts["api no token"] = _http(base + "/api/v1/devices/virt-access/commands", method="POST", body=b'{"id":"s1","point":"unlock","value":true}')
        out.parts["api command"] = _http(base + "/api/v1/devices/virt-access/commands", token=API_TOKEN, method="POST",
                                         body=b'{"id":"s2","point":"unlock","value":true}')
        out.parts["check"] = _run_cli(["check", "-c", str(cfg)], env)
        out.parts["check --json"] = _run_cli(["check", "-c", str(cfg), "--json"], env)
        out.parts["status"] = _run_cli(["status", "-c", str(cfg)], env)
        bundle = tmp / "bundle.tar.gz"
        out.parts["diagnostics output"] = _run_cli(["diagnostics", "-c", str(cfg), "-o", str(bundle)], env)
        assert bundle.exists(), out.parts["diagnostics output"]
        with tarfile.open(bundle) as tar:
            names = tar.getnames()
            assert any(n.endswith("metrics.txt") for n in names), names
            for member in tar.getmembers():
                f = tar.extractfile(member)
                if f is not None:
                    out.parts[f"bundle {member.name}"] = f.read()
        out.parts["bundle raw"] = bundle.read_bytes()
        # a reload with a wrong camera password in the environment of the running daemon is
        # not possible; a second daemon with wrong passwords shows the error paths instead
        d.stop()
        daemon = None
        out.parts["daemon log"] = (tmp / "daemon.log").read_bytes()

        bad_env = {**env, "OPS_MQTT_PASSWORD": WRONG_MQTT_PASSWORD, "OPS_CAM_PASSWORD": WRONG_CAMERA_PASSWORD}
        daemon = Daemon(cfg, env=bad_env, log=tmp / "wrong.log").start(wait_ready=60)
        w = daemon
        w.wait_for(lambda: b"auth" in (tmp / "wrong.log").read_bytes().lower() or b"not auth" in (tmp / "wrong.log").read_bytes().lower(),
                   20, "an authentication error in the log")
        if driver_available("onvif"):
            w.wait_for(lambda: b"cam-gate" in (tmp / "wrong.log").read_bytes(), 20, "a camera error in the log")
        out.parts["wrong-password api log"] = _http(w.base + "/api/v1/log")
        out.parts["wrong-password uplinks"] = _http(w.base + "/api/v1/uplinks")
        out.parts["wrong-password metrics"] = _http(w.base + "/metrics")
        w.stop()
        daemon = None
        out.parts["wrong-password log"] = (tmp / "wrong.log").read_bytes()
        yield out
    finally:
        if daemon is not None:
            daemon.stop()
        stack.close()
        broker.stop()


def test_outputs_were_collected(outputs: Outputs) -> None:
    p = outputs.parts
    assert p["metrics"].count(b"edge_gw_") > 100
    assert p["api wrong token"].startswith(b"401") or p["api wrong token"].startswith(b"403")
    assert p["api no token"][:3] in (b"401", b"403")
    assert p["api command"].startswith(b"200"), p["api command"]
    assert b"exit 0" in p["check"]
    assert b"not authori" in p["wrong-password log"].lower() or b"auth" in p["wrong-password log"].lower()


def test_no_secret_in_any_output(outputs: Outputs) -> None:
    found = {where: leaks(blob) for where, blob in outputs.parts.items()}
    assert {k: v for k, v in found.items() if v} == {}


def test_detector_sees_secrets() -> None:
    """The search is not blind to the spellings it claims to find."""
    for v in SECRETS.values():
        for blob in (v.encode(), base64.b64encode(v.encode()), v.encode().hex().encode(), f"x={v[2:-2]}".encode()):
            assert leaks(b"..." + blob + b"..."), blob


BAD_CONFIGS = {
    "short hmac key inline": '[privacy]\nhmac_key = "{s}"\n',
    "secret of a wrong type": '[[uplinks]]\nname = "city"\nkind = "mqtt"\nurl = "mqtt://127.0.0.1:1"\ntopic_prefix = "p"\npassword = ["{s}"]\n',
    "unknown secret source": '[[uplinks]]\nname = "city"\nkind = "mqtt"\nurl = "mqtt://127.0.0.1:1"\ntopic_prefix = "p"\npassword = {{ vault = "{s}" }}\n',
    "misspelt key holding a secret": '[api]\nlisten = "127.0.0.1:1"\ntokn = "{s}"\n',
    # the secret is the environment variable's value (the error may name the variable)
    "short hmac key from the environment": '[privacy]\nhmac_key = {{ env = "OPS_SHORT_KEY" }}\n',
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_errors_do_not_echo_secrets(case: str, tmp_path: Path) -> None:
    secret = "s3cr3t-" + "ab12cd34" if "short" in case else "cfg-SECRET-e4b7a1c9d2f0"
    env = {"OPS_SHORT_KEY": secret}
    text = '[gateway]\nid = "gw"\ndistrict = "510107"\ncommunity = "X"\n' + BAD_CONFIGS[case].format(s=secret)
    if "[api]" not in text:
        text += '[api]\nlisten = "127.0.0.1:1"\n'
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(text)
    os.chmod(cfg, 0o600)
    outs = _run_cli(["check", "-c", str(cfg)], env) + _run_cli(["check", "-c", str(cfg), "--json"], env)
    outs += _run_cli(["run", "-c", str(cfg)], env, timeout=30)
    assert outs.count(b"exit 0") == 0, outs.decode(errors="replace")
    assert secret.encode() not in outs, outs.decode(errors="replace")
    assert secret[3:-3].encode() not in outs
    # the error still says where the problem is
    assert b"gateway.toml" in outs


def test_world_readable_config_with_secrets_warns(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nid = "gw"\ndistrict = "510107"\ncommunity = "X"\n'
        f'[api]\nlisten = "127.0.0.1:1"\ntoken = "{API_TOKEN}"\n'
    )
    os.chmod(cfg, 0o644)
    out = _run_cli(["check", "-c", str(cfg)], {})
    assert b"readable" in out.lower(), out
    assert not leaks(out)


def test_secrets_in_memory_dump_of_config_are_redacted() -> None:
    """The parsed config's repr (what a careless log line or traceback would show)."""
    from gateway.types import resolve_secret

    s = resolve_secret({"env": "OPS_T"}, {"OPS_T": API_TOKEN})
    assert API_TOKEN not in repr(s) and API_TOKEN not in str(s)
    assert API_TOKEN not in io.StringIO(f"{s!r} {s}").getvalue()
