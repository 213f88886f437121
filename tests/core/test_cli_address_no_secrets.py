"""`edge-gateway devices|status -c FILE` find the local API at the configured address even
when a secret in FILE cannot be resolved where the command runs (an operator's shell has no
``$CREDENTIALS_DIRECTORY`` and not the service's environment): reading ``[api] listen``
needs no secrets. A file that gives no usable address is a clear error, not a silent
fall-back to the default port."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.core_daemon import Daemon, free_port

ROOT = Path(__file__).resolve().parents[2]


def _config(tmp: Path, port: int) -> Path:
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f"""
[gateway]
id = "gw-addr"
district = "510107"
community = "Test"

[api]
listen = "127.0.0.1:{port}"
token = {{ env = "ADDR_TEST_API_TOKEN" }}

[buffer]
path = "{tmp / 'buffer.db'}"

[privacy]
hmac_key = {{ env = "ADDR_TEST_PRIVACY_KEY" }}

[[devices]]
id = "smoke-a"
class = "smoke_detector"
profile = "virtual-smoke"
poll = "1s"
"""
    )
    os.chmod(cfg, 0o600)
    return cfg


def _cli(*args: str, env_drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in env_drop and not k.startswith("ADDR_TEST_")}
    env.update({"PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    env.pop("CREDENTIALS_DIRECTORY", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=60, env=env
    )


def test_status_and_devices_use_the_configured_address_without_the_secrets(tmp_path: Path) -> None:
    cfg = _config(tmp_path, free_port())
    d = Daemon(cfg, env={"ADDR_TEST_API_TOKEN": "t-secret", "ADDR_TEST_PRIVACY_KEY": "k" * 32}).start()
    try:
        # the secrets do not resolve in the CLI's environment
        chk = _cli("check", "-c", str(cfg))
        assert chk.returncode != 0 and "ADDR_TEST_API_TOKEN" in (chk.stdout + chk.stderr)
        p = _cli("devices", "-c", str(cfg))
        assert p.returncode == 0, p.stdout + p.stderr
        assert "smoke-a" in p.stdout
        s = _cli("status", "-c", str(cfg), "--json")
        assert s.returncode == 0, s.stdout + s.stderr
        assert '"smoke-a"' in s.stdout and '"status"' in s.stdout
    finally:
        d.stop()


def test_a_file_without_a_usable_address_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "x"\n[api]\nlisten = "nowhere"\n')
    p = _cli("status", "-c", str(bad))
    assert p.returncode == 1
    assert "api.listen" in p.stderr and str(bad) in p.stderr
    notoml = tmp_path / "broken.toml"
    notoml.write_text("[api\nlisten = 1\n")
    p = _cli("devices", "-c", str(notoml))
    assert p.returncode == 1 and str(notoml) in p.stderr and "TOML" in p.stderr
    off = tmp_path / "off.toml"
    off.write_text('[api]\nenabled = false\n')
    p = _cli("status", "-c", str(off))
    assert p.returncode == 1 and "disabled" in p.stderr
