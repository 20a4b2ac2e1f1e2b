//! Device passthrough for Aperture: VFIO on Linux, a PCIDriverKit client on macOS, and the DMA
//! window manager that fits guest DMA into the host IOMMU's limits.
//!
//! - [`host`]: the backend trait both hosts implement, which the VMM's one device pipeline
//!   drives, and the guest RAM region type the VMM and the DMA mappers share.
//! - [`assigned`]: the portable PCI function the guest sees in front of a host function.
//! - [`dma`]: DMA windows and the paravirtual aperture-dma device.
//! - [`vfio`] (Linux) and [`driverkit`] (portable, with IOKit calls on macOS): the hosts.
//! - `testing` (feature `testing`, and in unit tests): fakes and a PRNG for tests and fuzzing.

pub mod assigned;
pub mod dma;
pub mod driverkit;
pub mod host;
pub mod pci_address;
pub mod sysfs;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
#[cfg(target_os = "linux")]
pub mod vfio;

pub use host::RamRegion;
pub use pci_address::{PciAddress, PciAddressError};
pub use sysfs::{HostDevice, HostDeviceError, HostSysfs};
