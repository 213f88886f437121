"""systemd/install.sh into a temporary root (DESTDIR-style): files, modes, idempotency."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ops_systemd import (
    REPO,
    SYSTEMD_DIR,
    analyze,
    exposure,
    parse_unit,
    require_systemd_tools,
    with_fake_exec,
)

INSTALL = SYSTEMD_DIR / "install.sh"
CHECK_BIN = Path(sys.executable).parent / "edge-gateway"
PREFIX = "/opt/egw-test"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installer tests set file owners: root")


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    require_systemd_tools()
    if not CHECK_BIN.exists():
        pytest.skip(f"{CHECK_BIN} missing: install the project (pip install -e .)")
    if not (REPO / "gateway/examples/gateway.toml").exists():
        pytest.skip("gateway/examples/gateway.toml missing")


def run(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["bash", str(INSTALL), "--destdir", str(root), "--prefix", PREFIX, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def install(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(root, "--no-venv", "--no-start", "--check-bin", str(CHECK_BIN), *extra)


def ids(root: Path, db: str, name: str) -> int:
    for line in (root / "etc" / db).read_text().splitlines():
        f = line.split(":")
        if f[0] == name:
            return int(f[2])
    raise KeyError(name)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """path -> (mode, uid, gid, sha256 or link target) for the whole tree."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        if p.is_symlink():
            digest = os.readlink(p)
        elif p.is_file():
            digest = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            digest = ""
        out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, digest)
    return out


def mode(p: Path) -> tuple[int, int, int]:
    st = p.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid


def test_fresh_install_layout_and_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = install(root)
    assert "edge-gateway check passed" in proc.stdout
    uid, gid = ids(root, "passwd", "edge-gateway"), ids(root, "group", "edge-gateway")
    etc = root / "etc/edge-gateway"
    assert mode(etc) == (0o750, 0, gid)
    assert mode(etc / "credentials") == (0o700, 0, 0)
    assert mode(etc / "gateway.toml") == (0o640, 0, gid)
    assert mode(root / "var/lib/edge-gateway") == (0o750, uid, gid)
    assert mode(root / "var/log/edge-gateway") == (0o750, uid, gid)
    for name in ("privacy-key", "api-token"):
        secret = etc / "credentials" / name
        assert mode(secret) == (0o600, 0, 0)
        value = secret.read_text()
        assert len(value) >= 40 and "\n" not in value
        assert value not in proc.stdout + proc.stderr  # secrets are never printed
    assert (etc / "credentials/privacy-key").read_text() != (
        etc / "credentials/api-token"
    ).read_text()
    # the example config, adapted to the box
    config = (etc / "gateway.toml").read_text()
    example = (REPO / "gateway/examples/gateway.toml").read_text()
    assert config.count("\n") == example.count("\n")  # comments kept
    assert '\nhmac_key = { credential = "privacy-key" }' in config
    assert '\ntoken = { credential = "api-token" }' in config
    assert '\npath = "/var/lib/edge-gateway/buffer.db"' in config
    # the user: system account, no shell, in dialout
    passwd = (root / "etc/passwd").read_text()
    assert f"edge-gateway:x:{uid}:{gid}:" in passwd and "/usr/sbin/nologin" in passwd
    dialout = next(
        ln for ln in (root / "etc/group").read_text().splitlines() if ln.startswith("dialout:")
    )
    assert "edge-gateway" in dialout.split(":")[3].split(",")
    # units, with the prefix substituted, enabled
    units = root / "etc/systemd/system"
    unit = parse_unit((units / "edge-gateway.service").read_text())
    assert unit["Service"]["ExecStart"] == [
        f"{PREFIX}/current/venv/bin/edge-gateway run -c /etc/edge-gateway/gateway.toml"
    ]
    assert "/opt/edge-gateway" not in (units / "edge-gateway.service").read_text()
    wants = units / "multi-user.target.wants/edge-gateway.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edge-gateway.service"
    assert not (units / "multi-user.target.wants/hwsim.service").exists()
    assert (units / "hwsim.service").exists()
    assert (root / "etc/sysusers.d/edge-gateway.conf").exists()
    assert (root / "etc/tmpfiles.d/edge-gateway.conf").exists()
    assert (root / PREFIX.lstrip("/") / "README.md").exists()


def test_installed_units_verify_and_rate(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root)
    staged = tmp_path / "staged"
    staged.mkdir()
    for name in ("edge-gateway.service", "hwsim.service"):
        text = (root / "etc/systemd/system" / name).read_text()
        (staged / name).write_text(with_fake_exec(text, PREFIX, tmp_path))
        proc = analyze("verify", str(staged / name), cwd=staged)
        assert proc.returncode == 0, proc.stderr
        level, report = exposure(staged / name)
        assert level <= 2.0, report


def test_second_run_is_idempotent_and_keeps_site_state(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root)
    etc = root / "etc/edge-gateway"
    before = snapshot(root)
    install(root)
    assert snapshot(root) == before
    # site edits, extra secrets and loose modes: kept, picked up and tightened
    with (etc / "gateway.toml").open("a") as f:
        f.write("\n# site edit\n")
    (etc / "gateway.toml").chmod(0o644)
    extra = etc / "credentials/city-mqtt-password"
    extra.write_text("s3cr3t-city-password")
    extra.chmod(0o644)
    (etc / "credentials/bad name").write_text("x")
    key = (etc / "credentials/privacy-key").read_text()
    proc = install(root)
    assert "kept existing" in proc.stdout
    assert (etc / "gateway.toml").read_text().endswith("# site edit\n")
    assert mode(etc / "gateway.toml")[0] == 0o640
    assert mode(extra)[0] == 0o600
    assert (etc / "credentials/privacy-key").read_text() == key
    dropin = (root / "etc/systemd/system/edge-gateway.service.d/credentials.conf").read_text()
    assert parse_unit(dropin)["Service"]["LoadCredential"] == [
        "city-mqtt-password:/etc/edge-gateway/credentials/city-mqtt-password"
    ]
    assert "unusual name" in proc.stderr
    assert "s3cr3t-city-password" not in proc.stdout + proc.stderr


def test_failed_check_stops_before_enabling(tmp_path: Path) -> None:
    root = tmp_path / "root"
    etc = root / "etc/edge-gateway"
    etc.mkdir(parents=True)
    (etc / "gateway.toml").write_text('[gateway]\nid = "gw"\n[[devices]]\nid = 3\n')
    proc = run(root, "--no-venv", "--no-start", "--check-bin", str(CHECK_BIN), check=False)
    assert proc.returncode != 0
    assert "check failed" in proc.stderr
    assert not (root / "etc/systemd/system/multi-user.target.wants/edge-gateway.service").exists()
    assert (etc / "gateway.toml").read_text().startswith('[gateway]\nid = "gw"')  # untouched


def test_refuses_to_start_unchecked(tmp_path: Path) -> None:
    proc = run(tmp_path / "root", "--no-venv", check=False)
    assert proc.returncode != 0
    assert "refusing to start an unchecked configuration" in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["--purge"], "--purge only goes with --uninstall"),
        (["--prefix", "relative/dir"], "absolute path"),
    ],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        ["bash", str(INSTALL), "--destdir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and message in proc.stderr


def test_help() -> None:
    proc = subprocess.run(
        ["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--uninstall" in proc.stdout and "--destdir" in proc.stdout


def test_uninstall_keeps_data_purge_removes_everything(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--with-hwsim")
    units = root / "etc/systemd/system"
    assert (units / "multi-user.target.wants/hwsim.service").is_symlink()
    (root / "var/lib/edge-gateway/buffer.db").write_bytes(b"SQLite format 3\x00")
    run(root, "--uninstall")
    assert not (units / "edge-gateway.service").exists()
    assert not (units / "hwsim.service").exists()
    assert not (units / "edge-gateway.service.d").exists()
    assert not list((units).rglob("*.service"))  # no dangling wants symlinks
    assert not (root / PREFIX.lstrip("/")).exists()
    assert not (root / "etc/sysusers.d/edge-gateway.conf").exists()
    assert (root / "etc/edge-gateway/gateway.toml").exists()
    assert (root / "etc/edge-gateway/credentials/privacy-key").exists()
    assert (root / "var/lib/edge-gateway/buffer.db").exists()
    run(root, "--uninstall")  # idempotent
    run(root, "--uninstall", "--purge")
    assert not (root / "etc/edge-gateway").exists()
    assert not (root / "var/lib/edge-gateway").exists()
    assert not (root / "var/log/edge-gateway").exists()
    assert "edge-gateway:" not in (root / "etc/passwd").read_text()
    # and it installs again cleanly afterwards
    install(root)
    assert (root / "etc/edge-gateway/gateway.toml").exists()


BROKEN_CONFIG = '[gateway]\nid = "gw"\n[[devices]]\nid = 3\n'


def box(root: Path) -> None:
    """A staging root that looks like a fresh Debian box: passwd/group with dialout."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\ndialout:x:20:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\ndialout:*::\n")
    (root / "etc/shadow").chmod(0o640)
    (root / "etc/gshadow").chmod(0o640)


def error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("install.sh: error:")]


def test_broken_config_leaves_the_box_unchanged(tmp_path: Path) -> None:
    """A site config that fails `edge-gateway check`: no user, no files, no unit, one error line."""
    root = tmp_path / "root"
    box(root)
    etc = root / "etc/edge-gateway"
    etc.mkdir(mode=0o755)
    (etc / "gateway.toml").write_text(BROKEN_CONFIG)
    before = snapshot(root)
    proc = run(root, "--no-venv", "--no-start", "--check-bin", str(CHECK_BIN), check=False)
    assert proc.returncode != 0
    assert snapshot(root) == before
    assert "edge-gateway:" not in (root / "etc/passwd").read_text()
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "gateway.toml" in lines[0] and "fix" in lines[0]
