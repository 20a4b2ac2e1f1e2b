//! A device-address (IOVA) allocator over fixed apertures, for mappers that pick device
//! addresses themselves (the VFIO mapper imitating the DART, and the fake mapper in tests).
//!
//! Free space is kept as maximal runs, indexed both by address and by size, so that freeing
//! coalesces with both neighbours in O(log n) and best fit is one ordered lookup. Every
//! allocation is remembered, so a free must name exactly one live allocation. Allocations
//! may be constrained ([`MapConstraints`]): below a device's DMA mask, and congruent to the
//! guest address modulo an alignment.

use std::collections::{BTreeMap, BTreeSet};

use super::mapper::{ConstraintKind, MapConstraints};
use super::units::{is_aligned, Bytes};

/// How a free run is chosen for an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitPolicy {
    /// The lowest-addressed place that fits.
    FirstFit,
    /// The smallest run that fits (lowest address among equals); keeps large runs whole for
    /// large requests.
    BestFit,
    /// The highest place that fits below the request's reach: low addresses stay free for
    /// devices with narrow DMA masks (as Linux's IOVA allocator does).
    TopDown,
}

/// A device-address allocator failure.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AllocatorError {
    /// The aperture is unusable.
    #[error(
        "device-address aperture {base:#x}+{size:#x} with alignment {alignment:#x} is unusable: \
         the alignment must be a power of two, every range must be non-empty, a multiple of it \
         and end below 2^64, and ranges must not overlap"
    )]
    InvalidAperture {
        /// First device address (of the offending range).
        base: u64,
        /// Size in bytes.
        size: u64,
        /// Granule.
        alignment: u64,
    },
    /// A length or address is not a multiple of the granule, or is zero.
    #[error(
        "device-address range {addr:#x}+{len:#x} is not a non-empty multiple of the \
         {alignment:#x} granule; align it before asking"
    )]
    Misaligned {
        /// Address (0 for allocations).
        addr: u64,
        /// Length.
        len: u64,
        /// Granule.
        alignment: u64,
    },
    /// No free run is large enough.
    #[error(
        "no free run of {} in device-address aperture {aperture}: {} free in total, the \
         largest run is {}; give the mapper a larger aperture",
        Bytes(*len), Bytes(*free), Bytes(*largest)
    )]
    Exhausted {
        /// Requested length.
        len: u64,
        /// The aperture's ranges.
        aperture: String,
        /// Free bytes in total.
        free: u64,
        /// Largest free run.
        largest: u64,
    },
    /// Free runs exist, but none meets the constraints.
    #[error(
        "no free place for {} within the {} at {} alignment in device-address aperture \
         {aperture} ({} free in total)",
        Bytes(*len), constraints.mask(), Bytes(constraints.alignment), Bytes(*free)
    )]
    Unplaceable {
        /// Requested length.
        len: u64,
        /// What was asked.
        constraints: MapConstraints,
        /// The constraint that could not be met (without it the allocation would fit).
        kind: ConstraintKind,
        /// The aperture's ranges.
        aperture: String,
        /// Free bytes in total.
        free: u64,
    },
    /// A free that does not match a live allocation.
    #[error(
        "device-address range {addr:#x}+{len:#x} is not a live allocation; free exactly what \
         allocate returned, once"
    )]
    NotAllocated {
        /// Address given.
        addr: u64,
        /// Length given.
        len: u64,
    },
}

/// Allocates aligned device-address ranges from a set of disjoint ranges.
#[derive(Debug, Clone)]
pub struct HostPicksAllocator {
    /// The usable ranges, `(start, len)`, by address.
    ranges: Vec<(u64, u64)>,
    size: u64,
    alignment: u64,
    fit: FitPolicy,
    /// Free runs: start → length.
    free_by_start: BTreeMap<u64, u64>,
    /// Free runs: (length, start).
    free_by_size: BTreeSet<(u64, u64)>,
    /// Live allocations: start → length.
    allocated: BTreeMap<u64, u64>,
    allocated_bytes: u64,
}

impl HostPicksAllocator {
    /// An allocator with the whole aperture `[base, base+size)` free.
    pub fn new(
        base: u64,
        size: u64,
        alignment: u64,
        fit: FitPolicy,
    ) -> Result<Self, AllocatorError> {
        Self::with_ranges(&[(base, size)], alignment, fit)
    }

    /// An allocator over several disjoint ranges `(start, len)`, all free.
    pub fn with_ranges(
        ranges: &[(u64, u64)],
        alignment: u64,
        fit: FitPolicy,
    ) -> Result<Self, AllocatorError> {
        let mut sorted = ranges.to_vec();
        sorted.sort_unstable();
        let bad =
            |&(base, size): &(u64, u64)| AllocatorError::InvalidAperture { base, size, alignment };
        if sorted.is_empty() {
            return Err(bad(&(0, 0)));
        }
        let mut last_end = 0;
        for (i, r) in sorted.iter().enumerate() {
            let (base, size) = *r;
            let usable = alignment.is_power_of_two()
                && size != 0
                && is_aligned(base, alignment)
                && is_aligned(size, alignment)
                && base.checked_add(size).is_some()
                && (i == 0 || base >= last_end);
            if !usable {
                return Err(bad(r));
            }
            last_end = base + size;
        }
        let mut allocator = Self {
            size: sorted.iter().map(|r| r.1).sum(),
            ranges: sorted.clone(),
            alignment,
            fit,
            free_by_start: BTreeMap::new(),
            free_by_size: BTreeSet::new(),
            allocated: BTreeMap::new(),
            allocated_bytes: 0,
        };
        for (base, size) in sorted {
            // Touching ranges become one run, so that runs stay maximal.
            match allocator.free_by_start.range(..base).next_back().map(|(&s, &l)| (s, l)) {
                Some((s, l)) if s + l == base => {
                    allocator.remove_free(s, l);
                    allocator.insert_free(s, l + size);
                }
                _ => allocator.insert_free(base, size),
            }
        }
        Ok(allocator)
    }

    /// Allocates `len` bytes (a non-zero multiple of the granule) and returns the start.
    pub fn allocate(&mut self, len: u64) -> Result<u64, AllocatorError> {
        self.allocate_within(len, 0, &MapConstraints::NONE)
    }

    /// Allocates `len` bytes for guest address `gpa` within `constraints`: the whole range at
    /// or below `max_device_addr`, the start congruent to `gpa` modulo the alignment.
    pub fn allocate_within(
        &mut self,
        len: u64,
        gpa: u64,
        constraints: &MapConstraints,
    ) -> Result<u64, AllocatorError> {
        if len == 0 || !is_aligned(len, self.alignment) {
            return Err(AllocatorError::Misaligned { addr: 0, len, alignment: self.alignment });
        }
        if !constraints.alignment.is_power_of_two() {
            let alignment = constraints.alignment;
            return Err(AllocatorError::Misaligned { addr: 0, len, alignment });
        }
        let Some((run, at)) = self.find(len, gpa, constraints) else {
            return Err(self.why_not(len, gpa, constraints));
        };
        let (start, run_len) = run;
        self.remove_free(start, run_len);
        if at > start {
            self.insert_free(start, at - start);
        }
        let end = start + run_len;
        if end > at + len {
            self.insert_free(at + len, end - at - len);
        }
        self.allocated.insert(at, len);
        self.allocated_bytes += len;
        Ok(at)
    }

    /// The free run `(start, len)` to take and the address in it, if any fits.
    fn find(&self, len: u64, gpa: u64, c: &MapConstraints) -> Option<((u64, u64), u64)> {
        let align = c.alignment.max(self.alignment);
        // The start must be ≡ phase (mod align); the granule part of the phase is 0.
        let phase = gpa & (align - 1) & !(self.alignment - 1);
        let place = |&(s, l): &(u64, u64), top_down: bool| -> Option<u64> {
            let end = s + l;
            // Highest usable end, at most max_device_addr + 1.
            let top = if c.max_device_addr < end { c.max_device_addr + 1 } else { end };
            let highest = top.checked_sub(len)?;
            let at = if top_down {
                highest.checked_sub(highest.wrapping_sub(phase) & (align - 1))?
            } else {
                s.checked_add(phase.wrapping_sub(s) & (align - 1))?
            };
            (at >= s && at <= highest).then_some(at)
        };
        match self.fit {
            // Among the runs large enough (small leftovers of aligned placements are
            // skipped cheaply), the highest place.
            FitPolicy::TopDown => self
                .free_by_size
                .range((len, 0)..)
                .filter(|&&(_, s)| s <= c.max_device_addr)
                .filter_map(|&(l, s)| place(&(s, l), true).map(|at| ((s, l), at)))
                .max_by_key(|&(_, at)| at),
            FitPolicy::BestFit => self
                .free_by_size
                .range((len, 0)..)
                .map(|&(l, s)| (s, l))
                .find_map(|r| place(&r, false).map(|at| (r, at))),
            FitPolicy::FirstFit => self
                .free_by_start
                .iter()
                .map(|(&s, &l)| (s, l))
                .find_map(|r| place(&r, false).map(|at| (r, at))),
        }
    }

    /// Why nothing fits: which constraint is in the way, or plain exhaustion.
    fn why_not(&self, len: u64, gpa: u64, c: &MapConstraints) -> AllocatorError {
        let unplaceable = |kind| AllocatorError::Unplaceable {
            len,
            constraints: *c,
            kind,
            aperture: self.describe(),
            free: self.free_bytes(),
        };
        let anywhere = MapConstraints { max_device_addr: u64::MAX, ..*c };
        if self.find(len, gpa, &anywhere).is_some() {
            return unplaceable(ConstraintKind::Mask);
        }
        if self.find(len, gpa, &MapConstraints { alignment: 1, ..*c }).is_some() {
            return unplaceable(ConstraintKind::Alignment);
        }
        AllocatorError::Exhausted {
            len,
            aperture: self.describe(),
            free: self.free_bytes(),
            largest: self.largest_free(),
        }
    }

    /// The ranges as text: `0x100000..0x40000000, 0x100000000..0x10000000000`.
    fn describe(&self) -> String {
        let parts: Vec<String> =
            self.ranges.iter().map(|&(s, l)| format!("{s:#x}..{:#x}", s + l)).collect();
        parts.join(", ")
    }

    /// Frees exactly one live allocation, merging it with free neighbours.
    pub fn free(&mut self, addr: u64, len: u64) -> Result<(), AllocatorError> {
        if self.allocated.get(&addr) != Some(&len) {
            return Err(AllocatorError::NotAllocated { addr, len });
        }
        self.allocated.remove(&addr);
        self.allocated_bytes -= len;
        let (mut start, mut end) = (addr, addr + len);
        if let Some((&prev, &prev_len)) = self.free_by_start.range(..start).next_back() {
            if prev + prev_len == start {
                self.remove_free(prev, prev_len);
                start = prev;
            }
        }
        if let Some(&next_len) = self.free_by_start.get(&end) {
            self.remove_free(end, next_len);
            end += next_len;
        }
        self.insert_free(start, end - start);
        Ok(())
    }

    /// `(base, size)` spanning the aperture (from its lowest to its highest address; with
    /// several ranges, the gaps between them are never handed out).
    pub fn aperture(&self) -> (u64, u64) {
        let base = self.ranges.first().map_or(0, |r| r.0);
        let end = self.ranges.last().map_or(0, |r| r.0 + r.1);
        (base, end - base)
    }

    /// The usable ranges, `(start, len)`, by address.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Bytes handed out.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated_bytes
    }

    /// Live allocations.
    pub fn allocations(&self) -> usize {
        self.allocated.len()
    }

    /// Bytes free.
    pub fn free_bytes(&self) -> u64 {
        self.size - self.allocated_bytes
    }

    /// Length of the largest free run (what the next allocation can get at most).
    pub fn largest_free(&self) -> u64 {
        self.free_by_size.iter().next_back().map_or(0, |&(len, _)| len)
    }

    /// Number of free runs (1 when nothing is fragmented).
    pub fn free_runs(&self) -> usize {
        self.free_by_start.len()
    }

    fn insert_free(&mut self, start: u64, len: u64) {
        self.free_by_start.insert(start, len);
        self.free_by_size.insert((len, start));
    }

    fn remove_free(&mut self, start: u64, len: u64) {
        self.free_by_start.remove(&start);
        self.free_by_size.remove(&(len, start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dma::tests::XorShift;

    const K16: u64 = 16 << 10;

    #[test]
    fn rejects_bad_apertures() {
        assert!(HostPicksAllocator::new(0x1000, K16, K16, FitPolicy::BestFit).is_err());
        assert!(HostPicksAllocator::new(0, 0, K16, FitPolicy::BestFit).is_err());
        assert!(HostPicksAllocator::new(0, K16, 3, FitPolicy::BestFit).is_err());
        assert!(
            HostPicksAllocator::new(u64::MAX - K16 + 1, 2 * K16, K16, FitPolicy::BestFit).is_err()
        );
    }

    #[test]
    fn allocates_aligned_and_coalesces_on_free() {
        let mut a = HostPicksAllocator::new(0x10_0000, 16 * K16, K16, FitPolicy::FirstFit).unwrap();
        let x = a.allocate(K16).unwrap();
        let y = a.allocate(2 * K16).unwrap();
        let z = a.allocate(K16).unwrap();
        assert_eq!((x, y, z), (0x10_0000, 0x10_0000 + K16, 0x10_0000 + 3 * K16));
        assert_eq!(
            a.allocate(3),
            Err(AllocatorError::Misaligned { addr: 0, len: 3, alignment: K16 })
        );
        a.free(y, 2 * K16).unwrap();
        assert_eq!(a.free_runs(), 2);
        a.free(x, K16).unwrap();
        assert_eq!(a.free_runs(), 2, "x merges with the hole y left");
        a.free(z, K16).unwrap();
        assert_eq!(a.free_runs(), 1);
        assert_eq!(a.largest_free(), 16 * K16);
        assert_eq!(a.allocated_bytes(), 0);
    }

    #[test]
    fn free_must_match_an_allocation() {
        let mut a = HostPicksAllocator::new(0, 16 * K16, K16, FitPolicy::BestFit).unwrap();
        let x = a.allocate(2 * K16).unwrap();
        assert!(a.free(x, K16).is_err(), "partial free");
        assert!(a.free(x + K16, K16).is_err(), "free inside");
        a.free(x, 2 * K16).unwrap();
        assert_eq!(a.free(x, 2 * K16), Err(AllocatorError::NotAllocated { addr: x, len: 2 * K16 }));
    }

    #[test]
    fn best_fit_keeps_large_runs_whole() {
        let mut a = HostPicksAllocator::new(0, 16 * K16, K16, FitPolicy::BestFit).unwrap();
        let blocks: Vec<u64> = (0..16).map(|_| a.allocate(K16).unwrap()).collect();
        // Holes of 1 granule at 0 and of 4 granules at 8..12.
        a.free(blocks[0], K16).unwrap();
        for b in &blocks[8..12] {
            a.free(*b, K16).unwrap();
        }
        assert_eq!(a.allocate(K16).unwrap(), 0, "the 1-granule hole fits exactly");
        assert_eq!(a.allocate(4 * K16).unwrap(), 8 * K16);
    }

    #[test]
    fn exhaustion_reports_the_largest_run() {
        let mut a = HostPicksAllocator::new(0, 4 * K16, K16, FitPolicy::BestFit).unwrap();
        let x = a.allocate(K16).unwrap();
        let _y = a.allocate(K16).unwrap();
        a.free(x, K16).unwrap();
        let err = a.allocate(3 * K16).unwrap_err();
        assert_eq!(
            err,
            AllocatorError::Exhausted {
                len: 3 * K16,
                aperture: "0x0..0x10000".into(),
                free: 3 * K16,
                largest: 2 * K16
            }
        );
        assert!(err.to_string().contains("the largest run is 32 KiB"), "{err}");
    }

    #[test]
    fn several_ranges_never_hand_out_the_gaps() {
        let ranges = [(0x10_0000, 4 * K16), (0x100_0000, 4 * K16), (0x10_0000 + 4 * K16, K16)];
        let mut a = HostPicksAllocator::with_ranges(&ranges, K16, FitPolicy::FirstFit).unwrap();
        assert_eq!(a.free_runs(), 2, "touching ranges merge");
        assert_eq!(a.aperture(), (0x10_0000, 0x100_0000 + 4 * K16 - 0x10_0000));
        let x = a.allocate(5 * K16).unwrap();
        assert_eq!(x, 0x10_0000);
        assert_eq!(a.allocate(4 * K16).unwrap(), 0x100_0000);
        assert!(matches!(a.allocate(K16), Err(AllocatorError::Exhausted { .. })));
        assert!(HostPicksAllocator::with_ranges(
            &[(0, 2 * K16), (K16, K16)],
            K16,
            FitPolicy::TopDown
        )
        .is_err());
        assert!(HostPicksAllocator::with_ranges(&[], K16, FitPolicy::TopDown).is_err());
    }

    #[test]
    fn top_down_keeps_low_addresses_free() {
        let ranges = [(1 << 20, (1 << 30) - (1 << 20)), (4 << 30, (1 << 40) - (4 << 30))];
        let mut a = HostPicksAllocator::with_ranges(&ranges, K16, FitPolicy::TopDown).unwrap();
        let x = a.allocate(K16).unwrap();
        assert_eq!(x, (1 << 40) - K16);
        let c32 = MapConstraints::below_mask(32);
        assert_eq!(a.allocate_within(K16, 0, &c32).unwrap(), (1 << 30) - K16);
        let c40 = MapConstraints::below_mask(40).aligned(2 << 20);
        assert_eq!(a.allocate_within(2 << 20, 0, &c40).unwrap(), (1 << 40) - (4 << 20));
    }

    #[test]
    fn placements_keep_the_guest_offset_modulo_the_alignment() {
        for fit in [FitPolicy::FirstFit, FitPolicy::BestFit, FitPolicy::TopDown] {
            let mut a = HostPicksAllocator::new(0x10_0000 + K16, 1 << 30, K16, fit).unwrap();
            let c = MapConstraints::NONE.aligned(256 << 10);
            for gpa in [0x4000_0000, 0x4000_4000, 0x4003_c000] {
                let at = a.allocate_within(3 * K16, gpa, &c).unwrap();
                assert_eq!(at % (256 << 10), gpa % (256 << 10), "{fit:?} {gpa:#x} at {at:#x}");
            }
        }
    }

    #[test]
    fn failures_say_which_constraint_is_in_the_way() {
        let mut a = HostPicksAllocator::new(1 << 32, 1 << 30, K16, FitPolicy::TopDown).unwrap();
        let err = a.allocate_within(K16, 0, &MapConstraints::below_mask(32)).unwrap_err();
        assert!(matches!(err, AllocatorError::Unplaceable { kind: ConstraintKind::Mask, .. }));
        assert!(err.to_string().contains("32-bit DMA mask"), "{err}");
        // Fill all but one granule-sized hole at an odd place: 64 KiB alignment cannot fit.
        let mut b = HostPicksAllocator::new(0, 8 * K16, K16, FitPolicy::FirstFit).unwrap();
        let blocks: Vec<u64> = (0..8).map(|_| b.allocate(K16).unwrap()).collect();
        b.free(blocks[5], K16).unwrap();
        b.free(blocks[6], K16).unwrap();
        let c = MapConstraints::NONE.aligned(4 * K16);
        let err = b.allocate_within(2 * K16, 0, &c).unwrap_err();
        assert!(matches!(err, AllocatorError::Unplaceable { kind: ConstraintKind::Alignment, .. }));
        assert!(matches!(b.allocate(4 * K16), Err(AllocatorError::Exhausted { .. })));
        assert_eq!(b.allocate_within(2 * K16, 0, &MapConstraints::NONE).unwrap(), 5 * K16);
    }

    /// Random constrained allocations and frees: every placement meets its constraints, and
    /// a refusal is right (nothing in the free runs would have fit).
    #[test]
    fn random_constrained_allocations_meet_their_constraints() {
        for seed in 1..=4u64 {
            let ranges = [(1 << 20, 255 << 20), (1 << 30, 3 << 30)];
            let mut a = HostPicksAllocator::with_ranges(&ranges, K16, FitPolicy::TopDown).unwrap();
            let mut rng = XorShift::new(seed);
            let mut live: Vec<(u64, u64)> = Vec::new();
            for _ in 0..5_000 {
                if rng.below(3) != 0 {
                    let len = K16 << rng.below(8);
                    let c = MapConstraints::below_mask(26 + rng.below(10) as u32)
                        .aligned(1 << (12 + rng.below(10)));
                    let gpa = rng.below(1 << 30) & !(K16 - 1);
                    match a.allocate_within(len, gpa, &c) {
                        Ok(at) => {
                            assert!(c.admit(gpa, at, len), "{at:#x}+{len:#x} for {gpa:#x} {c:x?}");
                            assert!(ranges.iter().any(|&(s, l)| at >= s && at + len <= s + l));
                            live.push((at, len));
                        }
                        Err(
                            AllocatorError::Unplaceable { .. } | AllocatorError::Exhausted { .. },
                        ) => {
                            let free: Vec<(u64, u64)> =
                                a.free_by_start.iter().map(|(&s, &l)| (s, l)).collect();
                            // The lowest place in a run congruent to the guest address
                            // fits if any does.
                            let p = c.alignment.max(K16);
                            for (s, l) in free {
                                let at = s + ((gpa % p + p - s % p) % p);
                                assert!(
                                    at + len > s + l || !c.admit(gpa, at, len),
                                    "{at:#x} would have fit {len:#x} {c:x?}"
                                );
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                } else if !live.is_empty() {
                    let (at, len) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    a.free(at, len).unwrap();
                }
            }
            for (at, len) in live {
                a.free(at, len).unwrap();
            }
            assert_eq!(a.free_runs(), 2);
        }
    }

    /// With an aperture four times the live total, mixed-size allocations never fail over a
    /// long random run, and the free runs stay few: best fit plus coalescing keeps the
    /// device-address space from fragmenting.
    #[test]
    fn random_mixed_sizes_never_exhaust_a_4x_aperture() {
        for seed in 1..=8u64 {
            let budget = 64 << 20;
            let mut a =
                HostPicksAllocator::new(1 << 40, 4 * budget, K16, FitPolicy::BestFit).unwrap();
            let mut rng = XorShift::new(seed);
            let mut live: Vec<(u64, u64)> = Vec::new();
            let mut live_bytes = 0;
            let mut max_runs = 0;
            for _ in 0..20_000 {
                let len = match rng.below(10) {
                    0..=6 => K16 * (1 + rng.below(16)),
                    7 | 8 => (256 << 10) * (1 + rng.below(8)),
                    _ => (1 << 20) * (1 + rng.below(8)),
                };
                if live_bytes + len <= budget && rng.below(2) == 0 {
                    let addr = a.allocate(len).unwrap();
                    assert!(addr >= 1 << 40 && addr + len <= (1 << 40) + 4 * budget);
                    live.push((addr, len));
                    live_bytes += len;
                } else if !live.is_empty() {
                    let (addr, len) = live.swap_remove(rng.below(live.len() as u64) as usize);
                    a.free(addr, len).unwrap();
                    live_bytes -= len;
                }
                assert_eq!(a.allocated_bytes(), live_bytes);
                max_runs = max_runs.max(a.free_runs());
            }
            for (addr, len) in live.drain(..) {
                a.free(addr, len).unwrap();
            }
            assert_eq!(a.free_runs(), 1, "seed {seed}: everything coalesces back");
            assert!(max_runs < 2_000, "seed {seed}: {max_runs} free runs");
        }
    }
}
