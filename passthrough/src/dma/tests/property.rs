//! Randomized tests: many seeds of random maps, unmaps, bad requests, injected host failures
//! and cache flushes, checked after every step against a model of the live requests and
//! against the fake mapper's view of the host.

use super::*;
use crate::dma::units::{align_down, align_up};
use crate::dma::{DmaError, WindowInfo};

/// One live request in the model.
#[derive(Debug, Clone, Copy)]
struct Live {
    gpa: u64,
    len: u64,
    device: u64,
}

#[derive(Debug, Clone, Copy)]
struct Scenario {
    policy: AddressPolicy,
    window: u64,
    cache: bool,
    budget_bytes: u64,
    budget_maps: u32,
}

/// Two RAM regions; the second starts and ends off the window grid.
fn ram() -> [GuestRamRange; 2] {
    [
        GuestRamRange { start: RAM_BASE, len: 48 * M1 },
        GuestRamRange { start: RAM_BASE + 64 * M1 + K16, len: 16 * M1 - 3 * K16 },
    ]
}

/// A request: mostly small, clustered near recent ones, sometimes large.
fn random_request(rng: &mut XorShift, recent: &mut Vec<u64>) -> (u64, u64) {
    let len = match rng.below(100) {
        0..=34 => K4,
        35..=69 => 1 + rng.below(K4),
        70..=89 => K4 + rng.below(K256 - K4),
        _ => K256 + rng.below(2 * M1),
    };
    let regions = ram();
    let region = regions[if rng.chance(75) { 0 } else { 1 }];
    let span = region.len.saturating_sub(len).max(1);
    let offset = if !recent.is_empty() && rng.chance(60) {
        let near = recent[rng.below(recent.len() as u64) as usize];
        let jitter = rng.below(M1);
        (near + jitter).saturating_sub(M1 / 2).min(span - 1)
    } else {
        rng.below(span)
    };
    let offset = if len == K4 && rng.chance(80) { align_down(offset, K4) } else { offset };
    if recent.len() >= 16 {
        recent.remove(0);
    }
    recent.push(offset);
    (region.start + offset, len.min(region.len))
}

fn overlaps(w: &WindowInfo, (start, end): (u64, u64)) -> bool {
    w.gpa < end && w.gpa + w.len > start
}

/// The parts of `pages` no window covers (identity: windows never overlap).
fn holes(windows: &[WindowInfo], (start, end): (u64, u64)) -> (u64, u64) {
    let mut at = start;
    let (mut bytes, mut count) = (0, 0);
    for w in windows.iter().filter(|w| overlaps(w, (start, end))) {
        if w.gpa > at {
            bytes += w.gpa - at;
            count += 1;
        }
        at = at.max(w.gpa + w.len);
    }
    if at < end {
        bytes += end - at;
        count += 1;
    }
    (bytes, count)
}

fn key(w: &WindowInfo) -> (u64, u64, u64) {
    (w.gpa, w.device_addr, w.len)
}

/// Checks a successful map: translation, and that evictions were the mandatory ones plus the
/// least recently released others.
fn check_map_success(
    m: &WindowManager<FakeMapper>,
    rng: &mut XorShift,
    sc: &Scenario,
    request: Live,
    pages: (u64, u64),
    cached_before: &[WindowInfo],
) {
    let Live { gpa, len, device } = request;
    if sc.policy == AddressPolicy::Identity {
        assert_eq!(device, gpa);
    }
    for off in [0, len - 1, rng.below(len)] {
        assert_eq!(m.mapper().translate(device + off), Some(gpa + off), "{request:x?} +{off:#x}");
    }
    let now: std::collections::BTreeSet<(u64, u64, u64)> = m.windows().iter().map(key).collect();
    let evicted: Vec<&WindowInfo> =
        cached_before.iter().filter(|w| !now.contains(&key(w))).collect();
    let touching = |w: &WindowInfo| overlaps(w, pages);
    let lru: Vec<(u64, u64, u64)> = match sc.policy {
        // Cached windows under the pages must go; the others go oldest first.
        AddressPolicy::HostPicks | AddressPolicy::HostPicksWithin => {
            evicted.iter().filter(|w| !touching(w)).map(|w| key(w)).collect()
        }
        AddressPolicy::Identity => {
            assert!(evicted.iter().all(|w| !touching(w)), "identity evicted a window it reuses");
            evicted.iter().map(|w| key(w)).collect()
        }
    };
    let order: Vec<(u64, u64, u64)> =
        cached_before.iter().filter(|w| !touching(w)).map(key).collect();
    assert_eq!(lru, order[..lru.len()], "evictions were not least recently released first");
}

/// Checks a refused map: the reason must hold even after evicting everything evictable.
fn check_map_refusal(err: &DmaError, sc: &Scenario, pages: (u64, u64), before: &[WindowInfo]) {
    let pinned: Vec<&WindowInfo> = before
        .iter()
        .filter(|w| w.users > 0 || (sc.policy == AddressPolicy::Identity && overlaps(w, pages)))
        .collect();
    let pinned_bytes: u64 = pinned.iter().map(|w| w.len).sum();
    let pinned_maps = pinned.len() as u64;
    let (need_bytes, need_maps) = match sc.policy {
        AddressPolicy::HostPicks | AddressPolicy::HostPicksWithin => (pages.1 - pages.0, 1),
        AddressPolicy::Identity => holes(before, pages),
    };
    match *err {
        DmaError::TooLarge { needed, budget, .. } => {
            assert_eq!(needed, need_bytes);
            assert!(needed > budget);
        }
        DmaError::NoRoom { needed, pinned, budget, available, .. } => {
            assert_eq!((needed, pinned), (need_bytes, pinned_bytes), "{err}");
            assert!(pinned + needed > budget && available < needed, "{err}");
        }
        DmaError::NoMappingSlots { needed, pinned, max, .. } => {
            assert_eq!((needed, pinned), (need_maps, pinned_maps), "{err}");
            assert!(pinned + needed > max, "{err}");
        }
        _ => panic!("unexpected refusal: {err}"),
    }
}

fn run(sc: Scenario, seed: u64, steps: u32) {
    let mut m = manager_with_ram(
        limits(sc.budget_bytes, sc.budget_maps, sc.policy),
        sc.window,
        sc.cache,
        &ram(),
    );
    let mut rng = XorShift::new(seed);
    let mut recent = Vec::new();
    let mut live: Vec<Live> = Vec::new();
    let (mut map_failure_armed, mut unmap_failure_armed) = (false, false);
    for step in 0..steps {
        let unmap_calls = m.mapper().unmap_calls();
        let map_calls = m.mapper().map_calls();
        match rng.below(100) {
            0..=54 => {
                let (gpa, len) = random_request(&mut rng, &mut recent);
                let pages = (align_down(gpa, K16), align_up(gpa + len, K16).unwrap());
                let before = m.windows();
                let cached_before = m.cached_windows();
                match m.map(gpa, len) {
                    Ok(device) => {
                        let request = Live { gpa, len, device };
                        if !unmap_failure_armed {
                            check_map_success(&m, &mut rng, &sc, request, pages, &cached_before);
                        }
                        live.push(request);
                    }
                    Err(DmaError::HostMap { .. }) => assert!(map_failure_armed),
                    Err(DmaError::HostUnmap { .. }) => assert!(unmap_failure_armed),
                    Err(e) => {
                        assert_eq!(m.mapper().map_calls(), map_calls, "refusal after a host call");
                        if !unmap_failure_armed {
                            assert_eq!(m.mapper().unmap_calls(), unmap_calls, "evicted in vain");
                        }
                        check_map_refusal(&e, &sc, pages, &before);
                    }
                }
            }
            55..=91 if !live.is_empty() => {
                let r = live.swap_remove(rng.below(live.len() as u64) as usize);
                match m.unmap(r.device, r.len) {
                    Ok(()) => {}
                    Err(DmaError::HostUnmap { .. }) => assert!(unmap_failure_armed),
                    Err(e) => panic!("unmap of {r:x?}: {e}"),
                }
            }
            92..=93 if !live.is_empty() => {
                let r = live[rng.below(live.len() as u64) as usize];
                let (device, len) =
                    if rng.chance(50) { (r.device, r.len + 1) } else { (r.device + 1, r.len) };
                if !live.iter().any(|l| (l.device, l.len) == (device, len)) {
                    assert_eq!(
                        m.unmap(device, len),
                        Err(DmaError::NotMapped { device_addr: device, len })
                    );
                }
            }
            94..=95 => {
                m.mapper_mut().fail_next_maps(1);
                map_failure_armed = true;
            }
            96 => {
                m.mapper_mut().fail_next_unmaps(1);
                unmap_failure_armed = true;
            }
            97 => match m.flush_cache() {
                Ok(()) => assert_eq!(m.stats().cached_mappings(), 0),
                Err(e) => assert!(unmap_failure_armed, "{e}"),
            },
            _ => {
                let region = ram()[1];
                let (gpa, len) = match rng.below(3) {
                    0 => (region.start + rng.below(region.len), 0),
                    1 => (region.end() - K4, 2 * K4),
                    _ => (u64::MAX - rng.below(K4), K16),
                };
                assert!(m.map(gpa, len).is_err());
                assert_eq!(m.mapper().map_calls(), map_calls);
            }
        }
        if m.mapper().map_calls() > map_calls && map_failure_armed {
            // The injected failure was consumed by the first host map call, if it came.
            map_failure_armed = false;
        }
        if m.mapper().unmap_calls() > unmap_calls && unmap_failure_armed {
            unmap_failure_armed = false;
        }
        // Full checks are O(windows); with a roomy cache, sample them.
        if m.stats().live_mappings <= 32 || step % 16 == 0 {
            check(&m);
        }
        if step % 64 == 0 {
            for r in &live {
                let off = rng.below(r.len);
                assert_eq!(m.mapper().translate(r.device + off), Some(r.gpa + off), "{r:x?}");
            }
        }
    }
    // Everything unmapped: nothing pinned; flushed: nothing mapped.
    m.mapper_mut().fail_next_maps(0);
    m.mapper_mut().fail_next_unmaps(0);
    while !live.is_empty() {
        let r = live.swap_remove(rng.below(live.len() as u64) as usize);
        m.unmap(r.device, r.len).unwrap();
    }
    let s = m.stats();
    assert_eq!((s.live_requests, s.pinned_mappings, s.pinned_bytes), (0, 0, 0));
    m.flush_cache().unwrap();
    assert_eq!(m.mapper().live_count(), 0);
    assert_eq!(m.stats().live_bytes, 0);
    check(&m);
    assert!(m.stats().peak_live_bytes <= sc.budget_bytes);
    assert!(m.mapper().peak_bytes() <= sc.budget_bytes);
    assert!(m.mapper().peak_mappings() <= sc.budget_maps as usize);
}

fn scenarios(policy: AddressPolicy) -> Vec<Scenario> {
    let mut all = Vec::new();
    for window in [K16, 64 << 10, K256] {
        for cache in [true, false] {
            for (budget_bytes, budget_maps) in [(2 * M1, 24), (8 * M1, 4096), (1536 * M1, 65536)] {
                all.push(Scenario { policy, window, cache, budget_bytes, budget_maps });
            }
        }
    }
    all
}

/// 18 settings (window sizes, cache on/off, tight to DART-sized budgets) x 4 seeds.
fn random_requests_keep_every_invariant(policy: AddressPolicy) {
    for (i, sc) in scenarios(policy).into_iter().enumerate() {
        for seed in 0..4 {
            run(sc, (i as u64) << 32 | seed, 1200);
        }
    }
}

#[test]
fn random_requests_keep_every_invariant_host_picks() {
    random_requests_keep_every_invariant(AddressPolicy::HostPicks);
}

#[test]
fn random_requests_keep_every_invariant_identity() {
    random_requests_keep_every_invariant(AddressPolicy::Identity);
}

/// A long run under a tight budget: the manager never refuses a map that would fit after
/// evicting the cache (every refusal is checked), and keeps serving to the end.
#[test]
fn long_runs_under_pressure_never_get_stuck() {
    for policy in [AddressPolicy::HostPicks, AddressPolicy::Identity] {
        let sc =
            Scenario { policy, window: K256, cache: true, budget_bytes: 4 * M1, budget_maps: 16 };
        run(sc, 0xdead_beef, 20_000);
    }
}
