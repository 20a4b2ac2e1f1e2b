//! macOS: devices claimed through the VFIOUserPCIDriver DriverKit extension, reset at start and
//! exit, with their BARs mapped from the dext, their MSI/MSI-X injected by a wait thread, and
//! their DMA always through windows: the DART maps about 1.5 GB at addresses it picks, so
//! guest RAM cannot be mapped up front at guest physical addresses.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use devices::pci::{MsiMessage, PciFunction};
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{debug, info, warn};
use passthrough::assigned::AssignedFunction;
use passthrough::dma::{DmaWindowDevice, SharedWindows};
use passthrough::driverkit::{
    DartMapper, DextConnection, DextDevice, DextHostFunction, DextInterrupts, DextMapping,
    IoKitConnection, MsiSink, RamMapping,
};

use super::{
    window_device, window_mapper_limits, AssignError, AssignedIntx, AssignedParts, DirectBar,
    HostMemory, PendingFunction, RequesterIdWatch,
};
use crate::config::{DeviceConfig, DmaMode, DmaWindowLimits};
use crate::hypervisor::Vm;
use crate::memory::GuestRam;

/// hv_vm_map's granule: BAR pieces mapped into the guest are multiples of it.
const PAGE_SIZE: u64 = 16 << 10;

/// The dext offers no INTx, so no assigned function shows a pin.
#[derive(Debug, Clone)]
pub enum IntxHandle {}

/// A page-aligned piece of a BAR mapping that the guest accesses directly.
struct BarPiece {
    mapping: Arc<dyn DextMapping>,
    offset: u64,
    len: u64,
}

impl HostMemory for BarPiece {
    fn host_addr(&self) -> *mut u8 {
        // offset + len <= the mapping's length (checked when the piece was made).
        self.mapping.addr().wrapping_add(self.offset as usize)
    }

    fn len(&self) -> u64 {
        self.len
    }
}

/// A device whose DMA goes through windows, and its window manager.
struct WindowedDevice {
    address: String,
    windows: SharedWindows,
}

impl std::fmt::Debug for WindowedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedDevice").field("address", &self.address).finish()
    }
}

/// The VM's devices claimed through the dext.
#[derive(Debug)]
pub struct HostDevices {
    devices: Vec<Arc<DextDevice>>,
    windowed: Vec<WindowedDevice>,
    /// Cleared at shutdown: interrupts after that are not injected.
    live: Arc<AtomicBool>,
    trace: Option<Arc<dyn TraceSink>>,
}

fn host_error(address: &dyn std::fmt::Display, message: impl ToString) -> AssignError {
    AssignError::Host { address: address.to_string(), message: message.to_string() }
}

/// What `dma=identity` gets on macOS.
const NO_IDENTITY: &str = "dma=identity is not possible on macOS: the DART maps at most about \
    1.5 GB, at device addresses it picks, so guest RAM cannot be mapped at guest physical \
    addresses; use dma=window (the default on macOS) and load the aperture_dma module in the \
    guest";

/// Injects the dext's interrupts as guest MSIs while the VM runs.
fn msi_sink(vm: &Arc<dyn Vm>, live: &Arc<AtomicBool>, name: &str) -> MsiSink {
    let vm = vm.clone();
    let live = live.clone();
    let name = name.to_string();
    let warned = AtomicBool::new(false);
    Arc::new(move |message: MsiMessage, requester_id: u16| {
        if !live.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = vm.signal_msi(message.address, message.data, u32::from(requester_id)) {
            let text = format!(
                "{name}: MSI {:#x}/{:#x} from {requester_id:#06x} not delivered: {e}",
                message.address, message.data
            );
            if warned.swap(true, Ordering::Relaxed) {
                debug!("{text}");
            } else {
                warn!("{text}");
            }
        }
    })
}

impl HostDevices {
    pub fn open(
        vm: &Arc<dyn Vm>,
        ram: &GuestRam,
        configs: &[DeviceConfig],
        trace: Option<&Arc<dyn TraceSink>>,
    ) -> Result<(Self, AssignedParts), AssignError> {
        let mut windows = Vec::new();
        for (i, config) in configs.iter().enumerate() {
            match config.dma {
                DmaMode::Identity => return Err(host_error(&config.address, NO_IDENTITY)),
                DmaMode::Window(limits) => windows.push(limits),
            }
            if configs[..i].iter().any(|c| c.address == config.address) {
                return Err(host_error(&config.address, "it is given twice; pass it once"));
            }
        }
        let mut this = Self {
            devices: Vec::new(),
            windowed: Vec::new(),
            live: Arc::new(AtomicBool::new(true)),
            trace: trace.cloned(),
        };
        let mut parts = AssignedParts::default();
        for (config, limits) in configs.iter().zip(windows) {
            let address = config.address;
            let name = address.to_string();
            let connection: Arc<dyn DextConnection> =
                Arc::new(IoKitConnection::open(address).map_err(|e| host_error(&name, e))?);
            let device =
                DextDevice::open(address, connection.clone()).map_err(|e| host_error(&name, e))?;
            let device = Arc::new(device);
            this.devices.push(device.clone());
            this.reset(&device, "start");
            let interrupts = DextInterrupts::new(&device, msi_sink(vm, &this.live, &name));
            let host = DextHostFunction::new(device.clone());
            let mut function = AssignedFunction::new(&name, Box::new(host), Box::new(interrupts))
                .map_err(|e| host_error(&name, e))?;
            function.set_trace(trace.cloned());
            if !function.has_interrupts() {
                warn!(
                    "{name}: the device has no usable MSI-X or MSI, so the guest driver gets no \
                     interrupts from it"
                );
            }
            let direct_bars = direct_bars(&name, &device, &function);
            let index = this.windowed.len();
            let (windows, dma, rid) = windowed(&name, index, connection, ram, limits, trace)?;
            this.windowed.push(WindowedDevice { address: name.clone(), windows });
            parts.endpoints.push(Box::new(dma));
            let function: Box<dyn PciFunction> =
                Box::new(RequesterIdWatch::new(Box::new(function), rid));
            parts.functions.push(PendingFunction {
                name,
                address,
                function,
                direct_bars,
                intx: None,
            });
        }
        Ok((this, parts))
    }

    /// No INTx through the dext.
    pub fn connect_intx(&mut self, _vm: &Arc<dyn Vm>, _lines: &[AssignedIntx]) {}

    /// Resets `device` and traces the outcome.
    fn reset(&self, device: &DextDevice, when: &str) {
        let outcome = device.reset(when);
        if let Some(trace) = &self.trace {
            let outcome = format!("{outcome:?}").to_lowercase();
            let fields = [("when", TraceValue::Str(when)), ("outcome", TraceValue::Str(&outcome))];
            let source = device.address().to_string();
            trace.record(&TraceRecord { source: &source, event: "reset", fields: &fields });
        }
    }

    /// Stops injecting interrupts, resets the devices, then unmaps their DMA windows (and
    /// reports what the windows did). The dext releases the rest when the connections close.
    pub fn shutdown(&mut self) {
        self.live.store(false, Ordering::Release);
        for device in std::mem::take(&mut self.devices) {
            self.reset(&device, "exit");
        }
        for device in self.windowed.drain(..) {
            let mut windows = device.windows.lock().unwrap_or_else(|e| e.into_inner());
            let summary = windows.stats().to_string();
            info!("{}: {}", device.address, summary.trim_end());
            if let Some(trace) = &self.trace {
                for line in summary.lines() {
                    let fields = [("summary", TraceValue::Str(line.trim()))];
                    trace.record(&TraceRecord {
                        source: &device.address,
                        event: "dma-stats",
                        fields: &fields,
                    });
                }
            }
            if let Err(e) = windows.reset().and_then(|()| windows.flush_cache()) {
                warn!("{}: unmapping DMA windows at exit: {e}", device.address);
            }
        }
    }
}

/// The 16 KiB pieces of each BAR the guest accesses directly, from the dext's BAR mappings.
fn direct_bars(name: &str, device: &DextDevice, function: &AssignedFunction) -> Vec<DirectBar> {
    let mut direct = Vec::new();
    for bar in 0..6 {
        let ranges = function.mappable_bar_ranges(bar, PAGE_SIZE);
        if ranges.is_empty() {
            continue;
        }
        let mapping = match device.map_bar(bar) {
            Ok(mapping) if mapping.addr() as u64 % PAGE_SIZE == 0 => mapping,
            Ok(mapping) => {
                warn!(
                    "{name}: BAR {bar} is mapped at {:p}, not 16 KiB-aligned; guest accesses \
                     are trapped (slow)",
                    mapping.addr()
                );
                continue;
            }
            Err(e) => {
                warn!(
                    "{name}: BAR {bar} cannot be mapped ({e}); guest accesses are trapped (slow)"
                );
                continue;
            }
        };
        for (offset, len) in ranges {
            if offset.checked_add(len).is_none_or(|end| end > mapping.len()) {
                warn!(
                    "{name}: BAR {bar} {offset:#x}+{len:#x} is past the dext's {:#x}-byte \
                     mapping; guest accesses there are trapped (slow)",
                    mapping.len()
                );
                continue;
            }
            let memory = Box::new(BarPiece { mapping: mapping.clone(), offset, len });
            direct.push(DirectBar { bar, offset, memory });
        }
    }
    direct
}

/// The window manager of a device over the DART, and the aperture-dma device the guest drives
/// it with.
fn windowed(
    name: &str,
    index: usize,
    connection: Arc<dyn DextConnection>,
    ram: &GuestRam,
    limits: DmaWindowLimits,
    trace: Option<&Arc<dyn TraceSink>>,
) -> Result<(SharedWindows, DmaWindowDevice, Arc<AtomicU32>), AssignError> {
    let regions: Vec<RamMapping> = ram
        .regions()
        .iter()
        .map(|r| RamMapping { gpa: r.guest_addr, len: r.size, host_addr: r.host_addr })
        .collect();
    let mapper = DartMapper::new(connection, regions, window_mapper_limits(&limits))
        .map_err(|e| host_error(&name, e))?;
    window_device(name, index, Box::new(mapper), ram, &limits, trace, "over the DART")
}
