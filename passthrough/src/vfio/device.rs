//! An open VFIO PCI device: its regions (configuration space, BARs, ROM), interrupts and
//! reset, and the [`HostFunction`] the portable passthrough code drives.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use log::debug;
use vfio_bindings::bindings::vfio::{
    VFIO_DEVICE_FLAGS_RESET, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_ROM_REGION_INDEX, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE,
};

use super::container::{VfioContainer, VfioGroup};
use super::error::VfioError;
use super::ioctls;
use crate::assigned::{HostFunction, RegionInfo};
use crate::host::HostMemory;
use crate::pci_address::PciAddress;

/// Regions of a VFIO PCI device that Aperture uses: BARs 0-5, ROM, configuration space.
const REGIONS: usize = VFIO_PCI_CONFIG_REGION_INDEX as usize + 1;

/// One VFIO region: where it sits in the device file and what it allows.
#[derive(Debug, Clone, Copy, Default)]
struct Region {
    size: u64,
    offset: u64,
    flags: u32,
}

impl Region {
    fn info(&self) -> RegionInfo {
        RegionInfo {
            size: self.size,
            readable: self.flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: self.flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmappable: self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0,
        }
    }
}

/// An open VFIO PCI device.
#[derive(Debug)]
pub struct VfioDevice {
    address: PciAddress,
    file: File,
    regions: [Region; REGIONS],
    flags: u32,
    msix_vectors: u32,
    /// VFIO can deliver the device's INTx (it has a pin, and VFIO did not turn INTx off).
    intx: bool,
    // Keep the group and the container open while the device is.
    group: Arc<VfioGroup>,
    _container: Arc<VfioContainer>,
}

impl VfioDevice {
    pub(super) fn new(
        address: PciAddress,
        file: File,
        group: Arc<VfioGroup>,
        container: Arc<VfioContainer>,
    ) -> Result<Self, VfioError> {
        let info = ioctls::device_info(&file)
            .map_err(|e| VfioError::call(format!("VFIO_DEVICE_GET_INFO for {address}"), e))?;
        let mut regions = [Region::default(); REGIONS];
        for (index, region) in regions.iter_mut().enumerate().take(info.num_regions as usize) {
            // index < 8.
            match ioctls::region_info(&file, index as u32) {
                Ok(r) => *region = Region { size: r.size, offset: r.offset, flags: r.flags },
                Err(e) => debug!("{address}: VFIO region {index}: {e}"),
            }
        }
        if regions[VFIO_PCI_CONFIG_REGION_INDEX as usize].size == 0 {
            return Err(VfioError::call(
                format!("{address}: VFIO offers no configuration space region"),
                io::Error::from(io::ErrorKind::Unsupported),
            ));
        }
        let msix_vectors =
            ioctls::irq_info(&file, VFIO_PCI_MSIX_IRQ_INDEX).map(|i| i.count).unwrap_or(0);
        // VFIO reports no INTx interrupt for a device without a pin, or with INTx disabled
        // (vfio-pci nointxmask / a broken INTx mask).
        let intx = ioctls::irq_info(&file, VFIO_PCI_INTX_IRQ_INDEX).is_ok_and(|i| i.count >= 1);
        debug!(
            "{address}: VFIO device with {} regions, {} interrupt indexes, {msix_vectors} MSI-X \
             vectors, {}INTx{}",
            info.num_regions,
            info.num_irqs,
            if intx { "" } else { "no " },
            if info.flags & VFIO_DEVICE_FLAGS_RESET != 0 { ", resettable" } else { "" }
        );
        Ok(Self {
            address,
            file,
            regions,
            flags: info.flags,
            msix_vectors,
            intx,
            group,
            _container: container,
        })
    }

    /// The host address.
    pub fn address(&self) -> PciAddress {
        self.address
    }

    /// MSI-X vectors VFIO can deliver.
    pub fn msix_vectors(&self) -> u32 {
        self.msix_vectors
    }

    /// Whether VFIO can deliver the device's INTx.
    pub fn has_intx(&self) -> bool {
        self.intx
    }

    /// The device file (for interrupt setup).
    pub(super) fn file(&self) -> &File {
        &self.file
    }

    /// Whether VFIO offers a per-function reset (VFIO_DEVICE_RESET).
    pub fn has_function_reset(&self) -> bool {
        self.flags & VFIO_DEVICE_FLAGS_RESET != 0
    }

    /// The device's IOMMU group.
    pub fn group(&self) -> &Arc<VfioGroup> {
        &self.group
    }

    /// Turns off every MSI-X vector (the host stops signalling eventfds).
    pub fn disable_msix(&self) -> io::Result<()> {
        ioctls::set_irqs(
            &self.file,
            VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
            VFIO_PCI_MSIX_IRQ_INDEX,
            0,
            0,
            &[],
        )
    }

    fn region(&self, index: u32) -> io::Result<&Region> {
        self.regions
            .get(index as usize)
            .filter(|r| r.size > 0)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
    }

    fn read_region(&self, index: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        let region = self.region(index)?;
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > region.size) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        self.file.read_exact_at(data, region.offset + offset)
    }

    fn write_region(&self, index: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        let region = self.region(index)?;
        if offset.checked_add(data.len() as u64).is_none_or(|end| end > region.size) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        self.file.write_all_at(data, region.offset + offset)
    }

    /// Maps `len` bytes of BAR `bar` from `offset` (page-aligned) into this process.
    pub fn mmap_bar(&self, bar: usize, offset: u64, len: u64) -> io::Result<MappedBar> {
        let region = self.region(bar as u32)?;
        if region.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        if offset.checked_add(len).is_none_or(|end| end > region.size) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        let file_offset = libc::off_t::try_from(region.offset + offset)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let len_usize =
            usize::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: a new shared mapping of the device file chosen by the kernel; nothing else
        // uses the address range it returns.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len_usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                file_offset,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedBar { addr: addr as usize, len: len_usize })
    }
}

/// Part of a BAR mapped into the VMM (and from there into the guest).
#[derive(Debug)]
pub struct MappedBar {
    addr: usize,
    len: usize,
}

impl HostMemory for MappedBar {
    fn host_addr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    fn len(&self) -> u64 {
        self.len as u64
    }
}

impl Drop for MappedBar {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping mmap_bar created; the VMM removes it from the
        // guest before dropping it.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// The [`HostFunction`] of a VFIO device.
#[derive(Debug, Clone)]
pub struct VfioHostFunction(pub Arc<VfioDevice>);

impl HostFunction for VfioHostFunction {
    fn config_read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        self.0.read_region(VFIO_PCI_CONFIG_REGION_INDEX, offset.into(), data)
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        self.0.write_region(VFIO_PCI_CONFIG_REGION_INDEX, offset.into(), data)
    }

    fn bar_info(&self, bar: usize) -> Option<RegionInfo> {
        (bar < 6).then(|| self.0.regions[bar].info()).filter(|info| info.size > 0)
    }

    fn rom_info(&self) -> Option<RegionInfo> {
        Some(self.0.regions[VFIO_PCI_ROM_REGION_INDEX as usize].info()).filter(|i| i.size > 0)
    }

    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> io::Result<()> {
        // bar < 6 (the assigned function only passes its BARs).
        self.0.read_region(bar as u32, offset, data)
    }

    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        self.0.write_region(bar as u32, offset, data)
    }

    fn rom_read(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        self.0.read_region(VFIO_PCI_ROM_REGION_INDEX, offset, data)
    }

    fn intx_available(&self) -> bool {
        self.0.has_intx()
    }
}
