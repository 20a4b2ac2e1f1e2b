//! The MMIO bus: routes guest physical addresses to emulated devices.

use std::sync::{Arc, Mutex};

use devices::{MmioDevice, MmioTarget};
use log::warn;

use crate::hypervisor::MmioHandler;

/// Errors when building the bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// Two devices claim overlapping ranges.
    #[error("MMIO range of {new} at {base:#x}+{size:#x} overlaps {existing}")]
    Overlap {
        /// The device being added.
        new: String,
        /// The device already there.
        existing: String,
        /// Start of the new range.
        base: u64,
        /// Size of the new range.
        size: u64,
    },
    /// An empty or wrapping range.
    #[error("MMIO range of {0} is empty or wraps around")]
    BadRange(String),
}

/// How the bus reaches a region's handler.
enum Handler {
    /// A device behind a mutex of its own, held for the access.
    Locked(Arc<Mutex<dyn MmioDevice>>),
    /// A region that locks only what an access needs (the PCI ECAM and memory windows, which
    /// route to per-function locks).
    Shared(Arc<dyn MmioTarget>),
}

impl Handler {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match self {
            Self::Locked(device) => {
                device.lock().unwrap_or_else(|e| e.into_inner()).read(offset, data)
            }
            Self::Shared(target) => target.read(offset, data),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match self {
            Self::Locked(device) => {
                device.lock().unwrap_or_else(|e| e.into_inner()).write(offset, data)
            }
            Self::Shared(target) => target.write(offset, data),
        }
    }
}

struct BusEntry {
    base: u64,
    size: u64,
    name: String,
    handler: Handler,
    /// Guest accesses (each an exit to the VMM), for the `-vv` profile.
    exits: std::sync::atomic::AtomicU64,
}

/// Devices by guest physical address range, sorted by base.
#[derive(Default)]
pub struct MmioBus {
    entries: Vec<BusEntry>,
    /// Stray accesses are logged once per address page so a guest loop cannot flood the log.
    stray_pages: Mutex<std::collections::HashSet<u64>>,
}

impl std::fmt::Debug for MmioBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<_> = self.entries.iter().map(|e| (&e.name, e.base, e.size)).collect();
        f.debug_struct("MmioBus").field("devices", &names).finish()
    }
}

impl MmioBus {
    /// Adds `device` at `base..base + size`; each access locks it.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        size: u64,
        device: Arc<Mutex<dyn MmioDevice>>,
    ) -> Result<(), BusError> {
        self.insert_handler(name, base, size, Handler::Locked(device))
    }

    /// Adds `target` at `base..base + size`; the bus takes no lock around its accesses.
    pub fn insert_shared(
        &mut self,
        name: &str,
        base: u64,
        size: u64,
        target: Arc<dyn MmioTarget>,
    ) -> Result<(), BusError> {
        self.insert_handler(name, base, size, Handler::Shared(target))
    }

    fn insert_handler(
        &mut self,
        name: &str,
        base: u64,
        size: u64,
        handler: Handler,
    ) -> Result<(), BusError> {
        let end = base
            .checked_add(size)
            .filter(|_| size > 0)
            .ok_or_else(|| BusError::BadRange(name.into()))?;
        if let Some(existing) = self.entries.iter().find(|e| base < e.base + e.size && e.base < end)
        {
            return Err(BusError::Overlap {
                new: name.into(),
                existing: existing.name.clone(),
                base,
                size,
            });
        }
        let at = self.entries.partition_point(|e| e.base < base);
        let exits = Default::default();
        self.entries.insert(at, BusEntry { base, size, name: name.into(), handler, exits });
        Ok(())
    }

    fn find(&self, addr: u64, len: usize) -> Option<(&BusEntry, u64)> {
        let at = self.entries.partition_point(|e| e.base <= addr);
        let entry = self.entries.get(at.checked_sub(1)?)?;
        let offset = addr - entry.base;
        (offset + len as u64 <= entry.size).then_some((entry, offset))
    }

    /// The guest accesses each region saw, as "name count" pairs, busiest first.
    pub fn exit_counts(&self) -> String {
        let mut counts: Vec<_> = self
            .entries
            .iter()
            .map(|e| (e.exits.load(std::sync::atomic::Ordering::Relaxed), &e.name))
            .filter(|(count, _)| *count > 0)
            .collect();
        counts.sort_by_key(|(count, _)| std::cmp::Reverse(*count));
        let pairs: Vec<String> =
            counts.iter().map(|(count, name)| format!("{name} {count}")).collect();
        if pairs.is_empty() {
            "none".into()
        } else {
            pairs.join(", ")
        }
    }

    fn stray(&self, kind: &str, addr: u64, len: usize) {
        let mut pages = self.stray_pages.lock().unwrap_or_else(|e| e.into_inner());
        if pages.len() < 1024 && pages.insert(addr >> 12) {
            warn!("guest {kind} of {len} bytes at {addr:#x}: no device there (reads as zero, writes ignored)");
        }
    }
}

impl MmioHandler for MmioBus {
    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                entry.exits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                entry.handler.read(offset, data);
            }
            None => {
                data.fill(0);
                self.stray("read", addr, data.len());
            }
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        match self.find(addr, data.len()) {
            Some((entry, offset)) => {
                entry.exits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                entry.handler.write(offset, data);
            }
            None => self.stray("write", addr, data.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl MmioDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_and_offset() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::default();
        bus.insert("b", 0x2000, 0x1000, b.clone()).unwrap();
        bus.insert("a", 0x1000, 0x1000, a.clone()).unwrap();
        bus.mmio_write(0x1004, &[1, 2, 3, 4]);
        bus.mmio_write(0x2ff8, &[9; 8]);
        assert_eq!(a.lock().unwrap().writes, vec![(4, vec![1, 2, 3, 4])]);
        assert_eq!(b.lock().unwrap().writes, vec![(0xff8, vec![9; 8])]);
        let mut data = [0xffu8; 4];
        bus.mmio_read(0x1010, &mut data);
        assert_eq!(data, [0x10; 4]);
        bus.mmio_read(0x1014, &mut data);
        // Stray accesses count for no region.
        bus.mmio_read(0x9000, &mut data);
        assert_eq!(bus.exit_counts(), "a 3, b 1");
        assert_eq!(MmioBus::default().exit_counts(), "none");
    }

    #[test]
    fn stray_and_straddling_accesses_read_zero() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = MmioBus::default();
        bus.insert("a", 0x1000, 0x1000, a.clone()).unwrap();
        let mut data = [0xffu8; 8];
        bus.mmio_read(0x1ffc, &mut data); // crosses the end
        assert_eq!(data, [0; 8]);
        bus.mmio_read(0x500, &mut data);
        assert_eq!(data, [0; 8]);
        bus.mmio_write(0x3000, &[1]);
        assert!(a.lock().unwrap().writes.is_empty());
    }

    /// Records through `&self`, as the PCI views do.
    #[derive(Default)]
    struct SharedRecorder(Mutex<Vec<(u64, Vec<u8>)>>);

    impl MmioTarget for SharedRecorder {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 | 0x80);
        }
        fn write(&self, offset: u64, data: &[u8]) {
            self.0.lock().unwrap().push((offset, data.to_vec()));
        }
    }

    #[test]
    fn shared_targets_route_like_devices_and_cannot_overlap_them() {
        let shared = Arc::new(SharedRecorder::default());
        let mut bus = MmioBus::default();
        bus.insert("a", 0x1000, 0x1000, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        bus.insert_shared("s", 0x4000, 0x1000, shared.clone()).unwrap();
        bus.mmio_write(0x4010, &[5, 6]);
        let mut data = [0u8; 2];
        bus.mmio_read(0x4003, &mut data);
        assert_eq!(data, [0x83; 2]);
        assert_eq!(*shared.0.lock().unwrap(), vec![(0x10, vec![5, 6])]);
        let err = bus.insert_shared("t", 0x1800, 0x10, shared).unwrap_err();
        assert!(err.to_string().contains("overlaps a"), "{err}");
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = MmioBus::default();
        bus.insert("a", 0x1000, 0x1000, Arc::new(Mutex::new(Recorder::default()))).unwrap();
        let err =
            bus.insert("b", 0x1800, 0x1000, Arc::new(Mutex::new(Recorder::default()))).unwrap_err();
        assert!(err.to_string().contains("overlaps a"), "{err}");
        assert!(bus.insert("c", 0x5000, 0, Arc::new(Mutex::new(Recorder::default()))).is_err());
        assert!(bus.insert("d", u64::MAX, 2, Arc::new(Mutex::new(Recorder::default()))).is_err());
    }
}
