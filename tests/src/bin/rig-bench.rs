//! `rig-bench [RUNS] [--cmdline STR]`: boots the nested test guest RUNS times (default 5,
//! 1 vCPU) in one boot of the emulated arm64 host and prints, per run, the host wall time
//! from the case's begin marker to the guest's `APERTURE-GUEST-INIT-OK`, and the median.
//! `--cmdline` replaces aperture's default guest command line (e.g. add `quiet`: console
//! output is most of a nested boot). Figures for notes, not a pass/fail test.
//! Needs the rig built (tests/rig/build-rig.sh).

// The figures on stdout are this tool's output.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Duration;

use aperture_e2e::{run_cases_with, Case, RigOptions};

const GUEST_MARKER: &str = "APERTURE-GUEST-INIT-OK";
const DEFAULT_RUNS: usize = 5;

fn median(mut times: Vec<Duration>) -> Option<Duration> {
    times.sort();
    let mid = times.len() / 2;
    match times.len() {
        0 => None,
        n if n % 2 == 1 => Some(times[mid]),
        _ => Some((times[mid - 1] + times[mid]) / 2),
    }
}

const USAGE: &str = "usage: rig-bench [RUNS] [--cmdline STR]   (RUNS 1..=50, default 5)";

/// Runs and the guest command line, from the arguments.
fn parse_args() -> Option<(usize, Option<String>)> {
    let mut runs = DEFAULT_RUNS;
    let mut cmdline = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--cmdline" {
            cmdline = Some(args.next()?);
        } else {
            runs = arg.parse().ok().filter(|n| (1..=50).contains(n))?;
        }
    }
    Some((runs, cmdline))
}

fn main() -> ExitCode {
    let Some((runs, cmdline)) = parse_args() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let mut script =
        "/aperture run --kernel /guest/Image --initrd /guest/guest.cpio --cpus 1 --timeout 120"
            .to_string();
    if let Some(cmdline) = &cmdline {
        if cmdline.contains('\'') {
            eprintln!("rig-bench: --cmdline must not contain a single quote");
            return ExitCode::from(2);
        }
        script.push_str(&format!(" --cmdline '{cmdline}'"));
    }
    println!("each run: {script}");
    let cases: Vec<Case> =
        (1..=runs).map(|i| Case::new(format!("bench-{i}"), script.clone())).collect();
    let mut options = RigOptions::new(Duration::from_secs(120 + 150 * runs as u64));
    options.log_name = "bench-last-run.log".into();
    let run = match run_cases_with(&cases, &options) {
        Ok(run) => run,
        Err(error) => {
            eprintln!("rig-bench: {error}");
            return ExitCode::FAILURE;
        }
    };

    if let Some(ready) = run.l1_ready {
        println!(
            "L1 ready after {:.2} s: {}",
            ready.as_secs_f64(),
            run.l1_ready_line.as_deref().unwrap_or("")
        );
    }
    let mut times = Vec::new();
    for case in &run.cases {
        let status =
            case.exit_status.map_or_else(|| "unfinished".to_string(), |s| format!("status {s}"));
        match case.time_to(GUEST_MARKER) {
            Some(time) => {
                println!("{}: {:.2} s to {GUEST_MARKER} ({status})", case.name, time.as_secs_f64());
                times.push(time);
            }
            None => println!("{}: no {GUEST_MARKER} ({status})", case.name),
        }
    }
    match median(times.clone()) {
        Some(median) => println!(
            "median: {:.2} s over {} of {runs} runs; {}",
            median.as_secs_f64(),
            times.len(),
            run.summary()
        ),
        None => println!("median: no run reached {GUEST_MARKER}; {}", run.summary()),
    }
    if times.len() == runs {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
