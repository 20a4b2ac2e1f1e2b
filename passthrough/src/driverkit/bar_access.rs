//! Trapped BAR accesses of a dext device: through this process's mapping of the BAR, as
//! QEMU's client does (`hw/vfio/apple-device.c` reads and writes its own mapping), or through
//! the dext's MMIORead / MMIOWrite, a Mach call each. The MSI-X table and PBA never get here:
//! the assigned function emulates them.

use std::sync::{Arc, Mutex};

use log::debug;

use super::connection::DextMapping;
use super::device::{chunks, DextDevice};

/// BARs of a type 0 header.
const BARS: usize = 6;

/// How trapped BAR accesses reach the device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BarAccess {
    /// Loads and stores on the BAR mapped into this process (the default, as QEMU). A BAR
    /// that cannot be mapped (I/O BARs) falls back to the dext's calls.
    #[default]
    Mapped,
    /// MMIORead / MMIOWrite through the dext for every access.
    DextCalls,
}

/// A BAR's mapping, once made.
type BarSlot = Option<Arc<dyn DextMapping>>;

/// The BAR mappings trapped accesses use, made on first use.
#[derive(Debug, Clone, Default)]
pub struct BarMappings {
    mappings: Arc<Mutex<[BarSlot; BARS]>>,
}

impl BarMappings {
    /// BAR `bar` mapped from the dext, if it is a memory BAR that maps.
    fn get(&self, device: &DextDevice, bar: usize) -> Option<Arc<dyn DextMapping>> {
        if device.bar(bar).is_none_or(|info| info.is_io()) {
            return None;
        }
        let mut mappings = self.mappings.lock().unwrap_or_else(|e| e.into_inner());
        let slot = mappings.get_mut(bar)?;
        if slot.is_none() {
            match device.map_bar(bar) {
                Ok(mapping) => *slot = Some(mapping),
                Err(e) => {
                    debug!(
                        "{}: BAR {bar}: {e}; trapped accesses go through the dext",
                        device.address()
                    );
                    return None;
                }
            }
        }
        slot.clone()
    }

    /// Reads BAR `bar` at `offset`: from the mapping, else through the dext.
    pub fn read(
        &self,
        device: &DextDevice,
        bar: usize,
        offset: u64,
        data: &mut [u8],
    ) -> std::io::Result<()> {
        match self.get(device, bar).filter(|m| fits(m.as_ref(), offset, data.len())) {
            Some(mapping) => {
                for (at, width) in accesses(offset, data.len()) {
                    let value = load(mapping.as_ref(), offset + at as u64, width);
                    data[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
                }
                Ok(())
            }
            None => device.mmio_read(bar, offset, data),
        }
    }

    /// Writes BAR `bar` at `offset`: to the mapping, else through the dext.
    pub fn write(
        &self,
        device: &DextDevice,
        bar: usize,
        offset: u64,
        data: &[u8],
    ) -> std::io::Result<()> {
        match self.get(device, bar).filter(|m| fits(m.as_ref(), offset, data.len())) {
            Some(mapping) => {
                for (at, width) in accesses(offset, data.len()) {
                    let mut bytes = [0u8; 8];
                    bytes[..width].copy_from_slice(&data[at..at + width]);
                    store(mapping.as_ref(), offset + at as u64, width, u64::from_le_bytes(bytes));
                }
                Ok(())
            }
            None => device.mmio_write(bar, offset, data),
        }
    }
}

/// The naturally aligned accesses (of at most 8 bytes) covering `len` bytes at `offset`, as
/// (index into the data, width).
fn accesses(offset: u64, len: usize) -> impl Iterator<Item = (usize, usize)> {
    chunks(offset..offset + len as u64, 8)
        .into_iter()
        .map(move |chunk| ((chunk.start - offset) as usize, (chunk.end - chunk.start) as usize))
}

/// Whether `len` bytes at `offset` lie inside `mapping` (else the dext's calls refuse them
/// with a clear error).
fn fits(mapping: &dyn DextMapping, offset: u64, len: usize) -> bool {
    offset.checked_add(len as u64).is_some_and(|end| end <= mapping.len())
}

/// One naturally aligned load of `width` (1, 2, 4 or 8) bytes at `offset` in `mapping`.
fn load(mapping: &dyn DextMapping, offset: u64, width: usize) -> u64 {
    let ptr = mapping.addr().wrapping_add(offset as usize);
    // SAFETY: `fits` checked the access lies in the mapping, which the caller's Arc keeps
    // mapped; `chunks` made it naturally aligned, and mappings are page aligned. Device
    // memory needs single volatile accesses of the guest's width.
    unsafe {
        match width {
            1 => u64::from(ptr.read_volatile()),
            2 => u64::from(ptr.cast::<u16>().read_volatile()),
            4 => u64::from(ptr.cast::<u32>().read_volatile()),
            _ => ptr.cast::<u64>().read_volatile(),
        }
    }
}

/// One naturally aligned store of `width` bytes of `value` at `offset` in `mapping`.
fn store(mapping: &dyn DextMapping, offset: u64, width: usize, value: u64) {
    let ptr = mapping.addr().wrapping_add(offset as usize);
    // SAFETY: as in `load`.
    unsafe {
        match width {
            1 => ptr.write_volatile(value as u8),
            2 => ptr.cast::<u16>().write_volatile(value as u16),
            4 => ptr.cast::<u32>().write_volatile(value as u32),
            _ => ptr.cast::<u64>().write_volatile(value),
        }
    }
}
