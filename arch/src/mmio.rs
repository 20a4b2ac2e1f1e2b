//! Turning a guest data abort into an MMIO access, and completing it.
//!
//! A backend that gets raw data aborts (Hypervisor.framework) calls [`decode_data_abort`] with
//! the syndrome and the faulting IPA, performs the access on its device bus, then calls
//! [`complete_read`] or [`complete_write`], which update the guest registers and step the PC
//! over the instruction. The syndrome alone describes the access only for single-register
//! loads and stores without writeback (ESR ISV = 1); Aperture does not fetch and decode guest
//! instructions, so anything else on MMIO is reported as an error.
//!
//! Data is little-endian: Linux arm64 guests run with SCTLR_EL1.EE = 0.

use crate::esr::{Esr, ExceptionClass, FaultStatus};
use crate::vcpu_regs::{read_rt, skip_instruction, write_rt, VcpuRegs};

/// Errors decoding a data abort as an MMIO access.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MmioDecodeError {
    /// The exit is not a data abort; only data aborts are MMIO accesses.
    #[error(
        "ESR {esr:#x} is {ec}, not a data abort, so it is not an MMIO access; the backend \
         must dispatch on the exception class before decoding MMIO"
    )]
    NotDataAbort {
        /// The syndrome.
        esr: u64,
        /// Its exception class.
        ec: ExceptionClass,
    },
    /// ISV = 0: the syndrome does not describe the access.
    #[error(
        "the guest instruction at PC {pc:#x} accessed MMIO at IPA {ipa:#x} with an instruction \
         Aperture cannot emulate on MMIO (ESR {esr:#x} has ISV=0: a load/store pair, an \
         address writeback (pre/post-index), an exclusive or atomic, or a SIMD/FP register); \
         the guest driver must use single LDR/STR accesses on this region, and a passthrough \
         BAR page that drivers touch this way must be mapped into the guest, not trapped"
    )]
    NoSyndrome {
        /// Guest PC of the instruction.
        pc: u64,
        /// Faulting guest physical address.
        ipa: u64,
        /// The syndrome.
        esr: u64,
    },
    /// CM = 1: a cache maintenance instruction on an address that is not guest RAM.
    #[error(
        "the guest instruction at PC {pc:#x} is a cache maintenance operation (DC/IC by \
         address) on IPA {ipa:#x}, which is not guest RAM (ESR {esr:#x}); cleaning caches on \
         emulated MMIO is a guest driver bug, or the region should be RAM in the memory map"
    )]
    CacheMaintenance {
        /// Guest PC of the instruction.
        pc: u64,
        /// Faulting guest physical address.
        ipa: u64,
        /// The syndrome.
        esr: u64,
    },
    /// S1PTW = 1: the guest's own page-table walk touched a non-RAM address.
    #[error(
        "the guest's stage-1 page-table walk for the instruction at PC {pc:#x} read IPA \
         {ipa:#x}, which is not guest RAM (ESR {esr:#x}); the guest page tables point outside \
         RAM: check that the kernel's memory map (device tree /memory) matches the VM's RAM"
    )]
    PageTableWalk {
        /// Guest PC of the instruction.
        pc: u64,
        /// Faulting guest physical address.
        ipa: u64,
        /// The syndrome.
        esr: u64,
    },
    /// The fault is not the kind an unmapped or read-only MMIO page produces.
    #[error(
        "the guest access at PC {pc:#x} to IPA {ipa:#x} raised a {status} (ESR {esr:#x}), not \
         an MMIO trap; {hint}"
    )]
    NotAnMmioFault {
        /// Guest PC of the instruction.
        pc: u64,
        /// Faulting guest physical address.
        ipa: u64,
        /// The syndrome.
        esr: u64,
        /// The fault kind from DFSC.
        status: FaultStatus,
        /// What to check.
        hint: &'static str,
    },
    /// IL = 0: a 16-bit T32 instruction, i.e. an AArch32 guest.
    #[error(
        "a 16-bit (T32) guest instruction at PC {pc:#x} accessed MMIO at IPA {ipa:#x} (ESR \
         {esr:#x}); Aperture only emulates MMIO for AArch64 guest code"
    )]
    Aarch32Thumb {
        /// Guest PC of the instruction.
        pc: u64,
        /// Faulting guest physical address.
        ipa: u64,
        /// The syndrome.
        esr: u64,
    },
}

impl MmioDecodeError {
    /// The guest PC the message names, if it names one.
    pub fn pc(&self) -> Option<u64> {
        match self {
            Self::NotDataAbort { .. } => None,
            Self::NoSyndrome { pc, .. }
            | Self::CacheMaintenance { pc, .. }
            | Self::PageTableWalk { pc, .. }
            | Self::NotAnMmioFault { pc, .. }
            | Self::Aarch32Thumb { pc, .. } => Some(*pc),
        }
    }
}

/// A guest MMIO load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioRead {
    /// Guest physical address.
    pub addr: u64,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// Destination register; 31 is XZR (the value is discarded).
    pub reg: u8,
    /// Sign-extend the loaded value (LDRSB, LDRSH, LDRSW).
    pub sign_extend: bool,
    /// The destination is a 64-bit Xt; otherwise a 32-bit Wt, whose write clears bits 63:32.
    pub sixty_four: bool,
}

/// A guest MMIO store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioWrite {
    /// Guest physical address.
    pub addr: u64,
    /// Access size in bytes: 1, 2, 4 or 8.
    pub size: u8,
    /// The stored value, already masked to `size` bytes.
    pub data: u64,
}

/// An MMIO access decoded from a data abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmioAccess {
    /// A load: read `size` bytes from the device, then call [`complete_read`].
    Read(MmioRead),
    /// A store: write the data to the device, then call [`complete_write`].
    Write(MmioWrite),
}

impl MmioRead {
    /// The register value for `raw` (the loaded bytes as a little-endian number, already
    /// masked to `size` bytes): sign- or zero-extended, and limited to 32 bits for Wt.
    pub fn extend(&self, raw: u64) -> u64 {
        let bits = u32::from(self.size) * 8;
        let value = if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            (((raw << shift) as i64) >> shift) as u64
        } else {
            raw
        };
        if self.sixty_four {
            value
        } else {
            value & 0xffff_ffff
        }
    }
}

impl MmioWrite {
    /// The stored bytes, little-endian; the first `size` of them are the access.
    pub fn le_bytes(&self) -> [u8; 8] {
        self.data.to_le_bytes()
    }
}

/// Decodes a data abort (`esr`, faulting guest physical address `ipa`) into the MMIO access
/// to perform. Reads the store data from `regs` (the zero register stores 0); `regs.pc()` is
/// only used in error messages.
pub fn decode_data_abort<R: VcpuRegs + ?Sized>(
    esr: u64,
    ipa: u64,
    regs: &R,
) -> Result<MmioAccess, MmioDecodeError> {
    let syndrome = Esr(esr);
    let ec = syndrome.ec();
    if ec != ExceptionClass::DataAbortLowerEl {
        return Err(MmioDecodeError::NotDataAbort { esr, ec });
    }
    let pc = regs.pc();
    let da = syndrome.data_abort();
    if da.s1ptw {
        return Err(MmioDecodeError::PageTableWalk { pc, ipa, esr });
    }
    if da.cm {
        return Err(MmioDecodeError::CacheMaintenance { pc, ipa, esr });
    }
    let status = da.fault_status();
    if !status.is_mmio_trap() {
        return Err(MmioDecodeError::NotAnMmioFault { pc, ipa, esr, status, hint: hint(status) });
    }
    if !da.isv {
        return Err(MmioDecodeError::NoSyndrome { pc, ipa, esr });
    }
    // With ISV = 1, IL gives the instruction size; 0 only happens for 16-bit T32 code.
    if !syndrome.il() {
        return Err(MmioDecodeError::Aarch32Thumb { pc, ipa, esr });
    }
    let size = da.access_size;
    if da.wnr {
        let data = read_rt(regs, da.srt) & size_mask(size);
        Ok(MmioAccess::Write(MmioWrite { addr: ipa, size, data }))
    } else {
        Ok(MmioAccess::Read(MmioRead {
            addr: ipa,
            size,
            reg: da.srt,
            sign_extend: da.sse,
            sixty_four: da.sf,
        }))
    }
}

/// Completes a load with the bytes the device returned (little-endian; missing bytes read as
/// 0, extra bytes are ignored): extends the value, writes it to the destination register
/// (discarded for XZR) and steps the PC over the instruction (4 bytes: A64 only).
pub fn complete_read<R: VcpuRegs + ?Sized>(read: &MmioRead, bytes: &[u8], regs: &mut R) {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(usize::from(read.size)).min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    let raw = u64::from_le_bytes(buf);
    write_rt(regs, read.reg, read.extend(raw));
    skip_instruction(regs);
}

/// Completes a store: steps the PC over the instruction (4 bytes: A64 only).
pub fn complete_write<R: VcpuRegs + ?Sized>(regs: &mut R) {
    skip_instruction(regs);
}

/// Mask for the low `size` bytes.
fn size_mask(size: u8) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (u32::from(size) * 8)) - 1
    }
}

/// What to check for a data abort that is not an MMIO trap.
fn hint(status: FaultStatus) -> &'static str {
    match status {
        FaultStatus::AddressSize => {
            "the address is beyond the VM's IPA size: the guest's memory map (device tree) \
             must stay below 2^ipa_bits"
        }
        FaultStatus::ExternalAbort => {
            "the memory system reported an error, typically a passthrough device that stopped \
             answering (check the host log, reset or replug the device)"
        }
        _ => "this points at a bad stage-2 mapping set up by the VMM; please report it",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vcpu_regs::test_regs::TestRegs;

    const PC: u64 = 0x4008_1000;
    const X: u64 = 0xa5a5_0000_0000_0000;

    /// Fixture: captured from QEMU 10.0 (TCG, cortex-a72) running EL1 code under an EL2 that
    /// leaves 0..1 GiB unmapped at stage 2 and logs ESR_EL2, HPFAR_EL2/FAR_EL2 (for the IPA).
    /// Each row: instruction, its A64 encoding, the ESR and IPA the trap reported.
    struct Captured {
        asm: &'static str,
        insn: u32,
        esr: u64,
        ipa: u64,
    }

    const fn cap(asm: &'static str, insn: u32, esr: u64, ipa: u64) -> Captured {
        Captured { asm, insn, esr, ipa }
    }

    fn read(addr: u64, size: u8, reg: u8, sign_extend: bool, sixty_four: bool) -> MmioAccess {
        MmioAccess::Read(MmioRead { addr, size, reg, sign_extend, sixty_four })
    }

    fn write(addr: u64, size: u8, data: u64) -> MmioAccess {
        MmioAccess::Write(MmioWrite { addr, size, data })
    }

    /// Single-register loads and stores (ISV = 1) with the access each must decode to, given
    /// the register file of `TestRegs::new` (Xn = 0xa5a5_0000_0000_00nn).
    fn emulated() -> Vec<(Captured, MmioAccess)> {
        vec![
            (
                cap("ldr w1, [x0]", 0xb940_0001, 0x9381_0005, 0xa00_0000),
                read(0xa00_0000, 4, 1, false, false),
            ),
            (
                cap("ldr x2, [x0]", 0xf940_0002, 0x93c2_8005, 0xa00_0000),
                read(0xa00_0000, 8, 2, false, true),
            ),
            (
                cap("ldrb w3, [x0]", 0x3940_0003, 0x9303_0005, 0xa00_0000),
                read(0xa00_0000, 1, 3, false, false),
            ),
            (
                cap("ldrh w4, [x0]", 0x7940_0004, 0x9344_0005, 0xa00_0000),
                read(0xa00_0000, 2, 4, false, false),
            ),
            (
                cap("ldrsb x3, [x2]", 0x3980_0043, 0x9323_8005, 0xa00_0201),
                read(0xa00_0201, 1, 3, true, true),
            ),
            (
                cap("ldrsb w6, [x0]", 0x39c0_0006, 0x9326_0005, 0xa00_0000),
                read(0xa00_0000, 1, 6, true, false),
            ),
            (
                cap("ldrsh x7, [x0]", 0x7980_0007, 0x9367_8005, 0xa00_0000),
                read(0xa00_0000, 2, 7, true, true),
            ),
            (
                cap("ldrsh w7, [x0]", 0x79c0_0007, 0x9367_0005, 0xa00_0000),
                read(0xa00_0000, 2, 7, true, false),
            ),
            (
                cap("ldrsw x8, [x0]", 0xb980_0008, 0x93a8_8005, 0xa00_0000),
                read(0xa00_0000, 4, 8, true, true),
            ),
            (
                cap("ldr x30, [x1]", 0xf940_003e, 0x93de_8005, 0xa00_0100),
                read(0xa00_0100, 8, 30, false, true),
            ),
            (
                cap("ldr wzr, [x0]", 0xb940_001f, 0x939f_0005, 0xa00_0000),
                read(0xa00_0000, 4, 31, false, false),
            ),
            (
                cap("ldar w9, [x0]", 0x88df_fc09, 0x9389_4005, 0xa00_0000),
                read(0xa00_0000, 4, 9, false, false),
            ),
            (
                cap("ldr w11, [x0, #8]", 0xb940_080b, 0x938b_0005, 0xa00_0008),
                read(0xa00_0008, 4, 11, false, false),
            ),
            (
                cap("ldur x12, [x0, #-8]", 0xf85f_800c, 0x93cc_8005, 0x9ff_fff8),
                read(0x9ff_fff8, 8, 12, false, true),
            ),
            (
                cap("ldr x13, [x0, x14]", 0xf86e_680d, 0x93cd_8005, 0xa00_0010),
                read(0xa00_0010, 8, 13, false, true),
            ),
            (
                cap("str w1, [x0]", 0xb900_0001, 0x9381_0045, 0xa00_0000),
                write(0xa00_0000, 4, 0x0000_0001),
            ),
            (
                cap("str x2, [x0]", 0xf900_0002, 0x93c2_8045, 0xa00_0000),
                write(0xa00_0000, 8, X | 2),
            ),
            (
                cap("strb w3, [x0]", 0x3900_0003, 0x9303_0045, 0xa00_0000),
                write(0xa00_0000, 1, 0x03),
            ),
            (
                cap("strh w5, [x4]", 0x7900_0085, 0x9345_0045, 0xa00_0402),
                write(0xa00_0402, 2, 0x0005),
            ),
            (cap("str xzr, [x0]", 0xf900_001f, 0x93df_8045, 0xa00_0000), write(0xa00_0000, 8, 0)),
            (cap("str wzr, [x0]", 0xb900_001f, 0x939f_0045, 0xa00_0000), write(0xa00_0000, 4, 0)),
            (cap("strb wzr, [x0]", 0x3900_001f, 0x931f_0045, 0xa00_0000), write(0xa00_0000, 1, 0)),
            (
                cap("stlr x10, [x0]", 0xc89f_fc0a, 0x93ca_c045, 0xa00_0000),
                write(0xa00_0000, 8, X | 10),
            ),
        ]
    }

    #[test]
    fn captured_single_register_accesses_decode() {
        for (c, want) in emulated() {
            let regs = TestRegs::new(PC);
            let got = decode_data_abort(c.esr, c.ipa, &regs);
            assert_eq!(got, Ok(want), "{} (ESR {:#x})", c.asm, c.esr);
            // The syndrome's SRT is the instruction's Rt field (bits 4:0) for all of these.
            let srt = match want {
                MmioAccess::Read(r) => r.reg,
                MmioAccess::Write(_) => Esr(c.esr).data_abort().srt,
            };
            assert_eq!(u32::from(srt), c.insn & 0x1f, "{}: SRT vs Rt", c.asm);
            // Direction from the encoding: L (bit 22) for LDAR/STLR, opc (bits 23:22) != 0
            // for the other load/store register forms. WnR must agree.
            let ordered = (c.insn >> 24) & 0x3f == 0b00_1000;
            let is_load =
                if ordered { c.insn & (1 << 22) != 0 } else { (c.insn >> 22) & 0b11 != 0 };
            assert_eq!(matches!(want, MmioAccess::Read(_)), is_load, "{}: direction", c.asm);
        }
    }

    /// Completing each captured load with device bytes 0x80..0x87: the destination register
    /// gets the extended value, no other register changes, the PC steps by 4.
    #[test]
    fn captured_loads_complete_with_the_right_extension() {
        let device = [0x80u8, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87];
        let expect: &[(&str, Option<(u8, u64)>)] = &[
            ("ldr w1, [x0]", Some((1, 0x8382_8180))),
            ("ldr x2, [x0]", Some((2, 0x8786_8584_8382_8180))),
            ("ldrb w3, [x0]", Some((3, 0x80))),
            ("ldrh w4, [x0]", Some((4, 0x8180))),
            ("ldrsb x3, [x2]", Some((3, 0xffff_ffff_ffff_ff80))),
            ("ldrsb w6, [x0]", Some((6, 0xffff_ff80))),
            ("ldrsh x7, [x0]", Some((7, 0xffff_ffff_ffff_8180))),
            ("ldrsh w7, [x0]", Some((7, 0xffff_8180))),
            ("ldrsw x8, [x0]", Some((8, 0xffff_ffff_8382_8180))),
            ("ldr x30, [x1]", Some((30, 0x8786_8584_8382_8180))),
            ("ldr wzr, [x0]", None),
            ("ldar w9, [x0]", Some((9, 0x8382_8180))),
            ("ldr w11, [x0, #8]", Some((11, 0x8382_8180))),
            ("ldur x12, [x0, #-8]", Some((12, 0x8786_8584_8382_8180))),
            ("ldr x13, [x0, x14]", Some((13, 0x8786_8584_8382_8180))),
        ];
        let table = emulated();
        for (asm, dest) in expect {
            let (c, _) = table.iter().find(|(c, _)| c.asm == *asm).unwrap();
            let mut regs = TestRegs::new(PC);
            let MmioAccess::Read(r) = decode_data_abort(c.esr, c.ipa, &regs).unwrap() else {
                panic!("{asm} decoded as a write");
            };
            complete_read(&r, &device[..usize::from(r.size)], &mut regs);
            let mut want = TestRegs::new(PC + 4);
            if let Some((reg, value)) = dest {
                want.x[usize::from(*reg)] = *value;
            }
            assert_eq!(regs, want, "{asm}");
        }
    }

    #[test]
    fn positive_values_are_not_sign_filled() {
        // ldrsw x8 loading 0x7fff_ffff stays positive; ldrsh w7 of 0x7fff likewise.
        let mut regs = TestRegs::new(PC);
        let ldrsw = MmioRead { addr: 0, size: 4, reg: 8, sign_extend: true, sixty_four: true };
        complete_read(&ldrsw, &[0xff, 0xff, 0xff, 0x7f], &mut regs);
        assert_eq!(regs.x[8], 0x7fff_ffff);
        let ldrsh = MmioRead { addr: 0, size: 2, reg: 7, sign_extend: true, sixty_four: false };
        complete_read(&ldrsh, &[0xff, 0x7f], &mut regs);
        assert_eq!(regs.x[7], 0x7fff);
        assert_eq!(regs.pc, PC + 8);
    }

    #[test]
    fn word_loads_clear_the_upper_half() {
        // The destination held 0xa5a5_0000_0000_0001; a Wt write must clear bits 63:32.
        let mut regs = TestRegs::new(PC);
        let ldr_w = MmioRead { addr: 0, size: 4, reg: 1, sign_extend: false, sixty_four: false };
        complete_read(&ldr_w, &[1, 2, 3, 4], &mut regs);
        assert_eq!(regs.x[1], 0x0403_0201);
    }

    #[test]
    fn short_and_long_device_buffers() {
        let ldr_x = MmioRead { addr: 0, size: 8, reg: 0, sign_extend: false, sixty_four: true };
        let mut regs = TestRegs::new(PC);
        complete_read(&ldr_x, &[0x11, 0x22], &mut regs);
        assert_eq!(regs.x[0], 0x2211);
        let ldrb = MmioRead { addr: 0, size: 1, reg: 0, sign_extend: false, sixty_four: false };
        complete_read(&ldrb, &[0x33, 0x44, 0x55], &mut regs);
        assert_eq!(regs.x[0], 0x33);
    }

    #[test]
    fn stores_take_register_data_masked_to_size() {
        let mut regs = TestRegs::new(PC);
        regs.x[5] = 0x1234_5678_9abc_def0;
        regs.x[1] = 0xffff_ffff_8765_4321;
        let cases = [
            (0x9345_0045u64, 0xdef0u64, 2u8),        // strh w5, [x4]
            (0x9385_0045, 0x9abc_def0, 4),           // str w5 (SRT=5, SAS=word)
            (0x9305_0045, 0xf0, 1),                  // strb w5
            (0x93c5_8045, 0x1234_5678_9abc_def0, 8), // str x5
            (0x9381_0045, 0x8765_4321, 4),           // str w1, [x0]
        ];
        for (esr, data, size) in cases {
            let got = decode_data_abort(esr, 0x900_0000, &regs).unwrap();
            assert_eq!(got, write(0x900_0000, size, data), "ESR {esr:#x}");
        }
        let MmioAccess::Write(w) = decode_data_abort(0x9345_0045, 0x900_0000, &regs).unwrap()
        else {
            panic!("strh decoded as a read");
        };
        assert_eq!(&w.le_bytes()[..usize::from(w.size)], &[0xf0, 0xde]);
        let before = regs.clone();
        complete_write(&mut regs);
        assert_eq!(regs.pc, PC + 4);
        assert_eq!(regs.x, before.x);
    }

    #[test]
    fn captured_no_syndrome_accesses_are_refused() {
        let table = [
            cap("ldp x0, x1, [x2]", 0xa940_0440, 0x9200_0005, 0xa00_0201),
            cap("stp x3, x4, [x0]", 0xa900_1003, 0x9200_0045, 0xa00_0000),
            cap("ldr x1, [x0], #8", 0xf840_8401, 0x9200_0005, 0xa00_0000),
            cap("ldr x1, [x0, #8]!", 0xf840_8c01, 0x9200_0005, 0xa00_0008),
            cap("ldr q0, [x0]", 0x3dc0_0000, 0x9200_0005, 0xa00_0000),
            cap("ldxr x1, [x0]", 0xc85f_7c01, 0x9200_0005, 0xa00_0000),
        ];
        for c in table {
            let regs = TestRegs::new(PC);
            let err = decode_data_abort(c.esr, c.ipa, &regs).unwrap_err();
            assert_eq!(err, MmioDecodeError::NoSyndrome { pc: PC, ipa: c.ipa, esr: c.esr });
            assert_eq!(err.pc(), Some(PC));
            let msg = err.to_string();
            assert!(msg.contains(&format!("PC {PC:#x}")), "{}: {msg}", c.asm);
            assert!(msg.contains(&format!("IPA {:#x}", c.ipa)), "{}: {msg}", c.asm);
            assert!(msg.contains(&format!("ESR {:#x}", c.esr)), "{}: {msg}", c.asm);
            assert!(msg.contains("load/store pair"), "{msg}");
        }
    }

    #[test]
    fn other_faults_are_refused() {
        let regs = TestRegs::new(PC);
        let ipa = 0xa00_0000;
        // DC CIVAC on an unmapped IPA: CM and WnR set, ISV clear, translation fault L1.
        let esr = 0x9200_0145;
        assert_eq!(
            decode_data_abort(esr, ipa, &regs),
            Err(MmioDecodeError::CacheMaintenance { pc: PC, ipa, esr })
        );
        // Stage-1 walk hitting a non-RAM IPA, even with a valid syndrome.
        let esr = 0x9381_0085;
        assert_eq!(
            decode_data_abort(esr, ipa, &regs),
            Err(MmioDecodeError::PageTableWalk { pc: PC, ipa, esr })
        );
        // Synchronous external abort from a device.
        let esr = 0x9381_0010;
        let err = decode_data_abort(esr, ipa, &regs).unwrap_err();
        assert!(matches!(
            err,
            MmioDecodeError::NotAnMmioFault { status: FaultStatus::ExternalAbort, .. }
        ));
        assert!(err.to_string().contains("synchronous external abort"), "{err}");
        // Address size fault.
        let err = decode_data_abort(0x9381_0000, ipa, &regs).unwrap_err();
        assert!(err.to_string().contains("IPA size"), "{err}");
        // A 16-bit T32 load (IL = 0).
        let esr = 0x9181_0005;
        assert_eq!(
            decode_data_abort(esr, ipa, &regs),
            Err(MmioDecodeError::Aarch32Thumb { pc: PC, ipa, esr })
        );
        // Not a data abort at all: hvc #0.
        assert_eq!(
            decode_data_abort(0x5a00_0000, ipa, &regs),
            Err(MmioDecodeError::NotDataAbort { esr: 0x5a00_0000, ec: ExceptionClass::Hvc64 })
        );
        assert_eq!(
            MmioDecodeError::NotDataAbort { esr: 0x5a00_0000, ec: ExceptionClass::Hvc64 }.pc(),
            None
        );
    }

    #[test]
    fn permission_faults_are_mmio() {
        // A store to a read-only stage-2 mapping (DFSC 0x0f, permission fault level 3).
        let regs = TestRegs::new(PC);
        assert_eq!(decode_data_abort(0x93df_804f, 0x1000, &regs), Ok(write(0x1000, 8, 0)));
    }
}
