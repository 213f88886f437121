"""systemd/install.sh into a temporary root (DESTDIR-style): files, modes, idempotency."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.ops_systemd import (
    REPO,
    SYSTEMD_DIR,
    analyze,
    build_bundle,
    clean_clone,
    exposure,
    parse_unit,
    read_manifest,
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


# --------------------------------------------------------------------------- offline bundle

# what a box without a package index looks like to pip: an index that refuses connections
NO_INDEX_ENV = {
    "PIP_NO_INDEX": "1",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_FIND_LINKS": "",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(directory, tarball) of a bundle of this tree."""
    return build_bundle(tmp_path_factory.mktemp("bundle"))


def offline(root: Path, installer: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """installer --destdir root ARGS in a network namespace of its own: no network at all."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(NO_INDEX_ENV)
    return subprocess.run(
        ["unshare", "--net", "--", "bash", str(installer), "--destdir", str(root),
         "--prefix", PREFIX, "--no-start", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )


def test_offline_install_from_a_clean_clone_with_no_index(
    tmp_path: Path, bundle: tuple[Path, Path]
) -> None:
    bundle_dir, tarball = bundle
    manifest = read_manifest(bundle_dir)
    clone = clean_clone(tmp_path / "clone")
    assert not (clone / ".venv").exists()
    root = tmp_path / "root"
    box(root)
    proc = offline(root, clone / "systemd/install.sh", "--offline", str(tarball))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert error_lines(proc) == []
    prefix = root / PREFIX.lstrip("/")
    assert os.readlink(prefix / "current") == f"versions/{manifest['id']}"
    assert not (prefix / "previous").exists()
    venv = prefix / "current/venv"
    version = subprocess.run([str(venv / "bin/edge-gateway"), "version"], capture_output=True,
                             text=True, timeout=60)
    assert version.stdout.startswith(f"edge-gateway {manifest['version']} "), version
    assert (venv / "bin/pip").exists() and (venv / "bin/hwsim").exists()
    unit = parse_unit((root / "etc/systemd/system/edge-gateway.service").read_text())
    exec_start = unit["Service"]["ExecStart"][0].split()[0]
    assert exec_start == f"{PREFIX}/current/venv/bin/edge-gateway"
    assert (root / exec_start.lstrip("/")).exists()
    assert (root / "etc/edge-gateway/gateway.toml").exists()
    assert "edge-gateway:" in (root / "etc/passwd").read_text()
    assert (prefix / "README.md").exists() and (prefix / "INSTALL.md").exists()
    # again, from the unpacked bundle's own installer: nothing changes
    before = snapshot(root)
    again = offline(root, bundle_dir / "install.sh")
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"version {manifest['id']} is already installed" in again.stdout
    assert snapshot(root) == before


def test_offline_broken_config_leaves_the_box_unchanged(
    tmp_path: Path, bundle: tuple[Path, Path]
) -> None:
    """--config with a broken file, on a fresh box: the new venv is built, checks, and goes."""
    root = tmp_path / "root"
    box(root)
    broken = tmp_path / "site.toml"
    broken.write_text(BROKEN_CONFIG)
    before = snapshot(root)
    proc = offline(root, SYSTEMD_DIR / "install.sh", "--offline", str(bundle[1]),
                   "--config", str(broken))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert snapshot(root) == before
    lines = error_lines(proc)
    assert len(lines) == 1, proc.stdout + proc.stderr
    assert "edge-gateway check failed for" in lines[0] and "site.toml" in lines[0]
    assert "devices[0].class: required key is missing" in proc.stderr  # the check's own list


def damage_wheel(b: Path) -> str:
    whl = next((b / "wheels").glob("pydantic-*.whl"))
    data = bytearray(whl.read_bytes())
    data[len(data) // 2] ^= 0xFF
    whl.write_bytes(bytes(data))
    return "fails its SHA256SUMS"


def resign(b: Path) -> None:
    sums = []
    for p in sorted(b.rglob("*")):
        if p.is_file() and p.name != "SHA256SUMS":
            rel = p.relative_to(b).as_posix()
            sums.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n")
    (b / "SHA256SUMS").write_text("".join(sums))


def other_python(b: Path) -> str:
    text = (b / "MANIFEST").read_text().replace("python_tag=cp311", "python_tag=cp313")
    (b / "MANIFEST").write_text(text)
    resign(b)
    return "the bundle is for Python 313 (cp313)"


def other_arch(b: Path) -> str:
    text = (b / "MANIFEST").read_text().replace("arch=x86_64", "arch=aarch64")
    (b / "MANIFEST").write_text(text)
    resign(b)
    return "the bundle is for aarch64"


@pytest.mark.parametrize("damage", [damage_wheel, other_python, other_arch])
def test_unusable_bundle_is_refused_before_anything_changes(
    tmp_path: Path, bundle: tuple[Path, Path], damage: Callable[[Path], str]
) -> None:
    b = tmp_path / "bundle"
    shutil.copytree(bundle[0], b)
    message = damage(b)
    root = tmp_path / "root"
    box(root)
    before = snapshot(root)
    proc = offline(root, SYSTEMD_DIR / "install.sh", "--offline", str(b))
    assert proc.returncode == 1
    assert snapshot(root) == before
    lines = error_lines(proc)
    assert len(lines) == 1 and message in lines[0], proc.stdout + proc.stderr


def test_no_room_for_the_new_version(tmp_path: Path, bundle: tuple[Path, Path]) -> None:
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(root)], check=True,
                   timeout=30)
    try:
        box(root)
        before = snapshot(root)
        proc = offline(root, SYSTEMD_DIR / "install.sh", "--offline", str(bundle[1]))
        assert proc.returncode == 1
        assert snapshot(root) == before
        lines = error_lines(proc)
        assert len(lines) == 1 and "MB free on" in lines[0] and "needs" in lines[0], lines
    finally:
        subprocess.run(["umount", str(root)], check=True, timeout=30)


def test_upgrade_then_roll_back(tmp_path: Path, bundle: tuple[Path, Path]) -> None:
    old_dir, old_tar = bundle
    old = read_manifest(old_dir)
    src = clean_clone(tmp_path / "newer")
    with (src / "README.md").open("a") as f:
        f.write("\nA newer build.\n")
    new_dir, new_tar = build_bundle(tmp_path / "newer-bundle", source=src)
    new = read_manifest(new_dir)
    assert new["id"] != old["id"] and new["version"] == old["version"]
    root = tmp_path / "root"
    box(root)
    prefix = root / PREFIX.lstrip("/")
    assert offline(root, SYSTEMD_DIR / "install.sh", "--offline", str(old_tar)).returncode == 0
    up = offline(root, SYSTEMD_DIR / "install.sh", "--offline", str(new_tar))
    assert up.returncode == 0, up.stdout + up.stderr
    assert os.readlink(prefix / "current") == f"versions/{new['id']}"
    assert os.readlink(prefix / "previous") == f"versions/{old['id']}"
    assert "A newer build." in (prefix / "README.md").read_text()
    back = offline(root, SYSTEMD_DIR / "install.sh", "--rollback")
    assert back.returncode == 0, back.stdout + back.stderr
    assert os.readlink(prefix / "current") == f"versions/{old['id']}"
    assert os.readlink(prefix / "previous") == f"versions/{new['id']}"
    assert (prefix / "current/venv/bin/edge-gateway").exists()


def test_a_python_that_does_not_run_gives_one_error_line(
    tmp_path: Path, bundle: tuple[Path, Path]
) -> None:
    root = tmp_path / "root"
    box(root)
    before = snapshot(root)
    env = {**os.environ, "PYTHON": "/bin/false"}
    proc = subprocess.run(
        ["bash", str(SYSTEMD_DIR / "install.sh"), "--destdir", str(root), "--prefix", PREFIX,
         "--no-start", "--offline", str(bundle[0])],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 1
    assert snapshot(root) == before
    lines = error_lines(proc)
    assert lines == ["install.sh: error: /bin/false does not run: apt-get install --reinstall python3"], (
        proc.stdout + proc.stderr)
