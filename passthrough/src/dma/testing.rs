//! A strict in-memory [`HostMapper`] for tests, here and in other crates.
//!
//! It enforces [`MapperLimits`] as a real host would and records every broken rule in
//! [`FakeMapper::violations`] (also refusing the call), so a test only has to assert that the
//! list is empty. With host-picks it hands out device addresses from its own aperture, away
//! from the tests' guest RAM (at 1 GiB and up), so a caller that confuses the two corrupts data
//! in tests. Its aperture has a low part (below 1 GiB) and a high one (4 GiB to 2 TiB), handed
//! out top-down: unconstrained maps land at 1 TiB or above, narrow DMA masks get low addresses.
//! With [`AddressPolicy::HostPicksWithin`] it honours [`MapConstraints`]; with
//! [`AddressPolicy::HostPicks`] it ignores them, as the DART does.

use std::collections::BTreeMap;

use super::host_picks::{AllocatorError, FitPolicy, HostPicksAllocator};
use super::mapper::{AddressPolicy, HostMapper, MapConstraints, MapperError, MapperLimits};
use super::units::{is_aligned, Bytes};

/// Unconstrained device addresses of the fake are at least this (1 TiB, above any test's
/// guest RAM), as long as less than 1 TiB is mapped.
pub const FAKE_APERTURE_BASE: u64 = 1 << 40;
/// The fake's default device-address ranges, `(start, len)`: 16 MiB to 1 GiB (below the
/// tests' guest RAM) and 4 GiB to 2 TiB.
pub const FAKE_APERTURE_RANGES: [(u64, u64); 2] =
    [(16 << 20, (1 << 30) - (16 << 20)), (4 << 30, (2 << 40) - (4 << 30))];

/// One live mapping of the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeMapping {
    /// Guest-physical start.
    pub gpa: u64,
    /// Device address of `gpa`.
    pub device_addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A host mapper that lives in memory and checks everything.
#[derive(Debug)]
pub struct FakeMapper {
    limits: MapperLimits,
    /// Device-address allocator (host-picks only).
    addresses: Option<HostPicksAllocator>,
    /// Live mappings by device address: start → (len, gpa).
    by_device: BTreeMap<u64, (u64, u64)>,
    /// Live mappings by guest address: (gpa, device start) → len.
    by_gpa: BTreeMap<(u64, u64), u64>,
    allow_guest_aliasing: bool,
    live_bytes: u64,
    peak_bytes: u64,
    peak_mappings: usize,
    map_calls: u64,
    unmap_calls: u64,
    /// Maps to let through before failing `fail_maps`.
    pass_maps: u32,
    fail_maps: u32,
    fail_unmaps: u32,
    violations: Vec<String>,
}

impl FakeMapper {
    /// A fake with `limits` and, for host-picks, the default aperture. A guest range may be
    /// mapped twice at once (at two device addresses) only with host-picks, as the DART and
    /// VFIO allow; identity mapping makes that a device-address overlap.
    pub fn new(limits: MapperLimits) -> Self {
        let addresses = HostPicksAllocator::with_ranges(
            &FAKE_APERTURE_RANGES,
            limits.alignment,
            FitPolicy::TopDown,
        )
        .ok();
        Self::build(limits, addresses)
    }

    /// A fake whose host-picked device addresses come from `[base, base+size)`.
    pub fn with_aperture(
        limits: MapperLimits,
        base: u64,
        size: u64,
    ) -> Result<Self, super::host_picks::AllocatorError> {
        let addresses = HostPicksAllocator::new(base, size, limits.alignment, FitPolicy::TopDown)?;
        Ok(Self::build(limits, Some(addresses)))
    }

    fn build(limits: MapperLimits, addresses: Option<HostPicksAllocator>) -> Self {
        let host_picks = limits.policy.host_picks();
        Self {
            limits,
            addresses: if host_picks { addresses } else { None },
            by_device: BTreeMap::new(),
            by_gpa: BTreeMap::new(),
            allow_guest_aliasing: host_picks,
            live_bytes: 0,
            peak_bytes: 0,
            peak_mappings: 0,
            map_calls: 0,
            unmap_calls: 0,
            pass_maps: 0,
            fail_maps: 0,
            fail_unmaps: 0,
            violations: Vec::new(),
        }
    }

    /// Whether the same guest bytes may be live in two mappings at once (host-picks only).
    pub fn set_guest_aliasing(&mut self, allow: bool) {
        self.allow_guest_aliasing = allow && self.limits.policy.host_picks();
    }

    /// Makes the next `n` map calls fail (without mapping), as a host out of resources would.
    pub fn fail_next_maps(&mut self, n: u32) {
        self.fail_maps_after(0, n);
    }

    /// Lets the next `pass` map calls through, then fails `n`.
    pub fn fail_maps_after(&mut self, pass: u32, n: u32) {
        self.pass_maps = pass;
        self.fail_maps = n;
    }

    /// Makes the next `n` unmap calls fail (leaving the mapping in place).
    pub fn fail_next_unmaps(&mut self, n: u32) {
        self.fail_unmaps = n;
    }

    /// Every broken rule so far, in order.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// Live mappings, by device address.
    pub fn live_mappings(&self) -> Vec<FakeMapping> {
        self.by_device
            .iter()
            .map(|(&device_addr, &(len, gpa))| FakeMapping { gpa, device_addr, len })
            .collect()
    }

    /// The guest-physical address a device access to `device_addr` reaches, if mapped.
    pub fn translate(&self, device_addr: u64) -> Option<u64> {
        let (&start, &(len, gpa)) = self.by_device.range(..=device_addr).next_back()?;
        (device_addr - start < len).then(|| gpa + (device_addr - start))
    }

    /// Bytes mapped now.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Mappings live now.
    pub fn live_count(&self) -> usize {
        self.by_device.len()
    }

    /// Most bytes ever mapped at once.
    pub fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    /// Most mappings ever live at once.
    pub fn peak_mappings(&self) -> usize {
        self.peak_mappings
    }

    /// Map calls received (including refused ones).
    pub fn map_calls(&self) -> u64 {
        self.map_calls
    }

    /// Unmap calls received (including refused ones).
    pub fn unmap_calls(&self) -> u64 {
        self.unmap_calls
    }

    fn refuse_map(&mut self, gpa: u64, len: u64, why: String) -> MapperError {
        self.violations.push(format!("map {gpa:#x}+{len:#x}: {why}"));
        MapperError::MapFailed { gpa, len, reason: format!("fake mapper violation: {why}") }
    }

    /// The first broken rule a map of `[gpa, gpa+len)` would commit, if any.
    fn map_violation(&self, gpa: u64, len: u64) -> Option<String> {
        let align = self.limits.alignment;
        if len == 0 || !is_aligned(gpa, align) || !is_aligned(len, align) {
            return Some(format!("not a non-empty multiple of the {} granule", Bytes(align)));
        }
        let Some(end) = gpa.checked_add(len) else {
            return Some("range wraps past 2^64".into());
        };
        if self.by_device.len() >= self.limits.max_mappings as usize {
            return Some(format!("{} mappings are already live", self.by_device.len()));
        }
        if self.live_bytes + len > self.limits.max_mapped_bytes {
            return Some(format!(
                "{} live + {} exceeds the {} limit",
                Bytes(self.live_bytes),
                Bytes(len),
                Bytes(self.limits.max_mapped_bytes)
            ));
        }
        if !self.allow_guest_aliasing {
            // Live ranges are disjoint here, so only the last one starting below `end` can overlap.
            let last = self.by_gpa.range(..(end, 0)).next_back();
            if let Some((&(g, _), &l)) = last.filter(|(&(g, _), &l)| g + l > gpa) {
                return Some(format!("overlaps live guest range {g:#x}+{l:#x}"));
            }
        }
        None
    }

    fn device_overlap(&self, device_addr: u64, len: u64) -> Option<(u64, u64)> {
        let end = device_addr.checked_add(len)?;
        self.by_device
            .range(..end)
            .next_back()
            .filter(|(&start, &(l, _))| start + l > device_addr)
            .map(|(&start, &(l, _))| (start, l))
    }
}

impl HostMapper for FakeMapper {
    fn limits(&self) -> &MapperLimits {
        &self.limits
    }

    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        self.map_within(gpa, len, &MapConstraints::NONE)
    }

    fn map_within(
        &mut self,
        gpa: u64,
        len: u64,
        constraints: &MapConstraints,
    ) -> Result<u64, MapperError> {
        self.map_calls += 1;
        // Only a fake that can be told where to map listens.
        let constraints = match self.limits.policy {
            AddressPolicy::HostPicksWithin => *constraints,
            AddressPolicy::HostPicks | AddressPolicy::Identity => MapConstraints::NONE,
        };
        if let Some(why) = self.map_violation(gpa, len) {
            return Err(self.refuse_map(gpa, len, why));
        }
        if self.pass_maps > 0 {
            self.pass_maps -= 1;
        } else if self.fail_maps > 0 {
            self.fail_maps -= 1;
            return Err(MapperError::MapFailed { gpa, len, reason: "injected failure".into() });
        }
        let device_addr = match self.addresses.as_mut() {
            None => gpa,
            Some(addresses) => match addresses.allocate_within(len, gpa, &constraints) {
                Ok(device_addr) => device_addr,
                Err(e @ AllocatorError::Unplaceable { kind, .. }) => {
                    let reason = e.to_string();
                    return Err(MapperError::Unplaceable { gpa, len, constraints, kind, reason });
                }
                Err(e) => return Err(MapperError::MapFailed { gpa, len, reason: e.to_string() }),
            },
        };
        if let Some((start, l)) = self.device_overlap(device_addr, len) {
            let why = format!("device range overlaps live mapping {start:#x}+{l:#x}");
            return Err(self.refuse_map(gpa, len, why));
        }
        self.by_device.insert(device_addr, (len, gpa));
        self.by_gpa.insert((gpa, device_addr), len);
        self.live_bytes += len;
        self.peak_bytes = self.peak_bytes.max(self.live_bytes);
        self.peak_mappings = self.peak_mappings.max(self.by_device.len());
        Ok(device_addr)
    }

    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        self.unmap_calls += 1;
        let Some(&(live_len, gpa)) = self.by_device.get(&device_addr) else {
            let why = "no live mapping starts there".to_string();
            self.violations.push(format!("unmap {device_addr:#x}+{len:#x}: {why}"));
            return Err(MapperError::UnmapFailed { device_addr, len, reason: why });
        };
        if live_len != len {
            let why = format!("the live mapping there is {live_len:#x} bytes long");
            self.violations.push(format!("unmap {device_addr:#x}+{len:#x}: {why}"));
            return Err(MapperError::UnmapFailed { device_addr, len, reason: why });
        }
        if self.fail_unmaps > 0 {
            self.fail_unmaps -= 1;
            return Err(MapperError::UnmapFailed {
                device_addr,
                len,
                reason: "injected failure".into(),
            });
        }
        if let Some(addresses) = self.addresses.as_mut() {
            if let Err(e) = addresses.free(device_addr, len) {
                self.violations.push(format!("unmap {device_addr:#x}+{len:#x}: {e}"));
            }
        }
        self.by_device.remove(&device_addr);
        self.by_gpa.remove(&(gpa, device_addr));
        self.live_bytes -= len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K16: u64 = 16 << 10;

    fn limits(policy: AddressPolicy) -> MapperLimits {
        MapperLimits { max_mapped_bytes: 4 * K16, max_mappings: 3, alignment: K16, policy }
    }

    #[test]
    fn host_picks_addresses_differ_from_guest_addresses() {
        let mut fake = FakeMapper::new(limits(AddressPolicy::HostPicks));
        let d = fake.map(0x4000_0000, K16).unwrap();
        assert!(d >= FAKE_APERTURE_BASE);
        assert_eq!(fake.translate(d + 5), Some(0x4000_0005));
        assert_eq!(fake.translate(d + K16), None);
        fake.unmap(d, K16).unwrap();
        assert!(fake.violations().is_empty());
    }

    #[test]
    fn identity_returns_the_guest_address() {
        let mut fake = FakeMapper::new(limits(AddressPolicy::Identity));
        assert_eq!(fake.map(0x4000_0000, K16).unwrap(), 0x4000_0000);
        assert!(fake.map(0x4000_0000, K16).is_err(), "identity cannot alias");
        assert_eq!(fake.violations().len(), 1);
    }

    #[test]
    fn limits_are_enforced() {
        let mut fake = FakeMapper::new(limits(AddressPolicy::HostPicks));
        assert!(fake.map(0x1000, K16).is_err(), "misaligned");
        assert!(fake.map(0, 0).is_err(), "empty");
        assert!(fake.map(0, 5 * K16).is_err(), "over bytes");
        for i in 0..3 {
            fake.map(i * K16, K16).unwrap();
        }
        assert!(fake.map(8 * K16, K16).is_err(), "over count");
        assert_eq!(fake.violations().len(), 4);
        assert_eq!(fake.peak_mappings(), 3);
        assert_eq!(fake.peak_bytes(), 3 * K16);
    }

    #[test]
    fn unmaps_must_name_a_live_mapping() {
        let mut fake = FakeMapper::new(limits(AddressPolicy::HostPicks));
        let d = fake.map(0, 2 * K16).unwrap();
        assert!(fake.unmap(d, K16).is_err());
        assert!(fake.unmap(d + K16, K16).is_err());
        fake.unmap(d, 2 * K16).unwrap();
        assert!(fake.unmap(d, 2 * K16).is_err());
        assert_eq!(fake.violations().len(), 3);
    }

    #[test]
    fn injected_failures_change_nothing() {
        let mut fake = FakeMapper::new(limits(AddressPolicy::HostPicks));
        fake.fail_next_maps(1);
        assert!(fake.map(0, K16).is_err());
        let d = fake.map(0, K16).unwrap();
        fake.fail_next_unmaps(1);
        assert!(fake.unmap(d, K16).is_err());
        assert_eq!(fake.live_count(), 1);
        fake.unmap(d, K16).unwrap();
        assert!(fake.violations().is_empty());
        assert_eq!((fake.map_calls(), fake.unmap_calls()), (2, 2));
    }

    #[test]
    fn aliasing_can_be_forbidden() {
        let mut fake = FakeMapper::new(limits(AddressPolicy::HostPicks));
        fake.map(0, 2 * K16).unwrap();
        fake.map(K16, K16).unwrap();
        fake.set_guest_aliasing(false);
        assert!(fake.map(K16, 2 * K16).is_err());
        assert_eq!(fake.violations().len(), 1);
    }
}
