//! NVIDIA's configuration mirror in BAR0: trapped, read and written through the virtual
//! configuration space, with the MSI re-arm registers reaching the device.

use devices::pci::{MsiMessage, PciFunction};

use super::fake::{assign, gpu, msi_body, nvme, pcie_body, region, ConfigBuilder, HostCall};
use super::{bar_read32, bar_write32, read16, read32};
use crate::assigned::nvidia::{CONFIG_MIRROR_OFFSET, MSI_REARM_REGISTER};
use crate::assigned::InterruptKind::Msi;
use crate::assigned::{AssignedFunction, ConfigMirror};

const MIRROR: u64 = CONFIG_MIRROR_OFFSET;
/// The MSI capability of [`geforce`].
const MSI_CAP: u16 = 0x68;
/// The PCIe capability of [`geforce`].
const PCIE_CAP: u16 = 0x78;

/// A GeForce-like function: MSI only (one vector, 64-bit), no INTx pin reported, BAR0
/// 16 MiB, BAR1 256 MiB 64-bit prefetchable, a vendor-specific extended capability at 0x600
/// (where the MSI re-arm dword lives) and a hidden Resizable BAR at 0xbb0.
fn geforce() -> ConfigBuilder {
    let mut b = ConfigBuilder::new(0x10de, 0x1f82, 0x030000, 0xa1);
    b.bar(0, 0xfc00_0000, region(16 << 20));
    b.bar(1, 0x0000_000c, region(256 << 20)).u32(0x18, 0x60);
    b.cap(0x60, 0x01, MSI_CAP as u8, &[0x03, 0x06, 0x08, 0x00, 0, 0]);
    b.cap(usize::from(MSI_CAP), 0x05, PCIE_CAP as u8, &msi_body(0x80));
    b.cap(usize::from(PCIE_CAP), 0x10, 0x00, &pcie_body());
    b.ext_cap(0x100, 0x02, 1, 0x600);
    b.ext_cap(0x600, 0x0b, 1, 0xbb0).u32(0x604, 0x024 << 20);
    b.ext_cap(0xbb0, 0x15, 1, 0);
    b
}

fn mirror_read(f: &mut AssignedFunction, offset: u16, len: usize) -> u64 {
    let mut data = vec![0u8; len];
    f.bar_read(0, MIRROR + u64::from(offset), &mut data);
    data.iter().rev().fold(0, |value, &b| value << 8 | u64::from(b))
}

fn mirror_write(f: &mut AssignedFunction, offset: u16, value: u64, len: usize) {
    f.bar_write(0, MIRROR + u64::from(offset), &value.to_le_bytes()[..len]);
}

#[test]
fn only_nvidia_display_functions_have_the_mirror() {
    assert!(assign(&geforce()).0.has_config_mirror());
    assert!(assign(&gpu()).0.has_config_mirror());
    assert!(!assign(&nvme(false)).0.has_config_mirror());
    // NVIDIA's HDMI audio function (class 0x0403) has no mirror.
    let mut audio = ConfigBuilder::new(0x10de, 0x10fa, 0x040300, 0xa1);
    audio.bar(0, 0xfd08_0000, region(16 << 20));
    assert!(!assign(&audio).0.has_config_mirror());
    // A display function whose BAR0 ends before the mirror.
    let mut small = geforce();
    small.bar(0, 0xfc00_0000, region(0x80000));
    assert!(!assign(&small).0.has_config_mirror());
}

#[test]
fn the_mirror_page_is_trapped_at_the_host_page_size() {
    let (f, _, _) = assign(&geforce());
    let end = 16 << 20;
    assert_eq!(f.mappable_bar_ranges(0, 4096), vec![(0, MIRROR), (MIRROR + 0x1000, end - 0x89000)]);
    // A 16 KiB page traps the mirror's neighbours too.
    assert_eq!(f.mappable_bar_ranges(0, 16384), vec![(0, MIRROR), (0x8c000, end - 0x8c000)]);
    assert_eq!(f.mappable_bar_ranges(1, 16384), vec![(0, 256 << 20)]);
}

#[test]
fn mirror_reads_equal_virtual_config_reads() {
    let (mut f, fake, _) = assign(&geforce());
    // Give the guest's view some state: a BAR address, MSI programming, DEVCTL.
    f.config_write(0x10, &0xe000_0000u32.to_le_bytes());
    f.config_write(MSI_CAP + 4, &0x0808_0040u32.to_le_bytes());
    f.config_write(PCIE_CAP + 8, &0x2000u16.to_le_bytes());
    fake.log.lock().unwrap().config[0x06] |= 0x08; // the device's Interrupt Status
    for offset in (0..0x1000u16).step_by(4) {
        assert_eq!(
            mirror_read(&mut f, offset, 4),
            u64::from(read32(&mut f, offset)),
            "{offset:#x}"
        );
    }
    for offset in [0x00, 0x06, 0x3d, MSI_CAP + 2, PCIE_CAP + 8] {
        assert_eq!(mirror_read(&mut f, offset, 2), u64::from(read16(&mut f, offset)));
        let mut byte = [0u8];
        f.config_read(offset, &mut byte);
        assert_eq!(mirror_read(&mut f, offset, 1), u64::from(byte[0]));
    }
    let low = u64::from(read32(&mut f, 0x10));
    let high = u64::from(read32(&mut f, 0x14));
    assert_eq!(mirror_read(&mut f, 0x10, 8), high << 32 | low, "an 8-byte read");
    assert_eq!(low, 0xe000_0000, "the guest's BAR, not the device's");
    // The device's mirror is read too (value dropped), in case reads have effects.
    assert!(fake.log.lock().unwrap().bar_reads.contains(&(0, MIRROR + 0x10, 8)));
}

#[test]
fn mirror_writes_are_virtualized_like_config_writes() {
    let (mut f, fake, _) = assign(&geforce());
    // BAR sizing through the mirror: virtual, as through configuration space.
    mirror_write(&mut f, 0x10, 0xffff_ffff, 4);
    assert_eq!(read32(&mut f, 0x10), 0xff00_0000, "16 MiB BAR0 sized");
    mirror_write(&mut f, 0x10, 0xe000_0000, 4);
    assert_eq!(read32(&mut f, 0x10), 0xe000_0000);
    // DEVCTL (Max Payload / Read Request Size) is virtual.
    mirror_write(&mut f, PCIE_CAP + 8, 0x5000, 2);
    assert_eq!(read16(&mut f, PCIE_CAP + 8), 0x5000);
    // The expansion ROM register and Interrupt Line stay virtual too.
    mirror_write(&mut f, 0x30, 0xffff_ffff, 4);
    mirror_write(&mut f, 0x3c, 0x2a, 1);
    {
        let log = fake.log.lock().unwrap();
        assert!(log.config_writes.is_empty(), "{:?}", log.config_writes);
        assert!(log.bar_writes.is_empty(), "{:?}", log.bar_writes);
        assert_eq!(&log.config[0x10..0x14], &0xfc00_0000u32.to_le_bytes());
        assert_eq!(&log.config[0x80..0x82], &0x2810u16.to_le_bytes());
    }
    // COMMAND's forwarded bits reach the device through configuration space, as a
    // configuration write's would; the mirror itself is never written.
    mirror_write(&mut f, 0x04, 0x0406, 2);
    let log = fake.log.lock().unwrap();
    assert_eq!(log.config_writes, vec![(0x04, vec![0x06, 0x04])]);
    assert!(log.bar_writes.is_empty());
}

#[test]
fn msi_through_the_mirror_drives_the_interrupt_host() {
    let (mut f, _, host) = assign(&geforce());
    mirror_write(&mut f, MSI_CAP + 4, 0x0808_0040, 4);
    mirror_write(&mut f, MSI_CAP + 0x0c, 0x21, 2);
    mirror_write(&mut f, MSI_CAP + 2, 0x0001, 2);
    let message = Some(MsiMessage { address: 0x0808_0040, data: 0x21 });
    assert_eq!(host.take(), vec![HostCall::Count(Msi, 1), HostCall::Vector(Msi, 0, message, 0)]);
}

#[test]
fn msi_acks_reach_the_device() {
    let (mut f, fake, _) = assign(&geforce());
    // The MSI capability id (and next) byte: NVIDIA's MSI acknowledge.
    mirror_write(&mut f, MSI_CAP, 0xff, 1);
    mirror_write(&mut f, MSI_CAP, 0xffff, 2);
    // The re-arm dword current drivers write.
    mirror_write(&mut f, MSI_REARM_REGISTER, 0, 4);
    assert_eq!(
        fake.log.lock().unwrap().bar_writes,
        vec![
            (0, MIRROR + u64::from(MSI_CAP), vec![0xff]),
            (0, MIRROR + u64::from(MSI_CAP), vec![0xff, 0xff]),
            (0, MIRROR + u64::from(MSI_REARM_REGISTER), vec![0; 4]),
        ]
    );
    // A write spilling into Message Control is not an ack: it goes through the virtual
    // capability (which ignores the read-only id byte) and never reaches the device.
    mirror_write(&mut f, MSI_CAP, 0x0001_05ff, 4);
    assert_eq!(fake.log.lock().unwrap().bar_writes.len(), 3);
    assert_eq!(read32(&mut f, u16::from(MSI_CAP as u8)) & 0xff, 0x05);
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
}

#[test]
fn rearm_register_in_a_hidden_capability_stays_virtual() {
    // Resizable BAR (hidden) owns 0x700..: the dword is not forwarded.
    let mut b = geforce();
    b.ext_cap(0x600, 0x0b, 1, 0x700).u32(0x604, 0x024 << 20);
    b.ext_cap(0x700, 0x15, 1, 0);
    let (mut f, fake, _) = assign(&b);
    mirror_write(&mut f, MSI_REARM_REGISTER, 0, 4);
    assert!(fake.log.lock().unwrap().bar_writes.is_empty());
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
}

#[test]
fn accesses_beside_the_mirror_reach_the_device() {
    let (mut f, fake, _) = assign(&geforce());
    // In the same 16 KiB page as the mirror, but past it: the device's registers.
    assert_eq!(bar_read32(&mut f, 0, 0x89000), u32::from_le_bytes([0x00, 0x01, 0x02, 0x03]));
    bar_write32(&mut f, 0, 0x89004, 0x1234);
    bar_write32(&mut f, 0, MIRROR - 4, 0x5678);
    let log = fake.log.lock().unwrap();
    assert_eq!(log.bar_reads, vec![(0, 0x89000, 4)]);
    assert_eq!(
        log.bar_writes,
        vec![
            (0, 0x89004, 0x1234u32.to_le_bytes().to_vec()),
            (0, MIRROR - 4, 0x5678u32.to_le_bytes().to_vec())
        ]
    );
}

#[test]
fn mirror_geometry() {
    assert_eq!(ConfigMirror::range(), 0x88000..0x89000);
    assert_eq!(ConfigMirror::config_offset(0, 0x88ffc, 4), Some(0xffc));
    assert_eq!(ConfigMirror::config_offset(0, 0x88ffc, 8), None, "straddles the end");
    assert_eq!(ConfigMirror::config_offset(1, 0x88000, 4), None, "not BAR0");
    assert_eq!(ConfigMirror::config_offset(0, u64::MAX, 4), None);
}

#[test]
fn the_devices_link_is_reported_for_the_root_port() {
    use devices::pci::root_port::PcieLink;
    // pcie_body: LNKSTA 0x1011, x1 at 2.5 GT/s.
    assert_eq!(assign(&geforce()).0.pcie_link(), PcieLink::new(1, 1));
    let mut b = geforce();
    b.u32(usize::from(PCIE_CAP) + 0x0c, 0x0000_0104).u16(usize::from(PCIE_CAP) + 0x12, 0x1083);
    assert_eq!(assign(&b).0.pcie_link(), PcieLink::new(3, 8), "negotiated x8 Gen3");
    b.u16(usize::from(PCIE_CAP) + 0x12, 0);
    assert_eq!(assign(&b).0.pcie_link(), PcieLink::new(4, 16), "link down: the capability");
    // No PCIe capability: no link.
    let mut plain = ConfigBuilder::new(0x1234, 0x5678, 0x020000, 0);
    plain.bar(0, 0xfe00_0000, region(0x1000));
    assert_eq!(assign(&plain).0.pcie_link(), None);
}
