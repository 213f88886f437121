"""`edge-gateway check` reports every independent error of a site config in one run.

Real files in tmp_path, the real `edge-gateway` console script as a subprocess. An error
that only follows from another one (a device naming a profile whose file is broken, a device
on a bus whose options are wrong) is shown under its cause, not counted as a problem of its own.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config

EDGE_GATEWAY = Path(sys.executable).with_name("edge-gateway")

# Five independent mistakes: one in each of two profile files, one in each of three devices.
SITE_CONFIG = """\
[gateway]
id = "gw-site"
district = "510107"
community = "Site"
profile_dirs = ["profiles"]

[[buses]]
name = "lab"
driver = "virtual"

[[devices]]
id = "smoke-1"
class = "smoke_detector"
profile = "site-smoke"
bus = "lab"
poll = "5 parsecs"                 # mistake 3: not a duration

[[devices]]
id = "gas-1"
class = "gas_detector"
profile = "site-gas"               # its file is broken: a consequence, not a new mistake
bus = "lab"
address = { sed = 7 }              # mistake 4: unknown address key of the virtual driver

[[devices]]
id = "smoke-2"
class = "smoke_detector"
profile = "virtual-smoke"
bus = "lab"
stale_after = 0                    # mistake 5: at least 1
"""

SITE_SMOKE = """\
[profile]
id = "site-smoke"
class = "smoke_detector"
driver = "virtual"
vendor = "Site"
model = "S1"

[points.smoke_density]
address = { generator = "constant", value = 1 }
scael = 0.01                       # mistake 1: unknown key
"""

SITE_GAS = """\
[profile]
id = "site-gas"
class = "gas_detector"
driver = "virtual"
vendor = "Site"
model = "G1                        # mistake 2: the string is not closed

[points.gas_concentration]
address = { generator = "constant", value = 3 }
"""


def write_site(root: Path) -> Path:
    (root / "profiles").mkdir()
    (root / "profiles" / "site-smoke.toml").write_text(SITE_SMOKE)
    (root / "profiles" / "site-gas.toml").write_text(SITE_GAS)
    cfg = root / "gateway.toml"
    cfg.write_text(SITE_CONFIG)
    return cfg


def cli(*args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    assert EDGE_GATEWAY.exists(), f"console script missing: {EDGE_GATEWAY}"
    env = {**os.environ, "COLUMNS": str(columns)}
    env.pop("EDGE_GW_CONFIG", None)
    return subprocess.run([str(EDGE_GATEWAY), *args], capture_output=True, text=True, timeout=60, env=env)


def line_of(path: Path, needle: str) -> int:
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return n
    raise AssertionError(f"{needle!r} not in {path}")


ISSUE_RE = re.compile(r"^  (?P<file>\S+?):(?P<line>\d+): (?P<path>\(top level\)|\S+): (?P<msg>.*)$")
CONSEQUENCE_RE = re.compile(r"^      consequence: (?P<file>\S+?):(?P<line>\d+): (?P<path>\S+): (?P<msg>.*)$")


def test_five_independent_errors_in_one_run(tmp_path: Path) -> None:
    cfg = write_site(tmp_path)
    smoke, gas = tmp_path / "profiles" / "site-smoke.toml", tmp_path / "profiles" / "site-gas.toml"
    expected = {
        (str(smoke), line_of(smoke, "scael"), "points.smoke_density.scael"),
        (str(gas), line_of(gas, 'model = "G1'), "(top level)"),
        (str(cfg), line_of(cfg, "5 parsecs"), "devices[0].poll"),
        (str(cfg), line_of(cfg, "sed = 7"), "devices[1].address.sed"),
        (str(cfg), line_of(cfg, "stale_after"), "devices[2].stale_after"),
    }

    proc = cli("check", "-c", str(cfg))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("5 error(s) in the configuration"), proc.stderr
    found = {(m["file"], int(m["line"]), m["path"]) for m in map(ISSUE_RE.match, lines) if m}
    assert found == expected, proc.stderr
    # the devices naming the broken profiles: shown under the profile's error, not as more problems
    cons = {n: m for n, m in enumerate(map(CONSEQUENCE_RE.match, lines)) if m}
    assert {(c["file"], int(c["line"]), c["path"]) for c in cons.values()} == {
        (str(cfg), line_of(cfg, 'profile = "site-gas"'), "devices[1].profile"),
        (str(cfg), line_of(cfg, 'profile = "site-smoke"'), "devices[0].profile"),
    }, proc.stderr
    assert "no profile with id" not in proc.stderr
    for n, c in cons.items():
        profile = "site-gas" if c["path"] == "devices[1].profile" else "site-smoke"
        assert profile in c["msg"]
        assert ISSUE_RE.match(lines[n - 1])["file"] == str(tmp_path / "profiles" / f"{profile}.toml"), proc.stderr

    data = json.loads(cli("check", "-c", str(cfg), "--json").stdout)
    assert data["ok"] is False and data["count"] == 5
    got = {(e["file"], e["line"], e["path"] or "(top level)") for e in data["errors"]}
    assert got == expected
    with_cons = {e["file"]: [c["path"] for c in e["consequences"]] for e in data["errors"] if e["consequences"]}
    assert with_cons == {str(gas): ["devices[1].profile"], str(smoke): ["devices[0].profile"]}


def issues_of(cfg: Path) -> list[Any]:
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    return ei.value.issues


def test_bus_error_does_not_hide_device_errors_and_is_their_cause(tmp_path: Path) -> None:
    """The README case: `baudrate` on a bus, then `no bus named 'b3-rs485' (buses: b3-rs485)`."""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n\n'
        '[[buses]]\nname = "b3-rs485"\ndriver = "modbus"\nport = "/dev/ttyUSB0"\nbaudrate = 9600\n\n'
        '[[devices]]\nid = "b3-smoke-0201"\nclass = "smoke_detector"\nprofile = "acme-sd300"\n'
        'bus = "b3-rs485"\naddress = { unit = 300 }\n'
    )
    issues = issues_of(cfg)
    assert [i.path for i in issues] == ["buses[0].baudrate", "devices[0].address.unit"], issues
    (bus_issue, unit_issue) = issues
    assert bus_issue.line == line_of(cfg, "baudrate") and unit_issue.line == line_of(cfg, "unit = 300")
    (cons,) = bus_issue.consequences
    assert cons.path == "devices[0].bus" and "b3-rs485" in cons.message
    assert "no bus named" not in str(ConfigError(issues))


def test_device_with_several_mistakes_reports_each(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n\n'
        '[[devices]]\nid = "s1"\nclass = "smoke_detector"\nprofile = "virtual-smoke"\n'
        'poll = true\naddress = { fial = true }\n\n'
        '[[devices]]\nid = "s1"\nclass = "smoke_detector"\nprofile = "virtual-smok"\n'
    )
    paths = [i.path for i in issues_of(cfg)]
    assert sorted(paths) == sorted(
        ["devices[0].poll", "devices[0].address.fial", "devices[1].id", "devices[1].profile"]
    ), paths


def test_profile_header_error_does_not_hide_point_errors(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    prof = tmp_path / "profiles" / "p.toml"
    prof.write_text(
        '[profile]\nid = "site-gas"\nclass = "gas_detector"\ndriver = "virtual"\nvendr = "Site"\nmodel = "G"\n\n'
        '[points.gas_concentration]\naddress = { generator = "chaos" }\n\n'
        '[points.temperature_x]\naddress = { generator = "constant" }\n'
    )
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\nprofile_dirs = ["profiles"]\n\n'
        '[[devices]]\nid = "g1"\nclass = "gas_detector"\nprofile = "site-gas"\n'
    )
    issues = issues_of(cfg)
    paths = sorted(i.path for i in issues)
    assert paths == sorted(
        [
            "profile.vendor", "profile.vendr",
            "points.gas_concentration.address.generator", "points.temperature_x",
        ]
    ), issues
    assert all(i.file == str(prof) and i.line for i in issues)
    # the device naming the profile is a consequence of the profile's first error
    assert [c.path for i in issues for c in i.consequences] == ["devices[0].profile"]


def test_gateway_section_error_does_not_hide_the_rest(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "5101"\ncommunity = "c"\nprofile_dirs = ["nowhere"]\n\n'
        '[[devices]]\nid = "s1"\nclass = "smoke_detektor"\nprofile = "virtual-smoke"\n\n'
        '[[devices]]\nid = "s2"\nclass = "smoke_detector"\nprofile = "site-smoke"\n'
    )
    issues = issues_of(cfg)
    paths = [i.path for i in issues]
    assert sorted(paths) == sorted(["gateway.district", "gateway.profile_dirs[0]", "devices[0].class"]), issues
    (dirs,) = [i for i in issues if i.path == "gateway.profile_dirs[0]"]
    assert dirs.file == str(cfg) and dirs.line == line_of(cfg, "nowhere")
    assert "does not exist" in dirs.message
    # the site profile may be in the missing folder: a consequence, not a second problem
    assert [c.path for c in dirs.consequences] == ["devices[1].profile"]


def test_uplink_entry_errors_do_not_hide_its_other_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n\n'
        '[[uplinks]]\nname = "city platform"\nkind = "mqtt"\nurl = "mqtts://p.example:8883"\n'
        'topic_prefix = "cd"\nqos = 7\n\n'
        '[privacy]\nrules = [{ class = "access_control", field = "attrs.card_no", action = "scramble" }]\n'
    )
    paths = [i.path for i in issues_of(cfg)]
    assert "uplinks[0].name" in paths and any(p.startswith("uplinks[0].qos") for p in paths), paths
    assert any(p.startswith("privacy.rules[0]") for p in paths), paths
