//! Interrupts: SetupInterrupts and the mask, the wait thread turning pending bits into guest
//! MSIs, masked vectors held until unmasked, and the requester id.

use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::pci::{MsiMessage, PciFunction};

use super::fake::{MSIX_CAP, MSIX_TABLE, MSIX_VECTORS};
use super::open;
use crate::assigned::{AssignedFunction, InterruptHost, InterruptKind::Msi, InterruptKind::Msix};
use crate::driverkit::protocol::{MemoryType, Selector, IO_RETURN_NOT_FOUND};
use crate::driverkit::{DextHostFunction, DextInterrupts, MsiSink};

const WAIT: Duration = Duration::from_secs(5);

fn sink() -> (MsiSink, Receiver<(MsiMessage, u16)>) {
    let (tx, rx) = channel();
    let tx = Mutex::new(tx);
    (Arc::new(move |m, rid| tx.lock().unwrap().send((m, rid)).unwrap()), rx)
}

fn msg(data: u32) -> MsiMessage {
    MsiMessage { address: 0x0809_0040, data }
}

fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn pending_bits_become_the_guests_messages() {
    let (device, fake) = open();
    let (sink, rx) = sink();
    let mut irqs = DextInterrupts::new(&device, sink);
    assert_eq!(irqs.host_vectors(), MSIX_VECTORS as u16);
    assert_eq!(fake.state().enabled, [0; 4], "nothing enabled until the guest enables");
    assert!(fake.state().mapped.contains(&MemoryType::InterruptState));
    irqs.set_vector_count(Msix, 4).unwrap();
    assert_eq!(fake.state().enabled, [0xf, 0, 0, 0]);
    for v in 0..4 {
        irqs.set_vector(Msix, v, Some(msg(0x20 + u32::from(v))), 0x0100).unwrap();
    }
    fake.raise(&[2]);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (msg(0x22), 0x0100));
    fake.raise(&[3, 0]);
    let mut got = vec![rx.recv_timeout(WAIT).unwrap(), rx.recv_timeout(WAIT).unwrap()];
    got.sort_by_key(|(m, _)| m.data);
    assert_eq!(got, vec![(msg(0x20), 0x0100), (msg(0x23), 0x0100)]);
    assert_eq!(fake.pending(), [0; 4], "read and cleared");
    // A vector the guest did not enable is not recorded by the dext.
    fake.raise(&[5]);
    assert_eq!(fake.state().dropped_interrupts, vec![5]);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn masked_vectors_are_held_and_delivered_on_unmask() {
    let (device, fake) = open();
    let (sink, rx) = sink();
    let mut irqs = DextInterrupts::new(&device, sink);
    irqs.set_vector_count(Msix, 2).unwrap();
    irqs.set_vector(Msix, 0, Some(msg(0x30)), 0x0100).unwrap();
    // Vector 1 is masked: the dext must still record it, or it would be lost.
    irqs.set_vector(Msix, 1, None, 0x0100).unwrap();
    assert_eq!(fake.state().enabled, [0b11, 0, 0, 0]);
    fake.raise(&[1]);
    until("vector 1 held", || irqs.held_vectors() == [1]);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "nothing while masked");
    // Unmasked with a new requester id: delivered once, at once, as the guest now has it.
    irqs.set_vector(Msix, 1, Some(msg(0x31)), 0x0200).unwrap();
    assert_eq!(rx.try_recv().unwrap(), (msg(0x31), 0x0200));
    assert!(irqs.held_vectors().is_empty());
    irqs.set_vector(Msix, 1, None, 0x0200).unwrap();
    irqs.set_vector(Msix, 1, Some(msg(0x31)), 0x0200).unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err(), "held once, delivered once");
    // Re-enabling starts every vector disconnected, nothing held.
    irqs.set_vector(Msix, 0, None, 0x0200).unwrap();
    fake.raise(&[0]);
    until("vector 0 held", || irqs.held_vectors() == [0]);
    irqs.set_vector_count(Msix, 0).unwrap();
    irqs.set_vector_count(Msi, 1).unwrap();
    assert!(irqs.held_vectors().is_empty());
    irqs.set_vector(Msi, 0, Some(msg(0x40)), 0x0200).unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
}

#[test]
fn off_means_the_dext_drops_and_too_many_vectors_are_capped() {
    let (device, fake) = open();
    let (sink, rx) = sink();
    let mut irqs = DextInterrupts::new(&device, sink);
    assert!(irqs.set_vector(Msix, 0, Some(msg(1)), 0).is_err(), "not enabled");
    // More than the dext set up: what there is, not nothing.
    irqs.set_vector_count(Msix, MSIX_VECTORS as u16 + 1).unwrap();
    assert_eq!(fake.state().enabled, [0xff, 0, 0, 0]);
    irqs.set_vector(Msix, MSIX_VECTORS as u16, Some(msg(2)), 0).unwrap();
    assert!(irqs.set_vector(Msix, MSIX_VECTORS as u16 + 1, Some(msg(2)), 0).is_err());
    irqs.set_vector_count(Msix, 8).unwrap();
    assert_eq!(fake.state().enabled, [0xff, 0, 0, 0]);
    irqs.set_vector_count(Msix, 0).unwrap();
    assert_eq!(fake.state().enabled, [0; 4]);
    fake.raise(&[0]);
    assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
    // Turning off a kind that is not on changes nothing.
    let masks = fake.calls_of(Selector::SetIrqMask).len();
    irqs.set_vector_count(Msi, 0).unwrap();
    assert_eq!(fake.calls_of(Selector::SetIrqMask).len(), masks);
}

#[test]
fn dropping_stops_the_thread_and_masks_everything() {
    let (device, fake) = open();
    let (sink, _rx) = sink();
    let mut irqs = DextInterrupts::new(&device, sink);
    irqs.set_vector_count(Msix, 3).unwrap();
    drop(irqs);
    assert_eq!(fake.state().enabled, [0; 4]);
    assert!(fake.unmapped().contains(&MemoryType::InterruptState));
}

#[test]
fn without_the_page_pending_bits_come_from_check_interrupt() {
    let (device, fake) = open();
    fake.state().map_fails.push(MemoryType::InterruptState.code());
    let (sink, rx) = sink();
    let mut irqs = DextInterrupts::new(&device, sink);
    irqs.set_vector_count(Msix, 1).unwrap();
    irqs.set_vector(Msix, 0, Some(msg(7)), 0x0300).unwrap();
    fake.raise(&[0]);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (msg(7), 0x0300));
    assert!(!fake.calls_of(Selector::CheckInterrupt).is_empty());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn a_device_without_vectors_offers_none() {
    let (device, fake) = open();
    fake.state().fail.insert(Selector::SetupInterrupts, IO_RETURN_NOT_FOUND);
    let (sink, _rx) = sink();
    let mut irqs = DextInterrupts::new(&device, sink);
    assert_eq!(irqs.host_vectors(), 0);
    assert_eq!(irqs.max_vectors(Msix), Some(0));
    irqs.set_vector_count(Msix, 1).unwrap();
    assert!(irqs.set_vector(Msix, 0, Some(msg(1)), 0).is_err(), "nothing to route");
    assert!(fake.calls_of(Selector::SetIrqMask).is_empty());
}

/// The whole path: the guest programs and enables MSI-X in the emulated table, the device
/// fires, the VMM's sink gets the guest's message from the function's requester id.
#[test]
fn guest_msix_programming_reaches_the_sink_with_the_requester_id() {
    let (device, fake) = open();
    let (sink, rx) = sink();
    let host = DextHostFunction::new(device.clone());
    let interrupts = DextInterrupts::new(&device, sink);
    let mut f = AssignedFunction::new("dext", Box::new(host), Box::new(interrupts)).unwrap();
    f.set_requester_id(0x0100);
    let control = MSIX_CAP as u16 + 2;
    f.config_write(control, &0xc000_u16.to_le_bytes());
    let entry = MSIX_TABLE + 16;
    f.bar_write(0, entry, &0x0809_0040_u32.to_le_bytes());
    f.bar_write(0, entry + 4, &0u32.to_le_bytes());
    f.bar_write(0, entry + 8, &0x41_u32.to_le_bytes());
    f.bar_write(0, entry + 12, &0u32.to_le_bytes());
    f.config_write(control, &0x8000_u16.to_le_bytes());
    assert_eq!(fake.state().enabled, [0xff, 0, 0, 0], "all 8 vectors recorded");
    fake.raise(&[1]);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (msg(0x41), 0x0100));
    // The function moved (the guest renumbered buses): the next interrupt says so.
    f.set_requester_id(0x0200);
    fake.raise(&[1]);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (msg(0x41), 0x0200));
    // Masked in the table: held, then delivered on unmask.
    f.bar_write(0, entry + 12, &1u32.to_le_bytes());
    fake.raise(&[1]);
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err());
    f.bar_write(0, entry + 12, &0u32.to_le_bytes());
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (msg(0x41), 0x0200));
    assert!(fake.state().mmio_writes.is_empty(), "the table is emulated, never the device's");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// The dext set up fewer vectors than the MSI-X table has (its 256 cap, or the one-vector MSI
/// fallback of `vfio_user_setup_interrupts`): the guest is offered that many and its enable
/// delivers interrupts instead of losing them all.
#[test]
fn fewer_vectors_than_the_table_are_offered_and_all_of_them_work() {
    let (device, fake) = open();
    fake.state().vectors = 3;
    let (sink, rx) = sink();
    let host = DextHostFunction::new(device.clone());
    let interrupts = DextInterrupts::new(&device, sink);
    let mut f = AssignedFunction::new("dext", Box::new(host), Box::new(interrupts)).unwrap();
    let control = MSIX_CAP as u16 + 2;
    let mut bytes = [0u8; 2];
    f.config_read(control, &mut bytes);
    assert_eq!(u16::from_le_bytes(bytes) & 0x7ff, 2, "table size 3, not the device's 8");
    f.config_write(control, &0xc000_u16.to_le_bytes());
    let entry = MSIX_TABLE + 2 * 16;
    f.bar_write(0, entry, &0x0809_0040_u32.to_le_bytes());
    f.bar_write(0, entry + 4, &0u32.to_le_bytes());
    f.bar_write(0, entry + 8, &0x52_u32.to_le_bytes());
    f.bar_write(0, entry + 12, &0u32.to_le_bytes());
    f.config_write(control, &0x8000_u16.to_le_bytes());
    assert_eq!(fake.state().enabled, [0b111, 0, 0, 0]);
    fake.raise(&[2]);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (msg(0x52), 0));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// A guest that enables more vectors than the dext has (no table-size limit in between) gets
/// the ones there are.
#[test]
fn enabling_more_vectors_than_set_up_enables_those_there_are() {
    let (device, fake) = open();
    fake.state().vectors = 1;
    let (sink, rx) = sink();
    let mut irqs = DextInterrupts::new(&device, sink);
    irqs.set_vector_count(Msi, 4).unwrap();
    assert_eq!(fake.state().enabled, [1, 0, 0, 0]);
    for v in 0..4 {
        irqs.set_vector(Msi, v, Some(msg(0x60 + u32::from(v))), 0x0100).unwrap();
    }
    fake.raise(&[0]);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), (msg(0x60), 0x0100));
}
