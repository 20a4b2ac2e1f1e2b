//! What the DriverKit client needs from a connection to the dext: method calls, memory
//! mappings and a wait for interrupts. IOKit on macOS (`sys/macos.rs`), a fake in tests.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::protocol::{describe_io_return, open_failure_hint, MemoryType, Selector};
use crate::pci_address::PciAddress;

/// A failure talking to the dext.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DextError {
    /// A method call failed.
    #[error("the DriverKit extension failed {selector}: {}", describe_io_return(*code))]
    Call {
        /// The method.
        selector: Selector,
        /// The IOReturn.
        code: i32,
    },
    /// A method returned fewer scalars than the protocol has.
    #[error("the DriverKit extension returned {got} values from {selector}, expected {expected}; is it a different version of VFIOUserPCIDriver?")]
    ShortReply {
        /// The method.
        selector: Selector,
        /// Scalars returned.
        got: usize,
        /// Scalars expected.
        expected: usize,
    },
    /// A memory type could not be mapped.
    #[error("cannot map {memory} of the DriverKit extension: {}", describe_io_return(*code))]
    Map {
        /// What.
        memory: MemoryType,
        /// The IOReturn.
        code: i32,
    },
    /// The dext serves another device than the one asked for.
    #[error(
        "the DriverKit extension's device is {found:02x}:{device:02x}.{function:x}, not \
         {address}",
        found = found.0, device = found.1, function = found.2
    )]
    WrongDevice {
        /// The device asked for.
        address: PciAddress,
        /// (bus, device, function) the dext reported.
        found: (u8, u8, u8),
    },
    /// No dext instance serves the device.
    #[error(
        "no VFIOUserPCIDriver DriverKit extension serves PCI device {address}{}; install and \
         activate the extension (System Settings > General > Login Items & Extensions > \
         Driver Extensions), check the device's bus number in System Information > PCI, and \
         replug the device (the extension never serves a GPU's HDMI audio function, class 04: \
         assign only the GPU)",
        if serving.is_empty() { String::new() } else { format!(" (it serves {})", serving.join(", ")) }
    )]
    NoService {
        /// The device asked for.
        address: PciAddress,
        /// The devices the dext serves, as `bus:device.function`.
        serving: Vec<String>,
    },
    /// The function is a multimedia one (class 0x04, the GPU's HDMI audio), which the dext
    /// refuses to drive.
    #[error(
        "{address} is a multimedia function (class {class_code:06x}, e.g. a GPU's HDMI audio); \
         the VFIOUserPCIDriver DriverKit extension refuses class 04 devices, so it cannot be \
         assigned on macOS: pass only the GPU function with --device"
    )]
    MultimediaFunction {
        /// The device asked for.
        address: PciAddress,
        /// Its class code.
        class_code: u32,
    },
    /// More than one dext instance serves the same bus/device/function (several PCI roots).
    #[error(
        "{count} VFIOUserPCIDriver instances serve {address} (under different PCI roots); \
         Aperture cannot tell them apart yet: unplug the other device"
    )]
    Ambiguous {
        /// The device asked for.
        address: PciAddress,
        /// How many.
        count: usize,
    },
    /// IOServiceOpen on the dext refused. The dext grants
    /// `com.apple.developer.driverkit.allow-any-userclient-access`, so this is not about the
    /// client's entitlements: the IOReturn says what it is.
    #[error(
        "cannot open VFIOUserPCIDriver's user client for {address}: {}; {}",
        describe_io_return(*code),
        open_failure_hint(*code)
    )]
    OpenUserClient {
        /// The device asked for.
        address: PciAddress,
        /// The IOReturn of IOServiceOpen.
        code: i32,
    },
    /// An IOKit call outside the dext's methods failed.
    #[error("{what}: {}", describe_io_return(*code))]
    IoKit {
        /// What was being done.
        what: String,
        /// The kern_return_t / IOReturn.
        code: i32,
    },
    /// Another process holds the device's lock: it is assigned to another VM.
    #[error(
        "PCI device {address} is in use by {}: the DriverKit extension would share it with \
         this VM; stop the other VM first (lock file {})",
        holder.map_or("another process".to_string(), |pid| format!("process {pid}")),
        path.display()
    )]
    InUse {
        /// The device asked for.
        address: PciAddress,
        /// The PID written in the lock file, if readable.
        holder: Option<u32>,
        /// The lock file.
        path: std::path::PathBuf,
    },
    /// The device's lock file cannot be created or locked.
    #[error("cannot lock {}: {reason}; set TMPDIR to a writable directory", path.display())]
    Lock {
        /// The lock file.
        path: std::path::PathBuf,
        /// Why (the OS error).
        reason: String,
    },
    /// The dext's answer makes no sense.
    #[error("{0}")]
    Protocol(String),
}

impl From<DextError> for std::io::Error {
    fn from(e: DextError) -> Self {
        std::io::Error::other(e)
    }
}

/// Memory of the dext mapped into this process (a BAR, the interrupt-state page). Unmapped
/// when dropped.
pub trait DextMapping: Send + Sync + fmt::Debug {
    /// Where it is mapped.
    fn addr(&self) -> *mut u8;
    /// Its length in bytes.
    fn len(&self) -> u64;
    /// Whether it is empty (mappings never are).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a wait for interrupts ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The dext completed the wait: a pending bit is (or was) set.
    Signalled,
    /// Nothing within the timeout; the wait stays armed.
    TimedOut,
}

impl DextError {
    /// Whether the dext says its device is gone: unplugged, or its service terminated
    /// (kIOReturnNoDevice, kIOReturnNotAttached, kIOReturnAborted from a wait).
    pub fn device_gone(&self) -> bool {
        use super::protocol::{IO_RETURN_ABORTED, IO_RETURN_NOT_ATTACHED, IO_RETURN_NO_DEVICE};
        match self {
            Self::Call { code, .. } | Self::Map { code, .. } => {
                matches!(*code, IO_RETURN_NO_DEVICE | IO_RETURN_NOT_ATTACHED | IO_RETURN_ABORTED)
            }
            _ => false,
        }
    }
}

/// An open user-client connection to the dext's service for one PCI function.
///
/// Closing (dropping) the connection makes the dext release everything the client held: the
/// claim on the device, its DMA regions and its interrupt sources.
pub trait DextConnection: Send + Sync + fmt::Debug {
    /// Calls `selector` with scalar `input`s; fills `output` and returns how many scalars the
    /// dext set (IOConnectCallScalarMethod). The dext's methods take no structs.
    fn call(
        &self,
        selector: Selector,
        input: &[u64],
        output: &mut [u64],
    ) -> Result<usize, DextError>;

    /// Maps `memory` into this process anywhere (IOConnectMapMemory64, kIOMapAnywhere).
    fn map_memory(&self, memory: MemoryType) -> Result<Arc<dyn DextMapping>, DextError>;

    /// Waits up to `timeout` for the dext to signal a pending interrupt (WaitInterrupt,
    /// re-armed after each completion). Called from one thread at a time.
    fn wait_interrupt(&self, timeout: Duration) -> Result<WaitOutcome, DextError>;
}

/// Calls `selector` and returns exactly `N` outputs, or [`DextError::ShortReply`].
pub(super) fn call_exact<const N: usize>(
    connection: &dyn DextConnection,
    selector: Selector,
    input: &[u64],
) -> Result<[u64; N], DextError> {
    let mut output = [0u64; N];
    let got = connection.call(selector, input, &mut output)?;
    if got < N {
        return Err(DextError::ShortReply { selector, got, expected: N });
    }
    Ok(output)
}
