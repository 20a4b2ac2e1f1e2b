//! The DART mapper: every request checked before the dext sees it, the dext's addresses
//! returned, unmaps exact.

use std::sync::Arc;

use super::fake::{fake, FakeHandle, BUS_BASE};
use crate::dma::{
    AddressPolicy, GuestRamRange, HostMapper, MapperLimits, WindowConfig, WindowManager,
};
use crate::driverkit::protocol::{Selector, IO_RETURN_NOT_FOUND, IO_RETURN_NO_SPACE};
use crate::driverkit::{DartMapper, DextConnection, DextDevice};
use crate::host::RamRegion;

const K16: u64 = 16 << 10;
const RAM_GPA: u64 = 0x4000_0000;
const RAM_LEN: u64 = 1 << 30;
const HOST: u64 = 0x1_2000_0000;

fn ram() -> Vec<RamRegion> {
    vec![RamRegion { gpa: RAM_GPA, len: RAM_LEN, host_addr: HOST }]
}

fn mapper_with(limits: MapperLimits, ram: Vec<RamRegion>) -> (DartMapper, FakeHandle) {
    let (dext, handle) = fake();
    let connection: Arc<dyn DextConnection> = Arc::new(dext);
    // The device claims it, as in the VMM.
    let device =
        DextDevice::open(super::fake::ADDRESS.parse().unwrap(), connection.clone()).unwrap();
    let mapper = DartMapper::new(connection, ram, limits).unwrap();
    drop(device);
    handle.state().calls.clear();
    (mapper, handle)
}

fn mapper() -> (DartMapper, FakeHandle) {
    mapper_with(MapperLimits::APPLE_DART, ram())
}

fn registers(fake: &FakeHandle) -> usize {
    fake.calls_of(Selector::RegisterDmaRegion).len()
}

#[test]
fn maps_at_the_dexts_addresses_and_unmaps_exactly() {
    let (mut m, fake) = mapper();
    assert_eq!(*m.limits(), MapperLimits::APPLE_DART);
    let a = m.map(RAM_GPA + 4 * K16, 2 * K16).unwrap();
    let b = m.map(RAM_GPA + 4 * K16, 2 * K16).unwrap();
    assert_eq!(a, BUS_BASE, "the bus address the dext returned");
    assert_ne!(a, b, "the same guest pages twice get two regions");
    let calls = fake.calls_of(Selector::RegisterDmaRegion);
    assert_eq!(calls[0][1..], [HOST + 4 * K16, 2 * K16], "host address of the guest pages");
    assert_ne!(calls[0][0], calls[1][0], "keys are unique");
    assert_eq!((m.live_bytes(), m.live_mappings()), (4 * K16, 2));
    m.unmap(b, 2 * K16).unwrap();
    m.unmap(a, 2 * K16).unwrap();
    assert_eq!(
        fake.calls_of(Selector::UnregisterDmaRegion),
        vec![vec![calls[1][0]], vec![calls[0][0]]]
    );
    assert!(fake.state().regions.is_empty());
    assert_eq!((m.live_bytes(), m.live_mappings()), (0, 0));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn bad_requests_never_reach_the_dext() {
    let limits =
        MapperLimits { max_mapped_bytes: 8 * K16, max_mappings: 2, ..MapperLimits::APPLE_DART };
    let (mut m, fake) = mapper_with(limits, ram());
    for (gpa, len, why) in [
        (RAM_GPA + 0x1000, K16, "granule"),
        (RAM_GPA, K16 + 0x1000, "granule"),
        (RAM_GPA, 0, "granule"),
        (RAM_GPA - K16, K16, "not guest RAM"),
        (RAM_GPA + RAM_LEN - K16, 2 * K16, "not guest RAM"),
        (u64::MAX - K16 + 1, K16, "not guest RAM"),
        (RAM_GPA, 9 * K16, "limit"),
    ] {
        let err = m.map(gpa, len).unwrap_err().to_string();
        assert!(err.contains(why), "{gpa:#x}+{len:#x}: {err}");
    }
    m.map(RAM_GPA, 4 * K16).unwrap();
    let err = m.map(RAM_GPA, 5 * K16).unwrap_err().to_string();
    assert!(err.contains("would pass the DART's 128 KiB limit"), "{err}");
    m.map(RAM_GPA, K16).unwrap();
    let err = m.map(RAM_GPA, K16).unwrap_err().to_string();
    assert!(err.contains("2 mappings are live"), "{err}");
    assert_eq!(registers(&fake), 2, "only the two good requests reached the dext");
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn unaligned_host_memory_and_oversized_regions_are_refused() {
    // Guest RAM whose host mapping is only 4 KiB-aligned: the DART would choke on it.
    let (mut m, fake) = mapper_with(
        MapperLimits::APPLE_DART,
        vec![RamRegion { gpa: RAM_GPA, len: RAM_LEN, host_addr: HOST + 0x1000 }],
    );
    let err = m.map(RAM_GPA, K16).unwrap_err().to_string();
    assert!(err.contains("not 16 KiB-aligned"), "{err}");
    // More than the dext maps device-contiguously (its chunk), even within the byte limit.
    let (mut m2, fake2) = mapper_with(
        MapperLimits::APPLE_DART,
        vec![RamRegion { gpa: 0, len: 4 << 30, host_addr: HOST }],
    );
    let err = m2.map(0, (1536 << 20) + K16).unwrap_err().to_string();
    assert!(err.contains("device-contiguously") || err.contains("limit"), "{err}");
    assert_eq!(registers(&fake) + registers(&fake2), 0);
}

#[test]
fn unmaps_must_name_a_live_region() {
    let (mut m, fake) = mapper();
    let a = m.map(RAM_GPA, 2 * K16).unwrap();
    let err = m.unmap(a, K16).unwrap_err().to_string();
    assert!(err.contains("0x8000 bytes long"), "{err}");
    let err = m.unmap(a + K16, K16).unwrap_err().to_string();
    assert!(err.contains("no mapping starts there"), "{err}");
    assert!(fake.calls_of(Selector::UnregisterDmaRegion).is_empty(), "refused before the dext");
    m.unmap(a, 2 * K16).unwrap();
    assert!(m.unmap(a, 2 * K16).is_err(), "twice");
    assert_eq!(fake.calls_of(Selector::UnregisterDmaRegion).len(), 1);
}

#[test]
fn unusable_replies_are_given_back() {
    let (mut m, fake) = mapper();
    // The DART split the region: not device-contiguous.
    fake.state().register_reply = Some([2, BUS_BASE, K16]);
    let err = m.map(RAM_GPA, 2 * K16).unwrap_err().to_string();
    assert!(err.contains("2 segments"), "{err}");
    // A bus address inside a live region.
    let a = m.map(RAM_GPA, 2 * K16).unwrap();
    fake.state().register_reply = Some([1, a + K16, 2 * K16]);
    let err = m.map(RAM_GPA + 8 * K16, 2 * K16).unwrap_err().to_string();
    assert!(err.contains("inside the live region"), "{err}");
    assert_eq!(fake.calls_of(Selector::UnregisterDmaRegion).len(), 2, "both released");
    assert_eq!(fake.state().regions.len(), 1);
    assert_eq!((m.live_bytes(), m.live_mappings()), (2 * K16, 1));
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}

#[test]
fn dext_failures_leave_the_books_straight() {
    let (mut m, fake) = mapper();
    fake.state().fail.insert(Selector::RegisterDmaRegion, IO_RETURN_NO_SPACE);
    let err = m.map(RAM_GPA, K16).unwrap_err().to_string();
    assert!(err.contains("region slots"), "{err}");
    assert_eq!((m.live_bytes(), m.live_mappings()), (0, 0));
    let a = m.map(RAM_GPA, K16).unwrap();
    fake.state().fail.insert(Selector::UnregisterDmaRegion, IO_RETURN_NOT_FOUND);
    assert!(m.unmap(a, K16).is_err());
    assert_eq!((m.live_bytes(), m.live_mappings()), (K16, 1), "still mapped, counted");
    m.unmap(a, K16).unwrap();
    assert_eq!(m.live_mappings(), 0);
}

#[test]
fn limits_past_the_dart_are_refused() {
    let (dext, _fake) = fake();
    let connection: Arc<dyn DextConnection> = Arc::new(dext);
    let build = |limits| DartMapper::new(connection.clone(), ram(), limits);
    let dart = MapperLimits::APPLE_DART;
    let err = build(MapperLimits { max_mapped_bytes: 2 << 30, ..dart }).unwrap_err().to_string();
    assert!(err.contains("dma-limit"), "{err}");
    let err = build(MapperLimits { alignment: 4096, ..dart }).unwrap_err().to_string();
    assert!(err.contains("dma-align"), "{err}");
    let err = build(MapperLimits { max_mappings: 70_000, ..dart }).unwrap_err().to_string();
    assert!(err.contains("dma-max-maps"), "{err}");
    let m = build(MapperLimits { alignment: 64 << 10, policy: AddressPolicy::Identity, ..dart })
        .unwrap();
    assert_eq!(m.limits().policy, AddressPolicy::HostPicks, "the DART always picks");
}

#[test]
fn serves_the_window_manager_within_the_dart() {
    let limits =
        MapperLimits { max_mapped_bytes: 64 * K16, max_mappings: 6, ..MapperLimits::APPLE_DART };
    let (m, fake) = mapper_with(limits, ram());
    let config = WindowConfig { window_size: 4 * K16, cache_released: true };
    let mut wm = WindowManager::new(
        Box::new(m) as Box<dyn HostMapper>,
        config,
        &[GuestRamRange { start: RAM_GPA, len: RAM_LEN }],
    )
    .unwrap();
    let mut live = Vec::new();
    let mut rng = crate::testing::XorShift::new(0x9e37_79b9_u64);
    for step in 0..2_000 {
        let seed = rng.next_u64();
        if live.len() < 5 && seed % 3 != 0 {
            let gpa = RAM_GPA + (seed >> 8) % (RAM_LEN - 4 * K16);
            let len = 1 + (seed >> 40) % (2 * K16);
            let d = wm.map(gpa, len).unwrap();
            assert!(d >= BUS_BASE, "step {step}");
            assert_eq!(wm.translate(d), Some(gpa), "step {step}");
            live.push((d, len));
        } else if let Some((d, len)) = live.pop() {
            wm.unmap(d, len).unwrap();
        }
        let s = wm.stats();
        assert!(s.live_bytes <= 64 * K16 && s.live_mappings <= 6, "step {step}: {s}");
    }
    wm.reset().unwrap();
    wm.flush_cache().unwrap();
    assert!(fake.state().regions.is_empty());
    assert!(fake.violations().is_empty(), "{:?}", fake.violations());
}
