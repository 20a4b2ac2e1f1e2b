//! The portable half of PCI passthrough: an [`AssignedFunction`] offers a physical function
//! to the guest as a [`devices::pci::PciFunction`]. The host side (VFIO on Linux, a DriverKit
//! client on macOS) sits behind [`HostFunction`] and [`InterruptHost`].
//!
//! - [`policy`]: which configuration bits reach the device (everything else is virtual).
//! - [`capabilities`]: the capability lists the guest sees (SR-IOV, Resizable BAR... hidden).
//! - [`bars`]: virtual BARs sized from the host regions, and what can be mmapped.
//! - [`msix`]: emulated MSI-X table that drives the host's interrupt routes.
//! - [`nvidia`]: NVIDIA's configuration mirror in BAR0, trapped and virtualized.
//! - `reset`: guest FLRs and secondary bus resets, through the host reset hook.
//! - `traced`: the `trace-bar` ranges, trapped so that every access is traced.
//! - [`msi`]: emulated MSI capability that drives the same routes (one of the two is enabled
//!   at a time).
//!
//! The expansion ROM appears as BAR index [`ROM_BAR_INDEX`] (6) in `bar_regions()`.

pub mod bars;
pub mod capabilities;
mod error;
mod function;
mod host;
pub mod msi;
pub mod msix;
pub mod nvidia;
pub mod policy;
mod reset;
mod traced;

pub use bars::{AssignedBar, BarLayout, MIN_BAR_SIZE};
pub use capabilities::CapabilityLayout;
pub use error::AssignError;
pub use function::{intx_pin_name, AssignedFunction, ROM_BAR_INDEX};
pub use host::{
    vector_is_live, HostFunction, InterruptHost, InterruptKind, RegionInfo, VectorRoute,
};
pub use msi::MsiCapability;
pub use msix::MsixPlacement;
pub use nvidia::ConfigMirror;
pub use reset::{GuestResetCause, ResetHook};

#[cfg(test)]
mod tests;
