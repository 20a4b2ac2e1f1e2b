//! Guest RAM: allocation, registration with the hypervisor, and loading boot payloads.

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress, MmapRegion,
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
        source: std::io::Error,
    },
    /// vm-memory refused the host mapping.
    #[error("guest RAM: {0}")]
    Mmap(#[source] vm_memory::mmap::MmapRegionError),
    /// The RAM range wraps around the guest address space.
    #[error("guest RAM at {base:#x}+{size:#x} wraps around the guest address space")]
    Wraps {
        /// Guest physical start.
        base: u64,
        /// Size in bytes.
        size: u64,
    },
    /// vm-memory refused the region list.
    #[error("guest RAM: {0}")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
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
    /// A kernel or initrd file got shorter between opening and loading it.
    #[error(
        "the {what} file is {now} bytes now, {len} when Aperture opened it: it changed while \
         being loaded; run again once nothing writes to it"
    )]
    Shrank {
        /// Which payload.
        what: &'static str,
        /// Its length when opened.
        len: u64,
        /// Its length now.
        now: u64,
    },
    /// A region's host address could not be found.
    #[error("guest RAM region at {0:#x} has no host mapping")]
    NoHostAddress(u64),
}

/// Guest RAM, mapped into the VM.
/// Host memory behind guest RAM: anonymous, and aligned to 2 MiB so the host can back it
/// with transparent huge pages. KVM maps a 2 MiB block at stage 2 only when the host and
/// guest addresses agree modulo 2 MiB; with 4 KiB mappings every first touch of a page is a
/// separate stage-2 fault (kvmtool aligns its RAM the same way).
#[derive(Debug)]
pub(crate) struct AlignedMapping {
    addr: *mut u8,
    size: usize,
}

// SAFETY: the mapping is plain memory; access is synchronized by its users (the guest and
// vm-memory's volatile accessors).
unsafe impl Send for AlignedMapping {}
// SAFETY: as above.
unsafe impl Sync for AlignedMapping {}

/// Huge-page size the RAM is aligned to.
const RAM_HOST_ALIGN: usize = 2 << 20;

impl AlignedMapping {
    /// A fresh private anonymous read/write mapping of `size` bytes (zeroed).
    pub(crate) fn new(size: usize) -> std::io::Result<Self> {
        let total = size
            .checked_add(RAM_HOST_ALIGN)
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::OutOfMemory))?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let start = (raw as usize).next_multiple_of(RAM_HOST_ALIGN);
        let head = start - raw as usize;
        let tail = total - head - size;
        // SAFETY: both ranges lie inside the mapping made above and are not used.
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + size) as *mut libc::c_void, tail);
            }
        }
        #[cfg(target_os = "linux")]
        // SAFETY: advice on our own mapping; failure only means no huge pages.
        unsafe {
            libc::madvise(start as *mut libc::c_void, size, libc::MADV_HUGEPAGE);
        }
        Ok(Self { addr: start as *mut u8, size })
    }

    /// Takes back the huge-page advice `new` gave: for a small mapping that would otherwise
    /// get a whole 2 MiB page once merged with a neighbour.
    pub(crate) fn without_huge_pages(self) -> Self {
        #[cfg(target_os = "linux")]
        // SAFETY: advice on our own mapping; failure only leaves huge pages allowed.
        unsafe {
            libc::madvise(self.addr.cast(), self.size, libc::MADV_NOHUGEPAGE);
        }
        self
    }

    /// Its first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.addr
    }

    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.size
    }
}

impl Drop for AlignedMapping {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `new` and nothing uses it any more (GuestRam drops
        // it after its GuestMemoryMmap, and outlives the vCPUs and devices that use RAM).
        unsafe { libc::munmap(self.addr.cast(), self.size) };
    }
}

/// Guest RAM, mapped into the VM.
#[derive(Debug)]
pub struct GuestRam {
    memory: GuestMemoryMmap,
    /// Declared after `memory` so that it is unmapped last.
    regions: Vec<RamRegion>,
    _mapping: AlignedMapping,
}

/// One region of guest RAM: guest-physical start, length, and host address (valid while the
/// [`GuestRam`] lives); the type passthrough's DMA mappers take.
pub use passthrough::RamRegion;

impl GuestRam {
    /// Allocates `size` bytes at `base` and maps them into `vm`.
    pub fn new(vm: &dyn Vm, base: u64, size: u64) -> Result<Self, MemoryError> {
        let len = usize::try_from(size).map_err(|_| MemoryError::NoHostAddress(base))?;
        let mapping = AlignedMapping::new(len)
            .map_err(|source| MemoryError::Allocate { mib: size >> 20, source })?;
        // SAFETY: `mapping` is a valid private anonymous read/write mapping of `len` bytes,
        // kept alive by GuestRam for as long as `memory` (and the VM) exist.
        let region = unsafe {
            MmapRegion::build_raw(
                mapping.addr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            )
        }
        .map_err(MemoryError::Mmap)?;
        let region = GuestRegionMmap::new(region, GuestAddress(base))
            .ok_or(MemoryError::Wraps { base, size })?;
        let memory = GuestMemoryMmap::from_regions(vec![region]).map_err(MemoryError::Regions)?;
        let mut regions = Vec::new();
        for region in memory.iter() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| MemoryError::NoHostAddress(region.start_addr().0))?;
            // SAFETY: the mapping is owned by GuestRam, which the VMM keeps for the VM's life
            // (it drops the VM's vCPUs and devices before the RAM).
            unsafe { vm.map_memory(region.start_addr().0, region.len(), host)? };
            regions.push(RamRegion {
                gpa: region.start_addr().0,
                len: region.len(),
                host_addr: host as u64,
            });
        }
        Ok(Self { memory, regions, _mapping: mapping })
    }

    /// Where each RAM region sits in the guest and in this process (for device DMA maps).
    pub fn regions(&self) -> &[RamRegion] {
        &self.regions
    }

    /// The guest memory map, for devices that do DMA into it.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// Zeroes all of guest RAM for a reboot (nothing of the last boot may leak into the next,
    /// and the kernel expects zeroed memory nowhere but it is what a power cycle gives).
    /// With `pinned` (devices DMA into it through the IOMMU), every byte is overwritten in
    /// place: dropping the pages would give the process new ones while the IOMMU kept the
    /// old. Otherwise the pages are dropped (`MADV_DONTNEED`, instant; they come back zeroed
    /// and the host gets the memory back).
    pub fn clear(&self, pinned: bool) {
        let (addr, len) = (self._mapping.addr, self._mapping.size);
        if !pinned {
            #[cfg(target_os = "linux")]
            // SAFETY: our own private anonymous mapping: DONTNEED makes it read as zeros.
            if unsafe { libc::madvise(addr.cast(), len, libc::MADV_DONTNEED) } == 0 {
                return;
            }
        }
        // SAFETY: the mapping is `len` bytes of our own writable memory; the vCPUs are
        // stopped and devices reset, so nothing else writes it now.
        unsafe { std::ptr::write_bytes(addr, 0, len) };
    }

    /// Reads the first `len` bytes of `file` straight into guest RAM at `addr` (no buffer in
    /// between: a kernel is tens of MiB). Each call starts at the file's beginning, so a
    /// reboot in place loads it again.
    pub fn load_file(
        &self,
        what: &'static str,
        addr: u64,
        file: &mut std::fs::File,
        len: u64,
    ) -> Result<(), MemoryError> {
        let count = usize::try_from(len).map_err(|_| MemoryError::NoHostAddress(addr))?;
        std::io::Seek::seek(file, std::io::SeekFrom::Start(0)).map_err(|e| MemoryError::Write {
            what,
            addr,
            source: vm_memory::GuestMemoryError::IOError(e),
        })?;
        self.memory.read_exact_volatile_from(GuestAddress(addr), file, count).map_err(|source| {
            // A short read from a file that shrank says so; anything else is a write error.
            match file.metadata() {
                Ok(meta) if meta.len() < len => MemoryError::Shrank { what, len, now: meta.len() },
                _ => MemoryError::Write { what, addr, source },
            }
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypervisor::fake::FakeHypervisor;
    use crate::hypervisor::{Hypervisor, VmSpec};
    use vm_memory::Bytes;

    #[test]
    fn ram_is_huge_page_aligned_on_the_host_and_bounded() {
        let vm = FakeHypervisor::default().create_vm(&VmSpec { ipa_bits: 40, tso: false }).unwrap();
        for size in [16u64 << 20, 34 << 20] {
            let ram = GuestRam::new(vm.as_ref(), 0x4000_0000, size).unwrap();
            let host = ram.memory().get_host_address(GuestAddress(0x4000_0000)).unwrap();
            assert_eq!(host as usize % RAM_HOST_ALIGN, 0);
            ram.write("test", 0x4000_0000 + size - 4, &[1, 2, 3, 4]).unwrap();
            let mut back = [0u8; 4];
            ram.memory().read_slice(&mut back, GuestAddress(0x4000_0000 + size - 4)).unwrap();
            assert_eq!(back, [1, 2, 3, 4]);
            // Nothing below the base or past the end is guest RAM.
            assert!(ram.write("test", 0x4000_0000 + size - 2, &[0; 4]).is_err());
            assert!(ram.write("test", 0x3fff_fffc, &[0; 4]).is_err());
            for pinned in [false, true] {
                ram.write("test", 0x4000_0000 + size - 4, &[1, 2, 3, 4]).unwrap();
                ram.clear(pinned);
                ram.memory().read_slice(&mut back, GuestAddress(0x4000_0000 + size - 4)).unwrap();
                assert_eq!(back, [0; 4], "pinned={pinned}");
            }
        }
    }

    #[test]
    fn files_load_straight_into_guest_ram() {
        let vm = FakeHypervisor::default().create_vm(&VmSpec { ipa_bits: 40, tso: false }).unwrap();
        let ram = GuestRam::new(vm.as_ref(), 0x4000_0000, 16 << 20).unwrap();
        let path = std::env::temp_dir().join(format!("aperture-load-{}", std::process::id()));
        let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let mut file = std::fs::File::open(&path).unwrap();
        ram.load_file("test", 0x4010_0000, &mut file, bytes.len() as u64).unwrap();
        let mut back = vec![0u8; bytes.len()];
        ram.memory().read_slice(&mut back, GuestAddress(0x4010_0000)).unwrap();
        assert_eq!(back, bytes);
        // A file shorter than promised, or a load past the end of RAM, is an error.
        let mut file = std::fs::File::open(&path).unwrap();
        assert!(ram.load_file("test", 0x4000_0000, &mut file, bytes.len() as u64 + 1).is_err());
        let mut file = std::fs::File::open(&path).unwrap();
        let err = ram.load_file("initrd", 0x40ff_0000, &mut file, bytes.len() as u64).unwrap_err();
        assert!(err.to_string().contains("initrd at guest address 0x40ff0000"), "{err}");
        std::fs::remove_file(&path).unwrap();
    }
}
