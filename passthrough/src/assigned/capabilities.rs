//! The guest's view of the device's capability lists: which capabilities it sees, how their
//! registers are accessed, and the rewritten links that skip the hidden ones.
//!
//! Standard capabilities are relinked in place. Extended capabilities cannot move either (the
//! list must start at 0x100), so hidden ones are unlinked by rewriting next pointers; if the
//! one at 0x100 is hidden, its header becomes a null capability (id 0, version 0) whose next
//! pointer leads to the first kept one.

use devices::pci::config::{
    Capability, ConfigSpace, ExtendedCapability, CAPABILITIES_POINTER, CONFIG_SPACE_SIZE,
    STANDARD_CONFIG_SIZE, STATUS, STATUS_CAPABILITIES,
};
use devices::pci::msix::MSIX_CAPABILITY_ID;
use log::{debug, warn};

use super::msi::MsiCapability;
use super::policy::{Access, Rule};

/// Power management capability id.
pub const PM_CAPABILITY_ID: u8 = 0x01;
/// MSI capability id.
pub const MSI_CAPABILITY_ID: u8 = 0x05;
/// Vendor-specific capability id.
pub const VENDOR_CAPABILITY_ID: u8 = 0x09;
/// PCI Express capability id.
pub const PCIE_CAPABILITY_ID: u8 = 0x10;

/// PCIe capability: Device Capabilities.
pub const PCIE_DEVCAP: u16 = 0x04;
/// PCIe capability: Device Control.
pub const PCIE_DEVCTL: u16 = 0x08;
/// PCIe capability: Link Capabilities.
pub const PCIE_LNKCAP: u16 = 0x0c;
/// PCIe capability: Link Status.
pub const PCIE_LNKSTA: u16 = 0x12;
/// PCIe capability: Device Control 2.
pub const PCIE_DEVCTL2: u16 = 0x28;
/// DEVCAP: Function Level Reset capability.
pub const DEVCAP_FLR: u32 = 1 << 28;
/// DEVCTL bits the guest may change (bit 15, Initiate FLR, always reads 0).
const DEVCTL_WRITABLE: u16 = 0x7fff;
/// Length of a version 2 PCIe capability.
const PCIE_CAPABILITY_LEN: u16 = 0x3c;
/// Length of the MSI-X capability.
const MSIX_CAPABILITY_LEN: u16 = 12;
/// Length of the power management capability.
const PM_CAPABILITY_LEN: u16 = 8;
/// MSI-X message control bits the guest may change: enable and function mask.
pub const MSIX_CONTROL_WRITABLE: u16 = 0xc000;

/// Extended capabilities the guest sees and how their bodies are accessed. Anything not
/// listed is hidden: the guest must not drive SR-IOV (0x10), ARI (0x0e), ATS (0x0f), PRI
/// (0x13), Resizable BAR (0x15, the host sized the BARs), PASID (0x1b), L1 PM substates
/// (0x1e), ACS (0x0d), DPC (0x1d) and the like; they belong to the host and its IOMMU.
const EXTENDED_KEPT: &[(u16, &str, Access)] = &[
    (0x0001, "AER", Access::PassThrough),
    (0x0002, "virtual channel", Access::ReadOnly),
    (0x0003, "device serial number", Access::ReadOnly),
    (0x0004, "power budgeting", Access::PassThrough),
    (0x000b, "vendor-specific", Access::PassThrough),
    (0x0018, "LTR", Access::PassThrough),
    (0x0019, "secondary PCIe", Access::ReadOnly),
    (0x0023, "DVSEC", Access::PassThrough),
    (0x0025, "data link feature", Access::ReadOnly),
    (0x0026, "physical layer 16 GT/s", Access::ReadOnly),
    (0x0027, "lane margining", Access::ReadOnly),
    (0x002a, "physical layer 32 GT/s", Access::ReadOnly),
];

/// The capability layout offered to the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapabilityLayout {
    /// Access rules for the kept capabilities' registers.
    pub rules: Vec<Rule>,
    /// Offset of the emulated MSI-X capability.
    pub msix: Option<u16>,
    /// The emulated MSI capability.
    pub msi: Option<MsiCapability>,
    /// Offset of the PCI Express capability.
    pub pcie: Option<u16>,
    /// Standard capabilities hidden from the guest (id, offset).
    pub hidden: Vec<(u8, u16)>,
    /// Extended capabilities hidden from the guest (id, offset).
    pub hidden_extended: Vec<(u16, u16)>,
}

/// Bytes from `offset` to the next capability (or `end`), the most a capability can take.
fn room(offset: u16, others: impl Iterator<Item = u16>, end: u16) -> u16 {
    others.filter(|&o| o > offset).min().unwrap_or(end) - offset
}

fn standard_len(device: &ConfigSpace, cap: &Capability, room: u16) -> u16 {
    let known = match cap.id {
        PM_CAPABILITY_ID => PM_CAPABILITY_LEN,
        PCIE_CAPABILITY_ID => PCIE_CAPABILITY_LEN,
        MSIX_CAPABILITY_ID => MSIX_CAPABILITY_LEN,
        MSI_CAPABILITY_ID => MsiCapability::read(device, cap.offset).size(),
        VENDOR_CAPABILITY_ID => u16::from(device.read_u8(cap.offset + 2)).max(3),
        _ => room,
    };
    known.min(room)
}

fn extended_len(device: &ConfigSpace, cap: &ExtendedCapability, room: u16) -> u16 {
    let known = match cap.id {
        0x0001 => 0x48,
        0x0003 => 0x0c,
        0x0018 => 0x08,
        // Vendor-specific and DVSEC carry their length in bits 31:20 of the second dword.
        0x000b | 0x0023 => ((device.read_u32(cap.offset + 4) >> 20) as u16).max(8),
        _ => room,
    };
    known.min(room)
}

/// Copies `len` bytes at `offset` from the device snapshot into the virtual copy.
fn copy(device: &ConfigSpace, config: &mut ConfigSpace, offset: u16, len: u16) {
    let mut bytes = vec![0u8; usize::from(len)];
    device.read(offset, &mut bytes);
    config.set_bytes(offset, &bytes);
}

fn keep_pcie(device: &ConfigSpace, config: &mut ConfigSpace, offset: u16, len: u16) -> Vec<Rule> {
    let mut rules = vec![Rule {
        name: "PCIe capability (link and status fields)",
        offset: offset + 2,
        len: len - 2,
        access: Access::PassThrough,
    }];
    if len >= PCIE_DEVCTL + 2 {
        let devcap = device.read_u32(offset + PCIE_DEVCAP) & !DEVCAP_FLR;
        config.set_u32(offset + PCIE_DEVCAP, devcap);
        rules.push(Rule {
            name: "DEVCAP",
            offset: offset + PCIE_DEVCAP,
            len: 4,
            access: Access::Virtual,
        });
        let devctl = device.read_u16(offset + PCIE_DEVCTL) & DEVCTL_WRITABLE;
        config.set_u16(offset + PCIE_DEVCTL, devctl);
        config.set_rw_u16(offset + PCIE_DEVCTL, DEVCTL_WRITABLE);
        rules.push(Rule {
            name: "DEVCTL",
            offset: offset + PCIE_DEVCTL,
            len: 2,
            access: Access::Virtual,
        });
    }
    if len >= PCIE_DEVCTL2 + 2 {
        config.set_rw_u16(offset + PCIE_DEVCTL2, 0xffff);
        rules.push(Rule {
            name: "DEVCTL2",
            offset: offset + PCIE_DEVCTL2,
            len: 2,
            access: Access::Virtual,
        });
    }
    rules
}

/// Builds the standard and extended capability lists of `config` from the device's
/// configuration space `device`. MSI-X is offered (emulated) only if `msix_usable`; MSI is
/// offered (emulated) whenever the device has it, next to MSI-X: the guest driver picks.
pub fn build(
    name: &str,
    device: &ConfigSpace,
    config: &mut ConfigSpace,
    msix_usable: bool,
) -> CapabilityLayout {
    let mut layout = CapabilityLayout::default();
    let standard = device.capabilities();
    let mut kept: Vec<u16> = Vec::new();
    for (i, cap) in standard.iter().enumerate() {
        if standard[..i].iter().any(|c| c.offset == cap.offset) {
            // A looping list: each capability is linked once.
            continue;
        }
        let room = room(cap.offset, standard.iter().map(|c| c.offset), STANDARD_CONFIG_SIZE);
        let len = standard_len(device, cap, room);
        if len < 2 {
            layout.hidden.push((cap.id, cap.offset));
            continue;
        }
        match cap.id {
            PM_CAPABILITY_ID | VENDOR_CAPABILITY_ID => {
                copy(device, config, cap.offset, len);
                layout.rules.push(Rule {
                    name: if cap.id == PM_CAPABILITY_ID { "power management" } else { "vendor" },
                    offset: cap.offset + 2,
                    len: len - 2,
                    access: Access::PassThrough,
                });
            }
            PCIE_CAPABILITY_ID if layout.pcie.is_none() => {
                copy(device, config, cap.offset, len);
                layout.rules.extend(keep_pcie(device, config, cap.offset, len));
                layout.pcie = Some(cap.offset);
            }
            MSIX_CAPABILITY_ID if msix_usable && layout.msix.is_none() && len >= 12 => {
                copy(device, config, cap.offset, len);
                let control = config.read_u16(cap.offset + 2) & !MSIX_CONTROL_WRITABLE;
                config.set_u16(cap.offset + 2, control);
                config.set_rw_u16(cap.offset + 2, MSIX_CONTROL_WRITABLE);
                layout.msix = Some(cap.offset);
            }
            MSI_CAPABILITY_ID
                if layout.msi.is_none()
                    && len >= MsiCapability::read(device, cap.offset).size() =>
            {
                let msi = MsiCapability::read(device, cap.offset);
                msi.offer(device, config);
                layout.msi = Some(msi);
            }
            _ => {
                debug!(
                    "{name}: capability {:#04x} at {:#x} hidden from the guest",
                    cap.id, cap.offset
                );
                layout.hidden.push((cap.id, cap.offset));
                continue;
            }
        }
        kept.push(cap.offset);
    }
    if layout.msix.is_none() && layout.msi.is_none() {
        warn!(
            "{name} has neither a usable MSI-X nor a usable MSI capability: the device will \
             have no interrupts until INTx passthrough exists"
        );
    }
    link_standard(config, &kept);
    build_extended(name, device, config, &mut layout);
    layout
}

fn link_standard(config: &mut ConfigSpace, kept: &[u16]) {
    // Standard capability offsets are below 0x100, so they fit the 8-bit pointers.
    config.set_u8(CAPABILITIES_POINTER, kept.first().copied().unwrap_or(0) as u8);
    for (i, &offset) in kept.iter().enumerate() {
        config.set_u8(offset + 1, kept.get(i + 1).copied().unwrap_or(0) as u8);
    }
    let status = config.read_u16(STATUS) & !STATUS_CAPABILITIES;
    let present = if kept.is_empty() { 0 } else { STATUS_CAPABILITIES };
    config.set_u16(STATUS, status | present);
}

fn build_extended(
    name: &str,
    device: &ConfigSpace,
    config: &mut ConfigSpace,
    layout: &mut CapabilityLayout,
) {
    let extended = device.extended_capabilities();
    let end = CONFIG_SPACE_SIZE as u16;
    let mut kept: Vec<&ExtendedCapability> = Vec::new();
    for (i, cap) in extended.iter().enumerate() {
        if extended[..i].iter().any(|c| c.offset == cap.offset) {
            continue;
        }
        let Some(&(_, what, access)) = EXTENDED_KEPT.iter().find(|(id, _, _)| *id == cap.id) else {
            debug!(
                "{name}: extended capability {:#06x} at {:#x} hidden from the guest",
                cap.id, cap.offset
            );
            layout.hidden_extended.push((cap.id, cap.offset));
            continue;
        };
        let room = room(cap.offset, extended.iter().map(|c| c.offset), end);
        let len = extended_len(device, cap, room);
        if len < 4 {
            layout.hidden_extended.push((cap.id, cap.offset));
            continue;
        }
        copy(device, config, cap.offset, len);
        layout.rules.push(Rule { name: what, offset: cap.offset + 4, len: len - 4, access });
        kept.push(cap);
    }
    config.set_u32(STANDARD_CONFIG_SIZE, 0);
    for (i, cap) in kept.iter().enumerate() {
        let next = kept.get(i + 1).map_or(0, |c| c.offset);
        let header = u32::from(cap.id) | u32::from(cap.version) << 16 | u32::from(next) << 20;
        config.set_u32(cap.offset, header);
    }
    if let Some(first) = kept.first().filter(|c| c.offset != STANDARD_CONFIG_SIZE) {
        // The list must start at 0x100: a null capability leads to the first kept one.
        config.set_u32(STANDARD_CONFIG_SIZE, u32::from(first.offset) << 20);
    }
}
