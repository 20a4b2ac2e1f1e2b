//! MSI-X (PCI Local Bus 3.0 §6.8.2): the capability in configuration space, and the vector
//! table and pending-bit array (PBA) that live in a memory BAR.
//!
//! [`MsixState`] holds the table, the PBA and the capability's enable and function-mask bits.
//! Raising a vector gives the message to send, or sets its pending bit while the vector (or
//! the whole function) is masked; unmasking returns the pending messages for the caller to
//! send. Messages are built from the entry as it is when they are sent.

use log::debug;

use super::config::{ConfigError, ConfigSpace};
use super::MsiMessage;

/// MSI-X capability id.
pub const MSIX_CAPABILITY_ID: u8 = 0x11;
/// Bytes per table entry.
pub const MSIX_ENTRY_SIZE: u64 = 16;
/// Most vectors a function can have.
pub const MAX_MSIX_VECTORS: u16 = 2048;
/// Message control: MSI-X enable.
const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: the vector is masked.
const VECTOR_MASKED: u32 = 1;

/// Errors setting up MSI-X.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MsixError {
    /// The vector count is out of range.
    #[error("MSI-X needs 1 to {MAX_MSIX_VECTORS} vectors, {0} asked for; change the vector count")]
    BadVectorCount(u16),
    /// The table or PBA offset is not 8-byte aligned or its BAR index is out of range.
    #[error(
        "the MSI-X {what} at BAR {bar} offset {offset:#x} must be 8-byte aligned in BARs 0-5; \
         move it"
    )]
    BadPlacement {
        /// "table" or "PBA".
        what: &'static str,
        /// BAR index.
        bar: u8,
        /// Offset in the BAR.
        offset: u32,
    },
    /// No room for the capability.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// One table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Whether the vector is masked (entries start masked).
    pub masked: bool,
}

impl Default for MsixEntry {
    fn default() -> Self {
        Self { address: 0, data: 0, masked: true }
    }
}

impl MsixEntry {
    fn message(&self) -> MsiMessage {
        MsiMessage { address: self.address, data: self.data }
    }
}

/// The MSI-X capability registers in a function's configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCapability {
    offset: u16,
}

impl MsixCapability {
    /// Adds the capability for `vectors` vectors with the table at `table_offset` in BAR
    /// `table_bar` and the PBA at `pba_offset` in BAR `pba_bar`. The enable and function-mask
    /// bits are the only writable ones.
    pub fn add(
        config: &mut ConfigSpace,
        vectors: u16,
        (table_bar, table_offset): (u8, u32),
        (pba_bar, pba_offset): (u8, u32),
    ) -> Result<Self, MsixError> {
        if !(1..=MAX_MSIX_VECTORS).contains(&vectors) {
            return Err(MsixError::BadVectorCount(vectors));
        }
        for (what, bar, offset) in
            [("table", table_bar, table_offset), ("PBA", pba_bar, pba_offset)]
        {
            if bar > 5 || offset % 8 != 0 {
                return Err(MsixError::BadPlacement { what, bar, offset });
            }
        }
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&(vectors - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_offset | u32::from(table_bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_offset | u32::from(pba_bar)).to_le_bytes());
        let offset = config.add_capability(MSIX_CAPABILITY_ID, &body)?;
        config.set_rw_u16(offset + 2, CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        Ok(Self { offset })
    }

    /// Offset of the capability in configuration space.
    pub fn offset(&self) -> u16 {
        self.offset
    }

    /// Whether a configuration write at `offset` of `len` bytes touched message control.
    pub fn control_written(&self, offset: u16, len: usize) -> bool {
        let control = usize::from(self.offset) + 2;
        let start = usize::from(offset);
        start < control + 2 && control < start + len
    }

    /// The (enable, function mask) bits as the guest set them.
    pub fn control(&self, config: &ConfigSpace) -> (bool, bool) {
        let control = config.read_u16(self.offset + 2);
        (control & CONTROL_ENABLE != 0, control & CONTROL_FUNCTION_MASK != 0)
    }
}

/// The MSI-X table, PBA and control bits of one function.
#[derive(Debug, Clone)]
pub struct MsixState {
    entries: Vec<MsixEntry>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
}

impl MsixState {
    /// `vectors` masked entries, MSI-X disabled.
    pub fn new(vectors: u16) -> Result<Self, MsixError> {
        if !(1..=MAX_MSIX_VECTORS).contains(&vectors) {
            return Err(MsixError::BadVectorCount(vectors));
        }
        let vectors = usize::from(vectors);
        Ok(Self {
            entries: vec![MsixEntry::default(); vectors],
            pending: vec![0; vectors.div_ceil(64)],
            enabled: false,
            function_masked: false,
        })
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        // At most MAX_MSIX_VECTORS entries.
        self.entries.len() as u16
    }

    /// Bytes the table takes in its BAR.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * MSIX_ENTRY_SIZE
    }

    /// Bytes the PBA takes in its BAR (whole qwords).
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// Entry `vector`, if it exists.
    pub fn entry(&self, vector: u16) -> Option<MsixEntry> {
        self.entries.get(usize::from(vector)).copied()
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the whole function is masked.
    pub fn function_masked(&self) -> bool {
        self.function_masked
    }

    /// Whether `vector` has a pending message.
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = usize::from(vector);
        self.pending.get(v / 64).is_some_and(|word| word & 1 << (v % 64) != 0)
    }

    fn set_pending(&mut self, vector: usize, pending: bool) {
        if let Some(word) = self.pending.get_mut(vector / 64) {
            if pending {
                *word |= 1 << (vector % 64);
            } else {
                *word &= !(1 << (vector % 64));
            }
        }
    }

    /// The message `vector` sends if raised now: `None` while MSI-X is disabled, the function
    /// or the vector is masked, or the vector does not exist. What a route should carry.
    pub fn route(&self, vector: u16) -> Option<MsiMessage> {
        let v = usize::from(vector);
        self.deliverable(v).then(|| self.entries[v].message())
    }

    fn deliverable(&self, vector: usize) -> bool {
        self.enabled && !self.function_masked && self.entries.get(vector).is_some_and(|e| !e.masked)
    }

    /// Raises `vector`: the message to send now, or `None` if the vector is masked (it is then
    /// pending), MSI-X is disabled or the vector does not exist.
    pub fn trigger(&mut self, vector: u16) -> Option<MsiMessage> {
        let v = usize::from(vector);
        let Some(entry) = self.entries.get(v).copied() else {
            debug!("MSI-X vector {vector} raised but only {} exist", self.entries.len());
            return None;
        };
        if !self.enabled {
            debug!("MSI-X vector {vector} raised while MSI-X is disabled; dropped");
            return None;
        }
        if self.deliverable(v) {
            Some(entry.message())
        } else {
            self.set_pending(v, true);
            None
        }
    }

    /// Delivers (clears and returns) every pending message whose vector can now be sent.
    fn take_deliverable(&mut self) -> Vec<MsiMessage> {
        let mut messages = Vec::new();
        if !self.enabled || self.function_masked {
            return messages;
        }
        for v in 0..self.entries.len() {
            if self.is_pending(v as u16) && self.deliverable(v) {
                self.set_pending(v, false);
                messages.push(self.entries[v].message());
            }
        }
        messages
    }

    /// The guest changed the capability's enable / function-mask bits; returns the pending
    /// messages that this unmasked.
    pub fn set_control(&mut self, enabled: bool, function_masked: bool) -> Vec<MsiMessage> {
        self.enabled = enabled;
        self.function_masked = function_masked;
        self.take_deliverable()
    }

    /// Back to the power-on state: entries masked and zero, nothing pending, disabled.
    pub fn reset(&mut self) {
        self.entries.fill(MsixEntry::default());
        self.pending.fill(0);
        self.enabled = false;
        self.function_masked = false;
    }

    /// Whether an access can reach the table or PBA: 4 or 8 bytes, naturally aligned.
    fn dword_access(what: &str, offset: u64, len: usize) -> bool {
        let ok = matches!(len, 4 | 8) && offset % len as u64 == 0;
        if !ok {
            debug!(
                "MSI-X {what} access of {len} bytes at {offset:#x} ignored (must be 4 or 8, \
                 aligned)"
            );
        }
        ok
    }

    fn read_table_dword(&self, offset: u64) -> u32 {
        let Some(entry) =
            usize::try_from(offset / MSIX_ENTRY_SIZE).ok().and_then(|i| self.entries.get(i))
        else {
            return 0;
        };
        match offset % MSIX_ENTRY_SIZE {
            0 => entry.address as u32,
            4 => (entry.address >> 32) as u32,
            8 => entry.data,
            _ => u32::from(entry.masked),
        }
    }

    /// Writes one dword; returns a message if it unmasked a pending vector.
    fn write_table_dword(&mut self, offset: u64, value: u32) -> Option<MsiMessage> {
        let index = usize::try_from(offset / MSIX_ENTRY_SIZE).ok()?;
        let entry = self.entries.get_mut(index)?;
        match offset % MSIX_ENTRY_SIZE {
            // Address bits 1:0 are reserved: messages are dword aligned.
            0 => entry.address = entry.address & !0xffff_ffff | u64::from(value & !3),
            4 => entry.address = entry.address & 0xffff_ffff | u64::from(value) << 32,
            8 => entry.data = value,
            _ => {
                entry.masked = value & VECTOR_MASKED != 0;
                if self.is_pending(index as u16) && self.deliverable(index) {
                    self.set_pending(index, false);
                    return Some(self.entries[index].message());
                }
            }
        }
        None
    }

    /// A guest read of the table at `offset` (4 or 8 bytes; others read 0).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !Self::dword_access("table", offset, data.len()) {
            return;
        }
        for (i, chunk) in data.chunks_exact_mut(4).enumerate() {
            let value = offset.checked_add(4 * i as u64).map_or(0, |o| self.read_table_dword(o));
            chunk.copy_from_slice(&value.to_le_bytes());
        }
    }

    /// A guest write of the table; returns the pending messages an unmask released.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Vec<MsiMessage> {
        let mut messages = Vec::new();
        if !Self::dword_access("table", offset, data.len()) {
            return messages;
        }
        for (i, chunk) in data.chunks_exact(4).enumerate() {
            let mut bytes = [0u8; 4];
            bytes.copy_from_slice(chunk);
            let Some(at) = offset.checked_add(4 * i as u64) else { break };
            messages.extend(self.write_table_dword(at, u32::from_le_bytes(bytes)));
        }
        messages
    }

    /// A guest read of the PBA at `offset` (4 or 8 bytes; others read 0).
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !Self::dword_access("PBA", offset, data.len()) {
            return;
        }
        for (i, byte) in data.iter_mut().enumerate() {
            let Some(at) = offset.checked_add(i as u64).and_then(|o| usize::try_from(o).ok())
            else {
                return;
            };
            if let Some(word) = self.pending.get(at / 8) {
                *byte = (word >> (8 * (at % 8))) as u8;
            }
        }
    }

    /// A guest write of the PBA: read-only, ignored.
    pub fn write_pba(&mut self, offset: u64, data: &[u8]) {
        debug!("MSI-X PBA write of {} bytes at {offset:#x} ignored (read-only)", data.len());
    }
}

#[cfg(test)]
mod tests;
