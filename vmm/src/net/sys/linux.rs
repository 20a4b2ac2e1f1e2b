//! Linux taps: `/dev/net/tun` with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 12-byte
//! `virtio_net_hdr_v1` (TUNSETVNETHDRSZ), and the guest's receive offloads (TUNSETOFFLOAD).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use devices::virtio::net::header::HDR_LEN;
use devices::virtio::net::vhost::open_vhost_net;
use devices::virtio::net::{NetBackend, RxOffloads, VhostNetKernel};
use log::{info, warn};

use crate::net::NetError;

const TUN_PATH: &str = "/dev/net/tun";
// linux/if_tun.h (generic _IOW encoding, the same on arm64 and x86_64).
/// `_IOW('T', 202, int)`.
pub const TUNSETIFF: u64 = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
pub const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;

/// `struct ifreq` with the name and the flags member of its union.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl IfReq {
    fn new(name: &str) -> Self {
        let mut req = Self { name: [0; libc::IFNAMSIZ], flags: 0, _pad: [0; 22] };
        for (dst, src) in req.name.iter_mut().zip(name.bytes().take(libc::IFNAMSIZ - 1)) {
            *dst = src as libc::c_char;
        }
        req
    }
}

/// An open tap.
#[derive(Debug)]
struct TapBackend {
    name: String,
    file: File,
}

/// Opens tap `name`, creating it when it does not exist (and the process may: CAP_NET_ADMIN),
/// and brings it up when it was down.
pub fn open_tap(name: &str) -> Result<Box<dyn NetBackend>, NetError> {
    let error = |source: io::Error| NetError::Tap { name: name.to_string(), source };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(TUN_PATH)
        .map_err(|e| NetError::TunDevice(e.to_string()))?;
    let mut req = IfReq::new(name);
    req.flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is (same layout and
    // size), valid for the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(error(io::Error::last_os_error()));
    }
    let hdr_len = HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, valid for the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), TUNSETVNETHDRSZ as _, &hdr_len) } < 0 {
        return Err(error(io::Error::last_os_error()));
    }
    bring_up(name);
    Ok(Box::new(TapBackend { name: name.to_string(), file }))
}

/// Opens `/dev/vhost-net` for tap `name` as `vhost=` asks: `Some(true)` must, `Some(false)`
/// does not, `None` does when it can (and says why not when it cannot).
pub fn open_vhost(
    name: &str,
    wanted: Option<bool>,
) -> Result<Option<Box<dyn VhostNetKernel>>, NetError> {
    if wanted == Some(false) {
        info!("tap {name}: userspace virtio-net (vhost=off)");
        return Ok(None);
    }
    match open_vhost_net() {
        Ok(kernel) => {
            info!("tap {name}: vhost-net (/dev/vhost-net) serves the queues");
            Ok(Some(kernel))
        }
        Err(source) if wanted == Some(true) => {
            Err(NetError::Vhost { name: name.to_string(), source })
        }
        Err(e) => {
            info!(
                "tap {name}: userspace virtio-net (/dev/vhost-net: {e}; modprobe vhost_net and \
                 access to it enable vhost-net)"
            );
            Ok(None)
        }
    }
}

/// Sets IFF_UP on the link when it is down (a tap Aperture just created); a failure only
/// warns: whoever made the tap may bring it up later.
fn bring_up(name: &str) {
    // SAFETY: socket() takes no pointers; the result is checked.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        warn!("tap {name}: cannot check whether it is up: {}", io::Error::last_os_error());
        return;
    }
    let mut req = IfReq::new(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of one `struct ifreq`, which `req` is.
    let got = unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS as _, &mut req) };
    if got == 0 && req.flags & libc::IFF_UP as libc::c_short == 0 {
        req.flags |= libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads one `struct ifreq`, which `req` is.
        if unsafe { libc::ioctl(sock, libc::SIOCSIFFLAGS as _, &req) } < 0 {
            warn!(
                "tap {name} is down and cannot be brought up ({}); run `ip link set {name} up`",
                io::Error::last_os_error()
            );
        }
    }
    // SAFETY: `sock` is a descriptor this function opened and nothing else uses.
    unsafe { libc::close(sock) };
}

impl NetBackend for TapBackend {
    fn describe(&self) -> String {
        format!("tap {}", self.name)
    }

    fn vnet_hdr(&self) -> bool {
        true
    }

    fn set_rx_offloads(&mut self, offloads: RxOffloads) -> io::Result<()> {
        let mut flags: libc::c_uint = 0;
        // Segmentation offloads need checksum offload (the kernel refuses them alone).
        if offloads.csum {
            flags |= TUN_F_CSUM;
            if offloads.tso4 {
                flags |= TUN_F_TSO4;
            }
            if offloads.tso6 {
                flags |= TUN_F_TSO6;
            }
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value; no memory is passed.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) }
            < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match self.file.read(buf) {
                Ok(n) => return Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        // One write is one frame; a full tap queue drops it, as a NIC would.
        self.file.write(frame).map(drop)
    }

    fn readable_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn tap_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}
