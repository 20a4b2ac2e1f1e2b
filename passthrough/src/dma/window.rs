//! The window manager: turns the guest's "map guest-physical range" and "unmap" requests into
//! host mappings that fit the host mapper's limits. See the `dma` module for the design.

use std::collections::{BTreeMap, BTreeSet};

use super::config::{ConfigError, WindowConfig};
use super::extent::{Extent, ExtentId, WindowInfo};
use super::guest_ram::{GuestRam, GuestRamRange};
use super::lru::EvictionOrder;
use super::mapper::{AddressPolicy, HostMapper, MapperError, MapperLimits};
use super::runs::CurrentRuns;
use super::stats::{DmaStats, FailureReason};
use super::units::{align_down, align_up, Bytes};

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
        }
    }
}

/// A guest range `[start, end)`.
type Span = (u64, u64);

/// What a map needs done at the host.
#[derive(Debug, Default)]
struct MapPlan {
    /// Existing extents the request will use.
    reuse: Vec<ExtentId>,
    /// Cached extents in the way, unmapped first.
    evict: Vec<ExtentId>,
    /// Guest ranges to map, one host mapping each.
    new: Vec<Span>,
}

impl MapPlan {
    fn new_bytes(&self) -> u64 {
        self.new.iter().map(|(s, e)| e - s).sum()
    }
}

/// Maps guest DMA requests onto a [`HostMapper`] within its limits, coalescing small requests
/// into shared windows, caching released windows, and evicting them least recently released
/// first when room is needed.
#[derive(Debug)]
pub struct WindowManager<M: HostMapper> {
    mapper: M,
    limits: MapperLimits,
    config: WindowConfig,
    ram: GuestRam,
    extents: BTreeMap<ExtentId, Extent>,
    next_id: ExtentId,
    /// Which extent serves each guest address.
    runs: CurrentRuns,
    /// Extents by device address.
    by_device: BTreeMap<u64, ExtentId>,
    /// Extents with no users, in eviction order.
    cache: EvictionOrder,
    /// Live requests by (device address, length), the key the guest unmaps with: the
    /// extents each identical live request uses (one with host-picks).
    requests: BTreeMap<(u64, u64), Vec<Vec<ExtentId>>>,
    stats: DmaStats,
}

impl<M: HostMapper> WindowManager<M> {
    /// A manager for DMA into `ram` through `mapper`. Guest RAM regions must be aligned to the
    /// mapper's alignment.
    pub fn new(
        mapper: M,
        config: WindowConfig,
        ram: &[GuestRamRange],
    ) -> Result<Self, ConfigError> {
        let limits = *mapper.limits();
        config.validate(&limits)?;
        let ram = GuestRam::new(ram, limits.alignment)?;
        let stats = DmaStats {
            budget_bytes: limits.max_mapped_bytes,
            budget_mappings: u64::from(limits.max_mappings),
            ..DmaStats::default()
        };
        Ok(Self {
            mapper,
            limits,
            config,
            ram,
            extents: BTreeMap::new(),
            next_id: 0,
            runs: CurrentRuns::default(),
            by_device: BTreeMap::new(),
            cache: EvictionOrder::default(),
            requests: BTreeMap::new(),
            stats,
        })
    }

    /// Makes `[gpa, gpa+len)` reachable by the device and returns the device address of `gpa`
    /// (the guest's `dma_addr_t`); the range is device-contiguous from there. Undo with
    /// [`WindowManager::unmap`] with that address and the same `len`.
    pub fn map(&mut self, gpa: u64, len: u64) -> Result<u64, DmaError> {
        self.stats.map_requests += 1;
        let result = self.try_map(gpa, len);
        if let Err(e) = &result {
            self.stats.failures.count(e.reason());
        }
        result
    }

    /// Ends one map: `device_addr` and `len` must be exactly what a live map returned and was
    /// given (Linux's `dma_unmap_*` arguments). The windows it used are cached, or unmapped if
    /// caching is off or a newer window took them over. An error other than `NotMapped`
    /// reports host trouble; the request is released either way.
    pub fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), DmaError> {
        self.stats.unmap_requests += 1;
        let result = self.try_unmap(device_addr, len);
        if let Err(e) = &result {
            self.stats.failures.count(e.reason());
        }
        result
    }

    /// Unmaps every cached window from the host. Returns the first host error; windows whose
    /// unmap failed stay cached.
    pub fn flush_cache(&mut self) -> Result<(), DmaError> {
        let cached: Vec<ExtentId> = self.cache.iter().collect();
        let mut first_error = None;
        for id in cached {
            if let Err(e) = self.unmap_extent(id) {
                self.stats.failures.count(e.reason());
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Drops every live request and unmaps everything (device reset, driver unload).
    pub fn reset(&mut self) -> Result<(), DmaError> {
        let requests = std::mem::take(&mut self.requests);
        self.stats.live_requests = 0;
        let mut first_error = None;
        for uses in requests.values().flatten() {
            for &id in uses {
                if let Err(e) = self.release(id) {
                    self.stats.failures.count(e.reason());
                    first_error.get_or_insert(e);
                }
            }
        }
        let flushed = self.flush_cache();
        first_error.map_or(flushed, Err)
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> DmaStats {
        self.stats.clone()
    }

    /// The mapper's limits.
    pub fn limits(&self) -> &MapperLimits {
        &self.limits
    }

    /// The settings.
    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    /// Guest RAM as given.
    pub fn guest_ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The host mapper.
    pub fn mapper(&self) -> &M {
        &self.mapper
    }

    /// The host mapper, for tests and diagnostics (e.g. injecting failures into a fake); do
    /// not map or unmap through it behind the manager's back.
    pub fn mapper_mut(&mut self) -> &mut M {
        &mut self.mapper
    }

    /// The guest-physical address a device access to `device_addr` reaches, if mapped.
    pub fn translate(&self, device_addr: u64) -> Option<u64> {
        let (_, id) = self.by_device.range(..=device_addr).next_back()?;
        let e = self.extents.get(id)?;
        (device_addr - e.device_addr < e.len).then(|| e.gpa + (device_addr - e.device_addr))
    }

    /// Every host mapping, by guest address.
    pub fn windows(&self) -> Vec<WindowInfo> {
        let mut all: Vec<WindowInfo> = self.extents.values().map(WindowInfo::from).collect();
        all.sort_by_key(|w| (w.gpa, w.device_addr));
        all
    }

    /// Cached host mappings, next to be evicted first.
    pub fn cached_windows(&self) -> Vec<WindowInfo> {
        self.cache.iter().filter_map(|id| self.extents.get(&id)).map(WindowInfo::from).collect()
    }

    fn try_map(&mut self, gpa: u64, len: u64) -> Result<u64, DmaError> {
        let (pages, region) = self.check_range(gpa, len)?;
        if let Some(reuse) = self.hit(pages) {
            let was_cached = reuse.iter().any(|id| self.cache.contains(*id));
            if was_cached {
                self.stats.cache_hits += 1;
            } else {
                self.stats.shared_hits += 1;
            }
            return Ok(self.pin_request(gpa, len, reuse));
        }
        let window = self.window_around(gpa, len, pages, region);
        let wide = self.plan(pages, window);
        let plan = match self.check_budget(gpa, len, &wide) {
            Ok(()) => wide,
            // Coalescing must never be why a map fails: retry with just the pages.
            Err(_) if window != pages => {
                let narrow = self.plan(pages, pages);
                self.check_budget(gpa, len, &narrow)?;
                narrow
            }
            Err(e) => return Err(e),
        };
        self.make_room(gpa, len, &plan)?;
        let mapped = self.map_new(gpa, len, &plan.new)?;
        let mut uses = plan.reuse;
        uses.extend(mapped);
        Ok(self.pin_request(gpa, len, uses))
    }

    /// Checks a request against guest RAM; returns its granule-aligned pages and its region.
    fn check_range(&self, gpa: u64, len: u64) -> Result<(Span, GuestRamRange), DmaError> {
        if len == 0 {
            return Err(DmaError::ZeroLength { gpa });
        }
        let end = gpa.checked_add(len).ok_or(DmaError::Overflow { gpa, len })?;
        let region = self.ram.containing(gpa, end).ok_or_else(|| DmaError::OutsideGuestRam {
            gpa,
            len,
            ram: self.ram.to_string(),
        })?;
        // Regions are aligned, so the pages stay inside the region.
        let a = self.limits.alignment;
        let pages = (align_down(gpa, a), align_up(end, a).unwrap_or(region.end()));
        Ok((pages, region))
    }

    /// The extents already serving all of `pages`, if no host call is needed.
    fn hit(&self, pages: Span) -> Option<Vec<ExtentId>> {
        match self.limits.policy {
            AddressPolicy::HostPicks => self.runs.sole_extent(pages.0, pages.1).map(|id| vec![id]),
            AddressPolicy::Identity => {
                if !self.runs.gaps(pages.0, pages.1).is_empty() {
                    return None;
                }
                let mut ids: Vec<ExtentId> =
                    self.runs.overlapping(pages.0, pages.1).iter().map(|r| r.extent).collect();
                ids.sort_unstable();
                ids.dedup();
                Some(ids)
            }
        }
    }

    /// The range a new mapping for the request should cover: the aligned window(s) around a
    /// small request, clipped to its RAM region; exactly the pages of a large one.
    fn window_around(&self, gpa: u64, len: u64, pages: Span, region: GuestRamRange) -> Span {
        let w = self.config.window_size;
        if pages.1 - pages.0 >= w {
            return pages;
        }
        let end = gpa + len;
        let start = align_down(gpa, w).max(region.start);
        let end = align_up(end, w).unwrap_or(u64::MAX).min(region.end());
        (start, end)
    }

    /// Plans mapping `pages` inside `window`. The window shrinks away from extents that do
    /// not touch the pages; extents that do are reused (identity), or evicted if cached and
    /// shadowed if pinned (host-picks, where the request needs one device-contiguous mapping).
    fn plan(&self, pages: Span, window: Span) -> MapPlan {
        let (mut lo, mut hi) = window;
        let mut conflicts: Vec<ExtentId> = Vec::new();
        for run in self.runs.overlapping(window.0, window.1) {
            if run.end <= pages.0 {
                lo = lo.max(run.end);
            } else if run.start >= pages.1 {
                hi = hi.min(run.start);
            } else if !conflicts.contains(&run.extent) {
                conflicts.push(run.extent);
            }
        }
        match self.limits.policy {
            AddressPolicy::HostPicks => MapPlan {
                reuse: Vec::new(),
                evict: conflicts.into_iter().filter(|id| self.cache.contains(*id)).collect(),
                new: vec![(lo, hi)],
            },
            AddressPolicy::Identity => {
                MapPlan { new: self.runs.gaps(lo, hi), reuse: conflicts, evict: Vec::new() }
            }
        }
    }

    /// Refuses a plan that cannot fit even after evicting every cached extent it does not use.
    fn check_budget(&self, gpa: u64, len: u64, plan: &MapPlan) -> Result<(), DmaError> {
        let budget = self.limits.max_mapped_bytes;
        let max = u64::from(self.limits.max_mappings);
        let needed = plan.new_bytes();
        if needed > budget {
            return Err(DmaError::TooLarge { gpa, len, needed, budget });
        }
        let (mut kept_bytes, mut kept_maps) = (self.stats.pinned_bytes, self.stats.pinned_mappings);
        for id in plan.reuse.iter().filter(|id| self.cache.contains(**id)) {
            if let Some(e) = self.extents.get(id) {
                kept_bytes += e.len;
                kept_maps += 1;
            }
        }
        if kept_bytes + needed > budget {
            let available = budget.saturating_sub(kept_bytes);
            return Err(DmaError::NoRoom { gpa, len, needed, available, budget, pinned: kept_bytes });
        }
        let needed = plan.new.len() as u64;
        if kept_maps + needed > max {
            let available = max.saturating_sub(kept_maps);
            return Err(DmaError::NoMappingSlots { gpa, len, needed, available, max, pinned: kept_maps });
        }
        Ok(())
    }

    /// Unmaps the cached extents in the way, then least recently released ones until the
    /// plan fits.
    fn make_room(&mut self, gpa: u64, len: u64, plan: &MapPlan) -> Result<(), DmaError> {
        for &id in &plan.evict {
            self.unmap_extent(id)?;
            self.stats.evictions += 1;
        }
        let keep: BTreeSet<ExtentId> = plan.reuse.iter().copied().collect();
        let (bytes, maps) = (plan.new_bytes(), plan.new.len() as u64);
        while self.stats.live_bytes + bytes > self.limits.max_mapped_bytes
            || self.stats.live_mappings + maps > u64::from(self.limits.max_mappings)
        {
            let Some(victim) = self.cache.iter().find(|id| !keep.contains(id)) else {
                // check_budget said it fits; if it does not, report it as it stands now.
                self.check_budget(gpa, len, plan)?;
                return Err(DmaError::MapperContract {
                    gpa,
                    len,
                    what: "the window manager's budget accounting drifted".into(),
                });
            };
            self.unmap_extent(victim)?;
            self.stats.evictions += 1;
        }
        Ok(())
    }

    /// Maps each new range. If one fails, the ones already mapped are kept as cached windows.
    fn map_new(&mut self, gpa: u64, len: u64, new: &[Span]) -> Result<Vec<ExtentId>, DmaError> {
        let mut mapped = Vec::with_capacity(new.len());
        for &(start, end) in new {
            let result = self.map_extent(start, end);
            match result {
                Ok(id) => mapped.push(id),
                Err(e) => {
                    for id in mapped {
                        // A failure here is already counted and leaves the window cached.
                        let _ = self.settle_released(id);
                    }
                    return Err(match e {
                        DmaError::HostMap { source, .. } => DmaError::HostMap { gpa, len, source },
                        other => other,
                    });
                }
            }
        }
        Ok(mapped)
    }

    /// Maps one extent at the host and starts tracking it (with no users yet).
    fn map_extent(&mut self, start: u64, end: u64) -> Result<ExtentId, DmaError> {
        let len = end - start;
        self.stats.host_map_calls += 1;
        let device_addr = self
            .mapper
            .map(start, len)
            .map_err(|source| DmaError::HostMap { gpa: start, len, source })?;
        if let Some(what) = self.contract_breach(start, len, device_addr) {
            self.stats.host_unmap_calls += 1;
            // Best effort: the mapping is unusable either way.
            let _ = self.mapper.unmap(device_addr, len);
            return Err(DmaError::MapperContract { gpa: start, len, what });
        }
        let id = self.next_id;
        self.next_id += 1;
        for loser in self.runs.insert(start, end, id) {
            if let Some(e) = self.extents.get_mut(&loser) {
                if !e.shadowed {
                    e.shadowed = true;
                    self.stats.shadowed += 1;
                }
                if e.users == 0 {
                    // Not expected (cached extents in the way are evicted first), but a
                    // cached shadowed extent must go before any other.
                    self.runs.remove_extent(e.gpa, e.gpa_end(), loser);
                    self.cache.push_doomed(loser);
                }
            }
        }
        self.extents.insert(id, Extent { gpa: start, len, device_addr, users: 0, shadowed: false });
        self.by_device.insert(device_addr, id);
        self.stats.live_bytes += len;
        self.stats.live_mappings += 1;
        self.stats.note_peaks();
        Ok(id)
    }

    /// What is impossible about a device address the mapper returned, if anything.
    fn contract_breach(&self, gpa: u64, len: u64, device_addr: u64) -> Option<String> {
        let Some(end) = device_addr.checked_add(len) else {
            return Some(format!("device address {device_addr:#x} + {len:#x} wraps"));
        };
        if self.limits.policy == AddressPolicy::Identity && device_addr != gpa {
            return Some(format!("identity mapper returned device address {device_addr:#x}"));
        }
        let (&start, id) = self.by_device.range(..end).next_back()?;
        let e = self.extents.get(id)?;
        (start + e.len > device_addr).then(|| {
            format!(
                "device address {device_addr:#x} overlaps the live mapping at {start:#x}+{:#x}",
                e.len
            )
        })
    }

    /// Adds one user to each extent and records the request; returns its device address.
    fn pin_request(&mut self, gpa: u64, len: u64, extents: Vec<ExtentId>) -> u64 {
        let mut device_addr = gpa;
        for id in &extents {
            self.cache.remove(*id);
            let Some(e) = self.extents.get_mut(id) else { continue };
            if e.users == 0 {
                self.stats.pinned_bytes += e.len;
                self.stats.pinned_mappings += 1;
            }
            e.users += 1;
            if self.limits.policy == AddressPolicy::HostPicks {
                device_addr = e.device_addr_of(gpa);
            }
        }
        self.requests.entry((device_addr, len)).or_default().push(extents);
        self.stats.live_requests += 1;
        self.stats.note_peaks();
        device_addr
    }

    fn try_unmap(&mut self, device_addr: u64, len: u64) -> Result<(), DmaError> {
        let key = (device_addr, len);
        let Some(live) = self.requests.get_mut(&key) else {
            return Err(DmaError::NotMapped { device_addr, len });
        };
        // Identical requests may use different extent sets; releasing any one is right.
        let extents = live.pop().unwrap_or_default();
        if live.is_empty() {
            self.requests.remove(&key);
        }
        self.stats.live_requests -= 1;
        let mut first_error = None;
        for id in extents {
            if let Err(e) = self.release(id) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes one user from an extent; the last one leaving caches or unmaps it.
    fn release(&mut self, id: ExtentId) -> Result<(), DmaError> {
        let Some(e) = self.extents.get_mut(&id) else { return Ok(()) };
        e.users -= 1;
        if e.users > 0 {
            return Ok(());
        }
        self.stats.pinned_bytes -= e.len;
        self.stats.pinned_mappings -= 1;
        self.settle_released(id)
    }

    /// Caches an extent with no users, or unmaps it if it is shadowed or caching is off.
    fn settle_released(&mut self, id: ExtentId) -> Result<(), DmaError> {
        let Some(e) = self.extents.get(&id) else { return Ok(()) };
        if e.shadowed {
            // Requests for its remaining addresses get a fresh window from now on.
            let (start, end) = (e.gpa, e.gpa_end());
            self.runs.remove_extent(start, end, id);
        } else if self.config.cache_released {
            self.cache.push_released(id);
            return Ok(());
        }
        self.unmap_extent(id).inspect_err(|_| self.cache.push_doomed(id))
    }

    /// Unmaps an extent with no users at the host and forgets it. On failure it stays.
    fn unmap_extent(&mut self, id: ExtentId) -> Result<(), DmaError> {
        let Some(e) = self.extents.get(&id) else { return Ok(()) };
        let (gpa, len, device_addr) = (e.gpa, e.len, e.device_addr);
        self.stats.host_unmap_calls += 1;
        self.mapper.unmap(device_addr, len).map_err(|source| DmaError::HostUnmap { source })?;
        self.runs.remove_extent(gpa, gpa + len, id);
        self.by_device.remove(&device_addr);
        self.cache.remove(id);
        self.extents.remove(&id);
        self.stats.live_bytes -= len;
        self.stats.live_mappings -= 1;
        Ok(())
    }

    /// Checks every internal invariant; returns what is broken.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) -> Result<(), String> {
        let mut users: BTreeMap<ExtentId, u64> = BTreeMap::new();
        let mut live_requests = 0;
        for (key, live) in &self.requests {
            if live.is_empty() {
                return Err(format!("request {key:x?} has no uses"));
            }
            for uses in live {
                live_requests += 1;
                for id in uses {
                    if !self.extents.contains_key(id) {
                        return Err(format!("request {key:x?} uses missing extent {id}"));
                    }
                    *users.entry(*id).or_default() += 1;
                }
            }
        }
        if live_requests != self.stats.live_requests {
            return Err(format!("{live_requests} live requests, stats say {}", self.stats.live_requests));
        }
        let (mut bytes, mut pinned_bytes, mut pinned_maps) = (0, 0, 0);
        for (id, e) in &self.extents {
            bytes += e.len;
            let expected = users.get(id).copied().unwrap_or(0);
            if e.users != expected {
                return Err(format!("extent {id} has {} users, requests say {expected}", e.users));
            }
            if (e.users == 0) != self.cache.contains(*id) {
                return Err(format!("extent {id} has {} users but cached is the opposite", e.users));
            }
            if e.users > 0 {
                pinned_bytes += e.len;
                pinned_maps += 1;
            }
            if self.by_device.get(&e.device_addr) != Some(id) {
                return Err(format!("extent {id} is not indexed by its device address"));
            }
            let own = self.runs.overlapping(e.gpa, e.gpa_end());
            let own: Vec<_> = own.iter().filter(|r| r.extent == *id).collect();
            if !e.shadowed && (own.len() != 1 || own[0].start != e.gpa || own[0].end != e.gpa_end()) {
                return Err(format!("extent {id} is not shadowed but does not serve all of its range"));
            }
            if e.shadowed && e.users == 0 && !own.is_empty() {
                return Err(format!("extent {id} is shadowed, unused and still serving"));
            }
        }
        for run in self.runs.all() {
            match self.extents.get(&run.extent) {
                Some(e) if run.start >= e.gpa && run.end <= e.gpa_end() => {}
                _ => return Err(format!("run {run:x?} points outside its extent")),
            }
        }
        let s = &self.stats;
        let counted = (s.live_bytes, s.live_mappings, s.pinned_bytes, s.pinned_mappings);
        let actual = (bytes, self.extents.len() as u64, pinned_bytes, pinned_maps);
        if counted != actual {
            return Err(format!("stats {counted:x?} but extents add up to {actual:x?}"));
        }
        if s.live_bytes > self.limits.max_mapped_bytes
            || s.live_mappings > u64::from(self.limits.max_mappings)
        {
            return Err(format!("over budget: {} in {} mappings", s.live_bytes, s.live_mappings));
        }
        // Guest ranges of live mappings overlap only with a shadowed one (host-picks only),
        // which goes when its users do.
        let windows = self.windows();
        let mut open: Vec<WindowInfo> = Vec::new();
        for w in &windows {
            open.retain(|o| o.gpa + o.len > w.gpa);
            for o in &open {
                if self.limits.policy == AddressPolicy::Identity || !(o.shadowed || w.shadowed) {
                    return Err(format!("windows {o:x?} and {w:x?} overlap"));
                }
            }
            open.push(*w);
        }
        Ok(())
    }
}
