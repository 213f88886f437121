"""The import directions of gateway/ARCHITECTURE.md, checked on the source (every import
statement, at any depth, TYPE_CHECKING blocks included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHARED = {"gateway", "gateway.record", "gateway.types", "gateway.classes", "gateway.profiles",
          "gateway.plugin", "gateway.serialport", "gateway.errors", "gateway.backoff"}
PRODUCT = ("gateway", "drivers", "buffer", "sync")


def imports(path: Path) -> set[str]:
    """Absolute module names a file imports (``from gateway import x`` gives gateway and
    gateway.x, since x may be a module)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def product_files(package: str) -> list[Path]:
    return [p for p in sorted((ROOT / package).rglob("*.py")) if "tests" not in p.relative_to(ROOT).parts]


def top(name: str) -> str:
    return name.split(".", 1)[0]


def gateway_modules() -> set[str]:
    return {"gateway"} | {f"gateway.{p.stem}" for p in (ROOT / "gateway").glob("*.py") if p.stem != "__init__"}


def violations(package: str, allowed: set[str], forbidden_tops: set[str]) -> list[str]:
    known = gateway_modules()
    bad = []
    for f in product_files(package):
        for name in imports(f):
            if top(name) in forbidden_tops:
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
            elif top(name) == "gateway" and name in known and name not in allowed:
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
    return bad


@pytest.mark.parametrize(("package", "forbidden"), [
    ("drivers", {"buffer", "sync", "hwsim"}),
    ("buffer", {"drivers", "sync", "hwsim"}),
    ("sync", {"drivers", "buffer", "hwsim"}),
])
def test_packages_import_only_the_shared_layer_of_gateway(package: str, forbidden: set[str]) -> None:
    assert violations(package, SHARED, forbidden) == []


def test_buffer_knows_records_only() -> None:
    assert violations("buffer", {"gateway", "gateway.record", "gateway.errors"}, {"drivers", "sync", "hwsim"}) == []


def test_the_shared_layer_imports_nothing_above_it() -> None:
    bad = []
    for name in sorted(SHARED - {"gateway"}):
        f = ROOT / "gateway" / f"{name.split('.')[1]}.py"
        for imp in imports(f):
            if top(imp) in {"drivers", "buffer", "sync", "hwsim"} or (
                    top(imp) == "gateway" and imp in gateway_modules() and imp not in SHARED):
                bad.append(f"{f.relative_to(ROOT)} imports {imp}")
    assert bad == []


def test_the_core_finds_drivers_through_entry_points_only() -> None:
    bad = [f"{f.relative_to(ROOT)} imports {n}" for f in product_files("gateway")
           for n in imports(f) if top(n) == "drivers"]
    assert bad == []


def test_product_never_imports_the_simulators_and_they_never_import_the_product() -> None:
    bad = [f"{f.relative_to(ROOT)} imports {n}" for pkg in PRODUCT for f in product_files(pkg)
           for n in imports(f) if top(n) == "hwsim"]
    bad += [f"{f.relative_to(ROOT)} imports {n}" for f in sorted((ROOT / "hardware-sim").rglob("*.py"))
            for n in imports(f) if top(n) in {"drivers", "buffer", "sync", "gateway"}]
    assert bad == []


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    f = tmp_path / "x.py"
    f.write_text("def f():\n    if True:\n        from gateway.app import GatewayApp\n")
    assert "gateway.app" in imports(f)
