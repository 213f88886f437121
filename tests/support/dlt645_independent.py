"""A DL/T 645-2007 meter this project did not write, for the conformance suite: the meter
side (``MeterServerService``) of the PyPI package ``dlt645`` (Apache-2.0), in a child process
so that the library (and its loguru set-up) never enters the test process.

    with IndependentMeter(port=pty.a, address="000012345678",
                          values={"00010000": 1234.56, "02010100": 220.9}) as meter:
        meter.requests()                 # every request frame the library decoded
        meter.set_values({"02010100": 231.0})

``values`` maps a printed DI (DI3..DI0) to what the library's data item holds: a number for
energies (DI3 = 00) and variables (02), a digit string for parameters (04), e.g.
``"04000503": "0010"`` (run status word 3 = 0x0010).

Two things the child does around the library, both on its own output, never inside it:

* the address is handed to the library as the six wire bytes (A0 first; ``library_address``
  gives it the digits instead, to show the difference). Its
  ``set_address("000012345678")`` would put the digits on the wire in the order written
  (``00 00 12 34 56 78``), not low byte first as DL/T 645-2007 section 2 requires (nameplate
  ``123456789012`` -> ``12 90 78 56 34 12``); its own client does the same, so the two agree
  with each other but not with a meter.
* ``reply_fe`` (0..4) replaces the four ``FE`` bytes the library always puts before a reply
  (real meters send 0-4, some none).

The child prints one JSON line when it is up: ``{"pid", "tcp_port", "control_port"}``; its
control endpoint answers ``GET /`` (decoded requests, the library's clock) and
``POST /values``.

Run as ``python -m tests.support.dlt645_independent --port PTY | --tcp 127.0.0.1:0
--address DIGITS [--values JSON] [--reply-fe N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.sim_child import ReadyLineChild

LIBRARY = "dlt645"


def wire_address(digits: str) -> bytes:
    """12 nameplate digits to the address field, low byte first (DL/T 645-2007 section 2)."""
    assert len(digits) == 12 and digits.isdigit(), digits
    return bytes(int(digits[i : i + 2], 16) for i in range(10, -1, -2))


class IndependentMeter(ReadyLineChild):
    """The library's meter on ``port`` (a pseudo-terminal) or, with ``tcp=True``, on a TCP
    listener of its own (a serial-server stand-in; ``tcp_port`` 0 = a free one)."""

    def __init__(self, *, address: str, values: dict[str, Any] | None = None,
                 port: str | None = None, tcp: bool = False, tcp_port: int = 0, reply_fe: int = 4,
                 library_address: bool = False, log: Path | None = None) -> None:
        assert (port is None) == tcp, "either a serial port or tcp"
        argv = [sys.executable, "-m", "tests.support.dlt645_independent", "--address", address,
                "--values", json.dumps(values or {}), "--reply-fe", str(reply_fe)]
        argv += ["--tcp", f"127.0.0.1:{tcp_port}"] if tcp else ["--port", str(port)]
        if library_address:
            argv.append("--library-address")
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)}
        super().__init__(argv, env=env, log=log or Path(os.devnull))

    @property
    def tcp_port(self) -> int:
        port = self.info.get("tcp_port")
        assert port, "the meter has no TCP listener"
        return int(port)

    def _call(self, path: str, body: Any = None) -> Any:
        url = f"http://127.0.0.1:{self.info['control_port']}{path}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("/")
        return result

    def requests(self) -> list[dict[str, Any]]:
        """Decoded requests: ``c`` control code, ``addr``/``data`` hex (data after -0x33,
        as the library decoded it), ``fe`` wake-up bytes the library saw before the frame,
        ``reply`` hex of what it sent back (``None``: no reply)."""
        return list(self.state()["requests"])

    def set_values(self, values: dict[str, Any]) -> None:
        result = self._call("/values", values)
        assert result.get("ok"), result


# ---------------------------------------------------------------------------- the child


def _main(argv: list[str]) -> int:  # pragma: no cover - runs in the child process
    ap = argparse.ArgumentParser(prog="dlt645_independent")
    ap.add_argument("--port")
    ap.add_argument("--tcp")
    ap.add_argument("--address", required=True)
    ap.add_argument("--values", default="{}")
    ap.add_argument("--reply-fe", type=int, default=4)
    ap.add_argument("--library-address", action="store_true",
                    help="give the library the digits (its own order), not the wire bytes")
    args = ap.parse_args(argv)

    from dlt645 import MeterServerService  # the library stays in this process

    lock = threading.Lock()
    log: list[dict[str, Any]] = []
    fe = args.reply_fe
    assert 0 <= fe <= 4

    class Meter(MeterServerService):  # type: ignore[misc]
        def handle_request(self, frame: Any) -> Any:
            reply = super().handle_request(frame)
            if reply is not None:
                raw = bytes(reply)
                reply = b"\xfe" * fe + raw[len(raw) - len(raw.lstrip(b"\xfe")) :]
            with lock:
                log.append({
                    "c": frame.ctrl_code, "addr": bytes(frame.addr).hex(),
                    "data": bytes(frame.data).hex(), "fe": len(frame.preamble),
                    "reply": None if reply is None else bytes(reply).hex(),
                })
            return reply

    if args.tcp:
        host, _, port = args.tcp.rpartition(":")
        meter = Meter.new_tcp_server(host, int(port), 5.0)
    else:
        meter = Meter.new_rtu_server(args.port, 8, 1, 9600, "N", 1.0)
    meter.set_address(args.address if args.library_address else wire_address(args.address))

    def put(values: dict[str, Any]) -> bool:
        ok = True
        for text, value in values.items():
            di = int(text, 16)
            setter = {0x00: meter.set_00, 0x02: meter.set_02, 0x04: meter.set_04}[di >> 24]
            with lock:
                ok = bool(setter(di, value)) and ok
        return ok

    if not put(json.loads(args.values)):
        print("a value was refused by the library", file=sys.stderr)
        return 2
    if not meter.start():
        print("the library's server did not start", file=sys.stderr)
        return 2

    class Control(BaseHTTPRequestHandler):
        def log_message(self, *a: Any) -> None:
            pass

        def _send(self, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            with lock:
                when = meter.time
                self._send({"requests": list(log), "address": bytes(meter.address).hex(),
                            "time": None if when is None else when.isoformat()})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            self._send({"ok": put(body)})

    control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    threading.Thread(target=control.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(json.dumps({
        "pid": os.getpid(),
        "tcp_port": meter.server.port if args.tcp else None,
        "control_port": control.server_address[1],
    }), flush=True)
    stop.wait()
    control.shutdown()
    meter.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_main(sys.argv[1:]))
