//! Where the VMM's time goes around a guest's run, for `-vv` (debug): the time each phase of
//! building the VM took, up to the vCPUs' start, and of stopping it. Profiling aid only; the
//! figures are logged, never acted on.

use std::fmt;
use std::time::{Duration, Instant};

/// Phases timed one after another from a start.
#[derive(Debug)]
pub struct BootPhases {
    started: Instant,
    last: Instant,
    phases: Vec<(&'static str, Duration)>,
}

impl Default for BootPhases {
    fn default() -> Self {
        let now = Instant::now();
        Self { started: now, last: now, phases: Vec::new() }
    }
}

impl BootPhases {
    /// Ends phase `name` now: it took the time since the previous phase ended.
    pub fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        self.record(name, now - self.last);
        self.last = now;
    }

    /// Records phase `name` as taking `took`.
    fn record(&mut self, name: &'static str, took: Duration) {
        self.phases.push((name, took));
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Starts a new series (e.g. the stop) from now, keeping nothing of the last one.
    pub fn restart(&mut self) {
        *self = Self::default();
    }
}

impl fmt::Display for BootPhases {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total: Duration = self.phases.iter().map(|(_, took)| *took).sum();
        for (name, took) in &self.phases {
            write!(f, "{name} {:.1} ms, ", took.as_secs_f64() * 1000.0)?;
        }
        write!(f, "total {:.1} ms", total.as_secs_f64() * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_print_in_order_with_their_total() {
        let mut phases = BootPhases::default();
        phases.record("read kernel", Duration::from_micros(1500));
        phases.record("create VM", Duration::from_millis(3));
        assert_eq!(phases.to_string(), "read kernel 1.5 ms, create VM 3.0 ms, total 4.5 ms");
        phases.mark("next");
        assert_eq!(phases.phases.len(), 3);
        phases.restart();
        assert_eq!(phases.to_string(), "total 0.0 ms");
    }
}
