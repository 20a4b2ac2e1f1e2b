//! Configuration space virtualization: identity, BAR sizing, the write policy and the
//! capability lists.

use devices::pci::config::{walk_capabilities, walk_extended_capabilities};
use devices::pci::PciFunction;

use super::fake::{assign, gpu, nvme, ConfigBuilder};
use super::{read16, read32, write16, write32};
use crate::assigned::policy::aligned_chunks;
use crate::assigned::{AssignError, AssignedFunction, ROM_BAR_INDEX};

fn std_caps(f: &mut AssignedFunction) -> Vec<(u8, u16)> {
    walk_capabilities(|o| read32(f, o)).into_iter().map(|c| (c.id, c.offset)).collect()
}

fn ext_caps(f: &mut AssignedFunction) -> Vec<(u16, u16)> {
    walk_extended_capabilities(|o| read32(f, o)).into_iter().map(|c| (c.id, c.offset)).collect()
}

#[test]
fn header_identity_comes_from_the_device() {
    let (mut f, _, _) = assign(&nvme(false));
    assert_eq!(read32(&mut f, 0x00), 0x0010_1b36);
    assert_eq!(read32(&mut f, 0x08), 0x0108_0202);
    assert_eq!(read32(&mut f, 0x2c), 0x1100_1af4);
    assert_eq!(f.name(), "test-dev");
    // No INTx (the fake host cannot deliver it), single function.
    assert_eq!(read32(&mut f, 0x3c) >> 8 & 0xff, 0);
    assert_eq!(read32(&mut f, 0x0c) >> 16 & 0xff, 0);
}

#[test]
fn bar_sizing_matches_host_regions_and_keeps_prefetchable() {
    let (mut f, _, _) = assign(&gpu());
    for offset in (0x10..0x28).step_by(4) {
        write32(&mut f, offset, u32::MAX);
    }
    write32(&mut f, 0x30, u32::MAX);
    assert_eq!(read32(&mut f, 0x10), 0xff00_0000, "BAR0 16 MiB 32-bit");
    assert_eq!(read32(&mut f, 0x14), 0xf000_000c, "BAR1 256 MiB 64-bit prefetchable");
    assert_eq!(read32(&mut f, 0x18), u32::MAX);
    assert_eq!(read32(&mut f, 0x1c), 0xfe00_000c, "BAR3 32 MiB 64-bit prefetchable");
    assert_eq!(read32(&mut f, 0x20), u32::MAX);
    assert_eq!(read32(&mut f, 0x24), 0, "the I/O BAR is not offered");
    assert_eq!(read32(&mut f, 0x30), 0xfff8_0001, "512 KiB ROM");

    let (mut f, _, _) = assign(&nvme(false));
    write32(&mut f, 0x10, u32::MAX);
    write32(&mut f, 0x14, u32::MAX);
    assert_eq!(read32(&mut f, 0x10), 0xffff_c004);
    assert_eq!(read32(&mut f, 0x14), u32::MAX);
    assert_eq!(read32(&mut f, 0x30), 0, "no ROM");
}

#[test]
fn guest_bar_and_rom_writes_never_reach_the_device() {
    let (mut f, fake, _) = assign(&gpu());
    for offset in (0x10..0x28).step_by(4) {
        write32(&mut f, offset, u32::MAX);
        write32(&mut f, offset, 0x4000_0000);
    }
    write32(&mut f, 0x30, 0x8000_0001);
    f.config_write(0x12, &[0x12, 0x34]);
    assert!(fake.log.lock().unwrap().config_writes.is_empty());
    assert_eq!(read32(&mut f, 0x14), 0x4000_000c);
}

#[test]
fn bar_regions_follow_the_guest_and_include_the_rom() {
    let (mut f, _, _) = assign(&gpu());
    write32(&mut f, 0x10, 0x4000_0000);
    write32(&mut f, 0x14, 0x0000_000c);
    write32(&mut f, 0x18, 0x80);
    write32(&mut f, 0x30, 0x4100_0001);
    assert!(f.bar_regions().is_empty(), "memory decoding is off");
    write16(&mut f, 0x04, 0x0002);
    let regions = f.bar_regions();
    let bar1 = regions.iter().find(|r| r.index == 1).unwrap();
    assert_eq!(
        (bar1.address, bar1.size, bar1.prefetchable, bar1.is_64bit),
        (0x80_0000_0000, 256 << 20, true, true)
    );
    let rom = regions.iter().find(|r| r.index == ROM_BAR_INDEX).unwrap();
    assert_eq!((rom.address, rom.size), (0x4100_0000, 512 << 10));
    let mut sig = [0u8; 2];
    f.bar_read(ROM_BAR_INDEX, 0, &mut sig);
    assert_eq!(sig, [0x55, 0xaa]);
    let mut past = [0u8; 4];
    f.bar_read(ROM_BAR_INDEX, 512 << 10, &mut past);
    assert_eq!(past, [0xff; 4]);
    // ROM disabled: not decoded.
    write32(&mut f, 0x30, 0x4100_0000);
    assert!(f.bar_regions().iter().all(|r| r.index != ROM_BAR_INDEX));
}

#[test]
fn command_bits_reach_the_device_and_status_writes_do_not() {
    let (mut f, fake, _) = assign(&nvme(false));
    fake.log.lock().unwrap().config[0x07] = 0x20; // the device has an error bit set
                                                  // A dword write covering COMMAND and STATUS: only COMMAND's forwarded bits go out.
    write32(&mut f, 0x04, 0xffff_0147);
    {
        let log = fake.log.lock().unwrap();
        assert_eq!(log.config_writes, vec![(0x04, vec![0x06, 0x00])]);
        assert_eq!(log.config[0x07], 0x20, "STATUS error bit not cleared");
    }
    // The guest sees the virtual command (parity/SERR kept, I/O not offered).
    assert_eq!(read16(&mut f, 0x04), 0x0146);
    // Status is the device's, with the capabilities bit of the virtual list.
    assert_eq!(read16(&mut f, 0x06), 0x2010);
    write16(&mut f, 0x06, 0xffff);
    assert_eq!(fake.log.lock().unwrap().config_writes.len(), 1);
    // Disabling bus mastering reaches the device too, preserving its other bits.
    fake.log.lock().unwrap().config[0x05] = 0x01;
    write16(&mut f, 0x04, 0x0002);
    assert_eq!(fake.log.lock().unwrap().config_writes[1], (0x04, vec![0x02, 0x01]));
}

#[test]
fn devctl_and_devctl2_stay_virtual_link_control_passes_through() {
    let (mut f, fake, _) = assign(&nvme(false));
    let pcie = 0x80;
    assert_eq!(read32(&mut f, pcie + 4) & 1 << 28, 0, "FLR hidden");
    assert_eq!(read16(&mut f, pcie + 8), 0x2810);
    write16(&mut f, pcie + 8, 0x5030); // MRRS 4096, MPS 256
    assert_eq!(read16(&mut f, pcie + 8), 0x5030, "the guest sees its write");
    write16(&mut f, pcie + 0x28, 0x0400);
    assert_eq!(read16(&mut f, pcie + 0x28), 0x0400);
    {
        let log = fake.log.lock().unwrap();
        assert!(log.config_writes.is_empty(), "{:?}", log.config_writes);
        assert_eq!(log.config[0x88..0x8a], [0x10, 0x28]);
    }
    // A dword write over DEVCTL and DEVSTA: only DEVSTA (W1C) reaches the device.
    write32(&mut f, pcie + 8, 0x000f_5030);
    assert_eq!(fake.log.lock().unwrap().config_writes, vec![(0x8a, vec![0x0f, 0x00])]);
    // Link control passes through both ways.
    write16(&mut f, pcie + 0x10, 0x0043);
    assert_eq!(fake.log.lock().unwrap().config[0x90..0x92], [0x43, 0x00]);
    fake.log.lock().unwrap().config[0x92] = 0x22; // link status changes on the device
    assert_eq!(read16(&mut f, pcie + 0x12), 0x1022);
}

#[test]
fn power_management_passes_through() {
    let (mut f, fake, _) = assign(&nvme(false));
    write16(&mut f, 0x64, 0x0003);
    assert_eq!(fake.log.lock().unwrap().config_writes, vec![(0x64, vec![0x03, 0x00])]);
    assert_eq!(read16(&mut f, 0x64), 0x0003);
}

#[test]
fn gpu_keeps_msi_and_msix_and_hides_rebar_sriov_ari_and_l1ss() {
    let (mut f, _, _) = assign(&gpu());
    assert_eq!(
        std_caps(&mut f),
        vec![(0x01, 0x60), (0x05, 0x68), (0x10, 0x78), (0x11, 0xb4), (0x09, 0xc0)]
    );
    let ext = ext_caps(&mut f);
    assert_eq!(ext, vec![(0x00, 0x100), (0x01, 0x180), (0x03, 0x210)]);
    for hidden in [0x15, 0x10, 0x0e, 0x1e] {
        assert!(ext.iter().all(|&(id, _)| id != hidden), "{hidden:#x} visible");
    }
    // The null head has version 0 and the kept ones keep their version and bodies.
    assert_eq!(read32(&mut f, 0x100), 0x180 << 20);
    assert_eq!(read32(&mut f, 0x180), 0x0001 | 2 << 16 | 0x210 << 20);
    assert_eq!(read32(&mut f, 0x210), 0x0003 | 1 << 16);
    assert_eq!(read32(&mut f, 0x214), u32::from_le_bytes([0x07, 0x06, 0x05, 0x04]));
    // Hidden bodies read 0.
    assert_eq!(read32(&mut f, 0x144), 0);
    let layout = f.capability_layout();
    assert!(layout.hidden.is_empty());
    assert_eq!((layout.msix, layout.msi.map(|m| m.offset)), (Some(0xb4), Some(0x68)));
    assert_eq!(layout.hidden_extended.len(), 4);
}

#[test]
fn nvme_keeps_all_its_capabilities() {
    let (mut f, _, _) = assign(&nvme(false));
    assert_eq!(std_caps(&mut f), vec![(0x11, 0x40), (0x01, 0x60), (0x10, 0x80)]);
    assert!(ext_caps(&mut f).is_empty());
}

#[test]
fn kept_extended_capability_at_the_head_stays_in_place() {
    let mut b = nvme(false);
    b.ext_cap(0x100, 0x01, 2, 0x148).ext_cap(0x148, 0x10, 1, 0x188).ext_cap(0x188, 0x0b, 1, 0);
    b.u32(0x18c, 0x0180_0001); // VSEC length 0x18
    let (mut f, _, _) = assign(&b);
    assert_eq!(ext_caps(&mut f), vec![(0x01, 0x100), (0x0b, 0x188)]);
}

#[test]
fn all_extended_capabilities_hidden_leaves_an_empty_list() {
    let mut b = nvme(false);
    b.ext_cap(0x100, 0x15, 1, 0x140).ext_cap(0x140, 0x10, 1, 0);
    let (mut f, _, _) = assign(&b);
    assert_eq!(read32(&mut f, 0x100), 0);
    assert!(ext_caps(&mut f).is_empty());
}

#[test]
fn device_without_capabilities_clears_the_status_bit() {
    let mut b = ConfigBuilder::new(0x1234, 0x5678, 0x0b4000, 0);
    b.bar(0, 0, super::fake::region(0x1000));
    b.cap(0x40, 0x03, 0, &[0; 6]); // VPD: not offered
    let (mut f, _, _) = assign(&b);
    assert_eq!(read16(&mut f, 0x06) & 0x10, 0);
    assert_eq!(read32(&mut f, 0x34) & 0xff, 0);
    assert!(std_caps(&mut f).is_empty());
}

#[test]
fn unreadable_extended_space_reads_as_empty() {
    let b = gpu();
    let fake = b.build();
    fake.log.lock().unwrap().readable_up_to = 0x100;
    let msix = super::fake::RecordingHost::default();
    let mut f = AssignedFunction::new("gpu", Box::new(fake), Box::new(msix)).unwrap();
    assert!(ext_caps(&mut f).is_empty());
}

#[test]
fn construction_errors_name_the_device() {
    let mut b = nvme(false);
    b.u16(0, 0xffff);
    let err = AssignedFunction::new(
        "nvme0",
        Box::new(b.build()),
        Box::new(super::fake::RecordingHost::default()),
    )
    .unwrap_err();
    assert!(matches!(err, AssignError::NoDevice { vendor_id: 0xffff, .. }));
    assert!(err.to_string().contains("nvme0"));

    let mut b = nvme(false);
    b.u8(0x0e, 0x81);
    let err = AssignedFunction::new(
        "bridge",
        Box::new(b.build()),
        Box::new(super::fake::RecordingHost::default()),
    )
    .unwrap_err();
    assert!(matches!(err, AssignError::NotAnEndpoint { header_type: 1, .. }), "{err}");

    let fake = nvme(false).build();
    fake.log.lock().unwrap().readable_up_to = 0x40;
    let err = AssignedFunction::new(
        "gone",
        Box::new(fake),
        Box::new(super::fake::RecordingHost::default()),
    )
    .unwrap_err();
    assert!(matches!(err, AssignError::ConfigRead { offset: 0x40, .. }), "{err}");
}

#[test]
fn reset_restores_the_power_on_view() {
    let (mut f, _, _) = assign(&nvme(false));
    write16(&mut f, 0x04, 0x0006);
    write32(&mut f, 0x10, 0x1000_0000);
    write16(&mut f, 0x88, 0x5030);
    f.reset();
    assert_eq!(read16(&mut f, 0x04), 0);
    assert_eq!(read32(&mut f, 0x10), 0x4);
    assert_eq!(read16(&mut f, 0x88), 0x2810);
}

#[test]
fn aligned_chunks_split_naturally() {
    assert_eq!(aligned_chunks(1..8), vec![1..2, 2..4, 4..8]);
    assert_eq!(aligned_chunks(0x8a..0x8c), vec![0x8a..0x8c]);
    assert_eq!(aligned_chunks(5..6), vec![5..6]);
    assert!(aligned_chunks(3..3).is_empty());
}
