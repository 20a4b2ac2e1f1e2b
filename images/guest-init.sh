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

check=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        aperture.check=*) check=${arg#aperture.check=} ;;
    esac
done

case "$check" in
    "") ;;
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

poweroff -f
