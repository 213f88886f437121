"""`hwsim`: run the hardware simulators.

Each simulator family lives in its own sub-package with a ``cli`` module exposing
``register(subparsers)``; the sub-command then calls its handler through ``func``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Sub-packages with a `cli.register(subparsers)`, in help order.
FAMILIES = ("modbus", "serial", "onvif", "platform", "proxy", "scenario")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwsim", description="Hardware simulators for the community edge gateway"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for family in FAMILIES:
        try:
            module = importlib.import_module(f"hwsim.{family}.cli")
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith(f"hwsim.{family}"):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
