//! Emulated registers the guest reads from memory: a read-only guest mapping (KVM
//! `KVM_MEM_READONLY`) holding what each register reads, so reads cost no exit while writes
//! still exit as MMIO. Used by the PCI configuration mirror (`crate::pci::mirror`) and the
//! PL011's register page (`crate::uart_page`); this holds what they share: the memory and its
//! slot for their whole life ([`ReadOnlyRegion`]), storing changed words so a vCPU sees them,
//! and the test VM.

use std::mem::ManuallyDrop;
use std::sync::Arc;

use log::{debug, warn};

use crate::hypervisor::slots::MemoryKind;
use crate::hypervisor::{HypervisorError, MemorySlot, Vm};
use crate::memory::AlignedMapping;

/// Read-only guest memory and its slot in the VM, mapped and unmapped as often as the user
/// needs. The memory is freed only once no slot maps it: `Drop` removes the slot first, and
/// keeps the memory (a leak) if the slot cannot be removed. So the one `unsafe` mapping call
/// holds for every user.
pub(crate) struct ReadOnlyRegion {
    vm: Arc<dyn Vm>,
    /// Guest physical address of the first byte.
    guest_addr: u64,
    /// What it is, for the log.
    what: &'static str,
    /// The slot while mapped.
    slot: Option<MemorySlot>,
    /// Freed only by `Drop`, after the slot is gone.
    memory: ManuallyDrop<AlignedMapping>,
}

impl ReadOnlyRegion {
    /// `bytes` bytes for guest address `guest_addr` of `vm`, every byte `fill`, not mapped
    /// yet. `None` (and a debug line naming `what`) where the hypervisor has no read-only
    /// memory or there is no memory for it.
    pub(crate) fn new(
        vm: &Arc<dyn Vm>,
        guest_addr: u64,
        bytes: usize,
        fill: u8,
        what: &'static str,
    ) -> Option<Self> {
        if !vm.readonly_memory() {
            debug!("{what}: the hypervisor has no read-only memory");
            return None;
        }
        let memory = new_image(what, bytes, fill)?;
        Some(Self {
            vm: vm.clone(),
            guest_addr,
            what,
            slot: None,
            memory: ManuallyDrop::new(memory),
        })
    }

    /// Maps the memory read-only into the guest (nothing to do when mapped): from here guest
    /// reads come from it.
    pub(crate) fn map(&mut self) -> Result<(), HypervisorError> {
        if self.slot.is_some() {
            return Ok(());
        }
        // SAFETY: the memory is owned by `self` (a private field no method hands out) and is
        // a mapping of its own, so it stays at this address while `self` moves; it is freed
        // only in `Drop`, after the slot is removed, and never if removing it fails.
        let slot = unsafe {
            self.vm.map_kind(
                self.guest_addr,
                self.memory.len() as u64,
                self.memory.as_ptr(),
                MemoryKind::ReadOnly,
            )
        }?;
        self.slot = Some(slot);
        Ok(())
    }

    /// Removes the slot (nothing to do when not mapped): guest reads exit again. On an error
    /// the slot stays (`is_mapped()` still true), for the caller to retry or live with; the
    /// guest then goes on reading the memory.
    pub(crate) fn unmap(&mut self) -> Result<(), HypervisorError> {
        let Some(slot) = self.slot.take() else { return Ok(()) };
        self.vm.unmap_memory(slot).inspect_err(|_| self.slot = Some(slot))
    }

    /// Whether the guest reads the memory now.
    pub(crate) fn is_mapped(&self) -> bool {
        self.slot.is_some()
    }

    /// Stores at byte `base` each of `words` that differs from `copy` (what the memory holds
    /// there now, updated), visible to the guest before this returns (see [`store_words`]).
    pub(crate) fn store_changed_words(
        &self,
        base: usize,
        copy: &mut [u32],
        words: impl IntoIterator<Item = u32>,
    ) {
        store_words(&self.memory, base, copy, words);
    }
}

impl Drop for ReadOnlyRegion {
    fn drop(&mut self) {
        if let Err(e) = self.unmap() {
            // The guest may still read the memory: it must not go back to the host.
            warn!("{}: could not remove its slot, its memory stays allocated: {e}", self.what);
            return;
        }
        // SAFETY: dropped once, here, and no slot maps the memory any more.
        unsafe { ManuallyDrop::drop(&mut self.memory) };
    }
}

/// A fresh mapping of `bytes` bytes, every byte `fill`, for a read-only slot; `None` (and
/// a debug line naming `what`) when there is no memory for it.
fn new_image(what: &str, bytes: usize, fill: u8) -> Option<AlignedMapping> {
    let memory = match AlignedMapping::new(bytes) {
        Ok(memory) => memory.without_huge_pages(),
        Err(e) => {
            debug!("{what}: no memory for it: {e}");
            return None;
        }
    };
    // A fresh anonymous mapping reads zero already: filling it with zeros would only make
    // every page resident.
    if fill != 0 {
        // SAFETY: `memory` is a fresh read/write mapping of `memory.len()` bytes that nothing
        // else uses yet.
        // No cache cleaning here: KVM cleans each page to the point of coherency as it first
        // maps it into the guest; only later updates need it.
        unsafe { std::ptr::write_bytes(memory.as_ptr(), fill, memory.len()) };
    }
    Some(memory)
}

/// Stores into `memory` at byte `base` each of `words` that differs from `copy` (what the
/// memory holds there now, updated), then makes the stored span visible to the guest.
/// Words past the end of `copy` or of the memory are ignored.
fn store_words(
    memory: &AlignedMapping,
    base: usize,
    copy: &mut [u32],
    words: impl IntoIterator<Item = u32>,
) {
    // The span of words written, cleaned from the cache in one go at the end.
    let mut changed: Option<(usize, usize)> = None;
    for (index, (word, value)) in copy.iter_mut().zip(words).enumerate() {
        let offset = base + index * 4;
        if *word == value || offset + 4 > memory.len() {
            continue;
        }
        *word = value;
        // SAFETY: `offset + 4` lies inside the mapping (checked above) and is 4-byte aligned
        // (the mapping is page-aligned, `base` a multiple of 4 at every caller); a volatile
        // aligned store, so a vCPU reading the word sees the old or the new value, never a
        // mix.
        unsafe {
            let at = memory.as_ptr().add(offset).cast::<u32>();
            at.write_volatile(value.to_le());
        }
        changed = Some(changed.map_or((offset, offset + 4), |(first, _)| (first, offset + 4)));
    }
    if let Some((first, end)) = changed {
        // SAFETY: `first..end` lies inside the mapping (each word was checked).
        clean_to_poc(unsafe { memory.as_ptr().add(first) }, end - first);
    }
}

/// Makes `len` bytes at `at` visible to a reader that bypasses the caches: the guest maps
/// device registers (ECAM, the UART) as device memory, so where the hypervisor does not
/// force its accesses cacheable (no FEAT_S2FWB) its reads go to memory, past what this
/// thread wrote into its cache.
#[cfg(target_arch = "aarch64")]
fn clean_to_poc(at: *const u8, len: usize) {
    // Read once: the kernel may trap and emulate user reads of CTR_EL0.
    static LINE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let line = *LINE.get_or_init(|| {
        let ctr: u64;
        // SAFETY: reads CTR_EL0, which Linux and macOS let user space read (or emulate).
        unsafe { std::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack)) };
        // DminLine: log2 of the smallest data cache line in 4-byte words.
        4usize << ((ctr >> 16) & 0xf)
    });
    let start = at as usize & !(line - 1);
    let end = at as usize + len;
    let mut addr = start;
    while addr < end {
        // SAFETY: cleans a cache line of memory this process maps; no data changes.
        unsafe { std::arch::asm!("dc cvac, {}", in(reg) addr, options(nostack)) };
        addr += line;
    }
    // SAFETY: a barrier; orders the cleans before whatever follows.
    unsafe { std::arch::asm!("dsb sy", options(nostack)) };
}

/// No cache maintenance off arm64 (the unit-test host): nothing maps this for a guest there.
#[cfg(not(target_arch = "aarch64"))]
fn clean_to_poc(_at: *const u8, _len: usize) {}

/// A VM for the read-only memory users' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use crate::hypervisor::slots::MemoryKind;
    use crate::hypervisor::{
        GicSpec, HypervisorError, MemorySlot, MsiController, Result, Vcpu, Vm,
    };

    /// A VM that offers read-only memory and records its slots.
    #[derive(Default)]
    pub(crate) struct SlotVm {
        /// Guest address, size, host address and kind of every mapping made.
        pub(crate) mapped: Mutex<Vec<(u64, u64, usize, MemoryKind)>>,
        /// Every slot removed.
        pub(crate) unmapped: Mutex<Vec<MemorySlot>>,
        /// Refuses new mappings (as KVM does on a host whose pages are larger).
        pub(crate) refuse: AtomicBool,
        /// Refuses to remove slots.
        pub(crate) refuse_unmap: AtomicBool,
    }

    impl SlotVm {
        /// Whether the last mapping made is still there.
        pub(crate) fn is_mapped(&self) -> bool {
            self.mapped.lock().unwrap().len() > self.unmapped.lock().unwrap().len()
        }
    }

    impl Vm for SlotVm {
        unsafe fn map_kind(
            &self,
            guest_addr: u64,
            size: u64,
            host_addr: *mut u8,
            kind: MemoryKind,
        ) -> Result<MemorySlot> {
            if self.refuse.load(Ordering::Relaxed) {
                return Err(HypervisorError::call(
                    "KVM_SET_USER_MEMORY_REGION",
                    std::io::Error::from_raw_os_error(libc::EINVAL),
                ));
            }
            self.mapped.lock().unwrap().push((guest_addr, size, host_addr as usize, kind));
            Ok(MemorySlot { id: 7, guest_addr, size })
        }
        fn readonly_memory(&self) -> bool {
            true
        }
        fn unmap_memory(&self, slot: MemorySlot) -> Result<()> {
            if self.refuse_unmap.load(Ordering::Relaxed) {
                return Err(HypervisorError::call(
                    "KVM_SET_USER_MEMORY_REGION",
                    std::io::Error::from_raw_os_error(libc::EBUSY),
                ));
            }
            self.unmapped.lock().unwrap().push(slot);
            Ok(())
        }
        fn create_vcpu(&self, _index: u32) -> Result<Box<dyn Vcpu>> {
            unimplemented!()
        }
        fn create_gic(&self, _spec: &GicSpec) -> Result<()> {
            Ok(())
        }
        fn msi_controller(&self) -> MsiController {
            MsiController::Its
        }
        fn set_spi_level(&self, _spi: u32, _asserted: bool) -> Result<()> {
            Ok(())
        }
        fn signal_msi(&self, _address: u64, _data: u32, _devid: u32) -> Result<()> {
            Ok(())
        }
    }

    /// The bytes the guest reads at `offset` of a read-only mapping at host address `host`.
    pub(crate) fn guest_reads(host: usize, offset: usize, len: usize) -> Vec<u8> {
        // SAFETY: test only; `host` is the live mapping of the memory under test.
        unsafe { std::slice::from_raw_parts((host + offset) as *const u8, len).to_vec() }
    }
}

#[cfg(test)]
mod tests;
