//! The numbers of the DMA window protocol, version 1.1 (`passthrough/docs/dma-window-protocol.md`):
//! PCI identity, register offsets, the command entry layout, the op word, ops and status codes.

use crate::dma::{DmaError, FailureReason, MapConstraints};

/// PCI vendor id (development id, as QEMU's test devices use).
pub const VENDOR_ID: u16 = 0x1234;
/// PCI device id.
pub const DEVICE_ID: u16 = 0xa9e0;
/// Class code: system peripheral, other.
pub const CLASS_CODE: u32 = 0x08_80_00;
/// Protocol major version (also the PCI revision).
pub const VERSION_MAJOR: u16 = 1;
/// Protocol minor version.
pub const VERSION_MINOR: u16 = 1;
/// Size of BAR0, the registers.
pub const BAR_SIZE: u64 = 0x1000;

/// `MAGIC` register value: "APDM" in memory order.
pub const MAGIC: u32 = 0x4d44_5041;
/// `FEATURES` bit: more than one entry per doorbell.
pub const FEATURE_BATCH: u32 = 1 << 0;
/// `FEATURES` bit: op 3, FLUSH.
pub const FEATURE_FLUSH: u32 = 1 << 1;
/// `FEATURES` bit (1.1): a MAP may carry the device's DMA mask width ([`OpWord::mask_bits`]);
/// the host places the map below it or fails it with [`Status::Emask`].
pub const FEATURE_MASK: u32 = 1 << 2;
/// `FEATURES` bit (1.1): a MAP may ask for a device-address alignment
/// ([`OpWord::align_log2`]); the host honours it or fails it with [`Status::Ealign`]. The
/// automatic rule for large power-of-two maps applies too.
pub const FEATURE_ALIGN: u32 = 1 << 3;
/// Every feature this host offers.
pub const FEATURES: u32 = FEATURE_BATCH | FEATURE_FLUSH | FEATURE_MASK | FEATURE_ALIGN;
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

/// The op word (entry offset 0): the op in bits 7..0 and, for MAP, the device's needs.
pub mod op_word {
    /// Bits 7..0: the op.
    pub const OP_MASK: u32 = 0xff;
    /// Bits 15..8: MAP's `mask_bits`.
    pub const MASK_BITS_SHIFT: u32 = 8;
    /// Bits 23..16: MAP's `align_log2`.
    pub const ALIGN_LOG2_SHIFT: u32 = 16;
    /// Bits 31..24: reserved, must be 0.
    pub const RESERVED: u32 = 0xff00_0000;
    /// Smallest `mask_bits` other than 0 (not given).
    pub const MASK_BITS_MIN: u8 = 12;
    /// Largest `mask_bits`.
    pub const MASK_BITS_MAX: u8 = 64;
    /// Smallest `align_log2` other than 0 (not given): 4 KiB.
    pub const ALIGN_LOG2_MIN: u8 = 12;
    /// Largest `align_log2`: 2 MiB.
    pub const ALIGN_LOG2_MAX: u8 = 21;
}

/// A decoded op word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OpWord {
    /// The op (bits 7..0), one of [`op`] or unknown.
    pub op: u32,
    /// MAP: the device reaches device addresses below `2^mask_bits`; 0 = not given.
    pub mask_bits: u8,
    /// MAP: the device address must be a multiple of `2^align_log2`; 0 = not given.
    pub align_log2: u8,
}

/// Why an op word is malformed (the entry fails with [`Status::Einval`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpWordError {
    /// Reserved bits set.
    #[error("op word {word:#010x} sets reserved bits {bits:#010x}; they must be 0")]
    Reserved {
        /// The whole word.
        word: u32,
        /// The offending bits.
        bits: u32,
    },
    /// `mask_bits` outside 12..=64.
    #[error("op word {word:#010x}: mask_bits {mask_bits} is not 0 (not given) or 12 to 64")]
    MaskBits {
        /// The whole word.
        word: u32,
        /// The value given.
        mask_bits: u8,
    },
    /// `align_log2` outside 12..=21.
    #[error(
        "op word {word:#010x}: align_log2 {align_log2} is not 0 (not given) or 12 (4 KiB) to \
         21 (2 MiB)"
    )]
    AlignLog2 {
        /// The whole word.
        word: u32,
        /// The value given.
        align_log2: u8,
    },
}

impl OpWord {
    /// Decodes an op word. Unknown ops decode (the caller answers EOPNOTSUPP); for MAP the
    /// fields are range-checked and bits 31..24 must be 0; for the other known ops bits 31..8
    /// must be 0.
    pub fn decode(word: u32) -> Result<Self, OpWordError> {
        use op_word::*;
        let op = word & OP_MASK;
        let mask_bits = (word >> MASK_BITS_SHIFT) as u8;
        let align_log2 = (word >> ALIGN_LOG2_SHIFT) as u8;
        let reserved = match op {
            op::MAP => word & RESERVED,
            op::NOP | op::UNMAP | op::FLUSH => word & !OP_MASK,
            _ => return Ok(Self { op, mask_bits: 0, align_log2: 0 }),
        };
        if reserved != 0 {
            return Err(OpWordError::Reserved { word, bits: reserved });
        }
        if mask_bits != 0 && !(MASK_BITS_MIN..=MASK_BITS_MAX).contains(&mask_bits) {
            return Err(OpWordError::MaskBits { word, mask_bits });
        }
        if align_log2 != 0 && !(ALIGN_LOG2_MIN..=ALIGN_LOG2_MAX).contains(&align_log2) {
            return Err(OpWordError::AlignLog2 { word, align_log2 });
        }
        Ok(Self { op, mask_bits, align_log2 })
    }

    /// Encodes the word (fields as given, unchecked).
    pub fn encode(&self) -> u32 {
        (self.op & op_word::OP_MASK)
            | u32::from(self.mask_bits) << op_word::MASK_BITS_SHIFT
            | u32::from(self.align_log2) << op_word::ALIGN_LOG2_SHIFT
    }

    /// A MAP word for a device with `mask_bits` (0: not given) asking for `align_log2`
    /// (0: not given).
    pub fn map(mask_bits: u8, align_log2: u8) -> u32 {
        Self { op: op::MAP, mask_bits, align_log2 }.encode()
    }

    /// What a MAP with this word needs from the host.
    pub fn constraints(&self) -> MapConstraints {
        let reach = match self.mask_bits {
            0 => MapConstraints::NONE,
            bits => MapConstraints::below_mask(u32::from(bits)),
        };
        match self.align_log2 {
            0 => reach,
            log2 => reach.aligned(1 << log2),
        }
    }
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
    /// (1.1) The map could not be placed below the device's DMA mask.
    Emask = 7,
    /// (1.1) The map could not be given the device-address alignment.
    Ealign = 8,
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
            7 => Self::Emask,
            8 => Self::Ealign,
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
            Self::Emask => "EMASK",
            Self::Ealign => "EALIGN",
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
            FailureReason::AboveMask => Self::Emask,
            FailureReason::Misaligned => Self::Ealign,
            FailureReason::HostMap | FailureReason::HostUnmap | FailureReason::MapperContract => {
                Self::Eio
            }
        }
    }
}

/// One 32-byte command entry, little-endian in guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommandEntry {
    /// In: the op word ([`OpWord`]): the op in bits 7..0, MAP's mask and alignment above.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_words_decode_as_specified() {
        let d = OpWord::decode;
        assert_eq!(d(1), Ok(OpWord { op: op::MAP, mask_bits: 0, align_log2: 0 }), "1.0 MAP");
        assert_eq!(d(0x0015_2801), Ok(OpWord { op: op::MAP, mask_bits: 40, align_log2: 21 }));
        assert_eq!(OpWord::map(40, 21), 0x0015_2801);
        assert_eq!(d(OpWord::map(64, 12)).map(|w| w.mask_bits), Ok(64));
        assert_eq!(d(0x0100_0001), Err(OpWordError::Reserved { word: 0x0100_0001, bits: 1 << 24 }));
        assert!(matches!(d(OpWord::map(11, 0)), Err(OpWordError::MaskBits { mask_bits: 11, .. })));
        assert!(matches!(d(OpWord::map(65, 0)), Err(OpWordError::MaskBits { .. })));
        assert!(matches!(d(OpWord::map(0, 22)), Err(OpWordError::AlignLog2 { .. })));
        assert!(matches!(d(OpWord::map(0, 11)), Err(OpWordError::AlignLog2 { .. })));
        for plain in [op::NOP, op::UNMAP, op::FLUSH] {
            assert_eq!(d(plain).map(|w| w.op), Ok(plain));
            assert!(matches!(d(plain | 0x100), Err(OpWordError::Reserved { bits: 0x100, .. })));
        }
        assert_eq!(d(0xffff_ff07).map(|w| w.op), Ok(7), "unknown ops decode as such");
    }

    #[test]
    fn op_words_give_constraints() {
        let w = OpWord::decode(OpWord::map(32, 16)).unwrap();
        let c = w.constraints();
        assert_eq!((c.max_device_addr, c.alignment), (0xffff_ffff, 64 << 10));
        assert_eq!(OpWord::decode(1).unwrap().constraints(), MapConstraints::NONE);
        assert_eq!(OpWord::decode(OpWord::map(64, 0)).unwrap().constraints(), MapConstraints::NONE);
    }

    #[test]
    fn new_statuses_round_trip() {
        for code in 0..=8 {
            let s = Status::from_code(code).unwrap();
            assert_eq!(s.code(), code);
        }
        assert_eq!(Status::from_code(9), None);
        assert_eq!((Status::Emask.name(), Status::Ealign.name()), ("EMASK", "EALIGN"));
    }
}
