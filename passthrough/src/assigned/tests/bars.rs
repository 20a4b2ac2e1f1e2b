//! Mappable BAR ranges and trapped BAR accesses.

use devices::pci::PciFunction;

use super::fake::{assign, gpu, nvme, region, ConfigBuilder, GPU_PBA, GPU_TABLE};
use super::{bar_read32, read32, write32};
use crate::assigned::bars::mappable_ranges;

#[test]
fn table_in_bar0_is_carved_out() {
    let (f, _, _) = assign(&nvme(false));
    assert_eq!(f.mappable_bar_ranges(0, 4096), vec![(0, 0x2000)]);
    // One 16 KiB page holds the table: nothing can be mapped.
    assert!(f.mappable_bar_ranges(0, 16384).is_empty());
    assert!(f.mappable_bar_ranges(1, 4096).is_empty(), "upper half of BAR0");
    assert!(f.mappable_bar_ranges(6, 4096).is_empty(), "the ROM is trapped");
}

#[test]
fn exclusive_msix_bar_leaves_bar0_whole() {
    let (f, _, _) = assign(&nvme(true));
    assert_eq!(f.mappable_bar_ranges(0, 4096), vec![(0, 0x4000)]);
    assert_eq!(f.mappable_bar_ranges(0, 16384), vec![(0, 0x4000)]);
    assert!(f.mappable_bar_ranges(4, 4096).is_empty());
}

#[test]
fn gpu_bars_with_4k_and_16k_pages() {
    let (f, _, _) = assign(&gpu());
    let end = 16 << 20;
    // NVIDIA's configuration mirror at 0x88000 is trapped as well as the MSI-X table and PBA.
    assert_eq!(
        f.mappable_bar_ranges(0, 4096),
        vec![
            (0, 0x88000),
            (0x89000, GPU_TABLE - 0x89000),
            (GPU_TABLE + 0x1000, GPU_PBA - GPU_TABLE - 0x1000),
            (GPU_PBA + 0x1000, end - GPU_PBA - 0x1000)
        ]
    );
    assert_eq!(
        f.mappable_bar_ranges(0, 16384),
        vec![
            (0, 0x88000),
            (0x8c000, GPU_TABLE - 0x8c000),
            (GPU_TABLE + 0x4000, GPU_PBA - GPU_TABLE - 0x4000),
            (GPU_PBA + 0x4000, end - GPU_PBA - 0x4000)
        ]
    );
    assert_eq!(f.mappable_bar_ranges(1, 16384), vec![(0, 256 << 20)]);
    assert_eq!(f.mappable_bar_ranges(3, 4096), vec![(0, 32 << 20)]);
    assert!(f.mappable_bar_ranges(5, 4096).is_empty(), "I/O BAR not offered");
}

#[test]
fn mappable_ranges_edge_cases() {
    // Table and PBA in one page; a range crossing a page boundary.
    assert_eq!(
        mappable_ranges(0x4000, &[0x1000..0x1010, 0x1800..0x1808], 0x1000),
        vec![(0, 0x1000), (0x2000, 0x2000)]
    );
    assert_eq!(
        mappable_ranges(0x4000, std::slice::from_ref(&(0xff8..0x1008)), 0x1000),
        vec![(0x2000, 0x2000)]
    );
    assert_eq!(
        mappable_ranges(0x4000, std::slice::from_ref(&(0x3ff0..0x4000)), 0x1000),
        vec![(0, 0x3000)]
    );
    assert!(mappable_ranges(0x800, &[], 0x1000).is_empty(), "sub-page");
    assert!(mappable_ranges(0x4000, &[], 3000).is_empty(), "bad page size");
}

fn small_bar_device(mmappable: bool) -> ConfigBuilder {
    let mut b = ConfigBuilder::new(0x1af4, 0x1000, 0x020000, 0);
    let mut info = region(0x100);
    info.mmappable = mmappable;
    b.bar(2, 0xfe00_0000, info);
    b.bar(0, 0xfd00_0000, {
        let mut r = region(0x2000);
        r.mmappable = mmappable;
        r
    });
    b
}

#[test]
fn sub_page_bars_are_trapped_and_rounded_up() {
    let (mut f, fake, _) = assign(&small_bar_device(true));
    write32(&mut f, 0x18, u32::MAX);
    assert_eq!(read32(&mut f, 0x18), 0xffff_f000, "256 bytes offered as 4 KiB");
    assert!(f.mappable_bar_ranges(2, 4096).is_empty());
    assert_eq!(f.mappable_bar_ranges(0, 4096), vec![(0, 0x2000)]);
    assert!(f.mappable_bar_ranges(0, 16384).is_empty());
    // Inside the host region: trapped through the host. Past it: nothing answers.
    assert_eq!(bar_read32(&mut f, 2, 0xfc), u32::from_le_bytes([0xfe, 0xff, 0xfc, 0xfd]));
    assert_eq!(bar_read32(&mut f, 2, 0x100), u32::MAX);
    f.bar_write(2, 0x100, &[1, 2, 3, 4]);
    f.bar_write(2, 0x10, &[1, 2, 3, 4]);
    assert_eq!(fake.log.lock().unwrap().bar_writes, vec![(2, 0x10, vec![1, 2, 3, 4])]);
}

#[test]
fn regions_the_host_cannot_mmap_are_not_mappable() {
    let (f, _, _) = assign(&small_bar_device(false));
    assert!(f.mappable_bar_ranges(0, 4096).is_empty());
}
