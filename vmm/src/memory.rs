//! Guest RAM: allocation, registration with the hypervisor, and loading boot payloads.

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};

use crate::hypervisor::{HypervisorError, Vm};

/// Guest RAM errors.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host could not give us the memory.
    #[error("could not allocate {mib} MiB of guest RAM ({source}); use a smaller --memory")]
    Allocate {
        /// Size asked for.
        mib: u64,
        /// Why.
        source: vm_memory::mmap::FromRangesError,
    },
    /// Registering RAM with the hypervisor failed.
    #[error("could not map guest RAM into the VM: {0}")]
    Map(#[from] HypervisorError),
    /// A payload does not fit where the loader put it (a loader bug, reported rather than hidden).
    #[error("could not write the {what} at guest address {addr:#x}: {source}")]
    Write {
        /// Which payload.
        what: &'static str,
        /// Where.
        addr: u64,
        /// Why.
        source: vm_memory::GuestMemoryError,
    },
    /// A region's host address could not be found.
    #[error("guest RAM region at {0:#x} has no host mapping")]
    NoHostAddress(u64),
}

/// Guest RAM, mapped into the VM.
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
}

impl GuestRam {
    /// Allocates `size` bytes at `base` and maps them into `vm`.
    pub fn new(vm: &dyn Vm, base: u64, size: u64) -> Result<Self, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::NoHostAddress(base))?;
        let memory = GuestMemoryMmap::from_ranges(&[(GuestAddress(base), len)])
            .map_err(|source| MemoryError::Allocate { mib: size >> 20, source })?;
        for region in memory.iter() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| MemoryError::NoHostAddress(region.start_addr().0))?;
            // SAFETY: the mapping is owned by `memory`, which GuestRam keeps for the VM's
            // life (the VMM drops the VM's vCPUs before the RAM).
            unsafe { vm.map_memory(region.start_addr().0, region.len(), host)? };
        }
        Ok(Self { memory })
    }

    /// The guest memory map, for devices that do DMA into it.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Copies `bytes` into guest RAM at `addr`.
    pub fn write(&self, what: &'static str, addr: u64, bytes: &[u8]) -> Result<(), MemoryError> {
        self.memory.write_slice(bytes, GuestAddress(addr)).map_err(|source| MemoryError::Write {
            what,
            addr,
            source,
        })
    }
}
