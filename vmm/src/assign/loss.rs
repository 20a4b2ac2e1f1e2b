//! Device loss: the host takes an assigned device away while the guest runs (an eGPU
//! unplugged, its enclosure powered off, the driver unbound, a fatal error).
//!
//! What happens, in order, once the host reports it ([`passthrough::host::LossWatch`]):
//! 1. The guest's access stops: the device's functions leave the PCI topology, stand-ins
//!    take their BAR routes (reads all-ones, writes dropped), and the BAR-change hook unmaps
//!    their direct BAR pieces from the guest and drops the host mappings.
//! 2. The root port's hot-plug slot reports the slot empty and the link down and interrupts
//!    the guest, whose pciehp removes the device and its driver.
//! 3. The host side goes: interrupts off, irqfds and INTx disconnected, DMA unmapped once no
//!    function uses it, and every VFIO fd of the device closed, so the host's removal (which
//!    waits for that) completes.
//!
//! The VM keeps running unless `--on-device-loss stop` says otherwise.

use std::sync::Arc;
use std::time::{Duration, Instant};

use devices::pci::{FunctionId, PciRoot};
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{info, warn};
use passthrough::host::LossReason;
use passthrough::PciAddress;

use super::pipeline::{HostDevices, HostPlatform};
use super::slots::Slots;

/// What handling one loss did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossReport {
    /// The function the host reported.
    pub address: PciAddress,
    /// Why.
    pub reason: LossReason,
    /// Every function of its device, released.
    pub released: Vec<PciAddress>,
    /// From noticing the report to the last host handle closed.
    pub elapsed: Duration,
}

/// Where each assigned function sits in the guest, to take its device away (and, through
/// `super::replug`, to put it back).
#[derive(Debug, Clone)]
pub(super) struct LossHandler {
    pub(super) root: PciRoot,
    /// The root ports of the assigned devices, and which devices are lost.
    pub(super) slots: Slots,
    pub(super) trace: Option<Arc<dyn TraceSink>>,
}

impl LossHandler {
    pub(super) fn new(
        root: PciRoot,
        ports: Vec<(PciAddress, FunctionId)>,
        trace: Option<Arc<dyn TraceSink>>,
    ) -> Self {
        Self { root, slots: Slots::new(&ports), trace }
    }

    /// Takes the device of `address` away from the guest and gives it back to the host
    /// (`noticed`: when the report was seen). `None` if the VM no longer holds it (its
    /// device already went, through another function's report).
    pub(super) fn handle<P: HostPlatform>(
        &mut self,
        host: &mut HostDevices<P>,
        address: PciAddress,
        reason: LossReason,
        noticed: Instant,
    ) -> Option<LossReport> {
        if !host.holds(address) {
            return None;
        }
        let port = self.slots.port_of(address);
        // Every function behind the same port is one device: they leave together.
        let addresses: Vec<PciAddress> = match port {
            Some(port) => self.slots.addresses(port),
            None => vec![address],
        };
        warn!(
            "{address}: the host took the device away ({}); removing it from the guest",
            describe(reason)
        );
        if let Some(port) = port {
            self.slots.mark_lost(port, noticed);
            match self.root.unplug_port(port) {
                // The functions go here, before the host handles: they hold some of them.
                Ok(functions) => drop(functions),
                Err(e) => warn!("{address}: {e}"),
            }
        }
        let released = host.release(&addresses);
        let elapsed = noticed.elapsed();
        info!(
            "{address}: released {released} function(s) to the host {} ms after its report; \
             the guest was told through its root port's hot-plug slot; once it is back and \
             bound to vfio-pci, SIGUSR1 to Aperture (pid {}) plugs it in again",
            elapsed.as_millis(),
            std::process::id()
        );
        if let Some(trace) = &self.trace {
            let source = address.to_string();
            let fields = [
                ("reason", TraceValue::Str(reason.as_str())),
                ("functions", TraceValue::Int(released as u64)),
                ("ms", TraceValue::Int(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))),
            ];
            trace.record(&TraceRecord { source: &source, event: "device-loss", fields: &fields });
        }
        Some(LossReport { address, reason, released: addresses, elapsed })
    }
}

fn describe(reason: LossReason) -> &'static str {
    match reason {
        LossReason::Request => "removal or unbind request",
        LossReason::Error => "unrecoverable error",
        LossReason::Gone => "device gone",
    }
}
