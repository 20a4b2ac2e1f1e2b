//! virtio-net (device type 1, virtio 1.2 §5.1): an Ethernet link between the guest and a
//! host backend (a tap, or a stream socket to passt/gvproxy), opened by the VMM.
//!
//! One receive and one transmit queue served by one "virtio-net" worker thread
//! ([`worker`]), which wakes on either doorbell and on the backend; or, over a tap whose VMM
//! opened `/dev/vhost-net` ([`Net::set_vhost`]), by the host kernel ([`vhost`]), which a
//! "vhost-net" thread hands the queues to at DRIVER_OK and takes them back from at reset. Offered: MAC, link status
//! (always up), mergeable receive buffers, EVENT_IDX and indirect descriptors; and, when the
//! backend passes `virtio_net_hdr`s (a tap with IFF_VNET_HDR), checksum and TSO offloads both
//! ways. No multi-queue: it needs the control queue and a multi-queue tap per queue pair, and
//! one queue pair already outruns the emulated links Aperture is used with.

pub mod backend;
mod engine;
pub mod framing;
pub mod header;
pub mod rx;
mod sys;
#[cfg(test)]
mod tests;
pub mod tx;
pub mod vhost;
mod worker;

use std::sync::Arc;

use log::{info, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;

pub use backend::{NetBackend, RxOffloads};
pub use engine::{NetEngine, RxState, MAX_FRAME, RX_QUEUE, TX_QUEUE};
pub use vhost::VhostNetKernel;
pub use worker::NetDoorbells;

use super::worker::ready_queue;
use super::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt, WorkerStartHook};
use worker::{NetWorker, VhostHandover};

/// Size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// `struct virtio_net_config`: mac[6], status, max_virtqueue_pairs.
const CONFIG_LEN: usize = 10;

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// A locally administered unicast address derived from `seed` (FNV-1a), stable for the
    /// same seed: a VM's NICs keep their MACs across runs.
    pub fn derived(seed: &str) -> Self {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in seed.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        let h = hash.to_le_bytes();
        // 0x52: locally administered (bit 1), unicast (bit 0 clear), as QEMU's 52:54:00.
        Self([0x52, 0x54, h[0], h[1], h[2], h[3]])
    }
}

impl std::str::FromStr for MacAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a MAC address like 52:54:00:12:34:56");
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        if mac[0] & 1 != 0 {
            return Err(format!("{text} is a multicast address; a NIC needs a unicast one"));
        }
        Ok(Self(mac))
    }
}

impl std::fmt::Display for MacAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
    }
}

/// A virtio-net device.
#[derive(Debug)]
pub struct Net {
    name: String,
    mac: MacAddress,
    vnet_hdr: bool,
    /// Here while stopped; the worker holds it while active.
    backend: Option<Box<dyn NetBackend>>,
    acked_features: u64,
    worker: Option<NetWorker>,
    worker_start: Option<WorkerStartHook>,
    /// The kernel's vhost-net, when it may serve the queues (a tap backend); here while
    /// stopped, with the worker while active.
    vhost: Option<Box<dyn VhostNetKernel>>,
}

impl Net {
    /// A NIC called `name` in logs, with `mac`, over `backend`.
    pub fn new(name: &str, mac: MacAddress, backend: Box<dyn NetBackend>) -> Self {
        let vnet_hdr = backend.vnet_hdr();
        info!(
            "{name}: MAC {mac} over {}{}",
            backend.describe(),
            if vnet_hdr { " (checksum and TSO offloads)" } else { "" }
        );
        Self {
            name: name.to_string(),
            mac,
            vnet_hdr,
            backend: Some(backend),
            acked_features: 0,
            worker: None,
            worker_start: None,
            vhost: None,
        }
    }

    /// Lets the kernel's vhost-net serve the queues of each activation it can (a tap
    /// backend, queue doorbells and vectors with eventfds, ring features it implements);
    /// others are served in userspace.
    pub fn set_vhost(&mut self, kernel: Box<dyn VhostNetKernel>) {
        self.vhost = Some(kernel);
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> MacAddress {
        self.mac
    }

    /// Runs `hook` first on every worker thread the device starts.
    pub fn set_worker_start_hook(&mut self, hook: Option<WorkerStartHook>) {
        self.worker_start = hook;
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked_features & (1 << bit) != 0
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            if let Some((backend, vhost)) = worker.stop() {
                self.backend = Some(backend);
                if vhost.is_some() {
                    self.vhost = vhost;
                }
            }
        }
    }

    /// The vhost-net handover for this activation, if the kernel can take it; otherwise
    /// the kernel stays with the device for the next one.
    fn vhost_handover(
        &mut self,
        memory: &GuestMemoryMmap,
        rx: &ActiveQueue,
        tx: &ActiveQueue,
        backend: &dyn NetBackend,
        interrupt: &dyn VirtioInterrupt,
    ) -> Option<VhostHandover> {
        let kernel = self.vhost.take()?;
        if backend.tap_fd().is_none() {
            self.vhost = Some(kernel);
            return None;
        }
        fn queue(q: &ActiveQueue) -> vhost::PlanQueue<'_> {
            vhost::PlanQueue { queue: &q.queue, kick: q.notify.raw_fd() }
        }
        match vhost::plan(
            kernel.features(),
            self.acked_features,
            memory,
            queue(rx),
            queue(tx),
            interrupt,
        ) {
            Ok(plan) => Some(VhostHandover { kernel, plan }),
            Err(why) => {
                info!("{}: vhost-net cannot serve these queues ({why}); userspace does", self.name);
                self.vhost = Some(kernel);
                None
            }
        }
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        config[..6].copy_from_slice(&self.mac.0);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        config
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        let mut features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_NET_F_MAC
            | 1 << VIRTIO_NET_F_STATUS
            | 1 << VIRTIO_NET_F_MRG_RXBUF;
        if self.vnet_hdr {
            features |= 1 << VIRTIO_NET_F_CSUM
                | 1 << VIRTIO_NET_F_GUEST_CSUM
                | 1 << VIRTIO_NET_F_HOST_TSO4
                | 1 << VIRTIO_NET_F_HOST_TSO6
                | 1 << VIRTIO_NET_F_GUEST_TSO4
                | 1 << VIRTIO_NET_F_GUEST_TSO6;
        }
        features
    }

    fn ack_features(&mut self, features: u64) {
        let offered = self.device_features();
        if features & !offered != 0 {
            warn!(
                "{}: the driver accepted features {:#x} that were not offered; ignored",
                self.name,
                features & !offered
            );
        }
        self.acked_features = features & offered;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config_space();
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|at| at.checked_add(i))
                .and_then(|at| config.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "{}: the driver wrote {} bytes at config offset {offset:#x}; the MAC is set by the \
             host (--net ...,mac=), so the write is ignored",
            self.name,
            data.len()
        );
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            warn!("{}: activated while running; restarting its worker", self.name);
            self.stop_worker();
        }
        let event_idx = self.acked(VIRTIO_RING_F_EVENT_IDX);
        let mut rx = None;
        let mut tx = None;
        for mut active in queues {
            ready_queue(&self.name, &mut active, &memory, event_idx)?;
            match active.index {
                RX_QUEUE => rx = Some(active),
                TX_QUEUE => tx = Some(active),
                other => {
                    return Err(ActivateError::BadSetup(format!(
                        "{} has queues 0 and 1 but the driver set up queue {other}; the guest \
                         driver is broken",
                        self.name
                    )))
                }
            }
        }
        let (Some(rx), Some(tx)) = (rx, tx) else {
            return Err(ActivateError::BadSetup(format!(
                "{} needs its receive and transmit queues (0 and 1) enabled; the guest driver \
                 is broken",
                self.name
            )));
        };
        let Some(backend) = self.backend.take() else {
            return Err(ActivateError::BadSetup(format!(
                "{} lost its backend when its worker failed; restart the VM",
                self.name
            )));
        };
        let offloads = RxOffloads {
            csum: self.acked(VIRTIO_NET_F_GUEST_CSUM),
            tso4: self.acked(VIRTIO_NET_F_GUEST_TSO4),
            tso6: self.acked(VIRTIO_NET_F_GUEST_TSO6),
        };
        let vhost = self.vhost_handover(&memory, &rx, &tx, backend.as_ref(), interrupt.as_ref());
        let doorbells = NetDoorbells { rx: rx.notify, tx: tx.notify };
        let engine = NetEngine::new(
            self.name.clone(),
            memory,
            rx.queue,
            tx.queue,
            backend,
            interrupt,
            self.acked(VIRTIO_NET_F_MRG_RXBUF),
        );
        let worker = NetWorker::spawn(
            self.name.clone(),
            engine,
            doorbells,
            offloads,
            self.worker_start.clone(),
            vhost,
        )?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }
}
