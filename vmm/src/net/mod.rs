//! The host side of the guest's NICs (`--net`): parsing, and opening the backends the
//! virtio-net devices run over — a tap (Linux), a stream socket, or a user-mode helper
//! Aperture starts (passt, gvproxy). Opened before the sandbox is in place.

mod socket;
mod spec;
mod sys;
mod user;

use devices::virtio::net::{NetBackend, VhostNetKernel};

pub use socket::SocketBackend;
pub use spec::{NetBackendSpec, NetConfig, PortForward, NET_FORM};
#[cfg(target_os = "linux")]
pub use sys::TUNSETOFFLOAD;
pub use user::Helper;

/// Errors opening a NIC's backend.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// `/dev/net/tun` cannot be opened.
    #[error(
        "--net tap: cannot open /dev/net/tun ({0}); load the tun module (modprobe tun) and \
         check its permissions"
    )]
    TunDevice(String),
    /// TUNSETIFF refused.
    #[error(
        "--net tap={name}: cannot open or create the tap: {source}; create it for your user \
         first (sudo ip tuntap add {name} mode tap user $USER && sudo ip link set {name} up) or \
         run Aperture with CAP_NET_ADMIN"
    )]
    Tap {
        /// The tap name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// `vhost=on` and `/dev/vhost-net` cannot be used.
    #[error(
        "--net tap={name},vhost=on: cannot use /dev/vhost-net: {source}; load the module \
         (sudo modprobe vhost_net) and give your user read and write access to /dev/vhost-net \
         (e.g. a udev rule or group), or use vhost=off"
    )]
    Vhost {
        /// The tap name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// `--net tap` on a host without taps.
    #[error("--net tap={0}: taps exist on Linux only; use --net user or --net socket=PATH")]
    TapUnsupported(String),
    /// The socket peer is not there.
    #[error(
        "--net socket={path}: cannot connect: {source}; start the peer first (e.g. passt \
         --socket {path}, or gvproxy -listen-qemu unix://{path})"
    )]
    SocketConnect {
        /// The socket path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// No passt/gvproxy.
    #[error("--net user needs {}, which is not installed: {}; or use --net tap=NAME or --net socket=PATH", .0.program(), .0.install_hint())]
    HelperMissing(Helper),
    /// The helper could not be started.
    #[error("--net user: cannot start {program}: {source}")]
    HelperStart {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The helper ended (or never listened).
    #[error("--net user: {program} {status} (its messages are above)")]
    HelperExited {
        /// The program.
        program: String,
        /// What happened.
        status: String,
    },
    /// gvproxy cannot forward what was asked.
    #[error(
        "--net user: gvproxy forwards only one TCP port to the guest's ssh (hostfwd=tcp:PORT-:22) \
         from its command line; forward others through its API or use a socket you run"
    )]
    GvproxyForwards,
}

/// A NIC's opened host side.
#[derive(Debug)]
pub struct OpenedNic {
    /// Where its frames go.
    pub backend: Box<dyn NetBackend>,
    /// The kernel's vhost-net, to serve a tap's queues.
    pub vhost: Option<Box<dyn VhostNetKernel>>,
}

/// Opens the backend of NIC `index` (for `--net user`, starts its helper), and for a tap
/// vhost-net as `vhost=` asks.
pub fn open(index: usize, config: &NetConfig) -> Result<OpenedNic, NetError> {
    let (backend, vhost) = match &config.backend {
        NetBackendSpec::Tap(name) => {
            let backend = sys::open_tap(name)?;
            (backend, sys::open_vhost(name, config.vhost)?)
        }
        NetBackendSpec::Socket(path) => (Box::new(SocketBackend::connect(path)?) as _, None),
        NetBackendSpec::User(forwards) => (Box::new(user::start(index, forwards)?) as _, None),
    };
    Ok(OpenedNic { backend, vhost })
}
