//! PCI Express native hot-plug on a root port: the slot registers of its PCI Express
//! capability and an MSI capability that delivers the hot-plug interrupt.
//!
//! The slot has presence detect and data link layer state reporting, surprise removal, no
//! power controller, no attention button, no indicators and no command-completed support
//! (the guest's pciehp then writes Slot Control without waiting). The hot-plug interrupt
//! follows the MSI rule of PCIe r5.0 sec 6.7.3.4: one message on each rising edge of
//! "interrupts enabled and some enabled event bit set", so the guest must clear every event
//! bit before the next event sends another.

use std::sync::Arc;

use log::{debug, info};

use super::{PCIE_LINK_STATUS, PCIE_SLOT_CONTROL, PCIE_SLOT_STATUS};
use crate::pci::config::ConfigSpace;
use crate::pci::{MsiMessage, MsiSink};

/// PCI Express Capabilities register bit 8: Slot Implemented.
pub(super) const PCIE_CAPS_SLOT_IMPLEMENTED: u16 = 1 << 8;

/// Slot Capabilities: Hot-Plug Surprise.
pub(super) const SLOT_CAPS_HOTPLUG_SURPRISE: u32 = 1 << 5;
/// Slot Capabilities: Hot-Plug Capable.
pub(super) const SLOT_CAPS_HOTPLUG_CAPABLE: u32 = 1 << 6;
/// Slot Capabilities: No Command Completed Support.
pub(super) const SLOT_CAPS_NO_COMMAND_COMPLETED: u32 = 1 << 18;
/// Slot Capabilities: Physical Slot Number, bits 31:19.
const SLOT_CAPS_PHYSICAL_SLOT_SHIFT: u32 = 19;

/// Slot Control: Presence Detect Changed Enable.
pub const SLOT_CTL_PDCE: u16 = 1 << 3;
/// Slot Control: Command Completed Interrupt Enable.
pub const SLOT_CTL_CCIE: u16 = 1 << 4;
/// Slot Control: Hot-Plug Interrupt Enable.
pub const SLOT_CTL_HPIE: u16 = 1 << 5;
/// Slot Control: Data Link Layer State Changed Enable.
pub const SLOT_CTL_DLLSCE: u16 = 1 << 12;
/// Slot Control bits the guest can write: event enables, indicator and power controls.
const SLOT_CTL_WRITABLE: u16 = 0x1fff;

/// Slot Status: Presence Detect Changed.
pub const SLOT_STA_PDC: u16 = 1 << 3;
/// Slot Status: Command Completed.
pub const SLOT_STA_CC: u16 = 1 << 4;
/// Slot Status: Presence Detect State.
pub const SLOT_STA_PDS: u16 = 1 << 6;
/// Slot Status: Data Link Layer State Changed.
pub const SLOT_STA_DLLSC: u16 = 1 << 8;
/// Slot Status event bits (write 1 to clear): ABP, PFD, MRLSC, PDC, CC, DLLSC.
const SLOT_STA_EVENTS: u16 = 0x001f | SLOT_STA_DLLSC;

/// Link Status: Data Link Layer Link Active.
pub const LINK_STA_DLLLA: u16 = 1 << 13;

/// MSI capability id.
pub const MSI_CAPABILITY_ID: u8 = 0x05;
/// MSI Message Control: 64-bit address capable.
const MSI_CTL_64BIT: u16 = 1 << 7;
/// MSI Message Control: MSI Enable.
const MSI_CTL_ENABLE: u16 = 1 << 0;
/// MSI Message Control bits the guest writes: enable and Multiple Message Enable.
const MSI_CTL_WRITABLE: u16 = 0x0071;
/// Bytes of a 64-bit MSI capability without per-vector masking, after the id/next header.
const MSI_CAPABILITY_BODY: usize = 12;
// Register offsets inside the MSI capability.
const MSI_CONTROL: u16 = 0x02;
const MSI_ADDRESS_LO: u16 = 0x04;
const MSI_ADDRESS_HI: u16 = 0x08;
const MSI_DATA: u16 = 0x0c;

/// Slot Capabilities of a hot-plug slot with physical slot number `number`.
pub(super) fn slot_caps(number: u8) -> u32 {
    SLOT_CAPS_HOTPLUG_SURPRISE
        | SLOT_CAPS_HOTPLUG_CAPABLE
        | SLOT_CAPS_NO_COMMAND_COMPLETED
        | u32::from(number) << SLOT_CAPS_PHYSICAL_SLOT_SHIFT
}

/// Makes the slot registers of the PCI Express capability at `at` writable as the spec
/// says, with an empty slot and a link that is down.
pub(super) fn init_slot_registers(config: &mut ConfigSpace, at: u16) {
    config.set_rw_u16(at + PCIE_SLOT_CONTROL, SLOT_CTL_WRITABLE);
    config.set_w1c_u16(at + PCIE_SLOT_STATUS, SLOT_STA_EVENTS);
    let status = config.read_u16(at + PCIE_LINK_STATUS) & !LINK_STA_DLLLA;
    config.set_u16(at + PCIE_LINK_STATUS, status);
}

/// Adds the MSI capability the hot-plug interrupt goes through; its offset.
pub(super) fn add_msi_capability(config: &mut ConfigSpace) -> Option<u16> {
    let mut body = [0u8; MSI_CAPABILITY_BODY];
    body[..2].copy_from_slice(&MSI_CTL_64BIT.to_le_bytes());
    let at = config.add_capability(MSI_CAPABILITY_ID, &body).ok()?;
    config.set_rw_u16(at + MSI_CONTROL, MSI_CTL_WRITABLE);
    config.set_rw_u32(at + MSI_ADDRESS_LO, 0xffff_fffc);
    config.set_rw_u32(at + MSI_ADDRESS_HI, 0xffff_ffff);
    config.set_rw_u16(at + MSI_DATA, 0xffff);
    Some(at)
}

/// The hot-plug state of a root port: where its registers are and where its interrupt goes.
pub(super) struct HotplugSlot {
    msi: Arc<dyn MsiSink>,
    /// Offset of the MSI capability.
    msi_capability: u16,
    /// The port's requester id (`bus << 8 | devfn`).
    requester_id: u16,
    /// The interrupt condition was true when last evaluated and its message went out.
    signalled: bool,
}

impl std::fmt::Debug for HotplugSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotplugSlot")
            .field("msi_capability", &self.msi_capability)
            .field("requester_id", &self.requester_id)
            .field("signalled", &self.signalled)
            .finish()
    }
}

impl HotplugSlot {
    pub(super) fn new(msi: Arc<dyn MsiSink>, msi_capability: u16) -> Self {
        Self { msi, msi_capability, requester_id: 0, signalled: false }
    }

    pub(super) fn set_requester_id(&mut self, requester_id: u16) {
        self.requester_id = requester_id;
    }

    /// Sets presence and link state to `present`; a change sets Presence Detect Changed and
    /// Data Link Layer State Changed. Returns whether anything changed.
    pub(super) fn set_presence(
        &mut self,
        config: &mut ConfigSpace,
        at: u16,
        present: bool,
        name: &str,
    ) -> bool {
        let status = config.read_u16(at + PCIE_SLOT_STATUS);
        if (status & SLOT_STA_PDS != 0) == present {
            return false;
        }
        let mut status = status & !SLOT_STA_PDS | SLOT_STA_PDC | SLOT_STA_DLLSC;
        if present {
            status |= SLOT_STA_PDS;
        }
        config.set_u16(at + PCIE_SLOT_STATUS, status);
        let link = config.read_u16(at + PCIE_LINK_STATUS) & !LINK_STA_DLLLA;
        config.set_u16(at + PCIE_LINK_STATUS, if present { link | LINK_STA_DLLLA } else { link });
        info!("{name}: slot {}", if present { "occupied, link up" } else { "empty, link down" });
        true
    }

    /// Sends the hot-plug MSI on a rising edge of the interrupt condition (interrupts
    /// enabled, an enabled event pending, MSI on). Call after every change.
    pub(super) fn update_interrupt(&mut self, config: &ConfigSpace, at: u16, name: &str) {
        let control = config.read_u16(at + PCIE_SLOT_CONTROL);
        let status = config.read_u16(at + PCIE_SLOT_STATUS);
        let mut enabled = status & control & 0x001f;
        if control & SLOT_CTL_DLLSCE != 0 {
            enabled |= status & SLOT_STA_DLLSC;
        }
        let condition = control & SLOT_CTL_HPIE != 0 && enabled != 0;
        if !condition {
            self.signalled = false;
            return;
        }
        if self.signalled {
            return;
        }
        let msi = self.msi_capability;
        if config.read_u16(msi + MSI_CONTROL) & MSI_CTL_ENABLE == 0 {
            // Stays pending: the message goes out once the guest enables MSI.
            debug!("{name}: hot-plug event {enabled:#x} pending, MSI disabled");
            return;
        }
        let address = u64::from(config.read_u32(msi + MSI_ADDRESS_HI)) << 32
            | u64::from(config.read_u32(msi + MSI_ADDRESS_LO));
        let data = u32::from(config.read_u16(msi + MSI_DATA));
        debug!("{name}: hot-plug interrupt for events {enabled:#x}");
        self.msi.signal_msi(MsiMessage { address, data }, self.requester_id);
        self.signalled = true;
    }
}
