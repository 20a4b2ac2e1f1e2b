//! The OS adapters of the device pipeline: each holds only OS calls and implements
//! [`super::pipeline::HostPlatform`] as `Platform`, with the host's `IntxHandle`.
//!
//! - `linux`: VFIO, with KVM irqfd routes for MSI / MSI-X and level irqfds for INTx.
//! - `macos`: the DriverKit extension over IOKit, with MSIs injected through
//!   Hypervisor.framework.
//! - `unsupported`: everything else; `--device` is refused.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::IntxHandle;
#[cfg(target_os = "linux")]
pub(super) use linux::Platform;

#[cfg(target_os = "macos")]
mod macos;
#[cfg(target_os = "macos")]
pub use macos::IntxHandle;
#[cfg(target_os = "macos")]
pub(super) use macos::Platform;

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
mod unsupported;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub use unsupported::IntxHandle;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
pub(super) use unsupported::Platform;
