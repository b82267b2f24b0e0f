#!/bin/bash
# Prepare the kube-lvs lab: a Debian kernel with IPVS, booted under qemu (TCG).
#
# Idempotent and non-interactive; run as root on Debian (CI or a workstation):
#   bash lab/setup.sh
# Installs host tools with apt-get, downloads the Debian kernel package with
# `apt-get download` (no other downloads), unpacks it and builds a tiny
# busybox initramfs, all into a cache outside the repository:
#   ${KUBE_LVS_CACHE:-$HOME/.cache/kube-lvs}/lab/<kernel-version>/
# A second run only checks and prints "ready".
set -euo pipefail

log() { printf '[lab/setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (apt-get, depmod)"
export DEBIAN_FRONTEND=noninteractive

CACHE_ROOT="${KUBE_LVS_CACHE:-$HOME/.cache/kube-lvs}/lab"
# Bump when the initramfs layout below changes: forces a rebuild of initramfs only.
INITRAMFS_FORMAT=4
# Modules the initramfs loads itself to reach the host filesystem (9p over virtio),
# the network card (for --forward) and the virtio console carrying the command's output.
EARLY_MODULES="virtio_pci 9pnet_virtio 9p virtio_net virtio_console"

start=$(date +%s)

# ---- 1. host packages -------------------------------------------------------
need_pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || need_pkgs+=("$2"); }
need qemu-system-x86_64 qemu-system-x86
need cpio cpio
need depmod kmod
need modprobe kmod
need ipvsadm ipvsadm
need ip iproute2
need gzip gzip
need nft nftables   # firewall-mark tests mark packets with nft in a director namespace
need curl curl
need prometheus prometheus  # the e2e tier scrapes an agent with a real Prometheus in its namespace
need bird bird2  # BIRD 2: the BGP speaker of the directors and the ECMP router namespace (kernel tier)
[ -x /bin/busybox ] && /bin/busybox --list 2>/dev/null | grep -qx insmod && file_static=1 || file_static=0
if [ "$file_static" = 1 ] && ldd /bin/busybox >/dev/null 2>&1; then file_static=0; fi
[ "$file_static" = 1 ] || need_pkgs+=(busybox-static)

apt_updated=0
apt_update() {
    if [ "$apt_updated" = 0 ]; then
        log "apt-get update"
        apt-get update -q >/dev/null
        apt_updated=1
    fi
}
if [ ${#need_pkgs[@]} -gt 0 ]; then
    apt_update
    log "apt-get install ${need_pkgs[*]}"
    apt-get install -y -q --no-install-recommends "${need_pkgs[@]}" >/dev/null
    # The tests start their own Prometheus and BIRD in namespaces in the VM;
    # the packages' services have no business on the host.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus bird >/dev/null 2>&1 || true
    fi
else
    log "host packages present (qemu, busybox-static, cpio, kmod, ipvsadm, iproute2)"
fi
ldd /bin/busybox >/dev/null 2>&1 && die "/bin/busybox is not static (install busybox-static)"

# ---- 2. resolve the kernel package -------------------------------------------
resolve_kver() {
    # linux-image-amd64 depends on linux-image-<kver> (the signed build); we want the
    # generic unsigned flavour of the same version (the cloud flavour lacks 9p).
    apt-cache depends linux-image-amd64 2>/dev/null \
        | sed -n 's/^ *Depends: linux-image-\([0-9][^ ]*-amd64\)$/\1/p' | head -n1
}
KVER="${KUBE_LVS_KERNEL:-}"
if [ -z "$KVER" ]; then
    KVER=$(resolve_kver || true)
    if [ -z "$KVER" ]; then
        apt_update
        KVER=$(resolve_kver || true)
    fi
fi
if [ -z "$KVER" ] && [ -f "$CACHE_ROOT/current" ]; then
    KVER=$(cat "$CACHE_ROOT/current")
    log "could not resolve linux-image-amd64; using cached $KVER"
fi
[ -n "$KVER" ] || die "cannot resolve the kernel version from linux-image-amd64"
PKG="linux-image-${KVER}-unsigned"
DIR="$CACHE_ROOT/$KVER"
TREE="$DIR/tree"
log "kernel $KVER (package $PKG), cache $DIR"

# ---- 3. download + unpack + depmod -------------------------------------------
if [ ! -f "$DIR/.tree-ready" ]; then
    mkdir -p "$DIR"
    dl=$(mktemp -d "$DIR/.dl.XXXXXX")
    chmod 755 "$dl"
    log "apt-get download $PKG (~70 MB)"
    if ! (cd "$dl" && apt-get download -q "$PKG" >/dev/null 2>"$dl/err"); then
        apt_update
        (cd "$dl" && apt-get download -q "$PKG" >/dev/null 2>"$dl/err") \
            || { cat "$dl/err" >&2; die "apt-get download $PKG failed"; }
    fi
    deb=$(ls "$dl"/*.deb)
    log "unpacking $(basename "$deb")"
    rm -rf "$TREE"
    dpkg -x "$deb" "$TREE"
    [ -d "$TREE/lib/modules/$KVER" ] || die "no lib/modules/$KVER in $deb"
    ls "$TREE/boot/vmlinuz-$KVER" >/dev/null || die "no vmlinuz in $deb"
    log "depmod -b $TREE $KVER"
    depmod -b "$TREE" "$KVER"
    dpkg-deb -f "$deb" Version > "$DIR/package-version"
    rm -rf "$dl"
    touch "$DIR/.tree-ready"
else
    log "kernel tree present: $TREE"
fi

# ---- 4. initramfs ----------------------------------------------------------------
stamp="format=$INITRAMFS_FORMAT busybox=$(sha256sum /bin/busybox | cut -c1-16) modules=$EARLY_MODULES"
if [ ! -f "$DIR/initramfs.cpio.gz" ] || [ "$(cat "$DIR/.initramfs-stamp" 2>/dev/null)" != "$stamp" ]; then
    log "building initramfs"
    stage=$(mktemp -d "$DIR/.initramfs.XXXXXX")
    trap 'rm -rf "$stage"' EXIT
    mkdir -p "$stage"/{bin,sbin,etc,proc,sys,dev,host,results,newroot,lib/modules/$KVER}
    cp /bin/busybox "$stage/bin/busybox"
    for a in $(/bin/busybox --list); do
        [ "$a" = busybox ] || ln -sf busybox "$stage/bin/$a"
    done
    # The kernel's request_module() runs /sbin/modprobe in *this* root; the guest
    # script replaces it with a wrapper into the chroot once the host root is mounted.
    ln -sf ../bin/busybox "$stage/sbin/modprobe"
    # Load order from modules.dep (it differs between kernel builds: never hard-code).
    : > "$stage/etc/modules.load"
    modprobe -d "$TREE" -S "$KVER" --show-depends -a $EARLY_MODULES | while read -r verb path _; do
        [ "$verb" = insmod ] || continue
        rel=${path#"$TREE/lib/modules/$KVER/"}
        grep -qxF "$rel" "$stage/etc/modules.load" && continue
        mkdir -p "$stage/lib/modules/$KVER/$(dirname "$rel")"
        cp "$path" "$stage/lib/modules/$KVER/$rel"
        echo "$rel" >> "$stage/etc/modules.load"
    done
    [ -s "$stage/etc/modules.load" ] || die "no early modules resolved"
    echo "$KVER" > "$stage/etc/kver"
    cat > "$stage/init" <<'INIT'
#!/bin/sh
# kube-lvs lab initramfs: load virtio/9p, mount the host root (ro) and the job
# share (rw), then hand over to the job's guest script. Always powers off.
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
KVER=$(cat /etc/kver)
while read -r m; do
    insmod "/lib/modules/$KVER/$m" 2>/dev/null || grep -q "^$(basename "$m" .ko | tr - _) " /proc/modules \
        || echo "lab-init: insmod $m failed"
done < /etc/modules.load
# lab_msize / lab_cache: tunables from the kernel command line (unknown "a=b"
# parameters reach init as environment variables).
MSIZE=${lab_msize:-512000}
if mount -t 9p -o trans=virtio,version=9p2000.L,msize=$MSIZE results /results; then
    if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=$MSIZE,cache=${lab_cache:-loose} hostroot /host; then
        if [ -f /results/guest.sh ]; then
            sh /results/guest.sh
        else
            echo "lab-init: no guest.sh in the job share"
        fi
    else
        echo "lab-init: cannot mount the host root" > /results/init-error
    fi
else
    echo "lab-init: cannot mount the job share"
fi
sync
poweroff -f
sleep 5
INIT
    chmod 755 "$stage/init"
    (cd "$stage" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) | gzip -1 > "$DIR/initramfs.cpio.gz.new"
    mv "$DIR/initramfs.cpio.gz.new" "$DIR/initramfs.cpio.gz"
    echo "$stamp" > "$DIR/.initramfs-stamp"
    rm -rf "$stage"; trap - EXIT
    log "initramfs: $(du -h "$DIR/initramfs.cpio.gz" | cut -f1)"
else
    log "initramfs present: $DIR/initramfs.cpio.gz"
fi
ln -sf "tree/boot/vmlinuz-$KVER" "$DIR/vmlinuz"

# ---- 5. uncompressed vmlinux (PVH boot) ----------------------------------------
# Under TCG, the bzImage's own xz decompression costs ~4-5 s per boot; qemu boots the
# uncompressed ELF directly through its PVH entry point (CONFIG_PVH=y in Debian's build).
if [ ! -f "$DIR/vmlinux" ] && grep -q '^CONFIG_PVH=y' "$TREE/boot/config-$KVER" 2>/dev/null; then
    if command -v python3 >/dev/null; then
        log "extracting vmlinux (faster boot)"
        python3 - "$TREE/boot/vmlinuz-$KVER" "$DIR/vmlinux.new" <<'PY' && mv "$DIR/vmlinux.new" "$DIR/vmlinux" || log "vmlinux extraction failed; booting vmlinuz"
import lzma, sys
data = open(sys.argv[1], "rb").read()
i = data.find(b"\xfd7zXZ\x00")
if i < 0:
    sys.exit("no xz payload")
out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[i:])
if out[:4] != b"\x7fELF":
    sys.exit("payload is not an ELF")
open(sys.argv[2], "wb").write(out)
PY
    else
        log "no python3: skipping vmlinux extraction (boots ~4 s slower)"
    fi
fi
echo "$KVER" > "$CACHE_ROOT/current.new" && mv "$CACHE_ROOT/current.new" "$CACHE_ROOT/current"

log "ready in $(( $(date +%s) - start ))s: kernel $KVER ($(cat "$DIR/package-version" 2>/dev/null)), cache $DIR"
log "run: .venv/bin/python -m lvs_lab run -- CMD ARGS..."
