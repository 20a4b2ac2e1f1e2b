//! Re-plug: a device the host took away ([`super::loss`]) is back, bound to vfio-pci again,
//! and SIGUSR1 asks Aperture to give it to the guest again.
//!
//! For each lost device, in order: its functions are opened again through the same pipeline
//! as at start (checked, opened through a fresh backend, reset, watched for loss, guest RAM
//! mapped again for identity DMA, each assigned function built); their direct BAR pieces
//! join the BAR-change hook's table and their INTx is wired; then the functions go back
//! behind their root port, whose hot-plug slot reports presence and link up and interrupts
//! the guest, whose pciehp adds the device (the guest numbers it, places its BARs and its
//! driver probes). A device that is not back, or not bound to vfio-pci, stays lost with a
//! warning that names the fix; the VM keeps running either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::pci::root::PciRootError;
use devices::pci::{FunctionId, PciFunction};
use devices::trace::{TraceRecord, TraceValue};
use log::{info, warn};
use passthrough::PciAddress;

use super::loss::LossHandler;
use super::pipeline::{HostDevices, HostPlatform};
use super::{AssignError, AssignedIntx, DirectBarRegistry};
use crate::hypervisor::Vm;

/// Why a lost device could not be plugged in again.
#[derive(Debug, thiserror::Error)]
pub enum ReplugError {
    /// Opening it again failed (not back, not bound to vfio-pci, ...).
    #[error("{0}")]
    Open(#[from] AssignError),
    /// The guest's root port refused it.
    #[error("putting it behind root port {port}: {source}")]
    Plug {
        /// The root port.
        port: FunctionId,
        /// Why.
        #[source]
        source: PciRootError,
    },
}

/// What one re-plug attempt of a lost device did.
#[derive(Debug)]
pub struct ReplugReport {
    /// The device's functions (host addresses).
    pub addresses: Vec<PciAddress>,
    /// How long after SIGUSR1 it was back in the guest's hierarchy, or why not.
    pub outcome: Result<Duration, ReplugError>,
}

/// What a re-plug needs besides the devices: the VM (INTx lines) and the table of direct
/// BAR pieces the guest's BAR placements map.
#[derive(Clone)]
pub(super) struct Replugger {
    pub(super) vm: Arc<dyn Vm>,
    pub(super) direct_bars: DirectBarRegistry,
}

impl std::fmt::Debug for Replugger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replugger").finish_non_exhaustive()
    }
}

impl Replugger {
    /// Plugs every lost device of `handler` back in that the host has again (`asked`: when
    /// SIGUSR1 came). Failures are logged warnings; the VM keeps running.
    pub(super) fn replug_lost<P: HostPlatform>(
        &self,
        handler: &mut LossHandler,
        host: &mut HostDevices<P>,
        asked: Instant,
    ) -> Vec<ReplugReport> {
        let lost = handler.slots.lost();
        if lost.is_empty() {
            info!("SIGUSR1: no assigned device was lost; nothing to plug in again");
        }
        let mut reports = Vec::new();
        for (port, addresses) in lost {
            let first = addresses[0];
            let outcome = self.replug_one(handler, host, port, &addresses, asked);
            match &outcome {
                Ok(elapsed) => {
                    let away = handler.slots.mark_replugged(port, Instant::now());
                    let away_ms = away.map_or(0, millis);
                    info!(
                        "{first}: plugged in again ({} function(s)) {} ms after SIGUSR1, {:.1} s \
                         after it was lost; the guest was told through its root port's hot-plug \
                         slot",
                        addresses.len(),
                        elapsed.as_millis(),
                        away_ms as f64 / 1000.0
                    );
                    if let Some(trace) = &handler.trace {
                        let source = first.to_string();
                        let fields = [
                            ("functions", TraceValue::Int(addresses.len() as u64)),
                            ("ms", TraceValue::Int(millis(*elapsed))),
                            ("away_ms", TraceValue::Int(away_ms)),
                        ];
                        let record = TraceRecord {
                            source: &source,
                            event: "device-replug",
                            fields: &fields,
                        };
                        trace.record(&record);
                    }
                }
                Err(e) => warn!(
                    "{first}: not plugged in again: {e}; once the device is back and bound to \
                     vfio-pci (echo vfio-pci > /sys/bus/pci/devices/{first}/driver_override; \
                     echo {first} > /sys/bus/pci/drivers_probe), send SIGUSR1 to Aperture \
                     (pid {}) again",
                    std::process::id()
                ),
            }
            reports.push(ReplugReport { addresses, outcome });
        }
        reports
    }

    /// Opens the device behind `port` again and puts it back there.
    fn replug_one<P: HostPlatform>(
        &self,
        handler: &LossHandler,
        host: &mut HostDevices<P>,
        port: FunctionId,
        addresses: &[PciAddress],
        asked: Instant,
    ) -> Result<Duration, ReplugError> {
        let FunctionId::Bus0 { device } = port else {
            return Err(ReplugError::Plug { port, source: PciRootError::NotARootPort(port) });
        };
        let pending = host.replug(addresses)?;
        let mut functions: Vec<(u8, Box<dyn PciFunction>)> = Vec::new();
        let mut lines = Vec::new();
        let mut ids = Vec::new();
        for (number, pending) in crate::pci::group_by_host_slot(pending).into_iter().flatten() {
            // Before the guest can place its BARs: the hook maps them from this table.
            let id = FunctionId::BehindPort { port: device, function: number };
            self.lock_bars().insert(id, pending.direct_bars);
            ids.push(id);
            if let Some((pin, handle)) = pending.intx {
                match crate::pci::intx_spi(port, pin) {
                    Some(spi) => lines.push(AssignedIntx { name: pending.name, pin, spi, handle }),
                    None => warn!("{}: INTx pin {pin} has no SPI; not routed", pending.name),
                }
            }
            functions.push((number, pending.function));
        }
        host.connect_intx(&self.vm, &lines);
        drop(lines);
        if let Err(source) = handler.root.plug_port(port, functions) {
            let mut bars = self.lock_bars();
            for id in &ids {
                bars.remove(id);
            }
            drop(bars);
            host.release(addresses);
            return Err(ReplugError::Plug { port, source });
        }
        Ok(asked.elapsed())
    }

    fn lock_bars(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<FunctionId, Vec<super::DirectBar>>>
    {
        self.direct_bars.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
