//! Linux: the OS calls of VFIO passthrough. MSI and MSI-X vectors are KVM irqfds with MSI
//! routes; INTx is a level irqfd on the function's guest SPI, shared by the functions whose
//! pins land on it. Everything else is the portable pipeline over
//! [`passthrough::vfio::VfioBackend`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use devices::pci::MsiMessage;
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{debug, info, warn};
use passthrough::assigned::intx_pin_name;
use passthrough::vfio::{InterruptRoute, IntxRoute, SharedRouteFactory, VfioBackend};

use crate::assign::pipeline::{HostPlatform, PlatformParts};
use crate::assign::AssignedIntx;
use crate::hypervisor::{IrqfdLevel, IrqfdMsi, MsiRoute, Vm};

pub use passthrough::vfio::IntxHandle;

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

/// KVM's side of the VM's VFIO devices: their INTx lines.
pub(crate) struct Platform {
    /// INTx connected by [`HostPlatform::connect_intx`].
    intx: Vec<IntxHandle>,
    trace: Option<Arc<dyn TraceSink>>,
    /// Makes MSI / MSI-X routes, for the backend of a re-plug.
    new_route: SharedRouteFactory,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform").field("intx", &self.intx).finish()
    }
}

impl HostPlatform for Platform {
    type Backend = VfioBackend;

    /// VFIO, with each MSI / MSI-X vector routed through a new KVM irqfd of `vm`.
    fn new(vm: &Arc<dyn Vm>, trace: Option<&Arc<dyn TraceSink>>) -> PlatformParts<Self> {
        let vm = vm.clone();
        let new_route: SharedRouteFactory = Arc::new(move || {
            let irqfd = vm.create_irqfd_msi().map_err(std::io::Error::other)?;
            Ok(Box::new(IrqfdRoute(irqfd)) as Box<dyn InterruptRoute>)
        });
        let platform =
            Self { intx: Vec::new(), trace: trace.cloned(), new_route: new_route.clone() };
        Ok((platform, VfioBackend::new(new_route)))
    }

    /// VFIO again, with its own containers: those of the start closed with the devices.
    fn replug_backend(&self) -> Result<VfioBackend, crate::assign::AssignError> {
        Ok(VfioBackend::new(self.new_route.clone()))
    }

    /// Wires each function's INTx to a level irqfd on its SPI, one irqfd per SPI.
    fn connect_intx(&mut self, vm: &Arc<dyn Vm>, lines: &[AssignedIntx]) {
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

    /// Turns INTx off for the functions that left, and drops their handles.
    fn release(&mut self, addresses: &[passthrough::PciAddress]) {
        let names: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        self.intx.retain(|handle| {
            let name = handle.device_name();
            if !names.contains(&name) {
                return true;
            }
            if let Err(e) = handle.disconnect() {
                debug!("{name}: disabling INTx after removal: {e}");
            }
            false
        });
    }

    /// Turns INTx off for good before the devices are reset.
    fn stop(&mut self) {
        for handle in self.intx.drain(..) {
            if let Err(e) = handle.disconnect() {
                warn!("{}: disabling INTx at exit: {e}", handle.device_name());
            }
        }
    }
}
