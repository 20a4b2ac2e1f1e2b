//! A PCI Express root port: a type 1 header the guest programs with bus numbers and memory
//! windows, and a PCI Express capability that reports a trained link.
//!
//! The port has no I/O window. [`super::PciRoot`] routes configuration accesses to the (at
//! most one) device behind it, with its functions 0-7, through the bus numbers the guest
//! programmed. A port made with [`RootPort::with_hotplug`] has a PCI Express native hot-plug
//! slot ([`slot`]): presence and link state follow the device behind it, and the guest's
//! pciehp hears of removals and additions through the port's MSI.

mod slot;

use std::ops::RangeInclusive;
use std::sync::Arc;

use log::debug;

use slot::HotplugSlot;
pub use slot::{
    LINK_STA_DLLLA, MSI_CAPABILITY_ID, SLOT_CTL_CCIE, SLOT_CTL_DLLSCE, SLOT_CTL_HPIE,
    SLOT_CTL_PDCE, SLOT_STA_CC, SLOT_STA_DLLSC, SLOT_STA_PDC, SLOT_STA_PDS,
};

use super::config::{
    walk_capabilities, BarRegion, ConfigSpace, PciIds, BRIDGE_CONTROL, MEMORY_BASE, MEMORY_LIMIT,
    PREF_BASE_UPPER, PREF_LIMIT_UPPER, PREF_MEMORY_BASE, PREF_MEMORY_LIMIT, SECONDARY_BUS,
    SUBORDINATE_BUS,
};
use super::{MsiSink, PciFunction};

/// Red Hat's PCI vendor id (QEMU's generic devices).
pub const REDHAT_VENDOR_ID: u16 = 0x1b36;
/// QEMU's generic PCIe root port device id, which Linux knows.
pub const ROOT_PORT_DEVICE_ID: u16 = 0x000c;
/// Class code: bridge, PCI-to-PCI.
pub const CLASS_PCI_BRIDGE: u32 = 0x06_04_00;

/// Bridge Control bit 6: Secondary Bus Reset.
const BRIDGE_CONTROL_SECONDARY_RESET: u16 = 1 << 6;

/// PCI Express capability id.
pub const PCIE_CAPABILITY_ID: u8 = 0x10;
/// Capability version 2, device/port type 4 (root port); no slot.
const PCIE_CAPS_ROOT_PORT: u16 = 2 | 4 << 4;
/// Device capabilities: 128-byte max payload, role-based error reporting.
const DEVICE_CAPS: u32 = 1 << 15;
/// Link speed code for 16 GT/s (PCIe 4.0).
const LINK_SPEED_16GT: u32 = 4;
/// Link width x16.
const LINK_WIDTH_X16: u32 = 16;
/// Link capabilities: data link layer active reporting capable.
const LINK_CAPS_DLL_ACTIVE_REPORTING: u32 = 1 << 20;
/// Link status: slot clock configuration.
const LINK_STA_SLOT_CLOCK: u16 = 1 << 12;
/// Link status at power-on: slot clock configuration, data link layer link active.
const LINK_STATUS_FLAGS: u16 = LINK_STA_SLOT_CLOCK | LINK_STA_DLLLA;
/// Link capabilities 2: 2.5, 5, 8 and 16 GT/s supported.
const LINK_CAPS2_SPEEDS: u32 = 0b1_1110;

/// The fastest link speed code the capability can state (64 GT/s, PCIe 6.0).
const MAX_LINK_SPEED: u8 = 6;
/// Device capabilities 2: AtomicOp completer bits (32-bit, 64-bit, 128-bit CAS).
const DEVICE_CAPS2_ATOMIC_COMPLETER: u32 = 0b111 << 7;

// Register offsets inside the PCI Express capability.
const PCIE_DEVICE_CONTROL: u16 = 0x08;
const PCIE_LINK_CAPS: u16 = 0x0c;
const PCIE_LINK_STATUS: u16 = 0x12;
const PCIE_DEVICE_CAPS2: u16 = 0x24;
const PCIE_LINK_CAPS2: u16 = 0x2c;
const PCIE_DEVICE_STATUS: u16 = 0x0a;
const PCIE_LINK_CONTROL: u16 = 0x10;
const PCIE_ROOT_CONTROL: u16 = 0x1c;
const PCIE_ROOT_STATUS: u16 = 0x20;
const PCIE_DEVICE_CONTROL2: u16 = 0x28;
const PCIE_SLOT_CAPS: u16 = 0x14;
const PCIE_SLOT_CONTROL: u16 = 0x18;
const PCIE_SLOT_STATUS: u16 = 0x1a;
const PCIE_LINK_CONTROL2: u16 = 0x30;
/// Bytes of a version 2 PCI Express capability after the id/next header.
const PCIE_CAPABILITY_BODY: usize = 0x3c - 2;

/// A trained PCIe link: speed code (1 = 2.5 GT/s, 2 = 5, 3 = 8, 4 = 16, 5 = 32, 6 = 64 GT/s)
/// and width in lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PcieLink {
    /// Link speed code.
    pub speed: u8,
    /// Lanes.
    pub width: u8,
}

impl PcieLink {
    /// A link, if `speed` is a known code and `width` a lane count PCIe has.
    pub fn new(speed: u8, width: u8) -> Option<Self> {
        ((1..=MAX_LINK_SPEED).contains(&speed) && matches!(width, 1 | 2 | 4 | 8 | 12 | 16 | 32))
            .then_some(Self { speed, width })
    }

    /// The link a device's PCI Express capability reports: the negotiated one (Link
    /// Status), or the most it can do (Link Capabilities) if Link Status holds none.
    pub fn from_registers(link_caps: u32, link_status: u16) -> Option<Self> {
        let negotiated = Self::new((link_status & 0xf) as u8, (link_status >> 4 & 0x3f) as u8);
        negotiated.or_else(|| Self::new((link_caps & 0xf) as u8, (link_caps >> 4 & 0x3f) as u8))
    }

    /// The link of `function` (an endpoint, through its configuration reads), if it has a
    /// PCI Express capability reporting one.
    pub fn read_from(function: &mut dyn PciFunction) -> Option<Self> {
        let mut read32 = |offset: u16| {
            let mut data = [0u8; 4];
            function.config_read(offset, &mut data);
            u32::from_le_bytes(data)
        };
        let at =
            walk_capabilities(&mut read32).into_iter().find(|c| c.id == PCIE_CAPABILITY_ID)?.offset;
        let link_caps = read32(at + PCIE_LINK_CAPS);
        let link_status = (read32(at + PCIE_LINK_STATUS - 2) >> 16) as u16;
        Self::from_registers(link_caps, link_status)
    }
}

/// A PCIe root port on bus 0.
#[derive(Debug)]
pub struct RootPort {
    name: String,
    config: ConfigSpace,
    pcie_capability: u16,
    /// The guest set Secondary Bus Reset and [`PciFunction::take_secondary_bus_reset`] has
    /// not reported it yet.
    secondary_reset_pending: bool,
    /// The hot-plug slot, if the port has one.
    hotplug: Option<HotplugSlot>,
}

impl RootPort {
    /// A root port called `name` whose link reports port number `port_number`.
    pub fn new(name: impl Into<String>, port_number: u8) -> Self {
        Self::build(name.into(), port_number, None)
    }

    /// A root port with a hot-plug slot (physical slot number `port_number`) whose
    /// interrupt goes out through `msi`. The slot starts empty.
    pub fn with_hotplug(name: impl Into<String>, port_number: u8, msi: Arc<dyn MsiSink>) -> Self {
        Self::build(name.into(), port_number, Some(msi))
    }

    fn build(name: String, port_number: u8, msi: Option<Arc<dyn MsiSink>>) -> Self {
        let ids = PciIds {
            vendor_id: REDHAT_VENDOR_ID,
            device_id: ROOT_PORT_DEVICE_ID,
            revision: 0,
            class_code: CLASS_PCI_BRIDGE,
            ..PciIds::default()
        };
        let mut config = ConfigSpace::new_bridge(&ids);
        let slot = msi.is_some().then_some(port_number);
        let pcie_capability = add_pcie_capability(&mut config, port_number, slot);
        // The hot-plug interrupt is MSI message 0: the PCI Express capability's Interrupt
        // Message Number (which Linux's portdrv reads to pick the vector) is 0.
        let hotplug = msi.and_then(|msi| {
            let at = slot::add_msi_capability(&mut config)?;
            (pcie_capability != 0).then(|| HotplugSlot::new(msi, at))
        });
        if hotplug.is_none() && pcie_capability != 0 {
            // No room for MSI (never with a fresh header): a slot without interrupt would
            // leave the guest waiting, so keep the port without a slot.
            let caps = config.read_u16(pcie_capability + 2) & !slot::PCIE_CAPS_SLOT_IMPLEMENTED;
            config.set_u16(pcie_capability + 2, caps);
            config.set_u32(pcie_capability + PCIE_SLOT_CAPS, 0);
        }
        Self { name, config, pcie_capability, secondary_reset_pending: false, hotplug }
    }

    /// Whether the port has a hot-plug slot.
    pub fn has_hotplug_slot(&self) -> bool {
        self.hotplug.is_some()
    }

    /// The Slot Status register (0 without a slot).
    pub fn slot_status(&self) -> u16 {
        if self.hotplug.is_none() {
            return 0;
        }
        self.config.read_u16(self.pcie_capability + PCIE_SLOT_STATUS)
    }

    /// The configuration space (for inspection).
    pub fn config(&self) -> &ConfigSpace {
        &self.config
    }

    /// Offset of the PCI Express capability.
    pub fn pcie_capability(&self) -> u16 {
        self.pcie_capability
    }

    /// Reports a trained link of `link` (the assigned device's real one) instead of x16 at
    /// 16 GT/s: Link Capabilities, Link Status, the supported speeds and the target speed.
    pub fn set_link(&mut self, link: PcieLink) {
        let at = self.pcie_capability;
        if at == 0 {
            return;
        }
        let (speed, width) = (u32::from(link.speed), u32::from(link.width));
        let link_caps = self.config.read_u32(at + PCIE_LINK_CAPS) & !0x3ff | speed | width << 4;
        self.config.set_u32(at + PCIE_LINK_CAPS, link_caps);
        let link_status =
            self.config.read_u16(at + PCIE_LINK_STATUS) & !0x3ff | (speed | width << 4) as u16;
        self.config.set_u16(at + PCIE_LINK_STATUS, link_status);
        // Supported Link Speeds Vector: every speed up to this one.
        let speeds = ((1u32 << speed) - 1) << 1;
        self.config.set_u32(at + PCIE_LINK_CAPS2, speeds);
        let control2 = self.config.read_u16(at + PCIE_LINK_CONTROL2) & !0xf | speed as u16;
        self.config.set_u16(at + PCIE_LINK_CONTROL2, control2);
        debug!("{}: link x{} at speed code {}", self.name, link.width, link.speed);
    }

    /// Whether the port reports that the root complex completes AtomicOps (32-bit, 64-bit
    /// and 128-bit CAS) for the device behind it: only when the host path does, or the
    /// guest driver would issue AtomicOps that fail.
    pub fn set_atomic_completer(&mut self, supported: bool) {
        let at = self.pcie_capability;
        if at == 0 {
            return;
        }
        let caps2 = self.config.read_u32(at + PCIE_DEVICE_CAPS2) & !DEVICE_CAPS2_ATOMIC_COMPLETER;
        let completer = if supported { DEVICE_CAPS2_ATOMIC_COMPLETER } else { 0 };
        self.config.set_u32(at + PCIE_DEVICE_CAPS2, caps2 | completer);
    }

    /// The link the port reports.
    pub fn link(&self) -> Option<PcieLink> {
        let at = self.pcie_capability;
        if at == 0 {
            return None;
        }
        PcieLink::from_registers(
            self.config.read_u32(at + PCIE_LINK_CAPS),
            self.config.read_u16(at + PCIE_LINK_STATUS),
        )
    }

    /// Whether the guest holds the secondary bus in reset (Bridge Control bit 6).
    pub fn in_secondary_reset(&self) -> bool {
        self.config.read_u16(BRIDGE_CONTROL) & BRIDGE_CONTROL_SECONDARY_RESET != 0
    }

    /// The secondary bus number.
    pub fn secondary_bus(&self) -> u8 {
        self.config.read_u8(SECONDARY_BUS)
    }

    /// The subordinate bus number.
    pub fn subordinate_bus(&self) -> u8 {
        self.config.read_u8(SUBORDINATE_BUS)
    }

    /// The buses behind the port, or `None` until the guest numbers them (secondary bus 0
    /// or a subordinate below the secondary).
    pub fn bus_range(&self) -> Option<RangeInclusive<u8>> {
        let secondary = self.secondary_bus();
        let subordinate = self.subordinate_bus();
        (secondary != 0 && secondary <= subordinate).then_some(secondary..=subordinate)
    }

    /// Sets the bus numbers as firmware would.
    pub fn set_buses(&mut self, primary: u8, secondary: u8, subordinate: u8) {
        self.config.set_bytes(super::config::PRIMARY_BUS, &[primary, secondary, subordinate]);
    }

    /// The non-prefetchable memory window as `[base, end)`, if open (base <= limit).
    pub fn memory_window(&self) -> Option<(u64, u64)> {
        let base = u64::from(self.config.read_u16(MEMORY_BASE) & 0xfff0) << 16;
        let limit = u64::from(self.config.read_u16(MEMORY_LIMIT) & 0xfff0) << 16 | 0xf_ffff;
        (base <= limit).then_some((base, limit + 1))
    }

    /// The 64-bit prefetchable memory window as `[base, end)`, if open.
    pub fn prefetchable_window(&self) -> Option<(u64, u64)> {
        let base = u64::from(self.config.read_u16(PREF_MEMORY_BASE) & 0xfff0) << 16
            | u64::from(self.config.read_u32(PREF_BASE_UPPER)) << 32;
        let limit = u64::from(self.config.read_u16(PREF_MEMORY_LIMIT) & 0xfff0) << 16
            | u64::from(self.config.read_u32(PREF_LIMIT_UPPER)) << 32
            | 0xf_ffff;
        (base <= limit).then(|| (base, limit.saturating_add(1)))
    }

    /// Whether the port forwards memory accesses downstream (memory space enabled).
    pub fn forwards_memory(&self) -> bool {
        self.config.memory_enabled()
    }
}

/// Adds a version 2 PCI Express capability for a root port with a trained x16 16 GT/s link,
/// and a hot-plug slot with physical slot number `slot` if given (empty, link down).
fn add_pcie_capability(config: &mut ConfigSpace, port_number: u8, slot: Option<u8>) -> u16 {
    let mut body = [0u8; PCIE_CAPABILITY_BODY];
    // Body offsets are capability offsets minus the 2-byte header.
    let mut put = |at: u16, bytes: &[u8]| {
        let start = usize::from(at - 2);
        body[start..start + bytes.len()].copy_from_slice(bytes);
    };
    let slot_implemented = if slot.is_some() { slot::PCIE_CAPS_SLOT_IMPLEMENTED } else { 0 };
    put(0x02, &(PCIE_CAPS_ROOT_PORT | slot_implemented).to_le_bytes());
    if let Some(number) = slot {
        put(PCIE_SLOT_CAPS, &slot::slot_caps(number).to_le_bytes());
    }
    put(0x04, &DEVICE_CAPS.to_le_bytes());
    let link_caps = LINK_SPEED_16GT
        | LINK_WIDTH_X16 << 4
        | LINK_CAPS_DLL_ACTIVE_REPORTING
        | u32::from(port_number) << 24;
    put(0x0c, &link_caps.to_le_bytes());
    let link_status = LINK_SPEED_16GT as u16 | (LINK_WIDTH_X16 as u16) << 4 | LINK_STATUS_FLAGS;
    put(0x12, &link_status.to_le_bytes());
    put(0x2c, &LINK_CAPS2_SPEEDS.to_le_bytes());
    put(0x30, &(LINK_SPEED_16GT as u16).to_le_bytes());
    let Ok(at) = config.add_capability(PCIE_CAPABILITY_ID, &body) else {
        // A fresh header always has room; keep the port usable without the capability.
        debug!("no room for the root port's PCI Express capability");
        return 0;
    };
    // Error reporting, relaxed ordering, payload and read request sizes, extended tags,
    // no snoop.
    config.set_rw_u16(at + PCIE_DEVICE_CONTROL, 0x7fff);
    config.set_w1c_u16(at + PCIE_DEVICE_STATUS, 0x000f);
    // ASPM control, common clock, extended synch, clock PM; retrain reads as 0.
    config.set_rw_u16(at + PCIE_LINK_CONTROL, 0x01c3);
    // System error enables and PME interrupt enable.
    config.set_rw_u16(at + PCIE_ROOT_CONTROL, 0x000f);
    config.set_w1c_u32(at + PCIE_ROOT_STATUS, 1 << 16);
    config.set_rw_u16(at + PCIE_DEVICE_CONTROL2, 0x001f);
    config.set_rw_u16(at + PCIE_LINK_CONTROL2, 0x000f);
    if slot.is_some() {
        slot::init_slot_registers(config, at);
    }
    at
}

impl PciFunction for RootPort {
    fn name(&self) -> &str {
        &self.name
    }

    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read_no_extended(offset, data);
    }

    fn config_copy(&self, image: &mut [u8]) -> bool {
        // Plain registers: the hot-plug slot changes them only through set_slot_presence
        // and config_write.
        self.config.read_no_extended(0, image);
        true
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) {
        let was_in_reset = self.in_secondary_reset();
        self.config.write(offset, data);
        // The rising edge resets the bus; holding the bit set or clearing it does not.
        if !was_in_reset && self.in_secondary_reset() {
            debug!("{}: guest secondary bus reset", self.name);
            self.secondary_reset_pending = true;
        }
        if let Some(slot) = self.hotplug.as_mut() {
            slot.update_interrupt(&self.config, self.pcie_capability, &self.name);
        }
    }

    fn set_requester_id(&mut self, requester_id: u16) {
        if let Some(slot) = self.hotplug.as_mut() {
            slot.set_requester_id(requester_id);
        }
    }

    fn set_slot_presence(&mut self, present: bool) {
        let Some(slot) = self.hotplug.as_mut() else { return };
        let at = self.pcie_capability;
        if slot.set_presence(&mut self.config, at, present, &self.name) {
            slot.update_interrupt(&self.config, at, &self.name);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        debug!("{}: read of BAR {bar} at {offset:#x}: the port has no BARs", self.name);
        data.fill(0xff);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, _data: &[u8]) {
        debug!("{}: write of BAR {bar} at {offset:#x}: the port has no BARs", self.name);
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        Vec::new()
    }

    fn bridge_buses(&self) -> Option<RangeInclusive<u8>> {
        self.bus_range()
    }

    fn take_secondary_bus_reset(&mut self) -> bool {
        std::mem::take(&mut self.secondary_reset_pending)
    }

    fn system_reset(&mut self) {
        self.config.reset();
        self.secondary_reset_pending = false;
    }
}

#[cfg(test)]
mod tests;
