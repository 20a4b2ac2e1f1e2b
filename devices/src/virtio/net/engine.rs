//! One link at work: moves frames between the backend and the driver's two queues. The
//! worker's event loop (`sys`) calls [`NetEngine::process_tx`] and
//! [`NetEngine::process_rx`] whenever a doorbell rings or the backend turns readable. No OS
//! calls of its own.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use log::{error, info, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::backend::NetBackend;
use super::header::{self, HDR_LEN};
use super::rx::{deliver_frame, RxOutcome, RxScratch};
use super::tx::gather;
use crate::virtio::queue_service::drain_queue;
use crate::virtio::VirtioInterrupt;

/// Receive queue index.
pub const RX_QUEUE: u16 = 0;
/// Transmit queue index.
pub const TX_QUEUE: u16 = 1;
/// Largest frame either way, header included: a 64 KiB TSO segment plus its headers.
pub const MAX_FRAME: usize = HDR_LEN + 65_550;
/// Frames received per pass before the transmit queue gets a turn.
const RX_BATCH: usize = 256;

/// Whether receiving can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// The backend has nothing more: wait for it to turn readable.
    Idle,
    /// A frame waits for the driver to post buffers: wait for the rx doorbell.
    NeedBuffers,
    /// The backend failed for good: stop watching it.
    BackendGone,
}

/// The moving parts of an active device.
pub struct NetEngine {
    name: String,
    memory: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    backend: Box<dyn NetBackend>,
    interrupt: Arc<dyn VirtioInterrupt>,
    mergeable: bool,
    rx_buf: Vec<u8>,
    /// Length of the frame in `rx_buf` still to deliver.
    rx_pending: Option<usize>,
    rx_scratch: RxScratch,
    tx_buf: Vec<u8>,
    backend_gone: bool,
    /// Counts for the log (first drop of each kind is a warning).
    tx_dropped: u64,
    rx_dropped: u64,
}

impl std::fmt::Debug for NetEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetEngine")
            .field("name", &self.name)
            .field("backend", &self.backend)
            .field("mergeable", &self.mergeable)
            .field("rx_pending", &self.rx_pending)
            .finish_non_exhaustive()
    }
}

impl NetEngine {
    /// An engine serving `rx` and `tx` (EVENT_IDX already set on them) over `backend`.
    pub fn new(
        name: String,
        memory: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        backend: Box<dyn NetBackend>,
        interrupt: Arc<dyn VirtioInterrupt>,
        mergeable: bool,
    ) -> Self {
        Self {
            name,
            memory,
            rx,
            tx,
            backend,
            interrupt,
            mergeable,
            rx_buf: vec![0; MAX_FRAME],
            rx_pending: None,
            rx_scratch: RxScratch::default(),
            tx_buf: Vec::with_capacity(MAX_FRAME),
            backend_gone: false,
            tx_dropped: 0,
            rx_dropped: 0,
        }
    }

    /// The backend, for the event loop to watch.
    pub fn backend(&self) -> &dyn NetBackend {
        self.backend.as_ref()
    }

    /// The backend, for setup on the worker thread.
    pub fn backend_mut(&mut self) -> &mut dyn NetBackend {
        self.backend.as_mut()
    }

    /// Gives the backend back (the device keeps it across resets).
    pub fn into_backend(self) -> Box<dyn NetBackend> {
        if self.tx_dropped + self.rx_dropped > 0 {
            info!(
                "{}: dropped {} tx and {} rx frames in all",
                self.name, self.tx_dropped, self.rx_dropped
            );
        }
        self.backend
    }

    /// Sends every frame the driver queued; interrupts the driver when it asks.
    pub fn process_tx(&mut self) {
        let Self { name, memory, tx, backend, tx_buf, tx_dropped, .. } = self;
        let vnet_hdr = backend.vnet_hdr();
        let needs_interrupt = drain_queue(tx, memory, |chain| {
            let result = gather(chain, memory, tx_buf, MAX_FRAME)
                .map_err(|e| e.to_string())
                .and_then(|()| {
                    let frame = if vnet_hdr { &tx_buf[..] } else { &tx_buf[HDR_LEN..] };
                    backend.send(frame).map_err(|e| format!("the backend refused it: {e}"))
                });
            if let Err(e) = result {
                *tx_dropped += 1;
                if *tx_dropped == 1 {
                    warn!(
                        "{name}: dropped a frame the guest sent: {e} (further drops are counted)"
                    );
                }
            }
            0
        });
        if needs_interrupt {
            self.interrupt.signal_queue(TX_QUEUE);
        }
    }

    /// Delivers frames from the backend until it has none, the driver's buffers run out, or
    /// a batch is done; interrupts the driver when it asks.
    pub fn process_rx(&mut self) -> RxState {
        if self.backend_gone {
            return RxState::BackendGone;
        }
        let mut delivered = false;
        let mut state = RxState::Idle;
        for _ in 0..RX_BATCH {
            let len = match self.rx_pending {
                Some(len) => len,
                None => match self.read_frame() {
                    Some(len) => len,
                    None => {
                        state =
                            if self.backend_gone { RxState::BackendGone } else { RxState::Idle };
                        break;
                    }
                },
            };
            let frame = &mut self.rx_buf[..len];
            match deliver_frame(
                &mut self.rx,
                &self.memory,
                frame,
                self.mergeable,
                &mut self.rx_scratch,
            ) {
                RxOutcome::Delivered(_) => {
                    self.rx_pending = None;
                    delivered = true;
                }
                RxOutcome::Dropped => {
                    self.rx_pending = None;
                    self.rx_dropped += 1;
                    if self.rx_dropped == 1 {
                        warn!(
                            "{}: dropped a {len}-byte frame for the guest: it does not fit the \
                             driver's receive buffers (further drops are counted)",
                            self.name
                        );
                    }
                }
                RxOutcome::NoBuffers => {
                    self.rx_pending = Some(len);
                    if self.more_buffers_came() {
                        continue;
                    }
                    state = RxState::NeedBuffers;
                    break;
                }
            }
        }
        if delivered && self.rx.needs_notification(&self.memory).unwrap_or(true) {
            self.interrupt.signal_queue(RX_QUEUE);
        }
        state
    }

    /// After the ring ran dry: asks the driver to ring when it adds buffers (EVENT_IDX: at
    /// the current available index, not at the rewound position, which it has passed) and
    /// tells whether buffers came meanwhile.
    fn more_buffers_came(&mut self) -> bool {
        let start = self.rx.next_avail();
        let dry_at = self.rx_scratch.ran_dry_at;
        let Ok(seen) = self.rx.avail_idx(&self.memory, Ordering::Acquire) else {
            return false;
        };
        self.rx.set_next_avail(seen.0);
        let more = self.rx.enable_notification(&self.memory).unwrap_or_else(|e| {
            warn!("{}: cannot update rx notifications: {e}", self.name);
            false
        });
        self.rx.set_next_avail(start);
        more || seen.0 != dry_at
    }

    /// The next frame from the backend into `rx_buf`, header first; its length.
    fn read_frame(&mut self) -> Option<usize> {
        let vnet_hdr = self.backend.vnet_hdr();
        let offset = if vnet_hdr { 0 } else { HDR_LEN };
        match self.backend.recv(&mut self.rx_buf[offset..]) {
            Ok(Some(n)) if vnet_hdr && n < HDR_LEN => {
                self.rx_dropped += 1;
                None
            }
            Ok(Some(n)) => {
                if !vnet_hdr {
                    header::clear(&mut self.rx_buf);
                }
                Some(offset + n)
            }
            Ok(None) => None,
            Err(e) => {
                error!(
                    "{}: the network backend {} failed: {e}; the guest receives nothing more",
                    self.name,
                    self.backend.describe()
                );
                self.backend_gone = true;
                None
            }
        }
    }
}
