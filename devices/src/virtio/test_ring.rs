//! Test doubles for virtio devices: guest memory with a split ring the test plays the driver
//! of, an interrupt recorder, and temporary image files.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::VirtioInterrupt;

/// Guest RAM size for tests (the rings sit at 0, buffers above `DATA_BASE`).
pub(crate) const MEM_SIZE: usize = 1 << 20;
/// First address free for test buffers.
pub(crate) const DATA_BASE: u64 = 0x1_0000;
/// Ring size used by the tests.
pub(crate) const RING_SIZE: u16 = 256;

/// A buffer in a test chain.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buf {
    pub(crate) addr: u64,
    pub(crate) len: u32,
    pub(crate) writable: bool,
}

/// A device-readable buffer.
pub(crate) fn readable(addr: u64, len: u32) -> Buf {
    Buf { addr, len, writable: false }
}

/// A device-writable buffer.
pub(crate) fn writable(addr: u64, len: u32) -> Buf {
    Buf { addr, len, writable: true }
}

pub(crate) fn test_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// The driver side of a split ring at guest address 0.
pub(crate) struct TestRing<'a> {
    mock: MockSplitQueue<'a, GuestMemoryMmap>,
    next_desc: u16,
    next_avail: u16,
}

impl<'a> TestRing<'a> {
    pub(crate) fn new(mem: &'a GuestMemoryMmap) -> Self {
        Self { mock: MockSplitQueue::new(mem, RING_SIZE), next_desc: 0, next_avail: 0 }
    }

    /// A ring whose tables start at guest address `at` (a second queue).
    pub(crate) fn at(mem: &'a GuestMemoryMmap, at: u64) -> Self {
        Self {
            mock: MockSplitQueue::create(mem, GuestAddress(at), RING_SIZE),
            next_desc: 0,
            next_avail: 0,
        }
    }

    /// The device's view of the ring, ready to serve.
    pub(crate) fn queue(&self) -> Queue {
        self.mock.create_queue::<Queue>().unwrap()
    }

    /// Writes a chain of linked descriptors and makes it available; returns its head.
    pub(crate) fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc;
        for (i, buf) in bufs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc = (self.next_desc + 1) % RING_SIZE;
            let mut flags = if buf.writable { VRING_DESC_F_WRITE as u16 } else { 0 };
            if i + 1 < bufs.len() {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            self.set_desc(index, Descriptor::new(buf.addr, buf.len, flags, self.next_desc));
        }
        self.publish(head);
        head
    }

    /// Writes one raw descriptor at `index`.
    pub(crate) fn set_desc(&self, index: u16, desc: Descriptor) {
        self.mock.desc_table().store(index, RawDescriptor::from(desc)).unwrap();
    }

    /// Puts `head` (any value, even a bad one) on the available ring.
    pub(crate) fn publish(&mut self, head: u16) {
        self.mock
            .avail()
            .ring()
            .ref_at(usize::from(self.next_avail % RING_SIZE))
            .unwrap()
            .store(head);
        self.next_avail = self.next_avail.wrapping_add(1);
        self.mock.avail().idx().store(self.next_avail);
    }

    /// Overwrites the available index (to model a broken driver).
    pub(crate) fn set_avail_idx(&mut self, idx: u16) {
        self.mock.avail().idx().store(idx);
    }

    /// Number of chains the device returned.
    pub(crate) fn used_count(&self) -> u16 {
        self.mock.used().idx().load()
    }

    /// Used element `n`: (head, length written).
    pub(crate) fn used(&self, n: u16) -> (u32, u32) {
        let elem = self.mock.used().ring().ref_at(usize::from(n % RING_SIZE)).unwrap().load();
        (elem.id(), elem.len())
    }
}

/// Records the interrupts a device raises.
#[derive(Debug, Default)]
pub(crate) struct RecordingInterrupt {
    queues: Mutex<Vec<u16>>,
}

impl RecordingInterrupt {
    pub(crate) fn queue_signals(&self) -> Vec<u16> {
        self.queues.lock().unwrap().clone()
    }
}

impl VirtioInterrupt for RecordingInterrupt {
    fn signal_queue(&self, queue_index: u16) {
        self.queues.lock().unwrap().push(queue_index);
    }

    fn signal_config(&self) {}
}

/// A file in the temp directory, removed on drop.
pub(crate) struct TempImage {
    pub(crate) path: PathBuf,
}

impl TempImage {
    /// A new file with `contents`.
    pub(crate) fn new(contents: &[u8]) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join(format!("aperture-virtio-test-{}-{n}.img", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        Self { path }
    }

    pub(crate) fn open_rw(&self) -> std::fs::File {
        std::fs::OpenOptions::new().read(true).write(true).open(&self.path).unwrap()
    }

    pub(crate) fn open_ro(&self) -> std::fs::File {
        std::fs::File::open(&self.path).unwrap()
    }

    pub(crate) fn contents(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Waits up to 5 s for `cond`.
pub(crate) fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    cond()
}

/// A small deterministic PRNG (xorshift64*) for fuzz-style tests.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-ish in 0..n (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One of `choices` (the choices come first so they may use `rng` too).
pub(crate) fn pick<T: Copy>(choices: &[T], rng: &mut XorShift) -> T {
    choices[rng.below(choices.len() as u64) as usize]
}
