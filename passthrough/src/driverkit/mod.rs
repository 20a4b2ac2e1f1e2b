//! DriverKit (macOS): the host half of PCI passthrough, as a client of the `VFIOUserPCIDriver`
//! DriverKit extension (the dext), which claims the device and exports it through an
//! IOUserClient.
//!
//! Everything but the IOKit calls is portable and tested on any host against a fake dext:
//! - [`DextConnection`]: the user-client calls (scalar methods by selector, memory mappings,
//!   the wait for interrupts). [`IoKitConnection`] implements it on macOS.
//! - [`DextDevice`]: claim, identity check, configuration space, BARs (sizes, trapped
//!   accesses through the dext, mappings), reset.
//! - [`DextHostFunction`]: the [`crate::assigned::HostFunction`] for the portable
//!   configuration-space virtualization; drops writes macOS must keep from the device.
//! - [`DextInterrupts`]: the [`crate::assigned::InterruptHost`]; a wait thread injects pending
//!   vectors through the VMM's [`MsiSink`].
//! - [`DartMapper`]: the [`crate::dma::HostMapper`] for DMA windows through the DART.
//!
//! - [`DeviceLock`]: one VM per device (the dext's claim is shared).
//! - [`DextBackend`]: the [`crate::host::HostBackend`] the VMM's device pipeline drives.
//!
//! The protocol, and what Aperture assumes about it, is in [`protocol`].

mod backend;
mod bar_access;
mod connection;
mod dart;
mod device;
mod host;
mod interrupts;
mod lock;
pub mod protocol;
mod sys;

#[cfg(test)]
mod tests;

pub use backend::{ConnectionOpener, DextBackend, DextFunction, MsiSinkFactory};
pub use bar_access::BarAccess;
pub use connection::{DextConnection, DextError, DextMapping, WaitOutcome};
pub use dart::DartMapper;
pub use device::{DextBar, DextDevice, DextIdentity};
pub use host::{DextHostFunction, KeptRegister};
pub use interrupts::{DextInterrupts, MsiSink};
pub use lock::{default_lock_dir, lock_path, DeviceLock};
#[cfg(target_os = "macos")]
pub use sys::IoKitConnection;
