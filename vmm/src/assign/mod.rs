//! Host PCI devices assigned to the guest: opened, reset and DMA-mapped before the guest
//! starts, put behind the guest's root ports, and reset again when the VM ends.
//!
//! One pipeline ([`pipeline`]) serves every host: it drives a [`passthrough::host::HostBackend`]
//! (VFIO on Linux, the DriverKit extension on macOS) through open, reset, the assigned
//! function, direct BARs, identity DMA or a DMA window device, and the reset at exit. The
//! OS adapters (`sys/`) hold only OS calls: KVM irqfd routes and INTx lines on Linux, the
//! MSI injection of the macOS dext. What the rest of the VMM sees is portable: PCI functions
//! to attach, and BAR pieces to map into the guest.

mod error;
mod loss;
mod pipeline;
mod replug;
mod slots;
mod sys;
mod window;
mod worker;

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use devices::pci::{FunctionId, PciFunction};
use devices::trace::TraceSink;

use crate::config::VmConfig;
use crate::hypervisor::Vm;
use crate::memory::GuestRam;
use pipeline::{HostDevices, HostPlatform};

pub use error::AssignError;
pub use loss::LossReport;
pub use passthrough::host::{DirectBar, HostMemory};
pub use replug::{ReplugError, ReplugReport};
pub use sys::IntxHandle;
pub use window::RequesterIdWatch;

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

/// The direct BAR pieces of the assigned functions, by guest function: the BAR-change hook
/// maps them where the guest places the BARs, and a re-plug adds those of a device that
/// came back.
pub type DirectBarRegistry = Arc<Mutex<HashMap<FunctionId, Vec<DirectBar>>>>;

/// The open devices and what takes them out of the guest and puts them back.
#[derive(Debug)]
struct Live {
    host: HostDevices<sys::Platform>,
    /// Takes devices the host took away out of the guest, once their places are known.
    loss: Option<loss::LossHandler>,
    /// Puts them back (SIGUSR1).
    replug: Option<replug::Replugger>,
}

impl Live {
    /// Plugs the lost devices back in that the host has again (on the re-plug thread).
    fn replug(&mut self, asked: Instant) -> Vec<ReplugReport> {
        match (self.loss.as_mut(), self.replug.as_ref()) {
            (Some(handler), Some(replugger)) => {
                replugger.replug_lost(handler, &mut self.host, asked)
            }
            _ => Vec::new(),
        }
    }
}

/// The VM's assigned devices; resets them (and unmaps their DMA) when dropped.
#[derive(Debug)]
pub struct AssignedDevices {
    /// The devices, unless they are on the re-plug thread (`away`).
    live: Option<Live>,
    /// Where the devices come back from the re-plug thread.
    away: Option<mpsc::Receiver<Box<Live>>>,
    worker: Option<worker::ReplugWorker>,
}

impl AssignedDevices {
    /// Opens and prepares every `--device` of `config`; no devices is not an error.
    pub fn open(
        vm: &Arc<dyn Vm>,
        ram: &GuestRam,
        config: &VmConfig,
        trace: Option<&Arc<dyn TraceSink>>,
    ) -> Result<(Self, AssignedParts), AssignError> {
        let mut this = Self { live: None, away: None, worker: None };
        if config.devices.is_empty() {
            return Ok((this, AssignedParts::default()));
        }
        let (platform, backend) = sys::Platform::new(vm, trace)?;
        let (host, parts) = HostDevices::open(platform, backend, ram, &config.devices, trace)?;
        this.live = Some(Live { host, loss: None, replug: None });
        Ok((this, parts))
    }

    /// Once the devices are in the guest's hierarchy `pci`: devices the host takes away are
    /// removed from it ([`Self::poll_device_loss`]) and put back on SIGUSR1
    /// ([`Self::replug_lost`]), by a thread started now (confined when `seccomp`).
    pub fn watch_loss(
        &mut self,
        vm: &Arc<dyn Vm>,
        pci: &crate::pci::PciHierarchy,
        trace: Option<&Arc<dyn TraceSink>>,
        seccomp: bool,
    ) -> Result<(), AssignError> {
        let Some(live) = self.live.as_mut() else { return Ok(()) };
        let ports = pci.assigned_ports.clone();
        live.loss = Some(loss::LossHandler::new(pci.root.clone(), ports, trace.cloned()));
        if let Some(direct_bars) = &pci.direct_bars {
            live.replug =
                Some(replug::Replugger { vm: vm.clone(), direct_bars: direct_bars.clone() });
            self.worker = Some(worker::ReplugWorker::spawn(seccomp)?);
        }
        Ok(())
    }

    /// SIGUSR1: plugs the lost devices back in that the host has again, on the re-plug
    /// thread (their loss reports wait until they are back). Returns at once.
    pub fn replug_lost(&mut self) {
        self.take_back(false);
        if self.away.is_some() {
            log::info!("SIGUSR1: a re-plug is under way; wait for it and send it again");
            return;
        }
        let (Some(worker), true) = (self.worker.as_ref(), self.live.is_some()) else {
            log::info!("SIGUSR1: no device is assigned; nothing to plug in again");
            return;
        };
        let Some(live) = self.live.take() else { return };
        match worker.replug(Box::new(live), Instant::now()) {
            Ok(receiver) => self.away = Some(receiver),
            Err(live) => self.live = Some(*live),
        }
    }

    /// Takes the devices back from the re-plug thread if it is done (or, with `wait`, once
    /// it is).
    fn take_back(&mut self, wait: bool) {
        let Some(receiver) = &self.away else { return };
        let back = if wait {
            receiver.recv().map_err(|_| mpsc::TryRecvError::Disconnected)
        } else {
            receiver.try_recv()
        };
        match back {
            Ok(live) => {
                self.live = Some(*live);
                self.away = None;
            }
            // The thread dropped them (it cannot: a panic aborts); nothing to take back.
            Err(mpsc::TryRecvError::Disconnected) => self.away = None,
            Err(mpsc::TryRecvError::Empty) => {}
        }
    }

    /// Handles the devices the host took away since the last call (non-blocking; the
    /// control thread calls it while it waits): each leaves the guest and goes back to the
    /// host; under `--on-device-loss stop` the VM then stops. Returns what it did.
    pub fn poll_device_loss(
        &mut self,
        control: &crate::control::VmControl,
        policy: crate::cli::OnDeviceLoss,
    ) -> Vec<LossReport> {
        self.take_back(false);
        let Some(Live { host, loss: Some(handler), .. }) = self.live.as_mut() else {
            return Vec::new();
        };
        let mut reports = Vec::new();
        for (address, reason) in host.poll_loss() {
            let noticed = std::time::Instant::now();
            reports.extend(handler.handle(host, address, reason, noticed));
        }
        if policy == crate::cli::OnDeviceLoss::Stop {
            if let Some(report) = reports.first() {
                let address = report.address.to_string();
                control.request_stop(crate::control::StopReason::DeviceLost(address));
            }
        }
        reports
    }

    /// Wires each assigned function's INTx to its guest SPI (the GIC must exist). Failures
    /// are warnings: the device still interrupts through MSI or MSI-X.
    pub fn connect_intx(&mut self, vm: &Arc<dyn Vm>, lines: &[AssignedIntx]) {
        if let Some(live) = self.live.as_mut() {
            live.host.connect_intx(vm, lines);
        }
    }

    /// Quiesces and resets the devices and removes their DMA mappings; also done on drop.
    pub fn shutdown(&mut self) {
        // A re-plug under way finishes first: the devices are reset here, not left open.
        self.take_back(true);
        if let Some(mut live) = self.live.take() {
            live.host.shutdown();
        }
        self.worker = None;
    }
}

impl Drop for AssignedDevices {
    fn drop(&mut self) {
        self.shutdown();
    }
}
