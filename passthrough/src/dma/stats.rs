//! Window manager statistics, for the trace and the summary printed when the VM exits.

use std::fmt;

use super::units::Bytes;

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// Zero-length map.
    ZeroLength,
    /// Range wraps past 2^64.
    Overflow,
    /// Range not inside one guest RAM region.
    OutsideGuestRam,
    /// Larger than the whole budget.
    TooLarge,
    /// Not enough bytes even after evicting every cached window.
    NoRoom,
    /// Not enough mapping slots even after evicting every cached window.
    NoMappingSlots,
    /// Unmap of something not mapped.
    NotMapped,
    /// The host refused a map.
    HostMap,
    /// The host refused an unmap.
    HostUnmap,
    /// The host mapper broke its contract (wrong or overlapping device address).
    MapperContract,
    /// The device address would be above the device's DMA mask.
    AboveMask,
    /// The device address would not have the alignment asked for.
    Misaligned,
}

/// Failed requests by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FailureCounts {
    /// Zero-length maps.
    pub zero_length: u64,
    /// Ranges wrapping past 2^64.
    pub overflow: u64,
    /// Ranges outside guest RAM.
    pub outside_guest_ram: u64,
    /// Maps larger than the whole budget.
    pub too_large: u64,
    /// Maps refused for lack of bytes.
    pub no_room: u64,
    /// Maps refused for lack of mapping slots.
    pub no_mapping_slots: u64,
    /// Unmaps of ranges not mapped.
    pub not_mapped: u64,
    /// Host map failures.
    pub host_map: u64,
    /// Host unmap failures.
    pub host_unmap: u64,
    /// Host mapper contract breaches.
    pub mapper_contract: u64,
    /// Maps refused because the device address would be above the device's DMA mask.
    pub above_mask: u64,
    /// Maps refused because the device address would be misaligned.
    pub misaligned: u64,
}

impl FailureCounts {
    fn slot(&mut self, reason: FailureReason) -> &mut u64 {
        match reason {
            FailureReason::ZeroLength => &mut self.zero_length,
            FailureReason::Overflow => &mut self.overflow,
            FailureReason::OutsideGuestRam => &mut self.outside_guest_ram,
            FailureReason::TooLarge => &mut self.too_large,
            FailureReason::NoRoom => &mut self.no_room,
            FailureReason::NoMappingSlots => &mut self.no_mapping_slots,
            FailureReason::NotMapped => &mut self.not_mapped,
            FailureReason::HostMap => &mut self.host_map,
            FailureReason::HostUnmap => &mut self.host_unmap,
            FailureReason::MapperContract => &mut self.mapper_contract,
            FailureReason::AboveMask => &mut self.above_mask,
            FailureReason::Misaligned => &mut self.misaligned,
        }
    }

    /// Counts one failure.
    pub fn count(&mut self, reason: FailureReason) {
        *self.slot(reason) += 1;
    }

    /// Failures for one reason.
    pub fn get(&self, reason: FailureReason) -> u64 {
        *self.clone().slot(reason)
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.named().iter().map(|(n, _)| n).sum()
    }

    fn named(&self) -> [(u64, &'static str); 12] {
        [
            (self.zero_length, "zero length"),
            (self.overflow, "wrapping range"),
            (self.outside_guest_ram, "outside guest RAM"),
            (self.too_large, "larger than the budget"),
            (self.no_room, "no room"),
            (self.no_mapping_slots, "no mapping slots"),
            (self.not_mapped, "unmap of unmapped range"),
            (self.host_map, "host map failed"),
            (self.host_unmap, "host unmap failed"),
            (self.mapper_contract, "host mapper contract broken"),
            (self.above_mask, "above the device's DMA mask"),
            (self.misaligned, "misaligned for the device"),
        ]
    }
}

impl fmt::Display for FailureCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .named()
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, name)| format!("{n} {name}"))
            .collect();
        if parts.is_empty() {
            write!(f, "none")
        } else {
            write!(f, "{}", parts.join(", "))
        }
    }
}

/// A snapshot of the window manager's counters. "Host" numbers count mappings at the host
/// mapper (windows, pinned or cached); "requests" count the guest's map calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DmaStats {
    /// The mapper's byte limit.
    pub budget_bytes: u64,
    /// The mapper's mapping limit.
    pub budget_mappings: u64,
    /// Bytes mapped on the host now.
    pub live_bytes: u64,
    /// Host mappings live now.
    pub live_mappings: u64,
    /// Of those bytes, the ones used by live requests (the rest is cache).
    pub pinned_bytes: u64,
    /// Of those mappings, the ones used by live requests.
    pub pinned_mappings: u64,
    /// Most bytes ever mapped on the host at once.
    pub peak_live_bytes: u64,
    /// Most host mappings ever live at once.
    pub peak_live_mappings: u64,
    /// Most bytes ever pinned at once.
    pub peak_pinned_bytes: u64,
    /// Most mappings ever pinned at once.
    pub peak_pinned_mappings: u64,
    /// Guest map requests not yet unmapped.
    pub live_requests: u64,
    /// Most guest map requests ever live at once.
    pub peak_live_requests: u64,
    /// Map requests received.
    pub map_requests: u64,
    /// Unmap requests received.
    pub unmap_requests: u64,
    /// Maps served by reviving cached windows, with no host call.
    pub cache_hits: u64,
    /// Maps served by windows other requests already used, with no host call.
    pub shared_hits: u64,
    /// Cached windows unmapped to make room or to avoid overlap.
    pub evictions: u64,
    /// Pinned windows a newer window took over part of (host-picks, straddling maps).
    pub shadowed: u64,
    /// Host map calls made.
    pub host_map_calls: u64,
    /// Host unmap calls made.
    pub host_unmap_calls: u64,
    /// Failed requests by reason.
    pub failures: FailureCounts,
}

impl DmaStats {
    /// Bytes kept mapped only as cache.
    pub fn cached_bytes(&self) -> u64 {
        self.live_bytes - self.pinned_bytes
    }

    /// Mappings kept only as cache.
    pub fn cached_mappings(&self) -> u64 {
        self.live_mappings - self.pinned_mappings
    }

    /// Records the current levels into the peaks.
    pub(crate) fn note_peaks(&mut self) {
        self.peak_live_bytes = self.peak_live_bytes.max(self.live_bytes);
        self.peak_live_mappings = self.peak_live_mappings.max(self.live_mappings);
        self.peak_pinned_bytes = self.peak_pinned_bytes.max(self.pinned_bytes);
        self.peak_pinned_mappings = self.peak_pinned_mappings.max(self.pinned_mappings);
        self.peak_live_requests = self.peak_live_requests.max(self.live_requests);
    }
}

impl fmt::Display for DmaStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "DMA windows: {} host mappings live ({}; {} in {} pinned by {} requests, the rest \
             cached) of at most {} / {}",
            self.live_mappings,
            Bytes(self.live_bytes),
            Bytes(self.pinned_bytes),
            self.pinned_mappings,
            self.live_requests,
            self.budget_mappings,
            Bytes(self.budget_bytes)
        )?;
        writeln!(
            f,
            "  peaks: {} host mappings, {} mapped, {} pinned in {} mappings, {} live requests",
            self.peak_live_mappings,
            Bytes(self.peak_live_bytes),
            Bytes(self.peak_pinned_bytes),
            self.peak_pinned_mappings,
            self.peak_live_requests
        )?;
        writeln!(
            f,
            "  requests: {} maps ({} cache hits, {} shared), {} unmaps; {} evictions, {} shadowed",
            self.map_requests,
            self.cache_hits,
            self.shared_hits,
            self.unmap_requests,
            self.evictions,
            self.shadowed
        )?;
        write!(
            f,
            "  host calls: {} maps, {} unmaps; failures: {}",
            self.host_map_calls, self.host_unmap_calls, self.failures
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_by_reason() {
        let mut failures = FailureCounts::default();
        assert_eq!(failures.to_string(), "none");
        failures.count(FailureReason::NoRoom);
        failures.count(FailureReason::NoRoom);
        failures.count(FailureReason::NotMapped);
        assert_eq!(failures.get(FailureReason::NoRoom), 2);
        assert_eq!(failures.total(), 3);
        assert_eq!(failures.to_string(), "2 no room, 1 unmap of unmapped range");
    }

    #[test]
    fn summary_reads_well() {
        let stats = DmaStats {
            budget_bytes: 1536 << 20,
            budget_mappings: 65536,
            live_bytes: 3 << 20,
            live_mappings: 12,
            pinned_bytes: 1 << 20,
            pinned_mappings: 4,
            live_requests: 40,
            ..DmaStats::default()
        };
        let text = stats.to_string();
        assert!(text.starts_with("DMA windows: 12 host mappings live (3 MiB; 1 MiB in 4 pinned"));
        assert!(text.contains("of at most 65536 / 1536 MiB"), "{text}");
        assert!(text.ends_with("failures: none"), "{text}");
        assert_eq!(stats.cached_bytes(), 2 << 20);
        assert_eq!(stats.cached_mappings(), 8);
    }
}
