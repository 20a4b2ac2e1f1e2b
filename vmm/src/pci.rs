//! The guest's PCIe hierarchy: host bridge, root ports and Aperture's virtio devices, wired to
//! the MMIO bus and to the interrupt controller.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arch::layout::{self, MemoryLayout};
use devices::pci::{
    MsiMessage, MsiSink, PciEcam, PciMmioWindow, PciRoot, TraceEvent, TraceKind, VirtioPci,
};
use devices::virtio::{Block, Rng};
use log::{info, warn};
use vm_memory::GuestMemoryMmap;

use crate::bus::{BusError, MmioBus};
use crate::config::VmConfig;
use crate::hypervisor::Vm;

/// Root ports Aperture always provides, so that passed-through devices (and hot paths that
/// expect a PCIe port above a GPU) have a place.
pub const ROOT_PORTS: usize = 1;

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
}

/// Writes one trace line per PCI access: seconds since start, function, access, value.
fn trace_hook(path: &std::path::Path) -> Result<devices::pci::TraceHook, PciSetupError> {
    let sink: Box<dyn Write + Send> = if path.as_os_str() == "-" {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::BufWriter::new(std::fs::File::create(path).map_err(|source| {
            PciSetupError::TraceFile { path: path.display().to_string(), source }
        })?))
    };
    let sink = Mutex::new(sink);
    let start = Instant::now();
    Ok(Box::new(move |event: &TraceEvent<'_>| {
        let what = match event.kind {
            TraceKind::ConfigRead => "cfg-read ".to_string(),
            TraceKind::ConfigWrite => "cfg-write".to_string(),
            TraceKind::BarRead { bar } => format!("bar{bar}-read "),
            TraceKind::BarWrite { bar } => format!("bar{bar}-write"),
        };
        let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(
            sink,
            "{:12.6} {:<14} {what} off={:#06x} size={} value={:#x}",
            start.elapsed().as_secs_f64(),
            event.function,
            event.offset,
            event.size,
            event.value
        );
        let _ = sink.flush();
    }))
}

/// Builds the PCI hierarchy for `config` and maps ECAM and both windows on `bus`.
pub fn build_pci(
    vm: &Arc<dyn Vm>,
    memory: &GuestMemoryMmap,
    memory_layout: &MemoryLayout,
    config: &VmConfig,
    bus: &mut MmioBus,
) -> Result<Arc<Mutex<PciRoot>>, PciSetupError> {
    let topology = |e: devices::pci::root::PciRootError| PciSetupError::Topology(e.to_string());
    let msi: Arc<dyn MsiSink> = Arc::new(VmMsiSink { vm: vm.clone() });
    let mut root = PciRoot::new();
    for _ in 0..ROOT_PORTS {
        root.add_root_port().map_err(topology)?;
    }
    for (index, disk) in config.disks.iter().enumerate() {
        let path = disk.path.display().to_string();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!disk.readonly)
            .open(&disk.path)
            .map_err(|source| PciSetupError::OpenDisk { path: path.clone(), source })?;
        let block = Block::new(file, disk.readonly, &path)
            .map_err(|e| PciSetupError::Disk { path: path.clone(), reason: e.to_string() })?;
        info!(
            "virtio-blk{index}: {path}, {} sectors{}",
            block.capacity_sectors(),
            if disk.readonly { ", read-only" } else { "" }
        );
        let transport = VirtioPci::new(
            format!("virtio-blk{index}"),
            Box::new(block),
            memory.clone(),
            msi.clone(),
        )
        .map_err(|e| PciSetupError::Topology(e.to_string()))?;
        root.add_function(Box::new(transport)).map_err(topology)?;
    }
    if config.rng {
        let rng = Rng::with_host_urandom().map_err(|e| PciSetupError::Rng(e.to_string()))?;
        let transport = VirtioPci::new("virtio-rng", Box::new(rng), memory.clone(), msi.clone())
            .map_err(|e| PciSetupError::Topology(e.to_string()))?;
        root.add_function(Box::new(transport)).map_err(topology)?;
    }
    if let Some(path) = &config.trace_pci {
        root.set_trace_hook(Some(trace_hook(path)?));
    }
    let root = Arc::new(Mutex::new(root));
    bus.insert(
        "pci-ecam",
        layout::PCI_ECAM_BASE,
        layout::PCI_ECAM_SIZE,
        Arc::new(Mutex::new(PciEcam::new(root.clone()))),
    )?;
    bus.insert(
        "pci-mmio32",
        layout::PCI_MMIO32_BASE,
        layout::PCI_MMIO32_SIZE,
        Arc::new(Mutex::new(PciMmioWindow::new(root.clone(), layout::PCI_MMIO32_BASE))),
    )?;
    let window = memory_layout.pci_mmio64;
    bus.insert(
        "pci-mmio64",
        window.base,
        window.size,
        Arc::new(Mutex::new(PciMmioWindow::new(root.clone(), window.base))),
    )?;
    Ok(root)
}
