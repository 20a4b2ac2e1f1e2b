//! How a running VM ends: the first reason wins, and everyone waiting is told.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// What asked for the guest's power key to be pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownTrigger {
    /// SIGTERM.
    Signal(i32),
    /// `Ctrl-A p` on the console.
    Console,
    /// `--timeout` elapsed (with `--shutdown-grace`).
    Timeout(Duration),
}

impl std::fmt::Display for ShutdownTrigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Signal(signal) => match crate::signals::name(*signal) {
                Some(name) => f.write_str(name),
                None => write!(f, "signal {signal}"),
            },
            Self::Console => f.write_str("Ctrl-A p"),
            Self::Timeout(limit) => write!(f, "--timeout {} s", limit.as_secs()),
        }
    }
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off (PSCI SYSTEM_OFF).
    PowerOff,
    /// The guest reset (PSCI SYSTEM_RESET), e.g. a panic with `panic=-1`.
    Reset,
    /// The guest wrote its exit status to the test-exit device.
    TestExit(u8),
    /// `--timeout` elapsed.
    Timeout(Duration),
    /// The user typed the console escape sequence.
    ConsoleQuit,
    /// SIGINT, SIGTERM or SIGHUP stopped the VM at once.
    Signal(i32),
    /// The power key was pressed and the guest powered off within the grace period.
    PowerKeyOff(ShutdownTrigger),
    /// The power key was pressed but the guest was still running when the grace period
    /// (`--shutdown-grace`) ended: stopped hard.
    PowerKeyIgnored {
        /// What pressed the key.
        trigger: ShutdownTrigger,
        /// The grace period.
        grace: Duration,
    },
    /// The guest rebooted too often in a short time (a reboot loop: a kernel panicking at
    /// boot with `panic=-1`).
    RebootLoop {
        /// Reboots counted.
        reboots: u32,
        /// Within this long.
        within: Duration,
    },
    /// A vCPU or device failed.
    Error(String),
    /// An assigned device (this host address) left the host, under `--on-device-loss stop`.
    DeviceLost(String),
}

/// Exit statuses, documented in README.md.
pub mod exit_status {
    /// The guest powered off, or the user quit from the console.
    pub const POWER_OFF: i32 = 0;
    /// Aperture failed (bad input, host problem, unhandled guest exit).
    pub const VMM_ERROR: i32 = 1;
    /// The guest reset (with `--no-reboot`, or too many reboots in a row).
    pub const RESET: i32 = 3;
    /// The power key was pressed but the guest did not power off within the grace period.
    pub const SHUTDOWN_FORCED: i32 = 4;
    /// An assigned device left the host and `--on-device-loss stop` ended the VM.
    pub const DEVICE_LOST: i32 = 5;
    /// `--timeout` elapsed.
    pub const TIMEOUT: i32 = 124;
    /// A signal ended the VM: 128 + the signal number, as shells report it.
    pub const SIGNAL_BASE: i32 = 128;
}

impl StopReason {
    /// The process exit status for this reason.
    pub fn exit_status(&self) -> i32 {
        match self {
            Self::PowerOff | Self::ConsoleQuit => exit_status::POWER_OFF,
            Self::Reset | Self::RebootLoop { .. } => exit_status::RESET,
            Self::TestExit(code) => i32::from(*code),
            Self::Timeout(_) => exit_status::TIMEOUT,
            Self::Signal(signal) => exit_status::SIGNAL_BASE + signal,
            // A clean power-off the user asked for is a success; one the timeout asked for
            // still reports the timeout.
            Self::PowerKeyOff(ShutdownTrigger::Timeout(_)) => exit_status::TIMEOUT,
            Self::PowerKeyOff(_) => exit_status::POWER_OFF,
            Self::PowerKeyIgnored { .. } => exit_status::SHUTDOWN_FORCED,
            Self::Error(_) => exit_status::VMM_ERROR,
            Self::DeviceLost(_) => exit_status::DEVICE_LOST,
        }
    }
}

/// Shared between the vCPU threads, devices and the main thread.
#[derive(Debug, Default)]
pub struct VmControl {
    reason: Mutex<Option<StopReason>>,
    stopping: AtomicBool,
    changed: Condvar,
    /// vCPU exits the VMM handled (MMIO and the like), summed over vCPUs when they stop.
    vmm_exits: std::sync::atomic::AtomicU64,
    /// `Ctrl-A p` was typed and the main loop has not acted on it yet.
    power_key_requested: AtomicBool,
}

impl VmControl {
    /// Records why the VM should stop, unless a reason is already recorded.
    pub fn request_stop(&self, reason: StopReason) {
        let mut current = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if current.is_none() {
            log::debug!("stop requested: {reason:?}");
            *current = Some(reason);
        }
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Stops the vCPUs without recording a reason (teardown after a setup error).
    pub fn halt(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Asks the main loop to press the guest's power key (`Ctrl-A p`).
    pub fn request_power_key(&self) {
        self.power_key_requested.store(true, Ordering::SeqCst);
        self.changed.notify_all();
    }

    /// Whether the power key was requested since the last call.
    pub fn take_power_key_request(&self) -> bool {
        self.power_key_requested.swap(false, Ordering::SeqCst)
    }

    /// Forgets the stop (a reboot in place, with every vCPU out of the guest): the next boot
    /// runs until a new reason is recorded.
    pub fn rearm(&self) {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.stopping.store(false, Ordering::SeqCst);
    }

    /// Adds a stopped vCPU's count of exits handled in the VMM.
    pub fn add_vmm_exits(&self, count: u64) {
        self.vmm_exits.fetch_add(count, Ordering::Relaxed);
    }

    /// Exits handled in the VMM so far (complete once all vCPUs stopped).
    pub fn vmm_exits(&self) -> u64 {
        self.vmm_exits.load(Ordering::Relaxed)
    }

    /// Whether the VM is stopping; vCPU loops check it between runs.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The recorded stop reason, if any.
    pub fn reason(&self) -> Option<StopReason> {
        self.reason.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits up to `timeout` for a stop request; returns the reason if there is one.
    pub fn wait(&self, timeout: Duration) -> Option<StopReason> {
        let guard = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        let (guard, _) = self
            .changed
            .wait_timeout_while(guard, timeout, |reason| reason.is_none())
            .unwrap_or_else(|e| e.into_inner());
        guard.clone()
    }
}

impl devices::ExitRequest for VmControl {
    fn request_exit(&self, status: u8) {
        self.request_stop(StopReason::TestExit(status));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let control = VmControl::default();
        assert!(!control.is_stopping());
        assert_eq!(control.wait(Duration::from_millis(1)), None);
        control.request_stop(StopReason::TestExit(7));
        control.request_stop(StopReason::PowerOff);
        assert!(control.is_stopping());
        assert_eq!(control.wait(Duration::from_millis(1)), Some(StopReason::TestExit(7)));
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(StopReason::PowerOff.exit_status(), 0);
        assert_eq!(StopReason::Reset.exit_status(), 3);
        assert_eq!(StopReason::TestExit(42).exit_status(), 42);
        assert_eq!(StopReason::Timeout(Duration::from_secs(1)).exit_status(), 124);
        assert_eq!(StopReason::Signal(15).exit_status(), 143);
        assert_eq!(StopReason::Error("x".into()).exit_status(), 1);
        let term = ShutdownTrigger::Signal(15);
        let timeout = ShutdownTrigger::Timeout(Duration::from_secs(9));
        assert_eq!(StopReason::PowerKeyOff(term).exit_status(), 0);
        assert_eq!(StopReason::PowerKeyOff(ShutdownTrigger::Console).exit_status(), 0);
        assert_eq!(StopReason::PowerKeyOff(timeout).exit_status(), 124);
        let grace = Duration::from_secs(3);
        assert_eq!(StopReason::PowerKeyIgnored { trigger: term, grace }.exit_status(), 4);
        assert_eq!(StopReason::PowerKeyIgnored { trigger: timeout, grace }.exit_status(), 4);
        assert_eq!(term.to_string(), "SIGTERM");
        assert_eq!(timeout.to_string(), "--timeout 9 s");
        assert_eq!(StopReason::DeviceLost("0000:01:00.0".into()).exit_status(), 5);
    }
}
