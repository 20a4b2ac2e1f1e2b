#!/usr/bin/env bash
# Every test Aperture has, as CI runs them: formatting, lints for each target we build, unit
# tests on this host, and the end-to-end tests in the emulated arm64 KVM host.
# Installs what it needs on a fresh Debian machine. Usage: tests/run-all.sh [--no-e2e]
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "host packages"
bash images/host-deps.sh
# rustup's toolchain: fmt and clippy for the host build.
if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy >/dev/null 2>&1 || true
fi

step "format"
cargo fmt --all -- --check

step "clippy (host)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "unit tests (host)"
cargo test --workspace --locked

step "fuzz (bounded)"
bash tests/fuzz/run.sh 20

# Debian's 1.96 toolchain cross-builds for arm64 Linux. Its own target dir keeps the two
# toolchains from rebuilding each other's host artifacts.
cross() {
    PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc CARGO_TARGET_DIR="$repo/target/aarch64-cross" \
        /usr/bin/cargo "$@"
}

step "clippy (aarch64-unknown-linux-gnu)"
cross clippy --workspace --all-targets --locked --target aarch64-unknown-linux-gnu -- -D warnings

# macOS cannot run here: type-check and lint the workspace for it with Debian's rust-web-src
# standard library sources (-Zbuild-std needs RUSTC_BOOTSTRAP on a stable compiler).
step "clippy (aarch64-apple-darwin, type-check only)"
PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$repo/target/macos-check" \
    /usr/bin/cargo clippy -Zbuild-std=std,panic_abort --target aarch64-apple-darwin \
    --workspace --lib --bins --locked -- -D warnings

# aarch64-only code (the KVM backend) is exercised by the end-to-end tests below: Rust test
# binaries hang under this machine's qemu-aarch64 user-mode emulation, so no unit-test step.

if [ "${1:-}" != "--no-e2e" ]; then
    # Builds the Debian root disk for tests/e2e_distro.rs first (images/build-rootfs.sh:
    # ~10-20 min on a clean clone, cached after); APERTURE_E2E_DISTRO=0 skips it.
    step "end-to-end tests (emulated arm64 KVM host)"
    bash tests/run-e2e.sh
fi
