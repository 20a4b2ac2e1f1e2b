//! Hosts without eventfd (macOS/Hypervisor.framework, where every notify is an MMIO exit): the
//! doorbell is a counter with a condition variable, and the worker waits on it. The device
//! code it runs is the same as on Linux.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};

use crate::virtio::worker::{QueueService, POLL_INTERVAL};

/// One queue's doorbell: rings counted under a mutex, waited for on a condition variable.
#[derive(Debug, Default)]
pub struct QueueEvent {
    pending: Mutex<u64>,
    wake: Condvar,
}

impl QueueEvent {
    /// A new, unsignalled doorbell.
    pub fn new() -> io::Result<Self> {
        Ok(Self::default())
    }

    /// Rings the doorbell (the notify write trapped on a vCPU thread, or a stop request).
    pub fn notify(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        *pending += 1;
        self.wake.notify_all();
    }

    /// No descriptor: a host kernel cannot wait on this doorbell (no vhost here).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }

    /// Clears the doorbell; returns how many rings it counted.
    pub(crate) fn take(&self) -> u64 {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Waits up to `timeout` for a ring; returns how many arrived (0 on timeout).
    fn wait(&self, timeout: std::time::Duration) -> u64 {
        let guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let (mut pending, _) = self
            .wake
            .wait_timeout_while(guard, timeout, |p| *p == 0)
            .unwrap_or_else(|e| e.into_inner());
        std::mem::take(&mut *pending)
    }
}

/// Serves `service` until `stop` is set (the stopper rings the doorbell after setting it).
pub(crate) fn run_event_loop(service: &mut dyn QueueService, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        service.serve();
        // A timeout also serves: a driver that skipped a notify is not stuck.
        service.doorbell().wait(POLL_INTERVAL);
    }
}
