//! The image file calls of virtio-blk: vectored positioned I/O straight between the image
//! and guest RAM (no bounce copy), and hole punching / zeroing where the host has them.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Most buffers in one `preadv`/`pwritev` (POSIX's IOV_MAX on Linux and macOS).
const IOV_MAX: usize = 1024;

/// Which way a vectored transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    /// Image → guest RAM.
    Read,
    /// Guest RAM → image.
    Write,
}

/// One host buffer of a transfer: a piece of guest RAM mapped in this process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostBuffer {
    /// Host address of the first byte.
    pub(crate) addr: *mut u8,
    /// Length in bytes (never 0).
    pub(crate) len: usize,
}

/// Moves `buffers` to or from the image at `offset`, all of it (short transfers are
/// continued; the end of the file is an error).
///
/// # Safety
/// Every buffer must be mapped, writable for `Read`, and stay mapped for the call.
pub(crate) unsafe fn transfer_at(
    file: &File,
    direction: Direction,
    buffers: &[HostBuffer],
    mut offset: u64,
) -> io::Result<()> {
    let mut iovecs: Vec<libc::iovec> =
        buffers.iter().map(|b| libc::iovec { iov_base: b.addr.cast(), iov_len: b.len }).collect();
    let mut rest = &mut iovecs[..];
    while !rest.is_empty() {
        let count = rest.len().min(IOV_MAX);
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // count <= IOV_MAX, which fits in a c_int.
        let iovcnt = count as libc::c_int;
        let done = match direction {
            // SAFETY: the iovecs describe mapped buffers (the caller's promise), writable for a
            // read; the kernel reads the iovec array only during the call.
            Direction::Read => unsafe { libc::preadv(file.as_raw_fd(), rest.as_ptr(), iovcnt, at) },
            // SAFETY: as above; a write only reads the buffers.
            Direction::Write => unsafe {
                libc::pwritev(file.as_raw_fd(), rest.as_ptr(), iovcnt, at)
            },
        };
        let done = match usize::try_from(done) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the image ended inside the request",
                ))
            }
            Ok(done) => done,
            Err(_) => {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(error);
            }
        };
        offset += done as u64;
        rest = advance(rest, done);
    }
    Ok(())
}

/// Drops the first `done` bytes from `iovecs`.
fn advance(iovecs: &mut [libc::iovec], mut done: usize) -> &mut [libc::iovec] {
    let mut finished = 0;
    for iovec in iovecs.iter_mut() {
        if done >= iovec.iov_len {
            done -= iovec.iov_len;
            finished += 1;
        } else {
            iovec.iov_base = iovec.iov_base.cast::<u8>().wrapping_add(done).cast();
            iovec.iov_len -= done;
            break;
        }
    }
    &mut iovecs[finished..]
}

/// Whether the image can discard and zero ranges in place: a writable regular file on Linux
/// (fallocate). Block devices and other hosts get neither feature.
pub(crate) fn can_deallocate(file: &File, read_only: bool) -> bool {
    cfg!(target_os = "linux")
        && !read_only
        && file.metadata().map(|m| m.file_type().is_file()).unwrap_or(false)
}

/// Deallocates `len` bytes at `offset` (they then read as zeros), keeping the file size.
#[cfg(target_os = "linux")]
pub(crate) fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

/// Zeroes `len` bytes at `offset` keeping them allocated, and the file size.
#[cfg(target_os = "linux")]
pub(crate) fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    fallocate(file, libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len)
}

#[cfg(target_os = "linux")]
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidInput, "range too large");
    let offset = libc::off_t::try_from(offset).map_err(|_| invalid())?;
    let len = libc::off_t::try_from(len).map_err(|_| invalid())?;
    loop {
        // SAFETY: fallocate takes plain integers and a descriptor `file` keeps open.
        if unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// Not offered off Linux (see [`can_deallocate`]).
#[cfg(not(target_os = "linux"))]
pub(crate) fn punch_hole(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Not offered off Linux (see [`can_deallocate`]).
#[cfg(not(target_os = "linux"))]
pub(crate) fn zero_range(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_skips_whole_and_partial_buffers() {
        let mut a = [0u8; 4];
        let mut b = [0u8; 8];
        let mut iovecs = [
            libc::iovec { iov_base: a.as_mut_ptr().cast(), iov_len: a.len() },
            libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() },
        ];
        let rest = advance(&mut iovecs, 6);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].iov_len, 6);
        assert_eq!(rest[0].iov_base.cast::<u8>(), b.as_mut_ptr().wrapping_add(2));
        assert!(advance(rest, 6).is_empty());
    }
}
