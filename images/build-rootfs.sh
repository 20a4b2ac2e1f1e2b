#!/usr/bin/env bash
# Builds an arm64 Debian bookworm root disk for Aperture guests from Debian's packages, into
# build/images/rootfs/ (ROOTFS_OUT=DIR elsewhere):
#   rootfs.img   raw ext4 image, sparse (ROOTFS_SIZE, default 2G), label aperture-root:
#                systemd, udev, openssh-server, systemd-networkd (DHCP on every Ethernet
#                NIC) with systemd-resolved, iproute2, Debian's linux-image-arm64
#   vmlinuz      that kernel (a raw arm64 Image with an EFI-stub header)
#   initrd.img   its initramfs (initramfs-tools), with virtio_pci, virtio_blk, virtio_net,
#                nvme and ext4 loaded early so `root=/dev/vda` works
#   id_ed25519   an ssh key made at build time (never committed); its .pub is root's
#                authorized key in the image
# Boot it:
#   aperture run --kernel vmlinuz --initrd initrd.img --disk rootfs.img \
#       --cmdline "root=/dev/vda console=ttyAMA0 quiet" --memory 1G --cpus 2
# The serial console (ttyAMA0) logs root in automatically (root's password is locked; ssh
# takes the key above): a test and development image, not one to expose.
# `aperture.distro-check` on the kernel command line runs a one-shot report after boot
# (system state, sshd, the DHCP lease, an HTTP fetch from the gateway) and powers the guest
# off; `aperture.distro-hold=SECS` and `aperture.distro-send=MIB` (a timed upload to the
# gateway's port 5001) extend it. The e2e tests use it.
#
# How: mmdebstrap (root mode) runs Debian's maintainer scripts under qemu-aarch64-static.
# binfmt_misc is registered in a private user namespace (Linux 6.7+ gives each user
# namespace its own binfmt_misc), so nothing on the host changes; older kernels fall back to
# the host's registration if there is one. Skips the build when the image exists and its
# stamp (this script, which holds the package list and every file it installs, and the
# key) matches; APERTURE_FORCE_ROOTFS=1 rebuilds. Prints the build time and the image size.
set -euo pipefail

suite=bookworm
mirror=http://deb.debian.org/debian
# --variant=minbase plus these (no Recommends): a bootable, ssh-able, networked system.
packages=(systemd systemd-sysv systemd-resolved udev dbus openssh-server iproute2 iputils-ping
          kmod procps ca-certificates linux-image-arm64 initramfs-tools zstd)
# Loaded by the initramfs before it looks for the root disk (Debian builds them as modules).
initramfs_modules=(virtio_pci virtio_blk virtio_net virtio_rng nvme ext4 crc32c_generic)

say() { echo "build-rootfs: $*"; }
die() { echo "build-rootfs: error: $*" >&2; exit 1; }

# --- mmdebstrap hooks (run by mmdebstrap with the chroot's path) -----------------------------

# Before any package is unpacked: initramfs-tools settings the kernel's postinst will use.
setup_hook() {
    local root=$1
    mkdir -p "$root/etc/initramfs-tools/conf.d" "$root/etc/initramfs-tools/hooks"
    # Only the listed modules (MODULES=most pulls hundreds and slows the build under qemu-user).
    echo "MODULES=list" > "$root/etc/initramfs-tools/conf.d/aperture.conf"
    {
        echo '#!/bin/sh'
        echo '# Aperture: the drivers for its devices, loaded before the root disk is mounted.'
        echo '[ "$1" = prereqs ] && exit 0'
        echo '. /usr/share/initramfs-tools/hook-functions'
        for m in "${initramfs_modules[@]}"; do echo "force_load $m"; done
    } > "$root/etc/initramfs-tools/hooks/aperture"
    chmod 0755 "$root/etc/initramfs-tools/hooks/aperture"
}

# After every package is installed: the system's configuration.
customize_hook() {
    local root=$1 pubkey=$2
    echo aperture > "$root/etc/hostname"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\taperture\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
        > "$root/etc/hosts"
    echo 'LABEL=aperture-root / ext4 errors=remount-ro 0 1' > "$root/etc/fstab"

    # DHCP on every Ethernet NIC (virtio-net is one), names resolved by systemd-resolved.
    mkdir -p "$root/etc/systemd/network"
    printf '[Match]\nType=ether\n\n[Network]\nDHCP=yes\n' > "$root/etc/systemd/network/20-ether.network"
    chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service

    # The serial console logs root in (a test image: say so in the README).
    mkdir -p "$root/etc/systemd/system/serial-getty@ttyAMA0.service.d"
    cat > "$root/etc/systemd/system/serial-getty@ttyAMA0.service.d/autologin.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM
UNIT

    # ssh: root logs in with the build's key only (sshd's default prohibit-password).
    install -d -m 0700 "$root/root/.ssh"
    install -m 0600 "$pubkey" "$root/root/.ssh/authorized_keys"
    # A first boot does not wait for a hardware clock or a network to be "online".
    chroot "$root" systemctl mask systemd-networkd-wait-online.service

    # aperture.distro-check: report the booted system's state on the console, power off.
    cat > "$root/usr/local/sbin/aperture-distro-check" <<'SCRIPT'
#!/bin/bash
# Started at boot when the kernel command line has aperture.distro-check (Aperture's e2e).
# Waits for the boot to finish, for sshd and, when the guest has a NIC, for a DHCP lease;
# reports them on the console and powers the guest off. Also from the command line:
#   aperture.distro-hold=SECS  stays up SECS after the report (a peer can reach sshd)
#   aperture.distro-send=MIB   sends MIB MiB to port 5001 of the default gateway, timed
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^aperture\.$1=//p" | tail -n 1; }
state=$(systemctl is-system-running --wait)
# Ethernet NICs backed by a device (ARPHRD_ETHER is 1; lo and virtual links have no device).
nics=$(for dev in /sys/class/net/*; do
    [ "$(cat "$dev/type")" = 1 ] && [ -e "$dev/device" ] && basename "$dev"
done | tr '\n' ' ')
# sshd and a lease can come after the boot job does, minutes later under nested emulation.
n=0
while [ "$n" -lt 300 ]; do
    sshd=$(ss -Hltn 'sport = :22' | wc -l)
    addr=$(ip -4 -o addr show scope global | awk '{print $2 "=" $4}' | tr '\n' ' ')
    if [ "$sshd" -gt 0 ] && { [ -n "$addr" ] || [ -z "$nics" ]; }; then
        break
    fi
    n=$((n + 1)); sleep 1
done
gateway=$(ip -4 route show default | awk '{print $3; exit}')
http=none
if [ -n "$gateway" ]; then
    # bash's /dev/tcp: the image has no HTTP client. The body is the response's last line.
    http=$(timeout 30 bash -c 'exec 3<>"/dev/tcp/$0/80" || exit 1
        printf "GET /hello.txt HTTP/1.0\r\nHost: %s\r\n\r\n" "$0" >&3
        tail -n 1 <&3' "$gateway" 2>/dev/null | tr -d '\r')
fi
failed=$(systemctl --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')
{
    echo "APERTURE-DISTRO: state=$state sshd=$sshd kernel=$(uname -r) waited=${n}s"
    echo "APERTURE-DISTRO-NET: ${addr:-none}"
    echo "APERTURE-DISTRO-LINKS: nics=${nics:-none} gateway=${gateway:-none}" \
        "$(networkctl list --no-legend --no-pager 2>&1 | awk '{print $2 ":" $4 "/" $5}' | tr '\n' ' ')"
    echo "APERTURE-DISTRO-HTTP: ${http:-none}"
    echo "APERTURE-DISTRO-FAILED: ${failed:-none}"
    echo "APERTURE-DISTRO-UPTIME: $(cut -d' ' -f1 /proc/uptime)"
} > /dev/console
mib=$(arg distro-send)
if [ -n "$mib" ] && [ -n "$gateway" ]; then
    start=$(date +%s%N)
    if timeout 900 bash -c 'head -c $(($1 * 1048576)) /dev/zero > "/dev/tcp/$0/5001"' \
        "$gateway" "$mib"; then
        echo "APERTURE-DISTRO-SEND: mib=$mib ms=$((($(date +%s%N) - start) / 1000000))" > /dev/console
    else
        echo "APERTURE-DISTRO-SEND: failed" > /dev/console
    fi
fi
hold=$(arg distro-hold)
[ -n "$hold" ] && sleep "$hold"
systemctl poweroff
SCRIPT
    chmod 0755 "$root/usr/local/sbin/aperture-distro-check"
    cat > "$root/etc/systemd/system/aperture-distro-check.service" <<'UNIT'
[Unit]
Description=Aperture boot check (aperture.distro-check on the kernel command line)
ConditionKernelCommandLine=aperture.distro-check
After=multi-user.target

[Service]
# Not oneshot: `systemctl is-system-running --wait` must not wait for this unit itself.
Type=simple
ExecStart=/usr/local/sbin/aperture-distro-check

[Install]
WantedBy=multi-user.target
UNIT
    chroot "$root" systemctl enable aperture-distro-check.service

    # Each boot of a copy gets its own machine id (systemd writes it on first boot).
    : > "$root/etc/machine-id"
    rm -f "$root/var/lib/dbus/machine-id"
}

# --- in a private user namespace: mmdebstrap, mkfs ------------------------------------------

# The whole id range maps to itself; binfmt_misc gets a private instance with qemu-aarch64.
inner_build() {
    local work=$1 pubkey=$2 img=$3 size=$4 self=$5
    if mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null; then
        local conf=/usr/lib/binfmt.d/qemu-aarch64.conf
        [ -f "$conf" ] || die "$conf is missing: install qemu-user-static (images/host-deps.sh)"
        # F: the kernel opens the interpreter now, so it works inside the chroot too.
        sed 's|:[^:]*:[A-Z]*$|:/usr/bin/qemu-aarch64-static:F|' "$conf" \
            > /proc/sys/fs/binfmt_misc/register \
            || die "registering qemu-aarch64 with binfmt_misc failed"
    else
        say "warning: no private binfmt_misc (it needs Linux 6.7+): relying on the host's" \
            "qemu-aarch64 registration (if mmdebstrap cannot run arm64 programs: install" \
            "binfmt-support and run 'update-binfmts --enable qemu-aarch64')"
    fi
    local hook="bash '$self'"
    mmdebstrap --mode=root --variant=minbase --architectures=arm64 \
        --include="$(IFS=,; echo "${packages[*]}")" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --setup-hook="$hook --setup-hook \"\$1\"" \
        --customize-hook="$hook --customize-hook \"\$1\" '$pubkey'" \
        "$suite" "$work/root" \
        "deb $mirror $suite main" "deb $mirror $suite-updates main" \
        "deb http://deb.debian.org/debian-security $suite-security main"
    local kernel initrd
    kernel=$(ls -1 "$work/root"/boot/vmlinuz-* 2>/dev/null | sort -V | tail -n1)
    initrd=$(ls -1 "$work/root"/boot/initrd.img-* 2>/dev/null | sort -V | tail -n1)
    [ -n "$kernel" ] && [ -n "$initrd" ] || die "the image has no /boot/vmlinuz-* or /boot/initrd.img-*"
    cp "$kernel" "$work/vmlinuz"
    cp "$initrd" "$work/initrd.img"
    basename "$kernel" | sed 's/^vmlinuz-//' > "$work/kernel-version"
    rm -f "$img"
    truncate -s "$size" "$img"
    mkfs.ext4 -q -F -L aperture-root -d "$work/root" "$img" \
        || die "mkfs.ext4 -d failed (image size $size too small? set ROOTFS_SIZE)"
    rm -rf "$work/root"
}

# Runs "$@" as root of a new user namespace whose ids map to themselves (0-65535), in new
# mount and pid namespaces (mmdebstrap mounts /proc in the chroot).
in_userns() {
    local fifo=$1
    shift
    rm -f "$fifo"
    mkfifo "$fifo"
    unshare --user --mount bash -c 'read -r _ < "$0" && exec unshare --pid --fork --mount-proc "$@"' \
        "$fifo" "$@" &
    local pid=$! tries=0
    while [ "$(readlink "/proc/$pid/ns/user" 2>/dev/null)" = "$(readlink /proc/self/ns/user)" ]; do
        tries=$((tries + 1))
        [ "$tries" -lt 500 ] || die "unshare --user did not start"
        sleep 0.01
    done
    echo "0 0 65536" > "/proc/$pid/uid_map" || die "cannot map ids into the user namespace"
    echo "0 0 65536" > "/proc/$pid/gid_map" || die "cannot map ids into the user namespace"
    echo go > "$fifo"
    local status=0
    wait "$pid" || status=$?
    rm -f "$fifo"
    return "$status"
}

case "${1:-}" in
    --setup-hook) setup_hook "$2"; exit 0 ;;
    --customize-hook) customize_hook "$2" "$3"; exit 0 ;;
    --inner) shift; inner_build "$@"; exit 0 ;;
esac

# --- main ---------------------------------------------------------------------------------
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
self=$repo/images/build-rootfs.sh
out=$(realpath -m "${ROOTFS_OUT:-$repo/build/images/rootfs}")
size=${ROOTFS_SIZE:-2G}
mkdir -p "$out"
[ "$(id -u)" -eq 0 ] || die "run as root (mmdebstrap's root mode, user namespaces with all ids)"

"$repo/images/host-deps.sh"

key=$out/id_ed25519
if [ ! -s "$key" ] || [ ! -s "$key.pub" ]; then
    rm -f "$key" "$key.pub"
    ssh-keygen -q -t ed25519 -N '' -C aperture-rootfs -f "$key" || die "ssh-keygen failed"
fi
stamp=$( { cat "$self"; echo "size=$size"; cat "$key.pub"; } | sha256sum | cut -d' ' -f1)
if [ "${APERTURE_FORCE_ROOTFS:-0}" != 1 ] && [ "$(cat "$out/.stamp" 2>/dev/null)" = "$stamp" ] \
    && [ -s "$out/rootfs.img" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
    say "up to date: $out/rootfs.img (APERTURE_FORCE_ROOTFS=1 rebuilds)"
    exit 0
fi

start=$(date +%s)
work=$(mktemp -d "$out/.work.XXXXXX")
chmod 0755 "$work"    # apt downloads as _apt
trap 'rm -rf "$work" "$work.fifo"' EXIT
rm -f "$out/.stamp"
say "building Debian $suite arm64 into $out (mmdebstrap under qemu-aarch64-static)"
in_userns "$work.fifo" bash "$self" --inner "$work" "$key.pub" "$work/rootfs.img" "$size" "$self" \
    || die "the build failed (see above)"
mv "$work/vmlinuz" "$out/vmlinuz"
mv "$work/initrd.img" "$out/initrd.img"
mv "$work/kernel-version" "$out/kernel-version"
mv "$work/rootfs.img" "$out/rootfs.img"
echo "$stamp" > "$out/.stamp"
took=$(( $(date +%s) - start ))
say "built in $((took / 60)) min $((took % 60)) s: kernel $(cat "$out/kernel-version")"
say "rootfs.img  $(du -h --apparent-size "$out/rootfs.img" | cut -f1) sparse, $(du -h "$out/rootfs.img" | cut -f1) on disk"
say "vmlinuz     $(du -h "$out/vmlinuz" | cut -f1), initrd.img $(du -h "$out/initrd.img" | cut -f1)"
say "ssh key     $key (root@guest)"
