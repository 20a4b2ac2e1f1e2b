//! The re-plug thread: it opens lost devices again (SIGUSR1) off the main thread.
//!
//! Why a thread of its own: opening a VFIO device takes what the sandboxed main thread may
//! not do (open `/dev/vfio/*` and sysfs files, the container and group ioctls, mapping guest
//! RAM for DMA, mmapping BARs). This thread starts before the main thread confines itself
//! and confines itself to the re-plug allowlist (`ThreadKind::Replug`), so the main thread
//! and the vCPU threads keep their narrow filters. It sleeps on a channel until asked.
//!
//! The devices move here for the re-plug and back when it is done: the main thread's wait
//! loop keeps polling (loss reports wait until they are back) and can still stop the VM.

use std::sync::mpsc;
use std::time::Instant;

use log::{debug, warn};

use super::{AssignError, Live};

/// A re-plug to do: the devices, when SIGUSR1 came, and where to send the devices back.
struct Request {
    live: Box<Live>,
    asked: Instant,
    back: mpsc::Sender<Box<Live>>,
}

/// The handle of the re-plug thread (it ends when the handle is dropped).
#[derive(Debug)]
pub(super) struct ReplugWorker {
    requests: mpsc::Sender<Request>,
}

impl ReplugWorker {
    /// Starts the thread, confined to the re-plug allowlist when `seccomp` (waits until it
    /// is, so a failure fails the start of the VM).
    pub(super) fn spawn(seccomp: bool) -> Result<Self, AssignError> {
        let (requests, incoming) = mpsc::channel::<Request>();
        let (ready_tx, ready) = mpsc::sync_channel(1);
        devices::thread::named("replug")
            .spawn(move || {
                if seccomp {
                    if let Err(e) = crate::seccomp::confine(crate::seccomp::ThreadKind::Replug) {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(()));
                drop(ready_tx);
                while let Ok(Request { mut live, asked, back }) = incoming.recv() {
                    live.replug(asked);
                    if back.send(live).is_err() {
                        debug!("re-plug: nobody took the devices back");
                    }
                }
            })
            .map_err(AssignError::ReplugThread)?;
        match ready.recv() {
            Ok(Ok(())) => Ok(Self { requests }),
            Ok(Err(e)) => Err(AssignError::ReplugSandbox(e)),
            Err(_) => Err(AssignError::ReplugThread(std::io::Error::other("the thread ended"))),
        }
    }

    /// Hands `live` to the thread for a re-plug; the devices come back on the receiver. If
    /// the thread is gone, the devices come back at once (`Err`).
    pub(super) fn replug(
        &self,
        live: Box<Live>,
        asked: Instant,
    ) -> Result<mpsc::Receiver<Box<Live>>, Box<Live>> {
        let (back, receiver) = mpsc::channel();
        match self.requests.send(Request { live, asked, back }) {
            Ok(()) => Ok(receiver),
            Err(mpsc::SendError(request)) => {
                warn!("SIGUSR1: the re-plug thread is gone; nothing plugged in again");
                Err(request.live)
            }
        }
    }
}
