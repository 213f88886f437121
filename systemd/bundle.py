#!/usr/bin/env python3
"""Build an offline install bundle of the edge gateway.

    python3 systemd/bundle.py OUT_DIR [--source DIR] [--python PY] [--wheel-cache DIR]

The bundle holds everything ``install.sh --offline`` needs on a box with no package index:

    edge-gateway-<version>-<hash>-<pytag>-<arch>/
        MANIFEST            key=value: name, version, id, python tag, arch, build time, ...
        SHA256SUMS          sha256sum -c format, every other file of the bundle
        install.sh          the installer (run it from here: it installs this bundle)
        units/              edge-gateway.service, hwsim.service, sysusers.d/, tmpfiles.d/
        gateway.toml.example
        README.md           the project README (installed as PREFIX/README.md)
        INSTALL.md          systemd/README.md (install, upgrade, roll back, uninstall)
        wheels/             the project wheel and every dependency, plus pip/setuptools/wheel

and a tarball of that directory next to it (``.tar.gz`` and its ``.sha256``).

The wheels are for the Python and the machine that run ``PY -m pip wheel`` (``--python``,
default: this interpreter): build the bundle with the same Python minor version and
architecture as the boxes (``MANIFEST`` says which; the installer refuses a mismatch).
``<hash>`` is a hash of the wheels' contents (not of their zip timestamps), so the same
source and dependencies give the same install id and reinstalling is a no-op.

``--wheel-cache DIR`` keeps the downloaded dependency wheels keyed by a hash of
pyproject.toml and the target; a later build with the same key needs no package index.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
UNIT_FILES = (
    "edge-gateway.service",
    "hwsim.service",
    "sysusers.d/edge-gateway.conf",
    "tmpfiles.d/edge-gateway.conf",
)
BOOTSTRAP = ("pip", "setuptools", "wheel")
# never copied into the build tree
SKIP_DIRS = {".git", ".venv", "__pycache__", "build", "dist", ".mypy_cache", ".ruff_cache",
             ".pytest_cache", ".hypothesis"}


class BundleError(Exception):
    pass


def target_info(python: str) -> dict[str, str]:
    """Python tag, version, machine and platform of the interpreter the wheels are for."""
    code = (
        "import sys, sysconfig, platform;"
        "print(f'cp{sys.version_info[0]}{sys.version_info[1]}');"
        "print(f'{sys.version_info[0]}.{sys.version_info[1]}');"
        "print(platform.machine());"
        "print(sysconfig.get_platform())"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                         timeout=60).stdout.split()
    return {"python_tag": out[0], "python_version": out[1], "arch": out[2], "platform": out[3]}


def copy_source(source: Path, dest: Path) -> None:
    """The project tree without VCS, venvs, caches and build leftovers (a clean build)."""
    files: list[str] | None = None
    if (source / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(
            ["git", "-C", str(source), "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"],
            capture_output=True, check=False, timeout=60,
        )
        if proc.returncode == 0:
            files = [f for f in proc.stdout.decode().split("\0") if f]
    if files is None:
        files = []
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and
                           not d.endswith(".egg-info")]
            here = Path(dirpath).relative_to(source)
            files += [str(here / f) for f in filenames]
    for rel in files:
        src = source / rel
        if not src.is_file():  # deleted but still in the index
            continue
        out = dest / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, out)


def source_label(source: Path) -> str:
    if (source / ".git").exists() and shutil.which("git"):
        proc = subprocess.run(["git", "-C", str(source), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=False, timeout=60)
        if proc.returncode == 0:
            return proc.stdout.strip()
    return "unknown"


def wheel_content_hash(wheels: list[Path]) -> str:
    """Hash of file names and member contents: zip timestamps and order do not count."""
    h = hashlib.sha256()
    for whl in sorted(wheels, key=lambda p: p.name):
        h.update(whl.name.encode() + b"\0")
        with zipfile.ZipFile(whl) as z:
            for name in sorted(z.namelist()):
                h.update(name.encode() + b"\0")
                h.update(hashlib.sha256(z.read(name)).digest())
    return h.hexdigest()


def pip(python: str, *args: str, env: dict[str, str] | None = None,
        timeout: float = 900) -> None:
    cmd = [python, "-m", "pip", "--disable-pip-version-check", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise BundleError(f"{' '.join(cmd)} failed:\n{tail}")


def build(out_dir: Path, source: Path, python: str, wheel_cache: Path | None,
          tarball: bool = True) -> Path:
    t0 = time.monotonic()
    pyproject = source / "pyproject.toml"
    if not pyproject.is_file():
        raise BundleError(f"{source} is not the project tree (no pyproject.toml)")
    meta = tomllib.loads(pyproject.read_text())["project"]
    name, version = meta["name"], meta["version"]
    target = target_info(python)
    for f in UNIT_FILES + ("install.sh",):
        if not (source / "systemd" / f).is_file():
            raise BundleError(f"missing {source / 'systemd' / f}")
    example = source / "gateway/examples/gateway.toml"
    if not example.is_file():
        raise BundleError(f"missing example configuration {example}")

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="egw-bundle-", dir=out_dir) as tmp_s:
        tmp = Path(tmp_s)
        tree = tmp / "src"
        copy_source(source, tree)
        env = {**os.environ, "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH",
                                                                  "315532800")}
        wheels = tmp / "wheels"
        wheels.mkdir()
        key_src = pyproject.read_bytes() + repr(sorted(target.items())).encode()
        key = hashlib.sha256(key_src).hexdigest()[:16]
        cached = wheel_cache / key if wheel_cache else None
        if cached is not None and (cached / ".complete").is_file():
            # dependencies from the cache; the project wheel built against it, no index
            for whl in cached.glob("*.whl"):
                shutil.copy2(whl, wheels / whl.name)
            pip(python, "wheel", "--no-deps", "--no-index", "--find-links", str(wheels),
                "-w", str(wheels), str(tree), env=env)
        else:
            pip(python, "wheel", "-w", str(wheels), str(tree), *BOOTSTRAP, env=env)
            if cached is not None:
                stage = cached.with_name(cached.name + ".tmp")
                shutil.rmtree(stage, ignore_errors=True)
                stage.mkdir(parents=True)
                prefix = name.replace("-", "_") + "-"
                for whl in wheels.glob("*.whl"):
                    if not whl.name.startswith(prefix):
                        shutil.copy2(whl, stage / whl.name)
                (stage / ".complete").write_text(key + "\n")
                shutil.rmtree(cached, ignore_errors=True)
                stage.rename(cached)
        all_wheels = sorted(wheels.glob("*.whl"))
        project = [w for w in all_wheels if w.name.startswith(name.replace("-", "_") + "-")]
        if len(project) != 1:
            raise BundleError(f"expected one {name} wheel, found {[w.name for w in project]}")
        # the wheelhouse must be complete: resolve the install with no index at all
        pip(python, "install", "--dry-run", "--ignore-installed", "--no-index",
            "--find-links", str(wheels), "--only-binary", ":all:", str(project[0]), *BOOTSTRAP,
            env={**env, "PIP_CONFIG_FILE": os.devnull})

        digest = wheel_content_hash(all_wheels)
        wheels_bytes = sum(w.stat().st_size for w in all_wheels)
        install_id = f"{version}-{digest[:12]}"
        bundle_name = f"{name}-{install_id}-{target['python_tag']}-{target['arch']}"
        bdir = tmp / bundle_name
        (bdir / "units/sysusers.d").mkdir(parents=True)
        (bdir / "units/tmpfiles.d").mkdir(parents=True)
        for f in UNIT_FILES:
            shutil.copy2(source / "systemd" / f, bdir / "units" / f)
        shutil.copy2(source / "systemd/install.sh", bdir / "install.sh")
        (bdir / "install.sh").chmod(0o755)
        shutil.copy2(example, bdir / "gateway.toml.example")
        if (source / "README.md").is_file():
            shutil.copy2(source / "README.md", bdir / "README.md")
        shutil.copy2(source / "systemd/README.md", bdir / "INSTALL.md")
        shutil.move(str(wheels), bdir / "wheels")
        built = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = {
            "name": name,
            "version": version,
            "id": install_id,
            "python_tag": target["python_tag"],
            "python_version": target["python_version"],
            "requires_python": meta.get("requires-python", ""),
            "arch": target["arch"],
            "platform": target["platform"],
            "built": built,
            "source": source_label(source),
            "wheels": str(len(all_wheels)),
            "project_wheel": project[0].name,
            "wheels_bytes": str(wheels_bytes),
        }
        (bdir / "MANIFEST").write_text("".join(f"{k}={v}\n" for k, v in manifest.items()))
        sums = []
        for p in sorted(bdir.rglob("*")):
            if p.is_file():
                rel = p.relative_to(bdir).as_posix()
                sums.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {rel}\n")
        (bdir / "SHA256SUMS").write_text("".join(sums))

        final = out_dir / bundle_name
        if final.exists():
            shutil.rmtree(final)
        bdir.rename(final)
    if tarball:
        tar_path = out_dir / f"{bundle_name}.tar.gz"
        with tarfile.open(tar_path, "w:gz", compresslevel=6) as tar:
            tar.add(final, arcname=bundle_name)
        tar_sum = hashlib.sha256(tar_path.read_bytes()).hexdigest()
        (out_dir / f"{bundle_name}.tar.gz.sha256").write_text(f"{tar_sum}  {tar_path.name}\n")
    elapsed = time.monotonic() - t0
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    print(f"bundle: {final} ({manifest['wheels']} wheels, {size / 1e6:.1f} MB, "
          f"{elapsed:.1f} s)")
    if tarball:
        print(f"bundle: {tar_path} ({tar_path.stat().st_size / 1e6:.1f} MB)")
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("out_dir", type=Path, help="where the bundle directory and tarball go")
    ap.add_argument("--source", type=Path, default=HERE.parent,
                    help="project tree (default: the tree holding this script)")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter the wheels are built for (default: this one)")
    ap.add_argument("--wheel-cache", type=Path, default=None,
                    help="keep dependency wheels here, keyed by pyproject.toml and target")
    ap.add_argument("--no-tar", action="store_true", help="only the directory, no tarball")
    args = ap.parse_args(argv)
    try:
        build(args.out_dir.resolve(), args.source.resolve(), args.python,
              args.wheel_cache.resolve() if args.wheel_cache else None,
              tarball=not args.no_tar)
    except BundleError as exc:
        print(f"bundle.py: error: {exc}", file=sys.stderr)
        return 1
    except subprocess.TimeoutExpired as exc:
        print(f"bundle.py: error: {' '.join(map(str, exc.cmd))} timed out", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
