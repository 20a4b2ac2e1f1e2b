//! The numbers of the DMA window protocol, version 1.0 (`passthrough/docs/dma-window-protocol.md`):
//! PCI identity, register offsets, the command entry layout, ops and status codes.

use crate::dma::{DmaError, FailureReason};

/// PCI vendor id (development id, as QEMU's test devices use).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device id.
pub const DEVICE_ID: u16 = 0xa9e0;
/// Class code: system peripheral, other.
pub const CLASS_CODE: u32 = 0x08_80_00;
/// Protocol major version (also the PCI revision).
pub const VERSION_MAJOR: u16 = 1;
/// Protocol minor version.
pub const VERSION_MINOR: u16 = 0;
/// Size of BAR0, the registers.
pub const BAR_SIZE: u64 = 0x1000;

/// `MAGIC` register value: "APDM" in memory order.
pub const MAGIC: u32 = 0x4d44_5041;
/// `FEATURES` bit: more than one entry per doorbell.
pub const FEATURE_BATCH: u32 = 1 << 0;
/// `FEATURES` bit: op 3, FLUSH.
pub const FEATURE_FLUSH: u32 = 1 << 1;
/// `TARGET_RID` until the guest has numbered the target's bus.
pub const TARGET_RID_UNKNOWN: u32 = u32::MAX;
/// Entries per command page.
pub const MAX_ENTRIES: u32 = 128;
/// Bytes per command entry.
pub const ENTRY_SIZE: usize = 32;
/// Required alignment of the command page.
pub const COMMAND_PAGE_ALIGN: u64 = 0x1000;

/// Register offsets in BAR0 (all 32 bits wide).
pub mod reg {
    /// RO: [`super::MAGIC`].
    pub const MAGIC: u64 = 0x00;
    /// RO: major in bits 31..16, minor in bits 15..0.
    pub const VERSION: u64 = 0x04;
    /// RO: feature bits.
    pub const FEATURES: u64 = 0x08;
    /// RO: the target's requester id, `bus << 8 | devfn`.
    pub const TARGET_RID: u64 = 0x0c;
    /// RO: most bytes mapped at once, low half.
    pub const LIMIT_BYTES_LO: u64 = 0x10;
    /// RO: high half.
    pub const LIMIT_BYTES_HI: u64 = 0x14;
    /// RO: most live host mappings.
    pub const LIMIT_MAPS: u64 = 0x18;
    /// RO: the host's mapping granule in bytes.
    pub const GRANULE: u64 = 0x1c;
    /// RW: guest-physical address of the command page, low half.
    pub const CMD_ADDR_LO: u64 = 0x20;
    /// RW: high half.
    pub const CMD_ADDR_HI: u64 = 0x24;
    /// Write N: process entries 0..N-1; read: entries processed by the last write.
    pub const DOORBELL: u64 = 0x28;
    /// RO: result of the last doorbell as a whole.
    pub const STATUS: u64 = 0x2c;
    /// RO: entries per command page.
    pub const MAX_ENTRIES: u64 = 0x30;
    /// RO: host mappings live now.
    pub const LIVE_MAPS: u64 = 0x34;
    /// RO: KiB mapped now.
    pub const LIVE_KIB: u64 = 0x38;
}

/// Command entry ops.
pub mod op {
    /// Does nothing.
    pub const NOP: u32 = 0;
    /// Maps guest `[addr, addr+len)`; returns `dev_addr`.
    pub const MAP: u32 = 1;
    /// Unmaps what MAP returned `addr` for, `len` bytes long.
    pub const UNMAP: u32 = 2;
    /// Drops cached windows.
    pub const FLUSH: u32 = 3;
}

/// A status code, per entry and for a doorbell as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    /// Done.
    Ok = 0,
    /// Zero length, wrapping range, or a malformed entry.
    Einval = 1,
    /// Does not fit the host's byte or mapping limits even after evicting every cached window.
    Enospc = 2,
    /// The range is not guest RAM.
    Erange = 3,
    /// UNMAP of something not mapped.
    Enoent = 4,
    /// The host refused.
    Eio = 5,
    /// Unknown op.
    Eopnotsupp = 6,
}

impl Status {
    /// The value the guest sees.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The status with code `code`, if there is one.
    pub fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Self::Ok,
            1 => Self::Einval,
            2 => Self::Enospc,
            3 => Self::Erange,
            4 => Self::Enoent,
            5 => Self::Eio,
            6 => Self::Eopnotsupp,
            _ => return None,
        })
    }

    /// The spec's name, for logs and traces.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "OK",
            Self::Einval => "EINVAL",
            Self::Enospc => "ENOSPC",
            Self::Erange => "ERANGE",
            Self::Enoent => "ENOENT",
            Self::Eio => "EIO",
            Self::Eopnotsupp => "EOPNOTSUPP",
        }
    }

    /// What the guest is told when the window manager refuses a request.
    pub fn for_error(error: &DmaError) -> Self {
        match error.reason() {
            FailureReason::ZeroLength | FailureReason::Overflow => Self::Einval,
            FailureReason::OutsideGuestRam => Self::Erange,
            FailureReason::TooLarge | FailureReason::NoRoom | FailureReason::NoMappingSlots => {
                Self::Enospc
            }
            FailureReason::NotMapped => Self::Enoent,
            FailureReason::HostMap | FailureReason::HostUnmap | FailureReason::MapperContract => {
                Self::Eio
            }
        }
    }
}

/// One 32-byte command entry, little-endian in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandEntry {
    /// In: the op.
    pub op: u32,
    /// Out: the status code.
    pub status: u32,
    /// In: MAP: guest-physical start; UNMAP: the device address MAP returned.
    pub addr: u64,
    /// In: bytes.
    pub len: u64,
    /// Out: MAP: the device address of `addr`.
    pub dev_addr: u64,
}

/// Offset of `status` in an entry.
pub const ENTRY_STATUS: usize = 4;
/// Offset of `dev_addr` in an entry.
pub const ENTRY_DEV_ADDR: usize = 24;

impl CommandEntry {
    /// Decodes an entry.
    pub fn from_bytes(b: &[u8; ENTRY_SIZE]) -> Self {
        let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | u64::from(u32_at(at + 4)) << 32;
        Self {
            op: u32_at(0),
            status: u32_at(4),
            addr: u64_at(8),
            len: u64_at(16),
            dev_addr: u64_at(24),
        }
    }

    /// Encodes an entry.
    pub fn to_bytes(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0; ENTRY_SIZE];
        b[0..4].copy_from_slice(&self.op.to_le_bytes());
        b[4..8].copy_from_slice(&self.status.to_le_bytes());
        b[8..16].copy_from_slice(&self.addr.to_le_bytes());
        b[16..24].copy_from_slice(&self.len.to_le_bytes());
        b[24..32].copy_from_slice(&self.dev_addr.to_le_bytes());
        b
    }
}
