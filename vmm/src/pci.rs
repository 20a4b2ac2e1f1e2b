//! The guest's PCIe hierarchy: host bridge, root ports and Aperture's virtio devices, wired to
//! the MMIO bus and to the interrupt controller.

mod doorbells;
mod mirror;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex};

use arch::layout::{self, MemoryLayout};
use devices::pci::root_port::PcieLink;
use devices::pci::{
    BarChange, FunctionId, MsiMessage, MsiSink, PciEcam, PciMmioWindow, PciRoot, TraceEvent,
    TraceKind, VirtioPci,
};
use devices::trace::{TraceRecord, TraceSink, TraceValue, TraceWriter};
use devices::virtio::{Block, Net, Rng, WorkerStartHook};
use log::{debug, info, warn};
use vm_memory::GuestMemoryMmap;

use crate::assign::{AssignedIntx, AssignedParts, DirectBarRegistry, PendingFunction};
use crate::bus::{BusError, MmioBus};
use crate::config::VmConfig;
use crate::hypervisor::{MemorySlot, Vm};

use doorbells::DoorbellMapper;

/// Root ports Aperture provides at least: one per assigned device, and one even without any
/// (an empty port costs nothing and keeps the guest's view the same).
pub const MIN_ROOT_PORTS: usize = 1;

/// Errors building the PCI hierarchy.
#[derive(Debug, thiserror::Error)]
pub enum PciSetupError {
    /// A disk image could not be opened.
    #[error("--disk {path}: {source}")]
    OpenDisk {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The virtio-blk device refused the image.
    #[error("--disk {path}: {reason}")]
    Disk {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// A NIC's backend could not be opened.
    #[error(transparent)]
    Net(#[from] crate::net::NetError),
    /// The host RNG could not be opened.
    #[error("virtio-rng: {0}; run with --no-rng")]
    Rng(String),
    /// The hierarchy is full or inconsistent.
    #[error("PCI: {0}")]
    Topology(String),
    /// The trace file could not be created.
    #[error("--trace-pci {path}: {source}")]
    TraceFile {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The MMIO bus refused a region.
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// Sends device MSIs through the VM's interrupt controller (KVM: the ITS, with the requester
/// id as device id, matching the host bridge's `msi-map`).
struct VmMsiSink {
    vm: Arc<dyn Vm>,
}

impl MsiSink for VmMsiSink {
    fn signal_msi(&self, message: MsiMessage, requester_id: u16) {
        if let Err(e) = self.vm.signal_msi(message.address, message.data, u32::from(requester_id)) {
            warn!("MSI from {}: {e}", devices::pci::root::format_bdf(requester_id));
        }
    }

    /// A KVM irqfd: the device's worker raises the vector with an eventfd write.
    #[cfg(target_os = "linux")]
    fn vector(&self) -> Option<Box<dyn devices::pci::MsiVector>> {
        match self.vm.create_irqfd_msi() {
            Ok(irqfd) => Some(Box::new(IrqfdVector(irqfd))),
            Err(e) => {
                debug!("virtio MSI-X vectors are sent by the VMM: {e}");
                None
            }
        }
    }
}

/// A virtio MSI-X vector as a KVM irqfd whose MSI route follows the vector's entry.
#[cfg(target_os = "linux")]
struct IrqfdVector(Arc<dyn crate::hypervisor::IrqfdMsi>);

#[cfg(target_os = "linux")]
impl devices::pci::MsiVector for IrqfdVector {
    fn set_route(&self, route: Option<(MsiMessage, u16)>) -> std::io::Result<()> {
        let route = route.map(|(message, requester_id)| crate::hypervisor::MsiRoute {
            address: message.address,
            data: message.data,
            devid: u32::from(requester_id),
        });
        self.0.set_route(route).map_err(std::io::Error::other)
    }

    fn signal(&self) -> std::io::Result<()> {
        self.0.signal().map_err(std::io::Error::other)
    }

    fn eventfd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.0.eventfd())
    }
}

/// Opens the trace file of `config` (`-`: stderr), if it asks for one.
pub fn open_trace(config: &VmConfig) -> Result<Option<Arc<dyn TraceSink>>, PciSetupError> {
    let Some(path) = &config.trace_pci else { return Ok(None) };
    let out: Box<dyn Write + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(path).map_err(|source| {
            PciSetupError::TraceFile { path: path.display().to_string(), source }
        })?))
    };
    Ok(Some(Arc::new(TraceWriter::new(config.trace_format, out))))
}

/// Turns every PCI configuration and trapped BAR access into a trace record.
fn trace_hook(sink: Arc<dyn TraceSink>) -> devices::pci::TraceHook {
    Box::new(move |event: &TraceEvent<'_>| {
        let (name, bar) = match event.kind {
            TraceKind::ConfigRead => ("cfg-read", None),
            TraceKind::ConfigWrite => ("cfg-write", None),
            TraceKind::BarRead { bar } => ("bar-read", Some(bar)),
            TraceKind::BarWrite { bar } => ("bar-write", Some(bar)),
        };
        let access = [
            ("offset", TraceValue::Hex(event.offset)),
            ("size", TraceValue::Int(event.size as u64)),
            ("value", TraceValue::Hex(event.value)),
        ];
        let mut fields = Vec::with_capacity(4);
        if let Some(bar) = bar {
            fields.push(("bar", TraceValue::Int(bar as u64)));
        }
        fields.extend(access);
        sink.record(&TraceRecord { source: event.function, event: name, fields: &fields });
    })
}

/// Maps the directly accessible pieces of assigned devices' BARs into the guest wherever the
/// guest places the BARs, and unmaps them when it moves them or turns decoding off.
struct DirectBarMapper {
    vm: Arc<dyn Vm>,
    /// Shared with the re-plug, which adds the pieces of a device plugged in again.
    bars: DirectBarRegistry,
    slots: HashMap<(FunctionId, usize), Vec<MemorySlot>>,
    trace: Option<Arc<dyn TraceSink>>,
}

impl DirectBarMapper {
    fn changed(&mut self, change: &BarChange) {
        let trace = |event, guest: u64, len: u64| {
            if let Some(sink) = &self.trace {
                let fields = [
                    ("bar", TraceValue::Int(change.bar as u64)),
                    ("guest", TraceValue::Hex(guest)),
                    ("len", TraceValue::Hex(len)),
                ];
                sink.record(&TraceRecord { source: &change.function, event, fields: &fields });
            }
        };
        for slot in self.slots.remove(&(change.id, change.bar)).unwrap_or_default() {
            match self.vm.unmap_memory(slot) {
                Ok(()) => trace("bar-unmap", slot.guest_addr, slot.size),
                Err(e) => warn!("{} BAR {}: {e}", change.function, change.bar),
            }
        }
        let mut bars = self.bars.lock().unwrap_or_else(|e| e.into_inner());
        if change.unplugged {
            // The device left: its BAR mappings (which hold the host device open) go too.
            bars.remove(&change.id);
            return;
        }
        let (Some(region), Some(pieces)) = (change.new, bars.get(&change.id)) else {
            return;
        };
        let mut slots = Vec::new();
        for piece in pieces.iter().filter(|p| p.bar == change.bar) {
            let guest_addr = region.address + piece.offset;
            // SAFETY: the BAR mapping lives in `self.bars` until the hook (and with it the
            // PCI root) is dropped, after the vCPUs stopped, or until its device is unplugged,
            // which removes its slots first (above); a slot is removed before the BAR moves.
            let mapped = unsafe {
                self.vm.map_device_memory(guest_addr, piece.memory.len(), piece.memory.host_addr())
            };
            match mapped {
                Ok(slot) => {
                    trace("bar-map", guest_addr, slot.size);
                    debug!(
                        "{} BAR {} {:#x}+{:#x} mapped at guest {guest_addr:#x}",
                        change.function,
                        change.bar,
                        piece.offset,
                        piece.memory.len()
                    );
                    slots.push(slot);
                }
                Err(e) => warn!(
                    "{} BAR {}: mapping {:#x}+{:#x} into the guest failed ({e}); accesses \
                     there are trapped",
                    change.function,
                    change.bar,
                    piece.offset,
                    piece.memory.len()
                ),
            }
        }
        drop(bars);
        self.slots.insert((change.id, change.bar), slots);
    }
}

/// Has the BARs of assigned devices (their mmapped pieces) and of virtio functions (their
/// queue doorbells) followed wherever the guest places them; no hook when there is neither.
fn set_bar_change_hook(
    root: &PciRoot,
    vm: &Arc<dyn Vm>,
    direct_bars: Option<DirectBarRegistry>,
    queue_doorbells: HashMap<FunctionId, Vec<devices::pci::virtio_pci::QueueDoorbell>>,
    trace: Option<Arc<dyn TraceSink>>,
) {
    let mut direct = direct_bars.map(|bars| DirectBarMapper {
        vm: vm.clone(),
        bars,
        slots: HashMap::new(),
        trace,
    });
    let mut doorbells = DoorbellMapper::new(vm.clone(), queue_doorbells);
    if direct.is_none() && doorbells.is_empty() {
        return;
    }
    root.set_bar_change_hook(Some(Box::new(move |change: &BarChange| {
        if let Some(mapper) = &mut direct {
            mapper.changed(change);
        }
        doorbells.changed(change);
    })));
}

/// Groups assigned functions by host device (domain, bus, device), in `--device` order, with
/// the function number each gets behind its root port: the host's own numbers when the host
/// function 0 is among them (a GPU with its audio function stays one multi-function device),
/// else 0, 1, ... in order (the guest only scans a device whose function 0 exists).
pub(crate) fn group_by_host_slot(
    assigned: Vec<PendingFunction>,
) -> Vec<Vec<(u8, PendingFunction)>> {
    let mut slots: Vec<Vec<PendingFunction>> = Vec::new();
    for pending in assigned {
        let slot = |p: &PendingFunction| (p.address.domain, p.address.bus, p.address.device);
        match slots.iter_mut().find(|s| s.first().is_some_and(|f| slot(f) == slot(&pending))) {
            Some(functions) => functions.push(pending),
            None => slots.push(vec![pending]),
        }
    }
    slots
        .into_iter()
        .map(|mut functions| {
            functions.sort_by_key(|p| p.address.function);
            let keep_numbers = functions.first().is_some_and(|p| p.address.function == 0);
            functions
                .into_iter()
                .enumerate()
                // At most 8 functions per host device, so the index fits.
                .map(|(i, p)| (if keep_numbers { p.address.function } else { i as u8 }, p))
                .collect()
        })
        .collect()
}

/// What the PCI hierarchy gets besides the configuration.
#[derive(Debug, Default)]
pub struct PciExtras {
    /// Assigned devices, ready to attach, and Aperture's endpoints that serve them.
    pub assigned: AssignedParts,
    /// Where PCI and passthrough events are traced.
    pub trace: Option<Arc<dyn TraceSink>>,
    /// Runs first on each virtio worker thread (the seccomp sandbox confines it there).
    pub worker_start: Option<WorkerStartHook>,
}

/// The PCI hierarchy built.
#[derive(Debug)]
pub struct PciHierarchy {
    /// The root complex (a handle; the MMIO bus holds its ECAM and window views).
    pub root: PciRoot,
    /// Assigned functions' INTx with their SPIs, to connect once the GIC exists.
    pub intx: Vec<AssignedIntx>,
    /// Each assigned function's host address and the root port it sits behind.
    pub assigned_ports: Vec<(passthrough::PciAddress, FunctionId)>,
    /// The direct BAR pieces of assigned functions, by guest function (a re-plugged device
    /// adds its own); `None` without assigned devices.
    pub direct_bars: Option<DirectBarRegistry>,
}

/// The SPI that INTx pin `pin` of a function behind the root port at bus-0 slot `port`
/// signals: the function is device 0 behind its port, so the bridge swizzle keeps the pin,
/// and the host bridge's interrupt-map swizzles it with the port's slot.
pub(crate) fn intx_spi(port: FunctionId, pin: u8) -> Option<u32> {
    match port {
        FunctionId::Bus0 { device } => layout::pci_intx_spi(device, pin),
        FunctionId::BehindPort { .. } => None,
    }
}

/// Builds the PCI hierarchy for `config` and maps ECAM and both windows on `bus`. Assigned
/// devices go behind root ports of their own, in `--device` order.
pub fn build_pci(
    vm: &Arc<dyn Vm>,
    memory: &GuestMemoryMmap,
    memory_layout: &MemoryLayout,
    config: &VmConfig,
    extras: PciExtras,
    bus: &mut MmioBus,
) -> Result<PciHierarchy, PciSetupError> {
    let PciExtras {
        assigned: AssignedParts { functions: assigned, endpoints },
        trace,
        worker_start,
    } = extras;
    let topology = |e: devices::pci::root::PciRootError| PciSetupError::Topology(e.to_string());
    let msi: Arc<dyn MsiSink> = Arc::new(VmMsiSink { vm: vm.clone() });
    let root = PciRoot::new();
    // Every root port has a hot-plug slot, so an assigned device can leave (and come back)
    // while the guest runs; its interrupt is an MSI like the devices'.
    root.enable_hotplug(msi.clone());
    let mut direct_bars = HashMap::new();
    let mut intx = Vec::new();
    let mut assigned_ports = Vec::new();
    let mut slots = group_by_host_slot(assigned).into_iter();
    for _ in 0..slots.len().max(MIN_ROOT_PORTS) {
        let mut functions = slots.next().unwrap_or_default();
        // The port reports the real link of the device behind it (its function 0).
        let link = functions
            .first_mut()
            .and_then(|(_, pending)| PcieLink::read_from(pending.function.as_mut()));
        let port = root.add_root_port_with_link(link).map_err(topology)?;
        for (number, pending) in functions {
            let id =
                root.attach_function_to_port(port, number, pending.function).map_err(topology)?;
            info!("{}: assigned as {id}", pending.name);
            assigned_ports.push((pending.address, port));
            direct_bars.insert(id, pending.direct_bars);
            if let Some((pin, handle)) = pending.intx {
                match intx_spi(port, pin) {
                    Some(spi) => intx.push(AssignedIntx { name: pending.name, pin, spi, handle }),
                    None => warn!("{}: INTx pin {pin} has no SPI; not routed", pending.name),
                }
            }
        }
    }
    let mut queue_doorbells = HashMap::new();
    for (index, disk) in config.disks.iter().enumerate() {
        let path = disk.path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!disk.readonly)
            .open(&disk.path)
            .map_err(|source| PciSetupError::OpenDisk { path: path.clone(), source })?;
        // One request queue per vCPU (the device caps it), so vCPUs do not share a ring.
        let queues = u16::try_from(config.vcpus).unwrap_or(u16::MAX);
        let mut block = Block::with_queues(file, disk.readonly, &path, queues)
            .map_err(|e| PciSetupError::Disk { path: path.clone(), reason: e.to_string() })?;
        info!(
            "virtio-blk{index}: {path}, {} sectors{}",
            block.capacity_sectors(),
            if disk.readonly { ", read-only" } else { "" }
        );
        block.set_worker_start_hook(worker_start.clone());
        let transport = VirtioPci::new(
            format!("virtio-blk{index}"),
            Box::new(block),
            memory.clone(),
            msi.clone(),
        )
        .map_err(|e| PciSetupError::Topology(e.to_string()))?;
        let doorbells = transport.queue_doorbells();
        let id = root.add_function(Box::new(transport)).map_err(topology)?;
        queue_doorbells.insert(id, doorbells);
    }
    for (index, net) in config.nets.iter().enumerate() {
        let name = format!("virtio-net{index}");
        let nic = crate::net::open(index, net)?;
        let mut device = Net::new(&name, net.mac, nic.backend);
        if let Some(kernel) = nic.vhost {
            device.set_vhost(kernel);
        }
        device.set_worker_start_hook(worker_start.clone());
        let transport = VirtioPci::new(name, Box::new(device), memory.clone(), msi.clone())
            .map_err(|e| PciSetupError::Topology(e.to_string()))?;
        let doorbells = transport.queue_doorbells();
        let id = root.add_function(Box::new(transport)).map_err(topology)?;
        queue_doorbells.insert(id, doorbells);
    }
    if config.rng {
        let mut rng = Rng::with_host_urandom().map_err(|e| PciSetupError::Rng(e.to_string()))?;
        rng.set_worker_start_hook(worker_start.clone());
        let transport = VirtioPci::new("virtio-rng", Box::new(rng), memory.clone(), msi.clone())
            .map_err(|e| PciSetupError::Topology(e.to_string()))?;
        let doorbells = transport.queue_doorbells();
        let id = root.add_function(Box::new(transport)).map_err(topology)?;
        queue_doorbells.insert(id, doorbells);
    }
    // Assigned devices get the mapper even without direct pieces: a device plugged in again
    // adds its own.
    let direct_bars: Option<DirectBarRegistry> =
        (!assigned_ports.is_empty()).then(|| Arc::new(Mutex::new(direct_bars)));
    set_bar_change_hook(&root, vm, direct_bars.clone(), queue_doorbells, trace.clone());
    for endpoint in endpoints {
        let name = endpoint.name().to_string();
        let id = root.add_function(endpoint).map_err(topology)?;
        info!("{name} at {id}");
    }
    if let Some(sink) = trace {
        root.set_trace_hook(Some(trace_hook(sink)));
    } else {
        // Traces need every read to reach the VMM: a mirror only without one.
        let start = std::time::Instant::now();
        if let Some(mirror) = mirror::EcamMirror::new(vm, layout::PCI_ECAM_BASE) {
            root.set_config_mirror(Some(Arc::new(mirror)));
            debug!(
                "PCI configuration mirror: bus 0 reads without exits (set up in {:.1} ms)",
                start.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    // No lock around these views: ECAM locks the topology only to find a function, the
    // windows look up the BAR routes, then each access locks its one function.
    bus.insert_shared(
        "pci-ecam",
        layout::PCI_ECAM_BASE,
        layout::PCI_ECAM_SIZE,
        Arc::new(PciEcam::new(root.clone())),
    )?;
    bus.insert_shared(
        "pci-mmio32",
        layout::PCI_MMIO32_BASE,
        layout::PCI_MMIO32_SIZE,
        Arc::new(PciMmioWindow::new(root.clone(), layout::PCI_MMIO32_BASE)),
    )?;
    let window = memory_layout.pci_mmio64;
    bus.insert_shared(
        "pci-mmio64",
        window.base,
        window.size,
        Arc::new(PciMmioWindow::new(root.clone(), window.base)),
    )?;
    Ok(PciHierarchy { root, intx, assigned_ports, direct_bars })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assign::DirectBar;

    struct Absent;
    impl devices::pci::PciFunction for Absent {
        fn name(&self) -> &str {
            "absent"
        }
        fn config_read(&mut self, _offset: u16, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn config_write(&mut self, _offset: u16, _data: &[u8]) {}
        fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
        fn bar_regions(&self) -> Vec<devices::pci::BarRegion> {
            Vec::new()
        }
    }

    fn pending(address: &str) -> PendingFunction {
        PendingFunction {
            name: address.into(),
            address: address.parse().unwrap(),
            function: Box::new(Absent),
            direct_bars: Vec::new(),
            intx: None,
        }
    }

    fn layout(addresses: &[&str]) -> Vec<Vec<(u8, String)>> {
        group_by_host_slot(addresses.iter().map(|a| pending(a)).collect())
            .into_iter()
            .map(|slot| slot.into_iter().map(|(n, p)| (n, p.name)).collect())
            .collect()
    }

    #[test]
    fn functions_of_one_host_device_share_a_port() {
        // A GPU and its audio function, given in any order, plus an NVMe.
        assert_eq!(
            layout(&["0000:01:00.1", "0000:02:00.0", "0000:01:00.0"]),
            vec![
                vec![(0, "0000:01:00.0".to_string()), (1, "0000:01:00.1".to_string())],
                vec![(0, "0000:02:00.0".to_string())],
            ]
        );
        // Without the host's function 0, the guest still gets a function 0.
        assert_eq!(
            layout(&["0000:01:00.3", "0000:01:00.1"]),
            vec![vec![(0, "0000:01:00.1".to_string()), (1, "0000:01:00.3".to_string())]]
        );
        // Same device number on another bus or domain is another device.
        assert_eq!(layout(&["0000:01:00.0", "0000:03:00.0", "0001:01:00.0"]).len(), 3);
    }

    #[test]
    fn intx_spi_follows_the_root_port_slot() {
        let spis = layout::PCI_INTX_SPIS;
        // The first root port is 00:01.0: INTA lands on the second SPI, as the guest's
        // interrupt-map lookup of (slot 1, pin 1) gives.
        assert_eq!(intx_spi(FunctionId::Bus0 { device: 1 }, 1), Some(spis[1]));
        assert_eq!(intx_spi(FunctionId::Bus0 { device: 2 }, 1), Some(spis[2]));
        assert_eq!(intx_spi(FunctionId::Bus0 { device: 1 }, 4), Some(spis[0]));
        assert_eq!(intx_spi(FunctionId::Bus0 { device: 5 }, 1), Some(spis[1]));
        assert_eq!(intx_spi(FunctionId::Bus0 { device: 1 }, 0), None);
        assert_eq!(intx_spi(FunctionId::BehindPort { port: 1, function: 0 }, 1), None);
    }

    #[test]
    fn root_ports_get_the_slots_the_spis_assume() {
        // What build_pci relies on: the host bridge is 00:00.0, the first root port 00:01.0.
        let root = PciRoot::new();
        assert_eq!(root.add_root_port().unwrap(), FunctionId::Bus0 { device: 1 });
        assert_eq!(root.add_root_port().unwrap(), FunctionId::Bus0 { device: 2 });
        // build_pci gives each port its device's link: the port's PCIe capability reads it.
        let link = PcieLink::new(3, 4).unwrap();
        let id = root.add_root_port_with_link(Some(link)).unwrap();
        assert_eq!(id, FunctionId::Bus0 { device: 3 });
        let read = root.with_function(id, |port| PcieLink::read_from(port)).flatten();
        assert_eq!(read, Some(link));
    }

    /// Records the guest mappings and ioeventfds the BAR-change hook makes.
    #[derive(Debug, Default)]
    struct MapRecorder {
        log: std::sync::Mutex<Vec<String>>,
        /// Whether it takes ioeventfds, as KVM does (else it answers like HVF).
        ioeventfd: bool,
        /// Where the events registered are (compared, never dereferenced), by address.
        events: std::sync::Mutex<HashMap<u64, usize>>,
    }

    impl Vm for MapRecorder {
        unsafe fn map_kind(
            &self,
            guest_addr: u64,
            size: u64,
            _host_addr: *mut u8,
            _kind: crate::hypervisor::slots::MemoryKind,
        ) -> crate::hypervisor::Result<MemorySlot> {
            self.log.lock().unwrap().push(format!("map {guest_addr:#x}+{size:#x}"));
            Ok(MemorySlot { id: 7, guest_addr, size })
        }
        fn unmap_memory(&self, slot: MemorySlot) -> crate::hypervisor::Result<()> {
            self.log.lock().unwrap().push(format!("unmap {:#x}", slot.guest_addr));
            Ok(())
        }
        fn register_ioevent(
            &self,
            event: &devices::virtio::QueueEvent,
            addr: u64,
        ) -> crate::hypervisor::Result<()> {
            self.log.lock().unwrap().push(format!("ioevent {addr:#x}"));
            if !self.ioeventfd {
                return Err(crate::hypervisor::HypervisorError::NoIoeventfd);
            }
            self.events.lock().unwrap().insert(addr, std::ptr::from_ref(event) as usize);
            Ok(())
        }
        fn unregister_ioevent(
            &self,
            event: &devices::virtio::QueueEvent,
            addr: u64,
        ) -> crate::hypervisor::Result<()> {
            self.log.lock().unwrap().push(format!("no ioevent {addr:#x}"));
            let registered = self.events.lock().unwrap().remove(&addr);
            let event = std::ptr::from_ref(event) as usize;
            assert_eq!(registered, Some(event), "unregistered what was registered");
            Ok(())
        }
        fn create_vcpu(
            &self,
            _index: u32,
        ) -> crate::hypervisor::Result<Box<dyn crate::hypervisor::Vcpu>> {
            Err(crate::hypervisor::HypervisorError::call(
                "creating a vCPU",
                std::io::Error::other("no vCPUs in this test"),
            ))
        }
        fn create_gic(&self, _spec: &crate::hypervisor::GicSpec) -> crate::hypervisor::Result<()> {
            Ok(())
        }
        fn msi_controller(&self) -> crate::hypervisor::MsiController {
            crate::hypervisor::MsiController::Its
        }
        fn set_spi_level(&self, _spi: u32, _asserted: bool) -> crate::hypervisor::Result<()> {
            Ok(())
        }
        fn signal_msi(
            &self,
            _address: u64,
            _data: u32,
            _devid: u32,
        ) -> crate::hypervisor::Result<()> {
            Ok(())
        }
    }

    /// A page of host memory standing in for a BAR mmapped from the host device.
    struct Page(Vec<u8>);

    impl crate::assign::HostMemory for Page {
        fn host_addr(&self) -> *mut u8 {
            self.0.as_ptr().cast_mut()
        }
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
    }

    /// An endpoint with one 16 KiB 64-bit BAR.
    struct OneBar(devices::pci::ConfigSpace);

    impl devices::pci::PciFunction for OneBar {
        fn name(&self) -> &str {
            "gpu"
        }
        fn config_read(&mut self, offset: u16, data: &mut [u8]) {
            self.0.read(offset, data);
        }
        fn config_write(&mut self, offset: u16, data: &[u8]) {
            self.0.write(offset, data);
        }
        fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
        fn bar_regions(&self) -> Vec<devices::pci::BarRegion> {
            self.0.bar_regions()
        }
    }

    /// An NVIDIA-like function with one 16 KiB 64-bit BAR behind root port 00:01.0, `piece`
    /// of it mapped straight into the guest by `build_pci`'s BAR-change hook on a recording
    /// VM, and an ECAM write of a 32-bit register (bus, register, value).
    fn one_bar_behind_a_port(
        piece: DirectBar,
    ) -> (Arc<MapRecorder>, PciRoot, FunctionId, impl Fn(u64, u64, u32), DirectBarRegistry) {
        let recorder = Arc::new(MapRecorder::default());
        let vm: Arc<dyn Vm> = recorder.clone();
        let ids = devices::pci::PciIds { vendor_id: 0x10de, ..Default::default() };
        let mut config = devices::pci::ConfigSpace::new_endpoint(&ids);
        config.add_memory_bar(0, 0x4000, devices::pci::BarKind::Memory64, false).unwrap();
        let root = PciRoot::new();
        let port = root.add_root_port().unwrap();
        let id = root.attach_to_port(port, Box::new(OneBar(config))).unwrap();
        let registry: DirectBarRegistry = Arc::new(Mutex::new(HashMap::from([(id, vec![piece])])));
        set_bar_change_hook(&root, &vm, Some(registry.clone()), HashMap::new(), None);
        let ecam = PciEcam::new(root.clone());
        let write32 = move |bus: u64, register: u64, value: u32| {
            devices::MmioTarget::write(&ecam, bus << 20 | register, &value.to_le_bytes());
        };
        (recorder, root, port, write32, registry)
    }

    #[test]
    fn direct_bar_pieces_follow_the_bar_the_guest_programs() {
        let piece = DirectBar { bar: 0, offset: 0x1000, memory: Box::new(Page(vec![0; 0x1000])) };
        let (recorder, _root, _port, write32, _registry) = one_bar_behind_a_port(piece);
        // Through ECAM as the guest does: number the port, place BAR 0, turn decoding on.
        write32(0, 1 << 15 | 0x18, 0x0001_0100);
        write32(1, 0x10, 0x1000_4000);
        write32(1, 0x14, 0);
        assert!(recorder.log.lock().unwrap().is_empty(), "not decoding yet");
        write32(1, 0x04, 2);
        write32(1, 0x14, 0x80);
        write32(1, 0x04, 0);
        assert_eq!(
            *recorder.log.lock().unwrap(),
            [
                "map 0x10005000+0x1000",
                "unmap 0x10005000",
                "map 0x8010005000+0x1000",
                "unmap 0x8010005000",
            ]
        );
    }

    /// A host BAR page that records when it is dropped (unmapped from this process).
    struct WatchedPage(Vec<u8>, Arc<std::sync::atomic::AtomicBool>);

    impl crate::assign::HostMemory for WatchedPage {
        fn host_addr(&self) -> *mut u8 {
            self.0.as_ptr().cast_mut()
        }
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
    }

    impl Drop for WatchedPage {
        fn drop(&mut self) {
            self.1.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn an_unplugged_device_loses_its_guest_mappings_and_host_pieces() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let memory = Box::new(WatchedPage(vec![0; 0x1000], dropped.clone()));
        let piece = DirectBar { bar: 0, offset: 0, memory };
        let (recorder, root, port, write32, registry) = one_bar_behind_a_port(piece);
        write32(0, 1 << 15 | 0x18, 0x0001_0100);
        write32(1, 0x10, 0x1000_4000);
        write32(1, 0x14, 0);
        write32(1, 0x04, 2);
        assert_eq!(*recorder.log.lock().unwrap(), ["map 0x10004000+0x1000"]);
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst));
        let removed = root.unplug_port(port).unwrap();
        assert_eq!(*recorder.log.lock().unwrap(), ["map 0x10004000+0x1000", "unmap 0x10004000"]);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst), "the host mapping went too");
        drop(removed);

        // Plugged in again (a re-plug adds the new host pieces first): the guest places the
        // BAR anew and the new piece is mapped there.
        let id = FunctionId::BehindPort { port: 1, function: 0 };
        let piece = DirectBar { bar: 0, offset: 0, memory: Box::new(Page(vec![0; 0x1000])) };
        registry.lock().unwrap().insert(id, vec![piece]);
        let mut config = devices::pci::ConfigSpace::new_endpoint(&devices::pci::PciIds {
            vendor_id: 0x10de,
            ..Default::default()
        });
        config.add_memory_bar(0, 0x4000, devices::pci::BarKind::Memory64, false).unwrap();
        let plugged = root.plug_port(port, vec![(0, Box::new(OneBar(config)))]).unwrap();
        assert_eq!(plugged, [id]);
        write32(1, 0x10, 0x2000_4000);
        write32(1, 0x14, 0);
        write32(1, 0x04, 2);
        assert_eq!(
            recorder.log.lock().unwrap()[2..],
            ["map 0x20004000+0x1000"],
            "the new device's piece is mapped where the guest put its BAR"
        );
    }

    /// The PCI root with a virtio-rng function, the BAR-change hook of `build_pci` on `vm`,
    /// and an ECAM write of a 32-bit register of that function.
    fn virtio_rng_on(
        vm: Arc<dyn Vm>,
    ) -> (PciRoot, Vec<devices::pci::virtio_pci::QueueDoorbell>, impl Fn(u64, u32)) {
        let memory = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap();
        let msi: Arc<dyn MsiSink> = Arc::new(VmMsiSink { vm: vm.clone() });
        let rng = Rng::with_host_urandom().unwrap();
        let transport = VirtioPci::new("virtio-rng", Box::new(rng), memory, msi).unwrap();
        let doorbells = transport.queue_doorbells();
        let root = PciRoot::new();
        let id = root.add_function(Box::new(transport)).unwrap();
        let FunctionId::Bus0 { device } = id else { panic!("{id} is not on bus 0") };
        set_bar_change_hook(&root, &vm, None, HashMap::from([(id, doorbells.clone())]), None);
        let ecam = PciEcam::new(root.clone());
        let write32 = move |register: u64, value: u32| {
            let at = u64::from(device) << 15 | register;
            devices::MmioTarget::write(&ecam, at, &value.to_le_bytes());
        };
        (root, doorbells, write32)
    }

    #[test]
    fn queue_doorbells_follow_the_bar_the_guest_programs() {
        let recorder = Arc::new(MapRecorder { ioeventfd: true, ..Default::default() });
        let (_root, doorbells, write32) = virtio_rng_on(recorder.clone());
        assert_eq!(doorbells.len(), 1, "virtio-rng has one queue");
        let notify = doorbells[0].offset;
        assert_eq!(notify, devices::pci::virtio_pci::notify_offset(0));
        // Place BAR 0 (64-bit) while decoding is off: nothing registered yet.
        write32(0x10, 0x1000_4000);
        write32(0x14, 0);
        assert!(recorder.log.lock().unwrap().is_empty(), "not decoding yet");
        write32(0x04, 2);
        let first = 0x1000_4000 + notify;
        assert_eq!(
            recorder.events.lock().unwrap().get(&first).copied(),
            Some(Arc::as_ptr(&doorbells[0].event) as usize),
            "KVM rings the event the device waits on"
        );
        // Move it above 4 GiB, then turn decoding off.
        write32(0x14, 0x80);
        let moved = 0x80_1000_4000 + notify;
        write32(0x04, 0);
        assert_eq!(
            *recorder.log.lock().unwrap(),
            [
                format!("ioevent {first:#x}"),
                format!("no ioevent {first:#x}"),
                format!("ioevent {moved:#x}"),
                format!("no ioevent {moved:#x}"),
            ]
        );
        assert!(recorder.events.lock().unwrap().is_empty());
    }

    #[test]
    fn without_ioeventfd_queue_notifies_stay_trapped() {
        // HVF: the first refusal ends the attempts; moving the BAR asks nothing more.
        let recorder = Arc::new(MapRecorder::default());
        let (_root, doorbells, write32) = virtio_rng_on(recorder.clone());
        write32(0x10, 0x1000_4000);
        write32(0x14, 0);
        write32(0x04, 2);
        write32(0x14, 0x80);
        write32(0x04, 0);
        let first = 0x1000_4000 + doorbells[0].offset;
        assert_eq!(*recorder.log.lock().unwrap(), [format!("ioevent {first:#x}")]);
    }

    #[test]
    fn the_fake_and_default_backends_have_no_ioeventfd() {
        let hypervisor = crate::hypervisor::fake::FakeHypervisor::default();
        let vm = crate::hypervisor::Hypervisor::create_vm(
            &hypervisor,
            &crate::hypervisor::VmSpec { ipa_bits: 40, tso: false },
        )
        .unwrap();
        let event = devices::virtio::QueueEvent::new().unwrap();
        assert!(matches!(
            vm.register_ioevent(&event, 0x1000),
            Err(crate::hypervisor::HypervisorError::NoIoeventfd)
        ));
        assert!(matches!(
            vm.unregister_ioevent(&event, 0x1000),
            Err(crate::hypervisor::HypervisorError::NoIoeventfd)
        ));
    }
}
