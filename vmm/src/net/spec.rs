//! `--net` values: `tap=NAME[,vhost=on|off]`, `socket=PATH` or `user[,hostfwd=...]`, each
//! with an optional `mac=MAC`.

use std::path::PathBuf;

use devices::virtio::net::MacAddress;

/// The form of `--net`, for error messages.
pub const NET_FORM: &str = "the form is tap=NAME[,mac=MAC][,vhost=on|off], \
    socket=PATH[,mac=MAC] or user[,hostfwd=tcp:HOSTPORT-:GUESTPORT]...[,mac=MAC]";

/// Where a NIC's frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetBackendSpec {
    /// A Linux tap device (created when absent and Aperture may).
    Tap(String),
    /// A UNIX stream socket speaking QEMU's framing (passt, gvproxy `-listen-qemu`).
    Socket(PathBuf),
    /// passt (Linux) or gvproxy (macOS), started by Aperture, with these port forwards.
    User(Vec<PortForward>),
}

/// A host port forwarded to the guest (`hostfwd=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortForward {
    /// `true` for UDP, `false` for TCP.
    pub udp: bool,
    /// Host address to bind, if not all.
    pub host_addr: Option<String>,
    /// Host port.
    pub host_port: u16,
    /// Guest port.
    pub guest_port: u16,
}

/// One `--net` NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The backend.
    pub backend: NetBackendSpec,
    /// The guest's MAC address: given, or derived from the option and the NIC's index so
    /// that it stays the same from run to run.
    pub mac: MacAddress,
    /// A tap's queues in the host kernel (vhost-net): `Some(true)` required, `Some(false)`
    /// never, `None` when `/dev/vhost-net` is usable.
    pub vhost: Option<bool>,
}

impl NetConfig {
    /// Parses the `index`th `--net` value; errors say what is wrong (without the option name).
    pub fn parse(text: &str, index: usize) -> Result<Self, String> {
        let mut parts = text.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut mac = None;
        let mut vhost = None;
        let mut forwards = Vec::new();
        let mut rest = Vec::new();
        for option in parts {
            match option.split_once('=') {
                Some(("mac", value)) => mac = Some(value.parse::<MacAddress>()?),
                Some(("hostfwd", value)) => forwards.push(parse_forward(value)?),
                Some(("vhost", "on")) => vhost = Some(true),
                Some(("vhost", "off")) => vhost = Some(false),
                Some(("vhost", other)) => {
                    return Err(format!("vhost={other:?}: the value is on or off"))
                }
                _ => rest.push(option),
            }
        }
        if let Some(option) = rest.first() {
            return Err(format!("unknown option {option:?}; {NET_FORM}"));
        }
        let backend = match kind.split_once('=') {
            Some(("tap", name)) => {
                // IFNAMSIZ is 16 with the terminating NUL.
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                    return Err(format!(
                        "tap={name:?}: a tap name is 1 to 15 characters without '/' or spaces"
                    ));
                }
                NetBackendSpec::Tap(name.to_string())
            }
            Some(("socket", path)) if !path.is_empty() => NetBackendSpec::Socket(path.into()),
            None if kind == "user" => NetBackendSpec::User(Vec::new()),
            _ => return Err(format!("{kind:?} is not a backend; {NET_FORM}")),
        };
        let backend = match backend {
            NetBackendSpec::User(_) => NetBackendSpec::User(forwards),
            _ if !forwards.is_empty() => {
                return Err("hostfwd= applies to --net user only (a tap or socket peer does its \
                            own forwarding)"
                    .into())
            }
            other => other,
        };
        if vhost.is_some() && !matches!(backend, NetBackendSpec::Tap(_)) {
            return Err("vhost= applies to --net tap= only (vhost-net drives a tap)".into());
        }
        let seed = format!("{index}:{kind}");
        Ok(Self { backend, mac: mac.unwrap_or_else(|| MacAddress::derived(&seed)), vhost })
    }
}

/// Parses `tcp:[ADDR]:HOSTPORT-[:]GUESTPORT` (QEMU's hostfwd; `udp:` too; `tcp:` optional).
fn parse_forward(value: &str) -> Result<PortForward, String> {
    let bad = |why: &str| {
        format!("hostfwd={value}: {why}; the form is hostfwd=tcp:HOSTPORT-:GUESTPORT, e.g. hostfwd=tcp:2222-:22")
    };
    let (udp, spec) = match value.split_once(':') {
        Some(("tcp", spec)) => (false, spec),
        Some(("udp", spec)) => (true, spec),
        _ => (false, value),
    };
    let (host, guest) = spec.split_once('-').ok_or_else(|| bad("no '-' between the ports"))?;
    let (host_addr, host_port) = match host.rsplit_once(':') {
        Some((addr, port)) => ((!addr.is_empty()).then(|| addr.to_string()), port),
        None => (None, host),
    };
    let guest_port = guest.rsplit_once(':').map_or(guest, |(_, port)| port);
    let port = |text: &str, what: &str| {
        text.parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| bad(&format!("{what} {text:?} is not a port number")))
    };
    Ok(PortForward {
        udp,
        host_addr,
        host_port: port(host_port, "host port")?,
        guest_port: port(guest_port, "guest port")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_and_macs() {
        let tap = NetConfig::parse("tap=tap0", 0).unwrap();
        assert_eq!(tap.backend, NetBackendSpec::Tap("tap0".into()));
        assert_eq!(tap.mac, NetConfig::parse("tap=tap0", 0).unwrap().mac, "stable");
        assert_ne!(tap.mac, NetConfig::parse("tap=tap0", 1).unwrap().mac, "per NIC");
        let socket = NetConfig::parse("socket=/run/passt.sock,mac=52:54:00:00:00:07", 0).unwrap();
        assert_eq!(socket.backend, NetBackendSpec::Socket("/run/passt.sock".into()));
        assert_eq!(socket.mac.to_string(), "52:54:00:00:00:07");
        let user = NetConfig::parse(
            "user,hostfwd=tcp:2222-:22,hostfwd=udp:127.0.0.1:5353-10.0.2.15:53",
            0,
        )
        .unwrap();
        let NetBackendSpec::User(forwards) = user.backend else { panic!("user") };
        assert_eq!(
            forwards,
            [
                PortForward { udp: false, host_addr: None, host_port: 2222, guest_port: 22 },
                PortForward {
                    udp: true,
                    host_addr: Some("127.0.0.1".into()),
                    host_port: 5353,
                    guest_port: 53
                },
            ]
        );
        assert_eq!(NetConfig::parse("user", 0).unwrap().backend, NetBackendSpec::User(vec![]));
        assert_eq!(tap.vhost, None, "vhost-net when usable");
        assert_eq!(NetConfig::parse("tap=tap0,vhost=on", 0).unwrap().vhost, Some(true));
        let off = NetConfig::parse("tap=tap0,vhost=off", 0).unwrap();
        assert_eq!((off.vhost, off.mac), (Some(false), tap.mac), "same NIC, same MAC");
    }

    #[test]
    fn bad_values_say_why() {
        for (bad, needle) in [
            ("", "is not a backend"),
            ("bridge=br0", "is not a backend"),
            ("socket=", "is not a backend"),
            ("tap=", "1 to 15 characters"),
            ("tap=averyveryverylongname", "1 to 15 characters"),
            ("tap=tap0,mac=zz", "not a MAC address"),
            ("tap=tap0,mac=01:00:00:00:00:01", "multicast"),
            ("tap=tap0,queues=4", "unknown option \"queues=4\""),
            ("tap=tap0,hostfwd=tcp:1-:2", "--net user only"),
            ("tap=tap0,vhost=yes", "on or off"),
            ("socket=/s,vhost=on", "--net tap= only"),
            ("user,hostfwd=tcp:2222", "no '-'"),
            ("user,hostfwd=tcp:0-:22", "host port \"0\""),
            ("user,hostfwd=tcp:22-:ssh", "guest port \"ssh\""),
        ] {
            let err = NetConfig::parse(bad, 0).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
