//! Hosts without eventfd (macOS): the doorbells are condition-variable counters, so the loop
//! polls the backend's descriptor with a short timeout and looks at both queues each time.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::virtio::net::engine::{NetEngine, RxState};
use crate::virtio::net::worker::NetDoorbells;

/// How long one wait lasts: the latency of a transmit the guest notified.
const WAIT_MS: i32 = 1;

/// Serves the device until `stop` is set.
pub(crate) fn run_net_loop(engine: &mut NetEngine, bells: &NetDoorbells, stop: &AtomicBool) {
    while !stop.load(Ordering::Acquire) {
        bells.rx.take();
        bells.tx.take();
        engine.process_tx();
        let state = engine.process_rx();
        let mut poll = libc::pollfd {
            fd: engine.backend().readable_fd(),
            events: if state == RxState::Idle { libc::POLLIN } else { 0 },
            revents: 0,
        };
        // SAFETY: `poll` points at one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut poll, 1, WAIT_MS) };
    }
}
