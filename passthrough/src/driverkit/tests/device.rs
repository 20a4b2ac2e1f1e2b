//! Claim, identity, configuration reads, BARs, trapped MMIO, mappings and reset.

use std::sync::Arc;

use super::fake::{fake, ADDRESS};
use super::open;
use crate::assigned::{HostFunction, RegionInfo};
use crate::driverkit::protocol::{
    MemoryType, Selector, IO_RETURN_NO_DEVICE, IO_RETURN_SUCCESS, IO_RETURN_UNSUPPORTED,
};
use crate::driverkit::{BarAccess, DextConnection, DextDevice, DextError, DextHostFunction};
use crate::host::ResetOutcome;

#[test]
fn open_checks_identity_then_claims_and_reads_the_bars() {
    let (device, fake) = open();
    assert_eq!(
        fake.selectors()[..2],
        [Selector::GetIdentity, Selector::Claim],
        "identity checked before the claim"
    );
    assert!(fake.state().claimed);
    let id = device.identity();
    assert_eq!((id.vendor_id, id.device_id, id.class_code), (0x10de, 0x2684, 0x030000));
    assert_eq!((id.bus, id.device, id.function), (3, 0, 0));
    let bar0 = device.bar(0).unwrap();
    assert_eq!((bar0.memory_index, bar0.size, bar0.is_64bit()), (0, 0x10000, false));
    let bar1 = device.bar(1).unwrap();
    assert!(bar1.is_64bit() && bar1.prefetchable());
    assert_eq!(device.bar(2), None, "upper half of BAR 1");
    assert_eq!(fake.calls_of(Selector::GetBarInfo), vec![vec![0], vec![1], vec![3], vec![5]]);
    assert!(device.bar(5).unwrap().is_io());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn another_device_is_refused_before_any_claim() {
    let (dext, fake) = fake();
    let connection: Arc<dyn DextConnection> = Arc::new(dext);
    let err = DextDevice::open("0000:04:00.0".parse().unwrap(), connection).unwrap_err();
    assert!(matches!(err, DextError::WrongDevice { found: (3, 0, 0), .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("03:00.0") && text.contains("0000:04:00.0"), "{text}");
    assert_eq!(fake.selectors(), vec![Selector::GetIdentity]);
    assert!(!fake.state().claimed);
    assert!(fake.state().closed, "the connection is closed again");
}

#[test]
fn an_audio_function_is_refused_with_what_to_do() {
    let (dext, fake) = fake();
    fake.state().identity[5] = 0x040300;
    let err = DextDevice::open(ADDRESS.parse().unwrap(), Arc::new(dext)).unwrap_err();
    assert!(matches!(err, DextError::MultimediaFunction { class_code: 0x040300, .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("class 040300") && text.contains("only the GPU function"), "{text}");
    assert!(!fake.state().claimed);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn an_absent_device_is_refused() {
    let (dext, fake) = fake();
    fake.state().identity[3] = 0xffff;
    let err = DextDevice::open(ADDRESS.parse().unwrap(), Arc::new(dext)).unwrap_err();
    assert!(err.to_string().contains("absent or powered off"), "{err}");
    assert!(!fake.state().claimed);
}

#[test]
fn config_reads_use_aligned_widths() {
    let (device, fake) = open();
    let host = DextHostFunction::new(device);
    fake.state().calls.clear();
    let mut dword = [0u8; 4];
    host.config_read(0, &mut dword).unwrap();
    assert_eq!(u32::from_le_bytes(dword), 0x2684_10de);
    let mut three = [0u8; 3];
    host.config_read(1, &mut three).unwrap();
    assert_eq!(three, [0x10, 0x84, 0x26]);
    assert_eq!(
        fake.calls_of(Selector::ConfigRead),
        vec![vec![0, 4], vec![1, 1], vec![2, 2]],
        "naturally aligned 1/2/4-byte reads"
    );
    // Past the 4 KiB configuration space: refused before the dext.
    assert!(host.config_read(0xffe, &mut dword).is_err());
    assert_eq!(fake.calls_of(Selector::ConfigRead).len(), 3);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn bar_info_becomes_region_info_without_a_rom() {
    let (device, _fake) = open();
    let host = DextHostFunction::new(device);
    let region = |size| RegionInfo { size, readable: true, writable: true, mmappable: true };
    assert_eq!(host.bar_info(0), Some(region(0x10000)));
    assert_eq!(host.bar_info(1), Some(region(0x100000)));
    assert_eq!(host.bar_info(2), None);
    assert_eq!(host.bar_info(3), Some(region(0x8000)));
    assert_eq!(host.bar_info(4), None);
    assert!(!host.bar_info(5).unwrap().mmappable, "I/O BARs cannot be mapped");
    assert_eq!(host.bar_info(6), None);
    assert_eq!(host.rom_info(), None, "no expansion ROM through DriverKit");
    assert!(host.rom_read(0, &mut [0u8; 4]).is_err());
    assert!(!host.intx_available());
}

#[test]
fn trapped_mmio_goes_through_the_memory_index() {
    let (device, fake) = open();
    let host = DextHostFunction::new(device).with_bar_access(BarAccess::DextCalls);
    let mut data = [0u8; 8];
    host.bar_read(3, 0x10, &mut data).unwrap();
    // BAR 3 is PCIDriverKit memory index 2: pattern offset ^ 0x22.
    assert_eq!(data, [0x32, 0x33, 0x30, 0x31, 0x36, 0x37, 0x34, 0x35]);
    let mut six = [0u8; 6];
    host.bar_read(0, 0x2, &mut six).unwrap();
    assert_eq!(fake.state().mmio_reads, vec![(2, 0x10, 8), (0, 0x2, 2), (0, 0x4, 4)]);
    host.bar_write(1, 0x100, &0xdead_beef_u32.to_le_bytes()).unwrap();
    host.bar_write(1, 0x108, &[0xaa]).unwrap();
    assert_eq!(fake.state().mmio_writes, vec![(1, 0x100, 4, 0xdead_beef), (1, 0x108, 1, 0xaa)]);
    // Past the BAR, or a BAR that does not exist: refused before the dext.
    assert!(host.bar_read(3, 0x7ffc, &mut data).is_err());
    assert!(host.bar_write(2, 0, &[0]).is_err());
    assert_eq!(fake.calls_of(Selector::MmioRead).len(), 3);
    assert_eq!(fake.calls_of(Selector::MmioWrite).len(), 2);
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

/// QEMU's client reads and writes its own mapping of the BAR: no Mach call per access.
#[test]
fn trapped_mmio_uses_the_bar_mapping_by_default() {
    let (device, fake) = open();
    let host = DextHostFunction::new(device);
    host.bar_write(1, 0x100, &0xdead_beef_u32.to_le_bytes()).unwrap();
    host.bar_write(1, 0x106, &0x1234_u16.to_le_bytes()).unwrap();
    let mut data = [0u8; 8];
    host.bar_read(1, 0x100, &mut data).unwrap();
    assert_eq!(u64::from_le_bytes(data), 0x1234_0000_dead_beef);
    assert!(
        fake.calls_of(Selector::MmioRead).is_empty()
            && fake.calls_of(Selector::MmioWrite).is_empty()
    );
    assert_eq!(
        fake.state().mapped,
        vec![MemoryType::Bar { index: 1, write_combine: true }],
        "mapped once"
    );
    // The I/O BAR cannot be mapped: through the dext.
    host.bar_read(5, 0x4, &mut data[..4]).unwrap();
    assert_eq!(fake.state().mmio_reads, vec![(3, 0x4, 4)]);
    // Past the BAR: refused.
    assert!(host.bar_read(1, 0x100000, &mut data).is_err());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn bars_map_whole_and_prefetchable_ones_write_combined() {
    let (device, fake) = open();
    let bar1 = device.map_bar(1).unwrap();
    assert_eq!(bar1.len(), 0x100000);
    let bar0 = device.map_bar(0).unwrap();
    assert!(device.map_bar(5).is_err(), "I/O BAR");
    assert_eq!(
        fake.state().mapped,
        vec![
            MemoryType::Bar { index: 1, write_combine: true },
            MemoryType::Bar { index: 0, write_combine: false }
        ]
    );
    drop((bar0, bar1));
    assert_eq!(fake.unmapped().len(), 2, "unmapped when dropped");
}

#[test]
fn reset_reports_its_outcome() {
    let (device, fake) = open();
    assert_eq!(device.reset("start"), ResetOutcome::Done);
    fake.state().reset_result = IO_RETURN_UNSUPPORTED;
    assert_eq!(device.reset("exit"), ResetOutcome::Unsupported);
    fake.state().reset_result = IO_RETURN_NO_DEVICE;
    assert_eq!(device.reset("exit"), ResetOutcome::Failed);
    fake.state().reset_result = IO_RETURN_SUCCESS;
    assert_eq!(fake.state().resets, 3);
}

#[test]
fn dropping_the_device_closes_the_connection() {
    let (device, fake) = open();
    assert!(!fake.state().closed);
    drop(device);
    let s = fake.state();
    assert!(s.closed && !s.claimed, "the dext releases the claim");
    assert!(!s.calls.iter().any(|(sel, _)| *sel == Selector::Terminate), "never Terminate");
}
