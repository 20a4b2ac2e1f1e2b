//! The transport's side of interrupts: a device raises a queue or configuration interrupt,
//! which becomes the MSI-X vector the driver assigned to it.
//!
//! Shared (in an `Arc`) between the transport, which the vCPU threads drive, and the device's
//! worker threads. The MSI-X state sits behind its own mutex, never held while a message is
//! sent directly or while the device is reset. Where the host has hypervisor triggers (KVM
//! irqfds, [`VectorRoutes`]) a worker raises a vector by signalling its trigger, with no
//! ioctl; the routes follow every change the guest makes to the MSI-X table, enable and mask
//! bits, and requester id. Lock order: MSI-X state, then routes.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::debug;

use super::vector_routes::VectorRoutes;
use crate::pci::msix::MsixState;
use crate::pci::{MsiMessage, MsiSink};
use crate::virtio::VirtioInterrupt;

/// A queue or the configuration has no vector.
pub const VIRTIO_MSI_NO_VECTOR: u16 = 0xffff;
/// ISR bit: a queue has used buffers.
const ISR_QUEUE: u8 = 1;
/// ISR bit: the device configuration changed.
const ISR_CONFIG: u8 = 2;

/// Vector assignments, MSI-X state and the MSI sink of one virtio-pci function.
pub(crate) struct VirtioPciInterrupt {
    name: String,
    msix: Mutex<MsixState>,
    routes: Mutex<VectorRoutes>,
    sink: Arc<dyn MsiSink>,
    requester_id: AtomicU16,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
    isr: AtomicU8,
    generation: AtomicU8,
}

impl std::fmt::Debug for VirtioPciInterrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciInterrupt")
            .field("name", &self.name)
            .field("requester_id", &self.requester_id.load(Ordering::Relaxed))
            .finish()
    }
}

impl VirtioPciInterrupt {
    pub(crate) fn new(
        name: &str,
        msix: MsixState,
        sink: Arc<dyn MsiSink>,
        num_queues: usize,
    ) -> Self {
        let routes = VectorRoutes::new(name, sink.as_ref(), msix.vectors());
        Self {
            name: name.to_string(),
            msix: Mutex::new(msix),
            routes: Mutex::new(routes),
            sink,
            requester_id: AtomicU16::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..num_queues).map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR)).collect(),
            isr: AtomicU8::new(0),
            generation: AtomicU8::new(0),
        }
    }

    /// The MSI-X table, PBA and control bits, for reading: changes go through
    /// [`Self::write_table`] and [`Self::set_control`], which keep the routes in line.
    pub(crate) fn msix(&self) -> MutexGuard<'_, MsixState> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn routes(&self) -> MutexGuard<'_, VectorRoutes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether vectors are raised through hypervisor triggers.
    pub(crate) fn has_vector_triggers(&self) -> bool {
        self.routes().active()
    }

    /// Changes the MSI-X state with `change`, brings the routes in line and sends the
    /// pending messages the change released.
    fn change_msix(&self, change: impl FnOnce(&mut MsixState) -> Vec<MsiMessage>) {
        let messages = {
            let mut msix = self.msix();
            let messages = change(&mut msix);
            let mut routes = self.routes();
            if routes.active() {
                routes.sync(&msix, self.requester_id());
            }
            messages
        };
        self.send(messages);
    }

    /// A guest write of the MSI-X table at `offset`.
    pub(crate) fn write_table(&self, offset: u64, data: &[u8]) {
        self.change_msix(|msix| msix.write_table(offset, data));
    }

    /// The guest changed the MSI-X enable / function-mask bits.
    pub(crate) fn set_control(&self, enabled: bool, function_masked: bool) {
        self.change_msix(|msix| msix.set_control(enabled, function_masked));
    }

    pub(crate) fn set_requester_id(&self, requester_id: u16) {
        self.requester_id.store(requester_id, Ordering::Relaxed);
        self.change_msix(|_| Vec::new());
    }

    pub(crate) fn requester_id(&self) -> u16 {
        self.requester_id.load(Ordering::Relaxed)
    }

    /// Sends messages an unmask released (directly: this runs on a vCPU thread anyway).
    fn send(&self, messages: Vec<MsiMessage>) {
        let requester_id = self.requester_id();
        for message in messages {
            self.sink.signal_msi(message, requester_id);
        }
    }

    /// A vector the driver may assign: one that exists, or "no vector".
    fn valid_vector(&self, vector: u16) -> u16 {
        let vectors = self.msix().vectors();
        if vector == VIRTIO_MSI_NO_VECTOR || vector < vectors {
            vector
        } else {
            debug!("{}: MSI-X vector {vector} does not exist ({vectors} vectors)", self.name);
            VIRTIO_MSI_NO_VECTOR
        }
    }

    pub(crate) fn config_vector(&self) -> u16 {
        self.config_vector.load(Ordering::Relaxed)
    }

    /// Assigns the configuration vector; an invalid one reads back as "no vector".
    pub(crate) fn set_config_vector(&self, vector: u16) {
        self.config_vector.store(self.valid_vector(vector), Ordering::Relaxed);
    }

    pub(crate) fn queue_vector(&self, queue: u16) -> u16 {
        self.queue_vectors
            .get(usize::from(queue))
            .map_or(VIRTIO_MSI_NO_VECTOR, |v| v.load(Ordering::Relaxed))
    }

    /// Assigns a queue's vector; an invalid one reads back as "no vector".
    pub(crate) fn set_queue_vector(&self, queue: u16, vector: u16) {
        let vector = self.valid_vector(vector);
        if let Some(slot) = self.queue_vectors.get(usize::from(queue)) {
            slot.store(vector, Ordering::Relaxed);
        }
    }

    /// Reads and clears the ISR status.
    pub(crate) fn take_isr(&self) -> u8 {
        self.isr.swap(0, Ordering::AcqRel)
    }

    pub(crate) fn generation(&self) -> u8 {
        self.generation.load(Ordering::Acquire)
    }

    /// A virtio reset: no vectors assigned, ISR clear. The MSI-X table is PCI state and stays.
    pub(crate) fn reset(&self) {
        self.config_vector.store(VIRTIO_MSI_NO_VECTOR, Ordering::Relaxed);
        for vector in &self.queue_vectors {
            vector.store(VIRTIO_MSI_NO_VECTOR, Ordering::Relaxed);
        }
        self.isr.store(0, Ordering::Release);
    }

    fn signal_vector(&self, vector: u16, what: &str) {
        if vector == VIRTIO_MSI_NO_VECTOR {
            debug!("{}: {what} interrupt with no MSI-X vector assigned; dropped", self.name);
            return;
        }
        // Taken out of the lock before sending.
        let message = self.msix().trigger(vector);
        if let Some(message) = message {
            let requester_id = self.requester_id();
            if !self.routes().signal(vector, (message, requester_id)) {
                self.sink.signal_msi(message, requester_id);
            }
        }
    }
}

impl VirtioInterrupt for VirtioPciInterrupt {
    fn signal_queue(&self, queue_index: u16) {
        self.isr.fetch_or(ISR_QUEUE, Ordering::AcqRel);
        self.signal_vector(self.queue_vector(queue_index), "queue");
    }

    fn signal_config(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.isr.fetch_or(ISR_CONFIG, Ordering::AcqRel);
        self.signal_vector(self.config_vector(), "configuration");
    }

    fn queue_irqfd(&self, queue_index: u16) -> Option<std::os::fd::RawFd> {
        match self.queue_vector(queue_index) {
            VIRTIO_MSI_NO_VECTOR => None,
            vector => self.routes().eventfd(vector),
        }
    }
}
