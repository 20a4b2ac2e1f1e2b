//! The thread of an active virtio-net device. It owns the [`NetEngine`] and either runs the
//! event loop of `sys`, which wakes on either queue's doorbell and on the backend, or, when
//! the activation was planned for vhost-net, hands both queues to the host kernel, sleeps
//! until stopped, and takes them back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use log::{debug, error, info, warn};

use super::backend::{NetBackend, RxOffloads};
use super::engine::NetEngine;
use super::sys::run_net_loop;
use super::vhost::{self, VhostNetKernel, VhostPlan};
use crate::virtio::{QueueEvent, WorkerStartHook};

/// The doorbells of the receive and transmit queues.
#[derive(Debug, Clone)]
pub struct NetDoorbells {
    /// Rung when the driver posts receive buffers.
    pub rx: Arc<QueueEvent>,
    /// Rung when the driver queues frames to send.
    pub tx: Arc<QueueEvent>,
}

/// The kernel's vhost-net and what to hand it.
#[derive(Debug)]
pub(crate) struct VhostHandover {
    pub(crate) kernel: Box<dyn VhostNetKernel>,
    pub(crate) plan: VhostPlan,
}

/// What a stopped worker gives back to the device.
type Returned = (Box<dyn NetBackend>, Option<Box<dyn VhostNetKernel>>);

/// A running device thread; stopping it gives the backend (and vhost-net) back.
#[derive(Debug)]
pub(crate) struct NetWorker {
    name: String,
    stop: Arc<AtomicBool>,
    doorbells: NetDoorbells,
    thread: Option<JoinHandle<Returned>>,
}

impl NetWorker {
    /// Starts the thread: the start hook, the backend's offloads, then vhost-net (when
    /// planned and the kernel takes the queues) or the userspace event loop.
    pub(crate) fn spawn(
        name: String,
        mut engine: NetEngine,
        doorbells: NetDoorbells,
        offloads: RxOffloads,
        on_start: Option<WorkerStartHook>,
        vhost: Option<VhostHandover>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = Arc::clone(&stop);
        let thread_bells = doorbells.clone();
        let thread_name = name.clone();
        // The hook confines the thread by its kind: only a vhost-net thread may drive the
        // kernel's vhost-net.
        let kind = if vhost.is_some() { "vhost-net" } else { "virtio-net" };
        let thread = crate::thread::named(kind).spawn(move || {
            if let Some(hook) = on_start {
                hook.run(kind);
            }
            if let Err(e) = engine.backend_mut().set_rx_offloads(offloads) {
                error!(
                    "{thread_name}: cannot set the backend's offloads ({e}); the guest may see \
                     bad checksums"
                );
            }
            let mut kept = None;
            if let Some(VhostHandover { mut kernel, plan }) = vhost {
                match serve_in_kernel(&thread_name, &engine, kernel.as_mut(), &plan, &thread_bells)
                {
                    Ok(()) => {
                        while !thread_stop.load(Ordering::Acquire) {
                            std::thread::park();
                        }
                        let bases = vhost::stop(kernel.as_mut());
                        debug!("{thread_name}: vhost-net gave the queues back at {bases:?}");
                        return (engine.into_backend(), Some(kernel));
                    }
                    Err(e) => {
                        warn!(
                            "{thread_name}: vhost-net did not take the queues ({e}); serving \
                             them in userspace"
                        );
                        kept = Some(kernel);
                    }
                }
            } else {
                info!("{thread_name}: userspace virtio-net serves its queues");
            }
            run_net_loop(&mut engine, &thread_bells, &thread_stop);
            (engine.into_backend(), kept)
        })?;
        Ok(Self { name, stop, doorbells, thread: Some(thread) })
    }

    /// Stops the thread and waits for it; returns the backend and vhost-net (None if the
    /// thread panicked).
    pub(crate) fn stop(mut self) -> Option<Returned> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Option<Returned> {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take()?;
        // Wakes the userspace loop (its tx doorbell) or the parked vhost-net thread.
        self.doorbells.tx.notify();
        thread.thread().unpark();
        match thread.join() {
            Ok(returned) => Some(returned),
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

/// Hands the queues to the kernel, attached to the backend's tap, then rings both doorbells
/// once: what the driver queued and notified before the tap was attached is picked up.
fn serve_in_kernel(
    name: &str,
    engine: &NetEngine,
    kernel: &mut dyn VhostNetKernel,
    plan: &VhostPlan,
    bells: &NetDoorbells,
) -> Result<(), String> {
    let tap = engine.backend().tap_fd().ok_or("the backend is not a tap")?;
    vhost::start(kernel, plan, tap).map_err(|e| e.to_string())?;
    bells.rx.notify();
    bells.tx.notify();
    info!("{name}: vhost-net serves its queues in the host kernel");
    Ok(())
}

impl Drop for NetWorker {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}
