//! The thread of an active virtio-net device: it owns the [`NetEngine`] and runs the event
//! loop of `sys`, which wakes on either queue's doorbell and on the backend.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::error;

use super::backend::{NetBackend, RxOffloads};
use super::engine::NetEngine;
use super::sys::run_net_loop;
use crate::virtio::{QueueEvent, WorkerStartHook};

/// The doorbells of the receive and transmit queues.
#[derive(Debug, Clone)]
pub struct NetDoorbells {
    /// Rung when the driver posts receive buffers.
    pub rx: Arc<QueueEvent>,
    /// Rung when the driver queues frames to send.
    pub tx: Arc<QueueEvent>,
}

/// A running device thread; stopping it gives the backend back.
#[derive(Debug)]
pub(crate) struct NetWorker {
    name: String,
    stop: Arc<AtomicBool>,
    doorbells: NetDoorbells,
    thread: Option<JoinHandle<Box<dyn NetBackend>>>,
}

impl NetWorker {
    /// Starts the thread: the start hook, the backend's offloads, then the event loop.
    pub(crate) fn spawn(
        name: String,
        mut engine: NetEngine,
        doorbells: NetDoorbells,
        offloads: RxOffloads,
        on_start: Option<WorkerStartHook>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread_bells = doorbells.clone();
        let thread_name = name.clone();
        let thread = std::thread::Builder::new().name("virtio-net".into()).spawn(move || {
            if let Some(hook) = on_start {
                hook.run("virtio-net");
            }
            if let Err(e) = engine.backend_mut().set_rx_offloads(offloads) {
                error!(
                    "{thread_name}: cannot set the backend's offloads ({e}); the guest may see \
                     bad checksums"
                );
            }
            run_net_loop(&mut engine, &thread_bells, &thread_stop);
            engine.into_backend()
        })?;
        Ok(Self { name, stop, doorbells, thread: Some(thread) })
    }

    /// Stops the thread and waits for it; returns the backend (None if the thread panicked).
    pub(crate) fn stop(mut self) -> Option<Box<dyn NetBackend>> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<Box<dyn NetBackend>> {
        self.stop.store(true, Ordering::Release);
        self.doorbells.tx.notify();
        let thread = self.thread.take()?;
        match thread.join() {
            Ok(backend) => Some(backend),
            Err(_) => {
                error!(
                    "{}: the worker thread panicked; the device lost its backend (this is a bug \
                     in Aperture; restart the VM)",
                    self.name
                );
                None
            }
        }
    }
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
