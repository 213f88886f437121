"""Modbus slaves this project did not write, for the conformance suite: modbus-tk's
``TcpServer``/``RtuServer`` and umodbus's TCP and RTU servers, serving one register map
(``SlaveMap``) in threads of the test process, plus a linked pseudo-terminal pair (socat)
for RTU: the slave opens one end with pyserial, the gateway the other.

Every slave serves exactly the blocks of the map: a read or write that touches an address
outside them is answered by the library itself (both answer exception 02, illegal data
address; modbus-tk also for a read that spans two adjacent blocks).
"""

from __future__ import annotations

import socketserver
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tests.support.core_daemon import free_port
from tests.support.sim_child import terminate

TABLES = ("coil", "discrete", "input", "holding")


@dataclass
class SlaveMap:
    """Blocks of existing addresses per unit and table, and their contents (words or 0/1).
    Addresses outside every block are holes."""

    blocks: dict[int, dict[str, list[tuple[int, int]]]] = field(default_factory=dict)
    data: dict[tuple[int, str, int], int] = field(default_factory=dict)

    def block(self, unit: int, table: str, start: int, size: int) -> None:
        self.blocks.setdefault(unit, {}).setdefault(table, []).append((start, size))
        for a in range(start, start + size):
            self.data.setdefault((unit, table, a), 0)

    def put(self, unit: int, table: str, start: int, values: list[int]) -> None:
        for i, v in enumerate(values):
            key = (unit, table, start + i)
            assert key in self.data, f"{key} is not inside a block"
            self.data[key] = int(v)


class Slave(Protocol):
    name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def get(self, unit: int, table: str, address: int) -> int: ...


class PtyPair:
    """Two linked pseudo-terminals (``socat pty,raw,echo=0 pty,raw,echo=0``), as symlinks
    ``a`` and ``b`` in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.a = str(folder / "pty-slave")
        self.b = str(folder / "pty-gateway")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> PtyPair:
        self.proc = subprocess.Popen(
            [
                "socat",
                f"pty,raw,echo=0,link={self.a}",
                f"pty,raw,echo=0,link={self.b}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (Path(self.a).exists() and Path(self.b).exists()):
            if self.proc.poll() is not None:
                raise AssertionError(f"socat exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"socat made no pty pair within {timeout}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc, grace=5)
            self.proc = None


# ---------------------------------------------------------------------------- modbus-tk


class _ModbusTk:
    name = "modbus-tk"

    def __init__(self, smap: SlaveMap) -> None:
        self.smap = smap
        self.server: Any = None

    def _load(self) -> None:
        from modbus_tk import defines

        kinds = {
            "coil": defines.COILS,
            "discrete": defines.DISCRETE_INPUTS,
            "input": defines.ANALOG_INPUTS,
            "holding": defines.HOLDING_REGISTERS,
        }
        for unit, tables in self.smap.blocks.items():
            slave = self.server.add_slave(unit)
            for table, blocks in tables.items():
                for start, size in blocks:
                    name = f"{table}-{start}"
                    slave.add_block(name, kinds[table], start, size)
                    values = [self.smap.data[(unit, table, a)] for a in range(start, start + size)]
                    slave.set_values(name, start, values)

    def get(self, unit: int, table: str, address: int) -> int:
        slave = self.server.get_slave(unit)
        for start, size in self.smap.blocks[unit][table]:
            if start <= address < start + size:
                return int(slave.get_values(f"{table}-{start}", address, 1)[0])
        raise KeyError((unit, table, address))

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


class ModbusTkTcp(_ModbusTk):
    name = "modbus-tk TcpServer"

    def __init__(self, smap: SlaveMap, port: int | None = None) -> None:
        super().__init__(smap)
        self.port = port or free_port()

    def start(self) -> None:
        from modbus_tk import modbus_tcp

        self.server = modbus_tcp.TcpServer(port=self.port, address="127.0.0.1")
        self._load()
        self.server.start()


class ModbusTkRtu(_ModbusTk):
    name = "modbus-tk RtuServer"

    def __init__(self, smap: SlaveMap, pty: str) -> None:
        super().__init__(smap)
        self.pty = pty
        self.serial: Any = None

    def start(self) -> None:
        import serial
        from modbus_tk import modbus_rtu

        self.serial = serial.Serial(self.pty, baudrate=9600, bytesize=8, parity="N", stopbits=1)
        self.server = modbus_rtu.RtuServer(self.serial)
        self._load()
        self.server.start()

    def stop(self) -> None:
        super().stop()
        if self.serial is not None and self.serial.is_open:
            self.serial.close()


# ---------------------------------------------------------------------------- umodbus

_FC_TABLE = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}
_WRITE_TABLE = {5: "coil", 15: "coil", 6: "holding", 16: "holding"}


def _routes(app: Any, smap: SlaveMap, lock: threading.Lock) -> None:
    """umodbus routes: one per unit, table and block, reading and writing ``smap.data``."""
    for unit, tables in smap.blocks.items():
        for table, blocks in tables.items():
            addresses = [a for start, size in blocks for a in range(start, start + size)]
            read_fc = {v: k for k, v in _FC_TABLE.items()}[table]

            def read(slave_id: int, function_code: int, address: int) -> int:
                with lock:
                    return smap.data[(slave_id, _FC_TABLE[function_code], address)]

            app.route(slave_ids=[unit], function_codes=[read_fc], addresses=addresses)(read)

            if table in ("coil", "holding"):
                fcs = [5, 15] if table == "coil" else [6, 16]

                def write(slave_id: int, function_code: int, address: int, value: int) -> None:
                    with lock:
                        smap.data[(slave_id, _WRITE_TABLE[function_code], address)] = int(value)

                app.route(slave_ids=[unit], function_codes=fcs, addresses=addresses)(write)


class _Umodbus:
    name = "umodbus"

    def __init__(self, smap: SlaveMap) -> None:
        self.smap = smap
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def get(self, unit: int, table: str, address: int) -> int:
        with self.lock:
            return self.smap.data[(unit, table, address)]


class _ThreadingTCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class UmodbusTcp(_Umodbus):
    name = "umodbus TCP server"

    def start(self) -> None:
        from umodbus.server.tcp import RequestHandler, get_server

        self.app = get_server(_ThreadingTCPServer, ("127.0.0.1", 0), RequestHandler)
        self.port = int(self.app.server_address[1])
        _routes(self.app, self.smap, self.lock)
        self.thread = threading.Thread(
            target=self.app.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.app.shutdown()
        self.app.server_close()
        if self.thread is not None:
            self.thread.join(5)


class UmodbusRtu(_Umodbus):
    name = "umodbus RTU server"

    def __init__(self, smap: SlaveMap, pty: str) -> None:
        super().__init__(smap)
        self.pty = pty

    def start(self) -> None:
        import serial
        from umodbus.server.serial import get_server
        from umodbus.server.serial.rtu import RTUServer

        self.serial = serial.Serial(self.pty, baudrate=9600, bytesize=8, parity="N", stopbits=1)
        self.app = get_server(RTUServer, self.serial)
        _routes(self.app, self.smap, self.lock)
        self.thread = threading.Thread(
            target=self.app.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.app.shutdown()
        if self.thread is not None:
            self.thread.join(5)
        self.serial.close()
