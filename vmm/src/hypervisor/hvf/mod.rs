//! The Hypervisor.framework backend (Apple Silicon, macOS 15 or later): its rules and the
//! state it keeps as portable code in front, unit-tested on any host, and the thin FFI shell
//! behind it in [`sys`] (compiled on Apple Silicon macOS only).

pub mod gic;
pub mod handle;
pub mod power;
pub mod reset;
pub mod status;
#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
mod sys;
pub mod tso;
pub mod version;
pub mod vtimer;

#[cfg(all(target_os = "macos", target_arch = "aarch64"))]
pub use sys::Hvf;

/// `hv_vm_map` maps host memory in 16 KiB pages (the Apple Silicon page size): host address,
/// guest address and size must all be multiples of it.
pub const GRANULE: u64 = 16 * 1024;
