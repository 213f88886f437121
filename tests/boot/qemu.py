"""The flashable disk image (``systemd/image/build.sh``) booted with qemu, driven through its
serial console.

The image is built once per bundle and image-source content and cached under
``$EDGE_BUILD_CACHE/image/`` (default /tmp/edge-build); every boot runs on a sparse copy.
The guest's serial port is a unix socket: a reader thread writes everything to a console
log, and :meth:`Qemu.login` / :meth:`Qemu.sh` log in as root (the test image gets a root
password at build time) and run shell commands, each answered with its exit status.
Files go in and out of the image without mounting: ``mtools`` on the FAT partition,
``debugfs`` on the ext4 root (``image?offset=BYTES``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.boot.nspawn import BUILD_CACHE, host_mirror, mirror_reachable
from tests.support.ops_systemd import apt_install_or_skip

REPO = Path(__file__).resolve().parents[2]
IMAGE_DIR = REPO / "systemd/image"
TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86", "mmdebstrap": "mmdebstrap", "sfdisk": "fdisk",
    "mkfs.vfat": "dosfstools", "mcopy": "mtools", "syslinux": "syslinux", "debugfs": "e2fsprogs",
}
ROOT_PASSWORD = "edge-boot-test"
PROMPT = "__EDGE_PROMPT__# "
ACCEL = os.environ.get("EDGE_GW_QEMU_ACCEL", "tcg")  # the CI machines have no KVM


def require_tools() -> list[str]:
    """qemu, mmdebstrap and the image tools present (apt-get installs what is missing).

    Returns the Debian packages that had to be installed; skips when that is impossible.
    """
    if os.geteuid() != 0:
        pytest.skip("the image build needs root (mmdebstrap, chroot)")
    if os.uname().machine != "x86_64":
        pytest.skip("the amd64 image is built and booted on x86_64 only")
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None}
                     | ({"syslinux-common"} if not Path("/usr/lib/syslinux/mbr/mbr.bin").is_file()
                        else set()))
    return apt_install_or_skip(missing, list(TOOLS), timeout=900)


def password_hash(password: str) -> str:
    return subprocess.run(["openssl", "passwd", "-6", "-salt", "edgeboottest", password],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def build_image(bundle_dir: Path, cmdline: str = "") -> tuple[Path, float | None]:
    """The image of ``bundle_dir`` (cached): (path, build seconds or None when cached)."""
    mirror = host_mirror()
    h = hashlib.sha256()
    for f in sorted(IMAGE_DIR.iterdir()):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    manifest = (bundle_dir / "MANIFEST").read_text().splitlines()
    h.update("\n".join(x for x in manifest if x.startswith("id=")).encode())  # not `built`
    h.update(f"{mirror}\0{cmdline}\0{ROOT_PASSWORD}".encode())
    cache = BUILD_CACHE / "image"
    cache.mkdir(parents=True, exist_ok=True)
    image = cache / f"edge-{h.hexdigest()[:16]}.img"
    with (cache / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if image.is_file():
            return image, None
        why = mirror_reachable(mirror)
        if why is not None:
            pytest.skip(f"Debian mirror not reachable, cannot build the image: {why}")
        for old in cache.glob("edge-*.img"):   # one image at a time: they are 2 GB sparse
            old.unlink()
        cmd = ["bash", str(IMAGE_DIR / "build.sh"), str(image), "--bundle", str(bundle_dir),
               "--root-password-hash", password_hash(ROOT_PASSWORD)]
        if cmdline:
            cmd += ["--cmdline", cmdline]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
        took = time.monotonic() - t0
        (cache / "build.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0 and image.is_file(), (
            f"build.sh exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        print(proc.stdout.strip())
    return image, took


def partitions(image: Path) -> list[dict[str, int]]:
    """The image's partitions: ``start`` (bytes), ``size`` (bytes), ``type`` (MBR id)."""
    out = subprocess.run(["sfdisk", "--json", str(image)], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    return [{"start": p["start"] * 512, "size": p["size"] * 512, "type": int(p["type"], 16)}
            for p in json.loads(out)["partitiontable"]["partitions"]]


def fat_spec(image: Path) -> str:
    return f"{image}@@{partitions(image)[0]['start']}"


def fat_put(image: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (path on the FAT partition -> content) as a laptop would."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    spec = fat_spec(image)
    for name, data in files.items():
        parent = os.path.dirname(name)
        if parent:
            subprocess.run(["mmd", "-D", "s", "-i", spec, f"::/{parent}"], env=env,
                           capture_output=True, timeout=30)  # exists already: fine
        proc = subprocess.run(["mcopy", "-o", "-i", spec, "-", f"::/{name}"], input=data,
                              env=env, capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr.decode()


def fat_list(image: Path) -> dict[str, bytes]:
    """Every file on the FAT partition (below ``/`` and ``credentials/``) and its content."""
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    spec = fat_spec(image)
    out: dict[str, bytes] = {}
    for d in ("", "credentials/"):
        names = subprocess.run(["mdir", "-b", "-i", spec, f"::/{d}"], env=env,
                               capture_output=True, text=True, timeout=30).stdout.split()
        for n in names:
            rel = n.removeprefix("::/")
            if rel.endswith("/"):
                continue
            proc = subprocess.run(["mtype", "-i", spec, f"::/{rel}"], env=env,
                                  capture_output=True, timeout=30)
            if proc.returncode == 0:
                out[rel] = proc.stdout
    return out


def root_spec(image: Path) -> str:
    return f"{image}?offset={partitions(image)[1]['start']}"


def root_dump(image: Path, path: str, dest: Path) -> bool:
    """Copy ``path`` out of the image's ext4 root to ``dest``; False when it is not there."""
    proc = subprocess.run(["debugfs", "-R", f"dump -p {path} {dest}", root_spec(image)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0 and dest.is_file() and "not found" not in proc.stderr


def sparse_copy(src: Path, dest: Path) -> Path:
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True, timeout=300)
    return dest


class Qemu:
    """One boot of a raw image: user-mode network, serial console on a unix socket."""

    def __init__(self, image: Path, workdir: Path, name: str, hostfwd: dict[int, int]) -> None:
        self.image = image
        self.workdir = workdir
        self.name = name
        self.hostfwd = hostfwd            # host port on 127.0.0.1 -> guest port
        self.console = workdir / f"{name}-console.log"
        self.sock_path = workdir / f"{name}-serial.sock"
        self.mon_path = workdir / f"{name}-monitor.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._cond = threading.Condition()
        self._pos = 0                     # where the next expect() starts looking
        self.started = 0.0

    # ------------------------------------------------------------------ process
    def start(self, memory_mb: int = 1024) -> None:
        fwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in self.hostfwd.items())
        cmd = [
            "qemu-system-x86_64", "-machine", "pc", "-accel", ACCEL, "-m", str(memory_mb),
            "-smp", "1", "-display", "none", "-no-reboot", "-nodefaults",
            "-drive", f"file={self.image},format=raw,if=virtio,cache=writeback",
            "-nic", f"user,model=virtio-net-pci{fwd}",
            "-chardev", f"socket,id=ser0,path={self.sock_path},server=on,wait=off",
            "-serial", "chardev:ser0",
            "-monitor", f"unix:{self.mon_path},server=on,wait=off",
        ]
        self.started = time.monotonic()
        log = (self.workdir / f"{self.name}-qemu.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"qemu exited {self.proc.returncode}: "
                                     f"{(self.workdir / f'{self.name}-qemu.log').read_text()}")
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.sock_path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise AssertionError("no qemu serial socket after 30 s") from None
                time.sleep(0.05)
        self._sock = s
        threading.Thread(target=self._reader, daemon=True, name=f"serial-{self.name}").start()

    def _reader(self) -> None:
        assert self._sock is not None
        with self.console.open("ab") as log:
            while True:
                try:
                    data = self._sock.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    break
                log.write(data)
                log.flush()
                with self._cond:
                    self._buf += data
                    self._cond.notify_all()

    def monitor(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.mon_path))
            s.sendall(command.encode() + b"\n")
            with contextlib.suppress(OSError):
                s.recv(4096)

    def power_cut(self) -> None:
        """Pull the plug: SIGKILL, nothing is flushed or shut down."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"qemu still running after {timeout} s:\n{self.tail()}") from None

    def poweroff(self, timeout: float = 180) -> float:
        """``systemctl poweroff`` in the guest; seconds until qemu exited."""
        t0 = time.monotonic()
        self.send("systemctl poweroff\n")
        self.wait_exit(timeout)
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    # ------------------------------------------------------------------ console
    def send(self, text: str) -> None:
        assert self._sock is not None
        self._sock.sendall(text.encode())

    def expect(self, pattern: str, timeout: float) -> re.Match[str]:
        """Wait for ``pattern`` (regex) in the console output after the last match."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                text = self._buf[self._pos:].decode(errors="replace")
                m = rx.search(text)
                if m:
                    self._pos += len(text[:m.end()].encode(errors="replace"))
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None):
                    raise AssertionError(
                        f"no {pattern!r} on the console within {timeout} s:\n{self.tail()}")
                self._cond.wait(min(left, 1.0))

    def seen(self, pattern: str) -> re.Match[str] | None:
        with self._cond:
            return re.search(pattern, self._buf.decode(errors="replace"))

    def login(self, timeout: float = 300) -> float:
        """Log in as root on the serial console; seconds since start."""
        self.expect(r"login: ", timeout)
        self.send("root\n")
        self.expect(r"Password: ", 60)
        self.send(ROOT_PASSWORD + "\n")
        self.expect(r"# ", 60)
        self.send("bind 'set enable-bracketed-paste off'\n")
        self.send(f"dmesg -n 1; stty -echo cols 500; export PS1='{PROMPT}' SYSTEMD_PAGER= SYSTEMD_COLORS=0\n")
        self.expect(re.escape(PROMPT), 60)
        return time.monotonic() - self.started

    def sh(self, script: str, timeout: float = 120, check: bool = True) -> tuple[int, str]:
        """Run ``script`` in a subshell of the logged-in shell: (exit status, output)."""
        token = f"{time.monotonic_ns():x}"
        self.send(f"echo __B{token}__; (\n{script}\n)\necho __E{token}_$?__\n")
        self.expect(f"__B{token}__\r?\n", timeout)
        m = self.expect(rf"([\s\S]*?)__E{token}_(\d+)__", timeout)
        self.expect(re.escape(PROMPT), 30)
        out = m.group(1).replace("\r\n", "\n").replace(PROMPT, "")
        rc = int(m.group(2))
        if check:
            assert rc == 0, f"`{script}` exited {rc}:\n{out}"
        return rc, out

    def tail(self, lines: int = 60) -> str:
        with self._cond:
            text = self._buf.decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
