#!/bin/busybox sh
# /init of the emulated arm64 KVM host (L1) of Aperture's end-to-end rig.
# Prints a ready marker, runs /cases.sh (appended to the initramfs by the test harness or
# images/boot-demo.sh) if there is one, then powers off.

/bin/busybox mkdir -p /bin /sbin /usr/bin /usr/sbin /proc /sys /dev /tmp /run
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
exec 0<>/dev/console 1>&0 2>&0

# Like a host with NVMe drives: nvme takes them at boot, and VFIO is ready for passthrough
# (busybox has no module autoloading). Quiet where a module or device is absent.
modprobe -a nvme vfio-pci vfio_iommu_type1 2>/dev/null

kvm=absent
[ -c /dev/kvm ] && kvm=present
read -r up _ < /proc/uptime
echo "APERTURE-RIG-L1-READY kernel=$(uname -r) cpus=$(nproc) kvm=$kvm uptime=$up"

if [ -f /cases.sh ]; then
    sh /cases.sh
fi

read -r up _ < /proc/uptime
echo "APERTURE-RIG-L1-DONE uptime=$up"
poweroff -f
