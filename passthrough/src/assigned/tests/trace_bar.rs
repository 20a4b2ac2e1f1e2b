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
