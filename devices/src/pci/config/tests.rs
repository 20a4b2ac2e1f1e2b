use super::*;
use crate::pci::testing::{XorShift, FUZZ_SIZES};

fn ids() -> PciIds {
    PciIds {
        vendor_id: 0x1af4,
        device_id: 0x1042,
        revision: 1,
        class_code: 0x01_00_00,
        subsystem_vendor_id: 0x1af4,
        subsystem_id: 0x1100,
    }
}

fn write32(config: &mut ConfigSpace, offset: u16, value: u32) {
    config.write(offset, &value.to_le_bytes());
}

fn write16(config: &mut ConfigSpace, offset: u16, value: u16) {
    config.write(offset, &value.to_le_bytes());
}

#[test]
fn endpoint_header_identity_is_read_only() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    assert_eq!(config.read_u32(0), 0x1042_1af4);
    assert_eq!(config.read_u32(REVISION_ID), 0x0100_0001);
    assert_eq!(config.read_u8(HEADER_TYPE), 0);
    assert_eq!(config.read_u32(SUBSYSTEM_VENDOR_ID), 0x1100_1af4);
    write32(&mut config, 0, 0xdead_beef);
    write32(&mut config, REVISION_ID, 0xdead_beef);
    write32(&mut config, SUBSYSTEM_VENDOR_ID, 0);
    assert_eq!(config.read_u32(0), 0x1042_1af4);
    assert_eq!(config.read_u32(REVISION_ID), 0x0100_0001);
    assert_eq!(config.read_u32(SUBSYSTEM_VENDOR_ID), 0x1100_1af4);
}

#[test]
fn command_register_keeps_only_supported_bits() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    write16(&mut config, COMMAND, 0xffff);
    assert_eq!(config.command(), 0x0546);
    assert!(config.memory_enabled() && config.bus_master_enabled() && config.intx_disabled());
    write16(&mut config, COMMAND, 0);
    assert!(!config.memory_enabled());
}

#[test]
fn status_error_bits_are_write_one_to_clear() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    config.add_capability(0x09, &[0; 2]).unwrap();
    config.set_u16(STATUS, config.read_u16(STATUS) | 0x2000 | 0x0100);
    // Writing 0 leaves them; writing 1 to one clears only that one; the caps bit stays.
    write16(&mut config, STATUS, 0);
    assert_eq!(config.read_u16(STATUS), 0x2110);
    write16(&mut config, STATUS, 0x2000 | STATUS_CAPABILITIES);
    assert_eq!(config.read_u16(STATUS), 0x0110);
    write16(&mut config, STATUS, 0xffff);
    assert_eq!(config.read_u16(STATUS), STATUS_CAPABILITIES);
}

#[test]
fn byte_masks_apply_per_byte() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    config.set_u32(0x80, 0x1122_3344);
    config.set_rw_mask(0x80, &[0x0f, 0x00, 0xff, 0x00]);
    config.set_w1c_mask(0x83, &[0x10]);
    write32(&mut config, 0x80, 0xffff_ffff);
    assert_eq!(config.read_u32(0x80), 0x01ff_334f);
    config.write(0x82, &[0xab]);
    assert_eq!(config.read_u32(0x80), 0x01ab_334f);
}

#[test]
fn bar32_sizing_reads_back_size_mask() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    config.add_memory_bar(0, 0x4000, BarKind::Memory32, false).unwrap();
    assert_eq!(config.read_u32(BAR0), 0);
    write32(&mut config, BAR0, u32::MAX);
    assert_eq!(config.read_u32(BAR0), 0xffff_c000);
    write32(&mut config, BAR0, 0x1000_4567);
    assert_eq!(config.read_u32(BAR0), 0x1000_4000);
    assert_eq!(config.bar_address(0), Some(0x1000_4000));
    assert_eq!(config.bar_size(0), Some(0x4000));
    // Unimplemented BARs read 0 even after all-ones.
    write32(&mut config, BAR0 + 4, u32::MAX);
    assert_eq!(config.read_u32(BAR0 + 4), 0);
    assert_eq!(config.bar_address(1), None);
}

#[test]
fn bar64_prefetchable_sizing_spans_two_registers() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    config.add_memory_bar(2, 16 << 30, BarKind::Memory64, true).unwrap();
    assert_eq!(config.read_u32(BAR0 + 8), 0b1100);
    write32(&mut config, BAR0 + 8, u32::MAX);
    write32(&mut config, BAR0 + 12, u32::MAX);
    assert_eq!(config.read_u32(BAR0 + 8), 0x0000_000c);
    assert_eq!(config.read_u32(BAR0 + 12), 0xffff_fffc);
    write32(&mut config, BAR0 + 8, 0);
    write32(&mut config, BAR0 + 12, 0x80);
    assert_eq!(config.bar_address(2), Some(0x80_0000_0000));
    assert_eq!(config.bar_address(3), None);
    assert!(config.bar_regions().is_empty(), "memory decoding is off");
    write16(&mut config, COMMAND, COMMAND_MEMORY);
    assert_eq!(
        config.bar_regions(),
        vec![BarRegion {
            index: 2,
            address: 0x80_0000_0000,
            size: 16 << 30,
            prefetchable: true,
            is_64bit: true
        }]
    );
}

#[test]
fn small_bar64_masks_low_register() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    config.add_memory_bar(0, 0x1000, BarKind::Memory64, false).unwrap();
    write32(&mut config, BAR0, u32::MAX);
    write32(&mut config, BAR0 + 4, u32::MAX);
    assert_eq!(config.read_u32(BAR0), 0xffff_f004);
    assert_eq!(config.read_u32(BAR0 + 4), u32::MAX);
}

#[test]
fn bar_errors() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    assert!(matches!(
        config.add_memory_bar(0, 0x3000, BarKind::Memory32, false),
        Err(ConfigError::BadBarSize { .. })
    ));
    assert!(config.add_memory_bar(0, 8, BarKind::Memory32, false).is_err());
    assert!(config.add_memory_bar(0, 4 << 30, BarKind::Memory32, false).is_err());
    config.add_memory_bar(4, 0x1000, BarKind::Memory64, false).unwrap();
    let err = config.add_memory_bar(5, 0x1000, BarKind::Memory32, false).unwrap_err();
    assert_eq!(err, ConfigError::BarUnavailable { index: 5 });
    assert!(err.to_string().contains("pick another BAR"));
    assert!(config.add_memory_bar(6, 0x1000, BarKind::Memory32, false).is_err());
    assert!(config.add_memory_bar(usize::MAX, 0x1000, BarKind::Memory64, false).is_err());
    let mut bridge = ConfigSpace::new_bridge(&ids());
    assert!(bridge.add_memory_bar(1, 0x1000, BarKind::Memory64, false).is_err());
    assert!(bridge.add_memory_bar(2, 0x1000, BarKind::Memory32, false).is_err());
    bridge.add_memory_bar(0, 0x1000, BarKind::Memory64, false).unwrap();
}

#[test]
fn expansion_rom_absent_or_sized() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    write32(&mut config, ROM_ADDRESS_TYPE0, u32::MAX);
    assert_eq!(config.read_u32(ROM_ADDRESS_TYPE0), 0);
    assert_eq!(config.expansion_rom(), None);
    config.set_expansion_rom(0x2_0000).unwrap();
    write32(&mut config, ROM_ADDRESS_TYPE0, u32::MAX);
    assert_eq!(config.read_u32(ROM_ADDRESS_TYPE0), 0xfffe_0001);
    write32(&mut config, ROM_ADDRESS_TYPE0, 0x2000_0001);
    assert_eq!(config.expansion_rom(), Some((0x2000_0000, 0x2_0000, true)));
    assert!(config.set_expansion_rom(0x100).is_err());
}

#[test]
fn bridge_header_registers() {
    let mut config = ConfigSpace::new_bridge(&ids());
    assert!(config.is_bridge());
    assert_eq!(config.read_u8(HEADER_TYPE), 1);
    write32(&mut config, PRIMARY_BUS, 0xffff_ffff);
    assert_eq!(config.read_u32(PRIMARY_BUS), 0x00ff_ffff, "latency timer is read-only");
    // No I/O window: base/limit read 0.
    write16(&mut config, 0x1c, 0xf0f0);
    assert_eq!(config.read_u16(0x1c), 0);
    write32(&mut config, MEMORY_BASE, 0xffff_ffff);
    assert_eq!(config.read_u32(MEMORY_BASE), 0xfff0_fff0);
    write32(&mut config, PREF_MEMORY_BASE, 0xffff_ffff);
    assert_eq!(config.read_u32(PREF_MEMORY_BASE), 0xfff1_fff1);
    write32(&mut config, PREF_BASE_UPPER, 0x1234_5678);
    assert_eq!(config.read_u32(PREF_BASE_UPPER), 0x1234_5678);
    write16(&mut config, BRIDGE_CONTROL, 0xffff);
    assert_eq!(config.read_u16(BRIDGE_CONTROL), 0x007f);
}

#[test]
fn standard_capability_list_walks_in_order() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    assert!(config.capabilities().is_empty());
    assert_eq!(config.add_capability(0x11, &[0; 10]).unwrap(), 0x40);
    assert_eq!(config.add_capability(0x09, &[0; 13]).unwrap(), 0x4c);
    assert_eq!(config.add_capability(0x10, &[0; 58]).unwrap(), 0x5c);
    assert_eq!(config.read_u8(CAPABILITIES_POINTER), 0x40);
    assert_ne!(config.read_u16(STATUS) & STATUS_CAPABILITIES, 0);
    let caps = config.capabilities();
    assert_eq!(
        caps,
        vec![
            Capability { id: 0x11, offset: 0x40 },
            Capability { id: 0x09, offset: 0x4c },
            Capability { id: 0x10, offset: 0x5c },
        ]
    );
    assert_eq!(config.find_capability(0x10), Some(0x5c));
    // The next pointers are read-only.
    config.write(0x41, &[0x00]);
    assert_eq!(config.capabilities().len(), 3);
    let err = config.add_capability(0x05, &[0; 200]).unwrap_err();
    assert!(err.to_string().contains("standard"), "{err}");
}

#[test]
fn extended_capability_list_walks_in_order() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    assert!(config.extended_capabilities().is_empty());
    assert_eq!(config.add_extended_capability(0x0001, 2, &[0; 0x44]).unwrap(), 0x100);
    assert_eq!(config.add_extended_capability(0x0015, 1, &[0; 6]).unwrap(), 0x148);
    assert_eq!(config.add_extended_capability(0x000b, 1, &[]).unwrap(), 0x154);
    assert_eq!(
        config.extended_capabilities(),
        vec![
            ExtendedCapability { id: 0x0001, version: 2, offset: 0x100 },
            ExtendedCapability { id: 0x0015, version: 1, offset: 0x148 },
            ExtendedCapability { id: 0x000b, version: 1, offset: 0x154 },
        ]
    );
    assert_eq!(config.read_u32(0x100) >> 20, 0x148);
    assert!(config.add_extended_capability(0x0002, 1, &[0; 4000]).is_err());
}

#[test]
fn bridges_hide_an_empty_extended_space() {
    let mut config = ConfigSpace::new_bridge(&ids());
    let read = |config: &ConfigSpace, offset: u16, len: usize| {
        let mut data = vec![0u8; len];
        config.read_no_extended(offset, &mut data);
        data
    };
    // Standard space as usual; the extended space reads as unreachable (all-ones).
    assert_eq!(read(&config, 0, 2), config.read_u16(0).to_le_bytes());
    assert_eq!(read(&config, 0x100, 4), [0xff; 4]);
    assert_eq!(read(&config, 0xffc, 4), [0xff; 4]);
    assert_eq!(read(&config, 0xfe, 4)[..2], [0, 0]);
    assert_eq!(read(&config, 0xfe, 4)[2..], [0xff, 0xff]);
    // With an extended capability the space is real.
    config.add_extended_capability(0x0001, 2, &[0; 8]).unwrap();
    assert_eq!(read(&config, 0x100, 4), config.read_u32(0x100).to_le_bytes());
}

#[test]
fn walkers_survive_loops_and_garbage() {
    // A list that points at itself.
    let caps = walk_capabilities(|offset| match offset {
        COMMAND => u32::from(STATUS_CAPABILITIES) << 16,
        CAPABILITIES_POINTER => 0x40,
        _ => 0x4011,
    });
    assert_eq!(caps.len(), MAX_STANDARD_CAPABILITIES);
    let ext = walk_extended_capabilities(|_| 0x1001_0001);
    assert_eq!(ext.len(), MAX_EXTENDED_CAPABILITIES);
    assert!(walk_extended_capabilities(|_| u32::MAX).is_empty());
    // A pointer into the header ends the walk.
    let caps = walk_capabilities(|offset| match offset {
        COMMAND => u32::from(STATUS_CAPABILITIES) << 16,
        CAPABILITIES_POINTER => 0x10,
        _ => 0,
    });
    assert!(caps.is_empty());
}

#[test]
fn out_of_range_accesses_do_not_panic() {
    let mut config = ConfigSpace::new_endpoint(&ids());
    let mut data = [0xffu8; 8];
    config.read(0xffc, &mut data);
    assert_eq!(data, [0; 8]);
    config.write(0xffe, &[1; 8]);
    config.write(u16::MAX, &[1; 8]);
    config.read(u16::MAX, &mut data);
    config.set_bytes(u16::MAX, &[1, 2, 3]);
    config.set_rw_mask(0xfff, &[0xff, 0xff]);
    assert_eq!(config.read_u8(0xfff), 0);
}

/// Hammers every offset with every width and random values; identity registers, the header
/// type, BAR type bits and the capability list must survive.
#[test]
fn random_accesses_keep_read_only_fields() {
    let mut rng = XorShift::new(0x5eed_c0f1);
    for bridge in [false, true] {
        let mut config = if bridge {
            ConfigSpace::new_bridge(&ids())
        } else {
            ConfigSpace::new_endpoint(&ids())
        };
        config.add_memory_bar(0, 0x4000, BarKind::Memory64, true).unwrap();
        config.add_capability(0x10, &[0; 10]).unwrap();
        config.add_capability(0x11, &[0; 10]).unwrap();
        config.add_extended_capability(0x1, 1, &[0; 8]).unwrap();
        let caps = config.capabilities();
        let ext = config.extended_capabilities();
        for _ in 0..4 {
            for offset in 0..=0x1003u16 {
                for len in FUZZ_SIZES {
                    let value = rng.bytes(len);
                    config.write(offset, &value);
                    let mut back = vec![0; len];
                    config.read(offset, &mut back);
                }
            }
        }
        assert_eq!(config.read_u32(0), 0x1042_1af4);
        assert_eq!(config.read_u32(REVISION_ID) >> 8, 0x01_00_00);
        assert_eq!(config.read_u8(HEADER_TYPE), u8::from(bridge));
        assert_eq!(config.read_u32(BAR0) & 0xf, 0b1100);
        assert_eq!(config.read_u32(BAR0) & 0x3ff0, 0);
        assert_eq!(config.capabilities(), caps);
        assert_eq!(config.extended_capabilities(), ext);
        assert_eq!(config.command() & !0x0546, 0);
    }
}

#[test]
fn reset_undoes_every_guest_write() {
    let mut config = ConfigSpace::new_bridge(&ids());
    let power_on = config.bytes.clone();
    config.reset();
    assert_eq!(config.bytes, power_on, "a reset before any write changes nothing");
    write16(&mut config, COMMAND, 0x0006);
    config.write(PRIMARY_BUS, &[0, 1, 1]);
    write16(&mut config, MEMORY_BASE, 0x1000);
    assert_ne!(config.bytes, power_on);
    config.reset();
    assert_eq!(config.bytes, power_on);
    assert_eq!(config.command(), 0);
    // And again after the next boot's writes.
    write16(&mut config, COMMAND, 0x0002);
    config.reset();
    assert_eq!(config.bytes, power_on);
}
