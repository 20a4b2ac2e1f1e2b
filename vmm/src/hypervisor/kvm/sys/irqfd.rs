//! irqfds: an eventfd signalled by a host device (VFIO) or a virtio device's worker becomes a
//! guest interrupt without waking the VMM or an ioctl. MSIs go through the ITS (MSI routes); INTx lines are GIC SPIs (irqchip
//! routes) with a resample eventfd that KVM signals when the guest EOIs them.
//!
//! One GSI routing table holds both kinds ([`GsiRoutes`]). It replaces KVM's default table
//! (GSI n to SPI n), which nothing else relies on: the VMM's own devices drive their SPIs
//! with `KVM_IRQ_LINE`, which on arm64 names the INTID directly and bypasses GSI routing.
//! The GIC's initialization installs the default table, so [`commit`] runs again after it.

use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_irqchip,
    kvm_irq_routing_msi, kvm_irq_routing_msi__bindgen_ty_1, KvmIrqRouting, KVM_IRQ_ROUTING_IRQCHIP,
    KVM_IRQ_ROUTING_MSI, KVM_MSI_VALID_DEVID,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::hypervisor::kvm::routing::{GsiRoutes, GsiTarget};
use crate::hypervisor::{HypervisorError, IrqfdLevel, IrqfdMsi, MsiRoute, Result};

/// The KVM routing entry for `gsi`.
fn kvm_entry(gsi: u32, target: GsiTarget) -> kvm_irq_routing_entry {
    match target {
        GsiTarget::Msi(route) => kvm_irq_routing_entry {
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
        },
        // arm64 has one irqchip, the GIC (0); the pin is the SPI number, INTID - 32
        // (vgic-irqfd.c adds VGIC_NR_PRIVATE_IRQS). The GIC reports the guest's EOI of a
        // level SPI as (0, pin), which resamples the irqfds on this GSI.
        GsiTarget::Spi(spi) => kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            flags: 0,
            pad: 0,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                irqchip: kvm_irq_routing_irqchip { irqchip: 0, pin: spi },
            },
        },
    }
}

/// Installs `routes` as the VM's whole GSI routing table.
pub fn commit(vm: &VmFd, routes: &GsiRoutes) -> Result<()> {
    let table_error = |e| HypervisorError::RoutingTable { detail: format!("{e:?}") };
    let mut routing = KvmIrqRouting::new(0).map_err(table_error)?;
    for (gsi, target) in routes.entries() {
        routing.push(kvm_entry(gsi, target)).map_err(table_error)?;
    }
    vm.set_gsi_routing(&routing).map_err(|e| HypervisorError::call("KVM_SET_GSI_ROUTING", e))
}

/// The VM fd and its routing table, shared by the VM and its irqfds.
#[derive(Debug)]
pub struct IrqfdContext {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Its routes.
    pub routes: Mutex<GsiRoutes>,
}

impl IrqfdContext {
    /// The routing table, locked.
    pub fn routes(&self) -> MutexGuard<'_, GsiRoutes> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Points `gsi` at `target` (or nowhere) and commits the table if that changed it; on
    /// failure the table is left as KVM has it.
    fn set_route(&self, routes: &mut GsiRoutes, gsi: u32, target: Option<GsiTarget>) -> Result<()> {
        let previous = routes.set(gsi, target)?;
        if previous == target {
            return Ok(());
        }
        commit(&self.vm, routes).inspect_err(|_| {
            // Restoring a route that was in the table cannot fail.
            let _ = routes.set(gsi, previous);
        })
    }

    /// Frees `gsi` and its route.
    fn release(&self, gsi: u32) -> Result<()> {
        let mut routes = self.routes();
        if routes.release(gsi) {
            commit(&self.vm, &routes)?;
        }
        Ok(())
    }
}

fn new_eventfd() -> Result<EventFd> {
    EventFd::new(libc::EFD_NONBLOCK)
        .map_err(|e| HypervisorError::call("creating an irqfd eventfd", e))
}

/// One MSI irqfd and its GSI.
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
        let eventfd = new_eventfd()?;
        let gsi = context.routes().allocate()?;
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
        let mut routes = context.routes();
        if *connected {
            context.vm.unregister_irqfd(&self.eventfd, self.gsi).map_err(|e| {
                HypervisorError::call(format!("KVM_IRQFD deassign gsi {}", self.gsi), e)
            })?;
            *connected = false;
        }
        context.set_route(&mut routes, self.gsi, route.map(GsiTarget::Msi))?;
        if route.is_some() {
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
        Ok(())
    }

    fn signal(&self) -> Result<()> {
        self.eventfd
            .write(1)
            .map_err(|e| HypervisorError::call(format!("signalling irqfd gsi {}", self.gsi), e))
    }
}

impl Drop for KvmIrqfdMsi {
    fn drop(&mut self) {
        if let Err(e) = self.set_route(None) {
            log::debug!("irqfd gsi {}: {e}", self.gsi);
        }
        if let Some(context) = self.context.upgrade() {
            if let Err(e) = context.release(self.gsi) {
                log::debug!("irqfd gsi {}: {e}", self.gsi);
            }
        }
    }
}

/// A level-triggered irqfd on a GIC SPI, with its resample eventfd and GSI. The route is
/// in the table for the irqfd's whole life; connecting only registers the irqfd.
#[derive(Debug)]
pub struct KvmIrqfdLevel {
    context: Weak<IrqfdContext>,
    trigger: EventFd,
    resample: EventFd,
    spi: u32,
    gsi: u32,
    connected: Mutex<bool>,
}

impl KvmIrqfdLevel {
    /// A new, disconnected irqfd for `spi`, whose route is committed at once.
    pub fn new(context: &Arc<IrqfdContext>, spi: u32) -> Result<Self> {
        let trigger = new_eventfd()?;
        let resample = new_eventfd()?;
        let mut routes = context.routes();
        let gsi = routes.allocate()?;
        if let Err(e) = context.set_route(&mut routes, gsi, Some(GsiTarget::Spi(spi))) {
            routes.release(gsi);
            return Err(e);
        }
        log::debug!("level irqfd: GSI {gsi} routed to SPI {spi} (INTID {})", spi + 32);
        Ok(Self {
            context: Arc::downgrade(context),
            trigger,
            resample,
            spi,
            gsi,
            connected: Mutex::new(false),
        })
    }
}

impl IrqfdLevel for KvmIrqfdLevel {
    fn eventfd(&self) -> RawFd {
        self.trigger.as_raw_fd()
    }

    fn resample_eventfd(&self) -> RawFd {
        self.resample.as_raw_fd()
    }

    fn set_enabled(&self, enabled: bool) -> Result<()> {
        let Some(context) = self.context.upgrade() else { return Ok(()) };
        let mut connected = self.connected.lock().unwrap_or_else(|e| e.into_inner());
        if *connected == enabled {
            return Ok(());
        }
        if enabled {
            // An already signalled eventfd asserts the line at once.
            context
                .vm
                .register_irqfd_with_resample(&self.trigger, &self.resample, self.gsi)
                .map_err(|e| {
                    HypervisorError::call(
                        format!(
                            "KVM_IRQFD with resample, gsi {} (SPI {}, fds {}/{})",
                            self.gsi,
                            self.spi,
                            self.trigger.as_raw_fd(),
                            self.resample.as_raw_fd()
                        ),
                        e,
                    )
                })?;
        } else {
            // KVM deasserts the line when the last irqfd of its resampler goes away.
            context.vm.unregister_irqfd(&self.trigger, self.gsi).map_err(|e| {
                HypervisorError::call(format!("KVM_IRQFD deassign gsi {}", self.gsi), e)
            })?;
            // The EOI that would have re-armed the host's line will not be reported now.
            if let Err(e) = self.resample.write(1) {
                log::debug!("level irqfd SPI {}: resample eventfd: {e}", self.spi);
            }
        }
        *connected = enabled;
        Ok(())
    }
}

impl Drop for KvmIrqfdLevel {
    fn drop(&mut self) {
        let Some(context) = self.context.upgrade() else { return };
        // Disconnect first: the deassertion on the way out goes through the route.
        let connected = *self.connected.get_mut().unwrap_or_else(|e| e.into_inner());
        if connected {
            if let Err(e) = context.vm.unregister_irqfd(&self.trigger, self.gsi) {
                log::debug!(
                    "level irqfd SPI {}: KVM_IRQFD deassign gsi {}: {e}",
                    self.spi,
                    self.gsi
                );
            }
        }
        if let Err(e) = context.release(self.gsi) {
            log::debug!("level irqfd SPI {}: {e}", self.spi);
        }
    }
}
