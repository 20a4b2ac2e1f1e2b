//! Trapped system-register accesses (ESR EC 0x18: MRS, MSR and System instructions).
//!
//! Hypervisor.framework virtualises most EL1 registers itself but traps a few that a Linux
//! guest still touches. [`decode_sysreg_access`] decodes the trap; [`KnownSysreg::identify`]
//! names the registers Aperture expects, each with a reason and a policy. Registers that are
//! safe to ignore, and anything unknown, are read-as-zero / write-ignored by
//! [`apply_default_policy`], which reports its decision so the backend can log it once per
//! register ([`SysregEncoding`] is the key). Registers whose policy is
//! [`SysregPolicy::Emulate`] must be handled by the backend, then finished with
//! [`complete_read`] / [`complete_write`].

use std::fmt;

use crate::esr::{Esr, ExceptionClass};
use crate::vcpu_regs::{read_rt, skip_instruction, write_rt, VcpuRegs};

/// Errors handling a system-register trap.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SysregError {
    /// The exit is not a system-register trap.
    #[error(
        "ESR {esr:#x} is {ec}, not a system register trap; the backend must dispatch on the \
         exception class first"
    )]
    NotSysregTrap {
        /// The syndrome.
        esr: u64,
        /// Its exception class.
        ec: ExceptionClass,
    },
    /// A register that must not be read-as-zero / write-ignored reached the default policy.
    #[error(
        "the guest {verb} {reg} ({encoding}) at PC {pc:#x} and Aperture cannot ignore it: \
         {reason}"
    )]
    NeedsEmulation {
        /// "read" or "wrote".
        verb: &'static str,
        /// The register.
        reg: KnownSysreg,
        /// Its encoding.
        encoding: SysregEncoding,
        /// Guest PC of the instruction.
        pc: u64,
        /// Why it matters.
        reason: &'static str,
    },
}

impl SysregError {
    /// The guest PC the message names, if it names one.
    pub fn pc(&self) -> Option<u64> {
        match self {
            Self::NotSysregTrap { .. } => None,
            Self::NeedsEmulation { pc, .. } => Some(*pc),
        }
    }
}

/// A system register's encoding: `S<op0>_<op1>_C<n>_C<m>_<op2>` in assembler syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysregEncoding {
    /// Op0 (2 for debug registers, 3 for the rest; 1 for System instructions).
    pub op0: u8,
    /// Op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// Op2.
    pub op2: u8,
}

impl SysregEncoding {
    /// An encoding from its fields, in assembler order.
    pub const fn new(op0: u8, op1: u8, crn: u8, crm: u8, op2: u8) -> Self {
        Self { op0, op1, crn, crm, op2 }
    }

    /// The encoding in an EC 0x18 ISS: Op0 21:20, Op2 19:17, Op1 16:14, CRn 13:10, CRm 4:1.
    pub fn from_iss(iss: u32) -> Self {
        let field = |shift: u32, mask: u32| ((iss >> shift) & mask) as u8;
        Self {
            op0: field(20, 0x3),
            op1: field(14, 0x7),
            crn: field(10, 0xf),
            crm: field(1, 0xf),
            op2: field(17, 0x7),
        }
    }
}

impl fmt::Display for SysregEncoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S{}_{}_C{}_C{}_{}", self.op0, self.op1, self.crn, self.crm, self.op2)
    }
}

/// A decoded system-register trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysregAccess {
    /// The register.
    pub reg: SysregEncoding,
    /// Transfer register Rt (ISS 9:5); 31 is XZR.
    pub rt: u8,
    /// MRS (read into Rt) when set; MSR (write from Rt) otherwise (ISS bit 0).
    pub is_read: bool,
}

impl SysregAccess {
    /// The register this access targets, if Aperture knows it.
    pub fn known(&self) -> Option<KnownSysreg> {
        KnownSysreg::identify(self.reg)
    }

    /// The value an MSR writes (0 for XZR).
    pub fn write_value<R: VcpuRegs + ?Sized>(&self, regs: &R) -> u64 {
        read_rt(regs, self.rt)
    }
}

/// Decodes an EC 0x18 exit.
pub fn decode_sysreg_access(esr: u64) -> Result<SysregAccess, SysregError> {
    let syndrome = Esr(esr);
    let ec = syndrome.ec();
    if ec != ExceptionClass::Sys64 {
        return Err(SysregError::NotSysregTrap { esr, ec });
    }
    let iss = syndrome.iss();
    Ok(SysregAccess {
        reg: SysregEncoding::from_iss(iss),
        rt: ((iss >> 5) & 0x1f) as u8,
        is_read: iss & 1 != 0,
    })
}

/// How a trapped register is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysregPolicy {
    /// Read as zero, writes ignored.
    RazWi,
    /// The backend must supply the behaviour; ignoring it would break the guest.
    Emulate,
}

/// Families of trapped registers, each with one policy and one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysregGroup {
    /// OS lock, MDSCR_EL1, breakpoint/watchpoint and claim registers.
    Debug,
    /// Performance monitors.
    Pmu,
    /// EL1 physical timer (CNTP_*).
    PhysicalTimer,
    /// Physical counter (CNTPCT_EL0, CNTPCTSS_EL0).
    PhysicalCounter,
    /// GICv3 CPU interface (ICC_*).
    GicCpuInterface,
    /// The ID register space (Op0 3, Op1 0, CRn 0, CRm 1..=7).
    IdRegister,
}

impl SysregGroup {
    /// How registers of this group are handled.
    pub fn policy(self) -> SysregPolicy {
        match self {
            Self::Debug | Self::Pmu | Self::PhysicalTimer | Self::IdRegister => SysregPolicy::RazWi,
            Self::PhysicalCounter | Self::GicCpuInterface => SysregPolicy::Emulate,
        }
    }

    /// Why the register traps and why the policy is right, for logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Debug => {
                "debug register: Hypervisor.framework traps these while debug-register traps \
                 are on; Linux writes them at boot (OSLAR_EL1 clears the OS lock, MDSCR_EL1 is \
                 reset) and otherwise only for hardware breakpoints and single-step, which the \
                 guest is not offered, so they read as zero and writes are ignored"
            }
            Self::Pmu => {
                "PMU register: the VM describes no PMU, but Linux still resets PMUSERENR_EL0 \
                 and may probe PMCR_EL0 when the ID registers advertise one; reading zero \
                 reports no event counters (PMCR_EL0.N = 0) and nothing counts"
            }
            Self::PhysicalTimer => {
                "EL1 physical timer: only the virtual timer is virtualised and Linux in a VM \
                 uses it (CNTV_*); the physical timer reads as disabled and never fires"
            }
            Self::PhysicalCounter => {
                "physical counter: reading zero would stop time for code that uses it; the \
                 backend must return the guest's counter value (what CNTVCT_EL0 shows)"
            }
            Self::GicCpuInterface => {
                "GIC CPU interface: the in-kernel GIC (macOS 15 or later) handles these, so a \
                 trap means no in-kernel GIC is active; ignoring them would lose interrupts \
                 (ICC_IAR1_EL1 would read as INTID 0), so run on macOS 15 or later"
            }
            Self::IdRegister => {
                "ID register: unallocated or unimplemented ID registers read as zero by the \
                 architecture, which reports the feature as absent"
            }
        }
    }
}

/// Registers a Linux guest touches that Hypervisor.framework may trap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KnownSysreg {
    /// OS Lock Access Register (write-only; Linux writes 0 at boot to clear the lock).
    OslarEl1,
    /// OS Lock Status Register.
    OslsrEl1,
    /// OS Double Lock Register.
    OsdlrEl1,
    /// Debug Power/Reset Control Register.
    DbgprcrEl1,
    /// Monitor Debug System Control Register.
    MdscrEl1,
    /// Monitor DCC Interrupt Enable Register.
    MdccintEl1,
    /// Monitor DCC Status Register.
    MdccsrEl0,
    /// OS Lock Exception Catch Control Register.
    OseccrEl1,
    /// Debug claim tag set.
    DbgclaimsetEl1,
    /// Debug claim tag clear.
    DbgclaimclrEl1,
    /// Debug Authentication Status Register.
    DbgauthstatusEl1,
    /// Breakpoint value register n (0..=15).
    Dbgbvr(u8),
    /// Breakpoint control register n (0..=15).
    Dbgbcr(u8),
    /// Watchpoint value register n (0..=15).
    Dbgwvr(u8),
    /// Watchpoint control register n (0..=15).
    Dbgwcr(u8),
    /// PMU control.
    PmcrEl0,
    /// Counter enable set.
    PmcntensetEl0,
    /// Counter enable clear.
    PmcntenclrEl0,
    /// Overflow flag status clear.
    PmovsclrEl0,
    /// Software increment.
    PmswincEl0,
    /// Event counter selection.
    PmselrEl0,
    /// Common event identification 0.
    Pmceid0El0,
    /// Common event identification 1.
    Pmceid1El0,
    /// Cycle counter.
    PmccntrEl0,
    /// Selected event type.
    PmxevtyperEl0,
    /// Selected event count.
    PmxevcntrEl0,
    /// User enable (Linux clears it at CPU setup when a PMU is advertised).
    PmuserenrEl0,
    /// Interrupt enable set.
    PmintensetEl1,
    /// Interrupt enable clear.
    PmintenclrEl1,
    /// Overflow flag status set.
    PmovssetEl0,
    /// Machine identification.
    PmmirEl1,
    /// Event counter n (0..=30).
    Pmevcntr(u8),
    /// Event type n (0..=30).
    Pmevtyper(u8),
    /// Cycle counter filter.
    PmccfiltrEl0,
    /// Physical count.
    CntpctEl0,
    /// Self-synchronised physical count (FEAT_ECV).
    CntpctssEl0,
    /// Physical timer value.
    CntpTvalEl0,
    /// Physical timer control.
    CntpCtlEl0,
    /// Physical timer compare value.
    CntpCvalEl0,
    /// A GICv3 CPU interface register, by name.
    Icc(&'static str),
    /// A register in the ID space.
    Id(SysregEncoding),
}

/// ICC_* registers at EL1: (CRn, CRm, Op2, name); all have Op0 3, Op1 0.
const ICC_REGS: &[(u8, u8, u8, &str)] = &[
    (4, 6, 0, "ICC_PMR_EL1"),
    (12, 8, 0, "ICC_IAR0_EL1"),
    (12, 8, 1, "ICC_EOIR0_EL1"),
    (12, 8, 2, "ICC_HPPIR0_EL1"),
    (12, 8, 3, "ICC_BPR0_EL1"),
    (12, 8, 4, "ICC_AP0R0_EL1"),
    (12, 8, 5, "ICC_AP0R1_EL1"),
    (12, 8, 6, "ICC_AP0R2_EL1"),
    (12, 8, 7, "ICC_AP0R3_EL1"),
    (12, 9, 0, "ICC_AP1R0_EL1"),
    (12, 9, 1, "ICC_AP1R1_EL1"),
    (12, 9, 2, "ICC_AP1R2_EL1"),
    (12, 9, 3, "ICC_AP1R3_EL1"),
    (12, 11, 1, "ICC_DIR_EL1"),
    (12, 11, 3, "ICC_RPR_EL1"),
    (12, 11, 5, "ICC_SGI1R_EL1"),
    (12, 11, 6, "ICC_ASGI1R_EL1"),
    (12, 11, 7, "ICC_SGI0R_EL1"),
    (12, 12, 0, "ICC_IAR1_EL1"),
    (12, 12, 1, "ICC_EOIR1_EL1"),
    (12, 12, 2, "ICC_HPPIR1_EL1"),
    (12, 12, 3, "ICC_BPR1_EL1"),
    (12, 12, 4, "ICC_CTLR_EL1"),
    (12, 12, 5, "ICC_SRE_EL1"),
    (12, 12, 6, "ICC_IGRPEN0_EL1"),
    (12, 12, 7, "ICC_IGRPEN1_EL1"),
];

impl KnownSysreg {
    /// The register at `enc`, if it is one Aperture knows.
    pub fn identify(enc: SysregEncoding) -> Option<Self> {
        use KnownSysreg::*;
        let SysregEncoding { op0, op1, crn, crm, op2 } = enc;
        let reg = match (op0, op1, crn, crm, op2) {
            (2, 0, 1, 0, 4) => OslarEl1,
            (2, 0, 1, 1, 4) => OslsrEl1,
            (2, 0, 1, 3, 4) => OsdlrEl1,
            (2, 0, 1, 4, 4) => DbgprcrEl1,
            (2, 0, 0, 2, 2) => MdscrEl1,
            (2, 0, 0, 2, 0) => MdccintEl1,
            (2, 3, 0, 1, 0) => MdccsrEl0,
            (2, 0, 0, 6, 2) => OseccrEl1,
            (2, 0, 7, 8, 6) => DbgclaimsetEl1,
            (2, 0, 7, 9, 6) => DbgclaimclrEl1,
            (2, 0, 7, 14, 6) => DbgauthstatusEl1,
            (2, 0, 0, n, 4) => Dbgbvr(n),
            (2, 0, 0, n, 5) => Dbgbcr(n),
            (2, 0, 0, n, 6) => Dbgwvr(n),
            (2, 0, 0, n, 7) => Dbgwcr(n),
            (3, 3, 9, 12, 0) => PmcrEl0,
            (3, 3, 9, 12, 1) => PmcntensetEl0,
            (3, 3, 9, 12, 2) => PmcntenclrEl0,
            (3, 3, 9, 12, 3) => PmovsclrEl0,
            (3, 3, 9, 12, 4) => PmswincEl0,
            (3, 3, 9, 12, 5) => PmselrEl0,
            (3, 3, 9, 12, 6) => Pmceid0El0,
            (3, 3, 9, 12, 7) => Pmceid1El0,
            (3, 3, 9, 13, 0) => PmccntrEl0,
            (3, 3, 9, 13, 1) => PmxevtyperEl0,
            (3, 3, 9, 13, 2) => PmxevcntrEl0,
            (3, 3, 9, 14, 0) => PmuserenrEl0,
            (3, 0, 9, 14, 1) => PmintensetEl1,
            (3, 0, 9, 14, 2) => PmintenclrEl1,
            (3, 3, 9, 14, 3) => PmovssetEl0,
            (3, 0, 9, 14, 6) => PmmirEl1,
            (3, 3, 14, 15, 7) => PmccfiltrEl0,
            (3, 3, 14, 8..=11, n) => Pmevcntr((crm - 8) * 8 + n),
            (3, 3, 14, 12..=15, n) => Pmevtyper((crm - 12) * 8 + n),
            (3, 3, 14, 0, 1) => CntpctEl0,
            (3, 3, 14, 0, 5) => CntpctssEl0,
            (3, 3, 14, 2, 0) => CntpTvalEl0,
            (3, 3, 14, 2, 1) => CntpCtlEl0,
            (3, 3, 14, 2, 2) => CntpCvalEl0,
            (3, 0, 0, 1..=7, _) => Id(enc),
            (3, 0, _, _, _) => {
                let &(_, _, _, name) =
                    ICC_REGS.iter().find(|&&(n, m, o, _)| (n, m, o) == (crn, crm, op2))?;
                Icc(name)
            }
            _ => return None,
        };
        Some(reg)
    }

    /// The register's encoding.
    pub fn encoding(self) -> SysregEncoding {
        use KnownSysreg::*;
        let e = SysregEncoding::new;
        match self {
            OslarEl1 => e(2, 0, 1, 0, 4),
            OslsrEl1 => e(2, 0, 1, 1, 4),
            OsdlrEl1 => e(2, 0, 1, 3, 4),
            DbgprcrEl1 => e(2, 0, 1, 4, 4),
            MdscrEl1 => e(2, 0, 0, 2, 2),
            MdccintEl1 => e(2, 0, 0, 2, 0),
            MdccsrEl0 => e(2, 3, 0, 1, 0),
            OseccrEl1 => e(2, 0, 0, 6, 2),
            DbgclaimsetEl1 => e(2, 0, 7, 8, 6),
            DbgclaimclrEl1 => e(2, 0, 7, 9, 6),
            DbgauthstatusEl1 => e(2, 0, 7, 14, 6),
            Dbgbvr(n) => e(2, 0, 0, n, 4),
            Dbgbcr(n) => e(2, 0, 0, n, 5),
            Dbgwvr(n) => e(2, 0, 0, n, 6),
            Dbgwcr(n) => e(2, 0, 0, n, 7),
            PmcrEl0 => e(3, 3, 9, 12, 0),
            PmcntensetEl0 => e(3, 3, 9, 12, 1),
            PmcntenclrEl0 => e(3, 3, 9, 12, 2),
            PmovsclrEl0 => e(3, 3, 9, 12, 3),
            PmswincEl0 => e(3, 3, 9, 12, 4),
            PmselrEl0 => e(3, 3, 9, 12, 5),
            Pmceid0El0 => e(3, 3, 9, 12, 6),
            Pmceid1El0 => e(3, 3, 9, 12, 7),
            PmccntrEl0 => e(3, 3, 9, 13, 0),
            PmxevtyperEl0 => e(3, 3, 9, 13, 1),
            PmxevcntrEl0 => e(3, 3, 9, 13, 2),
            PmuserenrEl0 => e(3, 3, 9, 14, 0),
            PmintensetEl1 => e(3, 0, 9, 14, 1),
            PmintenclrEl1 => e(3, 0, 9, 14, 2),
            PmovssetEl0 => e(3, 3, 9, 14, 3),
            PmmirEl1 => e(3, 0, 9, 14, 6),
            Pmevcntr(n) => e(3, 3, 14, 8 + n / 8, n % 8),
            Pmevtyper(n) => e(3, 3, 14, 12 + n / 8, n % 8),
            PmccfiltrEl0 => e(3, 3, 14, 15, 7),
            CntpctEl0 => e(3, 3, 14, 0, 1),
            CntpctssEl0 => e(3, 3, 14, 0, 5),
            CntpTvalEl0 => e(3, 3, 14, 2, 0),
            CntpCtlEl0 => e(3, 3, 14, 2, 1),
            CntpCvalEl0 => e(3, 3, 14, 2, 2),
            Icc(name) => ICC_REGS
                .iter()
                .find(|&&(_, _, _, n)| n == name)
                .map_or(e(3, 0, 12, 12, 0), |&(crn, crm, op2, _)| e(3, 0, crn, crm, op2)),
            Id(enc) => enc,
        }
    }

    /// The register's family.
    pub fn group(self) -> SysregGroup {
        use KnownSysreg::*;
        match self {
            OslarEl1 | OslsrEl1 | OsdlrEl1 | DbgprcrEl1 | MdscrEl1 | MdccintEl1 | MdccsrEl0
            | OseccrEl1 | DbgclaimsetEl1 | DbgclaimclrEl1 | DbgauthstatusEl1 | Dbgbvr(_)
            | Dbgbcr(_) | Dbgwvr(_) | Dbgwcr(_) => SysregGroup::Debug,
            PmcrEl0 | PmcntensetEl0 | PmcntenclrEl0 | PmovsclrEl0 | PmswincEl0 | PmselrEl0
            | Pmceid0El0 | Pmceid1El0 | PmccntrEl0 | PmxevtyperEl0 | PmxevcntrEl0
            | PmuserenrEl0 | PmintensetEl1 | PmintenclrEl1 | PmovssetEl0 | PmmirEl1
            | Pmevcntr(_) | Pmevtyper(_) | PmccfiltrEl0 => SysregGroup::Pmu,
            CntpctEl0 | CntpctssEl0 => SysregGroup::PhysicalCounter,
            CntpTvalEl0 | CntpCtlEl0 | CntpCvalEl0 => SysregGroup::PhysicalTimer,
            Icc(_) => SysregGroup::GicCpuInterface,
            Id(_) => SysregGroup::IdRegister,
        }
    }
}

impl fmt::Display for KnownSysreg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use KnownSysreg::*;
        let name = match self {
            Dbgbvr(n) => return write!(f, "DBGBVR{n}_EL1"),
            Dbgbcr(n) => return write!(f, "DBGBCR{n}_EL1"),
            Dbgwvr(n) => return write!(f, "DBGWVR{n}_EL1"),
            Dbgwcr(n) => return write!(f, "DBGWCR{n}_EL1"),
            Pmevcntr(n) => return write!(f, "PMEVCNTR{n}_EL0"),
            Pmevtyper(n) => return write!(f, "PMEVTYPER{n}_EL0"),
            Id(enc) => return write!(f, "ID register {enc}"),
            Icc(name) => name,
            OslarEl1 => "OSLAR_EL1",
            OslsrEl1 => "OSLSR_EL1",
            OsdlrEl1 => "OSDLR_EL1",
            DbgprcrEl1 => "DBGPRCR_EL1",
            MdscrEl1 => "MDSCR_EL1",
            MdccintEl1 => "MDCCINT_EL1",
            MdccsrEl0 => "MDCCSR_EL0",
            OseccrEl1 => "OSECCR_EL1",
            DbgclaimsetEl1 => "DBGCLAIMSET_EL1",
            DbgclaimclrEl1 => "DBGCLAIMCLR_EL1",
            DbgauthstatusEl1 => "DBGAUTHSTATUS_EL1",
            PmcrEl0 => "PMCR_EL0",
            PmcntensetEl0 => "PMCNTENSET_EL0",
            PmcntenclrEl0 => "PMCNTENCLR_EL0",
            PmovsclrEl0 => "PMOVSCLR_EL0",
            PmswincEl0 => "PMSWINC_EL0",
            PmselrEl0 => "PMSELR_EL0",
            Pmceid0El0 => "PMCEID0_EL0",
            Pmceid1El0 => "PMCEID1_EL0",
            PmccntrEl0 => "PMCCNTR_EL0",
            PmxevtyperEl0 => "PMXEVTYPER_EL0",
            PmxevcntrEl0 => "PMXEVCNTR_EL0",
            PmuserenrEl0 => "PMUSERENR_EL0",
            PmintensetEl1 => "PMINTENSET_EL1",
            PmintenclrEl1 => "PMINTENCLR_EL1",
            PmovssetEl0 => "PMOVSSET_EL0",
            PmmirEl1 => "PMMIR_EL1",
            PmccfiltrEl0 => "PMCCFILTR_EL0",
            CntpctEl0 => "CNTPCT_EL0",
            CntpctssEl0 => "CNTPCTSS_EL0",
            CntpTvalEl0 => "CNTP_TVAL_EL0",
            CntpCtlEl0 => "CNTP_CTL_EL0",
            CntpCvalEl0 => "CNTP_CVAL_EL0",
        };
        f.write_str(name)
    }
}

/// Reason reported for registers Aperture does not know.
pub const UNKNOWN_REASON: &str =
    "not a register Aperture expects to be trapped; it reads as zero and writes are ignored";

/// What [`apply_default_policy`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SysregDecision {
    /// The register (the key for logging once per register).
    pub reg: SysregEncoding,
    /// Its name, if known.
    pub known: Option<KnownSysreg>,
    /// MRS (read as zero) or MSR (ignored).
    pub is_read: bool,
    /// Why that is the right thing to do.
    pub reason: &'static str,
}

impl fmt::Display for SysregDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = if self.is_read { "read of" } else { "write to" };
        let outcome = if self.is_read { "returned 0" } else { "ignored" };
        match self.known {
            Some(known) => {
                write!(f, "guest {action} {known} ({}) {outcome}: {}", self.reg, self.reason)
            }
            None => write!(f, "guest {action} {} {outcome}: {}", self.reg, self.reason),
        }
    }
}

/// Applies read-as-zero / write-ignored to `access`, then steps the PC. Refuses registers whose
/// policy is [`SysregPolicy::Emulate`] (the backend must handle those itself) without touching
/// the registers.
pub fn apply_default_policy<R: VcpuRegs + ?Sized>(
    access: &SysregAccess,
    regs: &mut R,
) -> Result<SysregDecision, SysregError> {
    let known = access.known();
    let reason = match known {
        Some(reg) if reg.group().policy() == SysregPolicy::Emulate => {
            return Err(SysregError::NeedsEmulation {
                verb: if access.is_read { "read" } else { "wrote" },
                reg,
                encoding: access.reg,
                pc: regs.pc(),
                reason: reg.group().reason(),
            });
        }
        Some(reg) => reg.group().reason(),
        None => UNKNOWN_REASON,
    };
    if access.is_read {
        complete_read(access, 0, regs);
    } else {
        complete_write(regs);
    }
    Ok(SysregDecision { reg: access.reg, known, is_read: access.is_read, reason })
}

/// Finishes an MRS with `value`: writes Rt (discarded for XZR) and steps the PC by 4.
pub fn complete_read<R: VcpuRegs + ?Sized>(access: &SysregAccess, value: u64, regs: &mut R) {
    write_rt(regs, access.rt, value);
    skip_instruction(regs);
}

/// Finishes an MSR (after the backend used [`SysregAccess::write_value`]): steps the PC by 4.
pub fn complete_write<R: VcpuRegs + ?Sized>(regs: &mut R) {
    skip_instruction(regs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu_regs::test_regs::TestRegs;

    const PC: u64 = 0x4008_2000;

    /// MRS/MSR encodings with their EC 0x18 syndromes. `captured` rows come from QEMU 10.0's
    /// EL2 model (MDCR_EL2.TDA/TDOSA/TPM/TPMCR set, CNTHCTL_EL2.EL1PCTEN/EL1PCEN clear);
    /// the others are assembled from the ISS layout.
    struct Row {
        asm: &'static str,
        insn: u32,
        esr: u64,
        captured: bool,
        reg: Option<KnownSysreg>,
    }

    fn rows() -> Vec<Row> {
        use KnownSysreg::*;
        let row = |asm, insn, esr, captured, reg| Row { asm, insn, esr, captured, reg };
        vec![
            row("mrs x2, pmcr_el0", 0xd53b_9c02, 0x6230_e459, true, Some(PmcrEl0)),
            row("msr oslar_el1, x1", 0xd510_1081, 0x6228_0420, true, Some(OslarEl1)),
            row("mrs x3, oslsr_el1", 0xd530_1183, 0x6228_0463, true, Some(OslsrEl1)),
            row("msr osdlr_el1, xzr", 0xd510_139f, 0x6228_07e6, true, Some(OsdlrEl1)),
            row("msr mdscr_el1, x4", 0xd510_0244, 0x6224_0084, true, Some(MdscrEl1)),
            row("mrs x5, dbgbvr3_el1", 0xd530_0385, 0x6228_00a7, true, Some(Dbgbvr(3))),
            row("msr dbgwcr1_el1, x6", 0xd510_01e6, 0x622e_00c2, true, Some(Dbgwcr(1))),
            row("msr pmuserenr_el0, xzr", 0xd51b_9e1f, 0x6230_e7fc, true, Some(PmuserenrEl0)),
            row("mrs x8, pmccfiltr_el0", 0xd53b_efe8, 0x623e_f91f, true, Some(PmccfiltrEl0)),
            row("msr pmevtyper5_el0, x9", 0xd51b_eca9, 0x623a_f938, true, Some(Pmevtyper(5))),
            row("mrs x30, pmevcntr4_el0", 0xd53b_e89e, 0x6238_fbd1, true, Some(Pmevcntr(4))),
            row("msr pmcntenclr_el0, x10", 0xd51b_9c4a, 0x6234_e558, true, Some(PmcntenclrEl0)),
            row("mrs x6, cntpct_el0", 0xd53b_e026, 0x6232_f8c1, true, Some(CntpctEl0)),
            row("msr cntp_ctl_el0, x7", 0xd51b_e227, 0x6232_f8e4, true, Some(CntpCtlEl0)),
            row("msr cntp_tval_el0, x7", 0xd51b_e207, 0x6230_f8e4, true, Some(CntpTvalEl0)),
            row("mrs x11, cntp_cval_el0", 0xd53b_e24b, 0x6234_f965, true, Some(CntpCvalEl0)),
            row("mrs xzr, pmcr_el0", 0xd53b_9c1f, 0x6230_e7f9, true, Some(PmcrEl0)),
            row("mrs x0, mpidr_el1", 0xd538_00a0, 0x623a_0001, false, None),
            row("mrs x0, icc_iar1_el1", 0xd538_cc00, 0x6230_3019, false, Some(Icc("ICC_IAR1_EL1"))),
            row(
                "msr icc_sgi1r_el1, x1",
                0xd518_cba1,
                0x623a_3036,
                false,
                Some(Icc("ICC_SGI1R_EL1")),
            ),
            row(
                "msr icc_eoir1_el1, x2",
                0xd518_cc22,
                0x6232_3058,
                false,
                Some(Icc("ICC_EOIR1_EL1")),
            ),
            row(
                "mrs x12, id_aa64pfr0_el1",
                0xd538_040c,
                0x6230_0189,
                false,
                Some(Id(SysregEncoding::new(3, 0, 0, 4, 0))),
            ),
            row("msr dbgwcr15_el1, x6", 0xd510_0fe6, 0x622e_00de, false, Some(Dbgwcr(15))),
            row("mrs x30, pmevcntr17_el0", 0xd53b_ea3e, 0x6232_fbd5, false, Some(Pmevcntr(17))),
            row("msr pmevtyper30_el0, x1", 0xd51b_efc1, 0x623c_f83e, false, Some(Pmevtyper(30))),
        ]
    }

    #[test]
    fn encodings_match_their_instructions() {
        for r in rows() {
            let access = decode_sysreg_access(r.esr).unwrap();
            // MRS/MSR: L 21, op0 20:19, op1 18:16, CRn 15:12, CRm 11:8, op2 7:5, Rt 4:0.
            let f = |shift: u32, mask: u32| ((r.insn >> shift) & mask) as u8;
            let want = SysregAccess {
                reg: SysregEncoding::new(f(19, 0x3), f(16, 0x7), f(12, 0xf), f(8, 0xf), f(5, 0x7)),
                rt: f(0, 0x1f),
                is_read: r.insn & (1 << 21) != 0,
            };
            assert_eq!(access, want, "{} (ESR {:#x}, captured: {})", r.asm, r.esr, r.captured);
            assert_eq!(access.known(), r.reg, "{}", r.asm);
            if let Some(reg) = r.reg {
                assert_eq!(reg.encoding(), access.reg, "{}", r.asm);
                let name = reg.to_string().to_lowercase();
                assert!(
                    r.asm.contains(&name) || matches!(reg, KnownSysreg::Id(_)),
                    "{}: named {name}",
                    r.asm
                );
            }
        }
    }

    #[test]
    fn raz_wi_reads_write_zero_to_rt_and_step() {
        // mrs x2, pmcr_el0: x2 becomes 0, nothing else changes, PC + 4.
        let access = decode_sysreg_access(0x6230_e459).unwrap();
        let mut regs = TestRegs::new(PC);
        let decision = apply_default_policy(&access, &mut regs).unwrap();
        let mut want = TestRegs::new(PC + 4);
        want.x[2] = 0;
        assert_eq!(regs, want);
        assert_eq!(decision.known, Some(KnownSysreg::PmcrEl0));
        assert!(decision.is_read);
        assert_eq!(decision.reason, SysregGroup::Pmu.reason());
        let text = decision.to_string();
        assert!(text.contains("PMCR_EL0 (S3_3_C9_C12_0) returned 0"), "{text}");

        // mrs x30, pmevcntr4_el0: the link register is written.
        let access = decode_sysreg_access(0x6238_fbd1).unwrap();
        let mut regs = TestRegs::new(PC);
        apply_default_policy(&access, &mut regs).unwrap();
        assert_eq!((regs.x[30], regs.pc), (0, PC + 4));

        // mrs xzr, pmcr_el0: nothing is written (TestRegs panics on register 31).
        let access = decode_sysreg_access(0x6230_e7f9).unwrap();
        let mut regs = TestRegs::new(PC);
        apply_default_policy(&access, &mut regs).unwrap();
        assert_eq!(regs, TestRegs::new(PC + 4));
    }

    #[test]
    fn raz_wi_writes_change_only_the_pc() {
        for esr in [0x6228_0420u64, 0x6228_07e6, 0x6224_0084, 0x6230_e7fc, 0x6232_f8e4] {
            let access = decode_sysreg_access(esr).unwrap();
            assert!(!access.is_read);
            let mut regs = TestRegs::new(PC);
            let decision = apply_default_policy(&access, &mut regs).unwrap();
            assert_eq!(regs, TestRegs::new(PC + 4), "ESR {esr:#x}");
            assert!(decision.to_string().contains("ignored"), "{decision}");
        }
    }

    #[test]
    fn unknown_registers_are_raz_wi_and_reported() {
        // S3_7_C15_C0_0 (an implementation-defined register).
        let enc = SysregEncoding::new(3, 7, 15, 0, 0);
        let access = SysregAccess { reg: enc, rt: 4, is_read: true };
        let mut regs = TestRegs::new(PC);
        let decision = apply_default_policy(&access, &mut regs).unwrap();
        assert_eq!(
            decision,
            SysregDecision { reg: enc, known: None, is_read: true, reason: UNKNOWN_REASON }
        );
        assert_eq!((regs.x[4], regs.pc), (0, PC + 4));
        assert!(decision.to_string().starts_with("guest read of S3_7_C15_C0_0 returned 0"));
        // An unassigned ICC slot is unknown, not a GIC register.
        assert_eq!(KnownSysreg::identify(SysregEncoding::new(3, 0, 12, 10, 0)), None);
    }

    #[test]
    fn counter_and_gic_need_the_backend() {
        // mrs x6, cntpct_el0 and msr icc_sgi1r_el1, x1.
        for (esr, name) in [(0x6232_f8c1u64, "CNTPCT_EL0"), (0x623a_3036, "ICC_SGI1R_EL1")] {
            let access = decode_sysreg_access(esr).unwrap();
            let mut regs = TestRegs::new(PC);
            let err = apply_default_policy(&access, &mut regs).unwrap_err();
            assert_eq!(regs, TestRegs::new(PC), "registers untouched on refusal");
            let msg = err.to_string();
            assert!(msg.contains(name) && msg.contains(&format!("PC {PC:#x}")), "{msg}");
        }
        // The backend emulates CNTPCT_EL0 with its own value.
        let access = decode_sysreg_access(0x6232_f8c1).unwrap();
        let mut regs = TestRegs::new(PC);
        complete_read(&access, 0x1234_5678, &mut regs);
        assert_eq!((regs.x[6], regs.pc), (0x1234_5678, PC + 4));
        // And reads MSR data through the XZR rule.
        let msr_xzr = decode_sysreg_access(0x6228_07e6).unwrap(); // msr osdlr_el1, xzr
        assert_eq!(msr_xzr.write_value(&regs), 0);
        let msr_x1 = decode_sysreg_access(0x623a_3036).unwrap(); // msr icc_sgi1r_el1, x1
        assert_eq!(msr_x1.write_value(&regs), regs.x[1]);
        complete_write(&mut regs);
        assert_eq!(regs.pc, PC + 8);
    }

    #[test]
    fn identify_and_encoding_round_trip() {
        use KnownSysreg::*;
        let mut all = vec![
            OslarEl1,
            OslsrEl1,
            OsdlrEl1,
            DbgprcrEl1,
            MdscrEl1,
            MdccintEl1,
            MdccsrEl0,
            OseccrEl1,
            DbgclaimsetEl1,
            DbgclaimclrEl1,
            DbgauthstatusEl1,
            PmcrEl0,
            PmcntensetEl0,
            PmcntenclrEl0,
            PmovsclrEl0,
            PmswincEl0,
            PmselrEl0,
            Pmceid0El0,
            Pmceid1El0,
            PmccntrEl0,
            PmxevtyperEl0,
            PmxevcntrEl0,
            PmuserenrEl0,
            PmintensetEl1,
            PmintenclrEl1,
            PmovssetEl0,
            PmmirEl1,
            PmccfiltrEl0,
            CntpctEl0,
            CntpctssEl0,
            CntpTvalEl0,
            CntpCtlEl0,
            CntpCvalEl0,
        ];
        for n in 0..16 {
            all.extend([Dbgbvr(n), Dbgbcr(n), Dbgwvr(n), Dbgwcr(n)]);
        }
        for n in 0..31 {
            all.extend([Pmevcntr(n), Pmevtyper(n)]);
        }
        all.extend(ICC_REGS.iter().map(|&(_, _, _, name)| Icc(name)));
        let mut seen = std::collections::HashSet::new();
        for reg in all {
            assert_eq!(KnownSysreg::identify(reg.encoding()), Some(reg), "{reg}");
            assert!(seen.insert(reg.encoding()), "{reg} shares an encoding");
        }
        // PMEVTYPER31 would be PMCCFILTR_EL0's encoding.
        assert_eq!(Pmevtyper(30).encoding(), SysregEncoding::new(3, 3, 14, 15, 6));
    }

    #[test]
    fn groups_have_the_documented_policy() {
        use KnownSysreg::*;
        let cases = [
            (OslarEl1, SysregGroup::Debug, SysregPolicy::RazWi),
            (Dbgbcr(2), SysregGroup::Debug, SysregPolicy::RazWi),
            (PmuserenrEl0, SysregGroup::Pmu, SysregPolicy::RazWi),
            (CntpCtlEl0, SysregGroup::PhysicalTimer, SysregPolicy::RazWi),
            (CntpctEl0, SysregGroup::PhysicalCounter, SysregPolicy::Emulate),
            (Icc("ICC_PMR_EL1"), SysregGroup::GicCpuInterface, SysregPolicy::Emulate),
            (Id(SysregEncoding::new(3, 0, 0, 7, 3)), SysregGroup::IdRegister, SysregPolicy::RazWi),
        ];
        for (reg, group, policy) in cases {
            assert_eq!(reg.group(), group, "{reg}");
            assert_eq!(group.policy(), policy, "{reg}");
        }
        // MPIDR_EL1 (CRm 0) is not in the ID space that reads as zero.
        assert_eq!(KnownSysreg::identify(SysregEncoding::new(3, 0, 0, 0, 5)), None);
    }

    #[test]
    fn not_a_sysreg_trap() {
        assert_eq!(
            decode_sysreg_access(0x9381_0005),
            Err(SysregError::NotSysregTrap {
                esr: 0x9381_0005,
                ec: ExceptionClass::DataAbortLowerEl
            })
        );
    }
}
