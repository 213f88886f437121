"""``hwsim proxy run`` and ``hwsim proxy ctl``."""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request
from typing import Any

from aiohttp import web


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("proxy", help="fault-injecting TCP proxy")
    sub = p.add_subparsers(dest="proxy_command", metavar="ACTION")
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument("--listen", type=_hostport, default=("127.0.0.1", 0), help="HOST:PORT")
    run.add_argument("--target", type=_hostport, required=True, help="HOST:PORT to forward to")
    run.add_argument("--control", type=_hostport, default=("127.0.0.1", 0), help="HTTP control HOST:PORT")
    run.set_defaults(func=_run)
    ctl = sub.add_parser("ctl", help="send a command to a running proxy")
    ctl.add_argument("--control", required=True, help="control URL, e.g. http://127.0.0.1:9001")
    ctl.add_argument("action", choices=["state", "cut", "blackhole", "restore", "latency", "bandwidth"])
    ctl.add_argument("value", nargs="?", type=float, help="ms for latency, bytes/s for bandwidth")
    ctl.set_defaults(func=_ctl)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


def _run(args: argparse.Namespace) -> int:
    from hwsim.proxy.control import make_app
    from hwsim.proxy.proxy import FaultProxy

    async def main() -> None:
        proxy = FaultProxy(*args.target, host=args.listen[0], port=args.listen[1])
        await proxy.start()
        runner = web.AppRunner(make_app(proxy))
        await runner.setup()
        site = web.TCPSite(runner, args.control[0], args.control[1])
        await site.start()
        cport = runner.addresses[0][1]
        print(json.dumps({"listen": f"{proxy.host}:{proxy.port}", "control": f"http://{args.control[0]}:{cport}"}), flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
            await proxy.close()

    asyncio.run(main())
    return 0


def _ctl(args: argparse.Namespace) -> int:
    url = args.control.rstrip("/") + "/" + args.action
    data = None
    if args.action in ("latency", "bandwidth"):
        if args.value is None:
            print(f"{args.action} needs a value")
            return 2
        key = "ms" if args.action == "latency" else "bytes_per_s"
        data = json.dumps({key: args.value}).encode()
    method = "GET" if args.action == "state" else "POST"
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        print(resp.read().decode())
    return 0
