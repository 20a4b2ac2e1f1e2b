use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::pci::config::{BAR0, COMMAND};
use crate::pci::root::PciRoot;
use crate::pci::testing::{read_le, RecordingMsiSink, XorShift, FUZZ_SIZES};
use crate::pci::{MsiMessage, MsiSink};

const VERSION_1: u64 = 1 << 32;
const FEATURES: u64 = VERSION_1 | 1 << 29 | 1 << 5;

/// What a queue looked like when the device was activated: index, size, desc, avail, used.
type QueueSnapshot = (u16, u16, u64, u64, u64);

#[derive(Default)]
struct FakeState {
    acked: Option<u64>,
    activations: Vec<Vec<QueueSnapshot>>,
    notifiers: Vec<Arc<QueueEvent>>,
    interrupt: Option<Arc<dyn VirtioInterrupt>>,
    resets: usize,
    config_writes: Vec<(u64, Vec<u8>)>,
    fail_activation: bool,
}

struct FakeDevice {
    state: Arc<Mutex<FakeState>>,
    sizes: Vec<u16>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        2
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn device_features(&self) -> u64 {
        FEATURES
    }
    fn ack_features(&mut self, features: u64) {
        self.state.lock().unwrap().acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.state.lock().unwrap().config_writes.push((offset, data.to_vec()));
    }
    fn activate(
        &mut self,
        _memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        let mut state = self.state.lock().unwrap();
        if state.fail_activation {
            return Err(ActivateError::BadSetup("test says no".into()));
        }
        let snapshot = queues
            .iter()
            .map(|q| {
                (
                    q.index,
                    q.queue.size(),
                    q.queue.desc_table(),
                    q.queue.avail_ring(),
                    q.queue.used_ring(),
                )
            })
            .collect();
        state.activations.push(snapshot);
        state.notifiers = queues.iter().map(|q| q.notify.clone()).collect();
        state.interrupt = Some(interrupt);
        Ok(())
    }
    fn reset(&mut self) {
        let mut state = self.state.lock().unwrap();
        state.resets += 1;
        state.interrupt = None;
    }
}

struct Harness {
    pci: VirtioPci,
    state: Arc<Mutex<FakeState>>,
    msi: Arc<RecordingMsiSink>,
}

// Common configuration offsets: the transport's own.
use super::common_cfg::{
    CONFIG_GENERATION, CONFIG_MSIX_VECTOR, DEVICE_FEATURE, DEVICE_FEATURE_SELECT, DEVICE_STATUS,
    DRIVER_FEATURE, DRIVER_FEATURE_SELECT, NUM_QUEUES, QUEUE_DESC, QUEUE_DEVICE, QUEUE_DRIVER,
    QUEUE_ENABLE, QUEUE_MSIX_VECTOR, QUEUE_NOTIFY_OFF, QUEUE_SELECT, QUEUE_SIZE,
};

const ACKNOWLEDGE: u8 = 1;
const DRIVER: u8 = 2;

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
}

fn harness_with(sizes: Vec<u16>) -> Harness {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let device = FakeDevice { state: state.clone(), sizes };
    let msi = Arc::new(RecordingMsiSink::default());
    let sink: Arc<dyn MsiSink> = msi.clone();
    let pci = VirtioPci::new("virtio-blk", Box::new(device), memory(), sink).unwrap();
    Harness { pci, state, msi }
}

fn harness() -> Harness {
    harness_with(vec![256, 64])
}

impl Harness {
    fn read(&mut self, offset: u64, len: usize) -> u64 {
        read_le(len, |d| self.pci.bar_read(0, offset, d))
    }
    fn write(&mut self, offset: u64, len: usize, value: u64) {
        self.pci.bar_write(0, offset, &value.to_le_bytes()[..len]);
    }
    fn config32(&mut self, offset: u16) -> u32 {
        read_le(4, |d| self.pci.config_read(offset, d)) as u32
    }
    fn set_config32(&mut self, offset: u16, value: u32) {
        self.pci.config_write(offset, &value.to_le_bytes());
    }
    fn status(&mut self) -> u8 {
        self.read(DEVICE_STATUS, 1) as u8
    }
    fn set_status(&mut self, status: u8) {
        self.write(DEVICE_STATUS, 1, u64::from(status));
    }

    /// The driver side up to FEATURES_OK.
    fn negotiate(&mut self, features: u64) {
        self.set_status(ACKNOWLEDGE);
        self.set_status(ACKNOWLEDGE | DRIVER);
        self.write(DRIVER_FEATURE_SELECT, 4, 0);
        self.write(DRIVER_FEATURE, 4, features & 0xffff_ffff);
        self.write(DRIVER_FEATURE_SELECT, 4, 1);
        self.write(DRIVER_FEATURE, 4, features >> 32);
        self.set_status(ACKNOWLEDGE | DRIVER | STATUS_FEATURES_OK);
    }

    /// Sets up queue `index` with rings at `base`.
    fn setup_queue(&mut self, index: u16, size: u16, base: u64) {
        self.write(QUEUE_SELECT, 2, u64::from(index));
        self.write(QUEUE_SIZE, 2, u64::from(size));
        // 64-bit fields written as two halves, as Linux does.
        for (field, address) in [(QUEUE_DESC, base), (QUEUE_DRIVER, base + 0x1000)] {
            self.write(field, 4, address & 0xffff_ffff);
            self.write(field + 4, 4, address >> 32);
        }
        self.write(QUEUE_DEVICE, 8, base + 0x2000);
        self.write(QUEUE_ENABLE, 2, 1);
    }

    /// Enables MSI-X (unmasked) and programs vector `vector`.
    fn program_vector(&mut self, vector: u64, address: u64, data: u32) {
        let cap = self.pci.config().find_capability(0x11).unwrap();
        self.pci.config_write(cap + 2, &0x8000u16.to_le_bytes());
        let entry = 0x3000 + vector * 16;
        self.write(entry, 8, address);
        self.write(entry + 8, 4, u64::from(data));
        self.write(entry + 12, 4, 0);
    }

    fn activate(&mut self) {
        self.negotiate(FEATURES);
        self.setup_queue(0, 128, 0x1_0000);
        self.setup_queue(1, 64, 0x2_0000);
        self.set_status(ACKNOWLEDGE | DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }
}

/// The virtio vendor capabilities as (cfg_type, bar, offset, length, cap offset).
fn virtio_caps(h: &mut Harness) -> Vec<(u8, u8, u32, u32, u16)> {
    let caps = h.pci.config().capabilities();
    caps.into_iter()
        .filter(|c| c.id == 0x09)
        .map(|c| {
            let header = h.config32(c.offset);
            let cfg_type = (header >> 24) as u8;
            let bar = h.config32(c.offset + 4) as u8;
            (cfg_type, bar, h.config32(c.offset + 8), h.config32(c.offset + 12), c.offset)
        })
        .collect()
}

#[test]
fn identity_and_bar_sizing() {
    let mut h = harness();
    assert_eq!(h.config32(0), 0x1042_1af4);
    assert_eq!(h.config32(8) & 0xff, 1, "revision 1: non-transitional");
    assert_eq!(h.config32(0x2c), 0x1100_1af4);
    assert_eq!(h.config32(0x3c) >> 8 & 0xff, 0, "no INTx pin");
    assert_ne!(h.config32(COMMAND) >> 16 & u32::from(STATUS_CAPABILITIES_BIT), 0);
    h.set_config32(BAR0, u32::MAX);
    h.set_config32(BAR0 + 4, u32::MAX);
    assert_eq!(h.config32(BAR0), 0xffff_c004, "16 KiB, 64-bit, not prefetchable");
    assert_eq!(h.config32(BAR0 + 4), u32::MAX);
    h.set_config32(BAR0, 0x1000_0000);
    h.set_config32(BAR0 + 4, 0);
    assert!(h.pci.bar_regions().is_empty());
    h.pci.config_write(COMMAND, &[0x06, 0]);
    assert_eq!(h.pci.bar_regions()[0].address, 0x1000_0000);
    assert_eq!(h.pci.bar_regions()[0].size, BAR_SIZE);
}

const STATUS_CAPABILITIES_BIT: u16 = 1 << 4;

#[test]
fn capabilities_describe_the_bar_layout() {
    let mut h = harness();
    let caps = virtio_caps(&mut h);
    let summary: Vec<_> = caps.iter().map(|&(t, bar, off, len, _)| (t, bar, off, len)).collect();
    assert_eq!(
        summary,
        vec![
            (1, 0, 0x0000, 0x38),
            (2, 0, 0x2000, 8),
            (3, 0, 0x0800, 4),
            (4, 0, 0x1000, 0x1000),
            (5, 0, 0, 0),
        ]
    );
    let notify_cap = caps[1].4;
    assert_eq!(h.config32(notify_cap) >> 16 & 0xff, 20, "cap_len");
    assert_eq!(h.config32(notify_cap + 16), NOTIFY_OFF_MULTIPLIER);
    let msix = h.pci.config().find_capability(0x11).unwrap();
    assert_eq!(h.config32(msix) >> 16, 2, "3 vectors: table size - 1");
    assert_eq!(h.config32(msix + 4), 0x3000);
    assert_eq!(h.config32(msix + 8), 0x3800);
    assert!(h.pci.config().extended_capabilities().is_empty());
}

#[test]
fn feature_negotiation_through_select_registers() {
    let mut h = harness();
    assert_eq!(h.read(DEVICE_FEATURE, 4), FEATURES & 0xffff_ffff);
    h.write(DEVICE_FEATURE_SELECT, 4, 1);
    assert_eq!(h.read(DEVICE_FEATURE_SELECT, 4), 1);
    assert_eq!(h.read(DEVICE_FEATURE, 4), FEATURES >> 32);
    h.write(DEVICE_FEATURE_SELECT, 4, 7);
    assert_eq!(h.read(DEVICE_FEATURE, 4), 0);
    // Accept a subset.
    h.negotiate(VERSION_1 | 1 << 5);
    assert_eq!(h.status(), ACKNOWLEDGE | DRIVER | STATUS_FEATURES_OK);
    assert_eq!(h.state.lock().unwrap().acked, Some(VERSION_1 | 1 << 5));
    h.write(DRIVER_FEATURE_SELECT, 4, 0);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 1 << 5);
    // Locked after FEATURES_OK.
    h.write(DRIVER_FEATURE, 4, 0);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 1 << 5);
}

#[test]
fn features_ok_refused_for_unoffered_or_legacy_features() {
    let mut h = harness();
    h.negotiate(VERSION_1 | 1 << 7);
    assert_eq!(h.status() & STATUS_FEATURES_OK, 0);
    assert_eq!(h.state.lock().unwrap().acked, None);
    h.set_status(0);
    h.negotiate(1 << 5);
    assert_eq!(h.status() & STATUS_FEATURES_OK, 0);
}

#[test]
fn queue_registers_and_driver_ok_activate_the_device() {
    let mut h = harness();
    assert_eq!(h.read(NUM_QUEUES, 2), 2);
    h.write(QUEUE_SELECT, 2, 1);
    assert_eq!(h.read(QUEUE_SIZE, 2), 64);
    assert_eq!(h.read(QUEUE_NOTIFY_OFF, 2), 1);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    h.write(QUEUE_SELECT, 2, 9);
    assert_eq!(h.read(QUEUE_SIZE, 2), 0, "no such queue");
    h.activate();
    assert_eq!(h.status() & STATUS_NEEDS_RESET, 0);
    let state = h.state.lock().unwrap();
    assert_eq!(
        state.activations,
        vec![vec![(0, 128, 0x1_0000, 0x1_1000, 0x1_2000), (1, 64, 0x2_0000, 0x2_1000, 0x2_2000),]]
    );
    drop(state);
    h.write(QUEUE_SELECT, 2, 0);
    assert_eq!(h.read(QUEUE_DESC, 8), 0x1_0000);
    assert_eq!(h.read(QUEUE_ENABLE, 2), 1);
    // Queue setup is locked while the device runs.
    h.write(QUEUE_SIZE, 2, 32);
    assert_eq!(h.read(QUEUE_SIZE, 2), 128);
}

#[test]
fn only_enabled_queues_are_handed_over() {
    let mut h = harness();
    h.negotiate(FEATURES);
    h.setup_queue(1, 64, 0x3_0000);
    h.set_status(ACKNOWLEDGE | DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    let state = h.state.lock().unwrap();
    assert_eq!(state.activations, vec![vec![(1, 64, 0x3_0000, 0x3_1000, 0x3_2000)]]);
}

#[test]
fn bad_queue_setup_sets_needs_reset_and_signals_config() {
    let mut h = harness();
    h.program_vector(2, 0x0802_0040, 77);
    h.write(CONFIG_MSIX_VECTOR, 2, 2);
    h.negotiate(FEATURES);
    // Rings outside the 1 MiB of guest RAM.
    h.setup_queue(0, 128, 0x4000_0000);
    let generation = h.read(CONFIG_GENERATION, 1);
    h.set_status(ACKNOWLEDGE | DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert_ne!(h.status() & STATUS_NEEDS_RESET, 0);
    assert!(h.state.lock().unwrap().activations.is_empty());
    assert_eq!(h.msi.sent(), vec![(MsiMessage { address: 0x0802_0040, data: 77 }, 0)]);
    assert_ne!(h.read(CONFIG_GENERATION, 1), generation);
    // A non power-of-two size fails too, as does the device refusing.
    let mut h = harness();
    h.negotiate(FEATURES);
    h.setup_queue(0, 100, 0x1_0000);
    h.set_status(ACKNOWLEDGE | DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    assert_ne!(h.status() & STATUS_NEEDS_RESET, 0);
    let mut h = harness();
    h.state.lock().unwrap().fail_activation = true;
    h.activate();
    assert_ne!(h.status() & STATUS_NEEDS_RESET, 0);
    // DRIVER_OK without FEATURES_OK.
    let mut h = harness();
    h.set_status(ACKNOWLEDGE | DRIVER | STATUS_DRIVER_OK);
    assert_ne!(h.status() & STATUS_NEEDS_RESET, 0);
}

#[test]
fn notify_reaches_the_queue_notifier() {
    let mut h = harness();
    // Before activation a notify goes nowhere.
    h.write(0x2004, 2, 1);
    h.activate();
    let notifiers = h.state.lock().unwrap().notifiers.clone();
    h.write(0x2004, 2, 1);
    h.write(0x2004, 4, 1);
    h.write(0x2000, 2, 0);
    h.write(0x2ff0, 2, 0x3fc);
    assert_eq!(notifiers[0].take(), 1);
    assert_eq!(notifiers[1].take(), 2);
}

#[test]
fn queue_interrupts_send_the_programmed_msi() {
    let mut h = harness();
    h.pci.set_requester_id(0x0100);
    h.program_vector(1, 0x0802_0040, 0x41);
    h.activate();
    h.write(QUEUE_SELECT, 2, 1);
    h.write(QUEUE_MSIX_VECTOR, 2, 1);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 1);
    // A vector that does not exist reads back as NO_VECTOR.
    h.write(QUEUE_SELECT, 2, 0);
    h.write(QUEUE_MSIX_VECTOR, 2, 9);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    let interrupt = h.state.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_queue(1);
    interrupt.signal_queue(0);
    interrupt.signal_queue(40);
    assert_eq!(h.msi.sent(), vec![(MsiMessage { address: 0x0802_0040, data: 0x41 }, 0x0100)]);
    // Masked: pending, delivered on unmask with the entry's current data.
    h.write(0x3000 + 16 + 12, 4, 1);
    interrupt.signal_queue(1);
    assert_eq!(h.msi.sent().len(), 1);
    assert_eq!(h.read(0x3800, 8), 0b10);
    h.write(0x3000 + 16 + 8, 4, 0x42);
    h.write(0x3000 + 16 + 12, 4, 0);
    assert_eq!(h.msi.sent()[1], (MsiMessage { address: 0x0802_0040, data: 0x42 }, 0x0100));
    assert_eq!(h.read(0x3800, 8), 0);
    // The function mask holds it too; clearing it in config space delivers.
    let cap = h.pci.config().find_capability(0x11).unwrap();
    h.pci.config_write(cap + 2, &0xc000u16.to_le_bytes());
    interrupt.signal_queue(1);
    assert_eq!(h.msi.sent().len(), 2);
    h.pci.config_write(cap + 3, &[0x80]);
    assert_eq!(h.msi.sent().len(), 3);
    // ISR was set and reading clears it.
    assert_eq!(h.read(0x0800, 1) & 1, 1);
    assert_eq!(h.read(0x0800, 1), 0);
}

#[test]
fn reset_stops_the_device_and_clears_state() {
    let mut h = harness();
    h.program_vector(0, 0x0802_0040, 1);
    h.write(CONFIG_MSIX_VECTOR, 2, 0);
    h.activate();
    let notifiers = h.state.lock().unwrap().notifiers.clone();
    h.set_status(0);
    assert_eq!(h.state.lock().unwrap().resets, 1);
    assert_eq!(h.status(), 0);
    assert_eq!(h.read(CONFIG_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
    h.write(QUEUE_SELECT, 2, 0);
    assert_eq!(h.read(QUEUE_ENABLE, 2), 0);
    assert_eq!(h.read(QUEUE_SIZE, 2), 256);
    assert_eq!(h.read(QUEUE_DESC, 8), 0);
    h.write(DRIVER_FEATURE_SELECT, 4, 1);
    assert_eq!(h.read(DRIVER_FEATURE, 4), 0);
    // Old notifiers are disconnected; the MSI-X table survives (PCI state).
    h.write(0x2000, 2, 0);
    assert_eq!(notifiers[0].take(), 0);
    assert_eq!(h.read(0x3008, 4), 1);
    // And it can be brought up again.
    h.activate();
    assert_eq!(h.state.lock().unwrap().activations.len(), 2);
}

#[test]
fn device_config_region_reaches_the_device() {
    let mut h = harness();
    assert_eq!(h.read(0x1010, 4), 0x1312_1110);
    h.write(0x1004, 2, 0xbeef);
    assert_eq!(h.state.lock().unwrap().config_writes, vec![(4, vec![0xef, 0xbe])]);
}

#[test]
fn pci_cfg_capability_reaches_bar_registers() {
    let mut h = harness();
    let cap = virtio_caps(&mut h).iter().find(|c| c.0 == 5).unwrap().4;
    // Read num_queues (2 bytes at 0x12).
    h.pci.config_write(cap + 4, &[0]);
    h.set_config32(cap + 8, 0x12);
    h.set_config32(cap + 12, 2);
    assert_eq!(h.config32(cap + 16) & 0xffff, 2);
    // Write queue_select = 1 then read queue_size.
    h.set_config32(cap + 8, 0x16);
    h.set_config32(cap + 16, 1);
    h.set_config32(cap + 8, 0x18);
    assert_eq!(h.config32(cap + 16) & 0xffff, 64);
    // A bad length does nothing.
    h.set_config32(cap + 12, 3);
    h.set_config32(cap + 16, 0);
    assert_eq!(h.read(QUEUE_SELECT, 2), 1);
}

#[test]
fn behind_a_root_port_msis_carry_the_programmed_bus() {
    let mut h = harness();
    h.program_vector(1, 0x0802_0040, 5);
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    let id = root.attach_to_port(port, Box::new(h.pci)).unwrap();
    // secondary = subordinate = 3
    root.ecam_write(1 << 15 | 0x18, &[0, 3, 3, 0]);
    assert_eq!(root.requester_id(id), Some(0x0300));
    let mut data = [0u8; 4];
    root.ecam_read(3 << 20, &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x1042_1af4);
    root.with_function(id, |function| {
        // Set up and activate through the function handle.
        let mut bar = |offset: u64, len: usize, value: u64| {
            function.bar_write(0, offset, &value.to_le_bytes()[..len]);
        };
        bar(DEVICE_STATUS, 1, 3);
        bar(DRIVER_FEATURE_SELECT, 4, 1);
        bar(DRIVER_FEATURE, 4, 1);
        bar(DEVICE_STATUS, 1, 0xb);
        bar(QUEUE_SELECT, 2, 0);
        bar(QUEUE_SIZE, 2, 16);
        bar(QUEUE_DESC, 8, 0x1_0000);
        bar(QUEUE_DRIVER, 8, 0x1_1000);
        bar(QUEUE_DEVICE, 8, 0x1_2000);
        bar(QUEUE_MSIX_VECTOR, 2, 1);
        bar(QUEUE_ENABLE, 2, 1);
        bar(DEVICE_STATUS, 1, 0xf);
    })
    .unwrap();
    let interrupt = h.state.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_queue(0);
    assert_eq!(h.msi.sent(), vec![(MsiMessage { address: 0x0802_0040, data: 5 }, 0x0300)]);
}

#[test]
fn construction_errors_name_the_device() {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let sink: Arc<dyn MsiSink> = Arc::new(RecordingMsiSink::default());
    let device = FakeDevice { state: state.clone(), sizes: vec![256, 100] };
    let err = VirtioPci::new("virtio-x", Box::new(device), memory(), sink.clone()).unwrap_err();
    assert!(err.to_string().contains("virtio-x: queue 1"), "{err}");
    let device = FakeDevice { state, sizes: vec![8; MAX_QUEUES + 1] };
    let err = VirtioPci::new("virtio-y", Box::new(device), memory(), sink).unwrap_err();
    assert!(matches!(err, VirtioPciError::TooManyQueues { .. }), "{err}");
}

#[test]
fn many_queues_share_the_vector_limit() {
    let mut h = harness_with(vec![8; 200]);
    let msix = h.pci.config().find_capability(0x11).unwrap();
    assert_eq!(h.config32(msix) >> 16, u32::from(MAX_VECTORS) - 1);
    assert_eq!(h.read(NUM_QUEUES, 2), 200);
    h.write(QUEUE_SELECT, 2, 199);
    h.write(QUEUE_MSIX_VECTOR, 2, 127);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), 127);
    h.write(QUEUE_MSIX_VECTOR, 2, 128);
    assert_eq!(h.read(QUEUE_MSIX_VECTOR, 2), u64::from(VIRTIO_MSI_NO_VECTOR));
}

/// Every BAR offset and configuration register with every width and random values: no panic,
/// and the identity, capability layout, queue count and device features survive.
#[test]
fn random_accesses_keep_invariants() {
    let mut rng = XorShift::new(0x7a11);
    let mut h = harness();
    h.pci.set_requester_id(0x10);
    let caps = h.pci.config().capabilities();
    for round in 0..3 {
        for offset in 0..BAR_SIZE + 0x10 {
            for len in FUZZ_SIZES {
                // Keep the common cfg mostly sane so activation paths run too.
                let value = if offset == DEVICE_STATUS && rng.below(4) != 0 {
                    vec![[0u8, 1, 3, 0xb, 0xf][rng.below(5) as usize]; len]
                } else {
                    rng.bytes(len)
                };
                h.pci.bar_write(0, offset, &value);
                let mut data = vec![0; len];
                h.pci.bar_read(0, offset, &mut data);
            }
        }
        for offset in 0..0x1004u16 {
            for len in FUZZ_SIZES {
                h.pci.config_write(offset, &rng.bytes(len));
                let mut data = vec![0; len];
                h.pci.config_read(offset, &mut data);
            }
        }
        h.pci.bar_write(3, rng.next(), &[1; 4]);
        let mut data = [0u8; 4];
        h.pci.bar_read(1, rng.next(), &mut data);
        assert_eq!(h.config32(0), 0x1042_1af4, "round {round}");
        assert_eq!(h.config32(COMMAND) >> 16 & 0x10, 0x10);
        assert_eq!(h.pci.config().capabilities(), caps);
        assert_eq!(h.config32(BAR0) & 0x3ff0, 0);
        assert_eq!(h.read(NUM_QUEUES, 2), 2);
        h.write(DEVICE_FEATURE_SELECT, 4, 1);
        assert_eq!(h.read(DEVICE_FEATURE, 4), FEATURES >> 32);
        if let Some(interrupt) = h.state.lock().unwrap().interrupt.clone() {
            interrupt.signal_queue(0);
            interrupt.signal_config();
        }
    }
}

/// The real virtio-rng behind a root port, driven through ECAM and the BAR like a guest
/// driver would: the request is filled and the completion MSI arrives.
#[test]
fn end_to_end_with_virtio_rng() {
    use vm_memory::Bytes;

    let memory = memory();
    let msi = Arc::new(RecordingMsiSink::default());
    let sink: Arc<dyn MsiSink> = msi.clone();
    let source: crate::virtio::rng::EntropySource = Box::new(|buf| {
        buf.fill(0xab);
        Ok(())
    });
    let rng = crate::virtio::Rng::new(source);
    let pci = VirtioPci::new("virtio-rng", Box::new(rng), memory.clone(), sink).unwrap();
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    root.attach_to_port(port, Box::new(pci)).unwrap();
    let ecam = |bus: u64, register: u64| bus << 20 | register;
    let port_ecam = 1 << 15;
    root.ecam_write(port_ecam | 0x18, &[0, 1, 1, 0]);
    root.ecam_write(port_ecam | 0x04, &[0x06, 0]);
    let mut id = [0u8; 4];
    root.ecam_read(ecam(1, 0), &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x1044_1af4);
    // Place BAR 0 at 0x1000_0000 and enable memory + bus mastering.
    root.ecam_write(ecam(1, 0x10), &0x1000_0000u32.to_le_bytes());
    root.ecam_write(ecam(1, 0x14), &0u32.to_le_bytes());
    root.ecam_write(ecam(1, 0x04), &[0x06, 0]);
    // MSI-X on, vector 0 for queue 0.
    let mut header = [0u8; 4];
    root.ecam_read(ecam(1, 0x40), &mut header);
    assert_eq!(header[0], 0x11, "MSI-X is the first capability");
    root.ecam_write(ecam(1, 0x42), &0x8000u16.to_le_bytes());
    let bar = 0x1000_0000u64;
    let w = |offset: u64, value: u64, len: usize| {
        assert!(root.mmio_write(bar + offset, &value.to_le_bytes()[..len]));
    };
    w(0x3000, 0x0802_0040, 8);
    w(0x3008, 0x99, 4);
    w(0x300c, 0, 4);
    w(DEVICE_STATUS, 3, 1);
    w(DRIVER_FEATURE_SELECT, 1, 4);
    w(DRIVER_FEATURE, 1, 4);
    w(DEVICE_STATUS, 0xb, 1);
    w(QUEUE_SELECT, 0, 2);
    w(QUEUE_SIZE, 16, 2);
    w(QUEUE_MSIX_VECTOR, 0, 2);
    w(QUEUE_DESC, 0x1_0000, 8);
    w(QUEUE_DRIVER, 0x1_1000, 8);
    w(QUEUE_DEVICE, 0x1_2000, 8);
    w(QUEUE_ENABLE, 1, 2);
    w(DEVICE_STATUS, 0xf, 1);
    // One device-writable 32-byte buffer at 0x5_0000, made available.
    memory.write_obj(0x5_0000u64, GuestAddress(0x1_0000)).unwrap();
    memory.write_obj(32u32, GuestAddress(0x1_0008)).unwrap();
    memory.write_obj(2u16, GuestAddress(0x1_000c)).unwrap();
    memory.write_obj(0u16, GuestAddress(0x1_1004)).unwrap();
    memory.write_obj(1u16, GuestAddress(0x1_1002)).unwrap();
    w(0x2000, 0, 2);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while msi.sent().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(msi.sent(), vec![(MsiMessage { address: 0x0802_0040, data: 0x99 }, 0x0100)]);
    let used_idx: u16 = memory.read_obj(GuestAddress(0x1_2002)).unwrap();
    assert_eq!(used_idx, 1);
    let used_len: u32 = memory.read_obj(GuestAddress(0x1_2008)).unwrap();
    assert_eq!(used_len, 32);
    let mut filled = [0u8; 32];
    memory.read_slice(&mut filled, GuestAddress(0x5_0000)).unwrap();
    assert_eq!(filled, [0xab; 32]);
    // Reset stops the worker.
    let mut status = [0xffu8];
    root.mmio_write(bar + DEVICE_STATUS, &[0]);
    root.mmio_read(bar + DEVICE_STATUS, &mut status);
    assert_eq!(status, [0]);
}

#[test]
fn queue_doorbells_are_the_events_the_device_waits_on() {
    let mut h = harness();
    let doorbells = h.pci.queue_doorbells();
    assert_eq!(doorbells.len(), 2);
    assert_eq!((doorbells[0].bar, doorbells[0].offset), (0, 0x2000));
    assert_eq!((doorbells[1].bar, doorbells[1].offset), (0, 0x2004));
    h.activate();
    let notifiers = h.state.lock().unwrap().notifiers.clone();
    assert!(Arc::ptr_eq(&notifiers[1], &doorbells[1].event));
    // What KVM does on an ioeventfd match: signal the eventfd, no exit, no transport call.
    doorbells[1].event.eventfd().write(1).unwrap();
    // What the trapped MMIO write (HVF, or no ioeventfd) does: the same doorbell.
    h.write(0x2004, 2, 1);
    assert_eq!(notifiers[1].take(), 2);
    assert_eq!(notifiers[0].take(), 0);
    // A reset keeps the doorbells (a hypervisor registration stays valid).
    h.set_status(0);
    h.activate();
    assert!(Arc::ptr_eq(&h.pci.queue_doorbells()[1].event, &doorbells[1].event));
}

#[test]
fn with_hypervisor_triggers_queue_interrupts_go_through_their_routes() {
    let state = Arc::new(Mutex::new(FakeState::default()));
    let device = FakeDevice { state: state.clone(), sizes: vec![256, 64] };
    let host = Arc::new(crate::pci::testing::TriggerHost::default());
    let sink: Arc<dyn MsiSink> = host.clone();
    let pci = VirtioPci::new("virtio-blk", Box::new(device), memory(), sink).unwrap();
    assert!(pci.has_vector_triggers());
    let msi = Arc::new(RecordingMsiSink::default());
    let mut h = Harness { pci, state, msi };
    h.pci.set_requester_id(0x0100);
    h.program_vector(1, 0x0802_0040, 0x41);
    let routed = (MsiMessage { address: 0x0802_0040, data: 0x41 }, 0x0100);
    assert_eq!(host.log().route_changes, [(1, Some(routed))]);
    h.activate();
    h.write(QUEUE_SELECT, 2, 1);
    h.write(QUEUE_MSIX_VECTOR, 2, 1);
    let interrupt = h.state.lock().unwrap().interrupt.clone().unwrap();
    interrupt.signal_queue(1);
    interrupt.signal_queue(1);
    assert_eq!(host.log().routed, [routed, routed]);
    assert!(host.log().direct.is_empty());
    // A host kernel (vhost-net) gets the irqfd of the queue's vector; a queue without a
    // vector has none.
    assert_eq!(interrupt.queue_irqfd(1), Some(101));
    assert_eq!(interrupt.queue_irqfd(0), None);
    // Masked: the route is dropped, the vector pends in the PBA, the trigger stays quiet.
    h.write(0x3000 + 16 + 12, 4, 1);
    interrupt.signal_queue(1);
    assert_eq!(h.read(0x3800, 8), 0b10);
    assert_eq!(host.log().route_changes.last(), Some(&(1, None)));
    // Unmasked with new data: routed again, the pending message sent once (directly, from
    // the vCPU thread that unmasked it), and later ones through the new route.
    h.write(0x3000 + 16 + 8, 4, 0x42);
    h.write(0x3000 + 16 + 12, 4, 0);
    let rerouted = (MsiMessage { address: 0x0802_0040, data: 0x42 }, 0x0100);
    assert_eq!(host.log().route_changes.last(), Some(&(1, Some(rerouted))));
    assert_eq!(host.log().direct, [rerouted]);
    assert_eq!(h.read(0x3800, 8), 0);
    interrupt.signal_queue(1);
    assert_eq!(host.log().routed, [routed, routed, rerouted]);
    // New bus numbers move the route's device id.
    h.pci.set_requester_id(0x0300);
    interrupt.signal_queue(1);
    assert_eq!(host.log().routed.last(), Some(&(rerouted.0, 0x0300)));
    assert!(host.log().held.is_empty());
}
