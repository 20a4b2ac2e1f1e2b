#!/usr/bin/env bash
# Boots Aperture's demo guest with its console on this terminal and drops you in its shell.
#   images/boot-demo.sh [extra `aperture run` arguments, e.g. --cpus 2 -v]
# On an arm64 Linux host with /dev/kvm it runs aperture directly. Anywhere else (e.g. an
# x86_64 CI machine) it boots the emulated arm64 KVM host of the e2e rig in QEMU, and
# aperture runs the demo guest nested inside it, reading this terminal.
# Type `exit` in the guest's shell to power everything off (in QEMU, Ctrl-A x also quits).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
say() { echo "boot-demo: $*" >&2; }

images/host-deps.sh
images/build-guest.sh >/dev/null
guest_cmdline="console=ttyAMA0 panic=-1 aperture.check=shell"

if [ "$(uname -m)" = aarch64 ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
    say "building aperture"
    cargo build --release -p vmm
    aperture=${CARGO_TARGET_DIR:-$repo/target}/release/aperture
    say "booting the demo guest on KVM; type 'exit' in its shell to power it off"
    exec "$aperture" run --kernel build/images/Image --initrd build/images/guest.cpio \
        --cmdline "$guest_cmdline" "$@"
fi

# No arm64 KVM here: nest the demo inside the emulated arm64 host.
tests/rig/build-rig.sh >/dev/null
quoted=
for arg in "$@"; do quoted+=" '${arg//\'/\'\\\'\'}'"; done
work=$(mktemp -d "$repo/build/rig/.demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/root"
cat > "$work/root/cases.sh" <<CASES
#!/bin/sh
# images/boot-demo.sh: the demo guest, its console on L1's console (the user's terminal).
echo "boot-demo: starting the nested demo guest (type 'exit' in its shell to power off)"
/aperture run --kernel /guest/Image --initrd /guest/guest.cpio \\
    --cmdline '$guest_cmdline'$quoted </dev/console
echo "boot-demo: aperture exited with status \$?"
CASES
(cd "$work/root" && echo cases.sh | cpio -o -H newc -R 0:0 --quiet) > "$work/cases.cpio"
cat build/rig/l1-base.cpio "$work/cases.cpio" > "$work/initrd.cpio"

say "booting the emulated arm64 host (about 5 s), then the demo guest inside it"
# --foreground: QEMU reads this terminal, so it must stay in the foreground process group.
set +e
timeout --foreground --kill-after=10 "${APERTURE_DEMO_TIMEOUT:-3600}" \
    "${APERTURE_QEMU:-qemu-system-aarch64}" \
    -M virt,virtualization=on,gic-version=3,iommu=smmuv3 -cpu neoverse-n1 \
    -smp 2 -m 2048 -accel tcg,thread=multi -nographic -no-reboot -nic none \
    -kernel build/images/Image -initrd "$work/initrd.cpio" \
    -append "console=ttyAMA0 panic=-1 loglevel=1"
status=$?
set -e
[ "$status" -eq 124 ] && say "stopped after ${APERTURE_DEMO_TIMEOUT:-3600} s (APERTURE_DEMO_TIMEOUT)"
exit "$status"
