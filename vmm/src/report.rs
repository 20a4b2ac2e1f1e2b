//! The line Aperture ends with on stderr, by why the VM stopped: `aperture: error: ...`, a
//! timeout, a reset or a signal. Ordinary ends (power-off, console quit, a test exit) print
//! nothing there; they are logged.

use crate::control::{exit_status, StopReason};
use crate::signals;

/// The stderr line for `reason`, or `None` for an ordinary end.
pub fn stop_line(reason: &StopReason) -> Option<String> {
    match reason {
        StopReason::PowerOff | StopReason::ConsoleQuit | StopReason::TestExit(_) => None,
        StopReason::Reset => {
            Some(format!("aperture: the guest reset (exit status {})", exit_status::RESET))
        }
        StopReason::Timeout(limit) => Some(format!(
            "aperture: the guest timed out: still running after {} s (--timeout); stopped it",
            limit.as_secs()
        )),
        StopReason::Signal(signal) => Some(match signals::name(*signal) {
            Some(name) => format!("aperture: stopped by {name} (signal {signal})"),
            None => format!("aperture: stopped by signal {signal}"),
        }),
        StopReason::PowerKeyOff(trigger) => {
            Some(format!("aperture: the guest powered off after the power key ({trigger})"))
        }
        StopReason::PowerKeyIgnored { trigger, grace } => Some(format!(
            "aperture: the guest did not power off within {} s of the power key ({trigger}, \
             --shutdown-grace); stopped it hard (exit status {})",
            grace.as_secs(),
            exit_status::SHUTDOWN_FORCED
        )),
        StopReason::RebootLoop { reboots, within } => Some(format!(
            "aperture: the guest rebooted {reboots} times within {} s (a boot that fails, e.g. a \
             kernel panic with panic=-1); stopped it (exit status {})",
            within.as_secs(),
            exit_status::RESET
        )),
        StopReason::Error(message) => Some(format!("aperture: error: {message}")),
        StopReason::DeviceLost(address) => Some(format!(
            "aperture: assigned device {address} left the host; stopped the VM \
             (--on-device-loss stop, exit status {})",
            exit_status::DEVICE_LOST
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn ordinary_ends_print_nothing_the_others_one_line() {
        assert_eq!(stop_line(&StopReason::PowerOff), None);
        assert_eq!(
            stop_line(&StopReason::Error("--timeout 0: give the guest at least one second".into()))
                .as_deref(),
            Some("aperture: error: --timeout 0: give the guest at least one second")
        );
        assert_eq!(
            stop_line(&StopReason::Timeout(Duration::from_secs(30))).as_deref(),
            Some("aperture: the guest timed out: still running after 30 s (--timeout); stopped it")
        );
        assert_eq!(
            stop_line(&StopReason::Signal(libc::SIGTERM)).as_deref(),
            Some("aperture: stopped by SIGTERM (signal 15)")
        );
        let trigger = crate::control::ShutdownTrigger::Signal(libc::SIGTERM);
        assert_eq!(
            stop_line(&StopReason::PowerKeyOff(trigger)).as_deref(),
            Some("aperture: the guest powered off after the power key (SIGTERM)")
        );
        let ignored = StopReason::PowerKeyIgnored { trigger, grace: Duration::from_secs(5) };
        assert_eq!(
            stop_line(&ignored).as_deref(),
            Some(
                "aperture: the guest did not power off within 5 s of the power key (SIGTERM, \
                 --shutdown-grace); stopped it hard (exit status 4)"
            )
        );
        assert_eq!(
            stop_line(&StopReason::DeviceLost("0000:01:00.0".into())).as_deref(),
            Some(
                "aperture: assigned device 0000:01:00.0 left the host; stopped the VM \
                 (--on-device-loss stop, exit status 5)"
            )
        );
    }
}
