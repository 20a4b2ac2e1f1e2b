//! `aperture`: boot an arm64 Linux guest on KVM or Hypervisor.framework, with a physical PCI
//! device (an eGPU) assigned to it.

use std::process::ExitCode;

use clap::Parser;
use log::{error, info};

use vmm::cli::{Cli, Command};
use vmm::config::VmConfig;
use vmm::control::{exit_status, StopReason};
use vmm::{console, signals, vm};

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();
}

/// Prints the one-line reason Aperture stopped with (or logs an ordinary end) and returns the
/// exit status.
fn report(reason: &StopReason) -> i32 {
    match (vmm::report::stop_line(reason), reason) {
        // The user's one line: not a log record, so it shows at every log level.
        (Some(line), _) => eprintln!("{line}"),
        (None, StopReason::TestExit(code)) => info!("the guest asked to exit with status {code}"),
        (None, StopReason::ConsoleQuit) => info!("quit from the console"),
        (None, _) => info!("the guest powered off"),
    }
    reason.exit_status()
}

fn run() -> i32 {
    signals::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let status = if e.use_stderr() { exit_status::VMM_ERROR } else { 0 };
            let _ = e.print();
            return status;
        }
    };
    init_logging(cli.verbose);
    if let Err(e) = signals::install() {
        error!("could not install signal handlers: {e}");
    }
    match cli.command {
        Command::Man(args) => vmm::docs::run_man(&args),
        Command::Completions(args) => vmm::docs::run_completions(&args),
        Command::Check(args) => vmm::check::run(&args),
        Command::Devices(args) => vmm::devices_list::run(&args),
        Command::Run(args) => {
            // The typed errors end here, as the one line the user reads.
            let reason = match VmConfig::from_run_args(&args) {
                Ok(config) => vm::run(&config).unwrap_or_else(|e| StopReason::Error(e.to_string())),
                Err(e) => StopReason::Error(e.to_string()),
            };
            report(&reason)
        }
    }
}

/// Peak resident memory of this process, for the exit log line (Linux only).
/// getrusage, not /proc/self/status: the seccomp sandbox lets the exiting main thread open
/// no file. `ru_maxrss` is the same high-water mark as VmHWM, in KiB on Linux.
fn peak_rss_kib() -> Option<u64> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    // SAFETY: rusage is plain data that getrusage fills.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    u64::try_from(usage.ru_maxrss).ok()
}

fn main() -> ExitCode {
    let status = run();
    if let Some(kib) = peak_rss_kib() {
        info!("peak RSS {} KiB, exit status {status}", kib);
    }
    console::restore_terminal();
    ExitCode::from(u8::try_from(status).unwrap_or(1))
}
