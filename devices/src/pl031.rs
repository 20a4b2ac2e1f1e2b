//! ARM PL031 real-time clock (PrimeCell RTC, ARM DDI 0224): gives the guest wall-clock time.
//!
//! The counter is the host clock (Unix seconds, injected so tests are deterministic) plus an
//! offset that RTCLR sets, so the guest may set its own time without touching the host's. The
//! counter is 32 bits wide and wraps like the hardware's.
//!
//! The match (alarm) interrupt: RTCRIS latches when the counter advances onto RTCMR. Nothing
//! runs in the background, so this is checked on every register access and whenever the VMM
//! calls [`Pl031::check_alarm`] (for instance once a second) to deliver alarms on time.

use std::sync::Arc;

use log::debug;

use crate::bus::{is_register_access, put_register, register_value, IrqLevel, IrqLine, MmioDevice};
use crate::primecell;

/// Data register: the current counter value.
const RTCDR: u64 = 0x00;
/// Match register.
const RTCMR: u64 = 0x04;
/// Load register: writing sets the counter.
const RTCLR: u64 = 0x08;
/// Control register: bit 0 starts the counter.
const RTCCR: u64 = 0x0c;
/// Interrupt mask set/clear.
const RTCIMSC: u64 = 0x10;
/// Raw interrupt status.
const RTCRIS: u64 = 0x14;
/// Masked interrupt status.
const RTCMIS: u64 = 0x18;
/// Interrupt clear.
const RTCICR: u64 = 0x1c;

/// PL031 peripheral ID (part 0x031, designer ARM 0x41, revision 1).
pub const PERIPH_ID: u32 = 0x0014_1031;
/// The one interrupt: counter reached the match value.
const INT_MATCH: u32 = 1;
/// Half the counter range: a move forward by less than this is time passing, more is a jump
/// backwards (the host clock was set back).
const HALF_RANGE: u32 = 1 << 31;

/// An emulated PL031 RTC.
pub struct Pl031 {
    clock: Box<dyn Fn() -> u64 + Send>,
    irq: IrqLevel,
    /// Added to the host clock to give the counter.
    offset: u32,
    /// Last value written to RTCLR.
    load: u32,
    match_value: u32,
    imsc: u32,
    ris: u32,
    /// Counter value when the match was last checked.
    last_checked: u32,
}

impl std::fmt::Debug for Pl031 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pl031")
            .field("irq", &self.irq)
            .field("offset", &self.offset)
            .field("match_value", &self.match_value)
            .field("imsc", &self.imsc)
            .field("ris", &self.ris)
            .finish_non_exhaustive()
    }
}

impl Pl031 {
    /// An RTC reading `clock()` (Unix seconds) until the guest loads another time; it raises
    /// `irq`, assumed low at creation.
    pub fn new(clock: Box<dyn Fn() -> u64 + Send>, irq: Arc<dyn IrqLine>) -> Self {
        let mut rtc = Self {
            clock,
            irq: IrqLevel::new(irq),
            offset: 0,
            load: 0,
            match_value: 0,
            imsc: 0,
            ris: 0,
            last_checked: 0,
        };
        rtc.last_checked = rtc.counter();
        rtc
    }

    /// Re-checks the match interrupt against the clock and updates the interrupt line.
    pub fn check_alarm(&mut self) {
        self.check_match();
        self.update_irq();
    }

    fn host_seconds(&self) -> u32 {
        // The hardware counter is 32 bits: keep the low bits, wrapping in 2106 like a real PL031.
        ((self.clock)() & u64::from(u32::MAX)) as u32
    }

    fn counter(&self) -> u32 {
        self.host_seconds().wrapping_add(self.offset)
    }

    /// Latches RTCRIS if the counter has reached the match value since the last check.
    fn check_match(&mut self) {
        let now = self.counter();
        let elapsed = now.wrapping_sub(self.last_checked);
        let to_match = self.match_value.wrapping_sub(self.last_checked);
        if elapsed < HALF_RANGE && to_match != 0 && to_match <= elapsed {
            self.ris |= INT_MATCH;
        }
        self.last_checked = now;
    }

    fn load_counter(&mut self, value: u32) {
        self.load = value;
        self.offset = value.wrapping_sub(self.host_seconds());
        // Jumping onto or past the match value is not the counter reaching it.
        self.last_checked = value;
    }

    fn read_register(&self, offset: u64) -> Option<u32> {
        let value = match offset {
            RTCDR => self.counter(),
            RTCMR => self.match_value,
            RTCLR => self.load,
            // Always running: once started a PL031 cannot be stopped.
            RTCCR => 1,
            RTCIMSC => self.imsc,
            RTCRIS => self.ris,
            RTCMIS => self.ris & self.imsc,
            _ => return primecell::id_register(PERIPH_ID, offset),
        };
        Some(value)
    }

    /// Returns false if `offset` is not a writable register.
    fn write_register(&mut self, offset: u64, value: u32) -> bool {
        match offset {
            RTCMR => self.match_value = value,
            RTCLR => self.load_counter(value),
            // Writing 1 starts the counter, which already runs; 0 has no effect on a PL031.
            RTCCR => {}
            RTCIMSC => self.imsc = value & INT_MATCH,
            RTCICR => self.ris &= !(value & INT_MATCH),
            _ => return false,
        }
        true
    }

    fn update_irq(&mut self) {
        self.irq.set(self.ris & self.imsc != 0);
    }
}

impl MmioDevice for Pl031 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.check_match();
        let value =
            if is_register_access(offset, data.len()) { self.read_register(offset) } else { None };
        match value {
            Some(value) => put_register(data, value),
            None => {
                debug!("pl031: ignored {}-byte read at offset {offset:#x}", data.len());
                data.fill(0);
            }
        }
        self.update_irq();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.check_match();
        let handled = is_register_access(offset, data.len())
            && self.write_register(offset, register_value(data));
        if !handled {
            debug!("pl031: ignored {}-byte write at offset {offset:#x}", data.len());
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests;
