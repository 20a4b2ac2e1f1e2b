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
}

impl FakeEndpoint {
    fn new() -> (Self, Arc<Mutex<Option<u16>>>, BarLog) {
        let ids = PciIds { vendor_id: 0x10de, device_id: 0x2204, ..PciIds::default() };
        let mut config = ConfigSpace::new_endpoint(&ids);
        config.add_memory_bar(0, 0x4000, BarKind::Memory64, false).unwrap();
        let requester_id = Arc::new(Mutex::new(None));
        let bar_writes = BarLog::default();
        let endpoint =
            Self { config, requester_id: requester_id.clone(), bar_writes: bar_writes.clone() };
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
}

fn ecam_offset(bus: u8, device: u8, register: u16) -> u64 {
    u64::from(bus) << 20 | u64::from(device) << 15 | u64::from(register)
}

fn ecam_read32(root: &mut PciRoot, bus: u8, device: u8, register: u16) -> u32 {
    read_le(4, |d| root.ecam_read(ecam_offset(bus, device, register), d)) as u32
}

fn ecam_write32(root: &mut PciRoot, bus: u8, device: u8, register: u16, value: u32) {
    root.ecam_write(ecam_offset(bus, device, register), &value.to_le_bytes());
}

#[test]
fn host_bridge_is_at_00_00_0_and_absent_functions_read_all_ones() {
    let mut root = PciRoot::new();
    assert_eq!(ecam_read32(&mut root, 0, 0, 0), 0x0008_1b36);
    assert_eq!(ecam_read32(&mut root, 0, 0, 8) >> 8, 0x06_00_00);
    assert_eq!(ecam_read32(&mut root, 0, 1, 0), u32::MAX);
    assert_eq!(ecam_read32(&mut root, 7, 0, 0), u32::MAX);
    // Function 1 of device 0.
    assert_eq!(read_le(4, |d| root.ecam_read(1 << 12, d)), u64::from(u32::MAX));
    // Writes to absent functions are ignored without panicking.
    ecam_write32(&mut root, 0, 9, 4, 0xffff);
    // Malformed accesses read all-ones even on a present function.
    assert_eq!(read_le(2, |d| root.ecam_read(1, d)), 0xffff);
    assert_eq!(read_le(8, |d| root.ecam_read(0, d)), u64::MAX);
    assert_eq!(root.requester_id(FunctionId::Bus0 { device: 0 }), Some(0));
}

#[test]
fn device_behind_root_port_appears_on_the_programmed_bus() {
    let mut root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    assert_eq!(port, FunctionId::Bus0 { device: 1 });
    let (endpoint, requester_id, _) = FakeEndpoint::new();
    let id = root.attach_to_port(port, Box::new(endpoint)).unwrap();
    assert_eq!(id, FunctionId::BehindPort { port: 1 });
    assert_eq!(ecam_read32(&mut root, 0, 1, 0), 0x000c_1b36);
    // Unprogrammed port: the device is hidden.
    assert_eq!(ecam_read32(&mut root, 1, 0, 0), u32::MAX);
    assert_eq!(root.requester_id(id), None);
    assert_eq!(*requester_id.lock().unwrap(), None);
    // Primary 0, secondary 1, subordinate 1.
    ecam_write32(&mut root, 0, 1, 0x18, 0x0001_0100);
    assert_eq!(ecam_read32(&mut root, 1, 0, 0), 0x2204_10de);
    assert_eq!(ecam_read32(&mut root, 1, 1, 0), u32::MAX, "only device 0 behind a port");
    assert_eq!(read_le(4, |d| root.ecam_read(ecam_offset(1, 0, 0) | 1 << 12, d)), 0xffff_ffff);
    assert_eq!(ecam_read32(&mut root, 2, 0, 0), u32::MAX);
    assert_eq!(root.requester_id(id), Some(0x0100));
    assert_eq!(*requester_id.lock().unwrap(), Some(0x0100));
    // Renumbering moves it.
    ecam_write32(&mut root, 0, 1, 0x18, 0x0005_0400);
    assert_eq!(ecam_read32(&mut root, 1, 0, 0), u32::MAX);
    assert_eq!(ecam_read32(&mut root, 4, 0, 0), 0x2204_10de);
    assert_eq!(ecam_read32(&mut root, 5, 0, 0), u32::MAX, "subordinate bus has no device");
    assert_eq!(*requester_id.lock().unwrap(), Some(0x0400));
    assert_eq!(format_bdf(0x0400), "04:00.0");
}

#[test]
fn integrated_endpoint_gets_its_requester_id() {
    let mut root = PciRoot::new();
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
    let mut root = PciRoot::new();
    let port = root.add_root_port().unwrap();
    let (endpoint, _, writes) = FakeEndpoint::new();
    let id = root.attach_to_port(port, Box::new(endpoint)).unwrap();
    let changes = Arc::new(Mutex::new(Vec::new()));
    let sink = changes.clone();
    root.set_bar_change_hook(Some(Box::new(move |c: &BarChange| {
        sink.lock().unwrap().push(c.clone());
    })));
    ecam_write32(&mut root, 0, 1, 0x18, 0x0001_0100);
    ecam_write32(&mut root, 1, 0, BAR0, 0x1000_4000);
    ecam_write32(&mut root, 1, 0, BAR0 + 4, 0);
    let mut data = [0u8; 4];
    assert!(!root.mmio_read(0x1000_4010, &mut data), "memory decoding is off");
    assert_eq!(data, [0xff; 4]);
    ecam_write32(&mut root, 1, 0, COMMAND, 0x2);
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
    ecam_write32(&mut root, 1, 0, BAR0 + 4, 0x80);
    assert!(root.mmio_read(0x80_1000_4000, &mut data));
    assert!(!root.mmio_read(0x1000_4000, &mut data));
    let moved = BarRegion { address: 0x80_1000_4000, ..region };
    assert_eq!(
        *changes.lock().unwrap(),
        vec![
            BarChange { id, function: "fake".into(), bar: 0, old: None, new: Some(region) },
            BarChange { id, function: "fake".into(), bar: 0, old: Some(region), new: Some(moved) },
        ]
    );
}

#[test]
fn trace_hook_sees_config_and_bar_accesses() {
    let mut root = PciRoot::new();
    let (endpoint, _, _) = FakeEndpoint::new();
    root.add_function(Box::new(endpoint)).unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    root.set_trace_hook(Some(Box::new(move |e: &TraceEvent<'_>| {
        sink.lock().unwrap().push((e.kind, e.function.to_string(), e.offset, e.size, e.value));
    })));
    ecam_write32(&mut root, 0, 1, BAR0, 0x2000_0000);
    root.ecam_write(ecam_offset(0, 1, COMMAND), &[2, 0]);
    assert_eq!(ecam_read32(&mut root, 0, 1, 0), 0x2204_10de);
    root.mmio_write(0x2000_0008, &[0xaa, 0xbb]);
    let mut data = [0u8; 2];
    root.mmio_read(0x2000_0004, &mut data);
    root.set_trace_hook(None);
    ecam_read32(&mut root, 0, 0, 0);
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
    let root = Arc::new(Mutex::new(PciRoot::new()));
    let (endpoint, _, writes) = FakeEndpoint::new();
    root.lock().unwrap().add_function(Box::new(endpoint)).unwrap();
    let mut ecam = PciEcam::new(root.clone());
    let mut window = PciMmioWindow::new(root.clone(), 0x1000_0000);
    let mut high = PciMmioWindow::new(root, 0x80_0000_0000);
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
    let mut root = PciRoot::new();
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
    assert!(root.function_mut(FunctionId::BehindPort { port: 3 }).is_none());
    assert!(root.function_mut(FunctionId::Bus0 { device: 31 }).is_some());
}

#[test]
fn random_accesses_keep_bridges_intact() {
    let mut rng = XorShift::new(0xec0a);
    let mut root = PciRoot::new();
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
    assert_eq!(ecam_read32(&mut root, 0, 0, 0), 0x0008_1b36);
    assert_eq!(ecam_read32(&mut root, 0, 1, 0), 0x000c_1b36);
    assert_eq!(ecam_read32(&mut root, 0, 1, 0x0c) >> 16 & 0x7f, 1);
    assert_eq!(ecam_read32(&mut root, 0, 2, 0), 0x2204_10de);
    assert_eq!(root.functions().len(), 4);
}
