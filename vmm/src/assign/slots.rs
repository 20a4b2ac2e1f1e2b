//! Which assigned devices the guest has, per root port: present, or lost (the host took the
//! device away) and waiting to be plugged in again. Portable bookkeeping, no OS calls.
//!
//! A device is every function behind one root port: they leave and come back together.
//! The only transitions are present -> lost ([`Slots::mark_lost`]) and lost -> present
//! ([`Slots::mark_replugged`]); anything else is refused, so a second loss report or a
//! re-plug of a device that never left does nothing.

use std::time::{Duration, Instant};

use devices::pci::FunctionId;
use passthrough::PciAddress;

/// Where one assigned device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    /// In the guest.
    Present,
    /// Taken away by the host at `since`; its functions left the guest and the host.
    Lost {
        /// When the loss was handled.
        since: Instant,
    },
}

/// One root port with an assigned device behind it.
#[derive(Debug, Clone)]
struct Slot {
    port: FunctionId,
    /// Its functions' host addresses, in `--device` order.
    addresses: Vec<PciAddress>,
    state: SlotState,
}

/// The root ports of the assigned devices and where each device stands.
#[derive(Debug, Clone, Default)]
pub(super) struct Slots {
    slots: Vec<Slot>,
}

impl Slots {
    /// Every function (host address, root port) present, grouped by port.
    pub(super) fn new(ports: &[(PciAddress, FunctionId)]) -> Self {
        let mut slots: Vec<Slot> = Vec::new();
        for &(address, port) in ports {
            match slots.iter_mut().find(|s| s.port == port) {
                Some(slot) => slot.addresses.push(address),
                None => {
                    slots.push(Slot { port, addresses: vec![address], state: SlotState::Present })
                }
            }
        }
        Self { slots }
    }

    /// The root port of `address`, if it is an assigned function.
    pub(super) fn port_of(&self, address: PciAddress) -> Option<FunctionId> {
        self.slots.iter().find(|s| s.addresses.contains(&address)).map(|s| s.port)
    }

    /// Every function behind `port`.
    pub(super) fn addresses(&self, port: FunctionId) -> Vec<PciAddress> {
        self.slot(port).map(|s| s.addresses.clone()).unwrap_or_default()
    }

    /// Where the device behind `port` stands.
    #[cfg(test)]
    pub(super) fn state(&self, port: FunctionId) -> Option<SlotState> {
        self.slot(port).map(|s| s.state)
    }

    /// The device behind `port` left at `now`; false if it was not present.
    pub(super) fn mark_lost(&mut self, port: FunctionId, now: Instant) -> bool {
        match self.slots.iter_mut().find(|s| s.port == port) {
            Some(slot) if slot.state == SlotState::Present => {
                slot.state = SlotState::Lost { since: now };
                true
            }
            _ => false,
        }
    }

    /// The lost devices: each root port and its functions.
    pub(super) fn lost(&self) -> Vec<(FunctionId, Vec<PciAddress>)> {
        self.slots
            .iter()
            .filter(|s| matches!(s.state, SlotState::Lost { .. }))
            .map(|s| (s.port, s.addresses.clone()))
            .collect()
    }

    /// The device behind `port` is back in the guest at `now`: how long it was away, `None`
    /// (and nothing changes) if it was not lost.
    pub(super) fn mark_replugged(&mut self, port: FunctionId, now: Instant) -> Option<Duration> {
        let slot = self.slots.iter_mut().find(|s| s.port == port)?;
        let SlotState::Lost { since } = slot.state else { return None };
        slot.state = SlotState::Present;
        Some(now.saturating_duration_since(since))
    }

    fn slot(&self, port: FunctionId) -> Option<&Slot> {
        self.slots.iter().find(|s| s.port == port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> PciAddress {
        text.parse().unwrap()
    }

    const PORT1: FunctionId = FunctionId::Bus0 { device: 1 };
    const PORT2: FunctionId = FunctionId::Bus0 { device: 2 };

    fn gpu_and_nvme() -> Slots {
        Slots::new(&[
            (addr("0000:01:00.0"), PORT1),
            (addr("0000:01:00.1"), PORT1),
            (addr("0000:02:00.0"), PORT2),
        ])
    }

    #[test]
    fn functions_of_one_port_are_one_device() {
        let slots = gpu_and_nvme();
        assert_eq!(slots.addresses(PORT1), [addr("0000:01:00.0"), addr("0000:01:00.1")]);
        assert_eq!(slots.port_of(addr("0000:01:00.1")), Some(PORT1));
        assert_eq!(slots.port_of(addr("0000:02:00.0")), Some(PORT2));
        assert_eq!(slots.port_of(addr("0000:03:00.0")), None);
        assert!(slots.lost().is_empty());
        assert_eq!(slots.state(PORT2), Some(SlotState::Present));
    }

    #[test]
    fn present_lost_replugged_and_lost_again() {
        let mut slots = gpu_and_nvme();
        let t0 = Instant::now();
        assert_eq!(slots.mark_replugged(PORT1, t0), None, "a present device is not re-plugged");
        assert!(slots.mark_lost(PORT1, t0));
        assert!(!slots.mark_lost(PORT1, t0), "a second report changes nothing");
        assert_eq!(slots.state(PORT1), Some(SlotState::Lost { since: t0 }));
        assert_eq!(slots.lost(), [(PORT1, vec![addr("0000:01:00.0"), addr("0000:01:00.1")])]);
        assert_eq!(slots.state(PORT2), Some(SlotState::Present), "the other device stays");

        let back = t0 + Duration::from_millis(1500);
        assert_eq!(slots.mark_replugged(PORT1, back), Some(Duration::from_millis(1500)));
        assert_eq!(slots.state(PORT1), Some(SlotState::Present));
        assert!(slots.lost().is_empty());
        assert_eq!(slots.mark_replugged(PORT1, back), None, "only once");

        assert!(slots.mark_lost(PORT1, back), "it can leave again");
        assert_eq!(slots.lost().len(), 1);
    }

    #[test]
    fn unknown_ports_are_refused() {
        let mut slots = gpu_and_nvme();
        let other = FunctionId::Bus0 { device: 7 };
        assert!(!slots.mark_lost(other, Instant::now()));
        assert_eq!(slots.mark_replugged(other, Instant::now()), None);
        assert!(slots.addresses(other).is_empty());
        assert_eq!(slots.state(other), None);
    }
}
