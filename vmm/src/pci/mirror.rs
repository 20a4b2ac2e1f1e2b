//! Bus 0's configuration space as read-only guest memory (KVM `KVM_MEM_READONLY`): the
//! guest's configuration reads of the host bridge, the root ports and the virtio functions
//! cost no exit. Linux reads configuration space a few hundred times per boot (capability
//! walks of every function, once per capability it looks for), each an exit to the VMM; in
//! a nested or emulated host every exit is expensive. Writes still exit (the slot is
//! read-only) and go to the functions as before; [`devices::pci::PciRoot`] then copies the
//! written function into this memory, as it does after resets and hot-plug changes. Buses
//! behind root ports (passed-through and hot-plugged devices) are not mirrored, and a bus-0
//! function that cannot be copied turns the mirror off for good (its pages unmapped: every
//! read traps again).
//!
//! Only the 32 function-0 pages are filled (all-ones: no function, until a function is
//! copied in); functions 1-7 read zero and are never made resident, which keeps the mirror
//! at 128 KiB of memory instead of 1 MiB and its set-up short. Software finds functions 1-7
//! only through a function 0 whose header type says multi-function (PCI spec; Linux's
//! `pci_scan_slot` stops at an absent or single-function function 0), and every bus-0
//! function here is single-function; a vendor ID of zero also reads as "no function" to
//! Linux.

use std::sync::{Arc, Mutex};

use devices::pci::ConfigMirror;
use log::{debug, error};

use crate::hypervisor::Vm;
use crate::readonly::ReadOnlyRegion;

/// ECAM bytes per function.
const FUNCTION_BYTES: usize = 4096;
/// ECAM bytes of one bus (32 devices of 8 functions).
const BUS_BYTES: usize = 256 * FUNCTION_BYTES;
/// ECAM offset of device `d`, function 0, on bus 0: `d << 15`.
const DEVICE_SHIFT: u32 = 15;

/// What the mirror's lock protects.
struct MirrorState {
    /// Bus 0's memory and slot.
    region: ReadOnlyRegion,
    /// Set by `disable`: no more updates, even where the slot could not be removed.
    off: bool,
    /// What each bus-0 device's function 0 reads now (all-ones when absent), as 32-bit words,
    /// to rewrite only the words that changed.
    copies: Vec<Vec<u32>>,
}

/// The mirror of bus 0 (see the module comment).
pub(super) struct EcamMirror {
    state: Mutex<MirrorState>,
}

impl EcamMirror {
    /// Maps bus 0 of the ECAM at `ecam_base` read-only, every function 0 reading all-ones
    /// (no function) until [`devices::pci::PciRoot::set_config_mirror`] copies the functions
    /// in. `None` where the hypervisor has no read-only memory or the mapping fails (reads
    /// then trap as before).
    pub(super) fn new(vm: &Arc<dyn Vm>, ecam_base: u64) -> Option<Self> {
        let mut region =
            ReadOnlyRegion::new(vm, ecam_base, BUS_BYTES, 0, "PCI configuration mirror")?;
        let mut copies = vec![vec![0; FUNCTION_BYTES / 4]; 32];
        for (device, copy) in copies.iter_mut().enumerate() {
            let all_ones = std::iter::repeat_n(u32::MAX, FUNCTION_BYTES / 4);
            region.store_changed_words(device << DEVICE_SHIFT, copy, all_ones);
        }
        if let Err(e) = region.map() {
            debug!("PCI configuration mirror: not mapped: {e}");
            return None;
        }
        Some(Self { state: Mutex::new(MirrorState { region, off: false, copies }) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MirrorState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl ConfigMirror for EcamMirror {
    fn update(&self, device: u8, image: &[u8]) {
        let state = &mut *self.lock();
        if state.off {
            return;
        }
        let Some(copy) = state.copies.get_mut(usize::from(device)) else { return };
        let words = image
            .chunks_exact(4)
            .map(|bytes| u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
        state.region.store_changed_words(usize::from(device) << DEVICE_SHIFT, copy, words);
    }

    fn disable(&self) {
        let mut state = self.lock();
        if state.off {
            return;
        }
        state.off = true;
        // Off for good even if the slot stays: reads then see the last copy, and the region
        // removes the slot when dropped.
        match state.region.unmap() {
            Ok(()) => debug!("PCI configuration mirror off: bus 0 reads trap again"),
            Err(e) => error!("PCI configuration mirror: could not turn it off: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;
    use crate::hypervisor::slots::MemoryKind;
    use crate::readonly::testing::{guest_reads, SlotVm};

    #[test]
    fn bus_0_is_mapped_read_only_all_ones_then_updated_and_unmapped_when_off() {
        let slots = Arc::new(SlotVm::default());
        let vm: Arc<dyn Vm> = slots.clone();
        let mirror = EcamMirror::new(&vm, 0x3000_0000).unwrap();
        let (guest, size, host, kind) = slots.mapped.lock().unwrap()[0];
        assert_eq!((guest, size, kind), (0x3000_0000, 1 << 20, MemoryKind::ReadOnly));
        // No function yet: all-ones in every function 0; the other functions (never probed
        // behind a single-function function 0) read zero.
        assert_eq!(guest_reads(host, 3 << 15, 4), [0xff; 4]);
        assert_eq!(guest_reads(host, (31 << 15) | 0xffc, 4), [0xff; 4]);
        assert_eq!(guest_reads(host, (3 << 15) | (5 << 12) | 0x100, 4), [0; 4]);
        let mut image = vec![0u8; 4096];
        image[..4].copy_from_slice(&0x1044_1af4u32.to_le_bytes());
        image[0x40] = 0x11;
        mirror.update(3, &image);
        assert_eq!(guest_reads(host, 3 << 15, 4096), image);
        assert_eq!(guest_reads(host, 2 << 15, 4), [0xff; 4], "other devices stay");
        mirror.disable();
        assert_eq!(slots.unmapped.lock().unwrap().len(), 1);
        // Off for good: no more updates, and no second unmap when dropped.
        image[0x40] = 0x05;
        mirror.update(3, &image);
        assert_eq!(guest_reads(host, (3 << 15) | 0x40, 1), [0x11]);
        mirror.disable();
        drop(mirror);
        assert_eq!(slots.unmapped.lock().unwrap().len(), 1);
    }

    #[test]
    fn dropping_a_mirror_removes_its_slot_and_no_read_only_memory_means_no_mirror() {
        let slots = Arc::new(SlotVm::default());
        let vm: Arc<dyn Vm> = slots.clone();
        drop(EcamMirror::new(&vm, 0x3000_0000).unwrap());
        assert_eq!(slots.unmapped.lock().unwrap()[0].guest_addr, 0x3000_0000);
        let fake = crate::hypervisor::fake::FakeHypervisor::default();
        let vm = crate::hypervisor::Hypervisor::create_vm(
            &fake,
            &crate::hypervisor::VmSpec { ipa_bits: 40, tso: false },
        )
        .unwrap();
        assert!(EcamMirror::new(&vm, 0x3000_0000).is_none());
    }

    #[test]
    fn a_mirror_whose_slot_cannot_be_removed_stops_updating_and_removes_it_when_dropped() {
        let slots = Arc::new(SlotVm::default());
        let vm: Arc<dyn Vm> = slots.clone();
        let mirror = EcamMirror::new(&vm, 0x3000_0000).unwrap();
        let host = slots.mapped.lock().unwrap()[0].2;
        slots.refuse_unmap.store(true, Ordering::Relaxed);
        mirror.disable();
        assert!(slots.is_mapped(), "reads go on to the memory");
        // Off all the same: the memory keeps what it held, and no retry.
        mirror.update(1, &[0u8; 4096]);
        assert_eq!(guest_reads(host, 1 << 15, 4), [0xff; 4]);
        slots.refuse_unmap.store(false, Ordering::Relaxed);
        mirror.disable();
        assert!(slots.is_mapped());
        drop(mirror);
        assert!(!slots.is_mapped(), "dropped: the slot goes before the memory");
    }
}
