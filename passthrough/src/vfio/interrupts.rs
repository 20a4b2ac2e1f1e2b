//! MSI and MSI-X of a VFIO device: one eventfd per vector handed to VFIO, each wired by the VMM
//! to the guest's message (KVM: an irqfd with an MSI route), so interrupts never pass through
//! Aperture's threads.
//!
//! MSI (VFIO_PCI_MSI_IRQ_INDEX) and MSI-X (VFIO_PCI_MSIX_IRQ_INDEX) are never enabled
//! together (VFIO refuses it), so both take their vectors from one pool of routes: vector `i`
//! of either kind uses route `i`. Routes hold a KVM GSI each and live as long as this object.

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use devices::pci::MsiMessage;
use log::debug;
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
};

use super::device::VfioDevice;
use super::ioctls;
use crate::assigned::{InterruptHost, InterruptKind};

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

fn irq_index(kind: InterruptKind) -> u32 {
    match kind {
        InterruptKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
        InterruptKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

/// Turns off interrupt index `index` of `device` (VFIO: DATA_NONE with count 0). EINVAL means
/// it was not on.
fn disable(device: &VfioDevice, index: u32) -> io::Result<()> {
    ioctls::set_irqs(
        device.file(),
        VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
        index,
        0,
        0,
        &[],
    )
}

// Next to the MSI setup it undoes; the VMM calls it at exit, as it does `disable_msix`.
impl VfioDevice {
    /// Turns off MSI (the host stops signalling eventfds). Fails with EINVAL if MSI is off.
    pub fn disable_msi(&self) -> io::Result<()> {
        disable(self, VFIO_PCI_MSI_IRQ_INDEX)
    }
}

/// The [`InterruptHost`] of a VFIO device: MSI and MSI-X.
pub struct VfioInterrupts {
    device: Arc<VfioDevice>,
    new_route: InterruptRouteFactory,
    /// The shared pool, by vector; kept across disable/enable so routes are not leaked.
    routes: Vec<Box<dyn InterruptRoute>>,
    /// The kind enabled on the host and its vector count.
    enabled: Option<(InterruptKind, u16)>,
    /// MSI vectors VFIO can deliver (the device's Multiple Message Capable).
    msi_vectors: u32,
}

/// The former name of [`VfioInterrupts`], which served MSI-X only.
pub type VfioMsix = VfioInterrupts;

impl std::fmt::Debug for VfioInterrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioInterrupts")
            .field("device", &self.device.address())
            .field("routes", &self.routes.len())
            .field("enabled", &self.enabled)
            .finish()
    }
}

impl VfioInterrupts {
    /// MSI and MSI-X of `device`, with routes from `new_route`.
    pub fn new(device: Arc<VfioDevice>, new_route: InterruptRouteFactory) -> Self {
        let msi_vectors = match ioctls::irq_info(device.file(), VFIO_PCI_MSI_IRQ_INDEX) {
            Ok(info) => info.count,
            Err(e) => {
                debug!("{}: VFIO MSI interrupt info: {e}", device.address());
                0
            }
        };
        Self { device, new_route, routes: Vec::new(), enabled: None, msi_vectors }
    }

    /// Vectors VFIO can deliver for `kind`.
    fn host_vectors(&self, kind: InterruptKind) -> u32 {
        match kind {
            InterruptKind::Msi => self.msi_vectors,
            InterruptKind::Msix => self.device.msix_vectors(),
        }
    }

    /// Turns off whatever is enabled.
    fn disable_enabled(&mut self) -> io::Result<()> {
        match self.enabled.take() {
            Some((kind, vectors)) => {
                debug!("{}: {kind} off on the host ({vectors} vectors)", self.device.address());
                disable(&self.device, irq_index(kind))
            }
            None => Ok(()),
        }
    }
}

impl InterruptHost for VfioInterrupts {
    fn set_vector_count(&mut self, kind: InterruptKind, vectors: u16) -> io::Result<()> {
        // Every vector starts disconnected; the caller routes the live ones. Keep going on a
        // failure so that VFIO's state follows the guest's anyway.
        let mut result = Ok(());
        for route in &self.routes {
            if let Err(e) = route.set(None, 0) {
                result = result.and(Err(e));
            }
        }
        match self.enabled {
            // Disabling a kind that is not on: nothing to do.
            _ if vectors == 0 && self.enabled.is_none_or(|(on, _)| on != kind) => return result,
            // The same block again: VFIO takes new eventfds in place.
            Some(on) if on == (kind, vectors) => {}
            // Another count (VFIO cannot resize an enabled MSI block), the other kind (VFIO
            // refuses a second index), or off: disable first.
            Some(_) => {
                match self.disable_enabled() {
                    // EINVAL: it was already off (the VMM may turn interrupts off at exit).
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        debug!("{}: interrupts already off: {e}", self.device.address())
                    }
                    disabled => result = result.and(disabled),
                }
                if vectors == 0 {
                    return result;
                }
            }
            None => {}
        }
        let offered = self.host_vectors(kind);
        if u32::from(vectors) > offered {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("VFIO offers {offered} {kind} vectors, not {vectors}"),
            ));
        }
        while self.routes.len() < usize::from(vectors) {
            self.routes.push((self.new_route)()?);
        }
        let fds: Vec<RawFd> =
            self.routes.iter().take(usize::from(vectors)).map(|r| r.eventfd()).collect();
        ioctls::set_irqs(
            self.device.file(),
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            irq_index(kind),
            0,
            u32::from(vectors),
            &fds,
        )?;
        // On failure `enabled` stays as it is: VFIO turns off a block it could not enable, and
        // keeps one that was on already.
        self.enabled = Some((kind, vectors));
        result
    }

    fn set_vector(
        &mut self,
        kind: InterruptKind,
        vector: u16,
        message: Option<MsiMessage>,
        requester_id: u16,
    ) -> io::Result<()> {
        let live = matches!(self.enabled, Some((on, count)) if on == kind && vector < count);
        match self.routes.get(usize::from(vector)) {
            Some(route) if live => route.set(message, requester_id),
            _ if message.is_none() => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{kind} vector {vector} is not enabled on the host"),
            )),
        }
    }
}

impl Drop for VfioInterrupts {
    fn drop(&mut self) {
        // VFIO stops signalling before the routes (and their irqfds) go away.
        if let Err(e) = self.disable_enabled() {
            debug!("{}: disabling interrupts on drop: {e}", self.device.address());
        }
    }
}
