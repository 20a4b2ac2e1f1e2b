//! One thread per vCPU: create it, report in, wait for the start signal, run until the VM stops.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use arch::regs::BootRegs;
use log::{debug, error, info, warn};

use crate::control::{StopReason, VmControl};
use crate::hypervisor::{HypervisorError, MmioHandler, Vcpu, VcpuExit, VcpuKick, Vm};

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
/// Hypervisor.framework requires.
pub fn vcpu_thread(
    index: u32,
    vm: Arc<dyn Vm>,
    bus: Arc<dyn MmioHandler + Send>,
    control: Arc<VmControl>,
    ready: Sender<VcpuReady>,
    start: Receiver<VcpuStart>,
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
    let regs = match start.recv() {
        Ok(VcpuStart::Run(regs)) => regs,
        Ok(VcpuStart::Abort) | Err(_) => return,
    };
    if let Some(regs) = regs {
        if let Err(e) = vcpu.set_boot_regs(&regs) {
            control.request_stop(StopReason::Error(e.to_string()));
            return;
        }
        info!("vCPU {index}: booting at {:#x} with the device tree at {:#x}", regs.pc, regs.x0);
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
                error!("vCPU {index}: {e}");
                control.request_stop(StopReason::Error(format!("vCPU {index}: {e}")));
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
