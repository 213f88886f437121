"""A Debian root built with mmdebstrap, booted with systemd-nspawn, driven with nsenter.

The root (minbase + systemd, systemd-sysv, dbus, python3) is built from the Debian mirror the
host's apt already uses and cached as a tarball under ``$EDGE_BUILD_CACHE`` (default
/tmp/edge-build) keyed by a hash of the suite, mirror, package list and mmdebstrap version,
so a CI run builds it once. Each test run unpacks a fresh copy.

The host's PID 1 need not be systemd: the container is started with ``--register=no
--keep-unit`` (no machined, no scope on the host bus) and commands run inside it through
``nsenter`` into the namespaces of the container's PID 1.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ops_systemd import apt_install_or_skip

BUILD_CACHE = Path(os.environ.get("EDGE_BUILD_CACHE", "/tmp/edge-build"))
SUITE = "bookworm"
VARIANT = "minbase"
# python3 only: the offline install makes its venv --without-pip (no ensurepip, so no
# python3-venv) and takes pip from the bundle
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3")
TOOLS = {"systemd-nspawn": "systemd-container", "mmdebstrap": "mmdebstrap", "nsenter": "util-linux"}
INSIDE_ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
              "SYSTEMD_PAGER=", "SYSTEMD_COLORS=0"]


def require_tools() -> list[str]:
    """systemd-nspawn, mmdebstrap and nsenter present (installed with apt-get if missing).

    Returns the Debian packages that had to be installed; skips when that is impossible.
    """
    if os.geteuid() != 0:
        pytest.skip("the boot test needs root (systemd-nspawn, mmdebstrap)")
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    return apt_install_or_skip(missing, list(TOOLS))


def host_mirror(suite: str = SUITE) -> str:
    """The Debian archive URI the host's apt uses for ``suite`` (main component)."""
    found: list[str] = []
    apt = Path("/etc/apt")
    for f in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if not f.is_file():
            continue
        for line in f.read_text().splitlines():
            m = re.match(r"\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s+(.*)", line)
            if m and m.group(2) == suite and "main" in m.group(3).split():
                found.append(m.group(1))
    for f in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", f.read_text()):
            fields = dict(re.findall(r"^(\w[\w-]*):\s*(.*)$", stanza, re.M))
            if ("deb" in fields.get("Types", "").split()
                    and suite in fields.get("Suites", "").split()
                    and "main" in fields.get("Components", "").split()
                    and fields.get("Enabled", "yes") != "no"):
                found.extend(fields.get("URIs", "").split())
    if not found:
        pytest.skip(f"no apt source for {suite} main on this host: cannot build a {suite} root")
    return found[0].rstrip("/")


def mirror_reachable(mirror: str, suite: str = SUITE) -> str | None:
    """None when the mirror answers for the suite, else why not."""
    url = f"{mirror}/dists/{suite}/InRelease"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=15):
            return None
    except (urllib.error.URLError, OSError) as exc:
        return f"{url}: {exc}"


def root_tarball() -> Path:
    """The cached root tarball, built with mmdebstrap when missing."""
    mirror = host_mirror()
    version = subprocess.run(["mmdebstrap", "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    key_text = "\n".join([SUITE, VARIANT, mirror, version, *sorted(PACKAGES)])
    key = hashlib.sha256(key_text.encode()).hexdigest()[:16]
    cache = BUILD_CACHE / "rootfs"
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{SUITE}-{VARIANT}-{key}.tar"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)      # parallel runs wait for one build
        if tarball.is_file():
            return tarball
        why = mirror_reachable(mirror)
        if why is not None:
            pytest.skip(f"Debian mirror not reachable, cannot build the root: {why}")
        partial = tarball.with_suffix(".partial.tar")
        cmd = ["mmdebstrap", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}",
               "--quiet", SUITE, str(partial), mirror]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            partial.unlink(missing_ok=True)
            raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        partial.rename(tarball)
        (cache / f"{tarball.name}.packages").write_text(key_text + "\n")
        print(f"built {tarball} in {time.monotonic() - t0:.1f} s")
    return tarball


def unpack_root(tarball: Path, dest: Path) -> Path:
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(dest), "-xf", str(tarball)], check=True, timeout=300)
    return dest


def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return out


def _ns_pid(pid: int) -> list[str]:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return line.split()[1:]
    return []


class Container:
    """One systemd-nspawn boot of ``root`` with no network but loopback."""

    def __init__(self, root: Path, name: str, console: Path) -> None:
        self.root = root
        self.name = name
        self.console = console
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self, timeout: float = 90) -> float:
        """Start it and wait until systemd says the boot is done; returns the seconds it took."""
        t0 = time.monotonic()
        log = self.console.open("ab")
        self.proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", "-D", str(self.root), f"--machine={self.name}",
             "--private-network", "--register=no", "--keep-unit", "--link-journal=no",
             "--console=read-only", "-b"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = t0 + timeout
        self.leader = 0
        while not self.leader:
            if self.proc.poll() is not None:
                raise AssertionError(f"systemd-nspawn exited {self.proc.returncode}:\n"
                                     f"{self.console_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no container init after {timeout} s:\n{self.console_tail()}")
            todo = _children(self.proc.pid)
            while todo:
                pid = todo.pop()
                ns = _ns_pid(pid)
                if len(ns) > 1 and ns[-1] == "1":
                    self.leader = pid
                    break
                todo += _children(pid)
            if not self.leader:
                time.sleep(0.05)
        while True:  # "offline" until the manager listens on its private socket
            left = max(5.0, deadline - time.monotonic())
            state = self.run("systemctl is-system-running --wait", timeout=left, check=False)
            if state.stdout.strip() not in ("", "offline") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if state.stdout.strip() not in ("running", "degraded"):
            raise AssertionError(f"boot did not finish: {state.stdout}{state.stderr}\n"
                                 f"{self.console_tail()}")
        if state.stdout.strip() == "degraded":
            failed = self.run("systemctl --failed --no-legend --plain", check=False).stdout
            print(f"boot degraded, failed units:\n{failed}")
        return time.monotonic() - t0

    def run(self, script: str, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """``bash -c script`` inside the container, as root, with a clean environment."""
        assert self.leader, "not booted"
        proc = subprocess.run(
            ["nsenter", "-t", str(self.leader), "-a", "env", "-i", *INSIDE_ENV,
             "bash", "-c", script],
            capture_output=True, text=True, timeout=timeout,
        )
        if check:
            assert proc.returncode == 0, (
                f"`{script}` exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def poweroff(self, timeout: float = 90) -> float:
        """``systemctl poweroff`` inside, wait for systemd-nspawn to exit; seconds taken."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.run("systemctl poweroff", check=False, timeout=30)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"no poweroff within {timeout} s:\n{self.console_tail()}"
            ) from None
        assert rc == 0, f"systemd-nspawn exited {rc}:\n{self.console_tail()}"
        self.leader = 0
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()           # nspawn asks the container to power off
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.leader = 0

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def booted(root: Path, name: str, console: Path) -> Iterator[Container]:
    c = Container(root, name, console)
    try:
        yield c
    finally:
        c.kill()
