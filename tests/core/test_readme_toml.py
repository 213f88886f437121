"""Every TOML block in the project's Markdown files is validated, so the docs cannot drift
from the schema.

The convention (also described in README.md, "Configuration"):

* a ```` ```toml ```` block with no marker is a complete file: a device profile when it has a
  ``[profile]`` table, otherwise a complete gateway configuration;
* ``<!-- fragment -->`` on the line before the block: part of a gateway configuration; it is
  merged into ``gateway/examples/gateway.toml`` (tables merged key by key, arrays of tables
  such as ``[[buses]]`` appended) and the result validated;
* ``<!-- not gateway config -->`` before the block: other TOML (e.g. a driver's
  ``pyproject.toml``); it only has to parse.

Validation is the gateway's own (``load_config`` / ``validate_config`` / ``parse_profile``,
and ``edge-gateway check`` for complete configurations). What a block expects of an installed
box is provided in a temporary folder: the credentials and environment variables it names,
the profile folders it lists, and files under ``/etc/edge-gateway/`` that it refers to.
A gateway-config-looking table header outside a ```` ```toml ```` block fails the test too,
so an example cannot escape by losing its language tag.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError, load_config, validate_config
from gateway.profiles import parse_profile
from gateway.registry import load_drivers

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "gateway" / "examples" / "gateway.toml"
EDGE_GATEWAY = Path(sys.executable).with_name("edge-gateway")
MARKERS = {"fragment", "not gateway config"}
SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", "build", "dist"}
INSTALLED_ETC = "/etc/edge-gateway/"

FENCE_RE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")
MARKER_RE = re.compile(r"^\s*<!--\s*(.*?)\s*-->\s*$")
CONFIG_HEADER_RE = re.compile(
    r"^\s{0,8}\[\[?\s*(gateway|api|metrics|buffer|uplinks|buses|devices|privacy(\.rules)?|profile|"
    r"driver(\.[\w.]+)?|points\.[\w.]+|events)\s*\]\]?\s*(#.*)?$"
)


@dataclass(frozen=True)
class Block:
    file: Path
    line: int  # line of the opening fence
    marker: str | None
    text: str

    @property
    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def markdown_files() -> list[Path]:
    out = []
    for path in sorted(ROOT.rglob("*.md")):
        rel = path.relative_to(ROOT).parts
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in rel):
            continue
        out.append(path)
    return out


def scan(path: Path) -> tuple[list[Block], list[str]]:
    """TOML blocks of a Markdown file, and config-looking lines outside them."""
    blocks: list[Block] = []
    stray: list[str] = []
    lines = path.read_text("utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE_RE.match(lines[i])
        if not m:
            if CONFIG_HEADER_RE.match(lines[i]):
                stray.append(f"{path.relative_to(ROOT)}:{i + 1}: {lines[i].strip()}")
            i += 1
            continue
        fence, lang, start = m.group(2), m.group(3).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1  # closing fence
        if lang == "toml":
            prev = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            mm = MARKER_RE.match(prev)
            blocks.append(Block(path, start + 1, mm.group(1) if mm else None, "\n".join(body) + "\n"))
        else:
            stray += [
                f"{path.relative_to(ROOT)}:{start + 2 + n}: {ln.strip()} (in a ```{lang} block)"
                for n, ln in enumerate(body)
                if CONFIG_HEADER_RE.match(ln)
            ]
    return blocks, stray


ALL = [scan(p) for p in markdown_files()]
BLOCKS = [b for blocks, _ in ALL for b in blocks]


def test_blocks_are_found() -> None:
    """The scan is able to find what it validates (README.md's configuration example is one)."""
    names = {str(b.file.relative_to(ROOT)) for b in BLOCKS}
    assert {"README.md", "drivers/onvif/README.md", "sync/README.md", "drivers/serial/framed/README.md"} <= names
    assert any(b.file == ROOT / "README.md" and "[[devices]]" in b.text for b in BLOCKS)


def test_no_config_outside_toml_blocks() -> None:
    stray = [s for _, lines in ALL for s in lines]
    assert not stray, "gateway configuration outside a ```toml block:\n" + "\n".join(stray)


def test_markers_are_known() -> None:
    bad = [f"{b.where}: <!-- {b.marker} -->" for b in BLOCKS if b.marker is not None and b.marker not in MARKERS]
    assert not bad, f"unknown marker before a TOML block (known: {sorted(MARKERS)}):\n" + "\n".join(bad)


def _walk(data: Any, key: str = "") -> Any:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _walk(v, k)
        yield key, data
    elif isinstance(data, list):
        for v in data:
            yield from _walk(v, key)
    else:
        yield key, data


def stand_in_box(block: Block, tmp: Path) -> tuple[str, dict[str, str]]:
    """Make what the block expects of an installed box; returns its text (paths under
    /etc/edge-gateway/ moved into tmp) and the environment to validate it with."""
    etc = tmp / "etc"
    etc.mkdir()
    text = block.text.replace(INSTALLED_ETC, f"{etc}/")
    data = tomllib.loads(text)
    creds = tmp / "credentials"
    creds.mkdir()
    environ = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    for key, value in _walk(data):
        if isinstance(value, dict) and len(value) == 1:
            ((kind, name),) = value.items()
            if kind == "credential" and isinstance(name, str):
                (creds / name).write_text("doc-example-secret-0123456789abcdef\n")
            elif kind == "env" and isinstance(name, str):
                environ[name] = "doc-example-secret-0123456789abcdef"
            elif kind == "file" and isinstance(name, str) and name.startswith(str(etc)):
                Path(name).write_text("doc-example-secret-0123456789abcdef\n")
        elif isinstance(value, str) and (key.endswith("_file") or key == "file") and value.startswith(str(etc)):
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            Path(value).write_text("stand-in\n")
    for d in data.get("gateway", {}).get("profile_dirs", []):
        (tmp / d).mkdir(parents=True, exist_ok=True)
    return text, environ


def merge(base: Any, frag: Any) -> Any:
    if isinstance(base, dict) and isinstance(frag, dict):
        out = dict(base)
        for k, v in frag.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(frag, list) and all(isinstance(x, dict) for x in base + frag):
        return [*base, *frag]  # arrays of tables: the fragment adds entries
    return frag


def explain(block: Block, exc: ConfigError) -> str:
    return f"{block.where}: the documented TOML does not validate:\n" + "\n".join(
        f"  {i.path or '(top level)'}: {i.message}" for i in exc.issues
    )


@pytest.mark.parametrize("block", BLOCKS, ids=[b.where for b in BLOCKS])
def test_toml_block_validates(block: Block, tmp_path: Path) -> None:
    try:
        tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block.where}: not valid TOML: {exc}")
    if block.marker == "not gateway config":
        return
    text, environ = stand_in_box(block, tmp_path)
    data = tomllib.loads(text)
    if block.marker == "fragment":
        merged = merge(tomllib.loads(EXAMPLE.read_text("utf-8")), data)
        try:
            validate_config(merged, file=tmp_path / "gateway.toml", environ=environ)
        except ConfigError as exc:
            pytest.fail(explain(block, exc))
        return
    if "profile" in data:
        _, issues = parse_profile(block.where, text, load_drivers().by_protocol())
        assert not issues, f"{block.where}: the documented profile does not validate:\n" + "\n".join(
            f"  {i.path}: {i.message}" for i in issues
        )
        return
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(text)
    cfg.chmod(0o600)
    try:
        load_config(cfg, environ=environ)
    except ConfigError as exc:
        pytest.fail(explain(block, exc))
    env = {k: v for k, v in environ.items() if k != "EDGE_GW_CONFIG"}
    proc = subprocess.run(
        [str(EDGE_GATEWAY), "check", "-c", str(cfg)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, f"{block.where}: edge-gateway check failed:\n{proc.stdout}{proc.stderr}"


def test_fragment_validation_is_able_to_fail(tmp_path: Path) -> None:
    """The README's old mistake, as a fragment, is caught."""
    bad = Block(ROOT / "README.md", 0, "fragment", '[[buses]]\nname = "b"\ndriver = "modbus"\nbaudrate = 9600\n')
    text, environ = stand_in_box(bad, tmp_path)
    merged = merge(tomllib.loads(EXAMPLE.read_text("utf-8")), tomllib.loads(text))
    with pytest.raises(ConfigError, match="baudrate"):
        validate_config(merged, file=tmp_path / "gateway.toml", environ=environ)


@pytest.mark.parametrize("sample", sorted(ROOT.glob("drivers/*/sample.toml")), ids=lambda p: str(p.relative_to(ROOT)))
def test_driver_sample_config_validates(sample: Path, tmp_path: Path) -> None:
    """The drivers' sample.toml files (which their READMEs point to) are fragments too."""
    block = Block(sample, 1, "fragment", sample.read_text("utf-8"))
    text, environ = stand_in_box(block, tmp_path)
    merged = merge(tomllib.loads(EXAMPLE.read_text("utf-8")), tomllib.loads(text))
    try:
        validate_config(merged, file=tmp_path / "gateway.toml", environ=environ)
    except ConfigError as exc:
        pytest.fail(explain(block, exc))
