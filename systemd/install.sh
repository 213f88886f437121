#!/usr/bin/env bash
# Install, upgrade, roll back or uninstall the community edge gateway on a box running systemd.
#
#   sudo ./install.sh                        # inside an unpacked bundle: offline from it
#   sudo systemd/install.sh --offline BUNDLE # BUNDLE: directory or .tar.gz from bundle.py
#   sudo systemd/install.sh                  # from the source tree, with the package index
#   sudo systemd/install.sh --rollback       # back to the previous version, restart
#   sudo systemd/install.sh --uninstall      # remove program and units; keep config, secrets, data
#   sudo systemd/install.sh --uninstall --purge   # ... and config, secrets, data and the user
#
# Transactional: everything is checked first (bundle checksums, Python version and
# architecture, free disk, the configuration with the new version's `edge-gateway check`,
# the ports the configuration listens on); the new version goes into its own venv,
# PREFIX/versions/<version>-<hash>/venv, and only then are the user, directories, secrets,
# config and units written, the symlink PREFIX/current switched and the service restarted.
# Any failure undoes all of it, the previous version keeps running, and one line
# `install.sh: error: ...` says what to fix. Running it again is a no-op apart from the
# restart. It never overwrites /etc/edge-gateway/gateway.toml (except with --config), and
# offline it never reaches a package index (PIP_NO_INDEX=1, wheels from the bundle only).
#
# Options:
#   --offline BUNDLE   install the bundle (no network); default when run from inside one
#   --config FILE      site configuration to install as /etc/edge-gateway/gateway.toml
#                      (checked first; the current one is kept as gateway.toml.bak)
#   --prefix DIR       program location (default /opt/edge-gateway)
#   --destdir DIR      install into a staging root (packaging, tests); nothing is started
#   --source DIR       project source tree (default: the tree holding this script)
#   --no-venv          do not install the program (it is managed elsewhere)
#   --check-bin PATH   edge-gateway executable for the check (default: the new version's)
#   --no-start         install and enable, but do not start (or restart) the service
#   --with-hwsim       also enable hwsim.service (lab boxes only)
#   --rollback         switch PREFIX/current back to the previous version and restart
#   --uninstall        remove; with --purge also config, secrets, state, logs and the user
#   -h, --help
set -euo pipefail
set -E

PREFIX=/opt/edge-gateway
DESTDIR=
SOURCE=
BUNDLE=
SITE_CONFIG=
MAKE_VENV=1
CHECK_BIN=
START=1
WITH_HWSIM=0
ROLLBACK=0
UNINSTALL=0
PURGE=0
SERVICE=edge-gateway
USER_NAME=edge-gateway

MAIN_PID=$$
TXN=
UNDO=()
FAILED=0

say() { echo "install.sh: $*"; }
warn() { echo "install.sh: warning: $*" >&2; }

# die MESSAGE: undo every change made so far, print the one error line, exit 1
die() {
    trap - ERR
    set +e
    # in a subshell ($(...), pipelines): leave the undo and the message to the main shell
    [ "$BASHPID" = "$MAIN_PID" ] || exit 1
    if [ "$FAILED" = 0 ]; then
        FAILED=1
        undo_all
        echo "install.sh: error: $*" >&2
    fi
    exit 1
}

on_err() {  # an unexpected failure (set -e): undo and say where
    die "unexpected failure at line $1 ($2, exit $3): nothing was changed; report this"
}
trap 'on_err "$LINENO" "$BASH_COMMAND" "$?"' ERR

cleanup() { if [ -n "$TXN" ] && [ -d "$TXN" ]; then rm -rf "$TXN"; fi; }
trap cleanup EXIT

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --offline) BUNDLE=${2:?--offline needs a bundle directory or tarball}; shift 2 ;;
        --offline=*) BUNDLE=${1#*=}; shift ;;
        --config) SITE_CONFIG=${2:?--config needs a file}; shift 2 ;;
        --config=*) SITE_CONFIG=${1#*=}; shift ;;
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
        --rollback) ROLLBACK=1; shift ;;
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
[ -z "$BUNDLE" ] || [ "$MAKE_VENV" = 1 ] || die "--offline and --no-venv exclude each other"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "$BUNDLE" ] && [ -z "$SOURCE" ] && [ -f "$HERE/MANIFEST" ] && [ -d "$HERE/wheels" ] \
        && [ "$MAKE_VENV" = 1 ]; then
    BUNDLE=$HERE            # run from inside an unpacked bundle
fi
SOURCE=${SOURCE:-$(dirname "$HERE")}

ROOT=$DESTDIR                           # "" on the live system
ETC=$ROOT/etc/edge-gateway
CREDS=$ETC/credentials
UNIT_DIR=$ROOT/etc/systemd/system
DROPIN_DIR=$UNIT_DIR/$SERVICE.service.d
SYSUSERS=$ROOT/etc/sysusers.d/$SERVICE.conf
TMPFILES=$ROOT/etc/tmpfiles.d/$SERVICE.conf
STATE=$ROOT/var/lib/edge-gateway
LOGS=$ROOT/var/log/edge-gateway
PFX=$ROOT$PREFIX
CURRENT=$PFX/current
PREVIOUS=$PFX/previous
PY=${PYTHON:-python3}

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
LIVE_SYSTEMD=0
if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
    LIVE_SYSTEMD=1
fi
if [ -z "$DESTDIR" ] && [ "$IS_ROOT" = 0 ]; then
    die "run as root (sudo $0 ...), or use --destdir for a staging install"
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

# --------------------------------------------------------------------------- the undo log
# Every change of the commit phase is preceded by a note of how to take it back; die() runs
# the notes newest first. Paths that did not exist are removed, files that did are restored
# byte for byte with their owner and mode, directories get their owner and mode back.
undo_push() { UNDO+=("$1"); }

undo_all() {
    local i
    for ((i = ${#UNDO[@]} - 1; i >= 0; i--)); do
        eval "${UNDO[i]}" >/dev/null 2>&1 || echo "install.sh: warning: undo failed: ${UNDO[i]}" >&2
    done
    UNDO=()
}

BACKUPS=0
track() {  # track PATH: note how to restore PATH (file, symlink or directory) as it is now
    local p=$1 q b
    q=$(printf '%q' "$p")
    if [ -L "$p" ] || [ -f "$p" ]; then
        BACKUPS=$((BACKUPS + 1))
        b=$TXN/backup/$BACKUPS
        mkdir -p "$TXN/backup"
        cp -a "$p" "$b"
        undo_push "rm -rf $q; cp -a $(printf '%q' "$b") $q"
    elif [ -d "$p" ]; then
        undo_push "chmod $(stat -c %a "$p") $q; chown $(stat -c %u:%g "$p") $q"
    else
        undo_push "rm -rf $q"
    fi
}

mkdir_t() {  # mkdir_t MODE DIR: create DIR and missing parents, each noted for undo
    local mode=$1 dir=$2 missing=() d
    d=$dir
    while [ ! -e "$d" ] && [ ! -L "$d" ]; do missing=("$d" "${missing[@]}"); d=$(dirname "$d"); done
    for d in "${missing[@]}"; do
        track "$d"
        mkdir -m 0755 "$d"
    done
    [ -d "$dir" ] || die "$dir exists and is not a directory: move it away"
    track "$dir"
    chmod "$mode" "$dir"
}

put() {  # put MODE SRC DEST: install a file, noted for undo (unchanged content: no backup)
    local mode=$1 src=$2 dest=$3
    if [ -f "$dest" ] && [ ! -L "$dest" ] && cmp -s "$src" "$dest"; then
        track "$dest"        # mode/owner may still change
        chmod "$mode" "$dest"
        return 0
    fi
    [ -d "$(dirname "$dest")" ] || mkdir_t 0755 "$(dirname "$dest")"
    track "$dest"
    cp "$src" "$dest.tmp.$$"
    chmod "$mode" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
}

link_t() {  # link_t TARGET LINK: point LINK at TARGET atomically, noted for undo
    local target=$1 link=$2
    if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then return 0; fi
    track "$link"
    ln -s "$target" "$link.new.$$"
    mv -Tf "$link.new.$$" "$link"
}

# --------------------------------------------------------------------------- uninstall
if [ "$UNINSTALL" = 1 ]; then
    trap - ERR
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
    case "$PFX" in /|"") die "refusing to remove prefix '$PFX'" ;; esac
    rm -rf "$PFX"
    if [ "$LIVE_SYSTEMD" = 1 ]; then
        systemctl daemon-reload
        systemctl reset-failed "$SERVICE.service" >/dev/null 2>&1 || true
    fi
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

TXN=$(mktemp -d "${TMPDIR:-/tmp}/edge-gateway-install.XXXXXX")

# run_check BIN CONFIG CREDS_DIR: edge-gateway check, its output shown on failure
run_check() {
    local bin=$1 config=$2 creds=$3
    if ! CREDENTIALS_DIRECTORY=$creds "$bin" check -c "$config" >"$TXN/check.log" 2>&1; then
        cat "$TXN/check.log" >&2
        return 1
    fi
}

service_state() {  # the service's state before we touch it: active / inactive / none
    if [ "$LIVE_SYSTEMD" = 1 ] && [ -f "$UNIT_DIR/$SERVICE.service" ]; then
        if systemctl is-active --quiet "$SERVICE.service"; then echo active; else echo inactive; fi
    else
        echo none
    fi
}

restart_or_die() {  # restart_or_die WHAT: restart and wait for READY, or undo everything
    local what=$1
    [ "$WITH_HWSIM" = 0 ] || systemctl restart hwsim.service || \
        die "hwsim.service did not start: journalctl -u hwsim; $what was undone"
    if ! systemctl restart "$SERVICE.service"; then
        systemctl --no-pager --lines=15 status "$SERVICE.service" >&2 || true
        die "$SERVICE.service did not start with $what: see journalctl -u $SERVICE; the previous state was restored"
    fi
}

# undo note that brings the service back to how it was (runs after files are restored)
restore_service() {  # restore_service STATE
    [ "$LIVE_SYSTEMD" = 1 ] || return 0
    systemctl daemon-reload
    case "$1" in
        active) systemctl restart "$SERVICE.service" ;;
        inactive) systemctl stop "$SERVICE.service"; systemctl reset-failed "$SERVICE.service" ;;
        none) systemctl stop "$SERVICE.service"; systemctl reset-failed "$SERVICE.service"; systemctl daemon-reload ;;
    esac
}

# --------------------------------------------------------------------------- rollback
if [ "$ROLLBACK" = 1 ]; then
    [ -L "$PREVIOUS" ] || die "no previous version under $PFX to roll back to (only one was ever installed)"
    prev=$(readlink "$PREVIOUS")
    cur=$(readlink "$CURRENT" 2>/dev/null || true)
    [ -x "$PFX/$prev/venv/bin/edge-gateway" ] || die "$PFX/$prev is incomplete: reinstall that bundle with --offline"
    [ -f "$ETC/gateway.toml" ] || die "no $ETC/gateway.toml: install first"
    run_check "$PFX/$prev/venv/bin/edge-gateway" "$ETC/gateway.toml" "$CREDS" || \
        die "$prev rejects $ETC/gateway.toml (see above): fix the config for that version first"
    before=$(service_state)
    undo_push "restore_service $before"
    link_t "$prev" "$CURRENT"
    [ -z "$cur" ] || link_t "$cur" "$PREVIOUS"
    say "switched $CURRENT to $prev${cur:+ (was $cur)}"
    if [ "$START" = 1 ] && [ "$LIVE_SYSTEMD" = 1 ]; then
        restart_or_die "$prev"
        say "restarted $SERVICE.service on $prev"
    fi
    exit 0
fi

# =========================================================================== 1. check
# Nothing on the box changes in this phase; what it needs goes into $TXN.

# --- what to install: an offline bundle, or a bundle built from the source tree
verify_bundle() {  # verify_bundle DIR: checksums and manifest of an unpacked bundle
    local dir=$1
    [ -f "$dir/MANIFEST" ] && [ -f "$dir/SHA256SUMS" ] && [ -d "$dir/wheels" ] || \
        die "$dir is not a bundle (no MANIFEST, SHA256SUMS or wheels/): build one with systemd/bundle.py"
    command -v sha256sum >/dev/null || die "sha256sum not found (apt-get install coreutils)"
    if ! (cd "$dir" && sha256sum --check --quiet --strict SHA256SUMS) >"$TXN/sums.log" 2>&1; then
        sed -n '1,5p' "$TXN/sums.log" >&2
        die "bundle $dir fails its SHA256SUMS (damaged or edited): copy it again from the build machine"
    fi
}
manifest() { sed -n "s/^$1=//p" "$BUNDLE_DIR/MANIFEST" | head -1; }

BUNDLE_DIR=
if [ -n "$BUNDLE" ]; then
    if [ -d "$BUNDLE" ]; then
        BUNDLE_DIR=$(cd "$BUNDLE" && pwd)
    elif [ -f "$BUNDLE" ]; then
        mkdir "$TXN/bundle"
        tar -xf "$BUNDLE" -C "$TXN/bundle" 2>"$TXN/tar.log" || \
            die "cannot unpack $BUNDLE ($(head -1 "$TXN/tar.log")): copy it again"
        BUNDLE_DIR=$(find "$TXN/bundle" -mindepth 2 -maxdepth 2 -name MANIFEST -printf '%h\n' | head -1)
        [ -n "$BUNDLE_DIR" ] || die "$BUNDLE holds no bundle (no MANIFEST): build one with systemd/bundle.py"
    else
        die "--offline $BUNDLE: no such bundle directory or tarball"
    fi
    verify_bundle "$BUNDLE_DIR"
    MODE=offline
elif [ "$MAKE_VENV" = 1 ]; then
    [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not the project tree (no pyproject.toml): use --offline BUNDLE or --source DIR"
    command -v "$PY" >/dev/null || die "$PY not found: apt-get install python3 python3-venv"
    say "online install: building a bundle from $SOURCE with the package index"
    "$PY" -m venv "$TXN/buildenv" >"$TXN/venv.log" 2>&1 || \
        die "cannot create a venv with $PY ($(tail -1 "$TXN/venv.log")): apt-get install python3-venv"
    if ! "$TXN/buildenv/bin/python" "$SOURCE/systemd/bundle.py" "$TXN/built" --source "$SOURCE" \
            --no-tar >"$TXN/bundle.log" 2>&1; then
        tail -15 "$TXN/bundle.log" >&2
        die "building the wheels from $SOURCE failed (no package index reachable?): build a bundle on a connected machine and use --offline"
    fi
    BUNDLE_DIR=$(find "$TXN/built" -mindepth 2 -maxdepth 2 -name MANIFEST -printf '%h\n' | head -1)
    verify_bundle "$BUNDLE_DIR"
    MODE=online
else
    MODE=no-venv
fi

if [ -n "$BUNDLE_DIR" ]; then
    UNITS_SRC=$BUNDLE_DIR/units
    EXAMPLE=$BUNDLE_DIR/gateway.toml.example
    DOCS=("$BUNDLE_DIR/README.md" "$BUNDLE_DIR/INSTALL.md")
    VERSION=$(manifest version)
    INSTALL_ID=$(manifest id)
    [ -n "$VERSION" ] && [ -n "$INSTALL_ID" ] || die "$BUNDLE_DIR/MANIFEST has no version/id: rebuild the bundle"
else
    UNITS_SRC=$SOURCE/systemd
    EXAMPLE=$SOURCE/gateway/examples/gateway.toml
    DOCS=("$SOURCE/README.md")
    [ -f "$SOURCE/pyproject.toml" ] || die "$SOURCE is not the project tree (no pyproject.toml): use --source DIR"
fi
for f in "$SERVICE.service" hwsim.service sysusers.d/$SERVICE.conf tmpfiles.d/$SERVICE.conf; do
    [ -f "$UNITS_SRC/$f" ] || die "missing $UNITS_SRC/$f: use a complete bundle or project tree"
done
[ -f "$EXAMPLE" ] || die "missing example configuration $EXAMPLE"
if [ -n "$SITE_CONFIG" ]; then
    [ -f "$SITE_CONFIG" ] || die "--config $SITE_CONFIG: no such file"
    SITE_CONFIG=$(cd "$(dirname "$SITE_CONFIG")" && pwd)/$(basename "$SITE_CONFIG")
fi

# --- tools
if ! command -v systemd-sysusers >/dev/null; then
    [ -z "$DESTDIR" ] || die "systemd-sysusers is needed for --destdir installs: apt-get install systemd"
    command -v useradd >/dev/null || die "neither systemd-sysusers nor useradd found: apt-get install systemd"
fi
command -v systemctl >/dev/null || die "systemctl not found: this installer needs systemd (apt-get install systemd)"

# --- Python version and architecture match the bundle
if [ -n "$BUNDLE_DIR" ]; then
    command -v "$PY" >/dev/null || die "$PY not found: apt-get install python3"
    here=$("$PY" -c 'import sys, platform; v = sys.version_info; print(f"cp{v[0]}{v[1]} {v[0]}.{v[1]} {platform.machine()}")') || \
        die "$PY does not run: apt-get install --reinstall python3"
    read -r here_tag here_ver here_arch <<<"$here"
    want_tag=$(manifest python_tag)
    want_arch=$(manifest arch)
    if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
        die "$PY is Python $here_ver; the gateway needs 3.11 or newer: install Debian 12 or later"
    fi
    [ "$here_tag" = "$want_tag" ] || die "the bundle is for Python ${want_tag#cp} ($want_tag) but $PY is $here_ver: build the bundle with Python $here_ver (bundle.py --python)"
    [ "$here_arch" = "$want_arch" ] || die "the bundle is for $want_arch but this box is $here_arch: build the bundle on a $here_arch machine"
    "$PY" -c 'import venv' 2>/dev/null || die "$PY has no venv module: apt-get install python3-venv"
fi

# --- free disk for the new venv (about 5x the wheels; measured 106 MB for 23 MB of wheels)
VERSION_DIR=
NEED_NEW_VENV=0
if [ -n "$BUNDLE_DIR" ]; then
    VERSION_DIR=$PFX/versions/$INSTALL_ID
    if [ -f "$VERSION_DIR/.complete" ] && [ "$(cat "$VERSION_DIR/.complete")" = "$INSTALL_ID" ] \
            && [ -x "$VERSION_DIR/venv/bin/edge-gateway" ]; then
        say "version $INSTALL_ID is already installed in $VERSION_DIR"
    else
        NEED_NEW_VENV=1
        [ ! -e "$VERSION_DIR" ] || die "$VERSION_DIR exists but is incomplete (an interrupted install?): remove it (rm -rf $VERSION_DIR) and run install.sh again"
        wheels_bytes=$(manifest wheels_bytes)
        need_kb=$(( ${wheels_bytes:-30000000} * 6 / 1024 + 32 * 1024 ))
        d=$PFX
        while [ ! -d "$d" ]; do d=$(dirname "$d"); done
        free_kb=$(df -Pk "$d" | awk 'NR == 2 { print $4 }')
        [ "$free_kb" -ge "$need_kb" ] || die "only $((free_kb / 1024)) MB free on $d, the new version needs $((need_kb / 1024)) MB: free some space (journalctl --vacuum-size=100M, apt-get clean) and run install.sh again"
    fi
fi

# --- the configuration that will be in force, and the secrets it may refer to
mkdir -m 0700 "$TXN/creds"
if [ -d "$CREDS" ]; then
    find "$CREDS" -maxdepth 1 -type f ! -name '*.tmp' -exec cp -p {} "$TXN/creds/" \;
fi
NEW_SECRETS=()
for name in privacy-key api-token; do
    if [ ! -s "$CREDS/$name" ]; then
        (umask 077; head -c 32 /dev/urandom | base64 | tr -d '\n=' > "$TXN/creds/$name")
        NEW_SECRETS+=("$name")
    fi
done
render_example() {  # the example, adapted to the box: buffer in the StateDirectory, credentials
    sed -e 's|^path = "buffer.db".*$|path = "/var/lib/edge-gateway/buffer.db"   # the StateDirectory|' \
        -e 's|^# *hmac_key = { credential = "privacy-key" }|hmac_key = { credential = "privacy-key" }|' \
        -e 's|^# *token = { env = "EDGE_GW_API_TOKEN" }.*$|token = { credential = "api-token" }|' \
        "$EXAMPLE"
}
if [ -n "$SITE_CONFIG" ]; then
    CONFIG_SRC=$SITE_CONFIG
    CONFIG_ACTION=replace
elif [ -f "$ETC/gateway.toml" ]; then
    CONFIG_SRC=$ETC/gateway.toml
    CONFIG_ACTION=keep
else
    render_example > "$TXN/gateway.toml"
    CONFIG_SRC=$TXN/gateway.toml
    CONFIG_ACTION=example
fi

# --- the new venv: a new directory of its own, nothing else is touched; removed on failure
if [ "$NEED_NEW_VENV" = 1 ]; then
    mkdir_t 0755 "$PFX/versions"
    track "$VERSION_DIR"
    mkdir -m 0755 "$VERSION_DIR"
    pip_whl=$(find "$BUNDLE_DIR/wheels" -maxdepth 1 -name 'pip-*.whl' | head -1)
    [ -n "$pip_whl" ] || die "the bundle has no pip wheel: rebuild it with systemd/bundle.py"
    say "installing $INSTALL_ID into $VERSION_DIR/venv (from the bundle's wheels only, no index)"
    [ -z "$DESTDIR" ] || warn "a venv under --destdir runs only where $DESTDIR exists (its scripts name that path and this box's $PY); for an image root run install.sh inside it (chroot ROOT /path/to/bundle/install.sh)"
    "$PY" -m venv --without-pip "$VERSION_DIR/venv" >"$TXN/venv.log" 2>&1 || \
        die "cannot create $VERSION_DIR/venv ($(tail -1 "$TXN/venv.log")): apt-get install python3-venv"
    if ! env PIP_NO_INDEX=1 PIP_FIND_LINKS="$BUNDLE_DIR/wheels" PIP_NO_CACHE_DIR=1 \
            PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CONFIG_FILE=/dev/null PIP_INDEX_URL= \
            PIP_EXTRA_INDEX_URL= PIP_REQUIRE_VIRTUALENV= PYTHONNOUSERSITE=1 \
            "$VERSION_DIR/venv/bin/python" "$pip_whl/pip" install --quiet --no-index \
            --find-links "$BUNDLE_DIR/wheels" --only-binary :all: \
            "edge-gateway==$VERSION" pip >"$TXN/pip.log" 2>&1; then
        tail -15 "$TXN/pip.log" >&2
        die "installing the wheels into $VERSION_DIR/venv failed (see above): rebuild the bundle for this box"
    fi
    cp "$BUNDLE_DIR/MANIFEST" "$VERSION_DIR/MANIFEST"
    echo "$INSTALL_ID" > "$VERSION_DIR/.complete"
fi
if [ -n "$VERSION_DIR" ]; then
    CHECK_BIN=${CHECK_BIN:-$VERSION_DIR/venv/bin/edge-gateway}
else
    CHECK_BIN=${CHECK_BIN:-$PFX/current/venv/bin/edge-gateway}
fi

# --- edge-gateway check of that configuration, by the version about to run it
if [ -x "$CHECK_BIN" ]; then
    run_check "$CHECK_BIN" "$CONFIG_SRC" "$TXN/creds" || \
        die "edge-gateway check failed for $CONFIG_SRC (errors above): fix it, then run install.sh again"
    say "edge-gateway check passed for $CONFIG_SRC"
elif [ "$START" = 1 ]; then
    die "no $CHECK_BIN to check the configuration with: refusing to start an unchecked configuration (use --no-start, or drop --no-venv)"
else
    warn "no $CHECK_BIN: configuration not checked"
fi

# --- the ports the configuration listens on are free (or held by the running gateway)
if [ "$START" = 1 ] && [ "$LIVE_SYSTEMD" = 1 ]; then
    main_pid=$(systemctl show -p MainPID --value "$SERVICE.service" 2>/dev/null || echo 0)
    if ! "$PY" - "$CONFIG_SRC" "${main_pid:-0}" >"$TXN/ports.log" 2>&1 <<'PY'
import errno, os, socket, sys, tomllib

config, main_pid = sys.argv[1], int(sys.argv[2])

def listens(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else k
            if k == "listen" and isinstance(v, str):
                yield p, v
            else:
                yield from listens(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from listens(v, f"{path}[{i}]")

def owners(port):
    inodes = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(name).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":
                inodes.add(f[9])
    pids = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    pids.add(int(pid))
        except OSError:
            continue
    return pids

with open(config, "rb") as fh:
    doc = tomllib.load(fh)
bad = []
for where, value in listens(doc):
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    port = int(port_s)
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            bad.append(f"{where} = {value!r}: {exc.strerror}")
            continue
        pids = owners(port)
        if main_pid and main_pid in pids:
            continue            # the running gateway: the restart frees it
        who = ", ".join(f"PID {p} ({open(f'/proc/{p}/comm').read().strip()})" for p in sorted(pids))
        bad.append(f"port {port} ({where} = {value!r}) is in use by {who or 'another process'}")
    finally:
        s.close()
if bad:
    print("; ".join(bad))
    sys.exit(1)
PY
    then
        die "$(tail -1 "$TXN/ports.log"): stop that process or change the port in $CONFIG_SRC"
    fi
fi

# =========================================================================== 2. commit
# From here every change is noted in the undo log; a failure restores the box.
BEFORE=$(service_state)
undo_push "restore_service $BEFORE"

# 1. the system user (dialout: serial ports); the user databases are restored on failure
for db in passwd group shadow gshadow; do
    track "$ROOT/etc/$db"
    track "$ROOT/etc/$db-"
done
track "$ROOT/etc/.pwd.lock"
mkdir_t 0755 "$ROOT/etc/sysusers.d"
mkdir_t 0755 "$ROOT/etc/tmpfiles.d"
put 0644 "$UNITS_SRC/sysusers.d/$SERVICE.conf" "$SYSUSERS"
if command -v systemd-sysusers >/dev/null; then
    if [ -n "$DESTDIR" ]; then
        systemd-sysusers --root="$DESTDIR" "$SYSUSERS" >"$TXN/sysusers.log" 2>&1 || \
            die "systemd-sysusers failed: $(tail -1 "$TXN/sysusers.log")"
    else
        systemd-sysusers "$SYSUSERS" >"$TXN/sysusers.log" 2>&1 || \
            die "systemd-sysusers failed: $(tail -1 "$TXN/sysusers.log")"
    fi
elif ! lookup_id passwd "$USER_NAME" >/dev/null; then
    useradd --system --home-dir /var/lib/edge-gateway --shell /usr/sbin/nologin \
        --user-group --groups dialout --comment "Community edge gateway" "$USER_NAME" || \
        die "useradd $USER_NAME failed"
fi
lookup_id passwd "$USER_NAME" >/dev/null || die "user $USER_NAME was not created: check $ROOT/etc/passwd"
say "user $USER_NAME ready (member of dialout)"

# 2. directories: config (root:edge-gateway 0750), secrets (root 0700), state, logs
put 0644 "$UNITS_SRC/tmpfiles.d/$SERVICE.conf" "$TMPFILES"
for d in "$ETC" "$ETC/profiles" "$STATE" "$LOGS"; do mkdir_t 0750 "$d"; done
mkdir_t 0700 "$CREDS"
own root "$USER_NAME" "$ETC" "$ETC/profiles"
own root root "$CREDS"
own "$USER_NAME" "$USER_NAME" "$STATE" "$LOGS"

# 3. secrets: generated once, never overwritten, 0600 root (systemd hands them over)
for name in "${NEW_SECRETS[@]}"; do
    track "$CREDS/$name"
    cp -p "$TXN/creds/$name" "$CREDS/$name"
    say "generated secret $name"
done
secret_files=$(find "$CREDS" -maxdepth 1 -type f)
while IFS= read -r f; do
    [ -n "$f" ] || continue
    track "$f"
    chmod 0600 "$f"
    [ "$IS_ROOT" = 0 ] || chown 0:0 "$f"
done <<<"$secret_files"

# 4. configuration: the example on first install, --config when given, else kept
case "$CONFIG_ACTION" in
    example)
        put 0640 "$CONFIG_SRC" "$ETC/gateway.toml"
        say "wrote example configuration $ETC/gateway.toml: edit it for this site" ;;
    replace)
        if [ -f "$ETC/gateway.toml" ] && ! cmp -s "$CONFIG_SRC" "$ETC/gateway.toml"; then
            put 0640 "$ETC/gateway.toml" "$ETC/gateway.toml.bak"
            own root "$USER_NAME" "$ETC/gateway.toml.bak"
        fi
        put 0640 "$CONFIG_SRC" "$ETC/gateway.toml"
        say "installed $SITE_CONFIG as $ETC/gateway.toml" ;;
    keep)
        track "$ETC/gateway.toml"
        chmod 0640 "$ETC/gateway.toml"
        say "kept existing $ETC/gateway.toml" ;;
esac
own root "$USER_NAME" "$ETC/gateway.toml"

# 5. the program: PREFIX/current -> versions/<id>, the one before kept as PREFIX/previous
mkdir_t 0755 "$PFX"
for doc in "${DOCS[@]}"; do
    if [ -f "$doc" ]; then put 0644 "$doc" "$PFX/$(basename "$doc")"; fi
done
OLD_CURRENT=
if [ -n "$VERSION_DIR" ]; then
    OLD_CURRENT=$(readlink "$CURRENT" 2>/dev/null || true)
    if [ "$OLD_CURRENT" != "versions/$INSTALL_ID" ]; then
        link_t "versions/$INSTALL_ID" "$CURRENT"
        [ -z "$OLD_CURRENT" ] || link_t "$OLD_CURRENT" "$PREVIOUS"
        say "switched $CURRENT to versions/$INSTALL_ID${OLD_CURRENT:+ (previous: $OLD_CURRENT)}"
    fi
fi

# 6. units, and a drop-in with one LoadCredential= per extra secret file
sed "s|/opt/edge-gateway|$PREFIX|g" "$UNITS_SRC/$SERVICE.service" > "$TXN/$SERVICE.service"
sed "s|/opt/edge-gateway|$PREFIX|g" "$UNITS_SRC/hwsim.service" > "$TXN/hwsim.service"
put 0644 "$TXN/$SERVICE.service" "$UNIT_DIR/$SERVICE.service"
put 0644 "$TXN/hwsim.service" "$UNIT_DIR/hwsim.service"
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
} > "$TXN/credentials.conf"
put 0644 "$TXN/credentials.conf" "$DROPIN_DIR/credentials.conf"

# 7. enable (and restart on the new version)
if [ "$LIVE_SYSTEMD" = 1 ]; then
    systemctl daemon-reload
    if command -v systemd-tmpfiles >/dev/null; then
        systemd-tmpfiles --create "$TMPFILES" >/dev/null 2>&1 || true
    fi
fi
enable_t() {  # enable_t UNIT: systemctl enable, the wants/ link noted for undo
    local wants=$UNIT_DIR/multi-user.target.wants
    [ -e "$wants" ] || mkdir_t 0755 "$wants"
    track "$wants/$1"
    systemctl_ enable "$1" >/dev/null 2>&1 || die "systemctl enable $1 failed"
}
enable_t "$SERVICE.service"
[ "$WITH_HWSIM" = 0 ] || enable_t hwsim.service
say "enabled $SERVICE.service"
if [ "$START" = 1 ] && [ "$LIVE_SYSTEMD" = 1 ]; then
    restart_or_die "${INSTALL_ID:-this install}"
    say "started $SERVICE.service (${INSTALL_ID:-$MODE}): systemctl status $SERVICE; journalctl -u $SERVICE -f"
elif [ "$START" = 1 ] && [ -z "$DESTDIR" ]; then
    warn "systemd is not running: not started"
fi

# =========================================================================== 3. tidy up
# Done: the undo log is dropped; failures from here on are warnings only.
UNDO=()
trap - ERR
set +e
if [ -n "$VERSION_DIR" ]; then
    keep_cur=$(readlink "$CURRENT" 2>/dev/null)
    keep_prev=$(readlink "$PREVIOUS" 2>/dev/null)
    for v in "$PFX"/versions/*; do
        [ -d "$v" ] || continue
        rel=versions/$(basename "$v")
        if [ "$rel" != "$keep_cur" ] && [ "$rel" != "$keep_prev" ]; then
            rm -rf "$v" && say "removed old version $rel"
        fi
    done
    if [ -d "$PFX/venv" ]; then   # the single venv of installers before versions/
        rm -rf "$PFX/venv" "$PFX/check.log" && say "removed the old-layout venv $PFX/venv"
    fi
fi
exit 0
