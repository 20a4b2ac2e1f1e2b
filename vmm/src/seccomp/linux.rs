//! Building and installing the filters with seccompiler.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use log::debug;
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

use super::allowlist::{allowlist, clone3_errno, OPEN_CALLS, OPEN_ERRNO};
use super::{sigsys, SeccompError, ThreadKind};

/// The architecture the filters check for (a call made through another ABI is refused).
#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// A filter answering `calls` with `errno` and leaving every other call to the others.
fn errno_filter(
    calls: &[libc::c_long],
    errno: i32,
) -> Result<SeccompFilter, seccompiler::BackendError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> = calls.iter().map(|&nr| (nr, Vec::new())).collect();
    SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno as u32), ARCH)
}

/// The BPF programs that confine a thread of `kind` in process `pid`, in install order: the
/// errno answers (clone3; opening files, except on the re-plug thread), then the allowlist (anything else traps). The kernel runs all of a
/// thread's filters and takes the strictest answer, so the order does not matter.
pub(super) fn programs(kind: ThreadKind, pid: u32) -> Result<Vec<BpfProgram>, SeccompError> {
    let build =
        |e: seccompiler::BackendError| SeccompError::Build { kind: kind.name(), source: e.into() };
    let allowed = allowlist(kind, pid).map_err(build)?;
    let mut filters = vec![errno_filter(&[libc::SYS_clone3], clone3_errno(kind)).map_err(build)?];
    // The re-plug thread opens the device files for real.
    if kind != ThreadKind::Replug {
        filters.push(errno_filter(OPEN_CALLS, OPEN_ERRNO).map_err(build)?);
    }
    filters.push(
        SeccompFilter::new(allowed.into_rules(), SeccompAction::Trap, SeccompAction::Allow, ARCH)
            .map_err(build)?,
    );
    filters.into_iter().map(|filter| BpfProgram::try_from(filter).map_err(build)).collect()
}

/// The programs of `kind` for this process, built once: every vCPU and device worker thread
/// installs the same ones, and [`prepare`] can build them ahead, off the boot path.
fn cached_programs(kind: ThreadKind) -> Result<&'static [BpfProgram], SeccompError> {
    static CACHE: [OnceLock<Vec<BpfProgram>>; 6] = [
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
        OnceLock::new(),
    ];
    let slot = &CACHE[match kind {
        ThreadKind::Vcpu => 0,
        ThreadKind::DeviceWorker => 1,
        ThreadKind::Stdin => 2,
        ThreadKind::Control => 3,
        ThreadKind::VhostNet => 4,
        ThreadKind::Replug => 5,
    }];
    if let Some(programs) = slot.get() {
        return Ok(programs);
    }
    let built = programs(kind, std::process::id())?;
    Ok(slot.get_or_init(|| built))
}

/// See [`super::prepare`].
pub(super) fn prepare(kind: ThreadKind) -> Result<(), SeccompError> {
    cached_programs(kind).map(|_| ())
}

/// See [`super::confine`].
pub(super) fn confine(kind: ThreadKind) -> Result<(), SeccompError> {
    let programs = cached_programs(kind)?;
    sigsys::install_handler()
        .map_err(|source| SeccompError::Handler { kind: kind.name(), source })?;
    let current = std::thread::current();
    sigsys::set_thread_label(current.name().unwrap_or(kind.name()));
    for program in programs {
        seccompiler::apply_filter(program)
            .map_err(|e| SeccompError::Install { kind: kind.name(), source: e.into() })?;
    }
    debug!(
        "seccomp: thread {} confined as {} ({} BPF instructions)",
        current.name().unwrap_or("?"),
        kind.name(),
        programs.iter().map(Vec::len).sum::<usize>()
    );
    Ok(())
}
