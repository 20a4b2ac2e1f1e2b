//! A Hypervisor.framework vCPU. Every call on it must come from the thread that created it,
//! which is how the VMM uses vCPUs (created and run on their own thread). A reboot in place
//! destroys and re-creates it on that thread ([`crate::hypervisor::hvf::reset`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::thread::ThreadId;

use applevisor_sys::{
    hv_exit_reason_t, hv_reg_t, hv_sys_reg_t, hv_vcpu_create, hv_vcpu_destroy,
    hv_vcpu_exit_exception_t, hv_vcpu_exit_t, hv_vcpu_get_vtimer_offset, hv_vcpu_run,
    hv_vcpu_set_vtimer_mask, hv_vcpu_set_vtimer_offset, hv_vcpu_t, hv_vcpus_exit,
};
use arch::idregs;
use arch::psci::CpuOn;
use arch::regs::{mpidr_for_vcpu, sctlr_el1_for_cpu_on, BootRegs};
use arch::sysreg::SysregEncoding;
use log::{debug, warn};

use super::os;
use super::regs;
use super::vm::Shared;
use crate::hypervisor::hvf::handle::VcpuHandle;
use crate::hypervisor::hvf::power::RunGate;
use crate::hypervisor::hvf::reset::{self, RecreateOps};
use crate::hypervisor::hvf::vtimer::VtimerGate;
use crate::hypervisor::hvf::{status, tso};
use crate::hypervisor::{
    GuestError, HypervisorError, MmioHandler, Result, Vcpu, VcpuExit, VcpuKick,
};

/// `hv_vcpu_exit_t` with the reason as a plain number: a reason newer than the bindings must
/// not become an invalid Rust enum value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct RawExit {
    reason: u32,
    exception: hv_vcpu_exit_exception_t,
}

const _: () = assert!(size_of::<RawExit>() == size_of::<hv_vcpu_exit_t>());
const EXIT_CANCELED: u32 = hv_exit_reason_t::CANCELED as u32;
const EXIT_EXCEPTION: u32 = hv_exit_reason_t::EXCEPTION as u32;
const EXIT_VTIMER_ACTIVATED: u32 = hv_exit_reason_t::VTIMER_ACTIVATED as u32;
// The portable handle keeps framework ids as u64.
const _: fn(hv_vcpu_t) -> u64 = |id| id;

/// Where HVF writes the vCPU's exit information.
#[derive(Debug)]
struct ExitInfo(*const RawExit);

// SAFETY: the pointer is only read by HvfVcpu methods, which first check that they run on the
// vCPU's own thread (the only thread HVF updates it for); moving the owner is harmless.
unsafe impl Send for ExitInfo {}

/// A Hypervisor.framework vCPU.
#[derive(Debug)]
pub struct HvfVcpu {
    pub(super) id: hv_vcpu_t,
    pub(super) index: u32,
    pub(super) shared: Arc<Shared>,
    exit: ExitInfo,
    owner: ThreadId,
    /// False once a failed reset destroyed the framework's vCPU without a new one.
    exists: bool,
    /// `id`, shared with the kicker (a reset changes it).
    handle: Arc<VcpuHandle>,
    /// The guest's CNTVCT_EL0 is the host counter minus this.
    vtimer_offset: u64,
    /// CNTFRQ_EL0, for WFI sleeps.
    pub(super) counter_hz: u64,
    /// System registers already logged (once each).
    pub(super) logged_sysregs: HashSet<SysregEncoding>,
    /// Whether an unexpected exit kind was logged already.
    pub(super) logged_wfi: bool,
    logged_vtimer: bool,
    /// The virtual timer, masked by the framework after a VTIMER_ACTIVATED exit.
    vtimer: VtimerGate,
}

impl HvfVcpu {
    /// Creates vCPU `index` on the calling thread, which must be the thread that runs it.
    pub fn new(shared: Arc<Shared>, index: u32) -> Result<Self> {
        if let Err(e) = os::set_thread_qos_user_interactive() {
            warn!("vCPU {index}: could not raise the thread's QoS class ({e}); expect jitter");
        }
        let (id, exit) = create(index)?;
        let mut vcpu = Self {
            id,
            index,
            shared,
            exit,
            owner: std::thread::current().id(),
            exists: true,
            handle: Arc::new(VcpuHandle::new(id)),
            vtimer_offset: 0,
            counter_hz: os::counter_frequency(),
            logged_sysregs: HashSet::new(),
            logged_wfi: false,
            logged_vtimer: false,
            vtimer: VtimerGate::default(),
        };
        // From here on, Drop destroys the vCPU if setup fails.
        vcpu.set_up()?;
        let mut offset = 0;
        // SAFETY: valid out-pointer; on the vCPU's thread.
        let ret = unsafe { hv_vcpu_get_vtimer_offset(vcpu.id, &mut offset) };
        status::check(ret, || format!("reading the vtimer offset of vCPU {index}"))?;
        vcpu.vtimer_offset = offset;
        vcpu.shared.power.add(index, mpidr_for_vcpu(index));
        debug!("vCPU {index}: counter {} Hz, vtimer offset {offset:#x}", vcpu.counter_hz);
        Ok(vcpu)
    }

    /// Gives a new vCPU (at creation, and again after a reset re-created it) its identity,
    /// the ID registers the VM's shape calls for, and TSO if asked.
    fn set_up(&mut self) -> Result<()> {
        // The GIC routes by MPIDR affinity, and the device tree lists the same values.
        let mpidr = mpidr_for_vcpu(self.index);
        regs::set_sys(self.id, hv_sys_reg_t::MPIDR_EL1, mpidr)?;
        let mmfr0 = regs::get_sys(self.id, hv_sys_reg_t::ID_AA64MMFR0_EL1)?;
        let clamped = idregs::clamp_mmfr0_parange(mmfr0, self.shared.ipa_bits);
        if clamped != mmfr0 {
            regs::set_sys(self.id, hv_sys_reg_t::ID_AA64MMFR0_EL1, clamped)?;
        }
        let pfr0 = regs::get_sys(self.id, hv_sys_reg_t::ID_AA64PFR0_EL1)?;
        let with_gic = idregs::pfr0_with_gicv3_sysregs(pfr0);
        if with_gic != pfr0 {
            regs::set_sys(self.id, hv_sys_reg_t::ID_AA64PFR0_EL1, with_gic)?;
        }
        if self.shared.tso {
            self.enable_tso()?;
        }
        debug!("vCPU {}: MPIDR {mpidr:#x}, ID_AA64MMFR0_EL1 {clamped:#x}", self.index);
        Ok(())
    }

    /// Turns on total store ordering before the vCPU's first instruction, and checks the
    /// host kept it (see [`crate::hypervisor::hvf::tso`]).
    fn enable_tso(&mut self) -> Result<()> {
        let actlr = regs::get_sys(self.id, hv_sys_reg_t::ACTLR_EL1)?;
        regs::set_sys(self.id, hv_sys_reg_t::ACTLR_EL1, tso::with_tso(actlr))?;
        let kept = regs::get_sys(self.id, hv_sys_reg_t::ACTLR_EL1)?;
        if !tso::tso_on(kept) {
            return Err(HypervisorError::call(
                "setting ACTLR_EL1.EnTSO",
                std::io::Error::other(tso::not_kept_message(self.index, kept)),
            ));
        }
        debug!("vCPU {}: total store ordering on (ACTLR_EL1 {kept:#x})", self.index);
        Ok(())
    }

    fn on_owner(&self) -> Result<()> {
        let problem = if std::thread::current().id() != self.owner {
            "Hypervisor.framework vCPUs only work on their own thread"
        } else if !self.exists {
            "a failed reset left no vCPU"
        } else {
            return Ok(());
        };
        Err(HypervisorError::call(
            format!("using vCPU {}", self.index),
            std::io::Error::other(problem),
        ))
    }

    /// The guest's virtual counter (CNTVCT_EL0) now.
    pub(super) fn guest_counter(&self) -> u64 {
        os::host_counter().wrapping_sub(self.vtimer_offset)
    }

    /// Starts the vCPU where PSCI CPU_ON said: PC = entry, x0 = context id, EL1h with DAIF
    /// masked, MMU off.
    fn start(&mut self, on: &CpuOn) -> Result<()> {
        let sctlr = regs::get_sys(self.id, hv_sys_reg_t::SCTLR_EL1)?;
        regs::set_sys(self.id, hv_sys_reg_t::SCTLR_EL1, sctlr_el1_for_cpu_on(sctlr))?;
        self.apply(&on.boot_regs())?;
        debug!("vCPU {}: started at {:#x} by PSCI CPU_ON", self.index, on.entry);
        Ok(())
    }

    fn apply(&mut self, boot: &BootRegs) -> Result<()> {
        regs::set(self.id, hv_reg_t::CPSR, boot.pstate)?;
        regs::set(self.id, hv_reg_t::PC, boot.pc)?;
        for (n, value) in [boot.x0, boot.x1, boot.x2, boot.x3].into_iter().enumerate() {
            let reg = regs::x(n as u8).unwrap_or(hv_reg_t::X0);
            regs::set(self.id, reg, value)?;
        }
        Ok(())
    }

    /// With the in-kernel GIC the framework handles the virtual timer itself, so this exit
    /// should not come (QEMU asserts it does not; Alioth handles none). If it does, the
    /// framework has masked the timer: keep it masked until the guest's timer stops asserting
    /// ([`VtimerGate`], QEMU's `hvf_sync_vtimer`), and say so once.
    fn vtimer_activated(&mut self) -> Result<VcpuExit> {
        if !self.logged_vtimer {
            self.logged_vtimer = true;
            warn!(
                "vCPU {}: unexpected virtual-timer exit with the in-kernel GIC; the timer stays \
                 masked until the guest handles it (report this with your macOS version if the \
                 guest stalls)",
                self.index
            );
        }
        self.vtimer.activated();
        Ok(VcpuExit::Handled)
    }

    /// Before entering the guest: unmask the virtual timer if the framework masked it and
    /// the guest's timer no longer asserts.
    fn sync_vtimer(&mut self) -> Result<()> {
        if !self.vtimer.masked() {
            return Ok(());
        }
        let ctl = regs::get_sys(self.id, hv_sys_reg_t::CNTV_CTL_EL0)?;
        if self.vtimer.unmask_before_entry(ctl) {
            // SAFETY: plain values; on the vCPU's thread.
            let ret = unsafe { hv_vcpu_set_vtimer_mask(self.id, false) };
            status::check(ret, || format!("unmasking the vtimer of vCPU {}", self.index))?;
        }
        Ok(())
    }
}

/// Creates a framework vCPU on the calling thread: its id and where it reports exits.
fn create(index: u32) -> Result<(hv_vcpu_t, ExitInfo)> {
    let mut id: hv_vcpu_t = 0;
    let mut exit: *const hv_vcpu_exit_t = std::ptr::null();
    // SAFETY: valid out-pointers; a null configuration means the default vCPU.
    let ret = unsafe { hv_vcpu_create(&mut id, &mut exit, std::ptr::null_mut()) };
    status::check(ret, || format!("hv_vcpu_create for vCPU {index}"))?;
    Ok((id, ExitInfo(exit.cast::<RawExit>())))
}

impl RecreateOps for HvfVcpu {
    fn destroy(&mut self) -> Result<()> {
        // SAFETY: destroys this thread's vCPU (reset checked the thread), out of the guest;
        // `exists` keeps it from being used or destroyed again until a new one is created.
        let ret = unsafe { hv_vcpu_destroy(self.id) };
        status::check(ret, || format!("hv_vcpu_destroy (reset) for vCPU {}", self.index))?;
        self.exists = false;
        Ok(())
    }

    fn create(&mut self) -> Result<u64> {
        let (id, exit) = create(self.index)?;
        self.id = id;
        self.exit = exit;
        self.exists = true;
        // A new vCPU's virtual timer is not masked.
        self.vtimer = VtimerGate::default();
        Ok(id)
    }

    fn set_vtimer_offset(&mut self, offset: u64) -> Result<()> {
        // SAFETY: plain values; on the vCPU's thread.
        let ret = unsafe { hv_vcpu_set_vtimer_offset(self.id, offset) };
        status::check(ret, || format!("setting the vtimer offset of vCPU {}", self.index))
    }

    fn configure(&mut self) -> Result<()> {
        self.set_up()
    }
}

impl Drop for HvfVcpu {
    fn drop(&mut self) {
        if std::thread::current().id() != self.owner {
            warn!("vCPU {} dropped off its thread; not destroyed", self.index);
            return;
        }
        if !self.exists {
            return;
        }
        self.handle.clear();
        // SAFETY: destroys this thread's vCPU, which is not used again.
        let ret = unsafe { hv_vcpu_destroy(self.id) };
        if let Err(e) = status::check(ret, || format!("hv_vcpu_destroy for vCPU {}", self.index)) {
            warn!("{e}");
        }
    }
}

/// Kicks a vCPU: out of the guest (`hv_vcpus_exit`) and out of any wait in the backend.
#[derive(Debug)]
struct HvfKick {
    handle: Arc<VcpuHandle>,
    index: u32,
    shared: Arc<Shared>,
}

impl VcpuKick for HvfKick {
    fn kick(&self) {
        self.shared.power.kick(self.index);
        self.handle.with_id(|id| {
            // SAFETY: reads one vCPU id, which names a live vCPU while the handle is held
            // (it is cleared before the vCPU is destroyed); any thread may call it.
            let ret = unsafe { hv_vcpus_exit(&id, 1) };
            if ret != status::HV_SUCCESS {
                debug!("hv_vcpus_exit for vCPU {}: {}", self.index, status::describe(ret));
            }
        });
    }
}

impl Vcpu for HvfVcpu {
    fn mpidr(&self) -> Result<u64> {
        self.on_owner()?;
        regs::get_sys(self.id, hv_sys_reg_t::MPIDR_EL1)
    }

    fn id_aa64mmfr2(&self) -> Result<u64> {
        self.on_owner()?;
        regs::get_sys(self.id, hv_sys_reg_t::ID_AA64MMFR2_EL1)
    }

    fn pc(&self) -> Result<u64> {
        self.on_owner()?;
        regs::get(self.id, hv_reg_t::PC)
    }

    fn set_boot_regs(&mut self, boot: &BootRegs) -> Result<()> {
        self.on_owner()?;
        self.apply(boot)?;
        self.shared.power.boot(self.index);
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        self.on_owner()?;
        let (index, offset) = (self.index, self.vtimer_offset);
        let (shared, handle) = (self.shared.clone(), self.handle.clone());
        reset::recreate(index, offset, &shared.power, &handle, self)?;
        debug!("vCPU {index}: re-created for the reboot (framework id {})", self.id);
        Ok(())
    }

    fn kicker(&self) -> Result<Arc<dyn VcpuKick>> {
        let handle = self.handle.clone();
        Ok(Arc::new(HvfKick { handle, index: self.index, shared: self.shared.clone() }))
    }

    fn run(&mut self, mmio: &dyn MmioHandler) -> Result<VcpuExit> {
        self.on_owner()?;
        // A powered-off vCPU waits here for PSCI CPU_ON (or a kick, so the VMM can stop it).
        match self.shared.power.wait_to_run(self.index) {
            RunGate::Kicked => return Ok(VcpuExit::Interrupted),
            RunGate::Start(on) => self.start(&on)?,
            RunGate::Run => {}
        }
        self.sync_vtimer()?;
        // SAFETY: runs this thread's vCPU; HVF fills the exit information.
        let ret = unsafe { hv_vcpu_run(self.id) };
        // The vCPU is named by whoever reports the error.
        status::check(ret, || "hv_vcpu_run".into())?;
        // SAFETY: HVF keeps the exit information valid for the vCPU's life and wrote it during
        // hv_vcpu_run on this thread.
        let exit = unsafe { self.exit.0.read() };
        match exit.reason {
            EXIT_EXCEPTION => self.handle_exception(&exit.exception, mmio),
            EXIT_CANCELED => {
                self.shared.power.take_kick(self.index);
                Ok(VcpuExit::Interrupted)
            }
            EXIT_VTIMER_ACTIVATED => self.vtimer_activated(),
            reason => Err(GuestError::UnknownExitReason { reason }.into()),
        }
    }
}
