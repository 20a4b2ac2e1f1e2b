//! A fake VFIOUserPCIDriver: what the real dext does for each selector (as read from its
//! source), over a GPU-like function, recording every call and every protocol violation.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::driverkit::protocol::*;
use crate::driverkit::{DextConnection, DextError, DextMapping, WaitOutcome};
use crate::PciAddress;

/// The fake function's address.
pub const ADDRESS: &str = "0000:03:00.0";
/// MSI capability offset (64-bit, per-vector mask: 0x18 bytes).
pub const MSI_CAP: u64 = 0x50;
/// PCIe capability offset.
pub const PCIE_CAP: u64 = 0x68;
/// MSI-X capability offset.
pub const MSIX_CAP: u64 = 0xb0;
/// MSI-X table and PBA, in BAR0.
pub const MSIX_TABLE: u64 = 0x8000;
/// MSI-X PBA, in BAR0.
pub const MSIX_PBA: u64 = 0x9000;
/// MSI-X table size.
pub const MSIX_VECTORS: u64 = 8;
/// Bus addresses the fake DART hands out start here.
pub const BUS_BASE: u64 = 0x8_0000_0000;

/// Registers no write may reach (what the real device must never see on macOS).
pub fn forbidden() -> Vec<(Range<u64>, &'static str)> {
    vec![
        (0x06..0x08, "STATUS"),
        (0x10..0x28, "BARs"),
        (0x30..0x34, "ROM"),
        (MSI_CAP..MSI_CAP + 0x18, "MSI"),
        (MSIX_CAP..MSIX_CAP + 12, "MSI-X"),
        (PCIE_CAP + 0x08..PCIE_CAP + 0x0a, "DEVCTL"),
        (PCIE_CAP + 0x28..PCIE_CAP + 0x2a, "DEVCTL2"),
    ]
}

/// Page-aligned memory shared as atomics (the interrupt-state page, BAR mappings).
#[derive(Debug)]
pub struct FakeMemory {
    words: Box<[AtomicU64]>,
}

impl FakeMemory {
    fn new(len: u64) -> Arc<Self> {
        let words = (0..len / 8).map(|_| AtomicU64::new(0)).collect();
        Arc::new(Self { words })
    }

    pub fn word(&self, index: usize) -> u64 {
        self.words[index].load(Ordering::Acquire)
    }
}

#[derive(Debug)]
struct FakeMapping {
    memory: Arc<FakeMemory>,
    memory_type: MemoryType,
    unmapped: Arc<Mutex<Vec<MemoryType>>>,
}

impl DextMapping for FakeMapping {
    fn addr(&self) -> *mut u8 {
        // Tests read it through atomics or the raw pointer only.
        self.memory.words.as_ptr() as *mut u8
    }

    fn len(&self) -> u64 {
        self.memory.words.len() as u64 * 8
    }
}

impl Drop for FakeMapping {
    fn drop(&mut self) {
        self.unmapped.lock().unwrap_or_else(|e| e.into_inner()).push(self.memory_type);
    }
}

/// A live DMA region: (client VA, size, bus address).
pub type FakeRegion = (u64, u64, u64);

/// What the fake dext holds and saw.
#[derive(Debug)]
pub struct FakeState {
    pub identity: [u64; IDENTITY_WORDS],
    pub config: Vec<u8>,
    /// By BAR: (memory index, size, type).
    pub bars: [Option<(u64, u64, u64)>; 6],
    pub claimed: bool,
    /// Claims made: the dext's Claim is shared and reference-counted, so a second client's
    /// claim succeeds too (a "secondary claim") and both drive the device.
    pub claims: u32,
    pub closed: bool,
    pub calls: Vec<(Selector, Vec<u64>)>,
    /// (offset, width, value) of every config write that reached the "device".
    pub config_writes: Vec<(u64, u64, u64)>,
    /// (memory index, offset, width) of MMIO reads; writes with their value.
    pub mmio_reads: Vec<(u64, u64, u64)>,
    pub mmio_writes: Vec<(u64, u64, u64, u64)>,
    /// Protocol violations: what the real dext would refuse or the host would panic on.
    pub violations: Vec<String>,
    /// What SetupInterrupts registers.
    pub vectors: u64,
    pub interrupts_set_up: bool,
    pub enabled: [u64; IRQ_WORDS],
    /// A wait completion is queued.
    pub signalled: bool,
    pub dropped_interrupts: Vec<u16>,
    /// By key.
    pub regions: BTreeMap<u64, FakeRegion>,
    pub next_bus: u64,
    /// Selectors that fail once with an IOReturn.
    pub fail: HashMap<Selector, i32>,
    /// Memory types that fail to map.
    pub map_fails: Vec<u32>,
    /// The device is gone: waits fail with kIOReturnNoDevice.
    pub gone: bool,
    /// Replace the next RegisterDMARegion reply.
    pub register_reply: Option<[u64; 3]>,
    pub reset_result: i32,
    pub resets: u32,
    pub mapped: Vec<MemoryType>,
}

struct Inner {
    state: Mutex<FakeState>,
    wake: Condvar,
    page: Arc<FakeMemory>,
    unmapped: Arc<Mutex<Vec<MemoryType>>>,
}

/// The test's handle on the fake.
#[derive(Clone)]
pub struct FakeHandle(Arc<Inner>);

/// The connection the code under test gets.
pub struct FakeDext(Arc<Inner>);

impl std::fmt::Debug for FakeDext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FakeDext")
    }
}

impl Drop for FakeDext {
    fn drop(&mut self) {
        // Like IOServiceClose: the dext releases the claim and everything else.
        let mut s = self.0.state.lock().unwrap_or_else(|e| e.into_inner());
        s.closed = true;
        s.claimed = false;
        s.regions.clear();
    }
}

fn config_space() -> Vec<u8> {
    let mut c = vec![0u8; 4096];
    let mut put = |offset: u64, bytes: &[u8]| {
        c[offset as usize..offset as usize + bytes.len()].copy_from_slice(bytes)
    };
    put(0x00, &0x2684_10de_u32.to_le_bytes());
    put(0x04, &0x0010_0000_u32.to_le_bytes()); // COMMAND 0, STATUS: capabilities
    put(0x08, &0x0300_00a1_u32.to_le_bytes()); // class 030000, revision a1
                                               // BAR registers as the dext synthesizes them: type bits, no address.
    put(0x10, &0x0_u32.to_le_bytes());
    put(0x14, &0xc_u32.to_le_bytes());
    put(0x1c, &0xc_u32.to_le_bytes());
    put(0x24, &0x1_u32.to_le_bytes());
    put(0x2c, &0x1234_10de_u32.to_le_bytes());
    put(0x34, &[0x40]);
    put(0x3d, &[1]); // INTA, never offered
                     // PM, MSI (64-bit, per-vector mask, 4 vectors), PCIe v2, MSI-X.
    put(0x40, &[0x01, MSI_CAP as u8, 0x03, 0x00, 0x08, 0x00]);
    put(MSI_CAP, &[0x05, PCIE_CAP as u8, 0x84, 0x01]);
    put(PCIE_CAP, &[0x10, MSIX_CAP as u8, 0x02, 0x00]);
    put(PCIE_CAP + 4, &(1u32 << 28 | 0x8000).to_le_bytes()); // DEVCAP: FLR
    put(PCIE_CAP + 8, &0x2810_u16.to_le_bytes()); // DEVCTL: MPS 256, MRRS 512
    put(MSIX_CAP, &[0x11, 0x00]);
    put(MSIX_CAP + 2, &((MSIX_VECTORS - 1) as u16).to_le_bytes());
    put(MSIX_CAP + 4, &(MSIX_TABLE as u32).to_le_bytes());
    put(MSIX_CAP + 8, &(MSIX_PBA as u32).to_le_bytes());
    c
}

/// A claimed-device-to-be and the test's handle on it.
pub fn fake() -> (FakeDext, FakeHandle) {
    let address: PciAddress = ADDRESS.parse().unwrap();
    let state = FakeState {
        identity: [
            u64::from(address.bus),
            u64::from(address.device),
            u64::from(address.function),
            0x10de,
            0x2684,
            0x030000,
        ],
        config: config_space(),
        bars: [
            Some((0, 0x10000, 0x0)),
            Some((1, 0x100000, 0xc)),
            None,
            Some((2, 0x8000, 0xc)),
            None,
            Some((3, 0x80, 0x1)),
        ],
        claimed: false,
        claims: 0,
        closed: false,
        calls: Vec::new(),
        config_writes: Vec::new(),
        mmio_reads: Vec::new(),
        mmio_writes: Vec::new(),
        violations: Vec::new(),
        vectors: MSIX_VECTORS,
        interrupts_set_up: false,
        enabled: [0; IRQ_WORDS],
        signalled: false,
        dropped_interrupts: Vec::new(),
        regions: BTreeMap::new(),
        next_bus: BUS_BASE,
        fail: HashMap::new(),
        map_fails: Vec::new(),
        gone: false,
        register_reply: None,
        reset_result: IO_RETURN_SUCCESS,
        resets: 0,
        mapped: Vec::new(),
    };
    let inner = Arc::new(Inner {
        state: Mutex::new(state),
        wake: Condvar::new(),
        page: FakeMemory::new(IRQ_PAGE_SIZE),
        unmapped: Arc::default(),
    });
    (FakeDext(inner.clone()), FakeHandle(inner))
}

impl FakeHandle {
    /// Another client's connection to the same dext instance.
    pub fn connect(&self) -> FakeDext {
        self.state().closed = false;
        FakeDext(self.0.clone())
    }

    pub fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The selectors called, in order.
    pub fn selectors(&self) -> Vec<Selector> {
        self.state().calls.iter().map(|(s, _)| *s).collect()
    }

    /// Calls of `selector`, with their inputs.
    pub fn calls_of(&self, selector: Selector) -> Vec<Vec<u64>> {
        self.state().calls.iter().filter(|(s, _)| *s == selector).map(|(_, i)| i.clone()).collect()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// The device fires `vector`s: as the dext's InterruptOccurred.
    pub fn raise(&self, vectors: &[u16]) {
        let mut s = self.state();
        for &vector in vectors {
            let (word, bit) = (usize::from(vector) / 64, 1u64 << (vector % 64));
            if u64::from(vector) >= s.vectors || s.enabled[word] & bit == 0 {
                s.dropped_interrupts.push(vector);
                continue;
            }
            self.0.page.words[IRQ_PENDING_OFFSET / 8 + word].fetch_or(bit, Ordering::AcqRel);
            s.signalled = true;
        }
        self.0.wake.notify_all();
    }

    /// The pending bitmap in the page.
    pub fn pending(&self) -> [u64; IRQ_WORDS] {
        std::array::from_fn(|w| self.0.page.word(IRQ_PENDING_OFFSET / 8 + w))
    }

    /// Memory types unmapped so far.
    pub fn unmapped(&self) -> Vec<MemoryType> {
        self.0.unmapped.lock().unwrap().clone()
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

impl FakeDext {
    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl FakeState {
    fn call(
        &mut self,
        selector: Selector,
        input: &[u64],
        output: &mut [u64],
    ) -> Result<usize, i32> {
        let (ins, outs) = selector.arity();
        if input.len() < ins || output.len() < outs {
            self.violations.push(format!(
                "{selector}: {} inputs, room for {} outputs",
                input.len(),
                output.len()
            ));
            return Err(IO_RETURN_BAD_ARGUMENT);
        }
        if let Some(code) = self.fail.remove(&selector) {
            return Err(code);
        }
        let needs_claim = matches!(
            selector,
            Selector::RegisterDmaRegion
                | Selector::AllocateDmaBuffer
                | Selector::SetupInterrupts
                | Selector::ResetDevice
        );
        if needs_claim && !self.claimed {
            self.violations.push(format!("{selector} before Claim"));
            return Err(IO_RETURN_NOT_OPEN);
        }
        match selector {
            Selector::GetIdentity => {
                output[..IDENTITY_WORDS].copy_from_slice(&self.identity);
                Ok(IDENTITY_WORDS)
            }
            Selector::Claim => {
                // The real dext's Start refuses class 0x04 (multimedia): no instance, so any
                // call on one is a client that skipped the identity check.
                if self.identity[5] >> 16 == u64::from(REFUSED_BASE_CLASS) {
                    self.violations.push("Claim of a class 04 function".into());
                    return Err(IO_RETURN_NO_DEVICE);
                }
                self.claimed = true;
                self.claims += 1;
                Ok(0)
            }
            Selector::ConfigRead => {
                let (offset, width) = (input[0], input[1]);
                self.config_access(offset, width)?;
                let mut bytes = [0u8; 8];
                let at = offset as usize;
                bytes[..width as usize].copy_from_slice(&self.config[at..at + width as usize]);
                output[0] = u64::from_le_bytes(bytes);
                Ok(1)
            }
            Selector::ConfigWrite => {
                let (offset, width, value) = (input[0], input[1], input[2]);
                self.config_access(offset, width)?;
                for (range, what) in forbidden() {
                    if overlaps(&(offset..offset + width), &range) {
                        self.violations.push(format!(
                            "config write {offset:#x}/{width} = {value:#x} reached {what}"
                        ));
                    }
                }
                let at = offset as usize;
                self.config[at..at + width as usize]
                    .copy_from_slice(&value.to_le_bytes()[..width as usize]);
                self.config_writes.push((offset, width, value));
                Ok(0)
            }
            Selector::GetBarInfo => {
                let (index, size, bar_type) = self
                    .bars
                    .get(input[0] as usize)
                    .copied()
                    .flatten()
                    .ok_or(IO_RETURN_BAD_ARGUMENT)?;
                output[..3].copy_from_slice(&[index, size, bar_type]);
                Ok(3)
            }
            Selector::MmioRead => {
                let (index, offset, width) = (input[0], input[1], input[2]);
                self.mmio_access(index, offset, width)?;
                self.mmio_reads.push((index, offset, width));
                // A pattern: each byte is its offset's low byte xor the memory index.
                let bytes: Vec<u8> =
                    (0..8).map(|i| (offset + i) as u8 ^ (index as u8 * 0x11)).collect();
                let mut value = [0u8; 8];
                value[..width as usize].copy_from_slice(&bytes[..width as usize]);
                output[0] = u64::from_le_bytes(value);
                Ok(1)
            }
            Selector::MmioWrite => {
                let (index, offset, width, value) = (input[0], input[1], input[2], input[3]);
                self.mmio_access(index, offset, width)?;
                self.mmio_writes.push((index, offset, width, value));
                Ok(0)
            }
            Selector::SetupInterrupts => {
                if self.interrupts_set_up {
                    return Err(IO_RETURN_STILL_OPEN);
                }
                self.interrupts_set_up = true;
                self.enabled = [u64::MAX; IRQ_WORDS];
                output[0] = self.vectors;
                Ok(1)
            }
            Selector::SetIrqMask => {
                if !self.interrupts_set_up {
                    return Err(IO_RETURN_NOT_READY);
                }
                self.enabled.copy_from_slice(&input[..IRQ_WORDS]);
                Ok(0)
            }
            Selector::ResetDevice => {
                self.resets += 1;
                match self.reset_result {
                    IO_RETURN_SUCCESS => Ok(0),
                    code => Err(code),
                }
            }
            Selector::RegisterDmaRegion => self.register(input, output),
            Selector::UnregisterDmaRegion => match self.regions.remove(&input[0]) {
                Some(_) => Ok(0),
                None => {
                    self.violations.push(format!("unregister of unknown key {}", input[0]));
                    Err(IO_RETURN_NOT_FOUND)
                }
            },
            _ => {
                self.violations.push(format!("{selector} is not used by Aperture"));
                Err(IO_RETURN_UNSUPPORTED)
            }
        }
    }

    fn config_access(&mut self, offset: u64, width: u64) -> Result<(), i32> {
        if !matches!(width, 1 | 2 | 4) || offset % width != 0 || offset + width > 4096 {
            self.violations.push(format!("config access {offset:#x}/{width}"));
            return Err(IO_RETURN_BAD_ARGUMENT);
        }
        Ok(())
    }

    fn mmio_access(&mut self, index: u64, offset: u64, width: u64) -> Result<(), i32> {
        let size = self.bars.iter().flatten().find(|b| b.0 == index).map(|b| b.1);
        let ok = matches!(width, 1 | 2 | 4 | 8)
            && offset % width == 0
            && size.is_some_and(|size| offset + width <= size);
        if !ok {
            self.violations.push(format!("MMIO access {index}:{offset:#x}/{width}"));
            return Err(IO_RETURN_BAD_ARGUMENT);
        }
        Ok(())
    }

    fn register(&mut self, input: &[u64], output: &mut [u64]) -> Result<usize, i32> {
        let (key, va, size) = (input[0], input[1], input[2]);
        if size == 0 || va == 0 {
            return Err(IO_RETURN_BAD_ARGUMENT);
        }
        if self.regions.contains_key(&key) {
            self.violations.push(format!("duplicate DMA key {key}"));
            return Err(IO_RETURN_STILL_OPEN);
        }
        if self.regions.len() >= MAX_DMA_REGIONS as usize {
            return Err(IO_RETURN_NO_SPACE);
        }
        // What the real DART does with these: panic the host.
        if va % DART_PAGE_SIZE != 0 || size % DART_PAGE_SIZE != 0 || size > DMA_CHUNK_SIZE {
            self.violations.push(format!("host panic: DART asked for {va:#x}+{size:#x}"));
            return Err(IO_RETURN_NOT_ALIGNED);
        }
        let live: u64 = self.regions.values().map(|r| r.1).sum();
        if live + size > DART_BUDGET {
            self.violations.push(format!("host panic: DART over budget by {size:#x}"));
            return Err(IO_RETURN_NO_MEMORY);
        }
        let bus = self.next_bus;
        // A guard page between regions, as the DART leaves.
        self.next_bus += size + DART_PAGE_SIZE;
        self.regions.insert(key, (va, size, bus));
        let reply = self.register_reply.take().unwrap_or([1, bus, size]);
        output[..3].copy_from_slice(&reply);
        Ok(3)
    }
}

/// The DART budget the fake enforces.
const DART_BUDGET: u64 = crate::dma::MapperLimits::APPLE_DART.max_mapped_bytes;

impl DextConnection for FakeDext {
    fn call(
        &self,
        selector: Selector,
        input: &[u64],
        output: &mut [u64],
    ) -> Result<usize, DextError> {
        let mut s = self.state();
        s.calls.push((selector, input.to_vec()));
        if s.closed {
            return Err(DextError::Call { selector, code: IO_RETURN_NOT_ATTACHED });
        }
        if selector == Selector::CheckInterrupt && s.interrupts_set_up && output.len() >= IRQ_WORDS
        {
            for (word, out) in output.iter_mut().take(IRQ_WORDS).enumerate() {
                *out = self.0.page.words[IRQ_PENDING_OFFSET / 8 + word].swap(0, Ordering::AcqRel);
            }
            return Ok(IRQ_WORDS);
        }
        s.call(selector, input, output).map_err(|code| DextError::Call { selector, code })
    }

    fn map_memory(&self, memory: MemoryType) -> Result<Arc<dyn DextMapping>, DextError> {
        let mut s = self.state();
        if s.map_fails.contains(&memory.code()) {
            return Err(DextError::Map { memory, code: IO_RETURN_NOT_READY });
        }
        let backing = match memory {
            MemoryType::InterruptState if s.interrupts_set_up => self.0.page.clone(),
            MemoryType::Bar { index, .. } => {
                let size = s.bars.get(usize::from(index)).copied().flatten().map(|b| b.1);
                match size {
                    Some(size) => FakeMemory::new(size.max(8)),
                    None => return Err(DextError::Map { memory, code: IO_RETURN_BAD_ARGUMENT }),
                }
            }
            _ => return Err(DextError::Map { memory, code: IO_RETURN_NOT_READY }),
        };
        s.mapped.push(memory);
        Ok(Arc::new(FakeMapping {
            memory: backing,
            memory_type: memory,
            unmapped: self.0.unmapped.clone(),
        }))
    }

    fn wait_interrupt(&self, timeout: Duration) -> Result<WaitOutcome, DextError> {
        let mut s = self.state();
        if s.gone {
            return Err(DextError::Call {
                selector: Selector::WaitInterrupt,
                code: crate::driverkit::protocol::IO_RETURN_NO_DEVICE,
            });
        }
        if !s.interrupts_set_up {
            return Err(DextError::Call {
                selector: Selector::WaitInterrupt,
                code: IO_RETURN_NOT_READY,
            });
        }
        // Arming with bits already pending completes at once (as the dext does).
        let pending = (0..IRQ_WORDS).any(|w| self.0.page.word(IRQ_PENDING_OFFSET / 8 + w) != 0);
        if !s.signalled && !pending {
            s = self.0.wake.wait_timeout(s, timeout).unwrap().0;
        }
        if std::mem::take(&mut s.signalled) || pending {
            Ok(WaitOutcome::Signalled)
        } else {
            Ok(WaitOutcome::TimedOut)
        }
    }
}
