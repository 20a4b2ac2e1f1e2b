//! ID register values a backend adjusts before the guest reads them (Hypervisor.framework shows
//! the host's values; KVM adjusts them in the kernel).
//!
//! - ID_AA64MMFR0_EL1.PARange must not promise more physical address bits than the VM's IPA
//!   space: Linux sizes its linear map and the PCI windows from it, and an access above the
//!   IPA size is an address size fault, not memory.
//! - ID_AA64PFR0_EL1.GIC says whether the GICv3 system-register CPU interface exists.
//!
//! And one the VMM only reads: ID_AA64MMFR2_EL1.E0PD, which decides what a KASLR seed costs
//! the guest (see [`kaslr_forces_kpti`]).

/// ID_AA64MMFR0_EL1.PARange, bits 3:0.
const PARANGE_MASK: u64 = 0xf;

/// PARange encodings and the physical address size each stands for, in bits (Arm ARM
/// D19.2.64). 0b0111 (56 bits, FEAT_D128) is not listed: no host Aperture runs on has it.
const PARANGES: [(u8, u32); 7] = [(0, 32), (1, 36), (2, 40), (3, 42), (4, 44), (5, 48), (6, 52)];

/// The physical address size a PARange encoding stands for; `None` for reserved encodings.
pub fn parange_bits(encoding: u8) -> Option<u32> {
    PARANGES.iter().find(|&&(e, _)| e == encoding).map(|&(_, bits)| bits)
}

/// The largest PARange encoding whose address size fits in `ipa_bits` (36 bits gives 0b0001;
/// 38 bits also gives 0b0001: the guest must not think it has 40). `None` below 32 bits.
pub fn parange_for_ipa_bits(ipa_bits: u32) -> Option<u8> {
    PARANGES.iter().rev().find(|&&(_, bits)| bits <= ipa_bits).map(|&(e, _)| e)
}

/// The largest address size a PARange can describe that fits in `ipa_bits`: the IPA size to
/// give a VM so that the guest's PARange describes it exactly. `None` below 32 bits.
pub fn round_down_to_parange_bits(ipa_bits: u32) -> Option<u32> {
    parange_for_ipa_bits(ipa_bits).and_then(parange_bits)
}

/// ID_AA64MMFR0_EL1 with PARange lowered to fit a VM of `ipa_bits`; never raised above what
/// the host reports. Other fields are kept. A reserved host encoding is treated as larger than
/// any VM, so it is replaced.
pub fn clamp_mmfr0_parange(mmfr0: u64, ipa_bits: u32) -> u64 {
    let host = (mmfr0 & PARANGE_MASK) as u8;
    let vm = parange_for_ipa_bits(ipa_bits).unwrap_or(0);
    let host_bits = parange_bits(host).unwrap_or(u32::MAX);
    let vm_bits = parange_bits(vm).unwrap_or(32);
    let parange = if host_bits <= vm_bits { host } else { vm };
    (mmfr0 & !PARANGE_MASK) | u64::from(parange)
}

/// ID_AA64PFR0_EL1.GIC, bits 27:24: 0b0001 is "GICv3/v4 system register interface".
const PFR0_GIC_SHIFT: u32 = 24;
const PFR0_GIC_MASK: u64 = 0xf << PFR0_GIC_SHIFT;

/// ID_AA64PFR0_EL1 advertising the GICv3 system-register CPU interface (at least GIC = 1;
/// a higher host value, GICv4.1, is kept).
pub fn pfr0_with_gicv3_sysregs(pfr0: u64) -> u64 {
    if pfr0 & PFR0_GIC_MASK == 0 {
        pfr0 | (1 << PFR0_GIC_SHIFT)
    } else {
        pfr0
    }
}

/// ID_AA64MMFR2_EL1.E0PD, bits 63:60: FEAT_E0PD (Armv8.5), EL0 accesses to the kernel's
/// half of the address space fault in constant time.
const MMFR2_E0PD_SHIFT: u32 = 60;

/// Whether a guest kernel given a KASLR seed on a CPU with this ID_AA64MMFR2_EL1 turns on
/// kernel page-table isolation (KPTI) for it. Without E0PD, Linux keeps its randomized
/// addresses hidden from user space only by unmapping the kernel at EL0, so KASLR forces
/// KPTI on even where the CPU is not affected by Meltdown: every entry to the kernel from
/// user space (system call, fault, interrupt) then switches page tables.
pub fn kaslr_forces_kpti(id_aa64mmfr2: u64) -> bool {
    (id_aa64mmfr2 >> MMFR2_E0PD_SHIFT) & 0xf == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parange_encodings() {
        assert_eq!(parange_for_ipa_bits(31), None);
        assert_eq!(parange_for_ipa_bits(32), Some(0));
        assert_eq!(parange_for_ipa_bits(36), Some(1));
        assert_eq!(parange_for_ipa_bits(39), Some(1));
        assert_eq!(parange_for_ipa_bits(40), Some(2));
        assert_eq!(parange_for_ipa_bits(41), Some(2));
        assert_eq!(parange_for_ipa_bits(48), Some(5));
        assert_eq!(parange_for_ipa_bits(52), Some(6));
        assert_eq!(parange_for_ipa_bits(64), Some(6));
        assert_eq!(parange_bits(7), None);
        assert_eq!(round_down_to_parange_bits(39), Some(36));
        assert_eq!(round_down_to_parange_bits(40), Some(40));
        assert_eq!(round_down_to_parange_bits(47), Some(44));
        assert_eq!(round_down_to_parange_bits(20), None);
    }

    #[test]
    fn mmfr0_parange_is_clamped_to_the_vm() {
        // An M-series host reports PARange 0b0010 (40 bits) among other fields.
        let host = 0x0000_0000_1122_0f02;
        assert_eq!(clamp_mmfr0_parange(host, 36), 0x0000_0000_1122_0f01);
        assert_eq!(clamp_mmfr0_parange(host, 40), host);
        // Never raised above the host.
        assert_eq!(clamp_mmfr0_parange(host, 48), host);
        // A VM between encodings gets the one below.
        assert_eq!(clamp_mmfr0_parange(0x5, 42), 0x3);
        assert_eq!(clamp_mmfr0_parange(0x5, 41), 0x2);
        // A reserved host encoding is replaced.
        assert_eq!(clamp_mmfr0_parange(0xf, 40), 0x2);
        // Only bits 3:0 change.
        assert_eq!(clamp_mmfr0_parange(u64::MAX, 36) | 0xf, u64::MAX);
    }

    #[test]
    fn pfr0_gic_field() {
        assert_eq!(pfr0_with_gicv3_sysregs(0x1111), 0x0100_1111);
        assert_eq!(pfr0_with_gicv3_sysregs(0x0100_1111), 0x0100_1111);
        assert_eq!(pfr0_with_gicv3_sysregs(0x0300_0011), 0x0300_0011);
    }

    #[test]
    fn kaslr_forces_kpti_only_without_e0pd() {
        // Neoverse N1 (Armv8.2): no E0PD.
        assert!(kaslr_forces_kpti(0x0000_0000_0000_1011));
        assert!(!kaslr_forces_kpti(0x1000_0000_0000_1011));
        // A later encoding of the field still means E0PD is there.
        assert!(!kaslr_forces_kpti(0x2000_0000_0000_0000));
        assert!(kaslr_forces_kpti(0x0fff_ffff_ffff_ffff));
    }
}
