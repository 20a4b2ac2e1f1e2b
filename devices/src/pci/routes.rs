//! The decoded BARs, as the MMIO bus routes by them.
//!
//! Each decoded BAR of each function is one route to that function's [`FunctionCell`]. A
//! function moves its own routes when a configuration write changes where its BARs decode
//! (memory decoding toggled, BAR reprogrammed). A vCPU takes the read side only long enough
//! to clone the cell, then locks that function alone.

use std::sync::Arc;

use log::debug;

use super::config::BarRegion;
use super::function::FunctionCell;
use super::lock_order::{LockLevel, OrderedRwLock};
use super::root::FunctionId;

/// One decoded BAR.
#[derive(Clone)]
struct Route {
    id: FunctionId,
    region: BarRegion,
    function: Arc<FunctionCell>,
}

/// The order routes are kept (and overlapping BARs resolved) in: bus-0 device order, each
/// port's functions after the port.
fn order_key(id: FunctionId, bar: usize) -> (u8, u8, usize) {
    match id {
        FunctionId::Bus0 { device } => (device, 0, bar),
        FunctionId::BehindPort { port, function } => (port, function.saturating_add(1), bar),
    }
}

/// Whether a BAR access has a width a CPU can make (1, 2, 4 or 8 bytes).
fn bar_access_ok(len: usize) -> bool {
    matches!(len, 1 | 2 | 4 | 8)
}

/// Every decoded BAR of a root complex.
pub struct BarRoutes {
    table: OrderedRwLock<Vec<Route>>,
}

impl std::fmt::Debug for BarRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarRoutes").field("regions", &self.regions()).finish()
    }
}

impl BarRoutes {
    pub(crate) fn new() -> Self {
        Self { table: OrderedRwLock::new(LockLevel::Routes, Vec::new()) }
    }

    /// Replaces the routes of `id` by `regions`, all to `function`.
    pub(crate) fn replace(
        &self,
        id: FunctionId,
        regions: &[BarRegion],
        function: &Arc<FunctionCell>,
    ) {
        let mut table = self.table.write();
        table.retain(|r| r.id != id);
        for region in regions {
            let key = order_key(id, region.index);
            let at = table.partition_point(|r| order_key(r.id, r.region.index) < key);
            table.insert(at, Route { id, region: *region, function: function.clone() });
        }
    }

    /// Every decoded BAR.
    pub fn regions(&self) -> Vec<(FunctionId, BarRegion)> {
        self.table.read().iter().map(|r| (r.id, r.region)).collect()
    }

    /// The function, BAR and offset an access of `len` bytes at `address` reaches. The
    /// table is unlocked when this returns.
    fn find(&self, address: u64, len: usize) -> Option<(Arc<FunctionCell>, usize, u64)> {
        if !bar_access_ok(len) {
            return None;
        }
        let table = self.table.read();
        let route = table.iter().find(|r| r.region.contains(address, len as u64))?;
        Some((route.function.clone(), route.region.index, address - route.region.address))
    }

    /// A read at guest physical `address`: the BAR that decodes it answers; nothing there
    /// reads all-ones. Returns whether a BAR claimed it.
    pub fn read(&self, address: u64, data: &mut [u8]) -> bool {
        let Some((function, bar, offset)) = self.find(address, data.len()) else {
            debug!("PCI read of {} bytes at {address:#x}: no BAR there", data.len());
            data.fill(0xff);
            return false;
        };
        function.bar_read(bar, offset, data);
        true
    }

    /// A write at guest physical `address`; returns whether a BAR claimed it.
    pub fn write(&self, address: u64, data: &[u8]) -> bool {
        let Some((function, bar, offset)) = self.find(address, data.len()) else {
            debug!("PCI write of {} bytes at {address:#x}: no BAR there", data.len());
            return false;
        };
        function.bar_write(bar, offset, data);
        true
    }
}
