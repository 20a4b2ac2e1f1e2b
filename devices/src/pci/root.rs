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

use std::sync::{Arc, Mutex};

use log::debug;

use super::config::BarRegion;
use super::host_bridge::HostBridge;
use super::root_port::RootPort;
use super::PciFunction;
use crate::bus::MmioDevice;

/// Device numbers on a bus.
const DEVICES_PER_BUS: usize = 32;
/// Function numbers of a device.
const FUNCTIONS_PER_DEVICE: usize = 8;
/// Header type register (one byte).
const HEADER_TYPE: u16 = super::config::HEADER_TYPE;
/// Header type bit 7: the device has functions besides function 0.
const HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;
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

/// Called for every configuration and BAR access while the root is locked; must not lock the
/// root itself.
pub type TraceHook = Box<dyn Fn(&TraceEvent<'_>) + Send>;

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
}

/// Called after a configuration write changed where BARs decode; must not lock the root.
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

/// A function behind a root port, with the requester id it was last told.
struct Downstream {
    function: Box<dyn PciFunction>,
    requester_id: Option<u16>,
}

/// The functions behind a root port, indexed by function number.
type Downstreams = [Option<Downstream>; FUNCTIONS_PER_DEVICE];

enum Slot {
    Function(Box<dyn PciFunction>),
    Port { port: Box<RootPort>, downstream: Downstreams },
}

/// The requester id of function `function` behind `port`, once the guest numbered the port.
fn downstream_requester_id(port: &RootPort, function: u8) -> Option<u16> {
    port.bus_range().map(|buses| u16::from(*buses.start()) << 8 | u16::from(function))
}

/// A decoded BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    id: FunctionId,
    region: BarRegion,
}

/// The root complex.
pub struct PciRoot {
    slots: Vec<Option<Slot>>,
    routes: Vec<Route>,
    ports_added: u8,
    trace: Option<TraceHook>,
    bar_change: Option<BarChangeHook>,
}

impl std::fmt::Debug for PciRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciRoot")
            .field("functions", &self.functions())
            .field("trace", &self.trace.is_some())
            .finish()
    }
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

fn value_of(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

impl PciRoot {
    /// A root complex with only the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut slots: Vec<Option<Slot>> = (0..DEVICES_PER_BUS).map(|_| None).collect();
        slots[0] = Some(Slot::Function(Box::new(HostBridge::new())));
        Self { slots, routes: Vec::new(), ports_added: 0, trace: None, bar_change: None }
    }

    fn free_device(&self) -> Result<u8, PciRootError> {
        let device = self.slots.iter().position(Option::is_none).ok_or(PciRootError::NoFreeSlot)?;
        // DEVICES_PER_BUS fits in a u8.
        Ok(device as u8)
    }

    /// Adds a root port at the next free device number of bus 0, named `root-portN`.
    pub fn add_root_port(&mut self) -> Result<FunctionId, PciRootError> {
        let device = self.free_device()?;
        self.ports_added = self.ports_added.saturating_add(1);
        let port = RootPort::new(format!("root-port{}", self.ports_added), self.ports_added);
        self.slots[usize::from(device)] =
            Some(Slot::Port { port: Box::new(port), downstream: std::array::from_fn(|_| None) });
        Ok(FunctionId::Bus0 { device })
    }

    /// Adds an integrated endpoint at the next free device number of bus 0.
    pub fn add_function(
        &mut self,
        mut function: Box<dyn PciFunction>,
    ) -> Result<FunctionId, PciRootError> {
        let device = self.free_device()?;
        function.set_requester_id(u16::from(device) << 3);
        self.slots[usize::from(device)] = Some(Slot::Function(function));
        self.rebuild_routes();
        Ok(FunctionId::Bus0 { device })
    }

    /// Puts `function` behind root port `port` as function 0 of device 0 of its secondary bus
    /// (a single-function device, or the first function of a multi-function one).
    pub fn attach_to_port(
        &mut self,
        port: FunctionId,
        function: Box<dyn PciFunction>,
    ) -> Result<FunctionId, PciRootError> {
        self.attach_function_to_port(port, 0, function)
    }

    /// Puts `function` behind root port `port` as function `function_number` (0-7) of device 0
    /// of its secondary bus. Function 0 must come first: a guest looks for the others only
    /// through it.
    pub fn attach_function_to_port(
        &mut self,
        port: FunctionId,
        function_number: u8,
        mut function: Box<dyn PciFunction>,
    ) -> Result<FunctionId, PciRootError> {
        let FunctionId::Bus0 { device } = port else {
            return Err(PciRootError::NotARootPort(port));
        };
        let Some(Some(Slot::Port { port: root_port, downstream })) =
            self.slots.get_mut(usize::from(device))
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
            return Err(PciRootError::NoFunctionZero { port: name(), function: function_number });
        }
        let requester_id = downstream_requester_id(root_port, function_number);
        if let Some(id) = requester_id {
            function.set_requester_id(id);
        }
        downstream[usize::from(function_number)] = Some(Downstream { function, requester_id });
        self.rebuild_routes();
        Ok(FunctionId::BehindPort { port: device, function: function_number })
    }

    /// Sets (or clears) the access trace hook.
    pub fn set_trace_hook(&mut self, hook: Option<TraceHook>) {
        self.trace = hook;
    }

    /// Sets (or clears) the hook told about BARs that appear, move or disappear.
    pub fn set_bar_change_hook(&mut self, hook: Option<BarChangeHook>) {
        self.bar_change = hook;
    }

    /// The function at `id`.
    pub fn function_mut(&mut self, id: FunctionId) -> Option<&mut dyn PciFunction> {
        Self::lookup(&mut self.slots, id)
    }

    /// The root port at `id` (to report its assigned device's link).
    pub fn root_port_mut(&mut self, id: FunctionId) -> Option<&mut RootPort> {
        let FunctionId::Bus0 { device } = id else { return None };
        match self.slots.get_mut(usize::from(device))?.as_mut()? {
            Slot::Port { port, .. } => Some(port.as_mut()),
            Slot::Function(_) => None,
        }
    }

    fn lookup(slots: &mut [Option<Slot>], id: FunctionId) -> Option<&mut dyn PciFunction> {
        match id {
            FunctionId::Bus0 { device } => match slots.get_mut(usize::from(device))?.as_mut()? {
                Slot::Function(function) => Some(function.as_mut()),
                Slot::Port { port, .. } => Some(port.as_mut()),
            },
            FunctionId::BehindPort { port, function } => {
                match slots.get_mut(usize::from(port))?.as_mut()? {
                    Slot::Port { downstream, .. } => {
                        Some(downstream.get_mut(usize::from(function))?.as_mut()?.function.as_mut())
                    }
                    Slot::Function(_) => None,
                }
            }
        }
    }

    fn function_ref(&self, id: FunctionId) -> Option<&dyn PciFunction> {
        match id {
            FunctionId::Bus0 { device } => match self.slots.get(usize::from(device))?.as_ref()? {
                Slot::Function(function) => Some(function.as_ref()),
                Slot::Port { port, .. } => Some(port.as_ref()),
            },
            FunctionId::BehindPort { port, function } => {
                match self.slots.get(usize::from(port))?.as_ref()? {
                    Slot::Port { downstream, .. } => {
                        Some(downstream.get(usize::from(function))?.as_ref()?.function.as_ref())
                    }
                    Slot::Function(_) => None,
                }
            }
        }
    }

    /// Every function's id, in bus-0 device order with each port's functions (in function
    /// order) after the port.
    fn ids(&self) -> Vec<FunctionId> {
        let mut ids = Vec::new();
        for (device, slot) in self.slots.iter().enumerate() {
            let device = device as u8;
            match slot {
                Some(Slot::Function(_)) => ids.push(FunctionId::Bus0 { device }),
                Some(Slot::Port { downstream, .. }) => {
                    ids.push(FunctionId::Bus0 { device });
                    let present = downstream.iter().enumerate().filter(|(_, d)| d.is_some());
                    ids.extend(present.map(|(function, _)| FunctionId::BehindPort {
                        port: device,
                        // FUNCTIONS_PER_DEVICE fits in a u8.
                        function: function as u8,
                    }));
                }
                None => {}
            }
        }
        ids
    }

    /// The requester id (`bus << 8 | devfn`) of `id`, or `None` if it is absent or behind a
    /// port the guest has not numbered.
    pub fn requester_id(&self, id: FunctionId) -> Option<u16> {
        match id {
            FunctionId::Bus0 { device } => {
                self.function_ref(id)?;
                Some(u16::from(device) << 3)
            }
            FunctionId::BehindPort { port, function } => {
                match self.slots.get(usize::from(port))?.as_ref()? {
                    Slot::Port { port: root_port, downstream } => {
                        downstream.get(usize::from(function))?.as_ref()?;
                        downstream_requester_id(root_port, function)
                    }
                    Slot::Function(_) => None,
                }
            }
        }
    }

    /// Every function, for traces and the device tree.
    pub fn functions(&self) -> Vec<FunctionInfo> {
        self.ids()
            .into_iter()
            .filter_map(|id| {
                let function = self.function_ref(id)?;
                Some(FunctionInfo {
                    id,
                    name: function.name().to_string(),
                    requester_id: self.requester_id(id),
                    bars: function.bar_regions(),
                })
            })
            .collect()
    }

    /// Every decoded BAR.
    pub fn bar_regions(&self) -> Vec<(FunctionId, BarRegion)> {
        self.routes.iter().map(|r| (r.id, r.region)).collect()
    }

    /// The function a configuration access to `bus`/`devfn` reaches, if any.
    pub fn resolve(&self, bus: u8, devfn: u8) -> Option<FunctionId> {
        if bus == 0 {
            let device = devfn >> 3;
            return (devfn & 7 == 0 && self.slots.get(usize::from(device))?.is_some())
                .then_some(FunctionId::Bus0 { device });
        }
        for (device, slot) in self.slots.iter().enumerate() {
            let Some(Slot::Port { port, downstream }) = slot else { continue };
            let Some(buses) = port.bus_range() else { continue };
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

    fn trace(&self, kind: TraceKind, id: FunctionId, offset: u64, data: &[u8]) {
        let Some(hook) = &self.trace else { return };
        let Some(function) = self.function_ref(id) else { return };
        hook(&TraceEvent {
            kind,
            function: function.name(),
            id,
            offset,
            size: data.len(),
            value: value_of(data),
        });
    }

    /// A configuration read of `bus`/`devfn` at `register`; absent functions and malformed
    /// accesses (not 1, 2 or 4 bytes naturally aligned inside 4 KiB) read all-ones.
    pub fn config_read(&mut self, bus: u8, devfn: u8, register: u16, data: &mut [u8]) {
        data.fill(0xff);
        if !config_access_ok(register, data.len()) {
            return;
        }
        let Some(id) = self.resolve(bus, devfn) else { return };
        if let Some(function) = Self::lookup(&mut self.slots, id) {
            function.config_read(register, data);
        }
        self.set_multi_function_bit(id, register, data);
        self.trace(TraceKind::ConfigRead, id, u64::from(register), data);
    }

    /// A configuration write; absent functions and malformed accesses ignore it.
    pub fn config_write(&mut self, bus: u8, devfn: u8, register: u16, data: &[u8]) {
        if !config_access_ok(register, data.len()) {
            return;
        }
        let Some(id) = self.resolve(bus, devfn) else { return };
        self.trace(TraceKind::ConfigWrite, id, u64::from(register), data);
        if let Some(function) = Self::lookup(&mut self.slots, id) {
            function.config_write(register, data);
        }
        if let FunctionId::Bus0 { device } = id {
            self.update_downstream_requester_id(device);
        }
        self.rebuild_routes();
    }

    /// A read at `offset` in the ECAM region.
    pub fn ecam_read(&mut self, offset: u64, data: &mut [u8]) {
        match decode_ecam(offset) {
            Some((bus, devfn, register)) => self.config_read(bus, devfn, register, data),
            None => data.fill(0xff),
        }
    }

    /// A write at `offset` in the ECAM region.
    pub fn ecam_write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bus, devfn, register)) = decode_ecam(offset) {
            self.config_write(bus, devfn, register, data);
        }
    }

    /// A read at guest physical `address` in a PCI memory window: the BAR that decodes it
    /// answers; nothing there reads all-ones. Returns whether a BAR claimed it.
    pub fn mmio_read(&mut self, address: u64, data: &mut [u8]) -> bool {
        let Some(route) = self.route(address, data.len()).filter(|_| bar_access_ok(data.len()))
        else {
            debug!("PCI read of {} bytes at {address:#x}: no BAR there", data.len());
            data.fill(0xff);
            return false;
        };
        let offset = address - route.region.address;
        let bar = route.region.index;
        match Self::lookup(&mut self.slots, route.id) {
            Some(function) => function.bar_read(bar, offset, data),
            None => data.fill(0xff),
        }
        self.trace(TraceKind::BarRead { bar }, route.id, offset, data);
        true
    }

    /// A write at guest physical `address` in a PCI memory window; returns whether a BAR
    /// claimed it.
    pub fn mmio_write(&mut self, address: u64, data: &[u8]) -> bool {
        let Some(route) = self.route(address, data.len()).filter(|_| bar_access_ok(data.len()))
        else {
            debug!("PCI write of {} bytes at {address:#x}: no BAR there", data.len());
            return false;
        };
        let offset = address - route.region.address;
        let bar = route.region.index;
        self.trace(TraceKind::BarWrite { bar }, route.id, offset, data);
        if let Some(function) = Self::lookup(&mut self.slots, route.id) {
            function.bar_write(bar, offset, data);
        }
        true
    }

    /// Sets bit 7 of the header type in `data` (read at `register` from `id`) if `id` is
    /// function 0 behind a port that has other functions. The functions do not know about each
    /// other (two passed-through physical functions, say), so the root owns this bit; without
    /// it a guest never looks for functions 1-7.
    fn set_multi_function_bit(&self, id: FunctionId, register: u16, data: &mut [u8]) {
        let FunctionId::BehindPort { port, function: 0 } = id else { return };
        let Some(index) = HEADER_TYPE.checked_sub(register).map(usize::from) else { return };
        let Some(byte) = data.get_mut(index) else { return };
        let Some(Some(Slot::Port { downstream, .. })) = self.slots.get(usize::from(port)) else {
            return;
        };
        if downstream.iter().filter(|d| d.is_some()).count() > 1 {
            *byte |= HEADER_TYPE_MULTI_FUNCTION;
        }
    }

    fn route(&self, address: u64, len: usize) -> Option<Route> {
        self.routes.iter().find(|r| r.region.contains(address, len as u64)).copied()
    }

    /// Tells the functions behind the port at `device` their requester ids if the guest
    /// renumbered the port's buses.
    fn update_downstream_requester_id(&mut self, device: u8) {
        let Some(Some(Slot::Port { port, downstream })) = self.slots.get_mut(usize::from(device))
        else {
            return;
        };
        for (number, entry) in downstream.iter_mut().enumerate() {
            let Some(downstream) = entry else { continue };
            // FUNCTIONS_PER_DEVICE fits in a u8.
            let requester_id = downstream_requester_id(port, number as u8);
            if requester_id == downstream.requester_id {
                continue;
            }
            downstream.requester_id = requester_id;
            if let Some(id) = requester_id {
                debug!(
                    "{} is now {} behind {}",
                    downstream.function.name(),
                    format_bdf(id),
                    port.name()
                );
                downstream.function.set_requester_id(id);
            }
        }
    }

    /// Recomputes the decoded BARs and tells the hook what changed.
    fn rebuild_routes(&mut self) {
        let mut routes = Vec::new();
        for id in self.ids() {
            if let Some(function) = self.function_ref(id) {
                routes
                    .extend(function.bar_regions().into_iter().map(|region| Route { id, region }));
            }
        }
        if routes == self.routes {
            return;
        }
        let old = std::mem::replace(&mut self.routes, routes);
        if self.bar_change.is_none() {
            return;
        }
        let mut changes = Vec::new();
        let find = |routes: &[Route], id: FunctionId, bar: usize| {
            routes.iter().find(|r| r.id == id && r.region.index == bar).map(|r| r.region)
        };
        for route in old.iter().chain(self.routes.iter()) {
            let (id, bar) = (route.id, route.region.index);
            let before = find(&old, id, bar);
            let after = find(&self.routes, id, bar);
            let seen = changes.iter().any(|c: &BarChange| c.id == id && c.bar == bar);
            if before != after && !seen {
                let function = self.function_ref(id).map(|f| f.name().to_string());
                changes.push(BarChange {
                    id,
                    function: function.unwrap_or_default(),
                    bar,
                    old: before,
                    new: after,
                });
            }
        }
        if let Some(hook) = self.bar_change.as_mut() {
            for change in &changes {
                hook(change);
            }
        }
    }
}

/// Whether a BAR access has a width a CPU can make (1, 2, 4 or 8 bytes).
fn bar_access_ok(len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
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

/// The ECAM region as an MMIO device (offsets relative to the ECAM base).
#[derive(Debug, Clone)]
pub struct PciEcam {
    root: Arc<Mutex<PciRoot>>,
}

impl PciEcam {
    /// ECAM for `root`; map it at the ECAM base with size [`ECAM_SIZE`].
    pub fn new(root: Arc<Mutex<PciRoot>>) -> Self {
        Self { root }
    }
}

impl MmioDevice for PciEcam {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.root.lock().unwrap_or_else(|e| e.into_inner()).ecam_read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.root.lock().unwrap_or_else(|e| e.into_inner()).ecam_write(offset, data);
    }
}

/// A PCI memory window (32-bit or 64-bit) as an MMIO device: offsets are relative to `base`
/// and reach the BAR that decodes `base + offset`.
#[derive(Debug, Clone)]
pub struct PciMmioWindow {
    root: Arc<Mutex<PciRoot>>,
    base: u64,
}

impl PciMmioWindow {
    /// The window starting at guest physical `base`.
    pub fn new(root: Arc<Mutex<PciRoot>>, base: u64) -> Self {
        Self { root, base }
    }
}

impl MmioDevice for PciMmioWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let Some(address) = self.base.checked_add(offset) else {
            data.fill(0xff);
            return;
        };
        self.root.lock().unwrap_or_else(|e| e.into_inner()).mmio_read(address, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(address) = self.base.checked_add(offset) {
            self.root.lock().unwrap_or_else(|e| e.into_inner()).mmio_write(address, data);
        }
    }
}

#[cfg(test)]
mod tests;
