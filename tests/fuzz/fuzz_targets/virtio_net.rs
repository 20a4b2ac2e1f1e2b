//! virtio-net receive and transmit paths: the fuzzer plays a hostile driver writing
//! descriptors and ring fields of the receive and transmit queues into guest RAM (with a hole
//! in it), and a host backend handing frames of any length; the real `NetEngine` serves both
//! queues, and `rx::deliver_frame` is also driven directly. A few inputs feed QEMU's stream
//! framing (`StreamFramer`) instead. Checks: a delivered frame's chains' used lengths add up
//! to the frame and its `num_buffers` is their count; nothing the backend is asked to send is
//! longer than `MAX_FRAME`; the framer never yields more than it was fed.

#![no_main]

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};

use devices::virtio::net::framing::{StreamFramer, MAX_STREAM_FRAME};
use devices::virtio::net::header::HDR_LEN;
use devices::virtio::net::rx::{deliver_frame, RxOutcome, RxScratch};
use devices::virtio::net::{NetBackend, NetEngine, MAX_FRAME};
use devices::virtio::VirtioInterrupt;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const LOW: (u64, usize) = (0, 0x8000);
const HIGH: (u64, usize) = (0x9000, 0x17000);
const MEM_END: u64 = 0x2_0000;
/// The receive queue's rings, then the transmit queue's.
const RINGS: [(u64, u64, u64); 2] = [(0x0, 0x1000, 0x2000), (0x3000, 0x4000, 0x5000)];
const DATA: u64 = 0x9000;

const N: u16 = VRING_DESC_F_NEXT as u16;
const W: u16 = VRING_DESC_F_WRITE as u16;
const I: u16 = VRING_DESC_F_INDIRECT as u16;

#[derive(Debug, Default)]
struct Link {
    to_guest: VecDeque<Vec<u8>>,
    sent: usize,
}

#[derive(Debug)]
struct FuzzBackend {
    link: Arc<Mutex<Link>>,
    vnet_hdr: bool,
}

impl NetBackend for FuzzBackend {
    fn describe(&self) -> String {
        "fuzz".into()
    }
    fn vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let Ok(mut link) = self.link.lock() else { panic!("poisoned") };
        Ok(link.to_guest.pop_front().map(|frame| {
            let n = frame.len().min(buf.len());
            buf[..n].copy_from_slice(&frame[..n]);
            n
        }))
    }
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        assert!(frame.len() <= MAX_FRAME, "a {}-byte frame to send", frame.len());
        if !self.vnet_hdr {
            assert!(frame.len() <= MAX_FRAME - HDR_LEN, "the header was not stripped");
        }
        let Ok(mut link) = self.link.lock() else { panic!("poisoned") };
        link.sent += 1;
        Ok(())
    }
    fn readable_fd(&self) -> std::os::fd::RawFd {
        -1
    }
}

struct NoInterrupt;
impl VirtioInterrupt for NoInterrupt {
    fn signal_queue(&self, _queue_index: u16) {}
    fn signal_config(&self) {}
}

struct Driver {
    ring: (u64, u64, u64),
    size: u16,
    next_desc: u16,
    next_avail: u16,
}

impl Driver {
    fn write_desc(mem: &GuestMemoryMmap, at: u64, addr: u64, len: u32, flags: u16, next: u16) {
        let mut raw = [0u8; 16];
        raw[0..8].copy_from_slice(&addr.to_le_bytes());
        raw[8..12].copy_from_slice(&len.to_le_bytes());
        raw[12..14].copy_from_slice(&flags.to_le_bytes());
        raw[14..16].copy_from_slice(&next.to_le_bytes());
        let _ = mem.write_slice(&raw, GuestAddress(at));
    }

    fn publish(&mut self, mem: &GuestMemoryMmap, head: u16) {
        let slot = self.ring.1 + 4 + 2 * u64::from(self.next_avail % self.size);
        let _ = mem.write_obj(head, GuestAddress(slot));
        self.next_avail = self.next_avail.wrapping_add(1);
        let _ = mem.write_obj(self.next_avail, GuestAddress(self.ring.1 + 2));
    }

    fn used(&self, mem: &GuestMemoryMmap, n: u16) -> (u32, u32) {
        let at = self.ring.2 + 4 + 8 * u64::from(n % self.size);
        let id: u32 = mem.read_obj(GuestAddress(at)).unwrap_or(0);
        let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap_or(0);
        (id, len)
    }
}

fn buffer_addr(u: &mut Unstructured<'_>) -> Result<u64> {
    Ok(match u.int_in_range(0..=9u8)? {
        0..=6 => DATA + u.int_in_range(0..=0xf000)?,
        7 => u.int_in_range(0..=MEM_END + 0x100)?,
        8 => *u.choose(&[0x7fff, 0x8000, 0x8fff, 0x9000, MEM_END - 1, MEM_END, u64::MAX])?,
        _ => u.arbitrary()?,
    })
}

fn buffer_len(u: &mut Unstructured<'_>) -> Result<u32> {
    Ok(if u.ratio(7u8, 8u8)? {
        *u.choose(&[0, 1, 11, 12, 13, 64, 1514, 1526, 4096, 0x8000, 65_562, u32::MAX])?
    } else {
        u.arbitrary()?
    })
}

fn queue(mem: &GuestMemoryMmap, ring: (u64, u64, u64), size: u16, event_idx: bool) -> Queue {
    let Ok(mut queue) = Queue::new(256) else { panic!("Queue::new(256)") };
    let set = queue.try_set_size(size).is_ok()
        && queue.try_set_desc_table_address(GuestAddress(ring.0)).is_ok()
        && queue.try_set_avail_ring_address(GuestAddress(ring.1)).is_ok()
        && queue.try_set_used_ring_address(GuestAddress(ring.2)).is_ok();
    assert!(set && { queue.set_ready(true); queue.set_event_idx(event_idx); queue.is_valid(mem) });
    queue
}

fn framing(u: &mut Unstructured<'_>) -> Result<()> {
    let mut framer = StreamFramer::default();
    let mut out = vec![0u8; u.int_in_range(0..=MAX_STREAM_FRAME)?];
    let (mut fed, mut taken) = (0usize, 0usize);
    while !u.is_empty() {
        let chunk = u.int_in_range(0..=9000usize)?;
        let space = framer.space();
        let n = chunk.min(space.len());
        for b in &mut space[..n] {
            *b = u.arbitrary()?;
        }
        framer.filled(n);
        fed += n;
        loop {
            match framer.next_frame(&mut out) {
                Ok(Some(len)) => {
                    assert!(len <= out.len());
                    taken += 4 + len;
                }
                Ok(None) => break,
                Err(_) => return Ok(()),
            }
        }
        // Cut frames take their whole length from the stream, so compare loosely.
        assert!(taken <= fed + MAX_STREAM_FRAME * 2, "more out than in");
    }
    Ok(())
}

fn run(u: &mut Unstructured<'_>) -> Result<()> {
    if u.ratio(1u8, 8u8)? {
        return framing(u);
    }
    let ranges = [(GuestAddress(LOW.0), LOW.1), (GuestAddress(HIGH.0), HIGH.1)];
    let Ok(mem) = GuestMemoryMmap::from_ranges(&ranges) else { panic!("guest memory") };
    let size = 1u16 << u.int_in_range(0..=8u8)?;
    let event_idx: bool = u.arbitrary()?;
    let mergeable: bool = u.arbitrary()?;
    let vnet_hdr: bool = u.arbitrary()?;
    let link = Arc::new(Mutex::new(Link::default()));
    let backend = Box::new(FuzzBackend { link: Arc::clone(&link), vnet_hdr });
    let mut engine = NetEngine::new(
        "fuzz-net".into(),
        mem.clone(),
        queue(&mem, RINGS[0], size, event_idx),
        queue(&mem, RINGS[1], size, event_idx),
        backend,
        Arc::new(NoInterrupt),
        mergeable,
    );
    let mut drivers = RINGS.map(|ring| Driver { ring, size, next_desc: 0, next_avail: 0 });
    // A second view of the receive ring for direct `deliver_frame` calls.
    let mut direct = queue(&mem, RINGS[0], size, event_idx);
    let mut scratch = RxScratch::default();

    for _ in 0..aperture_fuzz_ops() {
        if u.is_empty() {
            break;
        }
        let which = usize::from(u.ratio(1u8, 2u8)?);
        match u.int_in_range(0..=12u8)? {
            0 | 1 => {
                // A chain of 1-4 buffers, maybe indirect: rx wants writable, tx readable.
                let driver = &mut drivers[which];
                let flags = if which == 0 { W } else { 0 };
                let mut bufs = Vec::new();
                for _ in 0..u.int_in_range(1..=4u8)? {
                    let flip = if u.ratio(1u8, 8u8)? { W } else { 0 };
                    bufs.push((buffer_addr(u)?, buffer_len(u)?, flags ^ flip));
                }
                let head = driver.next_desc % size;
                if u.ratio(1u8, 4u8)? {
                    let table = DATA + u.int_in_range(0..=0x400u64)? * 16;
                    for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                        let more = if i + 1 < bufs.len() { N } else { 0 };
                        let at = table + 16 * i as u64;
                        Driver::write_desc(&mem, at, addr, len, flags | more, i as u16 + 1);
                    }
                    let at = driver.ring.0 + 16 * u64::from(head);
                    Driver::write_desc(&mem, at, table, 16 * bufs.len() as u32, I, 0);
                    driver.next_desc = (head + 1) % size;
                } else {
                    for (i, &(addr, len, flags)) in bufs.iter().enumerate() {
                        let index = driver.next_desc % size;
                        driver.next_desc = (index + 1) % size;
                        let more = if i + 1 < bufs.len() { N } else { 0 };
                        let at = driver.ring.0 + 16 * u64::from(index);
                        Driver::write_desc(&mem, at, addr, len, flags | more, driver.next_desc);
                    }
                }
                driver.publish(&mem, head);
            }
            2 => {
                // One raw descriptor.
                let driver = &drivers[which];
                let index: u16 = u.arbitrary()?;
                let (addr, len, flags, next) =
                    (buffer_addr(u)?, buffer_len(u)?, u.arbitrary::<u16>()?, u.arbitrary()?);
                let at = driver.ring.0 + 16 * u64::from(index % size);
                Driver::write_desc(&mem, at, addr, len, flags, next);
            }
            3 => {
                let head: u16 =
                    if u.ratio(7u8, 8u8)? { u.int_in_range(0..=size - 1)? } else { u.arbitrary()? };
                drivers[which].publish(&mem, head);
            }
            4 => {
                // Ring fields: avail idx and used_event, used idx.
                let ring = drivers[which].ring;
                let field = *u.choose(&[
                    ring.1,
                    ring.1 + 2,
                    ring.1 + 4 + 2 * u64::from(size),
                    ring.2 + 2,
                    ring.2 + 4 + 8 * u64::from(size),
                ])?;
                let value: u16 = u.arbitrary()?;
                let _ = mem.write_obj(value, GuestAddress(field));
                if field == ring.1 + 2 {
                    drivers[which].next_avail = value;
                }
            }
            5 | 6 => {
                let len = *u.choose(&[0, 1, 11, 12, 60, 1514, 1526, 9000, MAX_FRAME, 70_000])?;
                let Ok(mut l) = link.lock() else { panic!("poisoned") };
                l.to_guest.push_back(vec![0xab; len]);
            }
            7 => {
                // Direct delivery, checked against the used ring.
                let len = *u.choose(&[12usize, 13, 100, 1526, 5000, 65_562])?;
                let mut frame = vec![0x5a; len];
                // The queue's own used index (the guest may scribble on the ring's copy).
                let before = direct.next_used();
                let outcome = deliver_frame(&mut direct, &mem, &mut frame, mergeable, &mut scratch);
                let after = direct.next_used();
                if let RxOutcome::Delivered(count) = outcome {
                    assert_eq!(u16::from_le_bytes([frame[10], frame[11]]), count);
                    assert!(count >= 1 && (mergeable || count == 1));
                    // Used entries: first any empty returns of useless chains, then `count`.
                    let added = after.wrapping_sub(before);
                    assert!(added >= count, "{added} used entries for {count} chains");
                    let total: u64 = (after.wrapping_sub(count)..after)
                        .map(|n| u64::from(drivers[0].used(&mem, n).1))
                        .sum();
                    // Written just now, with nothing in between.
                    assert_eq!(total, len as u64, "used lengths do not add up to the frame");
                }
            }
            8 | 9 => engine.process_tx(),
            _ => {
                engine.process_rx();
            }
        }
    }
    engine.process_tx();
    engine.process_rx();
    Ok(())
}

fn aperture_fuzz_ops() -> usize {
    aperture_fuzz::MAX_OPS
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
