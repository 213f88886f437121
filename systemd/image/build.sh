#!/usr/bin/env bash
# Build a flashable Debian 12 (bookworm) amd64 raw disk image of the edge gateway.
#
#   sudo systemd/image/build.sh OUT.img [--bundle DIR|TARBALL] [--config gateway.toml]
#
# Layout (MBR, BIOS boot, no loop devices or mounts needed to build it):
#   partition 1  FAT, label EDGE-CONFIG, bootable: syslinux, vmlinuz, initrd.img, and where an
#                installer drops gateway.toml and credentials/ from a laptop
#   partition 2  ext4, label edge-root: mmdebstrap minbase + systemd, udev, python3, the
#                cloud kernel, the gateway installed from the offline bundle (chroot), the unit
#                enabled, edge-config.service applying partition 1 before the gateway starts
#
# The Debian mirror is the one this machine's apt uses for bookworm (override: --mirror).
#
# Options:
#   --bundle DIR|TARBALL  the offline bundle (systemd/bundle.py); default: build one from
#                         this tree (needs the package index or --wheel-cache)
#   --wheel-cache DIR     passed to bundle.py when it builds the bundle
#   --config FILE         site configuration to install (checked in the image root); without
#                         it the example is installed and the status says so until a
#                         gateway.toml on EDGE-CONFIG replaces it
#   --size SIZE           whole image size (default: what the root needs + 1GiB), e.g. 4G
#   --boot-size MIB       size of the EDGE-CONFIG partition in MiB (default 128)
#   --mirror URL          Debian mirror (default: the host apt's; its $SUITE-updates and
#                         $SUITE-security sources are used too when the host has them)
#   --root-password-hash HASH   crypt(3) hash for root (console login); default: locked
#   --hostname NAME       default edge-gateway
#   --cmdline ARGS        extra kernel command line
#   --keep-root DIR       leave the image root directory at DIR (for inspection)
#   -h, --help
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SUITE=bookworm
ARCH=amd64
PACKAGES=systemd,systemd-sysv,udev,dbus,python3,linux-image-cloud-amd64,initramfs-tools,e2fsprogs,dosfstools,util-linux,mount
OUT=
BUNDLE=
WHEEL_CACHE=
CONFIG=
SIZE=
BOOT_MIB=128
MIRROR=
ROOT_HASH=
HOSTNAME_=edge-gateway
CMDLINE=
KEEP_ROOT=
WORK=

say() { echo "build.sh: $*"; }
die() { echo "build.sh: error: $*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case $1 in
        --bundle) BUNDLE=${2:?--bundle needs a directory or tarball}; shift 2 ;;
        --wheel-cache) WHEEL_CACHE=${2:?}; shift 2 ;;
        --config) CONFIG=${2:?--config needs a file}; shift 2 ;;
        --size) SIZE=${2:?}; shift 2 ;;
        --boot-size) BOOT_MIB=${2:?}; shift 2 ;;
        --mirror) MIRROR=${2:?}; shift 2 ;;
        --root-password-hash) ROOT_HASH=${2:?}; shift 2 ;;
        --hostname) HOSTNAME_=${2:?}; shift 2 ;;
        --cmdline) CMDLINE=${2:?}; shift 2 ;;
        --keep-root) KEEP_ROOT=${2:?}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) [ -z "$OUT" ] || die "one output image only (got $OUT and $1)"; OUT=$1; shift ;;
    esac
done
[ -n "$OUT" ] || die "usage: build.sh OUT.img [--bundle DIR] [--config gateway.toml] (see --help)"
[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap builds the root as root, the installer runs in a chroot)"
[ -z "$CONFIG" ] || [ -f "$CONFIG" ] || die "no configuration file $CONFIG"
[[ $BOOT_MIB =~ ^[0-9]+$ ]] && [ "$BOOT_MIB" -ge 48 ] || die "--boot-size is MiB, at least 48"
for tool in mmdebstrap:mmdebstrap mke2fs:e2fsprogs sfdisk:fdisk mkfs.vfat:dosfstools \
            mcopy:mtools syslinux:syslinux python3:python3 unshare:util-linux; do
    command -v "${tool%%:*}" >/dev/null || die "${tool%%:*} missing: apt-get install ${tool#*:}"
done
SYSLINUX_MBR=/usr/lib/syslinux/mbr/mbr.bin
[ -f "$SYSLINUX_MBR" ] || die "$SYSLINUX_MBR missing: apt-get install syslinux-common"
[ "$(uname -m)" = x86_64 ] || die "amd64 images are built on x86_64 only (no foreign-architecture build)"

host_mirror() {  # the URI apt uses for suite $1 main (one-line or deb822 sources)
    local f SUITE=$1
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk -v s="$SUITE" '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i+1) == s) { for (j = i + 2; j <= NF; j++) if ($j == "main") { print $i; exit } } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk -v s="$SUITE" 'BEGIN { RS = ""; FS = "\n" } {
            t = u = su = c = ""; en = "yes"
            for (i = 1; i <= NF; i++) {
                if ($i ~ /^Types:/) t = $i; if ($i ~ /^URIs:/) u = $i
                if ($i ~ /^Suites:/) su = $i; if ($i ~ /^Components:/) c = $i
                if ($i ~ /^Enabled:/) en = $i }
            if (t ~ /[: ]deb( |$)/ && (" " su " ") ~ (" " s " ") && (" " c " ") ~ / main / && en !~ /no/) {
                sub(/^URIs:[ \t]*/, "", u); split(u, a, " "); print a[1]; exit } }' "$f"
    done
}
if [ -z "$MIRROR" ]; then
    MIRROR=$(host_mirror "$SUITE" | head -1)
    [ -n "$MIRROR" ] || die "this machine's apt has no source for $SUITE main: give --mirror URL"
fi
MIRROR=${MIRROR%/}
# updates and security fixes too when this machine's apt has them (the image keeps the lines)
SOURCES=("deb $MIRROR $SUITE main")
if [ -n "$(host_mirror "$SUITE-updates" | head -1)" ]; then
    SOURCES+=("deb $MIRROR $SUITE-updates main")
fi
SECURITY=$(host_mirror "$SUITE-security" | head -1)
if [ -n "$SECURITY" ]; then
    SOURCES+=("deb ${SECURITY%/} $SUITE-security main")
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/edge-image.XXXXXX")
cleanup() {
    if [ -n "$KEEP_ROOT" ] && [ -d "$WORK/root" ]; then
        rm -rf "$KEEP_ROOT"; mv "$WORK/root" "$KEEP_ROOT"
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
T0=$(date +%s)
step() { say "[$(( $(date +%s) - T0 )) s] $*"; }

# --- the bundle
if [ -z "$BUNDLE" ]; then
    step "building the offline bundle from $REPO"
    args=("$WORK/dist" --no-tar)
    [ -z "$WHEEL_CACHE" ] || args+=(--wheel-cache "$WHEEL_CACHE")
    python3 "$REPO/systemd/bundle.py" "${args[@]}" || die "systemd/bundle.py failed (above)"
    BUNDLE=$(find "$WORK/dist" -mindepth 1 -maxdepth 1 -type d -name 'edge-gateway-*' | head -1)
elif [ -f "$BUNDLE" ]; then
    mkdir -p "$WORK/dist"
    tar -C "$WORK/dist" -xzf "$BUNDLE" || die "cannot unpack $BUNDLE"
    BUNDLE=$(find "$WORK/dist" -mindepth 1 -maxdepth 1 -type d -name 'edge-gateway-*' | head -1)
fi
[ -n "$BUNDLE" ] && [ -f "$BUNDLE/MANIFEST" ] && [ -f "$BUNDLE/install.sh" ] || \
    die "no bundle (MANIFEST, install.sh) at ${BUNDLE:-?}: build one with systemd/bundle.py"
BUNDLE=$(cd "$BUNDLE" && pwd)
grep -qx 'arch=x86_64' "$BUNDLE/MANIFEST" || die "$BUNDLE is not an x86_64 bundle"
grep -qx 'python_tag=cp311' "$BUNDLE/MANIFEST" || die "$BUNDLE is not for Python 3.11 (Debian 12)"
BUNDLE_NAME=$(basename "$BUNDLE")
BUNDLE_ID=$(sed -n 's/^id=//p' "$BUNDLE/MANIFEST")

# --- the root: mmdebstrap, then the bundle installed by its own installer in a chroot
ROOT=$WORK/root
cp "$BUNDLE/gateway.toml.example" "$WORK/example.toml"
[ -z "$CONFIG" ] || install -m 0600 "$CONFIG" "$WORK/site.toml"
step "mmdebstrap $SUITE $ARCH from ${SOURCES[*]}"
cat > "$WORK/customize.sh" <<EOF
#!/bin/sh
# mmdebstrap customize hook: \$1 is the root (with /proc, /sys and /dev mounted)
set -e
mkdir -p "\$1/var/lib/edge-image/bundles"
cp -a '$BUNDLE' "\$1/var/lib/edge-image/bundles/"
config=
if [ -f '$WORK/site.toml' ]; then
    install -m 0600 '$WORK/site.toml' "\$1/root/site.toml"; config="--config /root/site.toml"
fi
chroot "\$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 PIP_NO_INDEX=1 \\
    bash /var/lib/edge-image/bundles/$BUNDLE_NAME/install.sh \\
    --offline /var/lib/edge-image/bundles/$BUNDLE_NAME \$config
rm -f "\$1/root/site.toml"
EOF
chmod +x "$WORK/customize.sh"
mmdebstrap --variant=minbase --architectures="$ARCH" --include="$PACKAGES" \
    --aptopt='Acquire::Retries "3"' \
    --customize-hook="$WORK/customize.sh \"\$1\"" \
    "$SUITE" "$ROOT" "${SOURCES[@]}" >"$WORK/mmdebstrap.log" 2>&1 || {
        grep -m3 'install.sh: error:' "$WORK/mmdebstrap.log" >&2 || tail -30 "$WORK/mmdebstrap.log" >&2
        die "building the root failed (mmdebstrap and the chroot install, output above)"
    }
grep '^install.sh: ' "$WORK/mmdebstrap.log" | sed 's/^/  /' || true
[ -x "$ROOT/opt/edge-gateway/current/venv/bin/edge-gateway" ] || die "the gateway is not installed in the root"
[ -L "$ROOT/etc/systemd/system/multi-user.target.wants/edge-gateway.service" ] || \
    die "edge-gateway.service is not enabled in the root"

step "configuring the root"
install -d -m 0755 "$ROOT/usr/lib/edge-image"
install -m 0755 "$HERE/edge-config-apply" "$ROOT/usr/lib/edge-image/edge-config-apply"
install -m 0644 "$HERE/README-EDGE-CONFIG.txt" "$ROOT/usr/lib/edge-image/README-EDGE-CONFIG.txt"
# the example as install.sh rendered it: edge-config-apply compares the config in force with it
if [ -z "$CONFIG" ]; then
    sha256sum < "$ROOT/etc/edge-gateway/gateway.toml" > "$ROOT/usr/lib/edge-image/example.sha256"
fi
install -D -m 0755 "$HERE/edge-boot-sync" "$ROOT/etc/initramfs/post-update.d/edge-boot-sync"
install -m 0644 "$HERE/edge-config.service" "$ROOT/etc/systemd/system/edge-config.service"
ln -sf ../edge-config.service "$ROOT/etc/systemd/system/multi-user.target.wants/edge-config.service"
install -d -m 0755 "$ROOT/etc/systemd/system/edge-gateway.service.d"
install -m 0644 "$HERE/50-edge-image.conf" "$ROOT/etc/systemd/system/edge-gateway.service.d/50-edge-image.conf"
install -m 0644 "$HERE/20-wired.network" "$ROOT/etc/systemd/network/20-wired.network"
chroot "$ROOT" systemctl enable systemd-networkd.service >/dev/null 2>&1 || die "cannot enable systemd-networkd"
echo "$HOSTNAME_" > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n' "$HOSTNAME_" > "$ROOT/etc/hosts"
cat > "$ROOT/etc/fstab" <<'EOF'
# the root; the EDGE-CONFIG partition is mounted only while edge-config.service applies it
LABEL=edge-root  /  ext4  rw,errors=remount-ro  0  1
EOF
: > "$ROOT/etc/machine-id"                  # a new one on first boot
rm -f "$ROOT/var/lib/dbus/machine-id"
rm -rf "$ROOT/var/log/journal/"*
# the secrets install.sh generated in the root would be the same on every box flashed from
# this image: edge-config-apply generates them on first boot instead
rm -f "$ROOT/etc/edge-gateway/credentials/privacy-key" "$ROOT/etc/edge-gateway/credentials/api-token"
if [ -n "$ROOT_HASH" ]; then
    chroot "$ROOT" usermod -p "$ROOT_HASH" root
fi
printf 'id=%s\nbuilt=%s\nsuite=%s\nmirror=%s\n' "$BUNDLE_ID" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "$SUITE" "$MIRROR" > "$ROOT/usr/lib/edge-image/IMAGE"
rm -rf "$ROOT/var/cache/apt/archives/"*.deb "$ROOT/var/lib/apt/lists/"* "$ROOT/tmp/"*

KERNEL=$(readlink -f "$ROOT/vmlinuz" 2>/dev/null || true)
[ -f "$KERNEL" ] || KERNEL=$(find "$ROOT/boot" -name 'vmlinuz-*' | sort -V | tail -1)
INITRD=$(readlink -f "$ROOT/initrd.img" 2>/dev/null || true)
[ -f "$INITRD" ] || INITRD=$(find "$ROOT/boot" -name 'initrd.img-*' | sort -V | tail -1)
[ -f "$KERNEL" ] && [ -f "$INITRD" ] || die "no kernel or initramfs in $ROOT/boot"

# --- partition 1: FAT with syslinux, the kernel, README; the site config if the user has one
step "EDGE-CONFIG partition (${BOOT_MIB} MiB, FAT)"
BOOT_IMG=$WORK/boot.fat
mkfs.vfat -n EDGE-CONFIG -C "$BOOT_IMG" $(( BOOT_MIB * 1024 )) >/dev/null
sed "s|@CMDLINE@|$CMDLINE|" "$HERE/syslinux.cfg" > "$WORK/syslinux.cfg"
export MTOOLS_SKIP_CHECK=1
mmd -i "$BOOT_IMG" ::/syslinux ::/credentials
mcopy -i "$BOOT_IMG" "$WORK/syslinux.cfg" ::/syslinux/syslinux.cfg
mcopy -i "$BOOT_IMG" "$KERNEL" ::/vmlinuz
mcopy -i "$BOOT_IMG" "$INITRD" ::/initrd.img
mcopy -i "$BOOT_IMG" "$HERE/README-EDGE-CONFIG.txt" ::/README.txt
mcopy -i "$BOOT_IMG" "$WORK/example.toml" ::/gateway.toml.example
syslinux --install --directory /syslinux "$BOOT_IMG"

# --- partition 2: ext4 made from the root directory
USED_KIB=$(du -sk --apparent-size "$ROOT" | cut -f1)
ROOT_MIB=$(( USED_KIB * 13 / 10 / 1024 + 1024 ))
if [ -n "$SIZE" ]; then
    total=$(numfmt --from=iec "$SIZE") || die "--size $SIZE: give e.g. 2G or 3500M"
    ROOT_MIB=$(( total / 1048576 - 1 - BOOT_MIB - 1 ))
    [ "$ROOT_MIB" -gt $(( USED_KIB * 12 / 10 / 1024 )) ] || \
        die "--size $SIZE is too small: the root alone needs $(( USED_KIB * 12 / 10 / 1024 )) MiB"
fi
step "edge-root partition (${ROOT_MIB} MiB, ext4 from the root directory, $(( USED_KIB / 1024 )) MiB used)"
ROOT_IMG=$WORK/root.ext4
mke2fs -q -t ext4 -L edge-root -d "$ROOT" -E root_owner=0:0 "$ROOT_IMG" "${ROOT_MIB}M" >/dev/null

# --- the disk: MBR with the syslinux boot code, partition 1 active
step "disk image $OUT"
TOTAL_MIB=$(( 1 + BOOT_MIB + ROOT_MIB + 1 ))
PART_TMP="$OUT.partial"
rm -f "$PART_TMP"
truncate -s "${TOTAL_MIB}M" "$PART_TMP"
sfdisk --quiet "$PART_TMP" <<EOF
label: dos
unit: sectors
start=2048, size=$(( BOOT_MIB * 2048 )), type=c, bootable
start=$(( 2048 + BOOT_MIB * 2048 )), size=$(( ROOT_MIB * 2048 )), type=83
EOF
dd if="$SYSLINUX_MBR" of="$PART_TMP" bs=440 count=1 conv=notrunc status=none
dd if="$BOOT_IMG" of="$PART_TMP" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$ROOT_IMG" of="$PART_TMP" bs=1M seek=$(( 1 + BOOT_MIB )) conv=notrunc,sparse status=none
mv -f "$PART_TMP" "$OUT"
step "done: $OUT ($(du -h --apparent-size "$OUT" | cut -f1) apparent, $(du -h "$OUT" | cut -f1) on disk), gateway $BUNDLE_ID"
