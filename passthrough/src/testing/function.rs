//! A fake physical PCI function (a byte-array configuration space and patterned BARs) and a
//! recording interrupt host that checks what every real host relies on, plus the fixtures the
//! tests assign: [`crate::assigned::AssignedFunction`] without VFIO or the dext. Used by the
//! unit tests and the fuzz targets (`tests/fuzz`), which assert on every access.

use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::MsiMessage;

use crate::assigned::{
    AssignError, AssignedFunction, HostFunction, InterruptHost, InterruptKind, RegionInfo,
    VectorRoute,
};

/// Configuration space size (VFIO's configuration region is this big).
const CONFIG_SIZE: usize = 4096;

/// What the fake device holds and saw.
#[derive(Debug, Default)]
pub struct DeviceLog {
    /// The real configuration space.
    pub config: Vec<u8>,
    /// Every configuration write that reached the device: (offset, bytes).
    pub config_writes: Vec<(u16, Vec<u8>)>,
    /// Every trapped BAR read: (BAR, offset, length).
    pub bar_reads: Vec<(usize, u64, usize)>,
    /// Every trapped BAR write: (BAR, offset, bytes).
    pub bar_writes: Vec<(usize, u64, Vec<u8>)>,
    /// Config reads at or above this offset fail.
    pub readable_up_to: usize,
}

/// A fake physical function.
#[derive(Debug, Clone)]
pub struct FakeDevice {
    /// Shared with the test.
    pub log: Arc<Mutex<DeviceLog>>,
    /// Its BARs as the host reports them.
    pub bars: [Option<RegionInfo>; 6],
    /// Its expansion ROM.
    pub rom: Option<RegionInfo>,
    /// Whether the host can deliver the device's INTx.
    pub intx: bool,
}

/// Locks `m`, also after a panic elsewhere (the fuzz targets abort on the first one).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether `[offset, offset + len)` lies in a region of `size` bytes.
fn inside(offset: u64, len: usize, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "past the region")),
    }
}

impl FakeDevice {
    /// The size of BAR `bar`, which the function must only access if the device has it.
    fn bar_size(&self, bar: usize, what: &str) -> u64 {
        let size = self.bar_info(bar).map(|b| b.size);
        assert!(size.is_some(), "{what} of BAR {bar}, which the device does not have");
        size.unwrap_or(0)
    }
}

impl HostFunction for FakeDevice {
    fn config_read(&self, offset: u16, data: &mut [u8]) -> io::Result<()> {
        let log = lock(&self.log);
        let start = usize::from(offset);
        // The function must only ask for the configuration space.
        assert!(
            start + data.len() <= CONFIG_SIZE,
            "config read of {} bytes at {offset:#x}",
            data.len()
        );
        if start + data.len() > log.readable_up_to {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "unreadable"));
        }
        data.copy_from_slice(&log.config[start..start + data.len()]);
        Ok(())
    }

    fn config_write(&self, offset: u16, data: &[u8]) -> io::Result<()> {
        let mut log = lock(&self.log);
        let start = usize::from(offset);
        assert!(
            matches!(data.len(), 1 | 2 | 4)
                && start % data.len() == 0
                && start + data.len() <= CONFIG_SIZE,
            "config write of {} bytes at {offset:#x}",
            data.len()
        );
        log.config[start..start + data.len()].copy_from_slice(data);
        log.config_writes.push((offset, data.to_vec()));
        Ok(())
    }

    fn bar_info(&self, bar: usize) -> Option<RegionInfo> {
        self.bars.get(bar).copied().flatten()
    }

    fn rom_info(&self) -> Option<RegionInfo> {
        self.rom
    }

    fn bar_read(&self, bar: usize, offset: u64, data: &mut [u8]) -> io::Result<()> {
        inside(offset, data.len(), self.bar_size(bar, "read"))?;
        lock(&self.log).bar_reads.push((bar, offset, data.len()));
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = (offset as usize).wrapping_add(i) as u8 ^ bar as u8;
        }
        Ok(())
    }

    fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) -> io::Result<()> {
        inside(offset, data.len(), self.bar_size(bar, "write"))?;
        lock(&self.log).bar_writes.push((bar, offset, data.to_vec()));
        Ok(())
    }

    fn rom_read(&self, offset: u64, data: &mut [u8]) -> io::Result<()> {
        inside(offset, data.len(), self.rom.map_or(0, |r| r.size))?;
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = match (offset as usize).wrapping_add(i) {
                0 => 0x55,
                1 => 0xaa,
                n => n as u8,
            };
        }
        Ok(())
    }

    fn intx_available(&self) -> bool {
        self.intx
    }
}

/// A call the function made to the interrupt host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostCall {
    /// `set_vector_count(kind, vectors)`.
    Count(InterruptKind, u16),
    /// `set_vector(kind, vector, message, requester_id)`.
    Vector(InterruptKind, u16, Option<MsiMessage>, u16),
}

/// Records interrupt host calls and checks what every host relies on: one kind enabled at a
/// time, and messages only for the enabled vectors of the enabled kind.
#[derive(Debug, Clone, Default)]
pub struct RecordingHost {
    /// The calls so far.
    pub calls: Arc<Mutex<Vec<HostCall>>>,
    /// Vectors enabled per kind (MSI, MSI-X).
    pub enabled: Arc<Mutex<[u16; 2]>>,
}

fn slot(kind: InterruptKind) -> usize {
    match kind {
        InterruptKind::Msi => 0,
        InterruptKind::Msix => 1,
    }
}

impl RecordingHost {
    /// Returns and forgets the calls so far.
    pub fn take(&self) -> Vec<HostCall> {
        std::mem::take(&mut *lock(&self.calls))
    }

    /// Vectors enabled for `kind`.
    pub fn enabled(&self, kind: InterruptKind) -> u16 {
        lock(&self.enabled)[slot(kind)]
    }
}

impl InterruptHost for RecordingHost {
    fn set_vector_count(&mut self, kind: InterruptKind, vectors: u16) -> io::Result<()> {
        let mut enabled = lock(&self.enabled);
        let other = 1 - slot(kind);
        assert!(vectors == 0 || enabled[other] == 0, "{kind} enabled while the other kind is");
        assert!(kind != InterruptKind::Msi || vectors <= 32, "{vectors} MSI vectors");
        assert!(vectors <= 2048, "{vectors} {kind} vectors");
        enabled[slot(kind)] = vectors;
        lock(&self.calls).push(HostCall::Count(kind, vectors));
        Ok(())
    }

    fn route_vector(&mut self, route: VectorRoute) -> io::Result<()> {
        let VectorRoute { kind, vector, message, requester_id } = route;
        let enabled = lock(&self.enabled)[slot(kind)];
        assert!(message.is_none() || vector < enabled, "{kind} vector {vector} not enabled");
        lock(&self.calls).push(HostCall::Vector(kind, vector, message, requester_id));
        Ok(())
    }
}

/// Builds a device configuration space.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    bytes: Vec<u8>,
    bars: [Option<RegionInfo>; 6],
    rom: Option<RegionInfo>,
    intx: bool,
}

/// A readable, writable, mmappable host region of `size` bytes.
pub fn region(size: u64) -> RegionInfo {
    RegionInfo { size, readable: true, writable: true, mmappable: true }
}

impl ConfigBuilder {
    /// A function with these ids.
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> Self {
        let mut b = Self { bytes: vec![0; 4096], bars: [None; 6], rom: None, intx: false };
        b.u16(0x00, vendor).u16(0x02, device).u32(0x08, class << 8 | u32::from(revision));
        b
    }

    /// Sets a byte.
    pub fn u8(&mut self, offset: usize, value: u8) -> &mut Self {
        self.bytes[offset] = value;
        self
    }

    /// Sets a 16-bit register.
    pub fn u16(&mut self, offset: usize, value: u16) -> &mut Self {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
        self
    }

    /// Sets a 32-bit register.
    pub fn u32(&mut self, offset: usize, value: u32) -> &mut Self {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
        self
    }

    /// A BAR register value and its host region.
    pub fn bar(&mut self, index: usize, register: u32, info: RegionInfo) -> &mut Self {
        self.bars[index] = Some(info);
        self.u32(0x10 + 4 * index, register)
    }

    /// An expansion ROM of `size` bytes.
    pub fn rom(&mut self, size: u64) -> &mut Self {
        self.rom = Some(region(size));
        self
    }

    /// The host can deliver the device's INTx (the pin register is set separately).
    pub fn intx(&mut self) -> &mut Self {
        self.intx = true;
        self
    }

    /// A standard capability; the list is linked in the order of the calls.
    pub fn cap(&mut self, offset: usize, id: u8, next: u8, body: &[u8]) -> &mut Self {
        if self.bytes[0x34] == 0 {
            self.bytes[0x34] = offset as u8;
            self.bytes[0x06] |= 0x10;
        }
        self.u8(offset, id).u8(offset + 1, next);
        self.bytes[offset + 2..offset + 2 + body.len()].copy_from_slice(body);
        self
    }

    /// An extended capability with recognizable body bytes.
    pub fn ext_cap(&mut self, offset: usize, id: u16, version: u8, next: u16) -> &mut Self {
        self.u32(offset, u32::from(id) | u32::from(version) << 16 | u32::from(next) << 20);
        for i in 4..16 {
            self.bytes[offset + i] = (id as u8) ^ i as u8;
        }
        self
    }

    /// The fake device.
    pub fn build(&self) -> FakeDevice {
        FakeDevice {
            log: Arc::new(Mutex::new(DeviceLog {
                config: self.bytes.clone(),
                readable_up_to: CONFIG_SIZE,
                ..DeviceLog::default()
            })),
            bars: self.bars,
            rom: self.rom,
            intx: self.intx,
        }
    }

    /// Assigns the device as `name`: the function, and the doubles to inspect.
    pub fn assign(
        &self,
        name: &str,
    ) -> Result<(AssignedFunction, FakeDevice, RecordingHost), AssignError> {
        let fake = self.build();
        let host = RecordingHost::default();
        let function = AssignedFunction::new(name, Box::new(fake.clone()), Box::new(host.clone()))?;
        Ok((function, fake, host))
    }
}

fn le(parts: &[u32]) -> Vec<u8> {
    parts.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// An MSI-X capability body: control, table (BIR | offset), PBA.
pub fn msix_body(vectors: u16, table: u32, pba: u32) -> Vec<u8> {
    let mut body = (vectors - 1).to_le_bytes().to_vec();
    body.extend(le(&[table, pba]));
    body
}

/// A version 2 PCIe endpoint capability body (0x3a bytes after the header).
pub fn pcie_body() -> Vec<u8> {
    let mut body = vec![0u8; 0x3a];
    body[0..2].copy_from_slice(&0x0002u16.to_le_bytes()); // v2, endpoint
    body[2..6].copy_from_slice(&0x1000_8fc2u32.to_le_bytes()); // DEVCAP with FLR
    body[6..8].copy_from_slice(&0x2810u16.to_le_bytes()); // DEVCTL: MPS 128, MRRS 512
    body[0xe..0x10].copy_from_slice(&0x0040u16.to_le_bytes()); // LNKCTL
    body[0x10..0x12].copy_from_slice(&0x1011u16.to_le_bytes()); // LNKSTA
    body[0x26..0x28].copy_from_slice(&0x0005u16.to_le_bytes()); // DEVCTL2
    body
}

/// QEMU's NVMe controller: BAR0 64-bit 16 KiB with the MSI-X table at 0x2000 and PBA at
/// 0x3000 (65 vectors); or, `exclusive`, MSI-X in its own 4 KiB BAR4.
pub fn nvme(exclusive: bool) -> ConfigBuilder {
    let mut b = ConfigBuilder::new(0x1b36, 0x0010, 0x010802, 0x02);
    b.u16(0x2c, 0x1af4).u16(0x2e, 0x1100).u8(0x3d, 1);
    b.bar(0, 0xfebf_0004, region(0x4000)).u32(0x14, 0);
    if exclusive {
        b.bar(4, 0xfebe_0004, region(0x1000));
        b.cap(0x40, 0x11, 0x60, &msix_body(65, 4, 0x800 | 4));
    } else {
        b.cap(0x40, 0x11, 0x60, &msix_body(65, 0x2000, 0x3000));
    }
    b.cap(0x60, 0x01, 0x80, &[0x03, 0x00, 0x08, 0x00, 0, 0]);
    b.cap(0x80, 0x10, 0x00, &pcie_body());
    b
}

/// The MSI-X table of [`gpu`] in BAR 0.
pub const GPU_TABLE: u64 = 0xb9_0000;
/// The MSI-X PBA of [`gpu`] in BAR 0.
pub const GPU_PBA: u64 = 0xba_0000;

/// Which configuration bytes of [`nvme`] a guest write may reach: COMMAND, PMCSR, PCIe
/// control/status fields except DEVCAP/DEVCTL/DEVCTL2.
pub fn nvme_forwardable(at: u16) -> bool {
    matches!(at, 0x04..=0x05 | 0x62..=0x67)
        || (0x82..0xbc).contains(&at) && !(0x84..0x8a).contains(&at) && !(0xa8..0xaa).contains(&at)
}

/// A GPU-like function: BAR0 16 MiB 32-bit, BAR1 256 MiB and BAR3 32 MiB 64-bit
/// prefetchable, an I/O BAR5, a 512 KiB ROM, PM + MSI + PCIe + MSI-X + vendor capabilities,
/// and Resizable BAR, SR-IOV, AER, ARI, DSN and L1 PM substates extended capabilities.
pub fn gpu() -> ConfigBuilder {
    let mut b = ConfigBuilder::new(0x10de, 0x2684, 0x030000, 0xa1);
    b.u16(0x2c, 0x10de).u16(0x2e, 0x16f4).u8(0x3d, 1);
    b.bar(0, 0xfc00_0000, region(16 << 20));
    b.bar(1, 0x0000_000c, region(256 << 20)).u32(0x18, 0x60);
    b.bar(3, 0x0000_000c, region(32 << 20)).u32(0x20, 0x62);
    b.bar(5, 0x0000_e001, region(0x80));
    b.rom(512 << 10);
    b.cap(0x60, 0x01, 0x68, &[0x03, 0x06, 0x08, 0x00, 0, 0]);
    b.cap(0x68, 0x05, 0x78, &[0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    b.cap(0x78, 0x10, 0xb4, &pcie_body());
    b.cap(0xb4, 0x11, 0xc0, &msix_body(9, GPU_TABLE as u32, GPU_PBA as u32));
    b.cap(0xc0, 0x09, 0x00, &[0x14, 0x01, 0x02, 0x03]);
    b.ext_cap(0x100, 0x15, 1, 0x140);
    b.ext_cap(0x140, 0x10, 1, 0x180);
    b.ext_cap(0x180, 0x01, 2, 0x200);
    b.ext_cap(0x200, 0x0e, 1, 0x210);
    b.ext_cap(0x210, 0x03, 1, 0x220);
    b.ext_cap(0x220, 0x1e, 1, 0);
    b
}

/// Which configuration bytes of [`gpu`] a guest write may reach: COMMAND, power management
/// control, PCIe status/link fields (not DEVCAP/DEVCTL/DEVCTL2), vendor-specific, AER.
pub fn gpu_forwardable(offset: u16) -> bool {
    matches!(offset, 0x04..=0x05 | 0x62..=0x67 | 0xc2..=0xd3 | 0x184..=0x1c7)
        || (0x7a..0xb4).contains(&offset)
            && !(0x7c..0x82).contains(&offset)
            && !(0xa0..0xa2).contains(&offset)
}

/// An MSI capability body (after the header) with message control `control`, holding what a
/// host's programming could leave there: an address, data, every vector masked and pending,
/// and Enable, Multiple Message Enable and Extended Message Data (capable and enabled) set.
pub fn msi_body(control: u16) -> Vec<u8> {
    let is_64 = control & 0x80 != 0;
    let mut body = (control | 0x0671).to_le_bytes().to_vec();
    body.extend(0xfee0_1004u32.to_le_bytes());
    if is_64 {
        body.extend(0x1u32.to_le_bytes());
    }
    body.extend(0x4021u16.to_le_bytes());
    if control & 0x100 != 0 {
        body.extend([0xaa, 0x55]); // extended data
        body.extend(le(&[u32::MAX, u32::MAX]));
    }
    body
}

/// MSI Message Control: 64-bit address capable.
pub const MSI_64BIT: u16 = 0x80;
/// MSI Message Control: per-vector masking capable.
pub const MSI_PVM: u16 = 0x100;

/// A function with MSI only: BAR0 32-bit 128 KiB, MSI at 0x40 (message control `control`:
/// its 64-bit, per-vector mask and Multiple Message Capable bits), PCIe at 0x60.
pub fn msi_only(control: u16) -> ConfigBuilder {
    let mut b = ConfigBuilder::new(0x8086, 0x1234, 0x020000, 0x01);
    b.bar(0, 0xfe00_0000, region(128 << 10));
    b.cap(0x40, 0x05, 0x60, &msi_body(control));
    b.cap(0x60, 0x10, 0x00, &pcie_body());
    b
}

/// The MSI-X table of [`msi_and_msix`], in BAR3.
pub const NIC_TABLE: u64 = 0;
/// The MSI-X PBA of [`msi_and_msix`], in BAR3.
pub const NIC_PBA: u64 = 0x2000;

/// A NIC-like function with both MSI and MSI-X (Intel's igb layout): BAR0 64-bit 128 KiB,
/// BAR3 16 KiB with the MSI-X table (10 vectors); PM at 0x40, MSI at 0x50 (64-bit, per-vector
/// mask, 8 vectors), MSI-X at 0x70, PCIe at 0xa0.
pub fn msi_and_msix() -> ConfigBuilder {
    let mut b = ConfigBuilder::new(0x8086, 0x10c9, 0x020000, 0x01);
    b.bar(0, 0xfe00_0004, region(128 << 10)).u32(0x14, 0);
    b.bar(3, 0xfe10_0000, region(16 << 10));
    b.cap(0x40, 0x01, 0x50, &[0x03, 0x00, 0x08, 0x00, 0, 0]);
    b.cap(0x50, 0x05, 0x70, &msi_body(MSI_64BIT | MSI_PVM | 3 << 1));
    b.cap(0x70, 0x11, 0xa0, &msix_body(10, NIC_TABLE as u32 | 3, NIC_PBA as u32 | 3));
    b.cap(0xa0, 0x10, 0x00, &pcie_body());
    b
}
