//! The host mapper: whatever makes guest memory reachable by the device's DMA (VFIO type1 on
//! Linux, the DART through PCIDriverKit on macOS), described by its limits so that the window
//! manager above it, and its tests, work the same for every host.

use super::units::Bytes;

/// Who chooses the device (bus) address of a host mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPolicy {
    /// The device address is the guest-physical address (VFIO type1 as used today).
    Identity,
    /// The host returns an address of its choosing (the DART, or VFIO imitating it).
    HostPicks,
}

/// What the host mapper can take at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapperLimits {
    /// Most bytes mapped at the same time.
    pub max_mapped_bytes: u64,
    /// Most live mappings at the same time.
    pub max_mappings: u32,
    /// Granule of guest addresses and lengths (a power of two, e.g. 16 KiB).
    pub alignment: u64,
    /// Who picks device addresses.
    pub policy: AddressPolicy,
}

impl MapperLimits {
    /// The limits of an Apple silicon DART reached through PCIDriverKit.
    pub const APPLE_DART: MapperLimits = MapperLimits {
        max_mapped_bytes: 1536 << 20,
        max_mappings: 65536,
        alignment: 16 << 10,
        policy: AddressPolicy::HostPicks,
    };

    /// Checks that the limits can describe a real mapper.
    pub fn validate(&self) -> Result<(), MapperError> {
        let invalid = |why: String| Err(MapperError::InvalidLimits(why));
        if !self.alignment.is_power_of_two() {
            return invalid(format!(
                "alignment {:#x} is not a power of two; use e.g. 4K, 16K or 64K",
                self.alignment
            ));
        }
        if self.max_mapped_bytes < self.alignment {
            return invalid(format!(
                "the byte limit {} is smaller than one {} granule; raise dma-limit",
                Bytes(self.max_mapped_bytes),
                Bytes(self.alignment)
            ));
        }
        if self.max_mappings == 0 {
            return invalid("the mapping limit is 0; set dma-max-maps to at least 1".into());
        }
        Ok(())
    }
}

/// A host mapper failure.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MapperError {
    /// The limits are unusable.
    #[error("invalid DMA mapper limits: {0}")]
    InvalidLimits(String),
    /// The host did not map a range.
    #[error("the host did not map guest {gpa:#x}+{len:#x} for device DMA: {reason}")]
    MapFailed {
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// What the host said.
        reason: String,
    },
    /// The host did not unmap a range.
    #[error("the host did not unmap device address {device_addr:#x}+{len:#x}: {reason}")]
    UnmapFailed {
        /// Device address of the mapping.
        device_addr: u64,
        /// Length in bytes.
        len: u64,
        /// What the host said.
        reason: String,
    },
}

/// Makes guest-physical ranges reachable by a device's DMA.
///
/// Callers (the window manager) keep every request within [`HostMapper::limits`]: ranges
/// aligned, never more than the byte and mapping limits live, no device-address overlap, and
/// unmaps naming exactly a live mapping. A mapper may still fail for host reasons.
pub trait HostMapper: Send {
    /// The limits the caller must respect.
    fn limits(&self) -> &MapperLimits;
    /// Maps `[gpa, gpa+len)` (already aligned to `limits().alignment` by the caller) and
    /// returns its device address.
    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError>;
    /// Unmaps the whole mapping that `map` returned `device_addr` for, `len` bytes long.
    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError>;
}

impl<M: HostMapper + ?Sized> HostMapper for Box<M> {
    fn limits(&self) -> &MapperLimits {
        (**self).limits()
    }

    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        (**self).map(gpa, len)
    }

    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        (**self).unmap(device_addr, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dart_limits_are_valid() {
        assert_eq!(MapperLimits::APPLE_DART.validate(), Ok(()));
    }

    #[test]
    fn bad_limits_say_what_to_change() {
        let mut limits = MapperLimits::APPLE_DART;
        limits.alignment = 12 << 10;
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains("not a power of two"), "{err}");

        let mut limits = MapperLimits::APPLE_DART;
        limits.max_mapped_bytes = 4096;
        let err = limits.validate().unwrap_err().to_string();
        assert!(err.contains("smaller than one 16 KiB granule"), "{err}");

        let mut limits = MapperLimits::APPLE_DART;
        limits.max_mappings = 0;
        assert!(limits.validate().unwrap_err().to_string().contains("dma-max-maps"));
    }

    #[test]
    fn boxed_mappers_are_mappers() {
        let mut boxed: Box<dyn HostMapper> =
            Box::new(crate::dma::testing::FakeMapper::new(MapperLimits::APPLE_DART));
        let device = boxed.map(0x4000_0000, 0x4000).unwrap();
        assert_ne!(device, 0x4000_0000);
        boxed.unmap(device, 0x4000).unwrap();
        assert_eq!(boxed.limits().alignment, 16 << 10);
    }
}
