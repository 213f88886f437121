"""``edge-gateway scan modbus``: find answering unit ids and suggest bundled profiles.

A unit counts as present when it answers anything to a one-register read (a Modbus exception
is an answer too). For every present unit the identification value of each bundled profile
with an ``identify`` entry is read; a match suggests that profile.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from drivers.modbus import codec
from drivers.modbus.client import LinkError, ModbusClient
from drivers.modbus.schema import BusOptions, IdentifyCheck
from gateway.plugin import Driver, DriverError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", help="Modbus TCP device or gateway (or serial server)")
    where.add_argument("--serial", metavar="PORT", help="serial device of an RS-485 line (RTU)")
    parser.add_argument("--port", type=int, default=502, help="TCP port (default 502)")
    parser.add_argument(
        "--rtu-over-tcp", action="store_true", help="the host is a serial server speaking raw RTU"
    )
    parser.add_argument("--baud", type=int, default=9600, help="serial baud rate (default 9600)")
    parser.add_argument("--parity", choices=("N", "E", "O"), default="N")
    parser.add_argument("--units", default="1-247", help="unit ids to try, e.g. 1-247 or 1,5,9-12")
    parser.add_argument(
        "--timeout", type=float, default=0.3, help="seconds to wait for each unit (default 0.3)"
    )


def bundled_identities(driver: Driver) -> list[tuple[str, str, str, IdentifyCheck]]:
    """(profile id, vendor, model, identify check) of every bundled profile with one."""
    from gateway.profiles import driver_profile_files, parse_profile

    out: list[tuple[str, str, str, IdentifyCheck]] = []
    for file, text in driver_profile_files([type(driver).__module__]):
        prof, _ = parse_profile(file, text, {driver.name: driver})
        if prof is None or not prof.identify:
            continue
        out.append((prof.id, prof.vendor, prof.model, IdentifyCheck.model_validate(prof.identify)))
    return out


def scan_options(args: argparse.Namespace) -> BusOptions:
    if args.serial:
        return BusOptions(
            transport="rtu",
            port=args.serial,
            baud=args.baud,
            parity=args.parity,
            timeout=args.timeout,
            retries=0,
        )
    return BusOptions(
        transport="rtu_over_tcp" if args.rtu_over_tcp else "tcp",
        host=args.host,
        port=args.port,
        timeout=args.timeout,
        retries=0,
    )


async def _ask(
    client: ModbusClient, unit: int, req: codec.Request, reply_s: float
) -> tuple[str, list[int] | None]:
    """("ok", registers) | (exception reason, None) | ("silent", None) | (failure, None)."""
    try:
        data = await client.execute(unit, req, reply_s)
    except codec.ModbusExceptionResponse as exc:
        return exc.reason, None
    except codec.MalformedFrame as exc:
        return exc.reason, None
    except LinkError as exc:
        if exc.reason in ("connect_failed", "connect_timeout"):
            raise
        return ("silent" if not exc.answered else exc.reason), None
    return "ok", [int(x) for x in data or []]


def identify_matches(check: IdentifyCheck, words: list[int]) -> bool:
    try:
        value = codec.decode_registers(check.spec(), words)
    except codec.CodecError:
        return False
    if isinstance(check.equals, str) or isinstance(value, str):
        return str(value) == str(check.equals)
    return bool(value == check.equals)


async def scan_link(
    client: ModbusClient,
    units: list[int],
    reply_s: float,
    identities: list[tuple[str, str, str, IdentifyCheck]],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for unit in units:
        # Any slave answers a read, if only with an exception: silence means nobody is there.
        status, _ = await _ask(client, unit, codec.read_request("holding", 0, 1), reply_s)
        if status == "silent":
            continue
        matches: list[tuple[str, str, str]] = []
        for pid, vendor, model, check in identities:
            spec = check.spec()
            st, words = await _ask(
                client, unit, codec.read_request(spec.table, spec.offset, spec.count), reply_s
            )
            if st == "ok" and words is not None and identify_matches(check, words):
                matches.append((pid, vendor, model))
        rows.append(
            {
                "unit": unit,
                "answer": status,
                "profile": ", ".join(m[0] for m in matches) or "-",
                "vendor": ", ".join(sorted({m[1] for m in matches})) or "-",
                "model": ", ".join(m[2] for m in matches) or "-",
            }
        )
    return rows


async def run(driver: Driver, args: argparse.Namespace) -> list[Mapping[str, Any]]:
    try:
        units = codec.parse_units(args.units)
    except codec.CodecError as exc:
        raise DriverError(exc.reason, exc.detail) from None
    options = scan_options(args)
    client = ModbusClient("scan", options)
    try:
        return list(
            await scan_link(client, units, float(options.timeout), bundled_identities(driver))
        )
    except LinkError as exc:  # the endpoint itself is not there
        raise DriverError(exc.reason, exc.detail) from None
    finally:
        client.close()
