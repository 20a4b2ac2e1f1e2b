//! Boot register values for arm64 vCPUs, as data: the KVM and Hypervisor.framework backends
//! apply them.

use crate::loader::BootPlan;

/// PSTATE for entering the kernel: EL1 using SP_EL1 (EL1h), with debug, SError, IRQ and FIQ
/// masked, as booting.rst requires.
pub const PSTATE_EL1H_DAIF_MASKED: u64 = 0x3c5;

/// MPIDR_EL1 affinity fields Aff3 (bits 39:32) and Aff2..Aff0 (bits 23:0); the MT (24) and
/// U (30) bits and RES1 bit 31 are not part of a CPU's identity.
const MPIDR_AFFINITY_MASK: u64 = 0xff_00ff_ffff;

/// SCTLR_EL1 bits a CPU entered through PSCI CPU_ON must have clear: M (stage-1 MMU), A
/// (alignment checks), C (data cache) and EE (big-endian data at EL1).
const SCTLR_EL1_CPU_ON_CLEAR: u64 = (1 << 0) | (1 << 1) | (1 << 2) | (1 << 25);

/// MPIDR_EL1 RES1 bit 31.
const MPIDR_RES1: u64 = 1 << 31;

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

/// MPIDR_EL1 of vCPU `index` where the backend chooses it (Hypervisor.framework): KVM's
/// scheme, so both backends show the guest the same topology. Aff0 takes 16 vCPUs, because a
/// GICv3 SGI names its targets with a 16-bit list per Aff1 cluster; then Aff1, then Aff2.
pub fn mpidr_for_vcpu(index: u32) -> u64 {
    let index = u64::from(index);
    MPIDR_RES1 | (index & 0xf) | (((index >> 4) & 0xff) << 8) | (((index >> 12) & 0xff) << 16)
}

/// SCTLR_EL1 for a vCPU started by PSCI CPU_ON: `current` with the MMU, the data cache,
/// alignment checks and big-endian data off, as PSCI and booting.rst require on entry. Other
/// bits (RES1 bits included) are kept. A vCPU that was on before (CPU_OFF, then CPU_ON again)
/// would otherwise start with its old MMU settings.
pub fn sctlr_el1_for_cpu_on(current: u64) -> u64 {
    current & !SCTLR_EL1_CPU_ON_CLEAR
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

    #[test]
    fn mpidr_scheme_matches_kvm() {
        // KVM's reset_mpidr(): Aff0 = id & 0xf, Aff1 = (id >> 4) & 0xff, Aff2 = (id >> 12).
        let cases = [(0, 0x8000_0000), (1, 0x8000_0001), (15, 0x8000_000f), (16, 0x8000_0100)];
        for (index, mpidr) in cases {
            assert_eq!(mpidr_for_vcpu(index), mpidr, "vCPU {index}");
        }
        assert_eq!(mpidr_for_vcpu(122), 0x8000_070a);
        assert_eq!(mpidr_for_vcpu(0x1234), 0x8001_2304);
        // The device tree sees the affinity without bit 31.
        assert_eq!(mpidr_to_fdt_reg(mpidr_for_vcpu(17)), 0x101);
    }

    #[test]
    fn cpu_on_turns_the_mmu_off() {
        // Linux's INIT_SCTLR_EL1_MMU_ON-like value with M, C, I and some RES1 bits set.
        let on = 0x30d0_5d1d;
        let off = sctlr_el1_for_cpu_on(on);
        assert_eq!(off & 0b111, 0, "M, A and C clear");
        assert_eq!(off & (1 << 12), 1 << 12, "I kept");
        assert_eq!(off | 0b111, on | 0b111, "nothing else changes");
        assert_eq!(sctlr_el1_for_cpu_on(1 << 25), 0, "EE clear");
    }
}
