//! The VFIO ioctls Aperture uses (linux/vfio.h: type `;`, numbers from 100), as thin wrappers
//! that turn the C return convention into `io::Result`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

use vfio_bindings::bindings::vfio::{
    vfio_device_info, vfio_group_status, vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap,
    vfio_irq_info, vfio_region_info, VFIO_BASE, VFIO_TYPE,
};
use vmm_sys_util::ioctl::{
    ioctl, ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref, ioctl_with_val,
};
use vmm_sys_util::ioctl_io_nr;

ioctl_io_nr!(VFIO_GET_API_VERSION, VFIO_TYPE as u32, VFIO_BASE);
ioctl_io_nr!(VFIO_CHECK_EXTENSION, VFIO_TYPE as u32, VFIO_BASE + 1);
ioctl_io_nr!(VFIO_SET_IOMMU, VFIO_TYPE as u32, VFIO_BASE + 2);
ioctl_io_nr!(VFIO_GROUP_GET_STATUS, VFIO_TYPE as u32, VFIO_BASE + 3);
ioctl_io_nr!(VFIO_GROUP_SET_CONTAINER, VFIO_TYPE as u32, VFIO_BASE + 4);
ioctl_io_nr!(VFIO_GROUP_GET_DEVICE_FD, VFIO_TYPE as u32, VFIO_BASE + 6);
ioctl_io_nr!(VFIO_DEVICE_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 7);
ioctl_io_nr!(VFIO_DEVICE_GET_REGION_INFO, VFIO_TYPE as u32, VFIO_BASE + 8);
ioctl_io_nr!(VFIO_DEVICE_GET_IRQ_INFO, VFIO_TYPE as u32, VFIO_BASE + 9);
ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
ioctl_io_nr!(VFIO_DEVICE_RESET, VFIO_TYPE as u32, VFIO_BASE + 11);
ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);
ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 14);

fn check(ret: i32) -> io::Result<i32> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// `argsz` of a fixed-size argument.
fn argsz<T>() -> u32 {
    // VFIO argument structs are a few dozen bytes.
    std::mem::size_of::<T>() as u32
}

/// VFIO_GET_API_VERSION on the container.
pub fn api_version(container: &File) -> io::Result<i32> {
    // SAFETY: the ioctl takes no argument and only returns a number.
    check(unsafe { ioctl(container, VFIO_GET_API_VERSION()) })
}

/// VFIO_CHECK_EXTENSION: whether the container supports `extension` (e.g. an IOMMU type).
pub fn check_extension(container: &File, extension: u32) -> io::Result<bool> {
    // SAFETY: the argument is passed by value; the ioctl returns a number.
    check(unsafe { ioctl_with_val(container, VFIO_CHECK_EXTENSION(), extension.into()) })
        .map(|n| n > 0)
}

/// VFIO_SET_IOMMU: picks the container's IOMMU model once a group is attached.
pub fn set_iommu(container: &File, iommu_type: u32) -> io::Result<()> {
    // SAFETY: the argument is passed by value.
    check(unsafe { ioctl_with_val(container, VFIO_SET_IOMMU(), iommu_type.into()) }).map(|_| ())
}

/// VFIO_GROUP_GET_STATUS: the group's flags (viable, container set).
pub fn group_status(group: &File) -> io::Result<u32> {
    let mut status = vfio_group_status { argsz: argsz::<vfio_group_status>(), flags: 0 };
    // SAFETY: `status` is a valid, writable vfio_group_status with argsz set.
    check(unsafe { ioctl_with_mut_ref(group, VFIO_GROUP_GET_STATUS(), &mut status) })?;
    Ok(status.flags)
}

/// VFIO_GROUP_SET_CONTAINER: puts the group in the container.
pub fn group_set_container(group: &File, container: &File) -> io::Result<()> {
    let fd = container.as_raw_fd();
    // SAFETY: the kernel reads one int (the container fd) from the pointer.
    check(unsafe { ioctl_with_ref(group, VFIO_GROUP_SET_CONTAINER(), &fd) }).map(|_| ())
}

/// VFIO_GROUP_GET_DEVICE_FD: opens the device named `name` (its PCI address) in the group.
pub fn group_get_device(group: &File, name: &str) -> io::Result<File> {
    let name = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in device name"))?;
    // SAFETY: the kernel reads a NUL-terminated string that lives across the call.
    let fd = check(unsafe { ioctl_with_ptr(group, VFIO_GROUP_GET_DEVICE_FD(), name.as_ptr()) })?;
    // SAFETY: the ioctl returned a new file descriptor that nothing else owns.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// VFIO_DEVICE_GET_INFO.
pub fn device_info(device: &File) -> io::Result<vfio_device_info> {
    let mut info = vfio_device_info { argsz: argsz::<vfio_device_info>(), ..Default::default() };
    // SAFETY: `info` is a valid, writable vfio_device_info with argsz set.
    check(unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_INFO(), &mut info) })?;
    Ok(info)
}

/// VFIO_DEVICE_GET_REGION_INFO for region `index` (without capability chains).
pub fn region_info(device: &File, index: u32) -> io::Result<vfio_region_info> {
    let mut info =
        vfio_region_info { argsz: argsz::<vfio_region_info>(), index, ..Default::default() };
    // SAFETY: `info` is a valid, writable vfio_region_info with argsz set; with this argsz
    // the kernel writes no capability chain past it.
    check(unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_REGION_INFO(), &mut info) })?;
    Ok(info)
}

/// VFIO_DEVICE_GET_IRQ_INFO for interrupt index `index`.
pub fn irq_info(device: &File, index: u32) -> io::Result<vfio_irq_info> {
    let mut info = vfio_irq_info { argsz: argsz::<vfio_irq_info>(), index, ..Default::default() };
    // SAFETY: `info` is a valid, writable vfio_irq_info with argsz set.
    check(unsafe { ioctl_with_mut_ref(device, VFIO_DEVICE_GET_IRQ_INFO(), &mut info) })?;
    Ok(info)
}

/// VFIO_DEVICE_SET_IRQS with `eventfds` for `start..start+len` of interrupt index `index`
/// (`flags`: data type and action), or none (`eventfds` empty, `count` as given).
pub fn set_irqs(
    device: &File,
    flags: u32,
    index: u32,
    start: u32,
    count: u32,
    eventfds: &[i32],
) -> io::Result<()> {
    // struct vfio_irq_set is five u32s and then the data: here an array of int eventfds, so
    // the whole argument is a u32 array.
    let mut words: Vec<u32> = vec![0, flags, index, start, count];
    words.extend(eventfds.iter().map(|&fd| fd as u32));
    words[0] = (words.len() * 4) as u32;
    // SAFETY: `words` is a correctly laid out vfio_irq_set of `argsz` bytes that lives across
    // the call; the kernel only reads it.
    check(unsafe { ioctl_with_ptr(device, VFIO_DEVICE_SET_IRQS(), words.as_ptr()) }).map(|_| ())
}

/// VFIO_DEVICE_RESET.
pub fn device_reset(device: &File) -> io::Result<()> {
    // SAFETY: the ioctl takes no argument.
    check(unsafe { ioctl(device, VFIO_DEVICE_RESET()) }).map(|_| ())
}

/// VFIO_IOMMU_MAP_DMA: makes `size` bytes of this process at `vaddr` reachable by the
/// container's devices at `iova`, read and write.
pub fn map_dma(container: &File, iova: u64, size: u64, vaddr: u64) -> io::Result<()> {
    use vfio_bindings::bindings::vfio::{VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE};
    let map = vfio_iommu_type1_dma_map {
        argsz: argsz::<vfio_iommu_type1_dma_map>(),
        flags: VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
        vaddr,
        iova,
        size,
    };
    // SAFETY: `map` is a valid vfio_iommu_type1_dma_map; the kernel pins the pages itself and
    // the caller keeps the memory mapped until the unmap.
    check(unsafe { ioctl_with_ref(container, VFIO_IOMMU_MAP_DMA(), &map) }).map(|_| ())
}

/// VFIO_IOMMU_UNMAP_DMA of `iova..iova+size`; returns the bytes unmapped.
pub fn unmap_dma(container: &File, iova: u64, size: u64) -> io::Result<u64> {
    let mut unmap = vfio_iommu_type1_dma_unmap {
        argsz: argsz::<vfio_iommu_type1_dma_unmap>(),
        flags: 0,
        iova,
        size,
        ..Default::default()
    };
    // SAFETY: `unmap` is a valid, writable vfio_iommu_type1_dma_unmap with argsz set and no
    // dirty bitmap.
    check(unsafe { ioctl_with_mut_ref(container, VFIO_IOMMU_UNMAP_DMA(), &mut unmap) })?;
    Ok(unmap.size)
}

ioctl_io_nr!(VFIO_IOMMU_GET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);

/// VFIO_IOMMU_GET_INFO with its capability chain, as the raw bytes the kernel wrote (parsed
/// by `crate::dma::parse_vfio_iova_ranges`).
pub fn iommu_info(container: &File) -> io::Result<Vec<u8>> {
    // u64 words keep the buffer aligned for the struct's 64-bit field.
    let mut size = crate::dma::VFIO_IOMMU_INFO_SIZE;
    for _ in 0..2 {
        let mut words = vec![0u64; size.div_ceil(8)];
        words[0] = size as u64; // argsz (low half), flags 0
                                // SAFETY: the kernel writes at most argsz bytes into `words`, which holds that many.
        check(unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                container,
                VFIO_IOMMU_GET_INFO(),
                words.as_mut_ptr(),
            )
        })?;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let wanted = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
        if wanted <= size {
            return Ok(bytes);
        }
        // The capability chain did not fit: ask again with the size the kernel wants.
        size = wanted;
    }
    Err(io::Error::other("VFIO_IOMMU_GET_INFO kept growing its answer"))
}

ioctl_io_nr!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, VFIO_TYPE as u32, VFIO_BASE + 12);
ioctl_io_nr!(VFIO_DEVICE_PCI_HOT_RESET, VFIO_TYPE as u32, VFIO_BASE + 13);

/// VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: the raw `vfio_pci_hot_reset_info` (parsed by
/// `super::hot_reset::parse_hot_reset_info`) listing what a hot reset of `device` affects.
pub fn hot_reset_info(device: &File) -> io::Result<Vec<u8>> {
    use super::hot_reset::{hot_reset_info_count, hot_reset_info_size, HOT_RESET_INFO_HEADER};
    let mut size = HOT_RESET_INFO_HEADER;
    for _ in 0..3 {
        // u32 words keep the buffer aligned for the struct.
        let mut words = vec![0u32; size.div_ceil(4)];
        words[0] = size as u32; // argsz; flags 0: group ids, not device ids
                                // SAFETY: the kernel writes at most argsz bytes into `words`, which holds that many.
        let ret = unsafe {
            vmm_sys_util::ioctl::ioctl_with_mut_ptr(
                device,
                VFIO_DEVICE_GET_PCI_HOT_RESET_INFO(),
                words.as_mut_ptr(),
            )
        };
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        match check(ret) {
            Ok(_) => return Ok(bytes),
            // ENOSPC: too small; the kernel wrote the count it needs.
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                let count = hot_reset_info_count(&bytes).unwrap_or(0);
                size = hot_reset_info_size(count.max(1));
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO kept growing its answer"))
}

/// VFIO_DEVICE_PCI_HOT_RESET of `device`'s slot or bus, proving ownership with the fds of
/// every affected IOMMU group.
pub fn pci_hot_reset(device: &File, group_fds: &[i32]) -> io::Result<()> {
    // struct vfio_pci_hot_reset: argsz, flags, count, then the int group fds.
    let mut words: Vec<u32> = vec![0, 0, group_fds.len() as u32];
    words.extend(group_fds.iter().map(|&fd| fd as u32));
    words[0] = (words.len() * 4) as u32;
    // SAFETY: `words` is a correctly laid out vfio_pci_hot_reset of `argsz` bytes that lives
    // across the call; the kernel only reads it.
    check(unsafe { ioctl_with_ptr(device, VFIO_DEVICE_PCI_HOT_RESET(), words.as_ptr()) })
        .map(|_| ())
}
