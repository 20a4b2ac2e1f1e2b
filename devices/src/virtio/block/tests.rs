use std::sync::Arc;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
    VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD,
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
    VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{
    VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::test_ring::*;
use crate::virtio::QueueEvent;

const HEADER: u64 = DATA_BASE;
const DATA: u64 = DATA_BASE + 0x1000;
const DATA2: u64 = DATA_BASE + 0x4_0000;
const STATUS: u64 = DATA_BASE + 0x800;
const INDIRECT_TABLE: u64 = DATA_BASE + 0x900;
/// Room for an indirect table of more than SEG_MAX + 2 entries.
const BIG_TABLE: u64 = DATA_BASE + 0x8_0000;
/// Test image: 64 sectors.
const IMAGE_LEN: usize = 64 * 512;
const POISON: u8 = 0xee;

/// An image whose every byte is a function of its offset.
fn pattern_image() -> Vec<u8> {
    (0..IMAGE_LEN).map(|i| (i % 251) as u8).collect()
}

fn processor(image: &TempImage, read_only: bool) -> BlockRequestProcessor {
    let file = if read_only { image.open_ro() } else { image.open_rw() };
    BlockRequestProcessor::new(file, read_only, "test-disk").unwrap()
}

fn write_header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
    let mut raw = [0u8; 16];
    raw[..4].copy_from_slice(&kind.to_le_bytes());
    raw[8..].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&raw, GuestAddress(HEADER)).unwrap();
}

fn status(mem: &GuestMemoryMmap) -> u32 {
    u32::from(mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap())
}

fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0; len];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    buf
}

/// Runs one request chain through a fresh ring; returns (status byte, used length).
fn run(proc: &mut BlockRequestProcessor, mem: &GuestMemoryMmap, bufs: &[Buf]) -> (u32, u32) {
    mem.write_obj(POISON, GuestAddress(STATUS)).unwrap();
    let mut ring = TestRing::new(mem);
    let mut queue = ring.queue();
    let head = ring.add_chain(bufs);
    assert!(proc.process_queue(&mut queue, mem), "a served request needs an interrupt");
    assert_eq!(ring.used_count(), 1);
    let (id, len) = ring.used(0);
    assert_eq!(id, u32::from(head));
    (status(mem), len)
}

#[test]
fn read_returns_image_data() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 3);
    let bufs = [readable(HEADER, 16), writable(DATA, 1024), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, 1025));
    assert_eq!(read_mem(&mem, DATA, 1024), pattern_image()[3 * 512..5 * 512]);
}

#[test]
fn write_then_read_round_trips() {
    let image = TempImage::new(&vec![0; IMAGE_LEN]);
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let payload: Vec<u8> = (0..1536).map(|i| (i * 7 % 256) as u8).collect();
    mem.write_slice(&payload[..512], GuestAddress(DATA)).unwrap();
    mem.write_slice(&payload[512..], GuestAddress(DATA2)).unwrap();
    write_header(&mem, VIRTIO_BLK_T_OUT, 10);
    let bufs =
        [readable(HEADER, 16), readable(DATA, 512), readable(DATA2, 1024), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, 1));
    assert_eq!(image.contents()[10 * 512..13 * 512], payload[..]);
    assert!(image.contents()[..10 * 512].iter().all(|&b| b == 0));

    write_header(&mem, VIRTIO_BLK_T_IN, 10);
    mem.write_slice(&[0u8; 1536], GuestAddress(DATA2)).unwrap();
    let bufs = [readable(HEADER, 16), writable(DATA2, 1536), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, 1537));
    assert_eq!(read_mem(&mem, DATA2, 1536), payload);
}

#[test]
fn large_transfers_cross_the_bounce_buffer() {
    // 128 KiB + 512: several bounce-buffer pieces in one descriptor.
    let len = 2 * 64 * 1024 + 512;
    let contents: Vec<u8> = (0..len + 4096).map(|i| (i % 253) as u8).collect();
    let image = TempImage::new(&contents);
    let mut proc = processor(&image, false);
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 1);
    let bufs = [readable(HEADER, 16), writable(DATA, len as u32), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, len as u32 + 1));
    assert_eq!(read_mem(&mem, DATA, len), contents[512..512 + len]);
}

#[test]
fn flush_succeeds() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let bufs = [readable(HEADER, 16), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, 1));
}

#[test]
fn get_id_returns_twenty_bytes() {
    let image = TempImage::new(&pattern_image());
    let mut proc = BlockRequestProcessor::new(image.open_rw(), false, "disk0").unwrap();
    let mem = test_memory();
    mem.write_slice(&[0xaa; 32], GuestAddress(DATA)).unwrap();
    write_header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    let bufs = [readable(HEADER, 16), writable(DATA, 20), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, 21));
    let mut expected = [0u8; 20];
    expected[..5].copy_from_slice(b"disk0");
    assert_eq!(read_mem(&mem, DATA, 20), expected);
    assert_eq!(read_mem(&mem, DATA + 20, 12), [0xaa; 12], "nothing past 20 bytes");
}

#[test]
fn long_ids_are_cut_to_twenty_bytes() {
    let image = TempImage::new(&pattern_image());
    let id = "a-very-long-disk-identifier-string";
    let mut proc = BlockRequestProcessor::new(image.open_rw(), false, id).unwrap();
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    let bufs = [readable(HEADER, 16), writable(DATA, 64), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, 21));
    assert_eq!(read_mem(&mem, DATA, 20), id.as_bytes()[..20]);
}

#[test]
fn read_only_disk_refuses_writes_and_keeps_the_image() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, true);
    let mem = test_memory();
    mem.write_slice(&[0x55; 512], GuestAddress(DATA)).unwrap();
    write_header(&mem, VIRTIO_BLK_T_OUT, 0);
    let bufs = [readable(HEADER, 16), readable(DATA, 512), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_IOERR, 1));
    assert_eq!(image.contents(), pattern_image());

    // Reads and flushes still work.
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    let bufs = [readable(HEADER, 16), writable(DATA, 512), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, 513));
    assert_eq!(read_mem(&mem, DATA, 512), pattern_image()[..512]);
    write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let bufs = [readable(HEADER, 16), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_OK, 1));
}

#[test]
fn requests_past_the_end_fail() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let capacity = proc.capacity_sectors();
    assert_eq!(capacity, 64);

    // The last sector is fine.
    write_header(&mem, VIRTIO_BLK_T_IN, capacity - 1);
    let bufs = [readable(HEADER, 16), writable(DATA, 512), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs).0, VIRTIO_BLK_S_OK);

    for (kind, sector, len) in [
        (VIRTIO_BLK_T_IN, capacity - 1, 1024),
        (VIRTIO_BLK_T_IN, capacity, 512),
        (VIRTIO_BLK_T_IN, u64::MAX, 512),
        (VIRTIO_BLK_T_IN, u64::MAX / 512, 512),
        (VIRTIO_BLK_T_OUT, capacity, 512),
        (VIRTIO_BLK_T_OUT, u64::MAX / 512 + 1, 512),
    ] {
        write_header(&mem, kind, sector);
        let data = if kind == VIRTIO_BLK_T_IN { writable(DATA, len) } else { readable(DATA, len) };
        let bufs = [readable(HEADER, 16), data, writable(STATUS, 1)];
        assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_IOERR, 1), "{kind} {sector}");
    }
    assert_eq!(image.contents(), pattern_image());
}

#[test]
fn unsupported_types_report_unsupp() {
    let image = TempImage::new(&pattern_image());
    // Read-only: no discard (11) or write-zeroes (13) either.
    let mut proc = processor(&image, true);
    assert!(!proc.can_deallocate());
    let mem = test_memory();
    for kind in [2, 11, 13, 0xffff_ffff] {
        write_header(&mem, kind, 0);
        let bufs = [readable(HEADER, 16), writable(STATUS, 1)];
        assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_UNSUPP, 1), "type {kind}");
    }
}

#[test]
fn malformed_requests_fail_with_ioerr() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let cases: Vec<(&str, u32, Vec<Buf>)> = vec![
        ("status only", VIRTIO_BLK_T_IN, vec![writable(STATUS, 1)]),
        (
            "header writable",
            VIRTIO_BLK_T_IN,
            vec![writable(HEADER, 16), writable(DATA, 512), writable(STATUS, 1)],
        ),
        (
            "header too short",
            VIRTIO_BLK_T_IN,
            vec![readable(HEADER, 8), writable(DATA, 512), writable(STATUS, 1)],
        ),
        (
            "header outside memory",
            VIRTIO_BLK_T_IN,
            vec![readable(MEM_SIZE as u64 - 8, 16), writable(DATA, 512), writable(STATUS, 1)],
        ),
        (
            "read into a readable buffer",
            VIRTIO_BLK_T_IN,
            vec![readable(HEADER, 16), readable(DATA, 512), writable(STATUS, 1)],
        ),
        (
            "write from a writable buffer",
            VIRTIO_BLK_T_OUT,
            vec![readable(HEADER, 16), writable(DATA, 512), writable(STATUS, 1)],
        ),
        (
            "partial sector",
            VIRTIO_BLK_T_IN,
            vec![readable(HEADER, 16), writable(DATA, 100), writable(STATUS, 1)],
        ),
        (
            "data outside memory",
            VIRTIO_BLK_T_IN,
            vec![readable(HEADER, 16), writable(MEM_SIZE as u64 - 512, 1024), writable(STATUS, 1)],
        ),
        (
            "data at the top of the address space",
            VIRTIO_BLK_T_OUT,
            vec![readable(HEADER, 16), readable(u64::MAX - 511, 512), writable(STATUS, 1)],
        ),
        (
            "get-id into a readable buffer",
            VIRTIO_BLK_T_GET_ID,
            vec![readable(HEADER, 16), readable(DATA, 20), writable(STATUS, 1)],
        ),
    ];
    for (what, kind, bufs) in cases {
        write_header(&mem, kind, 0);
        assert_eq!(run(&mut proc, &mem, &bufs), (VIRTIO_BLK_S_IOERR, 1), "{what}");
    }
    assert_eq!(image.contents(), pattern_image());
}

#[test]
fn requests_without_a_status_byte_are_dropped() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    let cases: Vec<(&str, Vec<Buf>)> = vec![
        ("status readable", vec![readable(HEADER, 16), writable(DATA, 512), readable(STATUS, 1)]),
        ("data last", vec![readable(HEADER, 16), readable(DATA, 512)]),
        (
            "zero-length status",
            vec![readable(HEADER, 16), writable(DATA, 512), writable(STATUS, 0)],
        ),
        ("status outside memory", vec![readable(HEADER, 16), writable(MEM_SIZE as u64, 1)]),
        (
            "status at the top of the address space",
            vec![readable(HEADER, 16), writable(u64::MAX, 2)],
        ),
    ];
    for (what, bufs) in cases {
        mem.write_slice(&[POISON; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(run(&mut proc, &mem, &bufs), (u32::from(POISON), 0), "{what}");
        assert_eq!(read_mem(&mem, DATA, 512), [POISON; 512], "{what}: no data moved");
    }
}

#[test]
fn a_status_descriptor_longer_than_one_byte_gets_its_last_byte() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    mem.write_obj(POISON, GuestAddress(STATUS + 3)).unwrap();
    let bufs = [readable(HEADER, 16), writable(STATUS, 4)];
    let (first, len) = run(&mut proc, &mem, &bufs);
    assert_eq!((first, len), (u32::from(POISON), 1));
    assert_eq!(u32::from(mem.read_obj::<u8>(GuestAddress(STATUS + 3)).unwrap()), VIRTIO_BLK_S_OK);
}

#[test]
fn looping_chains_are_dropped() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    let mut ring = TestRing::new(&mem);
    let mut queue = ring.queue();
    let next = VRING_DESC_F_NEXT as u16;
    ring.set_desc(0, Descriptor::new(HEADER, 16, next, 1));
    ring.set_desc(1, Descriptor::new(STATUS, 1, next | VRING_DESC_F_WRITE as u16, 0));
    ring.publish(0);
    assert!(proc.process_queue(&mut queue, &mem));
    assert_eq!(ring.used(0), (0, 0));
}

#[test]
fn chains_through_indirect_tables_work() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 2);
    let w = VRING_DESC_F_WRITE as u16;
    let n = VRING_DESC_F_NEXT as u16;
    let table = [
        Descriptor::new(HEADER, 16, n, 1),
        Descriptor::new(DATA, 512, w | n, 2),
        Descriptor::new(STATUS, 1, w, 0),
    ];
    for (i, desc) in table.iter().enumerate() {
        mem.write_obj(RawDescriptor::from(*desc), GuestAddress(INDIRECT_TABLE + 16 * i as u64))
            .unwrap();
    }
    let mut ring = TestRing::new(&mem);
    let mut queue = ring.queue();
    ring.set_desc(0, Descriptor::new(INDIRECT_TABLE, 48, VRING_DESC_F_INDIRECT as u16, 0));
    ring.publish(0);
    assert!(proc.process_queue(&mut queue, &mem));
    assert_eq!(ring.used(0), (0, 513));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(read_mem(&mem, DATA, 512), pattern_image()[1024..1536]);
}

#[test]
fn chains_longer_than_seg_max_fail() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 0);
    // Header, SEG_MAX + 1 data buffers of one sector, status: one data buffer too many.
    let count = SEG_MAX as u64 + 3;
    let w = VRING_DESC_F_WRITE as u16;
    let n = VRING_DESC_F_NEXT as u16;
    for i in 0..count {
        let desc = match i {
            0 => Descriptor::new(HEADER, 16, n, 1),
            i if i == count - 1 => Descriptor::new(STATUS, 1, w, 0),
            i => Descriptor::new(DATA, 512, w | n, i as u16 + 1),
        };
        mem.write_obj(RawDescriptor::from(desc), GuestAddress(BIG_TABLE + 16 * i)).unwrap();
    }
    let mut ring = TestRing::new(&mem);
    let mut queue = ring.queue();
    ring.set_desc(
        0,
        Descriptor::new(BIG_TABLE, 16 * count as u32, VRING_DESC_F_INDIRECT as u16, 0),
    );
    ring.publish(0);
    assert!(proc.process_queue(&mut queue, &mem));
    assert_eq!(ring.used(0), (0, 1));
    assert_eq!(status(&mem), VIRTIO_BLK_S_IOERR);
}

#[test]
fn several_requests_in_one_pass() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let mut ring = TestRing::new(&mem);
    let mut queue = ring.queue();
    // Three flushes sharing a header, each with its own status byte.
    write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    for i in 0..3 {
        ring.add_chain(&[readable(HEADER, 16), writable(STATUS + 1 + i, 1)]);
    }
    assert!(proc.process_queue(&mut queue, &mem));
    assert_eq!(ring.used_count(), 3);
    assert_eq!(ring.used(2), (4, 1));
    assert!(!proc.process_queue(&mut queue, &mem), "nothing new, no interrupt");
}

#[test]
fn a_broken_available_index_does_not_hang() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let mut ring = TestRing::new(&mem);
    let mut queue = ring.queue();
    ring.set_avail_idx(RING_SIZE + 5);
    assert!(!proc.process_queue(&mut queue, &mem));
    assert_eq!(ring.used_count(), 0);
}

#[test]
fn bad_head_indices_do_not_panic() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let mut ring = TestRing::new(&mem);
    let mut queue = ring.queue();
    ring.publish(RING_SIZE);
    ring.publish(u16::MAX);
    proc.process_queue(&mut queue, &mem);
    assert_eq!(ring.used_count(), 0, "out-of-range heads cannot be returned");
}

#[test]
fn random_chains_never_panic() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let mut rng = XorShift::new(0x5eed_b10c);
    let capacity = proc.capacity_sectors();
    let mut junk = vec![0u8; MEM_SIZE - DATA_BASE as usize];
    for round in 0..400 {
        // Fresh rings, random contents everywhere else.
        mem.write_slice(&vec![0u8; DATA_BASE as usize], GuestAddress(0)).unwrap();
        if round % 16 == 0 {
            for b in junk.iter_mut() {
                *b = rng.next_u64() as u8;
            }
            mem.write_slice(&junk, GuestAddress(DATA_BASE)).unwrap();
        }
        let mut ring = TestRing::new(&mem);
        let mut queue = ring.queue();
        queue.set_event_idx(rng.below(2) == 0);
        for _ in 0..rng.below(8) {
            let kind = pick(&[0u32, 1, 4, 8, 2, rng.next_u64() as u32], &mut rng);
            let sector = pick(&[0, 1, capacity - 1, capacity, u64::MAX, rng.next_u64()], &mut rng);
            let mut raw = [0u8; 16];
            raw[..4].copy_from_slice(&kind.to_le_bytes());
            raw[8..].copy_from_slice(&sector.to_le_bytes());
            let at = DATA_BASE + rng.below(MEM_SIZE as u64 - DATA_BASE - 16);
            mem.write_slice(&raw, GuestAddress(at)).unwrap();
        }
        for _ in 0..1 + rng.below(24) {
            let index = rng.below(u64::from(RING_SIZE) + 4) as u16;
            let addr = pick(
                &[
                    DATA_BASE + rng.below(MEM_SIZE as u64 - DATA_BASE),
                    rng.below(MEM_SIZE as u64),
                    MEM_SIZE as u64 - 1,
                    MEM_SIZE as u64,
                    u64::MAX - rng.below(4096),
                    rng.next_u64(),
                ],
                &mut rng,
            );
            let len = pick(
                &[0, 1, 15, 16, 17, 512, 513, 4096, 65536, 48, u32::MAX, rng.next_u64() as u32],
                &mut rng,
            );
            let flags = (rng.next_u64() & 0x7) as u16;
            let next = pick(
                &[index.wrapping_add(1), index, 0, rng.below(24) as u16, rng.next_u64() as u16],
                &mut rng,
            );
            ring.set_desc(index % RING_SIZE, Descriptor::new(addr, len, flags, next));
        }
        for _ in 0..1 + rng.below(6) {
            ring.publish(pick(
                &[
                    rng.below(24) as u16,
                    rng.below(u64::from(RING_SIZE)) as u16,
                    rng.next_u64() as u16,
                ],
                &mut rng,
            ));
        }
        if rng.below(10) == 0 {
            ring.set_avail_idx(rng.next_u64() as u16);
        }
        proc.process_queue(&mut queue, &mem);
        assert_eq!(image.contents().len(), IMAGE_LEN, "round {round}: the image never grows");
    }
}

#[test]
fn config_space_layout() {
    let image = TempImage::new(&vec![0; 3 * 1024 * 1024]);
    let block = Block::new(image.open_rw(), false, "cfg").unwrap();
    let mut config = [0xffu8; 64];
    block.read_config(0, &mut config);
    let u32_at = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
    assert_eq!(config[0..8], (6144u64).to_le_bytes(), "capacity in sectors");
    assert_eq!(u32_at(8), SIZE_MAX, "size_max");
    assert_eq!(u32_at(12), SEG_MAX, "seg_max");
    assert_eq!(u32_at(20), 512, "blk_size");
    assert_eq!(config[24..34], [0; 10], "topology and writeback unused");
    assert_eq!(config[34..36], 1u16.to_le_bytes(), "num_queues");
    assert_eq!(u32_at(36), MAX_RANGE_SECTORS, "max_discard_sectors");
    assert_eq!(u32_at(40), MAX_RANGES, "max_discard_seg");
    assert_eq!(u32_at(44), 8, "discard_sector_alignment");
    assert_eq!(u32_at(48), MAX_RANGE_SECTORS, "max_write_zeroes_sectors");
    assert_eq!(u32_at(52), MAX_RANGES, "max_write_zeroes_seg");
    assert_eq!(config[56], 1, "write_zeroes_may_unmap");
    assert_eq!(config[57..], [0; 7], "later fields read as zero");
    // A read-only disk advertises no discard or write-zeroes limits.
    let ro = Block::new(image.open_ro(), true, "cfg-ro").unwrap();
    ro.read_config(0, &mut config);
    assert_eq!(config[36..60], [0; 24]);

    let mut word = [0u8; 4];
    block.read_config(20, &mut word);
    assert_eq!(u32::from_le_bytes(word), 512);
    let mut byte = [0xffu8; 1];
    block.read_config(1, &mut byte);
    assert_eq!(byte, [0x18]);
    block.read_config(u64::MAX, &mut word);
    assert_eq!(word, [0; 4]);
}

#[test]
fn features_and_identity() {
    let image = TempImage::new(&pattern_image());
    let rw = Block::new(image.open_rw(), false, "rw").unwrap();
    let ro = Block::new(image.open_ro(), true, "ro").unwrap();
    assert_eq!(rw.device_type(), 2);
    assert_eq!(rw.queue_max_sizes(), &[1024]);
    for bit in [
        VIRTIO_F_VERSION_1,
        VIRTIO_BLK_F_FLUSH,
        VIRTIO_BLK_F_SEG_MAX,
        VIRTIO_BLK_F_SIZE_MAX,
        VIRTIO_BLK_F_BLK_SIZE,
        VIRTIO_RING_F_INDIRECT_DESC,
        VIRTIO_RING_F_EVENT_IDX,
    ] {
        assert_ne!(rw.device_features() & (1 << bit), 0, "bit {bit}");
        assert_ne!(ro.device_features() & (1 << bit), 0, "bit {bit}");
    }
    assert_eq!(rw.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_ne!(ro.device_features() & (1 << VIRTIO_BLK_F_RO), 0);
    // Discard and write-zeroes on a writable regular file only; one queue: no MQ.
    let dealloc = 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
    assert_eq!(rw.device_features() & dealloc, dealloc);
    assert_eq!(ro.device_features() & dealloc, 0);
    assert_eq!(rw.device_features() & (1 << VIRTIO_BLK_F_MQ), 0);
    assert!(ro.read_only() && !rw.read_only());
    assert_eq!(rw.capacity_sectors(), 64);
    assert_eq!(rw.id(), "rw");
}

#[test]
fn images_smaller_than_a_sector_are_refused() {
    let image = TempImage::new(&[0; 100]);
    let err = Block::new(image.open_rw(), false, "tiny").unwrap_err();
    assert!(matches!(err, BlockError::Empty { len: 100, .. }), "{err}");
    assert!(err.to_string().contains("tiny"));
}

#[test]
fn odd_sized_images_hide_the_partial_sector() {
    let image = TempImage::new(&[0; 1000]);
    let block = Block::new(image.open_rw(), false, "odd").unwrap();
    assert_eq!(block.capacity_sectors(), 1);
}

/// Hands the device its queue through the real worker thread.
fn activate(
    block: &mut Block,
    mem: &GuestMemoryMmap,
    ring: &TestRing<'_>,
    interrupt: &Arc<RecordingInterrupt>,
) -> Arc<QueueEvent> {
    let notify = Arc::new(QueueEvent::new().unwrap());
    let active = ActiveQueue { index: 0, queue: ring.queue(), notify: Arc::clone(&notify) };
    let interrupt: Arc<dyn VirtioInterrupt> = Arc::clone(interrupt) as Arc<dyn VirtioInterrupt>;
    block.activate(mem.clone(), vec![active], interrupt).unwrap();
    notify
}

#[test]
fn worker_serves_requests_and_stops_on_reset() {
    let image = TempImage::new(&vec![0; IMAGE_LEN]);
    let mut block = Block::new(image.open_rw(), false, "worker").unwrap();
    block.ack_features(block.device_features());
    let mem = test_memory();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let mut ring = TestRing::new(&mem);
    let notify = activate(&mut block, &mem, &ring, &interrupt);

    mem.write_slice(&[0x42; 512], GuestAddress(DATA)).unwrap();
    write_header(&mem, VIRTIO_BLK_T_OUT, 5);
    ring.add_chain(&[readable(HEADER, 16), readable(DATA, 512), writable(STATUS, 1)]);
    notify.notify();
    assert!(wait_for(|| ring.used_count() == 1));
    assert!(wait_for(|| interrupt.queue_signals() == [0]));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    assert_eq!(image.contents()[5 * 512..6 * 512], [0x42; 512]);

    block.reset();
    // After reset the device is stopped; a fresh activation reuses the same image.
    let mut ring = TestRing::new(&mem);
    mem.write_slice(&[0u8; 0x3000], GuestAddress(0)).unwrap();
    write_header(&mem, VIRTIO_BLK_T_IN, 5);
    ring.add_chain(&[readable(HEADER, 16), writable(DATA2, 512), writable(STATUS, 1)]);
    let _notify = activate(&mut block, &mem, &ring, &interrupt);
    // No notify: the worker serves what is already queued when it starts.
    assert!(wait_for(|| ring.used_count() == 1));
    assert_eq!(read_mem(&mem, DATA2, 512), [0x42; 512]);
    drop(block);
}

#[test]
fn activation_checks_the_queues() {
    let image = TempImage::new(&pattern_image());
    let mut block = Block::new(image.open_rw(), false, "bad").unwrap();
    let mem = test_memory();
    let interrupt: Arc<dyn VirtioInterrupt> = Arc::new(RecordingInterrupt::default());
    let ring = TestRing::new(&mem);
    let err = block.activate(mem.clone(), vec![], Arc::clone(&interrupt)).unwrap_err();
    assert!(err.to_string().contains("virtio-blk"), "{err}");

    let mut queue = ring.queue();
    queue.set_ready(false);
    let notify = Arc::new(QueueEvent::new().unwrap());
    let active = ActiveQueue { index: 0, queue, notify };
    assert!(block.activate(mem.clone(), vec![active], interrupt).is_err());
    block.reset();
}

#[test]
fn mutated_valid_requests_never_panic() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let mut rng = XorShift::new(0xb10c_f022);
    let capacity = proc.capacity_sectors();
    let mut outcomes = std::collections::BTreeMap::new();
    for _ in 0..600 {
        mem.write_slice(&vec![0u8; DATA_BASE as usize], GuestAddress(0)).unwrap();
        let kind = pick(
            &[VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, 3],
            &mut rng,
        );
        let sector = pick(&[0, rng.below(capacity), capacity - 1, capacity, u64::MAX], &mut rng);
        write_header(&mem, kind, sector);
        let data_writable = kind != VIRTIO_BLK_T_OUT;
        let mut bufs = vec![readable(HEADER, 16)];
        for i in 0..rng.below(4) {
            let len = pick(&[512, 1024, 20, 0, 4096], &mut rng);
            bufs.push(Buf { addr: DATA + i * 0x2000, len, writable: data_writable });
        }
        bufs.push(writable(STATUS, 1));
        // One or two mutations.
        for _ in 0..rng.below(3) {
            let i = rng.below(bufs.len() as u64) as usize;
            match rng.below(4) {
                0 => bufs[i].writable = !bufs[i].writable,
                1 => bufs[i].len = pick(&[0, 1, 15, 511, 513, u32::MAX], &mut rng),
                2 => {
                    bufs[i].addr = pick(&[MEM_SIZE as u64 - 1, MEM_SIZE as u64, u64::MAX], &mut rng)
                }
                _ => {
                    bufs.remove(i);
                }
            }
        }
        if bufs.is_empty() {
            continue;
        }
        mem.write_obj(POISON, GuestAddress(STATUS)).unwrap();
        let mut ring = TestRing::new(&mem);
        let mut queue = ring.queue();
        ring.add_chain(&bufs);
        proc.process_queue(&mut queue, &mem);
        assert_eq!(ring.used_count(), 1);
        *outcomes.entry(status(&mem)).or_insert(0) += 1;
        assert_eq!(image.contents().len(), IMAGE_LEN);
    }
    // The mutations reach every outcome: OK, IOERR, UNSUPP and dropped (status untouched).
    for status in [VIRTIO_BLK_S_OK, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP, u32::from(POISON)] {
        assert!(outcomes.get(&status).copied().unwrap_or(0) > 10, "{outcomes:?}");
    }
}

/// A discard/write-zeroes range as the driver lays it out.
fn range(sector: u64, sectors: u32, flags: u32) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&sector.to_le_bytes());
    raw[8..12].copy_from_slice(&sectors.to_le_bytes());
    raw[12..].copy_from_slice(&flags.to_le_bytes());
    raw
}

/// Runs a discard or write-zeroes request with `ranges` at DATA.
fn run_ranges(
    proc: &mut BlockRequestProcessor,
    mem: &GuestMemoryMmap,
    kind: u32,
    ranges: &[[u8; 16]],
) -> (u32, u32) {
    write_header(mem, kind, 0);
    let payload: Vec<u8> = ranges.concat();
    mem.write_slice(&payload, GuestAddress(DATA)).unwrap();
    let bufs = [readable(HEADER, 16), readable(DATA, payload.len() as u32), writable(STATUS, 1)];
    run(proc, mem, &bufs)
}

#[test]
fn discard_and_write_zeroes_zero_their_ranges() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    assert!(proc.can_deallocate());
    let mem = test_memory();
    assert_eq!(run_ranges(&mut proc, &mem, VIRTIO_BLK_T_DISCARD, &[range(8, 8, 0)]), (0, 1));
    // Two ranges; the second may unmap.
    let zeroes = [range(1, 1, 0), range(40, 3, 1)];
    assert_eq!(run_ranges(&mut proc, &mem, VIRTIO_BLK_T_WRITE_ZEROES, &zeroes), (0, 1));
    let contents = image.contents();
    assert_eq!(contents.len(), IMAGE_LEN, "the image keeps its size");
    let mut expected = pattern_image();
    // A discard only promises zeros where the host punched a hole; this host's file
    // systems (tmpfs, ext4, xfs, btrfs) do.
    for (from, to) in [(8, 16), (1, 2), (40, 43)] {
        expected[from * 512..to * 512].fill(0);
    }
    assert_eq!(contents, expected);
}

#[test]
fn bad_discard_and_write_zeroes_requests_are_refused() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    let mem = test_memory();
    let ioerr = (VIRTIO_BLK_S_IOERR, 1);
    for kind in [VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_WRITE_ZEROES] {
        // Past the end, overflowing, too long, no ranges, too many ranges.
        assert_eq!(run_ranges(&mut proc, &mem, kind, &[range(60, 5, 0)]), ioerr);
        assert_eq!(run_ranges(&mut proc, &mem, kind, &[range(u64::MAX / 256, 1, 0)]), ioerr);
        let too_long = range(0, MAX_RANGE_SECTORS + 1, 0);
        assert_eq!(run_ranges(&mut proc, &mem, kind, &[too_long]), ioerr);
        assert_eq!(run_ranges(&mut proc, &mem, kind, &[]), ioerr);
        let many = vec![range(0, 1, 0); MAX_RANGES as usize + 1];
        assert_eq!(run_ranges(&mut proc, &mem, kind, &many), ioerr);
        // A partial range (15 bytes), and a range in a device-writable buffer.
        write_header(&mem, kind, 0);
        let bufs = [readable(HEADER, 16), readable(DATA, 15), writable(STATUS, 1)];
        assert_eq!(run(&mut proc, &mem, &bufs), ioerr);
        let bufs = [readable(HEADER, 16), writable(DATA, 16), writable(STATUS, 1)];
        assert_eq!(run(&mut proc, &mem, &bufs), ioerr);
        // Flags the request type does not have.
        assert_eq!(run_ranges(&mut proc, &mem, kind, &[range(0, 1, 2)]), (VIRTIO_BLK_S_UNSUPP, 1));
    }
    assert_eq!(
        run_ranges(&mut proc, &mem, VIRTIO_BLK_T_DISCARD, &[range(0, 1, 1)]),
        (VIRTIO_BLK_S_UNSUPP, 1),
        "discard has no unmap flag"
    );
    assert_eq!(image.contents(), pattern_image(), "nothing was zeroed");
}

/// Guest RAM of two adjacent regions (a buffer can span them) with room for 1 MiB requests.
fn big_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 0x10_0000),
        (GuestAddress(0x10_0000), 0x20_0000),
    ])
    .unwrap()
}

/// A request of `pages` scattered 4 KiB buffers (in reverse order, the first one spanning
/// the two RAM regions) through an indirect table: what Linux sends for a 1 MiB direct read.
fn scattered_request(mem: &GuestMemoryMmap, kind: u32, sector: u64, pages: u64) -> Vec<u64> {
    write_header(mem, kind, sector);
    let flags = if kind == VIRTIO_BLK_T_IN { VRING_DESC_F_WRITE as u16 } else { 0 };
    let n = VRING_DESC_F_NEXT as u16;
    let addrs: Vec<u64> = (0..pages)
        .map(|i| if i == 0 { 0x10_0000 - 0x800 } else { 0x11_0000 + (pages - i) * 0x1000 })
        .collect();
    let mut table = vec![Descriptor::new(HEADER, 16, n, 1)];
    for (i, &addr) in addrs.iter().enumerate() {
        table.push(Descriptor::new(addr, 4096, flags | n, i as u16 + 2));
    }
    table.push(Descriptor::new(STATUS, 1, VRING_DESC_F_WRITE as u16, 0));
    for (i, desc) in table.iter().enumerate() {
        mem.write_obj(RawDescriptor::from(*desc), GuestAddress(BIG_TABLE + 16 * i as u64)).unwrap();
    }
    addrs
}

#[test]
fn one_mib_scattered_requests_go_straight_to_guest_memory() {
    let pages = 256u64;
    let contents: Vec<u8> = (0..2 << 20).map(|i: usize| ((i % 251) ^ (i >> 12)) as u8).collect();
    let image = TempImage::new(&contents);
    let mut proc = processor(&image, false);
    let mem = big_memory();
    let addrs = scattered_request(&mem, VIRTIO_BLK_T_IN, 16, pages);
    let table_len = 16 * (pages as u32 + 2);
    let mut ring = TestRing::new(&mem);
    let mut queue = ring.queue();
    ring.set_desc(0, Descriptor::new(BIG_TABLE, table_len, VRING_DESC_F_INDIRECT as u16, 0));
    ring.publish(0);
    assert!(proc.process_queue(&mut queue, &mem));
    assert_eq!(ring.used(0), (0, (1 << 20) + 1));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    for (i, &addr) in addrs.iter().enumerate() {
        let at = 16 * 512 + i * 4096;
        assert_eq!(read_mem(&mem, addr, 4096), contents[at..at + 4096], "page {i}");
    }

    // And back out to another place on the disk, from the same scattered pages.
    scattered_request(&mem, VIRTIO_BLK_T_OUT, 2048, pages);
    ring.set_desc(1, Descriptor::new(BIG_TABLE, table_len, VRING_DESC_F_INDIRECT as u16, 0));
    ring.publish(1);
    assert!(proc.process_queue(&mut queue, &mem));
    assert_eq!(ring.used(1), (1, 1));
    assert_eq!(status(&mem), VIRTIO_BLK_S_OK);
    let written = image.contents();
    assert_eq!(written[1 << 20..2 << 20], contents[16 * 512..16 * 512 + (1 << 20)]);
    assert_eq!(written[..1 << 20], contents[..1 << 20]);
}

#[test]
fn reads_past_the_end_of_a_shrunk_image_fail() {
    let image = TempImage::new(&pattern_image());
    let mut proc = processor(&image, false);
    // Someone truncated the image under the VM: the read hits the end of the file.
    image.open_rw().set_len(4 * 512).unwrap();
    let mem = test_memory();
    write_header(&mem, VIRTIO_BLK_T_IN, 3);
    let bufs = [readable(HEADER, 16), writable(DATA, 1024), writable(STATUS, 1)];
    assert_eq!(run(&mut proc, &mem, &bufs).0, VIRTIO_BLK_S_IOERR);
}

#[test]
fn multi_queue_disks_serve_each_queue_on_its_own_worker() {
    let image = TempImage::new(&pattern_image());
    let mut block = Block::with_queues(image.open_rw(), false, "mq", 2).unwrap();
    assert_eq!(block.queue_max_sizes(), &[1024, 1024]);
    assert_ne!(block.device_features() & (1 << VIRTIO_BLK_F_MQ), 0);
    let mut num_queues = [0u8; 2];
    block.read_config(34, &mut num_queues);
    assert_eq!(u16::from_le_bytes(num_queues), 2);
    // Clamped to the device's limit.
    let many = Block::with_queues(image.open_rw(), false, "many", 100).unwrap();
    assert_eq!(many.queue_max_sizes().len(), usize::from(MAX_QUEUES));

    block.ack_features(block.device_features());
    let mem = test_memory();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let mut rings = [TestRing::new(&mem), TestRing::at(&mem, 0x8000)];
    let doorbells: Vec<Arc<QueueEvent>> =
        (0..2).map(|_| Arc::new(QueueEvent::new().unwrap())).collect();
    let queues = (0..2)
        .map(|i| ActiveQueue {
            index: i as u16,
            queue: rings[i].queue(),
            notify: Arc::clone(&doorbells[i]),
        })
        .collect();
    let signal: Arc<dyn VirtioInterrupt> = Arc::clone(&interrupt) as Arc<dyn VirtioInterrupt>;
    block.activate(mem.clone(), queues, signal).unwrap();

    write_header(&mem, VIRTIO_BLK_T_IN, 7);
    rings[1].add_chain(&[readable(HEADER, 16), writable(DATA, 512), writable(STATUS, 1)]);
    doorbells[1].notify();
    assert!(wait_for(|| rings[1].used_count() == 1));
    assert!(wait_for(|| interrupt.queue_signals() == [1]), "queue 1's interrupt only");
    assert_eq!(rings[0].used_count(), 0);
    assert_eq!(read_mem(&mem, DATA, 512), pattern_image()[7 * 512..8 * 512]);

    // A queue the device does not have is refused.
    block.reset();
    let bad = ActiveQueue { index: 2, queue: rings[0].queue(), notify: Arc::clone(&doorbells[0]) };
    let signal: Arc<dyn VirtioInterrupt> = Arc::clone(&interrupt) as Arc<dyn VirtioInterrupt>;
    let err = block.activate(mem.clone(), vec![bad], signal).unwrap_err();
    assert!(err.to_string().contains("queue 2"), "{err}");
}

#[test]
fn a_batch_of_requests_raises_one_interrupt() {
    let image = TempImage::new(&pattern_image());
    let mut block = Block::new(image.open_rw(), false, "batch").unwrap();
    block.ack_features(block.device_features());
    let mem = test_memory();
    let interrupt = Arc::new(RecordingInterrupt::default());
    let mut ring = TestRing::new(&mem);
    // Queued before the worker starts: it serves all of them in one pass.
    write_header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    for i in 0..8 {
        ring.add_chain(&[readable(HEADER, 16), writable(STATUS + 1 + i, 1)]);
    }
    let _doorbell = activate(&mut block, &mem, &ring, &interrupt);
    assert!(wait_for(|| ring.used_count() == 8));
    assert!(wait_for(|| !interrupt.queue_signals().is_empty()));
    block.reset();
    assert_eq!(interrupt.queue_signals(), [0], "one interrupt for the batch");
}
