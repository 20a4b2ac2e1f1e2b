//! MSI-X of an assigned function: the capability's control bits, the table and the PBA are
//! emulated with [`MsixState`]; every change in what a vector may deliver becomes an
//! [`InterruptHost`] call with [`InterruptKind::Msix`] so that the host routes the device's
//! real interrupt (VFIO: an eventfd wired to a KVM irqfd) straight to the guest's message.
//! An enable while MSI is enabled is refused (see [`AssignedMsix::control_changed`]).
//!
//! The PBA reads from the emulated state, whose pending bits stay clear: a vector the guest
//! masks has its host route removed, so an interrupt the device raises meanwhile is not
//! recorded anywhere Aperture can see (VFIO's eventfd counts it but the irqfd consumes it
//! once routed). Guests poll the PBA rarely; drivers re-check their queues after unmasking.

use std::ops::Range;
use std::sync::Arc;

use devices::pci::config::ConfigSpace;
use devices::pci::format_bdf;
use devices::pci::msix::{MsixState, MSIX_ENTRY_SIZE};
use devices::pci::MsiMessage;
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{debug, warn};

use super::bars::BarLayout;
use super::error::AssignError;
use super::host::{InterruptHost, InterruptKind};

const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const CONTROL_TABLE_SIZE: u16 = 0x7ff;
const BIR_MASK: u32 = 0b111;

/// Where the device keeps its MSI-X table and PBA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsixPlacement {
    /// Number of vectors.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: usize,
    /// The table's bytes in that BAR.
    pub table: Range<u64>,
    /// BAR holding the PBA.
    pub pba_bar: usize,
    /// The PBA's bytes in that BAR.
    pub pba: Range<u64>,
}

impl MsixPlacement {
    /// Reads the device's MSI-X capability at `offset`; `None` (with a warning) if its table
    /// or PBA lies outside the memory BARs offered to the guest.
    pub fn read(name: &str, device: &ConfigSpace, offset: u16, bars: &BarLayout) -> Option<Self> {
        let vectors = (device.read_u16(offset + 2) & CONTROL_TABLE_SIZE) + 1;
        let place = |register: u16, len: u64| {
            let value = device.read_u32(register);
            let bar = (value & BIR_MASK) as usize;
            let start = u64::from(value & !BIR_MASK);
            let host_size = bars.bars.get(bar).copied().flatten()?.host.size;
            (start + len <= host_size).then_some((bar, start..start + len))
        };
        let table = place(offset + 4, u64::from(vectors) * MSIX_ENTRY_SIZE);
        let pba = place(offset + 8, u64::from(vectors).div_ceil(64) * 8);
        match (table, pba) {
            (Some((table_bar, table)), Some((pba_bar, pba))) => {
                Some(Self { vectors, table_bar, table, pba_bar, pba })
            }
            _ => {
                warn!(
                    "{name}: the MSI-X table or PBA lies outside the memory BARs offered to the \
                     guest; MSI-X is hidden and the device has no interrupts"
                );
                None
            }
        }
    }
}

/// The emulated MSI-X of one assigned function.
#[derive(Debug)]
pub struct AssignedMsix {
    capability: u16,
    placement: MsixPlacement,
    state: MsixState,
    /// What the host was last told per vector.
    routes: Vec<Option<MsiMessage>>,
    trace: Option<Arc<dyn TraceSink>>,
}

impl AssignedMsix {
    /// MSI-X with the capability at `capability` and the table and PBA at `placement`.
    pub fn new(name: &str, capability: u16, placement: MsixPlacement) -> Result<Self, AssignError> {
        let state = MsixState::new(placement.vectors)
            .map_err(|source| AssignError::Msix { name: name.into(), source })?;
        let routes = vec![None; usize::from(placement.vectors)];
        Ok(Self { capability, placement, state, routes, trace: None })
    }

    /// Sends MSI-X programming events to `trace`.
    pub fn set_trace(&mut self, trace: Option<Arc<dyn TraceSink>>) {
        self.trace = trace;
    }

    fn record(&self, name: &str, event: &str, fields: &[(&str, TraceValue<'_>)]) {
        if let Some(trace) = &self.trace {
            trace.record(&TraceRecord { source: name, event, fields });
        }
    }

    /// Where the table and PBA are.
    pub fn placement(&self) -> &MsixPlacement {
        &self.placement
    }

    /// The emulated table and PBA.
    pub fn state(&self) -> &MsixState {
        &self.state
    }

    /// Whether a configuration write of `len` bytes at `offset` touched message control.
    pub fn control_written(&self, offset: u16, len: usize) -> bool {
        let control = usize::from(self.capability) + 2;
        let start = usize::from(offset);
        start < control + 2 && control < start + len
    }

    fn route(&self, vector: u16) -> Option<MsiMessage> {
        if !self.state.enabled() || self.state.function_masked() {
            return None;
        }
        let entry = self.state.entry(vector).filter(|e| !e.masked)?;
        Some(MsiMessage { address: entry.address, data: entry.data })
    }

    /// Tells the host about every vector in `vectors` whose route changed.
    fn sync(
        &mut self,
        name: &str,
        host: &mut dyn InterruptHost,
        vectors: Range<u16>,
        requester_id: u16,
    ) {
        for vector in vectors {
            let route = self.route(vector);
            let Some(last) = self.routes.get_mut(usize::from(vector)) else { break };
            if *last == route {
                continue;
            }
            *last = route;
            let vector_field = ("vector", TraceValue::Int(u64::from(vector)));
            match route {
                Some(m) => self.record(
                    name,
                    "msix-vector",
                    &[
                        vector_field,
                        ("address", TraceValue::Hex(m.address)),
                        ("data", TraceValue::Hex(u64::from(m.data))),
                        ("requester", TraceValue::Hex(u64::from(requester_id))),
                    ],
                ),
                None => self.record(
                    name,
                    "msix-vector",
                    &[vector_field, ("masked", TraceValue::Bool(true))],
                ),
            }
            match route {
                Some(m) => debug!(
                    "{name}: MSI-X vector {vector} -> address {:#x} data {:#x} (requester {})",
                    m.address,
                    m.data,
                    format_bdf(requester_id)
                ),
                None => debug!("{name}: MSI-X vector {vector} masked"),
            }
            if let Err(e) = host.set_vector(InterruptKind::Msix, vector, route, requester_id) {
                warn!("{name}: routing MSI-X vector {vector} on the host failed: {e}");
            }
        }
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.state.enabled()
    }

    /// The guest wrote message control in `config`: enable, disable or (un)mask the function.
    /// An enable while MSI is enabled (`msi_enabled`) is refused: a host serves one kind at a
    /// time, and a driver that follows the spec never enables both.
    pub fn control_changed(
        &mut self,
        name: &str,
        config: &mut ConfigSpace,
        host: &mut dyn InterruptHost,
        requester_id: u16,
        msi_enabled: bool,
    ) {
        let register = self.capability + 2;
        let mut control = config.read_u16(register);
        let was_enabled = self.state.enabled();
        if control & CONTROL_ENABLE != 0 && !was_enabled && msi_enabled {
            warn!("{name}: the guest enabled MSI-X while MSI is enabled; MSI-X stays disabled");
            control &= !CONTROL_ENABLE;
            config.set_u16(register, control);
        }
        let enable = control & CONTROL_ENABLE != 0;
        let masked = control & CONTROL_FUNCTION_MASK != 0;
        if enable == was_enabled && masked == self.state.function_masked() {
            return;
        }
        // Nothing is ever pending in the emulated PBA (see the module docs).
        let _ = self.state.set_control(enable, masked);
        if enable != was_enabled {
            let count = if enable { self.placement.vectors } else { 0 };
            debug!(
                "{name}: MSI-X {} with {count} vectors",
                if enable { "enabled" } else { "disabled" }
            );
            self.routes.fill(None);
            self.record(
                name,
                if enable { "msix-enable" } else { "msix-disable" },
                &[("vectors", TraceValue::Int(u64::from(count)))],
            );
            if let Err(e) = host.set_vector_count(InterruptKind::Msix, count) {
                warn!("{name}: setting up {count} MSI-X vectors on the host failed: {e}");
            }
        } else {
            self.record(name, "msix-function-mask", &[("masked", TraceValue::Bool(masked))]);
            debug!("{name}: MSI-X function {}", if masked { "masked" } else { "unmasked" });
        }
        self.sync(name, host, 0..self.placement.vectors, requester_id);
    }

    /// Handles a BAR read if it hits the table or PBA.
    pub fn read(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        let p = &self.placement;
        if bar == p.table_bar && p.table.contains(&offset) {
            self.state.read_table(offset - p.table.start, data);
        } else if bar == p.pba_bar && p.pba.contains(&offset) {
            self.state.read_pba(offset - p.pba.start, data);
        } else {
            return false;
        }
        true
    }

    /// Handles a BAR write if it hits the table or PBA.
    pub fn write(
        &mut self,
        name: &str,
        bar: usize,
        offset: u64,
        data: &[u8],
        host: &mut dyn InterruptHost,
        requester_id: u16,
    ) -> bool {
        let (table_bar, table, pba_bar, pba) = (
            self.placement.table_bar,
            self.placement.table.clone(),
            self.placement.pba_bar,
            self.placement.pba.clone(),
        );
        if bar == table_bar && table.contains(&offset) {
            let at = offset - table.start;
            let _ = self.state.write_table(at, data);
            let first = at / MSIX_ENTRY_SIZE;
            let last = (at + data.len().max(1) as u64 - 1) / MSIX_ENTRY_SIZE;
            // Entries are below 2048, so these fit.
            self.sync(name, host, first as u16..(last + 1) as u16, requester_id);
        } else if bar == pba_bar && pba.contains(&offset) {
            self.state.write_pba(offset - pba.start, data);
        } else {
            return false;
        }
        true
    }

    /// The function's requester id changed: re-send the live routes with it.
    pub fn requester_id_changed(
        &mut self,
        name: &str,
        host: &mut dyn InterruptHost,
        requester_id: u16,
    ) {
        for (vector, route) in self.routes.iter().enumerate() {
            if route.is_some() {
                // At most 2048 vectors.
                if let Err(e) =
                    host.set_vector(InterruptKind::Msix, vector as u16, *route, requester_id)
                {
                    warn!("{name}: re-routing MSI-X vector {vector} on the host failed: {e}");
                }
            }
        }
    }

    /// Back to power-on: disabled (the host is told), entries masked.
    pub fn reset(&mut self, name: &str, host: &mut dyn InterruptHost) {
        if self.state.enabled() {
            debug!("{name}: MSI-X reset");
            if let Err(e) = host.set_vector_count(InterruptKind::Msix, 0) {
                warn!("{name}: disabling MSI-X on the host failed: {e}");
            }
        }
        self.state.reset();
        self.routes.fill(None);
    }
}
