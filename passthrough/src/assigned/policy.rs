//! What reaches the physical device: for every byte of configuration space, which bits a guest
//! read takes from the device (the rest come from the virtual copy) and which bits a guest
//! write forwards to the device (the virtual copy always takes the write through its masks).
//!
//! Everything is virtual unless a rule below says otherwise. Kept virtual on purpose:
//! - BARs and the expansion ROM register: the host (VFIO, or macOS with its DART) owns the
//!   device's real BAR addresses; the guest's addresses must never reach it.
//! - STATUS: its error bits are write-1-to-clear; forwarding a guest write (or a
//!   read-modify-write of a wider access) would clear errors the host wants to see, and on
//!   macOS STATUS writes must not reach the device at all. Reads show the device's bits,
//!   Interrupt Status (bit 3) among them, for a guest's INTx handler that checks it.
//! - Interrupt Line and Pin: Line is the guest's scratch register; Pin is the device's, shown
//!   when the host can deliver INTx or the function has MSI (see [`super::AssignedFunction`]).
//! - MSI and MSI-X capabilities: the host programs the device's real messages (VFIO through
//!   its interrupt ioctls); the guest's addresses are guest doorbells.
//! - DEVCTL and DEVCTL2 (PCIe capability +0x08, +0x28): changing Max Payload Size or Max
//!   Read Request Size while the device has live DMA mappings causes completion timeouts, and
//!   the host already configured them for the real fabric. DEVCAP (+0x04) is virtual too:
//!   FLR capability shows only when the device has it and the VMM installed a host reset,
//!   and the guest's Initiate FLR runs that reset (see `super::reset`) instead of reaching
//!   the device.

use std::ops::Range;

use devices::pci::config::{
    COMMAND, COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_MEMORY, CONFIG_SPACE_SIZE, STATUS,
    STATUS_CAPABILITIES,
};

/// Command register bits forwarded to the device: memory decoding (BAR mmaps need it), bus
/// mastering (DMA and MSI) and Interrupt Disable (VFIO virtualizes it and masks the host's
/// INTx while it is set, so a guest that turns INTx off gets no more of them).
pub const COMMAND_FORWARDED: u16 = COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;

/// How one register (or capability body) is accessed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads and writes stay in the virtual copy.
    Virtual,
    /// Reads come from the device; writes reach it.
    PassThrough,
    /// Reads come from the device; writes are dropped.
    ReadOnly,
    /// Reads come from the device except `virtual_bits`; writes are dropped.
    ReadOnlyExcept {
        /// Bits read from the virtual copy (little-endian over the register).
        virtual_bits: u32,
    },
    /// Reads come from the virtual copy; writes of `forwarded` bits reach the device.
    VirtualForwarding {
        /// Bits forwarded to the device (little-endian over the register).
        forwarded: u32,
    },
}

impl Access {
    /// (bits read from the device, bits written to the device) of byte `i` of the register.
    fn masks(self, i: usize) -> (u8, u8) {
        let byte = |mask: u32| (mask >> (8 * (i % 4))) as u8;
        match self {
            Self::Virtual => (0, 0),
            Self::PassThrough => (0xff, 0xff),
            Self::ReadOnly => (0xff, 0),
            Self::ReadOnlyExcept { virtual_bits } => (!byte(virtual_bits), 0),
            Self::VirtualForwarding { forwarded } => (0, byte(forwarded)),
        }
    }
}

/// One entry of the policy table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// What the register is, for logs.
    pub name: &'static str,
    /// Offset in configuration space.
    pub offset: u16,
    /// Length in bytes.
    pub len: u16,
    /// How it is accessed.
    pub access: Access,
}

/// Rules for the type 0 header; capability rules come from [`super::capabilities`].
pub const HEADER_RULES: &[Rule] = &[
    Rule {
        name: "command",
        offset: COMMAND,
        len: 2,
        access: Access::VirtualForwarding { forwarded: COMMAND_FORWARDED as u32 },
    },
    Rule {
        name: "status",
        offset: STATUS,
        len: 2,
        // The capabilities-list bit follows the virtual list, which may be empty.
        access: Access::ReadOnlyExcept { virtual_bits: STATUS_CAPABILITIES as u32 },
    },
];

/// The per-byte policy of a whole configuration space.
#[derive(Clone)]
pub struct ConfigPolicy {
    from_device: Vec<u8>,
    to_device: Vec<u8>,
}

impl std::fmt::Debug for ConfigPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let device_bytes = self.from_device.iter().filter(|&&m| m != 0).count();
        f.debug_struct("ConfigPolicy").field("bytes_read_from_device", &device_bytes).finish()
    }
}

impl Default for ConfigPolicy {
    fn default() -> Self {
        Self { from_device: vec![0; CONFIG_SPACE_SIZE], to_device: vec![0; CONFIG_SPACE_SIZE] }
    }
}

impl ConfigPolicy {
    /// Applies `rule`, overriding earlier rules for its bytes (so broad rules go first).
    pub fn apply(&mut self, rule: &Rule) {
        let start = usize::from(rule.offset);
        let end = (start + usize::from(rule.len)).min(CONFIG_SPACE_SIZE);
        for at in start..end {
            let (from, to) = rule.access.masks(at - start);
            self.from_device[at] = from;
            self.to_device[at] = to;
        }
    }

    /// Bits of byte `at` read from the device.
    pub fn from_device(&self, at: usize) -> u8 {
        self.from_device.get(at).copied().unwrap_or(0)
    }

    /// Bits of byte `at` forwarded to the device.
    pub fn to_device(&self, at: usize) -> u8 {
        self.to_device.get(at).copied().unwrap_or(0)
    }

    /// Whether any byte of `range` is read from the device.
    pub fn reads_device(&self, range: Range<usize>) -> bool {
        range.into_iter().any(|at| self.from_device(at) != 0)
    }
}

/// Splits `range` into naturally aligned accesses of 1, 2 or 4 bytes (what every host accepts).
pub fn aligned_chunks(range: Range<usize>) -> Vec<Range<usize>> {
    let mut chunks = Vec::new();
    let mut at = range.start;
    while at < range.end {
        let left = range.end - at;
        let len = [4, 2, 1].into_iter().find(|&len| at % len == 0 && len <= left).unwrap_or(1);
        chunks.push(at..at + len);
        at += len;
    }
    chunks
}
