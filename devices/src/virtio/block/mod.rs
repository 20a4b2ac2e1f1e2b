//! virtio-blk (device type 2, virtio 1.2 §5.2): a raw image file as a guest disk.
//!
//! The VMM opens the image and hands over the [`File`]; [`Block`] serves up to
//! [`MAX_QUEUES`] request queues (VIRTIO_BLK_F_MQ), each on its own "virtio-blk" worker thread
//! with vectored positioned I/O straight into guest RAM. Requests are executed by
//! [`BlockRequestProcessor`], which tests drive directly.

mod host_io;
mod processor;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::sync::{Arc, Mutex};

use log::{info, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;

pub use processor::{
    BlockRequestProcessor, RequestError, ID_LEN, MAX_RANGES, MAX_RANGE_SECTORS, SECTOR_SIZE,
    SEG_MAX, SIZE_MAX,
};

use super::worker::{ready_queue, QueueWorker, WorkerStartHook};
use super::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// Size of each request queue (1024 requests in flight, and chains up to [`SEG_MAX`] + 2).
pub const QUEUE_SIZE: u16 = 1024;
/// Most request queues (one per vCPU up to this).
pub const MAX_QUEUES: u16 = 8;
/// The block size advertised to the guest (`blk_size`).
pub const BLOCK_SIZE: u32 = 512;
/// Alignment of discard ranges the driver should use, in sectors (4 KiB: a host page).
const DISCARD_ALIGNMENT_SECTORS: u32 = 8;

/// `struct virtio_blk_config` up to and including `write_zeroes_may_unmap`; later fields
/// read as 0.
const CONFIG_LEN: usize = 60;
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SIZE_MAX: usize = 8;
const CONFIG_SEG_MAX: usize = 12;
const CONFIG_BLK_SIZE: usize = 20;
const CONFIG_NUM_QUEUES: usize = 34;
const CONFIG_MAX_DISCARD_SECTORS: usize = 36;
const CONFIG_MAX_DISCARD_SEG: usize = 40;
const CONFIG_DISCARD_SECTOR_ALIGNMENT: usize = 44;
const CONFIG_MAX_WRITE_ZEROES_SECTORS: usize = 48;
const CONFIG_MAX_WRITE_ZEROES_SEG: usize = 52;
const CONFIG_WRITE_ZEROES_MAY_UNMAP: usize = 56;

/// Errors setting up a virtio-blk disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image size could not be read.
    #[error("cannot find the size of disk image {id}: {source} (is it a readable file?)")]
    Size {
        /// Disk id (the path, usually).
        id: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The image holds no whole sector.
    #[error(
        "disk image {id} is {len} bytes, smaller than one {SECTOR_SIZE}-byte sector; give a \
         raw image of at least {SECTOR_SIZE} bytes"
    )]
    Empty {
        /// Disk id.
        id: String,
        /// Image length in bytes.
        len: u64,
    },
}

/// A virtio-blk device backed by a raw image file.
#[derive(Debug)]
pub struct Block {
    id: String,
    read_only: bool,
    capacity_sectors: u64,
    acked_features: u64,
    /// Each queue's worker serves a clone of this.
    processor: BlockRequestProcessor,
    queue_sizes: Vec<u16>,
    workers: Vec<QueueWorker>,
    /// Runs first on each worker thread.
    worker_start: Option<WorkerStartHook>,
}

impl Block {
    /// A disk serving `file` (opened by the VMM; opened read-only is fine when `read_only`).
    /// `id` names the disk in logs and is the guest's GET_ID answer (first 20 bytes).
    pub fn new(file: File, read_only: bool, id: &str) -> Result<Self, BlockError> {
        Self::with_queues(file, read_only, id, 1)
    }

    /// Like [`Block::new`] with `queues` request queues (VIRTIO_BLK_F_MQ; usually one per
    /// vCPU), clamped to 1..=[`MAX_QUEUES`].
    pub fn with_queues(
        file: File,
        read_only: bool,
        id: &str,
        queues: u16,
    ) -> Result<Self, BlockError> {
        let processor = BlockRequestProcessor::new(file, read_only, id)?;
        let queues = queues.clamp(1, MAX_QUEUES);
        let capacity_sectors = processor.capacity_sectors();
        info!(
            "virtio-blk {id}: {capacity_sectors} sectors ({} MiB), {queues} queue(s){}{}",
            capacity_sectors * SECTOR_SIZE / (1 << 20),
            if read_only { ", read-only" } else { "" },
            if processor.can_deallocate() { ", discard/write-zeroes" } else { "" }
        );
        Ok(Self {
            id: id.to_string(),
            read_only,
            capacity_sectors,
            acked_features: 0,
            processor,
            queue_sizes: vec![QUEUE_SIZE; usize::from(queues)],
            workers: Vec::new(),
            worker_start: None,
        })
    }

    /// The disk's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Whether guest writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut config = [0u8; CONFIG_LEN];
        put_le(&mut config, CONFIG_CAPACITY, &self.capacity_sectors.to_le_bytes());
        put_le(&mut config, CONFIG_SIZE_MAX, &SIZE_MAX.to_le_bytes());
        put_le(&mut config, CONFIG_SEG_MAX, &SEG_MAX.to_le_bytes());
        put_le(&mut config, CONFIG_BLK_SIZE, &BLOCK_SIZE.to_le_bytes());
        // At most MAX_QUEUES, which fits.
        let queues = self.queue_sizes.len() as u16;
        put_le(&mut config, CONFIG_NUM_QUEUES, &queues.to_le_bytes());
        if self.processor.can_deallocate() {
            for (offset, value) in [
                (CONFIG_MAX_DISCARD_SECTORS, MAX_RANGE_SECTORS),
                (CONFIG_MAX_DISCARD_SEG, MAX_RANGES),
                (CONFIG_DISCARD_SECTOR_ALIGNMENT, DISCARD_ALIGNMENT_SECTORS),
                (CONFIG_MAX_WRITE_ZEROES_SECTORS, MAX_RANGE_SECTORS),
                (CONFIG_MAX_WRITE_ZEROES_SEG, MAX_RANGES),
            ] {
                put_le(&mut config, offset, &value.to_le_bytes());
            }
            config[CONFIG_WRITE_ZEROES_MAY_UNMAP] = 1;
        }
        config
    }

    /// Runs `hook` first on every worker thread the device starts (the VMM confines the
    /// thread there).
    pub fn set_worker_start_hook(&mut self, hook: Option<WorkerStartHook>) {
        self.worker_start = hook;
    }

    fn stop_workers(&mut self) {
        for worker in self.workers.drain(..) {
            worker.stop();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn device_features(&self) -> u64 {
        let mut features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        if self.queue_sizes.len() > 1 {
            features |= 1 << VIRTIO_BLK_F_MQ;
        }
        if self.processor.can_deallocate() {
            features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        }
        features
    }

    fn ack_features(&mut self, features: u64) {
        let offered = self.device_features();
        if features & !offered != 0 {
            warn!(
                "virtio-blk {}: the driver accepted features {:#x} that were not offered; \
                 they are ignored",
                self.id,
                features & !offered
            );
        }
        self.acked_features = features & offered;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "virtio-blk {}: the driver wrote {} bytes at config offset {offset:#x}; the \
             configuration is read-only, so the write is ignored",
            self.id,
            data.len()
        );
    }

    fn activate(
        &mut self,
        memory: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<(), ActivateError> {
        if !self.workers.is_empty() {
            warn!("virtio-blk {}: activated while running; restarting its workers", self.id);
            self.stop_workers();
        }
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        if queues.is_empty() {
            return Err(ActivateError::BadSetup(format!(
                "virtio-blk {}: the driver enabled no queue; the guest driver is broken",
                self.id
            )));
        }
        let mut ready = Vec::with_capacity(queues.len());
        for mut active in queues {
            if usize::from(active.index) >= self.queue_sizes.len() {
                return Err(ActivateError::BadSetup(format!(
                    "virtio-blk {} has {} queues but the driver set up queue {}; the guest \
                     driver is broken",
                    self.id,
                    self.queue_sizes.len(),
                    active.index
                )));
            }
            ready_queue(&format!("virtio-blk {}", self.id), &mut active, &memory, event_idx)?;
            ready.push(active);
        }
        for active in ready {
            let worker = QueueWorker::spawn(
                "virtio-blk",
                Arc::new(Mutex::new(self.processor.clone())),
                memory.clone(),
                active,
                Arc::clone(&interrupt),
                self.worker_start.clone(),
            );
            match worker {
                Ok(worker) => self.workers.push(worker),
                Err(e) => {
                    self.stop_workers();
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_workers();
        self.acked_features = 0;
    }
}

fn put_le(config: &mut [u8], offset: usize, bytes: &[u8]) {
    if let Some(field) = config.get_mut(offset..offset + bytes.len()) {
        field.copy_from_slice(bytes);
    }
}

/// Copies `config[offset..]` into `data`; bytes past the end read as 0.
fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|at| usize::try_from(at).ok())
            .and_then(|at| config.get(at))
            .copied()
            .unwrap_or(0);
    }
}
