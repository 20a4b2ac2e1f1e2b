//! Support for Aperture's end-to-end tests (see `tests/e2e.rs`).
//!
//! The rig boots an emulated arm64 KVM host (L1) in QEMU from `build/rig/l1-base.cpio`
//! (made by `tests/rig/build-rig.sh`) with a second small cpio appended that holds
//! `/cases.sh`. Each [`Case`] is a shell snippet run inside L1 (usually an
//! `/aperture run ...` of the nested guest); its console output, exit status and
//! per-line host timestamps come back as a [`CaseOutput`]. All cases share one L1 boot.
//! [`NvmeDisks`] gives L1 two emulated NVMe controllers for the passthrough cases;
//! [`edu_qemu_args`] a GPU-like stand-in (edu + HD audio in one slot).

mod case;
mod cases_script;
mod console_log;
mod edu;
mod error;
mod monitor;
mod net;
mod newc;
mod nvme;
mod paths;
mod qemu;
mod rig;
pub mod vmm_bench;

pub use case::{Case, CaseOutput};
pub use console_log::{CASE_BEGIN, CASE_END, CASE_WATCHDOG, L1_DONE, L1_READY};
pub use edu::{edu_qemu_args, EDU_DMA_MASK, EDU_PRELUDE, EDU_ROOT_PORT};
pub use error::RigError;
pub use monitor::MonitorAction;
pub use net::NET_PRELUDE;
pub use newc::NewcWriter;
pub use nvme::{
    bench_seconds, nvme_bench_script, NvmeDisk, NvmeDisks, NVME_IMAGE_BYTES, NVME_PATTERN,
    NVME_PRELUDE,
};
pub use paths::RigPaths;
pub use rig::{run_cases, run_cases_with, RigOptions, RigRun};
