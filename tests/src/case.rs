//! A case run inside the emulated host, and what came back from it.

use std::time::Duration;

/// How long a case may run inside L1 before its watchdog kills it, unless set.
const DEFAULT_CASE_LIMIT: Duration = Duration::from_secs(180);

/// One shell snippet run inside the emulated arm64 host (L1), e.g.
/// `/aperture run --kernel /guest/Image --initrd /guest/guest.cpio`.
///
/// It runs with stdin from `/dev/null` (a pipe inside the snippet overrides that), stderr
/// into stdout, in its own session so a watchdog can kill all of it after `limit`.
#[derive(Debug, Clone)]
pub struct Case {
    /// Unique name: letters, digits, '-' or '_'.
    pub name: String,
    /// The `sh` script.
    pub script: String,
    /// Watchdog limit inside L1 (the case ends with status 137 when it fires).
    pub limit: Duration,
}

impl Case {
    /// A case with the default watchdog limit (180 s).
    pub fn new(name: impl Into<String>, script: impl Into<String>) -> Self {
        Self { name: name.into(), script: script.into(), limit: DEFAULT_CASE_LIMIT }
    }

    /// The same case with another watchdog limit.
    pub fn with_limit(mut self, limit: Duration) -> Self {
        self.limit = limit;
        self
    }
}

/// The console output of one case, between its begin and end markers.
#[derive(Debug, Clone, Default)]
pub struct CaseOutput {
    /// The case's name.
    pub name: String,
    /// Its output lines joined with '\n' (markers excluded, '\r' stripped).
    pub output: String,
    /// `$?` of the case script; `None` if the end marker never came.
    pub exit_status: Option<i32>,
    /// Each output line with the host time since the begin marker arrived.
    pub lines: Vec<(Duration, String)>,
    /// Host time from the begin marker to the end marker.
    pub duration: Option<Duration>,
    /// The begin marker was seen.
    pub started: bool,
    /// The L1 watchdog killed the case.
    pub watchdog_fired: bool,
}

impl CaseOutput {
    /// True if some output line contains `needle`.
    pub fn contains(&self, needle: &str) -> bool {
        self.lines.iter().any(|(_, line)| line.contains(needle))
    }

    /// The first output line containing `needle`.
    pub fn line_with(&self, needle: &str) -> Option<&str> {
        self.lines.iter().find(|(_, line)| line.contains(needle)).map(|(_, line)| line.as_str())
    }

    /// Host time from the begin marker to the first line containing `needle`.
    pub fn time_to(&self, needle: &str) -> Option<Duration> {
        self.lines.iter().find(|(_, line)| line.contains(needle)).map(|(at, _)| *at)
    }

    /// A one-paragraph account for assertion messages.
    pub fn describe(&self) -> String {
        let status = match (self.started, self.exit_status) {
            (false, _) => "never started".to_string(),
            (true, None) => "did not finish".to_string(),
            (true, Some(code)) => format!("exit status {code}"),
        };
        let watchdog = if self.watchdog_fired { ", killed by the L1 watchdog" } else { "" };
        format!(
            "case {} ({status}{watchdog}) output:\n{}\n-- end of case {} --",
            self.name, self.output, self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        let out = CaseOutput {
            name: "a".into(),
            lines: vec![
                (Duration::from_millis(5), "booting".into()),
                (Duration::from_millis(900), "APERTURE-GUEST-INIT-OK".into()),
            ],
            started: true,
            exit_status: Some(0),
            ..Default::default()
        };
        assert!(out.contains("GUEST-INIT"));
        assert_eq!(out.time_to("GUEST-INIT"), Some(Duration::from_millis(900)));
        assert_eq!(out.line_with("boot"), Some("booting"));
        assert!(out.describe().contains("exit status 0"));
        assert_eq!(Case::new("x", "true").limit, DEFAULT_CASE_LIMIT);
    }
}
