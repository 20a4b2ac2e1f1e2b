#!/usr/bin/env bash
# Cross-builds the guest's DMA window driver, images/dma-module/aperture_dma.c, for the test
# guest's Debian arm64 kernel, from Debian packages only:
#
#   images/build-dma-module.sh [IMAGES]  ->  IMAGES/aperture_dma.ko
#                                     IMAGES/aperture_dma_selftest.ko (the same code
#                                     against a software model of the VMM, for testing
#                                     without Aperture: see aperture_dma_selftest.c)
#                                     IMAGES/aperture_edu.ko (images/edu-test: DMA round
#                                     trips through QEMU's edu device, the rig's GPU-like
#                                     stand-in)
# IMAGES (default build/images) is a guest kernel's output directory of build-guest.sh: it
# builds one per kernel series (6.1 in build/images, 6.12 in build/images/6.12) and runs
# this script for each.
#
# Needs images/build-guest.sh's kernel step first (build/images/kernel-version and the
# kernel .deb's name in build/images/.kernel-stamp: the headers must be the same package
# version as the kernel) and images/host-deps.sh (gcc-aarch64-linux-gnu, make, kmod).
# build-guest.sh runs this script itself.
#
# How: `apt-get download` (pinned to the kernel's package version, cached in build/cache/)
#   linux-headers-<kver>:arm64   the arm64 build tree (.config, Module.symvers, arch headers)
#   linux-headers-<abi>-common   the common headers and top Makefile
#   linux-kbuild-<x.y>           for THIS machine's architecture: fixdep, modpost... must run
#                                here (the arm64 package's would not)
# are unpacked into build/dma-module/root/; the arm64 tree's Makefile includes the common
# tree by an absolute /usr/src path, rewritten to the unpacked one; its scripts/ and tools/
# links are relative and land on the unpacked host kbuild. Then
#   make -C .../linux-headers-<kver> M=<copy of the sources> ARCH=arm64 \
#        CROSS_COMPILE=aarch64-linux-gnu- modules
# (Debian's .kernelvariables picks $(CROSS_COMPILE)gcc-12, as the kernel was built with).
# The result is checked for the kernel's vermagic and stripped of debug info.
#
# Skips everything when build/images/aperture_dma.ko is up to date (same kernel package,
# same sources, same script). Works offline once the packages are cached.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(realpath -m "${1:-$repo/build/images}")
cache=$repo/build/cache
src=$repo/images/dma-module
edu_src=$repo/images/edu-test
ko=$out/aperture_dma.ko
modules="aperture_dma aperture_dma_selftest aperture_edu"

say() { echo "build-dma-module: $*"; }
die() { echo "build-dma-module: error: $*" >&2; exit 1; }

[ -s "$out/kernel-version" ] && [ -s "$out/.kernel-stamp" ] \
    || die "$out/kernel-version is missing: run images/build-guest.sh first (it builds the kernel, then this)"
kver=$(cat "$out/kernel-version")
kernel_deb=$(cat "$out/.kernel-stamp")
# linux-image-6.1.0-56-arm64_6.1.192-2_arm64.deb -> 6.1.192-2
debver=$(sed -n "s/^linux-image-${kver}_\(.*\)_arm64\.deb\$/\1/p" <<<"$kernel_deb")
[ -n "$debver" ] || die "cannot read the kernel package version from $out/.kernel-stamp ($kernel_deb)"
abi=${kver%-arm64}                      # 6.1.0-56, 6.12.118+deb12
work=$repo/build/dma-module/$kver
hostarch=$(dpkg --print-architecture)
command -v aarch64-linux-gnu-gcc-12 >/dev/null \
    || die "aarch64-linux-gnu-gcc-12 not found: run images/host-deps.sh (gcc-aarch64-linux-gnu)"

# The guest's modprobe settings for NVIDIA behind DMA windows, shipped next to the modules.
mkdir -p "$out/modprobe.d"
cp "$repo/images/guest-config/aperture-nvidia.conf" "$out/modprobe.d/aperture-nvidia.conf"

want=$(cat "$src"/*.c "$src/Kbuild" "$edu_src"/*.c "$edu_src/Kbuild" "$0" | sha256sum | cut -d' ' -f1)
stamp="$kver $debver $hostarch $want"
up_to_date=1
for m in $modules; do [ -s "$out/$m.ko" ] || up_to_date=; done
if [ -n "$up_to_date" ] && [ "$(cat "$out/.dma-module-stamp" 2>/dev/null)" = "$stamp" ]; then
    say "up to date: $(for m in $modules; do printf '%s.ko ' "$m"; done)for $kver"
    exit 0
fi

# fetch PKG[:ARCH] -> prints the cached .deb of PKG at exactly $debver, downloading it if absent.
fetch() {
    local pkg=$1 name=${1%%:*} f tmp
    for f in "$cache/${name}_${debver}_"*.deb; do
        if [ -s "$f" ]; then echo "$f"; return; fi
    done
    tmp=$(mktemp -d "$cache/.dl.XXXXXX")
    if (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$debver" >&2); then
        f=$(cd "$tmp" && ls -1 *.deb)
        mv "$tmp/$f" "$cache/$f"
        rm -rf "$tmp"
        echo "$cache/$f"; return
    fi
    rm -rf "$tmp"
    die "apt-get download $pkg=$debver failed and it is not cached in $cache: check the Debian" \
        "mirror (and run images/host-deps.sh for the arm64 architecture)"
}

mkdir -p "$cache" "$out"
hdeb=$(fetch "linux-headers-$kver:arm64")
cdeb=$(fetch "linux-headers-$abi-common")
# The kbuild package is named in the headers' Depends (linux-kbuild-6.1 on bookworm).
kbuild=$(dpkg-deb -f "$hdeb" Depends | tr ',' '\n' | sed -n 's/^ *\(linux-kbuild-[^ ]*\).*/\1/p' | head -n1)
[ -n "$kbuild" ] || die "$(basename "$hdeb") names no linux-kbuild package in its Depends"
kdeb=$(fetch "$kbuild:$hostarch")

say "kernel $kver ($debver): unpacking headers and $kbuild:$hostarch"
rm -rf "$work"
mkdir -p "$work/root" "$work/src"
for d in "$hdeb" "$cdeb" "$kdeb"; do dpkg-deb -x "$d" "$work/root"; done
kdir=$work/root/usr/src/linux-headers-$kver
common=$work/root/usr/src/linux-headers-$abi-common
[ -f "$kdir/Makefile" ] && [ -f "$common/Makefile" ] || die "unexpected layout in the headers packages"
sed -i "s|^include /usr/src/linux-headers-$abi-common/Makefile\$|include $common/Makefile|" "$kdir/Makefile"
grep -q "^include $common/Makefile\$" "$kdir/Makefile" \
    || die "could not re-point $kdir/Makefile at the unpacked common headers"
[ -x "$kdir/scripts/mod/modpost" ] || die "$kdir/scripts/mod/modpost missing: is $(basename "$kdeb") for $hostarch?"

# Both directories' sources in one build, one Kbuild naming every module.
cp "$src"/*.c "$edu_src"/*.c "$work/src/"
echo "obj-m := $(for m in $modules; do printf '%s.o ' "$m"; done)" > "$work/src/Kbuild"
say "compiling"
# CONFIG_DEBUG_INFO_BTF_MODULES= : no BTF for these (6.12's modfinal would run pahole).
make -s -C "$kdir" M="$work/src" ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu- \
    CONFIG_DEBUG_INFO_BTF_MODULES= modules \
    2>&1 | grep -v -e '^Skipping BTF generation' >&2 || true
for m in $modules; do
    [ -s "$work/src/$m.ko" ] || die "$m.ko did not build (see the compiler output above)"
    vermagic=$(modinfo -F vermagic "$work/src/$m.ko")
    case "$vermagic" in
        "$kver "*) ;;
        *) die "$m.ko has vermagic '$vermagic', the kernel is $kver" ;;
    esac
done
for m in $modules; do
    aarch64-linux-gnu-strip --strip-debug -o "$out/$m.ko.tmp" "$work/src/$m.ko"
    mv "$out/$m.ko.tmp" "$out/$m.ko"
done
echo "$stamp" > "$out/.dma-module-stamp"
rm -rf "$work/root"
for m in $modules; do
    say "$(printf '%-4s %s  (vermagic %s)' "$(du -h "$out/$m.ko" | cut -f1)" "$out/$m.ko" "$vermagic")"
done
