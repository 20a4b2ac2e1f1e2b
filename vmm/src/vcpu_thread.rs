//! One thread per vCPU: create it, report in, wait for the start signal, run until the VM stops.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use arch::regs::BootRegs;
use log::{debug, error, info, warn};

use crate::control::{StopReason, VmControl};
use crate::hypervisor::{HypervisorError, MmioHandler, Vcpu, VcpuExit, VcpuKick, Vm};
use crate::seccomp::ThreadKind;

/// What a vCPU thread reports once its vCPU exists.
#[derive(Debug)]
pub struct VcpuReady {
    /// Its MPIDR_EL1, or why it could not be created.
    pub result: Result<(u64, Arc<dyn VcpuKick>), HypervisorError>,
}

/// What the main thread tells a vCPU thread after all vCPUs exist.
#[derive(Debug)]
pub enum VcpuStart {
    /// Run; the boot vCPU gets its registers.
    Run(Option<BootRegs>),
    /// Setup failed elsewhere: exit without running.
    Abort,
}

/// The body of vCPU thread `index`. vCPUs are created on the thread that runs them, as
/// Hypervisor.framework requires. With `sandbox`, the thread confines itself to the vCPU
/// seccomp allowlist once its vCPU is ready, before it first runs the guest.
pub fn vcpu_thread(
    index: u32,
    vm: Arc<dyn Vm>,
    bus: Arc<dyn MmioHandler + Send>,
    control: Arc<VmControl>,
    ready: Sender<VcpuReady>,
    start: Receiver<VcpuStart>,
    sandbox: bool,
) {
    let created = vm.create_vcpu(index).and_then(|vcpu| {
        let mpidr = vcpu.mpidr()?;
        let kick = vcpu.kicker()?;
        Ok((vcpu, mpidr, kick))
    });
    let mut vcpu = match created {
        Ok((vcpu, mpidr, kick)) => {
            if ready.send(VcpuReady { result: Ok((mpidr, kick)) }).is_err() {
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
    let regs = match start.recv() {
        Ok(VcpuStart::Run(regs)) => regs,
        Ok(VcpuStart::Abort) | Err(_) => return,
    };
    if let Some(regs) = regs {
        if let Err(e) = vcpu.set_boot_regs(&regs) {
            let message = format!("vCPU {index}: could not set the boot registers: {e}");
            control.request_stop(StopReason::Error(message));
            return;
        }
        info!("vCPU {index}: booting at {:#x} with the device tree at {:#x}", regs.pc, regs.x0);
    }
    if sandbox {
        if let Err(e) = crate::seccomp::confine(ThreadKind::Vcpu) {
            error!("vCPU {index}: {e}");
            control.request_stop(StopReason::Error(format!("vCPU {index}: {e}")));
            return;
        }
    }
    run_loop(index, vcpu.as_mut(), bus.as_ref(), &control);
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
            Err(e) => {
                let message = failure_message(index, vcpu.pc().ok(), &e);
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
    if matches!(control.reason(), Some(StopReason::Timeout(_) | StopReason::Signal(_))) {
        match vcpu.pc() {
            Ok(pc) => warn!("vCPU {index} was at PC {pc:#x} when stopped"),
            Err(e) => debug!("vCPU {index}: {e}"),
        }
    }
    debug!("vCPU {index}: stopped");
}

/// The one-line reason a failed vCPU stops the VM with: which vCPU, where the guest was
/// (unless the backend's message says so already) and what failed, e.g.
/// `vCPU 1 at PC 0xffff800080012345: KVM_RUN on vCPU 1: Bad address (os error 14)`.
pub fn failure_message(index: u32, pc: Option<u64>, error: &HypervisorError) -> String {
    let text = error.to_string();
    let own = format!("vCPU {index}");
    let reason = text
        .strip_prefix(&format!("{own}: "))
        .or_else(|| text.strip_prefix(&format!("{own} ")))
        .unwrap_or(&text);
    match pc {
        Some(pc) if !reason.contains(" PC ") => format!("{own} at PC {pc:#x}: {reason}"),
        _ => format!("{own}: {reason}"),
    }
}

/// Stops the VM with an error if the vCPU thread unwinds from a panic.
struct StopOnPanic<'a> {
    index: u32,
    control: &'a VmControl,
}

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.control.request_stop(StopReason::Error(format!(
                "vCPU {}: its thread panicked (a bug in Aperture, please report it)",
                self.index
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_messages_name_the_vcpu_the_pc_and_the_reason() {
        let call = HypervisorError::call(
            "KVM_RUN on vCPU 1",
            std::io::Error::from_raw_os_error(libc::EFAULT),
        );
        let message = failure_message(1, Some(0xffff_8000_8001_2345), &call);
        assert!(
            message.starts_with("vCPU 1 at PC 0xffff800080012345: KVM_RUN on vCPU 1: "),
            "{message}"
        );
        // A backend message that already names the vCPU is not prefixed twice.
        let exit = HypervisorError::Guest(
            "vCPU 2 stopped with an exit Aperture cannot handle: FailEntry(0, 0)".into(),
        );
        assert_eq!(
            failure_message(2, Some(0x4008_0000), &exit),
            "vCPU 2 at PC 0x40080000: stopped with an exit Aperture cannot handle: FailEntry(0, 0)"
        );
        // Nor given a second PC.
        let raised = HypervisorError::Guest(
            "vCPU 0: the guest raised a BRK at PC 0x1000 (ESR 0xf2000000), which Aperture does \
             not handle"
                .into(),
        );
        let message = failure_message(0, Some(0x1000), &raised);
        assert!(message.starts_with("vCPU 0: the guest raised a BRK at PC 0x1000"), "{message}");
        // Without a PC (reading it failed too).
        assert_eq!(
            failure_message(3, None, &HypervisorError::Guest("boom".into())),
            "vCPU 3: boom"
        );
    }
}
