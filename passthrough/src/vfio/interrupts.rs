//! MSI-X of a VFIO device: one eventfd per vector handed to VFIO, each wired by the VMM to the
//! guest's message (KVM: an irqfd with an MSI route), so interrupts never pass through
//! Aperture's threads.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use devices::pci::MsiMessage;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_PCI_MSIX_IRQ_INDEX,
};

use super::device::VfioDevice;
use crate::assigned::MsixHost;

/// An eventfd the VMM delivers to the guest as an MSI.
pub trait InterruptRoute: Send + Sync {
    /// The eventfd VFIO signals.
    fn eventfd(&self) -> RawFd;
    /// Delivers the eventfd's signals as `message` from `requester_id`, or holds them
    /// (counted in the eventfd) while `None`: masked or not programmed.
    fn set(&self, message: Option<MsiMessage>, requester_id: u16) -> io::Result<()>;
}

/// Makes a new, disconnected [`InterruptRoute`].
pub type InterruptRouteFactory = Box<dyn Fn() -> io::Result<Box<dyn InterruptRoute>> + Send>;

/// The [`MsixHost`] of a VFIO device.
pub struct VfioMsix {
    device: Arc<VfioDevice>,
    new_route: InterruptRouteFactory,
    /// Routes by vector; kept across disable/enable so routes are not leaked.
    routes: Vec<Box<dyn InterruptRoute>>,
}

impl std::fmt::Debug for VfioMsix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioMsix")
            .field("device", &self.device.address())
            .field("routes", &self.routes.len())
            .finish()
    }
}

impl VfioMsix {
    /// MSI-X of `device`, with routes from `new_route`.
    pub fn new(device: Arc<VfioDevice>, new_route: InterruptRouteFactory) -> Self {
        Self { device, new_route, routes: Vec::new() }
    }
}

impl MsixHost for VfioMsix {
    fn set_vector_count(&mut self, vectors: u16) -> io::Result<()> {
        for route in &self.routes {
            route.set(None, 0)?;
        }
        if vectors == 0 {
            return self.device.disable_msix();
        }
        if u32::from(vectors) > self.device.msix_vectors() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("VFIO offers {} MSI-X vectors, not {vectors}", self.device.msix_vectors()),
            ));
        }
        while self.routes.len() < usize::from(vectors) {
            self.routes.push((self.new_route)()?);
        }
        let fds: Vec<RawFd> =
            self.routes.iter().take(usize::from(vectors)).map(|r| r.eventfd()).collect();
        super::ioctls::set_irqs(
            self.device.file(),
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            VFIO_PCI_MSIX_IRQ_INDEX,
            0,
            u32::from(vectors),
            &fds,
        )
    }

    fn set_vector(
        &mut self,
        vector: u16,
        message: Option<MsiMessage>,
        requester_id: u16,
    ) -> io::Result<()> {
        match self.routes.get(usize::from(vector)) {
            Some(route) => route.set(message, requester_id),
            None if message.is_none() => Ok(()),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("MSI-X vector {vector} is not enabled on the host"),
            )),
        }
    }
}
