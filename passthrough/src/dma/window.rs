//! The window manager: turns the guest's "map guest-physical range" and "unmap" requests into
//! host mappings that fit the host mapper's limits. See the `dma` module for the design.

use std::collections::{BTreeMap, BTreeSet};

use super::config::{ConfigError, WindowConfig};
use super::error::DmaError;
use super::extent::{Extent, ExtentId, WindowInfo};
use super::guest_ram::{GuestRam, GuestRamRange};
use super::lru::EvictionOrder;
use super::mapper::{
    auto_alignment, AddressPolicy, ConstraintKind, HostMapper, MapConstraints, MapperError,
    MapperLimits,
};
use super::runs::CurrentRuns;
use super::stats::{DmaStats, FailureReason};
use super::units::{align_down, align_up};

#[cfg(test)]
mod invariants;

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

/// A map request and what its device needs (its constraints plus the automatic alignment).
#[derive(Debug, Clone, Copy)]
struct Request {
    gpa: u64,
    len: u64,
    need: MapConstraints,
}

impl Request {
    /// The refusal for a broken `kind` of constraint; `device_addr` is what the host picked.
    fn refusal(&self, kind: ConstraintKind, device_addr: Option<u64>, detail: String) -> DmaError {
        let (gpa, len, constraints) = (self.gpa, self.len, self.need);
        match kind {
            ConstraintKind::Mask => {
                DmaError::AboveMask { gpa, len, constraints, device_addr, detail }
            }
            ConstraintKind::Alignment => {
                DmaError::Misaligned { gpa, len, constraints, device_addr, detail }
            }
        }
    }

    /// The refusal for `device_addr` (of `gpa`), if it breaks the request's needs.
    fn check(&self, device_addr: u64) -> Option<DmaError> {
        let end = device_addr.wrapping_add(self.len);
        let picked = |what: &str| {
            format!(
                "the host picked device address {device_addr:#x}..{end:#x}, {what}; the \
                 mapping was undone"
            )
        };
        if !self.need.reaches(device_addr, self.len) {
            let detail = picked("over the mask");
            return Some(self.refusal(ConstraintKind::Mask, Some(device_addr), detail));
        }
        if !self.need.keeps_alignment(self.gpa, device_addr) {
            let detail = picked("not a multiple of it");
            return Some(self.refusal(ConstraintKind::Alignment, Some(device_addr), detail));
        }
        None
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
    /// [`WindowManager::unmap`] with that address and the same `len`. The device address
    /// follows the automatic alignment rule ([`auto_alignment`]) but may be anywhere.
    pub fn map(&mut self, gpa: u64, len: u64) -> Result<u64, DmaError> {
        self.map_within(gpa, len, &MapConstraints::NONE)
    }

    /// [`WindowManager::map`] for a device that reaches only device addresses up to
    /// `constraints.max_device_addr` and needs the device address to be a multiple of
    /// `constraints.alignment` (the guest address must be one too). The automatic alignment
    /// rule applies on top. Where the host picks and can be told, the mapping is placed
    /// within them; where it cannot, what it picked is checked and a mapping that breaks them
    /// undone: never is an address returned that breaks them ([`DmaError::AboveMask`],
    /// [`DmaError::Misaligned`]).
    pub fn map_within(
        &mut self,
        gpa: u64,
        len: u64,
        constraints: &MapConstraints,
    ) -> Result<u64, DmaError> {
        self.stats.map_requests += 1;
        let result = self.try_map(gpa, len, constraints);
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

    fn try_map(&mut self, gpa: u64, len: u64, asked: &MapConstraints) -> Result<u64, DmaError> {
        let (pages, region) = self.check_range(gpa, len)?;
        let need = asked.aligned(auto_alignment(gpa, len));
        self.check_constraints(gpa, len, &need)?;
        if let Some(reuse) = self.hit(gpa, len, pages, &need) {
            let was_cached = reuse.iter().any(|id| self.cache.contains(*id));
            if was_cached {
                self.stats.cache_hits += 1;
            } else {
                self.stats.shared_hits += 1;
            }
            return Ok(self.pin_request(gpa, len, reuse));
        }
        let window = self.window_around(gpa, len, pages, region);
        // Widen only while bytes are plentiful, and never so that a map fails: otherwise map
        // just the pages.
        let wide = (window != pages)
            .then(|| self.plan(pages, window))
            .filter(|p| self.may_widen(p) && self.check_budget(gpa, len, p).is_ok());
        let (plan, widened) = match wide {
            Some(plan) => (plan, true),
            None => {
                let narrow = self.plan(pages, pages);
                self.check_budget(gpa, len, &narrow)?;
                (narrow, false)
            }
        };
        self.make_room(gpa, len, &plan)?;
        // A window keeps the offsets of the guest addresses in it (modulo the window size),
        // so aligned requests sharing it later stay aligned in device space.
        let placement = if widened { need.aligned(self.config.window_size) } else { need };
        let request = Request { gpa, len, need };
        let mapped = self.map_new(&request, &plan.new, &placement)?;
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

    /// Refuses, before any host call, what no placement can satisfy: a guest address without
    /// the alignment asked for (device addresses keep the guest address's offset modulo the
    /// alignment), and with identity mapping a guest range above the mask.
    fn check_constraints(&self, gpa: u64, len: u64, need: &MapConstraints) -> Result<(), DmaError> {
        if !need.alignment.is_power_of_two() {
            return Err(DmaError::Misaligned {
                gpa,
                len,
                constraints: *need,
                device_addr: None,
                detail: "that is not a power of two; ask for 4 KiB to 2 MiB".into(),
            });
        }
        if gpa & (need.alignment - 1) != 0 {
            return Err(DmaError::Misaligned {
                gpa,
                len,
                constraints: *need,
                device_addr: None,
                detail: "the guest address is not a multiple of it, and device addresses keep \
                         the guest address's offset within that alignment; align the buffer"
                    .into(),
            });
        }
        if self.limits.policy == AddressPolicy::Identity && !need.reaches(gpa, len) {
            return Err(DmaError::AboveMask {
                gpa,
                len,
                constraints: *need,
                device_addr: Some(gpa),
                detail: "with identity mapping its device address is its guest address, which \
                         is over the mask; give the guest less RAM or the device a wider mask"
                    .into(),
            });
        }
        Ok(())
    }

    /// The extents already serving all of `pages`, if no host call is needed. With host-picks,
    /// an extent serves the request only if its device address meets the request's needs; if
    /// not, a new mapping is made that takes over.
    fn hit(&self, gpa: u64, len: u64, pages: Span, need: &MapConstraints) -> Option<Vec<ExtentId>> {
        match self.limits.policy {
            AddressPolicy::HostPicks | AddressPolicy::HostPicksWithin => {
                let id = self.runs.sole_extent(pages.0, pages.1)?;
                let e = self.extents.get(&id)?;
                need.admit(gpa, e.device_addr_of(gpa), len).then(|| vec![id])
            }
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
            AddressPolicy::HostPicks | AddressPolicy::HostPicksWithin => MapPlan {
                reuse: Vec::new(),
                evict: conflicts.into_iter().filter(|id| self.cache.contains(*id)).collect(),
                new: vec![(lo, hi)],
            },
            AddressPolicy::Identity => {
                MapPlan { new: self.runs.gaps(lo, hi), reuse: conflicts, evict: Vec::new() }
            }
        }
    }

    /// Whether a widened plan keeps pinned bytes under the coalescing watermark. Windows
    /// trade bytes for mapping slots; near the byte budget that trade stops paying.
    fn may_widen(&self, plan: &MapPlan) -> bool {
        let watermark = self.limits.max_mapped_bytes / 4 * 3;
        self.stats.pinned_bytes + plan.new_bytes() <= watermark
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
            return Err(DmaError::NoRoom {
                gpa,
                len,
                needed,
                available,
                budget,
                pinned: kept_bytes,
            });
        }
        let needed = plan.new.len() as u64;
        if kept_maps + needed > max {
            let available = max.saturating_sub(kept_maps);
            return Err(DmaError::NoMappingSlots {
                gpa,
                len,
                needed,
                available,
                max,
                pinned: kept_maps,
            });
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
        // Windows the request reuses, and ones the host failed to unmap this time.
        let mut skip: BTreeSet<ExtentId> = plan.reuse.iter().copied().collect();
        let mut host_error = None;
        let (bytes, maps) = (plan.new_bytes(), plan.new.len() as u64);
        while self.stats.live_bytes + bytes > self.limits.max_mapped_bytes
            || self.stats.live_mappings + maps > u64::from(self.limits.max_mappings)
        {
            let Some(victim) = self.cache.iter().find(|id| !skip.contains(id)) else {
                if let Some(e) = host_error {
                    return Err(e);
                }
                // check_budget said it fits; if it does not, report it as it stands now.
                self.check_budget(gpa, len, plan)?;
                return Err(DmaError::MapperContract {
                    gpa,
                    len,
                    what: "the window manager's budget accounting drifted".into(),
                });
            };
            match self.unmap_extent(victim) {
                Ok(()) => self.stats.evictions += 1,
                Err(e) => {
                    // One stuck window must not block every later map: try the next.
                    skip.insert(victim);
                    if host_error.is_some() {
                        self.stats.failures.count(e.reason());
                    }
                    host_error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = host_error {
            // Recovered; count the failure all the same.
            self.stats.failures.count(e.reason());
        }
        Ok(())
    }

    /// Maps each new range within `placement`. If one fails, the ones already mapped are kept
    /// as cached windows. When the host has no room within the request's constraints, cached
    /// windows below its mask are evicted (least recently released first) and it is retried.
    fn map_new(
        &mut self,
        request: &Request,
        new: &[Span],
        placement: &MapConstraints,
    ) -> Result<Vec<ExtentId>, DmaError> {
        let mut mapped = Vec::with_capacity(new.len());
        for &(start, end) in new {
            let result = loop {
                let result = self.map_extent(start, end, request, placement);
                let unplaced = matches!(
                    result,
                    Err(DmaError::AboveMask { device_addr: None, .. }
                        | DmaError::Misaligned { device_addr: None, .. })
                );
                if unplaced && self.evict_below(placement.max_device_addr) {
                    continue;
                }
                break result;
            };
            match result {
                Ok(id) => mapped.push(id),
                Err(e) => {
                    for id in mapped {
                        // On failure the window stays cached; count it, report the map's.
                        if let Err(unmap_error) = self.settle_released(id) {
                            self.stats.failures.count(unmap_error.reason());
                        }
                    }
                    return Err(match e {
                        DmaError::HostMap { source, .. } => {
                            DmaError::HostMap { gpa: request.gpa, len: request.len, source }
                        }
                        other => other,
                    });
                }
            }
        }
        Ok(mapped)
    }

    /// Unmaps the least recently released cached extent whose device range starts at or below
    /// `max_device_addr`; returns whether one went.
    fn evict_below(&mut self, max_device_addr: u64) -> bool {
        let victim = self
            .cache
            .iter()
            .find(|id| self.extents.get(id).is_some_and(|e| e.device_addr <= max_device_addr));
        let Some(victim) = victim else { return false };
        match self.unmap_extent(victim) {
            Ok(()) => {
                self.stats.evictions += 1;
                true
            }
            Err(e) => {
                self.stats.failures.count(e.reason());
                false
            }
        }
    }

    /// Maps one extent at the host within `placement` and starts tracking it (with no users
    /// yet). With host-picks the extent holds the whole request, whose device address is
    /// checked against its needs: a host that could not be told gets its mapping undone.
    fn map_extent(
        &mut self,
        start: u64,
        end: u64,
        request: &Request,
        placement: &MapConstraints,
    ) -> Result<ExtentId, DmaError> {
        let len = end - start;
        self.stats.host_map_calls += 1;
        let device_addr = match self.mapper.map_within(start, len, placement) {
            Ok(device_addr) => device_addr,
            Err(MapperError::Unplaceable { kind, reason, .. }) => {
                return Err(request.refusal(kind, None, format!("the host has no room: {reason}")))
            }
            Err(source) => return Err(DmaError::HostMap { gpa: start, len, source }),
        };
        if let Some(what) = self.contract_breach(start, len, device_addr) {
            self.stats.host_unmap_calls += 1;
            // Best effort: the mapping is unusable either way.
            let _ = self.mapper.unmap(device_addr, len);
            return Err(DmaError::MapperContract { gpa: start, len, what });
        }
        let inside = self.limits.policy.host_picks()
            && (start..end).contains(&request.gpa)
            && request.gpa + request.len <= end;
        let refusal = inside.then(|| request.check(device_addr + (request.gpa - start)));
        if let Some(e) = refusal.flatten() {
            self.stats.host_unmap_calls += 1;
            if let Err(source) = self.mapper.unmap(device_addr, len) {
                // Still mapped: count it, serve nothing from it, unmap it first when room is
                // needed (as a shadowed window whose unmap failed).
                self.stats.failures.count(FailureReason::HostUnmap);
                log::warn!("{source}; retried when room is needed");
                let id = self.track(start, len, device_addr, true);
                self.cache.push_doomed(id);
            }
            return Err(e);
        }
        let id = self.track(start, len, device_addr, false);
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
        Ok(id)
    }

    /// Starts tracking a new host mapping with no users; `shadowed` ones serve no request.
    fn track(&mut self, gpa: u64, len: u64, device_addr: u64, shadowed: bool) -> ExtentId {
        let id = self.next_id;
        self.next_id += 1;
        self.extents.insert(id, Extent { gpa, len, device_addr, users: 0, shadowed });
        self.by_device.insert(device_addr, id);
        self.stats.live_bytes += len;
        self.stats.live_mappings += 1;
        self.stats.note_peaks();
        id
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
            if self.limits.policy.host_picks() {
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
}
