//! Guest-initiated resets: FLR through DEVCTL and the root port's secondary bus reset.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use devices::pci::PciFunction;

use super::fake::{assign, nvme, HostCall};
use super::{read16, read32, write16, write32};
use crate::assigned::InterruptKind::Msix;
use crate::assigned::{AssignedFunction, ResetHook};
use crate::host::ResetOutcome;

const MSIX_CONTROL: u16 = 0x42;
const DEVCAP: u16 = 0x84;
const DEVCTL: u16 = 0x88;
const FLR_CAPABLE: u32 = 1 << 28;
const INITIATE_FLR: u16 = 1 << 15;

/// A hook that counts the host resets it runs.
fn counting_hook() -> (ResetHook, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let hook = Box::new(move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        ResetOutcome::Done
    });
    (hook, count)
}

/// The guest placed BAR0, enabled memory decoding and MSI-X, and changed DEVCTL.
fn program(f: &mut AssignedFunction) {
    write32(f, 0x10, 0x1000_0000);
    write16(f, 0x04, 0x0006);
    write16(f, MSIX_CONTROL, 0x8000);
    write16(f, DEVCTL, 0x5030);
    assert!(!f.bar_regions().is_empty());
}

/// The guest's view is back to power-on and MSI-X was disabled on the host.
fn assert_power_on(f: &mut AssignedFunction, calls: &[HostCall]) {
    assert_eq!(read16(f, 0x04), 0);
    assert_eq!(read32(f, 0x10), 0x4);
    assert_eq!(read16(f, MSIX_CONTROL), 64);
    assert_eq!(read16(f, DEVCTL), 0x2810);
    assert!(f.bar_regions().is_empty());
    assert_eq!(calls, [HostCall::Count(Msix, 0)]);
}

#[test]
fn flr_is_offered_only_with_a_host_reset() {
    let (mut f, _, _) = assign(&nvme(false));
    assert_eq!(read32(&mut f, DEVCAP) & FLR_CAPABLE, 0, "no host reset yet");
    assert!(!f.offers_flr());
    f.set_reset_hook(counting_hook().0);
    assert!(f.offers_flr());
    assert_ne!(read32(&mut f, DEVCAP) & FLR_CAPABLE, 0);
    // It survives the guest's own resets.
    f.reset();
    assert_ne!(read32(&mut f, DEVCAP) & FLR_CAPABLE, 0);
}

#[test]
fn guest_flr_resets_the_view_the_interrupts_and_the_device_once() {
    let (mut f, _, host) = assign(&nvme(false));
    let (hook, resets) = counting_hook();
    f.set_reset_hook(hook);
    program(&mut f);
    host.take();
    write16(&mut f, DEVCTL, 0x5030 | INITIATE_FLR);
    assert_eq!(resets.load(Ordering::SeqCst), 1);
    assert_power_on(&mut f, &host.take());
    assert_eq!(read16(&mut f, DEVCTL) & INITIATE_FLR, 0, "Initiate FLR reads 0");
    // A byte write of DEVCTL's high byte starts one too.
    program(&mut f);
    f.config_write(DEVCTL + 1, &[0x80]);
    assert_eq!(resets.load(Ordering::SeqCst), 2);
    // Writes that do not set the bit start none.
    write16(&mut f, DEVCTL, 0x2810);
    write32(&mut f, DEVCTL - 4, 0);
    assert_eq!(resets.load(Ordering::SeqCst), 2);
}

#[test]
fn flr_write_without_flr_capability_does_nothing() {
    let mut device = nvme(false);
    device.u32(0x84, 0x0000_8fc2); // DEVCAP without FLR
    let (mut f, _, host) = assign(&device);
    let (hook, resets) = counting_hook();
    f.set_reset_hook(hook);
    assert!(!f.offers_flr());
    assert_eq!(read32(&mut f, DEVCAP) & FLR_CAPABLE, 0);
    program(&mut f);
    host.take();
    write16(&mut f, DEVCTL, 0x5030 | INITIATE_FLR);
    assert_eq!(resets.load(Ordering::SeqCst), 0);
    assert_eq!(read16(&mut f, 0x04), 0x0006, "the view is untouched");
    assert_eq!(read16(&mut f, MSIX_CONTROL), 0x8040);
    assert!(host.take().is_empty());
}

#[test]
fn bus_reset_resets_the_view_the_interrupts_and_the_device_once() {
    let mut device = nvme(false);
    device.u32(0x84, 0x0000_8fc2); // no FLR: a bus reset is the only way
    let (mut f, _, host) = assign(&device);
    let (hook, resets) = counting_hook();
    f.set_reset_hook(hook);
    f.set_requester_id(0x0100);
    program(&mut f);
    host.take();
    f.bus_reset();
    assert_eq!(resets.load(Ordering::SeqCst), 1);
    assert_power_on(&mut f, &host.take());
    assert_eq!(f.requester_id(), 0x0100, "bus numbers belong to the port");
}

#[test]
fn bus_reset_without_a_hook_still_resets_the_view() {
    let (mut f, _, host) = assign(&nvme(false));
    program(&mut f);
    host.take();
    f.bus_reset();
    assert_power_on(&mut f, &host.take());
}
