"""Helpers for the systemd unit and installer tests: tools, unit parsing, analyze runs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD_DIR = REPO / "systemd"
PREFIX = "/opt/edge-gateway"
TOOLS = ("systemd-analyze", "systemd-sysusers", "systemd-tmpfiles", "systemctl")


def apt_install_or_skip(packages: list[str], tools: list[str], *, timeout: float = 600) -> list[str]:
    """Install the Debian ``packages`` (root, apt-get) so that ``tools`` are on PATH; skip
    with the reason when that is impossible. Returns the packages installed."""
    if not packages:
        return []
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(f"{packages} missing and cannot be installed (need root + apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"],
                ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            pytest.skip(f"apt-get install {' '.join(packages)} failed: {proc.stderr.strip()[-300:]}")
    still = [t for t in tools if shutil.which(t) is None]
    if still:
        pytest.skip(f"{still} still missing after apt-get install {' '.join(packages)}")
    return packages


def require_systemd_tools() -> None:
    """Install systemd's tools when missing (Debian, root); skip with the reason if impossible."""
    if any(shutil.which(t) is None for t in TOOLS):
        apt_install_or_skip(["systemd"], list(TOOLS), timeout=300)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value (unit files repeat keys), comments dropped."""
    out: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = out.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line}"
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return out


def with_fake_exec(unit_text: str, prefix: str, tmp: Path) -> str:
    """The unit with ``prefix`` moved under ``tmp`` where fake executables exist.

    ``systemd-analyze verify`` insists that ExecStart binaries exist; the real ones only
    exist after the venv is built on a box.
    """
    fake_prefix = tmp / "fakeprefix"
    bindir = fake_prefix / "current" / "venv" / "bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for name in ("edge-gateway", "hwsim"):
        exe = bindir / name
        exe.write_text("#!/bin/sh\nexit 0\n")
        exe.chmod(0o755)
    return unit_text.replace(prefix, str(fake_prefix))


def analyze(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_COLORS": "0", "LC_ALL": "C.UTF-8"},
    )


_EXPOSURE_RE = re.compile(r"Overall exposure level for (\S+): (\d+(?:\.\d+)?)")


def exposure(unit_path: Path) -> tuple[float, str]:
    """``systemd-analyze security --offline=true`` exposure of a unit file, and the report."""
    proc = analyze("security", "--offline=true", "--no-pager", str(unit_path), cwd=unit_path.parent)
    text = proc.stdout + proc.stderr
    m = _EXPOSURE_RE.search(text)
    assert m, f"no exposure line in:\n{text}"
    assert m.group(1) == unit_path.name
    return float(m.group(2)), text


BUILD_CACHE = Path(os.environ.get("EDGE_BUILD_CACHE", "/tmp/edge-build"))


def build_bundle(out: Path, source: Path = REPO) -> tuple[Path, Path]:
    """``systemd/bundle.py`` of ``source`` into ``out``: (bundle directory, tarball).

    Dependency wheels are cached under ``$EDGE_BUILD_CACHE/wheel-cache`` keyed by
    pyproject.toml and the target, so only the first build of a run needs the package index.
    """
    proc = subprocess.run(
        [sys.executable, str(SYSTEMD_DIR / "bundle.py"), str(out), "--source", str(source),
         "--wheel-cache", str(BUILD_CACHE / "wheel-cache")],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout.strip())
    tarballs = sorted(out.glob("edge-gateway-*.tar.gz"))
    assert len(tarballs) == 1, list(out.iterdir())
    directory = out / tarballs[0].name.removesuffix(".tar.gz")
    assert (directory / "MANIFEST").is_file()
    return directory, tarballs[0]


def read_manifest(bundle_dir: Path) -> dict[str, str]:
    lines = (bundle_dir / "MANIFEST").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def clean_clone(dest: Path) -> Path:
    """The project's files as a fresh clone has them: no venv, no build leftovers."""
    files = subprocess.run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True, timeout=60,
    ).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            (dest / rel).write_bytes(src.read_bytes())
            (dest / rel).chmod(src.stat().st_mode & 0o777)
    return dest
