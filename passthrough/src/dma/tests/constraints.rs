//! Device constraints (DMA mask, alignment; protocol 1.1): scenarios for each address policy,
//! and randomized runs checking that no returned device address is ever over the mask or
//! misaligned, that translation is right to the byte, and that the books balance.

use super::*;
use crate::dma::testing::{FakeMapper, FAKE_APERTURE_BASE};
use crate::dma::units::align_down;
use crate::dma::{auto_alignment, DmaError, FailureReason, MapConstraints};

const K64: u64 = 64 << 10;
const M2: u64 = 2 << 20;
const HP: AddressPolicy = AddressPolicy::HostPicks;
const WITHIN: AddressPolicy = AddressPolicy::HostPicksWithin;
const ID: AddressPolicy = AddressPolicy::Identity;

fn mask(bits: u32) -> MapConstraints {
    MapConstraints::below_mask(bits)
}

#[test]
fn a_host_that_can_be_told_places_maps_below_the_mask() {
    let mut m = manager(limits(64 * M1, 1000, WITHIN), K256, true);
    let any = m.map(RAM_BASE, K4).unwrap();
    assert!(any >= FAKE_APERTURE_BASE, "unconstrained maps go high: {any:#x}");
    let low = m.map_within(RAM_BASE + M1, K4, &mask(32)).unwrap();
    assert!(low + K4 <= 1 << 32, "{low:#x}");
    let forty = m.map_within(RAM_BASE + 2 * M1, M1, &mask(40)).unwrap();
    assert!(forty + M1 <= 1 << 40 && forty >= 1 << 32, "40-bit maps keep low space: {forty:#x}");
    check(&m);
}

#[test]
fn large_aligned_powers_of_two_get_aligned_device_addresses() {
    let mut m = manager(limits(64 * M1, 1000, WITHIN), K256, true);
    for (gpa, len) in [(RAM_BASE + M2, M2), (RAM_BASE + 8 * M2, 4 * M2), (RAM_BASE + K64, K64)] {
        let d = m.map(gpa, len).unwrap();
        let a = auto_alignment(gpa, len);
        assert!(a >= K64);
        assert_eq!(d % a, 0, "{gpa:#x}+{len:#x} at {d:#x}");
        check(&m);
    }
}

#[test]
fn windows_keep_sub_window_offsets_so_shared_maps_stay_aligned() {
    let mut m = manager(limits(64 * M1, 1000, WITHIN), K256, true);
    // A small map opens the window; a 64 KiB map at a 64 KiB offset shares it, aligned.
    let small = m.map(RAM_BASE + K4, K4).unwrap();
    let big = m.map(RAM_BASE + 3 * K64, K64).unwrap();
    assert_eq!(big - small, 3 * K64 - K4, "one window");
    assert_eq!(big % K64, 0, "{big:#x}");
    assert_eq!(m.windows().len(), 1);
    assert_eq!(m.windows()[0].device_addr % K256, 0, "windows sit on window boundaries");
    // A window shrunk away from a neighbour still keeps the offsets.
    let lead = m.map(RAM_BASE + M1, 3 * K64).unwrap(); // exactly its pages
    let after = m.map(RAM_BASE + M1 + 3 * K64, K64).unwrap();
    assert_eq!(after % K64, 0, "{after:#x}");
    assert_eq!(m.translate(lead), Some(RAM_BASE + M1));
    check(&m);
}

#[test]
fn a_shared_window_over_the_mask_is_not_reused_for_it() {
    let mut m = manager(limits(64 * M1, 1000, WITHIN), K256, true);
    let high = m.map(RAM_BASE, K4).unwrap();
    assert!(high >= 1 << 40);
    let low = m.map_within(RAM_BASE + 2 * K4, K4, &mask(32)).unwrap();
    assert!(low + K4 <= 1 << 32, "{low:#x}");
    // The old window still serves its user; the new one takes over the addresses.
    assert_eq!(m.translate(high), Some(RAM_BASE));
    assert_eq!(m.translate(low), Some(RAM_BASE + 2 * K4));
    assert_eq!(m.stats().shadowed, 1);
    // A later unconstrained map in the window shares the low one.
    let again = m.map(RAM_BASE + 3 * K4, K4).unwrap();
    assert_eq!(again, low + K4);
    m.unmap(high, K4).unwrap();
    check(&m);
}

#[test]
fn explicit_alignment_needs_an_aligned_guest_address() {
    let mut m = manager(limits(64 * M1, 1000, WITHIN), K256, true);
    let calls = m.mapper().map_calls();
    let err = m.map_within(RAM_BASE + K4, K4, &MapConstraints::NONE.aligned(K64)).unwrap_err();
    assert!(matches!(err, DmaError::Misaligned { device_addr: None, .. }), "{err}");
    assert!(err.to_string().contains("multiple of 64 KiB"), "{err}");
    assert_eq!(m.mapper().map_calls(), calls, "refused before any host call");
    let d = m.map_within(RAM_BASE + 2 * M2, K4, &mask(36).aligned(M2)).unwrap();
    assert_eq!(d % M2, 0, "{d:#x}");
    assert!(d + K4 <= 1 << 36);
    check(&m);
}

#[test]
fn nonsense_constraints_are_refused_not_panicked_on() {
    let mut m = manager(limits(64 * M1, 1000, WITHIN), K256, true);
    for alignment in [3, 48 << 10] {
        let c = MapConstraints { max_device_addr: u64::MAX, alignment };
        let err = m.map_within(RAM_BASE, K4, &c).unwrap_err();
        assert!(matches!(err, DmaError::Misaligned { device_addr: None, .. }), "{err}");
    }
    let c = MapConstraints { max_device_addr: 0, alignment: 1 };
    assert!(matches!(m.map_within(RAM_BASE, K4, &c), Err(DmaError::AboveMask { .. })));
    assert!(!c.reaches(1, 0) && c.reaches(0, 0) && c.reaches(0, 1));
    assert_eq!(m.mapper().map_calls(), 1, "only the last one asked the host");
    check(&m);
}

#[test]
fn no_room_below_the_mask_evicts_cached_windows_there() {
    // Below 2^25 the fake has 16 MiB; fill it with cached 256 KiB windows.
    let mut m = manager(limits(64 * M1, 1000, WITHIN), K256, true);
    let mut live = Vec::new();
    for i in 0..64 {
        live.push(m.map_within(RAM_BASE + i * K256, K4, &mask(25)).unwrap());
    }
    for d in live {
        m.unmap(d, K4).unwrap();
    }
    let evictions = m.stats().evictions;
    let d = m.map_within(RAM_BASE + 100 * K256, K4, &mask(25)).unwrap();
    assert!(d + K4 <= 1 << 25);
    assert_eq!(m.stats().evictions, evictions + 1, "one cached window below the mask went");
    check(&m);
    // Pinned windows cannot go: then it is EMASK, naming the mask.
    let mut pinned = Vec::new();
    for i in 0..63 {
        pinned.push(m.map_within(RAM_BASE + (200 + i) * K256, K4, &mask(25)).unwrap());
    }
    let err = m.map_within(RAM_BASE + 300 * K256, K4, &mask(25)).unwrap_err();
    assert!(matches!(err, DmaError::AboveMask { device_addr: None, .. }), "{err}");
    assert!(err.to_string().contains("25-bit DMA mask"), "{err}");
    assert_eq!(err.reason(), FailureReason::AboveMask);
    check(&m);
}

#[test]
fn a_host_that_picks_badly_is_caught_and_undone() {
    // The blind fake (as the DART) hands out addresses at 1 TiB and up.
    let mut m = manager(limits(64 * M1, 1000, HP), K256, true);
    let err = m.map_within(RAM_BASE, K4, &mask(32)).unwrap_err();
    let DmaError::AboveMask { device_addr: Some(d), .. } = err else { panic!("{err}") };
    assert!(d >= FAKE_APERTURE_BASE);
    let text = err.to_string();
    assert!(text.contains("32-bit DMA mask") && text.contains(&format!("{d:#x}")), "{text}");
    assert_eq!(m.mapper().live_count(), 0, "the mapping was undone");
    assert_eq!(m.stats().failures.above_mask, 1);
    // The 40-bit mask: the same.
    assert!(matches!(m.map_within(RAM_BASE, K4, &mask(40)), Err(DmaError::AboveMask { .. })));
    // A 64-bit device takes what the host gives.
    assert!(m.map_within(RAM_BASE, K4, &mask(64)).is_ok());
    check(&m);
}

#[test]
fn a_bad_pick_whose_undo_fails_stays_counted_and_goes_first() {
    let mut m = manager(limits(64 * M1, 1000, HP), K256, true);
    m.mapper_mut().fail_next_unmaps(1);
    let err = m.map_within(RAM_BASE, K4, &mask(32)).unwrap_err();
    assert!(matches!(err, DmaError::AboveMask { device_addr: Some(_), .. }), "{err}");
    assert_eq!(m.mapper().live_count(), 1, "still mapped at the host");
    let s = m.stats();
    assert_eq!((s.live_mappings, s.pinned_mappings, s.failures.host_unmap), (1, 0, 1));
    assert_eq!(m.translate(m.windows()[0].device_addr), Some(RAM_BASE), "tracked");
    check(&m);
    // It serves no request: a new map of the same pages gets its own window.
    let d = m.map(RAM_BASE, K4).unwrap();
    assert_ne!(d, m.cached_windows()[0].device_addr);
    check(&m);
    m.flush_cache().unwrap();
    assert_eq!(m.mapper().live_count(), 1, "only the live map's window is left");
    check(&m);
}

#[test]
fn a_host_that_aligns_badly_fails_large_maps_with_ealign() {
    // The blind fake's aperture starts 16 KiB past a 64 KiB boundary and hands out top-down
    // from its end, also 16 KiB past one: every address it picks is misaligned for 64 KiB.
    let l = limits(64 * M1, 1000, HP);
    let fake = FakeMapper::with_aperture(l, (1 << 40) + K16, 1 << 30).unwrap();
    let ram = [GuestRamRange { start: RAM_BASE, len: 1 << 30 }];
    let config = WindowConfig { window_size: K256, cache_released: true };
    let mut m = WindowManager::new(fake, config, &ram).unwrap();
    let err = m.map(RAM_BASE + M1, K64 * 4).unwrap_err();
    let DmaError::Misaligned { device_addr: Some(d), constraints, .. } = err else {
        panic!("{err}")
    };
    assert_eq!(constraints.alignment, K256, "the automatic rule asked for it");
    assert_ne!(d % K256, 0);
    assert!(err.to_string().contains(&format!("{d:#x}")), "{err}");
    assert_eq!(m.mapper().live_count(), 0, "undone");
    // Small or unaligned maps have no such need.
    assert!(m.map(RAM_BASE + M1 + K4, K64).is_ok());
    check(&m);
}

#[test]
fn identity_maps_over_the_mask_fail_before_any_host_call() {
    let mut m = manager(limits(64 * M1, 1000, ID), K256, true);
    let err = m.map_within(RAM_BASE, K4, &mask(30)).unwrap_err();
    assert!(matches!(err, DmaError::AboveMask { device_addr: Some(RAM_BASE), .. }), "{err}");
    assert_eq!(m.mapper().map_calls(), 0);
    assert_eq!(m.map_within(RAM_BASE, K4, &mask(31)).unwrap(), RAM_BASE);
    check(&m);
}

#[test]
fn budget_checks_come_before_host_calls_with_constraints_too() {
    let mut m = manager(limits(M1, 1000, WITHIN), K256, true);
    let err = m.map_within(RAM_BASE, 2 * M1, &mask(32)).unwrap_err();
    assert!(matches!(err, DmaError::TooLarge { .. }), "{err}");
    assert_eq!(m.mapper().map_calls(), 0);
}

/// One random run: requests with random masks (28 to 64 bits), lengths (powers of two from
/// 64 KiB to 4 MiB among them) and guest addresses, some with explicit alignment.
fn random_run(policy: AddressPolicy, window: u64, budget: u64, seed: u64) {
    let ram = [GuestRamRange { start: RAM_BASE, len: 256 * M1 }];
    let mut m = manager_with_ram(limits(budget, 4096, policy), window, true, &ram);
    let mut rng = XorShift::new(seed);
    let mut live: Vec<(u64, u64, u64)> = Vec::new();
    for step in 0..1500 {
        if live.is_empty() || rng.chance(55) {
            let len = match rng.below(4) {
                0 => K64 << rng.below(7),
                1 => 1 + rng.below(K16),
                2 => K4,
                _ => 1 + rng.below(M1),
            };
            let mut gpa = RAM_BASE + rng.below(256 * M1 - len);
            if rng.chance(60) {
                gpa = align_down(gpa, len.next_power_of_two().min(M2));
            }
            let bits = 28 + rng.below(37) as u32;
            let mut asked = mask(bits);
            if rng.chance(30) {
                let a = 1 << (12 + rng.below(10));
                if rng.chance(90) {
                    gpa = align_down(gpa, a);
                }
                asked = asked.aligned(a);
            }
            let need = asked.aligned(auto_alignment(gpa, len));
            let calls = m.mapper().map_calls();
            match m.map_within(gpa, len, &asked) {
                Ok(d) => {
                    assert!(
                        u128::from(d) + u128::from(len) <= 1u128 << bits,
                        "step {step}: {gpa:#x}+{len:#x} at {d:#x} over {bits} bits"
                    );
                    assert_eq!(d % need.alignment, 0, "step {step}: {d:#x} {need:x?}");
                    for off in [0, len - 1, rng.below(len)] {
                        assert_eq!(m.mapper().translate(d + off), Some(gpa + off), "step {step}");
                    }
                    if policy == ID {
                        assert_eq!(d, gpa);
                    }
                    live.push((d, len, gpa));
                }
                Err(DmaError::Misaligned { device_addr: None, .. }) => {
                    assert_ne!(gpa % need.alignment, 0, "step {step}");
                    assert_eq!(m.mapper().map_calls(), calls, "step {step}: refused up front");
                }
                Err(DmaError::AboveMask { device_addr, .. }) => match policy {
                    // The fake has 16 MiB..1 GiB free below any mask of 28 bits or more.
                    WITHIN => panic!("step {step}: EMASK with room below {bits} bits"),
                    ID => {
                        assert!(gpa + len > 1 << bits, "step {step}");
                        assert_eq!(m.mapper().map_calls(), calls);
                    }
                    _ => {
                        let d = device_addr.unwrap_or_default();
                        assert!(u128::from(d) + u128::from(len) > 1u128 << bits, "step {step}");
                    }
                },
                Err(DmaError::Misaligned { device_addr: Some(d), .. }) => {
                    assert_eq!(policy, HP, "step {step}: only a blind host misaligns");
                    assert_ne!(d % need.alignment, 0, "step {step}");
                }
                Err(e @ (DmaError::NoRoom { .. } | DmaError::TooLarge { .. })) => {
                    assert_eq!(m.mapper().map_calls(), calls, "step {step}: {e}");
                }
                Err(e) => panic!("step {step}: {e}"),
            }
        } else {
            let (d, len, _) = live.swap_remove(rng.below(live.len() as u64) as usize);
            m.unmap(d, len).unwrap();
        }
        if step % 8 == 0 {
            check(&m);
        }
    }
    for (d, len, gpa) in &live {
        assert_eq!(m.translate(*d + len - 1), Some(gpa + len - 1));
    }
    for (d, len, _) in live.drain(..) {
        m.unmap(d, len).unwrap();
    }
    let s = m.stats();
    assert_eq!((s.live_requests, s.pinned_bytes, s.pinned_mappings), (0, 0, 0), "refcounts");
    m.flush_cache().unwrap();
    assert_eq!(m.mapper().live_count(), 0);
    check(&m);
    assert!(m.mapper().peak_bytes() <= budget, "budget");
}

#[test]
fn random_constrained_maps_never_break_the_mask_or_alignment() {
    for (i, policy) in [WITHIN, HP, ID].into_iter().enumerate() {
        for window in [K16, K256] {
            for budget in [8 * M1, 64 * M1] {
                for seed in 0..3 {
                    random_run(policy, window, budget, (i as u64) << 40 | window | budget | seed);
                }
            }
        }
    }
}
