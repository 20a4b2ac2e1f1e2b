//! Tests of the assigned function against a fake device.

mod bars;
mod config;
mod fuzz;
mod intx;
mod msi;
mod msix;
mod nvidia;
mod reset;
mod trace_bar;

use devices::pci::PciFunction;

use crate::assigned::AssignedFunction;

/// The shared fake function host and PRNG, and the tests' shorthand for assigning.
mod fake {
    pub(super) use crate::testing::function::*;
    pub(super) use crate::testing::XorShift;

    /// Assigns `device` as "test-dev": the function and the doubles to inspect.
    pub(super) fn assign(
        device: &ConfigBuilder,
    ) -> (super::AssignedFunction, FakeDevice, RecordingHost) {
        device.assign("test-dev").unwrap()
    }
}

fn read32(f: &mut AssignedFunction, offset: u16) -> u32 {
    let mut b = [0u8; 4];
    f.config_read(offset, &mut b);
    u32::from_le_bytes(b)
}

fn read16(f: &mut AssignedFunction, offset: u16) -> u16 {
    let mut b = [0u8; 2];
    f.config_read(offset, &mut b);
    u16::from_le_bytes(b)
}

fn write32(f: &mut AssignedFunction, offset: u16, value: u32) {
    f.config_write(offset, &value.to_le_bytes());
}

fn write16(f: &mut AssignedFunction, offset: u16, value: u16) {
    f.config_write(offset, &value.to_le_bytes());
}

fn bar_write32(f: &mut AssignedFunction, bar: usize, offset: u64, value: u32) {
    f.bar_write(bar, offset, &value.to_le_bytes());
}

fn bar_read32(f: &mut AssignedFunction, bar: usize, offset: u64) -> u32 {
    let mut b = [0u8; 4];
    f.bar_read(bar, offset, &mut b);
    u32::from_le_bytes(b)
}
