//! Errors of the rig harness.

use std::io;
use std::path::PathBuf;

/// Why the rig could not run or could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// A build output the rig boots from is not there.
    #[error(
        "{path} is missing: build it with tests/rig/build-rig.sh (after images/build-guest.sh), \
         or run everything with tests/run-e2e.sh"
    )]
    MissingArtifact {
        /// The missing file.
        path: PathBuf,
    },
    /// A case name cannot be used in the markers or is given twice.
    #[error("invalid case name {name:?}: use 1-64 letters, digits, '-' or '_', each name once")]
    InvalidCaseName {
        /// The offending name.
        name: String,
    },
    /// A file in the appended initramfs is too large for the newc format.
    #[error("cpio entry {path} is {len} bytes: newc holds at most 4 GiB per file")]
    CpioEntryTooLarge {
        /// Path inside the archive.
        path: String,
        /// Its size.
        len: usize,
    },
    /// Reading or writing a rig file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// QEMU (or `timeout`) could not be started.
    #[error("cannot start {program}: {source}; install QEMU with images/host-deps.sh")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        source: io::Error,
    },
    /// The emulated host never reached its `/init`.
    #[error(
        "the emulated arm64 host never printed its ready marker (QEMU exit status {status:?}{timed_out}); \
         QEMU stderr: {stderr:?}; full log: {log}"
    )]
    L1NotReady {
        /// QEMU's exit status (124: killed by `timeout`).
        status: Option<i32>,
        /// ", timed out" when `timeout` stopped QEMU.
        timed_out: &'static str,
        /// What QEMU wrote on stderr.
        stderr: String,
        /// The saved console log.
        log: PathBuf,
    },
}
