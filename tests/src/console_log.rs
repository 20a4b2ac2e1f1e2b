//! Reading L1's console: lines with host timestamps, split per case by markers.

use std::collections::HashMap;
use std::time::Duration;

use crate::case::CaseOutput;

/// Printed by `/cases.sh` before a case: `@@CASE-BEGIN <name>`.
pub const CASE_BEGIN: &str = "@@CASE-BEGIN";
/// Printed after a case: `@@CASE-END <name> status=<$?>`.
pub const CASE_END: &str = "@@CASE-END";
/// Printed when a case's watchdog kills it: `@@CASE-WATCHDOG <name>`.
pub const CASE_WATCHDOG: &str = "@@CASE-WATCHDOG";
/// Printed by L1's `/init` once it runs (tests/rig/l1-init.sh).
pub const L1_READY: &str = "APERTURE-RIG-L1-READY";
/// Printed by L1's `/init` after `/cases.sh`, before power-off.
pub const L1_DONE: &str = "APERTURE-RIG-L1-DONE";

/// One console line and when the host read it (since QEMU started).
#[derive(Debug, Clone)]
pub(crate) struct TimedLine {
    pub at: Duration,
    pub text: String,
}

/// Decodes a raw console line: lossy UTF-8, without '\r' (the tty adds them) or '\n'.
pub(crate) fn clean_line(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).chars().filter(|&c| c != '\r' && c != '\n').collect()
}

/// The text after `marker ` in `line`, and the text before the marker.
fn after_marker<'a>(line: &'a str, marker: &str) -> Option<(&'a str, &'a str)> {
    let pos = line.find(marker)?;
    let rest = line[pos + marker.len()..].strip_prefix(' ')?;
    Some((&line[..pos], rest.trim()))
}

/// Parses `<name> status=<n>`.
fn parse_end(rest: &str) -> Option<(&str, i32)> {
    let (name, status) = rest.split_once(' ')?;
    let code = status.trim().strip_prefix("status=")?.parse().ok()?;
    Some((name, code))
}

/// Splits the console log into one output per case, in the order of `names`.
pub(crate) fn split_cases(lines: &[TimedLine], names: &[String]) -> Vec<CaseOutput> {
    let mut outputs: Vec<CaseOutput> =
        names.iter().map(|name| CaseOutput { name: name.clone(), ..Default::default() }).collect();
    let index: HashMap<&str, usize> =
        names.iter().enumerate().map(|(i, name)| (name.as_str(), i)).collect();
    // The case being printed and when its begin marker arrived.
    let mut current: Option<(usize, Duration)> = None;

    for line in lines {
        let text = line.text.as_str();
        if let Some((before, name)) = after_marker(text, CASE_BEGIN) {
            push_line(&mut outputs, current, line.at, before);
            current = index.get(name).map(|&i| (i, line.at));
            if let Some((i, _)) = current {
                outputs[i].started = true;
            }
        } else if let Some((before, rest)) = after_marker(text, CASE_END) {
            push_line(&mut outputs, current, line.at, before);
            if let (Some((name, code)), Some((i, begin))) = (parse_end(rest), current) {
                if names[i] == name {
                    outputs[i].exit_status = Some(code);
                    outputs[i].duration = Some(line.at.saturating_sub(begin));
                    current = None;
                }
            }
        } else if let Some((_, name)) = after_marker(text, CASE_WATCHDOG) {
            if let Some(&i) = index.get(name) {
                outputs[i].watchdog_fired = true;
            }
        } else if let Some((i, begin)) = current {
            outputs[i].lines.push((line.at.saturating_sub(begin), text.to_string()));
        }
    }
    for output in &mut outputs {
        output.output =
            output.lines.iter().map(|(_, line)| line.as_str()).collect::<Vec<_>>().join("\n");
    }
    outputs
}

fn push_line(
    outputs: &mut [CaseOutput],
    current: Option<(usize, Duration)>,
    at: Duration,
    text: &str,
) {
    if let Some((i, begin)) = current {
        // Only a marker glued to a partial line (no newline before it) leaves a prefix.
        if !text.is_empty() {
            outputs[i].lines.push((at.saturating_sub(begin), text.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(lines: &[(u64, &str)]) -> Vec<TimedLine> {
        lines
            .iter()
            .map(|&(ms, text)| TimedLine { at: Duration::from_millis(ms), text: text.to_string() })
            .collect()
    }

    #[test]
    fn splits_by_markers() {
        let lines = log(&[
            (100, "APERTURE-RIG-L1-READY kernel=6.1"),
            (200, "@@CASE-BEGIN one"),
            (300, "[    0.000000] Booting Linux"),
            (1200, "APERTURE-GUEST-INIT-OK"),
            (1300, "@@CASE-END one status=0"),
            (1400, "@@CASE-BEGIN two"),
            (1500, "aperture: error: no such file"),
            (1600, "@@CASE-END two status=1"),
        ]);
        let names = vec!["one".to_string(), "two".to_string(), "three".to_string()];
        let out = split_cases(&lines, &names);
        assert_eq!(out[0].exit_status, Some(0));
        assert_eq!(out[0].lines.len(), 2);
        assert_eq!(out[0].time_to("APERTURE-GUEST-INIT-OK"), Some(Duration::from_millis(1000)));
        assert_eq!(out[0].duration, Some(Duration::from_millis(1100)));
        assert_eq!(out[1].exit_status, Some(1));
        assert_eq!(out[1].output, "aperture: error: no such file");
        assert!(!out[2].started);
        assert_eq!(out[2].exit_status, None);
    }

    #[test]
    fn marker_after_partial_line_and_watchdog() {
        let lines = log(&[
            (0, "@@CASE-BEGIN hang"),
            (10, "CHECK hang: sleeping forever"),
            (20, "@@CASE-WATCHDOG hang"),
            (30, "/ # @@CASE-END hang status=137"),
        ]);
        let out = split_cases(&lines, &["hang".to_string()]);
        assert!(out[0].watchdog_fired);
        assert_eq!(out[0].exit_status, Some(137));
        assert_eq!(out[0].output, "CHECK hang: sleeping forever\n/ # ");
    }

    #[test]
    fn unfinished_case_keeps_its_output() {
        let lines = log(&[(0, "@@CASE-BEGIN a"), (5, "partial")]);
        let out = split_cases(&lines, &["a".to_string()]);
        assert!(out[0].started);
        assert_eq!(out[0].exit_status, None);
        assert_eq!(out[0].output, "partial");
    }

    #[test]
    fn cleans_carriage_returns() {
        assert_eq!(clean_line(b"abc\r\r\n"), "abc");
        assert_eq!(clean_line(b"a\xffb\n"), "a\u{fffd}b");
    }
}
