//! `rig-run SCRIPT...`: boots the emulated arm64 host once, runs each SCRIPT in it as a
//! case (`sh` inside L1, e.g. `/aperture run --kernel /guest/Image -v`), and prints each
//! case's output and exit status. For trying things by hand; the console log is
//! `build/rig/rig-run.log`. Needs the rig built (tests/rig/build-rig.sh).
//! `APERTURE_RIG_QEMU_ARGS` adds QEMU arguments (e.g. an NVMe behind a root port);
//! `APERTURE_RIG_CASE_LIMIT` (seconds) is each case's watchdog inside L1.

// The case outputs on stdout are this tool's output.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Duration;

use aperture_e2e::{run_cases_with, Case, RigOptions};

/// QEMU's limit unless `APERTURE_RIG_TIMEOUT` (seconds) says otherwise.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let scripts: Vec<String> = std::env::args().skip(1).collect();
    if scripts.is_empty() || scripts.iter().any(|s| s == "-h" || s == "--help") {
        eprintln!("usage: rig-run SCRIPT...   (each SCRIPT runs in the emulated arm64 host)");
        return ExitCode::from(2);
    }
    let case_limit = std::env::var("APERTURE_RIG_CASE_LIMIT")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map(Duration::from_secs);
    let cases: Vec<Case> = scripts
        .iter()
        .enumerate()
        .map(|(i, script)| {
            let case = Case::new(format!("case-{}", i + 1), script.clone());
            match case_limit {
                Some(limit) => case.with_limit(limit),
                None => case,
            }
        })
        .collect();
    let limit = std::env::var("APERTURE_RIG_TIMEOUT")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let mut options = RigOptions::new(limit);
    options.log_name = "rig-run.log".into();
    // e.g. APERTURE_RIG_QEMU_ARGS='-device pcie-root-port,id=rp1 -device nvme,...,bus=rp1'
    if let Ok(extra) = std::env::var("APERTURE_RIG_QEMU_ARGS") {
        options.extra_qemu_args = extra.split_whitespace().map(String::from).collect();
    }
    let run = match run_cases_with(&cases, &options) {
        Ok(run) => run,
        Err(error) => {
            eprintln!("rig-run: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut all_ok = true;
    for (case, script) in run.cases.iter().zip(&scripts) {
        println!("$ {script}");
        println!("{}", case.describe());
        if let Some(duration) = case.duration {
            println!("({:.2} s)", duration.as_secs_f64());
        }
        all_ok &= case.exit_status == Some(0);
    }
    println!("{}", run.summary());
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
