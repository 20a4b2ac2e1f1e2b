//! Errors assigning a physical PCI function to the guest.

use devices::pci::config::ConfigError;
use devices::pci::msix::MsixError;

/// Errors building an [`super::AssignedFunction`].
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The device's configuration header could not be read.
    #[error(
        "cannot read the configuration space of {name} at {offset:#x}: {source}; check that the \
         device is bound to vfio-pci (or claimed by the DriverKit extension) and that Aperture \
         may access it"
    )]
    ConfigRead {
        /// The function's name.
        name: String,
        /// Where the read failed.
        offset: u16,
        /// What the host said.
        source: std::io::Error,
    },
    /// The device does not answer configuration reads.
    #[error(
        "{name} reads vendor id {vendor_id:#06x}: the device is absent or powered off; check \
         that it is present, out of D3cold and not being reset"
    )]
    NoDevice {
        /// The function's name.
        name: String,
        /// The vendor id read.
        vendor_id: u16,
    },
    /// Only endpoints (type 0 headers) can be assigned.
    #[error(
        "{name} has header type {header_type:#04x}, not an endpoint; bridges cannot be \
         assigned, assign the endpoints behind it instead"
    )]
    NotAnEndpoint {
        /// The function's name.
        name: String,
        /// The header type byte (without the multi-function bit).
        header_type: u8,
    },
    /// A BAR cannot be offered to the guest.
    #[error("{name}: BAR {bar} cannot be emulated ({source}); this device cannot be assigned")]
    Bar {
        /// The function's name.
        name: String,
        /// BAR index.
        bar: usize,
        /// Why.
        source: ConfigError,
    },
    /// A 32-bit BAR is larger than a 32-bit BAR register can decode.
    #[error(
        "{name}: 32-bit BAR {bar} is {size:#x} bytes, more than a 32-bit BAR can decode; this \
         device cannot be assigned"
    )]
    BarTooLarge {
        /// The function's name.
        name: String,
        /// BAR index.
        bar: usize,
        /// The host's size.
        size: u64,
    },
    /// The expansion ROM cannot be offered to the guest.
    #[error(
        "{name}: the expansion ROM cannot be emulated ({source}); this device cannot be assigned"
    )]
    Rom {
        /// The function's name.
        name: String,
        /// Why.
        source: ConfigError,
    },
    /// The MSI-X table cannot be emulated.
    #[error(
        "{name}: the MSI-X table cannot be emulated ({source}); this device cannot be assigned"
    )]
    Msix {
        /// The function's name.
        name: String,
        /// Why.
        source: MsixError,
    },
    /// A `trace-bar` range cannot be traced.
    #[error("trace-bar={bar}: {reason}")]
    TraceBar {
        /// The function's name.
        name: String,
        /// BAR index.
        bar: usize,
        /// Why, and the fix.
        reason: String,
    },
}
