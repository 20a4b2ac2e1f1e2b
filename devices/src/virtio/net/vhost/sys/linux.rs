//! `/dev/vhost-net` (linux/vhost.h): opened and owned by this process, then driven through
//! [`VhostNetKernel`] by the device's worker thread.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};

use super::super::{MemoryRegion, VhostNetKernel, VringAddr, VHOST_NET_PATH};

// linux/vhost.h, `_IOC(dir, 0xAF, nr, size)` (the generic encoding, the same on arm64 and
// x86_64); the test below recomputes them from the structures' sizes.
const VHOST_GET_FEATURES: u64 = 0x8008_af00;
const VHOST_SET_FEATURES: u64 = 0x4008_af00;
const VHOST_SET_OWNER: u64 = 0x0000_af01;
const VHOST_SET_MEM_TABLE: u64 = 0x4008_af03;
const VHOST_SET_VRING_NUM: u64 = 0x4008_af10;
const VHOST_SET_VRING_ADDR: u64 = 0x4028_af11;
const VHOST_SET_VRING_BASE: u64 = 0x4008_af12;
const VHOST_GET_VRING_BASE: u64 = 0xc008_af12;
const VHOST_SET_VRING_KICK: u64 = 0x4008_af20;
const VHOST_SET_VRING_CALL: u64 = 0x4008_af21;
const VHOST_NET_SET_BACKEND: u64 = 0x4008_af30;

/// The requests the device's worker thread makes (features, memory, rings, backend), for
/// its seccomp filter; VHOST_SET_OWNER and VHOST_GET_FEATURES happen at open.
pub const VHOST_IOCTLS: [u64; 9] = [
    VHOST_SET_FEATURES,
    VHOST_SET_MEM_TABLE,
    VHOST_SET_VRING_NUM,
    VHOST_SET_VRING_ADDR,
    VHOST_SET_VRING_BASE,
    VHOST_GET_VRING_BASE,
    VHOST_SET_VRING_KICK,
    VHOST_SET_VRING_CALL,
    VHOST_NET_SET_BACKEND,
];

/// `struct vhost_vring_state`.
#[repr(C)]
struct VringState {
    index: u32,
    num: u32,
}

/// `struct vhost_vring_file` (`fd` -1 unbinds).
#[repr(C)]
struct VringFile {
    index: u32,
    fd: i32,
}

/// `struct vhost_vring_addr`.
#[repr(C)]
struct VringAddrC {
    index: u32,
    flags: u32,
    desc_user_addr: u64,
    used_user_addr: u64,
    avail_user_addr: u64,
    log_guest_addr: u64,
}

/// `/dev/vhost-net`, owned by this process.
#[derive(Debug)]
struct KernelVhostNet {
    file: File,
    features: u64,
}

/// Opens `/dev/vhost-net`, makes this process its owner (the kernel starts its worker) and
/// reads the features it offers.
pub fn open_vhost_net() -> io::Result<Box<dyn VhostNetKernel>> {
    let file = OpenOptions::new().read(true).write(true).open(VHOST_NET_PATH)?;
    // SAFETY: VHOST_SET_OWNER takes no argument.
    if unsafe { libc::ioctl(file.as_raw_fd(), VHOST_SET_OWNER as _) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut features = 0u64;
    // SAFETY: VHOST_GET_FEATURES writes one u64 to the pointer, valid for the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), VHOST_GET_FEATURES as _, &mut features) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Box::new(KernelVhostNet { file, features }))
}

impl KernelVhostNet {
    /// An ioctl whose argument is a pointer to `arg`.
    fn call<T>(&self, request: u64, arg: &mut T) -> io::Result<()> {
        // SAFETY: every request used here reads (and GET_VRING_BASE writes) exactly one `T`
        // of the layout linux/vhost.h gives it, which `arg` points to for the call.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), request as _, arg as *mut T) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn vring_file(&self, request: u64, queue: u16, fd: Option<RawFd>) -> io::Result<()> {
        self.call(request, &mut VringFile { index: u32::from(queue), fd: fd.unwrap_or(-1) })
    }
}

impl VhostNetKernel for KernelVhostNet {
    fn features(&self) -> u64 {
        self.features
    }

    fn set_features(&mut self, features: u64) -> io::Result<()> {
        let mut features = features;
        self.call(VHOST_SET_FEATURES, &mut features)
    }

    fn set_mem_table(&mut self, regions: &[MemoryRegion]) -> io::Result<()> {
        // `struct vhost_memory` (nregions, padding) then its `struct vhost_memory_region`s
        // (guest_phys_addr, memory_size, userspace_addr, flags_padding), as u64 words.
        let count = u32::try_from(regions.len()).map_err(io::Error::other)?;
        let mut table = Vec::with_capacity(1 + 4 * regions.len());
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&count.to_ne_bytes());
        table.push(u64::from_ne_bytes(header));
        for region in regions {
            table.extend([region.guest_phys_addr, region.size, region.host_addr, 0]);
        }
        // SAFETY: VHOST_SET_MEM_TABLE reads the header and `nregions` regions after it,
        // which `table` holds (u64-aligned, the layout of linux/vhost.h) for the call.
        if unsafe { libc::ioctl(self.file.as_raw_fd(), VHOST_SET_MEM_TABLE as _, table.as_ptr()) }
            < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn set_vring_num(&mut self, queue: u16, size: u16) -> io::Result<()> {
        self.call(VHOST_SET_VRING_NUM, &mut VringState { index: queue.into(), num: size.into() })
    }

    fn set_vring_addr(&mut self, queue: u16, addr: VringAddr) -> io::Result<()> {
        self.call(
            VHOST_SET_VRING_ADDR,
            &mut VringAddrC {
                index: queue.into(),
                flags: 0,
                desc_user_addr: addr.desc,
                used_user_addr: addr.used,
                avail_user_addr: addr.avail,
                log_guest_addr: 0,
            },
        )
    }

    fn set_vring_base(&mut self, queue: u16, base: u16) -> io::Result<()> {
        self.call(VHOST_SET_VRING_BASE, &mut VringState { index: queue.into(), num: base.into() })
    }

    fn vring_base(&mut self, queue: u16) -> io::Result<u16> {
        let mut state = VringState { index: queue.into(), num: 0 };
        self.call(VHOST_GET_VRING_BASE, &mut state)?;
        // The kernel reports a 16-bit ring index for split rings.
        Ok(state.num as u16)
    }

    fn set_vring_kick(&mut self, queue: u16, fd: Option<RawFd>) -> io::Result<()> {
        self.vring_file(VHOST_SET_VRING_KICK, queue, fd)
    }

    fn set_vring_call(&mut self, queue: u16, fd: Option<RawFd>) -> io::Result<()> {
        self.vring_file(VHOST_SET_VRING_CALL, queue, fd)
    }

    fn set_backend(&mut self, queue: u16, fd: Option<RawFd>) -> io::Result<()> {
        self.vring_file(VHOST_NET_SET_BACKEND, queue, fd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `_IOC(dir, 0xAF, nr, size)`.
    fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
        dir << 30 | (size as u64) << 16 | 0xaf << 8 | nr
    }

    #[test]
    fn request_numbers_match_linux_vhost_h() {
        let (w, r) = (1, 2);
        let state = std::mem::size_of::<VringState>();
        let file = std::mem::size_of::<VringFile>();
        assert_eq!(VHOST_GET_FEATURES, ioc(r, 0x00, 8));
        assert_eq!(VHOST_SET_FEATURES, ioc(w, 0x00, 8));
        assert_eq!(VHOST_SET_OWNER, ioc(0, 0x01, 0));
        assert_eq!(VHOST_SET_MEM_TABLE, ioc(w, 0x03, 8), "struct vhost_memory's header");
        assert_eq!(VHOST_SET_VRING_NUM, ioc(w, 0x10, state));
        assert_eq!(VHOST_SET_VRING_ADDR, ioc(w, 0x11, std::mem::size_of::<VringAddrC>()));
        assert_eq!(VHOST_SET_VRING_BASE, ioc(w, 0x12, state));
        assert_eq!(VHOST_GET_VRING_BASE, ioc(w | r, 0x12, state));
        assert_eq!(VHOST_SET_VRING_KICK, ioc(w, 0x20, file));
        assert_eq!(VHOST_SET_VRING_CALL, ioc(w, 0x21, file));
        assert_eq!(VHOST_NET_SET_BACKEND, ioc(w, 0x30, file));
    }
}
