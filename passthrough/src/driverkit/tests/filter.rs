//! Configuration writes macOS must keep from the device: the defensive filter of
//! [`DextHostFunction`] alone, and the whole path from the guest through the portable policy.

use std::sync::Arc;

use devices::pci::PciFunction;

use super::fake::{forbidden, MSIX_CAP, MSI_CAP, PCIE_CAP};
use super::open;
use crate::assigned::{AssignedFunction, HostFunction};
use crate::driverkit::{DextHostFunction, DextInterrupts, MsiSink};

#[test]
fn the_filter_knows_every_kept_register() {
    let (device, _fake) = open();
    let host = DextHostFunction::new(device);
    let kept: Vec<(u64, u64, &str)> = host
        .kept_registers()
        .iter()
        .map(|k| (u64::from(k.range.start), u64::from(k.range.end), k.what))
        .collect();
    for (range, what) in forbidden() {
        assert!(
            kept.iter().any(|&(s, e, _)| s <= range.start && range.end <= e),
            "{what} {range:x?} is not kept: {kept:x?}"
        );
    }
}

/// Fails if any write the filter must drop reaches the fake dext.
#[test]
fn filtered_writes_never_reach_the_device_and_command_does() {
    let (device, fake) = open();
    let host = DextHostFunction::new(device);
    let writes: &[(u16, &[u8])] = &[
        (0x06, &[0xff, 0xff]),               // STATUS (write-1-to-clear errors)
        (0x07, &[0xf9]),                     // STATUS high byte
        (0x10, &[0xff; 4]),                  // BAR0 sizing
        (0x14, &[0x00, 0x00, 0x00, 0x10]),   // BAR1
        (0x24, &[0xff, 0xff]),               // BAR5
        (0x30, &[0x01, 0x00, 0xff, 0xff]),   // ROM
        (MSI_CAP as u16 + 2, &[0x01, 0x00]), // MSI enable
        (MSI_CAP as u16 + 4, &[0x40, 0, 0x09, 0x08]), // MSI address
        (MSI_CAP as u16 + 0x10, &[0xff; 4]), // MSI mask bits
        (MSIX_CAP as u16 + 2, &[0x00, 0xc0]), // MSI-X enable + function mask
        (PCIE_CAP as u16 + 8, &[0x00, 0x50]), // DEVCTL: MRRS 4096
        (PCIE_CAP as u16 + 0x28, &[0x1f, 0x00]), // DEVCTL2
        (PCIE_CAP as u16 + 8, &[0x0f, 0x28, 0x00, 0x00]), // DEVCTL + DEVSTA
    ];
    for (offset, data) in writes {
        host.config_write(*offset, data).unwrap();
    }
    // COMMAND and STATUS in one dword: only COMMAND reaches the device.
    host.config_write(0x04, &0xffff_0006_u32.to_le_bytes()).unwrap();
    // Power management control is the device's.
    host.config_write(0x44, &[0x03, 0x00]).unwrap();
    let s = fake.state();
    assert!(s.violations.is_empty(), "kept registers reached the device: {:#?}", s.violations);
    assert_eq!(
        s.config_writes,
        vec![(PCIE_CAP + 0x0a, 2, 0), (0x04, 2, 0x0006), (0x44, 2, 0x0003)],
        "DEVSTA next to DEVCTL, COMMAND next to STATUS, and PM pass"
    );
}

fn no_msis() -> MsiSink {
    Arc::new(|_, _| {})
}

#[test]
fn guest_writes_through_the_policy_reach_only_what_they_may() {
    let (device, fake) = open();
    let host = DextHostFunction::new(device.clone());
    let interrupts = DextInterrupts::new(&device, no_msis());
    let mut f = AssignedFunction::new("dext", Box::new(host), Box::new(interrupts)).unwrap();
    fake.state().config_writes.clear();
    // Every byte, word and dword of the standard header and capabilities, all ones then
    // zeros, the way a fuzzing or confused guest driver would.
    for value in [0xffu8, 0x00] {
        for size in [1usize, 2, 4] {
            for offset in (0..0x100u16).step_by(size) {
                f.config_write(offset, &vec![value; size]);
            }
        }
    }
    let s = fake.state();
    assert!(s.violations.is_empty(), "{:#?}", s.violations);
    // COMMAND's memory, bus-master and INTx-disable bits reached the device.
    assert!(s.config_writes.iter().any(|&(o, w, v)| o == 0x04 && w == 2 && v == 0x0406));
    // Nothing outside COMMAND and the PM and PCIe status/link fields reached it.
    let allowed = |o: u64| {
        (0x04..0x06).contains(&o)
            || (0x42..0x48).contains(&o)
            || (PCIE_CAP + 2..PCIE_CAP + 0x3c).contains(&o)
    };
    let stray: Vec<_> = s.config_writes.iter().filter(|w| !allowed(w.0)).collect();
    assert!(stray.is_empty(), "{stray:x?}");
}

#[test]
fn the_guest_sees_virtual_registers_not_the_devices() {
    let (device, _fake) = open();
    let host = DextHostFunction::new(device.clone());
    let interrupts = DextInterrupts::new(&device, no_msis());
    let mut f = AssignedFunction::new("dext", Box::new(host), Box::new(interrupts)).unwrap();
    let mut devctl = [0u8; 2];
    f.config_write(PCIE_CAP as u16 + 8, &[0x00, 0x50]);
    f.config_read(PCIE_CAP as u16 + 8, &mut devctl);
    assert_eq!(u16::from_le_bytes(devctl), 0x5000, "the guest's own DEVCTL");
    // BAR sizing works on the virtual BAR (64 KiB BAR0).
    f.config_write(0x10, &[0xff; 4]);
    let mut bar = [0u8; 4];
    f.config_read(0x10, &mut bar);
    assert_eq!(u32::from_le_bytes(bar), 0xffff_0000);
    // No ROM on macOS.
    f.config_write(0x30, &[0xff; 4]);
    f.config_read(0x30, &mut bar);
    assert_eq!(u32::from_le_bytes(bar), 0);
}
