//! MSI routes for irqfds: an eventfd signalled by a host device (VFIO) becomes a guest MSI
//! through the ITS without waking the VMM.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, Weak};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_msi,
    kvm_irq_routing_msi__bindgen_ty_1, KvmIrqRouting, KVM_IRQ_ROUTING_MSI, KVM_MSI_VALID_DEVID,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::hypervisor::{HypervisorError, IrqfdMsi, MsiRoute, Result};

/// The VM's MSI routing table. KVM replaces the whole table on every update, so it is kept
/// here; GSIs are handed out once and never reused while their irqfd lives.
#[derive(Debug, Default)]
pub struct MsiRoutes {
    table: BTreeMap<u32, MsiRoute>,
    next_gsi: u32,
}

impl MsiRoutes {
    fn allocate(&mut self) -> u32 {
        let gsi = self.next_gsi;
        self.next_gsi += 1;
        gsi
    }

    fn commit(&self, vm: &VmFd) -> Result<()> {
        let mut routing = KvmIrqRouting::new(0)
            .map_err(|e| HypervisorError::Guest(format!("GSI routing table: {e:?}")))?;
        for (&gsi, route) in &self.table {
            let entry = kvm_irq_routing_entry {
                gsi,
                type_: KVM_IRQ_ROUTING_MSI,
                flags: KVM_MSI_VALID_DEVID,
                pad: 0,
                u: kvm_irq_routing_entry__bindgen_ty_1 {
                    msi: kvm_irq_routing_msi {
                        address_lo: route.address as u32,
                        address_hi: (route.address >> 32) as u32,
                        data: route.data,
                        __bindgen_anon_1: kvm_irq_routing_msi__bindgen_ty_1 { devid: route.devid },
                    },
                },
            };
            routing
                .push(entry)
                .map_err(|e| HypervisorError::Guest(format!("GSI routing table: {e:?}")))?;
        }
        vm.set_gsi_routing(&routing).map_err(|e| HypervisorError::call("KVM_SET_GSI_ROUTING", e))
    }
}

/// The VM fd and its routing table, shared by the VM and its irqfds.
#[derive(Debug)]
pub struct IrqfdContext {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Its routes.
    pub routes: Mutex<MsiRoutes>,
}

/// One irqfd and its GSI.
#[derive(Debug)]
pub struct KvmIrqfdMsi {
    context: Weak<IrqfdContext>,
    eventfd: EventFd,
    gsi: u32,
    connected: Mutex<bool>,
}

impl KvmIrqfdMsi {
    /// A new, disconnected irqfd.
    pub fn new(context: &Arc<IrqfdContext>) -> Result<Self> {
        let eventfd = EventFd::new(libc::EFD_NONBLOCK)
            .map_err(|e| HypervisorError::call("creating an irqfd eventfd", e))?;
        let gsi = context.routes.lock().unwrap_or_else(|e| e.into_inner()).allocate();
        Ok(Self { context: Arc::downgrade(context), eventfd, gsi, connected: Mutex::new(false) })
    }
}

impl IrqfdMsi for KvmIrqfdMsi {
    fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    fn set_route(&self, route: Option<MsiRoute>) -> Result<()> {
        let Some(context) = self.context.upgrade() else { return Ok(()) };
        let mut connected = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        let mut routes = context.routes.lock().unwrap_or_else(|e| e.into_inner());
        if *connected {
            context.vm.unregister_irqfd(&self.eventfd, self.gsi).map_err(|e| {
                HypervisorError::call(format!("KVM_IRQFD deassign gsi {}", self.gsi), e)
            })?;
            *connected = false;
        }
        match route {
            Some(route) => {
                routes.table.insert(self.gsi, route);
                routes.commit(&context.vm)?;
                // Registering an eventfd that is already signalled injects at once: pending
                // interrupts raised while masked are delivered now.
                context.vm.register_irqfd(&self.eventfd, self.gsi).map_err(|e| {
                    HypervisorError::call(
                        format!("KVM_IRQFD gsi {} (fd {})", self.gsi, self.eventfd.as_raw_fd()),
                        e,
                    )
                })?;
                *connected = true;
            }
            None => {
                if routes.table.remove(&self.gsi).is_some() {
                    routes.commit(&context.vm)?;
                }
            }
        }
        Ok(())
    }
}

impl Drop for KvmIrqfdMsi {
    fn drop(&mut self) {
        if let Err(e) = self.set_route(None) {
            log::debug!("irqfd gsi {}: {e}", self.gsi);
        }
    }
}
