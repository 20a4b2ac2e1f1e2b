//! L1's side of a nested guest's network link, for case scripts (`tests/e2e.rs`'s virtio-net
//! cases and `tests/e2e_distro.rs`).

/// Shell helpers for case scripts (prepend them; `$TOKEN` set before):
/// - `net_setup TAP PREFIX`: tap TAP (busybox tunctl) with PREFIX.1/24, a DHCP server
///   (udhcpd, PREFIX.15-20, router PREFIX.1, pid in /tmp/udhcpd-TAP.pid) and an HTTP server
///   serving /hello.txt = hello-TAP-TOKEN on it;
/// - `lease_ip TAP`: the first address udhcpd on TAP has leased, or nothing. udhcpd writes
///   its lease file every second by itself (`auto_time 1`): a SIGUSR1 to make it write would
///   restart the 2 s ARP probe it runs before each offer, and a caller asking every second
///   keeps it from ever offering;
/// - `net_peer SOCKET TAP`: the stream-socket peer (tests/src/bin/net-peer.rs) bridging to TAP.
pub const NET_PRELUDE: &str = r#"net_setup() {
    modprobe tun && tunctl -t "$1" >/dev/null && ip addr add "$2.1/24" dev "$1" \
        && ip link set "$1" up || return 1
    mkdir -p "/tmp/www-$1" && echo "hello-$1-$TOKEN" > "/tmp/www-$1/hello.txt"
    httpd -p "$2.1:80" -h "/tmp/www-$1" || return 1
    printf 'start %s.15
end %s.20
interface %s
lease_file /tmp/leases-%s
pidfile /tmp/udhcpd-%s.pid
option subnet 255.255.255.0
option router %s.1
auto_time 1
' "$2" "$2" "$1" "$1" "$1" "$2" > "/tmp/udhcpd-$1.conf"
    touch "/tmp/leases-$1" && udhcpd "/tmp/udhcpd-$1.conf"
}
lease_ip() {
    dumpleases -f "/tmp/leases-$1" 2>/dev/null | awk 'NR > 1 { print $2; exit }'
}
net_peer() {
    /net-peer "$1" "$2" &
    n=0
    while [ ! -S "$1" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
}"#;
