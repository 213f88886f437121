"""`edge-gateway` command line. Human output uses rich; every command takes ``--json``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import gateway
import gateway.plugin
from gateway.config import DEFAULT_CONFIG, Config, ConfigError, load_config

EX_CONFIG = 78  # sysexits.h: configuration error

class _LazyConsole:
    """A rich Console created on first use, so `edge-gateway run` does not load rich."""

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self._stderr)
        return getattr(self._console, name)


out = _LazyConsole(stderr=False)
err = _LazyConsole(stderr=True)


def Table(*args: Any, **kwargs: Any) -> Any:
    from rich.table import Table as RichTable

    return RichTable(*args, **kwargs)


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c", "--config", type=Path,
        default=Path(os.environ.get("EDGE_GW_CONFIG", str(DEFAULT_CONFIG))),
        help=f"configuration file (default {DEFAULT_CONFIG}, or $EDGE_GW_CONFIG)",
    )


def _json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


# ---------------------------------------------------------------------------- commands
def cmd_version(args: argparse.Namespace) -> int:
    from gateway.plugin import API_VERSION

    data = {
        "version": gateway.__version__,
        "plugin_api": f"{API_VERSION[0]}.{API_VERSION[1]}",
        "python": sys.version.split()[0],
    }
    if args.json:
        _emit_json(data)
    else:
        out.print(f"edge-gateway {data['version']} (plugin API {data['plugin_api']}, Python {data['python']})")
    return 0


def cmd_classes(args: argparse.Namespace) -> int:
    from gateway.classes import device_classes, record_schema

    if args.json_schema:
        _emit_json(record_schema())
        return 0
    classes = device_classes()
    if args.json:
        _emit_json({k: v.to_dict() for k, v in classes.items()})
        return 0
    for name, c in classes.items():
        t = Table(title=f"[bold]{name}[/] - {c.description}", title_justify="left", expand=False)
        for col in ("point", "type", "unit", "kind", "writable", "severity"):
            t.add_column(col)
        for p in c.points.values():
            t.add_row(p.name, p.type, p.unit or "", p.kind, "yes" if p.writable else "", p.severity or "")
        out.print(t)
    return 0


def cmd_drivers(args: argparse.Namespace) -> int:
    from gateway.registry import load_drivers

    reg = load_drivers()
    rows: list[dict[str, Any]] = [
        {
            "name": i.name, "version": i.version, "api_version": i.api_version,
            "protocols": list(i.protocols), "distribution": i.distribution,
            "description": i.description, "error": i.error,
        }
        for i in reg.infos
    ]
    if args.json:
        _emit_json({"drivers": rows})
    else:
        t = Table(title="Installed drivers")
        for col in ("name", "version", "API", "protocols", "package", "status"):
            t.add_column(col)
        for r in rows:
            t.add_row(
                r["name"], r["version"], r["api_version"], ", ".join(r["protocols"]),
                r["distribution"], "[red]" + r["error"] + "[/]" if r["error"] else "ok",
            )
        out.print(t)
    return 1 if any(r["error"] for r in rows) and args.strict else 0


def _print_issues(exc: ConfigError, as_json: bool) -> None:
    if as_json:
        _emit_json({"ok": False, "errors": [i.to_dict() for i in exc.issues]})
        return
    err.print(f"[bold red]{len(exc.issues)} error(s) in the configuration:[/]")
    for i in exc.issues:
        where = f"{i.file}:{i.line}" if i.line else i.file
        err.print(f"  [cyan]{where}[/]: [bold]{i.path or '(top level)'}[/]: {i.message}", highlight=False)


def check_summary(cfg: Config) -> dict[str, Any]:
    by_class = Counter(d.spec.cls for d in cfg.devices.values())
    by_bus = Counter(d.bus for d in cfg.devices.values())
    by_driver = Counter(cfg.buses[d.bus].driver for d in cfg.devices.values())
    privacy: list[dict[str, Any]] = []
    privacy_warnings: list[str] = []
    try:
        from gateway.privacy import PrivacyConfig, PrivacyPolicy

        pol = PrivacyPolicy(cfg.privacy or PrivacyConfig(), community=cfg.model.gateway.community)
        privacy = list(pol.describe())
        privacy_warnings = list(pol.warnings())
    except ImportError:
        pass
    return {
        "ok": True,
        "file": str(cfg.file),
        "gateway": cfg.gw_id,
        "devices": len(cfg.devices),
        "by_class": dict(sorted(by_class.items())),
        "by_bus": dict(sorted(by_bus.items())),
        "by_driver": dict(sorted(by_driver.items())),
        "profiles": len(cfg.profiles),
        "uplinks": [{"name": u.name, "kind": getattr(u, "kind", "?")} for u in cfg.uplinks],
        "privacy": privacy,
        "warnings": [*cfg.warnings, *privacy_warnings],
    }


def cmd_check(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _print_issues(exc, args.json)
        return 1
    s = check_summary(cfg)
    if args.json:
        _emit_json(s)
        return 0
    out.print(f"[green]OK[/] {s['file']}: gateway {s['gateway']}, {s['devices']} devices, {s['profiles']} profiles")
    for title, key in (("class", "by_class"), ("bus", "by_bus"), ("driver", "by_driver")):
        t = Table(title=f"Devices by {title}", title_justify="left")
        t.add_column(title)
        t.add_column("devices", justify="right")
        for k, v in s[key].items():
            t.add_row(k, str(v))
        out.print(t)
    if s["uplinks"]:
        out.print("Uplinks: " + ", ".join(f"{u['name']} ({u['kind']})" for u in s["uplinks"]))
    if s["privacy"]:
        t = Table(title="Effective privacy policy", title_justify="left")
        cols = list(s["privacy"][0].keys())
        for c in cols:
            t.add_column(c)
        for row in s["privacy"]:
            t.add_row(*(str(row.get(c, "")) for c in cols))
        out.print(t)
    for w in s["warnings"]:
        err.print(f"[yellow]warning:[/] {w}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.app import run
    from gateway.supervisor import StartupError

    handler = logging.StreamHandler()
    if args.json:  # one JSON object per log line, for log shippers
        handler.setFormatter(JsonLogFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), handlers=[handler])
    try:
        return run(args.config)
    except ConfigError as exc:
        _print_issues(exc, args.json)
        return EX_CONFIG  # systemd: RestartPreventExitStatus=78, a restart would not help
    except StartupError as exc:
        if args.json:
            _emit_json({"ok": False, "error": str(exc)})
        else:
            err.print(f"[bold red]gateway did not start:[/] {exc}", highlight=False)
        return 1


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _api_base(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    try:
        cfg = load_config(args.config)
        listen = cfg.model.api.listen
    except ConfigError:
        listen = "127.0.0.1:8470"
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def cmd_devices(args: argparse.Namespace) -> int:
    base = _api_base(args)
    try:
        data = _get(f"{base}/api/v1/devices")
        health = _get(f"{base}/api/v1/health") if args.command == "status" else None
    except urllib.error.HTTPError as exc:
        if exc.code == 503 and args.command == "status":
            health = json.loads(exc.read())
            data = _get(f"{base}/api/v1/devices")
        else:
            err.print(f"[red]local API answered {exc.code}[/] at {base}")
            return 1
    except (urllib.error.URLError, OSError) as exc:
        err.print(f"[red]cannot reach the gateway's local API at {base}: {exc}[/] (is it running?)")
        return 1
    if args.json:
        _emit_json({"health": health, **data} if health is not None else data)
        return 0
    if health is not None:
        state = "[green]ready[/]" if health.get("ready") else "[red]not ready[/] " + ", ".join(health.get("reasons", []))
        out.print(f"Gateway: {state}; devices {health.get('devices')}")
        try:
            ups = _get(f"{base}/api/v1/uplinks")["uplinks"]
            for u in ups:
                out.print(f"Uplink {u['name']}: " + ", ".join(f"{k}={v}" for k, v in u.items() if k != "name"))
        except (urllib.error.URLError, OSError, KeyError):
            pass
    t = Table(title="Devices")
    for col in ("id", "class", "profile", "bus", "state", "quality", "last seen", "error"):
        t.add_column(col)
    import time as _t

    for d in data["devices"]:
        seen = f"{_t.time() - d['last_seen']:.0f}s ago" if d.get("last_seen") else "never"
        color = {"online": "green", "offline": "red"}.get(d["state"], "yellow")
        t.add_row(d["id"], d["class"], d["profile"], d["bus"], f"[{color}]{d['state']}[/]", d["quality"], seen, d.get("last_error") or "")
    out.print(t)
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    drv = args.scan_driver
    from gateway.plugin import DriverError

    try:
        rows = asyncio.run(drv.scan(args))
    except NotImplementedError as exc:
        err.print(str(exc))
        return 2
    except DriverError as exc:
        err.print(f"[red]scan failed:[/] {exc}", highlight=False)
        return 1
    rows = [dict(r) for r in rows]
    if args.json:
        _emit_json({"found": rows})
        return 0
    if not rows:
        out.print("nothing found")
        return 0
    t = Table(title=f"{drv.name} scan")
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*(str(r.get(c, "")) for c in cols))
    out.print(t)
    return 0


def _buffer_command(inner: Any) -> Any:
    """Run a `buffer` sub-command; without --db the path comes from the config file."""

    def run(args: argparse.Namespace) -> int:
        if not (getattr(args, "buffer_db_sub", None) or getattr(args, "buffer_db", None)):
            try:
                cfg = load_config(args.config)
            except ConfigError as exc:
                _print_issues(exc, False)
                return 1
            args.buffer_db = str(cfg.resolve_path(cfg.model.buffer.path))
        return int(inner(args))

    return run


def build_parser(with_scan: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edge-gateway",
        description="Community edge gateway: devices -> canonical records -> durable buffer -> city platform",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    s = sub.add_parser("run", help="run the daemon")
    _config_arg(s)
    s.add_argument("--log-level", default=os.environ.get("EDGE_GW_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])
    s.add_argument("--json", action="store_true", help="log one JSON object per line")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("check", help="validate the configuration and profiles; list every error")
    _config_arg(s)
    _json_arg(s)
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("drivers", help="list installed drivers and their plugin API versions")
    _json_arg(s)
    s.add_argument("--strict", action="store_true", help="exit 1 when a driver was refused")
    s.set_defaults(func=cmd_drivers)

    s = sub.add_parser("classes", help="print the device-class catalogue")
    s.add_argument("--json-schema", action="store_true", help="print the canonical record JSON Schema")
    _json_arg(s)
    s.set_defaults(func=cmd_classes)

    for name, helptext in (("devices", "devices and their state (from the local API)"),
                           ("status", "gateway health, uplinks and devices (from the local API)")):
        s = sub.add_parser(name, help=helptext)
        _config_arg(s)
        s.add_argument("--api", help="local API base URL (default: from the config)")
        _json_arg(s)
        s.set_defaults(func=cmd_devices)

    s = sub.add_parser("version", help="print versions")
    _json_arg(s)
    s.set_defaults(func=cmd_version)

    scan = sub.add_parser("scan", help="find devices with a driver's scan")
    scan_sub = scan.add_subparsers(dest="scan_name", metavar="DRIVER")
    try:
        from gateway.registry import load_drivers

        for name, drv in (load_drivers().drivers.items() if with_scan else ()):
            if type(drv).scan is gateway.plugin.Driver.scan:
                continue
            ds = scan_sub.add_parser(name, help=f"scan with the {name} driver")
            drv.add_scan_arguments(ds)
            _json_arg(ds)
            ds.set_defaults(func=cmd_scan, scan_driver=drv)
    except Exception as exc:  # a broken plugin must not break the CLI
        err.print(f"[yellow]warning:[/] drivers unavailable for scan: {exc}")

    try:
        from buffer import cli as buffer_cli

        buffer_cli.register(sub)
        bp = sub.choices["buffer"]
        bp.set_defaults(func=_buffer_command(bp.get_default("func")))
    except ImportError:
        pass
    try:
        from gateway import diagnostics

        diagnostics.register(sub)
    except ImportError:
        pass
    return p


def main(argv: list[str] | None = None) -> int:
    import gateway.plugin  # noqa: F401  (used by build_parser)

    raw = sys.argv[1:] if argv is None else argv
    parser = build_parser(with_scan="scan" in raw[:2])
    args = parser.parse_args(raw)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
