//! PSCI power states of a VM's vCPUs, and where vCPU threads wait.
//!
//! KVM runs PSCI in the kernel; with Hypervisor.framework the backend does it. Every vCPU has a
//! power state (off, on, or started by CPU_ON but not running yet, which carries the entry
//! point and context id: its mailbox) and a kick flag. A vCPU that is off waits in
//! [`VcpuPower::wait_to_run`] until CPU_ON or a kick; a vCPU in WFI waits in
//! [`VcpuPower::idle`] until a kick, an interrupt the VMM raises, or a timeout. One lock and one
//! condition variable serve all vCPUs: the events are rare (boot, hotplug, stop, reboot).
//!
//! A reboot in place starts with [`VcpuPower::power_on_reset`] (every vCPU off, as at power-on,
//! done once with all vCPUs stopped, so that no CPU_ON of the new boot can be undone by a vCPU
//! reset that comes late), then each vCPU thread re-creates its vCPU in index order
//! ([`VcpuPower::wait_reset_turn`], [`VcpuPower::end_reset_turn`]).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arch::psci::{self, AffinityState, CpuOn, PsciStatus};

/// A vCPU's power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Power {
    /// Never started, or CPU_OFF.
    Off,
    /// CPU_ON accepted; the vCPU starts here when its thread next runs it.
    Pending(CpuOn),
    /// Running (or ready to).
    On,
}

#[derive(Debug)]
struct Cpu {
    mpidr: u64,
    power: Power,
    kicked: bool,
}

#[derive(Debug, Default)]
struct State {
    /// By vCPU index; `None` until that vCPU is created.
    cpus: Vec<Option<Cpu>>,
    /// Bumped for every interrupt the VMM raises, so idle vCPUs re-check.
    interrupts: u64,
    /// During a reboot, the index of the vCPU whose turn it is to be re-created.
    reset_turn: u32,
}

/// What a vCPU thread does next, from [`VcpuPower::wait_to_run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunGate {
    /// The vCPU is on: run it.
    Run,
    /// The vCPU was just started by CPU_ON: set these registers (PC = entry, x0 = context id,
    /// EL1h) and run it.
    Start(CpuOn),
    /// It was kicked: return to the VMM (`VcpuExit::Interrupted`).
    Kicked,
}

/// Why [`VcpuPower::idle`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleEnd {
    /// Kicked: return to the VMM.
    Kicked,
    /// The VMM raised an interrupt: resume the guest, which takes it if it is for this vCPU.
    Interrupt,
    /// The timeout passed.
    TimedOut,
}

/// The power states of all vCPUs of one VM.
#[derive(Debug, Default)]
pub struct VcpuPower {
    state: Mutex<State>,
    changed: Condvar,
}

impl VcpuPower {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait(guard).unwrap_or_else(|e| e.into_inner())
    }

    /// Registers vCPU `index` with its MPIDR_EL1, powered off.
    pub fn add(&self, index: u32, mpidr: u64) {
        let mut state = self.lock();
        let i = index as usize;
        if state.cpus.len() <= i {
            state.cpus.resize_with(i + 1, || None);
        }
        state.cpus[i] = Some(Cpu { mpidr, power: Power::Off, kicked: false });
    }

    /// Marks vCPU `index` on: the boot vCPU, whose registers the VMM sets.
    pub fn boot(&self, index: u32) {
        if let Some(cpu) = self.lock().cpus.get_mut(index as usize).and_then(Option::as_mut) {
            cpu.power = Power::On;
        }
    }

    /// Makes vCPU `index`'s current or next wait (or run) end with a kick.
    pub fn kick(&self, index: u32) {
        if let Some(cpu) = self.lock().cpus.get_mut(index as usize).and_then(Option::as_mut) {
            cpu.kicked = true;
        }
        self.changed.notify_all();
    }

    /// Clears vCPU `index`'s kick flag (the kick ended a guest run); returns whether it was set.
    pub fn take_kick(&self, index: u32) -> bool {
        self.lock()
            .cpus
            .get_mut(index as usize)
            .and_then(Option::as_mut)
            .is_some_and(|cpu| std::mem::take(&mut cpu.kicked))
    }

    /// Waits until vCPU `index` may run: at once when it is on, after CPU_ON when it is off.
    /// A kick ends the wait (and a run that has not started) with [`RunGate::Kicked`].
    pub fn wait_to_run(&self, index: u32) -> RunGate {
        let mut state = self.lock();
        loop {
            if let Some(cpu) = state.cpus.get_mut(index as usize).and_then(Option::as_mut) {
                if std::mem::take(&mut cpu.kicked) {
                    return RunGate::Kicked;
                }
                match cpu.power {
                    Power::On => return RunGate::Run,
                    Power::Pending(on) => {
                        cpu.power = Power::On;
                        return RunGate::Start(on);
                    }
                    Power::Off => {}
                }
            }
            state = self.wait(state);
        }
    }

    /// PSCI CPU_ON: starts the vCPU whose MPIDR is `on.target_mpidr`. Returns the caller's x0:
    /// SUCCESS, ALREADY_ON, ON_PENDING, INVALID_PARAMETERS (no such vCPU) or INVALID_ADDRESS
    /// (an entry point that is not 4-byte aligned cannot be an A64 instruction).
    pub fn cpu_on(&self, on: CpuOn) -> u64 {
        let mut state = self.lock();
        let target = state
            .cpus
            .iter_mut()
            .flatten()
            .find(|cpu| psci::affinity_matches(on.target_mpidr, cpu.mpidr, 0));
        let status = match target {
            None => PsciStatus::InvalidParameters,
            Some(_) if on.entry % 4 != 0 => PsciStatus::InvalidAddress,
            Some(Cpu { power: Power::On, .. }) => PsciStatus::AlreadyOn,
            Some(Cpu { power: Power::Pending(_), .. }) => PsciStatus::OnPending,
            Some(cpu) => {
                cpu.power = Power::Pending(on);
                PsciStatus::Success
            }
        };
        drop(state);
        if status == PsciStatus::Success {
            self.changed.notify_all();
        }
        status.to_x0()
    }

    /// PSCI CPU_OFF for vCPU `index`: its next [`VcpuPower::wait_to_run`] waits for CPU_ON.
    pub fn cpu_off(&self, index: u32) {
        if let Some(cpu) = self.lock().cpus.get_mut(index as usize).and_then(Option::as_mut) {
            cpu.power = Power::Off;
        }
    }

    /// PSCI AFFINITY_INFO: the caller's x0 for `target_affinity` at `lowest_level`.
    pub fn affinity_info(&self, target_affinity: u64, lowest_level: u8) -> u64 {
        let state = self.lock();
        let cpus = state.cpus.iter().flatten().map(|cpu| {
            let affinity = match cpu.power {
                Power::Off => AffinityState::Off,
                Power::Pending(_) => AffinityState::OnPending,
                Power::On => AffinityState::On,
            };
            (cpu.mpidr, affinity)
        });
        psci::affinity_info_result(target_affinity, lowest_level, cpus)
    }

    /// For a reboot in place, with every vCPU out of the guest: all vCPUs off (the boot vCPU
    /// is turned on by [`VcpuPower::boot`], the others wait for the new boot's CPU_ON; a
    /// CPU_ON of the last boot that no vCPU took is dropped), kicks that arrived while the
    /// VMM stopped them cleared, and vCPU 0's turn to be re-created.
    pub fn power_on_reset(&self) {
        let mut state = self.lock();
        for cpu in state.cpus.iter_mut().flatten() {
            cpu.power = Power::Off;
            cpu.kicked = false;
        }
        state.reset_turn = 0;
        drop(state);
        self.changed.notify_all();
    }

    /// Waits until it is vCPU `index`'s turn to be re-created for a reboot: once every vCPU
    /// before it is done ([`VcpuPower::end_reset_turn`]). So they are re-created one at a
    /// time in index order, as they were created at first. False if a kick ended the wait
    /// (the VM is stopping).
    pub fn wait_reset_turn(&self, index: u32) -> bool {
        let mut state = self.lock();
        loop {
            if let Some(cpu) = state.cpus.get_mut(index as usize).and_then(Option::as_mut) {
                if std::mem::take(&mut cpu.kicked) {
                    return false;
                }
            }
            if state.reset_turn >= index {
                return true;
            }
            state = self.wait(state);
        }
    }

    /// vCPU `index` is re-created (or failed to be: the next one goes on either way, and the
    /// failure stops the VM).
    pub fn end_reset_turn(&self, index: u32) {
        let mut state = self.lock();
        state.reset_turn = state.reset_turn.max(index.saturating_add(1));
        drop(state);
        self.changed.notify_all();
    }

    /// The VMM raised an interrupt (an SPI or MSI): idle vCPUs resume to take it.
    pub fn interrupt_raised(&self) {
        self.lock().interrupts += 1;
        self.changed.notify_all();
    }

    /// Waits, for a vCPU in WFI, until a kick, an interrupt the VMM raises, or `timeout`.
    pub fn idle(&self, index: u32, timeout: Duration) -> IdleEnd {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        let seen = state.interrupts;
        loop {
            if let Some(cpu) = state.cpus.get_mut(index as usize).and_then(Option::as_mut) {
                if std::mem::take(&mut cpu.kicked) {
                    return IdleEnd::Kicked;
                }
            }
            if state.interrupts != seen {
                return IdleEnd::Interrupt;
            }
            let now = Instant::now();
            if now >= deadline {
                return IdleEnd::TimedOut;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const SUCCESS: u64 = 0;
    const INVALID_PARAMETERS: u64 = -2i64 as u64;
    const ALREADY_ON: u64 = -4i64 as u64;
    const ON_PENDING: u64 = -5i64 as u64;
    const INVALID_ADDRESS: u64 = -9i64 as u64;

    fn on(target_mpidr: u64, entry: u64) -> CpuOn {
        CpuOn { target_mpidr, entry, context_id: 0xc0ffee }
    }

    /// Runs `wait` on its own thread and checks, 20 ms later, that it is still waiting
    /// (`why` says for what).
    fn still_waiting<T: Send + 'static>(
        power: &Arc<VcpuPower>,
        wait: impl FnOnce(&VcpuPower) -> T + Send + 'static,
        why: &str,
    ) -> std::thread::JoinHandle<T> {
        let waiter = {
            let power = power.clone();
            std::thread::spawn(move || wait(&power))
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(!waiter.is_finished(), "{why}");
        waiter
    }

    /// Two vCPUs with KVM-style MPIDRs, vCPU 0 booted.
    fn two() -> Arc<VcpuPower> {
        let power = Arc::new(VcpuPower::default());
        power.add(0, 0x8000_0000);
        power.add(1, 0x8000_0001);
        power.boot(0);
        power
    }

    #[test]
    fn cpu_on_answers() {
        let power = two();
        assert_eq!(power.cpu_on(on(0, 0x4000_0000)), ALREADY_ON);
        assert_eq!(power.cpu_on(on(7, 0x4000_0000)), INVALID_PARAMETERS);
        assert_eq!(power.cpu_on(on(1, 0x4000_0002)), INVALID_ADDRESS);
        // The MPIDR's non-affinity bits (bit 31) are not part of the target.
        assert_eq!(power.cpu_on(on(0x8000_0001, 0x4000_0000)), INVALID_PARAMETERS);
        assert_eq!(power.cpu_on(on(1, 0x4000_0000)), SUCCESS);
        assert_eq!(power.cpu_on(on(1, 0x4000_0000)), ON_PENDING);
        assert_eq!(power.wait_to_run(1), RunGate::Start(on(1, 0x4000_0000)));
        assert_eq!(power.wait_to_run(1), RunGate::Run);
        assert_eq!(power.cpu_on(on(1, 0x4000_0000)), ALREADY_ON);
    }

    #[test]
    fn affinity_info_follows_the_states() {
        let power = two();
        assert_eq!(power.affinity_info(0, 0), AffinityState::On.to_x0());
        assert_eq!(power.affinity_info(1, 0), AffinityState::Off.to_x0());
        assert_eq!(power.cpu_on(on(1, 0x4000_0000)), SUCCESS);
        assert_eq!(power.affinity_info(1, 0), AffinityState::OnPending.to_x0());
        power.wait_to_run(1);
        assert_eq!(power.affinity_info(1, 0), AffinityState::On.to_x0());
        power.cpu_off(1);
        assert_eq!(power.affinity_info(1, 0), AffinityState::Off.to_x0());
        assert_eq!(power.affinity_info(2, 0), INVALID_PARAMETERS);
        // Level 1: the cluster has an on vCPU.
        assert_eq!(power.affinity_info(0, 1), AffinityState::On.to_x0());
    }

    #[test]
    fn an_off_vcpu_waits_for_cpu_on() {
        let power = two();
        let waiter =
            still_waiting(&power, |power| power.wait_to_run(1), "vCPU 1 must wait while off");
        assert_eq!(power.cpu_on(on(1, 0x4020_0000)), SUCCESS);
        assert_eq!(waiter.join().unwrap(), RunGate::Start(on(1, 0x4020_0000)));
    }

    #[test]
    fn a_kick_ends_the_wait_of_an_off_vcpu() {
        let power = two();
        let waiter = {
            let power = power.clone();
            std::thread::spawn(move || power.wait_to_run(1))
        };
        std::thread::sleep(Duration::from_millis(20));
        power.kick(1);
        assert_eq!(waiter.join().unwrap(), RunGate::Kicked);
        // The kick was consumed; the vCPU is still off, and a restart works after CPU_OFF.
        assert_eq!(power.affinity_info(1, 0), AffinityState::Off.to_x0());
        assert_eq!(power.cpu_on(on(1, 0x4000_0000)), SUCCESS);
        assert_eq!(power.wait_to_run(1), RunGate::Start(on(1, 0x4000_0000)));
        power.cpu_off(1);
        assert_eq!(power.cpu_on(on(1, 0x4000_1000)), SUCCESS);
        assert_eq!(power.wait_to_run(1), RunGate::Start(on(1, 0x4000_1000)));
    }

    #[test]
    fn a_kick_before_the_run_is_kept_for_it() {
        let power = two();
        power.kick(0);
        assert_eq!(power.wait_to_run(0), RunGate::Kicked);
        assert_eq!(power.wait_to_run(0), RunGate::Run);
        power.kick(0);
        assert!(power.take_kick(0));
        assert!(!power.take_kick(0));
        assert!(!power.take_kick(9), "unknown vCPUs have no kick");
    }

    #[test]
    fn power_on_reset_turns_every_vcpu_off_and_drops_stale_cpu_on_and_kicks() {
        let power = two();
        power.add(2, 0x8000_0002);
        assert_eq!(power.cpu_on(on(1, 0x4000_0000)), SUCCESS);
        assert_eq!(power.wait_to_run(1), RunGate::Start(on(1, 0x4000_0000)));
        // vCPU 2 was started but its thread never took it before the reboot.
        assert_eq!(power.cpu_on(on(2, 0x4000_0000)), SUCCESS);
        power.kick(0);
        power.power_on_reset();
        for cpu in 0..3 {
            assert_eq!(power.affinity_info(cpu, 0), AffinityState::Off.to_x0(), "vCPU {cpu}");
        }
        assert!(!power.take_kick(0), "the stop's kick is gone");
        // The new boot: vCPU 0 booted by the VMM, vCPU 2 started by the new boot's CPU_ON.
        power.boot(0);
        assert_eq!(power.wait_to_run(0), RunGate::Run);
        assert_eq!(power.cpu_on(on(2, 0x4100_0000)), SUCCESS);
        assert_eq!(power.wait_to_run(2), RunGate::Start(on(2, 0x4100_0000)));
        let waiter = still_waiting(
            &power,
            |power| power.wait_to_run(1),
            "vCPU 1 is off until the new boot starts it",
        );
        power.kick(1);
        assert_eq!(waiter.join().unwrap(), RunGate::Kicked);
    }

    #[test]
    fn vcpus_are_recreated_in_index_order_whatever_order_their_threads_come() {
        let power = Arc::new(VcpuPower::default());
        for i in 0..4 {
            power.add(i, 0x8000_0000 | u64::from(i));
        }
        power.power_on_reset();
        let order = Arc::new(Mutex::new(Vec::new()));
        // Threads in reverse order, each after the previous one is waiting.
        let threads: Vec<_> = (0..4u32)
            .rev()
            .map(|i| {
                let (power, order) = (power.clone(), order.clone());
                let thread = std::thread::spawn(move || {
                    assert!(power.wait_reset_turn(i));
                    order.lock().unwrap().push(i);
                    power.end_reset_turn(i);
                });
                std::thread::sleep(Duration::from_millis(5));
                thread
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3]);
        // The next reboot starts from vCPU 0 again.
        power.power_on_reset();
        assert!(power.wait_reset_turn(0));
    }

    #[test]
    fn a_kick_ends_the_wait_for_a_reset_turn() {
        let power = two();
        power.power_on_reset();
        // vCPU 0's thread is gone (its reset failed before it took its turn): the stop's kick
        // must free vCPU 1.
        let waiter =
            still_waiting(&power, |power| power.wait_reset_turn(1), "vCPU 1 waits for vCPU 0");
        power.kick(1);
        assert!(!waiter.join().unwrap());
        // A failed reset still hands the turn on.
        power.end_reset_turn(0);
        assert!(power.wait_reset_turn(1));
    }

    #[test]
    fn idle_ends_on_kick_interrupt_or_timeout() {
        let power = two();
        let start = Instant::now();
        assert_eq!(power.idle(0, Duration::from_millis(10)), IdleEnd::TimedOut);
        assert!(start.elapsed() >= Duration::from_millis(10));

        let idler = {
            let power = power.clone();
            std::thread::spawn(move || power.idle(0, Duration::from_secs(30)))
        };
        // An interrupt raised before the idler starts waiting is not its business, so raise
        // them until it has seen one (no assumption about when the thread runs).
        while !idler.is_finished() {
            power.interrupt_raised();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(idler.join().unwrap(), IdleEnd::Interrupt);

        let idler = {
            let power = power.clone();
            std::thread::spawn(move || power.idle(0, Duration::from_secs(30)))
        };
        std::thread::sleep(Duration::from_millis(20));
        power.kick(0);
        assert_eq!(idler.join().unwrap(), IdleEnd::Kicked);
        assert!(!power.take_kick(0), "idle consumed the kick");
    }
}
