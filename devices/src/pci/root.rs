//! The PCI root complex: every emulated or passed-through function, configuration accesses
//! through ECAM, and BAR accesses routed by the addresses the guest programmed.
//!
//! Bus 0 holds the host bridge (00:00.0), root ports and integrated endpoints (function 0 of
//! each device). Behind each root port sits at most one device, device 0 of the port's
//! secondary bus, with up to eight functions (a GPU's VGA function 0 and its HDMI audio
//! function 1, say); the bus numbers are those the guest programmed into the port, so a port
//! that is not numbered yet hides its device.
//!
//! The functions behind a port may be separate physical functions that each report a
//! single-function header, so [`PciRoot`] sets the multi-function bit of function 0's header
//! type itself whenever the port has more than one function: guests only look for functions
//! 1-7 when function 0 has it.
//!
//! Locking: [`PciRoot`] is a handle to the topology behind one lock (level
//! [`LockLevel::Topology`]); each function sits behind its own (level
//! [`LockLevel::Function`], below the topology). A configuration access locks the topology
//! only to find its target, releases it, then locks the function; nothing waits for a
//! function while holding the topology, so a function busy for long (an aperture-dma
//! doorbell) stalls only accesses to itself. BAR accesses do not touch the topology at all:
//! they go through [`BarRoutes`], which each function updates when its BARs move.

use std::ops::RangeInclusive;
use std::sync::Arc;

use log::debug;

use super::config::BarRegion;
use super::function::{FunctionCell, Hooks};
use super::host_bridge::HostBridge;
use super::lock_order::{LockLevel, OrderedMutex};
use super::root_port::RootPort;
use super::routes::BarRoutes;
use super::PciFunction;
use crate::bus::MmioTarget;

/// Device numbers on a bus.
const DEVICES_PER_BUS: usize = 32;
/// Function numbers of a device.
const FUNCTIONS_PER_DEVICE: usize = 8;
/// ECAM: bits 27:20 of the offset select the bus.
const ECAM_BUS_SHIFT: u64 = 20;
/// ECAM: bits 19:12 select device and function.
const ECAM_DEVFN_SHIFT: u64 = 12;
/// Bytes of configuration space per function.
const ECAM_FUNCTION_SIZE: u64 = 1 << ECAM_DEVFN_SHIFT;
/// Size of an ECAM region for 256 buses.
pub const ECAM_SIZE: u64 = 256 << ECAM_BUS_SHIFT;

/// Errors building the PCI topology.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciRootError {
    /// All 32 device numbers of bus 0 are taken.
    #[error("bus 0 has no free device number (32 devices at most); use fewer PCI devices")]
    NoFreeSlot,
    /// The function given as a port is not a root port.
    #[error("{0} is not a root port; attach devices to an id that add_root_port returned")]
    NotARootPort(FunctionId),
    /// The root port already has a function with this number behind it.
    #[error(
        "root port {port} already has function {function} behind it; add another root port \
         for this device"
    )]
    PortOccupied {
        /// The root port's name.
        port: String,
        /// The function number asked for.
        function: u8,
    },
    /// A function number above 7.
    #[error("function number {0} is out of range; a PCI device has functions 0 to 7")]
    BadFunctionNumber(u8),
    /// Function 1-7 attached to a port that has no function 0.
    #[error(
        "function {function} cannot go behind root port {port} before function 0; a \
         multi-function device needs function 0, attach it first"
    )]
    NoFunctionZero {
        /// The root port's name.
        port: String,
        /// The function number asked for.
        function: u8,
    },
}

/// Where a function sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FunctionId {
    /// Function 0 of `device` on bus 0 (host bridge, root ports, integrated endpoints).
    Bus0 {
        /// Device number.
        device: u8,
    },
    /// Function `function` of the device behind the root port at bus-0 device `port` (device
    /// 0 of its secondary bus).
    BehindPort {
        /// Device number of the root port on bus 0.
        port: u8,
        /// Function number, 0 to 7.
        function: u8,
    },
}

impl std::fmt::Display for FunctionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bus0 { device } => write!(f, "00:{device:02x}.0"),
            Self::BehindPort { port, function } => {
                write!(f, "function {function} behind root port 00:{port:02x}.0")
            }
        }
    }
}

/// Formats a requester id as `bus:device.function`.
pub fn format_bdf(requester_id: u16) -> String {
    format!("{:02x}:{:02x}.{}", requester_id >> 8, requester_id >> 3 & 0x1f, requester_id & 7)
}

/// What a traced access was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TraceKind {
    /// Configuration space read.
    ConfigRead,
    /// Configuration space write.
    ConfigWrite,
    /// Read of memory BAR `bar`.
    BarRead {
        /// BAR index.
        bar: usize,
    },
    /// Write of memory BAR `bar`.
    BarWrite {
        /// BAR index.
        bar: usize,
    },
}

/// One guest access to a function, for the trace hook.
#[derive(Debug, Clone, Copy)]
pub struct TraceEvent<'a> {
    /// What kind of access.
    pub kind: TraceKind,
    /// The function's name.
    pub function: &'a str,
    /// Where the function sits.
    pub id: FunctionId,
    /// Offset in configuration space or in the BAR.
    pub offset: u64,
    /// Access width in bytes.
    pub size: usize,
    /// The value read or written (little-endian, first 8 bytes).
    pub value: u64,
}

/// Called for every configuration and BAR access while the accessed function is locked (and
/// nothing else PCI is); must not access PCI itself.
pub type TraceHook = Box<dyn Fn(&TraceEvent<'_>) + Send + Sync>;

/// A BAR that appeared, moved or disappeared (memory decoding switched on or off, or the guest
/// reprogrammed it). The VMM maps passed-through BARs from these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarChange {
    /// The function.
    pub id: FunctionId,
    /// Its name.
    pub function: String,
    /// BAR index.
    pub bar: usize,
    /// Where it was decoded before, if it was.
    pub old: Option<BarRegion>,
    /// Where it is decoded now, if it is.
    pub new: Option<BarRegion>,
    /// The function's device was removed: whatever the VMM holds for it (BAR mappings of
    /// the host device) can go.
    pub unplugged: bool,
}

/// Called after a configuration write changed where BARs decode, while the function is locked
/// (lock level [`LockLevel::BarHook`]); must not access PCI itself.
pub type BarChangeHook = Box<dyn FnMut(&BarChange) + Send>;

/// A function listed for tracing and device-tree building.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Where it sits.
    pub id: FunctionId,
    /// Its name.
    pub name: String,
    /// `bus << 8 | devfn`, or `None` behind a port the guest has not numbered.
    pub requester_id: Option<u16>,
    /// The BARs it decodes now.
    pub bars: Vec<BarRegion>,
}

/// A function taken out of the guest's hierarchy by [`PciRoot::unplug_port`], and where it was.
pub type UnpluggedFunction = (FunctionId, Box<dyn PciFunction>);

/// The functions behind a root port, indexed by function number.
type Downstreams = [Option<Arc<FunctionCell>>; FUNCTIONS_PER_DEVICE];

enum Slot {
    Function(Arc<FunctionCell>),
    Port {
        port: Arc<FunctionCell>,
        /// The port's bus numbers as of its last configuration write (the port updates this
        /// while it is locked, so renumberings land in order).
        buses: Option<RangeInclusive<u8>>,
        downstream: Downstreams,
    },
}

/// The requester id of function `function` behind a port numbered `buses`.
fn downstream_requester_id(buses: &Option<RangeInclusive<u8>>, function: u8) -> Option<u16> {
    buses.as_ref().map(|buses| u16::from(*buses.start()) << 8 | u16::from(function))
}

/// What the topology lock protects.
struct Topology {
    slots: Vec<Option<Slot>>,
    ports_added: u8,
    /// Where hot-plug interrupts of root ports go; ports get a hot-plug slot once set.
    hotplug_msi: Option<Arc<dyn super::MsiSink>>,
}

impl Topology {
    fn free_device(&self) -> Result<u8, PciRootError> {
        let device = self.slots.iter().position(Option::is_none).ok_or(PciRootError::NoFreeSlot)?;
        // DEVICES_PER_BUS fits in a u8.
        Ok(device as u8)
    }

    fn cell(&self, id: FunctionId) -> Option<&Arc<FunctionCell>> {
        match id {
            FunctionId::Bus0 { device } => match self.slots.get(usize::from(device))?.as_ref()? {
                Slot::Function(function) => Some(function),
                Slot::Port { port, .. } => Some(port),
            },
            FunctionId::BehindPort { port, function } => {
                match self.slots.get(usize::from(port))?.as_ref()? {
                    Slot::Port { downstream, .. } => {
                        downstream.get(usize::from(function))?.as_ref()
                    }
                    Slot::Function(_) => None,
                }
            }
        }
    }

    /// Every function, in bus-0 device order with each port's functions (in function order)
    /// after the port.
    fn cells(&self) -> Vec<Arc<FunctionCell>> {
        let mut cells = Vec::new();
        for slot in self.slots.iter().flatten() {
            match slot {
                Slot::Function(function) => cells.push(function.clone()),
                Slot::Port { port, downstream, .. } => {
                    cells.push(port.clone());
                    cells.extend(downstream.iter().flatten().cloned());
                }
            }
        }
        cells
    }

    fn requester_id(&self, id: FunctionId) -> Option<u16> {
        match id {
            FunctionId::Bus0 { device } => {
                self.cell(id)?;
                Some(u16::from(device) << 3)
            }
            FunctionId::BehindPort { port, function } => {
                match self.slots.get(usize::from(port))?.as_ref()? {
                    Slot::Port { buses, downstream, .. } => {
                        downstream.get(usize::from(function))?.as_ref()?;
                        downstream_requester_id(buses, function)
                    }
                    Slot::Function(_) => None,
                }
            }
        }
    }

    fn resolve(&self, bus: u8, devfn: u8) -> Option<FunctionId> {
        if bus == 0 {
            let device = devfn >> 3;
            return (devfn & 7 == 0 && self.slots.get(usize::from(device))?.is_some())
                .then_some(FunctionId::Bus0 { device });
        }
        for (device, slot) in self.slots.iter().enumerate() {
            let Some(Slot::Port { buses: Some(buses), downstream, .. }) = slot else { continue };
            if buses.contains(&bus) {
                // Only device 0 exists on the secondary bus (a root port's link has one
                // device), so devfn is the function number; buses further down are empty.
                let present = bus == *buses.start()
                    && downstream.get(usize::from(devfn)).is_some_and(Option::is_some);
                return present
                    .then_some(FunctionId::BehindPort { port: device as u8, function: devfn });
            }
        }
        None
    }

    /// Whether `id` is function 0 behind a port that has other functions: its header type
    /// then reads with the multi-function bit. The functions do not know about each other
    /// (two passed-through physical functions, say), so the root owns this bit; without it a
    /// guest never looks for functions 1-7.
    fn multi_function(&self, id: FunctionId) -> bool {
        let FunctionId::BehindPort { port, function: 0 } = id else { return false };
        let Some(Some(Slot::Port { downstream, .. })) = self.slots.get(usize::from(port)) else {
            return false;
        };
        downstream.iter().flatten().count() > 1
    }
}

/// What every handle of one root complex shares.
struct RootShared {
    topology: OrderedMutex<Topology>,
    hooks: Arc<Hooks>,
    routes: Arc<BarRoutes>,
}

/// The root complex: a cheap handle, cloned for the ECAM and memory-window views.
#[derive(Clone)]
pub struct PciRoot {
    shared: Arc<RootShared>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: listing BARs would wait for busy functions.
        let cells = self.shared.topology.lock().cells();
        let names: Vec<_> = cells.iter().map(|c| (c.id(), c.name().to_string())).collect();
        f.debug_struct("PciRoot")
            .field("functions", &names)
            .field("trace", &self.shared.hooks.has_trace())
            .finish()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// A root complex with only the host bridge at 00:00.0.
    pub fn new() -> Self {
        let hooks = Arc::new(Hooks::new());
        let routes = Arc::new(BarRoutes::new());
        let mut slots: Vec<Option<Slot>> = (0..DEVICES_PER_BUS).map(|_| None).collect();
        let id = FunctionId::Bus0 { device: 0 };
        let bridge = Box::new(HostBridge::new());
        slots[0] = Some(Slot::Function(FunctionCell::new(
            id,
            bridge,
            Some(0),
            hooks.clone(),
            routes.clone(),
        )));
        let topology = OrderedMutex::new(
            LockLevel::Topology,
            Topology { slots, ports_added: 0, hotplug_msi: None },
        );
        Self { shared: Arc::new(RootShared { topology, hooks, routes }) }
    }

    fn new_cell(
        &self,
        id: FunctionId,
        function: Box<dyn PciFunction>,
        requester_id: Option<u16>,
    ) -> Arc<FunctionCell> {
        FunctionCell::new(
            id,
            function,
            requester_id,
            self.shared.hooks.clone(),
            self.shared.routes.clone(),
        )
    }

    /// Routes the BARs a new function decodes from the start (none, unless it came up with
    /// memory decoding on).
    fn route_new(cell: &Arc<FunctionCell>) {
        let mut state = cell.lock();
        cell.update_bars(&mut state);
        cell.refresh_mirror(&state);
    }

    /// Root ports added from now on have a PCI Express hot-plug slot whose interrupt goes
    /// out through `msi` (so devices can leave and arrive while the guest runs).
    pub fn enable_hotplug(&self, msi: Arc<dyn super::MsiSink>) {
        self.shared.topology.lock().hotplug_msi = Some(msi);
    }

    /// Adds a root port at the next free device number of bus 0, named `root-portN`.
    pub fn add_root_port(&self) -> Result<FunctionId, PciRootError> {
        self.add_root_port_with_link(None)
    }

    /// Adds a root port whose PCIe capability reports `link` (the real link of the assigned
    /// device that will sit behind it) instead of the default.
    pub fn add_root_port_with_link(
        &self,
        link: Option<super::root_port::PcieLink>,
    ) -> Result<FunctionId, PciRootError> {
        let mut topology = self.shared.topology.lock();
        let device = topology.free_device()?;
        topology.ports_added = topology.ports_added.saturating_add(1);
        let number = topology.ports_added;
        let id = FunctionId::Bus0 { device };
        let name = format!("root-port{number}");
        let mut port = match &topology.hotplug_msi {
            Some(msi) => RootPort::with_hotplug(name, number, msi.clone()),
            None => RootPort::new(name, number),
        };
        if let Some(link) = link {
            port.set_link(link);
        }
        let port = Box::new(port);
        let port = self.new_cell(id, port, Some(u16::from(device) << 3));
        topology.slots[usize::from(device)] = Some(Slot::Port {
            port: port.clone(),
            buses: None,
            downstream: std::array::from_fn(|_| None),
        });
        drop(topology);
        port.refresh_mirror(&port.lock());
        Ok(id)
    }

    /// Adds an integrated endpoint at the next free device number of bus 0.
    pub fn add_function(&self, function: Box<dyn PciFunction>) -> Result<FunctionId, PciRootError> {
        let cell = {
            let mut topology = self.shared.topology.lock();
            let device = topology.free_device()?;
            let cell =
                self.new_cell(FunctionId::Bus0 { device }, function, Some(u16::from(device) << 3));
            topology.slots[usize::from(device)] = Some(Slot::Function(cell.clone()));
            cell
        };
        Self::route_new(&cell);
        Ok(cell.id())
    }

    /// Puts `function` behind root port `port` as function 0 of device 0 of its secondary bus
    /// (a single-function device, or the first function of a multi-function one).
    pub fn attach_to_port(
        &self,
        port: FunctionId,
        function: Box<dyn PciFunction>,
    ) -> Result<FunctionId, PciRootError> {
        self.attach_function_to_port(port, 0, function)
    }

    /// Puts `function` behind root port `port` as function `function_number` (0-7) of device 0
    /// of its secondary bus. Function 0 must come first: a guest looks for the others only
    /// through it.
    pub fn attach_function_to_port(
        &self,
        port: FunctionId,
        function_number: u8,
        function: Box<dyn PciFunction>,
    ) -> Result<FunctionId, PciRootError> {
        let cell = self.insert_behind_port(port, function_number, function)?;
        self.port_cell(port)?.set_slot_presence(true);
        Ok(cell.id())
    }

    /// Hot-adds a device behind root port `port` (functions by number, function 0 among
    /// them): every function goes in, then the port's slot reports presence and link up
    /// and interrupts the guest, whose pciehp scans the new device.
    pub fn plug_port(
        &self,
        port: FunctionId,
        functions: Vec<(u8, Box<dyn PciFunction>)>,
    ) -> Result<Vec<FunctionId>, PciRootError> {
        let port_cell = self.port_cell(port)?;
        let mut functions = functions;
        functions.sort_by_key(|(number, _)| *number);
        let mut ids = Vec::new();
        for (number, function) in functions {
            match self.insert_behind_port(port, number, function) {
                Ok(cell) => ids.push(cell.id()),
                Err(e) => {
                    // Half a device is worse than none: take back what went in.
                    self.take_downstream(port);
                    return Err(e);
                }
            }
        }
        port_cell.set_slot_presence(true);
        Ok(ids)
    }

    /// Surprise removal of the device behind root port `port`: its functions leave the
    /// topology (configuration reads of them read all-ones), stand-ins that drop accesses
    /// take their BAR routes, the BAR-change hook hears each BAR is gone (`unplugged`), and
    /// the port's slot reports the slot empty and the link down and interrupts the guest.
    /// Returns the functions, for the caller to release.
    pub fn unplug_port(&self, port: FunctionId) -> Result<Vec<UnpluggedFunction>, PciRootError> {
        let port_cell = self.port_cell(port)?;
        let cells = self.take_downstream(port);
        let functions: Vec<_> = cells.iter().map(|cell| (cell.id(), cell.unplug())).collect();
        port_cell.set_slot_presence(false);
        Ok(functions)
    }

    /// The cell of root port `port`.
    fn port_cell(&self, port: FunctionId) -> Result<Arc<FunctionCell>, PciRootError> {
        let FunctionId::Bus0 { device } = port else {
            return Err(PciRootError::NotARootPort(port));
        };
        match self.shared.topology.lock().slots.get(usize::from(device)) {
            Some(Some(Slot::Port { port, .. })) => Ok(port.clone()),
            _ => Err(PciRootError::NotARootPort(port)),
        }
    }

    /// Takes every function behind root port `port` out of the topology.
    fn take_downstream(&self, port: FunctionId) -> Vec<Arc<FunctionCell>> {
        let FunctionId::Bus0 { device } = port else { return Vec::new() };
        let mut topology = self.shared.topology.lock();
        let Some(Some(Slot::Port { downstream, .. })) = topology.slots.get_mut(usize::from(device))
        else {
            return Vec::new();
        };
        downstream.iter_mut().filter_map(Option::take).collect()
    }

    /// Puts `function` behind root port `port` as function `function_number`, without
    /// telling the port.
    fn insert_behind_port(
        &self,
        port: FunctionId,
        function_number: u8,
        function: Box<dyn PciFunction>,
    ) -> Result<Arc<FunctionCell>, PciRootError> {
        let FunctionId::Bus0 { device } = port else {
            return Err(PciRootError::NotARootPort(port));
        };
        let cell = {
            let mut topology = self.shared.topology.lock();
            let Some(Some(Slot::Port { port: root_port, buses, downstream })) =
                topology.slots.get_mut(usize::from(device))
            else {
                return Err(PciRootError::NotARootPort(port));
            };
            let Some(entry) = downstream.get(usize::from(function_number)) else {
                return Err(PciRootError::BadFunctionNumber(function_number));
            };
            let name = || root_port.name().to_string();
            if entry.is_some() {
                return Err(PciRootError::PortOccupied { port: name(), function: function_number });
            }
            if downstream[0].is_none() && function_number != 0 {
                return Err(PciRootError::NoFunctionZero {
                    port: name(),
                    function: function_number,
                });
            }
            let id = FunctionId::BehindPort { port: device, function: function_number };
            let requester_id = downstream_requester_id(buses, function_number);
            let cell = self.new_cell(id, function, requester_id);
            downstream[usize::from(function_number)] = Some(cell.clone());
            cell
        };
        // A function removed from this place may have left routes to its stand-in.
        self.shared.routes.replace(cell.id(), &[], &cell);
        Self::route_new(&cell);
        Ok(cell)
    }

    /// Sets (or clears) the access trace hook.
    pub fn set_trace_hook(&self, hook: Option<TraceHook>) {
        self.shared.hooks.set_trace(hook);
    }

    /// Keeps `mirror` (or nothing) a copy of bus 0's configuration space from now on,
    /// starting with a copy of every bus-0 function. With no function on bus 0 that cannot
    /// be copied and no trace hook (traces need every read), the guest's reads of bus 0 need
    /// not reach the VMM. Set it after the trace hook.
    pub fn set_config_mirror(&self, mirror: Option<Arc<dyn super::ConfigMirror>>) {
        self.shared.hooks.set_mirror(mirror);
        let cells: Vec<_> = {
            let topology = self.shared.topology.lock();
            let bus0 = topology.slots.iter().flatten().map(|slot| match slot {
                Slot::Function(cell) | Slot::Port { port: cell, .. } => cell.clone(),
            });
            bus0.collect()
        };
        for cell in cells {
            let state = cell.lock();
            cell.refresh_mirror(&state);
        }
    }

    /// Sets (or clears) the hook told about BARs that appear, move or disappear.
    pub fn set_bar_change_hook(&self, hook: Option<BarChangeHook>) {
        self.shared.hooks.set_bar_change(hook);
    }

    /// Runs `f` on the function at `id` (locked), if there is one.
    pub fn with_function<R>(
        &self,
        id: FunctionId,
        f: impl FnOnce(&mut dyn PciFunction) -> R,
    ) -> Option<R> {
        let cell = self.shared.topology.lock().cell(id).cloned()?;
        let mut state = cell.lock();
        let result = f(state.function.as_mut());
        cell.refresh_mirror(&state);
        Some(result)
    }

    /// The requester id (`bus << 8 | devfn`) of `id`, or `None` if it is absent or behind a
    /// port the guest has not numbered.
    pub fn requester_id(&self, id: FunctionId) -> Option<u16> {
        self.shared.topology.lock().requester_id(id)
    }

    /// Every function, for traces and the device tree.
    pub fn functions(&self) -> Vec<FunctionInfo> {
        let listed: Vec<_> = {
            let topology = self.shared.topology.lock();
            topology.cells().into_iter().map(|c| (topology.requester_id(c.id()), c)).collect()
        };
        listed
            .into_iter()
            .map(|(requester_id, cell)| FunctionInfo {
                id: cell.id(),
                name: cell.name().to_string(),
                requester_id,
                bars: cell.lock().function.bar_regions(),
            })
            .collect()
    }

    /// Every decoded BAR.
    pub fn bar_regions(&self) -> Vec<(FunctionId, BarRegion)> {
        self.shared.routes.regions()
    }

    /// The decoded BARs, which the memory windows route by.
    pub fn routes(&self) -> Arc<BarRoutes> {
        self.shared.routes.clone()
    }

    /// The function a configuration access to `bus`/`devfn` reaches, if any.
    pub fn resolve(&self, bus: u8, devfn: u8) -> Option<FunctionId> {
        self.shared.topology.lock().resolve(bus, devfn)
    }

    /// The function a configuration access reaches and whether its header reads with the
    /// multi-function bit; the topology is unlocked when this returns.
    fn target(&self, bus: u8, devfn: u8) -> Option<(Arc<FunctionCell>, bool)> {
        let topology = self.shared.topology.lock();
        let id = topology.resolve(bus, devfn)?;
        Some((topology.cell(id)?.clone(), topology.multi_function(id)))
    }

    /// A configuration read of `bus`/`devfn` at `register`; absent functions and malformed
    /// accesses (not 1, 2 or 4 bytes naturally aligned inside 4 KiB) read all-ones.
    pub fn config_read(&self, bus: u8, devfn: u8, register: u16, data: &mut [u8]) {
        data.fill(0xff);
        if !config_access_ok(register, data.len()) {
            return;
        }
        let Some((cell, multi_function)) = self.target(bus, devfn) else { return };
        cell.config_read(register, data, multi_function);
    }

    /// A configuration write; absent functions and malformed accesses ignore it.
    pub fn config_write(&self, bus: u8, devfn: u8, register: u16, data: &[u8]) {
        if !config_access_ok(register, data.len()) {
            return;
        }
        let Some((cell, _)) = self.target(bus, devfn) else { return };
        let FunctionId::Bus0 { device } = cell.id() else {
            cell.config_write(register, data, |_| {});
            return;
        };
        // Function -> topology is the allowed order: the port is locked while its new bus
        // numbers go into the topology.
        let effects = cell.config_write(register, data, |new_buses| {
            if let Some(Some(Slot::Port { buses, .. })) =
                self.shared.topology.lock().slots.get_mut(usize::from(device))
            {
                *buses = new_buses;
            }
        });
        if effects.renumbered {
            self.update_downstream_requester_ids(device);
        }
        if effects.secondary_bus_reset {
            self.reset_downstream(device);
        }
    }

    /// The VM reboots: every function, the host bridge and the root ports included, goes
    /// back to its power-on state (assigned functions through a host reset), each locked on
    /// its own; BAR routes are removed and the ports' bus numbers forgotten, as after
    /// power-on, so the next boot enumerates from scratch.
    pub fn system_reset(&self) {
        let cells = self.shared.topology.lock().cells();
        for cell in &cells {
            debug!("{}: reset for the reboot", cell.name());
            cell.system_reset();
        }
        let mut topology = self.shared.topology.lock();
        for slot in topology.slots.iter_mut().flatten() {
            if let Slot::Port { buses, .. } = slot {
                *buses = None;
            }
        }
    }

    /// The functions behind the port at `device`, for work that locks each on its own
    /// after the topology is released.
    fn downstream_cells(&self, device: u8) -> Vec<Arc<FunctionCell>> {
        let topology = self.shared.topology.lock();
        let Some(Some(Slot::Port { downstream, .. })) = topology.slots.get(usize::from(device))
        else {
            return Vec::new();
        };
        downstream.iter().flatten().cloned().collect()
    }

    /// Resets every function behind the port at `device` after the guest reset its
    /// secondary bus, each locked on its own (the port is unlocked by then), and reroutes
    /// their BARs.
    fn reset_downstream(&self, device: u8) {
        for cell in self.downstream_cells(device) {
            debug!("{}: secondary bus reset by 00:{device:02x}.0", cell.name());
            cell.bus_reset();
        }
    }

    /// Tells the functions behind the port at `device` their requester ids after the guest
    /// renumbered the port's buses. Each function is locked on its own, and looks up its id
    /// in the topology while locked: whichever renumbering comes last, each function ends
    /// with the id of the latest bus numbers.
    fn update_downstream_requester_ids(&self, device: u8) {
        for cell in self.downstream_cells(device) {
            let mut state = cell.lock();
            let requester_id = self.shared.topology.lock().requester_id(cell.id());
            if requester_id == state.requester_id {
                continue;
            }
            state.requester_id = requester_id;
            if let Some(id) = requester_id {
                debug!("{} is now {} behind 00:{device:02x}.0", cell.name(), format_bdf(id));
                state.function.set_requester_id(id);
            }
        }
    }

    /// A read at `offset` in the ECAM region.
    pub fn ecam_read(&self, offset: u64, data: &mut [u8]) {
        match decode_ecam(offset) {
            Some((bus, devfn, register)) => self.config_read(bus, devfn, register, data),
            None => data.fill(0xff),
        }
    }

    /// A write at `offset` in the ECAM region.
    pub fn ecam_write(&self, offset: u64, data: &[u8]) {
        if let Some((bus, devfn, register)) = decode_ecam(offset) {
            self.config_write(bus, devfn, register, data);
        }
    }

    /// A read at guest physical `address` in a PCI memory window: the BAR that decodes it
    /// answers; nothing there reads all-ones. Returns whether a BAR claimed it.
    pub fn mmio_read(&self, address: u64, data: &mut [u8]) -> bool {
        self.shared.routes.read(address, data)
    }

    /// A write at guest physical `address` in a PCI memory window; returns whether a BAR
    /// claimed it.
    pub fn mmio_write(&self, address: u64, data: &[u8]) -> bool {
        self.shared.routes.write(address, data)
    }
}

/// Whether a configuration access is 1, 2 or 4 bytes, naturally aligned, inside 4 KiB.
fn config_access_ok(register: u16, len: usize) -> bool {
    let ok = matches!(len, 1 | 2 | 4)
        && usize::from(register) % len == 0
        && u64::from(register) + len as u64 <= ECAM_FUNCTION_SIZE;
    if !ok {
        debug!("PCI config access of {len} bytes at register {register:#x} ignored");
    }
    ok
}

/// Splits an ECAM offset into bus, devfn and register.
fn decode_ecam(offset: u64) -> Option<(u8, u8, u16)> {
    let bus = u8::try_from(offset >> ECAM_BUS_SHIFT).ok()?;
    let devfn = (offset >> ECAM_DEVFN_SHIFT) as u8;
    let register = (offset & (ECAM_FUNCTION_SIZE - 1)) as u16;
    Some((bus, devfn, register))
}

/// The ECAM region on the MMIO bus (offsets relative to the ECAM base). No lock of its own:
/// an access locks the topology to find its function, then that function.
#[derive(Debug, Clone)]
pub struct PciEcam {
    root: PciRoot,
}

impl PciEcam {
    /// ECAM for `root`; map it at the ECAM base with size [`ECAM_SIZE`].
    pub fn new(root: PciRoot) -> Self {
        Self { root }
    }
}

impl MmioTarget for PciEcam {
    fn read(&self, offset: u64, data: &mut [u8]) {
        self.root.ecam_read(offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        self.root.ecam_write(offset, data);
    }
}

/// A PCI memory window (32-bit or 64-bit) on the MMIO bus: offsets are relative to `base`
/// and reach the BAR that decodes `base + offset`, through the root's [`BarRoutes`] (read
/// side only while looking up), then that function's lock alone.
#[derive(Debug, Clone)]
pub struct PciMmioWindow {
    routes: Arc<BarRoutes>,
    base: u64,
}

impl PciMmioWindow {
    /// The window of `root` starting at guest physical `base`.
    pub fn new(root: PciRoot, base: u64) -> Self {
        Self { routes: root.routes(), base }
    }
}

impl MmioTarget for PciMmioWindow {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let Some(address) = self.base.checked_add(offset) else {
            data.fill(0xff);
            return;
        };
        self.routes.read(address, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if let Some(address) = self.base.checked_add(offset) {
            self.routes.write(address, data);
        }
    }
}

#[cfg(test)]
mod tests;
