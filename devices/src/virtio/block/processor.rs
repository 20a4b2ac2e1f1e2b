//! Executes virtio-blk requests (virtio 1.2 §5.2.6) against a raw image file.
//!
//! A request is a descriptor chain: a 16-byte device-readable header (type, reserved, sector),
//! data buffers, and a device-writable status byte at the very end. Everything in the chain
//! comes from the guest and is validated before the image is touched.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use log::{debug, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::host_io::{self, Direction, HostBuffer};
use super::BlockError;
use crate::virtio::queue_service::{drain_queue, GuestChain};
use crate::virtio::worker::QueueHandler;

/// The sector size of virtio-blk requests (fixed by the spec, whatever `blk_size` says).
pub const SECTOR_SIZE: u64 = 512;
/// Most data buffers in one request (advertised as `seg_max`): a full ring (see
/// `QUEUE_SIZE`) minus the header and status descriptors, so that a 1 MiB request of
/// scattered 4 KiB pages (258 descriptors) is one request, not two.
pub const SEG_MAX: u32 = 1022;
/// Largest single data buffer (advertised as `size_max`).
pub const SIZE_MAX: u32 = 1 << 22;
/// Most ranges in one discard or write-zeroes request (`max_discard_seg`,
/// `max_write_zeroes_seg`).
pub const MAX_RANGES: u32 = 64;
/// Most sectors in one discard or write-zeroes range (`max_discard_sectors`,
/// `max_write_zeroes_sectors`): 2 GiB.
pub const MAX_RANGE_SECTORS: u32 = 1 << 22;
/// `struct virtio_blk_discard_write_zeroes`: sector (u64), num_sectors (u32), flags (u32).
const RANGE_LEN: u64 = 16;
/// write-zeroes flag: the device may deallocate the range.
const WRITE_ZEROES_UNMAP: u32 = 1;
/// Length of the GET_ID answer.
pub const ID_LEN: usize = 20;

const MAX_DESCRIPTORS: usize = SEG_MAX as usize + 2;
const HEADER_LEN: u32 = 16;

/// Why a request failed; the driver sees VIRTIO_BLK_S_IOERR, the log sees this.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The chain holds only the status descriptor.
    #[error("the request has no header descriptor (the guest driver built a bad chain)")]
    HeaderMissing,
    /// The header is in a device-writable descriptor.
    #[error("the request header is in a device-writable descriptor; it must be device-readable")]
    HeaderWritable,
    /// The header descriptor is shorter than 16 bytes.
    #[error("the request header descriptor has {0} bytes; it needs {HEADER_LEN}")]
    HeaderTooShort(u32),
    /// The header is not in guest RAM.
    #[error("the request header at guest address {0:#x} is outside guest RAM")]
    HeaderOutsideMemory(u64),
    /// More descriptors than `seg_max` allows.
    #[error("the request has more than {MAX_DESCRIPTORS} descriptors (seg_max is {SEG_MAX})")]
    TooManyDescriptors,
    /// A data buffer points the wrong way for the request type.
    #[error("data buffer {index} of a {kind} request must be device-{needed}")]
    WrongDirection {
        /// Request type name.
        kind: &'static str,
        /// Data buffer index (0 = the first after the header).
        index: usize,
        /// "readable" or "writable".
        needed: &'static str,
    },
    /// The data length is not whole sectors.
    #[error("the request moves {0} bytes, which is not a whole number of 512-byte sectors")]
    PartialSector(u64),
    /// The request reaches past the end of the disk.
    #[error(
        "the request reaches past the end of the disk: sector {sector} + {len} bytes, but the \
         disk has {capacity} sectors"
    )]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Bytes requested.
        len: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// A data buffer is not in guest RAM.
    #[error("a data buffer at guest address {addr:#x} ({len} bytes) is outside guest RAM")]
    BufferOutsideMemory {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A write to a read-only disk.
    #[error("the disk is read-only, so the write is refused (attach it without `readonly`)")]
    ReadOnly,
    /// The image file failed.
    #[error("the image file failed: {0} (check the host file and its storage)")]
    Image(#[from] std::io::Error),
    /// Reaching guest RAM failed.
    #[error("guest memory access failed: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// A discard or write-zeroes payload is not whole 16-byte ranges, or has too many.
    #[error(
        "the {kind} request carries {len} bytes of ranges; it needs 1 to {MAX_RANGES} ranges \
         of {RANGE_LEN} bytes"
    )]
    BadRanges {
        /// Request type name.
        kind: &'static str,
        /// Payload length.
        len: u64,
    },
    /// A discard or write-zeroes range is longer than advertised.
    #[error("a {kind} range of {sectors} sectors is longer than the {MAX_RANGE_SECTORS} allowed")]
    RangeTooLong {
        /// Request type name.
        kind: &'static str,
        /// Its sector count.
        sectors: u32,
    },
}

/// The fields of a request header the device uses.
#[derive(Debug, Clone, Copy)]
struct RequestHeader {
    kind: u32,
    sector: u64,
}

/// Serves virtio-blk requests from a queue against a raw image. Runs on the device's worker
/// threads (one clone per queue, sharing the file: all its I/O is positioned); usable
/// directly (without threads) in tests.
#[derive(Debug, Clone)]
pub struct BlockRequestProcessor {
    /// The disk's name in logs.
    name: String,
    file: Arc<File>,
    read_only: bool,
    /// DISCARD and WRITE_ZEROES are served (fallocate on a writable regular file).
    deallocate: bool,
    capacity_sectors: u64,
    id: [u8; ID_LEN],
    descriptors: Vec<Descriptor>,
}

impl BlockRequestProcessor {
    /// Serves `file` (its whole length, in 512-byte sectors) as a disk whose GET_ID answer is
    /// `id` (at most 20 bytes are kept).
    pub fn new(mut file: File, read_only: bool, id: &str) -> Result<Self, BlockError> {
        // Seeking to the end also sizes block devices, whose metadata length is 0.
        let len = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BlockError::Size { id: id.to_string(), source })?;
        let capacity_sectors = len / SECTOR_SIZE;
        if capacity_sectors == 0 {
            return Err(BlockError::Empty { id: id.to_string(), len });
        }
        if len % SECTOR_SIZE != 0 {
            warn!(
                "virtio-blk {id}: the image is {len} bytes, not a multiple of {SECTOR_SIZE}; the \
                 guest will not see the last {} bytes (pad the image to fix this)",
                len % SECTOR_SIZE
            );
        }
        let id_bytes = id.as_bytes();
        if id_bytes.len() > ID_LEN {
            warn!("virtio-blk: the id {id:?} is longer than {ID_LEN} bytes; the guest sees it cut");
        }
        let mut id_field = [0u8; ID_LEN];
        for (dst, src) in id_field.iter_mut().zip(id_bytes) {
            *dst = *src;
        }
        Ok(Self {
            name: id.to_string(),
            deallocate: host_io::can_deallocate(&file, read_only),
            file: Arc::new(file),
            read_only,
            capacity_sectors,
            id: id_field,
            descriptors: Vec::with_capacity(MAX_DESCRIPTORS + 1),
        })
    }

    /// Whether DISCARD and WRITE_ZEROES are served (offered to the driver).
    pub fn can_deallocate(&self) -> bool {
        self.deallocate
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Serves every available request; returns whether the driver needs an interrupt.
    pub fn process_queue(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        drain_queue(queue, mem, |chain| self.serve(chain, mem))
    }

    /// Serves one request; returns the number of bytes written into its buffers.
    fn serve(&mut self, mut chain: GuestChain<'_>, mem: &GuestMemoryMmap) -> u32 {
        let head = chain.head_index();
        let mut descriptors = std::mem::take(&mut self.descriptors);
        descriptors.clear();
        descriptors.extend(chain.by_ref().take(MAX_DESCRIPTORS + 1));
        let too_long = descriptors.len() > MAX_DESCRIPTORS;
        // The rest of an over-long chain only matters for its status byte; virtio-queue bounds
        // the walk (ring or indirect table size), so this ends.
        let last = chain.last().or_else(|| descriptors.last().copied());
        let used_len = match last.and_then(|last| status_address(&last, mem)) {
            Some(status_addr) => {
                let mut written = 0u32;
                let status = match self.execute(&descriptors, too_long, mem, &mut written) {
                    Ok(status) => status,
                    Err(e) => {
                        warn!("virtio-blk {}: request {head} failed: {e}", self.name);
                        VIRTIO_BLK_S_IOERR
                    }
                };
                // The status byte is a u8 in the spec; the constants are u32 bindings.
                match mem.write_obj(status as u8, status_addr) {
                    Ok(()) => written.saturating_add(1),
                    Err(e) => {
                        warn!(
                            "virtio-blk {}: request {head}: cannot write its status: {e}",
                            self.name
                        );
                        written
                    }
                }
            }
            None => {
                warn!(
                    "virtio-blk {}: request {head} has no usable status byte (the chain is \
                     empty, broken, or does not end in a device-writable buffer); it is dropped",
                    self.name
                );
                0
            }
        };
        self.descriptors = descriptors;
        used_len
    }

    /// Runs a request whose status byte is known good; returns the status to report.
    fn execute(
        &mut self,
        descriptors: &[Descriptor],
        too_long: bool,
        mem: &GuestMemoryMmap,
        written: &mut u32,
    ) -> Result<u32, RequestError> {
        if descriptors.len() < 2 {
            return Err(RequestError::HeaderMissing);
        }
        if too_long {
            return Err(RequestError::TooManyDescriptors);
        }
        let header = read_header(&descriptors[0], mem)?;
        let data = &descriptors[1..descriptors.len() - 1];
        match header.kind {
            VIRTIO_BLK_T_IN => {
                let offset = self.check_transfer(header.sector, data, "read", true, mem)?;
                let len = self.transfer(Direction::Read, offset, data, mem)?;
                *written = written.saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(RequestError::ReadOnly);
                }
                let offset = self.check_transfer(header.sector, data, "write", false, mem)?;
                self.transfer(Direction::Write, offset, data, mem)?;
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only {
                    self.file.sync_data()?;
                }
            }
            VIRTIO_BLK_T_GET_ID => {
                check_buffers(data, "get-id", true, mem)?;
                self.write_id(data, mem, written)?;
            }
            VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if self.deallocate => {
                return self.deallocate(header.kind, data, mem);
            }
            other => {
                debug!("virtio-blk {}: request type {other} is not supported", self.name);
                return Ok(VIRTIO_BLK_S_UNSUPP);
            }
        }
        Ok(VIRTIO_BLK_S_OK)
    }

    /// Checks a read or write's buffers and range; returns the image offset.
    fn check_transfer(
        &self,
        sector: u64,
        data: &[Descriptor],
        kind: &'static str,
        writable: bool,
        mem: &GuestMemoryMmap,
    ) -> Result<u64, RequestError> {
        let len = check_buffers(data, kind, writable, mem)?;
        if len % SECTOR_SIZE != 0 {
            return Err(RequestError::PartialSector(len));
        }
        let capacity = self.capacity_sectors;
        let out_of_range = || RequestError::OutOfRange { sector, len, capacity };
        let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        if end > capacity * SECTOR_SIZE {
            return Err(out_of_range());
        }
        Ok(offset)
    }

    /// Image → guest (`Read`) or guest → image (`Write`), straight between the image and
    /// guest RAM; returns the bytes moved.
    fn transfer(
        &mut self,
        direction: Direction,
        offset: u64,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<u64, RequestError> {
        let (buffers, len) = host_buffers(data, mem)?;
        // SAFETY: the buffers are guest RAM mappings that `check_transfer` found in guest RAM
        // with the access the direction needs; `mem` keeps them mapped for the call.
        unsafe { host_io::transfer_at(&self.file, direction, &buffers, offset)? };
        Ok(len)
    }

    /// DISCARD or WRITE_ZEROES: each range is deallocated or zeroed in place.
    fn deallocate(
        &mut self,
        kind: u32,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
    ) -> Result<u32, RequestError> {
        let (name, discard) = match kind {
            VIRTIO_BLK_T_DISCARD => ("discard", true),
            _ => ("write-zeroes", false),
        };
        if self.read_only {
            return Err(RequestError::ReadOnly);
        }
        let len = check_buffers(data, name, false, mem)?;
        if len == 0 || len % RANGE_LEN != 0 || len / RANGE_LEN > u64::from(MAX_RANGES) {
            return Err(RequestError::BadRanges { kind: name, len });
        }
        let mut payload = vec![0u8; len as usize];
        let mut at = 0;
        for desc in data {
            let end = at + desc.len() as usize;
            mem.read_slice(&mut payload[at..end], desc.addr())?;
            at = end;
        }
        let mut ranges = Vec::with_capacity(payload.len() / RANGE_LEN as usize);
        for range in payload.chunks_exact(RANGE_LEN as usize) {
            let field = |from: usize, to: usize| {
                range[from..to].iter().rev().fold(0u64, |v, b| v << 8 | u64::from(*b))
            };
            let sector = field(0, 8);
            // Both fields are 4 bytes wide.
            let (sectors, flags) = (field(8, 12) as u32, field(12, 16) as u32);
            // Discard has no flags; write-zeroes only "unmap" (virtio 1.2 §5.2.6.2).
            let allowed = if discard { 0 } else { WRITE_ZEROES_UNMAP };
            if flags & !allowed != 0 {
                debug!("virtio-blk {}: {name} flags {flags:#x} are not supported", self.name);
                return Ok(VIRTIO_BLK_S_UNSUPP);
            }
            if sectors > MAX_RANGE_SECTORS {
                return Err(RequestError::RangeTooLong { kind: name, sectors });
            }
            let bytes = u64::from(sectors) * SECTOR_SIZE;
            let capacity = self.capacity_sectors;
            let out_of_range = || RequestError::OutOfRange { sector, len: bytes, capacity };
            let offset = sector.checked_mul(SECTOR_SIZE).ok_or_else(out_of_range)?;
            let end = offset.checked_add(bytes).ok_or_else(out_of_range)?;
            if end > capacity * SECTOR_SIZE {
                return Err(out_of_range());
            }
            ranges.push((offset, bytes, flags & WRITE_ZEROES_UNMAP != 0));
        }
        for (offset, bytes, unmap) in ranges.into_iter().filter(|r| r.1 > 0) {
            if discard {
                // A hint: a host file system that cannot punch holes keeps the data.
                if let Err(e) = host_io::punch_hole(&self.file, offset, bytes) {
                    debug!("virtio-blk {}: discard not done by the host: {e}", self.name);
                }
            } else {
                self.zero(offset, bytes, unmap)?;
            }
        }
        Ok(VIRTIO_BLK_S_OK)
    }

    /// Makes `len` bytes at `offset` read as zeros: the cheapest way the host file allows.
    fn zero(&self, offset: u64, len: u64, unmap: bool) -> Result<(), RequestError> {
        let first = if unmap { host_io::punch_hole } else { host_io::zero_range };
        if first(&self.file, offset, len).is_ok()
            || host_io::punch_hole(&self.file, offset, len).is_ok()
        {
            return Ok(());
        }
        // Neither is supported here: write the zeros.
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let now = (len - done).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..now], offset + done)?;
            done += now as u64;
        }
        Ok(())
    }

    /// Writes the 20-byte id into the data buffers (as much as fits).
    fn write_id(
        &self,
        data: &[Descriptor],
        mem: &GuestMemoryMmap,
        written: &mut u32,
    ) -> Result<(), RequestError> {
        let mut remaining: &[u8] = &self.id;
        for desc in data {
            if remaining.is_empty() {
                break;
            }
            let len = remaining.len().min(desc.len() as usize);
            let (now, later) = remaining.split_at(len);
            mem.write_slice(now, desc.addr())?;
            *written = written.saturating_add(len as u32);
            remaining = later;
        }
        Ok(())
    }
}

impl QueueHandler for BlockRequestProcessor {
    fn process_queue(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        BlockRequestProcessor::process_queue(self, queue, mem)
    }
}

/// The status byte is the last byte of the chain, which must be device-writable guest RAM.
fn status_address(last: &Descriptor, mem: &GuestMemoryMmap) -> Option<GuestAddress> {
    if last.has_next() || !last.is_write_only() || last.len() == 0 {
        // `has_next` on the last yielded descriptor means the walk was cut short.
        return None;
    }
    let addr = last.addr().checked_add(u64::from(last.len()) - 1)?;
    mem.check_range(addr, 1, Permissions::Write).then_some(addr)
}

fn read_header(desc: &Descriptor, mem: &GuestMemoryMmap) -> Result<RequestHeader, RequestError> {
    if desc.is_write_only() {
        return Err(RequestError::HeaderWritable);
    }
    if desc.len() < HEADER_LEN {
        return Err(RequestError::HeaderTooShort(desc.len()));
    }
    let mut raw = [0u8; HEADER_LEN as usize];
    mem.read_slice(&mut raw, desc.addr())
        .map_err(|_| RequestError::HeaderOutsideMemory(desc.addr().raw_value()))?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
    Ok(RequestHeader {
        kind: u32::from_le_bytes([t0, t1, t2, t3]),
        sector: u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]),
    })
}

/// Checks that every data buffer points the right way and lies in guest RAM; returns the
/// total length.
fn check_buffers(
    data: &[Descriptor],
    kind: &'static str,
    writable: bool,
    mem: &GuestMemoryMmap,
) -> Result<u64, RequestError> {
    let access = if writable { Permissions::Write } else { Permissions::Read };
    let mut total = 0u64;
    for (index, desc) in data.iter().enumerate() {
        if desc.is_write_only() != writable {
            let needed = if writable { "writable" } else { "readable" };
            return Err(RequestError::WrongDirection { kind, index, needed });
        }
        if !mem.check_range(desc.addr(), desc.len() as usize, access) {
            return Err(RequestError::BufferOutsideMemory {
                addr: desc.addr().raw_value(),
                len: desc.len(),
            });
        }
        total += u64::from(desc.len());
    }
    Ok(total)
}

/// The host mappings of (checked) data buffers, and their total length. A buffer that spans
/// two guest RAM regions becomes two host buffers; empty ones are left out.
fn host_buffers(
    data: &[Descriptor],
    mem: &GuestMemoryMmap,
) -> Result<(Vec<HostBuffer>, u64), RequestError> {
    let mut buffers = Vec::with_capacity(data.len());
    let mut total = 0u64;
    for desc in data {
        for slice in
            vm_memory::GuestMemoryBackend::get_slices(mem, desc.addr(), desc.len() as usize)
        {
            let slice = slice?;
            if slice.is_empty() {
                continue;
            }
            total += slice.len() as u64;
            buffers.push(HostBuffer { addr: slice.ptr_guard_mut().as_ptr(), len: slice.len() });
        }
    }
    Ok((buffers, total))
}
