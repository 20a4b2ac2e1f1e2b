//! Which route each MSI-X vector's hypervisor trigger carries (KVM: an irqfd per vector).
//!
//! The transport keeps the MSI-X rules itself ([`MsixState`]: masking, the pending bits), so a
//! vector's trigger is only signalled when the message may be sent now. A trigger's route
//! follows its entry: the entry's message while it is deliverable, nothing otherwise (masked,
//! MSI-X off, function masked). [`VectorRoutes::sync`] brings the routes in line after every
//! change the guest makes; [`VectorRoutes::signal`] raises a vector through its trigger when
//! the route carries exactly the message to send, and otherwise leaves the caller to send it
//! the direct way ([`MsiSink::signal_msi`]), which is also the whole path on a host without
//! triggers. One device code path; two delivery paths.

use log::{debug, warn};

use crate::pci::msix::MsixState;
use crate::pci::{MsiMessage, MsiSink, MsiVector};

/// A vector's route: the message and the requester id it is sent with.
type Route = (MsiMessage, u16);

struct Trigger {
    vector: Box<dyn MsiVector>,
    /// What the hypervisor has; `None` also after a failed update.
    route: Option<Route>,
}

/// The triggers of one function's vectors and their routes.
pub(crate) struct VectorRoutes {
    name: String,
    /// One per vector, or none at all (a host without triggers).
    triggers: Vec<Trigger>,
}

impl VectorRoutes {
    /// Asks `sink` for a trigger per vector; with fewer than `count`, none are used.
    pub(crate) fn new(name: &str, sink: &dyn MsiSink, count: u16) -> Self {
        let mut triggers = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            match sink.vector() {
                Some(vector) => triggers.push(Trigger { vector, route: None }),
                None => break,
            }
        }
        if triggers.len() != usize::from(count) {
            if !triggers.is_empty() {
                debug!(
                    "{name}: {} of {count} MSI-X vectors could have a hypervisor trigger; all \
                     are sent directly",
                    triggers.len()
                );
            }
            triggers.clear();
        }
        Self { name: name.to_string(), triggers }
    }

    /// Whether the vectors have hypervisor triggers.
    pub(crate) fn active(&self) -> bool {
        !self.triggers.is_empty()
    }

    /// Points each trigger at what its entry in `msix` sends now, with `requester_id`, where
    /// that changed. A failed update leaves the vector disconnected: it is then sent directly.
    pub(crate) fn sync(&mut self, msix: &MsixState, requester_id: u16) {
        for (index, trigger) in self.triggers.iter_mut().enumerate() {
            // At most MAX_MSIX_VECTORS triggers.
            let wanted = msix.route(index as u16).map(|message| (message, requester_id));
            if wanted == trigger.route {
                continue;
            }
            match trigger.vector.set_route(wanted) {
                Ok(()) => trigger.route = wanted,
                Err(e) => {
                    warn!(
                        "{}: MSI-X vector {index}: cannot update its interrupt route ({e}); it \
                         is sent by the VMM instead",
                        self.name
                    );
                    if trigger.vector.set_route(None).is_ok() {
                        trigger.route = None;
                    }
                }
            }
        }
    }

    /// The eventfd of `vector`'s trigger, if it has one.
    pub(crate) fn eventfd(&self, vector: u16) -> Option<std::os::fd::RawFd> {
        self.triggers.get(usize::from(vector))?.vector.eventfd()
    }

    /// Raises `vector` through its trigger if its route sends `route`; returns whether it
    /// did (otherwise the caller sends the message directly).
    pub(crate) fn signal(&self, vector: u16, route: Route) -> bool {
        let Some(trigger) = self.triggers.get(usize::from(vector)) else { return false };
        if trigger.route != Some(route) {
            return false;
        }
        match trigger.vector.signal() {
            Ok(()) => true,
            Err(e) => {
                debug!("{}: MSI-X vector {vector}: trigger failed ({e}); sent directly", self.name);
                false
            }
        }
    }
}

impl std::fmt::Debug for VectorRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VectorRoutes")
            .field("triggers", &self.triggers.len())
            .field("routed", &self.triggers.iter().filter(|t| t.route.is_some()).count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::testing::TriggerHost;

    const DOORBELL: u64 = 0x0808_0040;

    fn msg(data: u32) -> MsiMessage {
        MsiMessage { address: DOORBELL, data }
    }

    /// MSI-X enabled with `vectors` entries programmed (data = index), all masked.
    fn programmed(vectors: u16) -> MsixState {
        let mut msix = MsixState::new(vectors).unwrap();
        msix.set_control(true, false);
        for v in 0..u64::from(vectors) {
            msix.write_table(v * 16, &DOORBELL.to_le_bytes());
            msix.write_table(v * 16 + 8, &(v as u32).to_le_bytes());
        }
        msix
    }

    fn set_masked(msix: &mut MsixState, vector: u64, masked: bool) -> Vec<MsiMessage> {
        msix.write_table(vector * 16 + 12, &u32::from(masked).to_le_bytes())
    }

    #[test]
    fn routes_follow_the_deliverable_entries() {
        let host = TriggerHost::default();
        let mut routes = VectorRoutes::new("t", &host, 3);
        assert!(routes.active());
        let mut msix = programmed(3);
        routes.sync(&msix, 0x100);
        assert!(host.log().route_changes.is_empty(), "all masked: nothing to route");
        set_masked(&mut msix, 1, false);
        routes.sync(&msix, 0x100);
        routes.sync(&msix, 0x100);
        assert_eq!(host.log().route_changes, [(1, Some((msg(1), 0x100)))], "one change only");
        // New data while unmasked, a new requester id, then a mask: each moves the route.
        msix.write_table(16 + 8, &7u32.to_le_bytes());
        routes.sync(&msix, 0x100);
        routes.sync(&msix, 0x300);
        set_masked(&mut msix, 1, true);
        routes.sync(&msix, 0x300);
        assert_eq!(
            host.log().route_changes[1..],
            [(1, Some((msg(7), 0x100))), (1, Some((msg(7), 0x300))), (1, None)]
        );
        // The function mask and MSI-X disable disconnect everything.
        set_masked(&mut msix, 0, false);
        set_masked(&mut msix, 2, false);
        routes.sync(&msix, 0x300);
        msix.set_control(true, true);
        routes.sync(&msix, 0x300);
        let log = host.log();
        assert_eq!(
            log.route_changes[4..],
            [(0, Some((msg(0), 0x300))), (2, Some((msg(2), 0x300))), (0, None), (2, None),]
        );
    }

    #[test]
    fn signal_uses_the_trigger_only_when_its_route_is_the_message() {
        let host = TriggerHost::default();
        let mut routes = VectorRoutes::new("t", &host, 2);
        let mut msix = programmed(2);
        set_masked(&mut msix, 0, false);
        routes.sync(&msix, 0x100);
        let message = msix.trigger(0).unwrap();
        assert!(routes.signal(0, (message, 0x100)));
        assert_eq!(host.log().routed, [(msg(0), 0x100)]);
        // A message the route does not carry (raced with a change), a disconnected vector and
        // one out of range go the direct way.
        assert!(!routes.signal(0, (msg(9), 0x100)));
        assert!(!routes.signal(1, (msg(1), 0x100)));
        assert!(!routes.signal(5, (msg(5), 0x100)));
        assert_eq!(host.log().routed.len(), 1);
        assert!(host.log().held.is_empty(), "never signals a disconnected trigger");
    }

    #[test]
    fn masked_vectors_stay_pending_and_unmask_releases_them() {
        // The pending bit is the transport's: a masked vector's trigger is not signalled.
        let host = TriggerHost::default();
        let mut routes = VectorRoutes::new("t", &host, 1);
        let mut msix = programmed(1);
        routes.sync(&msix, 0x100);
        assert_eq!(msix.trigger(0), None);
        assert!(msix.is_pending(0));
        let released = set_masked(&mut msix, 0, false);
        routes.sync(&msix, 0x100);
        assert_eq!(released, [msg(0)]);
        assert!(!msix.is_pending(0));
        assert_eq!(host.log().route_changes, [(0, Some((msg(0), 0x100)))]);
        assert!(host.log().routed.is_empty() && host.log().held.is_empty());
    }

    #[test]
    fn a_failed_route_falls_back_to_direct_sends() {
        let host = TriggerHost::default();
        let mut routes = VectorRoutes::new("t", &host, 1);
        let mut msix = programmed(1);
        set_masked(&mut msix, 0, false);
        host.log().fail_routes = true;
        routes.sync(&msix, 0x100);
        assert!(!routes.signal(0, (msg(0), 0x100)));
        // Once routes work again, the next sync connects it.
        host.log().fail_routes = false;
        routes.sync(&msix, 0x100);
        assert!(routes.signal(0, (msg(0), 0x100)));
    }

    #[test]
    fn without_a_trigger_for_every_vector_none_are_used() {
        let none = crate::pci::testing::RecordingMsiSink::default();
        assert!(!VectorRoutes::new("t", &none, 4).active());
        let short = TriggerHost { limit: Some(2), ..Default::default() };
        let mut routes = VectorRoutes::new("t", &short, 4);
        assert!(!routes.active());
        let mut msix = programmed(4);
        set_masked(&mut msix, 0, false);
        routes.sync(&msix, 0);
        assert!(!routes.signal(0, (msg(0), 0)));
    }
}
