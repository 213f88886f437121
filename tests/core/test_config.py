from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config
from gateway.types import parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "gateway" / "examples" / "gateway.toml"
CLI = [sys.executable, "-m", "gateway.cli"]

FIVE_MISTAKES = """
[gateway]
id = "gw-test"
district = "510107"
community = "Test"
profile_dirs = ["profiles"]

[[buses]]
name = "lab"
driver = "virtual"

[[devices]]
id = "smoke-1"
class = "smok_detector"          # 1: unknown class
profile = "virtual-smoke"
bus = "lab"

[[devices]]
id = "smoke-2"
class = "smoke_detector"
profile = "virtual-smoke"
bus = "lab"
poll = true                      # 2: wrong type

[[devices]]
id = "smoke-3"
class = "smoke_detector"
profile = "virtual-smoke"
bus = "b9-rs485"                 # 3: missing bus

[[devices]]
id = "smoke-3"                   # 4: duplicate id
class = "smoke_detector"
profile = "virtual-smoke"
bus = "lab"
"""

BAD_PROFILE = """
[profile]
id = "site-smoke"
class = "smoke_detector"
driver = "virtual"
vendor = "Site"
model = "X"

[points.smoke_density]
address = { generator = "constant", value = 1 }
scael = 0.01                     # 5: bad profile key
"""


def write_five(tmp_path: Path) -> Path:
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "site-smoke.toml").write_text(BAD_PROFILE)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(FIVE_MISTAKES)
    return cfg


def test_example_config_checks_ok() -> None:
    proc = subprocess.run([*CLI, "check", "-c", str(EXAMPLE), "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] and data["devices"] >= 15
    assert len(data["by_class"]) == 15


def test_five_mistakes_all_named_with_key_paths(tmp_path: Path) -> None:
    cfg = write_five(tmp_path)
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    issues = {(Path(i.file).name, i.path): i for i in ei.value.issues}
    assert ("gateway.toml", "devices[0].class") in issues
    assert "smok_detector" in issues[("gateway.toml", "devices[0].class")].message
    assert ("gateway.toml", "devices[1].poll") in issues
    assert ("gateway.toml", "devices[2].bus") in issues
    assert "b9-rs485" in issues[("gateway.toml", "devices[2].bus")].message
    assert ("gateway.toml", "devices[3].id") in issues
    assert ("site-smoke.toml", "points.smoke_density.scael") in issues
    # lines point at the offending key
    text = cfg.read_text().splitlines()
    assert "smok_detector" in text[issues[("gateway.toml", "devices[0].class")].line - 1]
    assert "poll" in text[issues[("gateway.toml", "devices[1].poll")].line - 1]
    assert "b9-rs485" in text[issues[("gateway.toml", "devices[2].bus")].line - 1]

    proc = subprocess.run([*CLI, "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    for path in ("devices[0].class", "devices[1].poll", "devices[2].bus", "devices[3].id", "points.smoke_density.scael"):
        assert path in proc.stderr, (path, proc.stderr)


def test_secrets_from_env_and_credentials(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "api-token").write_text("s3cret-from-cred\n")
    cfg = tmp_path / "g.toml"
    cfg.write_text(
        '[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n'
        '[api]\ntoken = { credential = "api-token" }\n'
        '[buffer]\npath = "b.db"\n'
    )
    c = load_config(cfg, environ={"CREDENTIALS_DIRECTORY": str(creds)})
    assert c.model.api.token is not None
    assert c.model.api.token.get_secret_value() == "s3cret-from-cred"
    assert "s3cret" not in repr(c.model)
    cfg.write_text(cfg.read_text().replace('{ credential = "api-token" }', '{ env = "MISSING_TOKEN_VAR" }'))
    with pytest.raises(ConfigError) as ei:
        load_config(cfg, environ={})
    (issue,) = ei.value.issues
    assert issue.path == "api.token" and "MISSING_TOKEN_VAR" in issue.message


def test_world_readable_secret_warns(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('[gateway]\nid = "g"\ndistrict = "510107"\ncommunity = "c"\n[api]\ntoken = "literal-token"\n')
    os.chmod(cfg, 0o644)
    assert any("readable" in w for w in load_config(cfg).warnings)
    os.chmod(cfg, 0o600)
    assert not load_config(cfg).warnings


def test_unknown_sections_and_broken_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('[gateway]\nid = "g"\ndistrict = "5101"\ncommunity = "c"\n[bogus]\nx = 1\n')
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    paths = {i.path for i in ei.value.issues}
    assert {"gateway.district", "bogus"} <= paths
    cfg.write_text("[gateway\n")
    with pytest.raises(ConfigError) as ei:
        load_config(cfg)
    assert "not valid TOML" in str(ei.value)
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")


@pytest.mark.parametrize(("text", "seconds"), [("250ms", 0.25), ("5s", 5), ("2m", 120), ("1h", 3600), (3, 3.0), ("1.5", 1.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["5x", "", "-1s", True, None, -3])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_sizes() -> None:
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("10MB") == 10_000_000
    assert parse_size(512) == 512
    with pytest.raises(ValueError):
        parse_size("lots")
