//! A KVM vCPU and how it is kicked out of `KVM_RUN`.

use std::sync::{Arc, Once};

use arch::regs::BootRegs;
use kvm_bindings::{
    kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2, KVM_SYSTEM_EVENT_RESET,
    KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit as KvmExit, VcpuFd, VmFd};
use log::{debug, warn};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::regs;
use crate::hypervisor::{
    GuestError, HypervisorError, MmioHandler, Result, Vcpu, VcpuExit, VcpuKick,
};

/// A KVM vCPU.
#[derive(Debug)]
pub struct KvmVcpu {
    fd: VcpuFd,
    index: u32,
    /// What `KVM_ARM_VCPU_INIT` was given: given again, it resets the vCPU.
    init: kvm_vcpu_init,
}

impl KvmVcpu {
    /// Creates and initializes vCPU `index` with in-kernel PSCI 0.2; secondaries start
    /// powered off and wait for PSCI CPU_ON.
    pub fn new(vm: &VmFd, index: u32) -> Result<Self> {
        let fd = vm
            .create_vcpu(u64::from(index))
            .map_err(|e| HypervisorError::call(format!("KVM_CREATE_VCPU for vCPU {index}"), e))?;
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(|e| HypervisorError::call("KVM_ARM_PREFERRED_TARGET", e))?;
        // Without PSCI 0.2 the kernel does not turn SYSTEM_OFF into an exit and a powered-off
        // guest spins forever.
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        if index > 0 {
            init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        fd.vcpu_init(&init)
            .map_err(|e| HypervisorError::call(format!("KVM_ARM_VCPU_INIT for vCPU {index}"), e))?;
        Ok(Self { fd, index, init })
    }

    fn set_reg(&self, id: u64, value: u64, name: &str) -> Result<()> {
        self.fd
            .set_one_reg(id, &value.to_le_bytes())
            .map(|_| ())
            .map_err(|e| HypervisorError::call(format!("setting {name} of vCPU {}", self.index), e))
    }
}

/// The signal that kicks vCPU threads out of `KVM_RUN` (its handler does nothing; the
/// interrupted ioctl returns EINTR).
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn ignore_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

fn install_kick_handler() -> Result<()> {
    static INSTALL: Once = Once::new();
    let mut result = Ok(());
    INSTALL.call_once(|| {
        result = register_signal_handler(kick_signal(), ignore_kick)
            .map_err(|e| HypervisorError::call("installing the vCPU kick signal handler", e));
    });
    result
}

/// Kicks one vCPU thread with a signal.
#[derive(Debug)]
struct SignalKick {
    thread: libc::pthread_t,
}

impl VcpuKick for SignalKick {
    fn kick(&self) {
        // SAFETY: the thread id came from pthread_self() on the vCPU thread, and the VMM joins
        // vCPU threads only after it stops kicking them, so the id is valid.
        let rc = unsafe { libc::pthread_kill(self.thread, kick_signal()) };
        if rc != 0 {
            debug!("kicking a vCPU thread failed: errno {rc}");
        }
    }
}

impl Vcpu for KvmVcpu {
    fn mpidr(&self) -> Result<u64> {
        let mut bytes = [0u8; 8];
        self.fd.get_one_reg(regs::MPIDR_EL1, &mut bytes).map_err(|e| {
            HypervisorError::call(format!("reading MPIDR_EL1 of vCPU {}", self.index), e)
        })?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn id_aa64mmfr2(&self) -> Result<u64> {
        let mut bytes = [0u8; 8];
        self.fd.get_one_reg(regs::ID_AA64MMFR2_EL1, &mut bytes).map_err(|e| {
            HypervisorError::call(format!("reading ID_AA64MMFR2_EL1 of vCPU {}", self.index), e)
        })?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn pc(&self) -> Result<u64> {
        let mut bytes = [0u8; 8];
        self.fd
            .get_one_reg(regs::PC, &mut bytes)
            .map_err(|e| HypervisorError::call(format!("reading PC of vCPU {}", self.index), e))?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn set_boot_regs(&mut self, boot: &BootRegs) -> Result<()> {
        self.set_reg(regs::PSTATE, boot.pstate, "PSTATE")?;
        self.set_reg(regs::PC, boot.pc, "PC")?;
        for (n, value) in [boot.x0, boot.x1, boot.x2, boot.x3].into_iter().enumerate() {
            self.set_reg(regs::x(n as u64), value, "x0-x3")?;
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        // KVM_ARM_VCPU_INIT again resets every register and the timer to the boot state
        // (what QEMU does on a system reset); the features must be the same.
        self.fd.vcpu_init(&self.init).map_err(|e| {
            HypervisorError::call(format!("KVM_ARM_VCPU_INIT (reset) for vCPU {}", self.index), e)
        })
    }

    fn kicker(&self) -> Result<Arc<dyn VcpuKick>> {
        install_kick_handler()?;
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        Ok(Arc::new(SignalKick { thread }))
    }

    fn run(&mut self, mmio: &dyn MmioHandler) -> Result<VcpuExit> {
        match self.fd.run() {
            Ok(KvmExit::MmioRead(addr, data)) => {
                mmio.mmio_read(addr, data);
                Ok(VcpuExit::Handled)
            }
            Ok(KvmExit::MmioWrite(addr, data)) => {
                mmio.mmio_write(addr, data);
                Ok(VcpuExit::Handled)
            }
            Ok(KvmExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, _)) => Ok(VcpuExit::PowerOff),
            Ok(KvmExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, _)) => Ok(VcpuExit::Reset),
            Ok(KvmExit::SystemEvent(kind, data)) => {
                warn!("vCPU {}: unhandled KVM system event {kind} {data:x?}", self.index);
                Ok(VcpuExit::Handled)
            }
            Ok(KvmExit::Intr) => Ok(VcpuExit::Interrupted),
            Ok(other) => Err(GuestError::UnhandledExit { exit: format!("{other:?}") }.into()),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                Ok(VcpuExit::Interrupted)
            }
            // The vCPU is named by whoever reports the error.
            Err(e) => Err(HypervisorError::call("KVM_RUN", e)),
        }
    }
}
