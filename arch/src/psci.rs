//! PSCI 1.0 and SMCCC 1.1 calls for a VMM that implements PSCI itself (Hypervisor.framework;
//! KVM runs PSCI in the kernel).
//!
//! [`decode_call`] turns a guest call into a [`PsciCall`]: either the value for x0 right away,
//! or an action only the VMM can carry out (start or stop a vCPU, power off, reset, ask
//! which vCPUs are on). The backend finishes the call with [`complete_call`], which applies
//! the conduit's PC rule:
//!
//! - HVC is an exception-generating instruction: the exit's PC (ELR_EL2) already points past
//!   it, so the PC must not move.
//! - SMC is trapped (HCR_EL2.TSC): the exit's PC points at the SMC itself, so it steps by 4.
//!
//! Both were observed on QEMU's EL2 model and match Hypervisor.framework, which reports the
//! trapping PC as is.

use crate::esr::{Esr, ExceptionClass};
use crate::regs::{BootRegs, PSTATE_EL1H_DAIF_MASKED};
use crate::vcpu_regs::{skip_instruction, VcpuRegs};

/// SMCCC function identifiers (fast calls; bit 30 set = SMC64 convention).
pub mod function_id {
    /// PSCI_VERSION.
    pub const PSCI_VERSION: u32 = 0x8400_0000;
    /// CPU_SUSPEND, 32-bit convention.
    pub const CPU_SUSPEND_32: u32 = 0x8400_0001;
    /// CPU_SUSPEND, 64-bit convention.
    pub const CPU_SUSPEND_64: u32 = 0xc400_0001;
    /// CPU_OFF.
    pub const CPU_OFF: u32 = 0x8400_0002;
    /// CPU_ON, 32-bit convention.
    pub const CPU_ON_32: u32 = 0x8400_0003;
    /// CPU_ON, 64-bit convention.
    pub const CPU_ON_64: u32 = 0xc400_0003;
    /// AFFINITY_INFO, 32-bit convention.
    pub const AFFINITY_INFO_32: u32 = 0x8400_0004;
    /// AFFINITY_INFO, 64-bit convention.
    pub const AFFINITY_INFO_64: u32 = 0xc400_0004;
    /// MIGRATE, 32-bit convention (not supported: no trusted OS to migrate).
    pub const MIGRATE_32: u32 = 0x8400_0005;
    /// MIGRATE, 64-bit convention (not supported).
    pub const MIGRATE_64: u32 = 0xc400_0005;
    /// MIGRATE_INFO_TYPE.
    pub const MIGRATE_INFO_TYPE: u32 = 0x8400_0006;
    /// SYSTEM_OFF.
    pub const SYSTEM_OFF: u32 = 0x8400_0008;
    /// SYSTEM_RESET.
    pub const SYSTEM_RESET: u32 = 0x8400_0009;
    /// PSCI_FEATURES.
    pub const PSCI_FEATURES: u32 = 0x8400_000a;
    /// SYSTEM_RESET2, 32-bit convention (PSCI 1.1; not offered since we report 1.0).
    pub const SYSTEM_RESET2_32: u32 = 0x8400_0012;
    /// SMCCC_VERSION.
    pub const SMCCC_VERSION: u32 = 0x8000_0000;
    /// SMCCC_ARCH_FEATURES.
    pub const SMCCC_ARCH_FEATURES: u32 = 0x8000_0001;
    /// SMCCC_ARCH_WORKAROUND_1 (Spectre v2).
    pub const SMCCC_ARCH_WORKAROUND_1: u32 = 0x8000_8000;
    /// SMCCC_ARCH_WORKAROUND_2 (Spectre v4 / SSBD).
    pub const SMCCC_ARCH_WORKAROUND_2: u32 = 0x8000_7fff;
    /// SMCCC_ARCH_WORKAROUND_3 (Spectre-BHB).
    pub const SMCCC_ARCH_WORKAROUND_3: u32 = 0x8000_3fff;
}

use function_id as fid;

/// PSCI_VERSION's answer: 1.0 (major in bits 31:16).
pub const PSCI_VERSION_1_0: u64 = 0x1_0000;
/// SMCCC_VERSION's answer: 1.1.
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;
/// MIGRATE_INFO_TYPE's answer: a trusted OS is not present or needs no migration.
pub const MIGRATE_INFO_TYPE_NOT_PRESENT: u64 = 2;

/// PSCI return codes. x0 carries them sign-extended to 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciStatus {
    /// 0.
    Success,
    /// -1: unknown or unimplemented function (also the SMCCC answer to unknown calls).
    NotSupported,
    /// -2: e.g. CPU_ON for an MPIDR that names no vCPU.
    InvalidParameters,
    /// -3: e.g. CPU_OFF refused.
    Denied,
    /// -4: CPU_ON for a vCPU that is already on.
    AlreadyOn,
    /// -5: CPU_ON for a vCPU whose earlier CPU_ON has not completed.
    OnPending,
    /// -6.
    InternalFailure,
    /// -7.
    NotPresent,
    /// -8.
    Disabled,
    /// -9: e.g. CPU_ON with an entry point outside guest RAM.
    InvalidAddress,
}

impl PsciStatus {
    /// The signed code.
    pub fn code(self) -> i64 {
        match self {
            Self::Success => 0,
            Self::NotSupported => -1,
            Self::InvalidParameters => -2,
            Self::Denied => -3,
            Self::AlreadyOn => -4,
            Self::OnPending => -5,
            Self::InternalFailure => -6,
            Self::NotPresent => -7,
            Self::Disabled => -8,
            Self::InvalidAddress => -9,
        }
    }

    /// The value for x0: the code sign-extended to 64 bits (-1 is 0xffff_ffff_ffff_ffff).
    pub fn to_x0(self) -> u64 {
        self.code() as u64
    }
}

/// A vCPU's power state as AFFINITY_INFO reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AffinityState {
    /// 0: running.
    On,
    /// 1: off (never started, or CPU_OFF).
    Off,
    /// 2: CPU_ON accepted, not running yet.
    OnPending,
}

impl AffinityState {
    /// The value for x0.
    pub fn to_x0(self) -> u64 {
        match self {
            Self::On => 0,
            Self::Off => 1,
            Self::OnPending => 2,
        }
    }
}

/// CPU_ON arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuOn {
    /// MPIDR affinity of the vCPU to start (Aff3 in bits 39:32, Aff2..Aff0 in bits 23:0).
    pub target_mpidr: u64,
    /// Guest physical address to start at, with the MMU off.
    pub entry: u64,
    /// Value for the started vCPU's x0.
    pub context_id: u64,
}

impl CpuOn {
    /// The started vCPU's registers: PC = entry, x0 = context_id, EL1h with DAIF masked,
    /// like the boot CPU (PSCI: same exception level and state as the caller).
    pub fn boot_regs(&self) -> BootRegs {
        BootRegs {
            pc: self.entry,
            x0: self.context_id,
            x1: 0,
            x2: 0,
            x3: 0,
            pstate: PSTATE_EL1H_DAIF_MASKED,
        }
    }
}

/// What a guest PSCI/SMCCC call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PsciCall {
    /// Done: put this in x0 and resume ([`complete_call`]).
    Return(u64),
    /// CPU_SUSPEND: resume with x0 = SUCCESS after waiting as for WFI. A power-down request is
    /// served as standby, which PSCI allows, so the caller simply continues after the call.
    Suspend,
    /// CPU_ON: the VMM starts the target (see [`CpuOn::boot_regs`]) and answers x0 with
    /// SUCCESS, ALREADY_ON, ON_PENDING, INVALID_PARAMETERS or INVALID_ADDRESS.
    CpuOn(CpuOn),
    /// CPU_OFF: stop this vCPU; it does not return unless refused (x0 = DENIED).
    CpuOff,
    /// AFFINITY_INFO: the VMM answers x0 with [`affinity_info_result`].
    AffinityInfo {
        /// Target affinity, an MPIDR value.
        target_affinity: u64,
        /// Lowest affinity level that counts, 0..=3.
        lowest_level: u8,
    },
    /// SYSTEM_OFF: power the VM off; does not return.
    SystemOff,
    /// SYSTEM_RESET: reset the VM; does not return.
    SystemReset,
}

/// Which instruction made the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conduit {
    /// HVC: the exit PC is already past the instruction.
    Hvc,
    /// SMC (trapped): the exit PC is the instruction itself.
    Smc,
}

impl Conduit {
    /// The conduit of an HVC or SMC exit; `None` for other exception classes.
    pub fn from_esr(esr: u64) -> Option<Self> {
        match Esr(esr).ec() {
            ExceptionClass::Hvc64 => Some(Self::Hvc),
            ExceptionClass::Smc64 => Some(Self::Smc),
            _ => None,
        }
    }

    /// Bytes to add to the exit PC to resume after the call: 0 for HVC, 4 for SMC.
    pub fn resume_pc_step(self) -> u64 {
        match self {
            Self::Hvc => 0,
            Self::Smc => crate::vcpu_regs::INSTRUCTION_LEN,
        }
    }
}

/// Finishes a call: x0 = `x0`, and the PC moves past the HVC/SMC as the conduit requires.
pub fn complete_call<R: VcpuRegs + ?Sized>(conduit: Conduit, regs: &mut R, x0: u64) {
    regs.set_x(0, x0);
    if conduit == Conduit::Smc {
        skip_instruction(regs);
    }
}

/// Decodes the call in an HVC/SMC exit, reading the function id and arguments from x0..x3.
/// A call with a non-zero immediate (`hvc #n`) is not an SMCCC call: it gets NOT_SUPPORTED.
pub fn decode_call_from_regs<R: VcpuRegs + ?Sized>(esr: u64, regs: &R) -> PsciCall {
    if Esr(esr).imm16() != 0 {
        return PsciCall::Return(PsciStatus::NotSupported.to_x0());
    }
    decode_call(regs.x(0), regs.x(1), regs.x(2), regs.x(3))
}

/// Decodes SMCCC call `function_id` (x0; only W0 counts) with arguments x1..x3. Calls using the
/// 32-bit convention only see the low 32 bits of their arguments.
pub fn decode_call(function_id: u64, x1: u64, x2: u64, x3: u64) -> PsciCall {
    let id = function_id as u32;
    let arg = |v: u64| if id & (1 << 30) != 0 { v } else { v & 0xffff_ffff };
    match id {
        fid::PSCI_VERSION => PsciCall::Return(PSCI_VERSION_1_0),
        fid::CPU_SUSPEND_32 | fid::CPU_SUSPEND_64 => PsciCall::Suspend,
        fid::CPU_OFF => PsciCall::CpuOff,
        fid::CPU_ON_32 | fid::CPU_ON_64 => {
            PsciCall::CpuOn(CpuOn { target_mpidr: arg(x1), entry: arg(x2), context_id: arg(x3) })
        }
        fid::AFFINITY_INFO_32 | fid::AFFINITY_INFO_64 => match u8::try_from(arg(x2)) {
            Ok(level @ 0..=3) => {
                PsciCall::AffinityInfo { target_affinity: arg(x1), lowest_level: level }
            }
            _ => PsciCall::Return(PsciStatus::InvalidParameters.to_x0()),
        },
        fid::MIGRATE_INFO_TYPE => PsciCall::Return(MIGRATE_INFO_TYPE_NOT_PRESENT),
        fid::SYSTEM_OFF => PsciCall::SystemOff,
        fid::SYSTEM_RESET => PsciCall::SystemReset,
        fid::PSCI_FEATURES => PsciCall::Return(psci_features(x1 as u32)),
        fid::SMCCC_VERSION => PsciCall::Return(SMCCC_VERSION_1_1),
        // No firmware workarounds or other architecture calls are implemented. For the
        // Spectre workarounds, NOT_SUPPORTED lets Linux rely on the CPU's own ID registers.
        fid::SMCCC_ARCH_FEATURES => PsciCall::Return(PsciStatus::NotSupported.to_x0()),
        // MIGRATE and everything unknown (SMCCC: unknown calls return -1).
        _ => PsciCall::Return(PsciStatus::NotSupported.to_x0()),
    }
}

/// PSCI_FEATURES: 0 for the functions implemented here (for CPU_SUSPEND, 0 also means the
/// original power_state format and platform-coordinated mode), NOT_SUPPORTED otherwise.
fn psci_features(queried: u32) -> u64 {
    match queried {
        fid::PSCI_VERSION
        | fid::CPU_SUSPEND_32
        | fid::CPU_SUSPEND_64
        | fid::CPU_OFF
        | fid::CPU_ON_32
        | fid::CPU_ON_64
        | fid::AFFINITY_INFO_32
        | fid::AFFINITY_INFO_64
        | fid::MIGRATE_INFO_TYPE
        | fid::SYSTEM_OFF
        | fid::SYSTEM_RESET
        | fid::PSCI_FEATURES
        | fid::SMCCC_VERSION => PsciStatus::Success.to_x0(),
        _ => PsciStatus::NotSupported.to_x0(),
    }
}

/// Affinity fields (Aff3, Aff2, Aff1, Aff0) that count at `level`: level 0 compares them all,
/// level 1 ignores Aff0, level 2 ignores Aff1 and Aff0, level 3 compares Aff3 only.
fn affinity_mask(level: u8) -> u64 {
    match level {
        0 => 0xff_00ff_ffff,
        1 => 0xff_00ff_ff00,
        2 => 0xff_00ff_0000,
        _ => 0xff_0000_0000,
    }
}

/// Whether a vCPU with MPIDR `mpidr` belongs to affinity instance `target` at `level` (for
/// CPU_ON use level 0: the exact vCPU). Bits outside the affinity fields in `target` match
/// nothing, so a malformed target is an invalid parameter.
pub fn affinity_matches(target: u64, mpidr: u64, level: u8) -> bool {
    let mask = affinity_mask(level);
    target & !mask == 0 && target & mask == mpidr & mask
}

/// AFFINITY_INFO's answer for `target`/`level` given each vCPU's MPIDR and state: ON if any
/// matching vCPU is on, else ON_PENDING if any is pending, else OFF; INVALID_PARAMETERS if
/// none matches.
pub fn affinity_info_result(
    target: u64,
    level: u8,
    cpus: impl IntoIterator<Item = (u64, AffinityState)>,
) -> u64 {
    let mut best: Option<AffinityState> = None;
    for (mpidr, state) in cpus {
        if !affinity_matches(target, mpidr, level) {
            continue;
        }
        best = Some(match (best, state) {
            (_, AffinityState::On) | (Some(AffinityState::On), _) => AffinityState::On,
            (_, AffinityState::OnPending) | (Some(AffinityState::OnPending), _) => {
                AffinityState::OnPending
            }
            _ => AffinityState::Off,
        });
    }
    best.map_or(PsciStatus::InvalidParameters.to_x0(), AffinityState::to_x0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu_regs::test_regs::TestRegs;

    const NOT_SUPPORTED: u64 = 0xffff_ffff_ffff_ffff;
    const INVALID_PARAMETERS: u64 = 0xffff_ffff_ffff_fffe;

    #[test]
    fn status_codes_are_sign_extended() {
        let cases = [
            (PsciStatus::Success, 0),
            (PsciStatus::NotSupported, NOT_SUPPORTED),
            (PsciStatus::InvalidParameters, INVALID_PARAMETERS),
            (PsciStatus::Denied, 0xffff_ffff_ffff_fffd),
            (PsciStatus::AlreadyOn, 0xffff_ffff_ffff_fffc),
            (PsciStatus::OnPending, 0xffff_ffff_ffff_fffb),
            (PsciStatus::InternalFailure, 0xffff_ffff_ffff_fffa),
            (PsciStatus::NotPresent, 0xffff_ffff_ffff_fff9),
            (PsciStatus::Disabled, 0xffff_ffff_ffff_fff8),
            (PsciStatus::InvalidAddress, 0xffff_ffff_ffff_fff7),
        ];
        for (status, x0) in cases {
            assert_eq!(status.to_x0(), x0, "{status:?}");
        }
        assert_eq!(AffinityState::On.to_x0(), 0);
        assert_eq!(AffinityState::Off.to_x0(), 1);
        assert_eq!(AffinityState::OnPending.to_x0(), 2);
    }

    #[test]
    fn calls_decode() {
        use PsciCall::*;
        let on = |target_mpidr, entry, context_id| {
            CpuOn(super::CpuOn { target_mpidr, entry, context_id })
        };
        let cases: &[(&str, [u64; 4], PsciCall)] = &[
            ("PSCI_VERSION", [0x8400_0000, 0, 0, 0], Return(0x1_0000)),
            // Only W0 is the function id.
            ("PSCI_VERSION, junk in x0[63:32]", [0xdead_beef_8400_0000, 0, 0, 0], Return(0x1_0000)),
            ("CPU_SUSPEND", [0xc400_0001, 0x1_0000, 0x4008_0000, 0], Suspend),
            ("CPU_SUSPEND32", [0x8400_0001, 0, 0, 0], Suspend),
            ("CPU_OFF", [0x8400_0002, 0, 0, 0], CpuOff),
            (
                "CPU_ON64",
                [0xc400_0003, 0x1_0000_0101, 0x4008_1000, 0xfeed_face_cafe],
                on(0x1_0000_0101, 0x4008_1000, 0xfeed_face_cafe),
            ),
            (
                "CPU_ON32 ignores upper halves",
                [0x8400_0003, 0xffff_ffff_0000_0002, 0x1_4008_2000, 0xaaaa_bbbb_cccc_dddd],
                on(0x2, 0x4008_2000, 0xcccc_dddd),
            ),
            (
                "AFFINITY_INFO64",
                [0xc400_0004, 0x1, 0, 0],
                AffinityInfo { target_affinity: 1, lowest_level: 0 },
            ),
            (
                "AFFINITY_INFO32 level 1",
                [0x8400_0004, 0x100, 1, 0],
                AffinityInfo { target_affinity: 0x100, lowest_level: 1 },
            ),
            ("AFFINITY_INFO bad level", [0xc400_0004, 0x1, 4, 0], Return(INVALID_PARAMETERS)),
            (
                "AFFINITY_INFO huge level",
                [0xc400_0004, 0x1, 0x1_0000_0000, 0],
                Return(INVALID_PARAMETERS),
            ),
            ("MIGRATE", [0xc400_0005, 0, 0, 0], Return(NOT_SUPPORTED)),
            ("MIGRATE_INFO_TYPE", [0x8400_0006, 0, 0, 0], Return(2)),
            ("MIGRATE_INFO_UP_CPU", [0x8400_0007, 0, 0, 0], Return(NOT_SUPPORTED)),
            ("SYSTEM_OFF", [0x8400_0008, 0, 0, 0], SystemOff),
            ("SYSTEM_RESET", [0x8400_0009, 0, 0, 0], SystemReset),
            ("SYSTEM_RESET2", [0xc400_0012, 0, 0, 0], Return(NOT_SUPPORTED)),
            ("SYSTEM_SUSPEND", [0xc400_000e, 0, 0, 0], Return(NOT_SUPPORTED)),
            ("SMCCC_VERSION", [0x8000_0000, 0, 0, 0], Return(0x1_0001)),
            (
                "ARCH_FEATURES(WORKAROUND_1)",
                [0x8000_0001, 0x8000_8000, 0, 0],
                Return(NOT_SUPPORTED),
            ),
            (
                "ARCH_FEATURES(WORKAROUND_2)",
                [0x8000_0001, 0x8000_7fff, 0, 0],
                Return(NOT_SUPPORTED),
            ),
            (
                "ARCH_FEATURES(WORKAROUND_3)",
                [0x8000_0001, 0x8000_3fff, 0, 0],
                Return(NOT_SUPPORTED),
            ),
            ("WORKAROUND_1 itself", [0x8000_8000, 0, 0, 0], Return(NOT_SUPPORTED)),
            ("TRNG_VERSION", [0x8400_0050, 0, 0, 0], Return(NOT_SUPPORTED)),
            ("KVM vendor hyp call", [0x8600_ff01, 0, 0, 0], Return(NOT_SUPPORTED)),
            ("yielding call", [0x0400_0000, 0, 0, 0], Return(NOT_SUPPORTED)),
        ];
        for (name, [x0, x1, x2, x3], want) in cases {
            assert_eq!(decode_call(*x0, *x1, *x2, *x3), *want, "{name}");
        }
    }

    #[test]
    fn features_answers() {
        let implemented = [
            fid::PSCI_VERSION,
            fid::CPU_SUSPEND_32,
            fid::CPU_SUSPEND_64,
            fid::CPU_OFF,
            fid::CPU_ON_32,
            fid::CPU_ON_64,
            fid::AFFINITY_INFO_32,
            fid::AFFINITY_INFO_64,
            fid::MIGRATE_INFO_TYPE,
            fid::SYSTEM_OFF,
            fid::SYSTEM_RESET,
            fid::PSCI_FEATURES,
            fid::SMCCC_VERSION,
        ];
        for id in implemented {
            assert_eq!(
                decode_call(u64::from(fid::PSCI_FEATURES), u64::from(id), 0, 0),
                PsciCall::Return(0),
                "{id:#x}"
            );
        }
        let missing = [
            fid::MIGRATE_32,
            fid::MIGRATE_64,
            fid::SYSTEM_RESET2_32,
            fid::SMCCC_ARCH_FEATURES,
            fid::SMCCC_ARCH_WORKAROUND_1,
            0x8400_0007,
            0x8400_000b,
            0xdead_beef,
        ];
        for id in missing {
            assert_eq!(
                decode_call(u64::from(fid::PSCI_FEATURES), u64::from(id), 0, 0),
                PsciCall::Return(NOT_SUPPORTED),
                "{id:#x}"
            );
        }
    }

    /// Captured from QEMU's EL2 model: `hvc #0` at 0x400800a8 exited with ELR 0x400800ac
    /// (ESR 0x5a000000); `smc #0` at 0x400800b0 exited with ELR 0x400800b0 (ESR 0x5e000000).
    #[test]
    fn conduit_pc_rule() {
        let hvc_pc = 0x4008_00a8;
        let mut regs = TestRegs::new(hvc_pc + 4);
        let conduit = Conduit::from_esr(0x5a00_0000).unwrap();
        assert_eq!(conduit, Conduit::Hvc);
        complete_call(conduit, &mut regs, PSCI_VERSION_1_0);
        assert_eq!((regs.pc, regs.x[0]), (hvc_pc + 4, 0x1_0000));

        let smc_pc = 0x4008_00b0;
        let mut regs = TestRegs::new(smc_pc);
        let conduit = Conduit::from_esr(0x5e00_0000).unwrap();
        assert_eq!(conduit, Conduit::Smc);
        complete_call(conduit, &mut regs, NOT_SUPPORTED);
        assert_eq!((regs.pc, regs.x[0]), (smc_pc + 4, NOT_SUPPORTED));

        assert_eq!(Conduit::Hvc.resume_pc_step(), 0);
        assert_eq!(Conduit::Smc.resume_pc_step(), 4);
        assert_eq!(Conduit::from_esr(0x9381_0005), None);
        // Only x0 and the PC change.
        let mut regs = TestRegs::new(0x1000);
        let before = regs.clone();
        complete_call(Conduit::Smc, &mut regs, 7);
        assert_eq!(regs.x[1..], before.x[1..]);
    }

    #[test]
    fn decode_from_registers() {
        let mut regs = TestRegs::new(0x1000);
        regs.x[0] = u64::from(fid::CPU_ON_64);
        regs.x[1] = 3;
        regs.x[2] = 0x4010_0000;
        regs.x[3] = 0x55;
        assert_eq!(
            decode_call_from_regs(0x5a00_0000, &regs),
            PsciCall::CpuOn(CpuOn { target_mpidr: 3, entry: 0x4010_0000, context_id: 0x55 })
        );
        // hvc #0x1234 (captured ESR 0x5a001234) is not an SMCCC call.
        assert_eq!(decode_call_from_regs(0x5a00_1234, &regs), PsciCall::Return(NOT_SUPPORTED));
    }

    #[test]
    fn cpu_on_boot_regs() {
        let on = CpuOn { target_mpidr: 1, entry: 0x4020_0000, context_id: 0xabcd };
        assert_eq!(
            on.boot_regs(),
            BootRegs { pc: 0x4020_0000, x0: 0xabcd, x1: 0, x2: 0, x3: 0, pstate: 0x3c5 }
        );
    }

    #[test]
    fn affinity_info_answers() {
        use AffinityState::*;
        // Four vCPUs: two clusters of two (Aff1 = 0 and 1).
        let cpus = [
            (0x8000_0000u64, On),
            (0x8000_0001, Off),
            (0x8000_0100, OnPending),
            (0x8000_0101, Off),
        ];
        let cases = [
            (0x0, 0, 0),                                 // vCPU 0 is on
            (0x1, 0, 1),                                 // vCPU 1 is off
            (0x100, 0, 2),                               // vCPU 2 is pending
            (0x101, 0, 1),                               // vCPU 3 is off
            (0x2, 0, INVALID_PARAMETERS),                // no such vCPU
            (0x0, 1, 0),                                 // cluster 0 has an on vCPU
            (0x100, 1, 2),                               // cluster 1: one pending, one off
            (0x1_0000_0000, 0, INVALID_PARAMETERS),      // Aff3 = 1: nobody
            (0x1_0000_0000_0000, 0, INVALID_PARAMETERS), // bits above Aff3
            (0x0, 3, 0),                                 // everything in Aff3 = 0
        ];
        for (target, level, want) in cases {
            assert_eq!(
                affinity_info_result(target, level, cpus),
                want,
                "{target:#x} level {level}"
            );
        }
        assert!(affinity_matches(0x101, 0x8000_0101, 0));
        assert!(!affinity_matches(0x101, 0x8000_0100, 0));
        assert!(affinity_matches(0x100, 0x8000_01ff, 1));
    }
}
