"""``hwsim platform run``: the simulated city platform."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("platform", help="city-platform simulator (MQTT and HTTPS)")
    sub = p.add_subparsers(dest="platform_command", metavar="ACTION")
    run = sub.add_parser("run", help="run the simulator")
    run.add_argument("--db", required=True, help="SQLite file to store what arrives")
    run.add_argument("--mqtt", type=_hostport, help="broker HOST:PORT to subscribe to")
    run.add_argument("--prefix", default="city", help="topic prefix (default: city)")
    run.add_argument("--http", type=_hostport, default=("127.0.0.1", 0), help="HTTP(S) HOST:PORT")
    run.add_argument("--no-http", action="store_true", help="MQTT only")
    run.add_argument("--token", help="bearer token required on the records endpoint")
    run.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    run.add_argument("--tls-key", help="private key of --tls-cert")
    run.add_argument("--client-ca", help="require client certificates signed by this CA")
    run.set_defaults(func=_run)
    p.set_defaults(func=lambda _a: p.print_help() or 2)


def _run(args: argparse.Namespace) -> int:
    from hwsim.platform.server import PlatformSim, run_forever, server_ssl_context

    ctx = None
    if args.tls_cert:
        if not args.tls_key:
            print("--tls-cert needs --tls-key")
            return 2
        ctx = server_ssl_context(args.tls_cert, args.tls_key, args.client_ca)

    async def main() -> None:
        sim = PlatformSim(
            args.db,
            mqtt_host=args.mqtt[0] if args.mqtt else None,
            mqtt_port=args.mqtt[1] if args.mqtt else 1883,
            prefix=args.prefix,
            http_host=args.http[0],
            http_port=args.http[1],
            token=args.token,
            ssl_context=ctx,
            serve_http=not args.no_http,
        )
        await run_forever(sim)

    asyncio.run(main())
    return 0
