"""``hwsim run --scenario FILE`` and ``hwsim demo``.

``run`` starts every simulator a scenario lists (as child processes, on loopback and
pseudo-terminals), writes the matching gateway config, prints one JSON line describing what
it started, injects the scenario's activity and stops everything on SIGTERM/SIGINT.

``demo`` runs the whole chain: mosquitto, the city-platform simulator, a fault proxy, the
scenario, and the gateway with an MQTT uplink through the proxy; shows a live view; ends
with the platform's verdict (exit 0 only when no record is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any


def _names(text: str) -> set[str]:
    return {t.strip() for t in text.split(",") if t.strip()}


def _scenario_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--virtual", type=_names, action="append", default=[], metavar="KIND,...",
                   help="run these simulator kinds (modbus, dlt645, cjt188, framed, onvif) or groups "
                        "on the gateway's virtual driver instead")
    p.add_argument("--buildings", type=int, default=None, help="override the number of buildings")
    p.add_argument("--no-activity", action="store_true", help="do not inject the scenario's activity")
    p.add_argument("--seed", type=int, default=None, help="activity seed (default: the scenario's)")


def register(subparsers: Any) -> None:
    run = subparsers.add_parser(
        "run", help="start every simulator of a scenario and write the gateway config",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--scenario", required=True,
                     help="scenario file, or the name of a bundled one (e.g. community)")
    run.add_argument("--gateway-config", type=Path, required=True, help="where to write the gateway config")
    run.add_argument("--workdir", type=Path, default=None,
                     help="simulator files and logs (default: next to the gateway config)")
    run.add_argument("--api", default="127.0.0.1:8470", help="gateway local API listen address")
    run.add_argument("--buffer", default=None, help="gateway buffer path (default: WORKDIR/buffer.db)")
    run.add_argument("--mqtt", default=None, metavar="HOST:PORT", help="add an MQTT uplink to this broker")
    run.add_argument("--topic-prefix", default="city")
    _scenario_args(run)
    run.set_defaults(func=_cmd_run)

    demo = subparsers.add_parser(
        "demo", help="the whole chain with a live view: scenario, gateway, broker, platform",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_argument("--scenario", default="community", help="scenario file or name (default community)")
    demo.add_argument("--duration", type=float, default=90.0, help="seconds of live data (default 90)")
    demo.add_argument("--outage", type=float, default=0.0, help="cut the uplink this many seconds mid-demo")
    demo.add_argument("--drain-timeout", type=float, default=120.0,
                      help="most seconds to wait for the backlog to drain at the end")
    demo.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp folder)")
    demo.add_argument("--no-live", action="store_true", help="plain periodic lines instead of the live view")
    demo.add_argument("--interval", type=float, default=None, help="seconds between plain lines (default 5)")
    demo.add_argument("--json", action="store_true", help="print the verdict as one JSON line")
    _scenario_args(demo)
    demo.set_defaults(func=_cmd_demo)


def _virtual(args: argparse.Namespace) -> set[str]:
    out: set[str] = set()
    for part in args.virtual:
        out |= part
    return out


def _cmd_run(args: argparse.Namespace) -> int:
    from hwsim.scenario.model import GatewayOptions, ScenarioError, load_scenario
    from hwsim.scenario.runner import ScenarioRunner, StartError, find_scenario

    try:
        scenario = load_scenario(find_scenario(args.scenario))
    except (ScenarioError, FileNotFoundError) as exc:
        print(f"hwsim run: {exc}", file=sys.stderr)
        return 2
    out = args.gateway_config.resolve()
    workdir = (args.workdir or out.parent).resolve()
    opts = GatewayOptions(
        api_listen=args.api,
        buffer_path=args.buffer or str(workdir / "buffer.db"),
        snapshots_dir=str(workdir / "snapshots"),
        mqtt=args.mqtt,
        topic_prefix=args.topic_prefix,
    )

    async def main() -> int:
        try:
            runner = ScenarioRunner(
                scenario, workdir, opts, gateway_config=out, virtual=_virtual(args),
                buildings=args.buildings, activity=not args.no_activity, seed=args.seed)
        except ScenarioError as exc:
            print(f"hwsim run: {exc}", file=sys.stderr)
            return 2
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            info = await runner.start()
        except StartError as exc:
            print(f"hwsim run: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(info), flush=True)
        rc = 0
        try:
            while not stop.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
                dead = runner.dead_children()
                if dead:
                    print(f"hwsim run: simulator(s) exited: {', '.join(dead)}", file=sys.stderr)
                    rc = 1
                    break
        finally:
            await runner.stop()
        return rc

    return asyncio.run(main())


def _cmd_demo(args: argparse.Namespace) -> int:
    from hwsim.scenario.demo import DemoOptions, run_demo

    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="hwsim-demo-") as tmp:
            return run_demo(DemoOptions.from_args(args, Path(tmp), _virtual(args)))
    args.workdir.mkdir(parents=True, exist_ok=True)
    return run_demo(DemoOptions.from_args(args, args.workdir.resolve(), _virtual(args)))
