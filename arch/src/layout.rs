//! The guest physical memory map.
//!
//! ```text
//!   0x0000_0000 ..0x0800_0000   unused (no flash: the kernel is loaded directly)
//!   0x0800_0000 ..0x0801_0000   GICv3 distributor
//!   0x0802_0000 ..0x0803_0000   GICv2m-style MSI frame (Hypervisor.framework GIC)
//!   0x0808_0000 ..0x080a_0000   GICv3 ITS (KVM)
//!   0x080a_0000 ..0x0900_0000   GICv3 redistributors, 128 KiB per vCPU (up to 123)
//!   0x0900_0000 ..0x0900_1000   PL011 UART                 SPI 1
//!   0x0901_0000 ..0x0901_1000   PL031 RTC                  SPI 2
//!   0x0902_0000 ..0x0902_1000   test-exit device
//!   0x0903_0000 ..0x0903_1000   PL061 GPIO (power key)     SPI 3
//!   0x1000_0000 ..0x3000_0000   PCIe 32-bit MMIO window (512 MiB)
//!   0x3000_0000 ..0x4000_0000   PCIe ECAM, buses 0..=255 (256 MiB)
//!   0x4000_0000 ..RAM end       guest RAM
//!   2^(ipa-1)   ..2^ipa         PCIe 64-bit prefetchable window (upper half of the IPA space)
//! ```
//!
//! The low part follows QEMU's `virt` machine so that addresses look familiar in guest logs.
//! The 64-bit window takes the upper half of the guest physical address space, so it is
//! naturally aligned for the largest BAR that fits in it (a 16 GiB GPU BAR with a 36-bit IPA).

/// 1 KiB.
pub const KIB: u64 = 1 << 10;
/// 1 MiB.
pub const MIB: u64 = 1 << 20;
/// 1 GiB.
pub const GIB: u64 = 1 << 30;

/// GICv3 distributor.
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// Size of the GICv3 distributor frame.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// GICv2m-style MSI frame used by Hypervisor.framework's in-kernel GIC.
pub const GIC_MSI_FRAME_BASE: u64 = 0x0802_0000;
/// Size of the MSI frame.
pub const GIC_MSI_FRAME_SIZE: u64 = 0x1_0000;
/// First INTID the MSI frame raises: SPIs 64 and up stay clear of the SPIs wired to devices
/// (below [`FIRST_FREE_SPI`] + 16). The frame's `MSI_TYPER` and the device tree say so.
pub const GIC_MSI_FRAME_FIRST_INTID: u32 = 32 + 64;
/// How many INTIDs (one per MSI vector) the MSI frame raises; the range ends inside
/// [`GIC_NR_IRQS`].
pub const GIC_MSI_FRAME_INTIDS: u32 = 128;
/// GICv3 ITS (KVM).
pub const GIC_ITS_BASE: u64 = 0x0808_0000;
/// Size of the ITS frames (control + translation).
pub const GIC_ITS_SIZE: u64 = 0x2_0000;
/// First GICv3 redistributor.
pub const GIC_REDIST_BASE: u64 = 0x080a_0000;
/// One redistributor (RD_base + SGI_base frames) per vCPU.
pub const GIC_REDIST_SIZE_PER_CPU: u64 = 0x2_0000;
/// End of the redistributor region.
pub const GIC_REDIST_END: u64 = 0x0900_0000;
/// The most vCPUs whose redistributors fit below [`GIC_REDIST_END`].
pub const MAX_VCPUS: u32 = ((GIC_REDIST_END - GIC_REDIST_BASE) / GIC_REDIST_SIZE_PER_CPU) as u32;

/// PL011 UART.
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the UART frame.
pub const UART_SIZE: u64 = 0x1000;
/// PL031 RTC.
pub const RTC_BASE: u64 = 0x0901_0000;
/// Size of the RTC frame.
pub const RTC_SIZE: u64 = 0x1000;
/// Aperture's test-exit device (see `devices::test_exit`).
pub const TEST_EXIT_BASE: u64 = 0x0902_0000;
/// Size of the test-exit frame.
pub const TEST_EXIT_SIZE: u64 = 0x1000;
/// PL061 GPIO controller, whose line [`POWER_KEY_GPIO_LINE`] is the guest's power key.
pub const GPIO_BASE: u64 = 0x0903_0000;
/// Size of the GPIO frame.
pub const GPIO_SIZE: u64 = 0x1000;
/// The PL061 line wired to the `gpio-keys` power key (line 3, as on QEMU's `virt`).
pub const POWER_KEY_GPIO_LINE: u32 = 3;

/// GIC interrupt numbering: SPI n is INTID 32 + n; the device tree uses n.
pub const UART_SPI: u32 = 1;
/// PL031 interrupt (SPI number, not INTID).
pub const RTC_SPI: u32 = 2;
/// PL061 interrupt (SPI number, not INTID).
pub const GPIO_SPI: u32 = 3;
/// First SPI handed out to PCI INTx and other devices that come later.
pub const FIRST_FREE_SPI: u32 = 16;
/// Interrupt lines the GIC is created with when MSIs go through an MSI frame
/// (Hypervisor.framework), whose SPIs they are (multiple of 32, includes the 32 private
/// INTIDs).
pub const GIC_NR_IRQS: u32 = 256;
/// Interrupt lines the GIC is created with when it has an ITS (KVM): MSIs are LPIs, so only
/// the wired SPIs (below [`FIRST_FREE_SPI`] + 16) are needed. Every SPI costs the guest's GIC
/// driver distributor writes at boot, each a trap to the hypervisor (with 224 SPIs about 300
/// more than with 32), before the guest's clock even starts.
pub const GIC_NR_IRQS_ITS: u32 = 64;

/// The interrupt lines of a GIC with an ITS (`its`) or with an MSI frame.
pub const fn gic_nr_irqs(its: bool) -> u32 {
    if its {
        GIC_NR_IRQS_ITS
    } else {
        GIC_NR_IRQS
    }
}
/// PCI INTA..INTD of the host bridge (level-triggered SPIs). A function raising pin `P`
/// (1 = INTA) at bus-0 slot `S`, or behind the root port at slot `S` (device 0 there, so the
/// bridge swizzle keeps the pin), signals `PCI_INTX_SPIS[(S + P - 1) % 4]`.
pub const PCI_INTX_SPIS: [u32; 4] =
    [FIRST_FREE_SPI, FIRST_FREE_SPI + 1, FIRST_FREE_SPI + 2, FIRST_FREE_SPI + 3];

/// The SPI that pin `pin` (1 = INTA .. 4 = INTD) of bus-0 slot `slot` signals, or `None` for
/// pin 0 (no INTx) or a pin out of range.
pub fn pci_intx_spi(slot: u8, pin: u8) -> Option<u32> {
    if !(1..=4).contains(&pin) {
        return None;
    }
    let index = (usize::from(slot) + usize::from(pin) - 1) % PCI_INTX_SPIS.len();
    PCI_INTX_SPIS.get(index).copied()
}

/// Arch timer PPIs (device tree numbering: INTID - 16).
pub const TIMER_PPI_SECURE_PHYS: u32 = 13;
/// Non-secure EL1 physical timer PPI.
pub const TIMER_PPI_NONSECURE_PHYS: u32 = 14;
/// EL1 virtual timer PPI.
pub const TIMER_PPI_VIRT: u32 = 11;
/// EL2 (hypervisor) physical timer PPI.
pub const TIMER_PPI_HYP: u32 = 10;

/// PCIe 32-bit MMIO window.
pub const PCI_MMIO32_BASE: u64 = 0x1000_0000;
/// Size of the 32-bit window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCIe enhanced configuration access mechanism (ECAM) region.
pub const PCI_ECAM_BASE: u64 = 0x3000_0000;
/// Size of ECAM: 1 MiB per bus, 256 buses.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;

/// Guest RAM starts here.
pub const RAM_BASE: u64 = 0x4000_0000;

/// Smallest guest physical address size (bits) Aperture runs with (Hypervisor.framework's default).
pub const MIN_IPA_BITS: u32 = 36;
/// The largest guest physical address size Aperture asks for. 40 bits is the most M-series
/// Macs offer, so both backends see the same map.
pub const PREFERRED_IPA_BITS: u32 = 40;

/// A range of guest physical addresses, `[base, base + size)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRegion {
    /// First address.
    pub base: u64,
    /// Length in bytes.
    pub size: u64,
}

impl GuestRegion {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }
}

/// Errors about the memory map.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayoutError {
    /// The guest physical address space is too small for the RAM asked for.
    #[error(
        "{ram_mib} MiB of guest RAM does not fit below the PCIe 64-bit window at {window_base:#x} \
         with a {ipa_bits}-bit guest physical address space; use at most {max_mib} MiB of --memory"
    )]
    RamTooLarge {
        /// RAM asked for.
        ram_mib: u64,
        /// Where the 64-bit window starts.
        window_base: u64,
        /// IPA size in bits.
        ipa_bits: u32,
        /// The largest RAM that fits.
        max_mib: u64,
    },
    /// The 64-bit BARs of the assigned devices do not fit in the largest window.
    #[error(
        "the assigned devices' 64-bit BARs need {needed_mib} MiB (the largest {largest_mib} MiB), \
         but the PCIe 64-bit window holds {window_mib} MiB with a {ipa_bits}-bit guest physical \
         address space, the most this host offers; shrink the GPU's Resizable BAR or assign \
         fewer devices"
    )]
    BarsDoNotFit {
        /// All BARs, each rounded up to a power of two.
        needed_mib: u64,
        /// The largest BAR.
        largest_mib: u64,
        /// The window at `ipa_bits`.
        window_mib: u64,
        /// The largest IPA size tried.
        ipa_bits: u32,
    },
    /// The IPA size is outside what Aperture supports.
    #[error("a {0}-bit guest physical address space is not supported (need {MIN_IPA_BITS} to 52)")]
    BadIpaBits(u32),
    /// Too many vCPUs for the redistributor region.
    #[error("{0} vCPUs asked for; the GIC redistributor region holds at most {MAX_VCPUS}")]
    TooManyVcpus(u32),
}

/// The memory map of one VM: fixed regions above, plus RAM and the 64-bit window that depend
/// on the RAM size and the host's guest physical address size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Guest RAM.
    pub ram: GuestRegion,
    /// The GICv3 redistributors for all vCPUs.
    pub gic_redists: GuestRegion,
    /// PCIe 64-bit prefetchable MMIO window.
    pub pci_mmio64: GuestRegion,
    /// Guest physical address size in bits.
    pub ipa_bits: u32,
}

impl MemoryLayout {
    /// Lays out `ram_size` bytes of RAM for `vcpus` vCPUs in an `ipa_bits` address space.
    pub fn new(ram_size: u64, vcpus: u32, ipa_bits: u32) -> Result<Self, LayoutError> {
        if !(MIN_IPA_BITS..=52).contains(&ipa_bits) {
            return Err(LayoutError::BadIpaBits(ipa_bits));
        }
        if vcpus > MAX_VCPUS {
            return Err(LayoutError::TooManyVcpus(vcpus));
        }
        let window_base = 1u64 << (ipa_bits - 1);
        let window_size = 1u64 << (ipa_bits - 1);
        let ram = GuestRegion { base: RAM_BASE, size: ram_size };
        if ram.end() > window_base {
            return Err(LayoutError::RamTooLarge {
                ram_mib: ram_size / MIB,
                window_base,
                ipa_bits,
                max_mib: (window_base - RAM_BASE) / MIB,
            });
        }
        Ok(Self {
            ram,
            gic_redists: GuestRegion {
                base: GIC_REDIST_BASE,
                size: u64::from(vcpus) * GIC_REDIST_SIZE_PER_CPU,
            },
            pci_mmio64: GuestRegion { base: window_base, size: window_size },
            ipa_bits,
        })
    }
}

/// The smallest guest physical address size, from [`MIN_IPA_BITS`] to `max_bits`, whose map
/// holds `ram_size` bytes of RAM and whose 64-bit window holds every BAR in `bars` (sizes in
/// bytes), each naturally aligned.
///
/// Small is better: 36 bits is Hypervisor.framework's default and, with 16 KiB pages, needs
/// one stage-2 translation level less than 40 (openvmm measured the difference). Placed
/// largest first, power-of-two BARs pack without gaps, so they fit exactly when their sum
/// does.
pub fn smallest_ipa_bits(ram_size: u64, bars: &[u64], max_bits: u32) -> Result<u32, LayoutError> {
    let max_bits = max_bits.clamp(MIN_IPA_BITS, 52);
    let rounded = bars.iter().map(|&size| size.max(1).checked_next_power_of_two());
    let needed = rounded.clone().try_fold(0u64, |sum, size| sum.checked_add(size?));
    let largest = rounded.clone().try_fold(0u64, |max, size| Some(max.max(size?)));
    for bits in MIN_IPA_BITS..=max_bits {
        let window = 1u64 << (bits - 1);
        let ram_fits = RAM_BASE.checked_add(ram_size).is_some_and(|end| end <= window);
        if ram_fits && needed.is_some_and(|needed| needed <= window) {
            return Ok(bits);
        }
    }
    // Name what does not fit at the largest size.
    MemoryLayout::new(ram_size, 1, max_bits)?;
    Err(LayoutError::BarsDoNotFit {
        needed_mib: needed.unwrap_or(u64::MAX) / MIB,
        largest_mib: largest.unwrap_or(u64::MAX) / MIB,
        window_mib: (1u64 << (max_bits - 1)) / MIB,
        ipa_bits: max_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_ipa_that_holds_ram_and_bars() {
        assert_eq!(smallest_ipa_bits(GIB, &[], 40), Ok(36), "the default fits a small VM");
        // 31 GiB of RAM ends at 32 GiB, the 36-bit window's base; one more needs 37 bits.
        assert_eq!(smallest_ipa_bits(31 * GIB, &[], 40), Ok(36));
        assert_eq!(smallest_ipa_bits(32 * GIB, &[], 40), Ok(37));
        // A GPU with a 16 MiB BAR and a 16 GiB one fits 36 bits (32 GiB window) ...
        assert_eq!(smallest_ipa_bits(8 * GIB, &[16 * MIB, 16 * GIB], 40), Ok(36));
        // ... a 32 GiB Resizable BAR plus the rest does not, 37 does.
        assert_eq!(smallest_ipa_bits(8 * GIB, &[32 * GIB, 16 * MIB], 40), Ok(37));
        // Sizes that are not powers of two take their natural alignment.
        assert_eq!(smallest_ipa_bits(GIB, &[20 * GIB, 10 * GIB], 40), Ok(37));
        // The host's maximum bounds the search.
        assert_eq!(smallest_ipa_bits(GIB, &[], 36), Ok(36));
    }

    #[test]
    fn bars_that_do_not_fit_fail_early_and_say_so() {
        let err = smallest_ipa_bits(GIB, &[256 * GIB, 256 * GIB, 16 * MIB], 40).unwrap_err();
        assert_eq!(
            err,
            LayoutError::BarsDoNotFit {
                needed_mib: 512 * 1024 + 16,
                largest_mib: 256 * 1024,
                window_mib: 512 * 1024,
                ipa_bits: 40
            }
        );
        assert!(err.to_string().contains("Resizable BAR"), "{err}");
        // Too much RAM is named as such.
        let err = smallest_ipa_bits(600 * GIB, &[], 40).unwrap_err();
        assert!(matches!(err, LayoutError::RamTooLarge { ipa_bits: 40, .. }), "{err}");
        assert!(smallest_ipa_bits(GIB, &[u64::MAX], 40).is_err(), "no overflow");
    }

    #[test]
    fn fixed_regions_do_not_overlap() {
        let mut regions = [
            (GIC_DIST_BASE, GIC_DIST_SIZE),
            (GIC_MSI_FRAME_BASE, GIC_MSI_FRAME_SIZE),
            (GIC_ITS_BASE, GIC_ITS_SIZE),
            (GIC_REDIST_BASE, GIC_REDIST_END - GIC_REDIST_BASE),
            (UART_BASE, UART_SIZE),
            (RTC_BASE, RTC_SIZE),
            (TEST_EXIT_BASE, TEST_EXIT_SIZE),
            (GPIO_BASE, GPIO_SIZE),
            (PCI_MMIO32_BASE, PCI_MMIO32_SIZE),
            (PCI_ECAM_BASE, PCI_ECAM_SIZE),
        ];
        regions.sort();
        for pair in regions.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?} overlap");
        }
        let last = regions[regions.len() - 1];
        assert!(last.0 + last.1 <= RAM_BASE);
    }

    #[test]
    fn window_is_upper_half_of_ipa_space() {
        let l = MemoryLayout::new(GIB, 2, 36).unwrap();
        assert_eq!(l.pci_mmio64, GuestRegion { base: 32 * GIB, size: 32 * GIB });
        assert_eq!(l.gic_redists.size, 2 * GIC_REDIST_SIZE_PER_CPU);
        let l = MemoryLayout::new(GIB, 1, 40).unwrap();
        assert_eq!(l.pci_mmio64.base, 512 * GIB);
        // A 16 GiB BAR fits naturally aligned in the smallest window.
        assert_eq!(l.pci_mmio64.base % (16 * GIB), 0);
    }

    #[test]
    fn ram_must_end_below_window() {
        assert!(MemoryLayout::new(31 * GIB, 1, 36).is_ok());
        let err = MemoryLayout::new(32 * GIB, 1, 36).unwrap_err();
        assert!(matches!(err, LayoutError::RamTooLarge { max_mib: 31744, .. }), "{err}");
        assert!(err.to_string().contains("--memory"));
    }

    #[test]
    fn pci_intx_spis_swizzle_and_fit_the_gic() {
        const _: () = assert!(PCI_INTX_SPIS[3] + 32 < GIC_NR_IRQS);
        const _: () = assert!(PCI_INTX_SPIS[3] + 32 < GIC_NR_IRQS_ITS);
        assert!(PCI_INTX_SPIS.iter().all(|&spi| spi >= FIRST_FREE_SPI));
        assert!(![UART_SPI, RTC_SPI, GPIO_SPI].iter().any(|spi| PCI_INTX_SPIS.contains(spi)));
        assert_eq!(pci_intx_spi(0, 1), Some(16));
        assert_eq!(pci_intx_spi(1, 1), Some(17));
        assert_eq!(pci_intx_spi(3, 2), Some(16));
        assert_eq!(pci_intx_spi(5, 4), Some(16));
        assert_eq!(pci_intx_spi(31, 1), Some(19));
        assert_eq!(pci_intx_spi(1, 0), None);
        assert_eq!(pci_intx_spi(1, 5), None);
    }

    #[test]
    fn a_gic_with_an_its_has_only_the_wired_spis() {
        assert_eq!(gic_nr_irqs(true), 64);
        assert_eq!(gic_nr_irqs(false), GIC_NR_IRQS);
        // Every wired SPI, and the room kept for later ones, fits both.
        for its in [true, false] {
            let lines = gic_nr_irqs(its);
            assert_eq!(lines % 32, 0);
            for spi in [UART_SPI, RTC_SPI, GPIO_SPI, PCI_INTX_SPIS[3], FIRST_FREE_SPI + 15] {
                assert!(32 + spi < lines, "SPI {spi} with its={its}");
            }
        }
    }

    #[test]
    fn msi_frame_intids_are_spis_of_their_own() {
        const END: u32 = GIC_MSI_FRAME_FIRST_INTID + GIC_MSI_FRAME_INTIDS;
        const _: () = assert!(END <= GIC_NR_IRQS);
        let wired =
            [UART_SPI, RTC_SPI, GPIO_SPI, PCI_INTX_SPIS[0], PCI_INTX_SPIS[3], FIRST_FREE_SPI + 15];
        for spi in wired {
            assert!(32 + spi < GIC_MSI_FRAME_FIRST_INTID, "SPI {spi} is in the MSI range");
        }
    }

    #[test]
    fn limits_on_vcpus_and_ipa() {
        assert_eq!(MAX_VCPUS, 123);
        assert!(MemoryLayout::new(GIB, 124, 40).is_err());
        assert!(MemoryLayout::new(GIB, 1, 35).is_err());
        assert!(MemoryLayout::new(GIB, 1, 53).is_err());
    }
}
