//! Guest memory mappings: Hypervisor.framework's 16 KiB granule, and the table of what is
//! mapped where (to name slots, refuse overlaps and read guest RAM for error reports).

use std::collections::BTreeMap;

/// `hv_vm_map` maps host memory in 16 KiB pages (the Apple Silicon page size): host address,
/// guest address and size must all be multiples of it.
pub const GRANULE: u64 = 16 * 1024;

/// What a mapping holds; decides its permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Guest RAM: read, write, execute.
    Ram,
    /// Device memory (a passed-through BAR): read and write, never execute.
    Device,
}

/// One guest mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Guest physical start.
    pub guest: u64,
    /// Length in bytes.
    pub size: u64,
    /// Host virtual start.
    pub host: usize,
    /// RAM or device memory.
    pub kind: Kind,
}

impl Mapping {
    fn end(&self) -> u64 {
        self.guest.saturating_add(self.size)
    }
}

/// Checks a mapping against the 16 KiB granule, saying which value is off.
pub fn check_granule(guest: u64, size: u64, host: usize) -> Result<(), String> {
    let bad: Vec<String> =
        [("guest address", guest), ("size", size), ("host address", host as u64)]
            .iter()
            .filter(|(_, v)| v % GRANULE != 0)
            .map(|(what, v)| format!("{what} {v:#x}"))
            .collect();
    if size == 0 {
        return Err("an empty mapping (size 0)".into());
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "Hypervisor.framework maps guest memory in 16 KiB pages, and the {} {} not a \
             multiple of 0x4000",
            bad.join(", "),
            if bad.len() == 1 { "is" } else { "are" }
        ))
    }
}

/// The mappings of one VM, by slot number.
#[derive(Debug, Default)]
pub struct Slots {
    next: u32,
    map: BTreeMap<u32, Mapping>,
}

impl Slots {
    /// Records `mapping` and returns its slot number, or the mapping it would overlap.
    pub fn insert(&mut self, mapping: Mapping) -> Result<u32, Mapping> {
        if let Some(other) =
            self.map.values().find(|m| m.guest < mapping.end() && mapping.guest < m.end())
        {
            return Err(*other);
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        self.map.insert(id, mapping);
        Ok(id)
    }

    /// Forgets slot `id`, returning what it mapped.
    pub fn remove(&mut self, id: u32) -> Option<Mapping> {
        self.map.remove(&id)
    }

    /// Slot `id`'s mapping.
    pub fn get(&self, id: u32) -> Option<&Mapping> {
        self.map.get(&id)
    }

    /// The host address of guest RAM at `guest..guest + len`, when one RAM mapping holds it all.
    pub fn ram_host_addr(&self, guest: u64, len: u64) -> Option<usize> {
        let end = guest.checked_add(len)?;
        let m = self
            .map
            .values()
            .find(|m| m.kind == Kind::Ram && m.guest <= guest && end <= m.end())?;
        usize::try_from(guest - m.guest).ok().and_then(|offset| m.host.checked_add(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(guest: u64, size: u64, host: usize) -> Mapping {
        Mapping { guest, size, host, kind: Kind::Ram }
    }

    #[test]
    fn granule_is_16k() {
        assert!(check_granule(0x4000_0000, 0x10_0000, 0x1_0000_4000).is_ok());
        let err = check_granule(0x4000_1000, 0x4000, 0x1_0000_4000).unwrap_err();
        assert!(err.contains("guest address 0x40001000 is not a multiple of 0x4000"), "{err}");
        let err = check_granule(0x4000_0000, 0x1000, 0x1_0000_1000).unwrap_err();
        assert!(err.contains("size 0x1000, host address 0x100001000 are not"), "{err}");
        assert!(check_granule(0x4000_0000, 0, 0x1_0000_0000).unwrap_err().contains("empty"));
    }

    #[test]
    fn slots_number_and_refuse_overlaps() {
        let mut slots = Slots::default();
        let a = slots.insert(ram(0x4000_0000, 0x10_0000, 0x1000_0000)).unwrap();
        let bar =
            Mapping { guest: 0x1000_0000, size: 0x4000, host: 0x2000_0000, kind: Kind::Device };
        let b = slots.insert(bar).unwrap();
        assert_ne!(a, b);
        assert_eq!(slots.get(b), Some(&bar));
        assert_eq!(
            slots.insert(ram(0x400f_c000, 0x8000, 0)),
            Err(ram(0x4000_0000, 0x10_0000, 0x1000_0000))
        );
        // Touching ends do not overlap.
        assert!(slots.insert(ram(0x4010_0000, 0x4000, 0x3000_0000)).is_ok());
        assert_eq!(slots.remove(b), Some(bar));
        assert_eq!(slots.remove(b), None);
        assert!(slots.insert(bar).is_ok());
    }

    #[test]
    fn ram_lookup() {
        let mut slots = Slots::default();
        slots.insert(ram(0x4000_0000, 0x10_0000, 0x1000_0000)).unwrap();
        let bar =
            Mapping { guest: 0x1000_0000, size: 0x4000, host: 0x2000_0000, kind: Kind::Device };
        slots.insert(bar).unwrap();
        assert_eq!(slots.ram_host_addr(0x4000_0010, 4), Some(0x1000_0010));
        assert_eq!(slots.ram_host_addr(0x400f_fffc, 4), Some(0x100f_fffc));
        assert_eq!(slots.ram_host_addr(0x400f_fffe, 4), None, "crosses the end");
        assert_eq!(slots.ram_host_addr(0x1000_0000, 4), None, "device memory is not read");
        assert_eq!(slots.ram_host_addr(u64::MAX, 4), None);
    }
}
