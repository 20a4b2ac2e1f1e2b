//! The VM's GSI routing table as the VMM keeps it: which GSI (the number an irqfd is bound
//! to) delivers to which guest interrupt.
//!
//! KVM's `KVM_SET_GSI_ROUTING` replaces the whole table on every call, and the first call
//! also drops the default table (on arm64, GSI n to SPI n). So one table holds every route
//! the VM's irqfds use, MSIs and GIC SPIs alike, with GSIs from one allocator so they never
//! collide. This is the bookkeeping only, free of ioctls, so it is tested on any host; the
//! KVM backend turns [`GsiRoutes::entries`] into `kvm_irq_routing_entry`s.

use std::collections::{BTreeMap, BTreeSet};

use crate::hypervisor::MsiRoute;

/// GSIs KVM accepts: `KVM_MAX_IRQ_ROUTES`, which bounds both GSI numbers and table size.
pub const MAX_GSIS: u32 = 4096;

/// SPIs a routing entry can name: KVM's `KVM_IRQCHIP_NUM_PINS` on arm64 (INTIDs 32..1019).
pub const MAX_SPI_PINS: u32 = 1020 - 32;

/// Where a GSI delivers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GsiTarget {
    /// An MSI, translated by the ITS.
    Msi(MsiRoute),
    /// A shared peripheral interrupt of the in-kernel GIC: the 0-based SPI number (INTID
    /// 32 + spi), which is the routing entry's irqchip pin on arm64.
    Spi(u32),
}

/// Why a route cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// Every GSI is in use.
    #[error("all {MAX_GSIS} interrupt routes (GSIs) are in use")]
    Exhausted,
    /// The SPI is beyond what a routing entry can name.
    #[error("SPI {0} is out of range for an interrupt route (at most {max})", max = MAX_SPI_PINS - 1)]
    SpiOutOfRange(u32),
    /// Another GSI already routes to this SPI; KVM would report the guest's EOI of it to
    /// only one of them.
    #[error("SPI {spi} already has a route (GSI {gsi})")]
    SpiInUse {
        /// The SPI.
        spi: u32,
        /// The GSI routed to it.
        gsi: u32,
    },
    /// The GSI was not handed out by this table.
    #[error("GSI {0} is not allocated")]
    NotAllocated(u32),
}

/// The routing table and its GSI allocator. GSIs start at 0; a released GSI is handed out
/// again (lowest first), since the number of routes KVM accepts is bounded.
#[derive(Debug, Default)]
pub struct GsiRoutes {
    routes: BTreeMap<u32, GsiTarget>,
    next: u32,
    free: BTreeSet<u32>,
}

impl GsiRoutes {
    /// Hands out an unused GSI, with no route yet.
    pub fn allocate(&mut self) -> Result<u32, RoutingError> {
        if let Some(gsi) = self.free.pop_first() {
            return Ok(gsi);
        }
        if self.next >= MAX_GSIS {
            return Err(RoutingError::Exhausted);
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    fn is_allocated(&self, gsi: u32) -> bool {
        gsi < self.next && !self.free.contains(&gsi)
    }

    /// Gives `gsi` back, dropping its route. Returns whether a route was dropped (the
    /// table must then be committed again). Releasing a GSI that is not allocated does
    /// nothing.
    pub fn release(&mut self, gsi: u32) -> bool {
        if !self.is_allocated(gsi) {
            return false;
        }
        self.free.insert(gsi);
        self.routes.remove(&gsi).is_some()
    }

    /// The route of `gsi`, if it has one.
    pub fn get(&self, gsi: u32) -> Option<GsiTarget> {
        self.routes.get(&gsi).copied()
    }

    /// The GSI routed to `spi`, if any.
    pub fn gsi_of_spi(&self, spi: u32) -> Option<u32> {
        self.routes.iter().find(|(_, t)| **t == GsiTarget::Spi(spi)).map(|(&gsi, _)| gsi)
    }

    /// Sets or removes (`None`) the route of allocated `gsi`; returns the previous one. The
    /// table must be committed again when the two differ.
    pub fn set(
        &mut self,
        gsi: u32,
        target: Option<GsiTarget>,
    ) -> Result<Option<GsiTarget>, RoutingError> {
        if !self.is_allocated(gsi) {
            return Err(RoutingError::NotAllocated(gsi));
        }
        match target {
            Some(target) => {
                if let GsiTarget::Spi(spi) = target {
                    if spi >= MAX_SPI_PINS {
                        return Err(RoutingError::SpiOutOfRange(spi));
                    }
                    if let Some(other) = self.gsi_of_spi(spi).filter(|&other| other != gsi) {
                        return Err(RoutingError::SpiInUse { spi, gsi: other });
                    }
                }
                Ok(self.routes.insert(gsi, target))
            }
            None => Ok(self.routes.remove(&gsi)),
        }
    }

    /// Every route, in GSI order: the whole table to commit.
    pub fn entries(&self) -> impl Iterator<Item = (u32, GsiTarget)> + '_ {
        self.routes.iter().map(|(&gsi, &target)| (gsi, target))
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msi(data: u32) -> GsiTarget {
        GsiTarget::Msi(MsiRoute { address: 0x0808_0040, data, devid: 0x100 })
    }

    #[test]
    fn msi_and_spi_routes_share_one_gsi_space() {
        let mut routes = GsiRoutes::default();
        let a = routes.allocate().unwrap();
        let b = routes.allocate().unwrap();
        let c = routes.allocate().unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        assert_eq!(routes.set(a, Some(msi(0))), Ok(None));
        assert_eq!(routes.set(b, Some(GsiTarget::Spi(5))), Ok(None));
        assert_eq!(routes.set(c, Some(msi(1))), Ok(None));
        // GSI 1 carries SPI 5, not the default GSI 5 -> SPI 5: the table is explicit.
        assert_eq!(
            routes.entries().collect::<Vec<_>>(),
            vec![(0, msi(0)), (1, GsiTarget::Spi(5)), (2, msi(1))]
        );
        assert_eq!(routes.gsi_of_spi(5), Some(1));
        assert_eq!(routes.gsi_of_spi(0), None);
    }

    #[test]
    fn set_reports_the_previous_route() {
        let mut routes = GsiRoutes::default();
        let gsi = routes.allocate().unwrap();
        assert_eq!(routes.set(gsi, None), Ok(None));
        assert_eq!(routes.set(gsi, Some(msi(3))), Ok(None));
        assert_eq!(routes.set(gsi, Some(msi(3))), Ok(Some(msi(3))));
        assert_eq!(routes.set(gsi, Some(msi(4))), Ok(Some(msi(3))));
        assert_eq!(routes.get(gsi), Some(msi(4)));
        assert_eq!(routes.set(gsi, None), Ok(Some(msi(4))));
        assert!(routes.is_empty());
    }

    #[test]
    fn released_gsis_are_reused_lowest_first_and_drop_their_route() {
        let mut routes = GsiRoutes::default();
        for _ in 0..4 {
            routes.allocate().unwrap();
        }
        routes.set(1, Some(GsiTarget::Spi(3))).unwrap();
        assert!(routes.release(1));
        assert!(!routes.release(2), "no route to drop");
        assert!(!routes.release(2), "double release is ignored");
        assert!(!routes.release(9), "never allocated");
        assert!(routes.is_empty());
        assert_eq!(routes.allocate(), Ok(1));
        assert_eq!(routes.allocate(), Ok(2));
        assert_eq!(routes.allocate(), Ok(4));
        // The SPI is free again for another GSI.
        assert_eq!(routes.set(4, Some(GsiTarget::Spi(3))), Ok(None));
    }

    #[test]
    fn an_spi_has_at_most_one_gsi() {
        let mut routes = GsiRoutes::default();
        let a = routes.allocate().unwrap();
        let b = routes.allocate().unwrap();
        routes.set(a, Some(GsiTarget::Spi(7))).unwrap();
        assert_eq!(
            routes.set(b, Some(GsiTarget::Spi(7))),
            Err(RoutingError::SpiInUse { spi: 7, gsi: a })
        );
        // Setting the same route again on its own GSI is fine.
        assert_eq!(routes.set(a, Some(GsiTarget::Spi(7))), Ok(Some(GsiTarget::Spi(7))));
        assert_eq!(routes.get(b), None);
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut routes = GsiRoutes::default();
        assert_eq!(routes.set(0, Some(msi(0))), Err(RoutingError::NotAllocated(0)));
        let gsi = routes.allocate().unwrap();
        assert_eq!(
            routes.set(gsi, Some(GsiTarget::Spi(MAX_SPI_PINS))),
            Err(RoutingError::SpiOutOfRange(MAX_SPI_PINS))
        );
        assert_eq!(routes.set(gsi, Some(GsiTarget::Spi(MAX_SPI_PINS - 1))), Ok(None));
        routes.release(gsi);
        assert_eq!(routes.set(gsi, None), Err(RoutingError::NotAllocated(gsi)));
    }

    #[test]
    fn gsis_run_out_at_the_kvm_limit() {
        let mut routes = GsiRoutes::default();
        for expected in 0..MAX_GSIS {
            assert_eq!(routes.allocate(), Ok(expected));
        }
        assert_eq!(routes.allocate(), Err(RoutingError::Exhausted));
        routes.release(17);
        assert_eq!(routes.allocate(), Ok(17));
    }
}
