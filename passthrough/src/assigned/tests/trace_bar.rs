//! `trace-bar`: BAR ranges trapped instead of mapped so that every access is traced, still
//! reaching the device; ranges checked against the BARs when the device is opened.

use super::fake::{assign, gpu, nvme};
use super::{bar_read32, bar_write32};

#[test]
fn a_traced_range_is_trapped_and_reaches_the_device() {
    let (mut f, fake, _) = assign(&nvme(true));
    assert_eq!(f.mappable_bar_ranges(0, 4096), vec![(0, 0x4000)]);
    f.set_traced_bar_ranges(&[(0, Some(0x1000..0x1008))]).unwrap();
    assert_eq!(f.traced_bar_ranges(), &[(0, 0x1000..0x1008)]);
    assert_eq!(f.mappable_bar_ranges(0, 4096), vec![(0, 0x1000), (0x2000, 0x2000)]);
    assert!(f.mappable_bar_ranges(0, 16384).is_empty(), "the one 16 KiB page is trapped");
    assert_eq!(bar_read32(&mut f, 0, 0x1004), u32::from_le_bytes([4, 5, 6, 7]));
    bar_write32(&mut f, 0, 0x1000, 0xdead_beef);
    let log = fake.log.lock().unwrap();
    assert_eq!(log.bar_reads, vec![(0, 0x1004, 4)]);
    assert_eq!(log.bar_writes, vec![(0, 0x1000, 0xdead_beefu32.to_le_bytes().to_vec())]);
}

#[test]
fn a_whole_bar_and_several_ranges() {
    let (mut f, _, _) = assign(&gpu());
    f.set_traced_bar_ranges(&[(3, None), (1, Some(0x10_0000..0x10_0004)), (1, Some(0..0x2000))])
        .unwrap();
    assert!(f.mappable_bar_ranges(3, 4096).is_empty());
    assert_eq!(
        f.mappable_bar_ranges(1, 4096),
        vec![(0x2000, 0x10_0000 - 0x2000), (0x10_1000, (256 << 20) - 0x10_1000)]
    );
    // Setting again replaces the ranges.
    f.set_traced_bar_ranges(&[]).unwrap();
    assert_eq!(f.mappable_bar_ranges(3, 4096), vec![(0, 32 << 20)]);
}

#[test]
fn bad_ranges_are_refused_with_the_fix() {
    let (mut f, _, _) = assign(&gpu());
    let e = f.set_traced_bar_ranges(&[(2, None)]).unwrap_err().to_string();
    assert!(e.contains("trace-bar=2") && e.contains("memory BARs: 0, 1, 3"), "{e}");
    let e = f.set_traced_bar_ranges(&[(5, None)]).unwrap_err().to_string();
    assert!(e.contains("no memory BAR 5"), "I/O BAR: {e}");
    let e = f.set_traced_bar_ranges(&[(0, Some(0xff_f000..0x100_1000))]).unwrap_err().to_string();
    assert!(e.contains("not inside the BAR") && e.contains("0x1000000 bytes"), "{e}");
    let e = f.set_traced_bar_ranges(&[(0, Some(0x10..0x10))]).unwrap_err().to_string();
    assert!(e.contains("not inside the BAR"), "empty: {e}");
    // A refused list leaves nothing traced.
    assert!(f.traced_bar_ranges().is_empty());
}

#[test]
fn traced_accesses_appear_in_the_pci_roots_trace() {
    use std::sync::{Arc, Mutex};

    use devices::pci::{PciRoot, TraceEvent, TraceKind};

    let (mut f, fake, _) = assign(&nvme(true));
    f.set_traced_bar_ranges(&[(0, Some(0x1000..0x1008))]).unwrap();
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    root.attach_to_port(port, Box::new(f)).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    root.set_trace_hook(Some(Box::new(move |e: &TraceEvent<'_>| {
        if matches!(e.kind, TraceKind::BarRead { .. } | TraceKind::BarWrite { .. }) {
            sink.lock().unwrap().push((e.kind, e.function.to_string(), e.offset, e.size, e.value));
        }
    })));
    // Firmware's work: bus 1 behind the port, BAR0 (64-bit) at 0x1000_0000, decoding on.
    // ECAM: bus << 20 | device << 15 | function << 12 | register; the port is 00:01.0.
    let ecam = |bus: u8, device: u8, register: u16| {
        u64::from(bus) << 20 | u64::from(device) << 15 | u64::from(register)
    };
    root.ecam_write(ecam(0, 1, 0x18), &0x0001_0100u32.to_le_bytes());
    root.ecam_write(ecam(1, 0, 0x10), &0x1000_0000u32.to_le_bytes());
    root.ecam_write(ecam(1, 0, 0x14), &0u32.to_le_bytes());
    root.ecam_write(ecam(1, 0, 0x04), &2u16.to_le_bytes());
    assert!(root.mmio_write(0x1000_1000, &0xdead_beefu32.to_le_bytes()));
    let mut data = [0u8; 4];
    assert!(root.mmio_read(0x1000_1004, &mut data));
    let name = "test-dev".to_string();
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            (TraceKind::BarWrite { bar: 0 }, name.clone(), 0x1000, 4, 0xdead_beef),
            (TraceKind::BarRead { bar: 0 }, name, 0x1004, 4, 0x0706_0504),
        ]
    );
    let log = fake.log.lock().unwrap();
    assert_eq!(log.bar_writes, vec![(0, 0x1000, 0xdead_beefu32.to_le_bytes().to_vec())]);
    assert_eq!(log.bar_reads, vec![(0, 0x1004, 4)]);
}
