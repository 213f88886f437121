#!/usr/bin/env bash
# The demo: a simulated community of 12 buildings, the edge gateway and a simulated city
# platform, all on this machine (loopback and pseudo-terminals), with a live terminal view.
#   bash hardware-sim/demo.sh                    # ~90 s of live data, then the verdict
#   bash hardware-sim/demo.sh --outage 30        # cut the uplink for 30 s mid-demo
#   bash hardware-sim/demo.sh --duration 300 --outage 60 --no-live
# Installs what it needs first (mosquitto with apt-get, a .venv with the project); safe to
# run again. Exit code 0 only when the platform is missing no record.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  echo "installing mosquitto (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PY" -m venv .venv
fi
# (re)install when the project's dependencies changed since the last install
STAMP=.venv/.edge-gateway-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || ! .venv/bin/python -c "import gateway, hwsim, rich" >/dev/null 2>&1; then
  echo "installing the project into .venv (pip install -e .)"
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -e .
  touch "$STAMP"
fi

exec .venv/bin/python -m hwsim demo "$@"
