//! NVIDIA GPUs mirror their PCI configuration space in BAR0 at 0x88000 (4 KiB) and their
//! drivers use it. Left mapped, the mirror would let the guest bypass the virtual
//! configuration space (virtual BARs, emulated MSI, DEVCTL), so Aperture traps that part of
//! BAR0 and sends mirror accesses through the same virtualization as configuration accesses
//! (as QEMU's `vfio-nvidia-bar0-88000-mirror-quirk` does).
//!
//! Some mirror writes must still reach the device: NVIDIA acknowledges (re-arms) MSI by
//! writing the MSI capability's id/next bytes (read-only in the virtual view) and, on current
//! hardware and drivers, the dword at 0x704. Those writes, and only when the write lies
//! entirely within such a register, go straight to the device's mirror (the fast path).
//!
//! The 0x1800 mirror is only used by legacy VGA, which Aperture does not offer.

use std::ops::Range;

use devices::pci::config::{ConfigSpace, CONFIG_SPACE_SIZE};
use devices::pci::PciIds;

use super::bars::BarLayout;
use super::capabilities::CapabilityLayout;

/// NVIDIA's PCI vendor id.
pub const NVIDIA_VENDOR_ID: u16 = 0x10de;
/// Base class code of display controllers.
const CLASS_DISPLAY: u32 = 0x03;
/// The BAR holding the mirror.
pub const CONFIG_MIRROR_BAR: usize = 0;
/// Where the mirror starts in BAR0.
pub const CONFIG_MIRROR_OFFSET: u64 = 0x88000;
/// The configuration dword NVIDIA drivers write 0 to through the mirror to re-arm MSI (the
/// write QEMU accelerates with an ioeventfd).
pub const MSI_REARM_REGISTER: u16 = 0x704;
/// Bytes of the MSI capability's id and next pointer, the ack NVIDIA writes.
const MSI_HEADER_LEN: u16 = 2;

/// The configuration mirror of an NVIDIA display function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigMirror {
    /// Configuration offsets whose mirror writes go straight to the device.
    fast_path: Vec<Range<u16>>,
}

impl ConfigMirror {
    /// The mirror of a function with `ids`, if it is an NVIDIA display function whose BAR0
    /// holds the whole mirror. `device` is its configuration space and `capabilities` what
    /// the guest sees of it.
    pub fn probe(
        ids: &PciIds,
        device: &ConfigSpace,
        bars: &BarLayout,
        capabilities: &CapabilityLayout,
    ) -> Option<Self> {
        if ids.vendor_id != NVIDIA_VENDOR_ID || ids.class_code >> 16 != CLASS_DISPLAY {
            return None;
        }
        let bar0 = bars.bars.get(CONFIG_MIRROR_BAR).copied().flatten()?;
        if bar0.host.size < Self::range().end {
            return None;
        }
        let mut fast_path = Vec::new();
        if let Some(msi) = &capabilities.msi {
            fast_path.push(msi.offset..msi.offset + MSI_HEADER_LEN);
        }
        if !in_hidden_extended_capability(device, capabilities, MSI_REARM_REGISTER) {
            fast_path.push(MSI_REARM_REGISTER..MSI_REARM_REGISTER + 4);
        }
        Some(Self { fast_path })
    }

    /// The mirror's bytes in BAR0.
    pub fn range() -> Range<u64> {
        CONFIG_MIRROR_OFFSET..CONFIG_MIRROR_OFFSET + CONFIG_SPACE_SIZE as u64
    }

    /// The configuration offset an access of `len` bytes at `offset` in `bar` reaches, if it
    /// lies entirely inside the mirror.
    pub fn config_offset(bar: usize, offset: u64, len: usize) -> Option<u16> {
        let range = Self::range();
        let end = offset.checked_add(len as u64)?;
        // Inside the 4 KiB mirror, so the difference fits.
        (bar == CONFIG_MIRROR_BAR && range.start <= offset && end <= range.end)
            .then(|| (offset - range.start) as u16)
    }

    /// Whether a mirror write of `len` bytes at configuration offset `offset` goes straight
    /// to the device.
    pub fn is_fast_path(&self, offset: u16, len: usize) -> bool {
        let start = usize::from(offset);
        self.fast_path
            .iter()
            .any(|r| usize::from(r.start) <= start && start + len <= usize::from(r.end))
    }

    /// The configuration offsets of the fast path.
    pub fn fast_path(&self) -> &[Range<u16>] {
        &self.fast_path
    }
}

/// Whether `offset` lies in an extended capability hidden from the guest: from its header
/// to the next capability of the device (or the end of configuration space).
fn in_hidden_extended_capability(
    device: &ConfigSpace,
    capabilities: &CapabilityLayout,
    offset: u16,
) -> bool {
    let all: Vec<u16> = device.extended_capabilities().iter().map(|c| c.offset).collect();
    let Some(&owner) = all.iter().filter(|&&o| o <= offset).max() else {
        return false;
    };
    capabilities.hidden_extended.iter().any(|&(_, hidden)| hidden == owner)
}
