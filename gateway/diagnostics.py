"""`edge-gateway diagnostics`: a support bundle an installer can send to the vendor.

The bundle (a .tar.gz) holds the configuration with every secret redacted, versions of the
gateway, Python and installed packages, the drivers, the profiles in use, and -- when the
daemon is running -- its health, devices, buffer statistics, a metrics snapshot and its
recent warnings and errors. No secret value is ever written: secret references
(``{ env = ... }``, ``{ credential = ... }``) are kept, literal secrets are replaced.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

SECRET_KEYS = frozenset({"password", "token", "hmac_key", "secret", "key_password", "api_key"})
REDACTED = "<redacted>"


def redact(data: Any) -> Any:
    """Replace secret values by a marker; keep references that are not secrets themselves."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for k, v in data.items():
            if k in SECRET_KEYS:
                if isinstance(v, dict) and set(v) <= {"env", "credential", "file"}:
                    out[k] = v  # a reference, not the secret
                else:
                    out[k] = REDACTED
            else:
                out[k] = redact(v)
        return out
    if isinstance(data, list):
        return [redact(v) for v in data]
    return data


def _fetch(base: str, path: str) -> tuple[bool, Any]:
    try:
        with urllib.request.urlopen(base + path, timeout=5) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unreachable: {exc}"
    try:
        return True, json.loads(body)
    except ValueError:
        return True, body.decode("utf-8", "replace")


def collect(config_path: Path, api: str | None) -> dict[str, bytes]:
    files: dict[str, bytes] = {}

    def put(name: str, data: Any) -> None:
        if isinstance(data, bytes):
            files[name] = data
        elif isinstance(data, str):
            files[name] = data.encode()
        else:
            files[name] = json.dumps(data, indent=2, ensure_ascii=False, default=str).encode()

    import gateway

    versions = {
        "gateway": gateway.__version__,
        "python": sys.version,
        "platform": platform.platform(),
        "packages": sorted(f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()),
        "created": time.time(),
    }
    put("versions.json", versions)
    listen = "127.0.0.1:8470"
    try:
        raw = tomllib.loads(config_path.read_text("utf-8"))
        put("config.redacted.json", redact(raw))
        listen = str(raw.get("api", {}).get("listen", listen))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        put("config.error.txt", f"cannot read {config_path}: {exc}")
    try:
        from gateway.config import ConfigError, load_config

        cfg = load_config(config_path)
        put("check.json", {"ok": True, "devices": len(cfg.devices), "warnings": cfg.warnings,
                           "profiles": {k: p.file for k, p in cfg.profiles.items()}})
    except ConfigError as exc:
        put("check.json", {"ok": False, "errors": [i.to_dict() for i in exc.issues]})
    from gateway.registry import load_drivers

    put("drivers.json", [i.__dict__ for i in load_drivers().infos])
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    base = api.rstrip("/") if api else f"http://{host}:{port}"
    for name, path in (
        ("health.json", "/api/v1/health"),
        ("devices.json", "/api/v1/devices"),
        ("buffer.json", "/api/v1/buffer"),
        ("uplinks.json", "/api/v1/uplinks"),
        ("recent-log.json", "/api/v1/log"),
        ("metrics.txt", "/metrics"),
    ):
        ok, data = _fetch(base, path)
        put(name if ok else name + ".unavailable.txt", data)
    return files


def write_bundle(files: dict[str, bytes], out: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prefix = f"edge-gateway-diagnostics-{stamp}"
    with tarfile.open(out, "w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(data)
            info.mtime = int(time.time())
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    out.chmod(0o600)
    return out


def cmd_diagnostics(args: argparse.Namespace) -> int:
    files = collect(args.config, args.api)
    out = args.output or Path(f"edge-gateway-diagnostics-{time.strftime('%Y%m%d-%H%M%S')}.tar.gz")
    write_bundle(files, out)
    if args.json:
        sys.stdout.write(json.dumps({"bundle": str(out), "files": sorted(files)}) + "\n")
    else:
        print(f"support bundle written to {out} ({len(files)} files)")
    return 0


def register(sub: Any) -> None:
    from gateway.config import DEFAULT_CONFIG

    p = sub.add_parser("diagnostics", help="write a support bundle (secrets redacted)")
    p.add_argument("-c", "--config", type=Path, default=DEFAULT_CONFIG)
    p.add_argument("--api", help="local API base URL (default: from the config)")
    p.add_argument("-o", "--output", type=Path, help="bundle path (.tar.gz)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_diagnostics)
