//! The transport's side of interrupts: a device raises a queue or configuration interrupt,
//! which becomes the MSI-X vector the driver assigned to it.
//!
//! Shared (in an `Arc`) between the transport, which the vCPU threads drive, and the device's
//! worker threads. The MSI-X state sits behind its own mutex, never held while a message is
//! sent or while the device is reset.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use log::debug;

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
        Self {
            name: name.to_string(),
            msix: Mutex::new(msix),
            sink,
            requester_id: AtomicU16::new(0),
            config_vector: AtomicU16::new(VIRTIO_MSI_NO_VECTOR),
            queue_vectors: (0..num_queues).map(|_| AtomicU16::new(VIRTIO_MSI_NO_VECTOR)).collect(),
            isr: AtomicU8::new(0),
            generation: AtomicU8::new(0),
        }
    }

    /// The MSI-X table, PBA and control bits.
    pub(crate) fn msix(&self) -> MutexGuard<'_, MsixState> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_requester_id(&self, requester_id: u16) {
        self.requester_id.store(requester_id, Ordering::Relaxed);
    }

    pub(crate) fn requester_id(&self) -> u16 {
        self.requester_id.load(Ordering::Relaxed)
    }

    /// Sends messages an unmask released.
    pub(crate) fn send(&self, messages: Vec<MsiMessage>) {
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
            self.sink.signal_msi(message, self.requester_id());
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
}
