//! virtio-blk requests and descriptor chains: the fuzzer plays a (hostile) driver writing
//! descriptors, request headers, the available ring and anything else into guest RAM, and the
//! real request processor (`devices::virtio::block`) serves the queue over a
//! `GuestMemoryMmap` with a hole in it, against a scratch image. A few inputs drive the
//! virtio-rng processor over the same rings instead. Checks that the image never changes size
//! and that a read-only disk is never written.

#![no_main]

use aperture_fuzz::image::{image_contents, scratch_image, IMAGE_LEN, IMAGE_SECTORS};
use devices::virtio::block::{Block, BlockRequestProcessor};
use devices::virtio::rng::RngRequestProcessor;
use devices::virtio::VirtioDevice;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: two regions with an unmapped page between them.
const LOW: (u64, usize) = (0, 0x8000);
const HIGH: (u64, usize) = (0x9000, 0x7000);
const MEM_END: u64 = 0x1_0000;
const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Where the driver's buffers usually go.
const DATA: u64 = 0x3000;

const N: u16 = VRING_DESC_F_NEXT as u16;
const W: u16 = VRING_DESC_F_WRITE as u16;
const I: u16 = VRING_DESC_F_INDIRECT as u16;

/// The driver side of the ring.
struct Driver {
    avail: u64,
    size: u16,
    next_desc: u16,
    next_avail: u16,
}

impl Driver {
    fn write_desc(
        &self,
        mem: &GuestMemoryMmap,
        at: u64,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.avail + 4 + 2 * u64::from(self.next_avail % self.size);
        let _ = mem.write_obj(head, GuestAddress(slot));
        self.next_avail = self.next_avail.wrapping_add(1);
        let _ = mem.write_obj(self.next_avail, GuestAddress(self.avail + 2));
    }
}

fn buffer_addr(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=5 => DATA + u.int_in_range(0..=0x4fff)?,
        6 => u.int_in_range(0..=MEM_END + 0x100)?,
        7 => *u.choose(&[0x7fff, 0x8000, 0x8fff, 0x9000, MEM_END - 1, MEM_END, u64::MAX])?,
        _ => u.arbitrary()?,
    })
}

fn buffer_len(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(if u.ratio(7u8, 8u8)? {
        *u.choose(&[0, 1, 15, 16, 17, 20, 511, 512, 513, 1024, 4096, 0x8000, u32::MAX])?
    } else {
        u.arbitrary()?
    })
}

fn header(u: &mut Unstructured<'_>) -> Result<[u8; 16]> {
    let kinds = [
        VIRTIO_BLK_T_IN,
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_FLUSH,
        VIRTIO_BLK_T_GET_ID,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
        2,
    ];
    let kind = if u.ratio(7u8, 8u8)? { *u.choose(&kinds)? } else { u.arbitrary()? };
    let cap = IMAGE_SECTORS;
    let sector = aperture_fuzz::biased_u64(
        u,
        &[0, 1, cap - 2, cap - 1, cap, u64::MAX, u64::MAX / 512, u64::MAX / 512 + 1],
    )?;
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&kind.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    Ok(raw)
}

/// A discard/write-zeroes range (sector, sector count, flags), biased to the edges.
fn discard_range(u: &mut Unstructured<'_>) -> Result<[u8; 16]> {
    let cap = IMAGE_SECTORS;
    let sector = aperture_fuzz::biased_u64(u, &[0, 1, cap - 1, cap, u64::MAX / 512])?;
    let (any_sectors, any_flags): (u32, u32) = (u.arbitrary()?, u.arbitrary()?);
    let sectors = *u.choose(&[0, 1, 8, IMAGE_SECTORS as u32, u32::MAX, any_sectors])?;
    let flags = *u.choose(&[0, 0, 1, 2, any_flags])?;
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&sector.to_le_bytes());
    raw[8..12].copy_from_slice(&sectors.to_le_bytes());
    raw[12..].copy_from_slice(&flags.to_le_bytes());
    Ok(raw)
}

enum Device {
    /// Two clones of one processor, as two queues' workers share a disk; each pass picks one.
    Block(Box<[BlockRequestProcessor; 2]>, bool),
    Rng(RngRequestProcessor),
}

impl Device {
    fn process(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        match self {
            Self::Block(p, second) => {
                *second = !*second;
                p[usize::from(*second)].process_queue(queue, mem)
            }
            Self::Rng(p) => p.process_queue(queue, mem),
        }
    }
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    let read_only = u.ratio(1u8, 4u8)?;
    let rng_device = u.ratio(1u8, 8u8)?;
    let size = 1u16 << u.int_in_range(0..=8u8)?;
    let event_idx = u.arbitrary()?;
    let (desc, avail, used) = if u.ratio(7u8, 8u8)? {
        (DESC, AVAIL, USED)
    } else {
        (u.int_in_range(0..=MEM_END)?, u.int_in_range(0..=MEM_END)?, u.int_in_range(0..=MEM_END)?)
    };
    // Two regions with a hole between them, or back to back (buffers may then cross from one
    // to the other).
    let ranges = if u.ratio(3u8, 4u8)? {
        [(GuestAddress(LOW.0), LOW.1), (GuestAddress(HIGH.0), HIGH.1)]
    } else {
        [(GuestAddress(LOW.0), LOW.1), (GuestAddress(LOW.1 as u64), MEM_END as usize - LOW.1)]
    };
    let Ok(mem) = GuestMemoryMmap::from_ranges(&ranges) else {
        panic!("cannot allocate guest memory");
    };
    // The queue as the transport hands it over at DRIVER_OK: refused unless valid.
    let Ok(mut queue) = Queue::new(256) else { panic!("Queue::new(256)") };
    if queue.try_set_size(size).is_err()
        || queue.try_set_desc_table_address(GuestAddress(desc)).is_err()
        || queue.try_set_avail_ring_address(GuestAddress(avail)).is_err()
        || queue.try_set_used_ring_address(GuestAddress(used)).is_err()
    {
        return Ok(());
    }
    queue.set_ready(true);
    queue.set_event_idx(event_idx);
    if !queue.is_valid(&mem) {
        return Ok(());
    }

    let image = scratch_image();
    let before = image_contents(&image);
    let queues = u.int_in_range(1..=9u16)?;
    let disk = Block::with_queues(scratch_image(), read_only, "fuzz-disk", queues);
    let Ok(disk) = disk else { panic!("Block::new: {disk:?}") };
    let mut device = if rng_device {
        Device::Rng(RngRequestProcessor::new(Box::new(|buf: &mut [u8]| {
            buf.fill(0x5a);
            Ok(())
        })))
    } else {
        let p = BlockRequestProcessor::new(scratch_image(), read_only, "fuzz-disk");
        let Ok(p) = p else { panic!("BlockRequestProcessor::new: {p:?}") };
        Device::Block(Box::new([p.clone(), p]), false)
    };
    let mut driver = Driver { avail, size, next_desc: 0, next_avail: 0 };

    for _ in 0..aperture_fuzz::MAX_OPS {
        if u.is_empty() {
            break;
        }
        match u.int_in_range(0..=15u8)? {
            0 | 1 => {
                // One raw descriptor.
                let index =
                    if u.ratio(7u8, 8u8)? { u.int_in_range(0..=size - 1)? } else { u.arbitrary()? };
                let (addr, len) = (buffer_addr(u)?, buffer_len(u)?);
                let flags =
                    if u.ratio(7u8, 8u8)? { u.int_in_range(0..=7u16)? } else { u.arbitrary()? };
                let next =
                    if u.ratio(3u8, 4u8)? { index.wrapping_add(1) % size } else { u.arbitrary()? };
                driver.write_desc(
                    &mem,
                    desc + 16 * u64::from(index % size),
                    addr,
                    len,
                    flags,
                    next,
                );
            }
            2 | 3 => {
                // A well-formed request chain (header, data buffers, status), maybe indirect,
                // with the fields the fuzzer picked.
                let header_at = buffer_addr(u)?;
                let _ = mem.write_slice(&header(u)?, GuestAddress(header_at));
                let data_writable: bool = u.arbitrary()?;
                let mut bufs = vec![(header_at, 16u32, 0u16)];
                for _ in 0..u.int_in_range(0..=4u8)? {
                    let flags = if data_writable { W } else { 0 };
                    let flip = if u.ratio(1u8, 8u8)? { W } else { 0 };
                    bufs.push((buffer_addr(u)?, buffer_len(u)?, flags ^ flip));
                }
                let status_len = *u.choose(&[1u32, 1, 1, 4, 0])?;
                bufs.push((buffer_addr(u)?, status_len, if u.ratio(15u8, 16u8)? { W } else { 0 }));
                let indirect = u.ratio(1u8, 4u8)?;
                let head = driver.next_desc % size;
                if indirect {
                    let table = DATA + u.int_in_range(0..=0x400u64)? * 16;
                    for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                        let more = if i + 1 < bufs.len() { N } else { 0 };
                        let at = table + 16 * i as u64;
                        driver.write_desc(&mem, at, addr, len, flags | more, i as u16 + 1);
                    }
                    let table_len = 16 * bufs.len() as u32;
                    driver.write_desc(&mem, desc + 16 * u64::from(head), table, table_len, I, 0);
                    driver.next_desc = (head + 1) % size;
                } else {
                    for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                        let index = driver.next_desc % size;
                        driver.next_desc = (index + 1) % size;
                        let more = if i + 1 < bufs.len() { N } else { 0 };
                        let at = desc + 16 * u64::from(index);
                        driver.write_desc(&mem, at, addr, len, flags | more, driver.next_desc);
                    }
                }
                driver.publish(&mem, head);
            }
            4 => {
                let head =
                    if u.ratio(7u8, 8u8)? { u.int_in_range(0..=size - 1)? } else { u.arbitrary()? };
                driver.publish(&mem, head);
            }
            5 => {
                let header_at = buffer_addr(u)?;
                let _ = mem.write_slice(&header(u)?, GuestAddress(header_at));
                // Discard/write-zeroes ranges where a data buffer is likely to be.
                for i in 0..u.int_in_range(0..=3u64)? {
                    let at = buffer_addr(u)?;
                    let _ =
                        mem.write_slice(&discard_range(u)?, GuestAddress(at.wrapping_add(16 * i)));
                }
            }
            6 => {
                let at = u.int_in_range(0..=MEM_END)?;
                let len = u.int_in_range(1..=32usize)?;
                let _ = mem.write_slice(&aperture_fuzz::bytes(u, len)?, GuestAddress(at));
            }
            7 => {
                // Ring fields: avail flags, avail idx, used_event, used flags/idx (a driver
                // must not write the used ring, but nothing stops it).
                let field = *u.choose(&[
                    avail,
                    avail + 2,
                    avail + 4 + 2 * u64::from(size),
                    used,
                    used + 2,
                    used + 4 + 8 * u64::from(size),
                ])?;
                let value: u16 = u.arbitrary()?;
                let _ = mem.write_obj(value, GuestAddress(field));
                if field == avail + 2 {
                    driver.next_avail = value;
                }
            }
            8 => {
                let mut data = vec![0u8; aperture_fuzz::access_len(u)?];
                disk.read_config(u.arbitrary()?, &mut data);
            }
            _ => {
                device.process(&mut queue, &mem);
            }
        }
    }
    device.process(&mut queue, &mem);

    let after = image_contents(&image);
    assert_eq!(after.len(), IMAGE_LEN, "the image changed size");
    if read_only && !rng_device {
        assert!(after == before, "a read-only disk was written");
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
