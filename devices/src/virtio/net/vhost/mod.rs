//! vhost-net: the host kernel serves the two queues of a NIC over a tap, with no trip through
//! Aperture per frame. The driver's notifies reach the kernel through the queues' doorbell
//! eventfds (KVM ioeventfds), and the kernel raises the queues' MSI-X vectors through their
//! irqfds ([`crate::virtio::VirtioInterrupt::queue_irqfd`]).
//!
//! This module holds the decisions, free of OS calls: whether an activation can use the
//! kernel ([`plan`]), the features and ring addresses it gets, and the order of the calls
//! that hand the queues over ([`start`]) and take them back ([`stop`]), against the
//! [`VhostNetKernel`] interface. `sys` implements that interface with the
//! `/dev/vhost-net` ioctls (Linux).
//!
//! MSI-X masking: a masked vector's irqfd is disconnected from its route, and what the kernel
//! signals meanwhile stays counted in the eventfd; KVM injects it when the irqfd is connected
//! again at unmask (see `KvmIrqfdMsi::set_route`), so the interrupt is not lost. The PBA does
//! not show it as pending in the meantime (Linux guests do not read the PBA).

#[cfg(target_os = "linux")]
mod sys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::os::fd::RawFd;

use virtio_bindings::virtio_config::{
    VIRTIO_F_ANY_LAYOUT, VIRTIO_F_NOTIFY_ON_EMPTY, VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

#[cfg(target_os = "linux")]
pub use sys::{open_vhost_net, VHOST_IOCTLS};

use super::engine::{RX_QUEUE, TX_QUEUE};
use crate::virtio::VirtioInterrupt;

/// The path of the kernel's vhost-net device.
pub const VHOST_NET_PATH: &str = "/dev/vhost-net";

/// Feature bits of the rings that vhost-net implements and must be told about; the net
/// device's own bits (MAC, offloads) stay with the device and the tap.
const RING_FEATURES: u64 = 1 << VIRTIO_F_VERSION_1
    | 1 << VIRTIO_RING_F_EVENT_IDX
    | 1 << VIRTIO_RING_F_INDIRECT_DESC
    | 1 << VIRTIO_NET_F_MRG_RXBUF
    | 1 << VIRTIO_F_ANY_LAYOUT
    | 1 << VIRTIO_F_NOTIFY_ON_EMPTY;

/// One guest RAM region as the kernel reads it (`struct vhost_memory_region`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest physical start.
    pub guest_phys_addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// Where it is mapped in this process.
    pub host_addr: u64,
}

/// A ring's three areas at their host addresses (`struct vhost_vring_addr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringAddr {
    /// The descriptor table.
    pub desc: u64,
    /// The driver (available) ring.
    pub avail: u64,
    /// The device (used) ring.
    pub used: u64,
}

/// The kernel's vhost-net device, as [`start`] and [`stop`] use it (Linux: `/dev/vhost-net`
/// after VHOST_SET_OWNER). `None` as a descriptor unbinds it.
pub trait VhostNetKernel: Send + fmt::Debug {
    /// The features the kernel offers (VHOST_GET_FEATURES, read when it was opened).
    fn features(&self) -> u64;
    /// VHOST_SET_FEATURES.
    fn set_features(&mut self, features: u64) -> io::Result<()>;
    /// VHOST_SET_MEM_TABLE.
    fn set_mem_table(&mut self, regions: &[MemoryRegion]) -> io::Result<()>;
    /// VHOST_SET_VRING_NUM.
    fn set_vring_num(&mut self, queue: u16, size: u16) -> io::Result<()>;
    /// VHOST_SET_VRING_ADDR.
    fn set_vring_addr(&mut self, queue: u16, addr: VringAddr) -> io::Result<()>;
    /// VHOST_SET_VRING_BASE: where the kernel starts reading the driver ring.
    fn set_vring_base(&mut self, queue: u16, base: u16) -> io::Result<()>;
    /// VHOST_GET_VRING_BASE: where it stopped (the ring must be detached first).
    fn vring_base(&mut self, queue: u16) -> io::Result<u16>;
    /// VHOST_SET_VRING_KICK: the eventfd the driver's notifies signal.
    fn set_vring_kick(&mut self, queue: u16, fd: Option<RawFd>) -> io::Result<()>;
    /// VHOST_SET_VRING_CALL: the eventfd the kernel signals for a used-buffer interrupt.
    fn set_vring_call(&mut self, queue: u16, fd: Option<RawFd>) -> io::Result<()>;
    /// VHOST_NET_SET_BACKEND: attaches the tap to the queue (starts it), or detaches it.
    fn set_backend(&mut self, queue: u16, fd: Option<RawFd>) -> io::Result<()>;
}

/// A vhost-net call that failed.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    /// The kernel refused a call.
    #[error("{call}{}: {source}", queue.map(|q| format!(" (queue {q})")).unwrap_or_default())]
    Call {
        /// The ioctl.
        call: &'static str,
        /// The queue it was for.
        queue: Option<u16>,
        /// What the kernel said.
        source: io::Error,
    },
    /// A ring does not lie inside one region of guest RAM.
    #[error("queue {queue}: its {area} at {addr:#x} does not lie inside one guest RAM region")]
    RingOutsideMemory {
        /// The queue.
        queue: u16,
        /// Which area.
        area: &'static str,
        /// Its guest address.
        addr: u64,
    },
}

/// One queue as [`start`] hands it to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VringSetup {
    /// The queue index.
    pub index: u16,
    /// Its size.
    pub size: u16,
    /// The driver ring index to start from.
    pub base: u16,
    /// Its areas in this process.
    pub addr: VringAddr,
    /// The doorbell eventfd.
    pub kick: RawFd,
    /// The vector's irqfd.
    pub call: RawFd,
}

/// What an activation hands the kernel: features, memory and both queues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostPlan {
    /// The ring features for VHOST_SET_FEATURES.
    pub features: u64,
    /// Guest RAM.
    pub regions: Vec<MemoryRegion>,
    /// Receive then transmit queue.
    pub vrings: [VringSetup; 2],
}

/// The ring features to give the kernel, out of what the driver `acked`; `Err` names the
/// bits the driver acked that the kernel (offering `kernel`) does not implement.
pub fn ring_features(acked: u64, kernel: u64) -> Result<u64, u64> {
    let wanted = acked & RING_FEATURES;
    match wanted & !kernel {
        0 => Ok(wanted),
        missing => Err(missing),
    }
}

/// Guest RAM as the kernel's memory table.
pub fn memory_regions(memory: &GuestMemoryMmap) -> Vec<MemoryRegion> {
    memory
        .iter()
        .filter_map(|region| {
            let host = region.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
            Some(MemoryRegion {
                guest_phys_addr: region.start_addr().0,
                size: region.len(),
                host_addr: host as u64,
            })
        })
        .collect()
}

/// The host address of `len` bytes at guest address `addr`, when they lie in one region.
fn host_range(memory: &GuestMemoryMmap, addr: u64, len: u64) -> Option<u64> {
    let region = memory.find_region(GuestAddress(addr))?;
    let offset = addr - region.start_addr().0;
    if offset.checked_add(len)? > region.len() {
        return None;
    }
    let base = region.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
    Some(base as u64 + offset)
}

/// The host addresses of `queue`'s areas (split ring sizes, virtio 1.2 §2.7).
pub fn vring_addr(
    index: u16,
    queue: &Queue,
    memory: &GuestMemoryMmap,
) -> Result<VringAddr, VhostError> {
    let size = u64::from(queue.size());
    let area = |area: &'static str, addr: u64, len: u64| {
        host_range(memory, addr, len).ok_or(VhostError::RingOutsideMemory {
            queue: index,
            area,
            addr,
        })
    };
    Ok(VringAddr {
        desc: area("descriptor table", queue.desc_table(), 16 * size)?,
        avail: area("driver ring", queue.avail_ring(), 6 + 2 * size)?,
        used: area("device ring", queue.used_ring(), 6 + 8 * size)?,
    })
}

/// What [`plan`] needs of one queue.
#[derive(Debug)]
pub struct PlanQueue<'a> {
    /// The queue as the driver set it up.
    pub queue: &'a Queue,
    /// Its doorbell eventfd, if the host has one.
    pub kick: Option<RawFd>,
}

/// Decides whether the kernel can serve this activation, and with what; `Err` says why not
/// (the device then serves the queues itself).
pub fn plan(
    kernel_features: u64,
    acked: u64,
    memory: &GuestMemoryMmap,
    rx: PlanQueue<'_>,
    tx: PlanQueue<'_>,
    interrupt: &dyn VirtioInterrupt,
) -> Result<VhostPlan, String> {
    let features = ring_features(acked, kernel_features).map_err(|missing| {
        format!("the kernel's vhost-net lacks features {missing:#x} the driver accepted")
    })?;
    let setup = |index: u16, q: PlanQueue<'_>| -> Result<VringSetup, String> {
        let kick = q.kick.ok_or("the queue doorbells are not eventfds")?;
        let call = interrupt.queue_irqfd(index).ok_or_else(|| {
            format!(
                "queue {index}'s MSI-X vector has no irqfd (no vector assigned, or the \
                 hypervisor gave none)"
            )
        })?;
        let addr = vring_addr(index, q.queue, memory).map_err(|e| e.to_string())?;
        Ok(VringSetup { index, size: q.queue.size(), base: q.queue.next_avail(), addr, kick, call })
    };
    let vrings = [setup(RX_QUEUE, rx)?, setup(TX_QUEUE, tx)?];
    Ok(VhostPlan { features, regions: memory_regions(memory), vrings })
}

fn call<T>(call: &'static str, queue: Option<u16>, result: io::Result<T>) -> Result<T, VhostError> {
    result.map_err(|source| VhostError::Call { call, queue, source })
}

/// Hands both queues to the kernel, attached to the tap `tap`. On failure everything done
/// is undone ([`stop`]) and the queues are untouched: the device may serve them itself.
pub fn start(
    kernel: &mut dyn VhostNetKernel,
    plan: &VhostPlan,
    tap: RawFd,
) -> Result<(), VhostError> {
    let result = try_start(kernel, plan, tap);
    if result.is_err() {
        stop(kernel);
    }
    result
}

fn try_start(
    kernel: &mut dyn VhostNetKernel,
    plan: &VhostPlan,
    tap: RawFd,
) -> Result<(), VhostError> {
    call("VHOST_SET_FEATURES", None, kernel.set_features(plan.features))?;
    call("VHOST_SET_MEM_TABLE", None, kernel.set_mem_table(&plan.regions))?;
    for ring in &plan.vrings {
        let q = Some(ring.index);
        call("VHOST_SET_VRING_NUM", q, kernel.set_vring_num(ring.index, ring.size))?;
        call("VHOST_SET_VRING_BASE", q, kernel.set_vring_base(ring.index, ring.base))?;
        call("VHOST_SET_VRING_ADDR", q, kernel.set_vring_addr(ring.index, ring.addr))?;
        call("VHOST_SET_VRING_KICK", q, kernel.set_vring_kick(ring.index, Some(ring.kick)))?;
        call("VHOST_SET_VRING_CALL", q, kernel.set_vring_call(ring.index, Some(ring.call)))?;
    }
    for ring in &plan.vrings {
        call("VHOST_NET_SET_BACKEND", Some(ring.index), kernel.set_backend(ring.index, Some(tap)))?;
    }
    Ok(())
}

/// Takes both queues back: detaches the tap (the kernel stops touching guest memory), reads
/// where each ring stopped, and unbinds the eventfds. Best effort: a failure is logged and
/// the rest still runs. Returns the rings' stop indices (for the log).
pub fn stop(kernel: &mut dyn VhostNetKernel) -> [Option<u16>; 2] {
    let mut bases = [None, None];
    for (slot, index) in [RX_QUEUE, TX_QUEUE].into_iter().enumerate() {
        let q = Some(index);
        if let Err(e) = call("VHOST_NET_SET_BACKEND", q, kernel.set_backend(index, None)) {
            log::warn!("vhost-net: cannot detach the tap: {e}");
        }
        match call("VHOST_GET_VRING_BASE", q, kernel.vring_base(index)) {
            Ok(base) => bases[slot] = Some(base),
            Err(e) => log::debug!("vhost-net: {e}"),
        }
        for (name, result) in [
            ("VHOST_SET_VRING_KICK", kernel.set_vring_kick(index, None)),
            ("VHOST_SET_VRING_CALL", kernel.set_vring_call(index, None)),
        ] {
            if let Err(e) = call(name, q, result) {
                log::debug!("vhost-net: {e}");
            }
        }
    }
    bases
}
