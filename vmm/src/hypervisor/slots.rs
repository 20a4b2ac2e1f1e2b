//! The table of guest memory mappings one VM has, for both backends: slot numbers (reused, as
//! KVM has a bounded number of them), the hypervisor's alignment rule, no overlaps, and guest
//! RAM lookups for error reports. Portable bookkeeping; the backends make the calls.

use std::collections::BTreeMap;

use super::MemorySlot;

/// What a mapping holds; decides its permissions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryKind {
    /// Guest RAM: read, write, execute.
    Ram,
    /// Device memory (a passed-through BAR): read and write, never execute.
    Device,
    /// Memory the guest reads but never writes or executes: its writes exit as MMIO (a copy
    /// of emulated configuration space, see `crate::pci::mirror`).
    ReadOnly,
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
    pub kind: MemoryKind,
}

impl Mapping {
    fn end(&self) -> u64 {
        self.guest.saturating_add(self.size)
    }
}

/// Why a mapping cannot be added or removed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// Size 0.
    #[error("an empty mapping (size 0)")]
    Empty,
    /// Guest address, size or host address off the hypervisor's page size.
    #[error(
        "{hypervisor} maps guest memory in {} KiB pages, and the {} {} not a multiple of {granule:#x}",
        granule / 1024,
        .misaligned.iter().map(|(what, value)| format!("{what} {value:#x}")).collect::<Vec<_>>().join(", "),
        if .misaligned.len() == 1 { "is" } else { "are" }
    )]
    Misaligned {
        /// The hypervisor's name.
        hypervisor: &'static str,
        /// Its page size in bytes.
        granule: u64,
        /// The values that are off, named.
        misaligned: Vec<(&'static str, u64)>,
    },
    /// The range wraps around the address space.
    #[error("the range wraps around the end of the address space")]
    Wraps,
    /// Another mapping covers part of the range.
    #[error("overlaps the mapping at {:#x}+{:#x}", .other.guest, .other.size)]
    Overlap {
        /// The mapping in the way.
        other: Mapping,
    },
    /// Every slot number is taken.
    #[error("all {limit} memory slots of the hypervisor are in use")]
    Full {
        /// How many slots the hypervisor has.
        limit: u32,
    },
    /// Removing a slot that does not map what the caller says.
    #[error("slot {id} does not map {guest:#x}+{size:#x}")]
    Unknown {
        /// The slot number.
        id: u32,
        /// The guest start the caller gave.
        guest: u64,
        /// The size the caller gave.
        size: u64,
    },
}

/// The mappings of one VM, by slot number.
#[derive(Debug)]
pub struct SlotTable {
    hypervisor: &'static str,
    granule: u64,
    limit: u32,
    map: BTreeMap<u32, Mapping>,
}

impl SlotTable {
    /// An empty table for `hypervisor`, which maps memory in `granule`-byte pages (a power of
    /// two) and has `limit` slots.
    pub fn new(hypervisor: &'static str, granule: u64, limit: u32) -> Self {
        Self { hypervisor, granule: granule.max(1), limit, map: BTreeMap::new() }
    }

    /// Records `mapping` under the lowest free slot number and returns it, or says why the
    /// hypervisor would refuse it.
    pub fn insert(&mut self, mapping: Mapping) -> Result<u32, SlotError> {
        if mapping.size == 0 {
            return Err(SlotError::Empty);
        }
        let misaligned: Vec<(&'static str, u64)> = [
            ("guest address", mapping.guest),
            ("size", mapping.size),
            ("host address", mapping.host as u64),
        ]
        .into_iter()
        .filter(|(_, value)| value % self.granule != 0)
        .collect();
        if !misaligned.is_empty() {
            return Err(SlotError::Misaligned {
                hypervisor: self.hypervisor,
                granule: self.granule,
                misaligned,
            });
        }
        if mapping.guest.checked_add(mapping.size).is_none() {
            return Err(SlotError::Wraps);
        }
        if let Some(other) =
            self.map.values().find(|m| m.guest < mapping.end() && mapping.guest < m.end())
        {
            return Err(SlotError::Overlap { other: *other });
        }
        // The lowest number not in use: the map is ordered, so the first gap.
        let id = self
            .map
            .keys()
            .zip(0u32..)
            .find(|(used, candidate)| **used != *candidate)
            .map_or(self.map.len(), |(_, candidate)| candidate as usize);
        let id = u32::try_from(id)
            .ok()
            .filter(|id| *id < self.limit)
            .ok_or(SlotError::Full { limit: self.limit })?;
        self.map.insert(id, mapping);
        Ok(id)
    }

    /// What `slot` maps, if this table made it (its number, start and size all match).
    pub fn find(&self, slot: &MemorySlot) -> Result<&Mapping, SlotError> {
        self.map
            .get(&slot.id)
            .filter(|m| m.guest == slot.guest_addr && m.size == slot.size)
            .ok_or(SlotError::Unknown { id: slot.id, guest: slot.guest_addr, size: slot.size })
    }

    /// Forgets `slot` (checked as by [`SlotTable::find`]), returning what it mapped.
    pub fn remove(&mut self, slot: &MemorySlot) -> Result<Mapping, SlotError> {
        self.find(slot)?;
        self.map.remove(&slot.id).ok_or(SlotError::Unknown {
            id: slot.id,
            guest: slot.guest_addr,
            size: slot.size,
        })
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
            .find(|m| m.kind == MemoryKind::Ram && m.guest <= guest && end <= m.end())?;
        usize::try_from(guest - m.guest).ok().and_then(|offset| m.host.checked_add(offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRANULE: u64 = 0x4000;

    fn table() -> SlotTable {
        SlotTable::new("Hypervisor.framework", GRANULE, 4)
    }

    fn ram(guest: u64, size: u64, host: usize) -> Mapping {
        Mapping { guest, size, host, kind: MemoryKind::Ram }
    }

    fn bar() -> Mapping {
        Mapping { guest: 0x1000_0000, size: 0x4000, host: 0x2000_0000, kind: MemoryKind::Device }
    }

    #[test]
    fn alignment_names_the_values_that_are_off() {
        let mut slots = table();
        assert!(slots.insert(ram(0x4000_0000, 0x10_0000, 0x1_0000_4000)).is_ok());
        let err = slots.insert(ram(0x5000_1000, 0x4000, 0x1_0000_4000)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Hypervisor.framework maps guest memory in 16 KiB pages, and the guest address \
             0x50001000 is not a multiple of 0x4000"
        );
        let err = slots.insert(ram(0x6000_0000, 0x1000, 0x1_0000_1000)).unwrap_err();
        assert!(err.to_string().contains("size 0x1000, host address 0x100001000 are not"), "{err}");
        assert_eq!(slots.insert(ram(0x6000_0000, 0, 0)), Err(SlotError::Empty));
        assert_eq!(slots.insert(ram(u64::MAX - 0x3fff, 0x8000, 0)), Err(SlotError::Wraps));
    }

    #[test]
    fn slots_number_reuse_and_refuse_overlaps() {
        let mut slots = table();
        let a = slots.insert(ram(0x4000_0000, 0x10_0000, 0x1000_0000)).unwrap();
        let b = slots.insert(bar()).unwrap();
        assert_eq!((a, b), (0, 1));
        assert_eq!(slots.get(b), Some(&bar()));
        assert_eq!(
            slots.insert(ram(0x400f_c000, 0x8000, 0)),
            Err(SlotError::Overlap { other: ram(0x4000_0000, 0x10_0000, 0x1000_0000) })
        );
        // Touching ends do not overlap.
        assert_eq!(slots.insert(ram(0x4010_0000, 0x4000, 0x3000_0000)), Ok(2));
        // Removing checks what the slot maps; its number is used again.
        let wrong = MemorySlot { id: b, guest_addr: 0x1000_0000, size: 0x8000 };
        assert_eq!(
            slots.remove(&wrong),
            Err(SlotError::Unknown { id: b, guest: 0x1000_0000, size: 0x8000 })
        );
        let slot = MemorySlot { id: b, guest_addr: 0x1000_0000, size: 0x4000 };
        assert_eq!(slots.find(&slot), Ok(&bar()));
        assert_eq!(slots.remove(&slot), Ok(bar()));
        assert!(slots.remove(&slot).is_err());
        assert!(slots.find(&slot).is_err());
        assert_eq!(slots.insert(bar()), Ok(1));
    }

    #[test]
    fn a_full_table_says_so() {
        let mut slots = table();
        for n in 0..4 {
            assert_eq!(slots.insert(ram(n * GRANULE, GRANULE, 0)), Ok(n as u32));
        }
        assert_eq!(slots.insert(ram(8 * GRANULE, GRANULE, 0)), Err(SlotError::Full { limit: 4 }));
    }

    #[test]
    fn ram_lookup() {
        let mut slots = table();
        slots.insert(ram(0x4000_0000, 0x10_0000, 0x1000_0000)).unwrap();
        slots.insert(bar()).unwrap();
        assert_eq!(slots.ram_host_addr(0x4000_0010, 4), Some(0x1000_0010));
        assert_eq!(slots.ram_host_addr(0x400f_fffc, 4), Some(0x100f_fffc));
        assert_eq!(slots.ram_host_addr(0x400f_fffe, 4), None, "crosses the end");
        assert_eq!(slots.ram_host_addr(0x1000_0000, 4), None, "device memory is not read");
        assert_eq!(slots.ram_host_addr(u64::MAX, 4), None);
    }
}
