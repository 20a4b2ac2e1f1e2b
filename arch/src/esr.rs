//! ESR_EL2 (exception syndrome) decoding for exits a guest at EL1/EL0 causes.
//!
//! Layout (Arm ARM D24.2.46): EC in bits 31:26, IL in bit 25, ISS in bits 24:0. Only the
//! fields the VMM acts on are decoded; everything else stays reachable through [`Esr::iss`].

use std::fmt;

/// An ESR_EL2 value as the hypervisor reports it (`hv_vcpu_exit_t.exception.syndrome` on
/// Hypervisor.framework).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Esr(pub u64);

/// Exception classes (ESR_EL2.EC) the VMM handles itself; everything else is [`Other`].
///
/// [`Other`]: ExceptionClass::Other
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExceptionClass {
    /// 0x01: trapped WFI or WFE.
    Wfx,
    /// 0x16: HVC from AArch64.
    Hvc64,
    /// 0x17: trapped SMC from AArch64.
    Smc64,
    /// 0x18: trapped MSR, MRS or System instruction.
    Sys64,
    /// 0x20: instruction abort from a lower exception level (e.g. executing from MMIO).
    InstructionAbortLowerEl,
    /// 0x24: data abort from a lower exception level (MMIO, when the IPA is not RAM).
    DataAbortLowerEl,
    /// Any other class (BRK 0x3c, SError 0x2f, debug exceptions, ...), with its raw EC.
    Other(u8),
}

impl ExceptionClass {
    /// Classifies a raw 6-bit EC value.
    pub fn from_raw(ec: u8) -> Self {
        match ec {
            0x01 => Self::Wfx,
            0x16 => Self::Hvc64,
            0x17 => Self::Smc64,
            0x18 => Self::Sys64,
            0x20 => Self::InstructionAbortLowerEl,
            0x24 => Self::DataAbortLowerEl,
            other => Self::Other(other),
        }
    }

    /// The raw 6-bit EC value.
    pub fn raw(self) -> u8 {
        match self {
            Self::Wfx => 0x01,
            Self::Hvc64 => 0x16,
            Self::Smc64 => 0x17,
            Self::Sys64 => 0x18,
            Self::InstructionAbortLowerEl => 0x20,
            Self::DataAbortLowerEl => 0x24,
            Self::Other(ec) => ec,
        }
    }
}

impl fmt::Display for ExceptionClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EC {:#04x} ({})", self.raw(), ec_name(self.raw()))
    }
}

/// A short description of a raw EC value, for logs and error messages.
pub fn ec_name(ec: u8) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "WFI/WFE",
        0x07 => "SVE/SIMD/FP access",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "system register access",
        0x19 => "SVE access",
        0x20 => "instruction abort from the guest",
        0x22 => "PC alignment fault",
        0x24 => "data abort from the guest",
        0x26 => "SP alignment fault",
        0x2c => "floating-point exception",
        0x2f => "SError",
        0x30 => "breakpoint from the guest",
        0x32 => "software step from the guest",
        0x34 => "watchpoint from the guest",
        0x3c => "BRK instruction",
        _ => "unhandled exception class",
    }
}

impl Esr {
    /// The exception class.
    pub fn ec(self) -> ExceptionClass {
        ExceptionClass::from_raw(((self.0 >> 26) & 0x3f) as u8)
    }

    /// IL: the trapped instruction is 32 bits long. Always set for AArch64 guests (it is clear
    /// only for 16-bit T32 instructions of an AArch32 guest).
    pub fn il(self) -> bool {
        self.0 & (1 << 25) != 0
    }

    /// The instruction-specific syndrome, bits 24:0.
    pub fn iss(self) -> u32 {
        (self.0 & 0x1ff_ffff) as u32
    }

    /// The immediate of a trapped HVC or SMC (ISS bits 15:0).
    pub fn imm16(self) -> u16 {
        (self.0 & 0xffff) as u16
    }

    /// The data-abort fields of the ISS. Meaningful only when [`Esr::ec`] is
    /// [`ExceptionClass::DataAbortLowerEl`].
    pub fn data_abort(self) -> DataAbortIss {
        DataAbortIss::from_iss(self.iss())
    }

    /// Which WFx instruction trapped. Meaningful only for [`ExceptionClass::Wfx`].
    pub fn wfx(self) -> WfxKind {
        match self.0 & 0b11 {
            0 => WfxKind::Wfi,
            1 => WfxKind::Wfe,
            2 => WfxKind::Wfit,
            _ => WfxKind::Wfet,
        }
    }
}

/// The trapped wait instruction (ISS.TI of EC 0x01).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WfxKind {
    /// WFI: wait for an interrupt (or the virtual timer).
    Wfi,
    /// WFE: wait for an event; yielding the host CPU is enough.
    Wfe,
    /// WFIT (FEAT_WFxT): WFI with a timeout in a register.
    Wfit,
    /// WFET (FEAT_WFxT): WFE with a timeout in a register.
    Wfet,
}

/// Data-abort ISS fields (EC 0x24). Bits 23:14 (SAS, SSE, SRT, SF, AR) are valid only when
/// [`isv`](Self::isv) is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataAbortIss {
    /// ISV (bit 24): bits 23:14 describe the access. Set only for single general-purpose
    /// register loads and stores without writeback (not pairs, exclusives, atomics, SIMD/FP).
    pub isv: bool,
    /// Access size in bytes, from SAS (bits 23:22): 1, 2, 4 or 8.
    pub access_size: u8,
    /// SSE (bit 21): the load sign-extends.
    pub sse: bool,
    /// SRT (bits 20:16): the transfer register; 31 is XZR/WZR.
    pub srt: u8,
    /// SF (bit 15): the transfer register is 64-bit (Xt) rather than 32-bit (Wt).
    pub sf: bool,
    /// AR (bit 14): acquire/release semantics (LDAR, STLR, ...).
    pub ar: bool,
    /// FnV (bit 10): FAR_EL2 is not valid. The IPA the hypervisor reports stays valid.
    pub fnv: bool,
    /// EA (bit 9): external abort type (implementation defined).
    pub ea: bool,
    /// CM (bit 8): the fault came from a cache maintenance or address translation instruction.
    pub cm: bool,
    /// S1PTW (bit 7): the fault happened on the guest's stage-1 page-table walk.
    pub s1ptw: bool,
    /// WnR (bit 6): the access was a write.
    pub wnr: bool,
    /// DFSC (bits 5:0): data fault status code.
    pub dfsc: u8,
}

impl DataAbortIss {
    /// Splits a data-abort ISS into its fields.
    pub fn from_iss(iss: u32) -> Self {
        let bit = |n: u32| iss & (1 << n) != 0;
        Self {
            isv: bit(24),
            access_size: 1 << ((iss >> 22) & 0b11),
            sse: bit(21),
            srt: ((iss >> 16) & 0x1f) as u8,
            sf: bit(15),
            ar: bit(14),
            fnv: bit(10),
            ea: bit(9),
            cm: bit(8),
            s1ptw: bit(7),
            wnr: bit(6),
            dfsc: (iss & 0x3f) as u8,
        }
    }

    /// What kind of fault [`dfsc`](Self::dfsc) reports.
    pub fn fault_status(&self) -> FaultStatus {
        FaultStatus::from_dfsc(self.dfsc)
    }
}

/// The kind of fault a DFSC reports (Arm ARM, ISS encoding for a data abort).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultStatus {
    /// Address size fault: the IPA is beyond the VM's configured IPA size.
    AddressSize,
    /// Translation fault: nothing mapped at the IPA. The usual MMIO trap.
    Translation,
    /// Access flag fault.
    AccessFlag,
    /// Permission fault: e.g. a write to a read-only stage-2 mapping.
    Permission,
    /// Synchronous external abort (on the access or on a table walk): the memory system,
    /// e.g. a passthrough device, signalled an error.
    ExternalAbort,
    /// Alignment fault.
    Alignment,
    /// TLB conflict abort.
    TlbConflict,
    /// Any other code, kept raw.
    Other(u8),
}

impl FaultStatus {
    /// Classifies a 6-bit DFSC.
    pub fn from_dfsc(dfsc: u8) -> Self {
        match dfsc {
            0x00..=0x03 | 0x29 => Self::AddressSize,
            0x04..=0x07 | 0x2b => Self::Translation,
            0x08..=0x0b => Self::AccessFlag,
            0x0c..=0x0f => Self::Permission,
            0x10 | 0x13..=0x17 => Self::ExternalAbort,
            0x21 => Self::Alignment,
            0x30 => Self::TlbConflict,
            other => Self::Other(other),
        }
    }

    /// Whether an abort of this kind on a non-RAM IPA is an access the VMM should emulate.
    pub fn is_mmio_trap(self) -> bool {
        matches!(self, Self::Translation | Self::AccessFlag | Self::Permission)
    }
}

impl fmt::Display for FaultStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::AddressSize => f.write_str("address size fault"),
            Self::Translation => f.write_str("translation fault"),
            Self::AccessFlag => f.write_str("access flag fault"),
            Self::Permission => f.write_str("permission fault"),
            Self::ExternalAbort => f.write_str("synchronous external abort"),
            Self::Alignment => f.write_str("alignment fault"),
            Self::TlbConflict => f.write_str("TLB conflict abort"),
            Self::Other(code) => write!(f, "fault status {code:#04x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_classes_round_trip() {
        for raw in 0..0x40u8 {
            assert_eq!(ExceptionClass::from_raw(raw).raw(), raw);
        }
        let cases = [
            (0x07e0_0000u64, ExceptionClass::Wfx), // wfi (captured)
            (0x5a00_0000, ExceptionClass::Hvc64),  // hvc #0 (captured)
            (0x5e00_0000, ExceptionClass::Smc64),  // smc #0 (captured)
            (0x6230_e459, ExceptionClass::Sys64),  // mrs x2, pmcr_el0 (captured)
            (0x8200_0005, ExceptionClass::InstructionAbortLowerEl),
            (0x9381_0005, ExceptionClass::DataAbortLowerEl), // ldr w1, [x0] (captured)
            (0xf200_0000, ExceptionClass::Other(0x3c)),      // brk #0
        ];
        for (esr, ec) in cases {
            assert_eq!(Esr(esr).ec(), ec, "ESR {esr:#x}");
            assert!(Esr(esr).il(), "ESR {esr:#x}");
        }
        assert_eq!(ExceptionClass::Other(0x3c).to_string(), "EC 0x3c (BRK instruction)");
    }

    #[test]
    fn data_abort_fields() {
        // ldr w1, [x0] as QEMU's EL2 reports it: ISV, SAS=word, SRT=1, translation fault L1.
        let da = Esr(0x9381_0005).data_abort();
        assert_eq!(
            da,
            DataAbortIss {
                isv: true,
                access_size: 4,
                sse: false,
                srt: 1,
                sf: false,
                ar: false,
                fnv: false,
                ea: false,
                cm: false,
                s1ptw: false,
                wnr: false,
                dfsc: 0x05,
            }
        );
        assert_eq!(da.fault_status(), FaultStatus::Translation);
        // stlr x10, [x0]: SAS=doubleword, SRT=10, SF, AR, WnR.
        let da = Esr(0x93ca_c045).data_abort();
        assert_eq!((da.access_size, da.srt, da.sf, da.ar, da.wnr), (8, 10, true, true, true));
        // ldrsb x3, [x2]: SAS=byte, SSE, SF.
        let da = Esr(0x9323_8005).data_abort();
        assert_eq!((da.access_size, da.sse, da.srt, da.sf), (1, true, 3, true));
        // Single bits land where they belong.
        let da = DataAbortIss::from_iss((1 << 10) | (1 << 9) | (1 << 8) | (1 << 7));
        assert!(da.fnv && da.ea && da.cm && da.s1ptw && !da.isv && !da.wnr);
    }

    #[test]
    fn fault_status_classes() {
        let cases = [
            (0x00, FaultStatus::AddressSize),
            (0x05, FaultStatus::Translation),
            (0x07, FaultStatus::Translation),
            (0x0b, FaultStatus::AccessFlag),
            (0x0f, FaultStatus::Permission),
            (0x10, FaultStatus::ExternalAbort),
            (0x15, FaultStatus::ExternalAbort),
            (0x21, FaultStatus::Alignment),
            (0x30, FaultStatus::TlbConflict),
            (0x35, FaultStatus::Other(0x35)),
        ];
        for (dfsc, status) in cases {
            assert_eq!(FaultStatus::from_dfsc(dfsc), status, "DFSC {dfsc:#x}");
        }
        assert!(FaultStatus::Translation.is_mmio_trap());
        assert!(FaultStatus::Permission.is_mmio_trap());
        assert!(!FaultStatus::ExternalAbort.is_mmio_trap());
        assert!(!FaultStatus::AddressSize.is_mmio_trap());
    }

    #[test]
    fn wfx_and_immediates() {
        assert_eq!(Esr(0x07e0_0000).wfx(), WfxKind::Wfi); // captured wfi
        assert_eq!(Esr(0x07e0_0001).wfx(), WfxKind::Wfe);
        assert_eq!(Esr(0x0600_0002).wfx(), WfxKind::Wfit);
        assert_eq!(Esr(0x0600_0003).wfx(), WfxKind::Wfet);
        assert_eq!(Esr(0x5a00_1234).imm16(), 0x1234); // captured hvc #0x1234
        assert_eq!(Esr(0x5a00_1234).iss(), 0x1234);
    }
}
