//! x86-style total store ordering (TSO) for the vCPUs, for x86 emulators (FEX-Emu, Rosetta
//! style translators) in the guest.
//!
//! Apple Silicon cores have an implementation-defined TSO mode, ACTLR_EL1 bit 1 ("EnTSO").
//! Hypervisor.framework exposes that one bit of ACTLR_EL1 through `hv_vcpu_set_sys_reg`
//! (`HV_SYS_REG_ACTLR_EL1`, macOS 15+). qemu-vfio-apple's `-accel hvf,tso=on` sets it when
//! each vCPU is created, before its first instruction: flipping it later from inside the
//! guest proved unstable there (`contrib/apple-dma/linux/quirks/tso_patch.c`). Aperture does
//! the same and reads the register back, so a host that ignores the bit is an error rather
//! than silent weak ordering, which would corrupt an emulator that trusts it.
//!
//! What the guest sees: ACTLR_EL1.EnTSO set on every CPU. Mainline Linux has no interface
//! that tells user space; FEX-Emu looks for `prctl(PR_GET_MEM_MODEL)` from Asahi's downstream
//! patches, which a guest kernel module can provide (qemu-vfio-apple's `tso_patch.c` does).

/// ACTLR_EL1.EnTSO (Apple implementation defined).
pub const ACTLR_EL1_EN_TSO: u64 = 1 << 1;

/// ACTLR_EL1 with TSO on.
pub fn with_tso(actlr: u64) -> u64 {
    actlr | ACTLR_EL1_EN_TSO
}

/// Whether ACTLR_EL1 read back as `actlr` has TSO on.
pub fn tso_on(actlr: u64) -> bool {
    actlr & ACTLR_EL1_EN_TSO != 0
}

/// The message when the host did not keep the bit.
pub fn not_kept_message(vcpu: u32, actlr: u64) -> String {
    format!(
        "vCPU {vcpu}: --tso asked for total store ordering, but ACTLR_EL1 reads back {actlr:#x} \
         without EnTSO: this Mac or macOS does not offer it to VMs; run without --tso"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tso_bit_is_bit_1_and_only_it_changes() {
        assert_eq!(ACTLR_EL1_EN_TSO, 0b10);
        assert_eq!(with_tso(0), 0b10);
        assert_eq!(with_tso(0x1001), 0x1003);
        assert!(tso_on(with_tso(0)) && !tso_on(0x1));
        assert!(not_kept_message(2, 0).contains("run without --tso"));
    }
}
