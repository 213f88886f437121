"""`edge-gateway check` output on an 80-column terminal: nothing cut, every table within 80
columns, many similar buses summarised in one line, and `--json` holding all of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.cells import cell_len

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "gateway" / "examples" / "gateway.toml"
EDGE_GATEWAY = Path(sys.executable).with_name("edge-gateway")


def check(cfg: Path, *extra: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    env.pop("EDGE_GW_CONFIG", None)
    return subprocess.run(
        [str(EDGE_GATEWAY), "check", "-c", str(cfg), *extra], capture_output=True, text=True, timeout=60, env=env
    )


def assert_fits(text: str, width: int = 80) -> None:
    too_wide = [ln for ln in text.splitlines() if cell_len(ln) > width]
    assert not too_wide, "\n".join(too_wide)
    assert "…" not in text, text  # wrapped, never cut


def test_example_config_fits_80_columns_and_shows_every_field() -> None:
    proc = check(EXAMPLE)
    assert proc.returncode == 0, proc.stderr
    assert_fits(proc.stdout)
    assert_fits(proc.stderr)
    data = json.loads(check(EXAMPLE, "--json").stdout)
    # every privacy field name appears whole (it may be followed by a comma, never cut)
    words = set(proc.stdout.replace(",", " ").split())
    for row in data["privacy"]:
        for word in row["field"].split():
            assert word in words, (row["field"], proc.stdout)
        assert row["class"] in words or row["class"] == "*", row
    # 27 devices, each on a connection of its own: one line, not a 27-row table
    assert len(data["buses"]) == 27 and all(b["devices"] == 1 and b["implicit"] for b in data["buses"])
    bus_lines = [ln for ln in proc.stdout.splitlines() if "smoke-01" in ln or "own connection" in ln]
    assert len(bus_lines) == 1 and "27" in bus_lines[0], proc.stdout
    assert sum(data["by_bus"].values()) == 27 and len(data["by_bus"]) == 27


def test_many_one_device_buses_are_one_line(tmp_path: Path) -> None:
    parts = ['[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n']
    parts.append('[[buses]]\nname = "b3-rs485"\ndriver = "modbus"\nport = "/dev/ttyUSB0"\n')
    for n in range(3):
        parts.append(
            f'[[devices]]\nid = "b3-smoke-{n}"\nclass = "smoke_detector"\nprofile = "acme-sd300"\n'
            f'bus = "b3-rs485"\naddress = {{ unit = {n + 1} }}\n'
        )
    for n in range(27):
        parts.append(f'[[buses]]\nname = "dtu-{n:02d}"\ndriver = "modbus"\nhost = "10.0.0.{n + 10}"\n')
        parts.append(
            f'[[devices]]\nid = "lamp-{n:02d}"\nclass = "streetlight"\nprofile = "lumin-lc2"\n'
            f'bus = "dtu-{n:02d}"\n'
        )
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("\n".join(parts))
    proc = check(cfg)
    assert proc.returncode == 0, proc.stderr
    assert_fits(proc.stdout)
    lines = proc.stdout.splitlines()
    assert any("b3-rs485" in ln and "3" in ln for ln in lines), proc.stdout
    summary = [ln for ln in lines if "27" in ln and "modbus" in ln]
    assert len(summary) == 1 and "one device each" in summary[0], proc.stdout
    assert not any("dtu-05" in ln for ln in lines), proc.stdout
    data = json.loads(check(cfg, "--json").stdout)
    assert {b["name"]: b["devices"] for b in data["buses"]} == {
        "b3-rs485": 3, **{f"dtu-{n:02d}": 1 for n in range(27)}
    }
    assert all(b["driver"] == "modbus" and not b["implicit"] for b in data["buses"])


def test_error_report_is_never_cut(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "5101"\ncommunity = "c"\n\n'
        '[[devices]]\nid = "s1"\nclass = "smoke_detektor"\nprofile = "virtual-smoke"\n'
    )
    proc = check(cfg)
    assert proc.returncode == 1
    assert "…" not in proc.stderr
    # the class list in the message is long: wrapped, every class name whole
    assert "water_meter" in proc.stderr.replace("\n", " ")
