//! Scenario tests of the window manager.

use super::*;
use crate::dma::testing::FAKE_APERTURE_BASE;
use crate::dma::{DmaError, FailureReason, HostMapper, MapperError};

const HP: AddressPolicy = AddressPolicy::HostPicks;
const ID: AddressPolicy = AddressPolicy::Identity;

fn dart() -> WindowManager<FakeMapper> {
    manager(MapperLimits::APPLE_DART, K256, true)
}

#[test]
fn small_maps_share_one_window() {
    let mut m = dart();
    let a = m.map(RAM_BASE + 0x1000, 0x800).unwrap();
    let b = m.map(RAM_BASE + 0x5000, K4).unwrap();
    assert!(a >= FAKE_APERTURE_BASE, "host-picked, not the guest address");
    assert_eq!(b - a, 0x4000);
    let windows = m.windows();
    assert_eq!(windows.len(), 1);
    assert_eq!((windows[0].gpa, windows[0].len, windows[0].users), (RAM_BASE, K256, 2));
    assert_eq!(m.mapper().translate(a + 0x7ff), Some(RAM_BASE + 0x17ff));
    assert_eq!(m.translate(b), Some(RAM_BASE + 0x5000));
    let s = m.stats();
    assert_eq!((s.host_map_calls, s.shared_hits, s.cache_hits, s.live_requests), (1, 1, 0, 2));
    check(&m);
}

#[test]
fn released_windows_stay_cached_and_are_reused() {
    let mut m = dart();
    let a = m.map(RAM_BASE + 0x2_0000, K4).unwrap();
    m.unmap(a, K4).unwrap();
    let s = m.stats();
    assert_eq!((s.live_mappings, s.pinned_mappings, s.host_unmap_calls), (1, 0, 0));
    let again = m.map(RAM_BASE + 0x3_0000, 2 * K4).unwrap();
    assert_eq!(again, a + 0x1_0000, "same window, same device base");
    let s = m.stats();
    assert_eq!((s.host_map_calls, s.cache_hits), (1, 1));
    check(&m);
}

#[test]
fn large_maps_cover_exactly_their_pages() {
    let mut m = dart();
    let gpa = RAM_BASE + 0x2_3456;
    let d = m.map(gpa, M1 + 100).unwrap();
    let w = m.windows()[0];
    assert_eq!((w.gpa, w.len), (RAM_BASE + 0x2_0000, M1 + K16));
    assert_eq!(m.mapper().translate(d + M1 + 99), Some(gpa + M1 + 99));
    // A small map inside it is a hit, even away from window boundaries.
    let inner = m.map(gpa + 0x8_0000, K4).unwrap();
    assert_eq!(inner, d + 0x8_0000);
    assert_eq!(m.stats().host_map_calls, 1);
    check(&m);
}

#[test]
fn unmaps_must_match_a_live_map() {
    let mut m = dart();
    let d = m.map(RAM_BASE, K4).unwrap();
    let before = m.windows();
    for (addr, len) in [(d, K16), (d + 1, K4), (RAM_BASE, K4)] {
        assert_eq!(m.unmap(addr, len), Err(DmaError::NotMapped { device_addr: addr, len }));
    }
    assert_eq!(m.windows(), before);
    m.unmap(d, K4).unwrap();
    let err = m.unmap(d, K4).unwrap_err();
    assert!(err.to_string().contains("matches no live map"), "{err}");
    assert_eq!(m.stats().failures.not_mapped, 4);
    check(&m);
}

#[test]
fn identical_maps_are_counted_separately() {
    let mut m = dart();
    let d1 = m.map(RAM_BASE + 0x100, 64).unwrap();
    let d2 = m.map(RAM_BASE + 0x100, 64).unwrap();
    assert_eq!(d1, d2);
    m.unmap(d1, 64).unwrap();
    assert_eq!(m.windows()[0].users, 1);
    m.unmap(d1, 64).unwrap();
    assert!(m.unmap(d1, 64).is_err());
    check(&m);
}

#[test]
fn bad_requests_never_reach_the_host() {
    let ram = [
        GuestRamRange { start: RAM_BASE, len: M1 },
        GuestRamRange { start: RAM_BASE + M1, len: M1 },
    ];
    let mut m = manager_with_ram(limits(4 * M1, 100, HP), K256, true, &ram);
    assert_eq!(m.map(RAM_BASE, 0), Err(DmaError::ZeroLength { gpa: RAM_BASE }));
    assert_eq!(m.map(u64::MAX, 2), Err(DmaError::Overflow { gpa: u64::MAX, len: 2 }));
    let outside = m.map(RAM_BASE - K4, 2 * K4).unwrap_err();
    assert_eq!(outside.reason(), FailureReason::OutsideGuestRam);
    assert!(outside.to_string().contains("RAM is 0x40000000..0x40100000, 0x40100000..0x40200000"));
    let crossing = m.map(RAM_BASE + M1 - K4, 2 * K4).unwrap_err();
    assert_eq!(crossing.reason(), FailureReason::OutsideGuestRam, "regions are not merged");
    let s = m.stats();
    assert_eq!((s.host_map_calls, s.failures.total()), (0, 4));
    assert_eq!(m.mapper().map_calls(), 0);
}

#[test]
fn requests_larger_than_the_budget_are_refused_up_front() {
    let mut m = manager(limits(8 * M1, 100, HP), K256, true);
    let err = m.map(RAM_BASE, 8 * M1 + 1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "DMA map of 8 MiB + 1 byte at guest 0x40000000 needs 8 MiB + 16 KiB of host mappings, \
         more than the whole 8 MiB budget; raise dma-limit or have the guest driver map smaller pieces"
    );
    assert_eq!(m.mapper().map_calls(), 0);
}

#[test]
fn no_room_says_what_is_pinned() {
    let ram = [GuestRamRange { start: RAM_BASE, len: 4 << 30 }];
    let mut m = manager_with_ram(limits(1536 * M1, 65536, HP), K256, true, &ram);
    m.map(RAM_BASE, 1500 * M1).unwrap();
    m.map(RAM_BASE + 1500 * M1, 24 * M1 - K4).unwrap();
    let cached = m.map(RAM_BASE + 1524 * M1, 12 * M1).unwrap();
    m.unmap(cached, 12 * M1).unwrap();
    let calls = m.mapper().map_calls();
    let err = m.map(RAM_BASE + (2 << 30), 64 * M1).unwrap_err();
    assert_eq!(
        err.to_string(),
        "DMA map of 64 MiB at guest 0xc0000000 needs 64 MiB but only 12 MiB of the 1536 MiB \
         budget can be freed: 1524 MiB is pinned by live mappings; raise dma-limit, or the guest \
         keeps too much mapped"
    );
    assert_eq!(m.mapper().map_calls(), calls, "no host call");
    assert_eq!(m.stats().live_bytes, 1536 * M1, "nothing evicted for a doomed request");
    assert_eq!(m.stats().failures.no_room, 1);
    check(&m);
}

#[test]
fn eviction_is_least_recently_released_first() {
    let mut m = manager(limits(4 * K256, 100, HP), K256, true);
    let gpas: Vec<u64> = (0..4).map(|i| RAM_BASE + i * K256).collect();
    let devs: Vec<u64> = gpas.iter().map(|&g| m.map(g, K4).unwrap()).collect();
    for i in [2, 0, 3, 1] {
        m.unmap(devs[i], K4).unwrap();
    }
    let order: Vec<u64> = m.cached_windows().iter().map(|w| w.gpa).collect();
    assert_eq!(order, vec![gpas[2], gpas[0], gpas[3], gpas[1]]);
    // Reusing window 0 moves it out of the cache; it comes back as most recent.
    let d0 = m.map(gpas[0], K4).unwrap();
    m.unmap(d0, K4).unwrap();
    m.map(RAM_BASE + 10 * K256, K4).unwrap();
    m.map(RAM_BASE + 11 * K256, K4).unwrap();
    let left: Vec<u64> = m.cached_windows().iter().map(|w| w.gpa).collect();
    assert_eq!(left, vec![gpas[1], gpas[0]]);
    assert_eq!(m.stats().evictions, 2);
    check(&m);
}

#[test]
fn windows_in_use_are_never_evicted() {
    let mut m = manager(limits(2 * K256, 100, HP), K256, true);
    m.map(RAM_BASE, K256).unwrap();
    m.map(RAM_BASE + K256, K256).unwrap();
    // Not even the bare pages fit.
    let err = m.map(RAM_BASE + 4 * K256, K4).unwrap_err();
    assert!(
        matches!(err, DmaError::NoRoom { needed, pinned, .. } if needed == K16 && pinned == 2 * K256)
    );
    assert_eq!(m.stats().live_mappings, 2);
    check(&m);
}

#[test]
fn mapping_slots_are_a_budget_too() {
    let mut m = manager(limits(64 * M1, 2, HP), K256, true);
    let a = m.map(RAM_BASE, K4).unwrap();
    m.map(RAM_BASE + M1, K4).unwrap();
    let err = m.map(RAM_BASE + 2 * M1, K4).unwrap_err();
    assert_eq!(
        err.to_string(),
        "DMA map of 4 KiB at guest 0x40200000 needs 1 more host mappings but only 0 of the 2 \
         allowed can be freed: 2 are pinned by live mappings; raise dma-max-maps or the window size"
    );
    m.unmap(a, K4).unwrap();
    m.map(RAM_BASE + 2 * M1, K4).unwrap();
    assert_eq!(m.stats().evictions, 1);
    check(&m);
}

#[test]
fn windows_stop_widening_near_the_byte_budget() {
    let mut m = manager(limits(4 * K256, 100, HP), K256, true);
    for i in 0..3 {
        m.map(RAM_BASE + i * M1, K4).unwrap();
    }
    // A fourth window would fit, but would pin the whole budget: map the pages only.
    m.map(RAM_BASE + 3 * M1, K4).unwrap();
    let lens: Vec<u64> = m.windows().iter().map(|w| w.len).collect();
    assert_eq!(lens, vec![K256, K256, K256, K16]);
    // Under full pressure small maps still fit, page by page (the property tests check that
    // no refusal is ever due to widening).
    let d = m.map(RAM_BASE + 4 * M1 + 0x100, 0x100).unwrap();
    assert_eq!(m.translate(d), Some(RAM_BASE + 4 * M1 + 0x100));
    assert_eq!(m.windows()[4].len, K16);
    check(&m);
}

#[test]
fn straddling_a_window_in_use_shadows_it_with_host_picks() {
    let mut m = dart();
    let first = m.map(RAM_BASE + 0x1000, K4).unwrap();
    // 8 KiB across the first window boundary: one device-contiguous mapping of both windows.
    let gpa = RAM_BASE + K256 - K4;
    let d = m.map(gpa, 2 * K4).unwrap();
    assert_eq!(m.mapper().translate(d + 2 * K4 - 1), Some(gpa + 2 * K4 - 1));
    let windows = m.windows();
    assert_eq!(windows.len(), 2);
    assert!(windows.iter().any(|w| w.shadowed && w.len == K256 && w.users == 1));
    assert!(windows.iter().any(|w| !w.shadowed && w.len == 2 * K256));
    // The old window still serves its user.
    assert_eq!(m.mapper().translate(first), Some(RAM_BASE + 0x1000));
    check(&m);
    // New maps in the first window use the new mapping.
    let again = m.map(RAM_BASE + 0x1000, K4).unwrap();
    assert_ne!(again, first);
    // When its user leaves, the shadowed window is unmapped, not cached.
    m.unmap(first, K4).unwrap();
    assert_eq!(m.windows().len(), 1);
    assert_eq!(m.stats().shadowed, 1);
    check(&m);
}

#[test]
fn straddling_a_cached_window_evicts_it() {
    let mut m = dart();
    let first = m.map(RAM_BASE + 0x1000, K4).unwrap();
    m.unmap(first, K4).unwrap();
    m.map(RAM_BASE + K256 - K4, 2 * K4).unwrap();
    let windows = m.windows();
    assert_eq!((windows.len(), windows[0].len, windows[0].shadowed), (1, 2 * K256, false));
    assert_eq!(m.stats().evictions, 1);
    check(&m);
}

#[test]
fn identity_reuses_windows_and_maps_only_holes() {
    let mut m = manager(limits(64 * M1, 1000, ID), K256, true);
    assert_eq!(m.map(RAM_BASE + 0x1000, K4).unwrap(), RAM_BASE + 0x1000);
    let gpa = RAM_BASE + K256 - K4;
    assert_eq!(m.map(gpa, 2 * K4).unwrap(), gpa);
    let windows = m.windows();
    assert_eq!(windows.len(), 2);
    assert_eq!((windows[0].users, windows[1].gpa, windows[1].len), (2, RAM_BASE + K256, K256));
    // A large map over both windows and beyond maps only what is missing.
    m.map(RAM_BASE, M1).unwrap();
    let windows = m.windows();
    assert_eq!(windows.len(), 3);
    assert_eq!((windows[2].gpa, windows[2].len), (RAM_BASE + 2 * K256, 2 * K256));
    m.unmap(gpa, 2 * K4).unwrap();
    m.unmap(RAM_BASE + 0x1000, K4).unwrap();
    m.unmap(RAM_BASE, M1).unwrap();
    assert_eq!(m.stats().pinned_mappings, 0);
    m.flush_cache().unwrap();
    assert_eq!(m.mapper().live_count(), 0);
    check(&m);
}

#[test]
fn windows_shrink_away_from_unrelated_neighbours() {
    let mut m = dart();
    // A large mapping ending 64 KiB into a window...
    m.map(RAM_BASE, 4 * K256 + 4 * K16).unwrap();
    // ...and a small map later in that window: the window starts where the large one ends.
    m.map(RAM_BASE + 4 * K256 + 8 * K16, K4).unwrap();
    let w = m.windows()[1];
    assert_eq!((w.gpa, w.len), (RAM_BASE + 4 * K256 + 4 * K16, K256 - 4 * K16));
    assert!(!m.windows()[0].shadowed);
    check(&m);
}

#[test]
fn windows_are_clipped_to_guest_ram() {
    let ram = [GuestRamRange { start: RAM_BASE + K16, len: K256 }];
    let mut m = manager_with_ram(limits(4 * M1, 100, HP), K256, true, &ram);
    m.map(RAM_BASE + K16, K4).unwrap();
    m.map(RAM_BASE + K256 + 0x100, 0x100).unwrap();
    let windows: Vec<(u64, u64)> = m.windows().iter().map(|w| (w.gpa, w.len)).collect();
    assert_eq!(windows, vec![(RAM_BASE + K16, K256 - K16), (RAM_BASE + K256, K16)]);
    check(&m);
}

#[test]
fn host_map_failures_change_nothing() {
    let mut m = dart();
    let d = m.map(RAM_BASE, K4).unwrap();
    m.mapper_mut().fail_next_maps(1);
    let err = m.map(RAM_BASE + M1, K4).unwrap_err();
    assert!(matches!(err, DmaError::HostMap { gpa, .. } if gpa == RAM_BASE + M1));
    assert!(err.to_string().contains("injected failure"), "{err}");
    assert_eq!(m.windows().len(), 1);
    check(&m);
    m.map(RAM_BASE + M1, K4).unwrap();
    m.unmap(d, K4).unwrap();
    assert_eq!(m.stats().failures.host_map, 1);
    check(&m);
}

#[test]
fn identity_partial_failure_keeps_what_was_mapped_as_cache() {
    let mut m = manager(limits(64 * M1, 1000, ID), K256, true);
    m.map(RAM_BASE + K256, K4).unwrap();
    // Holes on both sides of the window in use; the second hole's host map fails.
    m.mapper_mut().fail_maps_after(1, 1);
    let err = m.map(RAM_BASE, 3 * K256).unwrap_err();
    assert!(matches!(err, DmaError::HostMap { gpa: RAM_BASE, .. }), "{err}");
    let windows: Vec<(u64, u64)> = m.windows().iter().map(|w| (w.gpa, w.users)).collect();
    assert_eq!(windows, vec![(RAM_BASE, 0), (RAM_BASE + K256, 1)]);
    check(&m);
    // The retry finds the first hole cached and maps only the second.
    m.map(RAM_BASE, 3 * K256).unwrap();
    assert_eq!(m.stats().host_map_calls, 4);
    check(&m);
}

#[test]
fn host_unmap_failure_keeps_the_window_counted() {
    let mut m = manager(limits(K256, 100, HP), K256, true);
    let d = m.map(RAM_BASE, K256).unwrap();
    m.unmap(d, K256).unwrap();
    m.mapper_mut().fail_next_unmaps(1);
    let err = m.map(RAM_BASE + M1, K4).unwrap_err();
    assert!(matches!(err, DmaError::HostUnmap { .. }), "{err}");
    assert!(err.to_string().contains("retried when room is needed"), "{err}");
    assert_eq!(m.stats().live_mappings, 1);
    check(&m);
    m.map(RAM_BASE + M1, K4).unwrap();
    assert_eq!(m.windows()[0].gpa, RAM_BASE + M1);
    check(&m);
}

#[test]
fn a_stuck_cached_window_does_not_block_eviction() {
    let mut m = manager(limits(2 * K256, 100, HP), K256, true);
    let a = m.map(RAM_BASE, K256).unwrap();
    let b = m.map(RAM_BASE + M1, K256).unwrap();
    m.unmap(a, K256).unwrap();
    m.unmap(b, K256).unwrap();
    m.mapper_mut().fail_next_unmaps(1);
    // The oldest window will not unmap; the next one makes room.
    m.map(RAM_BASE + 2 * M1, K256).unwrap();
    let gpas: Vec<u64> = m.windows().iter().map(|w| w.gpa).collect();
    assert_eq!(gpas, vec![RAM_BASE, RAM_BASE + 2 * M1]);
    assert_eq!(m.stats().failures.host_unmap, 1);
    check(&m);
}

#[test]
fn failed_unmap_of_a_shadowed_window_is_retried_first() {
    let mut m = dart();
    let first = m.map(RAM_BASE, K4).unwrap();
    m.map(RAM_BASE + K256 - K4, 2 * K4).unwrap();
    let other = m.map(RAM_BASE + 8 * M1, K4).unwrap();
    m.unmap(other, K4).unwrap();
    m.mapper_mut().fail_next_unmaps(1);
    assert!(matches!(m.unmap(first, K4), Err(DmaError::HostUnmap { .. })));
    assert_eq!(m.stats().live_requests, 1, "the request is released anyway");
    let cached: Vec<(u64, bool)> = m.cached_windows().iter().map(|w| (w.gpa, w.shadowed)).collect();
    assert_eq!(cached, vec![(RAM_BASE, true), (RAM_BASE + 8 * M1, false)]);
    check(&m);
    m.flush_cache().unwrap();
    assert_eq!(m.windows().len(), 1);
    check(&m);
}

#[test]
fn without_cache_released_windows_go_at_once() {
    let mut m = manager(limits(64 * M1, 100, HP), K256, false);
    let d = m.map(RAM_BASE, K4).unwrap();
    let e = m.map(RAM_BASE + K4, K4).unwrap();
    m.unmap(d, K4).unwrap();
    assert_eq!(m.stats().live_mappings, 1);
    m.unmap(e, K4).unwrap();
    assert_eq!(m.stats().live_mappings, 0);
    check(&m);
}

#[test]
fn reset_drops_everything() {
    let mut m = dart();
    for i in 0..10 {
        m.map(RAM_BASE + i * 3 * K16, K4).unwrap();
    }
    m.map(RAM_BASE + 16 * M1, 3 * M1).unwrap();
    let d = m.map(RAM_BASE + 32 * M1, K4).unwrap();
    m.unmap(d, K4).unwrap();
    m.reset().unwrap();
    let s = m.stats();
    assert_eq!((s.live_requests, s.live_mappings, s.pinned_bytes), (0, 0, 0));
    assert_eq!(m.mapper().live_count(), 0);
    check(&m);
}

/// A mapper that returns the wrong device address for identity mappings.
#[derive(Debug)]
struct OffByOne(FakeMapper);

impl HostMapper for OffByOne {
    fn limits(&self) -> &MapperLimits {
        self.0.limits()
    }
    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        self.0.map(gpa, len).map(|d| d + K16)
    }
    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        self.0.unmap(device_addr - K16, len)
    }
}

#[test]
fn mapper_contract_breaches_are_refused() {
    let fake = FakeMapper::new(limits(4 * M1, 100, ID));
    let ram = [GuestRamRange { start: RAM_BASE, len: 16 * M1 }];
    let mut m = WindowManager::new(OffByOne(fake), WindowConfig::default(), &ram).unwrap();
    let err = m.map(RAM_BASE, K4).unwrap_err();
    assert_eq!(err.reason(), FailureReason::MapperContract);
    assert!(err.to_string().contains("identity mapper returned device address 0x40004000"));
    assert_eq!(m.mapper().0.live_count(), 0, "the bad mapping was undone");
}

#[test]
fn stats_summary_for_the_vm_exit() {
    let mut m = dart();
    let d = m.map(RAM_BASE, K4).unwrap();
    m.map(RAM_BASE + K4, K4).unwrap();
    m.unmap(d, K4).unwrap();
    let _ = m.map(RAM_BASE, 0);
    let text = m.stats().to_string();
    assert_eq!(
        text,
        "DMA windows: 1 host mappings live (256 KiB; 256 KiB in 1 pinned by 1 requests, the rest \
         cached) of at most 65536 / 1536 MiB\n  peaks: 1 host mappings, 256 KiB mapped, 256 KiB \
         pinned in 1 mappings, 2 live requests\n  requests: 3 maps (0 cache hits, 1 shared), 1 \
         unmaps; 0 evictions, 0 shadowed\n  host calls: 1 maps, 0 unmaps; failures: 1 zero length"
    );
}

#[test]
fn bad_setups_are_refused() {
    let fake = || FakeMapper::new(MapperLimits::APPLE_DART);
    let ram = [GuestRamRange { start: RAM_BASE, len: M1 }];
    let config = WindowConfig { window_size: K4, cache_released: true };
    assert!(WindowManager::new(fake(), config, &ram).is_err());
    let odd = [GuestRamRange { start: RAM_BASE + K4, len: M1 }];
    let err = WindowManager::new(fake(), WindowConfig::default(), &odd).unwrap_err();
    assert!(err.to_string().contains("16 KiB boundaries"), "{err}");
}
