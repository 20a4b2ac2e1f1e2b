//! [`DextInterrupts`]: MSI and MSI-X of a device claimed through the dext.
//!
//! The dext registers the device's vectors once (SetupInterrupts), sets a pending bit in the
//! shared interrupt-state page when one fires, and completes an outstanding WaitInterrupt. A
//! thread per device waits, reads and clears the pending bitmap, and injects each pending
//! vector's current guest message through the VMM's [`MsiSink`].
//!
//! The dext drops interrupts of vectors whose enabled bit is clear, so SetIRQMask enables
//! every vector of the kind the guest has on, and guest masking happens here: an interrupt of
//! a masked (or not yet programmed) vector is held and delivered when the guest unmasks it,
//! which is MSI-X pending-bit behaviour.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use devices::pci::MsiMessage;
use log::{debug, info, warn};

use super::connection::{call_exact, DextConnection, DextError, DextMapping};
use super::device::DextDevice;
use super::protocol::{
    MemoryType, Selector, IRQ_ENABLED_OFFSET, IRQ_PENDING_OFFSET, IRQ_WORDS, MAX_VECTORS,
};
use crate::assigned::{vector_is_live, InterruptHost, InterruptKind, VectorRoute};

/// Delivers a guest MSI: (message, requester id); the VMM injects it (`Vm::signal_msi`).
pub type MsiSink = Arc<dyn Fn(MsiMessage, u16) + Send + Sync>;

/// How long the wait thread blocks before it checks whether to stop (and re-reads the page,
/// which also covers a lost wakeup).
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// A vector bitmap.
type Bitmap = [u64; IRQ_WORDS];

/// The interrupt-state page: the pending and enabled bitmaps the dext updates atomically.
#[derive(Debug)]
struct IrqPage {
    mapping: Arc<dyn DextMapping>,
}

impl IrqPage {
    fn new(mapping: Arc<dyn DextMapping>) -> Result<Self, DextError> {
        let needed = (IRQ_ENABLED_OFFSET + 8 * IRQ_WORDS) as u64;
        if mapping.addr().is_null() || mapping.len() < needed || mapping.addr() as usize % 8 != 0 {
            return Err(DextError::Protocol(format!(
                "the interrupt-state page is mapped at {:p}+{:#x}; it needs {needed:#x} bytes \
                 aligned to 8",
                mapping.addr(),
                mapping.len()
            )));
        }
        Ok(Self { mapping })
    }

    fn pending_word(&self, word: usize) -> &AtomicU64 {
        let offset = IRQ_PENDING_OFFSET + 8 * (word % IRQ_WORDS);
        // SAFETY: `new` checked that the mapping holds the bitmaps and is 8-byte aligned; it
        // stays mapped while `self.mapping` lives, and the dext only touches the words with
        // atomic operations, so a shared atomic view is sound.
        unsafe { &*(self.mapping.addr().add(offset) as *const AtomicU64) }
    }

    /// Reads and clears the pending bitmap.
    fn take_pending(&self) -> Bitmap {
        std::array::from_fn(|word| self.pending_word(word).swap(0, Ordering::AcqRel))
    }
}

/// Where the pending bitmap is read from: the page, or CheckInterrupt if it cannot be mapped.
#[derive(Debug)]
enum PendingSource {
    Page(IrqPage),
    Call,
}

/// One vector as the guest programmed it.
#[derive(Debug, Clone, Copy, Default)]
struct Vector {
    message: Option<MsiMessage>,
    requester_id: u16,
    /// An interrupt arrived while it had no message (masked): deliver on unmask.
    held: bool,
}

/// The guest's side of the vectors: which kind is on, each vector's message, what is held.
#[derive(Debug, Default)]
struct VectorTable {
    enabled: Option<(InterruptKind, u16)>,
    /// Vectors the guest enabled; more than `enabled`'s count when the dext set up fewer.
    requested: u16,
    vectors: Vec<Vector>,
}

impl VectorTable {
    /// The vectors the dext must record.
    fn enable_mask(&self) -> Bitmap {
        let mut mask = [0u64; IRQ_WORDS];
        for vector in 0..self.enabled.map_or(0, |(_, count)| usize::from(count)) {
            mask[vector / 64] |= 1 << (vector % 64);
        }
        mask
    }

    /// The guest turned `kind` on with `count` vectors (all disconnected), or off (0).
    /// Returns whether the dext's mask must change.
    #[cfg(test)]
    fn set_count(&mut self, kind: InterruptKind, count: u16) -> bool {
        self.set_count_of(kind, count, count)
    }

    /// As [`Self::set_count`], with the guest having enabled `requested` (at least `count`):
    /// the vectors past `count` exist for the guest but never fire.
    fn set_count_of(&mut self, kind: InterruptKind, count: u16, requested: u16) -> bool {
        if count == 0 && self.enabled.is_none_or(|(on, _)| on != kind) {
            return false;
        }
        self.enabled = (count > 0).then_some((kind, count));
        self.requested = if count > 0 { requested } else { 0 };
        self.vectors = vec![Vector::default(); usize::from(count)];
        true
    }

    /// Programs `vector` of `kind` with `setting`'s message and requester id; returns a held
    /// interrupt to deliver now that it is unmasked.
    fn program(
        &mut self,
        kind: InterruptKind,
        vector: u16,
        setting: Vector,
    ) -> std::io::Result<Option<(MsiMessage, u16)>> {
        let beyond_host = self.enabled.is_some_and(|(on, count)| on == kind && vector >= count);
        if beyond_host && vector < self.requested {
            debug!("{kind} vector {vector} is past the vectors the DriverKit extension set up");
            return Ok(None);
        }
        if !vector_is_live(self.enabled, kind, vector, setting.message.as_ref())? {
            return Ok(None);
        }
        let entry = &mut self.vectors[usize::from(vector)];
        entry.message = setting.message;
        entry.requester_id = setting.requester_id;
        match setting.message {
            Some(message) if entry.held => {
                entry.held = false;
                Ok(Some((message, setting.requester_id)))
            }
            _ => Ok(None),
        }
    }

    /// What to inject for the `pending` bitmap; masked vectors are held.
    fn pending(&mut self, pending: &Bitmap) -> Vec<(MsiMessage, u16)> {
        let mut deliver = Vec::new();
        for (word, &bits) in pending.iter().enumerate() {
            let mut bits = bits;
            while bits != 0 {
                let vector = word * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                match self.vectors.get_mut(vector) {
                    Some(Vector { message: Some(message), requester_id, .. }) => {
                        deliver.push((*message, *requester_id))
                    }
                    Some(entry) => entry.held = true,
                    // Fired after the guest turned the kind off: nobody to tell.
                    None => debug!("interrupt of vector {vector}, which is not enabled, dropped"),
                }
            }
        }
        deliver
    }

    fn held(&self) -> Vec<u16> {
        // The table has at most MAX_VECTORS entries.
        self.vectors.iter().enumerate().filter(|(_, v)| v.held).map(|(i, _)| i as u16).collect()
    }
}

/// State shared with the wait thread.
struct Shared {
    name: String,
    connection: Arc<dyn DextConnection>,
    table: Mutex<VectorTable>,
    source: PendingSource,
    sink: MsiSink,
    stop: AtomicBool,
    /// The device's gone flag: set when a wait fails because the device left.
    gone: Arc<AtomicBool>,
}

impl Shared {
    fn table(&self) -> MutexGuard<'_, VectorTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_pending(&self) -> Result<Bitmap, DextError> {
        match &self.source {
            PendingSource::Page(page) => Ok(page.take_pending()),
            PendingSource::Call => {
                call_exact::<IRQ_WORDS>(self.connection.as_ref(), Selector::CheckInterrupt, &[])
            }
        }
    }

    fn deliver(&self, interrupts: Vec<(MsiMessage, u16)>) {
        for (message, requester_id) in interrupts {
            (self.sink)(message, requester_id);
        }
    }

    /// Injects whatever is pending now.
    fn drain(&self) -> Result<(), DextError> {
        let pending = self.take_pending()?;
        if pending.iter().any(|&w| w != 0) {
            let deliver = self.table().pending(&pending);
            self.deliver(deliver);
        }
        Ok(())
    }

    fn set_mask(&self, mask: &Bitmap) -> Result<(), DextError> {
        self.connection.call(Selector::SetIrqMask, mask, &mut []).map(|_| ())
    }

    fn run(&self) {
        let mut failing = false;
        while !self.stop.load(Ordering::Acquire) {
            let waited = self.connection.wait_interrupt(WAIT_SLICE);
            let drained = self.drain();
            match waited.and(drained) {
                Ok(_) => failing = false,
                Err(e) if e.device_gone() && !self.stop.load(Ordering::Acquire) => {
                    // Terminated or unplugged: the VMM takes the device out of the guest.
                    warn!("{}: the DriverKit extension lost the device ({e})", self.name);
                    self.gone.store(true, Ordering::Release);
                    break;
                }
                Err(e) => {
                    if !failing {
                        warn!("{}: waiting for interrupts: {e}; polling instead", self.name);
                    }
                    failing = true;
                    std::thread::sleep(WAIT_SLICE);
                }
            }
        }
        debug!("{}: interrupt thread stopped", self.name);
    }
}

/// The [`InterruptHost`] of a device claimed through the dext: MSI and MSI-X vectors, fed by a
/// wait thread.
pub struct DextInterrupts {
    shared: Arc<Shared>,
    host_vectors: u16,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DextInterrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DextInterrupts")
            .field("device", &self.shared.name)
            .field("host_vectors", &self.host_vectors)
            .field("enabled", &self.shared.table().enabled)
            .finish()
    }
}

impl DextInterrupts {
    /// Sets up `device`'s vectors in the dext and starts the wait thread, which injects
    /// through `sink`. A device whose vectors cannot be set up gets none (logged): the guest
    /// then cannot enable MSI or MSI-X.
    pub fn new(device: &DextDevice, sink: MsiSink) -> Self {
        let name = device.address().to_string();
        let connection = device.connection().clone();
        let host_vectors =
            match call_exact::<1>(connection.as_ref(), Selector::SetupInterrupts, &[]) {
                // The dext registers at most MAX_VECTORS.
                Ok([count]) => count.min(u64::from(MAX_VECTORS)) as u16,
                Err(e) => {
                    warn!("{name}: no MSI or MSI-X: {e}");
                    0
                }
            };
        let source = match connection.map_memory(MemoryType::InterruptState).and_then(IrqPage::new)
        {
            Ok(page) => PendingSource::Page(page),
            Err(e) if host_vectors > 0 => {
                warn!("{name}: {e}; reading pending interrupts with CheckInterrupt instead");
                PendingSource::Call
            }
            Err(_) => PendingSource::Call,
        };
        let shared = Arc::new(Shared {
            name: name.clone(),
            connection,
            table: Mutex::new(VectorTable::default()),
            source,
            sink,
            stop: AtomicBool::new(false),
            gone: device.gone_flag().clone(),
        });
        let mut this = Self { shared: shared.clone(), host_vectors, thread: None };
        if host_vectors == 0 {
            return this;
        }
        // SetupInterrupts enables every vector; none is the guest's yet.
        if let Err(e) = shared.set_mask(&[0; IRQ_WORDS]) {
            warn!("{name}: SetIRQMask: {e}");
        }
        let spawned =
            std::thread::Builder::new().name(format!("irq {name}")).spawn(move || shared.run());
        match spawned {
            Ok(thread) => this.thread = Some(thread),
            Err(e) => {
                warn!("{name}: cannot start the interrupt thread ({e}); no MSI or MSI-X");
                this.host_vectors = 0;
            }
        }
        info!("{name}: {} interrupt vectors through the DriverKit extension", this.host_vectors);
        this
    }

    /// Vectors the dext set up.
    pub fn host_vectors(&self) -> u16 {
        self.host_vectors
    }

    /// Vectors holding an interrupt until the guest unmasks them.
    pub fn held_vectors(&self) -> Vec<u16> {
        self.shared.table().held()
    }
}

impl InterruptHost for DextInterrupts {
    fn max_vectors(&self, _kind: InterruptKind) -> Option<u16> {
        Some(self.host_vectors)
    }

    fn set_vector_count(&mut self, kind: InterruptKind, requested: u16) -> std::io::Result<()> {
        // The dext sets up at most 256 vectors, and one MSI vector when MSI-X set-up fails
        // (`vfio_user_setup_interrupts`): the guest gets what there is rather than nothing.
        let vectors = requested.min(self.host_vectors);
        if vectors < requested {
            warn!(
                "{}: the guest enabled {requested} {kind} vectors, the DriverKit extension set \
                 up {}: vectors {vectors} and up never fire",
                self.shared.name, self.host_vectors
            );
        }
        let mask = {
            let mut table = self.shared.table();
            if !table.set_count_of(kind, vectors, requested) {
                return Ok(());
            }
            table.enable_mask()
        };
        debug!("{}: {kind} {vectors} vectors on the host", self.shared.name);
        self.shared.set_mask(&mask).map_err(Into::into)
    }

    fn route_vector(&mut self, route: VectorRoute) -> std::io::Result<()> {
        let VectorRoute { kind, vector, message, requester_id } = route;
        let setting = Vector { message, requester_id, held: false };
        let held = self.shared.table().program(kind, vector, setting)?;
        if let Some(interrupt) = held {
            debug!(
                "{}: {kind} vector {vector} unmasked: delivering its held interrupt",
                self.shared.name
            );
            self.shared.deliver(vec![interrupt]);
        }
        Ok(())
    }
}

impl Drop for DextInterrupts {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if self.host_vectors > 0 {
            if let Err(e) = self.shared.set_mask(&[0; IRQ_WORDS]) {
                debug!("{}: SetIRQMask at exit: {e}", self.shared.name);
            }
        }
        if let Some(thread) = self.thread.take() {
            // It notices within WAIT_SLICE.
            if thread.join().is_err() {
                warn!("{}: the interrupt thread panicked", self.shared.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(n: u32) -> Option<MsiMessage> {
        Some(MsiMessage { address: 0x0809_0040, data: n })
    }

    fn setting(message: Option<MsiMessage>, requester_id: u16) -> Vector {
        Vector { message, requester_id, held: false }
    }

    #[test]
    fn table_holds_masked_vectors_and_delivers_on_unmask() {
        let mut t = VectorTable::default();
        assert!(t.set_count(InterruptKind::Msix, 3));
        assert_eq!(t.enable_mask(), [0b111, 0, 0, 0]);
        t.program(InterruptKind::Msix, 0, setting(msg(10), 0x100)).unwrap();
        // Vector 1 masked (no message), vector 2 programmed.
        t.program(InterruptKind::Msix, 2, setting(msg(12), 0x100)).unwrap();
        let out = t.pending(&[0b111 | 1 << 40, 0, 0, 1]);
        assert_eq!(out, vec![(msg(10).unwrap(), 0x100), (msg(12).unwrap(), 0x100)]);
        assert_eq!(t.held(), vec![1]);
        let now = t.program(InterruptKind::Msix, 1, setting(msg(11), 0x200)).unwrap();
        assert_eq!(now, Some((msg(11).unwrap(), 0x200)));
        assert!(t.held().is_empty());
        // Held once, delivered once.
        assert_eq!(t.program(InterruptKind::Msix, 1, setting(msg(11), 0x200)).unwrap(), None);
    }

    #[test]
    fn table_follows_the_enabled_kind() {
        let mut t = VectorTable::default();
        assert!(!t.set_count(InterruptKind::Msi, 0), "off and staying off");
        assert!(t.set_count(InterruptKind::Msi, 70));
        assert_eq!(t.enable_mask(), [u64::MAX, 0x3f, 0, 0]);
        assert!(t.program(InterruptKind::Msix, 0, setting(msg(1), 0)).is_err(), "the other kind");
        assert!(t.program(InterruptKind::Msi, 70, setting(msg(1), 0)).is_err(), "past the count");
        assert!(
            t.program(InterruptKind::Msix, 0, setting(None, 0)).is_ok(),
            "disconnecting is fine"
        );
        assert!(!t.set_count(InterruptKind::Msix, 0), "MSI-X was not on");
        assert!(t.set_count(InterruptKind::Msi, 0));
        assert_eq!(t.enable_mask(), [0; IRQ_WORDS]);
        assert!(t.pending(&[1, 0, 0, 0]).is_empty());
    }
}
