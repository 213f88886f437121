"""``hwsim dlt645``, ``hwsim cjt188``, ``hwsim framed``: serial meter simulators.

Each sub-command runs one simulated RS-485 line on a pseudo-terminal (and optionally a TCP
port, like a transparent serial server). Devices come from ``--config sim.toml`` (which may
mix protocols on one line) and/or quick ``--device`` options of the sub-command's protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
from typing import Any

from hwsim.serial.bus import SimBus, load_sim, make_device


def _device_arg(protocol: str) -> Any:
    def parse(text: str) -> dict[str, Any]:
        # ADDRESS[:key=value,...] e.g. 000000000001:model=three_phase,fe=2
        address, _, rest = text.partition(":")
        entry: dict[str, Any] = {"protocol": protocol, "address": address}
        quirks: dict[str, Any] = {}
        for part in filter(None, rest.split(",")):
            key, _, val = part.partition("=")
            value: Any = val
            if val.lower() in ("true", "false"):
                value = val.lower() == "true"
            else:
                try:
                    value = float(val) if "." in val else int(val)
                except ValueError:
                    pass
            if key in ("model", "edition", "meter_type", "di_order", "clock"):
                entry[key] = value if key != "meter_type" else str(val)
            else:
                quirks[key] = value
        if quirks:
            entry["quirks"] = quirks
        return entry

    return parse


def register(subparsers: Any) -> None:
    helps = {
        "dlt645": "DL/T 645-2007/1997 electricity meters (ADDRESS:model=single_phase|three_phase,edition=1997)",
        "cjt188": "CJ/T 188-2004 water/heat/gas meters (ADDRESS:meter_type=10|11|20|30,di_order=printed|swapped)",
        "framed": "framed vendor devices (ADDRESS:model=access_panel|alarm_pillar)",
    }
    for proto, text in helps.items():
        p = subparsers.add_parser(proto, help=text, description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", help="sim.toml with [bus] and [[devices]] (protocols may be mixed)")
        p.add_argument("--device", action="append", default=[], type=_device_arg(proto),
                       help="ADDRESS[:key=value,...]; keys are model/edition/meter_type/di_order or quirks "
                            "(fe, delay, slow_first_byte, echo, silent, bad_checksum, wrong_length, junk)")
        p.add_argument("--link", help="create this symlink to the pseudo-terminal")
        p.add_argument("--no-pty", action="store_true", help="do not open a pseudo-terminal")
        p.add_argument("--line", help="preset the pty as last opened with e.g. '2400 8N1': it then "
                                       "refuses parity E/O at that baud, as reopened ptys and some "
                                       "USB adapters do")
        p.add_argument("--tcp", help="also listen on HOST:PORT (serial-server mode)")
        p.add_argument("--control", help="HTTP control endpoint HOST:PORT (GET /, POST /devices/ADDR, "
                                          "POST /devices/ADDR/emit)")
        p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    for key in ("link", "tcp", "control", "line"):
        if getattr(args, key):
            overrides[key] = getattr(args, key)
    if args.no_pty:
        overrides["pty"] = False
    bus: SimBus = load_sim(args.config, **overrides) if args.config else load_sim({"bus": overrides})
    bus.devices.extend(make_device(d) for d in args.device)
    if not bus.devices:
        print("no devices: give --config or --device")
        return 2
    await bus.start()
    print(json.dumps({"pty": bus.path, "link": bus.link, "tcp_port": bus.tcp_port,
                      "control_port": bus.control_port,
                      "devices": [f"{d.protocol}:{d.address}" for d in bus.devices]}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await bus.stop()
    return 0
