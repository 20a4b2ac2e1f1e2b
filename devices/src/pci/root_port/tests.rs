use super::*;
use crate::pci::config::{COMMAND, HEADER_TYPE};
use crate::pci::testing::{read_le, XorShift, FUZZ_SIZES};

fn read32(port: &mut RootPort, offset: u16) -> u32 {
    read_le(4, |d| port.config_read(offset, d)) as u32
}

fn write32(port: &mut RootPort, offset: u16, value: u32) {
    port.config_write(offset, &value.to_le_bytes());
}

#[test]
fn identity_and_header() {
    let mut port = RootPort::new("root-port1", 1);
    assert_eq!(port.name(), "root-port1");
    assert_eq!(read32(&mut port, 0), 0x000c_1b36);
    assert_eq!(read32(&mut port, 8) >> 8, 0x06_04_00);
    assert_eq!(port.config().read_u8(HEADER_TYPE), 1);
    assert!(port.bar_regions().is_empty());
    let mut data = [0u8; 4];
    port.bar_read(0, 0, &mut data);
    assert_eq!(data, [0xff; 4]);
}

#[test]
fn bus_numbers_are_programmable() {
    let mut port = RootPort::new("rp", 1);
    assert_eq!(port.bus_range(), None);
    write32(&mut port, 0x18, 0x0003_0100);
    assert_eq!(port.secondary_bus(), 1);
    assert_eq!(port.subordinate_bus(), 3);
    assert_eq!(port.bus_range(), Some(1..=3));
    // Subordinate below secondary: nothing is routed.
    port.config_write(0x1a, &[0]);
    assert_eq!(port.bus_range(), None);
    port.set_buses(0, 5, 5);
    assert_eq!(port.bus_range(), Some(5..=5));
}

#[test]
fn memory_windows_decode() {
    let mut port = RootPort::new("rp", 1);
    // Memory: 0x1000_0000..0x1020_0000.
    write32(&mut port, 0x20, 0x1010_1000);
    assert_eq!(port.memory_window(), Some((0x1000_0000, 0x1020_0000)));
    // Closed window: base above limit.
    write32(&mut port, 0x20, 0x0000_1010);
    assert_eq!(port.memory_window(), None);
    // Prefetchable: 0x80_0000_0000..0x84_0000_0000.
    write32(&mut port, 0x24, 0xfff0_0000);
    write32(&mut port, 0x28, 0x80);
    write32(&mut port, 0x2c, 0x83);
    assert_eq!(read32(&mut port, 0x24), 0xfff1_0001, "64-bit window type bits");
    assert_eq!(port.prefetchable_window(), Some((0x80_0000_0000, 0x84_0000_0000)));
    assert!(!port.forwards_memory());
    port.config_write(COMMAND, &[0x06]);
    assert!(port.forwards_memory());
}

#[test]
fn io_window_is_absent() {
    let mut port = RootPort::new("rp", 1);
    write32(&mut port, 0x1c, 0xffff_ffff);
    assert_eq!(read32(&mut port, 0x1c) & 0xffff, 0);
    write32(&mut port, 0x30, 0xffff_ffff);
    assert_eq!(read32(&mut port, 0x30), 0);
}

#[test]
fn pcie_capability_reports_root_port_with_trained_link() {
    let mut port = RootPort::new("rp", 3);
    let caps = port.config().capabilities();
    assert_eq!(caps.len(), 1);
    assert_eq!(caps[0].id, PCIE_CAPABILITY_ID);
    let at = port.pcie_capability();
    assert_eq!(caps[0].offset, at);
    let pcie_caps = read32(&mut port, at) >> 16;
    assert_eq!(pcie_caps & 0xf, 2, "version 2");
    assert_eq!(pcie_caps >> 4 & 0xf, 4, "root port");
    assert_eq!(pcie_caps & 1 << 8, 0, "no slot");
    let link_caps = read32(&mut port, at + 0x0c);
    assert_eq!(link_caps >> 24, 3, "port number");
    let link_status = read32(&mut port, at + 0x10) >> 16;
    assert_eq!(link_status & 0xf, 4);
    assert_eq!(link_status >> 4 & 0x3f, 16);
    assert_ne!(link_status & 1 << 13, 0, "data link layer active");
    assert_eq!(link_status & 1 << 11, 0, "not training");
    // Link status is read-only; link control takes the ASPM bits.
    write32(&mut port, at + 0x10, 0xffff_ffff);
    assert_eq!(read32(&mut port, at + 0x10) >> 16, link_status);
    assert_eq!(read32(&mut port, at + 0x10) & 0xffff, 0x01c3);
    assert_eq!(read32(&mut port, at + 0x2c), 0b1_1110);
}

#[test]
fn random_accesses_keep_read_only_fields() {
    let mut rng = XorShift::new(0xfeed);
    let mut port = RootPort::new("rp", 1);
    let at = port.pcie_capability();
    let link_status = read32(&mut port, at + 0x10) >> 16;
    for _ in 0..4 {
        for offset in 0..=0x1003u16 {
            for len in FUZZ_SIZES {
                port.config_write(offset, &rng.bytes(len));
                let mut data = vec![0; len];
                port.config_read(offset, &mut data);
            }
            let len = [1, 2, 4, 8][rng.below(4) as usize];
            port.bar_write(rng.below(6) as usize, rng.next(), &rng.bytes(len));
        }
    }
    assert_eq!(read32(&mut port, 0), 0x000c_1b36);
    assert_eq!(port.config().read_u8(HEADER_TYPE), 1);
    assert_eq!(read32(&mut port, 0x1c) & 0xffff, 0);
    assert_eq!(read32(&mut port, 0x24) & 0x000f_000f, 0x0001_0001);
    assert_eq!(port.config().capabilities().len(), 1);
    assert_eq!(read32(&mut port, at + 0x10) >> 16, link_status);
}

#[test]
fn link_follows_the_assigned_device() {
    let mut port = RootPort::new("rp", 2);
    assert_eq!(port.link(), PcieLink::new(4, 16), "x16 at 16 GT/s until told");
    let at = port.pcie_capability();
    // A GPU on a Thunderbolt enclosure: x4 at 8 GT/s.
    port.set_link(PcieLink::new(3, 4).unwrap());
    assert_eq!(port.link(), PcieLink::new(3, 4));
    let link_caps = read32(&mut port, at + 0x0c);
    assert_eq!(link_caps & 0x3ff, 3 | 4 << 4);
    assert_eq!(link_caps >> 24, 2, "port number kept");
    assert_ne!(link_caps & 1 << 20, 0, "DLL active reporting kept");
    let link_status = read32(&mut port, at + 0x10) >> 16;
    assert_eq!(link_status & 0x3ff, 3 | 4 << 4);
    assert_ne!(link_status & 1 << 13, 0, "link up");
    assert_eq!(read32(&mut port, at + 0x2c), 0b1110, "2.5, 5 and 8 GT/s");
    assert_eq!(read32(&mut port, at + 0x30) & 0xf, 3, "target speed");
    // Still read-only to the guest.
    write32(&mut port, at + 0x0c, 0);
    write32(&mut port, at + 0x10, 0xffff_ffff);
    assert_eq!(port.link(), PcieLink::new(3, 4));
}

#[test]
fn links_parse_from_device_registers() {
    assert_eq!(PcieLink::new(0, 16), None);
    assert_eq!(PcieLink::new(7, 16), None);
    assert_eq!(PcieLink::new(4, 3), None);
    assert_eq!(PcieLink::new(6, 32), Some(PcieLink { speed: 6, width: 32 }));
    // Negotiated x8 Gen3 on an x16 Gen4 device: the negotiated one.
    assert_eq!(PcieLink::from_registers(0x0000_0104, 0x1083), PcieLink::new(3, 8));
    // Link Status empty (link down): the capability.
    assert_eq!(PcieLink::from_registers(0x0000_0104, 0), PcieLink::new(4, 16));
    assert_eq!(PcieLink::from_registers(0, 0), None);
    // Read through a function's configuration space.
    let mut port = RootPort::new("rp", 1);
    port.set_link(PcieLink::new(2, 1).unwrap());
    assert_eq!(PcieLink::read_from(&mut port), PcieLink::new(2, 1));
    let mut absent = RootPort::new("rp", 1);
    absent.config.set_u8(super::super::config::CAPABILITIES_POINTER, 0);
    assert_eq!(PcieLink::read_from(&mut absent), None);
}

#[test]
fn atomic_completion_only_when_the_host_path_supports_it() {
    let mut port = RootPort::new("rp", 1);
    let at = port.pcie_capability();
    assert_eq!(read32(&mut port, at + 0x24) & 0x380, 0, "off by default");
    port.set_atomic_completer(true);
    assert_eq!(read32(&mut port, at + 0x24) & 0x380, 0x380, "32, 64 and 128-bit CAS");
    write32(&mut port, at + 0x24, 0);
    assert_eq!(read32(&mut port, at + 0x24) & 0x380, 0x380, "read-only");
    port.set_atomic_completer(false);
    assert_eq!(read32(&mut port, at + 0x24) & 0x380, 0);
}

#[test]
fn secondary_bus_reset_is_reported_once_per_rising_edge() {
    let mut port = RootPort::new("root-port1", 1);
    let bridge_control = |port: &mut RootPort, value: u16| {
        port.config_write(BRIDGE_CONTROL, &value.to_le_bytes());
    };
    assert!(!port.take_secondary_bus_reset());
    bridge_control(&mut port, 0x40);
    assert!(port.in_secondary_reset());
    assert!(port.take_secondary_bus_reset());
    assert!(!port.take_secondary_bus_reset(), "reported once");
    bridge_control(&mut port, 0x42);
    assert!(!port.take_secondary_bus_reset(), "held, not a new edge");
    bridge_control(&mut port, 0);
    assert!(!port.take_secondary_bus_reset(), "clearing resets nothing");
    // A dword write of 0x3c with the bit set is an edge too.
    write32(&mut port, 0x3c, 0x0040_0000);
    assert!(port.take_secondary_bus_reset());
}
