//! The guest RAM regions DMA may target: every request must lie inside one of them, and
//! coalescing windows are clipped to them so the host never maps anything that is not RAM.

use std::fmt;

use super::units::{is_aligned, Bytes};

/// One region of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestRamRange {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl GuestRamRange {
    /// The end (exclusive); regions are checked not to wrap.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// An unusable guest RAM layout.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum GuestRamError {
    /// No regions.
    #[error("no guest RAM regions were given to the DMA window manager; pass the VM's memory map")]
    Empty,
    /// Empty, wrapping or misaligned region.
    #[error(
        "guest RAM region {start:#x}+{len:#x} cannot be mapped for DMA: it must be non-empty, \
         end below 2^64 and start and end on {} boundaries (the DMA mapper's granule); place \
         guest RAM on such boundaries",
        Bytes(*alignment)
    )]
    BadRegion {
        /// Start.
        start: u64,
        /// Length.
        len: u64,
        /// Required alignment.
        alignment: u64,
    },
    /// Two regions overlap.
    #[error("guest RAM regions {0:#x} and {1:#x} overlap; give each guest byte to one region")]
    Overlap(u64, u64),
}

/// Guest RAM, as sorted disjoint regions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestRam {
    ranges: Vec<GuestRamRange>,
}

impl GuestRam {
    /// Checks and sorts `ranges`; each must be aligned to `alignment` (a power of two).
    pub fn new(ranges: &[GuestRamRange], alignment: u64) -> Result<Self, GuestRamError> {
        if ranges.is_empty() {
            return Err(GuestRamError::Empty);
        }
        let mut sorted = ranges.to_vec();
        sorted.sort_by_key(|r| r.start);
        for r in &sorted {
            let ok = r.len != 0
                && r.start.checked_add(r.len).is_some()
                && is_aligned(r.start, alignment)
                && is_aligned(r.len, alignment);
            if !ok {
                return Err(GuestRamError::BadRegion { start: r.start, len: r.len, alignment });
            }
        }
        for pair in sorted.windows(2) {
            if pair[0].end() > pair[1].start {
                return Err(GuestRamError::Overlap(pair[0].start, pair[1].start));
            }
        }
        Ok(Self { ranges: sorted })
    }

    /// The region holding all of `[start, end)`, if one does.
    pub fn containing(&self, start: u64, end: u64) -> Option<GuestRamRange> {
        let index = self.ranges.partition_point(|r| r.start <= start).checked_sub(1)?;
        let range = self.ranges[index];
        (end <= range.end()).then_some(range)
    }

    /// The regions, sorted by address.
    pub fn ranges(&self) -> &[GuestRamRange] {
        &self.ranges
    }
}

impl fmt::Display for GuestRam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.ranges.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{:#x}..{:#x}", r.start, r.end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K16: u64 = 16 << 10;

    fn range(start: u64, len: u64) -> GuestRamRange {
        GuestRamRange { start, len }
    }

    #[test]
    fn finds_the_region_holding_a_range() {
        let ram = GuestRam::new(&[range(0x8000_0000, 1 << 30), range(0x4000_0000, 1 << 20)], K16)
            .unwrap();
        assert_eq!(ram.ranges()[0].start, 0x4000_0000);
        assert_eq!(ram.containing(0x4000_0000, 0x4010_0000), Some(range(0x4000_0000, 1 << 20)));
        assert_eq!(ram.containing(0x400f_f000, 0x4010_0001), None);
        assert_eq!(ram.containing(0x3fff_f000, 0x4000_1000), None);
        assert_eq!(ram.containing(0x8000_1000, 0x8000_2000).map(|r| r.start), Some(0x8000_0000));
        assert_eq!(ram.containing(0xc000_0000, 0xc000_1000), None);
        assert_eq!(ram.to_string(), "0x40000000..0x40100000, 0x80000000..0xc0000000");
    }

    #[test]
    fn rejects_bad_layouts() {
        assert_eq!(GuestRam::new(&[], K16), Err(GuestRamError::Empty));
        assert!(GuestRam::new(&[range(0x1000, K16)], K16).is_err());
        assert!(GuestRam::new(&[range(0, 0)], K16).is_err());
        assert!(GuestRam::new(&[range(u64::MAX - K16 + 1, 2 * K16)], K16).is_err());
        assert_eq!(
            GuestRam::new(&[range(0, 2 * K16), range(K16, K16)], K16),
            Err(GuestRamError::Overlap(0, K16))
        );
    }
}
