//! [`DextDevice`]: one PCI function claimed through the dext: its identity, configuration
//! space, BARs (sizes, trapped accesses, mappings) and reset.

use std::ops::Range;
use std::sync::Arc;

use devices::pci::config::CONFIG_SPACE_SIZE;
use log::{debug, info, warn};

use super::connection::{call_exact, DextConnection, DextError, DextMapping};
use super::protocol::{
    MemoryType, Selector, BAR_TYPE_IO, BAR_TYPE_MEM64, BAR_TYPE_MEM_MASK, BAR_TYPE_PREFETCHABLE,
    IDENTITY_WORDS, IO_RETURN_UNSUPPORTED, REFUSED_BASE_CLASS,
};
use crate::host::ResetOutcome;
use crate::pci_address::PciAddress;

/// BARs of a type 0 header.
const BARS: usize = 6;

/// Who the dext says its device is (GetIdentity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DextIdentity {
    /// Bus number.
    pub bus: u8,
    /// Device number.
    pub device: u8,
    /// Function number.
    pub function: u8,
    /// Vendor id.
    pub vendor_id: u16,
    /// Device id.
    pub device_id: u16,
    /// Class code (24 bits).
    pub class_code: u32,
}

/// One BAR as GetBARInfo describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DextBar {
    /// PCIDriverKit's memory index (what MMIORead/MMIOWrite take, not the BAR number).
    pub memory_index: u8,
    /// Size in bytes.
    pub size: u64,
    /// Type bits, as in the BAR register.
    pub bar_type: u64,
}

impl DextBar {
    /// An I/O BAR.
    pub fn is_io(&self) -> bool {
        self.bar_type & BAR_TYPE_IO != 0
    }

    /// A 64-bit memory BAR.
    pub fn is_64bit(&self) -> bool {
        !self.is_io() && self.bar_type & BAR_TYPE_MEM_MASK == BAR_TYPE_MEM64
    }

    /// A prefetchable memory BAR.
    pub fn prefetchable(&self) -> bool {
        !self.is_io() && self.bar_type & BAR_TYPE_PREFETCHABLE != 0
    }
}

/// A PCI function claimed through the dext.
#[derive(Debug)]
pub struct DextDevice {
    address: PciAddress,
    connection: Arc<dyn DextConnection>,
    /// Set once the dext reported the device gone (terminated, or unplugged).
    gone: Arc<std::sync::atomic::AtomicBool>,
    identity: DextIdentity,
    bars: [Option<DextBar>; BARS],
}

/// Splits `range` into naturally aligned accesses of at most `max` bytes (1, 2, 4 or 8).
pub(super) fn chunks(range: Range<u64>, max: u64) -> Vec<Range<u64>> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let left = range.end - at;
        let len = [8, 4, 2, 1]
            .into_iter()
            .find(|&len| len <= max && at % len == 0 && len <= left)
            .unwrap_or(1);
        out.push(at..at + len);
        at += len;
    }
    out
}

fn out_of_range(what: &str, offset: u64, len: usize, size: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("{what} access {offset:#x}+{len:#x} is past its end ({size:#x})"),
    )
}

impl DextDevice {
    /// Checks that `connection` serves `address`, claims the device and reads its BARs.
    pub fn open(
        address: PciAddress,
        connection: Arc<dyn DextConnection>,
    ) -> Result<Self, DextError> {
        let id: [u64; IDENTITY_WORDS] =
            call_exact(connection.as_ref(), Selector::GetIdentity, &[])?;
        // The dext reports 8-bit bus/device/function and 16-bit ids.
        let identity = DextIdentity {
            bus: id[0] as u8,
            device: id[1] as u8,
            function: id[2] as u8,
            vendor_id: id[3] as u16,
            device_id: id[4] as u16,
            class_code: (id[5] & 0xff_ffff) as u32,
        };
        let found = (identity.bus, identity.device, identity.function);
        if found != (address.bus, address.device, address.function) {
            return Err(DextError::WrongDevice { address, found });
        }
        if matches!(identity.vendor_id, 0 | 0xffff) {
            return Err(DextError::Protocol(format!(
                "{address} reads vendor id {:#06x} through the DriverKit extension: the device \
                 is absent or powered off; replug it",
                identity.vendor_id
            )));
        }
        if identity.class_code >> 16 == REFUSED_BASE_CLASS {
            return Err(DextError::MultimediaFunction { address, class_code: identity.class_code });
        }
        connection.call(Selector::Claim, &[], &mut [])?;
        let mut bars = [None; BARS];
        let mut index = 0;
        while index < BARS {
            let this = index;
            // GetBARInfo fails for unimplemented BARs and upper halves of 64-bit ones.
            let info =
                match call_exact::<3>(connection.as_ref(), Selector::GetBarInfo, &[this as u64]) {
                    Ok([memory_index, size, bar_type]) if size > 0 => {
                        Some(DextBar { memory_index: memory_index as u8, size, bar_type })
                    }
                    Ok(_) => None,
                    Err(e) => {
                        debug!("{address}: BAR {this}: {e}");
                        None
                    }
                };
            index += if info.is_some_and(|b| b.is_64bit()) { 2 } else { 1 };
            bars[this] = info;
        }
        info!(
            "{address}: claimed through the DriverKit extension: {:04x}:{:04x} class {:06x}, \
             BARs {}",
            identity.vendor_id,
            identity.device_id,
            identity.class_code,
            bars.iter()
                .enumerate()
                .filter_map(|(i, b)| b.map(|b| format!("{i}: {:#x}", b.size)))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let gone = Arc::default();
        Ok(Self { address, connection, gone, identity, bars })
    }

    /// The host address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// What GetIdentity said.
    pub fn identity(&self) -> DextIdentity {
        self.identity
    }

    /// The flag the interrupt thread sets when the dext reports the device gone.
    pub fn gone_flag(&self) -> &Arc<std::sync::atomic::AtomicBool> {
        &self.gone
    }

    /// The connection (shared with the device's interrupts and DMA mapper).
    pub fn connection(&self) -> &Arc<dyn DextConnection> {
        &self.connection
    }

    /// BAR `bar`, if implemented.
    pub fn bar(&self, bar: usize) -> Option<DextBar> {
        self.bars.get(bar).copied().flatten()
    }

    /// Reads configuration space at `offset` (split into aligned 1-, 2- and 4-byte reads).
    pub fn config_read(&self, offset: u16, data: &mut [u8]) -> std::io::Result<()> {
        let start = u64::from(offset);
        let end = start + data.len() as u64;
        if end > CONFIG_SPACE_SIZE as u64 {
            return Err(out_of_range("configuration", start, data.len(), CONFIG_SPACE_SIZE as u64));
        }
        for chunk in chunks(start..end, 4) {
            let width = chunk.end - chunk.start;
            let [value] = call_exact::<1>(
                self.connection.as_ref(),
                Selector::ConfigRead,
                &[chunk.start, width],
            )?;
            let at = (chunk.start - start) as usize;
            data[at..at + width as usize].copy_from_slice(&value.to_le_bytes()[..width as usize]);
        }
        Ok(())
    }

    /// Writes configuration space at `offset`, unfiltered (see [`super::DextHostFunction`]
    /// for what the guest may reach).
    pub fn config_write(&self, offset: u16, data: &[u8]) -> std::io::Result<()> {
        let start = u64::from(offset);
        let end = start + data.len() as u64;
        if end > CONFIG_SPACE_SIZE as u64 {
            return Err(out_of_range("configuration", start, data.len(), CONFIG_SPACE_SIZE as u64));
        }
        for chunk in chunks(start..end, 4) {
            let width = chunk.end - chunk.start;
            let at = (chunk.start - start) as usize;
            let mut bytes = [0u8; 8];
            bytes[..width as usize].copy_from_slice(&data[at..at + width as usize]);
            let value = u64::from_le_bytes(bytes);
            self.connection.call(Selector::ConfigWrite, &[chunk.start, width, value], &mut [])?;
        }
        Ok(())
    }

    fn bar_for_access(&self, bar: usize, offset: u64, len: usize) -> std::io::Result<DextBar> {
        let info = self.bar(bar).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("BAR {bar} is not implemented"),
            )
        })?;
        if offset.checked_add(len as u64).is_none_or(|end| end > info.size) {
            return Err(out_of_range(&format!("BAR {bar}"), offset, len, info.size));
        }
        Ok(info)
    }

    /// A trapped read of BAR `bar` through the dext (MMIORead, aligned 1 to 8 bytes).
    pub fn mmio_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let info = self.bar_for_access(bar, offset, data.len())?;
        for chunk in chunks(offset..offset + data.len() as u64, 8) {
            let width = chunk.end - chunk.start;
            let input = [u64::from(info.memory_index), chunk.start, width];
            let [value] = call_exact::<1>(self.connection.as_ref(), Selector::MmioRead, &input)?;
            let at = (chunk.start - offset) as usize;
            data[at..at + width as usize].copy_from_slice(&value.to_le_bytes()[..width as usize]);
        }
        Ok(())
    }

    /// A trapped write of BAR `bar` through the dext (MMIOWrite, aligned 1 to 8 bytes).
    pub fn mmio_write(&self, bar: usize, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let info = self.bar_for_access(bar, offset, data.len())?;
        for chunk in chunks(offset..offset + data.len() as u64, 8) {
            let width = chunk.end - chunk.start;
            let at = (chunk.start - offset) as usize;
            let mut bytes = [0u8; 8];
            bytes[..width as usize].copy_from_slice(&data[at..at + width as usize]);
            let input =
                [u64::from(info.memory_index), chunk.start, width, u64::from_le_bytes(bytes)];
            self.connection.call(Selector::MmioWrite, &input, &mut [])?;
        }
        Ok(())
    }

    /// Maps all of memory BAR `bar` into this process (prefetchable BARs write-combined).
    pub fn map_bar(&self, bar: usize) -> Result<Arc<dyn DextMapping>, DextError> {
        let info = self.bar(bar).filter(|b| !b.is_io()).ok_or_else(|| {
            DextError::Protocol(format!("{}: BAR {bar} is not a memory BAR", self.address))
        })?;
        // bar < 6.
        let memory = MemoryType::Bar { index: bar as u8, write_combine: info.prefetchable() };
        self.connection.map_memory(memory)
    }

    /// Resets the function through the dext and reports the outcome (`when`: "start",
    /// "exit").
    pub fn reset(&self, when: &str) -> ResetOutcome {
        match self.connection.call(Selector::ResetDevice, &[], &mut []) {
            Ok(_) => {
                info!("{}: reset at {when}: done", self.address);
                ResetOutcome::Done
            }
            Err(DextError::Call { code: IO_RETURN_UNSUPPORTED, .. }) => {
                warn!(
                    "{}: reset at {when}: the device supports neither FLR nor a hot reset of \
                     its port; its state carries over",
                    self.address
                );
                ResetOutcome::Unsupported
            }
            Err(e) => {
                warn!("{}: reset at {when} failed: {e}", self.address);
                ResetOutcome::Failed
            }
        }
    }
}

impl Drop for DextDevice {
    fn drop(&mut self) {
        // The dext releases the claim when the last user of the connection closes it; the
        // Terminate selector is not used, as it would detach the dext from the device and
        // keep the next VM from taking it.
        debug!("{}: releasing the DriverKit device", self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_are_aligned_and_bounded() {
        assert_eq!(chunks(0..8, 8), vec![0..8]);
        assert_eq!(chunks(0..8, 4), vec![0..4, 4..8]);
        assert_eq!(chunks(1..8, 8), vec![1..2, 2..4, 4..8]);
        assert_eq!(chunks(6..7, 4), vec![6..7]);
        assert!(chunks(3..3, 4).is_empty());
    }
}
