//! One PCI function behind its own lock, and the hooks every function reports to.
//!
//! A [`FunctionCell`] is what the topology and the BAR routes point at: a guest access locks
//! only the cell it reaches, so a function busy for long (an aperture-dma doorbell) stalls
//! accesses to itself only.

use std::ops::RangeInclusive;
use std::sync::{Arc, Weak};

use super::config::BarRegion;
use super::lock_order::{LockLevel, OrderedMutex, OrderedMutexGuard, OrderedRwLock};
use super::root::{BarChange, BarChangeHook, FunctionId, TraceEvent, TraceHook, TraceKind};
use super::routes::BarRoutes;
use super::{ConfigMirror, PciFunction};

/// Header type bit 7: the device has functions besides function 0.
const HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;

/// The hooks of a root complex, shared by its functions.
pub(crate) struct Hooks {
    trace: OrderedRwLock<Option<Arc<TraceHook>>>,
    bar_change: OrderedMutex<Option<BarChangeHook>>,
    mirror: OrderedRwLock<Option<Arc<dyn ConfigMirror>>>,
}

impl Hooks {
    pub(crate) fn new() -> Self {
        Self {
            trace: OrderedRwLock::new(LockLevel::Hooks, None),
            bar_change: OrderedMutex::new(LockLevel::BarHook, None),
            mirror: OrderedRwLock::new(LockLevel::Hooks, None),
        }
    }

    pub(crate) fn set_mirror(&self, mirror: Option<Arc<dyn ConfigMirror>>) {
        *self.mirror.write() = mirror;
    }

    /// The mirror, cloned so it is not called under the hooks lock.
    fn mirror(&self) -> Option<Arc<dyn ConfigMirror>> {
        self.mirror.read().clone()
    }

    pub(crate) fn set_trace(&self, hook: Option<TraceHook>) {
        *self.trace.write() = hook.map(Arc::new);
    }

    pub(crate) fn set_bar_change(&self, hook: Option<BarChangeHook>) {
        *self.bar_change.lock() = hook;
    }

    pub(crate) fn has_trace(&self) -> bool {
        self.trace.read().is_some()
    }

    /// The trace hook, cloned so it is not called under the hooks lock.
    fn trace(&self) -> Option<Arc<TraceHook>> {
        self.trace.read().clone()
    }
}

/// What a function's lock protects.
pub(crate) struct FunctionState {
    pub(crate) function: Box<dyn PciFunction>,
    /// The BARs it decoded after the last configuration write (what the routes hold).
    regions: Vec<BarRegion>,
    /// The requester id it was last told, if any.
    pub(crate) requester_id: Option<u16>,
    /// A root port's bus numbers after the last configuration write.
    buses: Option<RangeInclusive<u8>>,
}

/// What a configuration write did beyond the function itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WriteEffects {
    /// A bridge's bus numbers changed.
    pub(crate) renumbered: bool,
    /// A bridge's guest set Secondary Bus Reset (rising edge).
    pub(crate) secondary_bus_reset: bool,
}

/// Bytes of one function's configuration space.
const CONFIG_SPACE_SIZE: usize = 4096;

/// One function on the emulated bus, behind its own lock.
pub(crate) struct FunctionCell {
    id: FunctionId,
    name: String,
    state: OrderedMutex<FunctionState>,
    hooks: Arc<Hooks>,
    /// Weak: the routes hold the cells they route to, so a strong reference back would keep
    /// the whole root complex alive after its owner dropped it.
    routes: Weak<BarRoutes>,
}

fn value_of(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = data.len().min(8);
    bytes[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(bytes)
}

impl FunctionCell {
    /// `function` at `id`, told `requester_id` (if known) before anyone can reach it.
    pub(crate) fn new(
        id: FunctionId,
        mut function: Box<dyn PciFunction>,
        requester_id: Option<u16>,
        hooks: Arc<Hooks>,
        routes: Arc<BarRoutes>,
    ) -> Arc<Self> {
        if let Some(rid) = requester_id {
            function.set_requester_id(rid);
        }
        let name = function.name().to_string();
        let buses = function.bridge_buses();
        let state = FunctionState { function, regions: Vec::new(), requester_id, buses };
        Arc::new(Self {
            id,
            name,
            state: OrderedMutex::new(LockLevel::Function, state),
            hooks,
            routes: Arc::downgrade(&routes),
        })
    }

    pub(crate) fn id(&self) -> FunctionId {
        self.id
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Locks the function.
    pub(crate) fn lock(&self) -> OrderedMutexGuard<'_, FunctionState> {
        self.state.lock()
    }

    fn trace(&self, kind: TraceKind, offset: u64, data: &[u8]) {
        let Some(hook) = self.hooks.trace() else { return };
        hook(&TraceEvent {
            kind,
            function: &self.name,
            id: self.id,
            offset,
            size: data.len(),
            value: value_of(data),
        });
    }

    /// Copies a bus-0 function into the configuration mirror, if there is one (after anything
    /// that may change what its registers read, with the function still locked, so copies
    /// land in the order of the changes). A function that cannot be copied turns the mirror
    /// off.
    pub(crate) fn refresh_mirror(&self, state: &FunctionState) {
        let FunctionId::Bus0 { device } = self.id else { return };
        let Some(mirror) = self.hooks.mirror() else { return };
        let mut image = [0u8; CONFIG_SPACE_SIZE];
        if state.function.config_copy(&mut image) {
            mirror.update(device, &image);
        } else {
            mirror.disable();
        }
    }

    /// A configuration read; `multi_function` sets bit 7 of the header type the guest sees
    /// (the root knows whether the port has other functions, the function does not).
    pub(crate) fn config_read(&self, register: u16, data: &mut [u8], multi_function: bool) {
        let mut state = self.lock();
        state.function.config_read(register, data);
        if multi_function {
            let index = super::config::HEADER_TYPE.checked_sub(register).map(usize::from);
            if let Some(byte) = index.and_then(|i| data.get_mut(i)) {
                *byte |= HEADER_TYPE_MULTI_FUNCTION;
            }
        }
        self.trace(TraceKind::ConfigRead, u64::from(register), data);
    }

    /// A configuration write. Moves the function's BAR routes if it changed where they
    /// decode; if a bridge's bus numbers changed, calls `renumbered` with the new ones while
    /// the function is still locked (so the topology sees renumberings in order).
    pub(crate) fn config_write(
        self: &Arc<Self>,
        register: u16,
        data: &[u8],
        renumbered: impl FnOnce(Option<RangeInclusive<u8>>),
    ) -> WriteEffects {
        let mut state = self.lock();
        self.trace(TraceKind::ConfigWrite, u64::from(register), data);
        state.function.config_write(register, data);
        self.update_bars(&mut state);
        self.refresh_mirror(&state);
        let secondary_bus_reset = state.function.take_secondary_bus_reset();
        let buses = state.function.bridge_buses();
        if buses == state.buses {
            return WriteEffects { renumbered: false, secondary_bus_reset };
        }
        state.buses = buses.clone();
        renumbered(buses);
        WriteEffects { renumbered: true, secondary_bus_reset }
    }

    /// Resets the function for a secondary bus reset of its port, then routes the BARs it
    /// decodes afterwards (none, from power-on) and tells the BAR-change hook.
    pub(crate) fn bus_reset(self: &Arc<Self>) {
        let mut state = self.lock();
        state.function.bus_reset();
        self.update_bars(&mut state);
        self.refresh_mirror(&state);
    }

    /// Resets the function for a VM reboot, then routes the BARs it decodes afterwards
    /// (none) and forgets its bus numbers if it is a bridge.
    pub(crate) fn system_reset(self: &Arc<Self>) {
        let mut state = self.lock();
        state.function.system_reset();
        state.buses = state.function.bridge_buses();
        self.update_bars(&mut state);
        self.refresh_mirror(&state);
    }

    /// Routes the BARs the function decodes now and tells the BAR-change hook what moved.
    pub(crate) fn update_bars(self: &Arc<Self>, state: &mut FunctionState) {
        let regions = state.function.bar_regions();
        if regions == state.regions {
            return;
        }
        let old = std::mem::replace(&mut state.regions, regions);
        if let Some(routes) = self.routes.upgrade() {
            routes.replace(self.id, &state.regions, self);
        }
        let mut hook = self.hooks.bar_change.lock();
        let Some(hook) = hook.as_mut() else { return };
        let find =
            |regions: &[BarRegion], bar: usize| regions.iter().find(|r| r.index == bar).copied();
        let mut seen = Vec::new();
        for bar in old.iter().chain(state.regions.iter()).map(|r| r.index) {
            let (before, after) = (find(&old, bar), find(&state.regions, bar));
            if before != after && !seen.contains(&bar) {
                seen.push(bar);
                hook(&BarChange {
                    id: self.id,
                    function: self.name.clone(),
                    bar,
                    old: before,
                    new: after,
                    unplugged: false,
                });
            }
        }
    }

    /// The function's device left: puts a stand-in in its place that drops accesses (those
    /// already on their way, and those to its old BAR addresses), tells the BAR-change hook
    /// each BAR is gone, and returns the function, unlocked and no longer reachable.
    pub(crate) fn unplug(&self) -> Box<dyn PciFunction> {
        let mut state = self.lock();
        let stand_in =
            Box::new(super::unplugged::Unplugged::new(&self.name, state.regions.clone()));
        let function = std::mem::replace(&mut state.function, stand_in);
        let mut hook = self.hooks.bar_change.lock();
        if let Some(hook) = hook.as_mut() {
            // Every BAR index, decoded or not: the VMM may hold host mappings of any.
            for bar in 0..super::config::BAR_COUNT {
                hook(&BarChange {
                    id: self.id,
                    function: self.name.clone(),
                    bar,
                    old: state.regions.iter().find(|r| r.index == bar).copied(),
                    new: None,
                    unplugged: true,
                });
            }
        }
        function
    }

    /// Tells the function (a root port) that a device arrived behind it or left.
    pub(crate) fn set_slot_presence(&self, present: bool) {
        let mut state = self.lock();
        state.function.set_slot_presence(present);
        self.refresh_mirror(&state);
    }

    /// A read of BAR `bar` at `offset`.
    pub(crate) fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) {
        let mut state = self.lock();
        state.function.bar_read(bar, offset, data);
        self.trace(TraceKind::BarRead { bar }, offset, data);
    }

    /// A write of BAR `bar` at `offset`.
    pub(crate) fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) {
        let mut state = self.lock();
        self.trace(TraceKind::BarWrite { bar }, offset, data);
        state.function.bar_write(bar, offset, data);
    }
}
