#!/usr/bin/env bash
# Builds Aperture's test guest from Debian's arm64 packages only, into build/images/:
#   Image            raw arm64 kernel Image (EFI-stub MZ header) from linux-image-<ver>-arm64
#   Image.gz         the same, gzip-compressed (tests the gzip loader path)
#   kernel-version   <ver>, e.g. 6.1.0-56-arm64
#   modules/         root of lib/modules/<ver>/ (.ko.xz decompressed, depmod run)
#   busybox          static arm64 busybox from busybox-static:arm64
#   aperture_dma.ko  the DMA window driver, and aperture_dma_selftest.ko (the same against
#                    a software model of the VMM), by images/build-dma-module.sh from
#                    Debian's arm64 kernel headers
#   guest.cpio       uncompressed newc initramfs: busybox + /init (images/guest-init.sh) +
#                    modules (virtio, nvme, aperture_dma)
# GUEST_CPIO=PATH writes the initramfs there instead of build/images/guest.cpio (to try a
# change while something else uses the current one); everything else still goes to
# build/images/.
# GUEST_KERNEL_SERIES=6.12 builds the same for the newest Debian arm64 kernel of that series
# (picked with apt-cache at run time: bookworm-security's linux-6.12 or bookworm-backports)
# into build/images/6.12/; the default run does 6.1 (Debian's linux-image-arm64) into
# build/images/ and then each series of GUEST_EXTRA_SERIES (default "6.12"; empty: none).
# Downloads are cached in build/cache/ by package file name: a second run is quick and
# works offline. Needs images/host-deps.sh to have run (apt arm64 arch, kmod, cpio, xz).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo/images/lib.sh"
series=${GUEST_KERNEL_SERIES:-}
out=$repo/build/images${series:+/$series}
cache=$repo/build/cache
mkdir -p "$out" "$cache"

say() { echo "build-guest: $*"; }
die() { echo "build-guest: error: $*" >&2; exit 1; }

# Package resolution (kernel version and .deb file names) from apt's lists. apt-cache is
# slow where its binary cache is off, so the answer is kept in build/cache/resolved.env and
# reused until the apt lists change. Offline with no lists: whatever the cache holds.
resolved=$cache/resolved${series:+-$series}.env
resolve() {
    local kver show kfile bfile
    if [ -n "$series" ]; then
        # The newest ABI of the series (not -cloud/-rt); never a pinned ABI number.
        kver=$(apt-cache search --names-only "^linux-image-${series//./\\.}\.[0-9]+\+[a-z0-9]+-arm64\$" \
            2>/dev/null | sed -n 's/^linux-image-\([^ ]*-arm64\) .*/\1/p' | sort -V | tail -n1) || true
    else
        kver=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null \
            | sed -n 's/.*Depends: linux-image-\([0-9][^:]*-arm64\).*/\1/p' | head -n1) || true
    fi
    [ -n "$kver" ] || return 1
    show=$(apt-cache show --no-all-versions "linux-image-$kver:arm64" busybox-static:arm64 \
        2>/dev/null) || true
    kfile=$(sed -n 's|^Filename: .*/\(linux-image-.*\.deb\)$|\1|p' <<<"$show" | head -n1)
    bfile=$(sed -n 's|^Filename: .*/\(busybox-static_.*\.deb\)$|\1|p' <<<"$show" | head -n1)
    [ -n "$kfile" ] && [ -n "$bfile" ] || return 1
    printf 'kver=%s\nkernel_deb=%s\nbusybox_deb=%s\n' "$kver" "$kfile" "$bfile" > "$resolved"
}
if [ ! -s "$resolved" ] || [ -n "$(find /var/lib/apt/lists -maxdepth 1 -newer "$resolved" 2>/dev/null | head -n1)" ]; then
    resolve || rm -f "$resolved"
fi
kver= kernel_deb= busybox_deb=
if [ -s "$resolved" ]; then . "$resolved"; fi
if [ -z "$kver" ]; then
    kernel_deb=$(cd "$cache" && ls -1 linux-image-${series:-6.1}.*-arm64_*_arm64.deb 2>/dev/null | sort -V | tail -n1) || true
    busybox_deb=$(cd "$cache" && ls -1 busybox-static_*_arm64.deb 2>/dev/null | sort -V | tail -n1) || true
    kver=$(sed 's/^linux-image-\(.*-arm64\)_.*/\1/' <<<"$kernel_deb")
    [ -n "$kver" ] && [ -n "$busybox_deb" ] || die "cannot resolve the arm64 kernel and busybox" \
        "packages and none are cached in $cache: run images/host-deps.sh (adds the arm64 architecture)"
    say "apt lists unavailable: using cached $kernel_deb and $busybox_deb"
fi

# fetch_deb PKG FILE: prints the cached path of PKG's .deb FILE, downloading it if absent.
fetch_deb() {
    local pkg=$1 fname=$2 tmp
    if [ -s "$cache/$fname" ]; then echo "$cache/$fname"; return; fi
    tmp=$(mktemp -d "$cache/.dl.XXXXXX")
    if (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
        mv "$tmp"/*.deb "$cache/$fname"
        rm -rf "$tmp"
        echo "$cache/$fname"; return
    fi
    rm -rf "$tmp"
    die "apt-get download $pkg failed and $cache/$fname is not cached: check the Debian mirror"
}

# --- kernel Image, Image.gz and modules ------------------------------------------------
kdeb=$(fetch_deb "linux-image-$kver:arm64" "$kernel_deb")
stamp="$(basename "$kdeb")"
if [ "$(cat "$out/.kernel-stamp" 2>/dev/null)" != "$stamp" ] || [ ! -s "$out/Image" ]; then
    say "extracting $(basename "$kdeb")"
    rm -rf "$out/modules" "$out/.kroot" "$out/Image" "$out/Image.gz" "$out/.kernel-stamp"
    dpkg-deb -x "$kdeb" "$out/.kroot"
    [ -f "$out/.kroot/boot/vmlinuz-$kver" ] || die "$(basename "$kdeb") has no /boot/vmlinuz-$kver"
    cp "$out/.kroot/boot/vmlinuz-$kver" "$out/Image"
    [ "$(head -c 2 "$out/Image")" = MZ ] || die "/boot/vmlinuz-$kver is not a raw arm64 Image (no MZ header)"
    mkdir -p "$out/modules/lib"
    # Debian installs modules under /lib or /usr/lib (merged-/usr): accept both.
    if [ -d "$out/.kroot/lib/modules/$kver" ]; then mv "$out/.kroot/lib/modules" "$out/modules/lib/"
    else mv "$out/.kroot/usr/lib/modules" "$out/modules/lib/"; fi
    rm -rf "$out/.kroot"
    # busybox insmod cannot read compressed modules.
    find "$out/modules/lib/modules/$kver" -name '*.ko.xz' -exec xz -d -f {} +
    depmod -b "$out/modules" "$kver"
    echo "$kver" > "$out/kernel-version"
    echo "$stamp" > "$out/.kernel-stamp"
fi
if [ ! -s "$out/Image.gz" ] || [ "$out/Image" -nt "$out/Image.gz" ]; then
    say "compressing Image.gz"
    gzip -9 -n -c "$out/Image" > "$out/Image.gz.tmp" && mv "$out/Image.gz.tmp" "$out/Image.gz"
fi

# --- busybox -----------------------------------------------------------------------------
bdeb=$(fetch_deb busybox-static:arm64 "$busybox_deb")
stamp="$(basename "$bdeb")"
if [ "$(cat "$out/.busybox-stamp" 2>/dev/null)" != "$stamp" ] || [ ! -s "$out/busybox" ]; then
    say "extracting $(basename "$bdeb")"
    tmp=$(mktemp -d "$cache/.bb.XXXXXX")
    dpkg-deb -x "$bdeb" "$tmp"
    install -m 0755 "$tmp/bin/busybox" "$out/busybox"
    rm -rf "$tmp"
    echo "$stamp" > "$out/.busybox-stamp"
fi

# --- aperture_dma.ko ------------------------------------------------------------------------
# The DMA window driver, cross-built against this kernel's headers (cached, quick when done).
"$repo/images/build-dma-module.sh" "$out" || die "images/build-dma-module.sh failed"

# --- guest.cpio ----------------------------------------------------------------------------
# Loaded by the guest's /init when present: virtio-pci devices, NVMe for passthrough, and
# aperture_dma (in lib/modules/<kver>/extra/, before NVMe when a DMA window is offered).
# snd_hda_intel (+ the generic codec driver): the HD audio function next to the rig's
# GPU-like edu (probes on MSI).
guest_modules="virtio_pci virtio_blk virtio_net virtio_rng virtio_console nvme snd_hda_intel snd_hda_codec_generic gpio_keys evdev"
init=$repo/images/guest-init.sh
cpio=$out/guest.cpio
[ -n "$series" ] || cpio=$(realpath -m "${GUEST_CPIO:-$cpio}")
mkdir -p "$(dirname "$cpio")"
if [ ! -s "$cpio" ] || [ "$init" -nt "$cpio" ] || [ "$out/aperture_dma.ko" -nt "$cpio" ] \
    || [ "$out/aperture_dma_selftest.ko" -nt "$cpio" ] || [ "$out/aperture_edu.ko" -nt "$cpio" ] \
    || [ "$out/busybox" -nt "$cpio" ] || [ "$0" -nt "$cpio" ]; then
    say "packing $cpio"
    root=$(mktemp -d "$out/.guest-root.XXXXXX")
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,root,etc}
    install -m 0755 "$out/busybox" "$root/bin/busybox"
    install -m 0755 "$init" "$root/init"
    mkdir -p "$root/lib/modules/$kver/extra"
    for m in aperture_dma aperture_dma_selftest aperture_edu; do
        install -m 0644 "$out/$m.ko" "$root/lib/modules/$kver/extra/$m.ko"
    done
    # Drivers for Aperture's devices (Debian builds them as modules), with what they need;
    # its depmod indexes aperture_dma too.
    copy_modules "$out/modules" "$kver" "$root" $guest_modules \
        || die "could not copy the guest's kernel modules"
    pack_cpio "$root" "$cpio"
    rm -rf "$root"
fi

say "kernel $kver"
for f in Image Image.gz busybox aperture_dma.ko; do
    say "$(printf '%-16s %6s  %s' "$f" "$(du -h "$out/$f" | cut -f1)" "$out/$f")"
done
say "$(printf '%-16s %6s  %s' guest.cpio "$(du -h "$cpio" | cut -f1)" "$cpio")"
say "$(printf '%-16s %6s  %s' modules "$(du -sh "$out/modules" | cut -f1)" "$out/modules/lib/modules/$kver")"

# --- the other kernel series -----------------------------------------------------------------
if [ -z "$series" ]; then
    for extra in ${GUEST_EXTRA_SERIES-6.12}; do
        GUEST_KERNEL_SERIES=$extra "$0" || die "the $extra guest kernel failed (see above)"
    done
fi
