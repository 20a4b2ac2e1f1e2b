//! The thread that serves one virtqueue: it waits for the queue's doorbell in an event loop
//! (`sys`: event-manager on Linux), runs the device's queue handler and raises the queue's
//! interrupt once per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::error;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::queue_service::has_pending;
use super::sys::run_event_loop;
use super::{ActivateError, ActiveQueue, QueueEvent, VirtioInterrupt};

/// How long the worker sleeps without a notification before it looks at the ring and the stop
/// flag again (a missed notification costs at most this much latency).
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Runs first on every device worker thread, with the thread's name, before it touches the
/// queue: where the VMM confines the thread (seccomp on Linux), so that this crate stays free
/// of OS calls. Cloned into each worker a device starts (it restarts them on reset).
#[derive(Clone)]
pub struct WorkerStartHook(Arc<dyn Fn(&str) + Send + Sync>);

impl WorkerStartHook {
    /// Wraps `hook`.
    pub fn new(hook: impl Fn(&str) + Send + Sync + 'static) -> Self {
        Self(Arc::new(hook))
    }

    /// Runs the hook for the thread called `name`.
    pub(crate) fn run(&self, name: &str) {
        (self.0)(name);
    }
}

impl std::fmt::Debug for WorkerStartHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerStartHook")
    }
}

/// Serves the chains of one queue.
pub(crate) trait QueueHandler: Send + 'static {
    /// Serves every available chain; returns whether the driver needs an interrupt.
    fn process_queue(&mut self, queue: &mut Queue, mem: &GuestMemoryMmap) -> bool;
}

/// One queue as its worker serves it: the device's handler, the ring and its doorbell.
pub(crate) trait QueueService {
    /// Serves every available chain, interrupting the driver once per batch when it asks for
    /// it, until the ring is drained.
    fn serve(&mut self);
    /// The queue's doorbell.
    fn doorbell(&self) -> &QueueEvent;
}

struct ServedQueue<'a, H> {
    handler: &'a Mutex<H>,
    memory: &'a GuestMemoryMmap,
    index: u16,
    queue: Queue,
    doorbell: Arc<QueueEvent>,
    interrupt: &'a dyn VirtioInterrupt,
}

impl<H: QueueHandler> QueueService for ServedQueue<'_, H> {
    fn serve(&mut self) {
        loop {
            let before = self.queue.next_avail();
            let needs_interrupt = self
                .handler
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .process_queue(&mut self.queue, self.memory);
            if needs_interrupt {
                self.interrupt.signal_queue(self.index);
            }
            // A pass stops early on a full ring; go on without waiting for a notification.
            if self.queue.next_avail() == before || !has_pending(&self.queue, self.memory) {
                return;
            }
        }
    }

    fn doorbell(&self) -> &QueueEvent {
        &self.doorbell
    }
}

/// A running queue worker; stopping (or dropping) it joins the thread.
#[derive(Debug)]
pub(crate) struct QueueWorker {
    name: &'static str,
    stop: Arc<AtomicBool>,
    notify: Arc<QueueEvent>,
    thread: Option<JoinHandle<()>>,
}

impl QueueWorker {
    /// Starts a thread called `name` that runs `on_start`, then serves `active` with
    /// `handler` in the queue's event loop. The handler stays shared so that it survives a
    /// failed spawn and a reset.
    pub(crate) fn spawn<H: QueueHandler>(
        name: &'static str,
        handler: Arc<Mutex<H>>,
        memory: GuestMemoryMmap,
        active: ActiveQueue,
        interrupt: Arc<dyn VirtioInterrupt>,
        on_start: Option<WorkerStartHook>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let notify = Arc::clone(&active.notify);
        let thread_stop = Arc::clone(&stop);
        let thread = crate::thread::named(name).spawn(move || {
            if let Some(hook) = on_start {
                hook.run(name);
            }
            let ActiveQueue { index, queue, notify } = active;
            let mut served = ServedQueue {
                handler: &handler,
                memory: &memory,
                index,
                queue,
                doorbell: notify,
                interrupt: interrupt.as_ref(),
            };
            run_event_loop(&mut served, &thread_stop);
        })?;
        Ok(Self { name, stop, notify, thread: Some(thread) })
    }

    /// Stops the thread and waits for it; afterwards it no longer touches guest memory.
    pub(crate) fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.notify.notify();
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                error!(
                    "the {} worker thread panicked; the device stopped serving its queue \
                     (this is a bug in Aperture; restart the VM)",
                    self.name
                );
            }
        }
    }
}

impl Drop for QueueWorker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Takes the one queue of a single-queue device, checked against guest memory, with
/// EVENT_IDX set as negotiated.
pub(crate) fn single_queue(
    device: &str,
    queues: Vec<ActiveQueue>,
    memory: &GuestMemoryMmap,
    event_idx: bool,
) -> Result<ActiveQueue, ActivateError> {
    let count = queues.len();
    let mut queues = queues.into_iter();
    let (Some(mut active), None) = (queues.next(), queues.next()) else {
        return Err(ActivateError::BadSetup(format!(
            "{device} has one queue but the driver set up {count}; the guest driver is broken"
        )));
    };
    if active.index != 0 {
        return Err(ActivateError::BadSetup(format!(
            "{device} has only queue 0 but the driver set up queue {}; the guest driver is broken",
            active.index
        )));
    }
    ready_queue(device, &mut active, memory, event_idx)?;
    Ok(active)
}

/// Turns EVENT_IDX on or off for `active` as negotiated, then checks that the driver set it
/// up usable (enabled, rings inside guest RAM). `device` names it in the error.
pub(crate) fn ready_queue(
    device: &str,
    active: &mut ActiveQueue,
    memory: &GuestMemoryMmap,
    event_idx: bool,
) -> Result<(), ActivateError> {
    active.queue.set_event_idx(event_idx);
    if active.queue.is_valid(memory) {
        return Ok(());
    }
    Err(ActivateError::BadSetup(format!(
        "{device} queue {} is not usable: it is not enabled or its rings lie outside guest RAM; \
         the guest driver set it up wrong",
        active.index
    )))
}
