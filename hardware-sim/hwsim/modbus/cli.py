"""``hwsim modbus``: run simulated Modbus devices.

    hwsim modbus run SIM.toml --tcp 5020 --rtu-pty --rtu-tcp 5021 --control 8021
    hwsim modbus farm --devices 500 --base-port 20000 --control 8022   # benchmark farm
    hwsim modbus models                                                 # bundled device files

``run`` prints one JSON line with the endpoints (ports, pty path) once it is serving, so a
test or script can start it as a process and read where to connect.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

from hwsim.modbus.model import DEVICES_DIR, SimDevice, load_farm
from hwsim.modbus.server import ModbusSimulator


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "modbus", help="simulated Modbus devices (TCP, RTU on a pty, RTU over TCP)"
    )
    sub = p.add_subparsers(dest="modbus_command", metavar="ACTION")
    run = sub.add_parser("run", help="serve the devices of a simulator file")
    run.add_argument("file", type=Path, help="simulator file ([[devices]] name/model/unit)")
    _endpoint_args(run)
    run.set_defaults(func=_cmd_run)
    farm = sub.add_parser("farm", help="many identical 20-value devices, one TCP port each")
    farm.add_argument("--devices", type=int, default=100)
    farm.add_argument("--base-port", type=int, default=0, help="first port (0: any free ports)")
    farm.add_argument("--model", default="bench-20", help="device file for every device")
    farm.add_argument("--host", default="127.0.0.1")
    farm.add_argument("--control", type=int, default=None, help="control HTTP port")
    farm.add_argument("--uvloop", action="store_true", help="run on uvloop")
    farm.set_defaults(func=_cmd_farm)
    models = sub.add_parser("models", help="list the bundled device files")
    models.set_defaults(func=_cmd_models)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _endpoint_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--tcp", type=int, default=None, help="Modbus TCP port, units by unit id")
    p.add_argument(
        "--per-device",
        type=int,
        default=None,
        metavar="BASE",
        help="one TCP port per device from BASE (0: any)",
    )
    p.add_argument("--rtu-pty", action="store_true", help="an RTU line on a pseudo-terminal")
    p.add_argument("--rtu-tcp", type=int, default=None, help="RTU over TCP port")
    p.add_argument("--control", type=int, default=None, help="control HTTP port (JSON)")


async def serve(sim: ModbusSimulator) -> None:
    await sim.start()
    print(json.dumps(sim.endpoints()), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def _cmd_run(args: argparse.Namespace) -> int:
    devices = load_farm(args.file)
    sim = ModbusSimulator(
        devices,
        host=args.host,
        tcp_port=args.tcp,
        per_device_ports=args.per_device,
        rtu_pty=args.rtu_pty,
        rtu_tcp_port=args.rtu_tcp,
        control_port=args.control,
    )
    asyncio.run(serve(sim))
    return 0


def farm_devices(n: int, model: str) -> list[SimDevice]:
    from hwsim.modbus.model import load_model

    spec, src = load_model(model)
    return [SimDevice(f"bench-{i:04d}", 1, spec, src) for i in range(n)]


def _cmd_farm(args: argparse.Namespace) -> int:
    sim = ModbusSimulator(
        farm_devices(args.devices, args.model),
        host=args.host,
        per_device_ports=args.base_port,
        control_port=args.control,
    )
    if args.uvloop:
        import uvloop

        uvloop.run(serve(sim))
    else:
        asyncio.run(serve(sim))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    for path in sorted(DEVICES_DIR.glob("*.toml")):
        sys.stdout.write(path.stem + "\n")
    return 0
