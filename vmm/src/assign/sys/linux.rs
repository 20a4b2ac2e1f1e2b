//! VFIO: devices checked in sysfs, opened in one container per VM, reset at start and exit,
//! with all guest RAM mapped for their DMA at device address = guest physical address.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};

use devices::pci::MsiMessage;
use devices::pci::PciFunction;
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{debug, info, warn};
use passthrough::assigned::{intx_pin_name, AssignedFunction};
use passthrough::dma::{DmaWindowDevice, HostMapper, SharedWindows};
use passthrough::vfio::{
    can_lock_unlimited, check_memlock, memlock_limit, InterruptRoute, IntxRoute, MappedBar,
    RamMapping, VfioContainer, VfioDevice, VfioHostFunction, VfioHostPicksMapper,
    VfioIdentityMapper, VfioInterrupts,
};
use passthrough::{HostDevice, HostSysfs, PciAddress};

use super::{
    window_device, window_mapper_limits, AssignError, AssignedIntx, AssignedParts, DirectBar,
    HostMemory, PendingFunction, RequesterIdWatch,
};
use crate::config::{DeviceConfig, DmaMode, DmaWindowLimits};
use crate::hypervisor::{IrqfdLevel, IrqfdMsi, MsiRoute, Vm};
use crate::memory::GuestRam;

pub use passthrough::vfio::IntxHandle;

impl HostMemory for MappedBar {
    fn host_addr(&self) -> *mut u8 {
        MappedBar::host_addr(self)
    }

    fn len(&self) -> u64 {
        MappedBar::len(self)
    }
}

/// An MSI or MSI-X vector's eventfd as a KVM irqfd.
struct IrqfdRoute(Arc<dyn IrqfdMsi>);

impl InterruptRoute for IrqfdRoute {
    fn eventfd(&self) -> std::os::fd::RawFd {
        self.0.eventfd()
    }

    fn set(&self, message: Option<MsiMessage>, requester_id: u16) -> std::io::Result<()> {
        let route = message.map(|m| MsiRoute {
            address: m.address,
            data: m.data,
            devid: u32::from(requester_id),
        });
        self.0.set_route(route).map_err(std::io::Error::other)
    }
}

/// A guest SPI driven by INTx: one level irqfd, shared by every function whose pin lands on
/// the SPI (the functions of one host device, or ports four slots apart), as INTx lines are
/// shared. VFIO devices signal the same trigger eventfd and all unmask on its resample, so
/// the line stays asserted while any of them asserts.
#[derive(Debug)]
struct SharedSpi {
    irqfd: Arc<dyn IrqfdLevel>,
    /// Functions with INTx on: the irqfd is connected while there is one.
    users: Mutex<usize>,
}

/// One function's INTx on a [`SharedSpi`].
struct SpiIntxRoute {
    name: String,
    pin: u8,
    spi: u32,
    line: Arc<SharedSpi>,
    enabled: Mutex<bool>,
    trace: Option<Arc<dyn TraceSink>>,
}

impl IntxRoute for SpiIntxRoute {
    fn trigger_fd(&self) -> std::os::fd::RawFd {
        self.line.irqfd.eventfd()
    }

    fn resample_fd(&self) -> std::os::fd::RawFd {
        self.line.irqfd.resample_eventfd()
    }

    fn set_enabled(&self, enabled: bool) -> std::io::Result<()> {
        let mut mine = self.enabled.lock().unwrap_or_else(|e| e.into_inner());
        if *mine == enabled {
            return Ok(());
        }
        let mut users = self.line.users.lock().unwrap_or_else(|e| e.into_inner());
        let next = if enabled { *users + 1 } else { users.saturating_sub(1) };
        if (*users == 0) != (next == 0) {
            self.line.irqfd.set_enabled(next > 0).map_err(std::io::Error::other)?;
        }
        *users = next;
        *mine = enabled;
        debug!(
            "{}: INTx {} SPI {} {}",
            self.name,
            intx_pin_name(self.pin),
            self.spi,
            if enabled { "on" } else { "off" }
        );
        if let Some(trace) = &self.trace {
            let fields = [
                ("spi", TraceValue::Int(u64::from(self.spi))),
                ("pin", TraceValue::Int(u64::from(self.pin))),
            ];
            let event = if enabled { "intx-enable" } else { "intx-disable" };
            trace.record(&TraceRecord { source: &self.name, event, fields: &fields });
        }
        Ok(())
    }
}

impl Drop for SpiIntxRoute {
    fn drop(&mut self) {
        // The handle disables it first; this keeps the count right if it could not.
        if let Err(e) = self.set_enabled(false) {
            debug!("{}: INTx SPI {}: {e}", self.name, self.spi);
        }
    }
}

fn host_page_size() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
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

/// The VM's VFIO devices and DMA mappings.
#[derive(Debug)]
pub struct HostDevices {
    devices: Vec<Arc<VfioDevice>>,
    mapper: Option<VfioIdentityMapper>,
    dma_mapped: Vec<(u64, u64)>,
    windowed: Vec<WindowedDevice>,
    /// INTx connected by [`HostDevices::connect_intx`].
    intx: Vec<IntxHandle>,
    trace: Option<Arc<dyn TraceSink>>,
}

fn host_error(address: &dyn std::fmt::Display, message: impl ToString) -> AssignError {
    AssignError::Host { address: address.to_string(), message: message.to_string() }
}

/// Opens `/dev/vfio/vfio`.
fn open_container(address: &PciAddress) -> Result<Arc<VfioContainer>, AssignError> {
    VfioContainer::open(std::path::Path::new("/dev")).map_err(|e| host_error(address, e))
}

impl HostDevices {
    pub fn open(
        vm: &Arc<dyn Vm>,
        ram: &GuestRam,
        configs: &[DeviceConfig],
        trace: Option<&Arc<dyn TraceSink>>,
    ) -> Result<(Self, AssignedParts), AssignError> {
        let sysfs = HostSysfs::default();
        let mut checked = Vec::new();
        for config in configs {
            checked
                .push(sysfs.inspect(&config.address).map_err(|e| host_error(&config.address, e))?);
        }
        check_groups(configs, &checked)?;
        let needed = pinned_bytes_needed(configs, ram);
        check_memlock(needed, memlock_limit(), can_lock_unlimited())
            .map_err(|e| host_error(&configs[0].address, e))?;
        let mut this = Self {
            devices: Vec::new(),
            mapper: None,
            dma_mapped: Vec::new(),
            windowed: Vec::new(),
            intx: Vec::new(),
            trace: trace.cloned(),
        };
        // Identity devices share one container (and one mapping of guest RAM); each windowed
        // device gets its own, so that no identity mapping lets it reach all of RAM.
        let mut identity: Option<Arc<VfioContainer>> = None;
        let mut opened = Vec::new();
        for (config, device) in configs.iter().zip(&checked) {
            let container = match config.dma {
                DmaMode::Identity => match &identity {
                    Some(container) => container.clone(),
                    None => identity.insert(open_container(&config.address)?).clone(),
                },
                DmaMode::Window(_) => open_container(&config.address)?,
            };
            let vfio = container.open_device(device).map_err(|e| host_error(&device.address, e))?;
            let vfio = Arc::new(vfio);
            this.devices.push(vfio.clone());
            this.reset(&vfio, "start");
            opened.push((config, vfio, container));
        }
        if let Some(container) = &identity {
            this.map_guest_ram(container, ram).map_err(|e| host_error(&configs[0].address, e))?;
        }
        let page_size = host_page_size();
        let mut parts = AssignedParts::default();
        for (config, vfio, container) in opened {
            let name = vfio.address().to_string();
            let irqfd_vm = vm.clone();
            let new_route = Box::new(move || -> std::io::Result<Box<dyn InterruptRoute>> {
                let irqfd = irqfd_vm.create_irqfd_msi().map_err(std::io::Error::other)?;
                Ok(Box::new(IrqfdRoute(irqfd)))
            });
            let interrupts = VfioInterrupts::new(vfio.clone(), new_route);
            let intx_handle = interrupts.intx_handle();
            let mut function = AssignedFunction::new(
                &name,
                Box::new(VfioHostFunction(vfio.clone())),
                Box::new(interrupts),
            )
            .map_err(|e| host_error(&name, e))?;
            function.set_trace(trace.cloned());
            if !function.has_interrupts() {
                warn!(
                    "{name}: the device has no usable MSI-X, MSI or INTx, so the guest driver \
                     gets no interrupts from it"
                );
            }
            // The function shows a pin only when VFIO delivers INTx, so both or neither.
            let intx = function.intx_pin().zip(intx_handle);
            let direct_bars = direct_bars(&name, &vfio, &function, page_size);
            let function: Box<dyn PciFunction> = match config.dma {
                DmaMode::Identity => Box::new(function),
                DmaMode::Window(limits) => {
                    let index = this.windowed.len();
                    let (windows, device, rid) =
                        windowed(&name, index, container, ram, limits, trace)?;
                    this.windowed.push(WindowedDevice { address: name.clone(), windows });
                    parts.endpoints.push(Box::new(device));
                    Box::new(RequesterIdWatch::new(Box::new(function), rid))
                }
            };
            parts.functions.push(PendingFunction {
                name,
                address: vfio.address(),
                function,
                direct_bars,
                intx,
            });
        }
        Ok((this, parts))
    }

    /// Wires each function's INTx to a level irqfd on its SPI, one irqfd per SPI.
    pub fn connect_intx(&mut self, vm: &Arc<dyn Vm>, lines: &[AssignedIntx]) {
        let mut spis: HashMap<u32, Arc<SharedSpi>> = HashMap::new();
        for line in lines {
            let pin = intx_pin_name(line.pin);
            let shared = match spis.get(&line.spi) {
                Some(shared) => shared.clone(),
                None => match vm.create_irqfd_spi(line.spi) {
                    Ok(irqfd) => {
                        let shared = Arc::new(SharedSpi { irqfd, users: Mutex::new(0) });
                        spis.insert(line.spi, shared.clone());
                        shared
                    }
                    Err(e) => {
                        warn!(
                            "{}: no INTx ({pin} on SPI {}): {e}; the guest driver must use \
                             MSI or MSI-X",
                            line.name, line.spi
                        );
                        continue;
                    }
                },
            };
            let route = SpiIntxRoute {
                name: line.name.clone(),
                pin: line.pin,
                spi: line.spi,
                line: shared,
                enabled: Mutex::new(false),
                trace: self.trace.clone(),
            };
            match line.handle.connect(Box::new(route)) {
                Ok(()) => info!("{}: INTx {pin} on SPI {}", line.name, line.spi),
                Err(e) => warn!(
                    "{}: INTx {pin} on SPI {} could not be turned on ({e}); the guest driver \
                     must use MSI or MSI-X",
                    line.name, line.spi
                ),
            }
            self.intx.push(line.handle.clone());
        }
    }

    /// Pins all guest RAM and maps it for the devices' DMA at IOVA = guest physical address.
    fn map_guest_ram(
        &mut self,
        container: &Arc<VfioContainer>,
        ram: &GuestRam,
    ) -> Result<(), String> {
        let regions: Vec<RamMapping> = ram
            .regions()
            .iter()
            .map(|r| RamMapping { gpa: r.guest_addr, len: r.size, host_addr: r.host_addr })
            .collect();
        let mut mapper = VfioIdentityMapper::new(container.clone(), regions.clone(), 4096);
        for region in &regions {
            let iova = mapper.map(region.gpa, region.len).map_err(|e| e.to_string())?;
            self.dma_mapped.push((iova, region.len));
            self.record(
                "dma-map",
                &[
                    ("gpa", TraceValue::Hex(region.gpa)),
                    ("iova", TraceValue::Hex(iova)),
                    ("len", TraceValue::Hex(region.len)),
                ],
            );
            info!("DMA map: guest RAM {:#x}+{:#x} at IOVA {iova:#x}", region.gpa, region.len);
        }
        self.mapper = Some(mapper);
        Ok(())
    }

    fn record(&self, event: &str, fields: &[(&str, TraceValue<'_>)]) {
        if let Some(trace) = &self.trace {
            trace.record(&TraceRecord { source: "dma", event, fields });
        }
    }

    /// Resets `device` and traces the outcome.
    fn reset(&self, device: &VfioDevice, when: &str) {
        let outcome = device.reset(when);
        if let Some(trace) = &self.trace {
            let outcome = format!("{outcome:?}").to_lowercase();
            let fields = [("when", TraceValue::Str(when)), ("outcome", TraceValue::Str(&outcome))];
            let source = device.address().to_string();
            trace.record(&TraceRecord { source: &source, event: "reset", fields: &fields });
        }
    }

    /// Stops the devices' interrupts and DMA, resets them, then unmaps guest RAM and
    /// windows (and reports what the windows did).
    pub fn shutdown(&mut self) {
        for handle in self.intx.drain(..) {
            if let Err(e) = handle.disconnect() {
                warn!("{}: disabling INTx at exit: {e}", handle.device_name());
            }
        }
        for device in &self.devices {
            for (kind, result) in [("MSI-X", device.disable_msix()), ("MSI", device.disable_msi())]
            {
                match result {
                    // EINVAL: already off (the guest or the virtual reset turned it off).
                    Err(e) if e.raw_os_error() != Some(libc::EINVAL) => {
                        warn!("{}: disabling {kind} at exit: {e}", device.address())
                    }
                    _ => {}
                }
            }
            self.reset(device, "exit");
        }
        if let Some(mapper) = self.mapper.as_mut() {
            for (iova, len) in self.dma_mapped.drain(..) {
                match mapper.unmap(iova, len) {
                    Ok(()) => {
                        info!("DMA unmap: IOVA {iova:#x}+{len:#x}");
                        if let Some(trace) = &self.trace {
                            let fields =
                                [("iova", TraceValue::Hex(iova)), ("len", TraceValue::Hex(len))];
                            trace.record(&TraceRecord {
                                source: "dma",
                                event: "dma-unmap",
                                fields: &fields,
                            });
                        }
                    }
                    Err(e) => warn!("DMA unmap at exit: {e}"),
                }
            }
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

/// Every function of an IOMMU group shares its container, so they must share a DMA mode;
/// and a window manager serves one function.
fn check_groups(configs: &[DeviceConfig], devices: &[HostDevice]) -> Result<(), AssignError> {
    for (i, (config, device)) in configs.iter().zip(devices).enumerate() {
        for (other_config, other) in configs.iter().zip(devices).skip(i + 1) {
            let windowed = |c: &DeviceConfig| matches!(c.dma, DmaMode::Window(_));
            if other.group == device.group && (windowed(config) || windowed(other_config)) {
                return Err(host_error(
                    &other.address,
                    format!(
                        "it shares IOMMU group {} with {}, and dma=window needs a group of its \
                         own (one DMA address space per window manager); pass one of them with \
                         dma=identity, or only one of them",
                        device.group, device.address
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Bytes VFIO will pin: all guest RAM for identity devices, and for each windowed device
/// twice its limit (a window shadowed by a straddling map stays mapped until its users leave).
fn pinned_bytes_needed(configs: &[DeviceConfig], ram: &GuestRam) -> u64 {
    let identity = configs.iter().any(|c| c.dma == DmaMode::Identity);
    let ram_bytes: u64 = ram.regions().iter().map(|r| r.size).sum();
    let windows: u64 = configs
        .iter()
        .filter_map(|c| match c.dma {
            DmaMode::Window(limits) => Some(limits.max_bytes.saturating_mul(2).min(ram_bytes)),
            DmaMode::Identity => None,
        })
        .sum();
    if identity { ram_bytes } else { 0 }.saturating_add(windows)
}

/// The page-aligned pieces of each BAR the guest can access directly.
fn direct_bars(
    name: &str,
    vfio: &VfioDevice,
    function: &AssignedFunction,
    page_size: u64,
) -> Vec<DirectBar> {
    let mut direct = Vec::new();
    for bar in 0..6 {
        for (offset, len) in function.mappable_bar_ranges(bar, page_size) {
            match vfio.mmap_bar(bar, offset, len) {
                Ok(mapped) => direct.push(DirectBar { bar, offset, memory: Box::new(mapped) }),
                Err(e) => warn!(
                    "{name}: BAR {bar} {offset:#x}+{len:#x} cannot be mmapped ({e}); guest \
                     accesses there are trapped (slow)"
                ),
            }
        }
    }
    direct
}

/// The window manager of a `dma=window` device over its own container, with host-picked
/// device addresses under `limits`, and the aperture-dma device the guest drives it with.
fn windowed(
    name: &str,
    index: usize,
    container: Arc<VfioContainer>,
    ram: &GuestRam,
    limits: DmaWindowLimits,
    trace: Option<&Arc<dyn TraceSink>>,
) -> Result<(SharedWindows, DmaWindowDevice, Arc<AtomicU32>), AssignError> {
    let regions: Vec<RamMapping> = ram
        .regions()
        .iter()
        .map(|r| RamMapping { gpa: r.guest_addr, len: r.size, host_addr: r.host_addr })
        .collect();
    let mapper = VfioHostPicksMapper::new(container, regions, window_mapper_limits(&limits))
        .map_err(|e| host_error(&name, e))?;
    let (base, size) = mapper.iova_aperture();
    let host = format!("at device addresses {base:#x}+{size:#x}");
    window_device(name, index, Box::new(mapper), ram, &limits, trace, &host)
}
