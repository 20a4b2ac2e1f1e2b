//! The common configuration structure (virtio 1.2 §4.1.4.3): feature negotiation, device
//! status and queue setup.
//!
//! Accesses of any width and alignment work the same way: a read copies bytes out of an image
//! of the registers; a write is merged into that image and every field it touched is applied
//! in offset order (so queue_select applies before the queue fields of the same write).

use log::debug;

use super::interrupt::{VirtioPciInterrupt, VIRTIO_MSI_NO_VECTOR};

/// Bytes of the common configuration structure (virtio 1.0 layout, up to queue_device).
pub const COMMON_CFG_LEN: u64 = 0x38;

pub(super) const DEVICE_FEATURE_SELECT: u64 = 0x00;
pub(super) const DEVICE_FEATURE: u64 = 0x04;
pub(super) const DRIVER_FEATURE_SELECT: u64 = 0x08;
pub(super) const DRIVER_FEATURE: u64 = 0x0c;
pub(super) const CONFIG_MSIX_VECTOR: u64 = 0x10;
pub(super) const NUM_QUEUES: u64 = 0x12;
pub(super) const DEVICE_STATUS: u64 = 0x14;
pub(super) const CONFIG_GENERATION: u64 = 0x15;
pub(super) const QUEUE_SELECT: u64 = 0x16;
pub(super) const QUEUE_SIZE: u64 = 0x18;
pub(super) const QUEUE_MSIX_VECTOR: u64 = 0x1a;
pub(super) const QUEUE_ENABLE: u64 = 0x1c;
pub(super) const QUEUE_NOTIFY_OFF: u64 = 0x1e;
pub(super) const QUEUE_DESC: u64 = 0x20;
pub(super) const QUEUE_DRIVER: u64 = 0x28;
pub(super) const QUEUE_DEVICE: u64 = 0x30;

/// Every field as (offset, width), in offset order.
const FIELDS: [(u64, usize); 16] = [
    (DEVICE_FEATURE_SELECT, 4),
    (DEVICE_FEATURE, 4),
    (DRIVER_FEATURE_SELECT, 4),
    (DRIVER_FEATURE, 4),
    (CONFIG_MSIX_VECTOR, 2),
    (NUM_QUEUES, 2),
    (DEVICE_STATUS, 1),
    (CONFIG_GENERATION, 1),
    (QUEUE_SELECT, 2),
    (QUEUE_SIZE, 2),
    (QUEUE_MSIX_VECTOR, 2),
    (QUEUE_ENABLE, 2),
    (QUEUE_NOTIFY_OFF, 2),
    (QUEUE_DESC, 8),
    (QUEUE_DRIVER, 8),
    (QUEUE_DEVICE, 8),
];

/// Device status: features negotiated.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the driver is ready.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;

/// One queue as the driver configured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueueSetup {
    pub(crate) max_size: u16,
    pub(crate) size: u16,
    pub(crate) enabled: bool,
    pub(crate) desc: u64,
    pub(crate) driver: u64,
    pub(crate) device: u64,
}

impl QueueSetup {
    fn new(max_size: u16) -> Self {
        Self { max_size, size: max_size, enabled: false, desc: 0, driver: 0, device: 0 }
    }
}

/// The common configuration registers of one device.
#[derive(Debug)]
pub(crate) struct CommonConfig {
    device_features: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    pub(crate) driver_features: u64,
    pub(crate) status: u8,
    queue_select: u16,
    pub(crate) queues: Vec<QueueSetup>,
}

impl CommonConfig {
    pub(crate) fn new(device_features: u64, queue_max_sizes: &[u16]) -> Self {
        Self {
            device_features,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            queues: queue_max_sizes.iter().map(|&max| QueueSetup::new(max)).collect(),
        }
    }

    /// Back to the state after a virtio reset.
    pub(crate) fn reset(&mut self) {
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
        for queue in &mut self.queues {
            *queue = QueueSetup::new(queue.max_size);
        }
    }

    pub(crate) fn device_features(&self) -> u64 {
        self.device_features
    }

    fn selected(&self) -> Option<&QueueSetup> {
        self.queues.get(usize::from(self.queue_select))
    }

    fn image(&self, interrupt: &VirtioPciInterrupt) -> [u8; COMMON_CFG_LEN as usize] {
        let mut image = [0u8; COMMON_CFG_LEN as usize];
        let mut put = |at: u64, bytes: &[u8]| {
            let at = at as usize;
            image[at..at + bytes.len()].copy_from_slice(bytes);
        };
        let feature_word = |features: u64, select: u32| match select {
            0 => features as u32,
            1 => (features >> 32) as u32,
            _ => 0,
        };
        put(DEVICE_FEATURE_SELECT, &self.device_feature_select.to_le_bytes());
        let device_word = feature_word(self.device_features, self.device_feature_select);
        put(DEVICE_FEATURE, &device_word.to_le_bytes());
        put(DRIVER_FEATURE_SELECT, &self.driver_feature_select.to_le_bytes());
        let driver_word = feature_word(self.driver_features, self.driver_feature_select);
        put(DRIVER_FEATURE, &driver_word.to_le_bytes());
        put(CONFIG_MSIX_VECTOR, &interrupt.config_vector().to_le_bytes());
        // The transport refuses devices with more queues than a u16 counts.
        put(NUM_QUEUES, &(self.queues.len() as u16).to_le_bytes());
        put(DEVICE_STATUS, &[self.status]);
        put(CONFIG_GENERATION, &[interrupt.generation()]);
        put(QUEUE_SELECT, &self.queue_select.to_le_bytes());
        if let Some(queue) = self.selected() {
            put(QUEUE_SIZE, &queue.size.to_le_bytes());
            put(QUEUE_MSIX_VECTOR, &interrupt.queue_vector(self.queue_select).to_le_bytes());
            put(QUEUE_ENABLE, &u16::from(queue.enabled).to_le_bytes());
            put(QUEUE_NOTIFY_OFF, &self.queue_select.to_le_bytes());
            put(QUEUE_DESC, &queue.desc.to_le_bytes());
            put(QUEUE_DRIVER, &queue.driver.to_le_bytes());
            put(QUEUE_DEVICE, &queue.device.to_le_bytes());
        } else {
            put(QUEUE_MSIX_VECTOR, &VIRTIO_MSI_NO_VECTOR.to_le_bytes());
        }
        image
    }

    /// A driver read; bytes past the structure read 0.
    pub(crate) fn read(&self, offset: u64, data: &mut [u8], interrupt: &VirtioPciInterrupt) {
        let image = self.image(interrupt);
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| image.get(at))
                .copied()
                .unwrap_or(0);
        }
    }

    /// A driver write. Returns the value written to device_status, if the write reached it;
    /// the transport acts on status changes.
    pub(crate) fn write(
        &mut self,
        offset: u64,
        data: &[u8],
        interrupt: &VirtioPciInterrupt,
    ) -> Option<u8> {
        let end = offset.checked_add(data.len() as u64)?;
        let mut image = self.image(interrupt);
        for (i, &byte) in data.iter().enumerate() {
            if let Some(slot) =
                usize::try_from(offset + i as u64).ok().and_then(|at| image.get_mut(at))
            {
                *slot = byte;
            }
        }
        let mut status = None;
        for (field, width) in FIELDS {
            if offset < field + width as u64 && field < end {
                let mut bytes = [0u8; 8];
                let at = field as usize;
                bytes[..width].copy_from_slice(&image[at..at + width]);
                let value = u64::from_le_bytes(bytes);
                if field == DEVICE_STATUS {
                    status = Some(value as u8);
                } else {
                    self.apply(field, value, interrupt);
                }
            }
        }
        status
    }

    fn apply(&mut self, field: u64, value: u64, interrupt: &VirtioPciInterrupt) {
        let features_locked = self.status & STATUS_FEATURES_OK != 0;
        let queues_locked = self.status & STATUS_DRIVER_OK != 0;
        let select = self.queue_select;
        match field {
            DEVICE_FEATURE_SELECT => self.device_feature_select = value as u32,
            DRIVER_FEATURE_SELECT => self.driver_feature_select = value as u32,
            DRIVER_FEATURE if features_locked => {
                debug!("driver features written after FEATURES_OK; ignored");
            }
            DRIVER_FEATURE => {
                let word = value & 0xffff_ffff;
                match self.driver_feature_select {
                    0 => self.driver_features = self.driver_features & !0xffff_ffff | word,
                    1 => self.driver_features = self.driver_features & 0xffff_ffff | word << 32,
                    _ if word != 0 => debug!(
                        "driver features {word:#x} in word {} ignored: no such features",
                        self.driver_feature_select
                    ),
                    _ => {}
                }
            }
            CONFIG_MSIX_VECTOR => interrupt.set_config_vector(value as u16),
            QUEUE_SELECT => self.queue_select = value as u16,
            QUEUE_MSIX_VECTOR => interrupt.set_queue_vector(select, value as u16),
            QUEUE_SIZE | QUEUE_ENABLE | QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE => {
                if queues_locked {
                    debug!("queue {select} setup written after DRIVER_OK; ignored");
                    return;
                }
                let Some(queue) = self.queues.get_mut(usize::from(select)) else {
                    debug!("setup of queue {select}, which does not exist, ignored");
                    return;
                };
                match field {
                    QUEUE_SIZE => queue.size = value as u16,
                    // Writing 0 is not allowed; only a reset disables a queue.
                    QUEUE_ENABLE if value as u16 == 1 => queue.enabled = true,
                    QUEUE_ENABLE => debug!("queue {select}: queue_enable {value} ignored"),
                    QUEUE_DESC => queue.desc = value,
                    QUEUE_DRIVER => queue.driver = value,
                    _ => queue.device = value,
                }
            }
            // Read-only fields.
            _ => {}
        }
    }
}
