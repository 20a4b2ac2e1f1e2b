//! ARM PL061 GPIO controller (PrimeCell GPIO, ARM DDI 0190): eight lines, each an input or
//! an output, with edge or level interrupts. Aperture wires one input to the guest's power
//! key (a `gpio-keys` node in the device tree), as QEMU's `virt` machine does.
//!
//! Register semantics follow the TRM as Linux's `gpio-pl061` driver uses them:
//! - `GPIODATA` is 256 aliases at 0x000..=0x3fc: address bits [9:2] mask which lines a read
//!   returns and a write changes.
//! - `GPIODIR` (1 = output), `GPIOIS` (1 = level, 0 = edge), `GPIOIBE` (both edges),
//!   `GPIOIEV` (1 = rising edge / high level), `GPIOIE` (1 = unmasked).
//! - `GPIORIS` latches edges (and follows the level for level lines), `GPIOMIS` is `RIS & IE`,
//!   writing 1s to `GPIOIC` clears latched edges. The one interrupt line is `MIS != 0`.

use std::sync::Arc;

use log::debug;

use crate::bus::{is_register_access, put_register, register_value, IrqLevel, IrqLine, MmioDevice};
use crate::primecell;

/// Last `GPIODATA` alias.
const GPIODATA_END: u64 = 0x3fc;
const GPIODIR: u64 = 0x400;
const GPIOIS: u64 = 0x404;
const GPIOIBE: u64 = 0x408;
const GPIOIEV: u64 = 0x40c;
const GPIOIE: u64 = 0x410;
const GPIORIS: u64 = 0x414;
const GPIOMIS: u64 = 0x418;
const GPIOIC: u64 = 0x41c;
const GPIOAFSEL: u64 = 0x420;

/// PL061 peripheral ID (part 0x061, designer ARM 0x41, revision 0).
pub const PERIPH_ID: u32 = 0x0004_1061;
/// Number of lines.
pub const PL061_LINES: u32 = 8;

/// An emulated PL061 GPIO controller.
pub struct Pl061 {
    irq: IrqLevel,
    /// Levels driven from outside on input lines.
    inputs: u8,
    /// Values the guest wrote for output lines.
    outputs: u8,
    dir: u8,
    is: u8,
    ibe: u8,
    iev: u8,
    ie: u8,
    ris: u8,
    afsel: u8,
    /// Input lines the guest has read high since they were last driven high (the VMM releases
    /// a pressed key once the guest has seen it).
    seen_high: u8,
}

impl std::fmt::Debug for Pl061 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pl061")
            .field("irq", &self.irq)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("dir", &self.dir)
            .field("ie", &self.ie)
            .field("ris", &self.ris)
            .finish_non_exhaustive()
    }
}

impl Pl061 {
    /// A controller at its reset state (all lines inputs, low, interrupts masked), raising
    /// `irq`, assumed low at creation.
    pub fn new(irq: Arc<dyn IrqLine>) -> Self {
        Self {
            irq: IrqLevel::new(irq),
            inputs: 0,
            outputs: 0,
            dir: 0,
            is: 0,
            ibe: 0,
            iev: 0,
            ie: 0,
            ris: 0,
            afsel: 0,
            seen_high: 0,
        }
    }

    /// Back to the power-on state (a VM reboot); lines driven from outside stay as they are.
    pub fn reset(&mut self) {
        (self.outputs, self.dir, self.is, self.ibe, self.iev) = (0, 0, 0, 0, 0);
        (self.ie, self.ris, self.afsel, self.seen_high) = (0, 0, 0, 0);
        self.update_irq();
    }

    /// Drives input `line` (0..8) high or low from outside, latching the edge the guest
    /// configured. Lines past 7 are ignored.
    pub fn set_input(&mut self, line: u32, high: bool) {
        let Some(bit) = line_bit(line) else { return };
        let before = self.levels();
        if high {
            self.inputs |= bit;
        } else {
            self.inputs &= !bit;
        }
        self.seen_high &= !bit;
        self.latch(before);
        self.update_irq();
    }

    /// Whether the guest has read input `line` high since it was last driven high.
    pub fn input_seen_high(&self, line: u32) -> bool {
        line_bit(line).is_some_and(|bit| self.seen_high & bit != 0)
    }

    /// The level of every line: outputs as the guest set them, inputs as driven from outside.
    fn levels(&self) -> u8 {
        (self.outputs & self.dir) | (self.inputs & !self.dir)
    }

    /// Latches edges between `before` and the current levels, and level-sensitive lines.
    fn latch(&mut self, before: u8) {
        let now = self.levels();
        let changed = before ^ now;
        let rising = changed & now;
        let falling = changed & before;
        let edge = !self.is;
        let wanted = (self.ibe & changed)
            | (!self.ibe & self.iev & rising)
            | (!self.ibe & !self.iev & falling);
        self.ris |= edge & wanted;
        // Level lines: RIS follows whether the line is at the level IEV selects.
        let active = !(now ^ self.iev);
        self.ris = (self.ris & edge) | (self.is & active);
    }

    fn update_irq(&mut self) {
        self.irq.set(self.ris & self.ie != 0);
    }

    fn read_register(&mut self, offset: u64) -> Option<u32> {
        let value = match offset {
            0..=GPIODATA_END => {
                let mask = data_mask(offset);
                let value = self.levels() & mask;
                self.seen_high |= value & self.inputs & !self.dir;
                value
            }
            GPIODIR => self.dir,
            GPIOIS => self.is,
            GPIOIBE => self.ibe,
            GPIOIEV => self.iev,
            GPIOIE => self.ie,
            GPIORIS => self.ris,
            GPIOMIS => self.ris & self.ie,
            GPIOAFSEL => self.afsel,
            _ => return primecell::id_register(PERIPH_ID, offset),
        };
        Some(u32::from(value))
    }

    /// Returns false if `offset` is not a writable register.
    fn write_register(&mut self, offset: u64, value: u32) -> bool {
        let before = self.levels();
        let byte = (value & 0xff) as u8;
        match offset {
            0..=GPIODATA_END => {
                let mask = data_mask(offset);
                self.outputs = (self.outputs & !mask) | (byte & mask);
            }
            GPIODIR => self.dir = byte,
            GPIOIS => self.is = byte,
            GPIOIBE => self.ibe = byte,
            GPIOIEV => self.iev = byte,
            GPIOIE => self.ie = byte,
            GPIOIC => self.ris &= !(byte & !self.is),
            GPIOAFSEL => self.afsel = byte,
            _ => return false,
        }
        self.latch(before);
        true
    }
}

/// The lines a `GPIODATA` alias at `offset` reaches: address bits [9:2].
fn data_mask(offset: u64) -> u8 {
    ((offset >> 2) & 0xff) as u8
}

fn line_bit(line: u32) -> Option<u8> {
    (line < PL061_LINES).then(|| 1u8 << line)
}

impl MmioDevice for Pl061 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value =
            if is_register_access(offset, data.len()) { self.read_register(offset) } else { None };
        match value {
            Some(value) => put_register(data, value),
            None => {
                debug!("pl061: ignored {}-byte read at offset {offset:#x}", data.len());
                data.fill(0);
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let handled = is_register_access(offset, data.len())
            && self.write_register(offset, register_value(data));
        if !handled {
            debug!("pl061: ignored {}-byte write at offset {offset:#x}", data.len());
        }
        self.update_irq();
    }
}

#[cfg(test)]
mod tests;
