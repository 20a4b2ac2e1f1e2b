#!/bin/busybox sh
# /init of Aperture's test guest (busybox initramfs, no network needed).
# Prints a marker, runs the check named by `aperture.check=NAME` on the kernel
# command line, then powers off. Exit paths are what the e2e tests assert on.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
# The kernel may have found no /dev/console before devtmpfs: make sure our
# stdio is the console either way.
exec 0<>/dev/console 1>&0 2>&0

echo "APERTURE-GUEST-INIT-OK"
# Drivers for whatever PCI devices the VMM gave us (quietly: absent devices are fine).
modprobe -a virtio_pci virtio_blk virtio_rng virtio_console nvme 2>/dev/null

checks=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        aperture.check=*) checks=${arg#aperture.check=} ;;
    esac
done

# wait_for PATH [TENTHS]: waits up to TENTHS/10 s (default 10 s) for a device node the
# drivers create asynchronously.
wait_for() {
    n=0
    while [ ! -e "$1" ] && [ $n -lt "${2:-100}" ]; do sleep 0.1; n=$((n + 1)); done
}

# Checks are comma-separated and run in order: aperture.check=pci,blk,rng
for check in $(echo "$checks" | tr ',' ' '); do
case "$check" in
    pci)
        for dev in /sys/bus/pci/devices/*; do
            [ -e "$dev" ] || continue
            drv=none
            [ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
            echo "CHECK pci: $(basename "$dev") $(cat "$dev/vendor"):$(cat "$dev/device") class=$(cat "$dev/class") driver=$drv"
        done
        echo "CHECK pci: done"
        ;;
    blk)
        # vda: the host wrote a pattern in its first MiB; read it back, then write our own
        # pattern at 1 MiB and sync it to the host file. vdb is read-only: a write must fail.
        wait_for /dev/vda
        echo "CHECK blk: vda-sectors=$(cat /sys/block/vda/size) vda-ro=$(cat /sys/block/vda/ro)"
        echo "CHECK blk: vda-head=$(dd if=/dev/vda bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
        dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\000' 'G' \
            | dd of=/dev/vda bs=1M seek=1 conv=fsync 2>/dev/null
        echo "CHECK blk: vda-write=$?"
        sync
        if [ -e /dev/vdb ]; then
            echo "CHECK blk: vdb-ro=$(cat /sys/block/vdb/ro)"
            if echo x | dd of=/dev/vdb bs=512 count=1 conv=fsync oflag=direct 2>/dev/null; then
                echo "CHECK blk: vdb-write=accepted"
            else
                echo "CHECK blk: vdb-write=refused"
            fi
        fi
        ;;
    ddbench)
        wait_for /dev/vda
        start=$(cut -d' ' -f1 /proc/uptime)
        dd if=/dev/vda of=/dev/null bs=1M count=64 iflag=direct 2>/dev/null
        end=$(cut -d' ' -f1 /proc/uptime)
        echo "CHECK ddbench: 64MiB start=$start end=$end"
        ;;
    nvme|nvme=*)
        # A passed-through NVMe: the host wrote a pattern in its first MiB; read it, write
        # our own (N, or nvme=X) at 1 MiB and read that back from the device (iflag=direct
        # skips the page cache). Nested, the controller's reset and scan take a while: 30 s.
        fill=N
        [ "$check" = nvme ] || fill=${check#nvme=}
        wait_for /dev/nvme0n1 300
        if [ ! -e /dev/nvme0n1 ]; then
            echo "CHECK nvme: no /dev/nvme0n1"
            continue
        fi
        echo "CHECK nvme: serial=$(cat /sys/block/nvme0n1/device/serial) sectors=$(cat /sys/block/nvme0n1/size)"
        echo "CHECK nvme: head=$(dd if=/dev/nvme0n1 bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
        dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\000' "$fill" \
            | dd of=/dev/nvme0n1 bs=1M seek=1 conv=fsync 2>/dev/null
        echo "CHECK nvme: write=$?"
        echo "CHECK nvme: readback=$(dd if=/dev/nvme0n1 bs=1M skip=1 count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
        sync
        ;;
    nvmebench|nvmebench=*)
        # nvmebench=0 is the baseline run whose VM exits the e2e bench subtracts.
        mib=64
        [ "$check" != nvmebench ] && mib=${check#nvmebench=}
        wait_for /dev/nvme0n1 300
        start=$(cut -d' ' -f1 /proc/uptime)
        dd if=/dev/nvme0n1 of=/dev/null bs=1M count="$mib" iflag=direct 2>/dev/null
        status=$?
        end=$(cut -d' ' -f1 /proc/uptime)
        echo "CHECK nvmebench: ${mib}MiB start=$start end=$end status=$status"
        ;;
    rng)
        wait_for /dev/hwrng
        echo "CHECK rng: current=$(cat /sys/class/misc/hw_random/rng_current 2>/dev/null)"
        echo "CHECK rng: bytes=$(dd if=/dev/hwrng bs=64 count=1 2>/dev/null | wc -c)"
        ;;
    irqs)
        grep -i -e virtio -e nvme /proc/interrupts | while read -r line; do
            echo "CHECK irqs: $line"
        done
        ;;
    cpus)
        echo "CHECK cpus: online=$(cat /sys/devices/system/cpu/online) nproc=$(nproc)"
        ;;
    cmdline)
        echo "CHECK cmdline: $(cat /proc/cmdline)"
        ;;
    exit=*)
        code=${check#exit=}
        # The VMM's test-exit device ends the VM here; reaching the next line is a failure.
        devmem 0x09020000 32 "$code"
        echo "CHECK exit: devmem returned"
        ;;
    panic)
        echo 1 > /proc/sys/kernel/sysrq
        echo c > /proc/sysrq-trigger
        echo "CHECK panic: still alive"
        ;;
    hang)
        echo "CHECK hang: sleeping forever"
        while :; do sleep 3600; done
        ;;
    stdin)
        echo "CHECK stdin: waiting for a line"
        read -r line
        echo "CHECK stdin: got=$line"
        ;;
    shell)
        echo "CHECK shell: type 'exit' to power off"
        setsid cttyhack sh -l
        ;;
    *)
        echo "CHECK $check: unknown check"
        ;;
esac
done

poweroff -f
