//! `rig-bench [RUNS] [--cmdline STR] [--nvme]`: boots the nested test guest RUNS times
//! (default 5, 1 vCPU) in one boot of the emulated arm64 host and prints, per run, the host
//! wall time from the case's begin marker to the guest's `APERTURE-GUEST-INIT-OK`, and the
//! median. `--cmdline` replaces aperture's default guest command line (e.g. add `quiet`:
//! console output is most of a nested boot). `--nvme` also times a 64 MiB direct read of an
//! emulated NVMe, in L1 and in a nested guest it is passed through to. Figures for notes,
//! not a pass/fail test.
//! Needs the rig built (tests/rig/build-rig.sh).

// The figures on stdout are this tool's output.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;
use std::time::Duration;

use aperture_e2e::{
    bench_seconds, nvme_bench_script, run_cases_with, Case, CaseOutput, NvmeDisks, RigOptions,
};

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

const USAGE: &str = "usage: rig-bench [RUNS] [--cmdline STR] [--nvme]   (RUNS 1..=50, default 5)";
/// The case of `--nvme`.
const NVME_CASE: &str = "nvme-bench";

/// Runs, the guest command line and `--nvme`, from the arguments.
fn parse_args() -> Option<(usize, Option<String>, bool)> {
    let mut runs = DEFAULT_RUNS;
    let mut cmdline = None;
    let mut nvme = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--cmdline" {
            cmdline = Some(args.next()?);
        } else if arg == "--nvme" {
            nvme = true;
        } else {
            runs = arg.parse().ok().filter(|n| (1..=50).contains(n))?;
        }
    }
    Some((runs, cmdline, nvme))
}

/// "0.21 s, 305 MiB/s" from the benchmark line with `needle`.
fn read_figure(case: &CaseOutput, needle: &str) -> String {
    match case.line_with(needle).and_then(bench_seconds) {
        Some(s) => format!("{s:.2} s, {:.0} MiB/s", 64.0 / s.max(0.01)),
        None => format!(
            "no figure (case {})",
            case.exit_status.map_or("unfinished".into(), |s| format!("status {s}"))
        ),
    }
}

fn main() -> ExitCode {
    let Some((runs, cmdline, nvme)) = parse_args() else {
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
    let mut cases: Vec<Case> =
        (1..=runs).map(|i| Case::new(format!("bench-{i}"), script.clone())).collect();
    let mut options = RigOptions::new(Duration::from_secs(120 + 150 * (runs as u64 + 1)));
    options.log_name = "bench-last-run.log".into();
    // Kept until the run ends: QEMU reads the images.
    let disks = if nvme {
        match NvmeDisks::create(&options.paths.rig_dir) {
            Ok(disks) => Some(disks),
            Err(error) => {
                eprintln!("rig-bench: {error}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    if let Some(disks) = &disks {
        options.extra_qemu_args = disks.qemu_args();
        cases.push(Case::new(NVME_CASE, nvme_bench_script()));
    }
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
    if let Some(case) = run.case(NVME_CASE) {
        println!(
            "NVMe 64 MiB direct read: L1 {}; nested guest (passthrough) {}",
            read_figure(case, "l1: host-bench:"),
            read_figure(case, "CHECK nvmebench:")
        );
    }
    for case in run.cases.iter().filter(|case| case.name != NVME_CASE) {
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
