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

mod hotplug {
    use std::sync::Arc;

    use super::*;
    use crate::pci::config::walk_capabilities;
    use crate::pci::testing::RecordingMsiSink;
    use crate::pci::MsiMessage;

    fn read16(port: &mut RootPort, offset: u16) -> u16 {
        read_le(2, |d| port.config_read(offset, d)) as u16
    }

    fn write16(port: &mut RootPort, offset: u16, value: u16) {
        port.config_write(offset, &value.to_le_bytes());
    }

    /// A hot-plug port with requester id 0x08, its MSI capability's offset, and its MSIs.
    fn hotplug_port() -> (RootPort, u16, Arc<RecordingMsiSink>) {
        let msi = Arc::new(RecordingMsiSink::default());
        let mut port = RootPort::with_hotplug("rp", 3, msi.clone());
        port.set_requester_id(0x08);
        let caps = walk_capabilities(&mut |offset| read32(&mut port, offset));
        let ids: Vec<u8> = caps.iter().map(|c| c.id).collect();
        assert_eq!(ids, [PCIE_CAPABILITY_ID, MSI_CAPABILITY_ID]);
        (port, caps[1].offset, msi)
    }

    /// Programs MSI (address 0x0808_0040, data 0x21) and turns it on.
    fn enable_msi(port: &mut RootPort, msi: u16) {
        write32(port, msi + 4, 0x0808_0040);
        write32(port, msi + 8, 0);
        write16(port, msi + 0xc, 0x21);
        write16(port, msi + 2, 1);
    }

    const MESSAGE: MsiMessage = MsiMessage { address: 0x0808_0040, data: 0x21 };

    /// What Linux's pciehp enables: presence and link changes, the interrupt.
    const PCIEHP_ENABLES: u16 = SLOT_CTL_PDCE | SLOT_CTL_DLLSCE | SLOT_CTL_HPIE;

    #[test]
    fn slot_capabilities_describe_a_surprise_hotplug_slot() {
        let (mut port, msi, _) = hotplug_port();
        assert!(port.has_hotplug_slot());
        let at = port.pcie_capability();
        let caps = read16(&mut port, at + 2);
        assert_eq!(caps & 0xf0, 0x40, "root port");
        assert_ne!(caps & 1 << 8, 0, "slot implemented");
        assert_eq!(caps >> 9 & 0x1f, 0, "hot-plug interrupt is MSI message 0");
        let slot_caps = read32(&mut port, at + 0x14);
        assert_eq!(slot_caps & 0x7f, 0x60, "hot-plug capable and surprise, nothing else");
        assert_ne!(slot_caps & 1 << 18, 0, "no command completed support");
        assert_eq!(slot_caps >> 19, 3, "physical slot number");
        assert_ne!(read32(&mut port, at + 0x0c) & 1 << 20, 0, "DLL link active reporting");
        // Empty and link down until a device is put behind it.
        assert_eq!(port.slot_status() & SLOT_STA_PDS, 0);
        assert_eq!(read16(&mut port, at + 0x12) & LINK_STA_DLLLA, 0);
        // MSI: 64-bit, one message, off.
        assert_eq!(read16(&mut port, msi + 2), 0x80);
        // A port without hot-plug has neither.
        let mut plain = RootPort::new("plain", 1);
        assert!(!plain.has_hotplug_slot());
        let at = plain.pcie_capability();
        assert_eq!(read16(&mut plain, at + 2) & 1 << 8, 0);
        assert_eq!(read32(&mut plain, at + 0x14), 0);
        assert_ne!(read16(&mut plain, at + 0x12) & LINK_STA_DLLLA, 0);
        plain.set_slot_presence(false);
        assert_eq!(plain.slot_status(), 0);
    }

    #[test]
    fn slot_control_is_writable_and_status_events_clear_on_one() {
        let (mut port, _, msi) = hotplug_port();
        let at = port.pcie_capability();
        write16(&mut port, at + 0x18, PCIEHP_ENABLES | SLOT_CTL_CCIE);
        assert_eq!(read16(&mut port, at + 0x18), PCIEHP_ENABLES | SLOT_CTL_CCIE);
        port.set_slot_presence(true);
        let status = read16(&mut port, at + 0x1a);
        assert_eq!(status, SLOT_STA_PDS | SLOT_STA_PDC | SLOT_STA_DLLSC);
        assert_eq!(status & SLOT_STA_CC, 0, "no command completed events");
        // Presence is read-only; writing 0 changes nothing, writing 1 clears one event.
        write16(&mut port, at + 0x1a, 0);
        assert_eq!(read16(&mut port, at + 0x1a), status);
        write16(&mut port, at + 0x1a, SLOT_STA_PDC | SLOT_STA_PDS);
        assert_eq!(read16(&mut port, at + 0x1a), SLOT_STA_PDS | SLOT_STA_DLLSC);
        write16(&mut port, at + 0x1a, SLOT_STA_DLLSC);
        assert_eq!(read16(&mut port, at + 0x1a), SLOT_STA_PDS);
        assert_ne!(read16(&mut port, at + 0x12) & LINK_STA_DLLLA, 0, "link up");
        // The same state again is no event.
        port.set_slot_presence(true);
        assert_eq!(read16(&mut port, at + 0x1a), SLOT_STA_PDS);
        assert!(msi.sent().is_empty(), "MSI never enabled");
    }

    #[test]
    fn removal_and_arrival_each_send_one_msi_once_the_guest_cleared_the_events() {
        let (mut port, msi_at, msi) = hotplug_port();
        let at = port.pcie_capability();
        port.set_slot_presence(true);
        // What pciehp does at probe: clear stale events, enable MSI and notifications.
        write16(&mut port, at + 0x1a, 0x011f);
        enable_msi(&mut port, msi_at);
        write16(&mut port, at + 0x18, PCIEHP_ENABLES);
        assert!(msi.sent().is_empty(), "nothing pending");

        port.set_slot_presence(false);
        assert_eq!(msi.sent(), [(MESSAGE, 0x08)]);
        assert_eq!(read16(&mut port, at + 0x12) & LINK_STA_DLLLA, 0, "link down");
        // Clearing one of two events: the condition holds, no new message.
        write16(&mut port, at + 0x1a, SLOT_STA_PDC);
        assert_eq!(msi.sent().len(), 1);
        write16(&mut port, at + 0x1a, SLOT_STA_DLLSC);
        port.set_slot_presence(true);
        assert_eq!(msi.sent(), [(MESSAGE, 0x08), (MESSAGE, 0x08)]);
    }

    #[test]
    fn an_event_waits_for_msi_and_for_its_enable_bits() {
        let (mut port, msi_at, msi) = hotplug_port();
        let at = port.pcie_capability();
        // Only presence changes enabled, interrupts off: nothing.
        write16(&mut port, at + 0x18, SLOT_CTL_PDCE);
        port.set_slot_presence(true);
        assert!(msi.sent().is_empty());
        // Interrupts on, MSI still off: still nothing.
        write16(&mut port, at + 0x18, SLOT_CTL_PDCE | SLOT_CTL_HPIE);
        assert!(msi.sent().is_empty());
        // MSI on: the pending event goes out.
        enable_msi(&mut port, msi_at);
        assert_eq!(msi.sent(), [(MESSAGE, 0x08)]);
        // Only the link change left, and its enable is off: the condition drops; enabling
        // it raises the condition again.
        write16(&mut port, at + 0x1a, SLOT_STA_PDC);
        assert_eq!(msi.sent().len(), 1);
        write16(&mut port, at + 0x18, PCIEHP_ENABLES);
        assert_eq!(msi.sent().len(), 2);
    }
}
