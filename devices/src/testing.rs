//! Test doubles shared by the device tests.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::bus::{IrqLine, MmioDevice};

/// An [`IrqLine`] that records every level it is driven to.
#[derive(Debug, Default)]
pub(crate) struct RecordingIrq {
    levels: Mutex<Vec<bool>>,
}

impl RecordingIrq {
    /// The current level (low if never driven).
    pub(crate) fn level(&self) -> bool {
        self.levels.lock().unwrap().last().copied().unwrap_or(false)
    }

    /// Every level driven so far, oldest first.
    pub(crate) fn history(&self) -> Vec<bool> {
        self.levels.lock().unwrap().clone()
    }
}

impl IrqLine for RecordingIrq {
    fn set_level(&self, asserted: bool) {
        self.levels.lock().unwrap().push(asserted);
    }
}

/// An output sink whose bytes and flushes the test can inspect.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedOutput {
    bytes: Arc<Mutex<Vec<u8>>>,
    flushes: Arc<Mutex<usize>>,
}

impl SharedOutput {
    pub(crate) fn bytes(&self) -> Vec<u8> {
        self.bytes.lock().unwrap().clone()
    }

    pub(crate) fn flushes(&self) -> usize {
        *self.flushes.lock().unwrap()
    }
}

impl Write for SharedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        *self.flushes.lock().unwrap() += 1;
        Ok(())
    }
}

/// Reads a 32-bit register.
pub(crate) fn read32(device: &mut dyn MmioDevice, offset: u64) -> u32 {
    let mut data = [0u8; 4];
    device.read(offset, &mut data);
    u32::from_le_bytes(data)
}

/// Writes a 32-bit register.
pub(crate) fn write32(device: &mut dyn MmioDevice, offset: u64, value: u32) {
    device.write(offset, &value.to_le_bytes());
}

/// Hammers `device` with deterministic pseudo-random accesses at every offset of its 4 KiB
/// frame (and a few beyond), at every width including malformed ones.
pub(crate) fn fuzz_accesses(device: &mut dyn MmioDevice) {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        // xorshift64: deterministic, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let odd_offsets = [0x1000, 0x1004, 0xffff_ffff, u64::MAX - 3, u64::MAX];
    let offsets = (0..0x1000u64).chain(odd_offsets);
    for offset in offsets {
        for len in [0usize, 1, 2, 3, 4, 8, 16] {
            for _ in 0..2 {
                let value = next().to_le_bytes();
                let mut data = vec![0u8; len];
                for (i, byte) in data.iter_mut().enumerate() {
                    *byte = value[i % 8];
                }
                device.write(offset, &data);
                device.read(offset, &mut data);
            }
        }
    }
}
