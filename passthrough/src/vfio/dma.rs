//! The VFIO type1 DMA mapper: guest RAM made reachable by the container's devices.

use std::sync::Arc;

use super::container::VfioContainer;
use crate::dma::{AddressPolicy, HostMapper, MapperError, MapperLimits};

/// One region of guest RAM as the VMM has it mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamMapping {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
    /// Where the VMM has it mapped.
    pub host_addr: u64,
}

/// Maps guest RAM for device DMA at device address = guest-physical address.
#[derive(Debug)]
pub struct VfioIdentityMapper {
    container: Arc<VfioContainer>,
    ram: Vec<RamMapping>,
    limits: MapperLimits,
}

impl VfioIdentityMapper {
    /// A mapper over `ram` (which must stay mapped while mappings live), with the IOMMU's
    /// page size as granule and no byte or mapping limit of its own.
    pub fn new(container: Arc<VfioContainer>, ram: Vec<RamMapping>, page_size: u64) -> Self {
        let limits = MapperLimits {
            max_mapped_bytes: u64::MAX,
            max_mappings: u32::MAX,
            alignment: page_size,
            policy: AddressPolicy::Identity,
        };
        Self { container, ram, limits }
    }

    fn host_addr(&self, gpa: u64, len: u64) -> Option<u64> {
        let region = self.ram.iter().find(|r| {
            gpa >= r.gpa && gpa.checked_add(len).is_some_and(|end| end <= r.gpa + r.len)
        })?;
        Some(region.host_addr + (gpa - region.gpa))
    }
}

impl HostMapper for VfioIdentityMapper {
    fn limits(&self) -> &MapperLimits {
        &self.limits
    }

    fn map(&mut self, gpa: u64, len: u64) -> Result<u64, MapperError> {
        let failed = |reason: String| MapperError::MapFailed { gpa, len, reason };
        let vaddr = self
            .host_addr(gpa, len)
            .ok_or_else(|| failed("the range is not guest RAM".to_string()))?;
        self.container.map_dma(gpa, len, vaddr).map_err(|e| failed(e.to_string()))?;
        Ok(gpa)
    }

    fn unmap(&mut self, device_addr: u64, len: u64) -> Result<(), MapperError> {
        self.container.unmap_dma(device_addr, len).map_err(|e| MapperError::UnmapFailed {
            device_addr,
            len,
            reason: e.to_string(),
        })
    }
}
