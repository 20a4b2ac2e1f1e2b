//! The `dma=window` half of the pipeline: a window manager over the host's mapper, the
//! aperture-dma device the guest drives it with, the requester id it serves, and what the
//! windows did, reported at exit.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use devices::pci::PciFunction;
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{info, warn};
use passthrough::dma::pv::protocol::TARGET_RID_UNKNOWN;
use passthrough::dma::{
    AddressPolicy, DmaWindowDevice, MapperLimits, SharedWindows, WindowConfig, WindowManager,
};
use passthrough::host::WindowMapper;
use passthrough::{PciAddress, RamRegion};

use super::AssignError;
use crate::config::DmaWindowLimits;
use crate::memory::GuestRam;

/// The host limits a `dma=window` device's mapper enforces, with host-picked addresses.
pub(super) fn mapper_limits(limits: &DmaWindowLimits) -> MapperLimits {
    MapperLimits {
        max_mapped_bytes: limits.max_bytes,
        max_mappings: limits.max_mappings,
        alignment: limits.alignment,
        policy: AddressPolicy::HostPicks,
    }
}

/// A device whose DMA goes through windows, and its window manager.
pub(super) struct WindowedDevice {
    /// The first function served; others of its DMA address space share the windows.
    address: PciAddress,
    /// Its host DMA address space, where the host has a notion of one.
    pub(super) space: Option<u32>,
    windows: SharedWindows,
}

impl std::fmt::Debug for WindowedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowedDevice").field("address", &self.address).finish()
    }
}

impl WindowedDevice {
    /// Reports what the windows did (log and trace), then unmaps them all.
    pub(super) fn finish(self, trace: Option<&Arc<dyn TraceSink>>) {
        let source = self.address.to_string();
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let summary = windows.stats().to_string();
        info!("{source}: {}", summary.trim_end());
        if let Some(trace) = trace {
            for line in summary.lines() {
                let fields = [("summary", TraceValue::Str(line.trim()))];
                trace.record(&TraceRecord { source: &source, event: "dma-stats", fields: &fields });
            }
        }
        if let Err(e) = windows.reset().and_then(|()| windows.flush_cache()) {
            warn!("{source}: unmapping DMA windows at exit: {e}");
        }
    }
}

/// The window manager over `host` for the `dma=window` device at `address` (and the other
/// windowed functions of its DMA address space).
pub(super) fn window_manager(
    address: PciAddress,
    host: WindowMapper,
    ram: &GuestRam,
    limits: &DmaWindowLimits,
) -> Result<WindowedDevice, AssignError> {
    let ranges: Vec<_> = ram.regions().iter().map(RamRegion::range).collect();
    let config = WindowConfig { window_size: limits.window_size, cache_released: true };
    let manager = WindowManager::new(host.mapper, config, &ranges)
        .map_err(|source| AssignError::DmaWindows { address, source })?;
    log::info!(
        "{address}: DMA through windows {}: at most {} MiB in {} mappings, {} KiB granule, {} \
         KiB windows",
        host.placement,
        limits.max_bytes >> 20,
        limits.max_mappings,
        limits.alignment >> 10,
        limits.window_size >> 10
    );
    Ok(WindowedDevice { address, space: None, windows: Arc::new(Mutex::new(manager)) })
}

/// The aperture-dma device (`aperture-dmaN`) the guest drives `windowed`'s windows with for
/// the function at `address`, serving the requester id published in the returned cell.
pub(super) fn window_device(
    address: PciAddress,
    index: usize,
    windowed: &WindowedDevice,
    ram: &GuestRam,
    trace: Option<&Arc<dyn TraceSink>>,
) -> Result<(DmaWindowDevice, Arc<AtomicU32>), AssignError> {
    let rid = Arc::new(AtomicU32::new(TARGET_RID_UNKNOWN));
    let device_name = format!("aperture-dma{index}");
    let device = DmaWindowDevice::new(
        device_name.clone(),
        windowed.windows.clone(),
        ram.memory().clone(),
        rid.clone(),
        trace.cloned(),
    )
    .map_err(|source| AssignError::DmaDevice { address, source })?;
    if windowed.address == address {
        info!("{address}: the guest maps its DMA windows through {device_name}");
    } else {
        info!(
            "{address}: the guest maps its DMA windows through {device_name}, in the DMA \
             address space it shares with {} (one IOMMU group)",
            windowed.address
        );
    }
    Ok((device, rid))
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
    fn bus_reset(&mut self) {
        self.inner.bus_reset()
    }

    fn system_reset(&mut self) {
        self.inner.system_reset()
    }
}
