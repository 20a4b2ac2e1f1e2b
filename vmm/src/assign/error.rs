//! Why a `--device` could not be assigned: typed, with the device and the underlying error;
//! each message is one line that names the fix (`vmm/docs/troubleshooting.md` lists them).

use passthrough::dma::{ConfigError, PvDeviceError};
use passthrough::host::HostError;
use passthrough::PciAddress;

/// Why a device could not be assigned.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The host refused or failed to open, check or map the device (the message has the fix).
    #[error("--device {address}: {source}")]
    Host {
        /// The device.
        address: PciAddress,
        /// What the host said.
        #[source]
        source: HostError,
    },
    /// The device cannot be offered to the guest as it is.
    #[error("--device {address}: {source}")]
    Function {
        /// The device.
        address: PciAddress,
        /// Why.
        #[source]
        source: passthrough::assigned::AssignError,
    },
    /// The DMA window manager refused the limits or the guest RAM layout.
    #[error("--device {address}: {source}")]
    DmaWindows {
        /// The device.
        address: PciAddress,
        /// Why.
        #[source]
        source: ConfigError,
    },
    /// The aperture-dma device serving the device could not be made.
    #[error("--device {address}: {source}")]
    DmaDevice {
        /// The device.
        address: PciAddress,
        /// Why.
        #[source]
        source: PvDeviceError,
    },
    /// The same device was asked for twice.
    #[error("--device {address}: it is given twice; pass it once")]
    GivenTwice {
        /// The device.
        address: PciAddress,
    },
    /// A `dma=window` device cannot be plugged in again yet.
    #[error(
        "--device {address}: re-plug is not supported for dma=window devices yet; restart \
         Aperture to use the device again"
    )]
    ReplugWindow {
        /// The device.
        address: PciAddress,
    },
    /// Another identity device still holds the identity DMA space.
    #[error(
        "--device {address}: re-plug is not supported yet while another dma=identity device \
         stays assigned (its DMA space would pin guest RAM twice); restart Aperture to use \
         the device again"
    )]
    ReplugSharedIdentity {
        /// The device.
        address: PciAddress,
    },
    /// This host cannot open a device again while the VM runs.
    #[error(
        "--device: re-plug is not supported on {os} yet; restart Aperture to use the device again"
    )]
    ReplugUnsupported {
        /// The OS.
        os: &'static str,
    },
    /// The thread that opens devices again could not start.
    #[error("--device: starting the re-plug thread: {0}")]
    ReplugThread(#[source] std::io::Error),
    /// The re-plug thread could not confine itself.
    #[error("--device: confining the re-plug thread: {0}")]
    ReplugSandbox(#[source] crate::seccomp::SeccompError),
    /// The host has no passthrough support in this build.
    #[error("--device: PCI passthrough is not available on {os} in this build")]
    Unsupported {
        /// The OS.
        os: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use std::error::Error;

    use super::*;

    #[test]
    fn messages_name_the_device_and_keep_the_cause() {
        let address: PciAddress = "0000:01:00.0".parse().unwrap();
        let err = AssignError::Host { address, source: HostError::NoIdentityDma };
        let text = err.to_string();
        assert!(text.starts_with("--device 0000:01:00.0: dma=identity is not possible"), "{text}");
        assert!(text.contains("use dma=window"), "{text}");
        assert!(err.source().is_some(), "the host error is the source");
        let text = AssignError::GivenTwice { address }.to_string();
        assert_eq!(text, "--device 0000:01:00.0: it is given twice; pass it once");
        let text = AssignError::Unsupported { os: "plan9" }.to_string();
        assert_eq!(text, "--device: PCI passthrough is not available on plan9 in this build");
    }
}
