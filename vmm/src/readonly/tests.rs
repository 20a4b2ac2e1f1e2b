use std::sync::atomic::Ordering;

use super::testing::{guest_reads, SlotVm};
use super::*;

const BASE: u64 = 0x0900_0000;

fn region(slots: &Arc<SlotVm>) -> ReadOnlyRegion {
    let vm: Arc<dyn Vm> = slots.clone();
    ReadOnlyRegion::new(&vm, BASE, 0x1000, 0xa5, "test region").unwrap()
}

/// The host address of the last mapping made.
fn host(slots: &SlotVm) -> usize {
    slots.mapped.lock().unwrap().last().unwrap().2
}

#[test]
fn a_region_maps_read_only_unmaps_and_maps_again_with_its_contents() {
    let slots = Arc::new(SlotVm::default());
    let mut region = region(&slots);
    assert!(!region.is_mapped());
    assert!(slots.mapped.lock().unwrap().is_empty(), "not mapped until asked");
    region.map().unwrap();
    assert!(region.is_mapped() && slots.is_mapped());
    let (guest, size, first_host, kind) = slots.mapped.lock().unwrap()[0];
    assert_eq!((guest, size, kind), (BASE, 0x1000, MemoryKind::ReadOnly));
    assert_eq!(guest_reads(first_host, 0, 8), [0xa5; 8], "filled");
    region.map().unwrap();
    assert_eq!(slots.mapped.lock().unwrap().len(), 1, "mapping twice maps once");
    // Only changed words are stored (and counted in the copy).
    let mut copy = vec![0xa5a5_a5a5u32; 4];
    region.store_changed_words(0x10, &mut copy, [0xa5a5_a5a5, 0x1234_5678, 7]);
    assert_eq!(copy, [0xa5a5_a5a5, 0x1234_5678, 7, 0xa5a5_a5a5]);
    assert_eq!(guest_reads(first_host, 0x14, 8), [0x78, 0x56, 0x34, 0x12, 7, 0, 0, 0]);
    assert_eq!(guest_reads(first_host, 0x1c, 4), [0xa5; 4]);
    region.unmap().unwrap();
    assert!(!region.is_mapped() && !slots.is_mapped());
    assert_eq!(slots.unmapped.lock().unwrap()[0].guest_addr, BASE);
    region.unmap().unwrap();
    assert_eq!(slots.unmapped.lock().unwrap().len(), 1, "unmapping twice unmaps once");
    // Mapped again: the same memory, with what was stored while unmapped.
    region.store_changed_words(0x10, &mut copy[..1], [1]);
    region.map().unwrap();
    assert!(region.is_mapped() && slots.is_mapped());
    assert_eq!(host(&slots), first_host);
    assert_eq!(guest_reads(first_host, 0x10, 8), [1, 0, 0, 0, 0x78, 0x56, 0x34, 0x12]);
}

#[test]
fn dropping_a_region_removes_its_slot_and_only_a_mapped_one() {
    let slots = Arc::new(SlotVm::default());
    let mut mapped = region(&slots);
    mapped.map().unwrap();
    drop(mapped);
    assert!(!slots.is_mapped());
    assert_eq!(slots.unmapped.lock().unwrap().len(), 1);
    let mut unmapped = region(&slots);
    unmapped.map().unwrap();
    unmapped.unmap().unwrap();
    drop(unmapped);
    drop(region(&slots));
    assert_eq!(slots.unmapped.lock().unwrap().len(), 2, "no slot, nothing to remove");
}

#[test]
fn a_failed_unmap_keeps_the_slot_and_the_memory() {
    let slots = Arc::new(SlotVm::default());
    let mut region = region(&slots);
    region.map().unwrap();
    slots.refuse_unmap.store(true, Ordering::Relaxed);
    assert!(region.unmap().is_err());
    assert!(region.is_mapped(), "the slot is kept for a retry");
    // The retry works once the hypervisor lets it.
    slots.refuse_unmap.store(false, Ordering::Relaxed);
    region.unmap().unwrap();
    assert!(!region.is_mapped() && !slots.is_mapped());
    // A slot that cannot be removed on drop keeps its memory allocated: the guest may read
    // it still (freed memory would make this read fault).
    region.map().unwrap();
    let host = host(&slots);
    region.store_changed_words(0, &mut [0], [0x0102_0304]);
    slots.refuse_unmap.store(true, Ordering::Relaxed);
    drop(region);
    assert!(slots.is_mapped());
    assert_eq!(guest_reads(host, 0, 4), [4, 3, 2, 1]);
}

#[test]
fn a_refused_mapping_leaves_the_region_unmapped_and_no_read_only_memory_means_none() {
    let slots = Arc::new(SlotVm::default());
    slots.refuse.store(true, Ordering::Relaxed);
    let mut region = region(&slots);
    assert!(region.map().is_err());
    assert!(!region.is_mapped());
    drop(region);
    assert!(slots.unmapped.lock().unwrap().is_empty());
    let fake = crate::hypervisor::fake::FakeHypervisor::default();
    let spec = crate::hypervisor::VmSpec { ipa_bits: 40, tso: false };
    let vm = crate::hypervisor::Hypervisor::create_vm(&fake, &spec).unwrap();
    assert!(ReadOnlyRegion::new(&vm, BASE, 0x1000, 0, "test region").is_none());
}
