"""`hwsim onvif`: run simulated ONVIF cameras until interrupted.

On start it prints one JSON line to stdout with the ports in use
(``{"discovery_port": ..., "control_port": ..., "cameras": {name: {"port": ..}}}``),
which is what tests and scripts wait for.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path

from hwsim.onvif.camera import PERSONALITIES, CameraConfig, personality_fields
from hwsim.onvif.discovery import VARIANTS
from hwsim.onvif.server import CameraGroup, ConfigError, load_file


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser("onvif", help="simulated ONVIF cameras", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", type=Path, help="simulator file (TOML, see hwsim.onvif.server)")
    p.add_argument("--cameras", type=int, default=0, help="N generic cameras (without --config)")
    p.add_argument("--base-port", type=int, default=0, help="first camera port (0 = free ports)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--username", default="admin")
    p.add_argument("--password", default="admin")
    p.add_argument("--clock-offset", type=float, default=0.0, help="camera clock minus host clock, s")
    p.add_argument("--personality", default="",
                   help="camera personality for the --cameras cameras, comma-separated: "
                   + ", ".join(sorted(PERSONALITIES)) + " (see hwsim.onvif.server)")
    p.add_argument("--discovery-variant", choices=sorted(VARIANTS), default=None,
                   help="shape of the --cameras cameras' WS-Discovery replies (see hwsim.onvif.discovery)")
    p.add_argument("--discovery-port", type=int, default=None,
                   help="WS-Discovery UDP port (default: from the file, else a free port)")
    p.add_argument("--multicast", action="store_true", help="also join 239.255.255.250 (LAN demos)")
    p.add_argument("--control-port", type=int, default=None, help="control endpoint port (default free)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        options: dict[str, object] = {}
        if args.config:
            options, cams = load_file(args.config)
        else:
            try:
                preset = personality_fields(args.personality)
            except ValueError as exc:
                raise ConfigError(f"--personality: {exc}") from None
            cams = [
                CameraConfig(
                    **{
                        **preset,
                        "name": f"cam{i + 1}",
                        "host": args.host,
                        "port": (args.base_port + i) if args.base_port else 0,
                        "username": args.username,
                        "password": args.password,
                        "clock_offset": args.clock_offset,
                        "personality": args.personality,
                        **({"discovery_variant": args.discovery_variant} if args.discovery_variant else {}),
                    }
                )
                for i in range(max(1, args.cameras))
            ]
    except ConfigError as exc:
        print(f"hwsim onvif: {exc}", file=sys.stderr)
        return 2
    discovery = args.discovery_port if args.discovery_port is not None else int(options.get("discovery_port", 0))  # type: ignore[call-overload]
    control = args.control_port if args.control_port is not None else int(options.get("control_port", 0))  # type: ignore[call-overload]
    return asyncio.run(_serve(cams, discovery, control, args.host, args.multicast))


async def _serve(cams: list[CameraConfig], discovery: int, control: int, host: str, multicast: bool) -> int:
    group = CameraGroup(cams, discovery_port=discovery, control_port=control, host=host, multicast=multicast)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with group:
        print(json.dumps(group.describe()), flush=True)
        await stop.wait()
    return 0
