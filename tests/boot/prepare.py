"""Build, before the tests run, what the boot and install tests use from the network: the
Debian root (mmdebstrap, from the host's apt mirror) and the dependency wheels of the
offline bundle, and with ``EDGE_GW_BOOT_QEMU=1`` the flashable disk image the qemu test
boots. ``tests/run.sh`` calls this during setup, so the tests themselves reach nothing but
loopback; without it they build what is missing on first use.

    .venv/bin/python -m tests.boot.prepare
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest


def main() -> int:
    from tests.boot import nspawn, qemu
    from tests.support.ops_systemd import build_bundle

    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edge-bundle-") as tmp:
        bundle_dir, _ = build_bundle(Path(tmp))  # fills $EDGE_BUILD_CACHE/wheel-cache
        print(f"prepare: bundle wheels cached ({time.monotonic() - t0:.1f} s)")
        if os.environ.get("EDGE_GW_BOOT_QEMU") == "1" and os.geteuid() == 0:
            t0 = time.monotonic()
            try:
                qemu.require_tools()
                image, _ = qemu.build_image(bundle_dir)
            except pytest.skip.Exception as exc:
                print(f"prepare: no disk image: {exc}")
            else:
                print(f"prepare: disk image {image} ({time.monotonic() - t0:.1f} s)")
    if os.geteuid() != 0:
        print("prepare: not root, the boot test will skip; no Debian root built")
        return 0
    t0 = time.monotonic()
    try:
        nspawn.require_tools()
        tarball = nspawn.root_tarball()
    except pytest.skip.Exception as exc:
        print(f"prepare: no Debian root: {exc}")
        return 0
    print(f"prepare: Debian root {tarball} ({time.monotonic() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
