//! The host mapper: whatever makes guest memory reachable by the device's DMA (VFIO type1 on
//! Linux, the DART through PCIDriverKit on macOS), described by its limits so that the window
//! manager above it, and its tests, work the same for every host.

use super::units::Bytes;

/// Who chooses the device (bus) address of a host mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPolicy {
    /// The device address is the guest-physical address (VFIO type1 as used today).
    Identity,
    /// The host returns an address of its choosing and cannot be told where (the DART): the
    /// window manager checks the address against the device's [`MapConstraints`] afterwards
    /// and undoes a mapping that breaks them.
    HostPicks,
    /// The host picks the address within the [`MapConstraints`] it is given
    /// ([`HostMapper::map_within`]): VFIO imitating the DART, the fake mapper.
    HostPicksWithin,
}

impl AddressPolicy {
    /// Whether the host, not the guest address, decides the device address.
    pub fn host_picks(self) -> bool {
        self != Self::Identity
    }
}

/// Where a host mapping of guest `[gpa, gpa+len)` may sit in device-address space: what the
/// device can reach (its DMA mask) and which alignment its driver relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapConstraints {
    /// The highest device address the device reaches (`2^mask_bits - 1`); the whole device
    /// range must lie at or below it.
    pub max_device_addr: u64,
    /// A power of two: the device address must be congruent to the guest address modulo it.
    /// A guest address aligned to it thus gets a device address aligned to it, and offsets
    /// inside a mapping keep their alignment.
    pub alignment: u64,
}

impl MapConstraints {
    /// Anywhere, at any granule.
    pub const NONE: MapConstraints = MapConstraints { max_device_addr: u64::MAX, alignment: 1 };

    /// Below `2^mask_bits` (64 or more: anywhere), any alignment.
    pub fn below_mask(mask_bits: u32) -> Self {
        let max_device_addr = if mask_bits >= 64 { u64::MAX } else { (1u64 << mask_bits) - 1 };
        Self { max_device_addr, alignment: 1 }
    }

    /// The same reach with at least `alignment` (a power of two).
    pub fn aligned(self, alignment: u64) -> Self {
        Self { alignment: self.alignment.max(alignment), ..self }
    }

    /// Whether `[device_addr, device_addr+len)` is within reach.
    pub fn reaches(&self, device_addr: u64, len: u64) -> bool {
        let last = device_addr.checked_add(len.saturating_sub(1));
        last.is_some_and(|last| last <= self.max_device_addr)
    }

    /// Whether `device_addr` keeps the alignment of `gpa` (an alignment that is not a power
    /// of two is never kept).
    pub fn keeps_alignment(&self, gpa: u64, device_addr: u64) -> bool {
        self.alignment.is_power_of_two()
            && device_addr.wrapping_sub(gpa) & (self.alignment - 1) == 0
    }

    /// Whether a mapping of `[gpa, gpa+len)` at `device_addr` meets both constraints.
    pub fn admit(&self, gpa: u64, device_addr: u64, len: u64) -> bool {
        self.reaches(device_addr, len) && self.keeps_alignment(gpa, device_addr)
    }

    /// The reach in words: "40-bit DMA mask" or "device addresses up to 0x…".
    pub fn mask(&self) -> String {
        match self.max_device_addr.checked_add(1) {
            None => "64-bit DMA mask".to_string(),
            Some(end) if end.is_power_of_two() => {
                format!("{}-bit DMA mask", end.trailing_zeros())
            }
            Some(_) => format!("DMA reach up to {:#x}", self.max_device_addr),
        }
    }
}

/// Smallest length the automatic alignment rule applies to.
pub const AUTO_ALIGN_MIN: u64 = 64 << 10;
/// Largest alignment the automatic rule gives (one 2 MiB GPU page).
pub const AUTO_ALIGN_MAX: u64 = 2 << 20;

/// The device-address alignment a map gets without asking: a length that is a power of two
/// of at least 64 KiB, at a guest address aligned to `A = min(len, 2 MiB)`, gets a device
/// address that is a multiple of `A`. NVIDIA's UVM maps 2 MiB chunks (RM 64 KiB pages) with
/// one call and writes large GPU page-table entries without checking the alignment. Otherwise
/// 1 (no alignment beyond the mapper's granule).
pub fn auto_alignment(gpa: u64, len: u64) -> u64 {
    if !len.is_power_of_two() || len < AUTO_ALIGN_MIN {
        return 1;
    }
    let a = len.min(AUTO_ALIGN_MAX);
    if gpa & (a - 1) == 0 {
        a
    } else {
        1
    }
}

/// Which of the [`MapConstraints`] a placement broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    /// The device range would be above the mask.
    Mask,
    /// The device address would not have the alignment.
    Alignment,
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
    /// The host (picking within constraints) has no room that meets them.
    #[error(
        "the host cannot place guest {gpa:#x}+{len:#x} within the device's {} at {} \
         alignment: {reason}",
        constraints.mask(), Bytes(constraints.alignment)
    )]
    Unplaceable {
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// What was asked.
        constraints: MapConstraints,
        /// Which constraint could not be met.
        kind: ConstraintKind,
        /// What the host has instead.
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
    /// Like [`HostMapper::map`], placing the mapping within `constraints` (returning
    /// [`MapperError::Unplaceable`] where it cannot). Mappers that cannot be told where to
    /// map (policy [`AddressPolicy::HostPicks`] or `Identity`) keep this default, which ignores
    /// them: the window manager checks what they return.
    fn map_within(
        &mut self,
        gpa: u64,
        len: u64,
        constraints: &MapConstraints,
    ) -> Result<u64, MapperError> {
        let _ = constraints;
        self.map(gpa, len)
    }
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

    fn map_within(
        &mut self,
        gpa: u64,
        len: u64,
        constraints: &MapConstraints,
    ) -> Result<u64, MapperError> {
        (**self).map_within(gpa, len, constraints)
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
    fn the_automatic_rule_takes_large_aligned_powers_of_two() {
        assert_eq!(auto_alignment(0x4000_0000, 64 << 10), 64 << 10);
        assert_eq!(auto_alignment(0x4001_0000, 64 << 10), 64 << 10);
        assert_eq!(auto_alignment(0x4000_8000, 64 << 10), 1, "guest address not aligned");
        assert_eq!(auto_alignment(0x4000_0000, 32 << 10), 1, "too small");
        assert_eq!(auto_alignment(0x4000_0000, 96 << 10), 1, "not a power of two");
        assert_eq!(auto_alignment(0x4020_0000, 2 << 20), 2 << 20);
        assert_eq!(auto_alignment(0x4020_0000, 8 << 20), 2 << 20, "capped at 2 MiB");
        assert_eq!(auto_alignment(0x4030_0000, 8 << 20), 1, "needs min(len, 2 MiB) alignment");
    }

    #[test]
    fn constraints_say_what_they_mean() {
        let c = MapConstraints::below_mask(40).aligned(64 << 10);
        assert_eq!(c.max_device_addr, (1 << 40) - 1);
        assert!(c.reaches((1 << 40) - 0x1000, 0x1000));
        assert!(!c.reaches((1 << 40) - 0x1000, 0x1001));
        assert!(!c.reaches(u64::MAX, 2), "wrapping is out of reach");
        assert!(c.keeps_alignment(0x4001_0000, 0x10_0001_0000));
        assert!(!c.keeps_alignment(0x4001_0000, 0x10_0000_4000));
        assert!(c.keeps_alignment(0x4001_4000, 0x10_0000_4000), "offsets keep their phase");
        assert!(c.admit(0, 1 << 16, 1 << 16));
        assert_eq!(c.mask(), "40-bit DMA mask");
        assert_eq!(MapConstraints::below_mask(64), MapConstraints::NONE);
        assert_eq!(MapConstraints::NONE.mask(), "64-bit DMA mask");
        let odd = MapConstraints { max_device_addr: 0x1234, alignment: 1 };
        assert_eq!(odd.mask(), "DMA reach up to 0x1234");
        assert!(
            AddressPolicy::HostPicksWithin.host_picks() && !AddressPolicy::Identity.host_picks()
        );
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
