//! Host PCI devices assigned to the guest: opened, reset and DMA-mapped before the guest
//! starts, put behind the guest's root ports, and reset again when the VM ends.
//!
//! The host side is per platform (`sys`): VFIO on Linux. What the rest of the VMM sees is
//! portable: PCI functions to attach, and BAR pieces to map into the guest.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::PciFunction;
use devices::trace::TraceSink;
use passthrough::dma::pv::protocol::TARGET_RID_UNKNOWN;
use passthrough::dma::{
    AddressPolicy, DmaWindowDevice, GuestRamRange, HostMapper, MapperLimits, SharedWindows,
    WindowConfig, WindowManager,
};

use crate::config::{DmaWindowLimits, VmConfig};
use crate::hypervisor::Vm;
use crate::memory::GuestRam;

#[cfg(target_os = "linux")]
#[path = "sys/linux.rs"]
mod sys;
#[cfg(target_os = "macos")]
#[path = "sys/macos.rs"]
mod sys;
#[cfg(not(any(target_os = "linux", target_os = "macos")))]
#[path = "sys/unsupported.rs"]
mod sys;

pub use sys::IntxHandle;

/// Why a device could not be assigned.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The host-side checks or calls failed (the message has the fix).
    #[error("--device {address}: {message}")]
    Host {
        /// The device.
        address: String,
        /// What went wrong, and what to do.
        message: String,
    },
    /// The host has no passthrough support in this build.
    #[error("{0}")]
    Unsupported(String),
}

/// Host memory behind part of a BAR, mappable into the guest.
pub trait HostMemory: Send {
    /// Where it is mapped in this process.
    fn host_addr(&self) -> *mut u8;
    /// Its length in bytes (a multiple of the host page size).
    fn len(&self) -> u64;
    /// Whether it is empty (mappings never are).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A page-aligned piece of a BAR that the guest accesses directly (no exits).
pub struct DirectBar {
    /// BAR index.
    pub bar: usize,
    /// Offset of the piece in the BAR.
    pub offset: u64,
    /// The host mapping.
    pub memory: Box<dyn HostMemory>,
}

impl std::fmt::Debug for DirectBar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectBar")
            .field("bar", &self.bar)
            .field("offset", &format_args!("{:#x}", self.offset))
            .field("len", &format_args!("{:#x}", self.memory.len()))
            .finish()
    }
}

/// An assigned function ready to be attached to the guest's PCI hierarchy.
pub struct PendingFunction {
    /// The host address, used as its name.
    pub name: String,
    /// The host address: functions of one host device share a root port in the guest.
    pub address: passthrough::PciAddress,
    /// The function.
    pub function: Box<dyn PciFunction>,
    /// Its BAR pieces the guest may access directly.
    pub direct_bars: Vec<DirectBar>,
    /// Its INTx pin (1 = INTA .. 4 = INTD) and the handle that routes it, if the guest sees
    /// a pin.
    pub intx: Option<(u8, IntxHandle)>,
}

impl std::fmt::Debug for PendingFunction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFunction")
            .field("name", &self.name)
            .field("direct_bars", &self.direct_bars)
            .field("intx_pin", &self.intx.as_ref().map(|(pin, _)| pin))
            .finish()
    }
}

/// An assigned function's INTx, placed in the guest's hierarchy: the SPI its pin signals
/// through the host bridge's interrupt-map. Connected once the interrupt controller exists
/// ([`AssignedDevices::connect_intx`]).
#[derive(Debug, Clone)]
pub struct AssignedIntx {
    /// The function's name (its host address).
    pub name: String,
    /// Its pin, 1 = INTA .. 4 = INTD.
    pub pin: u8,
    /// The guest SPI (0-based, INTID 32 + spi).
    pub spi: u32,
    /// Routes the device's INTx.
    pub handle: IntxHandle,
}

/// What assigning devices adds to the guest's PCI hierarchy.
#[derive(Default)]
pub struct AssignedParts {
    /// Assigned functions, each behind a root port (functions of one host device together).
    pub functions: Vec<PendingFunction>,
    /// Aperture's own endpoints serving them on bus 0 (aperture-dma for `dma=window`).
    pub endpoints: Vec<Box<dyn PciFunction>>,
}

impl std::fmt::Debug for AssignedParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let endpoints: Vec<&str> = self.endpoints.iter().map(|e| e.name()).collect();
        f.debug_struct("AssignedParts")
            .field("functions", &self.functions)
            .field("endpoints", &endpoints)
            .finish()
    }
}

/// Passes everything to the wrapped function and publishes its requester id, which the
/// aperture-dma device serving it reports to the guest (`TARGET_RID`).
pub struct RequesterIdWatch {
    inner: Box<dyn PciFunction>,
    requester_id: Arc<AtomicU32>,
}

impl std::fmt::Debug for RequesterIdWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequesterIdWatch").field("inner", &self.inner.name()).finish()
    }
}

impl RequesterIdWatch {
    /// Wraps `inner`, publishing into `requester_id`.
    pub fn new(inner: Box<dyn PciFunction>, requester_id: Arc<AtomicU32>) -> Self {
        Self { inner, requester_id }
    }
}

impl PciFunction for RequesterIdWatch {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.inner.config_read(offset, data)
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.inner.config_write(offset, data)
    }
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.inner.bar_read(bar, offset, data)
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.inner.bar_write(bar, offset, data)
    }
    fn bar_regions(&self) -> Vec<devices::pci::BarRegion> {
        self.inner.bar_regions()
    }
    fn set_requester_id(&mut self, requester_id: u16) {
        self.requester_id.store(u32::from(requester_id), Ordering::Relaxed);
        self.inner.set_requester_id(requester_id)
    }
}

/// The VM's assigned devices; resets them (and unmaps their DMA) when dropped.
#[derive(Debug)]
pub struct AssignedDevices {
    host: Option<sys::HostDevices>,
}

impl AssignedDevices {
    /// Opens and prepares every `--device` of `config`; no devices is not an error.
    pub fn open(
        vm: &Arc<dyn Vm>,
        ram: &GuestRam,
        config: &VmConfig,
        trace: Option<&Arc<dyn TraceSink>>,
    ) -> Result<(Self, AssignedParts), AssignError> {
        if config.devices.is_empty() {
            return Ok((Self { host: None }, AssignedParts::default()));
        }
        let (host, parts) = sys::HostDevices::open(vm, ram, &config.devices, trace)?;
        Ok((Self { host: Some(host) }, parts))
    }

    /// Wires each assigned function's INTx to its guest SPI (the GIC must exist). Failures
    /// are warnings: the device still interrupts through MSI or MSI-X.
    pub fn connect_intx(&mut self, vm: &Arc<dyn Vm>, lines: &[AssignedIntx]) {
        if let Some(host) = self.host.as_mut() {
            host.connect_intx(vm, lines);
        }
    }

    /// Quiesces and resets the devices and removes their DMA mappings; also done on drop.
    pub fn shutdown(&mut self) {
        if let Some(mut host) = self.host.take() {
            host.shutdown();
        }
    }
}

impl Drop for AssignedDevices {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The host limits a `dma=window` device's mapper enforces, with host-picked addresses.
pub(crate) fn window_mapper_limits(limits: &DmaWindowLimits) -> MapperLimits {
    MapperLimits {
        max_mapped_bytes: limits.max_bytes,
        max_mappings: limits.max_mappings,
        alignment: limits.alignment,
        policy: AddressPolicy::HostPicks,
    }
}

/// The window manager over `mapper` for a `dma=window` device called `name`, and the
/// aperture-dma device (`aperture-dmaN`) the guest drives it with, serving the requester id
/// published in the returned cell. `host` says where the device addresses come from (logs).
pub(crate) fn window_device(
    name: &str,
    index: usize,
    mapper: Box<dyn HostMapper>,
    ram: &GuestRam,
    limits: &DmaWindowLimits,
    trace: Option<&Arc<dyn TraceSink>>,
    host: &str,
) -> Result<(SharedWindows, DmaWindowDevice, Arc<AtomicU32>), AssignError> {
    let error = |e: &dyn std::fmt::Display| AssignError::Host {
        address: name.to_string(),
        message: e.to_string(),
    };
    let ranges: Vec<GuestRamRange> =
        ram.regions().iter().map(|r| GuestRamRange { start: r.guest_addr, len: r.size }).collect();
    let config = WindowConfig { window_size: limits.window_size, cache_released: true };
    let manager = WindowManager::new(mapper, config, &ranges).map_err(|e| error(&e))?;
    let windows: SharedWindows = Arc::new(Mutex::new(manager));
    let rid = Arc::new(AtomicU32::new(TARGET_RID_UNKNOWN));
    let device_name = format!("aperture-dma{index}");
    let device = DmaWindowDevice::new(
        device_name.clone(),
        windows.clone(),
        ram.memory().clone(),
        rid.clone(),
        trace.cloned(),
    )
    .map_err(|e| error(&e))?;
    log::info!(
        "{name}: DMA through windows ({device_name}) {host}: at most {} MiB in {} mappings, {} \
         KiB granule, {} KiB windows",
        limits.max_bytes >> 20,
        limits.max_mappings,
        limits.alignment >> 10,
        limits.window_size >> 10
    );
    Ok((windows, device, rid))
}
