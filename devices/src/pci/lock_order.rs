//! The lock order of the PCI emulation, checked at run time in debug builds.
//!
//! Every lock a guest access can take is an [`OrderedMutex`] or [`OrderedRwLock`] with a
//! [`LockLevel`]. A thread may only take a lock whose level is strictly above every level it
//! already holds; anything else panics (in debug builds, so in every test) before blocking.
//! Two locks of one level (two functions, say) are never held at once.
//!
//! The point of the order: the topology lock is never held while waiting for a function, so a
//! function busy for a long time (an aperture-dma doorbell mapping 128 buffers on the host)
//! stalls only accesses to itself, never configuration accesses or other functions' BARs.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Lock levels, lowest first: take them in this order only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LockLevel {
    /// One PCI function's state (its config space, BARs, device model). A function's own
    /// internal locks (an aperture-dma window manager) come after it.
    Function,
    /// The PCI topology: slots, root ports and their bus numbers, ECAM decode.
    Topology,
    /// The BAR-change hook (maps passed-through BAR pieces into the guest).
    BarHook,
    /// The table of decoded BARs the MMIO bus routes by (a vCPU takes the read side only
    /// long enough to clone the target).
    Routes,
    /// The trace and BAR-change hook slots (read to clone a hook, never held while calling).
    Hooks,
}

#[cfg(debug_assertions)]
thread_local! {
    /// The levels this thread holds, in the order taken (so ascending).
    static HELD: std::cell::RefCell<Vec<LockLevel>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records that this thread takes `level`; panics if that breaks the order.
fn enter(level: LockLevel) {
    #[cfg(debug_assertions)]
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        if let Some(&top) = held.last() {
            assert!(
                top < level,
                "lock order violated: taking {level:?} while holding {top:?} (held: {held:?})"
            );
        }
        held.push(level);
    });
    #[cfg(not(debug_assertions))]
    let _ = level;
}

/// Records that this thread released `level`.
fn leave(level: LockLevel) {
    #[cfg(debug_assertions)]
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        if let Some(at) = held.iter().rposition(|&l| l == level) {
            held.remove(at);
        }
    });
    #[cfg(not(debug_assertions))]
    let _ = level;
}

/// Pops the level when dropped; declared after the inner guard so it drops after the unlock.
#[derive(Debug)]
struct LevelToken(LockLevel);

impl Drop for LevelToken {
    fn drop(&mut self) {
        leave(self.0);
    }
}

/// A mutex that takes part in the lock order. Poisoning is ignored: a panicking vCPU stops
/// the VM anyway, and the data stays usable for the others' clean-up.
#[derive(Debug)]
pub struct OrderedMutex<T: ?Sized> {
    level: LockLevel,
    inner: Mutex<T>,
}

/// The guard of an [`OrderedMutex`].
#[derive(Debug)]
pub struct OrderedMutexGuard<'a, T: ?Sized> {
    guard: MutexGuard<'a, T>,
    _level: LevelToken,
}

impl<T> OrderedMutex<T> {
    /// A mutex at `level`.
    pub fn new(level: LockLevel, value: T) -> Self {
        Self { level, inner: Mutex::new(value) }
    }
}

impl<T: ?Sized> OrderedMutex<T> {
    /// Locks; panics (debug builds) if this thread holds a lock at this level or above.
    pub fn lock(&self) -> OrderedMutexGuard<'_, T> {
        enter(self.level);
        let token = LevelToken(self.level);
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        OrderedMutexGuard { guard, _level: token }
    }
}

impl<T: ?Sized> std::ops::Deref for OrderedMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T: ?Sized> std::ops::DerefMut for OrderedMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

/// A reader-writer lock that takes part in the lock order (both sides count as its level).
#[derive(Debug)]
pub struct OrderedRwLock<T> {
    level: LockLevel,
    inner: RwLock<T>,
}

/// The read guard of an [`OrderedRwLock`].
#[derive(Debug)]
pub struct OrderedReadGuard<'a, T> {
    guard: RwLockReadGuard<'a, T>,
    _level: LevelToken,
}

/// The write guard of an [`OrderedRwLock`].
#[derive(Debug)]
pub struct OrderedWriteGuard<'a, T> {
    guard: RwLockWriteGuard<'a, T>,
    _level: LevelToken,
}

impl<T> OrderedRwLock<T> {
    /// A lock at `level`.
    pub fn new(level: LockLevel, value: T) -> Self {
        Self { level, inner: RwLock::new(value) }
    }

    /// Takes the read side.
    pub fn read(&self) -> OrderedReadGuard<'_, T> {
        enter(self.level);
        let token = LevelToken(self.level);
        let guard = self.inner.read().unwrap_or_else(|e| e.into_inner());
        OrderedReadGuard { guard, _level: token }
    }

    /// Takes the write side.
    pub fn write(&self) -> OrderedWriteGuard<'_, T> {
        enter(self.level);
        let token = LevelToken(self.level);
        let guard = self.inner.write().unwrap_or_else(|e| e.into_inner());
        OrderedWriteGuard { guard, _level: token }
    }
}

impl<T> std::ops::Deref for OrderedReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::Deref for OrderedWriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> std::ops::DerefMut for OrderedWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_message(result: std::thread::Result<()>) -> String {
        let payload = result.unwrap_err();
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn ascending_levels_are_allowed_and_released_levels_forgotten() {
        let function = OrderedMutex::new(LockLevel::Function, 1);
        let topology = OrderedMutex::new(LockLevel::Topology, 2);
        let routes = OrderedRwLock::new(LockLevel::Routes, 3);
        {
            let f = function.lock();
            let t = topology.lock();
            let r = routes.read();
            assert_eq!(*f + *t + *r, 6);
        }
        // Everything was released: the topology alone, then a function, works again.
        drop(topology.lock());
        let mut f = function.lock();
        *f += 1;
        drop(f);
        *routes.write() += 1;
        assert_eq!(*routes.read(), 4);
    }

    /// Takes `first` then `second` on a thread of its own; returns the panic message.
    fn take_in_order(first: LockLevel, second: LockLevel) -> String {
        let (a, b) = (OrderedMutex::new(first, ()), OrderedMutex::new(second, ()));
        panic_message(
            std::thread::spawn(move || {
                let _a = a.lock();
                let _b = b.lock();
            })
            .join(),
        )
    }

    #[test]
    fn a_function_lock_under_the_topology_lock_panics() {
        let message = take_in_order(LockLevel::Topology, LockLevel::Function);
        assert!(
            message.contains("taking Function while holding Topology"),
            "unexpected panic: {message:?}"
        );
    }

    #[test]
    fn two_locks_of_one_level_panic() {
        let message = take_in_order(LockLevel::Function, LockLevel::Function);
        assert!(message.contains("taking Function while holding Function"), "{message:?}");
    }

    #[test]
    fn guards_dropped_out_of_order_release_their_own_level() {
        let function = OrderedMutex::new(LockLevel::Function, ());
        let topology = OrderedMutex::new(LockLevel::Topology, ());
        let f = function.lock();
        let t = topology.lock();
        drop(f);
        // Topology still held: a function lock now would be out of order.
        drop(t);
        drop(function.lock());
        drop(topology.lock());
    }
}
