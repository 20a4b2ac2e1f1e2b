//! KVM register ids for `KVM_{GET,SET}_ONE_REG` on arm64.

use kvm_bindings::{KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_ARM_CORE, KVM_REG_SIZE_U64};

/// Byte offset of `regs.regs[n]` in `struct kvm_regs` (it starts with `user_pt_regs`).
const fn core_offset_x(n: u64) -> u64 {
    8 * n
}
/// `user_pt_regs` is `regs[31], sp, pc, pstate`.
const CORE_OFFSET_PC: u64 = 8 * 32;
const CORE_OFFSET_PSTATE: u64 = 8 * 33;

/// A 64-bit core register id: the offset is counted in 32-bit words.
const fn core_reg(offset: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4)
}

/// General-purpose register `xN`.
pub const fn x(n: u64) -> u64 {
    core_reg(core_offset_x(n))
}
/// The program counter.
pub const PC: u64 = core_reg(CORE_OFFSET_PC);
/// PSTATE (SPSR layout).
pub const PSTATE: u64 = core_reg(CORE_OFFSET_PSTATE);

/// A system register by its encoding (op0, op1, CRn, CRm, op2).
const fn sysreg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// MPIDR_EL1: S3_0_C0_C0_5.
pub const MPIDR_EL1: u64 = sysreg(3, 0, 0, 0, 5);
/// ID_AA64MMFR2_EL1: S3_0_C0_C7_2.
pub const ID_AA64MMFR2_EL1: u64 = sysreg(3, 0, 0, 7, 2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_match_the_kernel_uapi() {
        // Values from arch/arm64/include/uapi/asm/kvm.h as computed by the kernel's macros.
        assert_eq!(x(0), 0x6030_0000_0010_0000);
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(ID_AA64MMFR2_EL1, 0x6030_0000_0013_c03a);
    }
}
