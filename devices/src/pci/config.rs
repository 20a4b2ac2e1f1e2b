//! A PCI Express configuration space (4 KiB) with per-byte access masks.
//!
//! Every byte is read-only unless its read-write mask or write-1-to-clear mask says otherwise,
//! so the guest-visible semantics of a register (including BAR sizing) follow from the masks:
//! a BAR's read-write mask covers only the address bits above its size, so writing all-ones
//! reads back the size mask with the read-only type bits.

use log::debug;

/// Size of a PCI Express configuration space.
pub const CONFIG_SPACE_SIZE: usize = 4096;
/// First byte after the standard (PCI-compatible) configuration space.
pub const STANDARD_CONFIG_SIZE: u16 = 0x100;

/// Vendor ID register.
pub const VENDOR_ID: u16 = 0x00;
/// Device ID register.
pub const DEVICE_ID: u16 = 0x02;
/// Command register.
pub const COMMAND: u16 = 0x04;
/// Status register.
pub const STATUS: u16 = 0x06;
/// Revision ID; class code follows in bytes 0x09..0x0c.
pub const REVISION_ID: u16 = 0x08;
/// Cache line size register.
pub const CACHE_LINE_SIZE: u16 = 0x0c;
/// Header type register.
pub const HEADER_TYPE: u16 = 0x0e;
/// First BAR register.
pub const BAR0: u16 = 0x10;
/// BARs of a type 0 header.
pub const BAR_COUNT: usize = 6;
/// Subsystem vendor ID (type 0 only).
pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
/// Subsystem ID (type 0 only).
pub const SUBSYSTEM_ID: u16 = 0x2e;
/// Expansion ROM base address in a type 0 header.
pub const ROM_ADDRESS_TYPE0: u16 = 0x30;
/// Capabilities pointer.
pub const CAPABILITIES_POINTER: u16 = 0x34;
/// Expansion ROM base address in a type 1 header.
pub const ROM_ADDRESS_TYPE1: u16 = 0x38;
/// Interrupt line register.
pub const INTERRUPT_LINE: u16 = 0x3c;
/// Interrupt pin register.
pub const INTERRUPT_PIN: u16 = 0x3d;

/// Type 1: primary bus number.
pub const PRIMARY_BUS: u16 = 0x18;
/// Type 1: secondary bus number.
pub const SECONDARY_BUS: u16 = 0x19;
/// Type 1: subordinate bus number.
pub const SUBORDINATE_BUS: u16 = 0x1a;
/// Type 1: secondary status.
pub const SECONDARY_STATUS: u16 = 0x1e;
/// Type 1: memory base.
pub const MEMORY_BASE: u16 = 0x20;
/// Type 1: memory limit.
pub const MEMORY_LIMIT: u16 = 0x22;
/// Type 1: prefetchable memory base.
pub const PREF_MEMORY_BASE: u16 = 0x24;
/// Type 1: prefetchable memory limit.
pub const PREF_MEMORY_LIMIT: u16 = 0x26;
/// Type 1: upper 32 bits of the prefetchable base.
pub const PREF_BASE_UPPER: u16 = 0x28;
/// Type 1: upper 32 bits of the prefetchable limit.
pub const PREF_LIMIT_UPPER: u16 = 0x2c;
/// Type 1: bridge control.
pub const BRIDGE_CONTROL: u16 = 0x3e;

/// Command: memory space enable.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command: bus master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// Command: INTx emulation disable.
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Command bits a guest may change: memory, bus master, parity error response, SERR#, INTx
/// disable. I/O space stays 0: no I/O BARs or windows are offered.
const COMMAND_WRITABLE: u16 =
    COMMAND_MEMORY | COMMAND_BUS_MASTER | 1 << 6 | 1 << 8 | COMMAND_INTX_DISABLE;
/// Status: the capabilities list is present.
pub const STATUS_CAPABILITIES: u16 = 1 << 4;
/// Status error bits, cleared by writing 1 (parity, target/master aborts, SERR).
pub const STATUS_ERRORS: u16 = 0xf900;

/// Type 1: bridge control bits a guest may change (parity response, SERR, ISA, VGA, VGA16,
/// master abort mode, secondary bus reset).
const BRIDGE_CONTROL_WRITABLE: u16 = 0x007f;

const BAR_COUNT_TYPE0: usize = 6;
const BAR_COUNT_TYPE1: usize = 2;
const BAR_MEMORY_64: u32 = 0b100;
const BAR_PREFETCHABLE: u32 = 0b1000;
const BAR_ADDRESS_MASK: u32 = !0xf;
const ROM_ADDRESS_MASK: u32 = 0xffff_f800;
const ROM_ENABLE: u32 = 1;
const MIN_BAR_SIZE: u64 = 16;
const MIN_ROM_SIZE: u64 = 2048;
const FIRST_CAPABILITY: u16 = 0x40;
/// More links than fit in the space means a loop.
const MAX_STANDARD_CAPABILITIES: usize = 48;
const MAX_EXTENDED_CAPABILITIES: usize = (CONFIG_SPACE_SIZE - 0x100) / 4;

/// Errors building a configuration space.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The BAR index is outside the header or the register is taken.
    #[error(
        "BAR {index} is not free in this header (endpoints have BARs 0-5, bridges 0-1, and a \
         64-bit BAR also takes the next register); pick another BAR index"
    )]
    BarUnavailable {
        /// The BAR asked for.
        index: usize,
    },
    /// The BAR size cannot be decoded.
    #[error(
        "BAR size {size:#x} is not a power of two of at least 16 bytes (at most 2 GiB for a \
         32-bit BAR); round the size up to a power of two or use a 64-bit BAR"
    )]
    BadBarSize {
        /// The size asked for.
        size: u64,
    },
    /// The ROM size cannot be decoded.
    #[error(
        "expansion ROM size {size:#x} is not a power of two between 2 KiB and 2 GiB; round it \
         up to a power of two"
    )]
    BadRomSize {
        /// The size asked for.
        size: u64,
    },
    /// No room left for a capability.
    #[error(
        "no room for capability {id:#x} ({len} bytes) in the {area} capability area; drop \
         another capability"
    )]
    CapabilitySpaceFull {
        /// Capability id.
        id: u16,
        /// Its length in bytes.
        len: usize,
        /// "standard" or "extended".
        area: &'static str,
    },
}

/// Identity of a function, written into its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class, subclass, programming interface (24 bits, `0xBBSSPP`).
    pub class_code: u32,
    /// Subsystem vendor ID (type 0 headers only).
    pub subsystem_vendor_id: u16,
    /// Subsystem ID (type 0 headers only).
    pub subsystem_id: u16,
}

/// How a memory BAR decodes addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// One register, address below 4 GiB.
    Memory32,
    /// Two registers (this one and the next), anywhere in the 64-bit space.
    Memory64,
}

/// A BAR the function implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bar {
    size: u64,
    kind: BarKind,
    prefetchable: bool,
}

/// A memory BAR as currently placed by the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarRegion {
    /// BAR index (the low register of a 64-bit BAR).
    pub index: usize,
    /// Guest physical address.
    pub address: u64,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Whether the prefetchable bit is set.
    pub prefetchable: bool,
    /// Whether it is a 64-bit BAR.
    pub is_64bit: bool,
}

impl BarRegion {
    /// Whether `[address, address + len)` lies inside the BAR.
    pub fn contains(&self, address: u64, len: u64) -> bool {
        address >= self.address
            && address.checked_add(len).is_some_and(|end| end <= self.address + self.size)
    }
}

/// A standard capability found by walking the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capability {
    /// Capability id (0x10 PCI Express, 0x11 MSI-X, 0x09 vendor-specific...).
    pub id: u8,
    /// Offset of its header in configuration space.
    pub offset: u16,
}

/// An extended (PCI Express) capability found by walking the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtendedCapability {
    /// Extended capability id.
    pub id: u16,
    /// Capability version.
    pub version: u8,
    /// Offset of its header in configuration space.
    pub offset: u16,
}

/// Which header layout a configuration space uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeaderKind {
    Endpoint,
    Bridge,
}

/// The configuration space of one function.
#[derive(Clone)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
    writable: Vec<u8>,
    write_one_to_clear: Vec<u8>,
    header: HeaderKind,
    bars: [Option<Bar>; BAR_COUNT_TYPE0],
    /// Register index taken by the upper half of a 64-bit BAR.
    bar_upper_half: [bool; BAR_COUNT_TYPE0],
    rom_size: Option<u64>,
    last_capability: Option<u16>,
    next_capability: u16,
    last_extended: Option<u16>,
    next_extended: u16,
    /// The bytes as they were before the guest's first write: what [`Self::reset`] puts
    /// back (the device's power-on state, capabilities included).
    power_on: Option<Vec<u8>>,
}

impl std::fmt::Debug for ConfigSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigSpace")
            .field("vendor_id", &format_args!("{:#06x}", self.read_u16(VENDOR_ID)))
            .field("device_id", &format_args!("{:#06x}", self.read_u16(DEVICE_ID)))
            .field("header", &self.header)
            .field("bars", &self.bars)
            .finish()
    }
}

impl ConfigSpace {
    fn empty(header: HeaderKind, ids: &PciIds) -> Self {
        let mut config = Self {
            bytes: vec![0; CONFIG_SPACE_SIZE],
            writable: vec![0; CONFIG_SPACE_SIZE],
            write_one_to_clear: vec![0; CONFIG_SPACE_SIZE],
            header,
            bars: [None; BAR_COUNT_TYPE0],
            bar_upper_half: [false; BAR_COUNT_TYPE0],
            rom_size: None,
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
            last_extended: None,
            next_extended: STANDARD_CONFIG_SIZE,
            power_on: None,
        };
        config.set_u16(VENDOR_ID, ids.vendor_id);
        config.set_u16(DEVICE_ID, ids.device_id);
        config.set_u32(REVISION_ID, ids.class_code << 8 | u32::from(ids.revision));
        config.set_rw_u16(COMMAND, COMMAND_WRITABLE);
        config.set_w1c_u16(STATUS, STATUS_ERRORS);
        config.set_rw_mask(CACHE_LINE_SIZE, &[0xff]);
        config.set_rw_mask(INTERRUPT_LINE, &[0xff]);
        config
    }

    /// A type 0 (endpoint) header with `ids`, no BARs, no capabilities, no INTx pin.
    pub fn new_endpoint(ids: &PciIds) -> Self {
        let mut config = Self::empty(HeaderKind::Endpoint, ids);
        config.set_u8(HEADER_TYPE, 0x00);
        config.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        config.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        config
    }

    /// A type 1 (PCI-to-PCI bridge) header: bus numbers, a 32-bit memory window and a 64-bit
    /// prefetchable window the guest programs; no I/O window (its registers read 0).
    pub fn new_bridge(ids: &PciIds) -> Self {
        let mut config = Self::empty(HeaderKind::Bridge, ids);
        config.set_u8(HEADER_TYPE, 0x01);
        config.set_rw_mask(PRIMARY_BUS, &[0xff, 0xff, 0xff]);
        config.set_w1c_u16(SECONDARY_STATUS, STATUS_ERRORS);
        // Windows are 1 MiB granular: address bits 31:20 in register bits 15:4.
        config.set_rw_u16(MEMORY_BASE, 0xfff0);
        config.set_rw_u16(MEMORY_LIMIT, 0xfff0);
        // Low nibble 1: the prefetchable window decodes 64-bit addresses.
        config.set_u16(PREF_MEMORY_BASE, 0x0001);
        config.set_u16(PREF_MEMORY_LIMIT, 0x0001);
        config.set_rw_u16(PREF_MEMORY_BASE, 0xfff0);
        config.set_rw_u16(PREF_MEMORY_LIMIT, 0xfff0);
        config.set_rw_u32(PREF_BASE_UPPER, u32::MAX);
        config.set_rw_u32(PREF_LIMIT_UPPER, u32::MAX);
        config.set_rw_u16(BRIDGE_CONTROL, BRIDGE_CONTROL_WRITABLE);
        config
    }

    /// Whether this is a type 1 (bridge) header.
    pub fn is_bridge(&self) -> bool {
        self.header == HeaderKind::Bridge
    }

    // ---- guest accesses ----

    /// A guest read: bytes outside the 4 KiB space read as 0.
    pub fn read(&self, offset: u16, data: &mut [u8]) {
        // Slices, not a loop per byte: the configuration mirror copies all 4 KiB at once.
        let start = usize::from(offset).min(self.bytes.len());
        let inside = data.len().min(self.bytes.len() - start);
        data[..inside].copy_from_slice(&self.bytes[start..start + inside]);
        data[inside..].fill(0);
    }

    /// A guest read of one of Aperture's own bridges: as [`Self::read`], except that while
    /// no extended capability exists the extended space (0x100 up) reads as all-ones, as when
    /// it cannot be reached. Linux then takes the space as 256 bytes and stops looking for
    /// extended capabilities in it: each look is an exit to the VMM, about 20 per bridge per
    /// boot (24 more on 6.12), for a list that is empty anyway.
    pub fn read_no_extended(&self, offset: u16, data: &mut [u8]) {
        self.read(offset, data);
        if self.last_extended.is_none() {
            let standard = usize::from(STANDARD_CONFIG_SIZE).saturating_sub(usize::from(offset));
            if let Some(extended) = data.get_mut(standard..) {
                extended.fill(0xff);
            }
        }
    }

    /// A guest write, applied through the masks: read-write bits take the new value,
    /// write-1-to-clear bits are cleared where a 1 is written, all other bits stay.
    pub fn write(&mut self, offset: u16, data: &[u8]) {
        if self.power_on.is_none() {
            self.power_on = Some(self.bytes.clone());
        }
        for (i, &value) in data.iter().enumerate() {
            let Some(at) = usize::from(offset).checked_add(i).filter(|&at| at < CONFIG_SPACE_SIZE)
            else {
                debug!("config write past the 4 KiB space at {offset:#x}+{i} ignored");
                return;
            };
            let rw = self.writable[at];
            let w1c = self.write_one_to_clear[at];
            self.bytes[at] = (self.bytes[at] & !rw & !(value & w1c)) | (value & rw);
        }
    }

    /// Back to the power-on state (a VM reboot): every guest write is undone, so BARs,
    /// the command register, bus numbers and capability controls read as at power-on.
    pub fn reset(&mut self) {
        if let Some(bytes) = self.power_on.take() {
            self.bytes = bytes;
        }
    }

    // ---- device-side accessors (bypass the masks) ----

    /// Reads a byte (0 past the end).
    pub fn read_u8(&self, offset: u16) -> u8 {
        self.bytes.get(usize::from(offset)).copied().unwrap_or(0)
    }

    /// Reads a little-endian 16-bit value.
    pub fn read_u16(&self, offset: u16) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    /// Reads a little-endian 32-bit value.
    pub fn read_u32(&self, offset: u16) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Sets bytes regardless of the masks (bytes past the end are dropped).
    pub fn set_bytes(&mut self, offset: u16, data: &[u8]) {
        Self::store(&mut self.bytes, offset, data);
    }

    /// Sets a byte regardless of the masks.
    pub fn set_u8(&mut self, offset: u16, value: u8) {
        self.set_bytes(offset, &[value]);
    }

    /// Sets a 16-bit value regardless of the masks.
    pub fn set_u16(&mut self, offset: u16, value: u16) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    /// Sets a 32-bit value regardless of the masks.
    pub fn set_u32(&mut self, offset: u16, value: u32) {
        self.set_bytes(offset, &value.to_le_bytes());
    }

    /// Sets the read-write mask of the bytes at `offset`.
    pub fn set_rw_mask(&mut self, offset: u16, mask: &[u8]) {
        Self::store(&mut self.writable, offset, mask);
    }

    /// Sets the read-write mask of a 16-bit register.
    pub fn set_rw_u16(&mut self, offset: u16, mask: u16) {
        self.set_rw_mask(offset, &mask.to_le_bytes());
    }

    /// Sets the read-write mask of a 32-bit register.
    pub fn set_rw_u32(&mut self, offset: u16, mask: u32) {
        self.set_rw_mask(offset, &mask.to_le_bytes());
    }

    /// Sets the write-1-to-clear mask of the bytes at `offset`.
    pub fn set_w1c_mask(&mut self, offset: u16, mask: &[u8]) {
        Self::store(&mut self.write_one_to_clear, offset, mask);
    }

    /// Sets the write-1-to-clear mask of a 16-bit register.
    pub fn set_w1c_u16(&mut self, offset: u16, mask: u16) {
        self.set_w1c_mask(offset, &mask.to_le_bytes());
    }

    /// Sets the write-1-to-clear mask of a 32-bit register.
    pub fn set_w1c_u32(&mut self, offset: u16, mask: u32) {
        self.set_w1c_mask(offset, &mask.to_le_bytes());
    }

    fn store(target: &mut [u8], offset: u16, data: &[u8]) {
        let start = usize::from(offset).min(target.len());
        let end = start.saturating_add(data.len()).min(target.len());
        if end - start < data.len() {
            debug!("config space store at {offset:#x} of {} bytes truncated", data.len());
        }
        target[start..end].copy_from_slice(&data[..end - start]);
    }

    // ---- command and interrupt pin ----

    /// The command register.
    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    /// Whether memory space decoding is enabled.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Whether the function may master the bus (DMA, MSI).
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Whether INTx emulation is disabled.
    pub fn intx_disabled(&self) -> bool {
        self.command() & COMMAND_INTX_DISABLE != 0
    }

    /// Sets the interrupt pin (0 none, 1..=4 INTA..INTD).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.set_u8(INTERRUPT_PIN, pin);
    }

    // ---- BARs ----

    fn bar_count(&self) -> usize {
        match self.header {
            HeaderKind::Endpoint => BAR_COUNT_TYPE0,
            HeaderKind::Bridge => BAR_COUNT_TYPE1,
        }
    }

    fn bar_register(index: usize) -> u16 {
        // index < 6 at every call site, so this cannot overflow.
        BAR0 + 4 * index as u16
    }

    fn bar_free(&self, index: usize) -> bool {
        index < self.bar_count() && self.bars[index].is_none() && !self.bar_upper_half[index]
    }

    /// Implements memory BAR `index` of `size` bytes (a power of two, at least 16; Aperture's
    /// own devices use 4 KiB or more so that BARs can be page-mapped).
    pub fn add_memory_bar(
        &mut self,
        index: usize,
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    ) -> Result<(), ConfigError> {
        let limit = match kind {
            BarKind::Memory32 => 1 << 31,
            BarKind::Memory64 => 1 << 63,
        };
        if !size.is_power_of_two() || !(MIN_BAR_SIZE..=limit).contains(&size) {
            return Err(ConfigError::BadBarSize { size });
        }
        let upper_ok =
            kind == BarKind::Memory32 || index.checked_add(1).is_some_and(|i| self.bar_free(i));
        if !self.bar_free(index) || !upper_ok {
            return Err(ConfigError::BarUnavailable { index });
        }
        let address_mask = !(size - 1);
        let register = Self::bar_register(index);
        let mut type_bits = if prefetchable { BAR_PREFETCHABLE } else { 0 };
        if kind == BarKind::Memory64 {
            type_bits |= BAR_MEMORY_64;
            if let Some(upper) = self.bar_upper_half.get_mut(index + 1) {
                *upper = true;
            }
            self.set_u32(register + 4, 0);
            self.set_rw_u32(register + 4, (address_mask >> 32) as u32);
        }
        self.set_u32(register, type_bits);
        self.set_rw_u32(register, address_mask as u32 & BAR_ADDRESS_MASK);
        self.bars[index] = Some(Bar { size, kind, prefetchable });
        Ok(())
    }

    /// The current address of BAR `index`, or `None` if it is not implemented (or is the upper
    /// half of a 64-bit BAR). Right after a sizing write this is the size mask, as on hardware.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        let bar = self.bars.get(index).copied().flatten()?;
        let register = Self::bar_register(index);
        let low = u64::from(self.read_u32(register) & BAR_ADDRESS_MASK);
        let high = match bar.kind {
            BarKind::Memory32 => 0,
            BarKind::Memory64 => u64::from(self.read_u32(register + 4)),
        };
        Some(high << 32 | low)
    }

    /// The size of BAR `index`, if implemented.
    pub fn bar_size(&self, index: usize) -> Option<u64> {
        Some(self.bars.get(index).copied().flatten()?.size)
    }

    /// Sets the address of BAR `index` as firmware would (ignored if not implemented).
    pub fn set_bar_address(&mut self, index: usize, address: u64) {
        let Some(bar) = self.bars.get(index).copied().flatten() else {
            return;
        };
        let register = Self::bar_register(index);
        let type_bits = self.read_u32(register) & !BAR_ADDRESS_MASK;
        let address = address & !(bar.size - 1);
        self.set_u32(register, address as u32 & BAR_ADDRESS_MASK | type_bits);
        if bar.kind == BarKind::Memory64 {
            self.set_u32(register + 4, (address >> 32) as u32);
        }
    }

    /// The memory BARs the function decodes now: none while memory space is disabled; BARs at
    /// address 0 (not placed yet) or that would wrap the address space are left out.
    pub fn bar_regions(&self) -> Vec<BarRegion> {
        if !self.memory_enabled() {
            return Vec::new();
        }
        let mut regions = Vec::new();
        for (index, bar) in self.bars.iter().enumerate() {
            let Some(bar) = bar else { continue };
            let Some(address) = self.bar_address(index) else { continue };
            if address == 0 || address.checked_add(bar.size).is_none() {
                continue;
            }
            regions.push(BarRegion {
                index,
                address,
                size: bar.size,
                prefetchable: bar.prefetchable,
                is_64bit: bar.kind == BarKind::Memory64,
            });
        }
        regions
    }

    // ---- expansion ROM ----

    fn rom_register(&self) -> u16 {
        match self.header {
            HeaderKind::Endpoint => ROM_ADDRESS_TYPE0,
            HeaderKind::Bridge => ROM_ADDRESS_TYPE1,
        }
    }

    /// Implements an expansion ROM BAR of `size` bytes. Without one the register reads 0 and
    /// the guest sizes it as absent.
    pub fn set_expansion_rom(&mut self, size: u64) -> Result<(), ConfigError> {
        if !size.is_power_of_two() || !(MIN_ROM_SIZE..=1 << 31).contains(&size) {
            return Err(ConfigError::BadRomSize { size });
        }
        let register = self.rom_register();
        self.set_u32(register, 0);
        self.set_rw_u32(register, (!(size - 1) as u32 & ROM_ADDRESS_MASK) | ROM_ENABLE);
        self.rom_size = Some(size);
        Ok(())
    }

    /// The expansion ROM as (address, size, enabled), if implemented.
    pub fn expansion_rom(&self) -> Option<(u64, u64, bool)> {
        let size = self.rom_size?;
        let value = self.read_u32(self.rom_register());
        Some((u64::from(value & ROM_ADDRESS_MASK), size, value & ROM_ENABLE != 0))
    }

    // ---- capabilities ----

    /// Appends a standard capability with `id` whose registers after the id/next header are
    /// `body`; returns its offset. Its bytes are read-only until the caller sets masks.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<u16, ConfigError> {
        let len = 2 + body.len();
        let offset = self.next_capability;
        let end = usize::from(offset) + len;
        if end > usize::from(STANDARD_CONFIG_SIZE) {
            return Err(ConfigError::CapabilitySpaceFull {
                id: u16::from(id),
                len,
                area: "standard",
            });
        }
        self.set_u8(offset, id);
        self.set_u8(offset + 1, 0);
        self.set_bytes(offset + 2, body);
        // offset < 0x100, so it fits the 8-bit pointer.
        match self.last_capability {
            Some(last) => self.set_u8(last + 1, offset as u8),
            None => {
                self.set_u8(CAPABILITIES_POINTER, offset as u8);
                let status = self.read_u16(STATUS) | STATUS_CAPABILITIES;
                self.set_u16(STATUS, status);
            }
        }
        self.last_capability = Some(offset);
        // Capabilities start on dword boundaries.
        self.next_capability = (end as u16).next_multiple_of(4);
        Ok(offset)
    }

    /// Appends an extended capability (`id`, `version`) whose registers after the 4-byte
    /// header are `body`; returns its offset (0x100 for the first).
    pub fn add_extended_capability(
        &mut self,
        id: u16,
        version: u8,
        body: &[u8],
    ) -> Result<u16, ConfigError> {
        let len = 4 + body.len();
        let offset = self.next_extended;
        let end = usize::from(offset) + len;
        if end > CONFIG_SPACE_SIZE {
            return Err(ConfigError::CapabilitySpaceFull { id, len, area: "extended" });
        }
        self.set_u32(offset, u32::from(id) | u32::from(version & 0xf) << 16);
        self.set_bytes(offset + 4, body);
        if let Some(last) = self.last_extended {
            let header = self.read_u32(last) & 0x000f_ffff;
            self.set_u32(last, header | u32::from(offset) << 20);
        }
        self.last_extended = Some(offset);
        self.next_extended = (end as u16).next_multiple_of(4);
        Ok(offset)
    }

    /// The standard capabilities in list order.
    pub fn capabilities(&self) -> Vec<Capability> {
        walk_capabilities(|offset| self.read_u32(offset))
    }

    /// The extended capabilities in list order.
    pub fn extended_capabilities(&self) -> Vec<ExtendedCapability> {
        walk_extended_capabilities(|offset| self.read_u32(offset))
    }

    /// The offset of the first standard capability with `id`.
    pub fn find_capability(&self, id: u8) -> Option<u16> {
        self.capabilities().into_iter().find(|c| c.id == id).map(|c| c.offset)
    }
}

/// Walks the standard capability list of any configuration space, reading dwords through
/// `read32` (e.g. a passed-through device's). Stops at loops and bad pointers.
pub fn walk_capabilities(mut read32: impl FnMut(u16) -> u32) -> Vec<Capability> {
    let mut found = Vec::new();
    let status = (read32(COMMAND) >> 16) as u16;
    if status & STATUS_CAPABILITIES == 0 {
        return found;
    }
    let mut offset = u16::from(read32(CAPABILITIES_POINTER) as u8 & 0xfc);
    while offset >= FIRST_CAPABILITY && found.len() < MAX_STANDARD_CAPABILITIES {
        let header = read32(offset);
        found.push(Capability { id: header as u8, offset });
        offset = u16::from((header >> 8) as u8 & 0xfc);
    }
    found
}

/// Walks the extended capability list from 0x100, reading dwords through `read32`. An empty
/// list reads 0 (or all-ones) at 0x100.
pub fn walk_extended_capabilities(mut read32: impl FnMut(u16) -> u32) -> Vec<ExtendedCapability> {
    let mut found = Vec::new();
    let mut offset = STANDARD_CONFIG_SIZE;
    while found.len() < MAX_EXTENDED_CAPABILITIES {
        let header = read32(offset);
        if header == 0 || header == u32::MAX {
            break;
        }
        found.push(ExtendedCapability {
            id: header as u16,
            version: (header >> 16) as u8 & 0xf,
            offset,
        });
        let next = (header >> 20) as u16 & 0xffc;
        if next < STANDARD_CONFIG_SIZE {
            break;
        }
        offset = next;
    }
    found
}

#[cfg(test)]
mod tests;
