//! What the device needs from the host side of the link. The backends (tap, a stream socket)
//! live in the VMM, which opens them; the device only moves frames.

use std::fmt;
use std::io;
use std::os::fd::RawFd;

/// Receive offloads the guest accepted, which the backend may then use on frames it hands
/// the guest (a tap's `TUNSETOFFLOAD`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxOffloads {
    /// Partial checksums (VIRTIO_NET_F_GUEST_CSUM).
    pub csum: bool,
    /// TCP/IPv4 segmentation (VIRTIO_NET_F_GUEST_TSO4).
    pub tso4: bool,
    /// TCP/IPv6 segmentation (VIRTIO_NET_F_GUEST_TSO6).
    pub tso6: bool,
}

/// The host end of a virtio-net link. Calls come from the device's worker thread.
pub trait NetBackend: Send + fmt::Debug {
    /// Names the backend in logs, e.g. "tap tap0".
    fn describe(&self) -> String;
    /// Whether frames carry a 12-byte `virtio_net_hdr_v1` in front, both ways (a tap with
    /// IFF_VNET_HDR): the guest then gets checksum and segmentation offloads.
    fn vnet_hdr(&self) -> bool;
    /// Tells the backend which receive offloads the guest accepted.
    fn set_rx_offloads(&mut self, _offloads: RxOffloads) -> io::Result<()> {
        Ok(())
    }
    /// Reads the next frame into `buf` (header first when [`Self::vnet_hdr`]); `Ok(None)`
    /// when none is waiting. An error means the backend is gone for good.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// Sends one frame (header first when [`Self::vnet_hdr`]). An error drops that frame.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// A descriptor that turns readable when frames wait.
    fn readable_fd(&self) -> RawFd;
    /// The tap's descriptor, when the backend is a tap that vhost-net may drive itself.
    fn tap_fd(&self) -> Option<RawFd> {
        None
    }
}
