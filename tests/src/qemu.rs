//! Running QEMU as the emulated arm64 KVM host and reading its console.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::console_log::{clean_line, TimedLine};
use crate::error::RigError;
use crate::rig::RigOptions;

/// Exit status of `timeout` when it stopped QEMU.
pub(crate) const TIMEOUT_STATUS: i32 = 124;
/// Grace time between `timeout`'s SIGTERM and its SIGKILL.
const KILL_AFTER_SECS: u64 = 10;

/// What one QEMU run printed and how it ended.
#[derive(Debug)]
pub(crate) struct QemuRun {
    pub lines: Vec<TimedLine>,
    pub status: Option<i32>,
    pub stderr: String,
    pub total: Duration,
}

/// The emulated host's CPU model (`APERTURE_RIG_CPU` overrides it). A Neoverse-N1 (Armv8.2
/// with VHE) is all KVM needs; it spares the emulation of newer features (FEAT_WFxT, FEAT_ECV,
/// ...) that `max` passes on to the nested guest and that nothing here tests.
pub const DEFAULT_CPU: &str = "neoverse-n1";

/// `timeout ... qemu-system-aarch64 ...` for L1, as docs/testing.md describes the machine.
pub(crate) fn command_line(
    options: &RigOptions,
    kernel: &Path,
    initrd: &Path,
    qmp: Option<&Path>,
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        format!("--kill-after={KILL_AFTER_SECS}").into(),
        options.qemu_timeout.as_secs().max(1).to_string().into(),
        options.qemu.clone().into(),
    ];
    let cpu = std::env::var("APERTURE_RIG_CPU").unwrap_or_else(|_| DEFAULT_CPU.to_string());
    args.extend(["-cpu".into(), cpu.into()]);
    let fixed = [
        "-M",
        "virt,virtualization=on,gic-version=3,iommu=smmuv3",
        "-accel",
        "tcg,thread=multi",
        "-nographic",
        "-no-reboot",
        "-nic",
        "none",
    ];
    args.extend(fixed.iter().map(OsString::from));
    args.push("-smp".into());
    args.push(options.cpus.to_string().into());
    args.push("-m".into());
    args.push(options.memory_mib.to_string().into());
    args.push("-kernel".into());
    args.push(kernel.into());
    args.push("-initrd".into());
    args.push(initrd.into());
    args.push("-append".into());
    args.push(options.cmdline.clone().into());
    args.extend(options.extra_qemu_args.iter().map(OsString::from));
    if let Some(socket) = qmp {
        args.push("-qmp".into());
        args.push(format!("unix:{},server=on,wait=off", socket.display()).into());
    }
    args
}

/// Runs QEMU under `timeout`, copying each console line to `log` with its host time.
pub(crate) fn run(
    options: &RigOptions,
    kernel: &Path,
    initrd: &Path,
    qmp: Option<&Path>,
    log: &mut dyn Write,
) -> Result<QemuRun, RigError> {
    let args = command_line(options, kernel, initrd, qmp);
    let mut pending: Vec<&crate::MonitorAction> = options.monitor_actions.iter().collect();
    let shown: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    log::info!("starting: timeout {}", shown.join(" "));
    // The log is for people debugging: failing to write it must not fail the run.
    let _ = writeln!(log, "# timeout {}", shown.join(" "));

    let start = Instant::now();
    let mut child = Command::new("timeout")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| RigError::Spawn {
            program: format!("timeout {}", options.qemu),
            source,
        })?;

    let stderr_reader = child.stderr.take().map(|mut stderr| {
        thread::spawn(move || {
            let mut text = Vec::new();
            let _ = stderr.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    });

    let mut lines = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let mut reader = BufReader::new(stdout);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) => break,
                Ok(_) => {
                    let line = TimedLine { at: start.elapsed(), text: clean_line(&raw) };
                    let _ = writeln!(log, "{:9.3} {}", line.at.as_secs_f64(), line.text);
                    let _ = log.flush();
                    if let Some(socket) = qmp {
                        run_actions(socket, &mut pending, &line, start, log);
                    }
                    lines.push(line);
                }
                Err(error) => {
                    log::warn!("reading QEMU's console failed: {error}");
                    break;
                }
            }
        }
    }

    let status = child
        .wait()
        .map_err(|source| RigError::Spawn {
            program: format!("timeout {} (wait)", options.qemu),
            source,
        })?
        .code();
    let stderr = stderr_reader.and_then(|handle| handle.join().ok()).unwrap_or_default();
    let total = start.elapsed();
    let _ = writeln!(
        log,
        "# QEMU exit status {status:?} after {:.3} s{}",
        total.as_secs_f64(),
        if status == Some(TIMEOUT_STATUS) { " (killed by timeout)" } else { "" }
    );
    if !stderr.is_empty() {
        let _ = writeln!(log, "# QEMU stderr:\n{stderr}");
    }
    Ok(QemuRun { lines, status, stderr, total })
}

/// Sends the QMP commands whose markers `line` shows (each once), logging the answers.
fn run_actions(
    socket: &Path,
    pending: &mut Vec<&crate::MonitorAction>,
    line: &TimedLine,
    start: Instant,
    log: &mut dyn Write,
) {
    let (due, rest): (Vec<_>, Vec<_>) =
        pending.drain(..).partition(|action| line.text.contains(&action.marker));
    *pending = rest;
    for action in due {
        let answer = crate::monitor::send(socket, &action.command)
            .unwrap_or_else(|error| format!("QMP failed: {error}"));
        let at = start.elapsed().as_secs_f64();
        let _ = writeln!(log, "{at:9.3} # qmp {} -> {answer}", action.command);
        log::info!("qmp {} -> {answer}", action.command);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_has_rig_machine_and_timeout() {
        let options = RigOptions::new(Duration::from_secs(300));
        let qmp = Some(Path::new("/r/run.qmp"));
        let args: Vec<String> =
            command_line(&options, Path::new("/k/Image"), Path::new("/i.cpio"), qmp)
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
        assert_eq!(args[0], "--kill-after=10");
        assert_eq!(args[1], "300");
        assert!(args.iter().any(|a| a == "virt,virtualization=on,gic-version=3,iommu=smmuv3"));
        let append = args.iter().position(|a| a == "-append").unwrap();
        assert!(args[append + 1].starts_with("console=ttyAMA0 panic=-1"));
        assert!(args.windows(2).any(|w| w[0] == "-kernel" && w[1] == "/k/Image"));
        assert!(args.windows(2).any(|w| w[0] == "-nic" && w[1] == "none"));
        assert!(args
            .windows(2)
            .any(|w| w[0] == "-qmp" && w[1] == "unix:/r/run.qmp,server=on,wait=off"));
    }
}
