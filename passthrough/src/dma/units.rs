//! Alignment arithmetic and human-readable byte counts for messages and summaries.

use std::fmt;

/// Whether `value` is a multiple of `align` (a power of two).
pub(crate) fn is_aligned(value: u64, align: u64) -> bool {
    value & (align - 1) == 0
}

/// `value` rounded down to a multiple of `align` (a power of two).
pub(crate) fn align_down(value: u64, align: u64) -> u64 {
    value & !(align - 1)
}

/// `value` rounded up to a multiple of `align` (a power of two), or `None` past `u64::MAX`.
pub(crate) fn align_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| align_down(v, align))
}

/// A byte count, exact and readable: `64 MiB`, `16 KiB`, `2 GiB`, `1524 MiB + 256 KiB`,
/// `8 MiB + 1 byte`, `100 bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        // Budgets are quoted in MiB (`dma-limit=1536M`), so GiB and TiB only when exact.
        for (unit, name) in [(1u64 << 40, "TiB"), (1 << 30, "GiB")] {
            if n >= unit && n % unit == 0 {
                return write!(f, "{} {name}", n / unit);
            }
        }
        let parts = [(n >> 20, "MiB"), ((n >> 10) & 0x3ff, "KiB"), (n & 0x3ff, "bytes")];
        let mut first = true;
        for (count, name) in parts {
            if count == 0 {
                continue;
            }
            let name = if count == 1 && name == "bytes" { "byte" } else { name };
            let sep = if first { "" } else { " + " };
            write!(f, "{sep}{count} {name}")?;
            first = false;
        }
        if first {
            write!(f, "0 bytes")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment() {
        assert!(is_aligned(0x8000, 0x4000));
        assert!(!is_aligned(0x8001, 0x4000));
        assert_eq!(align_down(0x7fff, 0x4000), 0x4000);
        assert_eq!(align_up(0x4001, 0x4000), Some(0x8000));
        assert_eq!(align_up(0x4000, 0x4000), Some(0x4000));
        assert_eq!(align_up(u64::MAX - 2, 0x4000), None);
    }

    #[test]
    fn byte_counts_read_well() {
        assert_eq!(Bytes(64 << 20).to_string(), "64 MiB");
        assert_eq!(Bytes(1536 << 20).to_string(), "1536 MiB");
        assert_eq!(Bytes(2 << 30).to_string(), "2 GiB");
        assert_eq!(Bytes(16 << 10).to_string(), "16 KiB");
        assert_eq!(Bytes((1524 << 20) + (256 << 10)).to_string(), "1524 MiB + 256 KiB");
        assert_eq!(Bytes(100).to_string(), "100 bytes");
        assert_eq!(Bytes((8 << 20) + 1).to_string(), "8 MiB + 1 byte");
        assert_eq!(Bytes((3 << 30) + (16 << 10)).to_string(), "3072 MiB + 16 KiB");
        assert_eq!(Bytes(0).to_string(), "0 bytes");
    }
}
