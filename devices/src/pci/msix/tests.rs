use super::*;
use crate::pci::config::PciIds;
use crate::pci::testing::{read_le, XorShift, FUZZ_SIZES};

fn program(msix: &mut MsixState, vector: u64, address: u64, data: u32, masked: bool) {
    let base = vector * MSIX_ENTRY_SIZE;
    assert!(msix.write_table(base, &address.to_le_bytes()).is_empty());
    assert!(msix.write_table(base + 8, &data.to_le_bytes()).is_empty());
    msix.write_table(base + 12, &u32::from(masked).to_le_bytes());
}

fn pba(msix: &MsixState) -> u64 {
    read_le(8, |d| msix.read_pba(0, d))
}

#[test]
fn entries_start_masked_and_read_back() {
    let mut msix = MsixState::new(3).unwrap();
    assert_eq!(msix.table_len(), 48);
    assert_eq!(msix.pba_len(), 8);
    assert_eq!(read_le(4, |d| msix.read_table(12, d)), 1);
    program(&mut msix, 1, 0x0802_0040, 0x55, false);
    assert_eq!(read_le(8, |d| msix.read_table(16, d)), 0x0802_0040);
    assert_eq!(read_le(4, |d| msix.read_table(24, d)), 0x55);
    assert_eq!(read_le(8, |d| msix.read_table(24, d)), 0x55);
    assert_eq!(msix.entry(1), Some(MsixEntry { address: 0x0802_0040, data: 0x55, masked: false }));
    // Upper address half, and reserved low address bits.
    msix.write_table(20, &0x1234u32.to_le_bytes());
    msix.write_table(16, &0xabcd_0003u32.to_le_bytes());
    assert_eq!(msix.entry(1).unwrap().address, 0x1234_abcd_0000);
}

#[test]
fn trigger_needs_enable_and_unmasked_vector() {
    let mut msix = MsixState::new(2).unwrap();
    program(&mut msix, 0, 0x1000, 7, false);
    assert_eq!(msix.trigger(0), None, "disabled: dropped");
    assert!(!msix.is_pending(0));
    msix.set_control(true, false);
    assert_eq!(msix.trigger(0), Some(MsiMessage { address: 0x1000, data: 7 }));
    assert_eq!(msix.trigger(5), None);
}

#[test]
fn masked_vector_goes_pending_and_unmask_delivers() {
    let mut msix = MsixState::new(2).unwrap();
    msix.set_control(true, false);
    program(&mut msix, 1, 0x2000, 9, true);
    assert_eq!(msix.trigger(1), None);
    assert!(msix.is_pending(1));
    assert_eq!(pba(&msix), 0b10);
    // The message uses the entry as it is at unmask time.
    msix.write_table(24, &10u32.to_le_bytes());
    let sent = msix.write_table(28, &0u32.to_le_bytes());
    assert_eq!(sent, vec![MsiMessage { address: 0x2000, data: 10 }]);
    assert!(!msix.is_pending(1));
    assert_eq!(pba(&msix), 0);
    // A second unmask sends nothing.
    assert!(msix.write_table(28, &0u32.to_le_bytes()).is_empty());
}

#[test]
fn function_mask_holds_all_vectors() {
    let mut msix = MsixState::new(70).unwrap();
    assert_eq!(msix.pba_len(), 16);
    program(&mut msix, 0, 0x3000, 1, false);
    program(&mut msix, 65, 0x3000, 2, false);
    msix.set_control(true, true);
    assert_eq!(msix.trigger(0), None);
    assert_eq!(msix.trigger(65), None);
    assert_eq!(read_le(8, |d| msix.read_pba(8, d)), 0b10);
    assert_eq!(read_le(4, |d| msix.read_pba(8, d)), 0b10);
    let sent = msix.set_control(true, false);
    assert_eq!(
        sent,
        vec![MsiMessage { address: 0x3000, data: 1 }, MsiMessage { address: 0x3000, data: 2 }]
    );
}

#[test]
fn pba_is_read_only_and_bad_accesses_are_ignored() {
    let mut msix = MsixState::new(1).unwrap();
    msix.set_control(true, false);
    msix.trigger(0);
    msix.write_pba(0, &[0; 8]);
    assert_eq!(pba(&msix), 1);
    // Narrow and unaligned table accesses do nothing and read 0.
    msix.write_table(8, &[1, 2]);
    msix.write_table(10, &[1, 2, 3, 4]);
    assert_eq!(msix.entry(0).unwrap().data, 0);
    assert_eq!(read_le(2, |d| msix.read_table(12, d)), 0);
    assert_eq!(read_le(4, |d| msix.read_table(0x1000, d)), 0);
    assert_eq!(read_le(8, |d| msix.read_pba(u64::MAX - 7, d)), 0);
    assert!(msix.write_table(u64::MAX - 7, &[0; 8]).is_empty());
}

#[test]
fn vector_counts_are_checked() {
    assert_eq!(MsixState::new(0).unwrap_err(), MsixError::BadVectorCount(0));
    assert!(MsixState::new(2049).is_err());
    assert_eq!(MsixState::new(2048).unwrap().pba_len(), 256);
}

#[test]
fn capability_layout_and_control_bits() {
    let mut config = ConfigSpace::new_endpoint(&PciIds::default());
    let cap = MsixCapability::add(&mut config, 5, (0, 0x3000), (0, 0x3800)).unwrap();
    let at = cap.offset();
    assert_eq!(config.read_u8(at), MSIX_CAPABILITY_ID);
    assert_eq!(config.read_u16(at + 2), 4);
    assert_eq!(config.read_u32(at + 4), 0x3000);
    assert_eq!(config.read_u32(at + 8), 0x3800);
    config.write(at + 2, &0xffffu16.to_le_bytes());
    assert_eq!(config.read_u16(at + 2), 0xc004);
    assert_eq!(cap.control(&config), (true, true));
    config.write(at + 4, &0u32.to_le_bytes());
    assert_eq!(config.read_u32(at + 4), 0x3000);
    assert!(cap.control_written(at, 4));
    assert!(cap.control_written(at + 3, 1));
    assert!(!cap.control_written(at + 4, 4));
    assert!(!cap.control_written(at - 4, 4));
    assert!(matches!(
        MsixCapability::add(&mut config, 1, (0, 0x3004), (0, 0)),
        Err(MsixError::BadPlacement { what: "table", .. })
    ));
    assert!(MsixCapability::add(&mut config, 1, (0, 0), (6, 0)).is_err());
}

#[test]
fn random_accesses_keep_invariants() {
    let mut rng = XorShift::new(0x0123_4567);
    let mut msix = MsixState::new(9).unwrap();
    for round in 0..200 {
        for offset in 0..(msix.table_len() + 0x20) {
            for len in FUZZ_SIZES {
                let value = rng.bytes(len);
                let _ = msix.write_table(offset, &value);
                let mut back = vec![0; len];
                msix.read_table(offset, &mut back);
                msix.write_pba(offset, &value);
                msix.read_pba(offset, &mut back);
            }
        }
        let _ = msix.trigger(rng.below(12) as u16);
        let _ = msix.set_control(rng.below(2) == 0, rng.below(2) == 0);
        // Only vector control bit 0 is implemented; reserved address bits stay 0.
        for v in 0..9u64 {
            let control = read_le(4, |d| msix.read_table(v * 16 + 12, d));
            assert!(control <= 1, "round {round}: vector {v} control {control:#x}");
            assert_eq!(read_le(4, |d| msix.read_table(v * 16, d)) & 3, 0);
        }
        assert_eq!(pba(&msix) >> 9, 0, "no pending bits past the last vector");
    }
}
