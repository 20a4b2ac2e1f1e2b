//! One thread per vCPU: create it, report in, wait for the start signal, run until the VM stops.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use arch::regs::BootRegs;
use log::{debug, error, info, warn};

use crate::control::{StopReason, VmControl};
use crate::hypervisor::{HypervisorError, MmioHandler, Vcpu, VcpuExit, VcpuKick, Vm};
use crate::seccomp::{SeccompError, ThreadKind};

/// Why a vCPU stopped the VM: which vCPU, where the guest was and what failed, as one line.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// Running the guest failed, e.g.
    /// `vCPU 1 at PC 0xffff800080012345: KVM_RUN: Bad address (os error 14)`. The PC is left
    /// out when the reason names it already.
    #[error("vCPU {index}{}: {source}", PcNote(.pc.filter(|_| .source.guest_pc().is_none())))]
    Run {
        /// The vCPU.
        index: u32,
        /// Where the guest was, if the PC could be read.
        pc: Option<u64>,
        /// What failed.
        #[source]
        source: HypervisorError,
    },
    /// The hypervisor refused the boot state.
    #[error("vCPU {index}: could not set the boot registers: {source}")]
    BootRegs {
        /// The vCPU.
        index: u32,
        /// Why.
        #[source]
        source: HypervisorError,
    },
    /// The hypervisor could not reset the vCPU for a reboot in place.
    #[error("vCPU {index}: could not reset it for the reboot: {source}")]
    Reset {
        /// The vCPU.
        index: u32,
        /// Why.
        #[source]
        source: HypervisorError,
    },
    /// The thread could not confine itself to its seccomp allowlist.
    #[error("vCPU {index}: {source}")]
    Sandbox {
        /// The vCPU.
        index: u32,
        /// Why.
        #[source]
        source: SeccompError,
    },
    /// The thread panicked.
    #[error("vCPU {index}: its thread panicked (a bug in Aperture, please report it)")]
    Panicked {
        /// The vCPU.
        index: u32,
    },
}

/// " at PC 0x...", or nothing.
struct PcNote(Option<u64>);

impl std::fmt::Display for PcNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(pc) => write!(f, " at PC {pc:#x}"),
            None => Ok(()),
        }
    }
}

/// What a vCPU reports of itself once it exists.
#[derive(Debug)]
pub struct VcpuIdentity {
    /// Its MPIDR_EL1.
    pub mpidr: u64,
    /// Its ID_AA64MMFR2_EL1.
    pub id_aa64mmfr2: u64,
    /// What interrupts it.
    pub kick: Arc<dyn VcpuKick>,
}

/// What a vCPU thread reports once its vCPU exists.
#[derive(Debug)]
pub struct VcpuReady {
    /// Its identity, or why it could not be created.
    pub result: Result<VcpuIdentity, HypervisorError>,
}

/// What the main thread tells a vCPU thread after all vCPUs exist, and after each stop.
#[derive(Debug)]
pub enum VcpuStart {
    /// Run; the boot vCPU gets its registers.
    Run(Option<BootRegs>),
    /// Reset the vCPU to its power-on state and run again (a reboot in place, asked for at
    /// the instant given); the boot vCPU gets its registers.
    Reboot(Option<BootRegs>, std::time::Instant),
    /// Setup failed elsewhere: exit without running.
    Abort,
}

/// How a vCPU thread talks with the main thread.
#[derive(Debug)]
pub struct VcpuChannels {
    /// Where it reports its vCPU once created.
    pub ready: Sender<VcpuReady>,
    /// Where it is told to run each boot.
    pub start: Receiver<VcpuStart>,
    /// Where it reports its index each time it has left the guest.
    pub paused: Sender<u32>,
}

/// The body of vCPU thread `index`. vCPUs are created on the thread that runs them, as
/// Hypervisor.framework requires. With `sandbox`, the thread confines itself to the vCPU
/// seccomp allowlist once its vCPU is ready, before it first runs the guest. Each time the
/// VM stops, it sends its index on `channels.paused` and waits for the next [`VcpuStart`].
pub fn vcpu_thread(
    index: u32,
    vm: Arc<dyn Vm>,
    bus: Arc<dyn MmioHandler + Send>,
    control: Arc<VmControl>,
    channels: VcpuChannels,
    sandbox: bool,
) {
    let VcpuChannels { ready, start, paused } = channels;
    let created = vm.create_vcpu(index).and_then(|vcpu| {
        let identity = VcpuIdentity {
            mpidr: vcpu.mpidr()?,
            id_aa64mmfr2: vcpu.id_aa64mmfr2()?,
            kick: vcpu.kicker()?,
        };
        Ok((vcpu, identity))
    });
    let mut vcpu = match created {
        Ok((vcpu, identity)) => {
            if ready.send(VcpuReady { result: Ok(identity) }).is_err() {
                return;
            }
            vcpu
        }
        Err(e) => {
            let _ = ready.send(VcpuReady { result: Err(e) });
            return;
        }
    };
    drop(ready);
    // From here on a panic (a bug; only test builds unwind) must not leave the VM waiting
    // for a vCPU that is gone.
    let _stop_on_panic = StopOnPanic { index, control: &control };
    let mut confined = !sandbox;
    // One turn per boot: the main thread says when to run; after the guest stops, the thread
    // reports in on `paused` and waits for the next boot (a reboot in place) or the end
    // (the sender dropped).
    loop {
        let (regs, reboot) = match start.recv() {
            Ok(VcpuStart::Run(regs)) => (regs, None),
            Ok(VcpuStart::Reboot(regs, since)) => (regs, Some(since)),
            Ok(VcpuStart::Abort) | Err(_) => return,
        };
        if reboot.is_some() {
            if let Err(source) = vcpu.reset() {
                let error = VcpuError::Reset { index, source };
                control.request_stop(StopReason::Error(error.to_string()));
                return;
            }
        }
        if let Some(regs) = regs {
            if let Err(source) = vcpu.set_boot_regs(&regs) {
                let error = VcpuError::BootRegs { index, source };
                control.request_stop(StopReason::Error(error.to_string()));
                return;
            }
            info!("vCPU {index}: booting at {:#x} with the device tree at {:#x}", regs.pc, regs.x0);
        }
        if !confined {
            if let Err(source) = crate::seccomp::confine(ThreadKind::Vcpu) {
                let error = VcpuError::Sandbox { index, source };
                error!("{error}");
                control.request_stop(StopReason::Error(error.to_string()));
                return;
            }
            confined = true;
        }
        if let (Some(since), Some(_)) = (reboot, regs) {
            info!(
                "vCPU {index}: reboot to first guest instruction in {:.1} ms",
                since.elapsed().as_secs_f64() * 1000.0
            );
        }
        run_loop(index, vcpu.as_mut(), bus.as_ref(), &control);
        if paused.send(index).is_err() {
            return;
        }
    }
}

fn run_loop(index: u32, vcpu: &mut dyn Vcpu, bus: &dyn MmioHandler, control: &VmControl) {
    let mut handled: u64 = 0;
    while !control.is_stopping() {
        match vcpu.run(bus) {
            Ok(VcpuExit::Handled) => handled += 1,
            Ok(VcpuExit::Interrupted) => {}
            Ok(VcpuExit::PowerOff) => {
                info!("vCPU {index}: the guest powered off");
                control.request_stop(StopReason::PowerOff);
            }
            Ok(VcpuExit::Reset) => {
                info!("vCPU {index}: the guest reset");
                control.request_stop(StopReason::Reset);
            }
            Err(source) => {
                let message = VcpuError::Run { index, pc: vcpu.pc().ok(), source }.to_string();
                if control.is_stopping() {
                    // The VM was stopping anyway: the first reason stays, this one is logged.
                    error!("{message}");
                }
                control.request_stop(StopReason::Error(message));
            }
        }
    }
    control.add_vmm_exits(handled);
    // Where a guest that had to be stopped was stuck is the first clue to why.
    if matches!(
        control.reason(),
        Some(StopReason::Timeout(_) | StopReason::Signal(_) | StopReason::PowerKeyIgnored { .. })
    ) {
        match vcpu.pc() {
            Ok(pc) => warn!("vCPU {index} was at PC {pc:#x} when stopped"),
            Err(e) => debug!("vCPU {index}: {e}"),
        }
    }
    debug!("vCPU {index}: stopped");
}

/// Stops the VM with an error if the vCPU thread unwinds from a panic.
struct StopOnPanic<'a> {
    index: u32,
    control: &'a VmControl,
}

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let error = VcpuError::Panicked { index: self.index };
            self.control.request_stop(StopReason::Error(error.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use arch::esr::ExceptionClass;

    use super::*;
    use crate::hypervisor::GuestError;

    fn run_error(index: u32, pc: Option<u64>, source: HypervisorError) -> String {
        VcpuError::Run { index, pc, source }.to_string()
    }

    #[test]
    fn failure_messages_name_the_vcpu_the_pc_and_the_reason() {
        let call =
            HypervisorError::call("KVM_RUN", std::io::Error::from_raw_os_error(libc::EFAULT));
        let message = run_error(1, Some(0xffff_8000_8001_2345), call);
        assert!(message.starts_with("vCPU 1 at PC 0xffff800080012345: KVM_RUN: "), "{message}");
        let exit = GuestError::UnhandledExit { exit: "FailEntry(0, 0)".into() };
        assert_eq!(
            run_error(2, Some(0x4008_0000), exit.into()),
            "vCPU 2 at PC 0x40080000: stopped with an exit Aperture cannot handle: FailEntry(0, 0)"
        );
        // A reason that names the PC is not given a second one.
        let raised = GuestError::UnhandledException {
            class: ExceptionClass::Other(0x3c),
            pc: 0x1000,
            esr: 0xf200_0000,
        };
        let message = run_error(0, Some(0x1000), raised.into());
        assert!(message.starts_with("vCPU 0: the guest raised "), "{message}");
        assert!(message.contains(" at PC 0x1000 (ESR 0xf2000000)"), "{message}");
        assert_eq!(message.matches(" PC ").count(), 1, "{message}");
        // Without a PC (reading it failed too).
        assert_eq!(
            run_error(3, None, GuestError::NotSmccc { esr: 0x5a00_0000 }.into()),
            "vCPU 3: ESR 0x5a000000 is not an HVC or SMC"
        );
        // The reason stays reachable as the error's source.
        let error = VcpuError::BootRegs { index: 0, source: HypervisorError::NoIrqfd };
        assert_eq!(
            error.to_string(),
            "vCPU 0: could not set the boot registers: this hypervisor has no irqfd"
        );
        assert!(std::error::Error::source(&error).is_some());
    }
}
