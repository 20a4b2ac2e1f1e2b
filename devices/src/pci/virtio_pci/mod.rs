//! The virtio 1.x modern PCI transport (virtio 1.2 §4.1 "Virtio Over PCI Bus"),
//! non-transitional: it presents a [`VirtioDevice`] as a PCI function.
//!
//! One 16 KiB 64-bit memory BAR (BAR 0) holds every region:
//!
//! ```text
//!   0x0000  common configuration      (vendor capability, cfg_type 1)
//!   0x0800  ISR status                (cfg_type 3)
//!   0x1000  device configuration      (cfg_type 4)
//!   0x2000  notifications, 4 bytes per queue (cfg_type 2, notify_off_multiplier 4)
//!   0x3000  MSI-X table (up to 128 vectors)
//!   0x3800  MSI-X pending-bit array
//! ```
//!
//! A PCI configuration access capability (cfg_type 5) reaches the same registers through
//! configuration space. Interrupts are MSI-X only (no INTx pin): one vector per queue plus one
//! for configuration changes, as the driver assigns them.

mod common_cfg;
mod interrupt;
mod vector_routes;

use std::sync::Arc;

use log::{debug, error, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::config::{BarKind, BarRegion, ConfigError, ConfigSpace, PciIds};
use super::msix::{MsixCapability, MsixError, MsixState, MSIX_ENTRY_SIZE};
use super::PciFunction;
use crate::virtio::{ActivateError, ActiveQueue, QueueEvent, VirtioDevice, VirtioInterrupt};
use common_cfg::{
    CommonConfig, COMMON_CFG_LEN, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use interrupt::VirtioPciInterrupt;
pub use interrupt::VIRTIO_MSI_NO_VECTOR;

/// virtio's PCI vendor id.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Modern device ids are this plus the virtio device type.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem id (any value is allowed for modern devices; this is QEMU's).
pub const VIRTIO_PCI_SUBSYSTEM_ID: u16 = 0x1100;

/// Size of BAR 0.
pub const BAR_SIZE: u64 = 0x4000;
/// The BAR index holding every region.
const BAR_INDEX: usize = 0;
const COMMON_OFFSET: u64 = 0x0000;
const ISR_OFFSET: u64 = 0x0800;
const ISR_LEN: u64 = 4;
const DEVICE_CFG_OFFSET: u64 = 0x1000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x2000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
const NOTIFY_LEN: u64 = 0x1000;
const MSIX_TABLE_OFFSET: u64 = 0x3000;
const MSIX_PBA_OFFSET: u64 = 0x3800;
/// Vectors that fit between the table and the PBA.
const MAX_VECTORS: u16 = ((MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / MSIX_ENTRY_SIZE) as u16;
/// Queues whose notification addresses fit the notify region.
pub const MAX_QUEUES: usize = (NOTIFY_LEN / NOTIFY_OFF_MULTIPLIER as u64) as usize;
/// Largest virtqueue size.
const MAX_QUEUE_SIZE: u16 = 32768;

/// Vendor-specific capability id.
const CAP_VENDOR: u8 = 0x09;
const CFG_TYPE_COMMON: u8 = 1;
const CFG_TYPE_NOTIFY: u8 = 2;
const CFG_TYPE_ISR: u8 = 3;
const CFG_TYPE_DEVICE: u8 = 4;
const CFG_TYPE_PCI: u8 = 5;
/// In a virtio PCI capability: cap.bar, cap.offset, cap.length, and pci_cfg_data.
const PCI_CFG_BAR: u16 = 4;
const PCI_CFG_OFFSET: u16 = 8;
const PCI_CFG_LENGTH: u16 = 12;
const PCI_CFG_DATA: u16 = 16;

/// Errors building a virtio-pci function.
#[derive(Debug, thiserror::Error)]
pub enum VirtioPciError {
    /// The device has more queues than the notify region holds.
    #[error(
        "{name}: {queues} queues do not fit the virtio-pci notify region (at most \
         {MAX_QUEUES}); configure fewer queues"
    )]
    TooManyQueues {
        /// Device name.
        name: String,
        /// Its queue count.
        queues: usize,
    },
    /// A queue's maximum size is not a valid virtqueue size.
    #[error(
        "{name}: queue {index} has maximum size {size}; virtqueues need a power of two from 1 \
         to {MAX_QUEUE_SIZE}; fix the device's queue sizes"
    )]
    BadQueueSize {
        /// Device name.
        name: String,
        /// Queue index.
        index: usize,
        /// The size it reported.
        size: u16,
    },
    /// A queue's doorbell could not be created.
    #[error(
        "{name}: cannot create a queue doorbell (eventfd): {source}; raise the open-files limit"
    )]
    Doorbell {
        /// Device name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The device type has no PCI device id.
    #[error(
        "{name}: virtio device type {device_type} has no virtio-pci device id (only types up \
         to 0xffff - 0x1040 have one); use a device with a standard type"
    )]
    BadDeviceType {
        /// Device name.
        name: String,
        /// The device type.
        device_type: u32,
    },
    /// The configuration space layout failed.
    #[error("{name}: cannot lay out the virtio-pci configuration space: {source}")]
    Layout {
        /// Device name.
        name: String,
        /// What went wrong.
        source: LayoutError,
    },
}

/// A configuration-space layout failure (a bug in the transport, reported rather than
/// panicking).
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// From the configuration space builder.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// From the MSI-X builder.
    #[error(transparent)]
    Msix(#[from] MsixError),
}

/// The PCI class code shown for a virtio device type (cosmetic: drivers match the ids).
fn class_code(device_type: u32) -> u32 {
    match device_type {
        1 => 0x02_00_00, // network controller
        2 => 0x01_80_00, // mass storage, other
        3 => 0x07_80_00, // communication controller, other
        _ => 0xff_00_00, // unassigned class
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPci {
    name: String,
    config: ConfigSpace,
    msix_capability: MsixCapability,
    pci_cfg_capability: u16,
    device: Box<dyn VirtioDevice>,
    memory: GuestMemoryMmap,
    common: CommonConfig,
    interrupt: Arc<VirtioPciInterrupt>,
    /// Per queue, for the life of the function (a hypervisor may have registered them).
    doorbells: Vec<Arc<QueueEvent>>,
    /// Whether each queue is being served (the device is active and the queue enabled).
    live: Vec<bool>,
}

impl std::fmt::Debug for VirtioPci {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPci")
            .field("name", &self.name)
            .field("device_type", &self.device.device_type())
            .field("status", &self.common.status)
            .field("interrupt", &self.interrupt)
            .finish()
    }
}

impl VirtioPci {
    /// Wraps `device` as a PCI function called `name`. The device's rings live in `memory`;
    /// its interrupts go to `msi` with the requester id the PCI root assigns.
    pub fn new(
        name: impl Into<String>,
        device: Box<dyn VirtioDevice>,
        memory: GuestMemoryMmap,
        msi: Arc<dyn super::MsiSink>,
    ) -> Result<Self, VirtioPciError> {
        let name = name.into();
        let max_sizes = device.queue_max_sizes().to_vec();
        if max_sizes.len() > MAX_QUEUES {
            return Err(VirtioPciError::TooManyQueues { name, queues: max_sizes.len() });
        }
        for (index, &size) in max_sizes.iter().enumerate() {
            if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
                return Err(VirtioPciError::BadQueueSize { name, index, size });
            }
        }
        let device_type = device.device_type();
        let Some(device_id) =
            u16::try_from(device_type).ok().and_then(|t| t.checked_add(VIRTIO_PCI_DEVICE_ID_BASE))
        else {
            return Err(VirtioPciError::BadDeviceType { name, device_type });
        };
        // max_sizes.len() <= MAX_QUEUES, so this fits.
        let vectors = (max_sizes.len() as u16 + 1).min(MAX_VECTORS);
        let (config, msix_capability, pci_cfg_capability, msix) =
            Self::layout(device_id, device_type, max_sizes.len(), vectors)
                .map_err(|source| VirtioPciError::Layout { name: name.clone(), source })?;
        if device.device_features() & 1 << VIRTIO_F_VERSION_1 == 0 {
            warn!(
                "{name}: the device does not offer VIRTIO_F_VERSION_1; modern drivers will \
                 refuse it"
            );
        }
        let interrupt = Arc::new(VirtioPciInterrupt::new(&name, msix, msi, max_sizes.len()));
        let mut doorbells = Vec::with_capacity(max_sizes.len());
        for _ in &max_sizes {
            match QueueEvent::new() {
                Ok(event) => doorbells.push(Arc::new(event)),
                Err(source) => return Err(VirtioPciError::Doorbell { name, source }),
            }
        }
        Ok(Self {
            common: CommonConfig::new(device.device_features(), &max_sizes),
            live: vec![false; max_sizes.len()],
            doorbells,
            name,
            config,
            msix_capability,
            pci_cfg_capability,
            device,
            memory,
            interrupt,
        })
    }

    /// Builds the configuration space: identity, BAR 0, MSI-X and the virtio capabilities.
    fn layout(
        device_id: u16,
        device_type: u32,
        num_queues: usize,
        vectors: u16,
    ) -> Result<(ConfigSpace, MsixCapability, u16, MsixState), LayoutError> {
        let ids = PciIds {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id,
            revision: 1,
            class_code: class_code(device_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID,
        };
        let mut config = ConfigSpace::new_endpoint(&ids);
        config.add_memory_bar(BAR_INDEX, BAR_SIZE, BarKind::Memory64, false)?;
        let msix = MsixState::new(vectors)?;
        let msix_capability = MsixCapability::add(
            &mut config,
            vectors,
            (BAR_INDEX as u8, MSIX_TABLE_OFFSET as u32),
            (BAR_INDEX as u8, MSIX_PBA_OFFSET as u32),
        )?;
        let notify_len = (num_queues.max(1) as u64) * u64::from(NOTIFY_OFF_MULTIPLIER);
        add_virtio_cap(&mut config, CFG_TYPE_COMMON, COMMON_OFFSET, COMMON_CFG_LEN, &[])?;
        add_virtio_cap(
            &mut config,
            CFG_TYPE_NOTIFY,
            NOTIFY_OFFSET,
            notify_len,
            &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
        )?;
        add_virtio_cap(&mut config, CFG_TYPE_ISR, ISR_OFFSET, ISR_LEN, &[])?;
        add_virtio_cap(&mut config, CFG_TYPE_DEVICE, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN, &[])?;
        let pci_cfg = add_virtio_cap(&mut config, CFG_TYPE_PCI, 0, 0, &[0; 4])?;
        config.set_rw_mask(pci_cfg + PCI_CFG_BAR, &[0xff]);
        config.set_rw_u32(pci_cfg + PCI_CFG_OFFSET, u32::MAX);
        config.set_rw_u32(pci_cfg + PCI_CFG_LENGTH, u32::MAX);
        config.set_rw_u32(pci_cfg + PCI_CFG_DATA, u32::MAX);
        Ok((config, msix_capability, pci_cfg, msix))
    }

    /// The configuration space (for inspection).
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// The current device status byte.
    pub fn device_status(&self) -> u8 {
        self.common.status
    }

    /// The interrupt handle the device was (or will be) given.
    pub fn interrupt(&self) -> Arc<dyn VirtioInterrupt> {
        self.interrupt.clone()
    }

    /// Whether its MSI-X vectors are raised through hypervisor triggers (KVM irqfds) rather
    /// than sent by the VMM ([`super::MsiSink::vector`]).
    pub fn has_vector_triggers(&self) -> bool {
        self.interrupt.has_vector_triggers()
    }

    /// The queues' doorbells, for a hypervisor that can signal them itself: queue `i`'s
    /// notify address is `BAR 0 base + notify_offset(i)`, any write of any length there means
    /// "queue i has work" (no data match needed: each queue has its own address). The events
    /// stay valid for the life of the function; only the BAR base moves.
    pub fn queue_doorbells(&self) -> Vec<QueueDoorbell> {
        self.doorbells
            .iter()
            .enumerate()
            .map(|(index, event)| QueueDoorbell {
                bar: BAR_INDEX,
                offset: notify_offset(index),
                event: Arc::clone(event),
            })
            .collect()
    }

    // ---- device status ----

    fn reset(&mut self) {
        debug!("{}: reset", self.name);
        self.device.reset();
        self.common.reset();
        self.interrupt.reset();
        self.live.iter_mut().for_each(|live| *live = false);
    }

    fn write_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.common.status;
        if old & !value != 0 {
            debug!(
                "{}: driver cleared status bits {:#x} without a reset; kept",
                self.name,
                old & !value
            );
        }
        let mut status = old | value;
        let newly = status & !old;
        if newly & STATUS_FEATURES_OK != 0 && !self.accept_features() {
            status &= !STATUS_FEATURES_OK;
        }
        self.common.status = status;
        if newly & STATUS_DRIVER_OK != 0 {
            if status & STATUS_FEATURES_OK == 0 {
                warn!(
                    "{}: driver set DRIVER_OK before FEATURES_OK; the device needs a reset",
                    self.name
                );
                self.fail();
            } else if let Err(e) = self.activate() {
                error!("{}: activation failed: {e}; the device needs a reset", self.name);
                self.fail();
            }
        }
    }

    /// Checks the driver's features at FEATURES_OK and hands them to the device.
    fn accept_features(&mut self) -> bool {
        let offered = self.common.device_features();
        let wanted = self.common.driver_features;
        if wanted & !offered != 0 {
            warn!(
                "{}: driver accepted features {:#x} that the device does not offer; \
                 FEATURES_OK refused",
                self.name,
                wanted & !offered
            );
            return false;
        }
        if wanted & 1 << VIRTIO_F_VERSION_1 == 0 {
            warn!(
                "{}: driver did not accept VIRTIO_F_VERSION_1 (legacy drivers are not \
                 supported); FEATURES_OK refused",
                self.name
            );
            return false;
        }
        self.device.ack_features(wanted);
        true
    }

    /// Sets DEVICE_NEEDS_RESET and tells the driver through the configuration vector.
    fn fail(&mut self) {
        self.common.status |= STATUS_NEEDS_RESET;
        self.interrupt.signal_config();
    }

    /// Builds the enabled queues and starts the device.
    fn activate(&mut self) -> Result<(), ActivateError> {
        let mut queues = Vec::new();
        let mut live = vec![false; self.common.queues.len()];
        for (index, setup) in self.common.queues.iter().enumerate() {
            if !setup.enabled {
                continue;
            }
            let bad = |what: &str| ActivateError::BadSetup(format!("queue {index}: {what}"));
            let mut queue = Queue::new(setup.max_size)
                .map_err(|e| bad(&format!("maximum size {}: {e}", setup.max_size)))?;
            queue.try_set_size(setup.size).map_err(|_| {
                bad(&format!("size {} is not a power of two up to {}", setup.size, setup.max_size))
            })?;
            queue.try_set_desc_table_address(GuestAddress(setup.desc)).map_err(|_| {
                bad(&format!("descriptor table {:#x} is not 16-byte aligned", setup.desc))
            })?;
            queue.try_set_avail_ring_address(GuestAddress(setup.driver)).map_err(|_| {
                bad(&format!("driver area {:#x} is not 2-byte aligned", setup.driver))
            })?;
            queue.try_set_used_ring_address(GuestAddress(setup.device)).map_err(|_| {
                bad(&format!("device area {:#x} is not 4-byte aligned", setup.device))
            })?;
            queue.set_ready(true);
            if !queue.is_valid(&self.memory) {
                return Err(bad("its rings are not inside guest RAM"));
            }
            let Some(notify) = self.doorbells.get(index).cloned() else {
                return Err(bad("it has no doorbell"));
            };
            live[index] = true;
            // index < MAX_QUEUES, which fits in a u16.
            queues.push(ActiveQueue { index: index as u16, queue, notify });
        }
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        self.device.activate(self.memory.clone(), queues, interrupt)?;
        self.live = live;
        debug!("{}: activated", self.name);
        Ok(())
    }

    // ---- BAR regions ----

    /// A notify write that trapped (no ioeventfd, or HVF): rings the same doorbell the
    /// hypervisor would have.
    fn notify(&self, offset: u64) {
        let queue = offset / u64::from(NOTIFY_OFF_MULTIPLIER);
        let index = usize::try_from(queue).ok();
        match index.and_then(|q| Some((self.live.get(q)?, self.doorbells.get(q)?))) {
            Some((true, doorbell)) => doorbell.notify(),
            _ => debug!("{}: notify of queue {queue}, which is not active, ignored", self.name),
        }
    }

    fn read_bar0(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        let inside = |start: u64, size: u64| {
            offset >= start && offset.checked_add(len).is_some_and(|end| end <= start + size)
        };
        if inside(COMMON_OFFSET, COMMON_CFG_LEN) {
            self.common.read(offset - COMMON_OFFSET, data, &self.interrupt);
        } else if inside(ISR_OFFSET, ISR_LEN) {
            if offset == ISR_OFFSET {
                data[0] = self.interrupt.take_isr();
            }
        } else if inside(DEVICE_CFG_OFFSET, DEVICE_CFG_LEN) {
            self.device.read_config(offset - DEVICE_CFG_OFFSET, data);
        } else if inside(MSIX_TABLE_OFFSET, self.interrupt.msix().table_len()) {
            self.interrupt.msix().read_table(offset - MSIX_TABLE_OFFSET, data);
        } else if inside(MSIX_PBA_OFFSET, self.interrupt.msix().pba_len()) {
            self.interrupt.msix().read_pba(offset - MSIX_PBA_OFFSET, data);
        } else {
            debug!(
                "{}: read of {len} bytes at BAR offset {offset:#x}: no register there",
                self.name
            );
        }
    }

    fn write_bar0(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let inside = |start: u64, size: u64| {
            offset >= start && offset.checked_add(len).is_some_and(|end| end <= start + size)
        };
        if inside(COMMON_OFFSET, COMMON_CFG_LEN) {
            if let Some(status) = self.common.write(offset - COMMON_OFFSET, data, &self.interrupt) {
                self.write_status(status);
            }
        } else if inside(DEVICE_CFG_OFFSET, DEVICE_CFG_LEN) {
            self.device.write_config(offset - DEVICE_CFG_OFFSET, data);
        } else if inside(NOTIFY_OFFSET, NOTIFY_LEN) {
            self.notify(offset - NOTIFY_OFFSET);
        } else if inside(MSIX_TABLE_OFFSET, self.interrupt.msix().table_len()) {
            self.interrupt.write_table(offset - MSIX_TABLE_OFFSET, data);
        } else if inside(MSIX_PBA_OFFSET, self.interrupt.msix().pba_len()) {
            self.interrupt.msix().write_pba(offset - MSIX_PBA_OFFSET, data);
        } else {
            debug!("{}: write of {len} bytes at BAR offset {offset:#x} ignored", self.name);
        }
    }

    // ---- the PCI configuration access capability ----

    /// Whether a configuration access touched pci_cfg_data.
    fn touches_pci_cfg_data(&self, offset: u16, len: usize) -> bool {
        let data = usize::from(self.pci_cfg_capability + PCI_CFG_DATA);
        let start = usize::from(offset);
        start < data + 4 && data < start + len
    }

    /// The BAR window the capability selects: (offset, length) if valid.
    fn pci_cfg_window(&self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_capability;
        let bar = self.config.read_u8(cap + PCI_CFG_BAR);
        let offset = u64::from(self.config.read_u32(cap + PCI_CFG_OFFSET));
        let length = self.config.read_u32(cap + PCI_CFG_LENGTH) as usize;
        let valid = usize::from(bar) == BAR_INDEX
            && matches!(length, 1 | 2 | 4)
            && offset % length as u64 == 0
            && offset + length as u64 <= BAR_SIZE;
        if !valid {
            debug!(
                "{}: PCI config access capability: BAR {bar} offset {offset:#x} length \
                 {length} unusable",
                self.name
            );
        }
        valid.then_some((offset, length))
    }
}

/// Where queue `index`'s notify address lies in BAR 0.
pub fn notify_offset(index: usize) -> u64 {
    NOTIFY_OFFSET + index as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
}

/// One queue's doorbell and where the guest rings it.
#[derive(Debug, Clone)]
pub struct QueueDoorbell {
    /// The BAR holding the notify address.
    pub bar: usize,
    /// Offset of the queue's notify address in that BAR.
    pub offset: u64,
    /// The event the device's worker waits on.
    pub event: Arc<QueueEvent>,
}

/// Adds a virtio vendor-specific capability pointing at `offset..offset + length` of BAR 0,
/// with `extra` bytes after the common part; returns its offset.
fn add_virtio_cap(
    config: &mut ConfigSpace,
    cfg_type: u8,
    offset: u64,
    length: u64,
    extra: &[u8],
) -> Result<u16, ConfigError> {
    // cap_len counts the id/next header too.
    let cap_len = 16 + extra.len() as u8;
    let mut body = vec![cap_len, cfg_type, BAR_INDEX as u8, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(length as u32).to_le_bytes());
    body.extend_from_slice(extra);
    config.add_capability(CAP_VENDOR, &body)
}

impl PciFunction for VirtioPci {
    fn name(&self) -> &str {
        &self.name
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if self.touches_pci_cfg_data(offset, data.len()) {
            if let Some((bar_offset, length)) = self.pci_cfg_window() {
                let mut value = [0u8; 4];
                self.read_bar0(bar_offset, &mut value[..length]);
                self.config.set_bytes(self.pci_cfg_capability + PCI_CFG_DATA, &value);
            }
        }
        self.config.read(offset, data);
    }

    fn config_copy(&self, image: &mut [u8]) -> bool {
        // A read of the PCI configuration access capability's data reads BAR 0 (whose
        // registers change as the device works, and may clear on read): no copy once the
        // guest has pointed it anywhere (Linux never does).
        if self.config.read_u32(self.pci_cfg_capability + PCI_CFG_LENGTH) != 0 {
            return false;
        }
        self.config.read(0, image);
        true
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
        if self.msix_capability.control_written(offset, data.len()) {
            let (enabled, masked) = self.msix_capability.control(&self.config);
            self.interrupt.set_control(enabled, masked);
        }
        if self.touches_pci_cfg_data(offset, data.len()) {
            if let Some((bar_offset, length)) = self.pci_cfg_window() {
                let mut value = [0u8; 4];
                self.config.read(self.pci_cfg_capability + PCI_CFG_DATA, &mut value);
                self.write_bar0(bar_offset, &value[..length]);
            }
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if bar == BAR_INDEX && matches!(data.len(), 1 | 2 | 4 | 8) {
            self.read_bar0(offset, data);
        } else {
            debug!(
                "{}: read of {} bytes at BAR {bar} offset {offset:#x} ignored",
                self.name,
                data.len()
            );
            data.fill(0);
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if bar == BAR_INDEX && matches!(data.len(), 1 | 2 | 4 | 8) {
            self.write_bar0(offset, data);
        } else {
            debug!(
                "{}: write of {} bytes at BAR {bar} offset {offset:#x} ignored",
                self.name,
                data.len()
            );
        }
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config.bar_regions()
    }

    fn set_requester_id(&mut self, requester_id: u16) {
        self.interrupt.set_requester_id(requester_id);
    }

    fn bus_reset(&mut self) {
        self.reset();
        self.config.reset();
        self.interrupt.msix().reset();
    }
}

#[cfg(test)]
mod tests;
