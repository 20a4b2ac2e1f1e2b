//! The VM's vCPU threads: started once, run once per boot, paused for a reboot in place and
//! stopped at the end.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arch::regs::BootRegs;
use log::warn;

use super::VmError;
use crate::bus::MmioBus;
use crate::control::VmControl;
use crate::hypervisor::{VcpuKick, Vm};
use crate::vcpu_thread::{vcpu_thread, VcpuChannels, VcpuReady, VcpuStart};

/// How long a vCPU gets to leave the guest when kicked before it is given up on.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A VM's vCPU threads and how to kick them out of the guest: [`RunningVcpus::start`] runs
/// a boot, [`RunningVcpus::pause`] ends one with the threads kept, [`RunningVcpus::stop`]
/// halts and joins them ([`RunningVcpus::abort`] when setup fails before the guest starts).
pub(super) struct RunningVcpus {
    threads: Vec<JoinHandle<()>>,
    kicks: Vec<Arc<dyn VcpuKick>>,
    starts: Vec<mpsc::Sender<VcpuStart>>,
    paused: mpsc::Receiver<u32>,
}

impl RunningVcpus {
    /// Starts a boot: vCPU 0 at `regs`, the others waiting for PSCI CPU_ON. `reboot`: when
    /// the reboot that leads here was asked for (the vCPUs are reset first).
    pub(super) fn start(&self, regs: BootRegs, reboot: Option<Instant>) {
        for (index, sender) in self.starts.iter().enumerate() {
            let regs = (index == 0).then_some(regs);
            let message = match reboot {
                Some(since) => VcpuStart::Reboot(regs, since),
                None => VcpuStart::Run(regs),
            };
            let _ = sender.send(message);
        }
    }

    /// Ends the current boot and waits until every vCPU has left the guest and waits for
    /// the next; the VM must be stopping (a stop reason recorded). False if a vCPU did not
    /// come back within [`STOP_LIMIT`] (the VM cannot go on).
    pub(super) fn pause(&self) -> bool {
        let mut back = vec![false; self.threads.len()];
        let deadline = Instant::now() + STOP_LIMIT;
        while back.iter().any(|b| !b) {
            if Instant::now() >= deadline {
                warn!("a vCPU did not stop within {} s for the reboot", STOP_LIMIT.as_secs());
                return false;
            }
            for (kick, _) in self.kicks.iter().zip(&back).filter(|(_, b)| !**b) {
                kick.kick();
            }
            while let Ok(index) = self.paused.recv_timeout(Duration::from_millis(5)) {
                if let Some(b) = back.get_mut(index as usize) {
                    *b = true;
                }
            }
        }
        true
    }

    /// Setup failed before the guest started: tells every waiting vCPU thread not to run,
    /// then stops and joins them.
    pub(super) fn abort(self, control: &VmControl) {
        for sender in &self.starts {
            let _ = sender.send(VcpuStart::Abort);
        }
        self.stop(control);
    }

    /// Kicks every vCPU until its thread has finished, then joins them. Kicks repeat (every
    /// 5 ms) because a signal that lands outside `KVM_RUN` is lost; all vCPUs are kicked
    /// together so that they stop in parallel. The threads end once out of the guest, as no
    /// next boot can come (the start senders are gone).
    pub(super) fn stop(self, control: &VmControl) {
        control.halt();
        drop(self.starts);
        let deadline = Instant::now() + STOP_LIMIT;
        let mut kicked: Option<Instant> = None;
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            if kicked.is_none_or(|at| at.elapsed() >= Duration::from_millis(5)) {
                for (thread, kick) in self.threads.iter().zip(&self.kicks) {
                    if !thread.is_finished() {
                        kick.kick();
                    }
                }
                kicked = Some(Instant::now());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        for (index, thread) in self.threads.into_iter().enumerate() {
            if !thread.is_finished() {
                warn!("vCPU thread {index} did not stop within 10 s; leaving it");
            } else if thread.join().is_err() {
                warn!("vCPU thread {index} panicked");
            }
        }
    }
}

/// What the vCPUs said of themselves when created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct GuestCpus {
    /// Each vCPU's MPIDR_EL1, in index order.
    pub(super) mpidrs: Vec<u64>,
    /// vCPU 0's ID_AA64MMFR2_EL1 (every vCPU of a VM has the same).
    pub(super) id_aa64mmfr2: u64,
}

/// Starts one thread per vCPU; each creates its vCPU, reports its MPIDR and ID registers,
/// then waits. Returns the threads and what the vCPUs reported.
///
/// vCPUs are created strictly in index order, each after the previous one reported in. KVM
/// numbers vCPUs in creation order (`vcpu_idx`) as well as by the id we give (`vcpu_id`),
/// and some kernels mix the two up (looking a vCPU up by creation index where they hold its
/// id). Created out of order on Linux 6.1, an SMP guest intermittently stopped waking up
/// (2 of 6 two-vCPU boots, both vCPUs parked in the idle loop); in order, it does not.
pub(super) fn spawn_vcpus(
    count: u32,
    sandbox: bool,
    vm: &Arc<dyn Vm>,
    control: &Arc<VmControl>,
    bus: &Arc<MmioBus>,
) -> Result<(RunningVcpus, GuestCpus), VmError> {
    let (ready_tx, ready_rx) = mpsc::channel::<VcpuReady>();
    let (paused_tx, paused_rx) = mpsc::channel::<u32>();
    let mut threads = Vec::new();
    let mut starts = Vec::new();
    let mut mpidrs = Vec::new();
    let mut id_aa64mmfr2 = 0;
    let mut kicks = Vec::new();
    let mut failure = None;
    for index in 0..count {
        let (start_tx, start_rx) = mpsc::channel();
        let (vm, control, bus) = (vm.clone(), control.clone(), bus.clone());
        let channels =
            VcpuChannels { ready: ready_tx.clone(), start: start_rx, paused: paused_tx.clone() };
        let spawned = devices::thread::named(format!("vcpu{index}"))
            .spawn(move || vcpu_thread(index, vm, bus, control, channels, sandbox));
        let thread = match spawned {
            Ok(thread) => thread,
            Err(source) => {
                failure = Some(VmError::Thread { what: format!("vcpu{index}"), source });
                break;
            }
        };
        threads.push(thread);
        starts.push(start_tx);
        match ready_rx.recv().map(|report| report.result) {
            Ok(Ok(identity)) => {
                if index == 0 {
                    id_aa64mmfr2 = identity.id_aa64mmfr2;
                }
                mpidrs.push(identity.mpidr);
                kicks.push(identity.kick);
            }
            Ok(Err(e)) => {
                failure = Some(VmError::Hypervisor(e));
                break;
            }
            Err(_) => {
                failure = Some(VmError::VcpuLost(index));
                break;
            }
        }
    }
    let running = RunningVcpus { threads, kicks, starts, paused: paused_rx };
    if let Some(e) = failure {
        running.abort(control);
        return Err(e);
    }
    Ok((running, GuestCpus { mpidrs, id_aa64mmfr2 }))
}
