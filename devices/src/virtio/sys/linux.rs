//! Linux: the doorbell is an eventfd and the worker waits on it in an `event-manager` loop
//! (epoll), so KVM can ring it directly (`KVM_IOEVENTFD`).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use log::{error, warn};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::virtio::worker::{QueueService, POLL_INTERVAL};

/// One queue's doorbell: a non-blocking eventfd.
#[derive(Debug)]
pub struct QueueEvent {
    eventfd: EventFd,
}

impl QueueEvent {
    /// A new, unsignalled doorbell.
    pub fn new() -> io::Result<Self> {
        Ok(Self { eventfd: EventFd::new(EFD_NONBLOCK)? })
    }

    /// Rings the doorbell (the notify write trapped on a vCPU thread, or a stop request).
    pub fn notify(&self) {
        // Fails only when the counter would overflow, and then the worker is woken anyway.
        if let Err(e) = self.eventfd.write(1) {
            warn!("virtio queue doorbell: cannot signal its eventfd: {e}");
        }
    }

    /// The eventfd to register with the hypervisor (`KVM_IOEVENTFD` on the queue's notify
    /// address): KVM then signals it on the guest's notify write without an exit.
    pub fn eventfd(&self) -> &EventFd {
        &self.eventfd
    }

    /// The eventfd's descriptor, for a host kernel that waits on the doorbell itself
    /// (vhost-net's kick).
    pub fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.eventfd.as_raw_fd())
    }

    /// Clears the doorbell; returns how many rings it counted (0 when it was not rung).
    pub(crate) fn take(&self) -> u64 {
        self.eventfd.read().unwrap_or(0)
    }
}

/// The event-manager subscriber of one queue: serves the queue when its doorbell rings.
struct DoorbellSubscriber<'a> {
    service: &'a mut dyn QueueService,
    stop: &'a AtomicBool,
}

const DOORBELL: u32 = 0;

impl MutEventSubscriber for DoorbellSubscriber<'_> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == DOORBELL {
            self.service.doorbell().take();
            if !self.stop.load(Ordering::Acquire) {
                self.service.serve();
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        let fd = self.service.doorbell().eventfd.as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(fd, DOORBELL, EventSet::IN)) {
            error!("virtio worker: cannot watch the queue doorbell: {e}");
        }
    }
}

/// Serves `service` until `stop` is set (the stopper rings the doorbell after setting it).
pub(crate) fn run_event_loop(service: &mut dyn QueueService, stop: &AtomicBool) {
    // Serve first: the driver may have queued requests before the device went live.
    service.serve();
    let mut manager = match EventManager::<DoorbellSubscriber<'_>>::new() {
        Ok(manager) => manager,
        Err(e) => {
            error!(
                "virtio worker: cannot create its event loop ({e}); the queue is not served \
                 (the host is out of file descriptors or memory)"
            );
            return;
        }
    };
    let id = manager.add_subscriber(DoorbellSubscriber { service, stop });
    let timeout_ms = i32::try_from(POLL_INTERVAL.as_millis()).unwrap_or(i32::MAX);
    while !stop.load(Ordering::Acquire) {
        match manager.run_with_timeout(timeout_ms) {
            // A quiet interval: look at the ring anyway (a driver that skipped a notify).
            Ok(0) => {
                if let Ok(subscriber) = manager.subscriber_mut(id) {
                    if !stop.load(Ordering::Acquire) {
                        subscriber.service.serve();
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                error!("virtio worker: its event loop failed ({e}); the queue is not served");
                return;
            }
        }
    }
}
