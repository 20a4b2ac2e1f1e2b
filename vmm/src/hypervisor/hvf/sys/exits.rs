//! Guest exceptions: decoded and completed by `arch`'s portable handlers, acted on here.

use std::time::Duration;

use applevisor_sys::{hv_sys_reg_t, hv_vcpu_exit_exception_t};
use arch::esr::{Esr, ExceptionClass, WfxKind};
use arch::mmio::{self, MmioAccess};
use arch::psci::{self, Conduit, PsciCall, PsciStatus};
use arch::sysreg::{self, KnownSysreg};
use arch::timer;
use arch::vcpu_regs::{skip_instruction, VcpuRegs};
use log::{debug, info};

use super::regs::{self, Regs};
use super::vcpu::HvfVcpu;
use crate::hypervisor::hvf::power::IdleEnd;
use crate::hypervisor::{
    GuestError, HypervisorError, InstructionWord, MmioHandler, Result, VcpuExit,
};

/// The longest a vCPU sleeps for WFI before looking again: interrupts that the in-kernel GIC
/// delivers between vCPUs do not wake a thread sleeping here. The in-kernel GIC is expected to
/// handle WFI without an exit at all (Alioth runs Linux on it handling none), so this is a
/// fallback that keeps a guest correct, not a fast path.
const WFI_MAX_SLEEP: Duration = Duration::from_millis(1);

/// SCTLR_EL1.M: the guest's stage-1 MMU is on.
const SCTLR_EL1_M: u64 = 1;

impl HvfVcpu {
    /// Handles an `HV_EXIT_REASON_EXCEPTION` exit.
    pub(super) fn handle_exception(
        &mut self,
        exception: &hv_vcpu_exit_exception_t,
        mmio: &dyn MmioHandler,
    ) -> Result<VcpuExit> {
        let esr = exception.syndrome;
        let mut regs = Regs::new(self.id);
        let exit = match Esr(esr).ec() {
            ExceptionClass::DataAbortLowerEl => {
                self.data_abort(&mut regs, esr, exception.physical_address, mmio)
            }
            ExceptionClass::Hvc64 | ExceptionClass::Smc64 => self.smccc_call(&mut regs, esr),
            ExceptionClass::Sys64 => self.sysreg_trap(&mut regs, esr),
            ExceptionClass::Wfx => self.wfx(&mut regs, esr),
            ExceptionClass::InstructionAbortLowerEl => Err(GuestError::ExecutedOutsideRam {
                ipa: exception.physical_address,
                pc: regs.pc(),
                esr,
            }
            .into()),
            class => Err(GuestError::UnhandledException { class, pc: regs.pc(), esr }.into()),
        };
        // A failed register access makes the handler's outcome meaningless: report it first.
        regs.finish()?;
        exit
    }

    /// An MMIO access: performed on the device bus, then the register and PC are updated.
    fn data_abort(
        &mut self,
        regs: &mut Regs,
        esr: u64,
        ipa: u64,
        mmio: &dyn MmioHandler,
    ) -> Result<VcpuExit> {
        match mmio::decode_data_abort(esr, ipa, regs) {
            Ok(MmioAccess::Read(read)) => {
                let mut bytes = [0u8; 8];
                let data = &mut bytes[..usize::from(read.size).min(8)];
                mmio.mmio_read(read.addr, data);
                mmio::complete_read(&read, data, regs);
            }
            Ok(MmioAccess::Write(write)) => {
                let bytes = write.le_bytes();
                mmio.mmio_write(write.addr, &bytes[..usize::from(write.size).min(8)]);
                mmio::complete_write(regs);
            }
            Err(source) => {
                let instruction = self.instruction_word(regs.pc());
                return Err(GuestError::Mmio { source, instruction }.into());
            }
        }
        Ok(VcpuExit::Handled)
    }

    /// The instruction word at `pc` for an error report, when it can be read: with the guest
    /// MMU off the PC is a guest physical address; with it on Aperture would have to walk the
    /// guest's page tables, which it does not.
    fn instruction_word(&self, pc: u64) -> InstructionWord {
        let mmu_on = regs::get_sys(self.id, hv_sys_reg_t::SCTLR_EL1)
            .map_or(true, |sctlr| sctlr & SCTLR_EL1_M != 0);
        if mmu_on {
            return InstructionWord::MmuOn;
        }
        let slots = self.shared.slots();
        match slots.ram_host_addr(pc, 4) {
            Some(host) => {
                // SAFETY: the RAM mapping covers pc..pc+4 and stays mapped while the slot
                // table is locked (unmapping takes the lock).
                InstructionWord::Read(unsafe { (host as *const u32).read_unaligned() })
            }
            None => InstructionWord::OutsideRam,
        }
    }

    /// An HVC or SMC: PSCI and the SMCCC calls of `arch::psci`.
    fn smccc_call(&mut self, regs: &mut Regs, esr: u64) -> Result<VcpuExit> {
        let Some(conduit) = Conduit::from_esr(esr) else {
            return Err(GuestError::NotSmccc { esr }.into());
        };
        let power = &self.shared.power;
        let x0 = match psci::decode_call_from_regs(esr, regs) {
            PsciCall::Return(x0) => x0,
            PsciCall::CpuOn(on) => power.cpu_on(on),
            PsciCall::AffinityInfo { target_affinity, lowest_level } => {
                power.affinity_info(target_affinity, lowest_level)
            }
            PsciCall::CpuOff => {
                // Does not return: the next run waits for CPU_ON, which sets every register.
                power.cpu_off(self.index);
                debug!("vCPU {}: PSCI CPU_OFF", self.index);
                return Ok(VcpuExit::Handled);
            }
            PsciCall::SystemOff => return Ok(VcpuExit::PowerOff),
            PsciCall::SystemReset => return Ok(VcpuExit::Reset),
            PsciCall::Suspend => {
                // Standby: resume after the call once an interrupt could be pending.
                psci::complete_call(conduit, regs, PsciStatus::Success.to_x0());
                regs.finish()?;
                return self.wait_for_interrupt();
            }
        };
        psci::complete_call(conduit, regs, x0);
        Ok(VcpuExit::Handled)
    }

    /// A trapped MRS/MSR: the physical counter is emulated, the rest follows `arch::sysreg`.
    fn sysreg_trap(&mut self, regs: &mut Regs, esr: u64) -> Result<VcpuExit> {
        let guest = |e: sysreg::SysregError| HypervisorError::Guest(e.into());
        let access = sysreg::decode_sysreg_access(esr).map_err(guest)?;
        match access.known() {
            Some(KnownSysreg::CntpctEl0 | KnownSysreg::CntpctssEl0) if access.is_read => {
                sysreg::complete_read(&access, self.guest_counter(), regs);
            }
            _ => {
                let decision = sysreg::apply_default_policy(&access, regs).map_err(guest)?;
                if self.logged_sysregs.insert(decision.reg) {
                    info!("vCPU {}: {decision}", self.index);
                }
            }
        }
        Ok(VcpuExit::Handled)
    }

    /// WFI waits for an interrupt; WFE only yields the host CPU.
    fn wfx(&mut self, regs: &mut Regs, esr: u64) -> Result<VcpuExit> {
        skip_instruction(regs);
        regs.finish()?;
        match Esr(esr).wfx() {
            WfxKind::Wfe | WfxKind::Wfet => {
                std::thread::yield_now();
                Ok(VcpuExit::Handled)
            }
            WfxKind::Wfi | WfxKind::Wfit => {
                if !self.logged_wfi {
                    self.logged_wfi = true;
                    debug!("vCPU {}: WFI exits to Aperture; sleeping for it", self.index);
                }
                self.wait_for_interrupt()
            }
        }
    }

    /// Sleeps until the virtual timer would fire, a kick, an interrupt the VMM raises, or
    /// [`WFI_MAX_SLEEP`].
    fn wait_for_interrupt(&mut self) -> Result<VcpuExit> {
        let ctl = regs::get_sys(self.id, hv_sys_reg_t::CNTV_CTL_EL0)?;
        let cval = regs::get_sys(self.id, hv_sys_reg_t::CNTV_CVAL_EL0)?;
        let now = self.guest_counter();
        let Some(sleep) = timer::wfi_sleep(ctl, cval, now, self.counter_hz, WFI_MAX_SLEEP) else {
            return Ok(VcpuExit::Handled);
        };
        match self.shared.power.idle(self.index, sleep) {
            IdleEnd::Kicked => Ok(VcpuExit::Interrupted),
            IdleEnd::Interrupt | IdleEnd::TimedOut => Ok(VcpuExit::Handled),
        }
    }
}
