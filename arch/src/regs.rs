//! Boot register values for arm64 vCPUs, as data: the KVM and Hypervisor.framework backends
//! apply them.

use crate::loader::BootPlan;

/// PSTATE for entering the kernel: EL1 using SP_EL1 (EL1h), with debug, SError, IRQ and FIQ
/// masked, as booting.rst requires.
pub const PSTATE_EL1H_DAIF_MASKED: u64 = 0x3c5;

/// MPIDR_EL1 affinity fields Aff3 (bits 39:32) and Aff2..Aff0 (bits 23:0); the MT (24) and
/// U (30) bits and RES1 bit 31 are not part of a CPU's identity.
const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// Register values for the boot CPU at the kernel's entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootRegs {
    /// Program counter: the Image's load address.
    pub pc: u64,
    /// Physical address of the device tree.
    pub x0: u64,
    /// Reserved, must be 0.
    pub x1: u64,
    /// Reserved, must be 0.
    pub x2: u64,
    /// Reserved, must be 0.
    pub x3: u64,
    /// Processor state, [`PSTATE_EL1H_DAIF_MASKED`].
    pub pstate: u64,
}

/// The boot CPU's registers for `plan` (booting.rst: x0 = FDT address, x1..x3 = 0, MMU and
/// caches off, interrupts masked). Secondary CPUs are started later through PSCI CPU_ON.
pub fn boot_cpu_regs(plan: &BootPlan) -> BootRegs {
    BootRegs {
        pc: plan.kernel_load,
        x0: plan.fdt.base,
        x1: 0,
        x2: 0,
        x3: 0,
        pstate: PSTATE_EL1H_DAIF_MASKED,
    }
}

/// The `reg` value of a cpu node in the device tree for a vCPU with this MPIDR_EL1: the
/// affinity fields only, as the arm,cpus binding asks.
pub fn mpidr_to_fdt_reg(mpidr: u64) -> u64 {
    mpidr & MPIDR_AFFINITY_MASK
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{GuestRegion, MIB, RAM_BASE};

    #[test]
    fn boot_regs_follow_the_plan() {
        let plan = BootPlan {
            kernel_load: RAM_BASE,
            kernel_end: RAM_BASE + 30 * MIB,
            initrd: None,
            fdt: GuestRegion { base: RAM_BASE + 254 * MIB, size: 2 * MIB },
        };
        let regs = boot_cpu_regs(&plan);
        assert_eq!(
            regs,
            BootRegs { pc: RAM_BASE, x0: RAM_BASE + 254 * MIB, x1: 0, x2: 0, x3: 0, pstate: 0x3c5 }
        );
    }

    #[test]
    fn pstate_is_el1h_with_daif_masked() {
        // M[3:0] = 0b0101 is EL1h; D, A, I, F are bits 9..6.
        assert_eq!(PSTATE_EL1H_DAIF_MASKED & 0xf, 0b0101);
        assert_eq!(PSTATE_EL1H_DAIF_MASKED >> 6, 0b1111);
    }

    #[test]
    fn mpidr_keeps_affinity_only() {
        let cases = [
            (0x8000_0000, 0),                 // RES1 bit 31 on CPU 0
            (0x8000_0001, 1),                 // Aff0 = 1
            (0x8100_0203, 0x0203),            // MT bit dropped
            (0xc001_0000, 0x0001_0000),       // U bit dropped, Aff2 kept
            (0x7f_8012_3456, 0x7f_0012_3456), // Aff3 kept
            (u64::MAX, 0xff_00ff_ffff),
        ];
        for (mpidr, reg) in cases {
            assert_eq!(mpidr_to_fdt_reg(mpidr), reg, "{mpidr:#x}");
        }
    }
}
