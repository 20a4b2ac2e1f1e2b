#!/usr/bin/env bash
# Installs every host package Aperture's builds and its emulated arm64 test rig need,
# on a fresh Debian bookworm (x86_64 or arm64) machine. Idempotent: a second run is quick.
set -euo pipefail

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then sudo "$@"; else
            echo "host-deps: need root to run: $*" >&2; exit 1; fi
    else "$@"; fi
}

# The stamp records this script's own contents, so adding a package re-runs the install.
stamp=/var/lib/aperture-host-deps.stamp
want=$(sha256sum "$0" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && [ "${APERTURE_FORCE_DEPS:-0}" != 1 ]; then
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
arch=$(dpkg --print-architecture)
. /etc/os-release
codename=${VERSION_CODENAME:-bookworm}

# QEMU 10 (for the rig) comes from backports: bookworm's 7.2 conflicts with qemu-utils 10.
if ! grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    need_root tee /etc/apt/sources.list.d/aperture-backports.sources >/dev/null <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: ${codename}-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
fi
if [ "$arch" != arm64 ]; then
    need_root dpkg --add-architecture arm64
fi
need_root apt-get update -qq

# libelf1 and libssl3: what linux-kbuild's modpost needs (images/build-dma-module.sh).
# g++: libFuzzer's C++ sources, built by the fuzz targets (tests/fuzz/run.sh).
# mmdebstrap, arch-test, e2fsprogs, openssh-client: the Debian root disk (images/build-rootfs.sh).
pkgs=(rustc-web cargo-web rust-web-clippy rust-web-src gcc-aarch64-linux-gnu libc6-dev-arm64-cross
      busybox-static:arm64 kmod cpio xz-utils gzip make bc flex bison file libelf1 libssl3 g++
      mmdebstrap arch-test e2fsprogs openssh-client)
if [ "$arch" != arm64 ]; then pkgs+=(libstd-rust-web-dev:arm64 libc6:arm64); fi
need_root apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
need_root apt-get install -y -qq --no-install-recommends -t "${codename}-backports" \
    qemu-system-arm qemu-user-static
echo "$want" | need_root tee "$stamp" >/dev/null
