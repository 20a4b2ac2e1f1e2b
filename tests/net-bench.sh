#!/usr/bin/env bash
# virtio-net throughput, nested guest -> emulated host (L1), in the e2e rig: the guest's
# `netbench` check (images/guest-init.sh) sends MiB through busybox nc to an nc in L1, over
# `--net tap=` (userspace, vhost=off), over `--net tap=,vhost=on` (L1's vhost-net), and over
# `--net socket=` (tests/src/bin/net-peer.rs bridging to a tap), and,
# with KVMTOOL=<path to an arm64 lkvm-static built outside this repo>, kvmtool's virtio-net
# over a tap (userspace, then vhost-net) with the same guest. Prints Mbit/s per run; the rig
# is emulated (TCG), so compare the rows with each other, not with real hardware.
# Usage: tests/net-bench.sh [MiB]     (default 64)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
mib=${1:-64}
images/host-deps.sh >/dev/null
images/build-guest.sh >/dev/null
APERTURE_RIG_EXTRA_FILES=${KVMTOOL:-} tests/rig/build-rig.sh

prelude='net_setup() {
    modprobe tun && tunctl -t "$1" >/dev/null && ip addr add "$2.1/24" dev "$1" \
        && ip link set "$1" up || return 1
    printf "start %s.15\nend %s.20\ninterface %s\nlease_file /tmp/leases-%s\noption subnet 255.255.255.0\noption router %s.1\n" \
        "$2" "$2" "$1" "$1" "$2" > "/tmp/udhcpd-$1.conf"
    touch "/tmp/leases-$1" && udhcpd "/tmp/udhcpd-$1.conf"
}
bench() {
    label=$1; shift
    # (busybox nc quits when its stdin ends: sleep keeps it open.)
    (sleep 1800 | nc -l -p 5001 | wc -c > /tmp/bench.bytes) &
    "$@" 2>&1 | sed -n "s|^.*CHECK netbench: |bench $label |p"
    sleep 1
    echo "bench $label received=$(cat /tmp/bench.bytes)"
}'
check="panic=-1 quiet aperture.check=netbench=$mib"
run="/aperture run --kernel /guest/Image --initrd /guest/guest.cpio --timeout 600"
scripts=(
    "$prelude
net_setup tap0 10.0.2 || exit 1
bench aperture-tap $run --net tap=tap0,vhost=off --cmdline 'console=ttyAMA0 $check'
modprobe vhost_net || echo 'bench aperture-vhost: no vhost_net module in L1'
bench aperture-vhost $run --net tap=tap0,vhost=on --cmdline 'console=ttyAMA0 $check'"
    "$prelude
net_setup tap1 10.0.3 || exit 1
/net-peer /tmp/n.sock tap1 2>/dev/null &
sleep 1
bench aperture-socket $run --net socket=/tmp/n.sock --cmdline 'console=ttyAMA0 $check'"
)
if [ -n "${KVMTOOL:-}" ]; then
    lkvm="/extra/$(basename "$KVMTOOL") run -k /guest/Image -i /guest/guest.cpio -m 512 -c 1"
    scripts+=("$prelude
net_setup tap2 10.0.4 || exit 1
bench kvmtool-tap $lkvm --network mode=tap,tapif=tap2 -p '$check'
modprobe vhost_net 2>/dev/null
if [ -c /dev/vhost-net ]; then
    bench kvmtool-vhost $lkvm --network mode=tap,tapif=tap2,vhost=1 -p '$check'
fi")
fi
out=$(APERTURE_RIG_TIMEOUT=1800 cargo run -q -p aperture-e2e --bin rig-run -- "${scripts[@]}")
echo "$out" | grep '^bench ' | awk -v mib="$mib" '
    { for (i = 1; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] } }
    /start=/ { secs = v["end"] - v["start"]; if (secs <= 0) secs = 0.001
               printf "%-16s %4d MiB in %6.2f s  %8.1f Mbit/s\n", $2, mib, secs, mib * 8.388608 / secs }
    /received=/ { printf "%-16s received %s bytes\n", $2, v["received"] }'
