//! Where the kernel, initrd and device tree go in guest RAM.
//!
//! ```text
//!   RAM start (2 MiB aligned)
//!   + text_offset            kernel Image, image_size bytes (includes BSS)
//!   ...                      free: the kernel's working memory (at least MIN_FREE_RAM)
//!   initrd                   start aligned down to 4 KiB, ends at or below the FDT
//!   RAM end - FDT_MAX_SIZE   device tree (2 MiB aligned, never crosses a 2 MiB boundary)
//! ```
//!
//! Keeping the initrd and FDT at the top leaves one large free block after the kernel, which is
//! what arm64 Linux expects (booting.rst: the memory after the Image should be usable).

use crate::image::KernelLayout;
use crate::layout::{GuestRegion, MIB};

/// Room reserved for the flattened device tree. booting.rst caps the DTB at 2 MiB and requires
/// it not to cross a 2 MiB boundary.
pub const FDT_MAX_SIZE: u64 = 2 * MIB;
/// The Image goes at a base aligned to this, plus text_offset.
pub const KERNEL_ALIGN: u64 = 2 * MIB;
/// Alignment of the initrd's start (one 4 KiB page).
pub const INITRD_ALIGN: u64 = 4096;
/// Free RAM the kernel needs besides its Image, initrd and device tree to get through early
/// boot (page tables, memblock allocations, unpacking the initramfs).
pub const MIN_FREE_RAM: u64 = 32 * MIB;

/// Where each boot component sits in guest physical memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootPlan {
    /// Load address of the Image, which is also its entry point.
    pub kernel_load: u64,
    /// One past the last byte the kernel occupies (load + image_size).
    pub kernel_end: u64,
    /// Where the initrd goes, if there is one.
    pub initrd: Option<GuestRegion>,
    /// The region reserved for the device tree.
    pub fdt: GuestRegion,
}

/// Errors planning the boot layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LoaderError {
    /// Guest RAM does not start on a 2 MiB boundary (a memory-map bug, not a user error).
    #[error("guest RAM starts at {0:#x}, which is not 2 MiB aligned; the arm64 Image must be loaded at a 2 MiB-aligned base")]
    RamMisaligned(u64),
    /// An address computation overflowed.
    #[error("{0} does not fit in the 64-bit guest physical address space; the kernel header or memory size is corrupt")]
    AddressOverflow(&'static str),
    /// The initrd file is empty.
    #[error("initrd is empty; pass a non-empty initramfs or leave out --initrd")]
    EmptyInitrd,
    /// Not enough RAM for everything plus working room.
    #[error(
        "guest memory {ram_mib} MiB is too small for the kernel ({kernel_mib} MiB){initrd_part} + \
         device tree ({fdt_mib} MiB) + {free_mib} MiB working room; use --memory {needed_mib}M or more",
        fdt_mib = FDT_MAX_SIZE / MIB,
        free_mib = MIN_FREE_RAM / MIB,
        initrd_part = match initrd_mib {
            Some(mib) => format!(" + initrd ({mib} MiB)"),
            None => String::new(),
        }
    )]
    MemoryTooSmall {
        /// Guest RAM in MiB (rounded down).
        ram_mib: u64,
        /// RAM the kernel occupies (text_offset + image_size) in MiB, rounded up.
        kernel_mib: u64,
        /// Initrd size in MiB, rounded up.
        initrd_mib: Option<u64>,
        /// The smallest --memory, in MiB, that fits everything.
        needed_mib: u64,
    },
}

/// Places the kernel, an optional initrd of `initrd_size` bytes and the device tree in `ram`.
pub fn plan_boot(
    ram: GuestRegion,
    kernel: KernelLayout,
    initrd_size: Option<u64>,
) -> Result<BootPlan, LoaderError> {
    if ram.base % KERNEL_ALIGN != 0 {
        return Err(LoaderError::RamMisaligned(ram.base));
    }
    if initrd_size == Some(0) {
        return Err(LoaderError::EmptyInitrd);
    }
    let ram_end =
        ram.base.checked_add(ram.size).ok_or(LoaderError::AddressOverflow("guest RAM"))?;
    let kernel_load = ram
        .base
        .checked_add(kernel.text_offset)
        .ok_or(LoaderError::AddressOverflow("the kernel load address"))?;
    let kernel_end = kernel_load
        .checked_add(kernel.image_size)
        .ok_or(LoaderError::AddressOverflow("the end of the kernel"))?;

    // Everything below is checked against `needed`, which is computed without touching RAM
    // addresses, so the error can say exactly how much memory would work.
    let too_small = || memory_too_small(ram, kernel, initrd_size);
    let fdt_base = ram_end
        .checked_sub(FDT_MAX_SIZE)
        .map(|top| top - top % KERNEL_ALIGN)
        .filter(|&base| base >= ram.base)
        .ok_or_else(too_small)?;
    let fdt = GuestRegion { base: fdt_base, size: FDT_MAX_SIZE };

    let initrd = match initrd_size {
        Some(size) => {
            let base = fdt_base.checked_sub(size).ok_or_else(too_small)?;
            Some(GuestRegion { base: base - base % INITRD_ALIGN, size })
        }
        None => None,
    };
    let free_start = kernel_end;
    let free_end = initrd.map_or(fdt.base, |r| r.base);
    // This also catches the initrd overlapping the kernel: the fix is the same, more memory.
    match free_end.checked_sub(free_start) {
        Some(free) if free >= MIN_FREE_RAM => {}
        _ => return Err(too_small()),
    }
    Ok(BootPlan { kernel_load, kernel_end, initrd, fdt })
}

/// The error for RAM too small, with the smallest whole-MiB size that works.
fn memory_too_small(
    ram: GuestRegion,
    kernel: KernelLayout,
    initrd_size: Option<u64>,
) -> LoaderError {
    let kernel_bytes = kernel.text_offset.saturating_add(kernel.image_size);
    // Aligning the initrd's start down to a page can cost up to a page.
    let initrd_bytes =
        initrd_size.map_or(0, |s| s.saturating_add(INITRD_ALIGN - 1) / INITRD_ALIGN * INITRD_ALIGN);
    let needed = kernel_bytes
        .saturating_add(initrd_bytes)
        .saturating_add(FDT_MAX_SIZE)
        .saturating_add(MIN_FREE_RAM);
    // The FDT sits on a 2 MiB boundary at the top, so RAM must end on one to use every byte.
    let needed_mib = needed.div_ceil(KERNEL_ALIGN) * (KERNEL_ALIGN / MIB);
    LoaderError::MemoryTooSmall {
        ram_mib: ram.size / MIB,
        kernel_mib: kernel_bytes.div_ceil(MIB),
        initrd_mib: initrd_size.map(|s| s.div_ceil(MIB)),
        needed_mib,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RAM_BASE;

    fn kernel(text_offset: u64, image_size: u64) -> KernelLayout {
        KernelLayout { text_offset, image_size }
    }

    fn ram(size: u64) -> GuestRegion {
        GuestRegion { base: RAM_BASE, size }
    }

    #[test]
    fn kernel_at_ram_start_fdt_at_top_initrd_below() {
        let plan = plan_boot(ram(256 * MIB), kernel(0, 30 * MIB), Some(10 * MIB + 5)).unwrap();
        assert_eq!(plan.kernel_load, RAM_BASE);
        assert_eq!(plan.kernel_end, RAM_BASE + 30 * MIB);
        assert_eq!(plan.fdt, GuestRegion { base: RAM_BASE + 254 * MIB, size: FDT_MAX_SIZE });
        let initrd = plan.initrd.unwrap();
        assert_eq!(initrd.size, 10 * MIB + 5);
        assert_eq!(initrd.base % INITRD_ALIGN, 0);
        assert!(initrd.end() <= plan.fdt.base);
        assert!(plan.fdt.base - initrd.end() < INITRD_ALIGN);
        assert!(initrd.base >= plan.kernel_end);
    }

    #[test]
    fn text_offset_is_respected() {
        let plan = plan_boot(ram(128 * MIB), kernel(0x8_0000, 20 * MIB), None).unwrap();
        assert_eq!(plan.kernel_load, RAM_BASE + 0x8_0000);
        assert_eq!(plan.kernel_end, RAM_BASE + 0x8_0000 + 20 * MIB);
        assert_eq!(plan.initrd, None);
        assert_eq!((plan.kernel_load - 0x8_0000) % KERNEL_ALIGN, 0);
    }

    #[test]
    fn fdt_is_2mib_aligned_even_when_ram_size_is_not() {
        let plan = plan_boot(ram(129 * MIB + 4096), kernel(0, 20 * MIB), None).unwrap();
        assert_eq!(plan.fdt.base % (2 * MIB), 0);
        assert_eq!(plan.fdt.base, RAM_BASE + 126 * MIB);
        assert!(plan.fdt.end() <= RAM_BASE + 129 * MIB + 4096);
    }

    #[test]
    fn too_small_memory_names_sizes_and_suggests_memory() {
        let err = plan_boot(ram(64 * MIB), kernel(0, 38 * MIB), Some(20 * MIB)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest memory 64 MiB is too small for the kernel (38 MiB) + initrd (20 MiB) + device \
             tree (2 MiB) + 32 MiB working room; use --memory 92M or more"
        );
        let err = plan_boot(ram(32 * MIB), kernel(0, 10 * MIB), None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "guest memory 32 MiB is too small for the kernel (10 MiB) + device tree (2 MiB) + \
             32 MiB working room; use --memory 44M or more"
        );
    }

    #[test]
    fn suggested_memory_is_the_smallest_that_works() {
        let cases = [
            (0, 38 * MIB, Some(20 * MIB)),
            (0, 38 * MIB + 1, Some(20 * MIB + 1)),
            (0x8_0000, 17 * MIB + 12345, None),
            (0, 3 * MIB, Some(1)),
            (0x20_0000 - 4096, 31 * MIB, Some(7 * MIB - 4095)),
        ];
        for (text_offset, image_size, initrd) in cases {
            let k = kernel(text_offset, image_size);
            let Err(LoaderError::MemoryTooSmall { needed_mib, .. }) =
                plan_boot(ram(MIB), k, initrd)
            else {
                panic!("1 MiB of RAM should be too small");
            };
            let plan = plan_boot(ram(needed_mib * MIB), k, initrd);
            assert!(plan.is_ok(), "{needed_mib} MiB should fit {k:?} + {initrd:?}: {plan:?}");
            for less_mib in [needed_mib - 1, needed_mib - 2] {
                let less = plan_boot(ram(less_mib * MIB), k, initrd);
                assert!(matches!(less, Err(LoaderError::MemoryTooSmall { .. })), "{less:?}");
            }
        }
    }

    #[test]
    fn exactly_min_free_ram_is_enough() {
        let k = kernel(0, 10 * MIB);
        let size = 10 * MIB + MIN_FREE_RAM + 4 * MIB + FDT_MAX_SIZE;
        let plan = plan_boot(ram(size), k, Some(4 * MIB)).unwrap();
        assert_eq!(plan.initrd.unwrap().base - plan.kernel_end, MIN_FREE_RAM);
        assert!(plan_boot(ram(size - 4096), k, Some(4 * MIB)).is_err());
    }

    #[test]
    fn initrd_overlapping_the_kernel_is_an_error() {
        let err = plan_boot(ram(64 * MIB), kernel(0, 40 * MIB), Some(30 * MIB)).unwrap_err();
        assert!(matches!(err, LoaderError::MemoryTooSmall { needed_mib: 104, .. }), "{err}");
    }

    #[test]
    fn bad_inputs() {
        let k = kernel(0, 10 * MIB);
        let misaligned = GuestRegion { base: RAM_BASE + 4096, size: 256 * MIB };
        assert_eq!(
            plan_boot(misaligned, k, None),
            Err(LoaderError::RamMisaligned(RAM_BASE + 4096))
        );
        assert_eq!(plan_boot(ram(256 * MIB), k, Some(0)), Err(LoaderError::EmptyInitrd));
        let huge = GuestRegion { base: RAM_BASE, size: u64::MAX };
        assert!(matches!(plan_boot(huge, k, None), Err(LoaderError::AddressOverflow(_))));
        let err = plan_boot(ram(256 * MIB), kernel(0, u64::MAX), None).unwrap_err();
        assert!(matches!(err, LoaderError::AddressOverflow(_)), "{err}");
        let err = plan_boot(ram(256 * MIB), k, Some(u64::MAX)).unwrap_err();
        assert!(matches!(err, LoaderError::MemoryTooSmall { .. }), "{err}");
        // No RAM at all.
        assert!(matches!(plan_boot(ram(0), k, None), Err(LoaderError::MemoryTooSmall { .. })));
    }
}
