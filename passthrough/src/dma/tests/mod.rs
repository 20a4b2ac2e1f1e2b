//! Tests of the window manager as a whole: unit scenarios, randomized properties against a
//! model, and the "90% of maps are 4 KiB" workload measurement.

mod constraints;
mod property;
mod unit;
mod workload;

use super::testing::FakeMapper;
use super::{AddressPolicy, GuestRamRange, MapperLimits, WindowConfig, WindowManager};

pub(crate) const K4: u64 = 4 << 10;
pub(crate) const K16: u64 = 16 << 10;
pub(crate) const K256: u64 = 256 << 10;
pub(crate) const M1: u64 = 1 << 20;
/// Where test guest RAM starts.
pub(crate) const RAM_BASE: u64 = 0x4000_0000;

pub(crate) use crate::testing::XorShift;

/// DART-like limits with a chosen budget.
pub(crate) fn limits(max_bytes: u64, max_maps: u32, policy: AddressPolicy) -> MapperLimits {
    MapperLimits { max_mapped_bytes: max_bytes, max_mappings: max_maps, alignment: K16, policy }
}

/// A manager over a fake mapper with `ram` as guest RAM.
pub(crate) fn manager_with_ram(
    limits: MapperLimits,
    window_size: u64,
    cache_released: bool,
    ram: &[GuestRamRange],
) -> WindowManager<FakeMapper> {
    let config = WindowConfig { window_size, cache_released };
    WindowManager::new(FakeMapper::new(limits), config, ram).unwrap()
}

/// A manager over a fake mapper with 1 GiB of guest RAM at `RAM_BASE`.
pub(crate) fn manager(
    limits: MapperLimits,
    window_size: u64,
    cache_released: bool,
) -> WindowManager<FakeMapper> {
    manager_with_ram(
        limits,
        window_size,
        cache_released,
        &[GuestRamRange { start: RAM_BASE, len: 1 << 30 }],
    )
}

/// Asserts the manager's invariants and that the fake saw no broken rule and agrees on the
/// numbers.
pub(crate) fn check(m: &WindowManager<FakeMapper>) {
    if let Err(e) = m.check_invariants() {
        panic!("invariant broken: {e}\nwindows: {:#x?}", m.windows());
    }
    let fake = m.mapper();
    assert!(fake.violations().is_empty(), "mapper violations: {:?}", fake.violations());
    let stats = m.stats();
    assert_eq!(stats.live_bytes, fake.live_bytes());
    assert_eq!(stats.live_mappings, fake.live_count() as u64);
    assert_eq!(stats.host_map_calls, fake.map_calls());
    assert_eq!(stats.host_unmap_calls, fake.unmap_calls());
    for w in m.windows() {
        assert_eq!(fake.translate(w.device_addr), Some(w.gpa), "window {w:x?}");
    }
}
