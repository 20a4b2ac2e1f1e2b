//! virtio devices, independent of the transport (the PCI transport is in `pci`).

pub mod block;
pub mod net;
mod queue_event;
mod queue_service;
pub mod rng;
pub mod sys;
#[cfg(test)]
mod test_ring;
mod worker;

use std::sync::Arc;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use block::Block;
pub use net::Net;
pub use queue_event::QueueEvent;
pub use rng::Rng;
pub use worker::WorkerStartHook;

/// Raises a device's interrupts; the transport maps them to MSI-X vectors.
pub trait VirtioInterrupt: Send + Sync {
    /// Signals that queue `queue_index` has new used buffers.
    fn signal_queue(&self, queue_index: u16);
    /// Signals that the device configuration changed.
    fn signal_config(&self);
    /// The eventfd that raises queue `queue_index`'s MSI-X vector through the hypervisor
    /// (a KVM irqfd), for a host kernel that serves the queue itself (vhost-net) to signal;
    /// `None` when the queue has no vector or the vector has no such trigger. It stays valid
    /// while the transport lives; its route follows the vector's MSI-X entry.
    fn queue_irqfd(&self, _queue_index: u16) -> Option<std::os::fd::RawFd> {
        None
    }
}

/// Errors a device reports when the driver activates it.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up the device in a way it cannot run with.
    #[error("{0}")]
    BadSetup(String),
    /// The worker thread could not start.
    #[error("could not start the device worker: {0}")]
    Worker(#[from] std::io::Error),
}

/// The driver's queues, as it configured them, handed over at activation.
#[derive(Debug)]
pub struct ActiveQueue {
    /// Queue index.
    pub index: u16,
    /// The queue (virtio-queue), with sizes and ring addresses set by the driver.
    pub queue: Queue,
    /// The queue's doorbell: rung by the transport on a trapped notify write, or by the
    /// hypervisor itself (an ioeventfd) where it can.
    pub notify: Arc<QueueEvent>,
}

/// A virtio device (virtio 1.x, modern only).
pub trait VirtioDevice: Send {
    /// Device type id (1 = network, 2 = block, 4 = entropy, 3 = console).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (must include VIRTIO_F_VERSION_1).
    fn device_features(&self) -> u64;
    /// The features the driver accepted (a subset of `device_features`).
    fn ack_features(&mut self, features: u64);
    /// Reads device-specific configuration at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device-specific configuration at `offset` (most fields are read-only).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK: start serving `queues` (work runs on a device thread, not
    /// on the vCPU thread that made the call).
    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: stop the worker and forget the queues. Returns once the
    /// worker no longer touches guest memory.
    fn reset(&mut self);
}
