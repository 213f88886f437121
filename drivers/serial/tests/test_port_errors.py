"""A serial port that cannot be opened: the error names the port, what it refused and the
fix — for ``scan serial``, ``scan modbus --serial`` and a bus of the daemon — never a raw
``termios.error``.

Pseudo-terminals cannot do parity. ``hwsim ... --line "2400 8N1"`` leaves the pty set up as
a port last opened at 2400 8N1; Linux then refuses (EINVAL) a request whose only change is
parity E, as on a reopened pty or a USB adapter that refuses a setting.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from gateway import serialport
from tests.support.core_daemon import Daemon, free_port
from tests.support.serial_sim import SimProcess

METER = "000012345678"


def _run(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "gateway.cli", *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"})
    return proc.returncode, proc.stdout, proc.stderr


def _kernel_refuses_parity_on_a_preset_pty() -> bool:
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        serial.Serial(path, 2400, parity="N", timeout=0).close()
        try:
            serial.Serial(path, 2400, parity="E", timeout=0).close()
        except termios.error:
            return True
        return False
    finally:
        os.close(master)
        os.close(slave)


needs_refusing_pty = pytest.mark.skipif(
    not _kernel_refuses_parity_on_a_preset_pty(),
    reason="this kernel silently drops parity on a pty instead of refusing it",
)


@pytest.fixture
def refusing_line() -> Iterator[SimProcess]:
    with SimProcess("dlt645", devices=[METER], control=False, line="2400 8N1") as sim:
        yield sim


@needs_refusing_pty
def test_scan_serial_names_the_refused_parity_and_the_flag(refusing_line: SimProcess) -> None:
    code, out, err = _run("scan", "serial", "--port", refusing_line.pty, "--bauds", "2400", "--timeout", "0.5")
    text = out + err
    assert code == 1, text
    assert "Traceback" not in text and "termios.error" not in text.split("(")[0]
    assert refusing_line.pty in text
    assert "refused parity E" in text
    assert "--parity N" in text
    # the port does open with the suggested setting, and the meter is found
    code, out, err = _run("scan", "serial", "--port", refusing_line.pty, "--bauds", "2400", "--parity", "N",
                          "--timeout", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["found"][0]["address"] == METER


@needs_refusing_pty
def test_scan_modbus_on_a_refusing_port_names_the_setting() -> None:
    master, slave = os.openpty()
    try:
        path = os.ttyname(slave)
        serial.Serial(path, 9600, parity="N", timeout=0).close()
        code, out, err = _run("scan", "modbus", "--serial", path, "--baud", "9600", "--parity", "E",
                              "--units", "1", "--timeout", "0.2")
    finally:
        os.close(master)
        os.close(slave)
    text = out + err
    assert code != 0, text
    assert "Traceback" not in text
    assert path in text and "refused parity E" in text and "--parity N" in text


def _daemon_config(tmp: Path, pty: str) -> Path:
    cfg = tmp / "gateway.toml"
    cfg.write_text(f"""
[gateway]
id = "port-err-gw"
district = "510107"
community = "Serial"

[api]
listen = "127.0.0.1:{free_port()}"

[buffer]
path = "{tmp / 'buffer.db'}"

[privacy]
hmac_key = "port-errors-community-key-0123456789"

[[buses]]
name = "meters"
driver = "serial"
port = "{pty}"
baud = 2400
parity = "E"

[[devices]]
id = "e1"
class = "electricity_meter"
profile = "dlt645-ddsu-1p"
bus = "meters"
address = {{ addr = "{METER}" }}
poll = "2s"
""")
    os.chmod(cfg, 0o600)
    return cfg


@needs_refusing_pty
def test_daemon_bus_that_refuses_parity_logs_the_setting_and_counts_the_reason(
    tmp_path: Path, refusing_line: SimProcess
) -> None:
    d = Daemon(_daemon_config(tmp_path, refusing_line.pty))
    d.start()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and "refused parity E" not in d.log_text():
            time.sleep(0.1)
        log = d.log_text()
        assert "bus meters" in log and "refused parity E" in log, log
        assert "set parity = 'N' on the bus" in log, log
        assert "Traceback" not in log
        _, body, _ = d.raw("/metrics")
        m = re.search(rb'edge_gw_bus_open_failures_total\{bus="meters",reason="setting_refused"\} (\d+)', body)
        assert m and int(m.group(1)) >= 1, body.decode()[:2000]
    finally:
        assert d.stop() == 0, d.log_text()


# ---------------------------------------------------------------- explain(), unit level


def _settings(port: str, **kw: object) -> serialport.LineSettings:
    return serialport.LineSettings(port, **kw)  # type: ignore[arg-type]


def test_missing_port_lists_the_ports_there_are() -> None:
    p = serialport.explain(FileNotFoundError(errno.ENOENT, "No such file or directory"),
                           _settings("/dev/ttyUSB-nope"), bus="b3")
    assert p.reason == "port_missing"
    assert p.message.startswith("bus b3: port /dev/ttyUSB-nope does not exist")


def test_permission_names_the_group_of_the_port(tmp_path: Path) -> None:
    dev = tmp_path / "ttyFAKE"
    dev.write_text("")
    os.chmod(dev, 0o660)
    p = serialport.explain(PermissionError(errno.EACCES, "Permission denied"), _settings(str(dev)))
    group = __import__("grp").getgrgid(dev.stat().st_gid).gr_name
    assert p.reason == "permission"
    assert f"group {group!r}" in p.message and f"SupplementaryGroups={group}" in p.message


def test_busy_port_names_the_process_that_holds_it() -> None:
    master, slave = os.openpty()
    path = os.ttyname(slave)
    holder = subprocess.Popen(["sleep", "30"], stdin=slave)
    try:
        os.close(slave)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not serialport.holders(path):
            time.sleep(0.05)
        p = serialport.explain(OSError(errno.EBUSY, "Device or resource busy"), _settings(path))
        assert p.reason == "port_busy"
        assert f"sleep (pid {holder.pid})" in p.message
    finally:
        holder.kill()
        holder.wait()
        os.close(master)


def test_not_a_serial_port(tmp_path: Path) -> None:
    plain = tmp_path / "not-a-tty"
    plain.write_text("")
    try:
        serial.Serial(str(plain), 9600, timeout=0)
    except Exception as exc:  # what pyserial really raises for a regular file
        p = serialport.explain(exc, _settings(str(plain)))
    else:
        pytest.fail("pyserial opened a regular file")
    assert p.reason == "not_a_tty", p


def test_refused_setting_is_found_by_changing_one_at_a_time() -> None:
    tried: list[serialport.LineSettings] = []

    def only_one_stop_bit(s: serialport.LineSettings) -> BaseException | None:
        tried.append(s)
        return None if s.stopbits == 1 else termios.error(errno.EINVAL, "Invalid argument")

    want = _settings("/dev/ttyS9", baud=2400, parity="E", stopbits=2)
    p = serialport.explain(termios.error(errno.EINVAL, "Invalid argument"), want, try_open=only_one_stop_bit)
    assert (p.reason, p.setting, p.value) == ("setting_refused", "stopbits", 2)
    assert "set stopbits = 1 on the bus" in p.message
    # parity first (still refused: stop bits 2 kept), then stop bits alone
    assert [(t.parity, t.stopbits) for t in tried] == [("N", 2), ("E", 1)]
    nothing = serialport.explain(termios.error(errno.EINVAL, "x"), want, try_open=lambda s: ValueError("no"))
    assert nothing.setting is None and "refused the line settings 2400 8E2" in nothing.message
