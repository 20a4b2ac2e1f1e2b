//! VFIO's device request and error interrupts as a [`LossWatch`]: the kernel signals the
//! request eventfd when the device is being removed or unbound (vfio-pci's remove then
//! waits until every fd of the device is closed, asking again every few seconds), and the
//! error eventfd on an unrecoverable (AER fatal) error.

use std::io;
use std::os::fd::AsRawFd;

use log::{debug, info};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_REQ_IRQ_INDEX,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::device::VfioDevice;
use super::ioctls;
use crate::host::{LossReason, LossWatch};

/// The eventfds VFIO signals for one device.
#[derive(Debug)]
pub struct VfioLossWatch {
    /// (eventfd, what it reports).
    events: Vec<(EventFd, LossReason)>,
}

/// Registers an eventfd for interrupt index `index` of `device`, if the device offers it.
fn register(device: &VfioDevice, index: u32, what: &str) -> io::Result<Option<EventFd>> {
    let offered = ioctls::irq_info(device.file(), index).is_ok_and(|info| info.count >= 1);
    if !offered {
        debug!("{}: VFIO offers no {what} interrupt", device.address());
        return Ok(None);
    }
    let event = EventFd::new(EFD_NONBLOCK)?;
    let flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    ioctls::set_irqs(device.file(), flags, index, 0, 1, &[event.as_raw_fd()])?;
    Ok(Some(event))
}

impl VfioLossWatch {
    /// Registers for `device`'s request and error interrupts; `None` if VFIO offers neither
    /// (the host's removal of the device would then wait for the VM to end).
    pub fn new(device: &VfioDevice) -> Option<Self> {
        let mut events = Vec::new();
        for (index, reason, what) in [
            (VFIO_PCI_REQ_IRQ_INDEX, LossReason::Request, "device request"),
            (VFIO_PCI_ERR_IRQ_INDEX, LossReason::Error, "error"),
        ] {
            match register(device, index, what) {
                Ok(Some(event)) => events.push((event, reason)),
                Ok(None) => {}
                Err(e) => info!("{}: cannot watch the {what} interrupt: {e}", device.address()),
            }
        }
        (!events.is_empty()).then_some(Self { events })
    }
}

impl LossWatch for VfioLossWatch {
    fn poll(&self) -> Option<LossReason> {
        // Read every eventfd, so a report of both kinds is taken at once.
        let mut found = None;
        for (event, reason) in &self.events {
            if event.read().is_ok() {
                found = found.or(Some(*reason));
            }
        }
        found
    }
}
