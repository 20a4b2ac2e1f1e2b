//! MSI emulation: the capability the guest sees, and enable, multiple messages, per-vector
//! masking, exclusivity with MSI-X and reset producing the host calls.

use devices::pci::config::walk_capabilities;
use devices::pci::{MsiMessage, PciFunction};

use super::fake::{
    assign, gpu, msi_and_msix, msi_only, HostCall, MSI_64BIT, MSI_PVM, NIC_PBA, NIC_TABLE,
};
use super::{bar_read32, bar_write32, read16, read32, write16, write32};
use crate::assigned::InterruptKind::{Msi, Msix};
use crate::assigned::{AssignedFunction, MsiCapability};

/// The MSI capability of [`msi_only`] and its registers.
const CAP: u16 = 0x40;
const CONTROL: u16 = CAP + 2;
const ADDRESS: u16 = CAP + 4;
const UPPER_64: u16 = CAP + 8;
const DATA_64: u16 = CAP + 0x0c;
const MASK_64: u16 = CAP + 0x10;
const PENDING_64: u16 = CAP + 0x14;
const DATA_32: u16 = CAP + 0x08;
const MASK_32: u16 = CAP + 0x0c;
const PENDING_32: u16 = CAP + 0x10;

fn std_caps(f: &mut AssignedFunction) -> Vec<(u8, u16)> {
    walk_capabilities(|o| read32(f, o)).into_iter().map(|c| (c.id, c.offset)).collect()
}

fn msg(address: u64, data: u32) -> Option<MsiMessage> {
    Some(MsiMessage { address, data })
}

#[test]
fn capability_bits_come_from_the_device() {
    // (device control, guest control, 64-bit, per-vector mask, log2 vectors, size)
    let cases = [
        (0x0000, 0x0000, false, false, 0, 0x0a),
        (MSI_64BIT, 0x0080, true, false, 0, 0x0e),
        (MSI_64BIT | MSI_PVM | 2 << 1, 0x0184, true, true, 2, 0x18),
        (MSI_PVM | 5 << 1, 0x010a, false, true, 5, 0x14),
        (7 << 1, 0x000a, false, false, 5, 0x0a), // reserved MMC 7 reads as 32 vectors
    ];
    for (device, guest, is_64bit, per_vector_mask, log2_vectors, size) in cases {
        let (mut f, _, host) = assign(&msi_only(device));
        let expected = MsiCapability { offset: CAP, is_64bit, per_vector_mask, log2_vectors };
        assert_eq!(f.msi_capability(), Some(&expected), "{device:#x}");
        assert_eq!(expected.size(), size);
        assert_eq!(std_caps(&mut f), vec![(0x05, CAP), (0x10, 0x60)], "{device:#x}");
        assert_eq!(read16(&mut f, 0x06) & 0x10, 0x10, "capabilities bit");
        // Enable, MME and Extended Message Data are cleared; the rest reads as the device's.
        assert_eq!(read16(&mut f, CONTROL), guest, "{device:#x}");
        // The host's programming of the device never shows.
        for at in (ADDRESS..CAP + size).step_by(2) {
            assert_eq!(read16(&mut f, at), 0, "{device:#x}: register at {at:#x}");
        }
        assert!(f.msix_placement().is_none());
        assert!(f.has_interrupts());
        assert!(host.take().is_empty());
    }
}

#[test]
fn registers_take_the_guests_writes_through_their_masks() {
    let (mut f, fake, host) = assign(&msi_only(MSI_64BIT | MSI_PVM | 2 << 1));
    write32(&mut f, ADDRESS, u32::MAX);
    write32(&mut f, UPPER_64, u32::MAX);
    write32(&mut f, DATA_64, u32::MAX);
    write32(&mut f, MASK_64, u32::MAX);
    write32(&mut f, PENDING_64, u32::MAX);
    assert_eq!(read32(&mut f, ADDRESS), 0xffff_fffc, "address bits 1:0 are reserved");
    assert_eq!(read32(&mut f, UPPER_64), u32::MAX);
    assert_eq!(read32(&mut f, DATA_64), 0xffff, "16-bit data, no extended data");
    assert_eq!(read32(&mut f, MASK_64), 0xf, "one bit per implemented vector");
    assert_eq!(read32(&mut f, PENDING_64), 0, "nothing is ever pending");
    // Only Enable and MME are writable; MME beyond MMC is clamped.
    write16(&mut f, CONTROL, 0xfffe);
    assert_eq!(read16(&mut f, CONTROL), 0x01a4);
    // The header is read-only.
    f.config_write(CAP, &[0xff, 0xff]);
    assert_eq!(read16(&mut f, CAP), 0x6005);
    assert!(host.take().is_empty(), "MSI is disabled");
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
}

#[test]
fn one_vector() {
    let (mut f, fake, host) = assign(&msi_only(MSI_64BIT));
    f.set_requester_id(0x0100);
    write32(&mut f, ADDRESS, 0x0808_0040);
    write32(&mut f, UPPER_64, 0);
    write16(&mut f, DATA_64, 0x21);
    assert!(host.take().is_empty(), "nothing routes while MSI is disabled");
    write16(&mut f, CONTROL, 0x0001);
    assert_eq!(read16(&mut f, CONTROL), 0x0081);
    let m = msg(0x0808_0040, 0x21);
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 1), HostCall::Vector(Msi, 0, m, 0x100)]);
    // Reprogramming re-routes; rewriting the same value does not.
    write16(&mut f, DATA_64, 0x22);
    assert_eq!(host.take(), vec![HostCall::Vector(Msi, 0, msg(0x0808_0040, 0x22), 0x100)]);
    write16(&mut f, DATA_64, 0x22);
    assert!(host.take().is_empty());
    write32(&mut f, UPPER_64, 0x1);
    assert_eq!(host.take(), vec![HostCall::Vector(Msi, 0, msg(0x1_0808_0040, 0x22), 0x100)]);
    // A new requester id re-sends the live route.
    f.set_requester_id(0x0200);
    assert_eq!(host.take(), vec![HostCall::Vector(Msi, 0, msg(0x1_0808_0040, 0x22), 0x200)]);
    // Disabling tears down; re-enabling restores.
    write16(&mut f, CONTROL, 0x0000);
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 0)]);
    f.config_write(CONTROL, &[0x01]); // a byte write enables too
    assert_eq!(
        host.take(),
        vec![HostCall::Count(Msi, 1), HostCall::Vector(Msi, 0, msg(0x1_0808_0040, 0x22), 0x200)]
    );
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
}

#[test]
fn four_vectors_with_per_vector_masking() {
    let (mut f, fake, host) = assign(&msi_only(MSI_64BIT | MSI_PVM | 2 << 1));
    f.set_requester_id(0x0100);
    // Linux: mask every vector, program the message, set MME, enable, then unmask each.
    write32(&mut f, MASK_64, 0xf);
    write32(&mut f, ADDRESS, 0x0808_0040);
    write32(&mut f, UPPER_64, 0x1);
    write16(&mut f, DATA_64, 0x40);
    write16(&mut f, CONTROL, 0x0020);
    assert!(host.take().is_empty());
    write16(&mut f, CONTROL, 0x0021);
    assert_eq!(read16(&mut f, CONTROL), 0x01a5);
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 4)], "every vector masked");
    let address = 0x1_0808_0040;
    write32(&mut f, MASK_64, 0xe);
    assert_eq!(host.take(), vec![HostCall::Vector(Msi, 0, msg(address, 0x40), 0x100)]);
    write32(&mut f, MASK_64, 0);
    assert_eq!(
        host.take(),
        (1..4)
            .map(|i| HostCall::Vector(Msi, i, msg(address, 0x40 | u32::from(i)), 0x100))
            .collect::<Vec<_>>(),
        "vector i delivers data | i"
    );
    // Masking disconnects a vector; unmasking reconnects it.
    write32(&mut f, MASK_64, 0x4);
    assert_eq!(host.take(), vec![HostCall::Vector(Msi, 2, None, 0x100)]);
    assert_eq!(read32(&mut f, PENDING_64), 0);
    write32(&mut f, MASK_64, 0);
    assert_eq!(host.take(), vec![HostCall::Vector(Msi, 2, msg(address, 0x42), 0x100)]);
    // The function owns the data's low bits: the guest's are replaced by the vector number.
    write16(&mut f, DATA_64, 0x83);
    assert_eq!(
        host.take(),
        (0..4)
            .map(|i| HostCall::Vector(Msi, i, msg(address, 0x80 | u32::from(i)), 0x100))
            .collect::<Vec<_>>()
    );
    // A new MME while enabled: the host gets the new block and its routes.
    write16(&mut f, CONTROL, 0x0011);
    assert_eq!(
        host.take(),
        vec![
            HostCall::Count(Msi, 2),
            HostCall::Vector(Msi, 0, msg(address, 0x82), 0x100),
            HostCall::Vector(Msi, 1, msg(address, 0x83), 0x100),
        ]
    );
    // MME above MMC is clamped: 4 vectors, not 32.
    write16(&mut f, CONTROL, 0x0051);
    assert_eq!(read16(&mut f, CONTROL), 0x01a5);
    assert_eq!(host.take().first(), Some(&HostCall::Count(Msi, 4)));
    write16(&mut f, CONTROL, 0x0020);
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 0)]);
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
}

#[test]
fn thirty_two_vectors_with_a_32_bit_address() {
    let (mut f, _, host) = assign(&msi_only(MSI_PVM | 5 << 1));
    write32(&mut f, ADDRESS, 0x0808_0040);
    write16(&mut f, DATA_32, 0x1000);
    write16(&mut f, CONTROL, 0x0051);
    let mut expected = vec![HostCall::Count(Msi, 32)];
    expected.extend(
        (0..32).map(|i| HostCall::Vector(Msi, i, msg(0x0808_0040, 0x1000 | u32::from(i)), 0)),
    );
    assert_eq!(host.take(), expected);
    write32(&mut f, MASK_32, u32::MAX);
    assert_eq!(read32(&mut f, MASK_32), u32::MAX);
    assert_eq!(host.take(), (0..32).map(|i| HostCall::Vector(Msi, i, None, 0)).collect::<Vec<_>>());
    write32(&mut f, PENDING_32, u32::MAX);
    assert_eq!(read32(&mut f, PENDING_32), 0);
}

#[test]
fn config_writes_to_the_capability_never_reach_the_device() {
    for control in [0, MSI_64BIT | MSI_PVM | 5 << 1, MSI_PVM | 3 << 1] {
        let (mut f, fake, host) = assign(&msi_only(control));
        let before = fake.log.lock().unwrap().config.clone();
        for offset in CAP..0x60 {
            for len in [1, 2, 4] {
                if offset % len == 0 {
                    f.config_write(offset, &vec![0xff; usize::from(len)]);
                    f.config_write(offset, &vec![0x00; usize::from(len)]);
                }
            }
        }
        let log = fake.log.lock().unwrap();
        assert!(log.config_writes.is_empty(), "{control:#x}: {:?}", log.config_writes);
        assert_eq!(log.config, before);
        drop(log);
        // The writes enabled and disabled MSI along the way.
        let calls = host.take();
        assert!(
            calls.iter().any(|c| matches!(c, HostCall::Count(Msi, n) if *n > 0)),
            "{control:#x}"
        );
        assert_eq!(host.enabled(Msi), 0);
    }
}

#[test]
fn reset_disables_msi_on_the_host() {
    let (mut f, _, host) = assign(&msi_only(MSI_64BIT | MSI_PVM | 2 << 1));
    write32(&mut f, ADDRESS, 0x0808_0040);
    write32(&mut f, MASK_64, 0x2);
    write16(&mut f, CONTROL, 0x0021);
    assert_eq!(host.take().len(), 4, "count and three unmasked vectors");
    f.reset();
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 0)]);
    assert_eq!(read16(&mut f, CONTROL), 0x0184);
    assert_eq!(read32(&mut f, ADDRESS), 0);
    assert_eq!(read32(&mut f, MASK_64), 0);
    f.reset();
    assert!(host.take().is_empty());
    // After a reset, enabling starts from the power-on registers.
    write16(&mut f, CONTROL, 0x0001);
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 1), HostCall::Vector(Msi, 0, msg(0, 0), 0)]);
}

#[test]
fn msi_and_msix_are_both_offered_and_never_enabled_together() {
    const MSI_CONTROL: u16 = 0x52;
    const MSIX_CONTROL: u16 = 0x72;
    let (mut f, fake, host) = assign(&msi_and_msix());
    assert_eq!(std_caps(&mut f), vec![(0x01, 0x40), (0x05, 0x50), (0x11, 0x70), (0x10, 0xa0)]);
    assert_eq!(read16(&mut f, MSI_CONTROL), 0x0186);
    assert_eq!(read16(&mut f, MSIX_CONTROL), 9);
    let p = f.msix_placement().unwrap().clone();
    assert_eq!((p.vectors, p.table_bar, p.table.start, p.pba.start), (10, 3, NIC_TABLE, NIC_PBA));
    assert_eq!(f.msi_capability().map(|m| m.vectors()), Some(8));

    // MSI first: an MSI-X enable is refused until MSI is off.
    write32(&mut f, 0x54, 0x0808_0040);
    write16(&mut f, MSI_CONTROL, 0x0001);
    assert_eq!(
        host.take(),
        vec![HostCall::Count(Msi, 1), HostCall::Vector(Msi, 0, msg(0x0808_0040, 0), 0)]
    );
    write16(&mut f, MSIX_CONTROL, 0x8000);
    assert_eq!(read16(&mut f, MSIX_CONTROL), 9, "MSI-X enable refused");
    bar_write32(&mut f, 3, NIC_TABLE + 12, 0);
    assert!(host.take().is_empty());
    write16(&mut f, MSI_CONTROL, 0x0000);
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 0)]);

    // Then MSI-X: an MSI enable is refused until MSI-X is off.
    write16(&mut f, MSIX_CONTROL, 0x8000);
    assert_eq!(read16(&mut f, MSIX_CONTROL), 0x8009);
    assert_eq!(
        host.take(),
        vec![HostCall::Count(Msix, 10), HostCall::Vector(Msix, 0, msg(0, 0), 0)]
    );
    write16(&mut f, MSI_CONTROL, 0x0031);
    assert_eq!(read16(&mut f, MSI_CONTROL), 0x01b6, "MSI enable refused, MME kept");
    write32(&mut f, 0x60, 0); // MSI mask bits
    assert!(host.take().is_empty());
    assert_eq!(bar_read32(&mut f, 3, NIC_TABLE + 12), 0);
    // MSI-X off, then MSI on with 8 vectors.
    write16(&mut f, MSIX_CONTROL, 0x0000);
    assert_eq!(host.take(), vec![HostCall::Count(Msix, 0)]);
    write16(&mut f, MSI_CONTROL, 0x0031);
    let calls = host.take();
    assert_eq!(calls.first(), Some(&HostCall::Count(Msi, 8)));
    assert_eq!(calls.len(), 9);
    // Reset turns off whichever is on.
    f.reset();
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 0)]);
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
}

#[test]
fn gpu_msi() {
    let (mut f, _, host) = assign(&gpu());
    assert_eq!(read16(&mut f, 0x6a), 0x0080, "64-bit, one vector, not maskable");
    write32(&mut f, 0x6c, 0x0808_0040);
    write16(&mut f, 0x74, 0x7);
    write16(&mut f, 0x6a, 0x0001);
    assert_eq!(
        host.take(),
        vec![HostCall::Count(Msi, 1), HostCall::Vector(Msi, 0, msg(0x0808_0040, 7), 0)]
    );
    // The capability after MSI is untouched by MSI's registers.
    assert_eq!(read32(&mut f, 0x78) & 0xff, 0x10);
}

/// A host that delivers at most `max` vectors of `kind` (DriverKit's one-vector MSI fallback,
/// or fewer MSI-X vectors than the table has).
#[derive(Debug)]
pub(super) struct LimitedHost {
    pub(super) inner: super::fake::RecordingHost,
    pub(super) kind: crate::assigned::InterruptKind,
    pub(super) max: u16,
}

impl crate::assigned::InterruptHost for LimitedHost {
    fn max_vectors(&self, kind: crate::assigned::InterruptKind) -> Option<u16> {
        (kind == self.kind).then_some(self.max)
    }

    fn set_vector_count(
        &mut self,
        kind: crate::assigned::InterruptKind,
        vectors: u16,
    ) -> std::io::Result<()> {
        assert!(kind != self.kind || vectors <= self.max, "{vectors} {kind} vectors asked");
        self.inner.set_vector_count(kind, vectors)
    }

    fn route_vector(&mut self, route: crate::assigned::VectorRoute) -> std::io::Result<()> {
        self.inner.route_vector(route)
    }
}

#[test]
fn multiple_messages_are_limited_to_what_the_host_delivers() {
    for (max, offered) in [(1, 1), (3, 2), (8, 8), (64, 8)] {
        let fake = msi_only(MSI_64BIT | MSI_PVM | 3 << 1).build();
        let inner = super::fake::RecordingHost::default();
        let host = LimitedHost { inner: inner.clone(), kind: Msi, max };
        let mut f = AssignedFunction::new("test-dev", Box::new(fake), Box::new(host)).unwrap();
        assert_eq!(f.msi_capability().map(|m| m.vectors()), Some(offered), "host max {max}");
        let log2 = offered.trailing_zeros() as u16;
        assert_eq!(read16(&mut f, CONTROL), 0x0180 | log2 << 1);
        assert_eq!(std_caps(&mut f), vec![(0x05, CAP), (0x10, 0x60)], "still linked");
        // The guest asks for 8: it gets what the host delivers, end to end.
        write32(&mut f, ADDRESS, 0x0808_0040);
        write16(&mut f, DATA_64, 0x20);
        write16(&mut f, CONTROL, 3 << 4 | 1);
        assert_eq!(read16(&mut f, CONTROL) >> 4 & 7, log2);
        assert_eq!(inner.enabled(Msi), offered);
        let routed = inner
            .take()
            .iter()
            .filter(|c| matches!(c, HostCall::Vector(Msi, _, Some(_), _)))
            .count();
        assert_eq!(routed, usize::from(offered));
    }
}
