//! One L1 boot that runs a list of cases.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::case::{Case, CaseOutput};
use crate::cases_script::cases_archive;
use crate::console_log::{split_cases, L1_DONE, L1_READY};
use crate::error::RigError;
use crate::newc::NewcWriter;
use crate::paths::RigPaths;
use crate::qemu::{self, TIMEOUT_STATUS};

/// L1's kernel command line: `loglevel=1` keeps L1's kernel messages out of case output.
const L1_CMDLINE: &str = "console=ttyAMA0 panic=-1 loglevel=1";

/// Tells concurrent runs in one process apart (their initrd files).
static RUN_COUNTER: AtomicU32 = AtomicU32::new(0);

/// How to boot the emulated host.
#[derive(Debug, Clone)]
pub struct RigOptions {
    /// QEMU is killed (by `timeout`) after this long.
    pub qemu_timeout: Duration,
    /// The QEMU binary (`$APERTURE_QEMU`, else `qemu-system-aarch64`).
    pub qemu: String,
    /// L1's vCPUs.
    pub cpus: u32,
    /// L1's memory in MiB.
    pub memory_mib: u32,
    /// L1's kernel command line.
    pub cmdline: String,
    /// More QEMU arguments (e.g. a passed-through NVMe device).
    pub extra_qemu_args: Vec<String>,
    /// Host files added to L1's initramfs: (path in L1 without a leading '/', host file),
    /// e.g. a guest kernel the cases boot. Their parent directories are created.
    pub extra_files: Vec<(String, PathBuf)>,
    /// QMP commands sent when L1's console prints their markers (QEMU then gets a QMP
    /// socket under `build/rig/`).
    pub monitor_actions: Vec<crate::MonitorAction>,
    /// File name of the console log under `build/rig/`.
    pub log_name: String,
    /// Where the build outputs are.
    pub paths: RigPaths,
}

impl RigOptions {
    /// The machine of docs/testing.md, logging to `build/rig/last-run.log`.
    pub fn new(qemu_timeout: Duration) -> Self {
        Self {
            qemu_timeout,
            qemu: std::env::var("APERTURE_QEMU").unwrap_or_else(|_| "qemu-system-aarch64".into()),
            cpus: 2,
            memory_mib: 2048,
            cmdline: L1_CMDLINE.to_string(),
            extra_qemu_args: Vec::new(),
            extra_files: Vec::new(),
            monitor_actions: Vec::new(),
            log_name: "last-run.log".to_string(),
            paths: RigPaths::from_workspace(),
        }
    }
}

/// The outcome of one L1 boot.
#[derive(Debug, Clone)]
pub struct RigRun {
    /// One output per requested case, in order.
    pub cases: Vec<CaseOutput>,
    /// The line L1's `/init` printed when ready (kernel, cpus, kvm, uptime).
    pub l1_ready_line: Option<String>,
    /// Host time from QEMU's start to L1's ready marker.
    pub l1_ready: Option<Duration>,
    /// L1 finished `/cases.sh` and powered off.
    pub l1_done: bool,
    /// Host time QEMU ran.
    pub total: Duration,
    /// QEMU's exit status through `timeout` (124: timed out).
    pub qemu_status: Option<i32>,
    /// `timeout` stopped QEMU.
    pub timed_out: bool,
    /// The saved console log.
    pub log_path: PathBuf,
}

impl RigRun {
    /// The output of the named case.
    pub fn case(&self, name: &str) -> Option<&CaseOutput> {
        self.cases.iter().find(|case| case.name == name)
    }

    /// The rig run held in `run` and its case `name`, for a test to assert on. Panics, as a
    /// failed assertion does, when the rig failed (`what` names that rig) or ran no such case.
    #[allow(clippy::panic)]
    pub fn expect_case<'a>(
        run: &'a Result<RigRun, String>,
        what: &str,
        name: &str,
    ) -> (&'a RigRun, &'a CaseOutput) {
        let run = match run {
            Ok(run) => run,
            Err(error) => panic!("the {what} rig failed: {error}"),
        };
        let Some(output) = run.case(name) else {
            panic!("no case named {name} in the rig run");
        };
        (run, output)
    }

    /// One line about the whole run, for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "rig: L1 ready after {}, QEMU ran {:.1} s, exit status {:?}{}{}; full log: {}",
            self.l1_ready
                .map(|d| format!("{:.1} s", d.as_secs_f64()))
                .unwrap_or_else(|| "never".into()),
            self.total.as_secs_f64(),
            self.qemu_status,
            if self.timed_out { ", timed out" } else { "" },
            if self.l1_done { "" } else { ", cases.sh did not finish" },
            self.log_path.display()
        )
    }
}

/// Boots L1 once with the default machine and runs `cases` in it.
pub fn run_cases(cases: &[Case], qemu_timeout: Duration) -> Result<RigRun, RigError> {
    run_cases_with(cases, &RigOptions::new(qemu_timeout))
}

/// Boots L1 once as `options` say and runs `cases` in it.
///
/// Cases that did not finish (QEMU timed out, L1 crashed) come back with
/// `exit_status: None`; only a boot that never reached L1's `/init` is an error.
pub fn run_cases_with(cases: &[Case], options: &RigOptions) -> Result<RigRun, RigError> {
    let paths = &options.paths;
    paths.check()?;
    let mut archive = cases_archive(cases)?;
    if !options.extra_files.is_empty() {
        archive.extend(files_archive(&options.extra_files)?);
    }
    let run_id = format!("{}-{}", std::process::id(), RUN_COUNTER.fetch_add(1, Ordering::Relaxed));
    let initrd = paths.rig_dir.join(format!("run-{run_id}.cpio"));
    write_initrd(&paths.l1_base, &archive, &initrd)?;

    let log_path = paths.rig_dir.join(&options.log_name);
    let log_file = File::create(&log_path).map_err(|source| RigError::Io {
        action: "create",
        path: log_path.clone(),
        source,
    })?;
    let mut log = BufWriter::new(log_file);
    let qmp = (!options.monitor_actions.is_empty())
        .then(|| paths.rig_dir.join(format!("run-{run_id}.qmp")));
    let result = qemu::run(options, &paths.kernel, &initrd, qmp.as_deref(), &mut log);
    let _ = log.flush();
    let _ = fs::remove_file(&initrd);
    if let Some(qmp) = &qmp {
        let _ = fs::remove_file(qmp);
    }
    let run = result?;

    let timed_out = run.status == Some(TIMEOUT_STATUS);
    let ready = run.lines.iter().find(|line| line.text.contains(L1_READY));
    let Some(ready) = ready else {
        return Err(RigError::L1NotReady {
            status: run.status,
            timed_out: if timed_out { ", timed out" } else { "" },
            stderr: run.stderr.trim().to_string(),
            log: log_path,
        });
    };
    let names: Vec<String> = cases.iter().map(|case| case.name.clone()).collect();
    Ok(RigRun {
        cases: split_cases(&run.lines, &names),
        l1_ready_line: Some(ready.text.clone()),
        l1_ready: Some(ready.at),
        l1_done: run.lines.iter().any(|line| line.text.contains(L1_DONE)),
        total: run.total,
        qemu_status: run.status,
        timed_out,
        log_path,
    })
}

/// A newc archive holding `files` (path in L1, host file) and their parent directories.
fn files_archive(files: &[(String, PathBuf)]) -> Result<Vec<u8>, RigError> {
    let mut writer = NewcWriter::new();
    let mut made = HashSet::new();
    for (path, host) in files {
        let path = path.trim_start_matches('/');
        let mut parent = String::new();
        for part in path.split('/').rev().skip(1).collect::<Vec<_>>().into_iter().rev() {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            if made.insert(parent.clone()) {
                writer.dir(&parent, 0o755);
            }
        }
        let data = fs::read(host).map_err(|source| RigError::Io {
            action: "read",
            path: host.clone(),
            source,
        })?;
        writer.file(path, 0o644, &data)?;
    }
    Ok(writer.finish())
}

/// Writes `l1-base.cpio` followed by the cases archive (Linux unpacks both).
fn write_initrd(base: &Path, archive: &[u8], initrd: &Path) -> Result<(), RigError> {
    fs::copy(base, initrd).map_err(|source| RigError::Io {
        action: "copy the base initramfs to",
        path: initrd.to_path_buf(),
        source,
    })?;
    let mut file = OpenOptions::new().append(true).open(initrd).map_err(|source| RigError::Io {
        action: "open",
        path: initrd.to_path_buf(),
        source,
    })?;
    file.write_all(archive).map_err(|source| RigError::Io {
        action: "append the cases to",
        path: initrd.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_artifacts_name_the_build_script() {
        let mut options = RigOptions::new(Duration::from_secs(5));
        options.paths = RigPaths::under(PathBuf::from("/nonexistent-aperture-root"));
        let error = run_cases_with(&[Case::new("a", "true")], &options).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("tests/rig/build-rig.sh"), "{message}");
        assert!(message.contains("/nonexistent-aperture-root/build/"), "{message}");
    }

    #[test]
    fn extra_files_come_with_their_directories() {
        let dir = std::env::temp_dir().join(format!("aperture-rig-files-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let host = dir.join("vmlinuz");
        fs::write(&host, b"kernel").unwrap();
        let files = [
            ("distro/boot/vmlinuz".to_string(), host.clone()),
            ("/distro/initrd.img".to_string(), host.clone()),
        ];
        let bytes = files_archive(&files).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        let order: Vec<usize> =
            ["distro\0", "distro/boot\0", "distro/boot/vmlinuz\0", "distro/initrd.img\0"]
                .iter()
                .map(|name| text.find(name).unwrap_or_else(|| panic!("{name} missing")))
                .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
        assert_eq!(text.matches("distro\0").count(), 1);
        let missing = [("x".to_string(), dir.join("absent"))];
        assert!(files_archive(&missing).unwrap_err().to_string().contains("absent"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
