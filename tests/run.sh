#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh Debian machine and run it.
#   bash tests/run.sh            # the whole suite (what CI runs)
#   bash tests/run.sh tests/core # any pytest arguments
#   bash tests/run.sh --boot     # the whole suite and the machine boot of the disk image under
#                                # qemu (opt-in: about 5 more minutes; tests/boot/test_qemu.py)
set -euo pipefail
cd "$(dirname "$0")/.."

BOOT=0
if [ "${1:-}" = "--boot" ]; then BOOT=1; shift; export EDGE_GW_BOOT_QEMU=1; fi

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v socat >/dev/null 2>&1 || need_apt+=(socat)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
# a second MQTT broker implementation for tests/conformance
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
# the boot test: a Debian root built with mmdebstrap, booted with systemd-nspawn
command -v mmdebstrap >/dev/null 2>&1 || need_apt+=(mmdebstrap)
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
if [ "$BOOT" = 1 ]; then  # the disk image and its qemu boot
  command -v qemu-system-x86_64 >/dev/null 2>&1 || need_apt+=(qemu-system-x86)
  command -v sfdisk >/dev/null 2>&1 || need_apt+=(fdisk)
  command -v mkfs.vfat >/dev/null 2>&1 || need_apt+=(dosfstools)
  command -v mcopy >/dev/null 2>&1 || need_apt+=(mtools)
  [ -e /usr/lib/syslinux/mbr/mbr.bin ] || need_apt+=(syslinux syslinux-common)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "installing ${need_apt[*]} (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e '.[test]'
if [ $# -eq 0 ]; then
  # what the boot and install tests take from the network is fetched here, not by a test:
  # the Debian root and the offline bundle's wheels (cached under /tmp/edge-build)
  .venv/bin/python -m tests.boot.prepare
  # the whole suite starts with the linters
  .venv/bin/ruff check .
  .venv/bin/mypy
fi

set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests"; exit 0
fi
exit $rc
