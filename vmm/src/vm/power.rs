//! The guest's power key, and how the main thread waits for the VM to stop.
//!
//! SIGTERM, `Ctrl-A p` and (with `--shutdown-grace`) `--timeout` press the power key: the
//! PL061 line behind the device tree's `gpio-keys` KEY_POWER goes high, and is released once
//! the guest has read it high (gpio-keys debounces, then reads the line) or after
//! [`MAX_KEY_HOLD`]. The guest then has the grace period to power off; a guest still running
//! at its end is stopped hard. SIGINT and SIGHUP stay hard stops: SIGINT is the shell's
//! Ctrl-C (the console's raw mode sends Ctrl-C to the guest, so a SIGINT is someone who wants
//! Aperture gone now), SIGHUP a terminal that is gone. A second SIGTERM while the key is
//! pressed stops at once too.
//!
//! [`StopWaiter`] is the portable decision logic, driven with explicit times so it is tested
//! without sleeping; [`wait_for_stop`] feeds it the clock, the signals and the console.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::Pl061;
use log::info;

use crate::control::{ShutdownTrigger, StopReason, VmControl};
use crate::signals;

/// The grace period for SIGTERM and `Ctrl-A p` when `--shutdown-grace` is not given: long
/// enough for systemd to stop its units, as `docker stop` and libvirt give theirs.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// The longest the key stays down when the guest never reads it (no gpio-keys driver).
pub const MAX_KEY_HOLD: Duration = Duration::from_secs(2);
/// How often the main thread looks at signals, the console and the key.
const POLL: Duration = Duration::from_millis(50);

/// The PL061 line wired to the guest's `gpio-keys` power key.
#[derive(Debug, Clone)]
pub(super) struct PowerKey {
    pub(super) gpio: Arc<Mutex<Pl061>>,
    pub(super) line: u32,
}

impl PowerKey {
    fn set(&self, down: bool) {
        self.gpio.lock().unwrap_or_else(|e| e.into_inner()).set_input(self.line, down);
    }

    fn seen(&self) -> bool {
        self.gpio.lock().unwrap_or_else(|e| e.into_inner()).input_seen_high(self.line)
    }
}

/// How long the guest gets after each kind of request; `None` = stop hard at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownPolicy {
    /// After SIGTERM.
    pub sigterm: Option<Duration>,
    /// After `Ctrl-A p` (always the key: asking for it is the point).
    pub console: Duration,
    /// After `--timeout`.
    pub timeout: Option<Duration>,
}

impl ShutdownPolicy {
    /// From `--shutdown-grace`: unset gives SIGTERM and `Ctrl-A p` the default grace and
    /// keeps `--timeout` hard; `0` makes SIGTERM hard too; `N` gives all three `N` seconds.
    pub fn from_grace(grace: Option<Duration>) -> Self {
        match grace {
            None => Self {
                sigterm: Some(DEFAULT_SHUTDOWN_GRACE),
                console: DEFAULT_SHUTDOWN_GRACE,
                timeout: None,
            },
            Some(g) if g.is_zero() => {
                Self { sigterm: None, console: DEFAULT_SHUTDOWN_GRACE, timeout: None }
            }
            Some(g) => Self { sigterm: Some(g), console: g, timeout: Some(g) },
        }
    }
}

/// What the main thread observed since the last poll.
#[derive(Debug, Default, Clone, Copy)]
pub struct Inputs {
    /// A signal arrived.
    pub signal: Option<i32>,
    /// `Ctrl-A p` was typed.
    pub console: bool,
    /// The guest has read the pressed key.
    pub key_seen: bool,
}

/// What the main thread should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    Wait,
    /// Press the key: the guest has `grace` to power off.
    Press(ShutdownTrigger, Duration),
    /// Release the key.
    Release,
    /// Stop the VM.
    Stop(StopReason),
}

#[derive(Debug, Clone, Copy)]
struct Pressed {
    trigger: ShutdownTrigger,
    grace: Duration,
    deadline: Instant,
    /// When the key went down; `None` once released.
    down_since: Option<Instant>,
}

/// Decides, poll by poll, when to press and release the key and when to stop the VM.
#[derive(Debug)]
pub struct StopWaiter {
    policy: ShutdownPolicy,
    timeout_at: Option<(Instant, Duration)>,
    pressed: Option<Pressed>,
}

impl StopWaiter {
    /// A waiter for a guest started at `started`, stopped after `timeout` if given.
    pub fn new(policy: ShutdownPolicy, timeout: Option<Duration>, started: Instant) -> Self {
        Self { policy, timeout_at: timeout.map(|t| (started + t, t)), pressed: None }
    }

    /// One poll at `now`.
    pub fn poll(&mut self, now: Instant, inputs: Inputs) -> Action {
        if let Some(signal) = inputs.signal {
            match (signal, self.policy.sigterm, &self.pressed) {
                (libc::SIGTERM, Some(grace), None) => {
                    return self.press(ShutdownTrigger::Signal(signal), grace, now)
                }
                _ => return Action::Stop(StopReason::Signal(signal)),
            }
        }
        if let Some(pressed) = self.pressed {
            if now >= pressed.deadline {
                let (trigger, grace) = (pressed.trigger, pressed.grace);
                return Action::Stop(StopReason::PowerKeyIgnored { trigger, grace });
            }
        }
        if let Some((_, limit)) = self.timeout_at.filter(|(at, _)| now >= *at) {
            self.timeout_at = None;
            match (self.policy.timeout, &self.pressed) {
                (Some(grace), None) => {
                    return self.press(ShutdownTrigger::Timeout(limit), grace, now)
                }
                (Some(_), Some(_)) => {} // already shutting down: its deadline stands
                (None, _) => return Action::Stop(StopReason::Timeout(limit)),
            }
        }
        if inputs.console && self.pressed.is_none() {
            return self.press(ShutdownTrigger::Console, self.policy.console, now);
        }
        if let Some(pressed) = self.pressed.as_mut() {
            if let Some(since) = pressed.down_since {
                if inputs.key_seen || now.duration_since(since) >= MAX_KEY_HOLD {
                    pressed.down_since = None;
                    return Action::Release;
                }
            }
        }
        Action::Wait
    }

    fn press(&mut self, trigger: ShutdownTrigger, grace: Duration, now: Instant) -> Action {
        self.pressed =
            Some(Pressed { trigger, grace, deadline: now + grace, down_since: Some(now) });
        Action::Press(trigger, grace)
    }

    /// The reason to report for a VM that stopped with `reason`: a power-off after the key
    /// says the key did it.
    pub fn finish(&self, reason: StopReason) -> StopReason {
        match (reason, &self.pressed) {
            (StopReason::PowerOff, Some(pressed)) => StopReason::PowerKeyOff(pressed.trigger),
            (reason, _) => reason,
        }
    }
}

/// Waits until the guest, a device, a signal, the console or the timeout stops the VM,
/// pressing the power key on the way when asked to. Signals and the timeout are recorded as
/// the stop reason too, so vCPU threads can see why they stop. `every_tick` runs on each
/// wake-up (about every [`POLL`]): device-loss checks.
pub(super) fn wait_for_stop(
    control: &VmControl,
    waiter: &mut StopWaiter,
    key: &PowerKey,
    every_tick: &mut dyn FnMut(),
) -> StopReason {
    loop {
        every_tick();
        if let Some(reason) = control.wait(POLL) {
            return waiter.finish(reason);
        }
        let inputs = Inputs {
            signal: signals::take(),
            console: control.take_power_key_request(),
            key_seen: key.seen(),
        };
        match waiter.poll(Instant::now(), inputs) {
            Action::Wait => {}
            Action::Press(trigger, grace) => {
                info!(
                    "{trigger}: pressing the guest's power key; it has {} s to power off",
                    grace.as_secs()
                );
                key.set(true);
            }
            Action::Release => key.set(false),
            Action::Stop(reason) => control.request_stop(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGTERM: i32 = libc::SIGTERM;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn signal(signal: i32) -> Inputs {
        Inputs { signal: Some(signal), ..Inputs::default() }
    }

    #[test]
    fn policy_from_shutdown_grace() {
        let default = ShutdownPolicy::from_grace(None);
        assert_eq!(default.sigterm, Some(DEFAULT_SHUTDOWN_GRACE));
        assert_eq!(default.timeout, None, "--timeout stays hard unless asked");
        let hard = ShutdownPolicy::from_grace(Some(Duration::ZERO));
        assert_eq!((hard.sigterm, hard.timeout), (None, None));
        assert_eq!(hard.console, DEFAULT_SHUTDOWN_GRACE);
        let five = ShutdownPolicy::from_grace(Some(secs(5)));
        assert_eq!(
            (five.sigterm, five.console, five.timeout),
            (Some(secs(5)), secs(5), Some(secs(5)))
        );
    }

    #[test]
    fn sigterm_presses_releases_when_seen_and_a_power_off_is_clean() {
        let t0 = Instant::now();
        let mut w = StopWaiter::new(ShutdownPolicy::from_grace(None), None, t0);
        assert_eq!(w.poll(t0, Inputs::default()), Action::Wait);
        let term = ShutdownTrigger::Signal(SIGTERM);
        assert_eq!(w.poll(t0, signal(SIGTERM)), Action::Press(term, DEFAULT_SHUTDOWN_GRACE));
        assert_eq!(w.poll(t0 + secs(1), Inputs::default()), Action::Wait, "held until seen");
        let seen = Inputs { key_seen: true, ..Inputs::default() };
        assert_eq!(w.poll(t0 + secs(1), seen), Action::Release);
        assert_eq!(w.poll(t0 + secs(2), seen), Action::Wait, "released once");
        assert_eq!(w.finish(StopReason::PowerOff), StopReason::PowerKeyOff(term));
        assert_eq!(w.finish(StopReason::Reset), StopReason::Reset);
    }

    #[test]
    fn an_ignored_key_is_released_then_forced_after_the_grace() {
        let t0 = Instant::now();
        let mut w = StopWaiter::new(ShutdownPolicy::from_grace(Some(secs(5))), None, t0);
        assert!(matches!(w.poll(t0, signal(SIGTERM)), Action::Press(..)));
        assert_eq!(w.poll(t0 + MAX_KEY_HOLD, Inputs::default()), Action::Release);
        assert_eq!(w.poll(t0 + secs(4), Inputs::default()), Action::Wait);
        let trigger = ShutdownTrigger::Signal(SIGTERM);
        assert_eq!(
            w.poll(t0 + secs(5), Inputs::default()),
            Action::Stop(StopReason::PowerKeyIgnored { trigger, grace: secs(5) })
        );
    }

    #[test]
    fn sigint_sighup_and_a_second_sigterm_stop_at_once() {
        let t0 = Instant::now();
        let mut w = StopWaiter::new(ShutdownPolicy::from_grace(None), None, t0);
        assert_eq!(w.poll(t0, signal(libc::SIGINT)), Action::Stop(StopReason::Signal(2)));
        assert_eq!(w.poll(t0, signal(libc::SIGHUP)), Action::Stop(StopReason::Signal(1)));
        assert!(matches!(w.poll(t0, signal(SIGTERM)), Action::Press(..)));
        assert_eq!(w.poll(t0, signal(SIGTERM)), Action::Stop(StopReason::Signal(SIGTERM)));
        // --shutdown-grace 0: SIGTERM is hard.
        let mut hard = StopWaiter::new(ShutdownPolicy::from_grace(Some(Duration::ZERO)), None, t0);
        assert_eq!(hard.poll(t0, signal(SIGTERM)), Action::Stop(StopReason::Signal(SIGTERM)));
    }

    #[test]
    fn timeout_is_hard_unless_a_grace_is_given() {
        let t0 = Instant::now();
        let mut w = StopWaiter::new(ShutdownPolicy::from_grace(None), Some(secs(10)), t0);
        assert_eq!(w.poll(t0 + secs(9), Inputs::default()), Action::Wait);
        assert_eq!(
            w.poll(t0 + secs(10), Inputs::default()),
            Action::Stop(StopReason::Timeout(secs(10)))
        );
        let mut w = StopWaiter::new(ShutdownPolicy::from_grace(Some(secs(3))), Some(secs(10)), t0);
        let trigger = ShutdownTrigger::Timeout(secs(10));
        assert_eq!(w.poll(t0 + secs(10), Inputs::default()), Action::Press(trigger, secs(3)));
        assert_eq!(w.finish(StopReason::PowerOff), StopReason::PowerKeyOff(trigger));
        assert_eq!(w.finish(StopReason::PowerOff).exit_status(), 124);
    }

    #[test]
    fn console_presses_once_and_the_timeout_does_not_restart_the_grace() {
        let t0 = Instant::now();
        let mut w = StopWaiter::new(ShutdownPolicy::from_grace(Some(secs(3))), Some(secs(2)), t0);
        let console = Inputs { console: true, ..Inputs::default() };
        assert_eq!(w.poll(t0, console), Action::Press(ShutdownTrigger::Console, secs(3)));
        assert_eq!(w.poll(t0 + Duration::from_millis(100), console), Action::Wait);
        assert_eq!(w.poll(t0 + secs(2), Inputs::default()), Action::Release);
        assert!(matches!(
            w.poll(t0 + secs(3), Inputs::default()),
            Action::Stop(StopReason::PowerKeyIgnored { trigger: ShutdownTrigger::Console, .. })
        ));
    }
}
