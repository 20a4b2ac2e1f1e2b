#!/usr/bin/env bash
# Aperture's end-to-end tests: installs host packages, builds the test guest and the
# emulated arm64 KVM host, then runs the ignored e2e tests (one emulated-host boot).
# Extra arguments go to the test binary, e.g. `tests/run-e2e.sh boots_with_one_vcpu`.
# The console log of the run is build/rig/last-run.log.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
images/host-deps.sh
images/build-guest.sh
tests/rig/build-rig.sh
cargo test -p aperture-e2e --test e2e --test e2e_unplug -- --ignored --test-threads=4 "$@"
