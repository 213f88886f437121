#!/usr/bin/env bash
# Install (or uninstall) the community edge gateway on an edge box running systemd.
#
#   sudo systemd/install.sh                 # venv in /opt/edge-gateway, user, config, units, start
#   sudo systemd/install.sh --uninstall     # remove program and units; keep config, secrets, data
#   sudo systemd/install.sh --uninstall --purge   # ... and config, secrets, data and the user
#
# Idempotent: running it again upgrades the program and units and keeps the configuration,
# the secrets and the buffer. It never overwrites /etc/edge-gateway/gateway.toml.
#
# Options:
#   --prefix DIR       program location (default /opt/edge-gateway; the venv is DIR/venv)
#   --destdir DIR      install into a staging root (packaging, tests); nothing is started
#   --source DIR       project source tree to install (default: the tree holding this script)
#   --no-venv          do not create the venv / pip install (it is managed elsewhere)
#   --check-bin PATH   edge-gateway executable for the pre-start check
#                      (default PREFIX/venv/bin/edge-gateway)
#   --no-start         install and enable, but do not start (or restart) the service
#   --with-hwsim       also enable hwsim.service (lab boxes only)
#   --uninstall        remove; with --purge also config, secrets, state, logs and the user
#   -h, --help
set -euo pipefail

PREFIX=/opt/edge-gateway
DESTDIR=
SOURCE=
MAKE_VENV=1
CHECK_BIN=
START=1
WITH_HWSIM=0
UNINSTALL=0
PURGE=0
SERVICE=edge-gateway
USER_NAME=edge-gateway

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "install.sh: $*"; }
warn() { echo "install.sh: warning: $*" >&2; }

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --destdir) DESTDIR=${2:?--destdir needs a directory}; shift 2 ;;
        --destdir=*) DESTDIR=${1#*=}; shift ;;
        --source) SOURCE=${2:?--source needs a directory}; shift 2 ;;
        --source=*) SOURCE=${1#*=}; shift ;;
        --check-bin) CHECK_BIN=${2:?--check-bin needs a path}; shift 2 ;;
        --check-bin=*) CHECK_BIN=${1#*=}; shift ;;
        --no-venv) MAKE_VENV=0; shift ;;
        --no-start) START=0; shift ;;
        --with-hwsim) WITH_HWSIM=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

case "$PREFIX" in /*) ;; *) die "--prefix must be an absolute path" ;; esac
PREFIX=${PREFIX%/}
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    [ "$DESTDIR" != / ] || DESTDIR=
fi
[ "$PURGE" = 0 ] || [ "$UNINSTALL" = 1 ] || die "--purge only goes with --uninstall"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SOURCE=${SOURCE:-$(dirname "$HERE")}
UNITS_SRC=$SOURCE/systemd

ROOT=$DESTDIR                           # "" on the live system
ETC=$ROOT/etc/edge-gateway
CREDS=$ETC/credentials
UNIT_DIR=$ROOT/etc/systemd/system
DROPIN_DIR=$UNIT_DIR/$SERVICE.service.d
SYSUSERS=$ROOT/etc/sysusers.d/$SERVICE.conf
TMPFILES=$ROOT/etc/tmpfiles.d/$SERVICE.conf
STATE=$ROOT/var/lib/edge-gateway
LOGS=$ROOT/var/log/edge-gateway
VENV=$ROOT$PREFIX/venv
CHECK_BIN=${CHECK_BIN:-$VENV/bin/edge-gateway}

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
LIVE_SYSTEMD=0
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    LIVE_SYSTEMD=1
fi
if [ -z "$DESTDIR" ] && [ "$IS_ROOT" = 0 ]; then
    die "run as root (or use --destdir for a staging install)"
fi

systemctl_() {  # systemctl on the live system, or offline against the staging root
    if [ -n "$DESTDIR" ]; then
        systemctl --root="$DESTDIR" "$@"
    elif [ "$LIVE_SYSTEMD" = 1 ]; then
        systemctl "$@"
    else
        systemctl "$@" 2>/dev/null || warn "systemctl $* failed (systemd not running?)"
    fi
}

# uid/gid of a user/group in the target root (numeric: the staging root has its own db)
lookup_id() {  # lookup_id passwd|group NAME
    local file=$ROOT/etc/$1
    if [ "$2" = root ]; then echo 0; return 0; fi
    [ -f "$file" ] || return 1
    awk -F: -v n="$2" '$1 == n { print $3; found = 1 } END { exit !found }' "$file"
}

own() {  # own OWNER GROUP PATH... (names resolved in the target root; skipped if not root)
    local owner=$1 group=$2 uid gid
    shift 2
    [ "$IS_ROOT" = 1 ] || return 0
    uid=$(lookup_id passwd "$owner") || die "user $owner not found in $ROOT/etc/passwd"
    gid=$(lookup_id group "$group") || die "group $group not found in $ROOT/etc/group"
    chown "$uid:$gid" "$@"
}

# --------------------------------------------------------------------------- uninstall
if [ "$UNINSTALL" = 1 ]; then
    for unit in "$SERVICE.service" hwsim.service; do
        if [ -f "$UNIT_DIR/$unit" ]; then
            if [ "$LIVE_SYSTEMD" = 1 ]; then
                systemctl disable --now "$unit" >/dev/null 2>&1 || true
            elif [ -n "$DESTDIR" ]; then
                systemctl --root="$DESTDIR" disable "$unit" >/dev/null 2>&1 || true
            fi
            rm -f "$UNIT_DIR/$unit"
        fi
    done
    rm -rf "$DROPIN_DIR"
    rm -f "$SYSUSERS" "$TMPFILES"
    rm -rf "${ROOT:?}$PREFIX"
    if [ "$LIVE_SYSTEMD" = 1 ]; then systemctl daemon-reload; fi
    if [ "$PURGE" = 1 ]; then
        rm -rf "$ETC" "$STATE" "$LOGS"
        if lookup_id passwd "$USER_NAME" >/dev/null; then
            if [ -n "$DESTDIR" ]; then
                userdel --prefix "$DESTDIR" "$USER_NAME" >/dev/null 2>&1 || \
                    warn "could not remove user $USER_NAME from $DESTDIR"
            else
                userdel "$USER_NAME" || warn "could not remove user $USER_NAME"
            fi
        fi
        say "removed program, units, configuration, secrets, buffer, logs and user"
    else
        say "removed program and units; kept $ETC (config, secrets) and $STATE (buffer)"
        say "use --uninstall --purge to remove those too"
    fi
    exit 0
fi

# --------------------------------------------------------------------------- install
for f in "$SERVICE.service" hwsim.service sysusers.d/$SERVICE.conf tmpfiles.d/$SERVICE.conf; do
    [ -f "$UNITS_SRC/$f" ] || die "missing $UNITS_SRC/$f (is --source a project tree?)"
done
EXAMPLE=$SOURCE/gateway/examples/gateway.toml
[ -f "$EXAMPLE" ] || die "missing example configuration $EXAMPLE"
[ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not the project tree (no pyproject.toml)"

# 1. the system user (dialout: serial ports)
install -d -m 0755 "$ROOT/etc/sysusers.d" "$ROOT/etc/tmpfiles.d"
install -m 0644 "$UNITS_SRC/sysusers.d/$SERVICE.conf" "$SYSUSERS"
if command -v systemd-sysusers >/dev/null; then
    if [ -n "$DESTDIR" ]; then
        install -d -m 0755 "$ROOT/etc"
        systemd-sysusers --root="$DESTDIR" "$SYSUSERS"
    else
        systemd-sysusers "$SYSUSERS"
    fi
elif ! lookup_id passwd "$USER_NAME" >/dev/null; then
    [ -z "$DESTDIR" ] || die "systemd-sysusers is needed for --destdir installs"
    useradd --system --home-dir /var/lib/edge-gateway --shell /usr/sbin/nologin \
        --user-group --groups dialout --comment "Community edge gateway" "$USER_NAME"
fi
lookup_id passwd "$USER_NAME" >/dev/null || die "user $USER_NAME was not created"
say "user $USER_NAME ready (member of dialout)"

# 2. directories: config (root:edge-gateway 0750), secrets (root 0700), state, logs
install -m 0644 "$UNITS_SRC/tmpfiles.d/$SERVICE.conf" "$TMPFILES"
install -d -m 0750 "$ETC" "$ETC/profiles" "$STATE" "$LOGS"
install -d -m 0700 "$CREDS"
chmod 0750 "$ETC" "$ETC/profiles" "$STATE" "$LOGS"
chmod 0700 "$CREDS"
own root "$USER_NAME" "$ETC" "$ETC/profiles"
own root root "$CREDS"
own "$USER_NAME" "$USER_NAME" "$STATE" "$LOGS"

# 3. secrets: generated once, never overwritten, 0600 root (systemd hands them over)
new_secret() {  # new_secret NAME
    local f=$CREDS/$1
    if [ ! -s "$f" ]; then
        (umask 077; head -c 32 /dev/urandom | base64 | tr -d '\n=' > "$f.tmp" && mv "$f.tmp" "$f")
        say "generated secret $1"
    fi
}
new_secret privacy-key
new_secret api-token
find "$CREDS" -maxdepth 1 -type f -exec chmod 0600 {} +
if [ "$IS_ROOT" = 1 ]; then
    find "$CREDS" -maxdepth 1 -type f -exec chown 0:0 {} +
fi

# 4. configuration: a commented example on first install only
if [ ! -f "$ETC/gateway.toml" ]; then
    sed -e 's|^path = "buffer.db".*$|path = "/var/lib/edge-gateway/buffer.db"   # the StateDirectory|' \
        -e 's|^# *hmac_key = { credential = "privacy-key" }|hmac_key = { credential = "privacy-key" }|' \
        -e 's|^# *token = { env = "EDGE_GW_API_TOKEN" }.*$|token = { credential = "api-token" }|' \
        "$EXAMPLE" > "$ETC/gateway.toml.tmp"
    mv "$ETC/gateway.toml.tmp" "$ETC/gateway.toml"
    say "wrote example configuration $ETC/gateway.toml: edit it for this site"
else
    say "kept existing $ETC/gateway.toml"
fi
chmod 0640 "$ETC/gateway.toml"
own root "$USER_NAME" "$ETC/gateway.toml"

# 5. the program: a venv under PREFIX with the project installed from SOURCE
install -d -m 0755 "$ROOT$PREFIX"
for doc in README.md LICENSE; do
    if [ -f "$SOURCE/$doc" ]; then install -m 0644 "$SOURCE/$doc" "$ROOT$PREFIX/$doc"; fi
done
if [ "$MAKE_VENV" = 1 ]; then
    PY=${PYTHON:-python3}
    command -v "$PY" >/dev/null || die "$PY not found (apt-get install python3 python3-venv)"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV" || die "cannot create $VENV (apt-get install python3-venv)"
    fi
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --upgrade "$SOURCE"
    say "installed $("$VENV/bin/edge-gateway" version 2>/dev/null | head -1 || echo edge-gateway) in $VENV"
fi

# 6. units, and a drop-in with one LoadCredential= per extra secret file
install -d -m 0755 "$UNIT_DIR" "$DROPIN_DIR"
sed "s|/opt/edge-gateway|$PREFIX|g" "$UNITS_SRC/$SERVICE.service" > "$UNIT_DIR/$SERVICE.service.tmp"
mv "$UNIT_DIR/$SERVICE.service.tmp" "$UNIT_DIR/$SERVICE.service"
sed "s|/opt/edge-gateway|$PREFIX|g" "$UNITS_SRC/hwsim.service" > "$UNIT_DIR/hwsim.service.tmp"
mv "$UNIT_DIR/hwsim.service.tmp" "$UNIT_DIR/hwsim.service"
chmod 0644 "$UNIT_DIR/$SERVICE.service" "$UNIT_DIR/hwsim.service"
{
    echo "# Written by install.sh from the files in /etc/edge-gateway/credentials/; rerun it"
    echo "# after adding a secret there. privacy-key and api-token are in the unit itself."
    echo "[Service]"
    find "$CREDS" -maxdepth 1 -type f -printf '%f\n' | LC_ALL=C sort | while read -r name; do
        case "$name" in
            privacy-key|api-token|*.tmp) ;;
            *[!A-Za-z0-9._-]*) warn "skipping credential with unusual name: $name" ;;
            *) echo "LoadCredential=$name:/etc/edge-gateway/credentials/$name" ;;
        esac
    done
} > "$DROPIN_DIR/credentials.conf"
chmod 0644 "$DROPIN_DIR/credentials.conf"

# 7. check the configuration before (re)starting anything
if [ -x "$CHECK_BIN" ]; then
    if ! CREDENTIALS_DIRECTORY=$CREDS "$CHECK_BIN" check -c "$ETC/gateway.toml" >"$ROOT$PREFIX/check.log" 2>&1; then
        cat "$ROOT$PREFIX/check.log" >&2
        die "edge-gateway check failed for $ETC/gateway.toml: fix it, then run install.sh again"
    fi
    say "edge-gateway check passed"
else
    warn "no $CHECK_BIN: configuration not checked"
    [ "$START" = 0 ] || die "refusing to start an unchecked configuration (use --no-start)"
fi

# 8. enable (and start)
if [ "$LIVE_SYSTEMD" = 1 ]; then
    systemctl daemon-reload
    command -v systemd-tmpfiles >/dev/null && systemd-tmpfiles --create "$TMPFILES" || true
fi
systemctl_ enable "$SERVICE.service" >/dev/null
if [ "$WITH_HWSIM" = 1 ]; then
    systemctl_ enable hwsim.service >/dev/null
fi
say "enabled $SERVICE.service"
if [ "$START" = 1 ] && [ "$LIVE_SYSTEMD" = 1 ]; then
    [ "$WITH_HWSIM" = 0 ] || systemctl restart hwsim.service
    systemctl restart "$SERVICE.service"
    say "started $SERVICE.service: systemctl status $SERVICE; journalctl -u $SERVICE -f"
elif [ "$START" = 1 ] && [ -z "$DESTDIR" ]; then
    warn "systemd is not running: not started"
fi
exit 0
