//! virtio-rng (device type 4, virtio 1.2 §5.4): fills the driver's buffers with host
//! randomness. The entropy source is injected, so tests run without /dev/urandom.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::sync::{Arc, Mutex};

use log::{debug, error, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::Queue;
use vm_memory::{Address, Bytes, GuestMemory, GuestMemoryMmap, Permissions};

use super::queue_service::{drain_queue, GuestChain};
use super::worker::{single_queue, QueueHandler, QueueWorker, WorkerStartHook};
use super::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// Most bytes given per request, so one huge buffer cannot stall the worker.
pub const MAX_BYTES_PER_REQUEST: usize = 64 * 1024;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Randomness is drawn and copied in pieces of at most this size.
const CHUNK_LEN: usize = 4096;
const URANDOM: &str = "/dev/urandom";

/// Fills a buffer with random bytes.
pub type EntropySource = Box<dyn FnMut(&mut [u8]) -> std::io::Result<()> + Send>;

/// Errors setting up virtio-rng.
#[derive(Debug, thiserror::Error)]
pub enum RngError {
    /// The host entropy device could not be opened.
    #[error(
        "cannot open {URANDOM} for virtio-rng: {0} (run without the rng device or fix {URANDOM})"
    )]
    OpenUrandom(std::io::Error),
}

/// Serves virtio-rng requests from a queue. Usable directly (without threads) in tests.
pub struct RngRequestProcessor {
    source: EntropySource,
    chunk: Vec<u8>,
    source_failed: bool,
}

impl fmt::Debug for RngRequestProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RngRequestProcessor").field("source_failed", &self.source_failed).finish()
    }
}

impl RngRequestProcessor {
    /// Draws randomness from `source`.
    pub fn new(source: EntropySource) -> Self {
        Self { source, chunk: vec![0; CHUNK_LEN], source_failed: false }
    }

    /// Serves every available request; returns whether the driver needs an interrupt.
    pub fn process_queue(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        drain_queue(queue, mem, |chain| self.serve(chain, mem))
    }

    /// Fills the chain's device-writable buffers (up to the per-request cap); returns the bytes
    /// written. Device-readable buffers carry nothing for this device and are skipped.
    fn serve(&mut self, chain: GuestChain<'_>, mem: &GuestMemoryMmap) -> u32 {
        let head = chain.head_index();
        let mut written = 0usize;
        for desc in chain.writable() {
            let len = (desc.len() as usize).min(MAX_BYTES_PER_REQUEST - written);
            let mut at = 0usize;
            while at < len {
                let n = (len - at).min(CHUNK_LEN);
                let addr = desc.addr().checked_add(at as u64);
                // Check first: randomness is not drawn for buffers that cannot take it.
                let Some(addr) = addr.filter(|&a| mem.check_range(a, n, Permissions::Write)) else {
                    warn!(
                        "virtio-rng: request {head}: a buffer at guest address {:#x} ({} bytes) \
                         is outside guest RAM; the guest driver is broken",
                        desc.addr().raw_value(),
                        desc.len()
                    );
                    return written as u32;
                };
                let buf = &mut self.chunk[..n];
                if let Err(e) = (self.source)(buf) {
                    if !self.source_failed {
                        error!(
                            "virtio-rng: the host entropy source failed: {e}; the guest gets no \
                             randomness until it works again"
                        );
                    }
                    self.source_failed = true;
                    return written as u32;
                }
                if let Err(e) = mem.write_slice(buf, addr) {
                    warn!("virtio-rng: request {head}: cannot fill a buffer: {e}");
                    return written as u32;
                }
                at += n;
                written += n;
            }
            if written >= MAX_BYTES_PER_REQUEST {
                break;
            }
        }
        if written > 0 && self.source_failed {
            debug!("virtio-rng: the entropy source works again");
            self.source_failed = false;
        }
        // At most MAX_BYTES_PER_REQUEST, which fits in u32.
        written as u32
    }
}

impl QueueHandler for RngRequestProcessor {
    fn process_queue(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        RngRequestProcessor::process_queue(self, queue, mem)
    }
}

/// A virtio-rng device.
#[derive(Debug)]
pub struct Rng {
    acked_features: u64,
    processor: Arc<Mutex<RngRequestProcessor>>,
    worker: Option<QueueWorker>,
    /// Runs first on each worker thread.
    worker_start: Option<WorkerStartHook>,
}

impl Rng {
    /// A device drawing randomness from `source`.
    pub fn new(source: EntropySource) -> Self {
        Self {
            acked_features: 0,
            processor: Arc::new(Mutex::new(RngRequestProcessor::new(source))),
            worker: None,
            worker_start: None,
        }
    }

    /// A device drawing randomness from the host's /dev/urandom (opened once, here).
    pub fn with_host_urandom() -> Result<Self, RngError> {
        let mut urandom = File::open(URANDOM).map_err(RngError::OpenUrandom)?;
        Ok(Self::new(Box::new(move |buf: &mut [u8]| urandom.read_exact(buf))))
    }

    /// Runs `hook` first on every worker thread the device starts (the VMM confines the
    /// thread there).
    pub fn set_worker_start_hook(&mut self, hook: Option<WorkerStartHook>) {
        self.worker_start = hook;
    }

    fn stop_worker(&mut self) {
        if let Some(worker) = self.worker.take() {
            worker.stop();
        }
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.device_features();
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "virtio-rng: the driver wrote {} bytes at config offset {offset:#x}, but the device \
             has no configuration; ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            warn!("virtio-rng: activated while running; restarting its worker");
            self.stop_worker();
        }
        let active = single_queue("virtio-rng", queues, &memory, false)?;
        let worker = QueueWorker::spawn(
            "virtio-rng",
            Arc::clone(&self.processor),
            memory,
            active,
            interrupt,
            self.worker_start.clone(),
        )?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.acked_features = 0;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::test_ring::*;
    use crate::virtio::QueueEvent;

    /// A source that yields 0, 1, 2, ... (mod 256) across calls.
    fn counting_source() -> EntropySource {
        let mut next = 0u8;
        Box::new(move |buf: &mut [u8]| {
            for b in buf {
                *b = next;
                next = next.wrapping_add(1);
            }
            Ok(())
        })
    }

    fn read_mem(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        buf
    }

    fn counting(from: usize, len: usize) -> Vec<u8> {
        (from..from + len).map(|i| i as u8).collect()
    }

    #[test]
    fn fills_writable_buffers_from_the_source() {
        let mem = test_memory();
        let mut ring = TestRing::new(&mem);
        let mut queue = ring.queue();
        let mut proc = RngRequestProcessor::new(counting_source());
        mem.write_slice(&[0xee; 64], GuestAddress(DATA_BASE + 0x100)).unwrap();
        ring.add_chain(&[writable(DATA_BASE, 100), readable(DATA_BASE + 0x100, 64)]);
        ring.add_chain(&[writable(DATA_BASE + 0x200, 10), writable(DATA_BASE + 0x300, 20)]);
        assert!(proc.process_queue(&mut queue, &mem));
        assert_eq!(ring.used_count(), 2);
        assert_eq!(ring.used(0), (0, 100));
        assert_eq!(ring.used(1), (2, 30));
        assert_eq!(read_mem(&mem, DATA_BASE, 100), counting(0, 100));
        assert_eq!(read_mem(&mem, DATA_BASE + 0x100, 64), [0xee; 64], "readable buffer untouched");
        assert_eq!(read_mem(&mem, DATA_BASE + 0x200, 10), counting(100, 10));
        assert_eq!(read_mem(&mem, DATA_BASE + 0x300, 20), counting(110, 20));
    }

    #[test]
    fn requests_are_capped() {
        let mem = test_memory();
        let mut ring = TestRing::new(&mem);
        let mut queue = ring.queue();
        let drawn = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&drawn);
        let mut proc = RngRequestProcessor::new(Box::new(move |buf: &mut [u8]| {
            counter.fetch_add(buf.len(), Ordering::Relaxed);
            buf.fill(7);
            Ok(())
        }));
        ring.add_chain(&[writable(DATA_BASE, 0x8_0000), writable(DATA_BASE + 0x9_0000, 16)]);
        ring.add_chain(&[writable(DATA_BASE, u32::MAX)]);
        assert!(proc.process_queue(&mut queue, &mem));
        assert_eq!(ring.used(0), (0, MAX_BYTES_PER_REQUEST as u32));
        assert_eq!(ring.used(1), (2, MAX_BYTES_PER_REQUEST as u32));
        assert_eq!(drawn.load(Ordering::Relaxed), 2 * MAX_BYTES_PER_REQUEST);
    }

    #[test]
    fn source_failures_return_what_was_written() {
        let mem = test_memory();
        let mut ring = TestRing::new(&mem);
        let mut queue = ring.queue();
        let mut calls = 0;
        let mut proc = RngRequestProcessor::new(Box::new(move |buf: &mut [u8]| {
            calls += 1;
            if calls == 2 {
                return Err(std::io::Error::other("entropy pool gone"));
            }
            buf.fill(1);
            Ok(())
        }));
        ring.add_chain(&[writable(DATA_BASE, 8192)]);
        ring.add_chain(&[writable(DATA_BASE, 16)]);
        assert!(proc.process_queue(&mut queue, &mem));
        assert_eq!(ring.used(0), (0, 4096));
        assert_eq!(ring.used(1), (1, 16), "recovers once the source works");
    }

    #[test]
    fn buffers_outside_memory_do_not_panic() {
        let mem = test_memory();
        let mut ring = TestRing::new(&mem);
        let mut queue = ring.queue();
        let mut proc = RngRequestProcessor::new(counting_source());
        ring.add_chain(&[writable(MEM_SIZE as u64 - 16, 64)]);
        ring.add_chain(&[writable(u64::MAX - 4, 64)]);
        ring.add_chain(&[readable(DATA_BASE, 64)]);
        assert!(proc.process_queue(&mut queue, &mem));
        assert_eq!(ring.used_count(), 3);
        assert_eq!(ring.used(1).1, 0);
        assert_eq!(ring.used(2).1, 0);
    }

    #[test]
    fn random_chains_never_panic() {
        let mem = test_memory();
        let mut proc = RngRequestProcessor::new(counting_source());
        let mut rng = XorShift::new(0x0123_4567);
        for _ in 0..300 {
            mem.write_slice(&vec![0u8; DATA_BASE as usize], GuestAddress(0)).unwrap();
            let mut ring = TestRing::new(&mem);
            let mut queue = ring.queue();
            for _ in 0..1 + rng.below(16) {
                let index = rng.below(u64::from(RING_SIZE)) as u16;
                let addr =
                    pick(&[rng.below(MEM_SIZE as u64), u64::MAX - 8, rng.next_u64()], &mut rng);
                let len = pick(&[0, 1, 4096, 70000, u32::MAX, rng.next_u64() as u32], &mut rng);
                let flags = (rng.next_u64() & 0x7) as u16;
                let next = pick(&[index.wrapping_add(1), index, rng.next_u64() as u16], &mut rng);
                ring.set_desc(
                    index,
                    virtio_queue::desc::split::Descriptor::new(addr, len, flags, next),
                );
            }
            for _ in 0..1 + rng.below(4) {
                ring.publish(pick(&[rng.below(16) as u16, rng.next_u64() as u16], &mut rng));
            }
            proc.process_queue(&mut queue, &mem);
        }
    }

    #[test]
    fn device_identity() {
        let rng = Rng::new(counting_source());
        assert_eq!(rng.device_type(), 4);
        assert_eq!(rng.queue_max_sizes(), &[256]);
        assert_ne!(rng.device_features() & (1 << VIRTIO_F_VERSION_1), 0);
        let mut config = [0xffu8; 8];
        rng.read_config(0, &mut config);
        assert_eq!(config, [0; 8]);
    }

    #[test]
    fn host_urandom_source_works() {
        let mut rng = Rng::with_host_urandom().unwrap();
        let mem = test_memory();
        let mut ring = TestRing::new(&mem);
        let notify = Arc::new(QueueEvent::new().unwrap());
        let interrupt = Arc::new(RecordingInterrupt::default());
        let active = ActiveQueue { index: 0, queue: ring.queue(), notify: Arc::clone(&notify) };
        rng.activate(mem.clone(), vec![active], Arc::clone(&interrupt) as Arc<dyn VirtioInterrupt>)
            .unwrap();
        ring.add_chain(&[writable(DATA_BASE, 256)]);
        notify.notify();
        assert!(wait_for(|| ring.used_count() == 1));
        assert!(wait_for(|| interrupt.queue_signals() == [0]));
        assert_eq!(ring.used(0), (0, 256));
        assert!(read_mem(&mem, DATA_BASE, 256).iter().any(|&b| b != 0));
        rng.reset();
    }

    #[test]
    fn the_worker_start_hook_runs_first_on_each_worker_thread() {
        let mut rng = Rng::new(counting_source());
        let started = Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = Arc::clone(&started);
        rng.set_worker_start_hook(Some(WorkerStartHook::new(move |name| {
            let thread = std::thread::current().name().map(str::to_string);
            record.lock().unwrap().push((name.to_string(), thread));
        })));
        let mem = test_memory();
        let ring = TestRing::new(&mem);
        let interrupt = Arc::new(RecordingInterrupt::default());
        for round in 1..=2 {
            let notify = Arc::new(QueueEvent::new().unwrap());
            let active = ActiveQueue { index: 0, queue: ring.queue(), notify };
            let interrupt = Arc::clone(&interrupt) as Arc<dyn VirtioInterrupt>;
            rng.activate(mem.clone(), vec![active], interrupt).unwrap();
            assert!(wait_for(|| started.lock().unwrap().len() == round));
            rng.reset();
        }
        let expected = ("virtio-rng".to_string(), Some("virtio-rng".to_string()));
        assert_eq!(*started.lock().unwrap(), vec![expected.clone(), expected]);
    }
}
