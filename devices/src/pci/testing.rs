//! Test helpers shared by the PCI tests: a deterministic PRNG and MSI / device doubles.

use std::sync::{Arc, Mutex};

use super::{MsiMessage, MsiSink, MsiVector};

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

/// What a [`TriggerHost`] saw, shared with the vectors it handed out.
#[derive(Debug, Default)]
pub(crate) struct TriggerLog {
    /// Messages sent directly ([`MsiSink::signal_msi`]).
    pub(crate) direct: Vec<(MsiMessage, u16)>,
    /// Messages the "hypervisor" delivered for a signalled trigger, through its route.
    pub(crate) routed: Vec<(MsiMessage, u16)>,
    /// Every route change: (vector, new route).
    pub(crate) route_changes: Vec<(usize, Option<(MsiMessage, u16)>)>,
    /// Signals on a disconnected trigger (an irqfd would keep them counted).
    pub(crate) held: Vec<usize>,
    /// Route changes fail while set.
    pub(crate) fail_routes: bool,
    /// Vectors handed out so far.
    pub(crate) handed_out: usize,
}

/// A host with hypervisor triggers (KVM irqfds), as an [`MsiSink`]: each vector keeps its
/// route and a signal delivers the route's message, as KVM does.
#[derive(Debug, Default)]
pub(crate) struct TriggerHost {
    pub(crate) log: Arc<Mutex<TriggerLog>>,
    /// Hands out at most this many vectors (`None`: any number).
    pub(crate) limit: Option<usize>,
}

impl TriggerHost {
    pub(crate) fn log(&self) -> std::sync::MutexGuard<'_, TriggerLog> {
        self.log.lock().unwrap()
    }
}

struct FakeVector {
    index: usize,
    route: Mutex<Option<(MsiMessage, u16)>>,
    log: Arc<Mutex<TriggerLog>>,
}

impl MsiVector for FakeVector {
    fn set_route(&self, route: Option<(MsiMessage, u16)>) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap();
        if log.fail_routes && route.is_some() {
            return Err(std::io::Error::other("no routes left"));
        }
        log.route_changes.push((self.index, route));
        *self.route.lock().unwrap() = route;
        Ok(())
    }

    fn signal(&self) -> std::io::Result<()> {
        let mut log = self.log.lock().unwrap();
        match *self.route.lock().unwrap() {
            Some(route) => log.routed.push(route),
            None => log.held.push(self.index),
        }
        Ok(())
    }

    /// A made-up descriptor number per vector (100 + index), for tests to recognise.
    fn eventfd(&self) -> Option<std::os::fd::RawFd> {
        Some(100 + self.index as std::os::fd::RawFd)
    }
}

impl MsiSink for TriggerHost {
    fn signal_msi(&self, message: MsiMessage, requester_id: u16) {
        self.log().direct.push((message, requester_id));
    }

    fn vector(&self) -> Option<Box<dyn MsiVector>> {
        let mut log = self.log();
        if self.limit.is_some_and(|limit| log.handed_out >= limit) {
            return None;
        }
        log.handed_out += 1;
        Some(Box::new(FakeVector {
            index: log.handed_out - 1,
            route: Mutex::new(None),
            log: self.log.clone(),
        }))
    }
}
