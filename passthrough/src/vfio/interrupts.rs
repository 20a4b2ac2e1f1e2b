//! MSI and MSI-X of a VFIO device: one eventfd per vector handed to VFIO, each wired by the VMM
//! to the guest's message (KVM: an irqfd with an MSI route), so interrupts never pass through
//! Aperture's threads.
//!
//! MSI (VFIO_PCI_MSI_IRQ_INDEX) and MSI-X (VFIO_PCI_MSIX_IRQ_INDEX) are never enabled
//! together (VFIO refuses it), so both take their vectors from one pool of routes: vector `i`
//! of either kind uses route `i`. Routes hold a KVM GSI each and live as long as this object.
//!
//! INTx (VFIO_PCI_INTX_IRQ_INDEX) is the third kind, on whenever the other two are off: VFIO
//! signals a trigger eventfd and masks the host interrupt; the VMM's level irqfd asserts the
//! guest's SPI, and after the guest's EOI signals a resample eventfd that VFIO takes as its
//! unmask. VFIO enables one kind at a time (MSI or MSI-X while INTx is on fails with
//! EINVAL), so INTx is turned off before MSI or MSI-X goes on and back on when they are
//! both off. The VMM supplies the route late (it needs the interrupt controller), through
//! the [`IntxHandle`] of [`VfioInterrupts::intx_handle`].

use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::pci::MsiMessage;
use log::{debug, warn};
use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX,
};

use super::device::VfioDevice;
use super::ioctls;
use crate::assigned::{vector_is_live, InterruptHost, InterruptKind, VectorRoute};

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

/// The guest line a device's INTx drives (KVM: a level-triggered irqfd on an SPI).
pub trait IntxRoute: Send {
    /// The eventfd VFIO signals when the device raises INTx (VFIO masks it then).
    fn trigger_fd(&self) -> RawFd;
    /// The eventfd signalled once the guest has handled the interrupt (VFIO unmasks then).
    fn resample_fd(&self) -> RawFd;
    /// Connects the eventfds to the guest line, or disconnects them (deasserting the line).
    fn set_enabled(&self, enabled: bool) -> io::Result<()>;
}

/// VFIO's INTx calls, apart so that [`IntxState`] can be tested without a device.
trait IntxIrqs: Send {
    /// For logs.
    fn name(&self) -> String;
    /// Turns INTx on with `trigger` and `unmask` eventfds.
    fn enable(&self, trigger: RawFd, unmask: RawFd) -> io::Result<()>;
    /// Turns INTx off. EINVAL means it was not on.
    fn disable(&self) -> io::Result<()>;
}

impl IntxIrqs for Arc<VfioDevice> {
    fn name(&self) -> String {
        self.address().to_string()
    }

    fn enable(&self, trigger: RawFd, unmask: RawFd) -> io::Result<()> {
        let file = self.file();
        let index = VFIO_PCI_INTX_IRQ_INDEX;
        ioctls::set_irqs(
            file,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
            index,
            0,
            1,
            &[trigger],
        )?;
        // Only while INTx is on does VFIO take an unmask eventfd.
        let unmasked = ioctls::set_irqs(
            file,
            VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_UNMASK,
            index,
            0,
            1,
            &[unmask],
        );
        if unmasked.is_err() {
            // Without it the first interrupt would stay masked for good.
            let _ = disable(self, index);
        }
        unmasked
    }

    fn disable(&self) -> io::Result<()> {
        disable(self, VFIO_PCI_INTX_IRQ_INDEX)
    }
}

/// A device's INTx: the route the VMM connected, and whether VFIO signals it.
struct IntxState {
    irqs: Box<dyn IntxIrqs>,
    route: Option<Box<dyn IntxRoute>>,
    /// MSI or MSI-X is on (or going on): INTx must stay off.
    msi_on: bool,
    /// INTx is on in VFIO and the route is enabled.
    armed: bool,
    /// The interrupts are gone (dropped): nothing may turn INTx on again.
    closed: bool,
}

impl IntxState {
    fn new(irqs: Box<dyn IntxIrqs>) -> Self {
        Self { irqs, route: None, msi_on: false, armed: false, closed: false }
    }

    /// Turns INTx on if it may be: a route, and neither MSI nor MSI-X.
    fn arm(&mut self) -> io::Result<()> {
        if self.armed || self.msi_on || self.closed {
            return Ok(());
        }
        let Some(route) = &self.route else { return Ok(()) };
        route.set_enabled(true)?;
        if let Err(e) = self.irqs.enable(route.trigger_fd(), route.resample_fd()) {
            let _ = route.set_enabled(false);
            return Err(e);
        }
        debug!("{}: INTx on", self.irqs.name());
        self.armed = true;
        Ok(())
    }

    /// Turns INTx off: VFIO stops signalling first, then the route lets the line go.
    fn disarm(&mut self) -> io::Result<()> {
        if !self.armed {
            return Ok(());
        }
        self.armed = false;
        debug!("{}: INTx off", self.irqs.name());
        let result = match self.irqs.disable() {
            // EINVAL: already off (the VMM turns interrupts off at exit).
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
            result => result,
        };
        let route = self.route.as_ref().map_or(Ok(()), |r| r.set_enabled(false));
        result.and(route)
    }

    /// Turns INTx off for good and lets the route go.
    fn close(&mut self) -> io::Result<()> {
        self.closed = true;
        let result = self.disarm();
        self.route = None;
        result
    }

    /// MSI or MSI-X is going on (`true`) or both are off (`false`).
    fn set_msi_on(&mut self, on: bool) -> io::Result<()> {
        self.msi_on = on;
        if on {
            self.disarm()
        } else {
            self.arm()
        }
    }
}

fn lock(state: &Mutex<IntxState>) -> MutexGuard<'_, IntxState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// The VMM's side of a device's INTx: connects the guest line once the VMM has it.
#[derive(Clone)]
pub struct IntxHandle {
    state: Arc<Mutex<IntxState>>,
}

impl std::fmt::Debug for IntxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("IntxHandle")
            .field("device", &state.irqs.name())
            .field("connected", &state.route.is_some())
            .field("armed", &state.armed)
            .finish()
    }
}

impl IntxHandle {
    /// Delivers the device's INTx through `route` (replacing an earlier one): on now unless
    /// MSI or MSI-X is on, else as soon as both are off. On an error the route is kept, and
    /// INTx is tried again at the next change.
    pub fn connect(&self, route: Box<dyn IntxRoute>) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(io::Error::new(io::ErrorKind::NotConnected, "the device is closed"));
        }
        let disarmed = state.disarm();
        state.route = Some(route);
        disarmed.and(state.arm())
    }

    /// Turns INTx off for good and lets the route go (at exit).
    pub fn disconnect(&self) -> io::Result<()> {
        lock(&self.state).close()
    }

    /// The device's host address, for logs.
    pub fn device_name(&self) -> String {
        lock(&self.state).irqs.name()
    }

    /// Whether VFIO signals the route now.
    pub fn is_on(&self) -> bool {
        lock(&self.state).armed
    }
}

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
    /// INTx, if VFIO can deliver it; shared with the VMM's [`IntxHandle`].
    intx: Option<Arc<Mutex<IntxState>>>,
}

impl std::fmt::Debug for VfioInterrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioInterrupts")
            .field("device", &self.device.address())
            .field("routes", &self.routes.len())
            .field("enabled", &self.enabled)
            .field("intx", &self.intx.is_some())
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
        let intx = device
            .has_intx()
            .then(|| Arc::new(Mutex::new(IntxState::new(Box::new(device.clone())))));
        Self { device, new_route, routes: Vec::new(), enabled: None, msi_vectors, intx }
    }

    /// The handle the VMM connects the device's INTx with, if VFIO can deliver it.
    pub fn intx_handle(&self) -> Option<IntxHandle> {
        self.intx.as_ref().map(|state| IntxHandle { state: state.clone() })
    }

    /// Tells INTx whether MSI or MSI-X is on.
    fn intx_follows_msi(&self, msi_on: bool) {
        if let Some(state) = &self.intx {
            if let Err(e) = lock(state).set_msi_on(msi_on) {
                let what = if msi_on { "off" } else { "back on" };
                warn!("{}: turning INTx {what} failed: {e}", self.device.address());
            }
        }
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
    fn max_vectors(&self, kind: InterruptKind) -> Option<u16> {
        Some(u16::try_from(self.host_vectors(kind)).unwrap_or(u16::MAX))
    }

    fn set_vector_count(&mut self, kind: InterruptKind, vectors: u16) -> io::Result<()> {
        // VFIO refuses MSI and MSI-X while INTx is on.
        if vectors > 0 {
            self.intx_follows_msi(true);
        }
        let result = self.set_count(kind, vectors);
        // Both off (also after a failed enable): the device interrupts through INTx again.
        if self.enabled.is_none() {
            self.intx_follows_msi(false);
        }
        result
    }

    fn route_vector(&mut self, route: VectorRoute) -> io::Result<()> {
        let VectorRoute { kind, vector, message, requester_id } = route;
        if !vector_is_live(self.enabled, kind, vector, message.as_ref())? {
            return Ok(());
        }
        match self.routes.get(usize::from(vector)) {
            Some(route) => route.set(message, requester_id),
            // `set_count` made a route for every enabled vector; without one, it is not live.
            None => vector_is_live(None, kind, vector, message.as_ref()).map(drop),
        }
    }
}

impl VfioInterrupts {
    /// [`InterruptHost::set_vector_count`] for MSI and MSI-X alone.
    fn set_count(&mut self, kind: InterruptKind, vectors: u16) -> io::Result<()> {
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
}

impl Drop for VfioInterrupts {
    fn drop(&mut self) {
        // VFIO stops signalling before the routes (and their irqfds) go away.
        if let Err(e) = self.disable_enabled() {
            debug!("{}: disabling interrupts on drop: {e}", self.device.address());
        }
        if let Some(state) = &self.intx {
            if let Err(e) = lock(state).close() {
                debug!("{}: disabling INTx on drop: {e}", self.device.address());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    struct FakeIrqs {
        log: Log,
        /// Errors the next enable fails with (errno).
        fail_enable: Arc<Mutex<Option<i32>>>,
        on: Arc<Mutex<bool>>,
    }

    impl IntxIrqs for FakeIrqs {
        fn name(&self) -> String {
            "fake".into()
        }

        fn enable(&self, trigger: RawFd, unmask: RawFd) -> io::Result<()> {
            if let Some(errno) = self.fail_enable.lock().unwrap().take() {
                return Err(io::Error::from_raw_os_error(errno));
            }
            assert!(!*self.on.lock().unwrap(), "INTx enabled twice");
            *self.on.lock().unwrap() = true;
            self.log.lock().unwrap().push(format!("vfio on {trigger} {unmask}"));
            Ok(())
        }

        fn disable(&self) -> io::Result<()> {
            let mut on = self.on.lock().unwrap();
            if !*on {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            *on = false;
            self.log.lock().unwrap().push("vfio off".into());
            Ok(())
        }
    }

    struct FakeRoute {
        log: Log,
        id: RawFd,
    }

    impl IntxRoute for FakeRoute {
        fn trigger_fd(&self) -> RawFd {
            self.id
        }

        fn resample_fd(&self) -> RawFd {
            self.id + 1
        }

        fn set_enabled(&self, enabled: bool) -> io::Result<()> {
            self.log.lock().unwrap().push(format!("route {} {enabled}", self.id));
            Ok(())
        }
    }

    struct Rig {
        log: Log,
        on: Arc<Mutex<bool>>,
        fail_enable: Arc<Mutex<Option<i32>>>,
        state: Arc<Mutex<IntxState>>,
        handle: IntxHandle,
    }

    impl Rig {
        fn new() -> Self {
            let log = Log::default();
            let on = Arc::new(Mutex::new(false));
            let fail_enable = Arc::new(Mutex::new(None));
            let irqs =
                FakeIrqs { log: log.clone(), fail_enable: fail_enable.clone(), on: on.clone() };
            let state = Arc::new(Mutex::new(IntxState::new(Box::new(irqs))));
            let handle = IntxHandle { state: state.clone() };
            Self { log, on, fail_enable, state, handle }
        }

        fn route(&self, id: RawFd) -> Box<dyn IntxRoute> {
            Box::new(FakeRoute { log: self.log.clone(), id })
        }

        fn msi(&self, on: bool) {
            lock(&self.state).set_msi_on(on).unwrap();
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.log.lock().unwrap())
        }
    }

    #[test]
    fn connect_turns_intx_on_and_msi_takes_turns_with_it() {
        let rig = Rig::new();
        // Nothing happens before the VMM connects a route.
        rig.msi(false);
        assert!(rig.take().is_empty());
        rig.handle.connect(rig.route(10)).unwrap();
        assert_eq!(rig.take(), ["route 10 true", "vfio on 10 11"]);
        assert!(rig.handle.is_on());
        // MSI-X on: VFIO's INTx goes off before the route lets the line go.
        rig.msi(true);
        assert_eq!(rig.take(), ["vfio off", "route 10 false"]);
        assert!(!rig.handle.is_on() && !*rig.on.lock().unwrap());
        // A new MSI vector count keeps INTx off.
        rig.msi(true);
        assert!(rig.take().is_empty());
        rig.msi(false);
        assert_eq!(rig.take(), ["route 10 true", "vfio on 10 11"]);
        rig.msi(false);
        assert!(rig.take().is_empty());
    }

    #[test]
    fn a_route_connected_while_msi_is_on_waits() {
        let rig = Rig::new();
        rig.msi(true);
        rig.handle.connect(rig.route(20)).unwrap();
        assert!(rig.take().is_empty());
        assert!(!rig.handle.is_on());
        rig.msi(false);
        assert_eq!(rig.take(), ["route 20 true", "vfio on 20 21"]);
    }

    #[test]
    fn reconnecting_replaces_the_route() {
        let rig = Rig::new();
        rig.handle.connect(rig.route(10)).unwrap();
        rig.take();
        rig.handle.connect(rig.route(30)).unwrap();
        assert_eq!(rig.take(), ["vfio off", "route 10 false", "route 30 true", "vfio on 30 31"]);
    }

    #[test]
    fn a_failed_enable_lets_the_line_go_and_is_retried() {
        let rig = Rig::new();
        *rig.fail_enable.lock().unwrap() = Some(libc::EBUSY);
        let err = rig.handle.connect(rig.route(10)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY));
        assert_eq!(rig.take(), ["route 10 true", "route 10 false"]);
        assert!(!rig.handle.is_on());
        // The next time MSI goes off, INTx is tried again.
        rig.msi(true);
        rig.msi(false);
        assert_eq!(rig.take(), ["route 10 true", "vfio on 10 11"]);
    }

    #[test]
    fn disconnect_is_for_good_and_tolerates_intx_already_off() {
        let rig = Rig::new();
        rig.handle.connect(rig.route(10)).unwrap();
        rig.take();
        // The VMM turned INTx off behind the state's back (exit): EINVAL is not an error.
        *rig.on.lock().unwrap() = false;
        rig.handle.disconnect().unwrap();
        assert_eq!(rig.take(), ["route 10 false"]);
        rig.msi(false);
        assert!(rig.handle.connect(rig.route(40)).is_err());
        assert!(rig.take().is_empty());
        assert!(lock(&rig.state).route.is_none());
    }
}
