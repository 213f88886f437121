"""``edge-gateway buffer ...``: inspect and maintain the buffer file.

``register(subparsers)`` adds the ``buffer`` command; the handler is stored as the ``func``
default and returns the process exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from gateway.record import LANES

from . import inspect as ins


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "buffer", help="inspect the store-and-forward buffer",
        description="Inspect and maintain the SQLite store-and-forward buffer.",
    )
    p.add_argument("--db", dest="buffer_db", metavar="PATH", help="buffer database file")
    sub = p.add_subparsers(dest="buffer_cmd", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--db", dest="buffer_db_sub", metavar="PATH", help="buffer database file")
        sp.add_argument(
            "-c", "--config", type=Path,
            default=Path(os.environ.get("EDGE_GW_CONFIG", "/etc/edge-gateway/gateway.toml")),
            help="gateway config whose [buffer] path is used when --db is not given",
        )
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    s = sub.add_parser("stats", help="records and bytes by lane, per-uplink backlog")
    common(s)
    s = sub.add_parser("peek", help="show stored records, newest first, of every lane or one")
    common(s)
    s.add_argument("--lane", choices=LANES, default=None, help="only this lane (default: all lanes)")
    s.add_argument("--limit", type=int, default=20, help="at most this many records (default 20)")
    s.add_argument("--oldest", action="store_true", help="oldest first (what the uplinks send next)")
    s = sub.add_parser("export", help="stored records after a seq, as JSON lines")
    common(s)
    s.add_argument("--after-seq", type=int, default=0)
    s = sub.add_parser("vacuum", help="checkpoint the WAL and compact the file")
    common(s)
    p.set_defaults(func=run)


def _path(args: argparse.Namespace) -> str | None:
    return getattr(args, "buffer_db_sub", None) or getattr(args, "buffer_db", None)


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    path = _path(args)
    if not path:
        print("edge-gateway buffer: no database path (use --db PATH)", file=sys.stderr)
        return 2
    try:
        return _run(args, path, out)
    except ins.InspectError as exc:
        print(f"edge-gateway buffer: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace, path: str, out: TextIO) -> int:
    cmd = args.buffer_cmd
    as_json = bool(getattr(args, "json", False))
    if cmd == "vacuum":
        res = ins.vacuum(path)
        if as_json:
            out.write(json.dumps(res) + "\n")
        else:
            out.write(f"{path}: {res['before_bytes']:,} -> {res['after_bytes']:,} bytes\n")
        return 0
    conn = ins.open_ro(path)
    try:
        if cmd == "stats":
            st = ins.stats(conn, path)
            if as_json:
                out.write(json.dumps(st, indent=1) + "\n")
            else:
                _print_stats(st, out)
        elif cmd == "peek":
            recs = ins.peek(conn, args.lane, args.limit, newest_first=not args.oldest)
            if as_json:
                out.write(json.dumps([r.to_dict() for r in recs], ensure_ascii=False) + "\n")
            else:
                _print_records(recs, args.lane, args.oldest, out)
        elif cmd == "export":
            for rec in ins.export(conn, args.after_seq):
                out.write(rec.to_json() + "\n")
    finally:
        conn.close()
    return 0


def _console(out: TextIO) -> Any:
    from rich.console import Console

    return Console(file=out, width=120)


def _print_stats(st: dict[str, Any], out: TextIO) -> None:
    from rich.table import Table

    con = _console(out)
    con.print(f"buffer [bold]{st['path']}[/] gw={st['gw']} last seq {st['last_seq']:,}; "
              f"file {st['file_bytes']:,} bytes (used {st['used_bytes']:,}, free {st['free_bytes']:,})")
    t = Table(title="stored records by lane")
    for c in ("lane", "records", "bytes"):
        t.add_column(c, justify="right" if c != "lane" else "left")
    for lane, v in st["lanes"].items():
        t.add_row(lane, f"{v['records']:,}", f"{v['bytes']:,}")
    con.print(t)
    t = Table(title="per uplink (not yet acknowledged)")
    for c in ("uplink", *LANES, "oldest pending age"):
        t.add_column(c)
    for name, u in st["uplinks"].items():
        age = u["oldest_pending_age"]
        t.add_row(name, *(f"{u['unacknowledged'][ln]:,}" for ln in LANES),
                  "-" if age is None else f"{age:,.1f} s")
    con.print(t)
    if st["dead_letters"] or st["evictions"]:
        t = Table(title="dead letters and evictions")
        for c in ("what", "lane/uplink", "reason", "records"):
            t.add_column(c)
        for d in st["dead_letters"]:
            t.add_row("dead letter", d["uplink"], d["reason"], f"{d['records']:,}")
        for lane, by in st["evictions"].items():
            for reason, n in by.items():
                t.add_row("evicted", lane, reason, f"{n:,}")
        con.print(t)


def _print_records(recs: list[Any], lane: str | None, oldest: bool, out: TextIO) -> None:
    from rich.table import Table

    which = "oldest" if oldest else "newest"
    t = Table(title=f"{which} {len(recs)} record(s) of " + (f"lane {lane}" if lane else "all lanes"))
    for c in ("seq", "lane", "ts", "dev", "cls", "pt", "kind", "v", "u", "q"):
        t.add_column(c)
    for r in recs:
        t.add_row(str(r.seq), r.lane, f"{r.ts:.3f}", r.dev, r.cls, r.pt, r.kind,
                  repr(r.v), r.u or "", r.q)
    _console(out).print(t)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m buffer.cli buffer stats --db PATH``)."""
    ap = argparse.ArgumentParser(prog="edge-gateway")
    register(ap.add_subparsers(dest="command", required=True))
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
