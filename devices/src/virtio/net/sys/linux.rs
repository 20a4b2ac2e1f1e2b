//! Linux: one epoll set holds both doorbells' eventfds and the backend's descriptor; the
//! backend is watched only while the guest has room for what it sends.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use log::error;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use crate::virtio::net::engine::{NetEngine, RxState};
use crate::virtio::net::worker::NetDoorbells;
use crate::virtio::worker::POLL_INTERVAL;

const RX_BELL: u64 = 0;
const TX_BELL: u64 = 1;
const BACKEND: u64 = 2;

/// Serves the device until `stop` is set (the stopper rings the tx doorbell after setting it).
pub(crate) fn run_net_loop(engine: &mut NetEngine, bells: &NetDoorbells, stop: &AtomicBool) {
    let epoll = match Epoll::new() {
        Ok(epoll) => epoll,
        Err(e) => {
            error!("virtio-net: cannot create its event loop ({e}); the device does not work");
            return;
        }
    };
    let backend_fd = engine.backend().readable_fd();
    for (fd, data) in
        [(bells.rx.eventfd().as_raw_fd(), RX_BELL), (bells.tx.eventfd().as_raw_fd(), TX_BELL)]
    {
        if let Err(e) = epoll.ctl(ControlOperation::Add, fd, EpollEvent::new(EventSet::IN, data)) {
            error!("virtio-net: cannot watch a queue doorbell ({e}); the device does not work");
            return;
        }
    }
    let timeout_ms = i32::try_from(POLL_INTERVAL.as_millis()).unwrap_or(i32::MAX);
    let mut watching_backend = false;
    let mut events = [EpollEvent::default(); 4];
    while !stop.load(Ordering::Acquire) {
        // Both directions on every wake-up: cheap when there is nothing to do.
        engine.process_tx();
        let state = engine.process_rx();
        let watch = state == RxState::Idle;
        if watch != watching_backend {
            let (op, set) = if watch {
                (ControlOperation::Add, EventSet::IN)
            } else {
                (ControlOperation::Delete, EventSet::empty())
            };
            match epoll.ctl(op, backend_fd, EpollEvent::new(set, BACKEND)) {
                Ok(()) => watching_backend = watch,
                Err(e) => error!("virtio-net: cannot (un)watch the backend: {e}"),
            }
        }
        let ready = match epoll.wait(timeout_ms, &mut events) {
            Ok(ready) => ready,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => 0,
            Err(e) => {
                error!("virtio-net: its event loop failed ({e}); the device stops working");
                return;
            }
        };
        for event in &events[..ready] {
            match event.data() {
                RX_BELL => {
                    bells.rx.take();
                }
                TX_BELL => {
                    bells.tx.take();
                }
                _ => {}
            }
        }
    }
}
