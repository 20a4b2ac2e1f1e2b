//! ARM PL011 UART (PrimeCell UART, ARM DDI 0183): the guest console.
//!
//! Enough of the device for Linux's `amba-pl011` driver (interrupt-driven) and for
//! `earlycon=pl011,...`. Transmission is instantaneous: every byte written to DR goes straight
//! to the output sink, which is flushed at once so console output appears promptly. So the
//! transmit FIFO is always empty, FR.BUSY is never set and the TX interrupt is raised after
//! every write and whenever the driver unmasks it.
//!
//! Receive: host input fills the receive FIFO (32 bytes, or a 1-byte holding register when
//! LCR_H.FEN is clear); the rest waits in a bounded host-side queue that refills the FIFO as the
//! guest reads. The RX interrupt follows the IFLS trigger level and the receive-timeout interrupt
//! is raised whenever data arrives, so the driver also drains partly filled FIFOs.
//!
//! Not emulated: baud rate timing, DMA, IrDA, break and framing errors, modem-status changes
//! (CTS, DSR and DCD always read as asserted).
//!
//! Reads without exits: while the receive side is empty ([`Pl011::reads_are_pure`]) no read
//! changes the device, so a VMM may let the guest read [`Pl011::register_image`] from memory
//! and trap only writes (Linux reads FR before every byte it writes to DR).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;

use log::{debug, warn};

use crate::bus::{is_register_access, put_register, register_value, IrqLevel, IrqLine, MmioDevice};
use crate::primecell;

/// Data register.
const DR: u64 = 0x00;
/// Receive status / error clear.
const RSR_ECR: u64 = 0x04;
/// Flag register.
const FR: u64 = 0x18;
/// IrDA low-power counter.
const ILPR: u64 = 0x20;
/// Integer baud rate divisor.
const IBRD: u64 = 0x24;
/// Fractional baud rate divisor.
const FBRD: u64 = 0x28;
/// Line control.
const LCR_H: u64 = 0x2c;
/// Control.
const CR: u64 = 0x30;
/// Interrupt FIFO level select.
const IFLS: u64 = 0x34;
/// Interrupt mask set/clear.
const IMSC: u64 = 0x38;
/// Raw interrupt status.
const RIS: u64 = 0x3c;
/// Masked interrupt status.
const MIS: u64 = 0x40;
/// Interrupt clear.
const ICR: u64 = 0x44;
/// DMA control.
const DMACR: u64 = 0x48;

/// PL011 peripheral ID (part 0x011, designer ARM 0x41, revision 1); Linux matches 0x00041011 under mask 0x000fffff.
pub const PERIPH_ID: u32 = 0x0014_1011;

const FR_CTS: u32 = 1 << 0;
const FR_DSR: u32 = 1 << 1;
const FR_DCD: u32 = 1 << 2;
const FR_RXFE: u32 = 1 << 4;
const FR_RXFF: u32 = 1 << 6;
const FR_TXFE: u32 = 1 << 7;

/// Receive interrupt.
const INT_RX: u32 = 1 << 4;
/// Transmit interrupt.
const INT_TX: u32 = 1 << 5;
/// Receive timeout interrupt.
const INT_RT: u32 = 1 << 6;
/// All interrupt bits (modem, RX, TX, RT, FE, PE, BE, OE).
const INT_ALL: u32 = 0x7ff;

/// LCR_H: FIFOs enabled.
const LCR_H_FEN: u32 = 1 << 4;
/// CR: loopback enable.
const CR_LBE: u32 = 1 << 7;
/// CR after reset: TXE and RXE set, UART disabled.
const CR_RESET: u32 = 0x300;
/// IFLS after reset: both trigger levels at half full.
const IFLS_RESET: u32 = 0x12;

/// Bytes of the UART's register frame (one 4 KiB page).
pub const FRAME_BYTES: usize = 0x1000;
/// 32-bit words of the register frame, see [`Pl011::register_image`].
pub const FRAME_WORDS: usize = FRAME_BYTES / 4;
/// The words of the frame a write can change: the registers from DR to DMACR. The words
/// past them (holes and the PrimeCell IDs) read the same for ever.
pub const REGISTER_WORDS: usize = DMACR as usize / 4 + 1;

/// Depth of the receive FIFO when enabled.
const FIFO_DEPTH: usize = 32;
/// Host input kept beyond the FIFO; more is dropped (a paste of 64 KiB is plenty).
pub const INPUT_QUEUE_CAPACITY: usize = 64 * 1024;

/// An emulated PL011 UART.
pub struct Pl011 {
    irq: IrqLevel,
    output: Box<dyn Write + Send>,
    /// Set after the first failed write so a closed sink does not flood the log.
    output_failed: bool,
    rx_fifo: VecDeque<u8>,
    input_queue: VecDeque<u8>,
    ilpr: u32,
    ibrd: u32,
    fbrd: u32,
    lcr_h: u32,
    cr: u32,
    ifls: u32,
    imsc: u32,
    ris: u32,
    dmacr: u32,
}

impl std::fmt::Debug for Pl011 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pl011")
            .field("irq", &self.irq)
            .field("rx_fifo", &self.rx_fifo.len())
            .field("input_queue", &self.input_queue.len())
            .field("lcr_h", &format_args!("{:#x}", self.lcr_h))
            .field("cr", &format_args!("{:#x}", self.cr))
            .field("imsc", &format_args!("{:#x}", self.imsc))
            .field("ris", &format_args!("{:#x}", self.ris))
            .finish_non_exhaustive()
    }
}

impl Pl011 {
    /// A UART in its reset state raising `irq` and transmitting to `output`.
    /// `irq` is assumed low at creation.
    pub fn new(irq: Arc<dyn IrqLine>, output: Box<dyn Write + Send>) -> Self {
        Self {
            irq: IrqLevel::new(irq),
            output,
            output_failed: false,
            rx_fifo: VecDeque::with_capacity(FIFO_DEPTH),
            input_queue: VecDeque::new(),
            ilpr: 0,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            cr: CR_RESET,
            ifls: IFLS_RESET,
            imsc: 0,
            ris: 0,
            dmacr: 0,
        }
    }

    /// Host input (stdin) for the guest. Bytes beyond the FIFO wait in a queue of
    /// [`INPUT_QUEUE_CAPACITY`] bytes that refills the FIFO as the guest reads; input that does
    /// not fit is dropped.
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        // The queue holds what does not fit in the FIFO; refilling below moves the rest there.
        let fifo_room = self.rx_capacity().saturating_sub(self.rx_fifo.len());
        let room = (INPUT_QUEUE_CAPACITY + fifo_room).saturating_sub(self.input_queue.len());
        let accepted = bytes.len().min(room);
        self.input_queue.extend(&bytes[..accepted]);
        if accepted < bytes.len() {
            debug!(
                "pl011: guest is not reading its console; dropped {} input bytes",
                bytes.len() - accepted
            );
        }
        self.refill_rx_fifo();
        self.update_irq();
    }

    fn fifo_enabled(&self) -> bool {
        self.lcr_h & LCR_H_FEN != 0
    }

    /// How many bytes the receive side holds: the FIFO, or the 1-byte holding register.
    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() {
            FIFO_DEPTH
        } else {
            1
        }
    }

    /// The FIFO fill level at or above which the RX interrupt is raised (IFLS.RXIFLSEL).
    fn rx_trigger_level(&self) -> usize {
        if !self.fifo_enabled() {
            return 1;
        }
        match (self.ifls >> 3) & 0x7 {
            0 => FIFO_DEPTH / 8,
            1 => FIFO_DEPTH / 4,
            3 => FIFO_DEPTH * 3 / 4,
            4 => FIFO_DEPTH * 7 / 8,
            // 2 is half full; 5-7 are reserved, treated as the reset value.
            _ => FIFO_DEPTH / 2,
        }
    }

    /// Moves queued host input into the FIFO while it has room.
    fn refill_rx_fifo(&mut self) {
        let mut arrived = false;
        while self.rx_fifo.len() < self.rx_capacity() {
            let Some(byte) = self.input_queue.pop_front() else { break };
            self.rx_fifo.push_back(byte);
            arrived = true;
        }
        if arrived {
            self.note_rx_arrival();
        }
    }

    /// New data in the FIFO: raise RX if at the trigger level, and RT so the driver reads out a
    /// FIFO below the trigger level too (there is no idle timer to raise it later).
    fn note_rx_arrival(&mut self) {
        self.ris |= INT_RT;
        if self.rx_fifo.len() >= self.rx_trigger_level() {
            self.ris |= INT_RX;
        }
    }

    fn read_dr(&mut self) -> u32 {
        let byte = self.rx_fifo.pop_front();
        self.refill_rx_fifo();
        if self.rx_fifo.len() < self.rx_trigger_level() {
            self.ris &= !INT_RX;
        }
        if self.rx_fifo.is_empty() {
            self.ris &= !INT_RT;
        }
        // Error bits 8..=11 are always clear.
        byte.map_or(0, u32::from)
    }

    fn write_dr(&mut self, value: u32) {
        let byte = value.to_le_bytes()[0];
        if self.cr & CR_LBE != 0 {
            if self.rx_fifo.len() < self.rx_capacity() {
                self.rx_fifo.push_back(byte);
                self.note_rx_arrival();
            } else {
                debug!("pl011: loopback byte dropped, receive FIFO full");
            }
        } else {
            self.transmit(byte);
        }
        // The byte left the FIFO at once, so it is at or below any trigger level.
        self.ris |= INT_TX;
    }

    fn transmit(&mut self, byte: u8) {
        let result = self.output.write_all(&[byte]).and_then(|()| self.output.flush());
        if let Err(e) = result {
            if self.output_failed {
                debug!("pl011: console output failed: {e}");
            } else {
                warn!("pl011: cannot write guest console output ({e}); further output may be lost");
                self.output_failed = true;
            }
        }
    }

    fn flags(&self) -> u32 {
        // Transmit is instantaneous: TX FIFO empty, never full, never busy.
        let mut flags = FR_TXFE | FR_CTS | FR_DSR | FR_DCD;
        if self.rx_fifo.is_empty() {
            flags |= FR_RXFE;
        }
        if self.rx_fifo.len() >= self.rx_capacity() {
            flags |= FR_RXFF;
        }
        flags
    }

    /// Whether reading any register leaves the device as it was: nothing received, nothing
    /// queued, so a DR read pops nothing (it reads 0 with FR.RXFE set).
    pub fn reads_are_pure(&self) -> bool {
        self.rx_fifo.is_empty() && self.input_queue.is_empty()
    }

    /// What each 32-bit word of the register frame reads now, without reading it: the
    /// registers, the PrimeCell ID words, 0 for holes, and 0 for DR (what it reads while
    /// [`Pl011::reads_are_pure`]; otherwise DR's word is not what a read returns).
    pub fn register_image(&self) -> [u32; FRAME_WORDS] {
        let mut image = [0; FRAME_WORDS];
        for (offset, word) in (0u64..).step_by(4).zip(image.iter_mut()) {
            *word = self.peek_register(offset).unwrap_or(0);
        }
        image
    }

    /// The first [`REGISTER_WORDS`] words of [`Pl011::register_image`], all a write can
    /// change: what a VMM refreshes after each write (one per console byte).
    pub fn registers(&self) -> [u32; REGISTER_WORDS] {
        let mut words = [0; REGISTER_WORDS];
        for (offset, word) in (0u64..).step_by(4).zip(words.iter_mut()) {
            *word = self.peek_register(offset).unwrap_or(0);
        }
        words
    }

    fn read_register(&mut self, offset: u64) -> Option<u32> {
        match offset {
            DR => Some(self.read_dr()),
            _ => self.peek_register(offset),
        }
    }

    /// A register's value as a read returns it, for every register whose read has no side
    /// effect (all but DR, which reads 0 here).
    fn peek_register(&self, offset: u64) -> Option<u32> {
        let value = match offset {
            DR | RSR_ECR => 0,
            FR => self.flags(),
            ILPR => self.ilpr,
            IBRD => self.ibrd,
            FBRD => self.fbrd,
            LCR_H => self.lcr_h,
            CR => self.cr,
            IFLS => self.ifls,
            IMSC => self.imsc,
            RIS => self.ris,
            MIS => self.ris & self.imsc,
            DMACR => self.dmacr,
            _ => return primecell::id_register(PERIPH_ID, offset),
        };
        Some(value)
    }

    /// Returns false if `offset` is not a writable register.
    fn write_register(&mut self, offset: u64, value: u32) -> bool {
        match offset {
            DR => self.write_dr(value),
            // Clears framing/parity/break/overrun errors; there never are any.
            RSR_ECR => {}
            ILPR => self.ilpr = value & 0xff,
            IBRD => self.ibrd = value & 0xffff,
            FBRD => self.fbrd = value & 0x3f,
            LCR_H => {
                self.lcr_h = value & 0xff;
                // Enabling the FIFO makes room for queued input.
                self.refill_rx_fifo();
            }
            CR => self.cr = value & 0xffff,
            IFLS => self.ifls = value & 0x3f,
            IMSC => {
                self.imsc = value & INT_ALL;
                // Linux enables TXIM when it has more to send and waits for the TX interrupt;
                // the TX FIFO is empty, so the interrupt is due as soon as it is unmasked.
                if self.imsc & INT_TX != 0 {
                    self.ris |= INT_TX;
                }
            }
            ICR => self.ris &= !(value & INT_ALL),
            DMACR => {
                self.dmacr = value & 0x7;
                if self.dmacr != 0 {
                    debug!("pl011: DMA requested (DMACR={value:#x}) but not emulated");
                }
            }
            _ => return false,
        }
        true
    }

    fn update_irq(&mut self) {
        self.irq.set(self.ris & self.imsc != 0);
    }
}

impl MmioDevice for Pl011 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value =
            if is_register_access(offset, data.len()) { self.read_register(offset) } else { None };
        match value {
            Some(value) => put_register(data, value),
            None => {
                debug!("pl011: ignored {}-byte read at offset {offset:#x}", data.len());
                data.fill(0);
            }
        }
        self.update_irq();
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let handled = is_register_access(offset, data.len())
            && self.write_register(offset, register_value(data));
        if !handled {
            debug!("pl011: ignored {}-byte write at offset {offset:#x}", data.len());
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests;
