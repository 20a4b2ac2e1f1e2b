//! Why the window manager refused a DMA request, worded for the VMM log and the guest's
//! error code.

use super::mapper::{MapConstraints, MapperError};
use super::stats::FailureReason;
use super::units::Bytes;

/// Why a DMA request was refused. Every variant but the `Host*` and `MapperContract` ones is
/// decided before any host call.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DmaError {
    /// Zero-length map.
    #[error(
        "DMA map of 0 bytes at guest {gpa:#x}: the guest driver asked for an empty buffer; \
         map at least one byte"
    )]
    ZeroLength {
        /// Guest-physical address.
        gpa: u64,
    },
    /// The range wraps past 2^64.
    #[error(
        "DMA map of {len:#x} bytes at guest {gpa:#x} wraps past the end of the address space; \
         the guest driver passed a bad buffer"
    )]
    Overflow {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
    },
    /// The range is not inside one guest RAM region.
    #[error(
        "DMA map of guest {gpa:#x}..{:#x} is not inside one guest RAM region (RAM is {ram}); \
         devices may only reach guest RAM",
        gpa + len
    )]
    OutsideGuestRam {
        /// Guest-physical address.
        gpa: u64,
        /// Length.
        len: u64,
        /// The guest RAM regions.
        ram: String,
    },
    /// Larger than the whole budget.
    #[error(
        "DMA map of {} at guest {gpa:#x} needs {} of host mappings, more than the whole {} \
         budget; raise dma-limit or have the guest driver map smaller pieces",
        Bytes(*len), Bytes(*needed), Bytes(*budget)
    )]
    TooLarge {
        /// Guest-physical address.
        gpa: u64,
        /// Length asked for.
        len: u64,
        /// Bytes the host would have to map.
        needed: u64,
        /// The byte budget.
        budget: u64,
    },
    /// Not enough bytes even after evicting every cached window.
    #[error(
        "DMA map of {} at guest {gpa:#x} needs {} but only {} of the {} budget can be freed: \
         {} is pinned by live mappings; raise dma-limit, or the guest keeps too much mapped",
        Bytes(*len), Bytes(*needed), Bytes(*available), Bytes(*budget), Bytes(*pinned)
    )]
    NoRoom {
        /// Guest-physical address.
        gpa: u64,
        /// Length asked for.
        len: u64,
        /// Bytes the host would have to map.
        needed: u64,
        /// Bytes that could be made free.
        available: u64,
        /// The byte budget.
        budget: u64,
        /// Bytes held by live requests.
        pinned: u64,
    },
    /// Not enough mapping slots even after evicting every cached window.
    #[error(
        "DMA map of {} at guest {gpa:#x} needs {needed} more host mappings but only \
         {available} of the {max} allowed can be freed: {pinned} are pinned by live mappings; \
         raise dma-max-maps or the window size"
    , Bytes(*len))]
    NoMappingSlots {
        /// Guest-physical address.
        gpa: u64,
        /// Length asked for.
        len: u64,
        /// Mappings the host would have to make.
        needed: u64,
        /// Mappings that could be made free.
        available: u64,
        /// The mapping limit.
        max: u64,
        /// Mappings held by live requests.
        pinned: u64,
    },
    /// Unmap of something not mapped.
    #[error(
        "DMA unmap of {len:#x} bytes at device address {device_addr:#x} matches no live map; \
         unmap with exactly the device address and length of a map, once"
    )]
    NotMapped {
        /// Device address given.
        device_addr: u64,
        /// Length given.
        len: u64,
    },
    /// The host mapper failed a map.
    #[error("DMA map of {} at guest {gpa:#x}: {source}", Bytes(*len))]
    HostMap {
        /// Guest-physical address of the request.
        gpa: u64,
        /// Length of the request.
        len: u64,
        /// The mapper's error.
        source: MapperError,
    },
    /// The host mapper failed an unmap; the window stays mapped and counted.
    #[error(
        "{source}; the window stays mapped and counted against the budget, and its unmap is \
         retried when room is needed"
    )]
    HostUnmap {
        /// The mapper's error.
        source: MapperError,
    },
    /// The device cannot reach where the map would be: the host picked (and the mapping was
    /// undone), has room, or with identity mapping the guest address is, above its DMA mask.
    #[error(
        "DMA map of {} at guest {gpa:#x} for a device with a {}: {detail}; the map was \
         refused (no device address over the mask is ever returned)",
        Bytes(*len), constraints.mask()
    )]
    AboveMask {
        /// Guest-physical address of the request.
        gpa: u64,
        /// Length of the request.
        len: u64,
        /// What the device needs.
        constraints: MapConstraints,
        /// The device address the host picked, if it picked one.
        device_addr: Option<u64>,
        /// What the host had instead.
        detail: String,
    },
    /// The device address would not have the alignment the device's driver relies on.
    #[error(
        "DMA map of {} at guest {gpa:#x} needs a device address that is a multiple of {}: \
         {detail}; the map was refused",
        Bytes(*len), Bytes(constraints.alignment)
    )]
    Misaligned {
        /// Guest-physical address of the request.
        gpa: u64,
        /// Length of the request.
        len: u64,
        /// What the device needs.
        constraints: MapConstraints,
        /// The device address the host picked, if it picked one.
        device_addr: Option<u64>,
        /// Why it could not be had.
        detail: String,
    },
    /// The host mapper returned an impossible device address.
    #[error(
        "the host mapper broke its contract mapping guest {gpa:#x}+{len:#x}: {what}; this is a \
         bug in the mapper, the request was refused"
    )]
    MapperContract {
        /// Guest-physical start of the mapping.
        gpa: u64,
        /// Its length.
        len: u64,
        /// What was wrong.
        what: String,
    },
}

impl DmaError {
    /// The statistics bucket of this error.
    pub fn reason(&self) -> FailureReason {
        match self {
            Self::ZeroLength { .. } => FailureReason::ZeroLength,
            Self::Overflow { .. } => FailureReason::Overflow,
            Self::OutsideGuestRam { .. } => FailureReason::OutsideGuestRam,
            Self::TooLarge { .. } => FailureReason::TooLarge,
            Self::NoRoom { .. } => FailureReason::NoRoom,
            Self::NoMappingSlots { .. } => FailureReason::NoMappingSlots,
            Self::NotMapped { .. } => FailureReason::NotMapped,
            Self::HostMap { .. } => FailureReason::HostMap,
            Self::HostUnmap { .. } => FailureReason::HostUnmap,
            Self::MapperContract { .. } => FailureReason::MapperContract,
            Self::AboveMask { .. } => FailureReason::AboveMask,
            Self::Misaligned { .. } => FailureReason::Misaligned,
        }
    }
}
