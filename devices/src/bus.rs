//! What an emulated device offers the VMM: MMIO accesses in, interrupt levels out.

/// An MMIO device: `offset` is relative to the device's base; `data.len()` is 1, 2, 4 or 8.
///
/// `data` holds the bytes in the order the guest stored them (little-endian for an arm64 guest).
/// Accesses of an unexpected size or offset read as zeros and are ignored on write; a device
/// never panics, whatever the guest does.
pub trait MmioDevice: Send {
    /// Handles a guest load of `data.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a guest store of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// An MMIO region served without a lock around it: the implementation locks only what an
/// access needs (the PCI ECAM and memory windows, which must not serialize the vCPUs behind
/// one device that is busy). Same access rules as [`MmioDevice`].
pub trait MmioTarget: Send + Sync {
    /// Handles a guest load of `data.len()` bytes at `offset`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// Handles a guest store of `data` at `offset`.
    fn write(&self, offset: u64, data: &[u8]);
}

/// A level-sensitive interrupt line into the guest's interrupt controller (an SPI).
pub trait IrqLine: Send + Sync {
    /// Drives the line high (`true`) or low (`false`).
    fn set_level(&self, asserted: bool);
}

/// Whether an access can reach a 32-bit register: at the register's start, 1, 2 or 4 bytes
/// wide. Narrow accesses are real: Linux's amba-pl011 driver uses 16-bit ones and its earlycon
/// 8-bit ones.
pub(crate) fn is_register_access(offset: u64, len: usize) -> bool {
    offset % 4 == 0 && matches!(len, 1 | 2 | 4)
}

/// Stores the low `data.len()` bytes of `value` in `data`, little-endian; bytes past 4 are 0.
pub(crate) fn put_register(data: &mut [u8], value: u32) {
    data.fill(0);
    let bytes = value.to_le_bytes();
    let n = data.len().min(bytes.len());
    data[..n].copy_from_slice(&bytes[..n]);
}

/// The value of a register write of up to 4 bytes, zero-extended; bytes past 4 are dropped.
pub(crate) fn register_value(data: &[u8]) -> u32 {
    let mut bytes = [0u8; 4];
    let n = data.len().min(bytes.len());
    bytes[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(bytes)
}

/// Drives an [`IrqLine`] only when its level changes, so a busy device does not cost a
/// hypervisor call per register access. The line is assumed low at creation.
pub(crate) struct IrqLevel {
    line: std::sync::Arc<dyn IrqLine>,
    asserted: bool,
}

impl IrqLevel {
    pub(crate) fn new(line: std::sync::Arc<dyn IrqLine>) -> Self {
        Self { line, asserted: false }
    }

    pub(crate) fn set(&mut self, asserted: bool) {
        if asserted != self.asserted {
            self.asserted = asserted;
            self.line.set_level(asserted);
        }
    }
}

impl std::fmt::Debug for IrqLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrqLevel").field("asserted", &self.asserted).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_access_rules() {
        assert!(is_register_access(0x18, 4));
        assert!(is_register_access(0x18, 2));
        assert!(is_register_access(0x18, 1));
        assert!(!is_register_access(0x18, 8));
        assert!(!is_register_access(0x19, 1));
        assert!(!is_register_access(0x18, 0));
    }

    #[test]
    fn register_bytes_are_little_endian_and_truncated() {
        let mut data = [0xff; 2];
        put_register(&mut data, 0x1234_5678);
        assert_eq!(data, [0x78, 0x56]);
        let mut wide = [0xff; 8];
        put_register(&mut wide, 0x1234_5678);
        assert_eq!(wide, [0x78, 0x56, 0x34, 0x12, 0, 0, 0, 0]);
        assert_eq!(register_value(&[0x78, 0x56]), 0x5678);
        assert_eq!(register_value(&[1, 2, 3, 4, 5, 6, 7, 8]), 0x0403_0201);
        assert_eq!(register_value(&[]), 0);
    }
}
