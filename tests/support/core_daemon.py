"""Start the real daemon (`edge-gateway run`) as a child process for integration tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.waiting import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    """``edge-gateway run -c CONFIG`` in a child process, with its local API on a free port."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.config = config
        self.env = {**os.environ, **(env or {})}
        self.log = log or config.with_suffix(".log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = ""

    def start(self, wait_ready: float = 30.0) -> Daemon:
        import tomllib

        listen = tomllib.loads(self.config.read_text()).get("api", {}).get("listen")
        assert listen, "the config must set [api] listen"
        self.base = f"http://{listen}"
        self._logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "run", "-c", str(self.config)],
            stdout=self._logf, stderr=subprocess.STDOUT, env=self.env,
        )
        if wait_ready:
            self.wait_ready(wait_ready)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if self.get("/api/v1/health").get("ready"):
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def get(self, path: str) -> Any:
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 503:
                return json.loads(exc.read())
            raise

    def raw(self, path: str) -> tuple[int, bytes, str]:
        with urllib.request.urlopen(self.base + path, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, Any]:
        req = urllib.request.Request(
            self.base + path, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=20) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._logf.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._logf.close()

    def wait_for(self, predicate: Any, timeout: float, what: str) -> Any:
        """``tests.support.waiting.wait_for`` with this daemon's log in the failure."""
        return wait_for(predicate, timeout, what, step=0.2, log=self.log_text)


def config_head(
    tmp: Path, *, api_port: int, gw_id: str = "test-gw", community: str = "Test",
    profile_dirs: bool = False, token_env: str | None = "EDGE_GW_API_TOKEN", budget: str | None = None,
) -> str:
    """The [gateway], [api], [metrics] and [buffer] tables of a test daemon's config (buffer
    in ``tmp``; ``profile_dirs`` adds the site profile folder ``profiles``)."""
    dirs = 'profile_dirs = ["profiles"]\n' if profile_dirs else ""
    token = f'token = {{ env = "{token_env}" }}\n' if token_env else ""
    size = f'budget = "{budget}"\n' if budget else ""
    return (
        f'[gateway]\nid = "{gw_id}"\ndistrict = "510107"\ncommunity = "{community}"\n{dirs}\n'
        f'[api]\nlisten = "127.0.0.1:{api_port}"\n{token}\n'
        "[metrics]\nenabled = true\n\n"
        f'[buffer]\npath = "{tmp / "buffer.db"}"\n{size}\n'
    )


def example_config(tmp: Path, *, port: int | None = None, extra: str = "", token: bool = True) -> Path:
    """The shipped example config, with a temp buffer and a free API port."""
    root = Path(__file__).resolve().parents[2]
    text = (root / "gateway" / "examples" / "gateway.toml").read_text()
    port = port or free_port()
    text = text.replace('listen = "127.0.0.1:8470"', f'listen = "127.0.0.1:{port}"')
    if token:
        text = text.replace("# token = { env = \"EDGE_GW_API_TOKEN\" }", "token = { env = \"EDGE_GW_API_TOKEN\" }")
    text = text.replace('path = "buffer.db"', f'path = "{tmp / "buffer.db"}"')
    cfg = tmp / "gateway.toml"
    cfg.write_text(text + extra)
    os.chmod(cfg, 0o600)
    return cfg
