//! General-purpose register access for exit handlers that complete guest instructions in the
//! VMM (Hypervisor.framework hands back raw traps; KVM completes these in the kernel).
//!
//! Backends implement [`VcpuRegs`]; the handlers in [`crate::mmio`], [`crate::psci`] and
//! [`crate::sysreg`] go through [`read_rt`] / [`write_rt`], which apply the zero-register rule,
//! and [`skip_instruction`].

/// Register number 31 in load/store and system-register encodings: the zero register
/// (XZR/WZR). Reads give 0 and writes are discarded; it is never SP in these encodings.
pub const XZR: u8 = 31;

/// Length of an A64 instruction. Every trap handled here is for an AArch64 guest, whose
/// instructions are all 4 bytes long (ESR_EL2.IL = 1).
pub const INSTRUCTION_LEN: u64 = 4;

/// Register access a backend supplies to the portable exit handlers.
///
/// The handlers only ever pass `n` in `0..=30`: register 31 is the zero register in the
/// encodings they decode, and [`read_rt`] / [`write_rt`] deal with it.
pub trait VcpuRegs {
    /// General-purpose register Xn, `n` in `0..=30`.
    fn x(&self, n: u8) -> u64;
    /// Sets general-purpose register Xn, `n` in `0..=30`.
    fn set_x(&mut self, n: u8, v: u64);
    /// The program counter.
    fn pc(&self) -> u64;
    /// Sets the program counter.
    fn set_pc(&mut self, v: u64);
}

/// Reads transfer register `rt` of a trapped instruction: 0 for [`XZR`].
pub fn read_rt<R: VcpuRegs + ?Sized>(regs: &R, rt: u8) -> u64 {
    if rt >= XZR {
        0
    } else {
        regs.x(rt)
    }
}

/// Writes transfer register `rt` of a trapped instruction; a write to [`XZR`] is discarded.
pub fn write_rt<R: VcpuRegs + ?Sized>(regs: &mut R, rt: u8, v: u64) {
    if rt < XZR {
        regs.set_x(rt, v);
    }
}

/// Steps the PC over the trapped instruction, for traps whose exception return address is the
/// instruction itself (data aborts, system-register traps, WFI/WFE, SMC).
pub fn skip_instruction<R: VcpuRegs + ?Sized>(regs: &mut R) {
    let pc = regs.pc();
    regs.set_pc(pc.wrapping_add(INSTRUCTION_LEN));
}

/// An in-memory register file for the unit tests of the exit handlers.
#[cfg(test)]
pub(crate) mod test_regs {
    use super::VcpuRegs;

    /// X0..X30 and the PC. Accessing register 31 panics: the handlers must apply the XZR rule
    /// themselves instead of passing 31 to the backend.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(crate) struct TestRegs {
        pub(crate) x: [u64; 31],
        pub(crate) pc: u64,
    }

    impl TestRegs {
        /// Every register holds a distinct recognisable value: Xn = 0xa5a5_0000_0000_0000 | n.
        pub(crate) fn new(pc: u64) -> Self {
            let mut x = [0; 31];
            for (n, v) in x.iter_mut().enumerate() {
                *v = 0xa5a5_0000_0000_0000 | n as u64;
            }
            Self { x, pc }
        }
    }

    impl VcpuRegs for TestRegs {
        fn x(&self, n: u8) -> u64 {
            assert!(n < 31, "handler read register {n} from the backend; 31 is XZR");
            self.x[usize::from(n)]
        }
        fn set_x(&mut self, n: u8, v: u64) {
            assert!(n < 31, "handler wrote register {n} to the backend; 31 is XZR");
            self.x[usize::from(n)] = v;
        }
        fn pc(&self) -> u64 {
            self.pc
        }
        fn set_pc(&mut self, v: u64) {
            self.pc = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_regs::TestRegs;
    use super::*;

    #[test]
    fn xzr_reads_zero_and_discards_writes() {
        let mut regs = TestRegs::new(0x1000);
        let before = regs.clone();
        assert_eq!(read_rt(&regs, XZR), 0);
        write_rt(&mut regs, XZR, 0xdead);
        assert_eq!(regs, before);
    }

    #[test]
    fn other_registers_pass_through() {
        let mut regs = TestRegs::new(0x1000);
        assert_eq!(read_rt(&regs, 0), 0xa5a5_0000_0000_0000);
        assert_eq!(read_rt(&regs, 30), 0xa5a5_0000_0000_001e);
        write_rt(&mut regs, 30, 7);
        assert_eq!(regs.x[30], 7);
        write_rt(&mut regs, 0, 9);
        assert_eq!(regs.x[0], 9);
    }

    #[test]
    fn skip_instruction_steps_four_bytes() {
        let mut regs = TestRegs::new(0x4008_0000);
        skip_instruction(&mut regs);
        assert_eq!(regs.pc, 0x4008_0004);
    }
}
