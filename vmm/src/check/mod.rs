//! `aperture check`: every host prerequisite as a line `OK|WARN|FAIL  <what>: <detail>`, with
//! the exact fix under each WARN and FAIL.
//!
//! The checks are pure functions over what the host reports (a root directory for sysfs,
//! procfs and /dev, and probes for what only ioctls tell), so they are tested against fake
//! trees; the platform modules gather the real values.

// The checks are portable code over what the probes in `sys` found; macOS's are unit-tested
// on any host.
#[cfg(target_os = "linux")]
pub mod device;
#[cfg(test)]
#[cfg(target_os = "linux")]
pub(crate) mod fake;
// Pure logic, unit-tested on any host.
#[cfg(any(test, target_os = "linux"))]
pub mod kernel;
#[cfg(target_os = "linux")]
pub mod linux;
#[cfg(any(test, all(target_os = "macos", target_arch = "aarch64")))]
pub mod macos;
mod sys;

use std::fmt;

use arch::layout::{MemoryLayout, MIB, MIN_IPA_BITS, PREFERRED_IPA_BITS};
use passthrough::{PciAddress, PciAddressError};

use crate::cli::CheckArgs;
use crate::config::{parse_size, ConfigError, MIN_MEMORY_MIB};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Ok,
    /// Works, with a caveat.
    Warn,
    /// Aperture cannot do what was asked until this is fixed.
    Fail,
}

impl Status {
    /// The label that starts the line.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One checked prerequisite.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The outcome.
    pub status: Status,
    /// What was checked ("/dev/kvm", "0000:01:00.0 driver").
    pub what: String,
    /// What was found.
    pub detail: String,
    /// For WARN and FAIL: the command or step that fixes it (may span lines).
    pub fix: Option<String>,
}

impl Finding {
    /// A passed check.
    pub fn ok(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { status: Status::Ok, what: what.into(), detail: detail.into(), fix: None }
    }

    /// A check that passed with a caveat.
    pub fn warn(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Warn,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failed check.
    pub fn fail(
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Fail,
            what: what.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure when `required`, else a warning (e.g. no IOMMU matters only for --device).
    pub fn fail_if(
        required: bool,
        what: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        let status = if required { Status::Fail } else { Status::Warn };
        Self { status, what: what.into(), detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// Width of the status column: the longest label and two spaces.
const LABEL_WIDTH: usize = 6;

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:<LABEL_WIDTH$}{}: {}", self.status.label(), self.what, self.detail)?;
        if let Some(fix) = &self.fix {
            // Continuation lines of a multi-line fix line up under its first line.
            let mut lines = fix.lines().map(str::trim);
            write!(f, "\n{:LABEL_WIDTH$}fix: {}", "", lines.next().unwrap_or(""))?;
            for line in lines {
                write!(f, "\n{:width$}{line}", "", width = LABEL_WIDTH + 5)?;
            }
        }
        Ok(())
    }
}

/// The report: each finding, then a summary line.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for finding in findings {
        out.push_str(&finding.to_string());
        out.push('\n');
    }
    let count = |status| findings.iter().filter(|f| f.status == status).count();
    let (ok, warn, fail) = (count(Status::Ok), count(Status::Warn), count(Status::Fail));
    let verdict = if fail > 0 {
        "Aperture cannot run as asked until the FAIL lines are fixed"
    } else {
        "this host is ready"
    };
    out.push_str(&format!("{ok} OK, {warn} WARN, {fail} FAIL: {verdict}\n"));
    out
}

/// 1 when anything failed, else 0.
pub fn exit_status(findings: &[Finding]) -> i32 {
    i32::from(findings.iter().any(|f| f.status == Status::Fail))
}

/// Bad `aperture check` arguments.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CheckError {
    /// A malformed `--device`.
    #[error("--device {0}: {1}")]
    Device(String, PciAddressError),
    /// A malformed `--memory`.
    #[error(transparent)]
    Memory(ConfigError),
}

/// What to check for, from `aperture check`'s arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOptions {
    /// Devices to be assigned.
    pub devices: Vec<PciAddress>,
    /// Guest RAM, rounded as `aperture run` rounds it.
    pub memory_bytes: u64,
}

impl CheckOptions {
    /// Validates the arguments.
    pub fn from_args(args: &CheckArgs) -> Result<Self, CheckError> {
        let memory = parse_size(&args.memory)
            .ok_or_else(|| CheckError::Memory(ConfigError::MemorySyntax(args.memory.clone())))?;
        if memory < MIN_MEMORY_MIB * MIB {
            return Err(CheckError::Memory(ConfigError::MemoryTooSmall(args.memory.clone())));
        }
        let mut devices = Vec::new();
        for text in &args.devices {
            let address = text.parse().map_err(|e| CheckError::Device(text.clone(), e))?;
            if !devices.contains(&address) {
                devices.push(address);
            }
        }
        Ok(Self { devices, memory_bytes: memory.div_ceil(2 * MIB) * 2 * MIB })
    }
}

/// The guest physical address size the host offers, for `memory_bytes` of RAM (both backends
/// run VMs with at most [`PREFERRED_IPA_BITS`]).
pub fn ipa_finding(what: &str, max_bits: u32, memory_bytes: u64) -> Finding {
    if max_bits < MIN_IPA_BITS {
        return Finding::fail(
            what,
            format!("{max_bits} bits; Aperture needs at least {MIN_IPA_BITS}"),
            "run on a host whose CPU offers a larger guest physical address space",
        );
    }
    let bits = max_bits.min(PREFERRED_IPA_BITS);
    if let Err(e) = MemoryLayout::new(memory_bytes, 1, bits) {
        return Finding::fail(what, format!("{max_bits} bits: {e}"), "use a smaller --memory");
    }
    let window = 1u64 << (bits - 1 - 30);
    if bits < PREFERRED_IPA_BITS {
        return Finding::warn(
            what,
            format!(
                "{max_bits} bits: the guest's 64-bit PCI window is only {window} GiB, so a GPU \
                 with large BARs may not fit"
            ),
            format!(
                "nothing to do for devices with small BARs; for large ones use a host with a \
                 {PREFERRED_IPA_BITS}-bit (or larger) guest physical address space"
            ),
        );
    }
    Finding::ok(what, format!("{max_bits} bits (VMs use {bits}: a {window} GiB 64-bit PCI window)"))
}

/// Runs every check for this host and prints the report; returns the exit status.
// A report for people: it goes to stdout.
#[allow(clippy::print_stdout)]
pub fn run(args: &CheckArgs) -> i32 {
    let options = match CheckOptions::from_args(args) {
        Ok(options) => options,
        Err(e) => {
            eprintln!("aperture: error: {e}");
            return 1;
        }
    };
    let findings = host_findings(&options);
    print!("{}", render(&findings));
    exit_status(&findings)
}

#[cfg(target_os = "linux")]
fn host_findings(options: &CheckOptions) -> Vec<Finding> {
    linux::check_host(&linux::RealHost::default(), options)
}

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
fn host_findings(options: &CheckOptions) -> Vec<Finding> {
    sys::macos::check_host(options)
}

#[cfg(not(any(target_os = "linux", all(target_os = "macos", target_arch = "aarch64"))))]
fn host_findings(_options: &CheckOptions) -> Vec<Finding> {
    vec![Finding::fail(
        "hypervisor",
        format!("Aperture has no backend for {}", std::env::consts::OS),
        "run Aperture on an arm64 Linux host (KVM) or an Apple Silicon Mac",
    )]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(devices: &[&str], memory: &str) -> CheckArgs {
        CheckArgs {
            devices: devices.iter().map(|d| d.to_string()).collect(),
            memory: memory.into(),
        }
    }

    #[test]
    fn lines_have_the_status_what_detail_and_fix() {
        let ok = Finding::ok("/dev/kvm", "present and usable");
        assert_eq!(ok.to_string(), "OK    /dev/kvm: present and usable");
        let fail =
            Finding::fail("0000:01:00.0 driver", "bound to nvme", "  modprobe vfio-pci\n  echo x");
        assert_eq!(
            fail.to_string(),
            "FAIL  0000:01:00.0 driver: bound to nvme\n      fix: modprobe vfio-pci\n           echo x"
        );
        let warn = Finding::warn("IOMMU", "none", "enable it");
        assert_eq!(warn.to_string(), "WARN  IOMMU: none\n      fix: enable it");
        assert_eq!(Finding::fail_if(false, "a", "b", "c").status, Status::Warn);
        assert_eq!(Finding::fail_if(true, "a", "b", "c").status, Status::Fail);
    }

    #[test]
    fn exit_status_is_one_only_when_something_failed() {
        let ok = Finding::ok("a", "b");
        let warn = Finding::warn("a", "b", "c");
        let fail = Finding::fail("a", "b", "c");
        assert_eq!(exit_status(&[ok.clone(), warn.clone()]), 0);
        assert_eq!(exit_status(&[ok.clone(), fail.clone(), warn.clone()]), 1);
        let text = render(&[ok, warn, fail]);
        assert!(text.ends_with("1 OK, 1 WARN, 1 FAIL: Aperture cannot run as asked until the FAIL lines are fixed\n"), "{text}");
        assert!(render(&[]).ends_with("this host is ready\n"));
    }

    #[test]
    fn options_parse_devices_and_memory() {
        let options =
            CheckOptions::from_args(&args(&["01:00.0", "0000:01:00.0"], "3M")).unwrap_err();
        assert!(options.to_string().contains("--memory 3M: too small"), "{options}");
        let options = CheckOptions::from_args(&args(&["01:00.0", "0000:01:00.0"], "1G")).unwrap();
        assert_eq!(options.devices, vec!["0000:01:00.0".parse().unwrap()]);
        assert_eq!(options.memory_bytes, 1 << 30);
        assert_eq!(CheckOptions::from_args(&args(&[], "511")).unwrap().memory_bytes, 512 * MIB);
        let err = CheckOptions::from_args(&args(&["01:00"], "512M")).unwrap_err();
        assert!(
            err.to_string().starts_with("--device 01:00: ") && err.to_string().contains("lspci -D")
        );
        let err = CheckOptions::from_args(&args(&[], "lots")).unwrap_err();
        assert!(err.to_string().contains("--memory lots"), "{err}");
    }

    #[test]
    fn ipa_sizes() {
        let f = ipa_finding("KVM IPA size", 48, 512 * MIB);
        assert_eq!(f.status, Status::Ok, "{f}");
        assert!(f.detail.contains("48 bits (VMs use 40: a 512 GiB"), "{f}");
        let f = ipa_finding("KVM IPA size", 36, 512 * MIB);
        assert_eq!(f.status, Status::Warn, "{f}");
        assert!(f.detail.contains("only 32 GiB"), "{f}");
        let f = ipa_finding("KVM IPA size", 32, 512 * MIB);
        assert_eq!(f.status, Status::Fail, "{f}");
        let f = ipa_finding("KVM IPA size", 36, 40 << 30);
        assert_eq!(f.status, Status::Fail, "{f}");
        assert!(f.detail.contains("use at most"), "{f}");
    }
}
