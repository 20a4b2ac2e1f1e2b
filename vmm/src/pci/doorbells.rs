//! Virtio queue doorbells the hypervisor rings itself (KVM ioeventfd): registered at each
//! queue's notify address wherever the guest places the transport's BAR, moved when it moves
//! the BAR, removed while the BAR does not decode. Where the hypervisor has no ioeventfd
//! (Hypervisor.framework) nothing is registered and the notify write traps; the transport then
//! rings the same event, so the device has one code path either way.

use std::collections::HashMap;
use std::sync::Arc;

use devices::pci::virtio_pci::QueueDoorbell;
use devices::pci::{BarChange, FunctionId};
use devices::virtio::QueueEvent;
use log::{debug, warn};

use crate::hypervisor::{HypervisorError, Vm};

/// One registration the hypervisor holds: the event and the guest address it watches.
struct Registered {
    event: Arc<QueueEvent>,
    addr: u64,
}

/// Keeps the virtio functions' queue doorbells registered at the BAR addresses the guest
/// programs. Runs in the BAR-change hook, with the function locked (lock level `BarHook`):
/// it only talks to the hypervisor, never to PCI.
pub(super) struct DoorbellMapper {
    vm: Arc<dyn Vm>,
    doorbells: HashMap<FunctionId, Vec<QueueDoorbell>>,
    registered: HashMap<(FunctionId, usize), Vec<Registered>>,
    /// Cleared when the hypervisor says it has no ioeventfd: every notify traps then.
    supported: bool,
}

impl DoorbellMapper {
    /// A mapper for `doorbells`, by function; nothing is registered until a BAR decodes.
    pub(super) fn new(vm: Arc<dyn Vm>, doorbells: HashMap<FunctionId, Vec<QueueDoorbell>>) -> Self {
        Self { vm, doorbells, registered: HashMap::new(), supported: true }
    }

    /// Whether there is any doorbell to follow.
    pub(super) fn is_empty(&self) -> bool {
        self.doorbells.values().all(Vec::is_empty)
    }

    /// Follows `change`: removes the registrations at the BAR's old place, adds them at its
    /// new one (none while decoding is off).
    pub(super) fn changed(&mut self, change: &BarChange) {
        if !self.supported {
            return;
        }
        let key = (change.id, change.bar);
        for old in self.registered.remove(&key).unwrap_or_default() {
            match self.vm.unregister_ioevent(&old.event, old.addr) {
                Ok(()) => debug!("{}: queue doorbell at {:#x} removed", change.function, old.addr),
                Err(e) => warn!("{}: queue doorbell at {:#x}: {e}", change.function, old.addr),
            }
        }
        let (Some(region), Some(doorbells)) = (change.new, self.doorbells.get(&change.id)) else {
            return;
        };
        let mut registered = Vec::new();
        for doorbell in doorbells.iter().filter(|d| d.bar == change.bar) {
            let addr = region.address + doorbell.offset;
            match self.vm.register_ioevent(&doorbell.event, addr) {
                Ok(()) => {
                    debug!("{}: queue doorbell registered at {addr:#x}", change.function);
                    registered.push(Registered { event: doorbell.event.clone(), addr });
                }
                Err(HypervisorError::NoIoeventfd) => {
                    debug!("no ioeventfd: virtio queue notifies are trapped and forwarded");
                    self.supported = false;
                    return;
                }
                Err(e) => warn!(
                    "{}: queue doorbell at {addr:#x}: {e}; notifies there are trapped instead",
                    change.function
                ),
            }
        }
        if !registered.is_empty() {
            self.registered.insert(key, registered);
        }
    }
}
