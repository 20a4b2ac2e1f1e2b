//! MSI-X emulation: enable, program, mask and unmask produce the host calls.

use devices::pci::{MsiMessage, PciFunction};

use super::fake::{assign, gpu, nvme, HostCall, GPU_PBA, GPU_TABLE};
use super::{bar_read32, bar_write32, read16, write16};
use crate::assigned::InterruptKind::Msix;

const CONTROL: u16 = 0x42;
const TABLE: u64 = 0x2000;

fn program(f: &mut crate::assigned::AssignedFunction, vector: u64, address: u64, data: u32) {
    let entry = TABLE + 16 * vector;
    bar_write32(f, 0, entry, address as u32);
    bar_write32(f, 0, entry + 4, (address >> 32) as u32);
    bar_write32(f, 0, entry + 8, data);
}

#[test]
fn enable_program_mask_unmask_route_vectors() {
    let (mut f, fake, host) = assign(&nvme(false));
    f.set_requester_id(0x0100);
    assert_eq!(read16(&mut f, CONTROL), 64, "table size from the device, disabled");
    // Linux: enable with the function masked, program, unmask the entries, then the function.
    write16(&mut f, CONTROL, 0xc000);
    assert_eq!(read16(&mut f, CONTROL), 0xc040);
    assert_eq!(host.take(), vec![HostCall::Count(Msix, 65)]);
    program(&mut f, 0, 0x0808_0040, 0x20);
    program(&mut f, 3, 0x0808_0040, 0x23);
    bar_write32(&mut f, 0, TABLE + 12, 0);
    bar_write32(&mut f, 0, TABLE + 3 * 16 + 12, 0);
    assert!(host.take().is_empty(), "nothing routes while the function is masked");
    write16(&mut f, CONTROL, 0x8000);
    let m0 = MsiMessage { address: 0x0808_0040, data: 0x20 };
    let m3 = MsiMessage { address: 0x0808_0040, data: 0x23 };
    assert_eq!(
        host.take(),
        vec![
            HostCall::Vector(Msix, 0, Some(m0), 0x100),
            HostCall::Vector(Msix, 3, Some(m3), 0x100)
        ]
    );
    // Masking and unmasking one vector.
    bar_write32(&mut f, 0, TABLE + 12, 1);
    assert_eq!(host.take(), vec![HostCall::Vector(Msix, 0, None, 0x100)]);
    assert_eq!(bar_read32(&mut f, 0, TABLE + 12), 1);
    bar_write32(&mut f, 0, TABLE + 12, 0);
    assert_eq!(host.take(), vec![HostCall::Vector(Msix, 0, Some(m0), 0x100)]);
    // Reprogramming an unmasked vector re-routes it; rewriting the same value does not.
    bar_write32(&mut f, 0, TABLE + 8, 0x30);
    let m0b = MsiMessage { address: 0x0808_0040, data: 0x30 };
    assert_eq!(host.take(), vec![HostCall::Vector(Msix, 0, Some(m0b), 0x100)]);
    bar_write32(&mut f, 0, TABLE + 8, 0x30);
    assert!(host.take().is_empty());
    // The table reads back; table and PBA accesses never reach the device.
    assert_eq!(bar_read32(&mut f, 0, TABLE + 8), 0x30);
    assert_eq!(bar_read32(&mut f, 0, TABLE), 0x0808_0040);
    assert_eq!(bar_read32(&mut f, 0, 0x3000), 0);
    bar_write32(&mut f, 0, 0x3000, u32::MAX);
    {
        let log = fake.log.lock().unwrap();
        assert!(log.bar_writes.is_empty() && log.bar_reads.is_empty());
    }
    // A new requester id re-sends the live routes.
    f.set_requester_id(0x0200);
    assert_eq!(
        host.take(),
        vec![
            HostCall::Vector(Msix, 0, Some(m0b), 0x200),
            HostCall::Vector(Msix, 3, Some(m3), 0x200)
        ]
    );
    // Function mask removes every route; disable tears down.
    write16(&mut f, CONTROL, 0xc000);
    assert_eq!(
        host.take(),
        vec![HostCall::Vector(Msix, 0, None, 0x200), HostCall::Vector(Msix, 3, None, 0x200)]
    );
    write16(&mut f, CONTROL, 0x0000);
    assert_eq!(host.take(), vec![HostCall::Count(Msix, 0)]);
    // Re-enabling restores the programmed, unmasked vectors.
    write16(&mut f, CONTROL, 0x8000);
    assert_eq!(
        host.take(),
        vec![
            HostCall::Count(Msix, 65),
            HostCall::Vector(Msix, 0, Some(m0b), 0x200),
            HostCall::Vector(Msix, 3, Some(m3), 0x200)
        ]
    );
    // The MSI-X capability itself never reaches the device.
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
}

#[test]
fn qword_table_writes_and_entries_past_the_table() {
    let (mut f, fake, host) = assign(&nvme(false));
    write16(&mut f, CONTROL, 0x8000);
    host.take();
    f.bar_write(0, TABLE + 8, &[0x41, 0, 0, 0, 0, 0, 0, 0]); // data + unmask in one qword
    assert_eq!(
        host.take(),
        vec![HostCall::Vector(Msix, 0, Some(MsiMessage { address: 0, data: 0x41 }), 0)]
    );
    // Right after the 65-entry table: the rest of the page is the device's.
    let past = TABLE + 65 * 16;
    bar_write32(&mut f, 0, past, 7);
    assert_eq!(fake.log.lock().unwrap().bar_writes, vec![(0, past, vec![7, 0, 0, 0])]);
    assert!(host.take().is_empty());
}

#[test]
fn writes_without_msix_enabled_do_not_route() {
    let (mut f, _, host) = assign(&nvme(false));
    program(&mut f, 1, 0x1000, 5);
    bar_write32(&mut f, 0, TABLE + 16 + 12, 0);
    assert!(host.take().is_empty());
    write16(&mut f, CONTROL, 0x8000);
    assert_eq!(
        host.take(),
        vec![
            HostCall::Count(Msix, 65),
            HostCall::Vector(Msix, 1, Some(MsiMessage { address: 0x1000, data: 5 }), 0)
        ]
    );
}

#[test]
fn reset_disables_msix_on_the_host() {
    let (mut f, _, host) = assign(&nvme(false));
    write16(&mut f, CONTROL, 0x8000);
    host.take();
    f.reset();
    assert_eq!(host.take(), vec![HostCall::Count(Msix, 0)]);
    assert_eq!(read16(&mut f, CONTROL), 64);
    f.reset();
    assert!(host.take().is_empty());
}

#[test]
fn gpu_msix_in_bar0_and_exclusive_bar() {
    let (mut f, _, host) = assign(&gpu());
    let p = f.msix_placement().unwrap().clone();
    assert_eq!((p.vectors, p.table_bar, p.table.start, p.pba.start), (9, 0, GPU_TABLE, GPU_PBA));
    write16(&mut f, 0xb4 + 2, 0x8000);
    bar_write32(&mut f, 0, GPU_TABLE + 8 * 16 + 12, 0);
    assert_eq!(
        host.take(),
        vec![HostCall::Count(Msix, 9), HostCall::Vector(Msix, 8, Some(MsiMessage::default()), 0)]
    );

    let (mut f, fake, host) = assign(&nvme(true));
    let p = f.msix_placement().unwrap().clone();
    assert_eq!((p.table_bar, p.table.start, p.pba_bar, p.pba.start), (4, 0, 4, 0x800));
    write16(&mut f, CONTROL, 0x8000);
    bar_write32(&mut f, 4, 12, 0);
    assert_eq!(host.take().len(), 2);
    // BAR0 is plain device registers now.
    bar_write32(&mut f, 0, TABLE + 12, 0);
    assert_eq!(fake.log.lock().unwrap().bar_writes, vec![(0, TABLE + 12, vec![0; 4])]);
}

#[test]
fn table_size_is_limited_to_what_the_host_delivers() {
    let fake = nvme(false).build();
    let inner = super::fake::RecordingHost::default();
    let host = super::msi::LimitedHost { inner: inner.clone(), kind: Msix, max: 8 };
    let mut f =
        crate::assigned::AssignedFunction::new("test-dev", Box::new(fake), Box::new(host)).unwrap();
    assert_eq!(read16(&mut f, CONTROL), 7, "table size 8, not the device's 65");
    let placement = f.msix_placement().unwrap();
    assert_eq!((placement.vectors, placement.table.clone()), (8, TABLE..TABLE + 8 * 16));
    write16(&mut f, CONTROL, 0x8000);
    assert_eq!(read16(&mut f, CONTROL), 0x8007);
    assert_eq!(inner.take(), vec![HostCall::Count(Msix, 8)]);
    program(&mut f, 7, 0x0808_0040, 0x27);
    bar_write32(&mut f, 0, TABLE + 7 * 16 + 12, 0);
    let m7 = MsiMessage { address: 0x0808_0040, data: 0x27 };
    assert_eq!(inner.take(), vec![HostCall::Vector(Msix, 7, Some(m7), 0)]);
}
