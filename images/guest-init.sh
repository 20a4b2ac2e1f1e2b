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

# aperture.check=LIST: the checks below. The DMA window driver (aperture_dma):
#   aperture.dmatarget=BDF   its target= (default: the device the window names)
#   aperture.dmabytes=MiB    how much the dmawin/dmapin checks move
#   aperture.dmabench=N      rounds of the dmabench check (default 2000, at most 100000)
#   aperture.dma=off         never load it
#   aperture.edu=P,P...      parameters of aperture_edu for the edu check, comma-separated
#                            (mask_bits=40,rounds=2,timing=1,big=1)
#   aperture.dma=selftest    load aperture_dma_selftest instead: the same driver against a
#                            software model of the VMM (identity addresses), for trying the
#                            checks where no Aperture window exists (QEMU + emulated NVMe);
#                            aperture.dmaselftest=limit_kib=4096,granule=16384 sets its
#                            parameters (comma-separated)
checks=
dmatarget=
dmabytes=
dmabench=2000
dmamode=auto
dmaselftest=
eduparams=
rebootdisk=/dev/vda
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        aperture.check=*) checks=${arg#aperture.check=} ;;
        aperture.dmatarget=*) dmatarget=${arg#aperture.dmatarget=} ;;
        aperture.dmabytes=*) dmabytes=${arg#aperture.dmabytes=} ;;
        aperture.dmabench=*) dmabench=${arg#aperture.dmabench=} ;;
        aperture.dma=*) dmamode=${arg#aperture.dma=} ;;
        aperture.dmaselftest=*) dmaselftest=${arg#aperture.dmaselftest=} ;;
        aperture.edu=*) eduparams=${arg#aperture.edu=} ;;
        aperture.rebootdisk=*) rebootdisk=${arg#aperture.rebootdisk=} ;;
    esac
done

# window_dev: prints the sysfs directory of the first aperture-dma function (1234:a9e0), or
# of the selftest's model.
window_dev() {
    for dev in /sys/bus/pci/devices/*; do
        [ -e "$dev/vendor" ] || continue
        # read, not $(cat): no fork per device (the VMM benchmark's boots run this too, and
        # would otherwise pay per PCI device the VMM offers).
        read -r wvendor < "$dev/vendor"
        read -r wdevice < "$dev/device"
        if [ "$wvendor" = 0x1234 ] && [ "$wdevice" = 0xa9e0 ]; then
            echo "$dev"
            return 0
        fi
    done
    [ -e /sys/devices/aperture_dma_selftest/target ] || return 1
    echo /sys/devices/aperture_dma_selftest
}

# The DMA window driver must own the target's DMA before the target's driver (NVMe) binds:
# load it first when the VMM offers a window, or when a check is about it.
dma_load="not loaded"
case ",$checks," in
    *,dmawin,*|*,dmapin,*|*,dmabench,*) want_dma=1 ;;
    *) want_dma= ;;
esac
if [ "$dmamode" = selftest ]; then
    dma_load="selftest: $(modprobe aperture_dma_selftest ${dmatarget:+target=$dmatarget} \
        $(echo "$dmaselftest" | tr ',' ' ') 2>&1 && echo loaded)"
elif [ "$dmamode" != off ] && { [ -n "$want_dma" ] || window_dev >/dev/null; }; then
    dma_load="$(modprobe aperture_dma ${dmatarget:+target=$dmatarget} 2>&1 && echo loaded)"
fi
dma_load=$(echo $dma_load)
# Drivers for whatever PCI devices the VMM gave us (quietly: absent devices are fine).
# snd_hda_intel: the HD audio function next to the rig's edu (a GPU's HDMI audio stand-in).
# The VMM benchmark (tests/src/vmm_bench.rs) compares VMMs that offer different devices: its
# boots load no drivers, its reads only virtio-blk's.
case ",$checks," in
    ,bench,|,dmesg-disk,|,bench,trace-poweroff,) ;;
    ,bench-read,) modprobe -a virtio_pci virtio_blk 2>/dev/null ;;
    *) modprobe -a virtio_pci virtio_blk virtio_net virtio_rng virtio_console nvme snd_hda_codec_generic snd_hda_intel 2>/dev/null ;;
esac

# wait_for PATH [TENTHS]: waits up to TENTHS/10 s (default 10 s) for a device node the
# drivers create asynchronously.
wait_for() {
    n=0
    while [ ! -e "$1" ] && [ $n -lt "${2:-100}" ]; do sleep 0.1; n=$((n + 1)); done
}

# nvme_fn: the PCI address of the NVMe controller, if there is one.
nvme_fn() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/class" 2>/dev/null)" = 0x010802 ] && echo "${d##*/}"
    done
}

# read_until_removed CHECK: reads /dev/nvme0n1 in a loop until its PCI function goes away
# (at most 180 s), then stops reading; prints how long that took. False if it stayed.
read_until_removed() {
    dev=$(nvme_fn)
    (while dd if=/dev/nvme0n1 of=/dev/null bs=64k count=16 iflag=direct 2>/dev/null; do :; done
     echo "CHECK $1: reader stopped") &
    reader=$!
    echo "CHECK $1: reading $dev"
    n=0
    while [ -e "/sys/bus/pci/devices/$dev" ] && [ $n -lt 1800 ]; do sleep 0.1; n=$((n + 1)); done
    if [ -e "/sys/bus/pci/devices/$dev" ]; then
        echo "CHECK $1: still present after 180 s"
        kill "$reader" 2>/dev/null
        return 1
    fi
    echo "CHECK $1: removed after $((n / 10)).$((n % 10)) s"
    sleep 1
    kill "$reader" 2>/dev/null
    wait "$reader" 2>/dev/null
    return 0
}

# dma_window NAME: prints what the DMA window is; sets $win to its sysfs directory (empty
# if no aperture-dma function is bound to aperture_dma).
dma_window() {
    echo "CHECK $1: module=$dma_load"
    win=$(window_dev)
    if [ -n "$win" ] && [ -e "$win/target" ]; then
        echo "CHECK $1: window=$(basename "$win") target=$(cat "$win/target") installed=$(cat "$win/installed") $(cat "$win/limits")"
    else
        win=
        echo "CHECK $1: window=none (no aperture-dma function bound: DMA is not windowed)"
    fi
}

# dma_mib NAME FACTOR: sets $mib, the MiB a DMA check moves: aperture.dmabytes, else FACTOR
# times the window's byte limit, else 64; at most half the guest's free memory.
dma_mib() {
    if [ -n "$dmabytes" ]; then
        mib=$dmabytes
    elif [ -n "$win" ]; then
        mib=$(( ($(cat "$win/limit_bytes") * $2 + 1048575) / 1048576 ))
    else
        mib=64
    fi
    avail=$(( $(sed -n 's/^MemAvailable: *\([0-9]*\) kB/\1/p' /proc/meminfo) / 2048 ))
    if [ "$mib" -gt "$avail" ]; then
        echo "CHECK $1: note: ${mib}MiB capped to ${avail}MiB by guest memory (give --memory more)"
        mib=$avail
    fi
}

# dma_report NAME: the window's counters and aperture_dma's kernel messages (those no
# earlier check printed).
dma_seen=0
dma_report() {
    if [ -n "$win" ]; then
        echo "CHECK $1: stats maps=$(cat "$win/maps") unmaps=$(cat "$win/unmaps") map-failures=$(cat "$win/map_failures") unmap-failures=$(cat "$win/unmap_failures") doorbells=$(cat "$win/doorbells") live-maps=$(cat "$win/live_maps") live-bytes=$(cat "$win/live_bytes") peak-bytes=$(cat "$win/peak_bytes") host-live: $(cat "$win/host_live")"
        echo "CHECK $1: last-error=$(cat "$win/last_error")"
    fi
    dmesg | grep aperture_dma | tail -n +$((dma_seen + 1)) | while read -r line; do
        echo "CHECK $1: dmesg: $line"
    done
    dma_seen=$(dmesg | grep -c aperture_dma)
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
    bench)
        # Boot-to-poweroff: nothing to do but report the uptime (below).
        ;;
    bench-read)
        # 5 rounds of O_DIRECT reads of /dev/vda at 1 MiB and 4 KiB. The VMM's exits are
        # sampled by the host at the START and END markers (kept short: console bytes exit too).
        wait_for /dev/vda
        for round in 1 2 3 4 5; do
            for spec in 1M:128 4K:2048; do
                bs=${spec%:*} count=${spec#*:}
                echo "BENCH-READ-START"
                sleep 0.5
                start=$(cut -d' ' -f1 /proc/uptime)
                dd if=/dev/vda of=/dev/null bs=$bs count=$count iflag=direct 2>/dev/null
                status=$?
                end=$(cut -d' ' -f1 /proc/uptime)
                sleep 0.5
                echo "BENCH-READ-END"
                echo "BENCH-READ round=$round bs=$bs count=$count start=$start end=$end status=$status"
            done
        done
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
    dmawin)
        # NVMe DMA through the DMA window (aperture_dma): write a random pattern larger
        # than the window holds at 8 MiB, read it back from the device. Buffered I/O (with
        # the page cache dropped in between) so the DMA touches as many distinct guest
        # pages as the pattern has: O_DIRECT would reuse dd's one buffer.
        dma_window dmawin
        wait_for /dev/nvme0n1 300
        if [ ! -e /dev/nvme0n1 ]; then
            echo "CHECK dmawin: no /dev/nvme0n1"
            dma_report dmawin
            continue
        fi
        dma_mib dmawin 4
        disk=$(( $(cat /sys/block/nvme0n1/size) / 2048 ))
        if [ $((mib + 8)) -gt "$disk" ]; then
            echo "CHECK dmawin: nvme0n1 has ${disk}MiB, too small for ${mib}MiB at 8 MiB"
            continue
        fi
        echo "CHECK dmawin: bytes=${mib}MiB"
        dd if=/dev/urandom of=/tmp/dmawin.pat bs=1M count="$mib" 2>/dev/null
        wrote=$(md5sum < /tmp/dmawin.pat | cut -d' ' -f1)
        dd if=/tmp/dmawin.pat of=/dev/nvme0n1 bs=1M seek=8 conv=fsync 2>/dev/null
        status=$?
        rm -f /tmp/dmawin.pat
        [ $status -eq 0 ] || echo "CHECK dmawin: write status=$status"
        sync
        echo 3 > /proc/sys/vm/drop_caches
        readback=$(dd if=/dev/nvme0n1 bs=1M skip=8 count="$mib" 2>/dev/null | md5sum | cut -d' ' -f1)
        verdict=MISMATCH
        [ "$wrote" = "$readback" ] && [ $status -eq 0 ] && verdict=ok
        echo "CHECK dmawin: wrote=$wrote read=$readback $verdict"
        dma_report dmawin
        ;;
    dmapin)
        # More DMA in flight than the window holds: one O_DIRECT read of 4 times its byte
        # limit becomes many NVMe commands at once. Maps past the limit fail (ENOSPC) and
        # NVMe retries them as others complete: the read must still finish. Reads only.
        dma_window dmapin
        wait_for /dev/nvme0n1 300
        if [ ! -e /dev/nvme0n1 ]; then
            echo "CHECK dmapin: no /dev/nvme0n1"
            dma_report dmapin
            continue
        fi
        dma_mib dmapin 4
        disk=$(( $(cat /sys/block/nvme0n1/size) / 2048 ))
        [ "$mib" -le "$disk" ] || mib=$disk
        before=0
        [ -n "$win" ] && before=$(cat "$win/map_failures")
        start=$(cut -d' ' -f1 /proc/uptime)
        timeout 120 dd if=/dev/nvme0n1 of=/dev/null bs="${mib}M" count=1 iflag=direct 2>/dev/null
        status=$?
        end=$(cut -d' ' -f1 /proc/uptime)
        after=0
        [ -n "$win" ] && after=$(cat "$win/map_failures")
        echo "CHECK dmapin: bytes=${mib}MiB status=$status map-failures=$((after - before)) start=$start end=$end"
        dma_report dmapin
        ;;
    dmabench)
        # MAP/UNMAP round trips through the window, timed by aperture_dma itself on its own
        # scratch pages (the target's DMA is left alone): N single-entry rounds (a MAP
        # doorbell and an UNMAP doorbell each), then N/128 rounds of 128-entry doorbells.
        # The window's function may still be probing: wait up to 10 s for it to be bound.
        n=0
        while [ $n -lt 100 ]; do
            w=$(window_dev) && [ -e "$w/bench" ] && break
            # No aperture-dma function at all (and no selftest model): nothing to wait for.
            [ -z "$w" ] && break
            sleep 0.1; n=$((n + 1))
        done
        dma_window dmabench
        if [ -z "$win" ] || [ ! -e "$win/bench" ]; then
            echo "CHECK dmabench: no window"
            continue
        fi
        if echo "$dmabench" > "$win/bench"; then
            echo "CHECK dmabench: $(cat "$win/bench_result")"
        else
            echo "CHECK dmabench: bench=$dmabench failed (1..100000 rounds)"
        fi
        ;;
    edu)
        # DMA round trips through QEMU's edu (the rig's GPU-like stand-in, 1234:11e8) with
        # aperture_edu: its verdict line, its interrupt line (MSI through the ITS), and the
        # aperture_dma lines if a window carries its DMA.
        echo "CHECK edu: kernel=$(uname -r)"
        echo "CHECK edu: load=$(modprobe aperture_edu $(echo "$eduparams" | tr ',' ' ') 2>&1 && echo ok)"
        dmesg | grep -e 'aperture_edu: ' -e aperture_dma | grep -v -e taint | sed 's/^\[[^]]*\] //' \
            | while read -r line; do echo "CHECK edu: $line"; done
        grep aperture_edu /proc/interrupts | while read -r line; do
            echo "CHECK edu: irq: $line"
        done
        ;;
    hdaudio)
        # The HD audio function (function 1 of the edu's slot): snd_hda_intel's probe and
        # its interrupt. The codec probe is asynchronous: wait up to 5 s for the card.
        n=0
        while ! grep -qs '^ *[0-9]' /proc/asound/cards && [ $n -lt 50 ]; do
            sleep 0.1; n=$((n + 1))
        done
        echo "CHECK hdaudio: cards=$(grep -c '^ *[0-9]' /proc/asound/cards 2>/dev/null)"
        for dev in /sys/bus/pci/devices/*; do
            [ "$(cat "$dev/class")" = 0x040300 ] || continue
            drv=none
            [ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
            echo "CHECK hdaudio: $(basename "$dev") driver=$drv msi=$(ls "$dev/msi_irqs" 2>/dev/null | wc -l)"
        done
        grep snd_hda_intel /proc/interrupts | while read -r line; do
            echo "CHECK hdaudio: irq: $line"
        done
        dmesg | grep -i -e snd_hda -e 'hda_intel' | head -n 5 | while read -r line; do
            echo "CHECK hdaudio: dmesg: $line"
        done
        ;;
    net|netserve|netbench|netbench=*)
        # virtio-net: DHCP on eth0 (busybox udhcpc; the script below sets the address and
        # the route), then ping the DHCP server's router and fetch /hello.txt from its HTTP
        # server. netserve then answers one connection on port 8080 (for a port forward to
        # the guest). netbench[=MiB] instead sends MiB (default 64) to port 5001 of the
        # router with nc and prints dd's figures.
        wait_for /sys/class/net/eth0
        echo "CHECK net: mac=$(cat /sys/class/net/eth0/address 2>/dev/null) features=$(cat /sys/class/net/eth0/device/features 2>/dev/null)"
        cat > /tmp/udhcpc.sh <<'SCRIPT'
#!/bin/sh
case "$1" in
    bound|renew)
        ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
        [ -n "$router" ] && route add default gw "${router%% *}" dev "$interface"
        echo "${router%% *}" > /tmp/net.router
        ;;
esac
SCRIPT
        chmod +x /tmp/udhcpc.sh
        ip link set eth0 up
        udhcpc -i eth0 -s /tmp/udhcpc.sh -n -q -t 20 -T 1 >/dev/null 2>&1
        router=$(cat /tmp/net.router 2>/dev/null)
        echo "CHECK net: addr=$(ip -4 addr show eth0 | sed -n 's/.*inet \([0-9.\/]*\).*/\1/p') router=$router"
        if [ "$check" = net ] || [ "$check" = netserve ]; then
            if ping -c 3 -W 5 "$router" >/dev/null 2>&1; then
                echo "CHECK net: ping=ok"
            else
                echo "CHECK net: ping=failed"
            fi
            # (busybox 1.35's wget crashes with -T: bound it with timeout instead.)
            echo "CHECK net: wget=$(timeout 30 wget -q -O - "http://$router/hello.txt" 2>&1)"
            if [ "$check" = netserve ]; then
                echo "CHECK netserve: listening on 8080"
                if echo "served-by-the-guest" | timeout 120 nc -l -p 8080 >/dev/null 2>&1; then
                    echo "CHECK netserve: served"
                else
                    echo "CHECK netserve: no connection"
                fi
            fi
        else
            mib=64
            [ "$check" != netbench ] && mib=${check#netbench=}
            start=$(cut -d' ' -f1 /proc/uptime)
            dd if=/dev/zero bs=64k count=$((mib * 16)) 2>/dev/null | nc "$router" 5001
            end=$(cut -d' ' -f1 /proc/uptime)
            echo "CHECK netbench: ${mib}MiB start=$start end=$end"
        fi
        ;;
    netreset)
        # A virtio-net driver reset: eth0's virtio device leaves virtio_net (the driver resets
        # the device) and comes back (a new DRIVER_OK); a `net` check after it proves the
        # device served its queues again.
        dev=$(basename "$(readlink /sys/class/net/eth0/device)")
        echo "$dev" > /sys/bus/virtio/drivers/virtio_net/unbind
        gone=$([ -e /sys/class/net/eth0 ] && echo no || echo yes)
        echo "$dev" > /sys/bus/virtio/drivers/virtio_net/bind
        wait_for /sys/class/net/eth0
        echo "CHECK netreset: $dev unbound (eth0 gone=$gone) and bound again: eth0=$([ -e /sys/class/net/eth0 ] && echo back || echo missing)"
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
    kaslr)
        # What the kernel made of the device tree's kaslr-seed (and whether it forced KPTI).
        echo "CHECK kaslr: $(dmesg | grep -o -e 'KASLR [a-z ]*' -e 'isolation forced ON by KASLR' | tr '\n' ';')"
        ;;
    dmesg)
        # The kernel log, for profiling a boot with `quiet` (add initcall_debug for more).
        dmesg | while read -r line; do echo "CHECK dmesg: $line"; done
        ;;
    trace-poweroff)
        # The power-off path on the console, with timestamps (boot with printk.time=1): every
        # kernel message from here on, and one line per device shut down.
        echo 1 > /sys/module/kernel/parameters/initcall_debug
        echo 8 > /proc/sys/kernel/printk
        ;;
    dmesg-disk)
        # The kernel log onto /dev/vda (zero-padded), for a host to read: a whole
        # initcall_debug log costs minutes through a trapped console, a disk write ~nothing.
        # Loads virtio-blk only now, so the boot it logs is the one without drivers.
        echo "CHECK dmesg-disk: uptime $(cut -d' ' -f1 /proc/uptime)"
        modprobe -a virtio_pci virtio_blk 2>/dev/null
        wait_for /dev/vda
        dmesg > /tmp/dmesg.txt
        dd if=/tmp/dmesg.txt of=/dev/vda bs=64k conv=fsync,sync 2>/dev/null
        echo "CHECK dmesg-disk: $(wc -c < /tmp/dmesg.txt) bytes status=$?"
        ;;
    profile)
        # Where a boot's time went, for comparing VMMs (boot with printk.time=1, and
        # initcall_debug for the initcall lines): initcalls of 20 ms or more, lines that came
        # 30 ms or more after the one before, then what one trapped access costs: 640 4-byte
        # reads of each PCI function's configuration space (one exit each) against 10, 20000
        # system calls, and 400 console bytes against 1.
        dmesg | awk '{ t = substr($0, 2, 12) + 0 }
            / returned .* after [0-9]+ usecs/ { n = $(NF - 1) + 0; if (n >= 20000) printf "PROF initcall %.3f %s %d ms\n", t, $4, n / 1000 }
            t - last >= 0.03 && !/^\[ *[0-9.]+\] (calling|initcall) / { printf "PROF gap %.0f ms before: %s\n", (t - last) * 1000, substr($0, 1, 90) }
            { last = t }'
        for dev in /sys/bus/pci/devices/*; do
            [ -e "$dev/config" ] || continue
            t0=$(cut -d' ' -f1 /proc/uptime)
            for i in 1 2 3 4 5 6 7 8 9 10; do dd if="$dev/config" of=/dev/null bs=4 count=1 2>/dev/null; done
            t1=$(cut -d' ' -f1 /proc/uptime)
            for i in 1 2 3 4 5 6 7 8 9 10; do dd if="$dev/config" of=/dev/null bs=4 count=64 2>/dev/null; done
            t2=$(cut -d' ' -f1 /proc/uptime)
            echo "PROF config reads ${dev##*/}: 10 in $t0..$t1, 640 in $t1..$t2"
        done
        # Kernel entries from user space: 20000 one-byte reads and writes (KPTI's cost).
        t0=$(cut -d' ' -f1 /proc/uptime)
        dd if=/dev/zero of=/dev/null bs=1 count=10000 2>/dev/null
        t1=$(cut -d' ' -f1 /proc/uptime)
        echo "PROF syscalls: 20000 in $t0..$t1"
        line=$(printf '%0400d' 0)
        t0=$(cut -d' ' -f1 /proc/uptime)
        echo x
        t1=$(cut -d' ' -f1 /proc/uptime)
        echo "$line"
        t2=$(cut -d' ' -f1 /proc/uptime)
        echo "PROF console: 2 bytes in $t0..$t1, 401 in $t1..$t2"
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
    powerkey)
        # The VMM's power key: a PL061 line behind gpio-keys (KEY_POWER = 116). Waits for a
        # press on its event device, then powers off as a distribution would.
        modprobe -a gpio_keys evdev 2>/dev/null
        dev=
        n=0
        while [ -z "$dev" ] && [ $n -lt 100 ]; do
            for input in /sys/class/input/input*; do
                [ "$(cat "$input/name" 2>/dev/null)" = gpio-keys ] || continue
                for event in "$input"/event*; do [ -e "$event" ] && dev=/dev/input/${event##*/}; done
            done
            [ -n "$dev" ] || { sleep 0.1; n=$((n + 1)); }
        done
        wait_for "$dev"
        if [ -z "$dev" ] || [ ! -e "$dev" ]; then
            echo "CHECK powerkey: no gpio-keys input device: inputs=$(ls /sys/class/input | tr '\n' ' ') modules=$(cut -d' ' -f1 /proc/modules | tr '\n' ' ')"
            dmesg | grep -i -e gpio -e pl061 -e input | sed 's/^/CHECK powerkey: dmesg: /'
        else
            # Open before saying so: evdev queues events only for open readers, and the
            # VMM's test presses the key as soon as it reads the line below.
            exec 3<"$dev"
            echo "CHECK powerkey: waiting on $dev"
            # struct input_event on arm64: 16 bytes of time, then u16 type, u16 code, s32 value.
            while :; do
                set -- $(dd bs=24 count=1 <&3 2>/dev/null | od -An -tu2 -j16 -N6)
                [ "$1" = 1 ] && [ "$2" = 116 ] && [ "$3" = 1 ] && break
            done
            exec 3<&-
            echo "CHECK powerkey: KEY_POWER pressed; powering off"
        fi
        ;;
    reboot)
        # Reboot in place: RAM does not survive it, so the boots are counted on a disk
        # (aperture.rebootdisk=, default /dev/vda) in the sector at 3 MiB. The first boot
        # marks it and reboots (`reboot -f`: PSCI SYSTEM_RESET); the second finds the mark,
        # clears it and goes on with the next checks.
        wait_for "$rebootdisk" 300
        mark=$(dd if="$rebootdisk" bs=512 skip=6144 count=1 iflag=direct 2>/dev/null | head -c 16)
        if [ "$mark" = APERTURE-REBOOT1 ]; then
            dd if=/dev/zero of="$rebootdisk" bs=512 seek=6144 count=1 conv=fsync 2>/dev/null
            echo "CHECK reboot: boot 2: found the mark of boot 1; uptime=$(cut -d' ' -f1 /proc/uptime)"
        else
            printf APERTURE-REBOOT1 | dd of="$rebootdisk" bs=512 seek=6144 count=1 conv=sync,fsync 2>/dev/null
            sync
            echo "CHECK reboot: boot 1: marked $rebootdisk; rebooting"
            reboot -f
            sleep 30
            echo "CHECK reboot: still running after reboot -f"
        fi
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
    unplug)
        # The host takes the passed-through NVMe away while this guest reads it: pciehp must
        # remove it (the slot reports empty) and the guest go on.
        wait_for /dev/nvme0n1 300
        if [ ! -e /dev/nvme0n1 ]; then
            echo "CHECK unplug: no /dev/nvme0n1"
            continue
        fi
        read_until_removed unplug
        dmesg | grep -e pciehp -e nvme | tail -n 12 | sed 's/^/CHECK unplug: dmesg: /'
        echo "CHECK unplug: alive, $(ls /sys/bus/pci/devices | wc -l) PCI functions left"
        ;;
    replug)
        # The host takes the passed-through NVMe away while this guest reads it, then gives
        # it back (SIGUSR1 to Aperture): pciehp removes it, then adds it again, and the guest
        # reads the disk's first MiB (the rig fills it with one byte) through it again.
        wait_for /dev/nvme0n1 300
        if [ ! -e /dev/nvme0n1 ]; then
            echo "CHECK replug: no /dev/nvme0n1"
            continue
        fi
        echo "CHECK replug: head before=$(dd if=/dev/nvme0n1 bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
        read_until_removed replug || continue
        echo "CHECK replug: waiting for the device to come back"
        n=0
        back=
        while [ -z "$back" ] && [ $n -lt 3000 ]; do
            back=$(nvme_fn)
            [ -n "$back" ] || { sleep 0.1; n=$((n + 1)); }
        done
        if [ -z "$back" ]; then
            echo "CHECK replug: not back after 300 s"
            continue
        fi
        echo "CHECK replug: back after $((n / 10)).$((n % 10)) s as $back"
        disk=
        n=0
        while [ -z "$disk" ] && [ $n -lt 600 ]; do
            for b in /dev/nvme*n1; do [ -b "$b" ] && disk=$b; done
            [ -n "$disk" ] || { sleep 0.1; n=$((n + 1)); }
        done
        if [ -z "$disk" ]; then
            echo "CHECK replug: no disk behind $back after 60 s"
        else
            echo "CHECK replug: disk $disk serial=$(cat /sys/block/${disk#/dev/}/device/serial 2>/dev/null)"
            echo "CHECK replug: first bytes=$(dd if="$disk" bs=4096 count=1 iflag=direct 2>/dev/null | head -c 8 | od -An -tx1 | tr -s ' ')"
            echo "CHECK replug: head=$(dd if="$disk" bs=1M count=1 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
        fi
        dmesg | grep -e pciehp -e nvme | tail -n 16 | sed 's/^/CHECK replug: dmesg: /'
        echo "CHECK replug: alive, $(ls /sys/bus/pci/devices | wc -l) PCI functions"
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

case ",$checks," in
    *,bench,*|*,bench-read,*) echo "BENCH-UPTIME $(cut -d' ' -f1 /proc/uptime)" ;;
esac
poweroff -f
