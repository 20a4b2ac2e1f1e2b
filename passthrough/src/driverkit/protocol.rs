//! The user-client protocol of the `VFIOUserPCIDriver` DriverKit extension (qemu-vfio-apple),
//! in one place: selectors, argument layouts, memory types, the interrupt-state page and the
//! IOReturn codes Aperture tells apart.
//!
//! Source: the dext's `VFIOUserPCIDriver.cpp` (`ExternalMethod`, `CopyClientMemoryForType`,
//! `InterruptOccurred`) and QEMU's client `hw/vfio/apple-dext-client.c` in the qemu-vfio-apple
//! project (RFC "vfio: PCI device passthrough on Apple Silicon Macs", 2026). Every selector
//! takes and returns scalars (`u64`); none uses struct input or output.
//!
//! | selector | scalar inputs | scalar outputs |
//! | --- | --- | --- |
//! | 0 GetIdentity | - | bus, device, function, vendor id, device id, class code (6) |
//! | 1 Claim | - | - (opens the IOPCIDevice; shared between the dext's clients) |
//! | 2 Terminate | - | - (terminates the dext's service for the device: not used) |
//! | 3 AllocateDMABuffer | size, alignment | size, flags, segments, bus address, bus length, class (not used) |
//! | 4 FreeDMABuffer | - | - (not used) |
//! | 5 RegisterDMARegion | key, client VA, size | segment count, bus address, bus length |
//! | 6 UnregisterDMARegion | key | - |
//! | 7 ProbeDMARegion | key, offset | the word at that offset (not used) |
//! | 8 ConfigRead | offset, width (1, 2, 4) | value |
//! | 9 ConfigWrite | offset, width (1, 2, 4), value | - |
//! | 10 GetBARInfo | BAR (0-5) | memory index, size, type |
//! | 11 MMIORead | memory index, offset, width (1, 2, 4, 8) | value |
//! | 12 MMIOWrite | memory index, offset, width (1, 2, 4, 8), value | - |
//! | 13 SetupInterrupts | - | vectors set up |
//! | 14 CheckInterrupt | - | pending bitmap, read and cleared (4 words; Aperture uses the page) |
//! | 15 WaitInterrupt | async reference | - (completes when a pending bit is set, at once if one is) |
//! | 16 SetIRQMask | enabled bitmap (4 words) | - |
//! | 17 ResetDevice | - | - (FLR, else a hot reset of the upstream port) |
//!
//! What the dext does that shapes the client:
//! - The "key" of RegisterDMARegion is an opaque handle chosen by the client, unique among live
//!   regions (a duplicate gets kIOReturnStillOpen); the DART picks the bus address. A region
//!   over [`DMA_CHUNK_SIZE`] is split and only the first chunk's bus address is returned, so
//!   larger regions are not device-contiguous. The dext has [`MAX_DMA_REGIONS`] slots.
//! - Bad DMA requests reach `IODMACommand::PrepareForDMA`, which can panic the host inside the
//!   DART mapper: the client validates every request first.
//! - SetupInterrupts takes no count: the dext configures as many vectors as the device's
//!   MSI-X table (else MSI Multiple Message Capable) has, at most [`MAX_VECTORS`], once per
//!   connection (a second call gets kIOReturnStillOpen). All vectors start enabled. Which
//!   kind the device uses is the dext's choice; vector `i` of whichever kind the guest enables
//!   is the dext's vector `i`.
//! - A vector whose enabled bit is clear is dropped, not held: guest masking therefore stays
//!   in the client (see [`super::DextInterrupts`]), and SetIRQMask only enables the vectors of
//!   the kind the guest has on.
//! - ConfigRead of a BAR register (4 bytes at 0x10-0x24) returns the BAR's type bits with a
//!   zero address (macOS assigned the real address); reads of other widths are raw.
//! - Closing the connection releases the claim, the DMA regions and the interrupts.
//! - Claim is shared and reference-counted: a second client gets a "secondary claim" and the
//!   same device, so Aperture locks each device itself ([`super::DeviceLock`]).
//! - Start refuses class 0x04 (multimedia, [`REFUSED_BASE_CLASS`]): a GPU's HDMI audio has no
//!   dext instance.
//! - SetupInterrupts may set up fewer vectors than the MSI-X table has (256 at most, or one
//!   MSI vector when MSI-X set-up fails): the guest is offered and given only those.
//! - The dext grants `com.apple.developer.driverkit.allow-any-userclient-access`: opening its
//!   user client needs no client entitlement ([`open_failure_hint`]).
//!
//! Each of these, with the source that supports it and the switch where a Mac must decide, is
//! in `passthrough/docs/macos-notes.md` (issue #12).

use std::fmt;

use crate::dma::MapperLimits;

/// The dext's class (the `IOUserClass` property of its `IOUserService` registry entries).
pub const DEXT_CLASS: &str = "VFIOUserPCIDriver";

/// A user-client method of the dext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Selector {
    /// Bus, device, function, vendor, device id, class code.
    GetIdentity = 0,
    /// Opens the PCI device for this client.
    Claim = 1,
    /// Terminates the dext's service for the device.
    Terminate = 2,
    /// Allocates a DMA buffer in the dext.
    AllocateDmaBuffer = 3,
    /// Frees it.
    FreeDmaBuffer = 4,
    /// Maps client memory for device DMA.
    RegisterDmaRegion = 5,
    /// Unmaps it.
    UnregisterDmaRegion = 6,
    /// Reads a word of a registered region (debugging).
    ProbeDmaRegion = 7,
    /// Configuration space read.
    ConfigRead = 8,
    /// Configuration space write.
    ConfigWrite = 9,
    /// A BAR's memory index, size and type.
    GetBarInfo = 10,
    /// BAR read through the dext.
    MmioRead = 11,
    /// BAR write through the dext.
    MmioWrite = 12,
    /// Registers the device's MSI-X (or MSI) vectors.
    SetupInterrupts = 13,
    /// Reads and clears the pending bitmap.
    CheckInterrupt = 14,
    /// Async: completes when a vector is pending.
    WaitInterrupt = 15,
    /// Which vectors the dext records.
    SetIrqMask = 16,
    /// Resets the function.
    ResetDevice = 17,
}

impl Selector {
    /// The selector number.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The dext's name for it, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::GetIdentity => "GetIdentity",
            Self::Claim => "Claim",
            Self::Terminate => "Terminate",
            Self::AllocateDmaBuffer => "AllocateDMABuffer",
            Self::FreeDmaBuffer => "FreeDMABuffer",
            Self::RegisterDmaRegion => "RegisterDMARegion",
            Self::UnregisterDmaRegion => "UnregisterDMARegion",
            Self::ProbeDmaRegion => "ProbeDMARegion",
            Self::ConfigRead => "ConfigRead",
            Self::ConfigWrite => "ConfigWrite",
            Self::GetBarInfo => "GetBARInfo",
            Self::MmioRead => "MMIORead",
            Self::MmioWrite => "MMIOWrite",
            Self::SetupInterrupts => "SetupInterrupts",
            Self::CheckInterrupt => "CheckInterrupt",
            Self::WaitInterrupt => "WaitInterrupt",
            Self::SetIrqMask => "SetIRQMask",
            Self::ResetDevice => "ResetDevice",
        }
    }

    /// (scalar inputs, scalar outputs) the dext requires at least.
    pub fn arity(self) -> (usize, usize) {
        match self {
            Self::GetIdentity => (0, IDENTITY_WORDS),
            Self::Claim
            | Self::Terminate
            | Self::FreeDmaBuffer
            | Self::WaitInterrupt
            | Self::ResetDevice => (0, 0),
            Self::AllocateDmaBuffer => (2, 6),
            Self::RegisterDmaRegion => (3, 3),
            Self::UnregisterDmaRegion => (1, 0),
            Self::ProbeDmaRegion => (2, 1),
            Self::ConfigRead => (2, 1),
            Self::ConfigWrite => (3, 0),
            Self::GetBarInfo => (1, 3),
            Self::MmioRead => (3, 1),
            Self::MmioWrite => (4, 0),
            Self::SetupInterrupts => (0, 1),
            Self::CheckInterrupt => (0, IRQ_WORDS),
            Self::SetIrqMask => (IRQ_WORDS, 0),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (selector {})", self.name(), self.code())
    }
}

/// Scalars GetIdentity returns.
pub const IDENTITY_WORDS: usize = 6;

/// Memory the dext lets the client map (`IOConnectMapMemory64` memory types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryType {
    /// The buffer of AllocateDMABuffer (type 0; not used).
    DmaBuffer,
    /// BAR `index` (types 1-6). `write_combine`: map write-combined (prefetchable BARs, as
    /// QEMU does) instead of device memory.
    Bar {
        /// BAR index, 0-5.
        index: u8,
        /// Map write-combined.
        write_combine: bool,
    },
    /// The interrupt-state page (type 7): pending and enabled bitmaps.
    InterruptState,
}

impl MemoryType {
    /// The memory type number.
    pub fn code(self) -> u32 {
        match self {
            Self::DmaBuffer => 0,
            Self::Bar { index, .. } => 1 + u32::from(index),
            Self::InterruptState => 7,
        }
    }
}

impl fmt::Display for MemoryType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DmaBuffer => f.write_str("the DMA buffer"),
            Self::Bar { index, .. } => write!(f, "BAR {index}"),
            Self::InterruptState => f.write_str("the interrupt-state page"),
        }
    }
}

/// PCI base class the dext refuses in Start: 0x04, multimedia (a GPU's HDMI/DP audio
/// function). No dext instance ever serves such a function, so it cannot be assigned on macOS.
pub const REFUSED_BASE_CLASS: u32 = 0x04;

/// Size of the interrupt-state page.
pub const IRQ_PAGE_SIZE: u64 = 16 << 10;
/// Words of a vector bitmap (pending or enabled): 4 × 64 = [`MAX_VECTORS`].
pub const IRQ_WORDS: usize = 4;
/// Most vectors the dext sets up.
pub const MAX_VECTORS: u16 = 256;
/// Offset of the pending bitmap in the page (the dext sets bits, the client clears them).
pub const IRQ_PENDING_OFFSET: usize = 0x00;
/// Offset of the enabled bitmap (written by SetIRQMask).
pub const IRQ_ENABLED_OFFSET: usize = 0x20;

/// The largest region RegisterDMARegion maps device-contiguously (its chunk size: the
/// DART's whole byte budget).
pub const DMA_CHUNK_SIZE: u64 = MapperLimits::APPLE_DART.max_mapped_bytes;
/// Live DMA regions the dext can hold (the DART's mapping limit).
pub const MAX_DMA_REGIONS: u32 = MapperLimits::APPLE_DART.max_mappings;
/// The DART's page: bus addresses and lengths are multiples of it.
pub const DART_PAGE_SIZE: u64 = MapperLimits::APPLE_DART.alignment;

/// GetBARInfo type: an I/O BAR.
pub const BAR_TYPE_IO: u64 = 0x1;
/// GetBARInfo type bits 2:1: memory type (0b10: 64-bit), as in the BAR register.
pub const BAR_TYPE_MEM_MASK: u64 = 0x6;
/// GetBARInfo type: 64-bit memory BAR.
pub const BAR_TYPE_MEM64: u64 = 0x4;
/// GetBARInfo type: prefetchable.
pub const BAR_TYPE_PREFETCHABLE: u64 = 0x8;

/// IOReturn: success.
pub const IO_RETURN_SUCCESS: i32 = 0;
/// IOReturn values Aperture tells apart (IOKit/IOReturn.h: `iokit_common_err(n)`).
const fn iokit_common(code: u32) -> i32 {
    (0xe000_0000_u32 | code) as i32
}
/// kIOReturnError.
pub const IO_RETURN_ERROR: i32 = iokit_common(0x2bc);
/// kIOReturnNoMemory.
pub const IO_RETURN_NO_MEMORY: i32 = iokit_common(0x2bd);
/// kIOReturnNoDevice.
pub const IO_RETURN_NO_DEVICE: i32 = iokit_common(0x2c0);
/// kIOReturnNotPrivileged.
pub const IO_RETURN_NOT_PRIVILEGED: i32 = iokit_common(0x2c1);
/// kIOReturnBadArgument.
pub const IO_RETURN_BAD_ARGUMENT: i32 = iokit_common(0x2c2);
/// kIOReturnExclusiveAccess.
pub const IO_RETURN_EXCLUSIVE_ACCESS: i32 = iokit_common(0x2c5);
/// kIOReturnUnsupported.
pub const IO_RETURN_UNSUPPORTED: i32 = iokit_common(0x2c7);
/// kIOReturnNotOpen.
pub const IO_RETURN_NOT_OPEN: i32 = iokit_common(0x2cd);
/// kIOReturnNotAligned.
pub const IO_RETURN_NOT_ALIGNED: i32 = iokit_common(0x2d0);
/// kIOReturnStillOpen.
pub const IO_RETURN_STILL_OPEN: i32 = iokit_common(0x2d2);
/// kIOReturnBusy.
pub const IO_RETURN_BUSY: i32 = iokit_common(0x2d5);
/// kIOReturnTimeout.
pub const IO_RETURN_TIMEOUT: i32 = iokit_common(0x2d6);
/// kIOReturnNotReady.
pub const IO_RETURN_NOT_READY: i32 = iokit_common(0x2d8);
/// kIOReturnNotAttached.
pub const IO_RETURN_NOT_ATTACHED: i32 = iokit_common(0x2d9);
/// kIOReturnNoSpace.
pub const IO_RETURN_NO_SPACE: i32 = iokit_common(0x2db);
/// kIOReturnAborted.
pub const IO_RETURN_ABORTED: i32 = iokit_common(0x2eb);
/// kIOReturnNotFound.
pub const IO_RETURN_NOT_FOUND: i32 = iokit_common(0x2f0);

/// The IOKit name of `code`, with what it usually means from this dext.
pub fn describe_io_return(code: i32) -> String {
    let known = match code {
        IO_RETURN_ERROR => "kIOReturnError",
        IO_RETURN_NO_MEMORY => "kIOReturnNoMemory",
        IO_RETURN_NO_DEVICE => "kIOReturnNoDevice (the device is gone)",
        IO_RETURN_NOT_PRIVILEGED => "kIOReturnNotPrivileged",
        IO_RETURN_BAD_ARGUMENT => "kIOReturnBadArgument",
        IO_RETURN_EXCLUSIVE_ACCESS => "kIOReturnExclusiveAccess (another client holds it)",
        IO_RETURN_UNSUPPORTED => "kIOReturnUnsupported",
        IO_RETURN_NOT_OPEN => "kIOReturnNotOpen (the device is not claimed)",
        IO_RETURN_NOT_ALIGNED => "kIOReturnNotAligned (the DART split the mapping)",
        IO_RETURN_STILL_OPEN => "kIOReturnStillOpen (already set up, or the key is in use)",
        IO_RETURN_BUSY => "kIOReturnBusy",
        IO_RETURN_TIMEOUT => "kIOReturnTimeout",
        IO_RETURN_NOT_READY => "kIOReturnNotReady (interrupts are not set up)",
        IO_RETURN_NOT_ATTACHED => "kIOReturnNotAttached (the dext lost its device)",
        IO_RETURN_NO_SPACE => "kIOReturnNoSpace (the dext is out of DMA region slots)",
        IO_RETURN_ABORTED => "kIOReturnAborted",
        IO_RETURN_NOT_FOUND => "kIOReturnNotFound",
        _ => return format!("IOReturn {:#010x}", code as u32),
    };
    format!("{known}, {:#010x}", code as u32)
}

/// What to do when IOServiceOpen on the dext returns `code`. The dext's entitlements include
/// `com.apple.developer.driverkit.allow-any-userclient-access`, so any process may open it:
/// no client entitlement is involved.
pub fn open_failure_hint(code: i32) -> &'static str {
    match code {
        IO_RETURN_NOT_PRIVILEGED => {
            "macOS refused this process although the extension accepts any client: check that \
             the installed extension is qemu-vfio-apple's VFIOUserPCIDriver (other builds may \
             restrict clients) and that it is activated"
        }
        IO_RETURN_EXCLUSIVE_ACCESS | IO_RETURN_BUSY => {
            "another process has the device's user client open: stop it (another Aperture or \
             QEMU) and retry"
        }
        IO_RETURN_NO_DEVICE | IO_RETURN_NOT_ATTACHED | IO_RETURN_NOT_FOUND => {
            "the extension lost its device: replug the enclosure and retry"
        }
        IO_RETURN_NO_MEMORY | IO_RETURN_NO_SPACE => {
            "the extension is out of resources: replug the enclosure or restart the Mac"
        }
        _ => {
            "check that the extension is activated (System Settings > General > Login Items & \
             Extensions > Driver Extensions) and replug the enclosure"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_return_codes_match_iokit() {
        assert_eq!(IO_RETURN_BAD_ARGUMENT as u32, 0xe000_02c2);
        assert_eq!(IO_RETURN_NOT_OPEN as u32, 0xe000_02cd);
        assert_eq!(IO_RETURN_NOT_FOUND as u32, 0xe000_02f0);
        assert!(describe_io_return(IO_RETURN_NO_SPACE).contains("region slots"));
        assert_eq!(describe_io_return(0x1234), "IOReturn 0x00001234");
    }

    #[test]
    fn open_failures_say_what_the_ioreturn_means_not_entitlements() {
        for code in [IO_RETURN_NOT_PRIVILEGED, IO_RETURN_BUSY, IO_RETURN_NO_DEVICE, 0x1234] {
            let hint = open_failure_hint(code);
            assert!(!hint.contains("entitlement"), "{hint}");
        }
        assert!(open_failure_hint(IO_RETURN_EXCLUSIVE_ACCESS).contains("another process"));
        assert!(open_failure_hint(IO_RETURN_NOT_ATTACHED).contains("replug"));
    }

    #[test]
    fn memory_types_and_selectors_have_the_dext_numbers() {
        assert_eq!(MemoryType::DmaBuffer.code(), 0);
        assert_eq!(MemoryType::Bar { index: 0, write_combine: false }.code(), 1);
        assert_eq!(MemoryType::Bar { index: 5, write_combine: true }.code(), 6);
        assert_eq!(MemoryType::InterruptState.code(), 7);
        assert_eq!(Selector::ResetDevice.code(), 17);
        assert_eq!(Selector::WaitInterrupt.code(), 15);
        assert_eq!(Selector::RegisterDmaRegion.to_string(), "RegisterDMARegion (selector 5)");
    }
}
