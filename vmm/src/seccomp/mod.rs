//! The seccomp sandbox (Linux): each of Aperture's threads, once set up, may make only the
//! system calls its kind of work needs, so that a guest that takes over a device model cannot
//! open files, sockets or programs, or reach the host beyond what the VMM already does.
//!
//! Thread kinds ([`ThreadKind`]) and where each is confined:
//! - a vCPU thread, after its vCPU exists and has its boot registers, before it first runs
//!   the guest (`vcpu_thread.rs`);
//! - a device worker thread (virtio), first thing on the thread (the hook given to the
//!   devices in `vm.rs`); workers start on vCPU threads, so they run under the vCPU filter
//!   too and their own filter only narrows it;
//! - the stdin (console input) thread, first thing on the thread (`console.rs`);
//! - the control (main) thread, once the VM is built and every vCPU thread is waiting to
//!   run, before the guest starts (`vm.rs`); it keeps the filter through teardown and exit;
//! - the re-plug thread, first thing on the thread (`assign/worker.rs`): it opens assigned
//!   devices again on SIGUSR1, which needs opening files (the only kind that may) and the
//!   VFIO setup calls, kept off the main thread's filter.
//!
//! The allowlists are in `allowlist.rs`, one function per kind, each entry with why.
//!
//! What happens to a system call outside the list: the thread gets `SIGSYS` (seccomp's
//! `SECCOMP_RET_TRAP`), and Aperture's handler puts the terminal back, prints
//!
//! ```text
//! aperture: seccomp refused syscall 41 (socket) on thread vcpu0; rerun with --no-seccomp and report it
//! ```
//!
//! and exits with status 1 (Aperture failed), with async-signal-safe calls only. That is
//! chosen over killing the process outright (`SECCOMP_RET_KILL_PROCESS`, no message) and over
//! failing the call with an error (the program goes on in a state nobody tested): a missing
//! entry shows up as one clear line naming the call, never as a hang or a panic. The kernel
//! releases the VFIO devices on exit, which resets them.
//!
//! Two calls are answered with an error instead: `openat` fails with `EACCES` (glibc opens
//! files lazily on its own, e.g. `/proc/sys/vm/overcommit_memory` when a thread's malloc heap
//! shrinks, and copes with a failure; Aperture's own code reports it as an ordinary error),
//! and `clone3` fails with `ENOSYS`, so that glibc's `pthread_create` falls back to `clone`,
//! whose flags a filter can see: threads may be created (virtio workers start on vCPU
//! threads), processes may not.
//!
//! `aperture run --no-seccomp` ([`crate::config::VmConfig::seccomp`]) turns the sandbox off,
//! for debugging. Other hosts (macOS) have no seccomp: [`confine`] does nothing there.

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod allowlist;
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod linux;
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod requests;
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod sigsys;
#[cfg(test)]
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests;

/// What a thread does, which decides the system calls it may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// Runs a vCPU: `KVM_RUN`, and the device emulation of its MMIO exits (PCI
    /// configuration, MSI-X programming of assigned devices, the DMA window device, starting
    /// virtio workers).
    Vcpu,
    /// Serves a virtio queue: guest memory, the disk image or the entropy source, and MSIs.
    DeviceWorker,
    /// A virtio-net worker that hands its queues to the host kernel's vhost-net: a device
    /// worker that may also make the vhost-net calls.
    VhostNet,
    /// Reads host stdin into the UART.
    Stdin,
    /// The main thread once the guest runs: waits for the stop, stops the vCPUs, tears down
    /// (assigned devices reset and unmapped) and exits.
    Control,
    /// Opens assigned devices again that the host took away and gave back (SIGUSR1).
    Replug,
}

impl ThreadKind {
    /// A short name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Vcpu => "vCPU",
            Self::DeviceWorker => "device worker",
            Self::VhostNet => "vhost-net worker",
            Self::Stdin => "stdin",
            Self::Control => "control",
            Self::Replug => "re-plug",
        }
    }
}

/// Why a thread could not be confined.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The filter could not be built (a bug in the allowlist).
    #[error("building the seccomp filter for the {kind} thread: {source}")]
    Build {
        /// Which thread.
        kind: &'static str,
        /// What seccompiler said (its error types exist on Linux only).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The `SIGSYS` handler could not be installed.
    #[error(
        "installing the seccomp filter for the {kind} thread: the SIGSYS handler: {source}; the \
         host kernel needs seccomp-BPF (CONFIG_SECCOMP_FILTER), or run with --no-seccomp"
    )]
    Handler {
        /// Which thread.
        kind: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel refused the filter or the `SIGSYS` handler.
    #[error(
        "installing the seccomp filter for the {kind} thread: {source}; the host kernel needs \
         seccomp-BPF (CONFIG_SECCOMP_FILTER), or run with --no-seccomp"
    )]
    Install {
        /// Which thread.
        kind: &'static str,
        /// What the kernel said, through seccompiler (its error types exist on Linux only).
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Builds the filters of `kind` ahead of [`confine`], which then only installs them (a
/// thread that confines itself on the boot path, a vCPU, waits less). Does nothing where
/// there is no seccomp (macOS).
pub fn prepare(kind: ThreadKind) -> Result<(), SeccompError> {
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        linux::prepare(kind)
    }
    #[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
    {
        let _ = kind;
        Ok(())
    }
}

/// Builds every kind's filters ([`prepare`]) on a thread of their own, on another core while
/// the VM is being built; a failure there is reported again by [`confine`].
pub fn prepare_in_background() {
    let spawned = devices::thread::named("seccomp-prep").spawn(|| {
        for kind in [
            ThreadKind::Vcpu,
            ThreadKind::DeviceWorker,
            ThreadKind::VhostNet,
            ThreadKind::Control,
            ThreadKind::Stdin,
            ThreadKind::Replug,
        ] {
            if let Err(e) = prepare(kind) {
                log::debug!("seccomp filters built later: {e}");
            }
        }
    });
    if let Err(e) = spawned {
        log::debug!("seccomp filters built later: {e}");
    }
}

/// Confines the calling thread to the system calls of `kind`, for the rest of its life. The
/// first call also installs the process's `SIGSYS` handler. Does nothing where there is no
/// seccomp (macOS).
pub fn confine(kind: ThreadKind) -> Result<(), SeccompError> {
    #[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        linux::confine(kind)
    }
    #[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
    {
        let _ = kind;
        Ok(())
    }
}
