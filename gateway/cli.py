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


def _sorted_issues(exc: ConfigError) -> list[Any]:
    """The config file's errors first, then each profile file's, each in line order."""
    first_seen: dict[str, int] = {}
    for n, i in enumerate(exc.issues):
        first_seen.setdefault(i.file, n)
    return sorted(exc.issues, key=lambda i: (first_seen[i.file], i.line or 0))


def _print_issues(exc: ConfigError, as_json: bool) -> None:
    issues = _sorted_issues(exc)
    if as_json:
        _emit_json({"ok": False, "count": len(issues), "errors": [i.to_dict() for i in issues]})
        return
    n_cons = sum(len(i.consequences) for i in issues)
    extra = f" (and {n_cons} consequence(s), shown under their cause)" if n_cons else ""
    err.print(f"[bold red]{len(issues)} error(s) in the configuration{extra}:[/]", soft_wrap=True)
    # one line per error (file:line: key path: message) for grep and editors; the terminal wraps
    for i in issues:
        err.print(f"  [cyan]{i.where}[/]: [bold]{i.path or '(top level)'}[/]: {i.message}", highlight=False, soft_wrap=True)
        for c in i.consequences:
            err.print(
                f"      [dim]consequence:[/] [cyan]{c.where}[/]: [bold]{c.path or '(top level)'}[/]: {c.message}",
                highlight=False, soft_wrap=True,
            )


def check_summary(cfg: Config) -> dict[str, Any]:
    by_class = Counter(d.spec.cls for d in cfg.devices.values())
    by_bus = Counter(d.bus for d in cfg.devices.values())
    by_driver = Counter(cfg.buses[d.bus].driver for d in cfg.devices.values())
    implicit = {d.bus for d in cfg.devices.values() if d.section.bus is None}
    buses = [
        {"name": name, "driver": spec.driver, "devices": by_bus.get(name, 0), "implicit": name in implicit}
        for name, spec in sorted(cfg.buses.items())
    ]
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
        "buses": buses,
        "profiles": len(cfg.profiles),
        "uplinks": [{"name": u.name, "kind": getattr(u, "kind", "?")} for u in cfg.uplinks],
        "privacy": privacy,
        "warnings": [*cfg.warnings, *privacy_warnings],
    }


_SUMMARISE_AT = 4  # this many one-device buses of one driver are one line, not table rows


def _bus_lines(buses: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Buses worth a table row, and one-line summaries of the many similar ones: devices with
    a connection of their own, and configured buses that carry one device each."""
    lines: list[str] = []
    own = [b for b in buses if b["implicit"]]
    if own:
        per = Counter(b["driver"] for b in own)
        lines.append(
            (f"{len(own)} devices have their own connection" if len(own) > 1 else "1 device has its own connection")
            + " (no [[buses]] entry): "
            + ", ".join(f"{d} {n}" for d, n in sorted(per.items()))
        )
    rows = [b for b in buses if not b["implicit"]]
    singles = Counter(b["driver"] for b in rows if b["devices"] == 1)
    for drv, n in sorted(singles.items()):
        if n >= _SUMMARISE_AT:
            lines.append(f"{n} {drv} buses with one device each (names in --json)")
    rows = [b for b in rows if not (b["devices"] == 1 and singles[b["driver"]] >= _SUMMARISE_AT)]
    return rows, lines


def _privacy_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rules that differ only in the field, as one row listing the fields."""
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for r in rows:
        key = tuple(str(r.get(k, "")) for k in ("class", "point", "action", "param", "source", "note"))
        g = groups.setdefault(key, {**r, "fields": []})
        g["fields"].append(str(r.get("field", "")))
    return list(groups.values())


def _count_table(title: str, what: str, counts: dict[str, int]) -> Any:
    t = Table(title=title, title_justify="left")
    t.add_column(what, overflow="fold")
    t.add_column("devices", justify="right")
    for k, v in counts.items():
        t.add_row(k, str(v))
    return t


def _render_summary(s: dict[str, Any]) -> None:
    from rich import box

    out.print(f"[green]OK[/] {s['file']}: gateway {s['gateway']}, {s['devices']} devices, {s['profiles']} profiles")
    out.print(_count_table("Devices by class", "class", s["by_class"]))
    rows, lines = _bus_lines(s["buses"])
    if rows:
        t = Table(title="Buses", title_justify="left")
        t.add_column("bus", overflow="fold")
        t.add_column("driver", overflow="fold")
        t.add_column("devices", justify="right")
        for b in rows:
            t.add_row(b["name"], b["driver"], str(b["devices"]))
        out.print(t)
    for line in lines:
        out.print(line, highlight=False, markup=False)
    out.print(_count_table("Devices by driver", "driver", s["by_driver"]))
    if s["uplinks"]:
        out.print("Uplinks: " + ", ".join(f"{u['name']} ({u['kind']})" for u in s["uplinks"]))
    if s["privacy"]:
        t = Table(
            title="Effective privacy policy (every rule: --json)", title_justify="left",
            box=box.SIMPLE_HEAD, expand=True,
        )
        t.add_column("applies to", overflow="fold", max_width=20)
        t.add_column("action", overflow="fold", max_width=18)
        t.add_column("fields", overflow="fold", ratio=1)
        for g in _privacy_groups(s["privacy"]):
            where = g["class"] if g["point"] == "*" else f"{g['class']}\npoint {g['point']}"
            action = g["action"] + (f" {g['param']}" if g["param"] else "")
            if g["source"] != "default":
                action += f" ({g['source']} rule)"
            fields = ", ".join(g["fields"])
            if g["note"]:
                fields += f"\n[yellow]{g['note']}[/]"
            t.add_row(where, action, fields)
        out.print(t)


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
    _render_summary(s)
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


class _NoAddress(Exception):
    """The config file gives no usable local API address (message for the user)."""


def api_listen(path: Path) -> str:
    """``[api] listen`` of the config file, read without resolving anything else: the
    address is not a secret, and an operator's shell usually cannot resolve the service's
    credentials (``$CREDENTIALS_DIRECTORY``, its environment)."""
    import tomllib

    from pydantic import ValidationError

    from gateway.config import ApiSection
    from gateway.errors import issues_from_validation

    try:
        text = path.read_text("utf-8")
    except OSError as exc:
        raise _NoAddress(f"cannot read {path}: {exc.strerror}; give -c FILE or --api URL") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _NoAddress(f"{path} is not valid TOML: {exc}") from None
    api = data.get("api", {})
    if not isinstance(api, dict):
        raise _NoAddress(f"{path}: api: expected a table")
    known = {k: api[k] for k in ("enabled", "listen") if k in api}
    try:
        section = ApiSection.model_validate(known)
    except ValidationError as exc:
        issues = issues_from_validation(exc, str(path), text, ("api",))
        raise _NoAddress("; ".join(f"{i.file}: {i.path}: {i.message}" for i in issues)) from None
    if not section.enabled:
        raise _NoAddress(f"{path}: the local API is disabled ([api] enabled = false)")
    return section.listen


def _api_base(args: argparse.Namespace) -> str:
    if args.api:
        return str(args.api).rstrip("/")
    listen = api_listen(Path(args.config))
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]"):
        host = "127.0.0.1"
    return f"http://{host}:{port}"


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 503:  # /health when not ready: the body is the answer
            return json.loads(exc.read())
        raise


_STATUS_COLOR = {"ok": "green", "degraded": "yellow", "failing": "red"}
_STATE_COLOR = {"online": "green", "offline": "red", "misconfigured": "red"}


def _print_health(health: dict[str, Any], base: str) -> None:
    status = str(health.get("status", "unknown"))
    color = _STATUS_COLOR.get(status, "yellow")
    ready = "ready" if health.get("ready") else "not ready: " + ", ".join(health.get("reasons", []))
    live = "live" if health.get("live") else "event loop lagging"
    out.print(f"Gateway: [bold {color}]{status}[/] ({ready}; {live})", highlight=False, soft_wrap=True)
    for r in health.get("status_reasons", []):
        out.print(f"  - [{color}]{r['code']}[/]: {r['message']}", highlight=False, soft_wrap=True)
    devs = health.get("devices") or {}
    out.print("Devices: " + ", ".join(f"{n} {k}" for k, n in devs.items()), highlight=False, soft_wrap=True)
    try:
        ups = _get(f"{base}/api/v1/uplinks")["uplinks"]
    except (urllib.error.URLError, OSError, KeyError, ValueError):
        return
    for u in ups:
        state = "[green]connected[/]" if u.get("connected") else "[red]disconnected[/]"
        rest = ", ".join(f"{k}={v}" for k, v in u.items() if k not in ("name", "connected"))
        out.print(f"Uplink {u['name']}: {state}; {rest}", highlight=False, soft_wrap=True)


def cmd_devices(args: argparse.Namespace) -> int:
    try:
        base = _api_base(args)
    except _NoAddress as exc:
        err.print(f"[red]no local API address:[/] {exc}", highlight=False, soft_wrap=True)
        return 1
    try:
        data = _get(f"{base}/api/v1/devices")
        health = _get(f"{base}/api/v1/health") if args.command == "status" else None
    except urllib.error.HTTPError as exc:
        err.print(f"[red]local API answered {exc.code}[/] at {base}")
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        err.print(f"[red]cannot reach the gateway's local API at {base}: {exc}[/] (is it running?)")
        return 1
    if args.json:
        _emit_json({"health": health, **data} if health is not None else data)
        return 0
    if health is not None:
        _print_health(health, base)
    t = Table(title="Devices")
    for col in ("id", "class", "profile", "bus", "state", "quality", "last seen", "error"):
        t.add_column(col, overflow="fold")  # narrow terminals wrap, never cut, names
    import time as _t

    failing: list[tuple[str, dict[str, Any]]] = []
    for d in data["devices"]:
        seen = f"{_t.time() - d['last_seen']:.0f}s ago" if d.get("last_seen") else "never"
        color = _STATE_COLOR.get(d["state"], "yellow")
        pes = d.get("point_errors") or []
        failing.extend((d["id"], e) for e in pes)
        error = d.get("last_error") or (f"{len(pes)} point error(s)" if pes else "")
        t.add_row(d["id"], d["class"], d["profile"], d["bus"], f"[{color}]{d['state']}[/]", d["quality"], seen, error)
    out.print(t)
    if failing:
        pt = Table(title="Point errors")
        for col in ("device", "point", "reason", "detail"):
            pt.add_column(col, overflow="fold")
        for dev, e in failing:
            pt.add_row(dev, e["point"], e["reason"], e.get("detail", ""))
        out.print(pt)
    notes = [(d["id"], k, v) for d in data["devices"] for k, v in sorted((d.get("notes") or {}).items())]
    if notes:  # what each driver learned about its devices (Bus.notes)
        nt = Table(title="Notes")
        for col in ("device", "note", "detail"):
            nt.add_column(col, overflow="fold")
        for row in notes:
            nt.add_row(*row)
        out.print(nt)
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    drv = args.scan_driver
    from rich.markup import escape

    from gateway.plugin import DriverError

    try:
        rows = asyncio.run(drv.scan(args))
    except NotImplementedError as exc:
        err.print(str(exc))
        return 2
    except DriverError as exc:
        err.print(f"[red]scan failed:[/] {escape(str(exc))}", highlight=False)
        return 1
    # replies a scan could not make sense of (onvif: WS-Discovery datagrams) are reported,
    # never dropped; nothing found but such replies exits 1
    reports = hasattr(rows, "not_understood")
    unclear = [dict(u) for u in getattr(rows, "not_understood", ())]
    rows = [dict(r) for r in rows]
    code = 1 if unclear and not rows else 0
    if args.json:
        _emit_json({"found": rows, "not_understood": unclear} if reports else {"found": rows})
    for u in unclear:
        n = int(u.get("replies", 1))
        what = f"{n} repl{'y' if n == 1 else 'ies'} not understood from {u['from']}: {_printable(str(u['reason']))}"
        err.print(f"[yellow]warning:[/] {escape(what)}", highlight=False, soft_wrap=True)
        for raw in u.get("raw", ()) if not args.json else ():
            err.print(_printable(raw), markup=False, highlight=False, soft_wrap=True)
    if args.json:
        return code
    if not rows:
        out.print("nothing found")
        return code
    if any(isinstance(v, list) for r in rows for v in r.values()):
        _print_records(rows)  # several values in a field: one block per device, nothing cut
        return code
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


def _printable(text: str) -> str:
    """``text`` with control characters (but newlines and tabs) shown as escapes: a raw
    datagram must not drive the terminal."""
    return "".join(c if c in "\n\t" or c.isprintable() else f"\\x{ord(c):02x}" for c in text)


def _print_records(rows: list[dict[str, Any]]) -> None:
    """Scan rows as blocks of ``key  value`` lines; a list gives one line per item. Lines
    are never cut or elided (the terminal wraps them)."""
    width = max(len(k) for r in rows for k in r)
    for i, r in enumerate(rows):
        if i:
            out.print()
        for k, v in r.items():
            values = [str(x) for x in v] if isinstance(v, list) else ["-" if v is None or v == "" else str(v)]
            for j, line in enumerate(values or ["-"]):
                out.print(f"{k if j == 0 else '':<{width}}  {line}", markup=False, highlight=False, soft_wrap=True)


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
