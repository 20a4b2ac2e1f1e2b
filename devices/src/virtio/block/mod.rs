//! virtio-blk (device type 2, virtio 1.2 §5.2): a raw image file as a guest disk.
//!
//! The VMM opens the image and hands over the [`File`]; [`Block`] serves one request queue on
//! a "virtio-blk" worker thread with positioned I/O. Requests are executed by
//! [`BlockRequestProcessor`], which tests drive directly.

mod processor;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::sync::{Arc, Mutex};

use log::{info, warn};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::GuestMemoryMmap;

pub use processor::{BlockRequestProcessor, RequestError, ID_LEN, SECTOR_SIZE, SEG_MAX};

use super::worker::{single_queue, QueueWorker, WorkerStartHook};
use super::{ActivateError, ActiveQueue, VirtioDevice, VirtioInterrupt};

/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 256;
/// The block size advertised to the guest (`blk_size`).
pub const BLOCK_SIZE: u32 = 512;

const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// `struct virtio_blk_config` up to and including `blk_size`; later fields read as 0.
const CONFIG_LEN: usize = 24;
const CONFIG_CAPACITY: usize = 0;
const CONFIG_SEG_MAX: usize = 12;
const CONFIG_BLK_SIZE: usize = 20;

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
    processor: Arc<Mutex<BlockRequestProcessor>>,
    worker: Option<QueueWorker>,
    /// Runs first on each worker thread.
    worker_start: Option<WorkerStartHook>,
}

impl Block {
    /// A disk serving `file` (opened by the VMM; opened read-only is fine when `read_only`).
    /// `id` names the disk in logs and is the guest's GET_ID answer (first 20 bytes).
    pub fn new(file: File, read_only: bool, id: &str) -> Result<Self, BlockError> {
        let processor = BlockRequestProcessor::new(file, read_only, id)?;
        let capacity_sectors = processor.capacity_sectors();
        info!(
            "virtio-blk {id}: {capacity_sectors} sectors ({} MiB){}",
            capacity_sectors * SECTOR_SIZE / (1 << 20),
            if read_only { ", read-only" } else { "" }
        );
        Ok(Self {
            id: id.to_string(),
            read_only,
            capacity_sectors,
            acked_features: 0,
            processor: Arc::new(Mutex::new(processor)),
            worker: None,
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
        put_le(&mut config, CONFIG_SEG_MAX, &SEG_MAX.to_le_bytes());
        put_le(&mut config, CONFIG_BLK_SIZE, &BLOCK_SIZE.to_le_bytes());
        config
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

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn device_features(&self) -> u64 {
        let mut features = 1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_BLK_F_FLUSH
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE;
        if self.read_only {
            features |= 1 << VIRTIO_BLK_F_RO;
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
        if self.worker.is_some() {
            warn!("virtio-blk {}: activated while running; restarting its worker", self.id);
            self.stop_worker();
        }
        let event_idx = self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let active = single_queue("virtio-blk", queues, &memory, event_idx)?;
        let worker = QueueWorker::spawn(
            "virtio-blk",
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
