//! The EL1 virtual timer, for a backend that must sleep for a guest WFI itself: how long until
//! the timer would fire (Arm ARM D12.8: the condition is met when CNTVCT >= CVAL, unsigned).

use std::time::Duration;

/// CNTV_CTL_EL0.ENABLE.
pub const CTL_ENABLE: u64 = 1 << 0;
/// CNTV_CTL_EL0.IMASK: the timer interrupt is masked.
pub const CTL_IMASK: u64 = 1 << 1;
/// CNTV_CTL_EL0.ISTATUS: the condition is met (read-only).
pub const CTL_ISTATUS: u64 = 1 << 2;

/// When the virtual timer will raise its interrupt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerWake {
    /// Disabled or masked: it will not.
    Never,
    /// The condition is already met.
    Now,
    /// After this many counter ticks.
    In(u64),
}

/// The timer's next interrupt, from CNTV_CTL_EL0, CNTV_CVAL_EL0 and the guest's CNTVCT_EL0.
pub fn vtimer_wake(ctl: u64, cval: u64, cntvct: u64) -> TimerWake {
    if ctl & CTL_ENABLE == 0 || ctl & CTL_IMASK != 0 {
        TimerWake::Never
    } else if cval <= cntvct {
        TimerWake::Now
    } else {
        TimerWake::In(cval - cntvct)
    }
}

/// `ticks` of a counter running at `freq_hz`, rounded up so a sleep never ends early. A zero
/// frequency (an unreadable CNTFRQ_EL0) gives zero: better to poll than to sleep forever.
pub fn ticks_to_duration(ticks: u64, freq_hz: u64) -> Duration {
    if freq_hz == 0 {
        return Duration::ZERO;
    }
    let nanos = (u128::from(ticks) * 1_000_000_000).div_ceil(u128::from(freq_hz));
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// How long a vCPU that executed WFI may sleep: `None` when the timer interrupt is already
/// due (do not sleep), otherwise until the timer fires, at most `max` (other wake-ups the
/// backend cannot see, such as interrupts between vCPUs, are then noticed within `max`).
pub fn wfi_sleep(
    ctl: u64,
    cval: u64,
    cntvct: u64,
    freq_hz: u64,
    max: Duration,
) -> Option<Duration> {
    match vtimer_wake(ctl, cval, cntvct) {
        TimerWake::Now => None,
        TimerWake::Never => Some(max),
        TimerWake::In(ticks) => Some(ticks_to_duration(ticks, freq_hz).min(max)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FREQ: u64 = 24_000_000; // Apple Silicon's counter

    #[test]
    fn wake_follows_ctl_and_cval() {
        assert_eq!(vtimer_wake(0, 100, 50), TimerWake::Never);
        assert_eq!(vtimer_wake(CTL_ENABLE | CTL_IMASK, 100, 50), TimerWake::Never);
        assert_eq!(vtimer_wake(CTL_ENABLE, 100, 50), TimerWake::In(50));
        assert_eq!(vtimer_wake(CTL_ENABLE, 100, 100), TimerWake::Now);
        assert_eq!(vtimer_wake(CTL_ENABLE | CTL_ISTATUS, 100, 150), TimerWake::Now);
        // Linux parks a disabled timer at CVAL = u64::MAX; enabled that far out it is "In".
        assert_eq!(vtimer_wake(CTL_ENABLE, u64::MAX, 0), TimerWake::In(u64::MAX));
    }

    #[test]
    fn ticks_round_up() {
        assert_eq!(ticks_to_duration(24, FREQ), Duration::from_micros(1));
        assert_eq!(ticks_to_duration(1, FREQ), Duration::from_nanos(42)); // 41.67 ns
        assert_eq!(ticks_to_duration(FREQ, FREQ), Duration::from_secs(1));
        assert_eq!(ticks_to_duration(5, 0), Duration::ZERO);
        // No overflow for the largest values.
        assert!(ticks_to_duration(u64::MAX, 1) >= Duration::from_secs(1 << 30));
    }

    #[test]
    fn wfi_sleeps_until_the_timer_at_most_max() {
        let max = Duration::from_millis(1);
        assert_eq!(wfi_sleep(CTL_ENABLE, 100, 100, FREQ, max), None);
        assert_eq!(wfi_sleep(0, 0, 100, FREQ, max), Some(max));
        assert_eq!(wfi_sleep(CTL_ENABLE, 124, 100, FREQ, max), Some(Duration::from_micros(1)));
        assert_eq!(wfi_sleep(CTL_ENABLE, 100 + FREQ, 100, FREQ, max), Some(max));
    }
}
