#!/usr/bin/env bash
# Aperture's end-to-end tests: installs host packages, builds the test guest, the Debian root
# disk and the emulated arm64 KVM host, then runs the ignored e2e tests: tests/e2e.rs (one
# emulated-host boot, many cases), tests/e2e_distro.rs (its own boot: the Debian root
# disk of images/build-rootfs.sh, cached in build/images/rootfs/) and tests/e2e_unplug.rs
# (its own boots: it removes a device from the emulated host, and puts one back).
# APERTURE_E2E_DISTRO=0 skips the Debian disk (its build and its test).
# Extra arguments go to the test binaries, e.g. `tests/run-e2e.sh boots_with_one_vcpu`.
# The console logs of the runs are build/rig/last-run.log, last-distro-run.log,
# last-run-unplug.log and last-run-replug.log.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
images/host-deps.sh
images/build-guest.sh
tests=(--test e2e)
if [ "${APERTURE_E2E_DISTRO:-1}" != 0 ]; then
    images/build-rootfs.sh
    tests+=(--test e2e_distro)
fi
tests/rig/build-rig.sh
tests+=(--test e2e_unplug)
cargo test -p aperture-e2e "${tests[@]}" -- --ignored --test-threads=4 "$@"
