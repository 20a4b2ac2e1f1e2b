//! MSI of an assigned function: the capability's registers are virtual (the guest's address,
//! data and mask bits never reach the device, whose real MSI the host programs) and every
//! change in what a vector delivers becomes an [`InterruptHost`] call with
//! [`InterruptKind::Msi`], so that the host routes the device's real interrupt (VFIO: an eventfd
//! wired to a KVM irqfd) straight to the guest's message, as for MSI-X.
//!
//! Kept from the device: the capability's offset, 64-bit address capable, per-vector masking
//! capable and Multiple Message Capable (reserved values 6 and 7 read as 5: 32 vectors).
//! Extended Message Data is not offered (its capable bit reads 0): the data is 16 bits.
//!
//! Vector `i` of a block of `n` delivers the guest's data with its low log2(n) bits replaced
//! by `i` (the PCI spec lets the function modify exactly those bits and software leaves them
//! 0, so this is data | i), to the same address. A Multiple Message Enable larger than
//! Multiple Message Capable is clamped in the register, so the guest reads what it got.
//!
//! Pending bits read 0 and ignore writes: a vector the guest masks has its host route
//! removed, so an interrupt the device raises meanwhile is not recorded anywhere Aperture can
//! see (VFIO's eventfd counts it but the irqfd consumes it once routed), as for MSI-X's PBA.
//!
//! MSI and MSI-X are never enabled together: the guest's enable of one while the other is
//! enabled is refused (the Enable bit reads back 0), see [`AssignedMsi::changed`].

use std::sync::Arc;

use devices::pci::config::ConfigSpace;
use devices::pci::{format_bdf, MsiMessage};
use devices::trace::{TraceRecord, TraceSink, TraceValue};
use log::{debug, warn};

use super::host::{InterruptHost, InterruptKind};

/// Message Control: MSI Enable.
pub const CONTROL_ENABLE: u16 = 1;
const CONTROL_MMC_SHIFT: u16 = 1;
const CONTROL_MME_SHIFT: u16 = 4;
const CONTROL_LOG2_MASK: u16 = 0b111;
/// Message Control: 64-bit address capable.
pub const CONTROL_64BIT: u16 = 1 << 7;
/// Message Control: per-vector masking capable.
pub const CONTROL_PER_VECTOR_MASK: u16 = 1 << 8;
/// Message Control bits the guest may change: Enable and Multiple Message Enable.
pub const CONTROL_WRITABLE: u16 = CONTROL_ENABLE | CONTROL_LOG2_MASK << CONTROL_MME_SHIFT;
/// MSI has at most 32 vectors (Multiple Message Capable 5).
const MAX_LOG2_VECTORS: u16 = 5;
/// Message Address bits 1:0 are reserved (DWORD-aligned doorbells).
const ADDRESS_WRITABLE: u32 = !0b11;

/// The device's MSI capability, as offered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiCapability {
    /// Offset of the capability (the device's).
    pub offset: u16,
    /// 64-bit message address capable.
    pub is_64bit: bool,
    /// Per-vector masking capable (mask and pending registers present).
    pub per_vector_mask: bool,
    /// Multiple Message Capable, as log2 of the vectors (0-5).
    pub log2_vectors: u8,
}

impl MsiCapability {
    /// Reads the device's MSI capability at `offset`.
    pub fn read(device: &ConfigSpace, offset: u16) -> Self {
        let control = device.read_u16(offset + 2);
        let log2 = (control >> CONTROL_MMC_SHIFT & CONTROL_LOG2_MASK).min(MAX_LOG2_VECTORS);
        Self {
            offset,
            is_64bit: control & CONTROL_64BIT != 0,
            per_vector_mask: control & CONTROL_PER_VECTOR_MASK != 0,
            // At most 5.
            log2_vectors: log2 as u8,
        }
    }

    /// At most `vectors` vectors (a power of two at or below it, at least 1): the host
    /// cannot deliver more.
    pub fn limited_to(self, vectors: u16) -> Self {
        let mut log2_vectors = self.log2_vectors;
        while log2_vectors > 0 && 1u16 << log2_vectors > vectors {
            log2_vectors -= 1;
        }
        Self { log2_vectors, ..self }
    }

    /// The most vectors the guest may enable (1-32).
    pub fn vectors(&self) -> u16 {
        1 << self.log2_vectors
    }

    /// Bytes the capability takes, header included.
    pub fn size(&self) -> u16 {
        match (self.is_64bit, self.per_vector_mask) {
            (false, false) => 0x0a,
            (true, false) => 0x0e,
            (false, true) => 0x14,
            (true, true) => 0x18,
        }
    }

    /// Message Control.
    pub fn control_register(&self) -> u16 {
        self.offset + 2
    }

    /// Message Address (low 32 bits).
    pub fn address_register(&self) -> u16 {
        self.offset + 4
    }

    /// Message Upper Address, if 64-bit capable.
    pub fn upper_address_register(&self) -> Option<u16> {
        self.is_64bit.then_some(self.offset + 8)
    }

    /// Message Data.
    pub fn data_register(&self) -> u16 {
        self.offset + if self.is_64bit { 0x0c } else { 0x08 }
    }

    /// Mask Bits, if per-vector masking capable.
    pub fn mask_register(&self) -> Option<u16> {
        self.per_vector_mask.then_some(self.offset + if self.is_64bit { 0x10 } else { 0x0c })
    }

    /// Pending Bits, if per-vector masking capable.
    pub fn pending_register(&self) -> Option<u16> {
        self.mask_register().map(|mask| mask + 4)
    }

    /// Bits of Mask Bits that stand for implemented vectors.
    fn vector_bits(&self) -> u32 {
        u32::MAX >> (32 - self.vectors())
    }

    /// Message Control at power-on: the capability bits, disabled, one vector enabled.
    fn pristine_control(&self) -> u16 {
        let mut control = u16::from(self.log2_vectors) << CONTROL_MMC_SHIFT;
        if self.is_64bit {
            control |= CONTROL_64BIT;
        }
        if self.per_vector_mask {
            control |= CONTROL_PER_VECTOR_MASK;
        }
        control
    }

    /// Implements the capability in the virtual `config`: the device's header (its next
    /// pointer is relinked by the caller), the capability bits, and zeroed message registers
    /// (the device's hold the host's programming) with the guest's write masks.
    pub fn offer(&self, device: &ConfigSpace, config: &mut ConfigSpace) {
        config.set_u16(self.offset, device.read_u16(self.offset));
        config.set_bytes(self.offset + 2, &vec![0; usize::from(self.size() - 2)]);
        config.set_u16(self.control_register(), self.pristine_control());
        config.set_rw_u16(self.control_register(), CONTROL_WRITABLE);
        config.set_rw_u32(self.address_register(), ADDRESS_WRITABLE);
        if let Some(upper) = self.upper_address_register() {
            config.set_rw_u32(upper, u32::MAX);
        }
        config.set_rw_u16(self.data_register(), u16::MAX);
        if let Some(mask) = self.mask_register() {
            config.set_rw_u32(mask, self.vector_bits());
        }
    }
}

/// The emulated MSI of one assigned function.
#[derive(Debug)]
pub struct AssignedMsi {
    capability: MsiCapability,
    /// Vectors the host was last told are enabled (0: disabled).
    enabled: u16,
    /// What the host was last told per vector.
    routes: Vec<Option<MsiMessage>>,
    trace: Option<Arc<dyn TraceSink>>,
}

impl AssignedMsi {
    /// MSI as described by `capability`, disabled.
    pub fn new(capability: MsiCapability) -> Self {
        let routes = vec![None; usize::from(capability.vectors())];
        Self { capability, enabled: 0, routes, trace: None }
    }

    /// The capability offered.
    pub fn capability(&self) -> &MsiCapability {
        &self.capability
    }

    /// Vectors enabled (0: MSI is disabled).
    pub fn enabled_vectors(&self) -> u16 {
        self.enabled
    }

    /// Sends MSI programming events to `trace`.
    pub fn set_trace(&mut self, trace: Option<Arc<dyn TraceSink>>) {
        self.trace = trace;
    }

    fn record(&self, name: &str, event: &str, fields: &[(&str, TraceValue<'_>)]) {
        if let Some(trace) = &self.trace {
            trace.record(&TraceRecord { source: name, event, fields });
        }
    }

    /// Whether a configuration write of `len` bytes at `offset` touched the capability's
    /// registers (past its header).
    pub fn written(&self, offset: u16, len: usize) -> bool {
        let start = usize::from(self.capability.control_register());
        let end = usize::from(self.capability.offset + self.capability.size());
        let at = usize::from(offset);
        at < end && start < at + len
    }

    /// What vector `vector` delivers with the registers in `config`.
    fn route(&self, config: &ConfigSpace, vector: u16) -> Option<MsiMessage> {
        if vector >= self.enabled {
            return None;
        }
        let cap = &self.capability;
        // vector < 32.
        if cap.mask_register().is_some_and(|mask| config.read_u32(mask) >> vector & 1 != 0) {
            return None;
        }
        let mut address = u64::from(config.read_u32(cap.address_register()));
        if let Some(upper) = cap.upper_address_register() {
            address |= u64::from(config.read_u32(upper)) << 32;
        }
        // The function owns the low log2(enabled) bits of the data: the vector number.
        let data = u32::from(config.read_u16(cap.data_register()));
        let data = data & !(u32::from(self.enabled) - 1) | u32::from(vector);
        Some(MsiMessage { address, data })
    }

    /// Tells the host about every vector whose route changed.
    fn sync(
        &mut self,
        name: &str,
        config: &ConfigSpace,
        host: &mut dyn InterruptHost,
        requester_id: u16,
    ) {
        // At most 32 vectors.
        for vector in 0..self.routes.len() as u16 {
            let route = self.route(config, vector);
            let Some(last) = self.routes.get_mut(usize::from(vector)) else { break };
            if *last == route {
                continue;
            }
            *last = route;
            let vector_field = ("vector", TraceValue::Int(u64::from(vector)));
            match route {
                Some(m) => {
                    self.record(
                        name,
                        "msi-vector",
                        &[
                            vector_field,
                            ("address", TraceValue::Hex(m.address)),
                            ("data", TraceValue::Hex(u64::from(m.data))),
                            ("requester", TraceValue::Hex(u64::from(requester_id))),
                        ],
                    );
                    debug!(
                        "{name}: MSI vector {vector} -> address {:#x} data {:#x} (requester {})",
                        m.address,
                        m.data,
                        format_bdf(requester_id)
                    );
                }
                None => {
                    self.record(
                        name,
                        "msi-vector",
                        &[vector_field, ("masked", TraceValue::Bool(true))],
                    );
                    debug!("{name}: MSI vector {vector} masked");
                }
            }
            if let Err(e) = host.set_vector(InterruptKind::Msi, vector, route, requester_id) {
                warn!("{name}: routing MSI vector {vector} on the host failed: {e}");
            }
        }
    }

    /// The guest wrote the capability's registers in `config`: enable, disable, change the
    /// number of vectors, reprogram or (un)mask them. An enable while MSI-X is enabled
    /// (`msix_enabled`) is refused: a host serves one kind at a time, and a driver that
    /// follows the spec never enables both.
    pub fn changed(
        &mut self,
        name: &str,
        config: &mut ConfigSpace,
        host: &mut dyn InterruptHost,
        requester_id: u16,
        msix_enabled: bool,
    ) {
        let register = self.capability.control_register();
        let mut control = config.read_u16(register);
        let mut log2 = control >> CONTROL_MME_SHIFT & CONTROL_LOG2_MASK;
        if log2 > u16::from(self.capability.log2_vectors) {
            debug!(
                "{name}: the guest asked for {} MSI vectors, the device has {}",
                1u32 << log2,
                self.capability.vectors()
            );
            log2 = u16::from(self.capability.log2_vectors);
            control =
                control & !(CONTROL_LOG2_MASK << CONTROL_MME_SHIFT) | log2 << CONTROL_MME_SHIFT;
            config.set_u16(register, control);
        }
        if control & CONTROL_ENABLE != 0 && self.enabled == 0 && msix_enabled {
            warn!("{name}: the guest enabled MSI while MSI-X is enabled; MSI stays disabled");
            control &= !CONTROL_ENABLE;
            config.set_u16(register, control);
        }
        let count = if control & CONTROL_ENABLE != 0 { 1 << log2 } else { 0 };
        if count != self.enabled {
            debug!("{name}: MSI {} with {count} vectors", if count > 0 { "on" } else { "off" });
            self.record(
                name,
                if count > 0 { "msi-enable" } else { "msi-disable" },
                &[("vectors", TraceValue::Int(u64::from(count)))],
            );
            // The host starts every vector disconnected; sync re-sends the live ones.
            self.routes.fill(None);
            self.enabled = count;
            if let Err(e) = host.set_vector_count(InterruptKind::Msi, count) {
                warn!("{name}: setting up {count} MSI vectors on the host failed: {e}");
            }
        }
        self.sync(name, config, host, requester_id);
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
                // At most 32 vectors.
                let vector = vector as u16;
                if let Err(e) = host.set_vector(InterruptKind::Msi, vector, *route, requester_id) {
                    warn!("{name}: re-routing MSI vector {vector} on the host failed: {e}");
                }
            }
        }
    }

    /// Back to power-on: disabled (the host is told). The registers are reset by the caller.
    pub fn reset(&mut self, name: &str, host: &mut dyn InterruptHost) {
        if self.enabled > 0 {
            debug!("{name}: MSI reset");
            if let Err(e) = host.set_vector_count(InterruptKind::Msi, 0) {
                warn!("{name}: disabling MSI on the host failed: {e}");
            }
        }
        self.enabled = 0;
        self.routes.fill(None);
    }
}
