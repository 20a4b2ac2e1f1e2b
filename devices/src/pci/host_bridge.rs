//! The host bridge function at 00:00.0: an identity for the root complex, with no BARs.

use log::debug;

use super::config::{BarRegion, ConfigSpace, PciIds};
use super::root_port::REDHAT_VENDOR_ID;
use super::PciFunction;

/// QEMU's PCIe host bridge device id (Red Hat vendor id), which Linux knows.
pub const HOST_BRIDGE_DEVICE_ID: u16 = 0x0008;
/// Class code: bridge, host bridge.
pub const CLASS_HOST_BRIDGE: u32 = 0x06_00_00;

/// The host bridge function.
#[derive(Debug)]
pub struct HostBridge {
    config: ConfigSpace,
}

impl Default for HostBridge {
    fn default() -> Self {
        Self::new()
    }
}

impl HostBridge {
    /// A host bridge with Red Hat's vendor id.
    pub fn new() -> Self {
        let ids = PciIds {
            vendor_id: REDHAT_VENDOR_ID,
            device_id: HOST_BRIDGE_DEVICE_ID,
            revision: 0,
            class_code: CLASS_HOST_BRIDGE,
            subsystem_vendor_id: REDHAT_VENDOR_ID,
            subsystem_id: 0x1100,
        };
        Self { config: ConfigSpace::new_endpoint(&ids) }
    }
}

impl PciFunction for HostBridge {
    fn name(&self) -> &str {
        "host-bridge"
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read_no_extended(offset, data);
    }

    fn config_copy(&self, image: &mut [u8]) -> bool {
        self.config.read_no_extended(0, image);
        true
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        self.config.write(offset, data);
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        debug!("host bridge: read of BAR {bar} at {offset:#x}: it has no BARs");
        data.fill(0xff);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, _data: &[u8]) {
        debug!("host bridge: write of BAR {bar} at {offset:#x}: it has no BARs");
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        Vec::new()
    }

    fn system_reset(&mut self) {
        self.config.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::testing::{read_le, XorShift, FUZZ_SIZES};

    #[test]
    fn identity() {
        let mut bridge = HostBridge::new();
        assert_eq!(read_le(4, |d| bridge.config_read(0, d)), 0x0008_1b36);
        assert_eq!(read_le(4, |d| bridge.config_read(8, d)) >> 8, 0x06_00_00);
        assert_eq!(read_le(1, |d| bridge.config_read(0x0e, d)), 0);
        assert_eq!(read_le(4, |d| bridge.config_read(0x10, d)), 0);
        assert!(bridge.bar_regions().is_empty());
    }

    #[test]
    fn random_accesses_keep_identity() {
        let mut rng = XorShift::new(42);
        let mut bridge = HostBridge::default();
        for offset in 0..=0x1003u16 {
            for len in FUZZ_SIZES {
                bridge.config_write(offset, &rng.bytes(len));
                let mut data = vec![0; len];
                bridge.config_read(offset, &mut data);
            }
        }
        assert_eq!(read_le(4, |d| bridge.config_read(0, d)), 0x0008_1b36);
        assert_eq!(read_le(4, |d| bridge.config_read(8, d)) >> 8, 0x06_00_00);
        assert_eq!(read_le(4, |d| bridge.config_read(0x10, d)), 0);
        assert_eq!(read_le(4, |d| bridge.config_read(0x30, d)), 0);
    }
}
