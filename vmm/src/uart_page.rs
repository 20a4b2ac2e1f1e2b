//! The PL011's registers as read-only guest memory (see `crate::readonly`): the guest's
//! console reads cost no exit. Linux's driver reads FR before every byte it writes to DR, so
//! a trapped UART costs two exits per console byte; with the page, one (the DR write). In a
//! nested or emulated host every exit costs a millisecond or more of guest time.
//!
//! The page holds [`Pl011::register_image`]. Writes still exit (the slot is read-only) and
//! go to the model, and the changed words are stored before the vCPU resumes. A DR read pops
//! the receive FIFO, so the page is mapped only while the UART [`Pl011::reads_are_pure`]:
//! host input unmaps it first (then no vCPU can read a stale page) and every access traps
//! until the guest has read it all; the trapped read that drains it maps the page again.
//! The memory only ever holds an image of the empty receive side, so even a page that could
//! not be unmapped shows no data to read (the guest would read DR's 0 as input otherwise).
//!
//! Off (every access traps, as before) where the hypervisor has no read-only memory
//! (Hypervisor.framework), where the page cannot be mapped (a host whose pages are larger
//! than the UART's 4 KiB frame: the slot would cover other devices' registers), or once a
//! mapping fails.

use std::sync::{Arc, Mutex, MutexGuard};

use devices::pl011::{FRAME_BYTES, FRAME_WORDS};
use devices::{MmioDevice, MmioTarget, Pl011};
use log::{debug, warn};

use crate::hypervisor::Vm;
use crate::readonly::ReadOnlyRegion;

/// What the guest reads the UART's registers from while they read without exits.
struct RegisterPage {
    /// The memory, mapped while reads are pure.
    region: ReadOnlyRegion,
    /// What the memory holds, to store only the words that changed.
    copy: Vec<u32>,
    /// Times the page was mapped, and unmapped because input arrived or was looped back.
    maps: u64,
    unmaps: u64,
    /// Set once an unmapping failed, so that a retry on every access does not flood the log.
    unmap_failed: bool,
}

/// What the lock protects.
struct UartState {
    uart: Pl011,
    /// `None` while reads trap for good.
    page: Option<RegisterPage>,
}

/// The guest console: the PL011 model, and its register page where the hypervisor allows.
pub struct ConsoleUart {
    state: Mutex<UartState>,
}

impl ConsoleUart {
    /// `uart` at guest address `base`, its registers readable from memory when `vm` allows.
    pub fn new(vm: &Arc<dyn Vm>, base: u64, uart: Pl011) -> Self {
        let page =
            ReadOnlyRegion::new(vm, base, FRAME_BYTES, 0, "PL011 register page").map(|region| {
                RegisterPage {
                    region,
                    copy: vec![0; FRAME_WORDS],
                    maps: 0,
                    unmaps: 0,
                    unmap_failed: false,
                }
            });
        let mut state = UartState { uart, page };
        state.sync();
        if state.page.is_some() {
            debug!("PL011 register page: console reads without exits");
        }
        Self { state: Mutex::new(state) }
    }

    fn lock(&self) -> MutexGuard<'_, UartState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Host input for the guest ([`Pl011::enqueue_input`]), with the page unmapped first.
    pub fn enqueue_input(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut state = self.lock();
        // Before the model changes: a vCPU must not read FR's "nothing received" from the
        // page and then DR's 0, nor miss the RX interrupt's cause in MIS.
        if let Some(page) = &mut state.page {
            page.unmap();
        }
        state.uart.enqueue_input(bytes);
        state.sync();
    }

    /// How the page fared, for the `-vv` profile next to the exit counts.
    pub fn page_summary(&self) -> String {
        match &self.lock().page {
            Some(page) => {
                format!("mapped {} times, unmapped {} times for input", page.maps, page.unmaps)
            }
            None => "off: every access traps".into(),
        }
    }
}

impl UartState {
    /// Makes the page follow the model after it changed: the new image mapped while reads
    /// are pure, unmapped while they are not.
    fn sync(&mut self) {
        let Some(page) = &mut self.page else { return };
        if !self.uart.reads_are_pure() {
            page.unmap();
            return;
        }
        if page.region.is_mapped() {
            // Mapped, so the rest of the image is already there: only registers change.
            page.region.store_changed_words(0, &mut page.copy, self.uart.registers());
            return;
        }
        page.region.store_changed_words(0, &mut page.copy, self.uart.register_image());
        match page.region.map() {
            Ok(()) => page.maps += 1,
            Err(e) => {
                debug!("PL011 register page off (every access traps): not mapped: {e}");
                self.page = None;
            }
        }
    }
}

impl RegisterPage {
    /// Removes the page's slot, if mapped: every access traps from here on. One that cannot
    /// be removed stays, and the next change of the model tries again.
    fn unmap(&mut self) {
        if !self.region.is_mapped() {
            return;
        }
        match self.region.unmap() {
            Ok(()) => self.unmaps += 1,
            Err(e) => {
                if !self.unmap_failed {
                    warn!("PL011 register page: could not unmap it, console input is lost: {e}");
                    self.unmap_failed = true;
                }
            }
        }
    }
}

impl MmioTarget for ConsoleUart {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut state = self.lock();
        state.uart.read(offset, data);
        // A DR read that drained the receive side maps the page again.
        state.sync();
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut state = self.lock();
        state.uart.write(offset, data);
        state.sync();
    }
}

#[cfg(test)]
mod tests;
