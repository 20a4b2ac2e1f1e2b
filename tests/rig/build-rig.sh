#!/usr/bin/env bash
# Builds the emulated arm64 KVM host (L1) of Aperture's end-to-end rig:
#   target/aarch64-cross/aarch64-unknown-linux-gnu/release/aperture   static arm64 binary
#   build/rig/l1-base.cpio   uncompressed newc initramfs for L1: busybox, /aperture,
#                            /net-peer (the --net socket peer of the e2e cases),
#                            /opt/passt/passt (Debian's arm64 passt, with the loader and
#                            libc it needs, for the --net user case; off PATH, so the
#                            net-bad case still sees it missing),
#                            /guest/{Image,Image.gz,guest.cpio} (and /guest/6.12/{Image,
#                            guest.cpio}: the 6.12 guest), the kernel modules the rig
#                            needs (vfio, nvme, virtio + dependencies), and /init
#                            (tests/rig/l1-init.sh)
# The test harness appends a second small cpio holding /cases.sh to pick what runs.
# Needs images/build-guest.sh first. APERTURE_BIN=<path> packs a prebuilt arm64 binary
# instead of building one; APERTURE_L1_MODULES overrides the module list;
# APERTURE_RIG_EXTRA_FILES="PATH..." packs those files into L1's /extra/ (e.g. a peer VMM
# built outside the repo, for tests/net-bench.sh's comparison).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
. "$repo/images/lib.sh"
images=$repo/build/images
rig=$repo/build/rig
say() { echo "build-rig: $*"; }
die() { echo "build-rig: error: $*" >&2; exit 1; }

for f in Image Image.gz busybox guest.cpio kernel-version; do
    [ -s "$images/$f" ] || die "$images/$f is missing: run images/build-guest.sh first"
done
kver=$(cat "$images/kernel-version")
mkdir -p "$rig"

# --- the arm64 aperture binary -------------------------------------------------------------
if [ -n "${APERTURE_BIN:-}" ]; then
    bin=$APERTURE_BIN
    [ -x "$bin" ] || die "APERTURE_BIN=$bin is not an executable file"
    say "using prebuilt $bin"
else
    [ -x /usr/bin/cargo ] && [ -x /usr/bin/rustc ] \
        || die "Debian's cargo-web/rustc-web are missing: run images/host-deps.sh"
    say "cross-building aperture for aarch64 (static)"
    start=$(date +%s)
    (cd "$repo" && RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$repo/target/aarch64-cross" \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
        /usr/bin/cargo build --release --target aarch64-unknown-linux-gnu -p vmm \
        -p aperture-e2e --bin aperture --bin net-peer) \
        || die "cross-build of vmm failed (see above)"
    say "cross-build took $(( $(date +%s) - start )) s"
    bin=$repo/target/aarch64-cross/aarch64-unknown-linux-gnu/release/aperture
fi
if command -v file >/dev/null; then
    desc=$(file -b "$bin")
    case "$desc" in
        *aarch64*static*|*aarch64*"static-pie"*) ;;
        *) die "$bin is not a static arm64 executable ($desc): busybox L1 has no libc" ;;
    esac
fi

# --- l1-base.cpio --------------------------------------------------------------------------
root=$(mktemp -d "$rig/.l1-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,run,root,etc,guest}
install -m 0755 "$images/busybox" "$root/bin/busybox"
install -m 0755 "$repo/tests/rig/l1-init.sh" "$root/init"
install -m 0755 "$bin" "$root/aperture"
# The --net socket peer of the e2e cases (tests/src/bin/net-peer.rs), built with aperture.
peer=$(dirname "$bin")/net-peer
[ -x "$peer" ] && install -m 0755 "$peer" "$root/net-peer"
cp "$images/Image" "$images/Image.gz" "$images/guest.cpio" "$root/guest/"
# passt for the `--net user` case: Debian's arm64 package (cached in build/rig/passt), with
# the dynamic loader and libc it links (busybox L1 has no libc; arm64 hosts have them
# natively, x86_64 ones from libc6:arm64, which images/host-deps.sh installs).
passt_dir=$rig/passt
if [ ! -x "$passt_dir/usr/bin/passt" ]; then
    rm -rf "$passt_dir" && mkdir -p "$passt_dir"
    (cd "$passt_dir" && apt-get download -q passt:arm64 >/dev/null 2>&1) \
        || die "apt-get download passt:arm64 failed (the --net user e2e case runs it in L1)"
    dpkg-deb -x "$passt_dir"/passt_*_arm64.deb "$passt_dir" || die "cannot unpack passt's package"
fi
install -D -m 0755 "$passt_dir/usr/bin/passt" "$root/opt/passt/passt"
mkdir -p "$root/lib/aarch64-linux-gnu"
for lib in ld-linux-aarch64.so.1 libc.so.6; do
    [ -f "/usr/lib/aarch64-linux-gnu/$lib" ] \
        || die "/usr/lib/aarch64-linux-gnu/$lib is missing: install libc6:arm64"
    install -m 0755 "/usr/lib/aarch64-linux-gnu/$lib" "$root/lib/aarch64-linux-gnu/$lib"
done
ln -sf aarch64-linux-gnu/ld-linux-aarch64.so.1 "$root/lib/ld-linux-aarch64.so.1"
# passt, started as root, runs as nobody.
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' \
    > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
for f in ${APERTURE_RIG_EXTRA_FILES:-}; do
    [ -f "$f" ] || die "APERTURE_RIG_EXTRA_FILES: $f is not a file"
    mkdir -p "$root/extra" && install -m 0755 "$f" "$root/extra/"
    say "extra      /extra/$(basename "$f")"
done
# The other guest kernel series build-guest.sh made (6.12): /guest/<series>/{Image,guest.cpio}.
for dir in "$images"/*/; do
    series=$(basename "$dir")
    [ -s "$dir/Image" ] && [ -s "$dir/guest.cpio" ] || continue
    mkdir -p "$root/guest/$series"
    cp "$dir/Image" "$dir/guest.cpio" "$root/guest/$series/"
    say "guest      $series: $(cat "$dir/kernel-version" 2>/dev/null)"
done

# Only the modules the rig uses (the whole tree is ~300 MB), plus what they depend on.
mods=${APERTURE_L1_MODULES:-vfio-pci vfio_iommu_type1 nvme virtio_pci virtio_blk tun vhost_net dummy}
copy_modules "$images/modules" "$kver" "$root" $mods || die "could not copy L1's kernel modules"
pack_cpio "$root" "$rig/l1-base.cpio"
say "aperture   $(du -h "$bin" | cut -f1)  $bin"
say "modules    $(find "$root/lib/modules/$kver" -name '*.ko' | wc -l) for $kver: $mods"
say "l1-base    $(du -h "$rig/l1-base.cpio" | cut -f1)  $rig/l1-base.cpio"
