//! `vmm-bench [RUNS]`: boots the bench guest under Aperture, and under kvmtool when
//! `APERTURE_PEER_KVMTOOL=/path/to/static/arm64/lkvm` is set, in one boot of the emulated
//! host, on each guest kernel of `APERTURE_BENCH_GUESTS` (default "6.1 6.12"), and prints side
//! by side, each the median of RUNS (default 5): boot-to-poweroff (with `quiet`, and again with
//! the kernel's whole log on the console unless `APERTURE_BENCH_VERBOSE=off`) and the VMM's
//! share of it, VMM exits per boot, peak RSS and RSS minus the guest RAM the guest touched, virtio-blk
//! direct reads at 1 MiB and 4 KiB (5 rounds in one boot, in the guest's `bench-read` check) and VMM
//! exits per MiB read.
//! `APERTURE_BENCH_BASELINE=/path/to/aperture` adds another (static arm64) Aperture build,
//! e.g. main's, to the same run as "aperture-base"; `APERTURE_BENCH_L1_BASE=/path/l1-base.cpio`
//! boots another L1 image. Binaries reach L1 on virtio disks of their own. kvmtool is never built
//! or shipped by this project: bring your own binary. Figures for notes, not pass/fail.
//! `APERTURE_BENCH_READS=off` runs the boots only. Needs the rig built (tests/rig/build-rig.sh).

// The figures on stdout are this tool's output.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aperture_e2e::vmm_bench::{
    boot_figures, case_script, median, read_figures, BenchRun, BootFigures, Guest, ReadFigures, Vmm,
};
use aperture_e2e::{run_cases_with, Case, RigOptions, RigRun};

const DEFAULT_RUNS: usize = 5;
/// Rounds of each read size in the guest's `bench-read` check (images/guest-init.sh).
const READ_ROUNDS: usize = 5;
const USAGE: &str =
    "usage: [APERTURE_PEER_KVMTOOL=lkvm] vmm-bench [RUNS]   (RUNS 1..=20, default 5)";

/// Copies a binary, padded to whole sectors, to a disk image L1 reads it from; returns the
/// image and the binary's length.
fn binary_disk(
    variable: &str,
    binary: &PathBuf,
    vmm: Vmm,
    rig_dir: &std::path::Path,
) -> Result<(PathBuf, u64), String> {
    let mut bytes =
        std::fs::read(binary).map_err(|e| format!("{variable}={}: {e}", binary.display()))?;
    let len = bytes.len() as u64;
    bytes.resize(bytes.len().div_ceil(512) * 512, 0);
    let image = rig_dir.join(format!("bench-{}.img", vmm.name()));
    std::fs::write(&image, &bytes).map_err(|e| format!("{}: {e}", image.display()))?;
    Ok((image, len))
}

/// Case names allow no dots: "aperture-612-boot-1", "kvmtool-61-verbose-2".
fn boot_case(vmm: Vmm, guest: Guest, run: BenchRun, i: usize) -> String {
    let kind = if run == BenchRun::VerboseBoot { "verbose" } else { "boot" };
    format!("{}-{}-{kind}-{i}", vmm.name(), guest.name().replace('.', ""))
}

fn read_case(vmm: Vmm, guest: Guest) -> String {
    format!("{}-{}-read", vmm.name(), guest.name().replace('.', ""))
}

fn boots(run: &RigRun, vmm: Vmm, guest: Guest, kind: BenchRun, runs: usize) -> Vec<BootFigures> {
    (1..=runs)
        .filter_map(|i| run.case(&boot_case(vmm, guest, kind, i)).and_then(boot_figures))
        .collect()
}

/// Per VMM, the median of `f` over its boots that `keep` (`None` where none is kept).
fn medians(
    per_vmm: &[Vec<BootFigures>],
    keep: &dyn Fn(&BootFigures) -> bool,
    f: &dyn Fn(&BootFigures) -> f64,
) -> Vec<Option<f64>> {
    per_vmm
        .iter()
        .map(|b| median(&b.iter().filter(|x| keep(x)).map(f).collect::<Vec<_>>()))
        .collect()
}

fn reads(run: &RigRun, vmm: Vmm, guest: Guest) -> Vec<ReadFigures> {
    run.case(&read_case(vmm, guest)).map(read_figures).unwrap_or_default()
}

/// The guests of `APERTURE_BENCH_GUESTS`.
fn guests() -> Result<Vec<Guest>, String> {
    let Ok(list) = std::env::var("APERTURE_BENCH_GUESTS") else { return Ok(Guest::ALL.to_vec()) };
    list.split_whitespace()
        .map(|name| {
            Guest::parse(name).ok_or_else(|| {
                format!("APERTURE_BENCH_GUESTS: no guest {name:?} (the rig has 6.1 and 6.12)")
            })
        })
        .collect()
}

/// One table row: a figure per VMM, and Aperture's ratio to the peer.
fn row(label: &str, values: &[Option<f64>], unit: &str, digits: usize) {
    let mut line = format!("{label:<34}");
    for value in values {
        match value {
            Some(v) => line.push_str(&format!("{:>14}", format!("{v:.digits$} {unit}"))),
            None => line.push_str(&format!("{:>14}", "-")),
        }
    }
    // Aperture against the last column (kvmtool when given).
    if let (Some(Some(ours)), Some(Some(peer))) = (values.first(), values.last()) {
        if values.len() > 1 && *peer != 0.0 {
            line.push_str(&format!("   ({:.2}x)", ours / peer));
        }
    }
    println!("{line}");
}

fn main() -> ExitCode {
    let runs = match std::env::args().nth(1) {
        None => DEFAULT_RUNS,
        Some(arg) => match arg.parse().ok().filter(|n| (1..=20).contains(n)) {
            Some(n) => n,
            None => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        },
    };
    let mut options = RigOptions::new(Duration::from_secs(600));
    options.log_name = "vmm-bench-last-run.log".into();
    if let Some(base) = std::env::var_os("APERTURE_BENCH_L1_BASE") {
        options.paths.l1_base = PathBuf::from(base);
    }
    let mut vmms = vec![Vmm::Aperture];
    let mut binaries = Vec::new();
    for (variable, vmm) in [
        ("APERTURE_BENCH_BASELINE", Vmm::ApertureBaseline),
        ("APERTURE_PEER_KVMTOOL", Vmm::Kvmtool),
    ] {
        let Some(path) = std::env::var_os(variable) else { continue };
        match binary_disk(variable, &PathBuf::from(path), vmm, &options.paths.rig_dir) {
            Ok((image, len)) => {
                let id = vmm.name();
                options.extra_qemu_args.extend([
                    "-drive".into(),
                    format!("file={},format=raw,if=none,id={id},readonly=on", image.display()),
                    "-device".into(),
                    format!("virtio-blk-pci,drive={id},serial={id}"),
                ]);
                binaries.push((vmm, len));
                vmms.push(vmm);
            }
            Err(error) => {
                eprintln!("vmm-bench: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    let guests = match guests() {
        Ok(guests) if !guests.is_empty() => guests,
        Ok(_) => Guest::ALL.to_vec(),
        Err(error) => {
            eprintln!("vmm-bench: {error}");
            return ExitCode::from(2);
        }
    };
    // Boots interleaved (a drift in the emulated host hits every VMM alike), reads last.
    // APERTURE_BENCH_VERBOSE=off: no boots with the kernel's log on the console.
    let verbose = std::env::var("APERTURE_BENCH_VERBOSE").map_or(true, |v| v != "off");
    let kinds: &[BenchRun] =
        if verbose { &[BenchRun::Boot, BenchRun::VerboseBoot] } else { &[BenchRun::Boot] };
    let mut cases = Vec::new();
    for i in 1..=runs {
        for &guest in &guests {
            for &kind in kinds {
                for &vmm in &vmms {
                    let script = case_script(vmm, guest, kind, &binaries);
                    cases.push(Case::new(boot_case(vmm, guest, kind, i), script));
                }
            }
        }
    }
    // APERTURE_BENCH_READS=off: boots only (a quicker run for boot work).
    let with_reads = std::env::var("APERTURE_BENCH_READS").map_or(true, |v| v != "off");
    for &guest in guests.iter().filter(|_| with_reads) {
        for &vmm in &vmms {
            let script = case_script(vmm, guest, BenchRun::Read, &binaries);
            cases.push(
                Case::new(read_case(vmm, guest), script).with_limit(Duration::from_secs(600)),
            );
        }
    }
    options.qemu_timeout = Duration::from_secs(300 + 120 * cases.len() as u64);
    let run = match run_cases_with(&cases, &options) {
        Ok(run) => run,
        Err(error) => {
            eprintln!("vmm-bench: {error}");
            return ExitCode::FAILURE;
        }
    };

    let header: String = vmms.iter().map(|v| format!("{:>14}", v.name())).collect();
    let mut complete = true;
    for &guest in &guests {
        println!();
        println!("{:<34}{header}", format!("guest {} (L1 clock; median of {runs})", guest.name()));
        let boot: Vec<Vec<BootFigures>> =
            vmms.iter().map(|&v| boots(&run, v, guest, BenchRun::Boot, runs)).collect();
        let every = |_: &BootFigures| true;
        row("boot-to-poweroff", &medians(&boot, &every, &|b| b.wall * 1000.0), "ms", 0);
        if verbose {
            let verbose_boot: Vec<Vec<BootFigures>> =
                vmms.iter().map(|&v| boots(&run, v, guest, BenchRun::VerboseBoot, runs)).collect();
            let walls = medians(&verbose_boot, &every, &|b| b.wall * 1000.0);
            row("  with the kernel log on the console", &walls, "ms", 0);
        }
        let overhead = medians(&boot, &every, &|b| b.vmm_overhead() * 1000.0);
        row("VMM overhead (wall - guest uptime)", &overhead, "ms", 0);
        // A sample lost to the guest's power-off reads 0, and so does a guest RAM sample lost
        // when the VMM exited mid-read: those runs are left out of their rows.
        let exits = medians(&boot, &|x| x.vmm_exits > 0.0, &|x| x.vmm_exits);
        row("VMM exits per boot", &exits, "", 0);
        let all = medians(&boot, &|x| x.all_exits > 0.0, &|x| x.all_exits);
        row("  all exits to KVM per boot", &all, "", 0);
        row("peak RSS (boot)", &medians(&boot, &every, &|b| b.peak_rss_kib / 1024.0), "MiB", 1);
        let sampled = |x: &BootFigures| x.guest_rss_kib > 0.0;
        let own = medians(&boot, &sampled, &|x| x.vmm_rss_kib() / 1024.0);
        row("RSS minus touched guest RAM", &own, "MiB", 1);
        let file = medians(&boot, &sampled, &|x| x.file_rss_kib / 1024.0);
        row("  of it, mapped from files (binary)", &file, "MiB", 1);
        let read: Vec<Vec<ReadFigures>> = vmms.iter().map(|&v| reads(&run, v, guest)).collect();
        for block in ["1M", "4K"] {
            let find = |f: &dyn Fn(&ReadFigures) -> f64| -> Vec<Option<f64>> {
                read.iter()
                    .map(|r| {
                        median(&r.iter().filter(|x| x.block == block).map(f).collect::<Vec<_>>())
                    })
                    .collect()
            };
            row(&format!("virtio-blk read bs={block}"), &find(&|r| r.speed()), "MiB/s", 1);
            row(
                &format!("  VMM exits per MiB (bs={block})"),
                &find(&|r| r.vmm_exits_per_mib()),
                "",
                1,
            );
            row(
                &format!("  all KVM exits per MiB (bs={block})"),
                &find(&|r| r.all_exits / r.mib),
                "",
                1,
            );
        }
        complete &= boot.iter().all(|b| b.len() == runs)
            && (!with_reads || read.iter().all(|r| r.len() == READ_ROUNDS * 2));
    }
    println!("{}", run.summary());
    if complete {
        ExitCode::SUCCESS
    } else {
        for case in &run.cases {
            if boot_figures(case).is_none() && read_figures(case).is_empty() {
                println!("{}", case.describe());
            }
        }
        ExitCode::FAILURE
    }
}
