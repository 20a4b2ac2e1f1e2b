//! Device passthrough for Aperture: VFIO on Linux, a PCIDriverKit client on macOS, and the DMA
//! window manager that fits guest DMA into the host IOMMU's limits.

pub mod assigned;
pub mod dma;
pub mod driverkit;
pub mod pci_address;
pub mod sysfs;
#[cfg(target_os = "linux")]
pub mod vfio;

pub use pci_address::{PciAddress, PciAddressError};
pub use sysfs::{HostDevice, HostDeviceError, HostSysfs};
