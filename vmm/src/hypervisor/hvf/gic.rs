//! The in-kernel GICv3 of Hypervisor.framework (macOS 15): Aperture's fixed frames
//! (`arch::layout`) checked against the sizes, alignments and SPI range the framework reports.
//! The GIC must exist before any vCPU, so the backend creates it with the VM from this plan and
//! later checks the VMM's [`GicSpec`] against it. The plan is all Aperture keeps of the GIC:
//! the guest cannot change it, and the MSI frame's state is the framework's, so a reboot in
//! place resets the GIC with `hv_gic_reset` alone.

use arch::layout;

use crate::hypervisor::GicSpec;

/// What Hypervisor.framework reports about its GIC (`hv_gic_get_*`). Sizes and alignments in
/// bytes; the SPI range in INTIDs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicLimits {
    /// Distributor frame size.
    pub dist_size: u64,
    /// Required distributor base alignment.
    pub dist_align: u64,
    /// Size of the redistributor region: one redistributor per vCPU the VM may have.
    pub redist_region_size: u64,
    /// Required redistributor base alignment.
    pub redist_align: u64,
    /// MSI frame size.
    pub msi_size: u64,
    /// Required MSI frame base alignment.
    pub msi_align: u64,
    /// First SPI INTID.
    pub spi_base: u32,
    /// Number of SPIs.
    pub spi_count: u32,
}

/// Where the GIC goes and which SPIs its MSI frame raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GicPlan {
    /// Distributor base.
    pub dist_base: u64,
    /// Redistributor region base.
    pub redist_base: u64,
    /// Redistributor region size, as the framework reports it.
    pub redist_region_size: u64,
    /// MSI frame base.
    pub msi_base: u64,
    /// First INTID of the MSI range.
    pub msi_first_intid: u32,
    /// Number of INTIDs in the MSI range.
    pub msi_count: u32,
}

/// Why Hypervisor.framework's GIC cannot serve Aperture's memory map or the VM's GIC.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GicPlanError {
    /// A frame is larger than the room the memory map has for it.
    #[error(
        "Hypervisor.framework's GIC {frame} is {size:#x} bytes, more than the {room:#x} \
         Aperture's memory map has for it at {base:#x}; please report this with your macOS \
         version"
    )]
    FrameTooLarge {
        /// Which frame.
        frame: &'static str,
        /// Its size as the framework reports it.
        size: u64,
        /// The room for it.
        room: u64,
        /// Where Aperture puts it.
        base: u64,
    },
    /// A frame's base does not meet the framework's alignment.
    #[error(
        "Hypervisor.framework needs the GIC {frame} aligned to {align:#x}, and Aperture puts it \
         at {base:#x}; please report this with your macOS version"
    )]
    FrameMisaligned {
        /// Which frame.
        frame: &'static str,
        /// The alignment the framework needs.
        align: u64,
        /// Where Aperture puts it.
        base: u64,
    },
    /// The SPI range does not cover the wired interrupts and the MSI range.
    #[error(
        "Hypervisor.framework's GIC offers SPI INTIDs {offered_start}..{offered_end}, and \
         Aperture needs {needed_start}..{needed_end} (devices up to INTID {LAST_WIRED_INTID}, \
         MSIs from {msi_start}); please report this with your macOS version"
    )]
    SpiRange {
        /// First SPI INTID offered.
        offered_start: u32,
        /// End of the offered range.
        offered_end: u64,
        /// First INTID Aperture wires.
        needed_start: u32,
        /// End of the needed range.
        needed_end: u64,
        /// First MSI INTID.
        msi_start: u32,
    },
    /// The VM's GIC frames are not where the GIC was created.
    #[error(
        "the GIC was created with its distributor at {created_dist:#x} and redistributors at \
         {created_redist:#x}, but the VM asks for {asked_dist:#x} and {asked_redist:#x}"
    )]
    Moved {
        /// Distributor base the GIC has.
        created_dist: u64,
        /// Redistributor base the GIC has.
        created_redist: u64,
        /// Distributor base asked for.
        asked_dist: u64,
        /// Redistributor base asked for.
        asked_redist: u64,
    },
    /// More redistributors than the framework's GIC has.
    #[error(
        "the VM needs {needed:#x} bytes of redistributors, and Hypervisor.framework's GIC has \
         {available:#x} (one per vCPU it supports): use fewer --cpus"
    )]
    TooManyVcpus {
        /// Redistributor bytes asked for.
        needed: u64,
        /// Redistributor bytes the GIC has.
        available: u64,
    },
    /// An ITS was asked for.
    #[error(
        "Hypervisor.framework's GIC has no ITS (asked for one at {its:#x}); MSIs go through its \
         MSI frame"
    )]
    NoIts {
        /// Where it was asked for.
        its: u64,
    },
}

/// The highest INTID wired to a device (UART, RTC, PCI INTx, and room for later ones).
const LAST_WIRED_INTID: u32 = 32 + layout::FIRST_FREE_SPI + 15;

fn aligned(base: u64, align: u64) -> bool {
    align <= 1 || base % align == 0
}

/// Plans the GIC at Aperture's fixed addresses, or says which of the framework's values does
/// not fit the memory map.
pub fn plan(limits: &GicLimits) -> Result<GicPlan, GicPlanError> {
    let frames = [
        (
            "distributor",
            layout::GIC_DIST_BASE,
            limits.dist_size,
            layout::GIC_DIST_SIZE,
            limits.dist_align,
        ),
        (
            "redistributor region",
            layout::GIC_REDIST_BASE,
            limits.redist_region_size,
            layout::GIC_REDIST_END - layout::GIC_REDIST_BASE,
            limits.redist_align,
        ),
        (
            "MSI frame",
            layout::GIC_MSI_FRAME_BASE,
            limits.msi_size,
            layout::GIC_MSI_FRAME_SIZE,
            limits.msi_align,
        ),
    ];
    for (what, base, size, room, align) in frames {
        if size > room {
            return Err(GicPlanError::FrameTooLarge { frame: what, size, room, base });
        }
        if !aligned(base, align) {
            return Err(GicPlanError::FrameMisaligned { frame: what, align, base });
        }
    }
    let spi_end = u64::from(limits.spi_base) + u64::from(limits.spi_count);
    let msi_end =
        u64::from(layout::GIC_MSI_FRAME_FIRST_INTID) + u64::from(layout::GIC_MSI_FRAME_INTIDS);
    if limits.spi_base > 32 + layout::UART_SPI.min(layout::RTC_SPI) || spi_end < msi_end {
        return Err(GicPlanError::SpiRange {
            offered_start: limits.spi_base,
            offered_end: spi_end,
            needed_start: 32 + layout::UART_SPI.min(layout::RTC_SPI),
            needed_end: msi_end,
            msi_start: layout::GIC_MSI_FRAME_FIRST_INTID,
        });
    }
    Ok(GicPlan {
        dist_base: layout::GIC_DIST_BASE,
        redist_base: layout::GIC_REDIST_BASE,
        redist_region_size: limits.redist_region_size,
        msi_base: layout::GIC_MSI_FRAME_BASE,
        msi_first_intid: layout::GIC_MSI_FRAME_FIRST_INTID,
        msi_count: layout::GIC_MSI_FRAME_INTIDS,
    })
}

/// Checks the GIC the VMM asks for against the one created from `plan`.
pub fn check_spec(plan: &GicPlan, spec: &GicSpec) -> Result<(), GicPlanError> {
    if spec.dist_base != plan.dist_base || spec.redist_base != plan.redist_base {
        return Err(GicPlanError::Moved {
            created_dist: plan.dist_base,
            created_redist: plan.redist_base,
            asked_dist: spec.dist_base,
            asked_redist: spec.redist_base,
        });
    }
    if spec.redist_size > plan.redist_region_size {
        return Err(GicPlanError::TooManyVcpus {
            needed: spec.redist_size,
            available: plan.redist_region_size,
        });
    }
    if let Some(its) = spec.its_base {
        return Err(GicPlanError::NoIts { its });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plausible macOS 15 values (64 KiB frames, 64 vCPUs of 128 KiB redistributors).
    fn macos15() -> GicLimits {
        GicLimits {
            dist_size: 0x1_0000,
            dist_align: 0x1_0000,
            redist_region_size: 64 * 0x2_0000,
            redist_align: 0x2_0000,
            msi_size: 0x1_0000,
            msi_align: 0x1_0000,
            spi_base: 32,
            spi_count: 988,
        }
    }

    #[test]
    fn fixed_layout_fits() {
        let plan = plan(&macos15()).unwrap();
        assert_eq!(plan.dist_base, 0x0800_0000);
        assert_eq!(plan.redist_base, 0x080a_0000);
        assert_eq!(plan.msi_base, 0x0802_0000);
        assert_eq!((plan.msi_first_intid, plan.msi_count), (96, 128));
        assert_eq!(plan.redist_region_size, 0x80_0000);
    }

    #[test]
    fn values_that_do_not_fit_are_named() {
        let mut l = macos15();
        l.redist_region_size = 0x100_0000;
        let err = plan(&l).unwrap_err().to_string();
        assert!(err.contains("redistributor region is 0x1000000 bytes"), "{err}");
        let mut l = macos15();
        l.redist_align = 0x10_0000;
        assert!(plan(&l).unwrap_err().to_string().contains("aligned to 0x100000"));
        let mut l = macos15();
        l.msi_size = 0x2_0000;
        assert!(plan(&l).unwrap_err().to_string().contains("MSI frame"));
        let mut l = macos15();
        l.spi_count = 100;
        let err = plan(&l).unwrap_err().to_string();
        assert!(err.contains("SPI INTIDs 32..132") && err.contains("33..224"), "{err}");
        // Zero alignment means none.
        let mut l = macos15();
        l.dist_align = 0;
        assert!(plan(&l).is_ok());
    }

    #[test]
    fn the_vmm_spec_must_match() {
        let plan = plan(&macos15()).unwrap();
        let spec = GicSpec {
            dist_base: layout::GIC_DIST_BASE,
            redist_base: layout::GIC_REDIST_BASE,
            redist_size: 4 * layout::GIC_REDIST_SIZE_PER_CPU,
            its_base: None,
            nr_irqs: layout::GIC_NR_IRQS,
        };
        assert!(check_spec(&plan, &spec).is_ok());
        let err = check_spec(&plan, &GicSpec { redist_size: 0x100_0000, ..spec })
            .unwrap_err()
            .to_string();
        assert!(err.contains("use fewer --cpus"), "{err}");
        let err = check_spec(&plan, &GicSpec { its_base: Some(0x0808_0000), ..spec })
            .unwrap_err()
            .to_string();
        assert!(err.contains("no ITS"), "{err}");
        let err = check_spec(&plan, &GicSpec { dist_base: 0, ..spec }).unwrap_err().to_string();
        assert!(err.contains("distributor"), "{err}");
    }
}
