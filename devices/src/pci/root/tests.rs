use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::pci::config::{BarKind, ConfigSpace, PciIds, BAR0, COMMAND};
use crate::pci::testing::{read_le, XorShift, FUZZ_SIZES};

type BarLog = Arc<Mutex<Vec<(usize, u64, Vec<u8>)>>>;

/// An endpoint with one 16 KiB 64-bit BAR that records what reaches it.
struct FakeEndpoint {
    config: ConfigSpace,
    requester_id: Arc<Mutex<Option<u16>>>,
    bar_writes: BarLog,
    /// Bus resets seen.
    resets: Arc<AtomicUsize>,
}

impl FakeEndpoint {
    fn new() -> (Self, Arc<Mutex<Option<u16>>>, BarLog) {
        Self::with_device_id(0x2204)
    }

    /// An NVIDIA function with `device_id`, to tell the functions of one device apart.
    fn with_device_id(device_id: u16) -> (Self, Arc<Mutex<Option<u16>>>, BarLog) {
        let ids = PciIds { vendor_id: 0x10de, device_id, ..PciIds::default() };
        let mut config = ConfigSpace::new_endpoint(&ids);
        config.add_memory_bar(0, 0x4000, BarKind::Memory64, false).unwrap();
        let requester_id = Arc::new(Mutex::new(None));
        let bar_writes = BarLog::default();
        let endpoint = Self {
            config,
            requester_id: requester_id.clone(),
            bar_writes: bar_writes.clone(),
            resets: Arc::default(),
        };
        (endpoint, requester_id, bar_writes)
    }
}

impl PciFunction for FakeEndpoint {
    fn name(&self) -> &str {
        "fake"
    }
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (byte, value) in data.iter_mut().zip([bar as u8, offset as u8]) {
            *byte = value;
        }
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.bar_writes.lock().unwrap().push((bar, offset, data.to_vec()));
    }
    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }
    fn set_requester_id(&mut self, requester_id: u16) {
        *self.requester_id.lock().unwrap() = Some(requester_id);
    }
    fn bus_reset(&mut self) {
        self.resets.fetch_add(1, Ordering::SeqCst);
        // Power-on: decoding off, BAR 0 unplaced.
        self.config.write(COMMAND, &[0, 0]);
        self.config.write(BAR0, &[0; 4]);
        self.config.write(BAR0 + 4, &[0; 4]);
    }
}

fn ecam_offset(bus: u8, device: u8, register: u16) -> u64 {
    u64::from(bus) << 20 | u64::from(device) << 15 | u64::from(register)
}

fn ecam_read32(root: &PciRoot, bus: u8, device: u8, register: u16) -> u32 {
    read_le(4, |d| root.ecam_read(ecam_offset(bus, device, register), d)) as u32
}

fn ecam_write32(root: &PciRoot, bus: u8, device: u8, register: u16, value: u32) {
    root.ecam_write(ecam_offset(bus, device, register), &value.to_le_bytes());
}

/// ECAM offset of `bus`/`device`/`function`.
fn ecam_offset_fn(bus: u8, device: u8, function: u8, register: u16) -> u64 {
    ecam_offset(bus, device, register) | u64::from(function) << 12
}

fn ecam_read_fn(root: &PciRoot, bus: u8, function: u8, register: u16, len: usize) -> u64 {
    read_le(len, |d| root.ecam_read(ecam_offset_fn(bus, 0, function, register), d))
}

fn ecam_write32_fn(root: &PciRoot, bus: u8, function: u8, register: u16, value: u32) {
    root.ecam_write(ecam_offset_fn(bus, 0, function, register), &value.to_le_bytes());
}

/// What the test keeps of one function it attached.
struct Attached {
    id: FunctionId,
    requester_id: Arc<Mutex<Option<u16>>>,
    bar_writes: BarLog,
    resets: Arc<AtomicUsize>,
}

/// A root with one port (00:01.0) and a function with device id `0x2200 + n` at each
/// function number `n` of `functions`, attached in order.
fn root_with_functions(functions: &[u8]) -> (PciRoot, FunctionId, Vec<Attached>) {
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    let attached = functions
        .iter()
        .map(|&n| {
            let (endpoint, requester_id, bar_writes) =
                FakeEndpoint::with_device_id(0x2200 + u16::from(n));
            let resets = endpoint.resets.clone();
            let id = root.attach_function_to_port(port, n, Box::new(endpoint)).unwrap();
            assert_eq!(id, FunctionId::BehindPort { port: 1, function: n });
            Attached { id, requester_id, bar_writes, resets }
        })
        .collect();
    (root, port, attached)
}

#[test]
fn host_bridge_is_at_00_00_0_and_absent_functions_read_all_ones() {
    let root = PciRoot::new();
    assert_eq!(ecam_read32(&root, 0, 0, 0), 0x0008_1b36);
    assert_eq!(ecam_read32(&root, 0, 0, 8) >> 8, 0x06_00_00);
    assert_eq!(ecam_read32(&root, 0, 1, 0), u32::MAX);
    assert_eq!(ecam_read32(&root, 7, 0, 0), u32::MAX);
    // Function 1 of device 0.
    assert_eq!(read_le(4, |d| root.ecam_read(1 << 12, d)), u64::from(u32::MAX));
    // Writes to absent functions are ignored without panicking.
    ecam_write32(&root, 0, 9, 4, 0xffff);
    // Malformed accesses read all-ones even on a present function.
    assert_eq!(read_le(2, |d| root.ecam_read(1, d)), 0xffff);
    assert_eq!(read_le(8, |d| root.ecam_read(0, d)), u64::MAX);
    assert_eq!(root.requester_id(FunctionId::Bus0 { device: 0 }), Some(0));
}

#[test]
fn device_behind_root_port_appears_on_the_programmed_bus() {
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    assert_eq!(port, FunctionId::Bus0 { device: 1 });
    let (endpoint, requester_id, _) = FakeEndpoint::new();
    let id = root.attach_to_port(port, Box::new(endpoint)).unwrap();
    assert_eq!(id, FunctionId::BehindPort { port: 1, function: 0 });
    assert_eq!(ecam_read32(&root, 0, 1, 0), 0x000c_1b36);
    // Unprogrammed port: the device is hidden.
    assert_eq!(ecam_read32(&root, 1, 0, 0), u32::MAX);
    assert_eq!(root.requester_id(id), None);
    assert_eq!(*requester_id.lock().unwrap(), None);
    // Primary 0, secondary 1, subordinate 1.
    ecam_write32(&root, 0, 1, 0x18, 0x0001_0100);
    assert_eq!(ecam_read32(&root, 1, 0, 0), 0x2204_10de);
    assert_eq!(ecam_read32(&root, 1, 1, 0), u32::MAX, "only device 0 behind a port");
    assert_eq!(read_le(4, |d| root.ecam_read(ecam_offset(1, 0, 0) | 1 << 12, d)), 0xffff_ffff);
    assert_eq!(ecam_read32(&root, 2, 0, 0), u32::MAX);
    assert_eq!(root.requester_id(id), Some(0x0100));
    assert_eq!(*requester_id.lock().unwrap(), Some(0x0100));
    // Renumbering moves it.
    ecam_write32(&root, 0, 1, 0x18, 0x0005_0400);
    assert_eq!(ecam_read32(&root, 1, 0, 0), u32::MAX);
    assert_eq!(ecam_read32(&root, 4, 0, 0), 0x2204_10de);
    assert_eq!(ecam_read32(&root, 5, 0, 0), u32::MAX, "subordinate bus has no device");
    assert_eq!(*requester_id.lock().unwrap(), Some(0x0400));
    assert_eq!(format_bdf(0x0400), "04:00.0");
}

#[test]
fn integrated_endpoint_gets_its_requester_id() {
    let root = PciRoot::new();
    root.add_root_port().unwrap();
    let (endpoint, requester_id, _) = FakeEndpoint::new();
    let id = root.add_function(Box::new(endpoint)).unwrap();
    assert_eq!(id, FunctionId::Bus0 { device: 2 });
    assert_eq!(*requester_id.lock().unwrap(), Some(0x10));
    assert_eq!(root.requester_id(id), Some(0x10));
    let names: Vec<_> = root.functions().into_iter().map(|f| f.name).collect();
    assert_eq!(names, ["host-bridge", "root-port1", "fake"]);
}

#[test]
fn bar_accesses_route_to_the_enabled_bar() {
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    let (endpoint, _, writes) = FakeEndpoint::new();
    let id = root.attach_to_port(port, Box::new(endpoint)).unwrap();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = changes.clone();
    root.set_bar_change_hook(Some(Box::new(move |c: &BarChange| {
        sink.lock().unwrap().push(c.clone());
    })));
    ecam_write32(&root, 0, 1, 0x18, 0x0001_0100);
    ecam_write32(&root, 1, 0, BAR0, 0x1000_4000);
    ecam_write32(&root, 1, 0, BAR0 + 4, 0);
    let mut data = [0u8; 4];
    assert!(!root.mmio_read(0x1000_4010, &mut data), "memory decoding is off");
    assert_eq!(data, [0xff; 4]);
    ecam_write32(&root, 1, 0, COMMAND, 0x2);
    assert!(root.mmio_read(0x1000_4010, &mut data));
    assert_eq!(data, [0, 0x10, 0, 0]);
    assert!(root.mmio_write(0x1000_7ff8, &[1; 8]));
    assert!(!root.mmio_write(0x1000_7ffc, &[1; 8]), "straddles the end of the BAR");
    assert_eq!(*writes.lock().unwrap(), vec![(0, 0x3ff8, vec![1; 8])]);
    let region = BarRegion {
        index: 0,
        address: 0x1000_4000,
        size: 0x4000,
        prefetchable: false,
        is_64bit: true,
    };
    assert_eq!(root.bar_regions(), vec![(id, region)]);
    // Move it to the 64-bit window.
    ecam_write32(&root, 1, 0, BAR0 + 4, 0x80);
    assert!(root.mmio_read(0x80_1000_4000, &mut data));
    assert!(!root.mmio_read(0x1000_4000, &mut data));
    let moved = BarRegion { address: 0x80_1000_4000, ..region };
    assert_eq!(
        *changes.lock().unwrap(),
        vec![
            BarChange {
                id,
                function: "fake".into(),
                bar: 0,
                old: None,
                new: Some(region),
                unplugged: false
            },
            BarChange {
                id,
                function: "fake".into(),
                bar: 0,
                old: Some(region),
                new: Some(moved),
                unplugged: false
            },
        ]
    );
}

#[test]
fn trace_hook_sees_config_and_bar_accesses() {
    let root = PciRoot::new();
    let (endpoint, _, _) = FakeEndpoint::new();
    root.add_function(Box::new(endpoint)).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    root.set_trace_hook(Some(Box::new(move |e: &TraceEvent<'_>| {
        sink.lock().unwrap().push((e.kind, e.function.to_string(), e.offset, e.size, e.value));
    })));
    ecam_write32(&root, 0, 1, BAR0, 0x2000_0000);
    root.ecam_write(ecam_offset(0, 1, COMMAND), &[2, 0]);
    assert_eq!(ecam_read32(&root, 0, 1, 0), 0x2204_10de);
    root.mmio_write(0x2000_0008, &[0xaa, 0xbb]);
    let mut data = [0u8; 2];
    root.mmio_read(0x2000_0004, &mut data);
    root.set_trace_hook(None);
    ecam_read32(&root, 0, 0, 0);
    let fake = "fake".to_string();
    assert_eq!(
        *events.lock().unwrap(),
        vec![
            (TraceKind::ConfigWrite, fake.clone(), 0x10, 4, 0x2000_0000),
            (TraceKind::ConfigWrite, fake.clone(), 0x04, 2, 2),
            (TraceKind::ConfigRead, fake.clone(), 0, 4, 0x2204_10de),
            (TraceKind::BarWrite { bar: 0 }, fake.clone(), 8, 2, 0xbbaa),
            (TraceKind::BarRead { bar: 0 }, fake, 4, 2, 0x0400),
        ]
    );
}

#[test]
fn mmio_views_forward_to_the_root() {
    let root = PciRoot::new();
    let (endpoint, _, writes) = FakeEndpoint::new();
    root.add_function(Box::new(endpoint)).unwrap();
    let ecam = PciEcam::new(root.clone());
    let window = PciMmioWindow::new(root.clone(), 0x1000_0000);
    let high = PciMmioWindow::new(root, 0x80_0000_0000);
    ecam.write(ecam_offset(0, 1, BAR0), &0x1000_8000u32.to_le_bytes());
    ecam.write(ecam_offset(0, 1, COMMAND), &[2]);
    let mut data = [0u8; 4];
    ecam.read(ecam_offset(0, 1, 0), &mut data);
    assert_eq!(u32::from_le_bytes(data), 0x2204_10de);
    window.write(0x8004, &[7; 4]);
    high.write(0x8004, &[7; 4]);
    assert_eq!(*writes.lock().unwrap(), vec![(0, 4, vec![7; 4])]);
    window.read(u64::MAX, &mut data);
    high.read(u64::MAX, &mut data);
    assert_eq!(data, [0xff; 4]);
}

#[test]
fn topology_errors() {
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    let (a, _, _) = FakeEndpoint::new();
    let (b, _, _) = FakeEndpoint::new();
    let (c, _, _) = FakeEndpoint::new();
    let endpoint = root.add_function(Box::new(a)).unwrap();
    assert_eq!(
        root.attach_to_port(endpoint, Box::new(b)).unwrap_err(),
        PciRootError::NotARootPort(endpoint)
    );
    let (b, _, _) = FakeEndpoint::new();
    root.attach_to_port(port, Box::new(b)).unwrap();
    let err = root.attach_to_port(port, Box::new(c)).unwrap_err();
    assert!(err.to_string().contains("root-port1"), "{err}");
    for _ in 3..32 {
        root.add_root_port().unwrap();
    }
    assert_eq!(root.add_root_port().unwrap_err(), PciRootError::NoFreeSlot);
    assert!(root.with_function(FunctionId::BehindPort { port: 3, function: 0 }, |_| ()).is_none());
    assert!(root.with_function(FunctionId::Bus0 { device: 31 }, |_| ()).is_some());
}

#[test]
fn random_accesses_keep_bridges_intact() {
    let mut rng = XorShift::new(0xec0a);
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    let (endpoint, _, _) = FakeEndpoint::new();
    root.attach_to_port(port, Box::new(endpoint)).unwrap();
    let (endpoint, _, _) = FakeEndpoint::new();
    root.add_function(Box::new(endpoint)).unwrap();
    // Every register of the bridges and the first buses, then random offsets anywhere.
    for (bus, device) in [(0u8, 0u8), (0, 1), (0, 2), (0, 3), (1, 0), (2, 0)] {
        for register in 0..0x1004u16 {
            for len in FUZZ_SIZES {
                let offset = ecam_offset(bus, device, 0) + u64::from(register);
                root.ecam_write(offset, &rng.bytes(len));
                let mut data = vec![0; len];
                root.ecam_read(offset, &mut data);
            }
        }
    }
    for _ in 0..20_000 {
        let len = FUZZ_SIZES[rng.below(FUZZ_SIZES.len() as u64) as usize];
        let offset = rng.below(ECAM_SIZE + 0x1000);
        root.ecam_write(offset, &rng.bytes(len));
        let mut data = vec![0; len];
        root.ecam_read(offset, &mut data);
        let address = match rng.below(3) {
            0 => 0x1000_0000 + rng.below(0x2000_0000),
            1 => rng.next(),
            _ => root.bar_regions().first().map_or(0, |(_, r)| r.address + rng.below(r.size)),
        };
        root.mmio_write(address, &rng.bytes(len));
        root.mmio_read(address, &mut data);
    }
    assert_eq!(ecam_read32(&root, 0, 0, 0), 0x0008_1b36);
    assert_eq!(ecam_read32(&root, 0, 1, 0), 0x000c_1b36);
    assert_eq!(ecam_read32(&root, 0, 1, 0x0c) >> 16 & 0x7f, 1);
    assert_eq!(ecam_read32(&root, 0, 2, 0), 0x2204_10de);
    assert_eq!(root.functions().len(), 4);
}

#[test]
fn two_functions_behind_a_port_enumerate_as_one_device() {
    let (root, _, attached) = root_with_functions(&[0, 1]);
    // Hidden until the guest numbers the port.
    assert_eq!(ecam_read_fn(&root, 1, 1, 0, 4), u64::from(u32::MAX));
    assert!(attached.iter().all(|a| root.requester_id(a.id).is_none()));
    ecam_write32(&root, 0, 1, 0x18, 0x0001_0100);
    assert_eq!(ecam_read_fn(&root, 1, 0, 0, 4), 0x2200_10de);
    assert_eq!(ecam_read_fn(&root, 1, 1, 0, 4), 0x2201_10de);
    for function in 2..8 {
        assert_eq!(ecam_read_fn(&root, 1, function, 0, 4), u64::from(u32::MAX));
        assert_eq!(ecam_read_fn(&root, 1, function, 0x0e, 1), 0xff);
    }
    // Other devices on the secondary bus, and function 1 on other buses, are absent.
    assert_eq!(ecam_read32(&root, 1, 1, 0), u32::MAX);
    assert_eq!(read_le(4, |d| root.ecam_read(ecam_offset_fn(1, 3, 1, 0), d)), 0xffff_ffff);
    assert_eq!(ecam_read_fn(&root, 2, 1, 0, 4), u64::from(u32::MAX));
    assert_eq!(ecam_read_fn(&root, 0, 1, 0, 4), u64::from(u32::MAX), "00:00.1");
    assert_eq!(root.resolve(1, 1), Some(attached[1].id));
    assert_eq!(root.resolve(1, 2), None);
    assert_eq!(root.resolve(1, 9), None);
    // Requester ids: bus << 8 | function (device 0).
    assert_eq!(root.requester_id(attached[0].id), Some(0x0100));
    assert_eq!(root.requester_id(attached[1].id), Some(0x0101));
    assert_eq!(*attached[0].requester_id.lock().unwrap(), Some(0x0100));
    assert_eq!(*attached[1].requester_id.lock().unwrap(), Some(0x0101));
    assert_eq!(format_bdf(0x0101), "01:00.1");
    // Renumbering moves both.
    ecam_write32(&root, 0, 1, 0x18, 0x0004_0400);
    assert_eq!(ecam_read_fn(&root, 1, 1, 0, 4), u64::from(u32::MAX));
    assert_eq!(ecam_read_fn(&root, 4, 1, 0, 4), 0x2201_10de);
    assert_eq!(*attached[0].requester_id.lock().unwrap(), Some(0x0400));
    assert_eq!(*attached[1].requester_id.lock().unwrap(), Some(0x0401));
    let listed: Vec<_> =
        root.functions().into_iter().map(|f| (f.id, f.name, f.requester_id)).collect();
    assert_eq!(
        listed,
        [
            (FunctionId::Bus0 { device: 0 }, "host-bridge".to_string(), Some(0)),
            (FunctionId::Bus0 { device: 1 }, "root-port1".to_string(), Some(0x08)),
            (attached[0].id, "fake".to_string(), Some(0x0400)),
            (attached[1].id, "fake".to_string(), Some(0x0401)),
        ]
    );
    assert_eq!(attached[1].id.to_string(), "function 1 behind root port 00:01.0");
}

#[test]
fn three_functions_behind_a_port_enumerate_even_with_a_gap() {
    for functions in [[0u8, 1, 2], [0, 3, 7]] {
        let (root, _, attached) = root_with_functions(&functions);
        ecam_write32(&root, 0, 1, 0x18, 0x0002_0200);
        for function in 0..8u8 {
            let expected = if functions.contains(&function) {
                0x2200_10de | u64::from(function) << 16
            } else {
                u64::from(u32::MAX)
            };
            assert_eq!(ecam_read_fn(&root, 2, function, 0, 4), expected, "{functions:?}");
        }
        for (a, &function) in attached.iter().zip(&functions) {
            let expected = 0x0200 | u16::from(function);
            assert_eq!(root.requester_id(a.id), Some(expected));
            assert_eq!(*a.requester_id.lock().unwrap(), Some(expected));
        }
        let behind: Vec<_> = root
            .functions()
            .into_iter()
            .filter_map(|f| match f.id {
                FunctionId::BehindPort { function, .. } => Some(function),
                FunctionId::Bus0 { .. } => None,
            })
            .collect();
        assert_eq!(behind, functions);
        // The multi-function bit is on function 0 only.
        assert_eq!(ecam_read_fn(&root, 2, 0, 0x0e, 1), 0x80);
        assert_eq!(ecam_read_fn(&root, 2, functions[1], 0x0e, 1), 0x00);
        assert_eq!(ecam_read_fn(&root, 2, functions[2], 0x0e, 1), 0x00);
    }
}

#[test]
fn multi_function_bit_only_with_more_than_one_function() {
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    let (f0, _, _) = FakeEndpoint::with_device_id(0x2200);
    root.attach_to_port(port, Box::new(f0)).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    root.set_trace_hook(Some(Box::new(move |e: &TraceEvent<'_>| {
        sink.lock().unwrap().push((e.id, e.offset, e.size, e.value));
    })));
    ecam_write32(&root, 0, 1, 0x18, 0x0001_0100);
    // Alone: the function's own single-function header.
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0e, 1), 0x00);
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0c, 4) >> 16 & 0xff, 0x00);
    let (f1, _, _) = FakeEndpoint::with_device_id(0x2201);
    root.attach_function_to_port(port, 1, Box::new(f1)).unwrap();
    // Every access width that covers offset 0x0e sees bit 7; others are untouched.
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0e, 1), 0x80);
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0e, 2), 0x0080);
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0c, 4), 0x0080_0000);
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0c, 2), 0x0000);
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0f, 1), 0x00);
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x10, 4), 0x4, "BAR 0 is not touched");
    assert_eq!(ecam_read_fn(&root, 1, 1, 0x0e, 1), 0x00, "only function 0 has it");
    // The header type stays read-only for the guest.
    root.ecam_write(ecam_offset_fn(1, 0, 0, 0x0e), &[0x00]);
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0e, 1), 0x80);
    // Bus-0 functions keep their own headers.
    assert_eq!(ecam_read32(&root, 0, 1, 0x0c) >> 16 & 0xff, 0x01);
    assert_eq!(ecam_read32(&root, 0, 0, 0x0c) >> 16 & 0xff, 0x00);
    // The trace records what the guest saw.
    let f0 = FunctionId::BehindPort { port: 1, function: 0 };
    assert!(events.lock().unwrap().contains(&(f0, 0x0e, 1, 0x80)));
}

/// Numbers port 00:01.0's buses (secondary 1) and keeps what the BAR-change hook is told.
fn record_bar_changes(root: &PciRoot) -> Arc<Mutex<Vec<BarChange>>> {
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = changes.clone();
    root.set_bar_change_hook(Some(Box::new(move |c: &BarChange| {
        sink.lock().unwrap().push(c.clone());
    })));
    ecam_write32(root, 0, 1, 0x18, 0x0001_0100);
    changes
}

#[test]
fn bars_of_function_1_route_to_function_1() {
    let (root, _, attached) = root_with_functions(&[0, 1]);
    let changes = record_bar_changes(&root);
    // Function 0's BAR 0 at 0x1000_0000, function 1's at 0x1000_4000.
    for (function, address) in [(0u8, 0x1000_0000u32), (1, 0x1000_4000)] {
        ecam_write32_fn(&root, 1, function, BAR0, address);
        ecam_write32_fn(&root, 1, function, BAR0 + 4, 0);
    }
    ecam_write32_fn(&root, 1, 1, COMMAND, 0x2);
    assert!(!root.mmio_write(0x1000_0008, &[1; 4]), "function 0 does not decode yet");
    assert!(root.mmio_write(0x1000_4008, &[2; 4]));
    assert_eq!(*attached[1].bar_writes.lock().unwrap(), vec![(0, 8, vec![2; 4])]);
    assert!(attached[0].bar_writes.lock().unwrap().is_empty());
    let region = BarRegion {
        index: 0,
        address: 0x1000_4000,
        size: 0x4000,
        prefetchable: false,
        is_64bit: true,
    };
    assert_eq!(root.bar_regions(), vec![(attached[1].id, region)]);
    ecam_write32_fn(&root, 1, 0, COMMAND, 0x2);
    assert!(root.mmio_write(0x1000_0008, &[1; 4]));
    assert_eq!(*attached[0].bar_writes.lock().unwrap(), vec![(0, 8, vec![1; 4])]);
    assert_eq!(attached[1].bar_writes.lock().unwrap().len(), 1);
    // Moving function 1's BAR tells the hook about function 1 only.
    ecam_write32_fn(&root, 1, 1, BAR0 + 4, 0x80);
    assert!(root.mmio_write(0x80_1000_4000, &[3; 4]));
    assert_eq!(attached[1].bar_writes.lock().unwrap().len(), 2);
    let region0 = BarRegion { address: 0x1000_0000, ..region };
    let moved = BarRegion { address: 0x80_1000_4000, ..region };
    let change = |id, old, new| BarChange {
        id,
        function: "fake".into(),
        bar: 0,
        old,
        new,
        unplugged: false,
    };
    assert_eq!(
        *changes.lock().unwrap(),
        vec![
            change(attached[1].id, None, Some(region)),
            change(attached[0].id, None, Some(region0)),
            change(attached[1].id, Some(region), Some(moved)),
        ]
    );
}

/// Bridge Control (0x3e) sits in the upper half of the dword at 0x3c.
fn write_bridge_control(root: &PciRoot, value: u16) {
    root.ecam_write(ecam_offset(0, 1, 0x3e), &value.to_le_bytes());
}

#[test]
fn secondary_bus_reset_resets_each_function_behind_the_port_once() {
    let (root, _, attached) = root_with_functions(&[0, 1]);
    let changes = record_bar_changes(&root);
    for (function, address) in [(0u8, 0x1000_0000u32), (1, 0x1000_4000)] {
        ecam_write32_fn(&root, 1, function, BAR0, address);
        ecam_write32_fn(&root, 1, function, BAR0 + 4, 0);
        ecam_write32_fn(&root, 1, function, COMMAND, 0x2);
    }
    assert_eq!(root.bar_regions().len(), 2);
    changes.lock().unwrap().clear();
    // Set (the rising edge resets), write again while set (no second reset), clear.
    write_bridge_control(&root, 0x40);
    write_bridge_control(&root, 0x40 | 0x2);
    write_bridge_control(&root, 0);
    for function in &attached {
        assert_eq!(function.resets.load(Ordering::SeqCst), 1);
    }
    assert!(root.bar_regions().is_empty(), "a reset function decodes nothing");
    assert!(!root.mmio_write(0x1000_4008, &[2; 4]));
    let hook_saw: Vec<_> = changes.lock().unwrap().iter().map(|c| (c.id, c.new)).collect();
    assert_eq!(hook_saw, vec![(attached[0].id, None), (attached[1].id, None)]);
    // Another pulse resets again; the functions are reachable and reprogrammable after.
    write_bridge_control(&root, 0x40);
    write_bridge_control(&root, 0);
    assert_eq!(attached[1].resets.load(Ordering::SeqCst), 2);
    ecam_write32_fn(&root, 1, 1, BAR0, 0x1000_4000);
    ecam_write32_fn(&root, 1, 1, COMMAND, 0x2);
    assert!(root.mmio_write(0x1000_4008, &[2; 4]));
}

#[test]
fn multi_function_topology_errors() {
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    let fake = || Box::new(FakeEndpoint::new().0);
    let endpoint = root.add_function(fake()).unwrap();
    assert_eq!(
        root.attach_function_to_port(endpoint, 1, fake()).unwrap_err(),
        PciRootError::NotARootPort(endpoint)
    );
    let behind = FunctionId::BehindPort { port: 1, function: 0 };
    assert_eq!(
        root.attach_function_to_port(behind, 0, fake()).unwrap_err(),
        PciRootError::NotARootPort(behind)
    );
    let err = root.attach_function_to_port(port, 1, fake()).unwrap_err();
    assert_eq!(err, PciRootError::NoFunctionZero { port: "root-port1".into(), function: 1 });
    assert!(err.to_string().contains("function 0"), "{err}");
    assert_eq!(
        root.attach_function_to_port(port, 8, fake()).unwrap_err(),
        PciRootError::BadFunctionNumber(8)
    );
    // Nothing was attached by the failures.
    assert_eq!(root.functions().len(), 3);
    root.attach_function_to_port(port, 0, fake()).unwrap();
    root.attach_function_to_port(port, 5, fake()).unwrap();
    for function in [0, 5] {
        assert_eq!(
            root.attach_function_to_port(port, function, fake()).unwrap_err(),
            PciRootError::PortOccupied { port: "root-port1".into(), function }
        );
    }
    let err = root.attach_to_port(port, fake()).unwrap_err();
    assert!(err.to_string().contains("root-port1 already has function 0"), "{err}");
    assert_eq!(
        root.attach_function_to_port(port, u8::MAX, fake()).unwrap_err(),
        PciRootError::BadFunctionNumber(u8::MAX)
    );
    assert_eq!(root.functions().len(), 5);
    assert!(root.with_function(FunctionId::BehindPort { port: 1, function: 5 }, |_| ()).is_some());
    assert!(root.with_function(FunctionId::BehindPort { port: 1, function: 4 }, |_| ()).is_none());
    assert!(root
        .with_function(FunctionId::BehindPort { port: 1, function: 200 }, |_| ())
        .is_none());
    assert_eq!(root.requester_id(FunctionId::BehindPort { port: 1, function: 200 }), None);
    assert_eq!(root.requester_id(FunctionId::BehindPort { port: 2, function: 0 }), None);
}

#[test]
fn random_accesses_behind_a_multi_function_port_keep_it_intact() {
    let mut rng = XorShift::new(0x3f1);
    let (root, _, _) = root_with_functions(&[0, 1, 2]);
    ecam_write32(&root, 0, 1, 0x18, 0x0001_0100);
    // Every function number of the secondary bus, each register, every width.
    for function in 0..8u8 {
        for register in 0..0x1004u16 {
            for len in FUZZ_SIZES {
                let offset = ecam_offset_fn(1, 0, function, 0) + u64::from(register);
                root.ecam_write(offset, &rng.bytes(len));
                let mut data = vec![0; len];
                root.ecam_read(offset, &mut data);
            }
        }
    }
    for _ in 0..5_000 {
        let len = FUZZ_SIZES[rng.below(FUZZ_SIZES.len() as u64) as usize];
        let offset = ecam_offset_fn(1, 0, 0, 0) + rng.below(8 << 12);
        root.ecam_write(offset, &rng.bytes(len));
        let mut data = vec![0; len];
        root.ecam_read(offset, &mut data);
        let address = root.bar_regions().first().map_or(0, |(_, r)| r.address + rng.below(r.size));
        root.mmio_write(address, &rng.bytes(len));
        root.mmio_read(address, &mut data);
    }
    // The port's bus numbers were never touched: the functions are where they were.
    for function in 0..3u8 {
        assert_eq!(ecam_read_fn(&root, 1, function, 0, 4), 0x2200_10de | u64::from(function) << 16);
    }
    assert_eq!(ecam_read_fn(&root, 1, 0, 0x0e, 1), 0x80);
    assert_eq!(ecam_read_fn(&root, 1, 3, 0, 4), u64::from(u32::MAX));
    assert_eq!(root.functions().len(), 5);
}

/// An endpoint whose BAR writes block until the test releases them, as an aperture-dma
/// doorbell does while the host maps 128 buffers.
struct BlockingEndpoint {
    config: ConfigSpace,
    entered: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
    bar_writes: BarLog,
}

impl PciFunction for BlockingEndpoint {
    fn name(&self) -> &str {
        "blocking"
    }
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.entered.send(()).unwrap();
        self.release.recv().unwrap();
        self.bar_writes.lock().unwrap().push((bar, offset, data.to_vec()));
    }
    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }
}

#[test]
fn a_blocked_bar_write_stalls_only_its_own_function() {
    use std::sync::mpsc::channel;
    let (entered_tx, entered) = channel();
    let (release, release_rx) = channel();
    let slow_writes = BarLog::default();
    let mut config = ConfigSpace::new_endpoint(&PciIds { vendor_id: 0x1b36, ..PciIds::default() });
    config.add_memory_bar(0, 0x1000, BarKind::Memory32, false).unwrap();
    let slow = BlockingEndpoint {
        config,
        entered: entered_tx,
        release: release_rx,
        bar_writes: slow_writes.clone(),
    };
    let root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    root.attach_to_port(port, Box::new(slow)).unwrap();
    let (other, _, other_writes) = FakeEndpoint::new();
    let other_id = root.add_function(Box::new(other)).unwrap();
    assert_eq!(other_id, FunctionId::Bus0 { device: 2 });
    // The views the vCPUs use.
    let ecam = PciEcam::new(root.clone());
    let window = PciMmioWindow::new(root.clone(), 0x1000_0000);
    // Port 00:01.0 numbered bus 1; the slow function's BAR at 0x1000_0000, the other's at
    // 0x1000_4000, both decoding.
    ecam.write(ecam_offset(0, 1, 0x18), &0x0001_0100u32.to_le_bytes());
    ecam.write(ecam_offset(1, 0, BAR0), &0x1000_0000u32.to_le_bytes());
    ecam.write(ecam_offset(1, 0, COMMAND), &[2, 0]);
    ecam.write(ecam_offset(0, 2, BAR0), &0x1000_4000u32.to_le_bytes());
    ecam.write(ecam_offset(0, 2, BAR0 + 4), &0u32.to_le_bytes());
    ecam.write(ecam_offset(0, 2, COMMAND), &[2, 0]);

    let blocked = {
        let window = window.clone();
        std::thread::spawn(move || window.write(0x10, &[0xd0, 0xbe, 0, 0]))
    };
    entered.recv().unwrap();
    // The slow function now holds its lock inside its BAR write. Another vCPU reaches the
    // rest of the hierarchy, and even moves the other function's BAR.
    let (done_tx, done) = channel();
    let other_vcpu = std::thread::spawn(move || {
        let read32 = |offset| read_le(4, |d| ecam.read(offset, d)) as u32;
        let ids = [
            read32(ecam_offset(0, 0, 0)),
            read32(ecam_offset(0, 1, 0)),
            read32(ecam_offset(0, 2, 0)),
        ];
        window.write(0x4008, &[1; 4]);
        let bar = read_le(4, |d| window.read(0x4010, d));
        ecam.write(ecam_offset(0, 2, BAR0), &0x1000_8000u32.to_le_bytes());
        window.write(0x8008, &[2; 4]);
        done_tx.send((ids, bar)).unwrap();
    });
    // A deadlock guard, not a timing assertion: a broken lock order would hang here forever.
    let (ids, bar) = done.recv_timeout(std::time::Duration::from_secs(60)).expect(
        "configuration and BAR accesses of other functions must not wait for a blocked one",
    );
    assert_eq!(ids, [0x0008_1b36, 0x000c_1b36, 0x2204_10de]);
    assert_eq!(bar, 0x1000, "BAR 0 at offset 0x10 of the other function");
    assert_eq!(*other_writes.lock().unwrap(), vec![(0, 8, vec![1; 4]), (0, 8, vec![2; 4])]);
    assert!(slow_writes.lock().unwrap().is_empty(), "still blocked");
    other_vcpu.join().unwrap();
    release.send(()).unwrap();
    blocked.join().unwrap();
    assert_eq!(*slow_writes.lock().unwrap(), vec![(0, 0x10, vec![0xd0, 0xbe, 0, 0])]);
}

#[test]
fn a_hook_that_reenters_pci_is_a_lock_order_violation_not_a_deadlock() {
    let root = PciRoot::new();
    let (endpoint, _, _) = FakeEndpoint::new();
    root.add_function(Box::new(endpoint)).unwrap();
    let inner = root.clone();
    // A trace hook runs with the traced function locked; reading that function's config
    // space from it would deadlock, and is caught as taking a second function lock.
    root.set_trace_hook(Some(Box::new(move |e: &TraceEvent<'_>| {
        if e.kind == TraceKind::ConfigRead {
            inner.ecam_read(ecam_offset(0, 1, 4), &mut [0; 4]);
        }
    })));
    let reader = root.clone();
    let result = std::thread::spawn(move || {
        reader.ecam_read(ecam_offset(0, 1, 0), &mut [0; 4]);
    })
    .join();
    let payload = result.unwrap_err();
    let message = payload.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("lock order violated"), "{message:?}");
    assert!(message.contains("taking Function while holding Function"), "{message:?}");
    // The root still works afterwards (poisoned locks are recovered).
    root.set_trace_hook(None);
    assert_eq!(ecam_read32(&root, 0, 1, 0), 0x2204_10de);
}

#[test]
fn dropping_the_root_frees_functions_whose_bars_are_routed() {
    let (endpoint, requester_id, _) = FakeEndpoint::new();
    let root = PciRoot::new();
    let id = root.add_function(Box::new(endpoint)).unwrap();
    let FunctionId::Bus0 { device } = id else { panic!("{id:?}") };
    // Place BAR 0 and turn decoding on: the routes now point at the function.
    ecam_write32(&root, 0, device, BAR0, 0x1000_0000);
    ecam_write32(&root, 0, device, BAR0 + 4, 0);
    ecam_write32(&root, 0, device, COMMAND, 2);
    let mut data = [0u8; 4];
    assert!(root.mmio_read(0x1000_0000, &mut data), "the BAR is routed");
    assert_eq!(Arc::strong_count(&requester_id), 2, "the function holds the other reference");
    drop(root);
    // Routes and functions must not keep each other alive.
    assert_eq!(Arc::strong_count(&requester_id), 1, "the function was not freed");
}

#[test]
fn system_reset_resets_every_function_and_removes_their_routes() {
    let (root, _, attached) = root_with_functions(&[0, 1]);
    let number_buses = || ecam_write32(&root, 0, 1, 0x18, 0x0001_0100);
    number_buses();
    for (function, address) in [(0u8, 0x1000_0000u32), (1, 0x1000_4000)] {
        ecam_write32_fn(&root, 1, function, BAR0, address);
        ecam_write32_fn(&root, 1, function, BAR0 + 4, 0);
        ecam_write32_fn(&root, 1, function, COMMAND, 0x2);
    }
    write_bridge_control(&root, 0x2);
    ecam_write32(&root, 0, 0, COMMAND, 0x6);
    assert_eq!(root.bar_regions().len(), 2);
    root.system_reset();
    for function in &attached {
        assert_eq!(function.resets.load(Ordering::SeqCst), 1);
    }
    assert!(root.bar_regions().is_empty(), "nothing decodes after power-on");
    assert!(!root.mmio_write(0x1000_4008, &[2; 4]));
    assert_eq!(ecam_read32(&root, 0, 1, 0x3c) >> 16, 0, "the port's bridge control");
    assert_eq!(ecam_read32(&root, 0, 0, COMMAND) & 0xffff, 0, "the host bridge's command");
    assert_eq!(ecam_read32(&root, 1, 0, 0), u32::MAX, "bus 1 is not numbered any more");
    // The next boot numbers and programs them again.
    number_buses();
    ecam_write32_fn(&root, 1, 1, BAR0, 0x1000_4000);
    ecam_write32_fn(&root, 1, 1, COMMAND, 0x2);
    assert!(root.mmio_write(0x1000_4008, &[2; 4]));
}

/// A root whose ports have hot-plug slots (MSIs recorded), port 00:01.0 numbered (bus 1)
/// with the fake endpoint behind it, its BAR 0 at 0x1000_4000 and decoding.
fn hotplug_root() -> (PciRoot, FunctionId, Arc<crate::pci::testing::RecordingMsiSink>) {
    let root = PciRoot::new();
    let msi = Arc::new(crate::pci::testing::RecordingMsiSink::default());
    root.enable_hotplug(msi.clone());
    let port = root.add_root_port().unwrap();
    let (endpoint, _, _) = FakeEndpoint::new();
    root.attach_to_port(port, Box::new(endpoint)).unwrap();
    ecam_write32(&root, 0, 1, 0x18, 0x0001_0100);
    ecam_write32(&root, 1, 0, BAR0, 0x1000_4000);
    ecam_write32(&root, 1, 0, BAR0 + 4, 0);
    ecam_write32(&root, 1, 0, COMMAND, 0x2);
    (root, port, msi)
}

/// The slot status of port 00:01.0 through ECAM (its PCI Express capability is at 0x40).
fn slot_status(root: &PciRoot) -> u16 {
    assert_eq!(ecam_read32(root, 0, 1, 0x40) & 0xff, 0x10, "PCI Express capability at 0x40");
    (ecam_read32(root, 0, 1, 0x40 + 0x18) >> 16) as u16
}

#[test]
fn unplugging_a_port_hides_its_device_and_drops_bar_accesses() {
    let (root, port, msi) = hotplug_root();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = changes.clone();
    root.set_bar_change_hook(Some(Box::new(move |c: &BarChange| {
        sink.lock().unwrap().push(c.clone());
    })));
    assert_eq!(slot_status(&root) & crate::pci::root_port::SLOT_STA_PDS, 0x40, "occupied");
    let mut data = [0u8; 4];
    assert!(root.mmio_read(0x1000_4010, &mut data));
    assert_eq!(data, [0, 0x10, 0, 0]);

    let removed = root.unplug_port(port).unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].0, FunctionId::BehindPort { port: 1, function: 0 });
    assert_eq!(removed[0].1.name(), "fake");
    // Configuration reads of the absent device read all-ones.
    assert_eq!(ecam_read32(&root, 1, 0, 0), u32::MAX);
    // BAR accesses reach the stand-in: all-ones, writes dropped.
    assert!(root.mmio_read(0x1000_4010, &mut data));
    assert_eq!(data, [0xff; 4]);
    assert!(root.mmio_write(0x1000_4010, &[1; 4]));
    // The hook hears of every BAR index, the decoded one with its old place.
    let changes = changes.lock().unwrap().clone();
    assert_eq!(changes.len(), 6);
    assert!(changes.iter().all(|c| c.unplugged && c.new.is_none()));
    assert_eq!(changes[0].old.map(|r| r.address), Some(0x1000_4000));
    assert!(changes[1..].iter().all(|c| c.old.is_none()));
    // The slot reports empty and changed; no MSI since the guest enabled none.
    let status = slot_status(&root);
    assert_eq!(status & crate::pci::root_port::SLOT_STA_PDS, 0);
    assert_ne!(status & crate::pci::root_port::SLOT_STA_PDC, 0);
    assert_ne!(status & crate::pci::root_port::SLOT_STA_DLLSC, 0);
    assert!(msi.sent().is_empty());
    // A second unplug finds nothing.
    assert!(root.unplug_port(port).unwrap().is_empty());
    assert!(root.unplug_port(FunctionId::Bus0 { device: 0 }).is_err(), "host bridge");
}

#[test]
fn plugging_a_device_back_routes_it_again() {
    let (root, port, _) = hotplug_root();
    root.unplug_port(port).unwrap();
    let (endpoint, requester_id, _) = FakeEndpoint::with_device_id(0x2300);
    let ids = root.plug_port(port, vec![(0, Box::new(endpoint))]).unwrap();
    assert_eq!(ids, [FunctionId::BehindPort { port: 1, function: 0 }]);
    assert_eq!(ecam_read32(&root, 1, 0, 0), 0x2300_10de);
    assert_eq!(*requester_id.lock().unwrap(), Some(0x0100));
    // The stand-in's routes are gone: nothing decodes until the guest enables the new BARs.
    let mut data = [0u8; 4];
    assert!(!root.mmio_read(0x1000_4010, &mut data));
    assert_ne!(slot_status(&root) & crate::pci::root_port::SLOT_STA_PDS, 0);
    // Function 1 without function 0 is refused, and leaves the port empty.
    root.unplug_port(port).unwrap();
    let (f1, _, _) = FakeEndpoint::new();
    assert!(root.plug_port(port, vec![(1, Box::new(f1))]).is_err());
    assert_eq!(ecam_read32(&root, 1, 0, 0), u32::MAX);
}

#[test]
fn a_device_plugged_back_in_is_announced_as_pciehp_expects() {
    use crate::pci::root_port::{
        LINK_STA_DLLLA, SLOT_CTL_DLLSCE, SLOT_CTL_HPIE, SLOT_CTL_PDCE, SLOT_STA_DLLSC,
        SLOT_STA_PDC, SLOT_STA_PDS,
    };
    let (root, port, msi) = hotplug_root();
    let pcie = 0x40;
    let msi_at = (ecam_read32(&root, 0, 1, pcie) >> 8 & 0xff) as u16;
    // pciehp's probe: the port's MSI programmed and on, stale events cleared (write 1),
    // presence and link changes and the interrupt enabled.
    ecam_write32(&root, 0, 1, msi_at + 4, 0x0808_0040);
    ecam_write32(&root, 0, 1, msi_at + 8, 0);
    ecam_write32(&root, 0, 1, msi_at + 0xc, 0x21);
    ecam_write32(&root, 0, 1, msi_at, 1 << 16);
    let enables = u32::from(SLOT_CTL_PDCE | SLOT_CTL_DLLSCE | SLOT_CTL_HPIE);
    let clear_events_and_enable = 0x011f << 16 | enables;
    ecam_write32(&root, 0, 1, pcie + 0x18, clear_events_and_enable);
    assert!(msi.sent().is_empty());

    root.unplug_port(port).unwrap();
    assert_eq!(msi.sent().len(), 1, "the removal");
    // pciehp handles the removal and clears its events.
    ecam_write32(&root, 0, 1, pcie + 0x18, clear_events_and_enable);
    assert_eq!(slot_status(&root), 0, "empty, no event pending");
    let link_status = |root: &PciRoot| (ecam_read32(root, 0, 1, pcie + 0x10) >> 16) as u16;
    assert_eq!(link_status(&root) & LINK_STA_DLLLA, 0, "link down");

    // The device comes back (re-plug).
    let (endpoint, _, _) = FakeEndpoint::with_device_id(0x2300);
    root.plug_port(port, vec![(0, Box::new(endpoint))]).unwrap();
    assert_eq!(
        slot_status(&root),
        SLOT_STA_PDS | SLOT_STA_PDC | SLOT_STA_DLLSC,
        "present, presence detect changed, data link layer state changed"
    );
    assert_ne!(link_status(&root) & LINK_STA_DLLLA, 0, "link up");
    let sent = msi.sent();
    assert_eq!(sent.len(), 2, "one MSI for the arrival");
    assert_eq!(sent[1].0, crate::pci::MsiMessage { address: 0x0808_0040, data: 0x21 });
    assert_eq!(sent[1].1, 0x0008, "from the port (00:01.0)");
    // The guest then finds the device behind the port.
    ecam_write32(&root, 0, 1, pcie + 0x18, clear_events_and_enable);
    assert_eq!(ecam_read32(&root, 1, 0, 0), 0x2300_10de);
}

/// A configuration mirror that keeps bus 0 in a buffer, as the VMM's read-only memory does.
struct BufferMirror {
    bytes: Mutex<Vec<u8>>,
    disabled: std::sync::atomic::AtomicBool,
}

impl BufferMirror {
    fn new() -> Arc<Self> {
        Arc::new(Self { bytes: Mutex::new(vec![0xff; 1 << 20]), disabled: Default::default() })
    }

    fn disabled(&self) -> bool {
        self.disabled.load(Ordering::SeqCst)
    }

    /// Every 32-bit register of every bus-0 function 0 (and function 1 of device 0) reads
    /// the same through the mirror as through ECAM.
    fn assert_matches(&self, root: &PciRoot, when: &str) {
        let bytes = self.bytes.lock().unwrap();
        let devfns = (0..32u64).map(|device| device << 3).chain([1]);
        for devfn in devfns {
            for register in (0..4096u64).step_by(4) {
                let at = (devfn << 12 | register) as usize;
                let mirrored = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
                let read = read_le(4, |d| root.ecam_read(devfn << 12 | register, d)) as u32;
                assert_eq!(mirrored, read, "{when}: devfn {devfn:#x} register {register:#x}");
            }
        }
    }
}

impl crate::pci::ConfigMirror for BufferMirror {
    fn update(&self, device: u8, image: &[u8]) {
        assert_eq!(image.len(), 4096);
        let at = usize::from(device) << 15;
        self.bytes.lock().unwrap()[at..at + 4096].copy_from_slice(image);
    }
    fn disable(&self) {
        self.disabled.store(true, Ordering::SeqCst);
    }
}

fn virtio_rng() -> Box<crate::pci::VirtioPci> {
    let memory =
        vm_memory::GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 1 << 20)]).unwrap();
    let rng = crate::virtio::Rng::new(Box::new(|buf: &mut [u8]| {
        buf.fill(0xab);
        Ok(())
    }));
    let sink: Arc<dyn crate::pci::MsiSink> =
        Arc::new(crate::pci::testing::RecordingMsiSink::default());
    Box::new(crate::pci::VirtioPci::new("virtio-rng", Box::new(rng), memory, sink).unwrap())
}

#[test]
fn the_config_mirror_follows_writes_hot_plug_and_resets_of_bus_0() {
    let (root, port, _) = hotplug_root();
    let rng = root.add_function(virtio_rng()).unwrap();
    let FunctionId::Bus0 { device: rng_device } = rng else { panic!("{rng:?}") };
    let mirror = BufferMirror::new();
    root.set_config_mirror(Some(mirror.clone()));
    mirror.assert_matches(&root, "set");
    // A function added later is copied in too.
    root.add_root_port().unwrap();
    mirror.assert_matches(&root, "second port");
    // BAR sizing and placement, memory decoding on.
    ecam_write32(&root, 0, rng_device, BAR0, u32::MAX);
    mirror.assert_matches(&root, "BAR sized");
    ecam_write32(&root, 0, rng_device, BAR0, 0x2000_0000);
    ecam_write32(&root, 0, rng_device, COMMAND, 0x6);
    mirror.assert_matches(&root, "BAR placed");
    // Hot-plug: the port's slot and link status change outside any configuration write.
    root.unplug_port(port).unwrap();
    mirror.assert_matches(&root, "unplugged");
    let (endpoint, _, _) = FakeEndpoint::new();
    root.plug_port(port, vec![(0, Box::new(endpoint))]).unwrap();
    assert_ne!(slot_status(&root) & 0x40, 0, "presence detected");
    mirror.assert_matches(&root, "plugged");
    // The guest acknowledges the events (write 1 to clear).
    ecam_write32(&root, 0, 1, 0x40 + 0x18, 0xffff_0000 | u32::from(slot_status(&root)) << 16);
    mirror.assert_matches(&root, "events cleared");
    root.system_reset();
    mirror.assert_matches(&root, "reset");
    assert!(!mirror.disabled());
}

#[test]
fn the_config_mirror_turns_off_for_functions_it_cannot_copy() {
    // Pointing virtio's PCI configuration access capability somewhere makes its data
    // register read the BAR: reads must trap from then on.
    let root = PciRoot::new();
    let rng = root.add_function(virtio_rng()).unwrap();
    let FunctionId::Bus0 { device } = rng else { panic!("{rng:?}") };
    let mirror = BufferMirror::new();
    root.set_config_mirror(Some(mirror.clone()));
    let mut caps = Vec::new();
    let mut at = ecam_read32(&root, 0, device, 0x34) as u16 & 0xff;
    while at != 0 {
        let header = ecam_read32(&root, 0, device, at);
        caps.push((header as u8, (header >> 24) as u8, at));
        at = u16::from((header >> 8) as u8);
    }
    // The PCI configuration access capability: the vendor capability of cfg_type 5.
    let pci_cfg = caps
        .iter()
        .find(|(id, cfg_type, _)| *id == 0x09 && *cfg_type == 5)
        .map(|c| c.2)
        .expect("a VIRTIO_PCI_CAP_PCI_CFG capability");
    assert!(!mirror.disabled());
    ecam_write32(&root, 0, device, pci_cfg + 12, 4);
    assert!(mirror.disabled());

    // A function that does not offer a copy (a passed-through one, say) on bus 0.
    let root = PciRoot::new();
    let (endpoint, _, _) = FakeEndpoint::new();
    root.add_function(Box::new(endpoint)).unwrap();
    let mirror = BufferMirror::new();
    root.set_config_mirror(Some(mirror.clone()));
    assert!(mirror.disabled());
}
