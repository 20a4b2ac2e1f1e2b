//! [`DextHostFunction`]: the [`HostFunction`] of a device claimed through the dext.
//!
//! The portable policy (`assigned::policy`) already keeps STATUS, the BARs, the expansion ROM
//! register, MSI, MSI-X, DEVCTL and DEVCTL2 virtual for every host. On macOS a write to any of
//! them that reached the device would break it (macOS owns the BAR addresses through the
//! DART and the interrupt messages; MPS/MRRS changes under live DMA cause completion
//! timeouts), so this layer drops such bytes again, whoever sends them.

use std::ops::Range;
use std::sync::Arc;

use devices::pci::config::{
    BAR0, CAPABILITIES_POINTER, CONFIG_SPACE_SIZE, ROM_ADDRESS_TYPE0, STANDARD_CONFIG_SIZE, STATUS,
    STATUS_CAPABILITIES,
};
use devices::pci::msix::MSIX_CAPABILITY_ID;
use log::warn;

use super::bar_access::{BarAccess, BarMappings};
use super::device::DextDevice;
use crate::assigned::capabilities::{
    MSI_CAPABILITY_ID, PCIE_CAPABILITY_ID, PCIE_DEVCTL, PCIE_DEVCTL2,
};
use crate::assigned::policy::aligned_chunks;
use crate::assigned::{HostFunction, RegionInfo};

/// Length of the MSI-X capability.
const MSIX_CAPABILITY_LEN: u16 = 12;
/// Most standard capabilities a list can hold (a looping list stops here).
const MAX_CAPABILITIES: usize = 48;

/// A configuration register kept from the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptRegister {
    /// Its bytes.
    pub range: Range<u16>,
    /// What it is, for logs.
    pub what: &'static str,
}

/// The [`HostFunction`] of a [`DextDevice`].
#[derive(Debug, Clone)]
pub struct DextHostFunction {
    device: Arc<DextDevice>,
    kept: Vec<KeptRegister>,
    bar_access: BarAccess,
    mappings: BarMappings,
}

fn kept(range: Range<u16>, what: &'static str) -> KeptRegister {
    KeptRegister { range, what }
}

/// The MSI capability's length from its Message Control.
fn msi_len(control: u16) -> u16 {
    let is_64bit = control & (1 << 7) != 0;
    let per_vector_mask = control & (1 << 8) != 0;
    match (is_64bit, per_vector_mask) {
        (false, false) => 0x0a,
        (true, false) => 0x0e,
        (false, true) => 0x14,
        (true, true) => 0x18,
    }
}

/// The registers of `device` that guest writes must not reach.
fn kept_registers(device: &DextDevice) -> Vec<KeptRegister> {
    let mut list = vec![
        kept(STATUS..STATUS + 2, "STATUS"),
        kept(BAR0..BAR0 + 24, "BARs"),
        kept(ROM_ADDRESS_TYPE0..ROM_ADDRESS_TYPE0 + 4, "expansion ROM"),
    ];
    match capability_registers(device) {
        Ok(mut caps) => list.append(&mut caps),
        Err(e) => {
            // Without the list, keep every standard capability from the guest's writes.
            warn!(
                "{}: cannot read the capability list ({e}); no guest write reaches \
                 configuration space past the header",
                device.address()
            );
            list.push(kept(0x40..STANDARD_CONFIG_SIZE, "capabilities (list unreadable)"));
        }
    }
    list
}

fn capability_registers(device: &DextDevice) -> std::io::Result<Vec<KeptRegister>> {
    let read_u8 = |offset: u16| -> std::io::Result<u8> {
        let mut byte = [0u8; 1];
        device.config_read(offset, &mut byte)?;
        Ok(byte[0])
    };
    let read_u16 = |offset: u16| -> std::io::Result<u16> {
        let mut bytes = [0u8; 2];
        device.config_read(offset, &mut bytes)?;
        Ok(u16::from_le_bytes(bytes))
    };
    let mut list = Vec::new();
    if read_u16(STATUS)? & STATUS_CAPABILITIES == 0 {
        return Ok(list);
    }
    let mut at = u16::from(read_u8(CAPABILITIES_POINTER)? & !3);
    for _ in 0..MAX_CAPABILITIES {
        if !(0x40..STANDARD_CONFIG_SIZE).contains(&at) {
            break;
        }
        match read_u8(at)? {
            MSI_CAPABILITY_ID => list.push(kept(at..at + msi_len(read_u16(at + 2)?), "MSI")),
            MSIX_CAPABILITY_ID => list.push(kept(at..at + MSIX_CAPABILITY_LEN, "MSI-X")),
            PCIE_CAPABILITY_ID => {
                list.push(kept(at + PCIE_DEVCTL..at + PCIE_DEVCTL + 2, "DEVCTL"));
                list.push(kept(at + PCIE_DEVCTL2..at + PCIE_DEVCTL2 + 2, "DEVCTL2"));
            }
            _ => {}
        }
        at = u16::from(read_u8(at + 1)? & !3);
    }
    Ok(list)
}

impl DextHostFunction {
    /// The host function of `device`; reads its capability list once.
    pub fn new(device: Arc<DextDevice>) -> Self {
        let kept = kept_registers(&device);
        Self { device, kept, bar_access: BarAccess::default(), mappings: BarMappings::default() }
    }

    /// Sends trapped BAR accesses the way `access` says (default: through the mapping).
    pub fn with_bar_access(mut self, access: BarAccess) -> Self {
        self.bar_access = access;
        self
    }

    /// The device.
    pub fn device(&self) -> &Arc<DextDevice> {
        &self.device
    }

    /// The registers no write reaches.
    pub fn kept_registers(&self) -> &[KeptRegister] {
        &self.kept
    }

    fn kept_at(&self, at: u16) -> Option<&KeptRegister> {
        self.kept.iter().find(|k| k.range.contains(&at))
    }
}

impl HostFunction for DextHostFunction {
    fn config_read(&self, offset: u16, data: &mut [u8]) -> std::io::Result<()> {
        self.device.config_read(offset, data)
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> std::io::Result<()> {
        let start = usize::from(offset);
        if start + data.len() > CONFIG_SPACE_SIZE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("configuration write {start:#x}+{:#x} is past 4 KiB", data.len()),
            ));
        }
        // Runs of bytes that may reach the device (COMMAND next to STATUS does).
        let mut runs: Vec<Range<usize>> = Vec::new();
        let mut dropped: Vec<&'static str> = Vec::new();
        for at in start..start + data.len() {
            // at < 4 KiB.
            if let Some(kept) = self.kept_at(at as u16) {
                if !dropped.contains(&kept.what) {
                    dropped.push(kept.what);
                }
                continue;
            }
            match runs.last_mut() {
                Some(run) if run.end == at => run.end = at + 1,
                _ => runs.push(at..at + 1),
            }
        }
        if !dropped.is_empty() {
            // The portable policy never forwards these: reaching here is a bug upstream.
            warn!(
                "{}: configuration write {start:#x}+{:#x} touches {}, kept from the device",
                self.device.address(),
                data.len(),
                dropped.join(", ")
            );
        }
        for chunk in runs.into_iter().flat_map(aligned_chunks) {
            let bytes = &data[chunk.start - start..chunk.end - start];
            // chunk.start < 4 KiB.
            self.device.config_write(chunk.start as u16, bytes)?;
        }
        Ok(())
    }

    fn bar_info(&self, bar: usize) -> Option<RegionInfo> {
        self.device.bar(bar).map(|info| RegionInfo {
            size: info.size,
            readable: true,
            writable: true,
            // The dext maps every memory BAR (IOConnectMapMemory64, types 1-6).
            mmappable: !info.is_io(),
        })
    }

    fn rom_info(&self) -> Option<RegionInfo> {
        // PCIDriverKit gives no access to the expansion ROM.
        None
    }

    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        match self.bar_access {
            BarAccess::Mapped => self.mappings.read(&self.device, bar, offset, data),
            BarAccess::DextCalls => self.device.mmio_read(bar, offset, data),
        }
    }

    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match self.bar_access {
            BarAccess::Mapped => self.mappings.write(&self.device, bar, offset, data),
            BarAccess::DextCalls => self.device.mmio_write(bar, offset, data),
        }
    }

    fn rom_read(&self, _offset: u64, _data: &mut [u8]) -> std::io::Result<()> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "no expansion ROM through DriverKit",
        ))
    }
}
