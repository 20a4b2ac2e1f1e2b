//! The VFIO container: one per VM, holding the IOMMU groups of its devices, so that one set of
//! DMA mappings (guest RAM) serves all of them.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use log::{debug, info};
use vfio_bindings::bindings::vfio::{
    VFIO_TYPE1v2_IOMMU, VFIO_API_VERSION, VFIO_GROUP_FLAGS_VIABLE, VFIO_TYPE1_IOMMU,
};

use super::device::VfioDevice;
use super::error::VfioError;
use super::ioctls;
use crate::sysfs::HostDevice;

/// An open IOMMU group attached to the container.
#[derive(Debug)]
pub struct VfioGroup {
    number: u32,
    file: File,
}

impl VfioGroup {
    /// The group's number.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// The open group file.
    pub(super) fn file(&self) -> &File {
        &self.file
    }
}

/// An open `/dev/vfio/vfio` and its groups.
#[derive(Debug)]
pub struct VfioContainer {
    file: File,
    dev_root: PathBuf,
    /// Groups by number; the IOMMU type is set when the first one joins.
    groups: Mutex<BTreeMap<u32, Arc<VfioGroup>>>,
}

impl VfioContainer {
    /// Opens the container under `dev_root` (normally `/dev`) and checks that the host speaks
    /// the VFIO API and has the type1 IOMMU backend.
    pub fn open(dev_root: &Path) -> Result<Arc<Self>, VfioError> {
        let path = dev_root.join("vfio/vfio");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| VfioError::OpenContainer { path: path.clone(), source })?;
        let version = ioctls::api_version(&file).map_err(|e| {
            VfioError::call(format!("VFIO_GET_API_VERSION on {}", path.display()), e)
        })?;
        if version != VFIO_API_VERSION as i32 {
            return Err(VfioError::ApiVersion(version));
        }
        let type1 = ioctls::check_extension(&file, VFIO_TYPE1v2_IOMMU).unwrap_or(false)
            || ioctls::check_extension(&file, VFIO_TYPE1_IOMMU).unwrap_or(false);
        if !type1 {
            return Err(VfioError::NoType1Iommu);
        }
        Ok(Arc::new(Self { file, dev_root: dev_root.to_path_buf(), groups: Default::default() }))
    }

    /// The group of `device`, opened and attached on first use.
    fn group(&self, device: &HostDevice) -> Result<Arc<VfioGroup>, VfioError> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(group) = groups.get(&device.group) {
            return Ok(group.clone());
        }
        let (address, number) = (device.address, device.group);
        let path = self.dev_root.join(format!("vfio/{number}"));
        let file = OpenOptions::new().read(true).write(true).open(&path).map_err(|source| {
            if source.raw_os_error() == Some(libc::EBUSY) {
                VfioError::GroupBusy { address, group: number, path: path.clone() }
            } else {
                VfioError::OpenGroup { address, group: number, path: path.clone(), source }
            }
        })?;
        let flags = ioctls::group_status(&file).map_err(|e| {
            VfioError::call(format!("VFIO_GROUP_GET_STATUS on {}", path.display()), e)
        })?;
        if flags & VFIO_GROUP_FLAGS_VIABLE == 0 {
            return Err(VfioError::GroupNotViable { address, group: number });
        }
        ioctls::group_set_container(&file, &self.file).map_err(|e| {
            VfioError::call(format!("VFIO_GROUP_SET_CONTAINER for IOMMU group {number}"), e)
        })?;
        if groups.is_empty() {
            let iommu = if ioctls::check_extension(&self.file, VFIO_TYPE1v2_IOMMU).unwrap_or(false)
            {
                VFIO_TYPE1v2_IOMMU
            } else {
                VFIO_TYPE1_IOMMU
            };
            ioctls::set_iommu(&self.file, iommu)
                .map_err(|e| VfioError::call(format!("VFIO_SET_IOMMU type {iommu}"), e))?;
            debug!("VFIO container uses IOMMU type {iommu}");
        }
        info!("{address}: IOMMU group {number} attached");
        let group = Arc::new(VfioGroup { number, file });
        groups.insert(number, group.clone());
        Ok(group)
    }

    /// Opens `device` (already checked in sysfs) in its group.
    pub fn open_device(self: &Arc<Self>, device: &HostDevice) -> Result<VfioDevice, VfioError> {
        let group = self.group(device)?;
        let file = ioctls::group_get_device(group.file(), &device.address.to_string()).map_err(
            |e| match e.raw_os_error() {
                Some(libc::EBUSY) => VfioError::DeviceBusy { address: device.address },
                _ => VfioError::call(
                    format!(
                        "VFIO_GROUP_GET_DEVICE_FD for {} in group {}",
                        device.address, group.number
                    ),
                    e,
                ),
            },
        )?;
        VfioDevice::new(device.address, file, group, self.clone())
    }

    /// Makes `size` bytes at host `vaddr` reachable by the devices' DMA at `iova`.
    pub fn map_dma(&self, iova: u64, size: u64, vaddr: u64) -> Result<(), VfioError> {
        ioctls::map_dma(&self.file, iova, size, vaddr).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOMEM) {
                if let Some(limit) = memlock_limit() {
                    return VfioError::MemlockTooLow {
                        needed: size.div_ceil(1 << 20),
                        limit: limit >> 20,
                    };
                }
            }
            VfioError::call(format!("VFIO_IOMMU_MAP_DMA iova {iova:#x}+{size:#x}"), e)
        })
    }

    /// The IOMMU's description with its capability chain (VFIO_IOMMU_GET_INFO), as raw bytes
    /// for `crate::dma::parse_vfio_iova_ranges`.
    pub fn iommu_info(&self) -> Result<Vec<u8>, VfioError> {
        ioctls::iommu_info(&self.file)
            .map_err(|e| VfioError::call("VFIO_IOMMU_GET_INFO".to_string(), e))
    }

    /// Removes the DMA mapping at `iova..iova+size`.
    pub fn unmap_dma(&self, iova: u64, size: u64) -> Result<(), VfioError> {
        ioctls::unmap_dma(&self.file, iova, size).map(|_| ()).map_err(|e| {
            VfioError::call(format!("VFIO_IOMMU_UNMAP_DMA iova {iova:#x}+{size:#x}"), e)
        })
    }
}

/// RLIMIT_MEMLOCK in bytes, `None` when unlimited or unknown.
pub fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit struct that lives across the call.
    let ret = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (ret == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Whether this process may lock memory without limit (CAP_IPC_LOCK in its effective set).
pub fn can_lock_unlimited() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| crate::sysfs::has_cap_ipc_lock(&status))
}
