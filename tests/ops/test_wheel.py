"""The wheel holds the product and its data, no tests, and builds without warnings."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    # from a copy of the tree: setuptools leaves build/ behind, and a stale build/lib would
    # put files into the next wheel that the tree no longer has
    src = tmp_path_factory.mktemp("src") / "edge-gateway"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".mypy_cache", ".ruff_cache", ".hypothesis"))
    # no build isolation: the venv's setuptools builds it, nothing is fetched from an index
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return next(out.glob("edge_gateway-*.whl")), proc.stdout + proc.stderr


def test_wheel_holds_no_tests(wheel: tuple[Path, str]) -> None:
    names = zipfile.ZipFile(wheel[0]).namelist()
    assert not [n for n in names if "/tests/" in n or n.startswith("tests/")]
    # what the product needs at run time is there
    for must in ("gateway/catalogue/classes.toml", "gateway/schema/openapi.json", "gateway/METRICS.md", "gateway/examples/gateway.toml",
                 "drivers/modbus/profiles/acme-sd300.toml", "hwsim/cli.py"):
        assert any(n.endswith(must) for n in names), must


def test_wheel_builds_without_deprecation_warnings(wheel: tuple[Path, str]) -> None:
    text = wheel[1]
    assert "Deprecat" not in text and "BuildBackendWarning" not in text, text
