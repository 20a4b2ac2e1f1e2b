//! End-to-end tests: `aperture` boots the test guest inside an emulated arm64 KVM host.
//!
//! All cases run in ONE boot of the emulated host (shared through a `OnceLock`), so the
//! first test to run pays for the boot and the others read their case's output.
//! Run them with `tests/run-e2e.sh` (builds the guest and the rig first).

// The assertion helpers below panic, as assertions do.
#![allow(clippy::panic)]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aperture_e2e::{
    bench_seconds, edu_qemu_args, nvme_bench_script, run_cases_with, Case, CaseOutput, NvmeDisks,
    RigOptions, RigRun, EDU_PRELUDE, NET_PRELUDE, NVME_PATTERN, NVME_PRELUDE,
};

/// Printed by the test guest's /init (images/guest-init.sh).
const GUEST_MARKER: &str = "APERTURE-GUEST-INIT-OK";
/// QEMU is stopped after this long unless `APERTURE_E2E_TIMEOUT` (seconds) says otherwise.
const DEFAULT_RIG_TIMEOUT: Duration = Duration::from_secs(1800);
/// MiB the guest sends to L1 in `net_throughput_figures` per backend (a figure for people:
/// `tests/net-bench.sh` measures with more).
const NET_BENCH_MIB: u32 = 4;
/// Watchdog inside L1 for cases that must fail fast.
const BAD_INPUT_LIMIT: Duration = Duration::from_secs(60);

/// `aperture run` of the nested guest; every case bounds itself with `--timeout`.
const RUN: &str = "/aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 60";

/// A guest command line running `check`. `quiet`: in the nested rig each console byte
/// costs an emulated exit: the ~230 boot lines make a boot ~11 s; quiet, ~5 s.
/// (Kernel panics print at emergency level, so they still show.)
fn with_check(check: &str) -> String {
    format!("--cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check={check}'")
}

/// What the guests write at 1 MiB of NVMe A and of NVMe B.
const FILL_A: u8 = b'N';
const FILL_B: u8 = b'M';

/// The byte filling the first and the second MiB of an NVMe image after the run (`None`:
/// not uniform).
#[derive(Debug, Clone, Copy)]
struct ImageFill {
    head: Option<u8>,
    written: Option<u8>,
}

struct Shared {
    run: Result<RigRun, String>,
    token: String,
    /// NVMe A's and B's images, read back on this host after L1 powered off.
    images: Result<[ImageFill; 2], String>,
}

static SHARED: OnceLock<Shared> = OnceLock::new();

fn cases(token: &str) -> Vec<Case> {
    vec![
        // The rig itself: L1 has KVM (holds with or without aperture).
        Case::new(
            "l1-kvm",
            "ls -l /dev/kvm && uname -r && dmesg | grep -i 'kvm \\[' | head -n 3",
        ),
        Case::new("one-vcpu", format!("{RUN} --cpus 1 {}", with_check("cpus"))),
        Case::new("two-vcpus", format!("{RUN} --cpus 2 {}", with_check("cpus"))),
        // The default command line (not quiet): the whole boot log comes out.
        Case::new("default-cmdline", RUN),
        Case::new(
            "cmdline",
            format!(
                "{RUN} --cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check=cmdline aperture.token={token}'"
            ),
        ),
        Case::new("kaslr-auto", format!("{RUN} {}", with_check("kaslr"))),
        Case::new("kaslr-on", format!("{RUN} --kaslr on {}", with_check("kaslr"))),
        Case::new("exit-7", format!("{RUN} {}", with_check("exit=7"))),
        Case::new("panic-reset", format!("{RUN} --no-reboot {}", with_check("panic"))),
        Case::new(
            "timeout",
            format!(
                "/aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 5 {}",
                with_check("hang")
            ),
        ),
        Case::new(
            "gzip-image",
            format!(
                "/aperture run --kernel /guest/Image.gz --initrd /guest/guest.cpio --timeout 60 {}",
                with_check("cpus")
            ),
        ),
        // The guest's tty drains the UART when it opens, so a line sent before the guest
        // reads would be lost: send it every second until aperture exits (SIGPIPE ends the
        // writer).
        Case::new(
            "stdin",
            format!(
                "(while printf 'ping-42\\n'; do sleep 1; done) | {RUN} {}",
                with_check("stdin")
            ),
        ),
        Case::new(
            "bad-not-a-kernel",
            "/aperture run --kernel /bin/busybox --initrd /guest/guest.cpio --timeout 30",
        )
        .with_limit(BAD_INPUT_LIMIT),
        Case::new(
            "bad-missing-file",
            "/aperture run --kernel /guest/no-such-Image --initrd /guest/guest.cpio --timeout 30",
        )
        .with_limit(BAD_INPUT_LIMIT),
        Case::new("bad-small-memory", format!("{RUN} --memory 32M"))
            .with_limit(BAD_INPUT_LIMIT),
        Case::new("bad-zero-cpus", format!("{RUN} --cpus 0")).with_limit(BAD_INPUT_LIMIT),
        Case::new("pci-virtio", PCI_VIRTIO_SCRIPT),
        Case::new("bad-missing-disk", format!("{RUN} --disk /tmp/no-such-disk.img"))
            .with_limit(BAD_INPUT_LIMIT),
        Case::new("bad-disk-option", format!("{RUN} --disk /guest/guest.cpio,cache=none"))
            .with_limit(BAD_INPUT_LIMIT),
    ]
    .into_iter()
    .chain(net_cases(token))
    .chain(nvme_cases())
    .chain(edu_cases())
    .chain(power_cases())
    .collect()
}

/// `aperture OPTIONS` in the background with `check`; once its log shows `marker`, SIGTERM
/// (nothing when `marker` is empty). Prints the log (`vm: `) and `l1: status=N`.
fn power_script(options: &str, check: &str, marker: &str) -> String {
    let signal = if marker.is_empty() {
        String::new()
    } else {
        format!(
            r#"n=0
until grep -q '{marker}' /tmp/power.log; do
    [ $n -lt 900 ] && kill -0 $pid 2>/dev/null || break
    sleep 0.1; n=$((n + 1))
done
echo "l1: marker-seen=$(grep -c '{marker}' /tmp/power.log)"
kill -TERM $pid"#
        )
    };
    format!(
        r#"/aperture run -v --kernel /guest/Image --initrd /guest/guest.cpio {options} \
    {cmdline} > /tmp/power.log 2>&1 &
pid=$!
{signal}
wait $pid
st=$?
sed 's/^/vm: /' /tmp/power.log
echo "l1: status=$st"
exit $st"#,
        cmdline = with_check(check)
    )
}

/// The power key (PL061 + gpio-keys): SIGTERM presses it and the guest that waits for
/// KEY_POWER powers off (status 0); a guest that ignores it is stopped after
/// --shutdown-grace (status 4); with --shutdown-grace, --timeout presses it too (status 124).
fn power_cases() -> Vec<Case> {
    vec![
        Case::new(
            "power-key-sigterm",
            power_script("--timeout 120", "powerkey", "CHECK powerkey: waiting"),
        ),
        Case::new(
            "power-key-ignored",
            power_script("--timeout 120 --shutdown-grace 3", "hang", "CHECK hang:"),
        ),
        Case::new(
            "power-key-timeout",
            power_script("--timeout 25 --shutdown-grace 30", "powerkey", ""),
        ),
        // Reboot in place: boot 1 marks a virtio disk and runs `reboot -f`, boot 2 (same
        // process) finds the mark and powers off.
        Case::new(
            "reboot-in-place",
            format!(
                r#"dd if=/dev/zero of=/tmp/reboot.img bs=1M count=4 2>/dev/null
/aperture run -v --kernel /guest/Image --initrd /guest/guest.cpio --timeout 120 \
    --disk /tmp/reboot.img {} 2>&1
status=$?
echo "l1: status=$status"
exit $status"#,
                with_check("reboot")
            ),
        ),
        // The same with NVMe A assigned: its pattern is read in both boots (the device is
        // reset through VFIO for the reboot, traced when=reboot), the mark kept on it.
        Case::new(
            "nvme-reboot",
            format!(
                r#"{NVME_PRELUDE}
bind_vfio "$A" || exit 1
/aperture run -v --kernel /guest/Image --initrd /guest/guest.cpio --timeout 180 --device "$A" \
    --trace-pci /tmp/reboot-trace.log \
    --cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check=nvme,reboot aperture.rebootdisk=/dev/nvme0n1' 2>&1
status=$?
grep ' reset ' /tmp/reboot-trace.log | sed 's/^/l1: trace: /'
echo "l1: status=$status"
exit $status"#
            ),
        ),
    ]
}

/// virtio-net: the nested guest gets an address by DHCP from L1, pings it and fetches a
/// file from L1's HTTP server, over a tap and over the stream socket; bad `--net` values get
/// clear errors; and a transfer's throughput (printed by `net_throughput_figures`).
fn net_cases(token: &str) -> Vec<Case> {
    let net = |script: String| format!("TOKEN={token}\n{NET_PRELUDE}\n{script}");
    let vm = |setup: &str, nic: &str, check: &str| {
        net(format!(
            "{setup}\n{RUN} -v {nic} {}\nstatus=$?\necho \"l1: status=$status\"\nexit $status",
            with_check(check)
        ))
    };
    vec![
        // Userspace virtio-net (vhost=off); `net-vhost` is the same link in the host kernel.
        Case::new(
            "net-tap",
            vm("net_setup tap0 10.0.2 || exit 1", "--net tap=tap0,vhost=off", "net"),
        ),
        // vhost-net: first refused clearly while the module is out, then with it loaded the
        // guest's link works, again after a driver reset (unbind/bind) and after a reboot in
        // place (the transport's bus reset), each a hand-over back and forth.
        Case::new(
            "net-vhost",
            net(format!(
                r#"net_setup tap4 10.0.6 || exit 1
rmmod vhost_net 2>/dev/null
if [ ! -e /dev/vhost-net ]; then
    {RUN} --net tap=tap4,vhost=on > /tmp/vhost-missing.log 2>&1
    echo "l1: no module: status=$? $(grep 'aperture: error' /tmp/vhost-missing.log)"
fi
modprobe vhost_net || exit 1
dd if=/dev/zero of=/tmp/vhost.img bs=1M count=4 2>/dev/null
/aperture run -v --kernel /guest/Image --initrd /guest/guest.cpio --timeout 240     --disk /tmp/vhost.img --net tap=tap4,vhost=on {} 2>&1
status=$?
echo "l1: status=$status"
exit $status"#,
                with_check("net,netreset,net,reboot")
            )),
        )
        .with_limit(Duration::from_secs(300)),
        Case::new(
            "net-socket",
            vm(
                "net_setup tap1 10.0.3 || exit 1\nnet_peer /tmp/net1.sock tap1",
                "--net socket=/tmp/net1.sock",
                "net",
            ),
        ),
        // A tap that does not exist: Aperture (root in L1) creates it and brings it up; it
        // goes away with the VM.
        Case::new(
            "net-tap-create",
            format!(
                r#"modprobe tun
{RUN} --net tap=aptap7 {} > /tmp/net-create.log 2>&1 &
n=0
while [ ! -e /sys/class/net/aptap7 ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
echo "l1: during: flags=$(cat /sys/class/net/aptap7/flags 2>/dev/null)"
wait $!
echo "l1: status=$? after: $(ls /sys/class/net | grep -c aptap7)""#,
                with_check("cpus")
            ),
        ),
        // `--net user`: Aperture starts passt (Debian's, in L1's /opt/passt) for a port
        // forward. passt copies L1's address and route (a dummy NIC) into its DHCP answer,
        // maps the gateway's address to L1's loopback (the HTTP server) and forwards L1's
        // port 2222 to the guest's 8080, where the guest answers once.
        Case::new(
            "net-user",
            net(format!(
                r#"ip link set lo up || exit 1
# (the dummy module makes dummy0 itself.)
modprobe dummy && {{ [ -e /sys/class/net/dummy0 ] || ip link add dummy0 type dummy; }} \
    && ip addr add 192.168.100.2/24 dev dummy0 && ip link set dummy0 up \
    && ip route add default via 192.168.100.1 || exit 1
# passt runs as nobody: let it use ICMP echo sockets for the guest's ping.
echo "0 2147483647" > /proc/sys/net/ipv4/ping_group_range
mkdir -p /tmp/www-user && echo "hello-user-$TOKEN" > /tmp/www-user/hello.txt \
    && httpd -p 127.0.0.1:80 -h /tmp/www-user || exit 1
forward_probe() {{
    n=0
    while [ $n -lt 240 ]; do
        got=$(timeout 5 nc 127.0.0.1 2222 </dev/null 2>/dev/null)
        case "$got" in served-by-the-guest*) echo "l1: hostfwd 2222 got $got"; return ;; esac
        sleep 0.5; n=$((n + 1))
    done
    echo "l1: hostfwd 2222 got nothing"
}}
# (to a file: its line would interleave with the guest's console.)
forward_probe > /tmp/forward.log &
probe=$!
# passt sandboxes itself with pivot_root, which refuses a root on the initramfs itself (and a
# user namespace, which a chroot refuses): in a mount namespace of its own, Aperture (and so
# passt) runs with a bind mount of L1's root moved over /, as switch_root does.
mkdir -p /mnt/l1root
unshare -m --propagation private sh -c "mount -o rbind / /mnt/l1root && cd /mnt/l1root \
    && mount -o move . / && exec chroot . env PATH=/opt/passt:\$PATH /aperture run \
    --kernel /guest/Image --initrd /guest/guest.cpio --timeout 300 -v \
    --net user,hostfwd=tcp:2222-:8080 {}"
status=$?
wait $probe
cat /tmp/forward.log
echo "l1: status=$status"
exit $status"#,
                with_check("netserve")
            )),
        )
        .with_limit(Duration::from_secs(420)),
        Case::new(
            "net-bad",
            format!(
                r#"for nic in socket=/tmp/no-such.sock user tap=tap9,mac=01:00:5e:00:00:01 bridge=br0; do
    {RUN} --net "$nic" > /tmp/net-bad.log 2>&1
    echo "l1: --net $nic status=$? $(grep 'aperture: error' /tmp/net-bad.log)"
done"#
            ),
        )
        .with_limit(BAD_INPUT_LIMIT),
        // Guest to L1: NET_BENCH_MIB through nc to L1's nc, over the tap (userspace, then
        // vhost-net) and over the socket peer.
        Case::new(
            "net-bench",
            net(format!(
                r#"net_setup tap2 10.0.4 || exit 1
net_setup tap3 10.0.5 || exit 1
net_peer /tmp/net3.sock tap3
modprobe vhost_net
for nic in tap=tap2,vhost=off tap=tap2,vhost=on socket=/tmp/net3.sock; do
    # (busybox nc quits when its stdin ends; sleep keeps the listener's open.)
    (sleep 900 | nc -l -p 5001 | wc -c > /tmp/netbench.bytes) &
    /aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 300 --net "$nic" \
        {} | sed "s|^|$nic |"
    sleep 1
    echo "l1: $nic received=$(cat /tmp/netbench.bytes)"
done"#,
                with_check(&format!("netbench={NET_BENCH_MIB}"))
            )),
        )
        .with_limit(Duration::from_secs(960)),
    ]
}

/// The 6.12 guest (images/build-guest.sh's build/images/6.12, in L1 under /guest/6.12/).
const RUN_612: &str =
    "/aperture run --kernel /guest/6.12/Image --initrd /guest/6.12/guest.cpio --timeout 60";

/// What aperture_edu prints for `rounds` rounds (three round trips each, two MSIs per round
/// trip) plus `big` 2 MiB round trips.
fn edu_pass(rounds: u32, big: u32) -> String {
    let trips = 3 * rounds + big;
    format!("aperture_edu: PASS {trips} round trips, {} irqs", 2 * trips)
}

/// The GPU-like stand-in (tests/src/edu.rs): edu ($E, MSI only, 40-bit DMA) and HD audio
/// ($H) in one L1 slot, both bound to vfio-pci; assigned together they are one
/// multi-function device behind one guest root port.
fn edu_cases() -> Vec<Case> {
    let edu = |script: String| format!("{NVME_PRELUDE}\n{EDU_PRELUDE}\n{script}");
    let vm = |run: &str, devices: &str, check: &str| {
        edu(format!(
            r#"bind_vfio "$E" && bind_vfio "$H" || exit 1
{run} -v {devices} {}
status=$?
echo "l1: status=$status"
exit $status"#,
            with_check(check)
        ))
    };
    let both = r#"--device "$E" --device "$H""#;
    // Only the edu (the audio stays bound to vfio-pci in L1, unassigned).
    let window = r#"--device "$E,dma=window""#;
    vec![
        Case::new(
            "l1-edu",
            edu(r#"echo "l1: E=$E H=$H"
for bdf in $E $H; do
    d=/sys/bus/pci/devices/$bdf
    echo "l1: pci $bdf $(cat "$d/vendor"):$(cat "$d/device") class=$(cat "$d/class") driver=$(driver_of "$bdf") group=$(basename "$(readlink "$d/iommu_group")")"
done
bind_vfio "$E" && bind_vfio "$H"
echo "l1: bound E=$(driver_of "$E") H=$(driver_of "$H")""#
                .into()),
        ),
        // Identity DMA, the 6.1 guest: round trips with a 40-bit mask, MSIs, the audio.
        Case::new(
            "edu-identity",
            vm(RUN, both, "edu,hdaudio,pci aperture.edu=timing=1"),
        ),
        // The same on the 6.12 guest (its modules built against Debian's 6.12 headers).
        Case::new("edu-identity-612", vm(RUN_612, both, "edu aperture.edu=timing=1")),
        // DMA windows: edu's DMA through aperture_dma at host-picked addresses that must
        // be below 2^40 (protocol 1.1's mask_bits), on the 6.1 and the 6.12 guest.
        Case::new("edu-window", vm(RUN, window, "edu aperture.edu=timing=1")),
        Case::new("edu-window-612", vm(RUN_612, window, "edu aperture.edu=timing=1")),
        // A GPU and its audio in window mode: one IOMMU group, so one container and one
        // window manager (one IOVA space), an aperture-dma device each.
        Case::new(
            "edu-window-audio",
            vm(RUN, r#"--device "$E,dma=window" --device "$H,dma=window""#, "edu,hdaudio"),
        ),
        // A 2 MiB map through the window: its device address must be 2 MiB aligned.
        Case::new("edu-window-2m", vm(RUN, window, "edu aperture.edu=big=1,rounds=1")),
        // Two VMs in a row with edu and audio: neither has FLR, so the first VM resets their
        // slot with a VFIO hot reset at start and exit (its trace's resets are printed); the
        // second must find both working.
        Case::new(
            "edu-second-vm",
            edu(format!(
                r#"bind_vfio "$E" && bind_vfio "$H" || exit 1
run_vm vm1 {both} --trace-pci /tmp/edu-reset.trace {check}
grep ' reset ' /tmp/edu-reset.trace | sed 's/^/l1: trace: /'
run_vm vm2 {both} {check}"#,
                check = with_check("edu,hdaudio")
            )),
        ),
    ]
}

/// Passthrough of L1's emulated NVMe controllers (tests/src/nvme.rs): A keeps its MSI-X
/// table in BAR0 with the registers, B has it in a BAR of its own. Between cases both stay
/// bound to vfio-pci; a case that changes that puts it back.
fn nvme_cases() -> Vec<Case> {
    let nvme = |script: String| format!("{NVME_PRELUDE}\n{script}");
    // What the guest's `nvme` check must print: md5s of the host's pattern and of its fill.
    let expect = |fill: u8| {
        let (pattern, fill) = (NVME_PATTERN as char, fill as char);
        format!("echo \"l1: expect head=$(fill_md5 {pattern}) readback=$(fill_md5 {fill})\"")
    };
    let one_vm = |dev: &str, fill: u8, check: &str| {
        nvme(format!(
            r#"bind_vfio "${dev}" || exit 1
{}
{RUN} -v --device "${dev}" {}
status=$?
echo "l1: status=$status"
exit $status"#,
            expect(fill),
            with_check(check)
        ))
    };
    vec![
        // Where the controllers are in L1, with their drivers and IOMMU groups.
        Case::new(
            "l1-nvme",
            nvme(
                r#"echo "l1: A=$A B=$B"
for d in /sys/bus/pci/devices/*; do
    bdf=${d##*/}
    echo "l1: pci $bdf $(cat "$d/vendor"):$(cat "$d/device") class=$(cat "$d/class") driver=$(driver_of "$bdf") group=$(basename "$(readlink "$d/iommu_group")")"
done
bind_vfio "$A" && bind_vfio "$B"
echo "l1: bound A=$(driver_of "$A") B=$(driver_of "$B") /dev/vfio: $(ls /dev/vfio | tr '\n' ' ')""#
                    .into(),
            ),
        ),
        Case::new("nvme-shared-bar", one_vm("A", FILL_A, "pci,nvme,irqs")),
        // A again, the guest booted with pci=nomsi: its nvme driver falls back to INTx, which
        // Aperture routes to the SPI of the root port's slot (a level irqfd in L1's KVM).
        Case::new(
            "nvme-intx",
            nvme(format!(
                r#"bind_vfio "$A" || exit 1
{}
{RUN} -v --device "$A" --trace-pci /tmp/intx-trace.log \
    --cmdline 'console=ttyAMA0 panic=-1 quiet pci=nomsi aperture.check=pci,nvme,irqs'
status=$?
grep -m4 ' intx-' /tmp/intx-trace.log | sed 's/^/l1: trace: /'
echo "l1: status=$status"
exit $status"#,
                expect(FILL_A)
            )),
        ),
        // A with its doorbell page (BAR0 0x1000+0x1000) traced: trapped instead of mapped,
        // every access in the PCI trace; the driver's doorbell writes must show, and I/O work.
        Case::new(
            "nvme-trace-bar",
            nvme(format!(
                r#"bind_vfio "$A" || exit 1
{}
echo "l1: A=$A"
{RUN} -v --device "$A,trace-bar=0:0x1000+0x1000" --trace-pci /tmp/bar-trace.log {}
status=$?
# The doorbell page only (BAR0 also has the MSI-X table, trapped and traced anyway).
doorbells="$A  *bar-write  *bar=0 offset=0x1[0-9a-f][0-9a-f][0-9a-f] "
echo "l1: doorbell-writes=$(grep -c "$doorbells" /tmp/bar-trace.log)"
grep -m8 "$doorbells" /tmp/bar-trace.log | sed 's/^/l1: trace: /'
echo "l1: status=$status"
exit $status"#,
                expect(FILL_A),
                with_check("nvme")
            )),
        ),
        Case::new(
            "nvme-exclusive-bar",
            one_vm("B", FILL_B, &format!("pci,nvme={},irqs", FILL_B as char)),
        ),
        Case::new(
            "nvme-second-vm",
            nvme(format!(
                r#"bind_vfio "$A" || exit 1
{}
run_vm vm1 --device "$A" {check}
run_vm vm2 --device "$A" {check}"#,
                expect(FILL_A),
                check = with_check("nvme")
            )),
        ),
        // SIGTERM while the guest owns the device (it sleeps after its I/O): aperture stops
        // with 128+15 and a new VM gets the device.
        Case::new(
            "nvme-after-sigterm",
            nvme(format!(
                r#"bind_vfio "$A" || exit 1
{}
start_vm vm1 --device "$A" {}
wait_log vm1 'CHECK hang:' 60
echo "l1: vm1 ready=$?"
stop_vm vm1
echo "l1: after vm1: driver=$(driver_of "$A") /dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
run_vm vm2 --device "$A" {}"#,
                expect(FILL_A),
                with_check("nvme,hang"),
                with_check("nvme")
            )),
        ),
        // SIGTERM, and SIGHUP, while the guest is still booting (the VMM has opened and reset
        // the device and started the vCPUs; the guest's /init has not run): aperture stops
        // through its normal path (the device reset at exit) with 128+N, and a new VM gets
        // the device.
        Case::new("nvme-sigterm-during-boot", signal_during_boot("TERM", &expect(FILL_A))),
        Case::new("nvme-sighup-during-boot", signal_during_boot("HUP", &expect(FILL_A))),
        Case::new("nvme-host-bench", nvme_bench_script()),
        // DMA windows (dma=window): the guest's aperture_dma module maps every DMA buffer
        // through the aperture-dma device at host-picked device addresses (1 TiB up, never a
        // guest physical address, so a wrong translation corrupts the data the check reads
        // back). At the DART's 1536 MiB limit, then at 8 MiB with 6x as much data (eviction),
        // the same without coalescing (the note's comparison), and at 1 MiB where in-flight
        // I/O needs more than the limit (refused maps, retried by the guest).
        Case::new("nvme-window", window_vm("dma=window", "dmawin aperture.dmabytes=64")),
        Case::new(
            "nvme-window-evict",
            window_vm("dma-limit=8M", "dmawin,dmabench aperture.dmabytes=48"),
        ),
        Case::new(
            "nvme-window-nocoalesce",
            window_vm("dma-limit=8M,dma-window=16K", "dmawin aperture.dmabytes=48"),
        ),
        // 2 MiB, of which the NVMe driver's queues keep about 1 MiB mapped: a batch of 128
        // maps of scattered pages (2 MiB in 16 KiB granules) cannot all fit.
        Case::new(
            "nvme-window-pin",
            window_vm("dma-limit=2M", "dmabench aperture.dmabench=200"),
        ),
        // B with no driver at all (its driver_override stays vfio-pci).
        Case::new(
            "bad-device-not-bound",
            nvme(format!(
                r#"unbind "$B"
echo "l1: device=$B driver=$(driver_of "$B")"
{RUN} --device "$B"
status=$?
bind_vfio "$B"
exit $status"#
            )),
        )
        .with_limit(BAD_INPUT_LIMIT),
        Case::new("bad-device-missing", format!("{RUN} --device 0000:7f:1f.7"))
            .with_limit(BAD_INPUT_LIMIT),
        // VM1 holds A (its guest reached /init) when VM2 asks for it.
        Case::new(
            "bad-device-busy",
            nvme(format!(
                r#"bind_vfio "$A" || exit 1
echo "l1: device=$A"
start_vm vm1 --device "$A" {}
wait_log vm1 {GUEST_MARKER} 40
echo "l1: vm1 ready=$?"
{RUN} --device "$A" {}
status=$?
stop_vm vm1
exit $status"#,
                with_check("hang"),
                with_check("cpus")
            )),
        )
        .with_limit(BAD_INPUT_LIMIT),
        Case::new("bad-device-syntax", format!("{RUN} --device 01:00"))
            .with_limit(BAD_INPUT_LIMIT),
        // `aperture check` on A bound to nvme (a FAIL with the bind commands, status 1), then
        // on vfio-pci (all OK, status 0); `aperture devices` lists A on vfio-pci. Waiting for
        // A's disk lets the nvme probe finish before A is unbound again.
        Case::new(
            "check-and-devices",
            nvme(
                r#"bind_nvme "$A" || exit 1
host_disk aperture-a > /dev/null || echo "l1: error: no block device for A"
echo "l1: device=$A"
/aperture check --device "$A"
echo "l1: check-nvme status=$?"
bind_vfio "$A" || exit 1
/aperture check --device "$A"
echo "l1: check-vfio status=$?"
/aperture devices
echo "l1: devices status=$?"
/aperture devices --json
echo "l1: devices-json status=$?""#
                    .into(),
            ),
        ),
    ]
}

/// The `nvme-sig*-during-boot` cases: VM 1 gets NVMe A and signal `SIG<signal>` half a
/// second after its vCPUs started (`-v` logs `guest started`; its /init runs about 3 s later
/// in the rig, quiet). Its PCI trace's resets are printed (`l1: trace: `), then VM 2 runs
/// the `nvme` check on A.
fn signal_during_boot(signal: &str, expect: &str) -> String {
    format!(
        r#"{NVME_PRELUDE}
bind_vfio "$A" || exit 1
{expect}
start_vm vm1 -v --device "$A" --trace-pci /tmp/sig{signal}-trace.log {hang}
wait_log vm1 'guest started' 60
echo "l1: vm1 started=$?"
sleep 0.5
kill -{signal} "$vm_pid"
(sleep 20; kill -KILL "$vm_pid" 2>/dev/null) &
killer=$!
wait "$vm_pid"
st=$?
kill "$killer" 2>/dev/null
sed "s/^/vm1: /" /tmp/vm1.log
echo "l1: vm1 status=$st"
grep ' reset ' /tmp/sig{signal}-trace.log | sed 's/^/l1: trace: /'
echo "l1: after vm1: driver=$(driver_of "$A") /dev/vfio: $(ls /dev/vfio | tr '\n' ' ')"
run_vm vm2 --device "$A" {check}"#,
        hang = with_check("nvme,hang"),
        check = with_check("nvme")
    )
}

/// A VM with NVMe A passed through with `--device A,<dma>` and the guest checks `check`
/// (which may carry more `aperture.*` arguments); prints the VMM's log (`-v`) and the first
/// DMA map records of its JSON trace (`l1: trace: `).
fn window_vm(dma: &str, check: &str) -> String {
    format!(
        r#"{NVME_PRELUDE}
bind_vfio "$A" || exit 1
{RUN} -v --device "$A,{dma}" --trace-pci /tmp/window.trace --trace-format json \
    {cmdline}
status=$?
grep -m3 '"event":"dma-map"' /tmp/window.trace | sed 's/^/l1: trace: /'
echo "l1: status=$status"
exit $status"#,
        cmdline = with_check(check)
    )
}

/// The number before `word` in `line` (`"...; 143 evictions, ..."`).
fn number_before(line: &str, word: &str) -> Option<u64> {
    let before = &line[..line.find(word)?];
    before.split(|c: char| !c.is_ascii_digit()).rfind(|s| !s.is_empty())?.parse().ok()
}

/// The JSON number after `"key":` in `line`.
fn json_number(line: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\":");
    let rest = &line[line.find(&pattern)? + pattern.len()..];
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// The guest moved its data through the window and read back what it wrote; the window
/// served its NVMe target; device addresses were host-picked: not guest physical, outside
/// guest RAM (which starts at 1 GiB; the cases give it at most 2 GiB) and below 2^40, where a
/// 40-bit device (a Turing GPU's flush buffer) reaches them.
fn assert_window_io(run: &RigRun, output: &CaseOutput) {
    assert_contains(run, output, "CHECK dmawin: window=");
    assert_contains(run, output, "installed=1");
    let line = output.line_with("CHECK dmawin: wrote=").unwrap_or("");
    assert!(
        line.ends_with(" ok"),
        "the data read back through the DMA window differs: {line:?}\n{}",
        context(run, output)
    );
    let traced: Vec<&str> = output.output.lines().filter(|l| l.contains("l1: trace: ")).collect();
    assert!(!traced.is_empty(), "no dma-map records in the trace\n{}", context(run, output));
    const GUEST_RAM: std::ops::Range<u64> = 0x4000_0000..0x4000_0000 + (2 << 30);
    for record in traced.iter().filter(|r| r.contains("\"status\":\"OK\"")) {
        let (gpa, dev) = (json_number(record, "gpa"), json_number(record, "dev_addr"));
        let len = json_number(record, "len").unwrap_or(0);
        let placed = |d: u64| !GUEST_RAM.contains(&d) && d.saturating_add(len) <= 1 << 40;
        assert!(
            gpa.is_some() && dev.is_some_and(placed) && gpa != dev,
            "device address not host-picked: {record}\n{}",
            context(run, output)
        );
    }
    assert_status(run, output, 0);
}

/// The VMM's window statistics line that starts with `what` (`peaks:`, `requests:`).
fn window_stats<'a>(output: &'a CaseOutput, what: &str) -> &'a str {
    output.line_with(what).unwrap_or("")
}

/// PCI and virtio in one boot: the host writes patterns into two disk images (`A`s in a
/// read-write one, `R`s in a read-only one); the guest lists PCI, reads `vda`'s first MiB,
/// writes `G`s at 1 MiB, tries to write `vdb`, reads the RNG and lists its interrupts. Then
/// the host checks the images. `md5sum` lines let the test compare both sides.
const PCI_VIRTIO_SCRIPT: &str = r#"
dd if=/dev/zero bs=1M count=4 2>/dev/null | tr '\000' A > /tmp/rw.img
dd if=/dev/zero bs=1M count=2 2>/dev/null | tr '\000' R > /tmp/ro.img
echo "host: head=$(dd if=/tmp/rw.img bs=1M count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "host: ro-before=$(md5sum < /tmp/ro.img | cut -d' ' -f1)"
/aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 60 \
    --disk /tmp/rw.img --disk /tmp/ro.img,readonly --trace-pci /tmp/pci-trace.log \
    --cmdline 'console=ttyAMA0 panic=-1 quiet aperture.check=pci,blk,rng,irqs'
status=$?
echo "host: written=$(dd if=/tmp/rw.img bs=1M skip=1 count=1 2>/dev/null | md5sum | cut -d' ' -f1)"
echo "host: expected=$(dd if=/dev/zero bs=1M count=1 2>/dev/null | tr '\000' G | md5sum | cut -d' ' -f1)"
echo "host: ro-after=$(md5sum < /tmp/ro.img | cut -d' ' -f1)"
echo "host: trace-lines=$(wc -l < /tmp/pci-trace.log)"
grep -m1 'virtio-blk0 .*cfg-write' /tmp/pci-trace.log | sed 's/^/host: trace: /'
grep -m1 'virtio-blk0 .*bar-write *bar=0' /tmp/pci-trace.log | sed 's/^/host: trace: /'
exit $status
"#;

/// The value after `prefix` on the line that contains it.
fn value_after<'a>(output: &'a CaseOutput, prefix: &str) -> Option<&'a str> {
    value_in(output.line_with(prefix)?, prefix)
}

/// The word after `key` in `line`.
fn value_in<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    line[start..].split_whitespace().next()
}

/// The first CPU column of a `/proc/interrupts` line ("CHECK irqs: 16:   5   ITS-MSI ...":
/// the count follows the IRQ number).
fn irq_count(line: &str) -> u64 {
    let is_irq_number = |w: &&str| w.strip_suffix(':').is_some_and(|n| n.parse::<u32>().is_ok());
    line.split_whitespace()
        .skip_while(|w| !is_irq_number(w))
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let token = format!("e2e-{}-{nanos:x}", std::process::id());
        let limit = std::env::var("APERTURE_E2E_TIMEOUT")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_RIG_TIMEOUT);
        let mut options = RigOptions::new(limit);
        let disks = match NvmeDisks::create(&options.paths.rig_dir) {
            Ok(disks) => disks,
            Err(error) => {
                let error = format!("cannot create the NVMe images: {error}");
                return Shared { run: Err(error.clone()), token, images: Err(error) };
            }
        };
        options.extra_qemu_args = disks.qemu_args();
        options.extra_qemu_args.extend(edu_qemu_args());
        // APERTURE_E2E_CASES=a,b: only the cases whose names start with a or b (the tests
        // of the others fail with "no case named"), for trying a change quickly.
        let mut all = cases(&token);
        if let Ok(only) = std::env::var("APERTURE_E2E_CASES") {
            let wanted: Vec<&str> = only.split(',').filter(|w| !w.is_empty()).collect();
            all.retain(|case| wanted.iter().any(|w| case.name.starts_with(w)));
        }
        let run = run_cases_with(&all, &options).map_err(|error| error.to_string());
        let fill = |index: usize, mib: u64| disks.fill_of(index, mib).map_err(|e| e.to_string());
        let image = |index: usize| -> Result<ImageFill, String> {
            Ok(ImageFill { head: fill(index, 0)?, written: fill(index, 1)? })
        };
        let images = image(0).and_then(|a| Ok([a, image(1)?]));
        // `disks` drops here: the images go, their contents are in `images`.
        Shared { run, token, images }
    })
}

/// The shared run and the named case's output; panics with the rig's failure.
fn case(name: &str) -> (&'static RigRun, &'static CaseOutput) {
    RigRun::expect_case(&shared().run, "e2e", name)
}

fn context(run: &RigRun, output: &CaseOutput) -> String {
    format!("{}\n{}", output.describe(), run.summary())
}

/// Asserts the case ran to its end with `status`.
fn assert_status(run: &RigRun, output: &CaseOutput, status: i32) {
    assert_eq!(output.exit_status, Some(status), "wrong exit status\n{}", context(run, output));
}

fn assert_contains(run: &RigRun, output: &CaseOutput, needle: &str) {
    assert!(output.contains(needle), "expected {needle:?} in the output\n{}", context(run, output));
}

/// A bad input: status 1, a clear `aperture: error:` line, no hang.
fn assert_rejected(name: &str) -> (&'static RigRun, &'static CaseOutput) {
    let (run, output) = case(name);
    assert!(!output.watchdog_fired, "aperture hung\n{}", context(run, output));
    assert_status(run, output, 1);
    assert_contains(run, output, "aperture: error: ");
    (run, output)
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rig_host_has_kvm() {
    let (run, output) = case("l1-kvm");
    assert_status(run, output, 0);
    assert_contains(run, output, "/dev/kvm");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn boots_with_one_vcpu() {
    let (run, output) = case("one-vcpu");
    assert_contains(run, output, GUEST_MARKER);
    assert_contains(run, output, "CHECK cpus: online=0 nproc=1");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn boots_with_two_vcpus() {
    let (run, output) = case("two-vcpus");
    assert_contains(run, output, "CHECK cpus: online=0-1 nproc=2");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn initramfs_runs_with_default_cmdline() {
    let (run, output) = case("default-cmdline");
    assert_contains(run, output, GUEST_MARKER);
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn kaslr_seed_only_where_it_costs_no_kpti_unless_asked() {
    // The rig's emulated Neoverse N1 has no E0PD: `--kaslr auto` gives no seed, so the
    // guest runs without KPTI; `--kaslr on` gives one, and KASLR forces KPTI on.
    // (case, what its CHECK kaslr line must say, what it must not)
    let expected: [(&str, &[&str], &[&str]); 2] = [
        ("kaslr-auto", &["KASLR disabled due to lack of seed"], &["forced ON"]),
        ("kaslr-on", &["KASLR enabled", "isolation forced ON by KASLR"], &[]),
    ];
    for (name, present, absent) in expected {
        let (run, output) = case(name);
        let line = output.line_with("CHECK kaslr:").unwrap_or("");
        assert!(
            present.iter().all(|p| line.contains(p)) && !absent.iter().any(|a| line.contains(a)),
            "{name}: {line}\n{}",
            context(run, output)
        );
        assert_status(run, output, 0);
    }
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn cmdline_reaches_guest() {
    let (run, output) = case("cmdline");
    let token = &shared().token;
    let line = output.line_with("CHECK cmdline:").unwrap_or("");
    assert!(
        line.contains(token.as_str()),
        "expected token {token} in the CHECK cmdline line\n{}",
        context(run, output)
    );
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn test_exit_device_sets_exit_status() {
    let (run, output) = case("exit-7");
    assert!(
        !output.contains("CHECK exit: devmem returned"),
        "the test-exit device did not stop the VM\n{}",
        context(run, output)
    );
    assert_status(run, output, 7);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn guest_panic_resets() {
    let (run, output) = case("panic-reset");
    assert_contains(run, output, "Kernel panic");
    assert_status(run, output, 3);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn timeout_stops_hung_guest() {
    let (run, output) = case("timeout");
    assert!(
        output.output.to_lowercase().contains("timed out"),
        "expected \"timed out\" on stderr\n{}",
        context(run, output)
    );
    assert_status(run, output, 124);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn gzip_image_boots() {
    let (run, output) = case("gzip-image");
    assert_contains(run, output, GUEST_MARKER);
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn stdin_reaches_guest() {
    let (run, output) = case("stdin");
    assert_contains(run, output, "CHECK stdin: got=ping-42");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_file_that_is_not_a_kernel() {
    assert_rejected("bad-not-a-kernel");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_missing_kernel_naming_it() {
    let (run, output) = assert_rejected("bad-missing-file");
    let line = output.line_with("aperture: error: ").unwrap_or("");
    assert!(
        line.contains("/guest/no-such-Image"),
        "the error should name the missing path\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_memory_too_small_for_kernel_and_initrd() {
    assert_rejected("bad-small-memory");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_zero_vcpus() {
    assert_rejected("bad-zero-cpus");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn guest_lists_host_bridge_root_port_and_virtio_devices() {
    let (run, output) = case("pci-virtio");
    assert_status(run, output, 0);
    for device in [
        "CHECK pci: 0000:00:00.0 0x1b36:0x0008 class=0x060000",
        "CHECK pci: 0000:00:01.0 0x1b36:0x000c class=0x060400",
        "0x1af4:0x1042 class=0x018000 driver=virtio-pci",
        "0x1af4:0x1044 class=0xff0000 driver=virtio-pci",
    ] {
        assert_contains(run, output, device);
    }
    let blk = output.output.matches("0x1af4:0x1042").count();
    assert_eq!(blk, 2, "two virtio-blk functions expected\n{}", context(run, output));
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn virtio_blk_reads_what_the_host_wrote() {
    let (run, output) = case("pci-virtio");
    let host = value_after(output, "host: head=");
    let guest = value_after(output, "CHECK blk: vda-head=");
    assert!(host.is_some() && host == guest, "{host:?} != {guest:?}\n{}", context(run, output));
    assert_contains(run, output, "CHECK blk: vda-sectors=8192 vda-ro=0");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn virtio_blk_synced_write_lands_in_the_host_file() {
    let (run, output) = case("pci-virtio");
    assert_contains(run, output, "CHECK blk: vda-write=0");
    let written = value_after(output, "host: written=");
    let expected = value_after(output, "host: expected=");
    assert!(
        written.is_some() && written == expected,
        "{written:?} != {expected:?}\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn readonly_disk_refuses_writes() {
    let (run, output) = case("pci-virtio");
    assert_contains(run, output, "CHECK blk: vdb-ro=1");
    assert_contains(run, output, "CHECK blk: vdb-write=refused");
    let before = value_after(output, "host: ro-before=");
    let after = value_after(output, "host: ro-after=");
    assert!(before.is_some() && before == after, "image changed\n{}", context(run, output));
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn virtio_rng_supplies_bytes() {
    let (run, output) = case("pci-virtio");
    assert_contains(run, output, "CHECK rng: current=virtio_rng.0");
    assert_contains(run, output, "CHECK rng: bytes=64");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn virtio_interrupts_are_its_msis() {
    let (run, output) = case("pci-virtio");
    // Each virtio device has a config vector and a queue vector on the ITS, and the queue
    // vectors fired (a count above zero in the first CPU column).
    for queue in ["virtio0-req.0", "virtio1-req.0", "virtio2-input"] {
        let line = output.line_with(queue).unwrap_or("");
        assert!(line.contains("ITS-MSI"), "{queue} not on an ITS MSI\n{}", context(run, output));
        assert!(irq_count(line) > 0, "{queue} never fired\n{}", context(run, output));
    }
    assert_contains(run, output, "virtio0-config");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn pci_trace_records_config_and_bar_accesses() {
    let (run, output) = case("pci-virtio");
    let lines: u64 =
        value_after(output, "host: trace-lines=").and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!(lines > 100, "too few trace lines: {lines}\n{}", context(run, output));
    assert_contains(run, output, "host: trace: ");
    let trace: Vec<&str> = output.output.lines().filter(|l| l.contains("host: trace: ")).collect();
    assert!(
        trace.iter().any(|l| l.contains("cfg-write"))
            && trace.iter().any(|l| l.contains("bar-write") && l.contains("bar=0")),
        "trace lacks config or BAR writes: {trace:?}\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_missing_disk_naming_it() {
    let (run, output) = assert_rejected("bad-missing-disk");
    assert_contains(run, output, "--disk /tmp/no-such-disk.img: no such file");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_an_unknown_disk_option() {
    let (run, output) = assert_rejected("bad-disk-option");
    assert_contains(run, output, "unknown option \"cache=none\"");
}

/// The guest (its lines prefixed with `vm`) had the NVMe with `serial`, read the host's
/// pattern, wrote its fill and read it back, as the case's `l1: expect` line says.
fn assert_nvme_io(run: &RigRun, output: &CaseOutput, vm: &str, serial: &str) {
    assert_contains(run, output, &format!("{vm}CHECK nvme: serial={serial}"));
    let expect = output.line_with("l1: expect head=").unwrap_or("");
    for (what, key) in [("the host's pattern", "head="), ("the guest's write", "readback=")] {
        let want = value_in(expect, &format!(" {key}"));
        let got = value_after(output, &format!("{vm}CHECK nvme: {key}"));
        assert!(
            want.is_some() && got == want,
            "{vm}guest read {got:?}, not {what} ({want:?})\n{}",
            context(run, output)
        );
    }
    assert_contains(run, output, &format!("{vm}CHECK nvme: write=0"));
}

/// The guest's NVMe queue interrupts are MSI-X vectors on the ITS and fired.
fn assert_nvme_irqs(run: &RigRun, output: &CaseOutput) {
    for queue in ["nvme0q0", "nvme0q1"] {
        let line = output.line_with(queue).unwrap_or("");
        assert!(
            line.contains("ITS-") && line.contains("MSI"),
            "{queue} not on an ITS MSI\n{}",
            context(run, output)
        );
        assert!(irq_count(line) > 0, "{queue} never fired\n{}", context(run, output));
    }
}

/// NVMe image `index` after the run: its first MiB still the pattern, its second `fill`.
fn assert_image(index: usize, fill: u8, case_name: &str) {
    let (run, output) = case(case_name);
    let images = match &shared().images {
        Ok(images) => images,
        Err(error) => panic!("the NVMe images: {error}"),
    };
    let image = images[index];
    let show = |byte: Option<u8>| byte.map_or("mixed bytes".into(), |b| format!("{:?}", b as char));
    assert!(
        image.head == Some(NVME_PATTERN) && image.written == Some(fill),
        "NVMe image {index}: its first MiB holds {}, its second {}; want {:?} then {:?}\n{}",
        show(image.head),
        show(image.written),
        NVME_PATTERN as char,
        fill as char,
        context(run, output)
    );
}

/// A rejected `--device`: the error line names the device given by `l1: device=`.
fn assert_names_device(run: &RigRun, output: &CaseOutput) {
    let device = value_after(output, "l1: device=").unwrap_or("?");
    let line = output.line_with("aperture: error: ").unwrap_or("");
    assert!(line.contains(device), "the error should name {device}\n{}", context(run, output));
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rig_host_has_two_nvme_controllers_for_passthrough() {
    let (run, output) = case("l1-nvme");
    assert_status(run, output, 0);
    let (a, b) = (value_after(output, "l1: A=").unwrap_or(""), value_after(output, "B="));
    eprintln!("L1 NVMe controllers: A={a} B={}", b.unwrap_or(""));
    for bdf in [Some(a), b] {
        let bdf = bdf.filter(|bdf| bdf.starts_with("0000:")).unwrap_or("none");
        assert_contains(run, output, &format!("l1: pci {bdf} 0x1b36:0x0010 class=0x010802"));
    }
    assert_contains(run, output, "l1: bound A=vfio-pci B=vfio-pci");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn nvme_with_msix_table_in_bar0_passes_through() {
    let (run, output) = case("nvme-shared-bar");
    assert_contains(run, output, "l1: status=0");
    assert_contains(run, output, "0x1b36:0x0010 class=0x010802 driver=nvme");
    assert_nvme_io(run, output, "", "aperture-a");
    assert_nvme_irqs(run, output);
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn nvme_without_msi_interrupts_through_intx() {
    let (run, output) = case("nvme-intx");
    assert_contains(run, output, "l1: status=0");
    assert_nvme_io(run, output, "", "aperture-a");
    // A sits behind root port 00:01.0: INTA swizzles to the second INTx SPI (16 + 1).
    assert_contains(run, output, "INTx INTA on SPI 17");
    assert_contains(run, output, "intx-enable");
    assert_contains(run, output, "spi=17");
    let line = output
        .output
        .lines()
        .find(|l| l.contains("CHECK irqs:") && l.contains("nvme0q0"))
        .unwrap_or("");
    assert!(
        line.contains("GICv3") && !line.contains("MSI"),
        "nvme0q0 not on a GIC line\n{}",
        context(run, output)
    );
    assert!(irq_count(line) > 0, "nvme0q0 never fired\n{}", context(run, output));
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn traced_doorbell_page_records_the_drivers_doorbell_writes() {
    let (run, output) = case("nvme-trace-bar");
    assert_contains(run, output, "l1: status=0");
    assert_nvme_io(run, output, "", "aperture-a");
    let a = output.line_with("l1: A=").and_then(|l| l.strip_prefix("l1: A=")).unwrap_or("?");
    // `t source bar-write bar=0 offset=0x1000 size=4 value=0x1`
    let doorbells: Vec<u64> = output
        .lines
        .iter()
        .filter_map(|(_, line)| {
            let words: Vec<&str> = line.strip_prefix("l1: trace: ")?.split_whitespace().collect();
            let ok = words.get(1) == Some(&a) && words.get(2) == Some(&"bar-write");
            let ok = ok && words.contains(&"bar=0");
            let offset = words.iter().find_map(|w| w.strip_prefix("offset=0x"))?;
            ok.then(|| u64::from_str_radix(offset, 16).ok()).flatten()
        })
        .collect();
    assert!(
        !doorbells.is_empty() && doorbells.iter().all(|o| (0x1000..0x2000).contains(o)),
        "no doorbell writes of {a} in BAR0 0x1000..0x1fff in the trace: {doorbells:x?}\n{}",
        context(run, output)
    );
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn nvme_guest_write_lands_in_host_image() {
    assert_image(0, FILL_A, "nvme-shared-bar");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn nvme_with_msix_table_in_own_bar_passes_through() {
    let (run, output) = case("nvme-exclusive-bar");
    assert_contains(run, output, "l1: status=0");
    assert_contains(run, output, "0x1b36:0x0010 class=0x010802 driver=nvme");
    assert_nvme_io(run, output, "", "aperture-b");
    assert_nvme_irqs(run, output);
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn nvme_with_msix_table_in_own_bar_write_lands_in_host_image() {
    assert_image(1, FILL_B, "nvme-exclusive-bar");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn second_vm_gets_the_device_after_the_first_exits() {
    let (run, output) = case("nvme-second-vm");
    for vm in ["vm1", "vm2"] {
        assert_nvme_io(run, output, &format!("{vm}: "), "aperture-a");
        assert_contains(run, output, &format!("l1: {vm} status=0"));
    }
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn device_is_released_after_sigterm() {
    let (run, output) = case("nvme-after-sigterm");
    assert_contains(run, output, "l1: vm1 ready=0");
    assert_nvme_io(run, output, "vm1: ", "aperture-a");
    assert_contains(run, output, "l1: vm1 status=143");
    assert_contains(run, output, "l1: after vm1: driver=vfio-pci");
    assert_nvme_io(run, output, "vm2: ", "aperture-a");
    assert_contains(run, output, "l1: vm2 status=0");
    assert_status(run, output, 0);
}

/// A VM stopped by `signal` during boot: status 128+N, the reason on stderr, the device
/// reset at exit and usable by the next VM.
fn assert_released_after_signal_during_boot(case_name: &str, signal: &str, status: i32) {
    let (run, output) = case(case_name);
    assert_contains(run, output, "l1: vm1 started=0");
    assert!(
        !output.contains(&format!("vm1: {GUEST_MARKER}")),
        "the guest reached /init before {signal}: the case no longer stops it during boot\n{}",
        context(run, output)
    );
    assert_contains(run, output, &format!("vm1: aperture: stopped by {signal}"));
    assert_contains(run, output, &format!("l1: vm1 status={status}"));
    let exit_reset = output
        .lines
        .iter()
        .any(|(_, line)| line.starts_with("l1: trace: ") && line.contains("when=exit"));
    assert!(exit_reset, "no reset at exit in vm1's trace\n{}", context(run, output));
    assert_contains(run, output, "l1: after vm1: driver=vfio-pci");
    assert_nvme_io(run, output, "vm2: ", "aperture-a");
    assert_contains(run, output, "l1: vm2 status=0");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn device_is_released_after_sigterm_during_boot() {
    assert_released_after_signal_during_boot("nvme-sigterm-during-boot", "SIGTERM", 143);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn device_is_released_after_sighup_during_boot() {
    assert_released_after_signal_during_boot("nvme-sighup-during-boot", "SIGHUP", 129);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn nvme_read_bench_in_l1_and_in_the_guest() {
    let (run, output) = case("nvme-host-bench");
    let host = output.line_with("l1: host-bench:").unwrap_or("");
    let guest = output.line_with("CHECK nvmebench: 64MiB").unwrap_or("");
    let exits = |prefix: &str| -> Option<u64> {
        let line =
            output.output.lines().find(|l| l.contains(prefix) && l.contains("vCPU exits"))?;
        let before = &line[..line.find(" vCPU exits")?];
        before.split_whitespace().last()?.parse().ok()
    };
    let (baseline, bench) = (exits("l1: baseline: "), exits("l1: bench: "));
    eprintln!(
        "VM exits handled by the VMM: {bench:?} with the 64 MiB read, {baseline:?} without: \
         {:?} for the read",
        bench.zip(baseline).map(|(b, a)| b.saturating_sub(a))
    );
    assert!(baseline.is_some() && bench.is_some(), "no exit counts\n{}", context(run, output));
    for (line, what) in [(host, "L1"), (guest, "nested guest")] {
        let seconds = bench_seconds(line);
        let rate = seconds.map_or(0.0, |s| 64.0 / s.max(0.01));
        eprintln!("NVMe 64 MiB direct read, {what}: {seconds:?} s, {rate:.0} MiB/s ({line})");
        assert!(
            line.contains("status=0") && seconds.is_some(),
            "no {what} figure\n{}",
            context(run, output)
        );
    }
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn nvme_works_through_dma_windows_at_the_dart_limit() {
    let (run, output) = case("nvme-window");
    assert_contains(run, output, "bytes=1610612736");
    assert_window_io(run, output);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn dma_windows_evict_under_a_tight_limit() {
    let (run, output) = case("nvme-window-evict");
    assert_contains(run, output, "bytes=8388608");
    assert_window_io(run, output);
    let requests = window_stats(output, "requests:");
    let evictions = number_before(requests, " evictions");
    assert!(
        evictions.is_some_and(|n| n > 0),
        "48 MiB through an 8 MiB window evicted nothing: {requests:?}\n{}",
        context(run, output)
    );
    let bench = output.line_with("CHECK dmabench: ").unwrap_or("");
    eprintln!("DMA window round trips: {bench}");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn dma_windows_work_without_coalescing_and_coalescing_saves_mappings() {
    let (run, output) = case("nvme-window-nocoalesce");
    assert_window_io(run, output);
    let (evict_run, evict_output) = case("nvme-window-evict");
    let plain = window_stats(output, "peaks:");
    let coalesced = window_stats(evict_output, "peaks:");
    let maps = |line: &str| number_before(line, " host mappings");
    let requests = |o: &CaseOutput| number_before(window_stats(o, "requests:"), " maps (");
    eprintln!(
        "DMA windows, 48 MiB through 8 MiB: with 256K windows {coalesced:?}, {:?} requests; \
         without {plain:?}, {:?} requests",
        requests(evict_output),
        requests(output)
    );
    assert!(
        maps(plain).is_some() && maps(coalesced).is_some(),
        "no window statistics\n{}\n{}",
        context(run, output),
        context(evict_run, evict_output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn pinning_past_the_dma_limit_is_refused_cleanly() {
    let (run, output) = case("nvme-window-pin");
    // The guest asked for more than the limit at once: those maps were refused with a status
    // the guest saw (ENOSPC), the VMM said why, and the VM carried on and powered off.
    let line = output.line_with("CHECK dmabench: single_ns").unwrap_or("");
    let failures = line.split("failures=").nth(1).and_then(|r| {
        r.split(|c: char| !c.is_ascii_digit()).next().and_then(|n| n.parse::<u64>().ok())
    });
    assert!(
        failures.is_some_and(|n| n > 0),
        "no map was refused: {line:?}\n{}",
        context(run, output)
    );
    assert_contains(run, output, "refused (ENOSPC)");
    assert_contains(run, output, "ENOSPC");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_device_not_bound_to_vfio_pci_with_the_fix() {
    let (run, output) = case("bad-device-not-bound");
    assert_contains(run, output, "driver=none");
    let (run, output) = assert_rejected("bad-device-not-bound");
    assert_names_device(run, output);
    // The fix: the commands that hand the device to vfio-pci.
    assert_contains(run, output, "vfio-pci");
    assert_contains(run, output, "driver_override");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_device_that_does_not_exist() {
    let (run, output) = assert_rejected("bad-device-missing");
    let line = output.line_with("aperture: error: ").unwrap_or("");
    assert!(
        line.contains("0000:7f:1f.7") && line.contains("does not exist"),
        "the error should say 0000:7f:1f.7 does not exist\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_device_another_vm_holds() {
    let (run, output) = case("bad-device-busy");
    assert_contains(run, output, "l1: vm1 ready=0");
    let (run, output) = assert_rejected("bad-device-busy");
    assert_names_device(run, output);
    let line = output.line_with("aperture: error: ").unwrap_or("").to_lowercase();
    assert!(
        line.contains("busy") || line.contains("in use"),
        "the error should say the device is busy or in use\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rejects_a_malformed_device_address_naming_the_option() {
    let (run, output) = case("bad-device-syntax");
    assert!(!output.watchdog_fired, "aperture hung\n{}", context(run, output));
    assert_status(run, output, 1);
    // The option, the bad value, and the form that works.
    for needle in ["--device", "01:00", "0000:01:00.0"] {
        assert_contains(run, output, needle);
    }
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn check_reports_the_device_before_and_after_binding_it_to_vfio_pci() {
    let (run, output) = case("check-and-devices");
    let device = value_after(output, "l1: device=").unwrap_or("?");
    // On nvme: the driver line fails with the commands that fix it, and the status says so.
    assert_contains(run, output, &format!("FAIL  {device} driver: bound to nvme, not to vfio-pci"));
    assert_contains(
        run,
        output,
        &format!("echo vfio-pci > /sys/bus/pci/devices/{device}/driver_override"),
    );
    assert_contains(run, output, "l1: check-nvme status=1");
    // On vfio-pci: the host and the device are ready.
    for line in [
        "OK    /dev/kvm: ",
        "OK    KVM IPA size: ",
        "OK    KVM GICv3: ",
        "OK    KVM ITS: ",
        "OK    KVM irqfd: ",
        "OK    IOMMU: ",
        "OK    VFIO: ",
        "OK    locked memory: ",
        &format!("OK    {device}: present: 1b36:0010, class 010802 (NVMe)"),
        &format!("OK    {device} driver: vfio-pci"),
        &format!("OK    {device} IOMMU group: group "),
        &format!("OK    {device} /dev/vfio/"),
    ] {
        assert_contains(run, output, line);
    }
    assert_contains(run, output, "l1: check-vfio status=0");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn devices_lists_the_nvme_controller_on_vfio_pci() {
    let (run, output) = case("check-and-devices");
    let device = value_after(output, "l1: device=").unwrap_or("?");
    // The table row (its class cell is `010802 NVMe`; check's line says `class 010802`).
    let row = output
        .output
        .lines()
        .find(|l| l.contains(device) && l.contains("010802 NVMe"))
        .unwrap_or("");
    assert!(
        row.contains("1b36:0010")
            && row.contains(" vfio-pci ")
            && row.contains("0:mem64")
            && row.trim_end().ends_with(" yes"),
        "no table row for {device} on vfio-pci, assignable: {row:?}\n{}",
        context(run, output)
    );
    assert_contains(run, output, "l1: devices status=0");
    let object = output
        .output
        .lines()
        .find(|l| l.contains(&format!("{{\"address\":\"{device}\"")))
        .unwrap_or("");
    for field in [
        "\"vendor_id\":\"1b36\",\"device_id\":\"0010\"",
        "\"class\":\"010802\",\"class_name\":\"NVMe\"",
        "\"driver\":\"vfio-pci\"",
        "\"assignable\":true,\"reason\":null",
    ] {
        assert!(
            object.contains(field),
            "no {field} in the JSON for {device}: {object:?}\n{}",
            context(run, output)
        );
    }
    assert_contains(run, output, "l1: devices-json status=0");
}

/// aperture_edu's verdict line is exactly `pass`; its MSI came through the ITS and fired
/// once per DMA at least.
fn assert_edu_pass(run: &RigRun, output: &CaseOutput, prefix: &str, pass: &str) {
    let verdicts: Vec<&str> = output
        .output
        .lines()
        .filter(|l| {
            l.starts_with(prefix)
                && (l.contains("aperture_edu: PASS") || l.contains("aperture_edu: FAIL"))
        })
        .collect();
    assert!(
        verdicts.len() == 1 && verdicts[0].ends_with(pass),
        "want one verdict {pass:?}, got {verdicts:?}\n{}",
        context(run, output)
    );
    let irq = output
        .output
        .lines()
        .find(|l| l.starts_with(prefix) && l.contains("CHECK edu: irq: "))
        .unwrap_or("");
    let dmas = number_before(pass, " irqs").unwrap_or(u64::MAX);
    assert!(
        irq.contains("ITS") && irq.contains("MSI") && irq_count(irq) >= dmas,
        "edu's interrupts are not {dmas} MSIs through the ITS: {irq:?}\n{}",
        context(run, output)
    );
}

/// The timing line of aperture_edu (`what`: "round trip" or "map+unmap").
fn edu_timing<'a>(output: &'a CaseOutput, what: &str) -> &'a str {
    output.line_with(&format!("ns per {what}")).unwrap_or("none")
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn rig_host_has_an_edu_and_hd_audio_in_one_slot_for_passthrough() {
    let (run, output) = case("l1-edu");
    let e = value_after(output, "l1: E=").unwrap_or("none");
    let h = value_after(output, "H=").unwrap_or("none");
    assert!(
        e.ends_with(".0") && h.ends_with(".1") && e[..e.len() - 1] == h[..h.len() - 1],
        "edu and audio are not functions 0 and 1 of one slot: E={e} H={h}\n{}",
        context(run, output)
    );
    assert_contains(run, output, &format!("l1: pci {e} 0x1234:0x11e8 class=0x00ff00"));
    assert_contains(run, output, &format!("l1: pci {h} 0x8086:0x293e class=0x040300"));
    assert_contains(run, output, "l1: bound E=vfio-pci H=vfio-pci");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn edu_dma_round_trips_with_a_40_bit_mask_complete_by_msi() {
    let (run, output) = assert_edu_case("edu-identity", "6.1.", &edu_pass(2, 0), "identity");
    assert_contains(run, output, "0x1234:0x11e8 class=0x00ff00 driver=aperture_edu");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn hd_audio_next_to_the_edu_probes_on_msi() {
    let (run, output) = case("edu-identity");
    let probe = output.line_with("CHECK hdaudio: 0000:").unwrap_or("");
    assert!(
        probe.contains("driver=snd_hda_intel msi=1"),
        "the audio function is not on snd_hda_intel with one MSI: {probe:?}\n{}",
        context(run, output)
    );
    assert_contains(run, output, "CHECK hdaudio: cards=1");
    let irq = output.line_with("CHECK hdaudio: irq: ").unwrap_or("");
    assert!(
        irq.contains("MSI") && irq_count(irq) > 0,
        "snd_hda_intel got no MSI: {irq:?}\n{}",
        context(run, output)
    );
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn edu_dma_round_trips_on_the_6_12_guest() {
    assert_edu_case("edu-identity-612", "6.12.", &edu_pass(2, 0), "identity");
}

/// An edu case on the guest kernel `kernel` (a version prefix): aperture_edu loaded and
/// printed exactly `pass`, with its DMA in `mode` (timing lines: "identity" or "window").
/// Window cases need the host side of protocol 1.1 (device addresses below the edu's 2^40
/// mask).
fn assert_edu_case(
    name: &str,
    kernel: &str,
    pass: &str,
    mode: &str,
) -> (&'static RigRun, &'static CaseOutput) {
    let (run, output) = case(name);
    assert_contains(run, output, &format!("CHECK edu: kernel={kernel}"));
    assert_contains(run, output, "CHECK edu: load=ok");
    let timing = edu_timing(output, "round trip");
    assert!(
        timing == "none" || timing.ends_with(&format!("({mode})")),
        "aperture_edu's DMA was not in {mode} mode: {timing}\n{}",
        context(run, output)
    );
    assert_edu_pass(run, output, "", pass);
    eprintln!("edu, {name}: {timing} / {}", edu_timing(output, "map+unmap"));
    assert_status(run, output, 0);
    (run, output)
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn edu_dma_through_a_window_below_its_mask_on_the_6_1_guest() {
    assert_edu_case("edu-window", "6.1.", &edu_pass(2, 0), "window");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn edu_dma_through_a_window_below_its_mask_on_the_6_12_guest() {
    assert_edu_case("edu-window-612", "6.12.", &edu_pass(2, 0), "window");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn a_2_mib_window_map_gets_a_2_mib_aligned_device_address() {
    let (run, output) = case("edu-window-2m");
    let line = output.line_with("aperture_edu: 2 MiB map of").unwrap_or("");
    let address = line
        .rsplit(' ')
        .next()
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok());
    assert!(
        address.is_some_and(|a| a % (2 << 20) == 0 && a < 1 << 40),
        "2 MiB map not at a 2 MiB aligned address below 2^40: {line:?}\n{}",
        context(run, output)
    );
    assert_edu_case("edu-window-2m", "6.1.", &edu_pass(1, 1), "window");
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn edu_and_audio_of_one_group_share_a_dma_window_space() {
    let (run, output) = case("edu-window-audio");
    assert_edu_pass(run, output, "", &edu_pass(2, 0));
    assert_contains(run, output, "in the DMA address space it shares with");
    assert_contains(run, output, "l1: status=0");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn second_vm_gets_a_working_edu_and_audio_after_the_first() {
    let (run, output) = case("edu-second-vm");
    // Both functions, at start and at exit, by the slot's hot reset (one ioctl per slot, the
    // other function's reset is the same one).
    for function in [".0", ".1"] {
        for when in ["start", "exit"] {
            let traced = output.lines.iter().any(|(_, line)| {
                let words: Vec<&str> = line.split_whitespace().collect();
                line.starts_with("l1: trace: ")
                    && words.windows(2).any(|w| w[0].ends_with(function) && w[1] == "reset")
                    && line.contains(&format!("when={when}"))
                    && line.contains("outcome=done")
                    && line.contains("method=hot-reset")
            });
            assert!(
                traced,
                "no hot reset of function {function} at {when} in vm1's trace\n{}",
                context(run, output)
            );
        }
    }
    for vm in ["vm1", "vm2"] {
        let prefix = format!("{vm}: ");
        assert_edu_pass(run, output, &prefix, &edu_pass(2, 0));
        assert_contains(run, output, &format!("l1: {vm} status=0"));
    }
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn sigterm_presses_the_power_key_and_the_guest_powers_off() {
    let (run, output) = case("power-key-sigterm");
    assert_contains(run, output, "l1: marker-seen=1");
    assert_contains(run, output, "SIGTERM: pressing the guest's power key");
    assert_contains(run, output, "CHECK powerkey: KEY_POWER pressed; powering off");
    assert_contains(run, output, "aperture: the guest powered off after the power key (SIGTERM)");
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn an_ignored_power_key_is_forced_after_the_grace() {
    let (run, output) = case("power-key-ignored");
    assert_contains(run, output, "l1: marker-seen=1");
    assert_contains(run, output, "did not power off within 3 s of the power key (SIGTERM");
    assert_status(run, output, 4);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn timeout_with_a_grace_presses_the_power_key() {
    let (run, output) = case("power-key-timeout");
    assert_contains(run, output, "CHECK powerkey: KEY_POWER pressed; powering off");
    assert_contains(run, output, "powered off after the power key (--timeout 25 s)");
    assert_status(run, output, 124);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn a_guest_reboot_boots_again_in_the_same_process() {
    let (run, output) = case("reboot-in-place");
    assert_contains(run, output, "CHECK reboot: boot 1: marked /dev/vda; rebooting");
    assert_contains(run, output, "the guest rebooted: booting it again in place");
    assert_contains(run, output, "reboot to first guest instruction in");
    assert_contains(run, output, "CHECK reboot: boot 2: found the mark of boot 1");
    assert_eq!(output.output.matches(GUEST_MARKER).count(), 2, "{}", context(run, output));
    assert_eq!(output.output.matches("KVM VM created").count(), 1, "one VM, two boots");
    if let Some(line) = output.line_with("reboot to first guest instruction in") {
        println!("reboot-in-place: {line}");
    }
    assert_status(run, output, 0);
}

#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn an_assigned_nvme_works_after_a_reboot_in_place() {
    let (run, output) = case("nvme-reboot");
    let expect_head = |line: &str| line.contains("CHECK nvme: head=");
    let heads: Vec<&str> = output.output.lines().filter(|l| expect_head(l)).collect();
    assert_eq!(heads.len(), 2, "the NVMe read in both boots\n{}", context(run, output));
    assert_eq!(
        heads[0].split("head=").nth(1),
        heads[1].split("head=").nth(1),
        "the same pattern read in both boots\n{}",
        context(run, output)
    );
    assert_contains(run, output, "CHECK nvme: write=0");
    assert_contains(run, output, "CHECK reboot: boot 2: found the mark of boot 1");
    assert_contains(run, output, "when=reboot");
    if let Some(line) = output.line_with("reboot to first guest instruction in") {
        println!("nvme-reboot: {line}");
    }
    assert_status(run, output, 0);
}

/// The nested guest's NIC over a tap L1 made: DHCP address, ping and HTTP to L1, with the
/// tap's offloads offered.
#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn net_over_tap_reaches_l1() {
    let (run, output) = case("net-tap");
    let token = &shared().token;
    assert_contains(run, output, "virtio-net0: MAC 52:54:");
    assert_contains(run, output, "over tap tap0 (checksum and TSO offloads)");
    assert_contains(run, output, "tap tap0: userspace virtio-net (vhost=off)");
    assert_contains(run, output, "virtio-net0: userspace virtio-net serves its queues");
    assert_contains(run, output, "CHECK net: addr=10.0.2.1");
    assert_contains(run, output, "router=10.0.2.1");
    assert_contains(run, output, "CHECK net: ping=ok");
    assert_contains(run, output, &format!("CHECK net: wget=hello-tap0-{token}"));
    assert_status(run, output, 0);
}

/// The same link with its queues in L1's kernel (`vhost=on`): a clear error while
/// vhost_net is not loaded; then DHCP, ping and HTTP, again after the guest driver resets
/// the device (unbind/bind), and again after a reboot in place; the kernel takes the queues
/// at each DRIVER_OK (two per boot) and the userspace loop never runs.
#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn net_over_vhost_reaches_l1_and_survives_resets() {
    let (run, output) = case("net-vhost");
    let token = &shared().token;
    assert_contains(
        run,
        output,
        "l1: no module: status=1 aperture: error: --net tap=tap4,vhost=on: cannot use \
         /dev/vhost-net: No such file or directory (os error 2); load the module (sudo modprobe \
         vhost_net)",
    );
    assert_contains(run, output, "tap tap4: vhost-net (/dev/vhost-net) serves the queues");
    let count = |needle: &str| output.lines.iter().filter(|(_, l)| l.contains(needle)).count();
    let handovers = count("virtio-net0: vhost-net serves its queues in the host kernel");
    assert_eq!(handovers, 4, "two activations per boot\n{}", context(run, output));
    for never in ["userspace virtio-net serves", "vhost-net did not take the queues"] {
        assert_eq!(count(never), 0, "{never}\n{}", context(run, output));
    }
    assert_eq!(count("CHECK net: addr=10.0.6.1"), 4, "{}", context(run, output));
    assert_eq!(count("CHECK net: ping=ok"), 4, "{}", context(run, output));
    assert_eq!(
        count(&format!("CHECK net: wget=hello-tap4-{token}")),
        4,
        "{}",
        context(run, output)
    );
    // (Short needles: the VMM's log lines may land in the middle of a guest console line.)
    assert_eq!(count("eth0=back"), 2, "{}", context(run, output));
    assert_contains(run, output, "the guest rebooted: booting it again in place");
    assert_contains(run, output, "CHECK reboot: boot 2: found the mark of boot 1");
    assert_status(run, output, 0);
}

/// The same over `--net socket=` and the stream-socket peer bridging to an L1 tap.
#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn net_over_socket_reaches_l1() {
    let (run, output) = case("net-socket");
    let token = &shared().token;
    assert_contains(run, output, "over socket /tmp/net1.sock");
    assert_contains(run, output, "CHECK net: addr=10.0.3.1");
    assert_contains(run, output, "CHECK net: ping=ok");
    assert_contains(run, output, &format!("CHECK net: wget=hello-tap1-{token}"));
    assert_status(run, output, 0);
}

/// `--net user`: passt started by Aperture gives the guest L1's address by DHCP, its
/// gateway reaches L1's loopback HTTP server, and L1's port 2222 reaches the guest's 8080.
#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn net_user_starts_passt_and_forwards_a_port() {
    let (run, output) = case("net-user");
    let token = &shared().token;
    assert_contains(run, output, "started for --net user");
    assert_contains(run, output, "CHECK net: addr=192.168.100.2");
    assert_contains(run, output, &format!("CHECK net: wget=hello-user-{token}"));
    assert_contains(run, output, "l1: hostfwd 2222 got served-by-the-guest");
    assert_contains(run, output, "CHECK netserve: served");
    eprintln!("{}", output.line_with("CHECK net: ping=").unwrap_or("no ping line"));
    assert_status(run, output, 0);
}

/// Bad `--net` values: a refused socket, no passt on L1's PATH, a multicast MAC, an unknown
/// backend.
#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn net_bad_input_is_refused_clearly() {
    let (run, output) = case("net-bad");
    assert!(!output.watchdog_fired, "aperture hung\n{}", context(run, output));
    for needle in [
        "--net socket=/tmp/no-such.sock status=1 aperture: error: --net socket=/tmp/no-such.sock: cannot connect",
        "--net user status=1 aperture: error: --net user needs passt, which is not installed: install the passt package",
        "status=1 aperture: error: --net tap=tap9,mac=01:00:5e:00:00:01: 01:00:5e:00:00:01 is a multicast address",
        "--net bridge=br0 status=1 aperture: error: --net bridge=br0: \"bridge=br0\" is not a backend",
    ] {
        assert_contains(run, output, needle);
    }
}

/// Prints guest-to-L1 throughput over the tap (userspace and vhost-net) and the socket
/// backends (not asserted: the rig is emulated); asserts only that the transfers finished.
#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn net_throughput_figures() {
    let (run, output) = case("net-bench");
    for nic in ["tap=tap2,vhost=off", "tap=tap2,vhost=on", "socket=/tmp/net3.sock"] {
        let line = output
            .output
            .lines()
            .find(|l| l.contains(nic) && l.contains(&format!("CHECK netbench: {NET_BENCH_MIB}MiB")))
            .unwrap_or("");
        let field = |name: &str| -> Option<f64> {
            line.split_whitespace().find_map(|w| w.strip_prefix(name)?.parse().ok())
        };
        let (Some(start), Some(end)) = (field("start="), field("end=")) else {
            panic!("no netbench line for {nic}\n{}", context(run, output));
        };
        let received = format!("l1: {nic} received={}", NET_BENCH_MIB << 20);
        assert_contains(run, output, &received);
        let secs = (end - start).max(0.001);
        eprintln!(
            "virtio-net guest -> L1 over {nic}: {NET_BENCH_MIB} MiB in {secs:.2} s = {:.1} Mbit/s",
            f64::from(NET_BENCH_MIB) * 8.388_608 / secs
        );
    }
}

/// `--net tap=` with no such tap: created and brought up (IFF_UP, flags bit 0), gone after.
#[test]
#[ignore = "needs the emulated arm64 rig: tests/run-e2e.sh"]
fn net_tap_is_created_when_absent() {
    let (run, output) = case("net-tap-create");
    let flags = output.line_with("l1: during: flags=").unwrap_or("");
    let flags = flags
        .rsplit('=')
        .next()
        .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok());
    assert!(flags.is_some_and(|f| f & 1 == 1), "the tap was not up\n{}", context(run, output));
    assert_contains(run, output, "l1: status=0 after: 0");
}
