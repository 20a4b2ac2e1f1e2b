//! Test helpers shared by the PCI tests: a deterministic PRNG and MSI / device doubles.

use std::sync::Mutex;

use super::{MsiMessage, MsiSink};

/// xorshift64: deterministic, no dependency.
#[derive(Debug, Clone)]
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A value in `0..n` (n > 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `len` random bytes.
    pub(crate) fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Access widths the random-access tests use, including illegal ones.
pub(crate) const FUZZ_SIZES: [usize; 6] = [1, 2, 4, 8, 3, 0];

/// Records every MSI sent.
#[derive(Debug, Default)]
pub(crate) struct RecordingMsiSink {
    sent: Mutex<Vec<(MsiMessage, u16)>>,
}

impl RecordingMsiSink {
    pub(crate) fn sent(&self) -> Vec<(MsiMessage, u16)> {
        self.sent.lock().unwrap().clone()
    }
}

impl MsiSink for RecordingMsiSink {
    fn signal_msi(&self, message: MsiMessage, requester_id: u16) {
        self.sent.lock().unwrap().push((message, requester_id));
    }
}

/// Reads a little-endian value of `len` bytes through `read`.
pub(crate) fn read_le(len: usize, read: impl FnOnce(&mut [u8])) -> u64 {
    let mut data = [0u8; 8];
    read(&mut data[..len]);
    u64::from_le_bytes(data)
}
